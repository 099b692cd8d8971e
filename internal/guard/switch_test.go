package guard

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// libraryBatch returns the bytes google/nftables sends for what queue
// queues, captured from a connection that acknowledges everything.
func libraryBatch(t *testing.T, queue func(c *nftables.Conn) error) []byte {
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
	if err := queue(c); err != nil {
		t.Fatal(err)
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

// countAcksAsked counts the messages of batch b that ask for an
// acknowledgement.
func countAcksAsked(t *testing.T, b []byte) int {
	t.Helper()
	n := 0
	for rest := b; len(rest) >= unix.SizeofNlMsghdr; {
		if netlink.HeaderFlags(binary.NativeEndian.Uint16(rest[6:]))&netlink.Acknowledge != 0 {
			n++
		}
		rest = rest[nlAlign(int(binary.NativeEndian.Uint32(rest))):]
	}
	return n
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
			want := withoutSeqAndPort(t, libraryBatch(t, func(c *nftables.Conn) error {
				for _, f := range tc.fams {
					c.FlushSet(f.alive)
					if err := c.SetAddElements(f.alive, []nftables.SetElement{aliveElement(f, tc.timeout)}); err != nil {
						return err
					}
				}
				return nil
			}))
			b, acks := appendSwitchBatch(nil, tc.fams, tc.timeout)
			if got := withoutSeqAndPort(t, b); !bytes.Equal(got, want) {
				t.Errorf("batch differs from google/nftables'\n got % x\nwant % x", got, want)
			}
			if want := countAcksAsked(t, want); acks != want {
				t.Errorf("batch counts %d acknowledgements, asks for %d", acks, want)
			}
		})
	}
}

// TestMembersBatchMatchesLibrary: the guard's own renewal of its members,
// once a second, sends what renewLocked queues through google/nftables,
// byte for byte, whichever families the VIPs are of and whether the
// switch is to lapse.
func TestMembersBatchMatchesLibrary(t *testing.T) {
	v4 := []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("203.0.113.200")}
	v6 := []netip.Addr{netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("2001:db8:100::2:aca")}
	for _, tc := range []struct {
		name   string
		gs, as []netip.Addr
		until  time.Duration // from now; 0: none set
	}{
		{"ipv4 guarded and answered", v4, v4[:1], 0},
		{"ipv6 only guarded", v6, nil, 0},
		{"both families, one answered", append(slices.Clone(v4), v6...), v6, 0},
		{"both answered, switch lapsing", append(slices.Clone(v4), v6...), append(v4[1:2:2], v6[1]), -time.Second},
		{"both answered, switch short", append(slices.Clone(v4), v6...), append(v4[:1:1], v6...), 57 * time.Millisecond},
		// More elements than one message takes (maxElemsPerMsg).
		{"2,500 IPv6 and 600 IPv4", manyVIPs(600, 2500), manyVIPs(0, 2500), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &Guard{fams: newFamilies(TableName), opts: Options{AnswerTimeout: 130 * time.Millisecond, GuardTimeout: 4 * time.Second}}
			for i, f := range g.fams {
				f.guarded.ID, f.answer.ID, f.alive.ID = uint32(10*i+1), uint32(10*i+2), uint32(10*i+3)
			}
			g.guarded, g.answer = tc.gs, tc.as
			if tc.until != 0 {
				g.until = time.Now().Add(tc.until)
			}
			slices.SortFunc(g.guarded, netip.Addr.Compare)
			slices.SortFunc(g.answer, netip.Addr.Compare)
			t0 := g.aliveTimeoutLocked()
			want := withoutSeqAndPort(t, libraryBatch(t, func(c *nftables.Conn) error {
				for _, f := range g.fams {
					if err := g.renewLocked(c, f, g.guarded, g.answer, true, false); err != nil {
						return err
					}
				}
				return nil
			}))
			if g.aliveTimeoutLocked() != t0 {
				t.Skip("the switch's timeout changed while the batches were built; run again")
			}
			b, acks := appendMembersBatch(nil, g.fams, g.guarded, g.answer, g.guardTimeout(), t0)
			if got := withoutSeqAndPort(t, b); !bytes.Equal(got, want) {
				t.Errorf("batch differs from google/nftables'\n got % x\nwant % x", got, want)
			}
			if want := countAcksAsked(t, want); acks != want {
				t.Errorf("batch counts %d acknowledgements, asks for %d", acks, want)
			}
			// Built again in the same buffer, it allocates nothing.
			if n := testing.AllocsPerRun(20, func() {
				b, _ = appendMembersBatch(b[:0], g.fams, g.guarded, g.answer, g.guardTimeout(), t0)
			}); n != 0 {
				t.Errorf("building a renewal of the members allocated %v times, want 0", n)
			}
		})
	}
}

// TestSwitchBatchAllocatesNothing: with its buffer grown, building a
// renewal allocates nothing.
func TestSwitchBatchAllocatesNothing(t *testing.T) {
	fams := newFamilies(TableName)
	buf, _ := appendSwitchBatch(nil, fams, time.Second)
	if n := testing.AllocsPerRun(100, func() { buf, _ = appendSwitchBatch(buf[:0], fams, 129*time.Millisecond) }); n != 0 {
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

// TestMembersRenewal renews the guarded and answered VIPs through the
// guard's own socket in a real kernel: after a renewal every member
// carries the guard's timeout afresh, and a renewal allocates nothing.
func TestMembersRenewal(t *testing.T) {
	p := newPair(t)
	g := p.guard(Options{AnswerTimeout: time.Second, GuardTimeout: 5 * time.Second})
	set(t, g, []netip.Addr{vip4, vip6}, []netip.Addr{vip4})

	// The members' elements were given guardTimeout (6 s) by Set; a second
	// later, a renewal that includes them gives it to them again.
	renew := func() {
		t.Helper()
		g.mu.Lock()
		g.guardRenewed = time.Time{} // due
		g.mu.Unlock()
		if err := g.Refresh(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(1100 * time.Millisecond) // the members' timeouts run down meanwhile
	renew()
	if g.sw == nil {
		t.Fatal("the members were renewed through google/nftables, not the guard's own socket")
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(p.aNS)))
	if err != nil {
		t.Fatal(err)
	}
	want := g.guardTimeout()
	for _, f := range newFamilies(TableName) {
		for _, s := range []*nftables.Set{f.guarded, f.answer} {
			els, err := c.GetSetElements(s)
			if err != nil {
				t.Fatalf("listing %s %s: %v", f.what, s.Name, err)
			}
			wantN := 1 // vip4 in ip's sets, vip6 in ip6's guarded
			if f.table.Family == nftables.TableFamilyIPv6 && s.Name == "answer" {
				wantN = 0
			}
			if len(els) != wantN {
				t.Fatalf("%s %s holds %d elements, want %d", f.what, s.Name, len(els), wantN)
			}
			// Renewed: almost all of the timeout is left, not the 4.9 s
			// that Set's elements would have left by now.
			for _, e := range els {
				if e.Timeout != want || e.Expires < want-500*time.Millisecond {
					t.Errorf("%s %s: element %v expires in %v of %v, want it renewed to %v", f.what, s.Name, e.Key, e.Expires, e.Timeout, want)
				}
			}
		}
	}
	if n := testing.AllocsPerRun(20, renew); n != 0 {
		t.Errorf("a renewal of the members allocated %v times, want 0", n)
	}
}

// manyVIPs returns n4 IPv4 and n6 IPv6 documentation addresses, sorted.
func manyVIPs(n4, n6 int) []netip.Addr {
	var out []netip.Addr
	for i := range n4 {
		out = append(out, netip.AddrFrom4([4]byte{[3]byte{192, 198, 203}[i/250%3], [3]byte{0, 51, 0}[i/250%3], [3]byte{2, 100, 113}[i/250%3], byte(1 + i%250)}))
	}
	for i := range n6 {
		out = append(out, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x02, 14: byte(i >> 8), 15: byte(i)}))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// TestManyMembers: a node may hold thousands of VIPs (one election for all
// Services). Every one of 5,000 IPv6 VIPs lands in the guard's sets and is
// renewed: more than one netlink message takes (in one message, the kernel
// took the first 361 of 2,000 and reported success), and more than a
// default send buffer (at 3,000, "message too long").
func TestManyMembers(t *testing.T) {
	p := newPair(t)
	g := p.guard(Options{AnswerTimeout: time.Second, GuardTimeout: 5 * time.Second})
	vips := manyVIPs(0, 5000)
	set(t, g, vips, vips)
	c, err := nftables.New(nftables.WithNetNSFd(int(p.aNS)))
	if err != nil {
		t.Fatal(err)
	}
	f := newFamilies(TableName)[1]
	check := func(when string, fresh time.Duration) {
		t.Helper()
		for _, s := range []*nftables.Set{f.guarded, f.answer} {
			els, err := c.GetSetElements(s)
			if err != nil {
				t.Fatalf("%s: listing %s: %v", when, s.Name, err)
			}
			stale := 0
			for _, e := range els {
				if e.Expires < fresh {
					stale++
				}
			}
			if len(els) != len(vips) || stale > 0 {
				t.Errorf("%s: %s holds %d elements (%d not renewed), want %d, all renewed", when, s.Name, len(els), stale, len(vips))
			}
		}
	}
	check("after Set", g.guardTimeout()-500*time.Millisecond)
	time.Sleep(1100 * time.Millisecond)
	g.mu.Lock()
	g.guardRenewed = time.Time{} // due
	g.mu.Unlock()
	if err := g.Refresh(); err != nil {
		t.Fatal(err)
	}
	if g.sw == nil {
		t.Fatal("the members were renewed through google/nftables, not the guard's own socket")
	}
	check("after a renewal", g.guardTimeout()-500*time.Millisecond)
	// A change of many: most of them go, then come back.
	set(t, g, vips[:1000], vips[:1000])
	set(t, g, vips, vips)
	check("after 4,000 went and came back", 0)
}
