package e2e

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// BenchmarkFailover measures, at vipd's default timings (lease 5s, renew
// 3s, retry 1s), what a client on the segment sees when the holder of the
// control-plane VIP is disrupted (docs/testing.md, docs/benchmarks.md).
// One failover per iteration:
//
//	go test ./e2e -run '^$' -bench BenchmarkFailover -benchtime 10x
//
// The client pings the VIP every 10 ms; a round's figure is the longest
// interval between two answered pings around the disruption.
func BenchmarkFailover(b *testing.B) {
	for _, sc := range []scenario{
		{
			name: "graceful",
			disrupt: func(_ *lab.Node, p *lab.Process) error {
				return p.Signal(syscall.SIGTERM)
			},
		},
		{
			name:  "crash",
			crash: true,
			disrupt: func(_ *lab.Node, p *lab.Process) error {
				return p.Kill()
			},
		},
		{
			name:       "nodeloss",
			crash:      true,
			offSegment: true,
			disrupt: func(n *lab.Node, p *lab.Process) error {
				if err := p.Kill(); err != nil {
					return err
				}
				return n.LinkDown()
			},
			restore: func(n *lab.Node) error { return n.LinkUp() },
		},
		{
			// The holder loses its route to the API server but keeps its
			// clients: it must step down by its renew deadline, and the
			// others take over as soon as it says so.
			name:    "partition",
			running: true,
			disrupt: func(n *lab.Node, _ *lab.Process) error { return n.BlockAPI() },
			restore: func(n *lab.Node) error { return n.UnblockAPI() },
		},
	} {
		b.Run(sc.name, func(b *testing.B) { benchmarkFailover(b, sc) })
	}
}

type scenario struct {
	name string
	// crash: the agent is killed, so the address it held stays on the
	// node (it cannot clean up) until the agent is restarted.
	crash bool
	// disrupt is done to the holder n and its agent p.
	disrupt func(n *lab.Node, p *lab.Process) error
	// restore, if set, undoes disrupt on n after its agent was restarted.
	restore func(n *lab.Node) error
	// offSegment: disrupt takes the node off the segment, so an address
	// left on it answers nobody.
	offSegment bool
	// running: the disrupted agent keeps running; restore alone heals it.
	running bool
}

// failover is one round's result.
type failover struct {
	from, to string
	// gap is the longest interval between two answered pings.
	gap time.Duration
	// takeover is from the disruption until the VIP is on the new holder;
	// neighbour until the client's neighbour entry has the new MAC.
	takeover, neighbour time.Duration
	// dups counts echo replies beyond the first: more than one station
	// answered a ping.
	dups int
	// liveOverlap is how long two nodes with running agents held the VIP
	// at once.
	liveOverlap time.Duration
	// stale: the disrupted node still had the VIP (and its kernel answered
	// ARP for it) when the new holder took over; staleFor is how long after
	// the takeover it kept it (the VIP's lifetime runs out).
	stale    bool
	staleFor time.Duration
	// lateAnnouncements counts gratuitous ARPs for the VIP from the old
	// holder after the new holder's first one.
	lateAnnouncements int
	// twoAnswerers is how long two nodes answered the client's ARP
	// requests for the VIP (one every 20 ms); oldAnswered is how long after
	// the disruption the old holder's node last answered one.
	twoAnswerers, oldAnswered time.Duration
}

func benchmarkFailover(b *testing.B, sc scenario) {
	e := newEnv(b, envOptions{defaults: true, quiet: true})
	w := watchVIP(b, e.lab.Nodes, vip4)
	nw := watchNeighbor(b, e.lab.Client, vip4)
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitKnownHolder(procs, h)
	e.waitHeard(procs)

	var rounds []failover
	for b.Loop() {
		r := e.failoverRound(b, sc, w, nw, procs, h)
		rounds = append(rounds, r)
		// To stdout: the testing package keeps only ten lines of a
		// benchmark's log.
		fmt.Printf("%-9s round %2d  %s -> %s  gap %6.0f ms  takeover %6.0f ms  neighbour %6.0f ms  dup replies %d  two live holders %4.0f ms  stale VIP for %5.0f ms  late announcements %d  two ARP answerers %4.0f ms  old node answered until %5.0f ms\n",
			sc.name, len(rounds), r.from, r.to, ms(r.gap), ms(r.takeover), ms(r.neighbour), r.dups, ms(r.liveOverlap), ms(r.staleFor), r.lateAnnouncements,
			ms(r.twoAnswerers), ms(r.oldAnswered))
		h = e.node(r.to)
	}

	var gaps, takeovers, neighbours []time.Duration
	var dups, stale int
	var overlap, staleFor, twoAnswerers, oldAnswered time.Duration
	for _, r := range rounds {
		twoAnswerers = max(twoAnswerers, r.twoAnswerers)
		oldAnswered = max(oldAnswered, r.oldAnswered)
		gaps = append(gaps, r.gap)
		takeovers = append(takeovers, r.takeover)
		neighbours = append(neighbours, r.neighbour)
		dups += r.dups
		overlap = max(overlap, r.liveOverlap)
		if r.stale {
			stale++
		}
		staleFor = max(staleFor, r.staleFor)
	}
	b.ReportMetric(0, "ns/op") // a round's wall time includes the restore
	b.ReportMetric(ms(median(gaps)), "gap-median-ms")
	b.ReportMetric(ms(slices.Max(gaps)), "gap-max-ms")
	b.ReportMetric(ms(median(takeovers)), "takeover-median-ms")
	b.ReportMetric(ms(median(neighbours)), "neigh-median-ms")
	b.ReportMetric(ms(overlap), "overlap-max-ms")
	b.ReportMetric(float64(dups), "dup-replies")
	b.ReportMetric(float64(stale), "stale-rounds")
	b.ReportMetric(ms(staleFor), "stale-max-ms")
	b.ReportMetric(ms(twoAnswerers), "two-answerers-max-ms")
	b.ReportMetric(ms(oldAnswered), "old-answers-max-ms")
}

// failoverRound disrupts the holder h, measures until the client is served
// by the new holder, then restores h's node as a follower and waits until
// every agent follows the new holder.
func (e *env) failoverRound(b *testing.B, sc scenario, w *vipWatch, nw *neighWatch, procs map[string]*lab.Process, h *lab.Node) failover {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := e.lab.Client
	rec, err := c.PingLoop(ctx, vip4, 10*time.Millisecond)
	if err != nil {
		b.Fatal(err)
	}
	defer rec.Stop()
	cp, err := c.Capture(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer cp.Close()
	arpw := watchARP(b, e, vip4, 20*time.Millisecond)
	defer arpw.Stop()
	// Steady answers before the disruption.
	waitFor(b, 5*time.Second, "20 answered pings to the VIP", func() error {
		if n := len(rec.Replies()); n < 20 {
			return fmt.Errorf("%d answered", n)
		}
		return nil
	})

	start := time.Now()
	if err := sc.disrupt(h, procs[h.Name]); err != nil {
		b.Fatal(err)
	}
	var next string
	took, err := w.Wait(30*time.Second, func(holders []string) bool {
		for _, n := range holders {
			if n != h.Name {
				next = n
				return true
			}
		}
		return false
	})
	if err != nil {
		b.Fatalf("no new holder after disrupting %s: %v", h.Name, err)
	}
	n := e.node(next)
	stale := !sc.offSegment && slices.Contains(w.Holders(), h.Name)
	moved, err := nw.WaitMAC(start, n.MAC, 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	// Answered again, and for a while: the window closes half a second
	// after the first answer that came after the neighbour entry moved.
	waitFor(b, 10*time.Second, "answers from the new holder", func() error {
		for _, ech := range rec.Echoes() {
			if ech.Sent.After(moved) && !ech.Reply.IsZero() && time.Since(ech.Reply) > 500*time.Millisecond {
				return nil
			}
		}
		return fmt.Errorf("no answer yet")
	})
	if !sc.offSegment {
		// The old node's kernel may answer a little longer than its agent
		// lived: wait out the guard's timeout before reading the record.
		time.Sleep(500 * time.Millisecond)
	}
	end := time.Now()
	rec.Stop()
	cp.Close()
	arpw.Stop()

	r := failover{
		from:      h.Name,
		to:        next,
		gap:       rec.LongestGap(start.Add(-500*time.Millisecond), end),
		takeover:  took.Sub(start),
		neighbour: moved.Sub(start),
		stale:     stale,
	}
	for _, ev := range rec.Echoes() {
		if !ev.Sent.Before(start.Add(-500 * time.Millisecond)) {
			r.dups += ev.Dups
		}
	}
	live := []string{}
	for _, node := range e.lab.Nodes {
		if !sc.crash || node != h {
			live = append(live, node.Name)
		}
	}
	r.liveOverlap = w.Overlap(start.Add(-500*time.Millisecond), end, live)
	r.twoAnswerers = arpw.Doubled(start, end)
	if last := arpw.LastFrom(h.Name); last.After(start) {
		r.oldAnswered = last.Sub(start)
	}
	if first := announcementsSince(cp, start, gratuitousFrom(n, vip4)); len(first) > 0 {
		r.lateAnnouncements = len(announcementsSince(cp, first[0].Time, gratuitousFrom(h, vip4)))
	}

	// A crashed agent's VIP expires: measure how long it stayed.
	if stale {
		gone, err := w.Wait(10*time.Second, func(holders []string) bool { return !slices.Contains(holders, h.Name) })
		if err != nil {
			b.Fatalf("the crashed node %s kept its stale VIP: %v", h.Name, err)
		}
		r.staleFor = gone.Sub(took)
	}

	// Restore: the old holder's node comes back as a follower.
	if sc.running {
		if err := sc.restore(h); err != nil {
			b.Fatal(err)
		}
		waitLog(b, procs[h.Name], 0, 20*time.Second, " holder="+next)
		e.waitHeard(procs)
		return r
	}
	if !sc.crash {
		if code := waitExit(b, procs[h.Name], 10*time.Second); code != 0 {
			b.Fatalf("vipd on %s exited %d after SIGTERM", h.Name, code)
		}
	}
	procs[h.Name] = e.start(h)
	// A restarted agent first removes what its predecessor left behind.
	if _, err := w.Wait(10*time.Second, func(holders []string) bool { return slices.Equal(holders, []string{next}) }); err != nil {
		b.Fatal(err)
	}
	if sc.restore != nil {
		if err := sc.restore(h); err != nil {
			b.Fatal(err)
		}
	}
	waitLog(b, procs[h.Name], 0, 20*time.Second, " holder="+next)
	e.waitHeard(procs)
	return r
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
