package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/lab"
)

// Settings of the soak (make soak sets them; make test runs the short
// version).
const (
	soakFaultsEnv = "VIPD_SOAK_FAULTS" // number of faults, default 10
	soakSeedEnv   = "VIPD_SOAK_SEED"   // default: random, printed
)

// soakServices is how many Service VIPs each phase serves besides the
// control-plane VIPs: 15 IPv4, 5 IPv6.
const soakServices = 20

// soakSettle is how long the cluster must stay steady before a fault
// counts as over: longer than the renew deadline (3 s by default).
const soakSettle = 3500 * time.Millisecond

// TestSoak is the chaos soak (docs/faults.md): three nodes serve the
// control-plane VIP (IPv4 and IPv6) and 20 Service VIPs, first with one
// election for all Services, then with one per address; faults drawn at
// random, one after the other, each once the cluster is steady again. The
// checker measures, for every fault, what the client saw of every VIP,
// and the test fails on any fault past the bounds. The seed is printed;
// VIPD_SOAK_SEED replays a run.
func TestSoak(t *testing.T) {
	faults := 10
	if v := os.Getenv(soakFaultsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			t.Fatalf("%s=%q: want a number of faults, at least 2", soakFaultsEnv, v)
		}
		faults = n
	}
	seed := rand.Uint64()
	if v := os.Getenv(soakSeedEnv); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned integer", soakSeedEnv, v)
		}
		seed = s
	}
	t.Logf("soak: %d faults, seed %d (replay with %s=%d %s=%d)", faults, seed, soakSeedEnv, seed, soakFaultsEnv, faults)
	full := faults > 20
	var all []faultResult
	for i, perService := range []bool{false, true} {
		n := faults / 2
		if i == 1 {
			n = faults - faults/2
		}
		mode := "one-for-all"
		if perService {
			mode = "per-address"
		}
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		t.Run(mode, func(t *testing.T) {
			all = append(all, runSoak(t, rng, perService, n, full)...)
		})
	}
	t.Logf("soak: seed %d\n%s", seed, soakTable(all))
}

// soakWorld is one phase of the soak.
type soakWorld struct {
	t       *testing.T
	s       *svcEnv
	rng     *rand.Rand
	full    bool
	members []*lab.Node
	procs   map[string]*lab.Process
	vips    []netip.Addr
	check   *checker
}

func runSoak(t *testing.T, rng *rand.Rand, perService bool, faults int, full bool) []faultResult {
	s := newSvcEnv(t, svcOptions{perService: perService, controlPlane: true, defaults: true, quiet: true, dir: keptLogs(t)})
	w := &soakWorld{t: t, s: s, rng: rng, full: full, members: slices.Clone(s.lab.Nodes), procs: map[string]*lab.Process{}}

	w.vips = []netip.Addr{vip4, vip6}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var err error
	svcs := make([]string, 0, soakServices)
	for i := range soakServices {
		ip := netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i)})
		if i >= 15 {
			ip = netip.MustParseAddr(fmt.Sprintf("2001:db8:100::1:%x", i))
		}
		w.vips = append(w.vips, ip)
		svcs = append(svcs, ip.String())
	}
	for i, ip := range svcs {
		if _, err := s.createService(ctx, s.service(s.ns, fmt.Sprintf("soak-%d", i), ip, svcPort)); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range w.members {
		w.startAgent(n)
	}
	if w.check, err = newChecker(s.lab, w.members, w.vips); err != nil {
		t.Fatal(err)
	}
	defer w.check.close()
	w.waitSteady(time.Minute, "the start")

	var results []faultResult
	for i := range faults {
		k := w.draw()
		r := w.inject(i, k)
		results = append(results, r)
		status := "ok"
		if len(r.problems) > 0 {
			status = strings.Join(r.problems, "; ")
			t.Errorf("fault %d (%s on %s): %s", i, k.name, r.target, status)
		}
		t.Logf("fault %2d %-10s %-8s %-22s gap %6v  two %5v  none %5v  moved %2d  %s",
			i, k.name, r.target, r.detail, r.out.gap.Round(time.Millisecond), r.out.twoAnswerers, r.out.noAnswerer, r.out.moved, status)
		if r.lost {
			break // nothing after it would be judged fairly
		}
	}
	return results
}

// startAgent runs vipd on n and records it as a member's agent.
func (w *soakWorld) startAgent(n *lab.Node) {
	w.procs[n.Name] = w.s.start(n, "--address", vip4.String()+","+vip6.String())
}

func (w *soakWorld) memberNames() []string {
	var out []string
	for _, n := range w.members {
		out = append(out, n.Name)
	}
	return out
}

// waitSteady waits until every VIP is carried by one member, answered for
// by it alone and reachable, every member's agent runs, and every agent
// hears every other one (their node Leases say so).
//
// It must stay so for soakSettle: a fault can have consequences after it
// is healed (a renewal stuck in TCP retransmissions through a cut ends
// only at the renew deadline), and they belong to that fault.
func (w *soakWorld) waitSteady(timeout time.Duration, after string) error {
	deadline := time.Now().Add(timeout)
	var why string
	var since time.Time
	for time.Now().Before(deadline) {
		why = w.steadyProblem()
		switch {
		case why != "":
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= soakSettle:
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	err := fmt.Errorf("not steady %v after %s: %s", timeout, after, why)
	if after == "the start" {
		w.t.Fatal(err)
	}
	return err
}

func (w *soakWorld) steadyProblem() string {
	names := w.memberNames()
	for _, n := range names {
		if w.procs[n].Exited() {
			return "the agent on " + n + " exited: " + w.procs[n].LogPath()
		}
	}
	if why := w.check.steady(names); why != "" {
		return why
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range names {
		l, err := pkg.admin.CoordinationV1().Leases(w.s.ns).Get(ctx, nodeLease(n), metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != n {
			return n + " does not hold its node Lease"
		}
		heard := l.Annotations["vipd.io/peers"]
		for _, o := range names {
			if o != n && !strings.Contains(","+heard+",", ","+o+"=heard,") {
				return fmt.Sprintf("%s does not hear %s yet (%q)", n, o, heard)
			}
		}
	}
	return ""
}

// holderOf is a member that carries vip, if any.
func (w *soakWorld) holderOf(vip netip.Addr) *lab.Node {
	h, err := w.s.vipHolders([]netip.Addr{vip})
	if err != nil {
		w.t.Fatal(err)
	}
	for _, n := range w.members {
		if slices.Contains(h[vip], n.Name) {
			return n
		}
	}
	return nil
}

// target picks the node a fault hits: mostly a holder (the control-plane
// VIP's, or a random VIP's), sometimes any member.
func (w *soakWorld) target() *lab.Node {
	switch w.rng.IntN(3) {
	case 0:
		if n := w.holderOf(vip4); n != nil {
			return n
		}
	case 1:
		if n := w.holderOf(w.vips[w.rng.IntN(len(w.vips))]); n != nil {
			return n
		}
	}
	return w.members[w.rng.IntN(len(w.members))]
}

// between draws a duration in [lo, hi]; the short soak shortens hi.
func (w *soakWorld) between(lo, hi time.Duration) time.Duration {
	if !w.full {
		hi = max(lo, hi/3)
	}
	return lo + time.Duration(w.rng.Int64N(int64(hi-lo)+1))
}

// faultResult is the outcome of one fault.
type faultResult struct {
	kind     string
	planned  bool
	target   string
	detail   string
	out      outcome
	problems []string
	lost     bool // a VIP was not served again after the fault
}

// inject applies fault k, waits until the cluster is steady again and
// judges what the client saw in between.
func (w *soakWorld) inject(i int, k faultKind) faultResult {
	r := faultResult{kind: k.name, planned: k.planned}
	from := time.Now()
	r.target, r.detail = k.do(w)
	if err := w.waitSteady(time.Minute, k.name); err != nil {
		r.problems = append(r.problems, fmt.Sprintf("a VIP that existed before the fault is not served after it: %v", err))
		r.lost = true
	}
	to := time.Now()
	// Let the last probes and pings of the window come back.
	time.Sleep(2 * sampleInterval)
	r.out = w.check.judge(from.Add(-sampleInterval), to)
	r.problems = append(r.problems, r.out.violations(k.planned)...)
	return r
}

// soakTable renders the figures per fault kind: one row each.
func soakTable(rs []faultResult) string {
	type row struct {
		n, failed           int
		gap, two, none      time.Duration
		twoTotal, noneTotal time.Duration
		planned             bool
	}
	rows := map[string]*row{}
	for _, r := range rs {
		x := rows[r.kind]
		if x == nil {
			x = &row{planned: r.planned}
			rows[r.kind] = x
		}
		x.n++
		if len(r.problems) > 0 {
			x.failed++
		}
		x.gap, x.two, x.none = max(x.gap, r.out.gap), max(x.two, r.out.twoAnswerers), max(x.none, r.out.noAnswerer)
		x.twoTotal += r.out.twoTotal
		x.noneTotal += r.out.noAnswerTotal
	}
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "fault\tcount\tworst gap\tbound\ttwo answerers, worst\ttotal s\tno answerer, worst run\ttotal s\tfailed\t")
	var total row
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range rows {
			if !yield(k) {
				return
			}
		}
	}) {
		x := rows[k]
		bound := boundUnplannedGap
		if x.planned {
			bound = boundPlannedGap
		}
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%v\t%.2f\t%v\t%.2f\t%d\t\n", k, x.n, x.gap.Round(time.Millisecond), bound,
			x.two, x.twoTotal.Seconds(), x.none, x.noneTotal.Seconds(), x.failed)
		total.n += x.n
		total.failed += x.failed
		total.twoTotal += x.twoTotal
		total.noneTotal += x.noneTotal
	}
	fmt.Fprintf(tw, "all\t%d\t\t\t\t%.2f\t\t%.2f\t%d\t\n", total.n, total.twoTotal.Seconds(), total.noneTotal.Seconds(), total.failed)
	tw.Flush()
	return b.String()
}
