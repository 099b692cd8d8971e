package agent

import (
	"log/slog"
	"net/netip"
	"testing"

	"k8s.io/client-go/rest"
)

func TestBypassVIP(t *testing.T) {
	vips := []netip.Addr{netip.MustParseAddr("198.51.100.100"), netip.MustParseAddr("2001:db8:100::100")}
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		host, wantHost, wantName string
	}{
		// kubeadm's admin.conf names the control-plane endpoint: go local.
		{"https://198.51.100.100:6443", "https://127.0.0.1:6443", "198.51.100.100"},
		{"https://[2001:db8:100::100]:6443", "https://[::1]:6443", "2001:db8:100::100"},
		{"https://198.51.100.100", "https://127.0.0.1:443", "198.51.100.100"},
		// Anything else is left alone.
		{"https://198.51.100.2:6443", "https://198.51.100.2:6443", ""},
		{"https://api.example:6443", "https://api.example:6443", ""},
	} {
		rc := &rest.Config{Host: tc.host}
		if err := bypassVIP(rc, vips, log); err != nil {
			t.Fatalf("%s: %v", tc.host, err)
		}
		if rc.Host != tc.wantHost || rc.TLSClientConfig.ServerName != tc.wantName {
			t.Errorf("%s: got host %q, TLS server name %q; want %q, %q", tc.host, rc.Host, rc.TLSClientConfig.ServerName, tc.wantHost, tc.wantName)
		}
	}
	// A server name set in the kubeconfig wins.
	rc := &rest.Config{Host: "https://198.51.100.100:6443", TLSClientConfig: rest.TLSClientConfig{ServerName: "kubernetes"}}
	if err := bypassVIP(rc, vips, log); err != nil || rc.TLSClientConfig.ServerName != "kubernetes" {
		t.Errorf("server name %q (%v), want kubernetes kept", rc.TLSClientConfig.ServerName, err)
	}
}
