package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkAPIOutage stops the API server for 20 s per round, for every
// agent at once, at vipd's default timings, and records what the client
// saw: the longest interval between two answered pings (kube-vip drops the
// VIP for the whole outage plus a re-election, 24–26 s on this lab).
//
//	go test ./e2e -run '^$' -bench BenchmarkAPIOutage -benchtime 10x
func BenchmarkAPIOutage(b *testing.B) {
	const outage = 20 * time.Second
	e := newEnv(b, envOptions{defaults: true, quiet: true})
	w := watchVIP(b, e.lab.Nodes, vip4)
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.waitKnownHolder(procs, h)

	var gaps []time.Duration
	moved := 0
	for b.Loop() {
		// Every agent renewed since the last round and hears the others.
		for _, n := range e.lab.Nodes {
			waitLog(b, procs[n.Name], 0, 10*time.Second, "this agent is live")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*outage)
		rec, err := e.lab.Client.PingLoop(ctx, vip4, 10*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		waitFor(b, 5*time.Second, "answered pings", func() error {
			if n := len(rec.Replies()); n < 20 {
				return fmt.Errorf("%d answered", n)
			}
			return nil
		})
		before := w.Holders()
		down := time.Now()
		e.lab.StopAPI()
		time.Sleep(outage) // the outage itself is what is measured
		if err := e.lab.StartAPI(); err != nil {
			b.Fatal(err)
		}
		up := time.Now()
		// Past one renew deadline after the API is back, to see any late
		// step-down.
		time.Sleep(3 * time.Second)
		rec.Stop()
		cancel()
		after := w.Holders()
		gap := rec.LongestGap(down.Add(-500*time.Millisecond), time.Now())
		gaps = append(gaps, gap)
		if !slices.Equal(before, after) {
			moved++
		}
		fmt.Printf("apioutage round %2d  API down %5.1f s  holder %v -> %v  longest gap %6.0f ms\n",
			len(gaps), up.Sub(down).Seconds(), before, after, ms(gap))
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(median(gaps)), "gap-median-ms")
	b.ReportMetric(ms(slices.Max(gaps)), "gap-max-ms")
	b.ReportMetric(float64(moved), "holder-changes")
}
