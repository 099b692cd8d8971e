package address

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// An RTM_NEWADDR request carries the attributes a dump's answer does, in
// the same layout: parseAddr must read back what addrRequest wrote.
func TestParseAddr(t *testing.T) {
	n := Current()
	for _, tc := range []struct {
		vip   netip.Addr
		flags uint32
	}{
		{netip.MustParseAddr("192.0.2.10"), 0},
		{netip.MustParseAddr("2001:db8::10"), unix.IFA_F_NODAD},
	} {
		b := n.addrRequest(7, tc.vip, 2*time.Second, true).Serialize()[unix.SizeofNlMsghdr:]
		got, err := parseAddr(b)
		if err != nil {
			t.Fatalf("%s: %v", tc.vip, err)
		}
		want := kernelAddr{addr: tc.vip, prefixLen: tc.vip.BitLen(), index: 7, proto: Proto, flags: tc.flags}
		if got != want {
			t.Errorf("%s: parsed %+v, want %+v", tc.vip, got, want)
		}
		// A listing parses every address of the node on each pass that
		// applies: the attributes are read in place.
		if allocs := testing.AllocsPerRun(100, func() { _, _ = parseAddr(b) }); allocs > 0 {
			t.Errorf("%s: parsing allocates %.0f times, want none", tc.vip, allocs)
		}
	}
	if _, err := parseAddr(make([]byte, 3)); err == nil {
		t.Error("a short message parsed without error")
	}
	// An attribute whose length runs past the message, or is shorter than
	// its own header, is refused.
	b := n.addrRequest(7, netip.MustParseAddr("192.0.2.10"), 0, false).Serialize()[unix.SizeofNlMsghdr:]
	for _, l := range []uint16{uint16(len(b)), 3} {
		bad := slices.Clone(b)
		binary.NativeEndian.PutUint16(bad[unix.SizeofIfAddrmsg:], l)
		if _, err := parseAddr(bad); err == nil {
			t.Errorf("an attribute of length %d in %d bytes parsed without error", l, len(bad)-unix.SizeofIfAddrmsg)
		}
	}
}
