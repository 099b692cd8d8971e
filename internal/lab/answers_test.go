package lab

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"
)

// TestWatchAnswers: the client's questions are answered by the node that
// has the address (IPv4 and IPv6), by nobody for an address nobody has,
// and each answer lands in the round that asked.
func TestWatchAnswers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for the lab")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	l, err := New(ctx, Options{Nodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	n := l.Nodes[0]
	held4, held6 := netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8:100::7")
	nobody := netip.MustParseAddr("192.0.2.8")
	for _, a := range []string{held4.String() + "/32", held6.String() + "/128"} {
		if _, err := l.Exec(ctx, n.Netns, "ip", "addr", "add", a, "dev", "eth0", "nodad"); err != nil {
			t.Fatal(err)
		}
	}
	a, err := l.Client.WatchAnswers(ctx, []netip.Addr{held4, held6, nobody}, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	a.Close()
	if err := a.Err(); err != nil {
		t.Fatal(err)
	}
	for _, ip := range []netip.Addr{held4, held6} {
		rs := a.Rounds(ip)
		answered := 0
		for _, r := range rs[:len(rs)-1] {
			if len(r.MACs) > 1 || len(r.MACs) == 1 && r.MACs[0] != n.MAC.String() {
				t.Errorf("%s: round at %v answered by %v", ip, r.At, r.MACs)
			}
			if slices.Contains(r.MACs, n.MAC.String()) {
				answered++
			}
		}
		// A round may lose its answer on a busy machine; most must not.
		if answered < len(rs)/2 {
			t.Errorf("%s: %d of %d rounds answered", ip, answered, len(rs))
		}
	}
	for _, r := range a.Rounds(nobody) {
		if len(r.MACs) > 0 {
			t.Errorf("%s, which nobody has, answered by %v", nobody, r.MACs)
		}
	}
}
