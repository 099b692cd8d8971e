package guard

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// libraryBatch returns the bytes google/nftables sends for FlushSet and
// SetAddElements of the alive element of each of fams, captured from a
// connection that acknowledges everything.
func libraryBatch(t *testing.T, fams []*family, timeout time.Duration) []byte {
	t.Helper()
	ack := netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4+unix.SizeofNlMsghdr)}
	var sent []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if req == nil { // Receive after the first acknowledgements were read
			return []netlink.Message{ack}, nil
		}
		sent = append(sent, req...)
		var acks []netlink.Message
		for _, m := range req {
			if m.Header.Flags&netlink.Acknowledge != 0 {
				acks = append(acks, ack)
			}
		}
		return acks, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		c.FlushSet(f.alive)
		if err := c.SetAddElements(f.alive, []nftables.SetElement{aliveElement(f, timeout)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, m := range sent {
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// withoutSeqAndPort zeroes the sequence number and port of each netlink
// message in b, which the sending connection chooses.
func withoutSeqAndPort(t *testing.T, b []byte) []byte {
	t.Helper()
	b = bytes.Clone(b)
	for rest := b; len(rest) > 0; {
		if len(rest) < unix.SizeofNlMsghdr {
			t.Fatalf("%d bytes left over after the last message", len(rest))
		}
		l := int(binary.NativeEndian.Uint32(rest))
		if l < unix.SizeofNlMsghdr || l > len(rest) {
			t.Fatalf("message length %d with %d bytes left", l, len(rest))
		}
		clear(rest[8:16])
		rest = rest[nlAlign(l):]
	}
	return b
}

// TestSwitchBatchMatchesLibrary: the guard's own renewal of the switch
// sends what google/nftables sends for it, byte for byte, for either
// family and both.
func TestSwitchBatchMatchesLibrary(t *testing.T) {
	fams := newFamilies(TableName)
	fams[0].alive.ID, fams[1].alive.ID = 7, 0x01020304
	for _, tc := range []struct {
		name    string
		fams    []*family
		timeout time.Duration
	}{
		{"arp", fams[:1], 130 * time.Millisecond},
		{"ip6", fams[1:], 117 * time.Millisecond},
		{"both", fams, 1234567 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := withoutSeqAndPort(t, libraryBatch(t, tc.fams, tc.timeout))
			got := withoutSeqAndPort(t, appendSwitchBatch(nil, tc.fams, tc.timeout))
			if !bytes.Equal(got, want) {
				t.Errorf("batch differs from google/nftables'\n got % x\nwant % x", got, want)
			}
		})
	}
}

// TestSwitchBatchAllocatesNothing: with its buffer grown, building a
// renewal allocates nothing.
func TestSwitchBatchAllocatesNothing(t *testing.T) {
	fams := newFamilies(TableName)
	buf := appendSwitchBatch(nil, fams, time.Second)
	if n := testing.AllocsPerRun(100, func() { buf = appendSwitchBatch(buf[:0], fams, 129*time.Millisecond) }); n != 0 {
		t.Errorf("building a renewal allocated %v times, want 0", n)
	}
}

func TestCountAcks(t *testing.T) {
	msg := func(typ uint16, code int32) []byte {
		b := binary.NativeEndian.AppendUint32(nil, unix.SizeofNlMsghdr+4+unix.SizeofNlMsghdr)
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = append(b, make([]byte, 10)...)
		b = binary.NativeEndian.AppendUint32(b, uint32(code))
		return append(b, make([]byte, unix.SizeofNlMsghdr)...)
	}
	if n, err := countAcks(append(msg(unix.NLMSG_ERROR, 0), msg(unix.NLMSG_ERROR, 0)...)); n != 2 || err != nil {
		t.Errorf("two acknowledgements: %d, %v", n, err)
	}
	if n, err := countAcks(append(msg(unix.NLMSG_ERROR, 0), msg(unix.NLMSG_ERROR, -int32(unix.ENOENT))...)); n != 1 || err != unix.ENOENT {
		t.Errorf("an acknowledgement and ENOENT: %d, %v", n, err)
	}
	if _, err := countAcks(msg(unix.NLMSG_DONE, 0)); err == nil {
		t.Error("a message that is no acknowledgement was counted")
	}
	if _, err := countAcks(msg(unix.NLMSG_ERROR, 0)[:20]); err == nil {
		t.Error("a cut message was counted")
	}
}

// TestSwitchRenewal renews through the guard's own socket in a real
// kernel: the alive elements of both families carry the timeout asked
// for, a renewal allocates nothing, and after someone flushed the ruleset
// the guard builds its tables again and goes on renewing its own way.
func TestSwitchRenewal(t *testing.T) {
	p := newPair(t)
	g := p.guard(Options{AnswerTimeout: time.Second})
	set(t, g, []netip.Addr{vip4, vip6}, []netip.Addr{vip4, vip6})

	check := func(when string, want time.Duration) {
		t.Helper()
		if g.sw == nil {
			t.Fatalf("%s: the switch was renewed through google/nftables, not the guard's own socket", when)
		}
		c, err := nftables.New(nftables.WithNetNSFd(int(p.aNS)))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range newFamilies(TableName) {
			els, err := c.GetSetElements(f.alive)
			if err != nil {
				t.Fatalf("%s: listing %s alive: %v", when, f.what, err)
			}
			// The kernel keeps timeouts in jiffies (up to 10 ms each).
			if len(els) != 1 || els[0].Timeout < want-10*time.Millisecond || els[0].Timeout > want+10*time.Millisecond ||
				els[0].Expires > els[0].Timeout {
				t.Errorf("%s: %s alive holds %+v, want one element with timeout %v", when, f.what, els, want)
			}
		}
	}
	deadline := func(d time.Duration) time.Time { return time.Now().Add(d + 999*time.Microsecond) }

	if err := g.RefreshUntil(deadline(700 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	check("after RefreshUntil(+700ms)", 700*time.Millisecond)

	if n := testing.AllocsPerRun(50, func() {
		if err := g.RefreshUntil(deadline(600 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("a renewal allocated %v times, want 0", n)
	}
	check("after RefreshUntil(+600ms)", 600*time.Millisecond)

	p.exec(p.a, "nft", "flush", "ruleset")
	if err := g.RefreshUntil(deadline(500 * time.Millisecond)); err != nil {
		t.Fatalf("renewing after the ruleset was flushed: %v", err)
	}
	if err := g.RefreshUntil(deadline(400 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	check("after the ruleset was flushed and built again", 400*time.Millisecond)
}
