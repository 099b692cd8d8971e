package config

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/vipd/vipd/internal/address"
)

// FuzzLoad feeds the settings most often mistyped (addresses, timings,
// names, ports) through flags and kube-vip's environment variables: Load
// never panics, and whatever it accepts satisfies what the rest of vipd
// relies on.
func FuzzLoad(f *testing.F) {
	f.Add("198.51.100.100", "5", "3", "1", "eth0", "--metrics-addr=:2112")
	f.Add("198.51.100.100,2001:db8::100", "5s", "3000ms", "1s", "", "")
	f.Add("2001:db8::1,198.51.100.1,192.0.2.1", "0", "-1", "1e9", "eth0.100", "--heartbeat-port=70000")
	f.Add("fe80::1%eth0", "1h", "59m", "1ns", "a/b", "--address")
	f.Add("", "", "", "", strings.Repeat("x", 20), "--lease-duration=5s --renew-deadline=5s")
	f.Fuzz(func(t *testing.T, vip, lease, renew, retry, iface, args string) {
		fs := pflag.NewFlagSet("vipd", pflag.ContinueOnError)
		fs.Usage = func() {}
		AddFlags(fs)
		if fs.Parse(strings.Fields(args)) != nil {
			return
		}
		env := map[string]string{"vip_nodename": "node-a", "cp_enable": "true", "svc_enable": "true",
			"vip_address": vip, "vip_leaseduration": lease, "vip_renewdeadline": renew,
			"vip_retryperiod": retry, "vip_interface": iface}
		c, err := Load(fs, func(k string) string { return env[k] })
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error that says nothing")
			}
			return
		}
		if c.RetryPeriod < MinRetryPeriod || 2*c.RetryPeriod > c.RenewDeadline || c.RenewDeadline+c.RetryPeriod > c.LeaseDuration {
			t.Fatalf("accepted timings outside the safety argument: %v %v %v", c.LeaseDuration, c.RenewDeadline, c.RetryPeriod)
		}
		if c.ControlPlane && len(c.VIPs) == 0 || len(c.VIPs) > 2 {
			t.Fatalf("accepted %d control-plane VIPs", len(c.VIPs))
		}
		for _, v := range c.VIPs {
			if p := address.VIPProblem(v); p != "" {
				t.Fatalf("accepted VIP %s: %s", v, p)
			}
		}
		if len(c.VIPs) == 2 && c.VIPs[0].Is4() == c.VIPs[1].Is4() {
			t.Fatalf("accepted two VIPs of one family: %v", c.VIPs)
		}
		if c.HeartbeatPort < 0 || c.HeartbeatPort > 65535 {
			t.Fatalf("accepted heartbeat port %d", c.HeartbeatPort)
		}
	})
}
