package guard

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/vipd/vipd/internal/announce"
	"github.com/vipd/vipd/internal/lab"
	"github.com/vipd/vipd/internal/logging/logtest"
)

func TestDeadManSwitchARP(t *testing.T) {
	p := newPair(t)
	testDeadManSwitch(t, p, newARPAsker(t, p.b, "b0"), vip4)
}

func TestDeadManSwitchNDP(t *testing.T) {
	p := newPair(t)
	testDeadManSwitch(t, p, newNDPAsker(t, p.b, "b0"), vip6)
}

// testDeadManSwitch checks, from B, when A answers for vip: while it is
// answered and refreshed, not while it is only guarded, and no more once
// the refreshes stop.
func testDeadManSwitch(t *testing.T, p *pair, a asker, vip netip.Addr) {
	g := p.guard(Options{})
	timeout := g.opts.AnswerTimeout

	expect(t, a, vip, true, "with nothing guarded")
	set(t, g, []netip.Addr{vip}, nil)
	expect(t, a, vip, false, "while guarded and not answered")
	set(t, g, []netip.Addr{vip}, []netip.Addr{vip})
	expect(t, a, vip, true, "once answered")

	// Refreshed every timeout/4, the VIP is answered for well beyond the
	// timeout.
	for end := time.Now().Add(3 * timeout); time.Now().Before(end); {
		if err := g.Refresh(); err != nil {
			t.Fatal(err)
		}
		next := time.Now().Add(timeout / 4)
		expect(t, a, vip, true, "while refreshed")
		time.Sleep(time.Until(next))
	}

	for round := range 3 {
		if round > 0 {
			set(t, g, []netip.Addr{vip}, []netip.Addr{vip})
			expect(t, a, vip, true, "answered again after Set")
		}
		silent, lastAnswer := measureSilence(t, g, a, vip)
		t.Logf("round %d: silent %v after the last Refresh (last answer %v after it; timeout %v)",
			round+1, silent.Round(time.Millisecond), lastAnswer.Round(time.Millisecond), timeout)
		// Early silence would cut off a live holder; late silence leaves
		// two answerers. The margins cover a busy 2-core machine.
		if silent > timeout+100*time.Millisecond {
			t.Errorf("still answering %v after the last Refresh, want silence within %v", silent, timeout+100*time.Millisecond)
		}
		if silent < timeout/2 {
			t.Errorf("silent %v after the last Refresh already, want answers for about %v", silent, timeout)
		}
	}

	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	expect(t, a, vip, true, "after Close")
}

// measureSilence refreshes once more and measures, from then, when A
// stops answering for vip.
func measureSilence(t *testing.T, g *Guard, a asker, vip netip.Addr) (silent, lastAnswer time.Duration) {
	t.Helper()
	if err := g.Refresh(); err != nil {
		t.Fatal(err)
	}
	silent, lastAnswer, err := firstSilence(a, vip, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return silent, lastAnswer
}

// TestRefreshNeverOpensAGap asks as fast as it can while Refresh runs in a
// tight loop: the flush and add of each renewal commit together, so no
// question may go unanswered.
func TestRefreshNeverOpensAGap(t *testing.T) {
	p := newPair(t)
	g := p.guard(Options{})
	arpA, ndpA := newARPAsker(t, p.b, "b0"), newNDPAsker(t, p.b, "b0")
	set(t, g, []netip.Addr{vip4, vip6}, []netip.Addr{vip4, vip6})

	var refreshes atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := g.Refresh(); err != nil {
				done <- err
				return
			}
			refreshes.Add(1)
		}
	}()
	start := time.Now()
	asked := 0
	for time.Since(start) < time.Second {
		expect(t, arpA, vip4, true, "during renewals")
		expect(t, ndpA, vip6, true, "during renewals")
		asked += 2
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n := refreshes.Load()
	t.Logf("%d questions answered during %d refreshes (%v per refresh of 2 VIPs)", asked, n, time.Since(start)/time.Duration(max(n, 1)))
}

// TestOutputRules checks that A's kernel never names a silenced VIP on the
// wire: not as the sender of ARP, not as the source of a solicitation,
// and that vipd's own announcements behave as the package says.
func TestOutputRules(t *testing.T) {
	p := newPair(t)
	// A long answer timeout: this test is about the rules, not the timeout.
	g := p.guard(Options{AnswerTimeout: time.Minute})
	c := newCapture(t, p.b, "b0")
	vips := []netip.Addr{vip4, vip6}
	set(t, g, vips, nil)

	// A resolves B with a VIP as source address: the requests are dropped.
	p.sendFrom(vip4, nodeB4)
	p.sendFrom(vip6, nodeB6)
	eventually(t, 2*time.Second, "the output rules to drop A's requests from the VIPs", func() bool {
		rs := p.ruleset()
		return rs.drops["vipd: no ARP from VIPs not answered here"] > 0 &&
			rs.drops["vipd: no neighbour solicitations from VIPs not answered here"] > 0
	})

	if n := c.count("arp", vip4); n != 0 {
		t.Errorf("%d ARP packets from %s reached B while it was silenced", n, vip4)
	}

	// With arp_announce=2 the kernel asks from the node's own address, so
	// a preserved connection can still resolve its peer.
	p.exec(p.a, "sysctl", "-q", "-w", "net.ipv4.conf.a0.arp_announce=2")
	run(t, "ip", "-n", p.a, "neigh", "flush", "dev", "a0")
	p.sendFrom(vip4, nodeB4)
	eventually(t, 2*time.Second, "an ARP request from A's own address", func() bool { return c.count("arp", nodeA4) > 0 })
	p.exec(p.a, "sysctl", "-q", "-w", "net.ipv4.conf.a0.arp_announce=0")

	// vipd's gratuitous ARP goes through a packet socket, past the ARP
	// hooks; its neighbour advertisements go through the ip6 output hook.
	var ifi *net.Interface
	if err := lab.InNetns(p.a, func() error {
		var err error
		ifi, err = net.InterfaceByName("a0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ann, err := announce.New(ifi, announce.Options{Interval: 50 * time.Millisecond, Burst: 1, Netns: p.a}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ann.Close() })
	ann.Set(vips)
	eventually(t, 2*time.Second, "two gratuitous ARPs", func() bool { return c.count("arp", vip4) >= 2 })
	eventually(t, 2*time.Second, "the NA rule to drop vipd's own advertisements", func() bool {
		return p.ruleset().drops["vipd: no neighbour advertisements for VIPs not answered here"] >= 2
	})
	if n := c.count("na", vip6); n != 0 {
		t.Errorf("%d advertisements of %s reached B while it was silenced", n, vip6)
	}
	if n := c.count("ns", vip6); n != 0 {
		t.Errorf("%d solicitations from %s reached B while it was silenced", n, vip6)
	}

	// Answered, the VIPs may be named again.
	set(t, g, vips, vips)
	eventually(t, 2*time.Second, "vipd's advertisements once answered", func() bool { return c.count("na", vip6) > 0 })
	ann.Set(nil)
	run(t, "ip", "-n", p.a, "neigh", "flush", "dev", "a0")
	run(t, "ip", "-n", p.a, "-6", "neigh", "flush", "dev", "a0")
	arpBefore := c.count("arp", vip4)
	p.sendFrom(vip4, nodeB4)
	p.sendFrom(vip6, nodeB6)
	eventually(t, 2*time.Second, "A's requests from the answered VIPs", func() bool {
		return c.count("arp", vip4) > arpBefore && c.count("ns", vip6) > 0
	})
}

// TestGuardTimeout checks that a guarded VIP stays guarded GuardTimeout
// after the last renewal, that Refresh renews it, and that it then
// expires: an agent that died for good leaves nothing in force.
func TestGuardTimeout(t *testing.T) {
	p := newPair(t)
	a := newARPAsker(t, p.b, "b0")
	const guardTimeout = 200 * time.Millisecond
	g := p.guard(Options{GuardTimeout: guardTimeout})
	set(t, g, []netip.Addr{vip4}, nil)
	start := time.Now()

	// Refresh renews the guarded VIPs once guardRenewal has passed.
	time.Sleep(guardRenewal + 50*time.Millisecond)
	if err := g.Refresh(); err != nil {
		t.Fatal(err)
	}
	renewed := time.Now()
	time.Sleep(time.Until(start.Add(guardRenewal + guardTimeout + 200*time.Millisecond)))
	expect(t, a, vip4, false, "after the first expiry it would have had without renewal")

	eventually(t, 3*time.Second, "answers once the guard expired", func() bool {
		ok, err := a.ask(vip4, 20*time.Millisecond)
		return err == nil && ok
	})
	after := time.Since(renewed)
	t.Logf("guard expired %v after the renewal (element timeout %v)", after.Round(time.Millisecond), guardTimeout+guardRenewal)
	if after < guardTimeout || after > guardTimeout+guardRenewal+300*time.Millisecond {
		t.Errorf("guard expired %v after the renewal, want between %v and %v", after, guardTimeout, guardTimeout+guardRenewal+300*time.Millisecond)
	}
	if rs := p.ruleset(); len(rs.elems["arp guarded"]) != 0 {
		t.Errorf("guarded elements %v left after expiry", rs.elems["arp guarded"])
	}
}

// TestCloseAndReplace checks what stays in the kernel: everything after a
// crash, nothing after Close, and only the new run's VIPs after a restart.
func TestCloseAndReplace(t *testing.T) {
	p := newPair(t)
	g1 := p.guard(Options{GuardTimeout: time.Minute})
	set(t, g1, []netip.Addr{vip4, other4, vip6}, []netip.Addr{vip4, vip6})
	g1.abandon() // as if killed: the tables stay

	rs := p.ruleset()
	if want := []string{"arp vipd", "ip6 vipd"}; !slices.Equal(rs.tables, want) {
		t.Fatalf("tables %v, want %v", rs.tables, want)
	}
	checkElems(t, rs, "arp guarded", "198.51.100.100", "198.51.100.101")
	checkElems(t, rs, "arp answer", "198.51.100.100")
	checkElems(t, rs, "ip6 guarded", "2001:db8:100::100")
	checkElems(t, rs, "ip6 answer", "2001:db8:100::100")

	g2 := p.guard(Options{})
	rs = p.ruleset()
	for _, fam := range []string{"arp", "ip6"} {
		for _, s := range []string{"guarded", "answer", "alive"} {
			checkElems(t, rs, fam+" "+s)
		}
	}
	set(t, g2, []netip.Addr{other4}, nil)
	rs = p.ruleset()
	checkElems(t, rs, "arp guarded", "198.51.100.101")
	checkElems(t, rs, "ip6 guarded")

	// Someone flushes the whole ruleset: the next Refresh rebuilds it.
	set(t, g2, []netip.Addr{other4}, []netip.Addr{other4})
	p.exec(p.a, "nft", "flush", "ruleset")
	if err := g2.Refresh(); err != nil {
		t.Fatal(err)
	}
	rs = p.ruleset()
	checkElems(t, rs, "arp answer", "198.51.100.101")
	checkElems(t, rs, "arp alive", "3") // NFPROTO_ARP

	if err := g2.Close(); err != nil {
		t.Fatal(err)
	}
	if rs := p.ruleset(); len(rs.tables) != 0 {
		t.Errorf("tables %v left after Close", rs.tables)
	}
	if err := g2.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := g2.Set(nil, nil); err != ErrClosed {
		t.Errorf("Set after Close: %v, want ErrClosed", err)
	}
	if err := g2.Refresh(); err != ErrClosed {
		t.Errorf("Refresh after Close: %v, want ErrClosed", err)
	}
}

// TestAliveOnlyWhereAnswered: the switch is kept only in the table of a
// family with answered VIPs, by Set and by every renewal, and goes from a
// table whose last answered VIP went.
func TestAliveOnlyWhereAnswered(t *testing.T) {
	p := newPair(t)
	g := p.guard(Options{GuardTimeout: time.Minute})
	set(t, g, []netip.Addr{vip4, vip6}, []netip.Addr{vip4})
	if err := g.Refresh(); err != nil {
		t.Fatal(err)
	}
	rs := p.ruleset()
	checkElems(t, rs, "arp alive", "3") // NFPROTO_ARP
	checkElems(t, rs, "ip6 alive")
	checkElems(t, rs, "ip6 guarded", "2001:db8:100::100")

	set(t, g, []netip.Addr{vip4, vip6}, []netip.Addr{vip4, vip6})
	if err := g.Refresh(); err != nil {
		t.Fatal(err)
	}
	rs = p.ruleset()
	checkElems(t, rs, "arp alive", "3")
	checkElems(t, rs, "ip6 alive", "ipv6") // meta nfproto

	set(t, g, []netip.Addr{vip4, vip6}, []netip.Addr{vip6})
	rs = p.ruleset()
	checkElems(t, rs, "arp alive")
	checkElems(t, rs, "ip6 alive", "ipv6")
}

// TestSetInPlace: Set adds and deletes only the members that change, and
// the kernel's sets end up exactly as asked after any sequence of changes;
// a member deleted behind the guard's back, which fails the deletion, is
// mended by setting the sets whole.
func TestSetInPlace(t *testing.T) {
	p := newPair(t)
	var logs logtest.Buffer
	g, err := NewAt(p.aNS, Options{GuardTimeout: time.Minute,
		Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var pool []netip.Addr
	for i := range 6 {
		pool = append(pool, netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}),
			netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x01, 15: byte(10 + i)}))
	}
	check := func(step string, gs, as []netip.Addr) {
		t.Helper()
		rs := p.ruleset()
		for _, fam := range []struct {
			name  string
			v4    bool
			alive string
		}{{"arp", true, "3"}, {"ip6", false, "ipv6"}} {
			var wantG, wantA, wantAlive []string
			for _, a := range union(gs, as) {
				if a.Is4() == fam.v4 {
					wantG = append(wantG, a.String())
				}
			}
			for _, a := range as {
				if a.Is4() == fam.v4 {
					wantA = append(wantA, a.String())
				}
			}
			if len(wantA) > 0 {
				wantAlive = []string{fam.alive}
			}
			for set, want := range map[string][]string{"guarded": wantG, "answer": wantA, "alive": wantAlive} {
				got := slices.Clone(rs.elems[fam.name+" "+set])
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Errorf("%s: set %q holds %v, want %v", step, fam.name+" "+set, got, want)
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 30 {
		var gs, as []netip.Addr
		for _, a := range pool {
			switch rng.IntN(3) {
			case 1:
				gs = append(gs, a)
			case 2:
				as = append(as, a)
			}
		}
		if err := g.Refresh(); err != nil { // keeps the switch alive
			t.Fatal(err)
		}
		set(t, g, gs, as)
		check(fmt.Sprintf("step %d", step), gs, as)
	}
	const whole = "setting them whole"
	if strings.Contains(logs.String(), whole) {
		t.Fatalf("Set did not change the sets in place:\n%s", logs.String())
	}

	set(t, g, pool[:4], pool[:2])
	p.exec(p.a, "nft", "delete", "element", "arp", TableName, "guarded", "{ "+pool[2].String()+" }")
	set(t, g, pool[:2], pool[:2]) // deletes pool[2] and pool[3]: the first fails
	check("after a member went behind the guard's back", pool[:2], pool[:2])
	if !strings.Contains(logs.String(), whole) {
		t.Errorf("a failed deletion did not make Set set the sets whole:\n%s", logs.String())
	}
}

// TestSetInPlaceMendsDrift: members without a timeout never expire, but
// the kernel's sets may still drift from what the guard believes (here a
// set flushed by someone else, which no deletion notices); within
// guardRenewal of the last time the sets were set whole, Set sets them
// whole again.
func TestSetInPlaceMendsDrift(t *testing.T) {
	p := newPair(t)
	g := p.guard(Options{}) // no GuardTimeout: Refresh never renews the members
	set(t, g, []netip.Addr{vip4}, []netip.Addr{vip4})
	p.exec(p.a, "nft", "flush", "set", "arp", TableName, "answer")
	time.Sleep(guardRenewal + 50*time.Millisecond) // the rule is about time
	set(t, g, []netip.Addr{vip4, other4}, []netip.Addr{vip4, other4})
	checkElems(t, p.ruleset(), "arp answer", "198.51.100.100", "198.51.100.101")
}

// union is the addresses of a and b, each once.
func union(a, b []netip.Addr) []netip.Addr {
	out := slices.Concat(a, b)
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

func checkElems(t *testing.T, rs ruleset, set string, want ...string) {
	t.Helper()
	got, ok := rs.elems[set]
	if !ok {
		t.Errorf("no set %q", set)
		return
	}
	slices.Sort(got)
	if want == nil {
		want = []string{}
	}
	if !slices.Equal(got, want) {
		t.Errorf("set %q holds %v, want %v", set, got, want)
	}
}

// abandon lets go of the guard as a killed agent would: the tables stay.
func (g *Guard) abandon() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dropConnLocked()
	g.closed = true
	closeNS(&g.ns)
}

// TestDiagnose checks that a refusal is narrowed down to the missing piece,
// and that on this kernel, which has every piece, the probes leave nothing.
func TestDiagnose(t *testing.T) {
	p := newPair(t)
	g := p.guard(Options{})
	cause := errors.New("refused")
	g.mu.Lock()
	defer g.mu.Unlock()

	if err := g.diagnoseLocked(cause, newFamilies(probeTableName)); err != cause {
		t.Errorf("diagnosis on a kernel with full support: %v, want the cause unchanged", err)
	}
	if rs := p.ruleset(); !slices.Equal(rs.tables, []string{"arp vipd", "ip6 vipd"}) {
		t.Errorf("tables %v after the probes, want only the guard's", rs.tables)
	}

	fams := newFamilies(probeTableName)
	fams[1].steps[1] = step{"a chain type no kernel has", func(c *nftables.Conn, f *family) error {
		c.AddChain(&nftables.Chain{Name: "x", Table: f.table, Type: "vipd-none",
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
		return nil
	}}
	err := g.diagnoseLocked(cause, fams)
	if err == nil || !strings.Contains(err.Error(), "kernel lacks a chain type no kernel has, needed for IPv6 (NDP) VIPs") {
		t.Errorf("diagnosis: %v, want it to name the missing chain type", err)
	}
}

// BenchmarkRefresh measures the renewal the agent makes 20 times a second,
// with n answered VIPs of each family, and Set, which renews every member
// as Refresh does once a second when there is a GuardTimeout.
func BenchmarkRefresh(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000} {
		p := newPair(b)
		g, err := NewAt(p.aNS, Options{})
		if err != nil {
			b.Fatal(err)
		}
		var vips []netip.Addr
		for i := range n {
			vips = append(vips, netip.AddrFrom4([4]byte{198, 51, byte(100 + i/250), byte(1 + i%250)}),
				netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x01, 14: byte(i >> 8), 15: byte(i)}))
		}
		set(b, g, vips, vips)
		b.Run(fmt.Sprintf("refresh/vips=%d", 2*n), func(b *testing.B) {
			for b.Loop() {
				if err := g.Refresh(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("set/vips=%d", 2*n), func(b *testing.B) {
			for b.Loop() {
				set(b, g, vips, vips)
			}
		})
		// What a pass that takes one VIP asks: one more, answered.
		more := append(slices.Clone(vips), netip.MustParseAddr("203.0.113.1"))
		b.Run(fmt.Sprintf("set-one-more/vips=%d", 2*n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					set(b, g, more, more)
				} else {
					set(b, g, vips, vips)
				}
			}
		})
		if err := g.Close(); err != nil {
			b.Fatal(err)
		}
		// The agent's guard gives its members timeouts (GuardTimeout),
		// which a refresh renews once a second, with the switch.
		gm, err := NewAt(p.aNS, Options{GuardTimeout: 5 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		set(b, gm, vips, vips)
		b.Run(fmt.Sprintf("refresh-members/vips=%d", 2*n), func(b *testing.B) {
			for b.Loop() {
				gm.mu.Lock()
				gm.guardRenewed = time.Time{} // due
				gm.mu.Unlock()
				if err := gm.Refresh(); err != nil {
					b.Fatal(err)
				}
			}
		})
		if err := gm.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRefreshUntil: the switch lapses at the deadline RefreshUntil gives,
// well before AnswerTimeout, and a Set after it keeps that deadline rather
// than granting AnswerTimeout afresh; a deadline already past silences
// the node at the next Set.
func TestRefreshUntil(t *testing.T) {
	p := newPair(t)
	g := p.guard(Options{AnswerTimeout: time.Second})
	a := newARPAsker(t, p.b, "b0")
	set(t, g, []netip.Addr{vip4}, []netip.Addr{vip4})
	expect(t, a, vip4, true, "once answered")

	const deadline = 150 * time.Millisecond
	start := time.Now()
	if err := g.RefreshUntil(start.Add(deadline)); err != nil {
		t.Fatal(err)
	}
	// A Set within the deadline must not extend it to AnswerTimeout.
	set(t, g, []netip.Addr{vip4}, []netip.Addr{vip4})
	silent, last, err := firstSilence(a, vip4, start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("silent %v after RefreshUntil(+%v) (last answer %v after it; AnswerTimeout 1s)", silent.Round(time.Millisecond),
		deadline, last.Round(time.Millisecond))
	if silent > deadline+100*time.Millisecond {
		t.Errorf("still answering %v after RefreshUntil(+%v): the deadline was not kept", silent, deadline)
	}
	if silent < deadline/2 {
		t.Errorf("silent %v after RefreshUntil(+%v) already", silent, deadline)
	}

	// A deadline in the past: nothing renews the switch, even a Set.
	if err := g.RefreshUntil(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	set(t, g, []netip.Addr{vip4}, []netip.Addr{vip4})
	expect(t, a, vip4, false, "after Set with the deadline past")

	// A fresh deadline answers again.
	if err := g.RefreshUntil(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	expect(t, a, vip4, true, "after RefreshUntil(+1s)")
}
