package e2e

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
	corev1 "k8s.io/api/core/v1"
)

// The largest sub-benchmark (5000x10) creates its Services a step at a
// time and records what each step cost: the cost curve itself, and a
// report where the lab gives out rather than a run that has to be killed.

const (
	// curveStep is the number of Services created per step.
	curveStep = 1000
	// curveCreateTimeout bounds the creation of one step: on a lab that
	// has given out, the API server answers slowly, and a run must end.
	curveCreateTimeout = 5 * time.Minute
	// curveHoldTimeout bounds the wait, after a step, until every VIP so
	// far is held by exactly one node.
	curveHoldTimeout = time.Minute
)

// curvePoint is what one step cost.
type curvePoint struct {
	services int           // Services there after the step
	created  time.Duration // creating the step's Services
	held     time.Duration // its last Service created → every VIP so far held
	// cpuMax and cpuAvg are the agents' CPU time (s) over the step, from
	// just before its first Service until every VIP was held; rssMax
	// their largest resident memory after it (MB).
	cpuMax, cpuAvg float64
	rssMax         float64
	err            error // the step did not settle: where the lab gave out
}

// createStepped creates svcs curveStep at a time. After each step it
// waits until every VIP created so far is held by exactly one node and
// records what the step cost the agents. It stops after the first step
// that does not settle in time. It returns the curve and when the first
// and the last Service were created; ok is false if a step did not settle.
func createStepped(tb testing.TB, s *svcEnv, poll *addrPoller, procs map[string]*lab.Process,
	svcs []*corev1.Service, vips []netip.Addr) (curve []curvePoint, first, last time.Time, ok bool) {
	tb.Helper()
	for lo := 0; lo < len(svcs); lo += curveStep {
		hi := min(lo+curveStep, len(svcs))
		cpu0, start := agentCPU(tb, procs), time.Now()
		if lo == 0 {
			first = start
		}
		ctx, cancel := context.WithTimeout(context.Background(), curveCreateTimeout)
		at, err := s.createServices(ctx, svcs[lo:hi])
		cancel()
		last = at
		pt := curvePoint{services: hi, created: at.Sub(start)}
		if err != nil {
			err = fmt.Errorf("creating Services %d–%d: %w", lo+1, hi, err)
		} else {
			var heldAt time.Time
			heldAt, err = pollFor(poll, curveHoldTimeout, func(h map[netip.Addr][]string) error {
				_, err := singleHolders(h, vips[:hi])
				return err
			}, vips[:hi])
			if err == nil {
				pt.held = heldAt.Sub(at)
			}
		}
		pt.cpuMax, pt.cpuAvg = cpuDelta(cpu0, agentCPU(tb, procs), 1)
		pt.rssMax, _ = agentRSS(tb, procs)
		pt.err = err
		curve = append(curve, pt)
		tb.Logf("step to %d Services: created in %v, held %v later, agent CPU %.2f s max, RSS %.1f MB max; err %v",
			hi, dur(pt.created), dur(pt.held), pt.cpuMax, pt.rssMax, err)
		if err != nil {
			return curve, first, last, false
		}
	}
	return curve, first, last, true
}

// pollFor reads the holders of vips every holderPollInterval until cond
// accepts them, and returns when that read started; after timeout, cond's
// last error.
func pollFor(p *addrPoller, timeout time.Duration, cond func(map[netip.Addr][]string) error, vips []netip.Addr) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		at := time.Now()
		h, err := p.holders(vips)
		if err == nil {
			err = cond(h)
		}
		if err == nil {
			return at, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("still not after %v: %w", timeout, err)
		}
		time.Sleep(time.Until(at.Add(holderPollInterval)))
	}
}

// printCurve prints the steps' costs; the CPU per Service of each step is
// what tells whether placing follows the Services created or those there.
func printCurve(w io.Writer, curve []curvePoint) {
	if len(curve) == 0 {
		return
	}
	fmt.Fprintf(w, "  cost curve, %d Services a step (each step waits until every VIP so far is held):\n", curveStep)
	fmt.Fprintf(w, "    %-9s %-10s %-12s %-22s %-12s %s\n", "Services", "created in", "held after", "agent CPU max / mean", "ms/Service", "RSS max")
	prev := 0
	for _, pt := range curve {
		held := dur(pt.held)
		if pt.err != nil {
			held = "—" // not all held: pt.held means nothing
		}
		fmt.Fprintf(w, "    %-9d %-10s %-12s %-22s %-12.2f %.1f MB\n", pt.services, dur(pt.created), held,
			fmt.Sprintf("%.2f s / %.2f s", pt.cpuMax, pt.cpuAvg), 1000*pt.cpuAvg/float64(pt.services-prev), pt.rssMax)
		if pt.err != nil {
			fmt.Fprintf(w, "    gave out: %v\n", pt.err)
		}
		prev = pt.services
	}
}
