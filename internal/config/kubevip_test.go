package config

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// kubeVIPGenerated is the environment kube-vip v1.2.3's manifest generator
// prints for ARP mode (`kube-vip manifest pod|daemonset --interface eth0
// --address 192.0.2.100 --controlplane --services --arp --leaderElection`,
// plus --servicesElection for the second), its own defaults included.
func kubeVIPGenerated(serviceElection bool) map[string]string {
	env := map[string]string{
		"vip_arp":            "true",
		"port":               "6443",
		"vip_nodename":       "node-a",
		"vip_interface":      "eth0",
		"cp_enable":          "true",
		"cp_namespace":       "kube-system",
		"svc_enable":         "true",
		"svc_leasename":      "plndr-svcs-lock",
		"vip_leaderelection": "true",
		"vip_leasename":      "plndr-cp-lock",
		"vip_leaseduration":  "15",
		"vip_renewdeadline":  "10",
		"vip_retryperiod":    "2",
		"address":            "192.0.2.100",
		"prometheus_server":  ":2112",
	}
	if serviceElection {
		env["svc_election"] = "true"
	}
	return env
}

func TestKubeVIPGeneratedManifestsStartQuietly(t *testing.T) {
	for _, election := range []bool{false, true} {
		c, err := load(t, nil, kubeVIPGenerated(election))
		if err != nil {
			t.Fatalf("svc_election=%v: %v", election, err)
		}
		if len(c.Warnings) > 0 {
			t.Errorf("svc_election=%v: warnings %q, want none for kube-vip's own defaults", election, c.Warnings)
		}
		if !c.ControlPlane || !c.Services || c.ServiceElection != election || c.MetricsAddr != ":2112" {
			t.Errorf("svc_election=%v: settings not honoured: %+v", election, c)
		}
	}
}

// TestRefusedSettings sets each refused kube-vip setting to a value that
// asks for the feature: vipd must exit naming it; set to off it is accepted.
func TestRefusedSettings(t *testing.T) {
	for _, u := range unmappedSettings {
		if u.refuse == nil {
			continue
		}
		t.Run(u.name, func(t *testing.T) {
			env := minimal()
			env[u.name] = "true"
			_, err := load(t, nil, env)
			if err == nil {
				t.Fatalf("%s=true accepted", u.name)
			}
			if !strings.HasPrefix(err.Error(), u.name+"=true is not supported: ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line starting with %q", err, u.name+"=true is not supported: ")
			}
			if u.refuse("false") {
				return // every value asks for the feature
			}
			env[u.name] = "false"
			c, err := load(t, nil, env)
			if err != nil {
				t.Fatalf("%s=false refused: %v", u.name, err)
			}
			if len(c.Warnings) > 0 {
				t.Errorf("%s=false warned: %q", u.name, c.Warnings)
			}
		})
	}
}

func TestWarnedSettings(t *testing.T) {
	for _, u := range unmappedSettings {
		if u.refuse != nil {
			continue
		}
		t.Run(u.name, func(t *testing.T) {
			env := minimal()
			env[u.name] = "7"
			c, err := load(t, nil, env)
			if err != nil {
				t.Fatalf("%s=7 refused: %v", u.name, err)
			}
			if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0], u.name+"=7 ignored: ") {
				t.Errorf("warnings %q, want one starting %q", c.Warnings, u.name+"=7 ignored: ")
			}
			if u.quiet != "" {
				env[u.name] = u.quiet
				if c, _ := load(t, nil, env); len(c.Warnings) > 0 {
					t.Errorf("%s=%s (kube-vip's default) warned: %q", u.name, u.quiet, c.Warnings)
				}
			}
		})
	}
}

func TestSubnetAndDHCP(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string // error prefix; "" accepted
	}{
		{map[string]string{"vip_subnet": "32"}, ""},
		{map[string]string{"vip_subnet": "/32,/128"}, ""},
		{map[string]string{"vip_cidr": "128"}, ""},
		{map[string]string{"vip_subnet": "24"}, "vip_subnet=24 is not supported: vipd adds each VIP as a host address"},
		{map[string]string{"vip_cidr": "/64"}, "vip_cidr=/64 is not supported"},
		{map[string]string{"vip_subnet": "32,64"}, "vip_subnet=32,64 is not supported"},
		{map[string]string{"vip_address": "0.0.0.0", "cp_enable": "true"}, "vip_address=0.0.0.0 asks for a VIP by DHCP"},
		{map[string]string{"dhcp_mode": "ipv4"}, "dhcp_mode=ipv4 is not supported: vipd does not get VIPs by DHCP"},
		{map[string]string{"vip_ddns": "true"}, "vip_ddns=true is not supported"},
	} {
		env := minimal()
		for k, v := range tc.env {
			env[k] = v
		}
		_, err := load(t, nil, env)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v refused: %v", tc.env, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("%v: error %v, want %q", tc.env, err, tc.want)
		}
	}
}

// TestLeaderElectionOff: kube-vip's per-Service election without a global
// one is what vipd does with svc_election; accepted, and it elects.
func TestLeaderElectionOff(t *testing.T) {
	env := minimal()
	env["vip_leaderelection"] = "false"
	env["svc_election"] = "true"
	c, err := load(t, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Services || !c.ServiceElection || c.ControlPlane {
		t.Errorf("got %+v", c)
	}
}

func TestLegacyClassHandling(t *testing.T) {
	for _, tc := range []struct {
		legacy, only string
		want         bool
	}{{"", "", false}, {"true", "", false}, {"false", "", true}, {"false", "false", true}, {"true", "true", true}} {
		env := minimal()
		env["lb_class_legacy_handling"] = tc.legacy
		env["lb_class_only"] = tc.only
		c, err := load(t, nil, env)
		if err != nil {
			t.Fatal(err)
		}
		if c.LoadBalancerClassOnly != tc.want {
			t.Errorf("legacy %q only %q: class only %v, want %v", tc.legacy, tc.only, c.LoadBalancerClassOnly, tc.want)
		}
	}
	env := minimal()
	env["lb_class_legacy_handling"] = "sometimes"
	if _, err := load(t, nil, env); err == nil || err.Error() != `lb_class_legacy_handling "sometimes": not a boolean (use true or false)` {
		t.Errorf("error %v", err)
	}
}

func TestHealthCheckPort(t *testing.T) {
	env := minimal()
	env["health_check_port"] = "9555"
	c, err := load(t, nil, env)
	if err != nil || c.HealthAddr != ":9555" {
		t.Errorf("health_check_port=9555: %q, %v; want :9555", c.HealthAddr, err)
	}
	env["VIPD_HEALTH_ADDR"] = "127.0.0.1:9556"
	if c, _ := load(t, nil, env); c.HealthAddr != "127.0.0.1:9556" {
		t.Errorf("VIPD_HEALTH_ADDR does not win over health_check_port: %q", c.HealthAddr)
	}
	if c, _ := load(t, []string{"--health-addr="}, env); c.HealthAddr != "" {
		t.Errorf("--health-addr= does not turn health off: %q", c.HealthAddr)
	}
	env = minimal()
	env["health_check_port"] = "http"
	if _, err := load(t, nil, env); err == nil || err.Error() != `health_check_port "http": not a port number (1 to 65535)` {
		t.Errorf("error %v", err)
	}
}

func TestCheckEnvironment(t *testing.T) {
	got := CheckEnvironment([]string{
		"PATH=/bin", "vip_arp=true", "VIPD_NAMESPACE=x", "bgp_enable=false",
		"vip_adress=192.0.2.1", "VIPD_LEASE_DURATON=4s", "svc_enable=", "HOME=/",
	})
	want := []string{"vip_adress ignored: ", "VIPD_LEASE_DURATON ignored: "}
	if len(got) != len(want) {
		t.Fatalf("warnings %q, want %d", got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("warning %q, want prefix %q", got[i], want[i])
		}
	}
}

// TestMigrationTable keeps the table in docs/migration.md in step with the
// code: one row per kube-vip setting, with the verdict the code gives it.
func TestMigrationTable(t *testing.T) {
	doc, err := os.ReadFile("../../docs/migration.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([A-Za-z0-9_]+)` \\| (honoured|warned|refused) \\|")
	inDoc := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		if _, dup := inDoc[m[1]]; dup {
			t.Errorf("docs/migration.md lists %s twice", m[1])
		}
		inDoc[m[1]] = m[2]
	}
	known := map[string]bool{}
	for _, s := range KubeVIPSettings() {
		known[s.Name] = true
		if got, ok := inDoc[s.Name]; !ok {
			t.Errorf("docs/migration.md has no row for %s (%s: %s)", s.Name, s.Verdict, s.Note)
		} else if got != s.Verdict {
			t.Errorf("docs/migration.md says %s is %s; the code says %s", s.Name, got, s.Verdict)
		}
	}
	for name := range inDoc {
		if !known[name] {
			t.Errorf("docs/migration.md lists %s, which the code does not know", name)
		}
	}
}
