package conflict_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"golang.org/x/net/bpf"

	"github.com/vipd/vipd/internal/conflict"
)

var foreignMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}

// arpFrom is an ARP request as a Datagram packet socket reads it, in which
// sender claims to be at foreignMAC.
func arpFrom(t *testing.T, sender, target netip.Addr) []byte {
	t.Helper()
	p, err := arp.NewPacket(arp.OperationRequest, foreignMAC, sender, ethernet.Broadcast, target)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// naFor is a neighbour advertisement for target, with its IPv6 header.
func naFor(t *testing.T, target netip.Addr) []byte {
	t.Helper()
	src, dst := netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1")
	icmp, err := ndp.MarshalMessageChecksum(&ndp.NeighborAdvertisement{Override: true, TargetAddress: target,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: foreignMAC}}}, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	return conflict.IPv6Packet(src, dst, icmp)
}

// nsFor is a neighbour solicitation for target: never kept.
func nsFor(t *testing.T, target netip.Addr) []byte {
	t.Helper()
	src, dst := netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1:ff00:1")
	icmp, err := ndp.MarshalMessageChecksum(&ndp.NeighborSolicitation{TargetAddress: target}, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	return conflict.IPv6Packet(src, dst, icmp)
}

func kept(t *testing.T, prog []bpf.RawInstruction, pkt []byte) bool {
	t.Helper()
	insns, ok := bpf.Disassemble(prog)
	if !ok {
		t.Fatal("program does not disassemble")
	}
	if len(insns) > 4096 {
		t.Fatalf("program of %d instructions; the kernel takes 4096", len(insns))
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	n, err := vm.Run(pkt)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// filters assembles both programs for watch.
func filters(t *testing.T, watch []netip.Addr) (f4, f6 []bpf.RawInstruction) {
	t.Helper()
	f4, err := conflict.ARPFilter(watch)
	if err != nil {
		t.Fatal(err)
	}
	if f6, err = conflict.NAFilter(watch); err != nil {
		t.Fatal(err)
	}
	return f4, f6
}

func v6(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i), 14: byte(i >> 8)})
}
func many(n int, f func(int) netip.Addr) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = f(i)
	}
	return out
}

// TestFiltersKeepOnlyWatched: the readers' kernel filters let through the
// ARP packets sent from a watched IPv4 address and the advertisements for a
// watched IPv6 address, at every position of the longest lists they take
// (where jumps are longest), and nothing else; past those lists, every
// packet of the family, as without a filter.
func TestFiltersKeepOnlyWatched(t *testing.T) {
	other4, other6 := netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("2001:db8:ffff::9")
	t.Run("nothing watched", func(t *testing.T) {
		f4, f6 := filters(t, nil)
		if kept(t, f4, arpFrom(t, other4, netip.MustParseAddr("192.0.2.1"))) || kept(t, f6, naFor(t, other6)) {
			t.Error("a packet got through with nothing watched")
		}
	})
	// IPv4: the documentation ranges have too few addresses to fill the
	// longest list, so a filler address stands for the others, and the one
	// looked for is put at each position in turn.
	filler, target4 := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("192.0.2.7")
	for _, n := range []int{1, 7, 200, 201, conflict.MaxFiltered4} {
		for _, at := range []int{0, 1, 198, 199, 200, 201, 399, 400, n - 1} {
			if at >= n {
				continue
			}
			watch := many(n, func(int) netip.Addr { return filler })
			watch[at] = target4
			f4, err := conflict.ARPFilter(watch)
			if err != nil {
				t.Fatal(err)
			}
			if !kept(t, f4, arpFrom(t, target4, other4)) {
				t.Errorf("%d watched, the %dth from 0: ARP from it dropped", n, at)
			}
			if kept(t, f4, arpFrom(t, other4, target4)) {
				t.Errorf("%d watched: ARP from the unwatched %s about %s kept", n, other4, target4)
			}
		}
	}
	for _, n := range []int{1, 7, 29, 30, 31, conflict.MaxFiltered6} {
		watch := many(n, v6)
		f6, err := conflict.NAFilter(watch)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range watch {
			if !kept(t, f6, naFor(t, a)) {
				t.Fatalf("%d watched: advertisement for %s dropped", n, a)
			}
		}
		if kept(t, f6, naFor(t, other6)) {
			t.Errorf("%d watched: advertisement for the unwatched %s kept", n, other6)
		}
		if kept(t, f6, nsFor(t, v6(0))) {
			t.Errorf("%d watched: a solicitation kept", n)
		}
		// Differing from a watched address in one word only.
		for w := range 4 {
			near := v6(0).As16()
			near[4*w+2] = 0xee
			if kept(t, f6, naFor(t, netip.AddrFrom16(near))) {
				t.Errorf("%d watched: advertisement for %s kept", n, netip.AddrFrom16(near))
			}
		}
	}
	t.Run("words out of place", func(t *testing.T) {
		// The second word of the packet's target is the last word of the
		// watched address: a jump landing one instruction short would
		// compare them.
		f6, err := conflict.NAFilter([]netip.Addr{netip.MustParseAddr("2001:db8:1:1::abcd:1")})
		if err != nil {
			t.Fatal(err)
		}
		if a := netip.MustParseAddr("2001:db8:abcd:1::"); kept(t, f6, naFor(t, a)) {
			t.Errorf("advertisement for %s kept", a)
		}
	})
	t.Run("families apart", func(t *testing.T) {
		watch := []netip.Addr{target4, v6(1)}
		f4, f6 := filters(t, watch)
		if !kept(t, f4, arpFrom(t, target4, other4)) || !kept(t, f6, naFor(t, v6(1))) {
			t.Error("a watched address dropped in a list of both families")
		}
	})
	t.Run("past the limits", func(t *testing.T) {
		watch := append(many(conflict.MaxFiltered4+1, func(int) netip.Addr { return filler }),
			many(conflict.MaxFiltered6+1, v6)...)
		f4, f6 := filters(t, watch)
		if !kept(t, f4, arpFrom(t, other4, target4)) || !kept(t, f6, naFor(t, other6)) {
			t.Error("past the limits, a packet was dropped")
		}
		if kept(t, f6, nsFor(t, v6(0))) {
			t.Error("past the limits, a solicitation kept")
		}
	})
}
