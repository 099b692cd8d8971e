package conflict_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/conflict"
	"github.com/vipd/vipd/internal/lab"
)

// TestProbeAndWatch: on the lab's segment, the client is a foreign host
// that has an IPv4 and an IPv6 address. A probe from the node finds both
// (and not a free address); a vipd MAC is not a conflict; a gratuitous
// announcement by the client of an address the node holds is reported.
func TestProbeAndWatch(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for the lab")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Options{Nodes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := l.Client
	taken4, taken6 := netip.MustParseAddr("192.0.2.5"), netip.MustParseAddr("2001:db8:100::5")
	free := netip.MustParseAddr("192.0.2.6")
	for _, a := range []string{taken4.String() + "/32", taken6.String() + "/128"} {
		if _, err := l.Exec(ctx, c.Netns, "ip", "addr", "add", a, "dev", "eth0", "nodad"); err != nil {
			t.Fatal(err)
		}
	}
	ours := map[string]bool{}
	answers := make(chan conflict.Answer, 8)
	var d *conflict.Detector
	err = lab.InNetns(l.Nodes[0].Netns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		d, err = conflict.New(ifi, func(m net.HardwareAddr) bool { return ours[m.String()] }, func(a conflict.Answer) { answers <- a }, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	got, err := d.Probe(ctx, []netip.Addr{taken4, taken6, free}, 60*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{taken4, taken6} {
		if got[a].String() != c.MAC.String() {
			t.Errorf("probe for %s: answered by %v, want the client %v", a, got[a], c.MAC)
		}
	}
	if m, ok := got[free]; ok {
		t.Errorf("probe for the free %s answered by %v", free, m)
	}

	ours[c.MAC.String()] = true
	if got, err := d.Probe(ctx, []netip.Addr{taken4}, 60*time.Millisecond); err != nil || len(got) > 0 {
		t.Errorf("a vipd node's MAC counted as a conflict: %v (%v)", got, err)
	}
	delete(ours, c.MAC.String())

	// The client pings the node from the held address: its ARP request
	// names the address as its own. (The node has no route back, so the
	// ping itself goes unanswered.)
	d.SetHeld([]netip.Addr{taken4})
	_, _ = l.Exec(ctx, c.Netns, "ping", "-c1", "-W1", "-I", taken4.String(), l.Nodes[0].IPv4.String())
	select {
	case a := <-answers:
		if a.IP != taken4 || a.MAC.String() != c.MAC.String() {
			t.Errorf("reported %+v", a)
		}
	case <-time.After(5 * time.Second):
		t.Error("a foreign host claiming a held address was not reported")
	}

	// The readers get only what concerns watched addresses: with the
	// largest IPv6 list the kernel filter takes (a program near the
	// kernel's limit) and a whole /24 held, the client's ARP from an
	// address not held is dropped in the kernel; the one from a held
	// address still comes through.
	other := netip.MustParseAddr("203.0.113.77")
	if _, err := l.Exec(ctx, c.Netns, "ip", "addr", "add", other.String()+"/32", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	var held []netip.Addr
	for i := range 256 {
		held = append(held, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
	}
	for i := range conflict.MaxFiltered6 {
		held = append(held, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x01, 0x00, 14: byte(i >> 8), 15: byte(i)}))
	}
	read := make(chan netip.Addr, 64)
	d.OnRead(func(a netip.Addr) {
		select {
		case read <- a:
		default:
		}
	})
	for len(answers) > 0 {
		<-answers // from the first ping
	}
	d.SetHeld(held)
	// Flush the client's neighbour entry, so that each ping asks again.
	for _, from := range []netip.Addr{other, taken4} {
		_, _ = l.Exec(ctx, c.Netns, "ip", "neigh", "flush", "dev", "eth0")
		_, _ = l.Exec(ctx, c.Netns, "ping", "-c1", "-W1", "-I", from.String(), l.Nodes[0].IPv4.String())
	}
	deadline := time.After(5 * time.Second)
	for done := false; !done; {
		select {
		case a := <-read:
			if a == other {
				t.Errorf("the reader woke for an ARP packet from %s, not watched", other)
			}
			// Read in order: the packets from other came before.
			done = a == taken4
		case <-deadline:
			t.Errorf("no ARP packet from the held %s was read", taken4)
			done = true
		}
	}
	select {
	case a := <-answers:
		if a.IP != taken4 {
			t.Errorf("reported %+v", a)
		}
	case <-time.After(5 * time.Second):
		t.Error("with the longest filter, a foreign host claiming a held address was not reported")
	}
}
