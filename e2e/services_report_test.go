package e2e

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab/controlplane"
)

// What BenchmarkServices prints and reports, from what it measured.

// report prints the sub-benchmark's table to stdout (the testing package
// keeps only ten lines of a benchmark's log) and reports its metrics.
func report(b *testing.B, bc svcBench, r svcResult) {
	secs := steadyWindow.Seconds()
	perSec := func(c controlplane.RequestCounts, pred func(controlplane.RequestKey) bool) float64 {
		var sum float64
		for k, v := range c {
			if pred(k) {
				sum += v
			}
		}
		return sum / secs
	}
	all := func(controlplane.RequestKey) bool { return true }
	leases := func(k controlplane.RequestKey) bool { return k.Resource == "leases" }
	other := func(k controlplane.RequestKey) bool { return k.Resource != "leases" }
	total, base := perSec(r.steady, all), perSec(r.baseline, all)
	lease, baseLease := perSec(r.steady, leases), perSec(r.baseline, leases)
	oth, baseOther := perSec(r.steady, other), perSec(r.baseline, other)
	agents, agentLeases, agentOther := total-base, lease-baseLease, oth-baseOther

	spread := make([]string, 0, len(r.spread))
	minSpread, maxSpread := bc.services, 0
	for i := 1; i <= bc.nodes; i++ {
		c := r.spread[fmt.Sprintf("n%d", i)]
		spread = append(spread, strconv.Itoa(c))
		minSpread, maxSpread = min(minSpread, c), max(maxSpread, c)
	}

	// The targets of docs/benchmarks.md: 200x3 and 1000x10 (the scale
	// issue's); the other sizes are points of the cost curve.
	small, large := bc.nodes == 3 && bc.services == 200, bc.nodes == 10 && bc.services == 1000
	target := func(s string) string {
		if small || large {
			return s
		}
		return ""
	}
	heldTarget, placeTarget := "", ""
	if small {
		heldTarget = "≤ 2 s"
	}
	if large {
		placeTarget = "≤ 2 s"
	}
	rehomeTarget := target("≤ 1 s")
	apiTarget := ""
	if small {
		apiTarget = "≤ 3"
	}
	if bc.nodes == 10 && bc.services > 10 {
		apiTarget = "same as 10x10"
	}
	w := os.Stdout
	fmt.Fprintf(w, "\n%s: %d Services, %d nodes, default timings (lease 5s, renew 3s, retry 1s)\n", bc.mode, bc.services, bc.nodes)
	row := func(what, got, want string) { fmt.Fprintf(w, "  %-46s %-34s %s\n", what, got, want) }
	row("figure", "measured", "target")
	row("Services created in", dur(r.created), "")
	row("all VIPs held, after the last was created", dur(r.held), heldTarget)
	row("all VIPs held, after the first was created", dur(r.heldFromFirst), "")
	row("every status written, after the last created", dur(r.status), "")
	row("API requests/s, steady, agents", fmt.Sprintf("%.2f", agents), apiTarget)
	row("  of which leases", fmt.Sprintf("%.2f", agentLeases), "")
	row("  of which other resources", fmt.Sprintf("%.2f", agentOther), "")
	row("API requests/s, API server alone (subtracted)", fmt.Sprintf("%.2f (leases %.2f, other %.2f)", base, baseLease, baseOther), "")
	row("API requests/s, with agents (raw)", fmt.Sprintf("%.2f (leases %.2f, other %.2f)", total, lease, oth), "")
	row("spread (VIPs per node)", strings.Join(spread, "/"), "")
	row("agent RSS, max / mean", fmt.Sprintf("%.1f MB / %.1f MB", r.rssMax, r.rssAvg), target("≤ 40 MB"))
	row("agent CPU to place them, max / mean", fmt.Sprintf("%.2f s / %.2f s", r.cpuPlaceMax, r.cpuPlaceAvg), placeTarget)
	row("  of which placing, above idle, max / mean", fmt.Sprintf("%.2f s / %.2f s", r.cpuAboveMax, r.cpuAboveAvg), "")
	row("agent CPU, idle (no Service), max / mean", fmt.Sprintf("%.2f %% / %.2f %% of a core", r.cpuIdleMax, r.cpuIdleAvg), "")
	row("agent CPU, steady, max / mean", fmt.Sprintf("%.2f %% / %.2f %% of a core", r.cpuSteadyMax, r.cpuSteadyAvg), "")
	row(fmt.Sprintf("lost node %s's %d VIPs held again after", r.lost, r.lostVIPs), dur(r.rehome), rehomeTarget)
	row("  other nodes' VIPs that moved meanwhile", strconv.Itoa(r.movedOthers), "0")
	printCurve(w, r.curve)
	fmt.Fprintf(w, "  steady requests by the agents over %v (verb resource: with agents - API server alone):\n", steadyWindow)
	keys := map[controlplane.RequestKey]bool{}
	for k := range r.steady {
		keys[k] = true
	}
	for k := range r.baseline {
		keys[k] = true
	}
	sorted := make([]controlplane.RequestKey, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	slices.SortFunc(sorted, func(a, b controlplane.RequestKey) int {
		return cmp.Or(cmp.Compare(a.Resource, b.Resource), cmp.Compare(a.Verb, b.Verb))
	})
	for _, k := range sorted {
		res := k.Resource
		if res == "" {
			res = "(non-resource)"
		}
		fmt.Fprintf(w, "    %-7s %-16s %5.0f - %5.0f\n", k.Verb, res, r.steady[k], r.baseline[k])
	}

	b.ReportMetric(0, "ns/op") // one run's wall time means nothing
	b.ReportMetric(ms(r.held), "held-ms")
	b.ReportMetric(ms(r.status), "status-ms")
	b.ReportMetric(agents, "api-req/s")
	b.ReportMetric(agentLeases, "lease-req/s")
	b.ReportMetric(agentOther, "other-req/s")
	b.ReportMetric(float64(maxSpread), "spread-max")
	b.ReportMetric(float64(minSpread), "spread-min")
	b.ReportMetric(r.rssMax, "rss-max-MB")
	b.ReportMetric(r.rssAvg, "rss-mean-MB")
	b.ReportMetric(r.cpuPlaceMax, "place-cpu-max-s")
	b.ReportMetric(r.cpuAboveMax, "place-above-idle-cpu-max-s")
	b.ReportMetric(r.cpuIdleMax, "idle-cpu-max-pct")
	b.ReportMetric(r.cpuSteadyMax, "steady-cpu-max-pct")
	b.ReportMetric(ms(r.rehome), "rehome-ms")
}

func dur(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}
