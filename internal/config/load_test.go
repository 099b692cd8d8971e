package config

import (
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// load runs Load the way vipd does: flags registered by AddFlags and parsed
// from args, the environment given as a map.
func load(t *testing.T, args []string, env map[string]string) (Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("vipd", pflag.ContinueOnError)
	AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parsing %q: %v", args, err)
	}
	return Load(fs, func(k string) string { return env[k] })
}

// minimal is the smallest valid environment: Services on, fixed node name.
func minimal() map[string]string {
	return map[string]string{"vip_nodename": "node-a", "svc_enable": "true"}
}

func TestDefaults(t *testing.T) {
	c, err := load(t, nil, map[string]string{"svc_enable": "true"})
	if err != nil {
		t.Fatal(err)
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		NodeName:          strings.ToLower(host),
		ARP:               true,
		ARPRate:           3 * time.Second,
		Namespace:         "kube-system",
		AgentNamespace:    "kube-system",
		LeaseName:         "plndr-cp-lock",
		LeaseDuration:     5 * time.Second,
		RenewDeadline:     3 * time.Second,
		RetryPeriod:       time.Second,
		Services:          true,
		ServiceLeaseName:  "plndr-svcs-lock",
		LoadBalancerClass: "kube-vip.io/kube-vip-class",
		PoolNamespace:     "kube-system",
		PoolConfigMap:     "kubevip",
		HeartbeatPort:     7947,
		HeartbeatSecret:   "vipd-heartbeat-key",
		VIPLifetime:       2 * time.Second,
		HealthAddr:        "127.0.0.1:7948",
		LogLevel:          "info",
		LogFormat:         "text",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

// TestPrecedence sets each setting at every level and checks that the
// flag beats vipd's variable, which beats kube-vip's, which beats the default.
func TestPrecedence(t *testing.T) {
	v4 := netip.MustParseAddr
	cpOn := map[string]string{"cp_enable": "true", "vip_address": "192.0.2.10"}
	cases := []struct {
		flag                string
		flagVal, vipd, kube string
		wantFlag, wantVIPD  any
		wantKube, wantDef   any
		env                 map[string]string // extra environment the values need
		get                 func(Config) any
	}{
		{flag: "address", flagVal: "192.0.2.1", vipd: "198.51.100.1,2001:db8::1", kube: "203.0.113.1",
			wantFlag: []netip.Addr{v4("192.0.2.1")}, wantVIPD: []netip.Addr{v4("198.51.100.1"), v4("2001:db8::1")},
			wantKube: []netip.Addr{v4("203.0.113.1")}, wantDef: []netip.Addr(nil),
			get: func(c Config) any { return c.VIPs }},
		{flag: "interface", flagVal: "eth0", vipd: "bond0.100", kube: "ens3",
			wantFlag: "eth0", wantVIPD: "bond0.100", wantKube: "ens3", wantDef: "",
			get: func(c Config) any { return c.Interface }},
		{flag: "arp", flagVal: "false", vipd: "1", kube: "F",
			wantFlag: false, wantVIPD: true, wantKube: false, wantDef: true,
			get: func(c Config) any { return c.ARP }},
		{flag: "arp-rate", flagVal: "2s", vipd: "750ms", kube: "1500",
			wantFlag: 2 * time.Second, wantVIPD: 750 * time.Millisecond, wantKube: 1500 * time.Millisecond, wantDef: 3 * time.Second,
			get: func(c Config) any { return c.ARPRate }},
		{flag: "control-plane", flagVal: "true", vipd: "false", kube: "TRUE",
			wantFlag: true, wantVIPD: false, wantKube: true, wantDef: false,
			env: map[string]string{"vip_address": "192.0.2.10"},
			get: func(c Config) any { return c.ControlPlane }},
		{flag: "namespace", flagVal: "vip-a", vipd: "vip-b", kube: "vip-c",
			wantFlag: "vip-a", wantVIPD: "vip-b", wantKube: "vip-c", wantDef: "kube-system",
			get: func(c Config) any { return c.Namespace }},
		{flag: "lease-name", flagVal: "a-lock", vipd: "b.lock", kube: "c-lock",
			wantFlag: "a-lock", wantVIPD: "b.lock", wantKube: "c-lock", wantDef: "plndr-cp-lock",
			get: func(c Config) any { return c.LeaseName }},
		{flag: "lease-duration", flagVal: "10s", vipd: "9500ms", kube: "8",
			wantFlag: 10 * time.Second, wantVIPD: 9500 * time.Millisecond, wantKube: 8 * time.Second, wantDef: 5 * time.Second,
			get: func(c Config) any { return c.LeaseDuration }},
		{flag: "renew-deadline", flagVal: "4s", vipd: "2500ms", kube: "2",
			wantFlag: 4 * time.Second, wantVIPD: 2500 * time.Millisecond, wantKube: 2 * time.Second, wantDef: 3 * time.Second,
			get: func(c Config) any { return c.RenewDeadline }},
		{flag: "retry-period", flagVal: "1500ms", vipd: "1200ms", kube: "1",
			wantFlag: 1500 * time.Millisecond, wantVIPD: 1200 * time.Millisecond, wantKube: time.Second, wantDef: time.Second,
			get: func(c Config) any { return c.RetryPeriod }},
		{flag: "node-name", flagVal: "node-1", vipd: "node-2.example", kube: "node-3",
			wantFlag: "node-1", wantVIPD: "node-2.example", wantKube: "node-3", wantDef: hostName(t),
			get: func(c Config) any { return c.NodeName }},
		{flag: "preserve-vip-on-leadership-loss", flagVal: "true", vipd: "false", kube: "t",
			wantFlag: true, wantVIPD: false, wantKube: true, wantDef: false,
			get: func(c Config) any { return c.PreserveVIPOnLeadershipLoss }},
		{flag: "kubeconfig", flagVal: "/a/config", vipd: "/b/config", kube: "/c/config",
			wantFlag: "/a/config", wantVIPD: "/b/config", wantKube: "/c/config", wantDef: "",
			get: func(c Config) any { return c.Kubeconfig }},
		{flag: "metrics-addr", flagVal: ":2112", vipd: "127.0.0.1:9000", kube: "[2001:db8::1]:2112",
			wantFlag: ":2112", wantVIPD: "127.0.0.1:9000", wantKube: "[2001:db8::1]:2112", wantDef: "",
			get: func(c Config) any { return c.MetricsAddr }},
		{flag: "services", flagVal: "true", vipd: "false", kube: "true",
			wantFlag: true, wantVIPD: false, wantKube: true, wantDef: false,
			env: cpOn,
			get: func(c Config) any { return c.Services }},
		{flag: "service-election", flagVal: "true", vipd: "false", kube: "true",
			wantFlag: true, wantVIPD: false, wantKube: true, wantDef: false,
			get: func(c Config) any { return c.ServiceElection }},
		{flag: "service-namespace", flagVal: "team-a", vipd: "team-b", kube: "team-c",
			wantFlag: "team-a", wantVIPD: "team-b", wantKube: "team-c", wantDef: "",
			get: func(c Config) any { return c.ServiceNamespace }},
		{flag: "service-lease-name", flagVal: "svc-a", vipd: "svc-b", kube: "svc-c",
			wantFlag: "svc-a", wantVIPD: "svc-b", wantKube: "svc-c", wantDef: "plndr-svcs-lock",
			get: func(c Config) any { return c.ServiceLeaseName }},
		{flag: "lb-class", flagVal: "example.com/a", vipd: "b", kube: "example.com/c.d_e",
			wantFlag: "example.com/a", wantVIPD: "b", wantKube: "example.com/c.d_e", wantDef: "kube-vip.io/kube-vip-class",
			get: func(c Config) any { return c.LoadBalancerClass }},
		{flag: "lb-class-only", flagVal: "true", vipd: "false", kube: "1",
			wantFlag: true, wantVIPD: false, wantKube: true, wantDef: false,
			get: func(c Config) any { return c.LoadBalancerClassOnly }},
		{flag: "heartbeat-port", flagVal: "0", vipd: "8000",
			wantFlag: 0, wantVIPD: 8000, wantDef: 7947,
			get: func(c Config) any { return c.HeartbeatPort }},
		{flag: "vip-lifetime", flagVal: "0", vipd: "5s",
			wantFlag: time.Duration(0), wantVIPD: 5 * time.Second, wantDef: 2 * time.Second,
			get: func(c Config) any { return c.VIPLifetime }},
		{flag: "agent-namespace", flagVal: "vipd-a", vipd: "vipd-b",
			wantFlag: "vipd-a", wantVIPD: "vipd-b", wantDef: "kube-system",
			get: func(c Config) any { return c.AgentNamespace }},
		{flag: "heartbeat-key-file", flagVal: "/a/key", vipd: "/b/key",
			wantFlag: "/a/key", wantVIPD: "/b/key", wantDef: "",
			get: func(c Config) any { return c.HeartbeatKeyFile }},
		{flag: "heartbeat-key-secret", flagVal: "key-a", vipd: "key-b",
			wantFlag: "key-a", wantVIPD: "key-b", wantDef: "vipd-heartbeat-key",
			get: func(c Config) any { return c.HeartbeatSecret }},
		{flag: "heartbeat-insecure", flagVal: "true", vipd: "false",
			wantFlag: true, wantVIPD: false, wantDef: false,
			get: func(c Config) any { return c.HeartbeatInsecure }},
		{flag: "services-interface", flagVal: "eth1", vipd: "bond0.200", kube: "ens4",
			wantFlag: "eth1", wantVIPD: "bond0.200", wantKube: "ens4", wantDef: "",
			get: func(c Config) any { return c.ServicesInterface }},
		{flag: "node-selector", flagVal: "zone=a", vipd: "vipd.example/edge in (yes, true),!gpu",
			wantFlag: "zone=a", wantVIPD: "!gpu,vipd.example/edge in (true,yes)", wantDef: "",
			get: func(c Config) any { return c.NodeSelector }},
		{flag: "service-exclude-control-plane", flagVal: "true", vipd: "false",
			wantFlag: true, wantVIPD: false, wantDef: false,
			get: func(c Config) any { return c.ServiceExcludeControlPlane }},
		{flag: "pool-configmap", flagVal: "pools-a", vipd: "pools.b",
			wantFlag: "pools-a", wantVIPD: "pools.b", wantDef: "kubevip",
			get: func(c Config) any { return c.PoolConfigMap }},
		{flag: "pool-namespace", flagVal: "net-a", vipd: "net-b",
			wantFlag: "net-a", wantVIPD: "net-b", wantDef: "kube-system",
			get: func(c Config) any { return c.PoolNamespace }},
		{flag: "debug-addr", flagVal: "127.0.0.1:6060", vipd: "[::1]:6061",
			wantFlag: "127.0.0.1:6060", wantVIPD: "[::1]:6061", wantDef: "",
			get: func(c Config) any { return c.DebugAddr }},
		{flag: "health-addr", flagVal: ":7000", vipd: "[::1]:7001",
			wantFlag: ":7000", wantVIPD: "[::1]:7001", wantDef: "127.0.0.1:7948",
			get: func(c Config) any { return c.HealthAddr }},
		{flag: "log-level", flagVal: "debug", vipd: "ERROR", kube: "3",
			wantFlag: "debug", wantVIPD: "error", wantKube: "warn", wantDef: "info",
			get: func(c Config) any { return c.LogLevel }},
		{flag: "log-format", flagVal: "json", vipd: "TEXT",
			wantFlag: "json", wantVIPD: "text", wantDef: "text",
			get: func(c Config) any { return c.LogFormat }},
	}

	// Every registered flag must have a row here.
	fs := pflag.NewFlagSet("vipd", pflag.ContinueOnError)
	AddFlags(fs)
	covered := map[string]bool{}
	for _, tc := range cases {
		covered[tc.flag] = true
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if !covered[f.Name] {
			t.Errorf("flag --%s has no precedence test", f.Name)
		}
	})

	for _, tc := range cases {
		t.Run(tc.flag, func(t *testing.T) {
			// base is the environment without this setting's own names.
			base := func() map[string]string {
				env := minimal()
				for k, v := range tc.env {
					env[k] = v
				}
				delete(env, envName(tc.flag))
				for _, k := range kubeVIPNames(tc.flag) {
					delete(env, k)
				}
				return env
			}
			check := func(t *testing.T, args []string, env map[string]string, want any) {
				t.Helper()
				c, err := load(t, args, env)
				if err != nil {
					t.Fatalf("args %q env %v: %v", args, env, err)
				}
				if got := tc.get(c); !reflect.DeepEqual(got, want) {
					t.Errorf("args %q env %v: got %v, want %v", args, env, got, want)
				}
			}
			kube := kubeVIPNames(tc.flag)

			env := base()
			env[envName(tc.flag)] = tc.vipd
			for _, k := range kube {
				env[k] = tc.kube
			}
			check(t, []string{"--" + tc.flag + "=" + tc.flagVal}, env, tc.wantFlag)
			check(t, nil, env, tc.wantVIPD)
			for _, k := range kube {
				env := base()
				env[k] = tc.kube
				check(t, nil, env, tc.wantKube)
			}
			check(t, nil, base(), tc.wantDef)
		})
	}
}

func hostName(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return strings.ToLower(h)
}

func TestBoolFlagWithoutValue(t *testing.T) {
	c, err := load(t, []string{"--control-plane", "--address", "192.0.2.10", "--arp=false"}, map[string]string{"vip_nodename": "n"})
	if err != nil {
		t.Fatal(err)
	}
	if !c.ControlPlane || c.ARP {
		t.Errorf("ControlPlane %v ARP %v, want true false", c.ControlPlane, c.ARP)
	}
}

func TestKubeconfigBeforeKUBECONFIG(t *testing.T) {
	env := minimal()
	env["k8s_config_file"] = "/etc/kube-vip/admin.conf"
	env["KUBECONFIG"] = "/root/.kube/config"
	c, err := load(t, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubeconfig != "/etc/kube-vip/admin.conf" {
		t.Errorf("Kubeconfig %q, want k8s_config_file's value", c.Kubeconfig)
	}
	// An explicit empty flag means in-cluster even with KUBECONFIG set.
	c, err = load(t, []string{"--kubeconfig="}, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubeconfig != "" {
		t.Errorf("Kubeconfig %q after --kubeconfig=, want empty", c.Kubeconfig)
	}
}

func TestEmptyEnvIsUnset(t *testing.T) {
	env := minimal()
	env["VIPD_LEASE_NAME"] = ""
	env["vip_leasename"] = "from-kube-vip"
	env["vip_arp"] = "  "
	c, err := load(t, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.LeaseName != "from-kube-vip" || !c.ARP {
		t.Errorf("LeaseName %q ARP %v, want from-kube-vip true", c.LeaseName, c.ARP)
	}
}

func TestAddresses(t *testing.T) {
	ok := map[string][]string{
		"192.0.2.10":                 {"192.0.2.10"},
		"2001:db8::10":               {"2001:db8::10"},
		"192.0.2.10,2001:db8::10":    {"192.0.2.10", "2001:db8::10"},
		" 2001:db8::10 , 192.0.2.10": {"2001:db8::10", "192.0.2.10"},
	}
	for raw, want := range ok {
		env := minimal()
		env["vip_address"] = raw
		c, err := load(t, nil, env)
		if err != nil {
			t.Errorf("%q: %v", raw, err)
			continue
		}
		var got []string
		for _, a := range c.VIPs {
			got = append(got, a.String())
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got %v, want %v", raw, got, want)
		}
	}
	// The same address under both kube-vip names is no conflict.
	env := minimal()
	env["address"], env["vip_address"] = "192.0.2.10", "192.0.2.10"
	if _, err := load(t, nil, env); err != nil {
		t.Errorf("address and vip_address equal: %v", err)
	}
}

func TestLogLevels(t *testing.T) {
	for raw, want := range map[string]string{
		"0": "error", "2": "error", "3": "warn", "4": "info", "5": "debug", "6": "debug",
		"Debug": "debug", "warning": "warn", "info": "info",
	} {
		env := minimal()
		env["vip_loglevel"] = raw
		c, err := load(t, nil, env)
		if err != nil {
			t.Errorf("vip_loglevel %q: %v", raw, err)
			continue
		}
		if c.LogLevel != want {
			t.Errorf("vip_loglevel %q: got %q, want %q", raw, c.LogLevel, want)
		}
	}
}

func TestLeaderElectionTrueAccepted(t *testing.T) {
	env := minimal()
	env["vip_leaderelection"] = "true"
	if _, err := load(t, nil, env); err != nil {
		t.Error(err)
	}
}

func TestARPOffAllowed(t *testing.T) {
	env := minimal()
	env["vip_arp"] = "false"
	c, err := load(t, nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.ARP {
		t.Error("ARP still on after vip_arp=false")
	}
}

// TestErrors checks each rejected value and that the message names the
// flag or variable the operator used.
func TestErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  map[string]string // added to minimal(); "-" removes a key
		want string            // the whole message, or a prefix if it ends in "…"
	}{
		{"services interface auto", nil, map[string]string{"vip_servicesinterface": "auto"},
			`vip_servicesinterface "auto": finding each Service's interface from its address is not supported; name the interface`},
		{"services interface too long", []string{"--services-interface=a-very-long-ifname"}, nil,
			`--services-interface "a-very-long-ifname": interface names are at most 15 characters`},
		{"bad node selector", nil, map[string]string{"VIPD_NODE_SELECTOR": "zone=a=b"},
			`VIPD_NODE_SELECTOR "zone=a=b": not a label selector: …`},
		{"bad IP env", nil, map[string]string{"vip_address": "10.0.0.x"},
			`vip_address "10.0.0.x": not an IP address`},
		{"bad IP flag", []string{"--address=192.0.2.300"}, nil,
			`--address "192.0.2.300": not an IP address`},
		{"bad IP in list", nil, map[string]string{"VIPD_ADDRESS": "192.0.2.1,nope"},
			`VIPD_ADDRESS "192.0.2.1,nope": "nope" is not an IP address`},
		{"CIDR", nil, map[string]string{"address": "192.0.2.1/32"},
			`address "192.0.2.1/32": not an IP address`},
		{"two IPv4", nil, map[string]string{"address": "192.0.2.1,192.0.2.2"},
			`address "192.0.2.1,192.0.2.2": two addresses of the same family; give at most one IPv4 and one IPv6 address`},
		{"two IPv6", nil, map[string]string{"address": "2001:db8::1,2001:db8::2"},
			`address "2001:db8::1,2001:db8::2": two addresses of the same family…`},
		{"three", nil, map[string]string{"address": "192.0.2.1,2001:db8::2,198.51.100.1"},
			`address "192.0.2.1,2001:db8::2,198.51.100.1": at most one IPv4 and one IPv6 address`},
		{"empty list entry", nil, map[string]string{"address": "192.0.2.1,"},
			`address "192.0.2.1,": "" is not an IP address`},
		{"unspecified", nil, map[string]string{"address": "0.0.0.0"},
			`address=0.0.0.0 asks for a VIP by DHCP, which vipd does not do: set a fixed address`},
		{"unspecified v6", nil, map[string]string{"address": "::"},
			`address=:: asks for a VIP by DHCP, which vipd does not do: set a fixed address`},
		{"loopback", nil, map[string]string{"address": "127.0.0.1"},
			`address "127.0.0.1": 127.0.0.1 is a loopback address`},
		{"loopback v6", nil, map[string]string{"address": "::1"},
			`address "::1": ::1 is a loopback address`},
		{"multicast", nil, map[string]string{"address": "224.0.0.18"},
			`address "224.0.0.18": 224.0.0.18 is a multicast address`},
		{"multicast v6", nil, map[string]string{"address": "ff02::1"},
			`address "ff02::1": ff02::1 is a multicast address`},
		{"broadcast", nil, map[string]string{"address": "255.255.255.255"},
			`address "255.255.255.255": 255.255.255.255 is the broadcast address`},
		{"zone", nil, map[string]string{"address": "fe80::1%eth0"},
			`address "fe80::1%eth0": fe80::1%eth0 is scoped to a zone…`},
		{"mapped", nil, map[string]string{"address": "::ffff:192.0.2.1"},
			`address "::ffff:192.0.2.1": ::ffff:192.0.2.1 is an IPv4-mapped IPv6 address; write the IPv4 address`},
		{"address and vip_address disagree", nil, map[string]string{"address": "192.0.2.1", "vip_address": "192.0.2.2"},
			`address "192.0.2.1" and vip_address "192.0.2.2" disagree; set only one`},

		{"interface too long", nil, map[string]string{"vip_interface": "abcdefghijklmnop"},
			`vip_interface "abcdefghijklmnop": interface names are at most 15 characters`},
		{"interface slash", []string{"--interface=eth/0"}, nil,
			`--interface "eth/0": interface names cannot contain '/', ':' or spaces`},
		{"interface space", nil, map[string]string{"VIPD_INTERFACE": "eth 0"},
			`VIPD_INTERFACE "eth 0": interface names cannot contain '/', ':' or spaces`},
		{"interface colon", nil, map[string]string{"vip_interface": "eth0:1"},
			`vip_interface "eth0:1": interface names cannot contain '/', ':' or spaces`},
		{"interface dot", nil, map[string]string{"vip_interface": ".."},
			`vip_interface "..": not an interface name`},

		{"bad arp", nil, map[string]string{"vip_arp": "yes"},
			`vip_arp "yes": not a boolean (use true or false)`},
		{"bad arp rate", nil, map[string]string{"vip_arpRate": "fast"},
			`vip_arpRate "fast": not a duration (use e.g. 1500ms, or an integer number of milliseconds)`},
		{"zero arp rate", []string{"--arp-rate=0"}, nil,
			`--arp-rate "0": must be greater than zero`},
		{"bad cp_enable", nil, map[string]string{"cp_enable": "on"},
			`cp_enable "on": not a boolean (use true or false)`},
		{"bad namespace", nil, map[string]string{"cp_namespace": "Kube_System"},
			`cp_namespace "Kube_System": not a valid namespace name (lower-case letters, digits and '-', at most 63 characters)`},
		{"bad lease name", nil, map[string]string{"vip_leasename": "my lock"},
			`vip_leasename "my lock": not a valid Lease name (lower-case letters, digits, '-' and '.', at most 253 characters)`},
		{"bad lease duration", nil, map[string]string{"vip_leaseduration": "5x"},
			`vip_leaseduration "5x": not a duration (use e.g. 1500ms, or an integer number of seconds)`},
		{"zero lease duration", nil, map[string]string{"VIPD_LEASE_DURATION": "0s"},
			`VIPD_LEASE_DURATION "0s": must be greater than zero`},
		{"negative renew deadline", []string{"--renew-deadline=-1s"}, nil,
			`--renew-deadline "-1s": must be greater than zero`},
		{"bad renew deadline", nil, map[string]string{"vip_renewdeadline": "1.5"},
			`vip_renewdeadline "1.5": not a duration (use e.g. 1500ms, or an integer number of seconds)`},
		{"zero retry period", nil, map[string]string{"vip_retryperiod": "0"},
			`vip_retryperiod "0": must be greater than zero`},
		{"huge retry period", nil, map[string]string{"vip_retryperiod": "99999999999999"},
			`vip_retryperiod "99999999999999": out of range`},
		{"renew not shorter than lease", []string{"--renew-deadline=3s", "--lease-duration=2s"}, nil,
			`--renew-deadline (3s) must be shorter than --lease-duration (2s)`},
		{"renew vs lease from env", nil, map[string]string{"vip_leaseduration": "3"},
			`--renew-deadline (default 3s) must be shorter than vip_leaseduration (3s)`},
		{"retry not shorter than renew", nil, map[string]string{"vip_retryperiod": "3", "VIPD_RENEW_DEADLINE": "2s"},
			`vip_retryperiod (3s) must be shorter than VIPD_RENEW_DEADLINE (2s)`},
		{"retry more than half the renew deadline", nil, map[string]string{"vip_retryperiod": "2"},
			`vip_retryperiod (2s) must be at most half of --renew-deadline (default 3s): a holder needs a regular renewal and the check of a shared API outage to fit before its deadline`},
		{"lease 5s renew 4.5s retry 4s", nil, map[string]string{"vip_leaseduration": "5", "vip_renewdeadline": "4500ms", "vip_retryperiod": "4"},
			`vip_retryperiod (4s) must be at most half of vip_renewdeadline (4.5s)…`},
		{"no room between renew deadline and lease", nil, map[string]string{"vip_leaseduration": "5", "vip_renewdeadline": "4500ms", "vip_retryperiod": "1"},
			`vip_leaseduration (5s) must be at least vip_renewdeadline (4.5s) plus vip_retryperiod (1s): a holder that cannot renew must be gone before the others may take over`},
		{"retry below minimum", []string{"--retry-period=50ms"}, nil,
			`--retry-period (50ms) is below the minimum of 100ms`},
		{"bad heartbeat secret", nil, map[string]string{"VIPD_HEARTBEAT_KEY_SECRET": "Key_A"},
			`VIPD_HEARTBEAT_KEY_SECRET "Key_A": not a valid Secret name…`},
		{"insecure with key file", []string{"--heartbeat-insecure", "--heartbeat-key-file=/etc/vipd/key"}, nil,
			`--heartbeat-insecure and --heartbeat-key-file contradict each other: a key authenticates heartbeats; set only one`},
		{"bad agent namespace", nil, map[string]string{"VIPD_AGENT_NAMESPACE": "Vipd"},
			`VIPD_AGENT_NAMESPACE "Vipd": not a valid namespace name…`},
		{"empty node name flag", []string{"--node-name="}, nil,
			`--node-name "": must not be empty`},
		{"bad node name", nil, map[string]string{"vip_nodename": "Node_A"},
			`vip_nodename "Node_A": not a valid node name (lower-case letters, digits, '-' and '.', at most 253 characters)`},
		{"bad preserve", nil, map[string]string{"vip_preserve_on_leadership_loss": "2"},
			`vip_preserve_on_leadership_loss "2": not a boolean (use true or false)`},
		{"bad metrics addr", nil, map[string]string{"prometheus_server": "2112"},
			`prometheus_server "2112": not a listen address (use host:port, e.g. :2112)`},
		{"metrics port 0", nil, map[string]string{"VIPD_METRICS_ADDR": ":0"},
			`VIPD_METRICS_ADDR ":0": not a listen address (use host:port, e.g. :2112)`},
		{"bad heartbeat port", []string{"--heartbeat-port=70000"}, nil,
			`--heartbeat-port "70000": not a port number (0 to 65535; 0 turns it off)`},
		{"sub-second VIP lifetime", nil, map[string]string{"VIPD_VIP_LIFETIME": "500ms"},
			`VIPD_VIP_LIFETIME "500ms": must be whole seconds, at least 1s (the kernel counts address lifetimes in seconds), or 0`},
		{"bad svc_enable", nil, map[string]string{"svc_enable": "enabled"},
			`svc_enable "enabled": not a boolean (use true or false)`},
		{"bad svc_election", nil, map[string]string{"svc_election": "nope"},
			`svc_election "nope": not a boolean (use true or false)`},
		{"bad svc_namespace", nil, map[string]string{"svc_namespace": "a.b"},
			`svc_namespace "a.b": not a valid namespace name…`},
		{"bad svc_leasename", []string{"--service-lease-name=UPPER"}, nil,
			`--service-lease-name "UPPER": not a valid Lease name…`},
		{"one Lease for both elections", []string{"--service-lease-name=plndr-cp-lock"}, map[string]string{"svc_enable": "true"},
			`--lease-name and --service-lease-name both name the Lease "plndr-cp-lock": the control-plane election and the Services' one need a Lease each`},
		{"one Lease for both elections, kube-vip names", nil, map[string]string{"svc_enable": "true", "vip_leasename": "x-lock", "svc_leasename": "x-lock"},
			`vip_leasename and svc_leasename both name the Lease "x-lock"…`},
		{"bad lb_class_name", nil, map[string]string{"lb_class_name": "kube-vip.io/"},
			`lb_class_name "kube-vip.io/": not a valid loadBalancerClass (an optional DNS-subdomain prefix and '/', then a name…`},
		{"bad lb class prefix", []string{"--lb-class=Example_Com/x"}, nil,
			`--lb-class "Example_Com/x": not a valid loadBalancerClass…`},
		{"bad lb_class_only", nil, map[string]string{"lb_class_only": "only"},
			`lb_class_only "only": not a boolean (use true or false)`},
		{"bad pool configmap", nil, map[string]string{"VIPD_POOL_CONFIGMAP": "Kube VIP"},
			`VIPD_POOL_CONFIGMAP "Kube VIP": not a valid ConfigMap name (lower-case letters, digits, '-' and '.', at most 253 characters)`},
		{"bad pool namespace", []string{"--pool-namespace=kube.system"}, nil,
			`--pool-namespace "kube.system": not a valid namespace name…`},
		{"unknown log level", []string{"--log-level=verbose"}, nil,
			`--log-level "verbose": unknown log level (use debug, info, warn or error)`},
		{"unknown log format", nil, map[string]string{"VIPD_LOG_FORMAT": "logfmt"},
			`VIPD_LOG_FORMAT "logfmt": unknown log format (use text or json)`},
		{"numeric log level outside vip_loglevel", nil, map[string]string{"VIPD_LOG_LEVEL": "5"},
			`VIPD_LOG_LEVEL "5": unknown log level (use debug, info, warn or error)`},
		{"negative vip_loglevel", nil, map[string]string{"vip_loglevel": "-1"},
			`vip_loglevel "-1": unknown log level (use 0-6, or debug, info, warn or error)`},
		{"vip_loglevel too high", nil, map[string]string{"vip_loglevel": "7"},
			`vip_loglevel "7": unknown log level…`},
		{"leader election off", nil, map[string]string{"vip_leaderelection": "false"},
			`vip_leaderelection=false with svc_enable=true is not supported unless svc_election=true: without an election every node would answer for every Service VIP; set svc_election=true (one election per Service)`},
		{"leader election off with the control plane", nil, map[string]string{"vip_leaderelection": "false", "svc_election": "true", "cp_enable": "true", "vip_address": "192.0.2.1"},
			`vip_leaderelection=false with cp_enable=true is not supported: without an election every control-plane node would answer for the VIP; set vip_leaderelection=true`},
		{"leader election bad bool", nil, map[string]string{"vip_leaderelection": "maybe"},
			`vip_leaderelection "maybe": not a boolean (use true or false)`},

		{"nothing to do", nil, map[string]string{"svc_enable": "-"},
			`nothing to do: --control-plane and --services are both false; enable the control-plane VIP or Services`},
		{"nothing to do explicit", nil, map[string]string{"svc_enable": "false", "cp_enable": "0"},
			`nothing to do: cp_enable and svc_enable are both false; enable the control-plane VIP or Services`},
		{"control plane without address", nil, map[string]string{"cp_enable": "true"},
			`cp_enable is true but no VIP is set (--address, VIPD_ADDRESS, address, vip_address)`},
		{"control plane flag without address", []string{"--control-plane"}, nil,
			`--control-plane is true but no VIP is set…`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := minimal()
			for k, v := range tc.env {
				if v == "-" {
					delete(env, k)
				} else {
					env[k] = v
				}
			}
			_, err := load(t, tc.args, env)
			if err == nil {
				t.Fatalf("args %q env %v: no error, want %q", tc.args, env, tc.want)
			}
			got := err.Error()
			if prefix, ok := strings.CutSuffix(tc.want, "…"); ok {
				if !strings.HasPrefix(got, prefix) {
					t.Errorf("error %q\nwant prefix %q", got, prefix)
				}
			} else if got != tc.want {
				t.Errorf("error %q\n      want %q", got, tc.want)
			}
			if strings.Contains(got, "\n") {
				t.Errorf("error %q spans lines", got)
			}
		})
	}
}

// TestDocsNameEverySetting keeps docs/configuration.md in step with the code.
func TestDocsNameEverySetting(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("vipd", pflag.ContinueOnError)
	AddFlags(fs)
	names := []string{"`" + envLeaderElection + "`"}
	fs.VisitAll(func(f *pflag.Flag) {
		names = append(names, "`--"+f.Name+"`", "`"+envName(f.Name)+"`")
		for _, k := range kubeVIPNames(f.Name) {
			names = append(names, "`"+k+"`")
		}
	})
	for _, n := range names {
		if !strings.Contains(string(doc), n) {
			t.Errorf("docs/configuration.md does not mention %s", n)
		}
	}
}
