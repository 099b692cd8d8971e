package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// startTimeout bounds how long three fresh agents take to elect a holder:
// the first one creates the Lease as soon as its watch has synced.
const startTimeout = 15 * time.Second

// TestVIPServesClients: with an agent on every node, exactly one node holds
// the control-plane VIP, the Lease names it, and the client reaches it by
// ping and TCP; only that node answers ARP for the VIP.
func TestVIPServesClients(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.startAll()
	h := e.waitSoleHolder(startTimeout)
	t.Logf("%s holds %v", h.Name, vip4)

	e.waitLeaseHolder(5*time.Second, h.Name)
	e.mustReach(vip4, h)
	if mac, state, err := e.lab.Client.Neighbor(vip4); err != nil || mac.String() != h.MAC.String() {
		t.Errorf("client's neighbour entry for %s: %v (%s) %v, want %s's MAC %v", vip4, mac, state, err, h.Name, h.MAC)
	}
	if who := e.mustAnswerers(vip4); !slices.Equal(who, []string{h.Name}) {
		t.Errorf("ARP for %s answered by %v, want only %s", vip4, who, h.Name)
	}

	// Steady state: for longer than a Lease, the same single holder.
	holdFor(t, e.timing.lease+e.timing.retry, "the VIP stays on one node", func() error {
		got, err := e.holding()
		if err != nil {
			return err
		}
		if n, err := e.soleHolder(got); err != nil || n != h {
			return fmt.Errorf("%v (holder was %s)", got, h.Name)
		}
		return nil
	})
	if got, err := e.leaseHolder(); err != nil || got != h.Name {
		t.Errorf("Lease holder %q (%v), want %s", got, err, h.Name)
	}
}

// TestAnnouncesOnTakeover: whoever takes the VIP broadcasts a gratuitous
// ARP for it (sender IP = target IP = VIP, sender MAC = its MAC), and the
// client's neighbour entry follows the VIP on every failover.
func TestAnnouncesOnTakeover(t *testing.T) {
	e := newEnv(t, envOptions{})
	cp := e.capture()
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	checkGARP(t, cp, time.Time{}, h)
	e.mustReach(vip4, h)
	e.waitNeighbor(time.Second, vip4, h)

	for round := 1; round <= 2; round++ {
		before := time.Now()
		if err := procs[h.Name].Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		next, _ := e.waitNewHolder(5*time.Second, h)
		t.Logf("failover %d: %s -> %s", round, h.Name, next.Name)
		checkGARP(t, cp, before, next)
		e.waitNeighbor(2*time.Second, vip4, next)
		e.mustReach(vip4, next)
		if code := waitExit(t, procs[h.Name], 5*time.Second); code != 0 {
			t.Fatalf("vipd on %s exited %d after SIGTERM", h.Name, code)
		}
		procs[h.Name] = e.start(h) // back as a follower for the next round
		h = next
	}
}

// checkGARP waits for a gratuitous ARP for vip4 from n captured after t and
// checks its fields.
func checkGARP(t *testing.T, cp *lab.Capture, after time.Time, n *lab.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	a, err := cp.WaitFor(ctx, func(a lab.Announcement) bool {
		return a.Time.After(after) && gratuitousFrom(n, vip4)(a)
	})
	if err != nil {
		t.Fatalf("no gratuitous ARP for %s from %s: %v; captured %+v", vip4, n.Name, err, cp.Announcements())
	}
	if a.Kind != "arp-request" || a.MAC.String() != n.MAC.String() || a.DstMAC.String() != "ff:ff:ff:ff:ff:ff" {
		t.Errorf("gratuitous ARP from %s: %+v; want a broadcast ARP request with sender MAC %v", n.Name, a, n.MAC)
	}
}

// TestGracefulHandover: SIGTERM to the holder's agent (a drain, a rolling
// update) hands the VIP over without a gap for the client: the agent
// silences the VIP but keeps it until it sees the new holder, releases the
// Lease and exits 0; another node takes over at once, without waiting for
// the Lease to expire; the client's pings go unanswered for no longer than
// the graceful bound, and at no moment do two nodes answer ARP for the VIP.
func TestGracefulHandover(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitLeaseHolder(5*time.Second, h.Name)
	e.mustReach(vip4, h)
	a := watchARP(t, e, vip4, 20*time.Millisecond)

	var stop time.Time
	var next string
	gaps := pingGap(t, e.lab.Client, []netip.Addr{vip4}, func() {
		stop = time.Now()
		if err := procs[h.Name].Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		took, err := w.Wait(5*time.Second, func(holders []string) bool {
			for _, n := range holders {
				if n != h.Name {
					next = n
					return true
				}
			}
			return false
		})
		if err != nil {
			t.Fatal(err)
		}
		// Expiry would take a Lease duration; a release is seen through
		// the watch at once.
		if d := took.Sub(stop); d > e.timing.lease/2 {
			t.Errorf("%s took over %v after SIGTERM; a released Lease should be taken at once (Lease duration %v)", next, d, e.timing.lease)
		} else {
			t.Logf("%s took over %v after SIGTERM to %s", next, d.Round(time.Millisecond), h.Name)
		}
		if code := waitExit(t, procs[h.Name], 5*time.Second); code != 0 {
			t.Errorf("vipd on %s exited %d after SIGTERM, want 0", h.Name, code)
		}
	})
	if gaps[vip4] > gracefulGap {
		t.Errorf("the client went %v without an answer from %s across the handover, want at most %v", gaps[vip4], vip4, gracefulGap)
	} else {
		t.Logf("longest gap in the client's answers: %v", gaps[vip4].Round(time.Millisecond))
	}
	if got := e.mustHolding(); got.has(h.Name, vip4) {
		t.Errorf("the VIP is still on %s after its agent stopped: %v", h.Name, got)
	}
	// A clean stop leaves nothing of the ARP/NDP guard behind.
	out, err := e.lab.Exec(t.Context(), h.Netns, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "table arp vipd") || strings.Contains(out, "table ip6 vipd") {
		t.Errorf("the guard's tables are still on %s after a clean stop:\n%s", h.Name, out)
	}
	e.waitLeaseHolder(5*time.Second, next)
	e.mustReach(vip4, e.node(next))
	a.Stop()
	if err := a.Err(); err != nil {
		t.Fatal(err)
	}
	if d := w.Overlap(stop, time.Now(), nil); d > stepDownBound {
		t.Errorf("%s kept the VIP, silent, for %v beside %s; a stopping agent lets go once it sees the new holder", h.Name, d, next)
	} else {
		t.Logf("%s kept the VIP, silent, %v beside %s", h.Name, d.Round(time.Millisecond), next)
	}
	if d := a.Doubled(stop.Add(-time.Second), time.Now()); d > 0 {
		t.Errorf("two nodes answered ARP for the VIP for %v across the handover", d)
	}
	if who := a.Answerers(stop, time.Now()); !slices.Contains(who, next) {
		t.Errorf("the client's ARP questions were answered by %v, not by the new holder %s", who, next)
	}
}

// TestHolderCrash: the holder's agent is killed; its node stays up, so its
// kernel would answer ARP for the VIP it still carries. The heartbeats show
// the agent dead within about 200 ms and another node takes over at once;
// the guard's dead-man switch lapses within about 130 ms, so the crashed
// node's kernel stops answering ARP for the VIP before the new holder
// starts, and long before the address expires.
func TestHolderCrash(t *testing.T) {
	e := newEnv(t, envOptions{})
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	// The fast path needs the others to hear the holder first.
	e.waitHeard(procs)
	e.mustReach(vip4, h)
	a := watchARP(t, e, vip4, 10*time.Millisecond)
	waitFor(t, time.Second, "ARP answers from "+h.Name, func() error {
		if a.LastFrom(h.Name).IsZero() {
			return errors.New("none yet")
		}
		return nil
	})

	kill := time.Now()
	if err := procs[h.Name].Kill(); err != nil {
		t.Fatal(err)
	}
	next, at := e.waitNewHolder(e.timing.lease+2*time.Second, h)
	took := at.Sub(kill)
	t.Logf("%s took over %v after %s's agent was killed", next.Name, took.Round(time.Millisecond), h.Name)
	// Heartbeats time out after 200 ms; the Lease would take 2 s.
	if took > lossBound {
		t.Errorf("%s took over %v after the kill; the failure detector should beat Lease expiry (%v)", next.Name, took, e.timing.lease)
	}
	e.waitLeaseHolder(5*time.Second, next.Name)
	e.waitNeighbor(2*time.Second, vip4, next)
	e.mustReach(vip4, next)

	// The old MAC falls silent 130 ms after the agent's last round of
	// heartbeats, at most 20 ms before the kill; the request interval adds
	// 10 ms.
	holdFor(t, time.Second, "ARP probes to go on after the kill", func() error { return a.Err() })
	last := a.LastFrom(h.Name)
	first := a.FirstFrom(next.Name, kill)
	t.Logf("%s's kernel last answered ARP for %s %v after the kill; %s first answered %v after it", h.Name, vip4,
		last.Sub(kill).Round(time.Millisecond), next.Name, first.Sub(kill).Round(time.Millisecond))
	if silent := last.Sub(kill); silent > 300*time.Millisecond {
		t.Errorf("%s still answered ARP for %s %v after its agent was killed, want at most 300ms", h.Name, vip4, silent)
	}
	// The two must not answer side by side: a client whose question both
	// answer may keep the dead node's MAC.
	if !first.After(last) {
		t.Errorf("%s's kernel answered ARP for %s until %v after the kill, after %s started answering (%v): two answerers",
			h.Name, vip4, last.Sub(kill).Round(time.Millisecond), next.Name, first.Sub(kill).Round(time.Millisecond))
	}
	if who := e.mustAnswerers(vip4); !slices.Equal(who, []string{next.Name}) {
		t.Errorf("ARP for %s answered by %v, want only %s", vip4, who, next.Name)
	}

	// The crashed agent no longer renews its VIP: the kernel removes it
	// within its lifetime (2 s, checked on whole seconds).
	gone := waitFor(t, 5*time.Second, "the crashed node's VIP to expire", func() error {
		got, err := e.holding()
		if err != nil {
			return err
		}
		if !slices.Equal(got.holdersOf(vip4), []string{next.Name}) {
			return fmt.Errorf("%v", got)
		}
		return nil
	})
	t.Logf("the stale VIP on %s expired %v after the kill", h.Name, gone.Sub(kill).Round(time.Millisecond))

	// The restarted agent follows the new holder and does not take the
	// VIP back; the guard it finds holds nothing for an address it lacks.
	procs[h.Name] = e.start(h)
	waitLog(t, procs[h.Name], 0, 10*time.Second, " holder="+next.Name)
	if got, err := e.leaseHolder(); err != nil || got != next.Name {
		t.Errorf("after the restart the Lease names %q (%v), want %s", got, err, next.Name)
	}
	waitFor(t, 5*time.Second, "the restarted agent's guard to hold no VIP", func() error {
		return guardHolds(t.Context(), e, h)
	})
}

// TestHolderCrashSlowPath: without heartbeats and VIP lifetimes, Lease
// expiry alone moves the VIP, never earlier; the crashed node keeps its
// stale VIP until its agent restarts and removes it.
func TestHolderCrashSlowPath(t *testing.T) {
	e := newEnv(t, envOptions{})
	slow := []string{"--heartbeat-port=0", "--vip-lifetime=0"}
	procs := e.startAll(slow...)
	h := e.waitSoleHolder(startTimeout)
	e.mustReach(vip4, h)
	// Without a VIP lifetime to renew, the holder must still show its guard
	// it is running: its node keeps answering ARP for the VIP.
	a := watchARP(t, e, vip4, 20*time.Millisecond)
	from := time.Now()
	holdFor(t, 5*time.Second, h.Name+" to keep answering ARP for the VIP", func() error { return a.Err() })
	if quiet := a.Unanswered(from, time.Now()); quiet > 100*time.Millisecond {
		t.Errorf("the holder %s left ARP requests for the VIP unanswered for %v in 5 s", h.Name, quiet)
	}
	a.Stop()

	kill := time.Now()
	if err := procs[h.Name].Kill(); err != nil {
		t.Fatal(err)
	}
	next, at := e.waitNewHolder(e.timing.lease+2*time.Second, h)
	took := at.Sub(kill)
	t.Logf("%s took over %v after %s's agent was killed", next.Name, took.Round(time.Millisecond), h.Name)
	// The last renewal was at most half a renew deadline before the kill;
	// nobody may take over before the node Lease expired.
	if earliest := e.timing.lease - e.timing.renew/2 - 100*time.Millisecond; took < earliest {
		t.Errorf("%s took over %v after the kill, before the Lease (%v) could have expired", next.Name, took, e.timing.lease)
	}
	e.waitLeaseHolder(5*time.Second, next.Name)
	e.waitNeighbor(2*time.Second, vip4, next)
	e.mustReach(vip4, next)
	if got := e.mustHolding(); !got.has(h.Name, vip4) {
		t.Errorf("without a VIP lifetime the crashed node %s should still carry the VIP: %v", h.Name, got)
	}

	// Restart-after-crash clean-up: the new agent removes the VIP its
	// predecessor left, and does not take the VIP back.
	procs[h.Name] = e.start(h, slow...)
	waitFor(t, 10*time.Second, "the restarted agent on "+h.Name+" to remove the stale VIP", func() error {
		got, err := e.holding()
		if err != nil {
			return err
		}
		if !slices.Equal(got.holdersOf(vip4), []string{next.Name}) {
			return fmt.Errorf("%v", got)
		}
		return nil
	})
	waitLog(t, procs[h.Name], 0, 10*time.Second, " holder="+next.Name)
	if who := e.mustAnswerers(vip4); !slices.Equal(who, []string{next.Name}) {
		t.Errorf("after the restart ARP for %s is answered by %v, want only %s", vip4, who, next.Name)
	}
	e.mustReach(vip4, next)
}

// TestNodeLoss: the holder's agent is killed and its link goes down at the
// same moment (power loss); the others notice its heartbeats stopped and
// another node takes over within the node-loss bound, long before its Lease
// would expire; the client reaches the VIP there.
func TestNodeLoss(t *testing.T) {
	e := newEnv(t, envOptions{})
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitHeard(procs)
	e.mustReach(vip4, h)

	next := e.loseHolder(t, procs, h, "")
	e.waitLeaseHolder(5*time.Second, next.Name)
	e.waitNeighbor(2*time.Second, vip4, next)
	e.mustReach(vip4, next)
}

// TestAPIPartition: the holder loses the API server but not its clients. It
// must stop announcing and drop the VIP by its renew deadline, before the
// Lease expires for the others, so that two nodes never hold the VIP; one of
// the others takes over. When the API server comes back the old holder
// sees the new one and leaves the VIP alone.
func TestAPIPartition(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	cp := e.capture()
	// A short refresh, so that an agent still announcing after it dropped
	// the VIP would be caught several times over.
	procs := e.startAll("--arp-rate", "500ms")
	h := e.waitSoleHolder(startTimeout)
	e.mustReach(vip4, h)

	block := time.Now()
	if err := h.BlockAPI(); err != nil {
		t.Fatal(err)
	}
	gone, err := w.Wait(e.timing.renew+5*time.Second, func(holders []string) bool { return !slices.Contains(holders, h.Name) })
	if err != nil {
		t.Fatal(err)
	}
	dropped := gone.Sub(block)
	t.Logf("%s dropped the VIP %v after losing the API server (renew deadline %v)", h.Name, dropped.Round(time.Millisecond), e.timing.renew)
	if limit := e.timing.renew + 300*time.Millisecond; dropped > limit {
		t.Errorf("%s kept the VIP %v after losing the API server, want at most the renew deadline %v + 300ms", h.Name, dropped, e.timing.renew)
	}

	next, at := e.waitNewHolder(e.timing.lease+2*time.Second, h)
	t.Logf("%s took over %v after the partition", next.Name, at.Sub(block).Round(time.Millisecond))
	e.waitNeighbor(2*time.Second, vip4, next)
	e.mustReach(vip4, next)

	// Back on the API: the old holder learns of the new one and stays a
	// follower.
	logged := len(procs[h.Name].Log())
	if err := h.UnblockAPI(); err != nil {
		t.Fatal(err)
	}
	waitLog(t, procs[h.Name], logged, 30*time.Second, " holder="+next.Name)
	holdFor(t, e.timing.lease, "the VIP stays with "+next.Name+" after "+h.Name+" is back", func() error {
		if holders := w.Holders(); !slices.Equal(holders, []string{next.Name}) {
			return fmt.Errorf("holders %v", holders)
		}
		return nil
	})
	e.waitLeaseHolder(time.Second, next.Name)
	if d := w.Overlap(block.Add(-time.Second), time.Now(), nil); d > 0 {
		t.Errorf("two nodes held the VIP at once for %v: %+v", d, w.Events())
	}
	// Announcements stop before the address goes; allow for the capture's
	// timestamps being taken a little after the frame arrived.
	if late := announcementsSince(cp, gone.Add(50*time.Millisecond), gratuitousFrom(h, vip4)); len(late) > 0 {
		t.Errorf("%s announced %s after dropping it: %+v", h.Name, vip4, late)
	}
	if err := w.Err(); err != nil {
		t.Error(err)
	}
}

// TestPreserveVIPOnLeadershipLoss: with --preserve-vip-on-leadership-loss a
// holder cut from the API server stops announcing by its renew deadline but
// keeps the IPv4 VIP on its interface, silent, until it sees a new holder;
// the guard keeps its kernel from answering ARP for it, so the VIP attracts
// no new traffic. Cut off, it learns of the new holder from that holder's
// authenticated heartbeats and drops the address within a retry period of
// the new holder's first announcement. The IPv6 VIP of a dual-stack pair
// goes at once on loss (a second IPv6 holder would break Duplicate Address
// Detection).
func TestPreserveVIPOnLeadershipLoss(t *testing.T) {
	e := newEnv(t, envOptions{vips: []netip.Addr{vip4, vip6}})
	w4 := watchVIP(t, e.lab.Nodes, vip4)
	w6 := watchVIP(t, e.lab.Nodes, vip6)
	cp := e.capture()
	// A short refresh, so that an agent still announcing would be caught
	// several times over in the windows below.
	const arpRate = 500 * time.Millisecond
	procs := e.startAll("--preserve-vip-on-leadership-loss", "--arp-rate", arpRate.String())
	h := e.waitSoleHolder(startTimeout)
	e.waitHeard(procs)
	e.mustReach(vip4, h)
	e.mustReach(vip6, h)

	block := time.Now()
	if err := h.BlockAPI(); err != nil {
		t.Fatal(err)
	}
	gone6, err := w6.Wait(e.timing.renew+5*time.Second, func(holders []string) bool { return !slices.Contains(holders, h.Name) })
	if err != nil {
		t.Fatal(err)
	}
	lost := gone6.Sub(block)
	t.Logf("%s lost leadership %v after the block and removed %s at once", h.Name, lost.Round(time.Millisecond), vip6)
	if limit := e.timing.renew + 300*time.Millisecond; lost > limit {
		t.Errorf("%s removed %s %v after losing the API server, want at most the renew deadline %v + 300ms", h.Name, vip6, lost, e.timing.renew)
	}
	if !slices.Contains(w4.Holders(), h.Name) {
		t.Errorf("%s removed the IPv4 VIP on leadership loss despite --preserve-vip-on-leadership-loss: %+v", h.Name, w4.Events())
	}

	next, _ := e.waitNewHolder(e.timing.lease+2*time.Second, h)
	announced, err := cp.WaitFor(t.Context(), gratuitousFrom(next, vip4))
	if err != nil {
		t.Fatalf("no announcement of %s from %s: %v", vip4, next.Name, err)
	}
	gone4, err := w4.Wait(5*time.Second, func(holders []string) bool { return !slices.Contains(holders, h.Name) })
	if err != nil {
		t.Fatalf("%s, cut from the API, kept the preserved IPv4 VIP after %s took over: %v", h.Name, next.Name, err)
	}
	took := gone4.Sub(announced.Time)
	t.Logf("%s took over and announced %s; %s, still cut off, dropped it %v later", next.Name, vip4, h.Name, took.Round(time.Millisecond))
	if took > e.timing.retry {
		t.Errorf("%s dropped the preserved VIP %v after %s's first announcement, want within a retry period (%v)", h.Name, took, next.Name, e.timing.retry)
	}
	e.waitNeighbor(2*time.Second, vip4, next)
	e.mustReach(vip4, next)
	e.mustReach(vip6, next)
	if who := e.mustAnswerers(vip4); !slices.Equal(who, []string{next.Name}) {
		t.Errorf("after the takeover ARP for %s is answered by %v, want only %s", vip4, who, next.Name)
	}
	// Announcements stop before the IPv6 address goes; allow for the
	// capture's timestamps being taken a little after the frame arrived.
	silentSince := gone6.Add(50 * time.Millisecond)
	for _, vip := range []netip.Addr{vip4, vip6} {
		if late := announcementsSince(cp, silentSince, gratuitousFrom(h, vip)); len(late) > 0 {
			t.Errorf("%s announced %s after losing leadership: %+v", h.Name, vip, late)
		}
	}

	if err := h.UnblockAPI(); err != nil {
		t.Fatal(err)
	}
	waitLog(t, procs[h.Name], 0, 10*time.Second, " holder="+next.Name)
	holdFor(t, 2*e.timing.retry, "the VIPs to stay with "+next.Name+" once "+h.Name+" is back", func() error {
		if got := w4.Holders(); !slices.Equal(got, []string{next.Name}) {
			return fmt.Errorf("IPv4 VIP held by %v", got)
		}
		if got := w6.Holders(); !slices.Equal(got, []string{next.Name}) {
			return fmt.Errorf("IPv6 VIP held by %v", got)
		}
		return nil
	})
	if d := w6.Overlap(block.Add(-time.Second), time.Now(), nil); d > 0 {
		t.Errorf("two nodes held the IPv6 VIP at once for %v: %+v", d, w6.Events())
	}
	e.mustReach(vip4, next)
	e.waitLeaseHolder(time.Second, next.Name)
}

// TestIPv6VIP: an IPv6 control-plane VIP is announced with an unsolicited
// neighbour advertisement (override set, solicited clear, target link-layer
// address = the holder's MAC) to all nodes; the client reaches it by ping
// and TCP, and its neighbour entry follows the VIP on failover.
func TestIPv6VIP(t *testing.T) {
	e := newEnv(t, envOptions{vips: []netip.Addr{vip6}})
	cp := e.capture()
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	checkNA(t, cp, time.Time{}, h)
	e.mustReach(vip6, h)
	e.waitNeighbor(time.Second, vip6, h)

	before := time.Now()
	if err := procs[h.Name].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next, _ := e.waitNewHolder(5*time.Second, h)
	checkNA(t, cp, before, next)
	e.waitNeighbor(2*time.Second, vip6, next)
	e.mustReach(vip6, next)
	if code := waitExit(t, procs[h.Name], 5*time.Second); code != 0 {
		t.Errorf("vipd on %s exited %d after SIGTERM, want 0", h.Name, code)
	}
}

// checkNA waits for an unsolicited NA for vip6 from n captured after t and
// checks its fields.
func checkNA(t *testing.T, cp *lab.Capture, after time.Time, n *lab.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	a, err := cp.WaitFor(ctx, func(a lab.Announcement) bool {
		return a.Time.After(after) && a.Kind == "na" && gratuitousFrom(n, vip6)(a)
	})
	if err != nil {
		t.Fatalf("no unsolicited NA for %s from %s: %v; captured %+v", vip6, n.Name, err, cp.Announcements())
	}
	if !a.Override || a.Solicited || a.MAC.String() != n.MAC.String() || a.DstMAC.String() != "33:33:00:00:00:01" {
		t.Errorf("NA from %s: %+v; want override set, solicited clear, target link-layer address %v, to all nodes", n.Name, a, n.MAC)
	}
}

// TestBadConfigChangesNothing: a configuration vipd cannot run with makes it
// exit non-zero with a message naming the setting, before it touches any
// interface or the Lease.
func TestBadConfigChangesNothing(t *testing.T) {
	e := newEnv(t, envOptions{})
	n1 := e.lab.Nodes[0]
	for _, tc := range []struct {
		name     string
		extra    []string
		code     int
		contains []string
	}{
		// The agent checks the interface when it starts. (It names the
		// setting by its kube-vip name, vip_interface, whatever set it.)
		{"no such interface", []string{"--interface", "nosuch0"}, 1, []string{"interface", "nosuch0", "not found"}},
		{"invalid address", []string{"--address", "198.51.100.x"}, 2, []string{`vipd: --address "198.51.100.x"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.allAddrs(t)
			p := e.start(n1, tc.extra...)
			code := waitExit(t, p, 10*time.Second)
			log := p.Log()
			if code != tc.code {
				t.Errorf("exit status %d, want %d; output:\n%s", code, tc.code, log)
			}
			if !hasLine(log, tc.contains...) {
				t.Errorf("no line of the output says all of %q:\n%s", tc.contains, log)
			}
			if after := e.allAddrs(t); !equalAddrs(before, after) {
				t.Errorf("addresses changed:\nbefore %v\nafter  %v", before, after)
			}
			if e.leaseExists() {
				t.Errorf("Lease %s/%s was created", e.ns, leaseName)
			}
		})
	}
}

// TestRefusesNodeAddress: a VIP that is already the node's own address is
// refused (removing it on failover would cut the node off) and the node's
// address is left alone.
func TestRefusesNodeAddress(t *testing.T) {
	e := newEnv(t, envOptions{})
	n1 := e.lab.Nodes[0]
	before := e.allAddrs(t)
	p := e.start(n1, "--address", n1.IPv4.String())
	code := waitExit(t, p, 10*time.Second)
	log := p.Log()
	if code == 0 {
		t.Errorf("vipd accepted its node's own address %s as VIP; output:\n%s", n1.IPv4, log)
	}
	if !hasLine(log, n1.IPv4.String(), "already assigned") {
		t.Errorf("output does not say that %s is already assigned:\n%s", n1.IPv4, log)
	}
	if after := e.allAddrs(t); !equalAddrs(before, after) {
		t.Errorf("addresses changed:\nbefore %v\nafter  %v", before, after)
	}
	if e.leaseExists() {
		t.Errorf("Lease %s/%s was created", e.ns, leaseName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.lab.Client.Ping(ctx, n1.IPv4); err != nil {
		t.Errorf("%s lost its own address: %v", n1.Name, err)
	}
}

// allAddrs lists every node's eth0 addresses.
func (e *env) allAddrs(t *testing.T) map[string][]netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := map[string][]netip.Addr{}
	for _, n := range e.lab.Nodes {
		addrs, err := addrsOn(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(addrs, netip.Addr.Compare)
		out[n.Name] = addrs
	}
	return out
}

func equalAddrs(a, b map[string][]netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
