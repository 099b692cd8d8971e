package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// The tests of the fast path (docs/failover.md, docs/heartbeat.md): beats
// that nobody on the wire can forge or replay, and no ping-pong when some
// beats are lost.

// lossBound is the longest a lost holder's VIP may stay unheld with
// heartbeats working: the detector's timeout (200 ms), the confirmation by
// another agent and one claim write, with margin for a loaded 2-core
// machine. Lease expiry (fastTimings: 2 s) is what it must beat.
const lossBound = time.Second

// moves lists the nodes the VIP moved to, in order, from since: each time
// one node alone holds it and it is not the one that did before.
func moves(w *vipWatch, since time.Time) (int, []string) {
	held := map[string]bool{}
	prev := ""
	var seq []string
	for _, ev := range w.Events() {
		held[ev.Node] = ev.Held
		var sole []string
		for node, h := range held {
			if h {
				sole = append(sole, node)
			}
		}
		if len(sole) != 1 {
			continue
		}
		if ev.At.Before(since) {
			prev = sole[0]
			continue
		}
		if sole[0] != prev {
			seq = append(seq, sole[0])
			prev = sole[0]
		}
	}
	return len(seq), seq
}

// loseHolder takes the holder h off for good (its agent killed, its link
// down, as a power cut does) and checks that another node holds the VIP
// within the node-loss bound; while says what else was going on, for the
// messages.
func (e *env) loseHolder(t *testing.T, procs map[string]*lab.Process, h *lab.Node, while string) *lab.Node {
	t.Helper()
	lost := time.Now()
	if err := procs[h.Name].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDown(); err != nil {
		t.Fatal(err)
	}
	next, at := e.waitNewHolder(e.timing.lease+2*time.Second, h)
	took := at.Sub(lost)
	t.Logf("%s lost%s; %s took over %v later", h.Name, while, next.Name, took.Round(time.Millisecond))
	if took > lossBound {
		t.Errorf("the VIP moved %v after %s was lost%s, want within %v", took, h.Name, while, lossBound)
	}
	return next
}

// TestForgedBeatsIgnored: a host on the segment that knows the wire format
// and the cluster identity, but not the key, sends beats in the holder's
// name: that it let go (the VIP must not move), then that it is alive
// after it is lost (the VIP must move within the node-loss bound).
func TestForgedBeatsIgnored(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitHeard(procs)
	e.mustReach(vip4, h)
	cluster, err := e.clusterIdentity(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	forger := sender(t, e)
	guess := []byte("a forger's guess at the key, as long as a real one")
	inc := uint64(time.Now().UnixNano()) + 1<<40 // a "later run" than the real one
	forged := func(live bool) func(seq uint64) []tappedBeat {
		return func(seq uint64) []tappedBeat {
			var out []tappedBeat
			for _, n := range e.lab.Nodes {
				if n != h {
					out = append(out, tappedBeat{to: n.IPv4, payload: forgeBeat(cluster, h.Name, n.Name, live, inc, seq, guess)})
				}
			}
			return out
		}
	}

	ctx, cancel := context.WithCancel(t.Context())
	go flood(ctx, forger, 5*time.Millisecond, forged(false))
	holdFor(t, 2*time.Second, "the VIP to stay on "+h.Name+" while a forger says it let go", func() error {
		if hs := w.Holders(); !slices.Equal(hs, []string{h.Name}) {
			return fmt.Errorf("holders %v", hs)
		}
		return nil
	})
	cancel()

	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	go flood(ctx, forger, 5*time.Millisecond, forged(true))
	next := e.loseHolder(t, procs, h, " while a forger said it was alive")
	e.mustReach(vip4, next)
}

// TestReplayedBeatsIgnored: genuine beats of a holder, captured on the wire
// during an earlier run of its agent, are sent again after it restarted,
// became the holder again and was lost, to agents that themselves
// restarted since: they prove nothing, and the VIP moves within the
// node-loss bound.
func TestReplayedBeatsIgnored(t *testing.T) {
	e := newEnv(t, envOptions{})
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitHeard(procs)

	// Run A of h's agent, holding: a second of its beats.
	tap := tapBeats(t, e, h)
	time.Sleep(time.Second) // recording the wire for a while is the point
	captured, err := tap.stop()
	if len(captured) < 50 {
		t.Fatalf("captured only %d beats of %s (%v)", len(captured), h.Name, err)
	}
	t.Logf("captured %d beats of %s's first run", len(captured), h.Name)

	// h's agent restarts (run B); the others stop, so that h holds again,
	// then start again: every receiver has restarted since the capture.
	if err := procs[h.Name].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, procs[h.Name], 10*time.Second)
	procs[h.Name] = e.start(h)
	for _, n := range e.lab.Nodes {
		if n == h {
			continue
		}
		if err := procs[n.Name].Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		waitExit(t, procs[n.Name], 10*time.Second)
	}
	e.waitLeaseHolder(5*time.Second, h.Name)
	for _, n := range e.lab.Nodes {
		if n != h {
			procs[n.Name] = e.start(n)
		}
	}
	e.waitHeard(procs)
	if got := e.waitSoleHolder(5 * time.Second); got != h {
		t.Fatalf("%s holds the VIP, want %s", got.Name, h.Name)
	}

	// h is lost; run A's beats are replayed to everyone, over and over.
	replayer := sender(t, e)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go flood(ctx, replayer, 20*time.Millisecond, func(uint64) []tappedBeat { return captured })
	next := e.loseHolder(t, procs, h, " while its earlier run's beats were replayed")
	e.mustReach(vip4, next)
}

// TestOnePairCut: UDP between the holder and one other node is dropped
// for 30 s while both still hear the third. Neither takes the other for
// dead: the VIP moves at most once, and two nodes never hold or answer for
// it longer than a retry period.
func TestOnePairCut(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitHeard(procs)
	a := watchARP(t, e, vip4, 20*time.Millisecond)
	var other *lab.Node
	for _, n := range e.lab.Nodes {
		if n != h {
			other = n
			break
		}
	}
	ping, err := e.lab.Client.PingLoop(t.Context(), vip4, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer ping.Close()
	start := time.Now()
	if err := h.DropUDP(other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.DropUDP() })
	time.Sleep(30 * time.Second) // the cut lasting is the point; the record is checked below
	if err := h.DropUDP(); err != nil {
		t.Fatal(err)
	}
	end := time.Now()
	ping.Stop()
	n, seq := moves(w, start)
	doubled := a.Doubled(start, end)
	t.Logf("UDP between %s (holder) and %s cut for %v: %d moves %v, two holders for %v, two ARP answerers for %v, longest ping gap %v",
		h.Name, other.Name, end.Sub(start).Round(time.Second), n, seq, w.Overlap(start, end, nil), doubled, ping.LongestGap(start, end))
	if n > 1 {
		t.Errorf("the VIP moved %d times (%v) while one pair could not hear each other, want at most once", n, seq)
	}
	if d := w.Overlap(start, end, nil); d > e.timing.retry {
		t.Errorf("two nodes held the VIP for %v, want at most a retry period (%v)", d, e.timing.retry)
	}
	if doubled > e.timing.retry {
		t.Errorf("two nodes answered ARP for the VIP for %v, want at most a retry period (%v)", doubled, e.timing.retry)
	}
	if err := a.Err(); err != nil {
		t.Error(err)
	}
}

// TestHolderHeartbeatsCut: every datagram between the holder and its peers
// is dropped; the API server is fine. The others take the VIP over once; the
// holder sees its claim taken and stops; then nothing moves.
func TestHolderHeartbeatsCut(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitHeard(procs)
	var others []*lab.Node
	for _, n := range e.lab.Nodes {
		if n != h {
			others = append(others, n)
		}
	}
	start := time.Now()
	if err := h.DropUDP(others...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.DropUDP() })
	next, at := e.waitNewHolder(e.timing.lease+2*time.Second, h)
	t.Logf("%s's heartbeats cut: %s took over %v later", h.Name, next.Name, at.Sub(start).Round(time.Millisecond))
	holdFor(t, 3*e.timing.lease, "the VIP to stay on "+next.Name, func() error {
		if hs := w.Holders(); !slices.Equal(hs, []string{next.Name}) {
			return fmt.Errorf("holders %v", hs)
		}
		return nil
	})
	if n, seq := moves(w, start); n > 1 {
		t.Errorf("the VIP moved %d times (%v), want once", n, seq)
	}
	if d := w.Overlap(start, time.Now(), nil); d > e.timing.retry {
		t.Errorf("two nodes held the VIP for %v, want at most a retry period (%v)", d, e.timing.retry)
	}
}

// flap takes n's link down for half a second, five times, two seconds
// apart, as a flaky NIC or switch port would.
func flap(t *testing.T, n *lab.Node) {
	t.Helper()
	for i := range 5 {
		if err := n.LinkDown(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // the flap's length is the fault
		if err := n.LinkUp(); err != nil {
			t.Fatal(err)
		}
		if i < 4 {
			time.Sleep(1500 * time.Millisecond) // two seconds apart
		}
	}
}

// TestLinkFlaps: the holder's link flaps five times. A node cut off judges
// nobody dead for it and holds nothing: the VIP moves at most once, never
// back, and afterwards only one node answers for it. Then a non-holder's
// link flaps: nothing moves.
func TestLinkFlaps(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitHeard(procs)
	a := watchARP(t, e, vip4, 20*time.Millisecond)

	start := time.Now()
	flap(t, h)
	e.waitHeard(procs)
	settled := time.Now()
	holder := e.waitSoleHolder(5 * time.Second)
	n, seq := moves(w, start)
	t.Logf("holder %s's link flapped 5 times: %d moves %v, now on %s", h.Name, n, seq, holder.Name)
	if n > 1 {
		t.Errorf("the VIP moved %d times (%v) while %s's link flapped, want at most once", n, seq, h.Name)
	}
	if n == 1 && holder == h {
		t.Errorf("the VIP moved back to %s: %v", h.Name, seq)
	}
	holdFor(t, time.Second, "one answerer for the VIP", func() error { return nil })
	if who := a.Answerers(settled, time.Now()); !slices.Equal(who, []string{holder.Name}) {
		t.Errorf("after the flaps ARP for %s is answered by %v, want only %s", vip4, who, holder.Name)
	}
	t.Logf("two answerers for %v in all, none for %v", a.Doubled(start, time.Now()), a.Unanswered(start, time.Now()))
	if d := a.Doubled(start, time.Now()); d > e.timing.retry {
		t.Errorf("two nodes answered ARP for the VIP for %v in all, want at most a retry period", d)
	}

	// A non-holder's link flaps: no move at all.
	var bystander *lab.Node
	for _, n := range e.lab.Nodes {
		if n != holder {
			bystander = n
			break
		}
	}
	start = time.Now()
	flap(t, bystander)
	e.waitHeard(procs)
	if n, seq := moves(w, start); n != 0 {
		t.Errorf("the VIP moved %d times (%v) while the non-holder %s's link flapped, want never", n, seq, bystander.Name)
	}
	if hs := w.Holders(); !slices.Equal(hs, []string{holder.Name}) {
		t.Errorf("holders %v after %s's flaps, want %s", hs, bystander.Name, holder.Name)
	}
	if err := a.Err(); err != nil {
		t.Error(err)
	}
}

// TestDoubleLoss: five nodes, the control-plane VIP and Services elected
// per address; two nodes are lost at once (a rack losing power). The
// survivors re-home everything, then hold steady for 60 s: nothing moves
// again, and no survivor ever takes another for silent.
func TestDoubleLoss(t *testing.T) {
	s := newSvcEnv(t, svcOptions{nodes: 5, perService: true, controlPlane: true})
	procs := s.startAll()
	s.waitLive(startTimeout)
	s.waitHeard(procs)
	vips := addrRange("192.0.2.180", 10)
	for i, v := range vips {
		s.create(s.service(s.ns, fmt.Sprintf("svc-%d", i), v.String(), svcPort))
	}
	all := append([]netip.Addr{vip4}, vips...)
	before := s.waitPlaced(placeTimeout, all)
	// Lose the control-plane holder and the node holding most of the rest.
	counts := before.perNode(s.lab.Nodes)
	second := ""
	for _, n := range s.lab.Nodes {
		if n.Name != before[vip4] && (second == "" || counts[n.Name] > counts[second]) {
			second = n.Name
		}
	}
	victims := []string{before[vip4], second}
	lost := time.Now()
	for _, v := range victims {
		if err := procs[v].Kill(); err != nil {
			t.Fatal(err)
		}
		if err := s.node(v).LinkDown(); err != nil {
			t.Fatal(err)
		}
	}
	after := s.waitPlaced(placeTimeout, all, victims...)
	t.Logf("lost %v at once; everything held again %v later: %v", victims, time.Since(lost).Round(time.Millisecond), after)
	if took := time.Since(lost); took > 2*lossBound {
		t.Errorf("the lost nodes' VIPs were held again only %v later, want within %v", took, 2*lossBound)
	}
	for v, n := range after {
		if before[v] != n && !slices.Contains(victims, before[v]) {
			t.Errorf("%s moved from %s to %s, though its holder was not lost", v, before[v], n)
		}
	}
	steady := time.Now()
	holdFor(t, 60*time.Second, "every VIP to stay where it is", func() error {
		now, err := s.vipHolders(all)
		if err != nil {
			return err
		}
		for _, v := range all {
			// A lost node's leftovers expire on their own, off the segment.
			hs := slices.DeleteFunc(now[v], func(n string) bool { return slices.Contains(victims, n) })
			if len(hs) != 1 || hs[0] != after[v] {
				return fmt.Errorf("%s is held by %v, was %s", v, hs, after[v])
			}
		}
		return nil
	})
	for name, p := range procs {
		if slices.Contains(victims, name) {
			continue
		}
		for _, line := range strings.Split(p.Log(), "\n") {
			if !strings.Contains(line, "heartbeat peer silent") || !afterTime(line, steady.Add(-time.Second)) {
				continue
			}
			for _, other := range procs {
				if !slices.Contains(victims, other.Node) && strings.Contains(line, "peer="+other.Node+" ") {
					t.Errorf("survivor %s took survivor %s for silent: %s", name, other.Node, line)
				}
			}
		}
	}
}

// afterTime reports whether a log line's time= field is after t.
func afterTime(line string, t time.Time) bool {
	_, rest, ok := strings.Cut(line, "time=")
	if !ok {
		return false
	}
	stamp, _, _ := strings.Cut(rest, " ")
	at, err := time.Parse(time.RFC3339Nano, stamp)
	return err == nil && at.After(t)
}
