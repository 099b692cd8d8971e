package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/vipd/vipd/internal/lab"
	"github.com/vipd/vipd/internal/lab/controlplane"
)

// BenchmarkServices measures LoadBalancer Services at scale, at vipd's
// default timings (docs/benchmarks.md; the scale targets in docs/scale.md). Each sub-benchmark is one run; use
//
//	go test ./e2e -run '^$' -bench BenchmarkServices -benchtime 1x
//
// It takes about 6 minutes: each sub-benchmark spends 30 s measuring the
// API server's background requests before the agents start, and 30 s
// measuring the agents' steady requests.
func BenchmarkServices(b *testing.B) {
	for _, bc := range []svcBench{
		{mode: "per-service", services: 200, nodes: 3},
		{mode: "one-for-all", services: 200, nodes: 3},
		// For comparison with 1000x10: the steady API cost must not grow
		// with the number of Services.
		{mode: "per-service", services: 10, nodes: 10},
		{mode: "per-service", services: 1000, nodes: 10},
		// The third point of the cost curve (10, 1,000, 5,000): the cost
		// of placing follows the Services created, not the Services there.
		{mode: "per-service", services: 5000, nodes: 10},
	} {
		b.Run(fmt.Sprintf("%s/%dx%d", bc.mode, bc.services, bc.nodes), func(b *testing.B) { benchmarkServices(b, bc) })
	}
}

type svcBench struct {
	mode            string // "per-service" or "one-for-all"
	services, nodes int
}

const (
	// steadyWindow is how long steady API requests are counted, with and
	// without agents.
	steadyWindow = 30 * time.Second
	// idleWindow is how long the agents' CPU use is measured before any
	// Service exists.
	idleWindow = 10 * time.Second
	// holderPollInterval paces the reads of the nodes' interfaces.
	holderPollInterval = 50 * time.Millisecond
	// benchServiceCIDR gives the API server room for more ClusterIPs than
	// envtest's 10.0.0.0/24 holds (253): 5,000 Services need a /19 at
	// least. ClusterIPs are only allocated strings here: nothing in the
	// lab routes or configures them.
	benchServiceCIDR = "10.0.64.0/18"
)

// svcResult is what one sub-benchmark measured.
type svcResult struct {
	created        time.Duration // first Service created → last created
	held           time.Duration // last Service created → every VIP held by one node
	heldFromFirst  time.Duration // first Service created → every VIP held
	status         time.Duration // last Service created → every status written
	baseline       controlplane.RequestCounts
	steady         controlplane.RequestCounts
	spread         map[string]int
	rssMax, rssAvg float64 // MB
	// cpuPlace is the CPU time (s) an agent spent from just before the
	// EndpointSlices and Services were created until every status was
	// written; cpuSteady its CPU use (% of one core) in the steady window.
	cpuPlaceMax, cpuPlaceAvg float64
	// cpuAbove is cpuPlace less what the agent would have used in the
	// same time without Services (its idle rate): the cost of placing.
	// cpuIdle is that rate (% of one core), measured before any Service.
	cpuAboveMax, cpuAboveAvg   float64
	cpuIdleMax, cpuIdleAvg     float64
	cpuSteadyMax, cpuSteadyAvg float64
	lost                       string
	lostVIPs                   int
	rehome                     time.Duration // node lost → all its VIPs held by one other node each
	movedOthers                int           // VIPs of other nodes that moved meanwhile
	curve                      []curvePoint  // the steps of a stepped creation (createStepped)
}

func benchmarkServices(b *testing.B, bc svcBench) {
	if pkg.skip != "" {
		b.Skip(pkg.skip)
	}
	if bc.services > 200 {
		addServiceCIDR(b)
	}
	prof := newBenchProfiler(b, b.Name())
	s := newSvcEnv(b, svcOptions{nodes: bc.nodes, perService: bc.mode == "per-service", defaults: true, quiet: true, dir: prof.logDir(b, b.Name())})
	vips := benchVIPs(bc.services)
	poll := newAddrPoller(b, s.lab.Nodes)
	var r svcResult

	// The API server's own requests, with no agent running.
	r.baseline = countRequests(b, steadyWindow)

	procs := s.startAll(prof.args()...)
	s.waitLive(startTimeout)

	// What every agent costs with no Service (heartbeats, renewals, the
	// guard): placing is what comes on top of it.
	idle0, idleStart := agentCPU(b, procs), time.Now()
	time.Sleep(idleWindow) // a measurement window, not a wait for a condition
	idleRate := cpuRates(idle0, agentCPU(b, procs), time.Since(idleStart))
	r.cpuIdleMax, r.cpuIdleAvg = maxMean(idleRate, 100)

	// The Services, each with a ready EndpointSlice on some node.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	svcs := make([]*corev1.Service, len(vips))
	for i, v := range vips {
		name := fmt.Sprintf("svc-%04d", i)
		svcs[i] = s.service(s.ns, name, v.String(), svcPort)
		// No node ports: nothing in the lab uses them, and the API
		// server has 2,768 of them, too few for 5,000 Services.
		svcs[i].Spec.AllocateLoadBalancerNodePorts = ptr.To(false)
	}
	prof.heapBefore("before-place", s.lab.Nodes)
	cpu0, place0 := agentCPU(b, procs), time.Now()
	prof.cpu("place", s.lab.Nodes, profileChunk, false)
	prof.apiServer("place", profileChunk)
	err := parallel(ctx, 8, len(vips), func(ctx context.Context, i int) error {
		return s.createSlice(ctx, s.endpointSlice(s.ns, svcs[i].Name, svcs[i].Name+"-1", s.lab.Nodes[i%len(s.lab.Nodes)]))
	})
	if err != nil {
		b.Fatal(err)
	}
	var first, last time.Time
	if len(svcs) > curveStep {
		var ok bool
		r.curve, first, last, ok = createStepped(b, s, poll, procs, svcs, vips)
		if !ok {
			// Stopped where it gave out: the curve is the figure.
			fmt.Fprintf(os.Stdout, "\n%s: %d Services, %d nodes: did not settle\n", bc.mode, bc.services, bc.nodes)
			printCurve(os.Stdout, r.curve)
			prof.wait()
			b.Errorf("%dx%d did not settle: %v", bc.services, bc.nodes, r.curve[len(r.curve)-1].err)
			return
		}
	} else {
		first = time.Now()
		last, err = s.createServices(ctx, svcs)
		if err != nil {
			b.Fatal(err)
		}
	}
	r.created = last.Sub(first)

	var p placement
	heldAt := pollUntil(b, poll, time.Minute, "every VIP to be held by exactly one node", func(h map[netip.Addr][]string) error {
		var err error
		p, err = singleHolders(h, vips)
		return err
	}, vips)
	r.held, r.heldFromFirst = heldAt.Sub(last), heldAt.Sub(first)
	r.spread = p.perNode(s.lab.Nodes)

	statusAt := waitFor(b, 2*time.Minute, "every Service's status to name its VIP's holder", func() error {
		return statusesMatch(ctx, s.ns, p)
	})
	r.status = statusAt.Sub(last)
	cpuEnd := agentCPU(b, procs)
	r.cpuPlaceMax, r.cpuPlaceAvg = cpuDelta(cpu0, cpuEnd, 1)
	r.cpuAboveMax, r.cpuAboveAvg = cpuAbove(cpu0, cpuEnd, idleRate, time.Since(place0))
	prof.wait()
	settle(b)
	cpu1 := agentCPU(b, procs)
	prof.cpu("steady", s.lab.Nodes, steadyWindow, true)
	r.steady = countRequests(b, steadyWindow)
	prof.wait()
	r.cpuSteadyMax, r.cpuSteadyAvg = cpuDelta(cpu1, agentCPU(b, procs), 100/steadyWindow.Seconds())
	r.rssMax, r.rssAvg = agentRSS(b, procs)
	prof.heap(s.lab.Nodes, procs)

	// Lose the node holding the most VIPs.
	lost := s.lab.Nodes[0]
	for _, n := range s.lab.Nodes {
		if r.spread[n.Name] > r.spread[lost.Name] {
			lost = n
		}
	}
	r.lost, r.lostVIPs = lost.Name, r.spread[lost.Name]
	var survivors []*lab.Node
	for _, n := range s.lab.Nodes {
		if n != lost {
			survivors = append(survivors, n)
		}
	}
	prof.apiMetrics("before-rehome")
	prof.cpu("rehome", survivors, 3*time.Second, true)
	prof.apiServer("rehome", 3*time.Second)
	start := time.Now()
	if err := procs[lost.Name].Kill(); err != nil {
		b.Fatal(err)
	}
	if err := lost.LinkDown(); err != nil {
		b.Fatal(err)
	}
	moved := map[netip.Addr]bool{}
	rehomedAt := pollUntil(b, poll, time.Minute, "the lost node's VIPs to be held by one other node each", func(h map[netip.Addr][]string) error {
		for v, n := range p {
			if n != lost.Name && !slices.Equal(h[v], []string{n}) {
				moved[v] = true
			}
		}
		_, err := singleHolders(h, vips, lost.Name)
		return err
	}, vips)
	r.rehome = rehomedAt.Sub(start)
	r.movedOthers = len(moved)
	prof.wait()
	prof.apiMetrics("after-rehome")

	report(b, bc, r)
}

// benchVIPs returns n service addresses: 192.0.2.1–254, then
// 203.0.113.1–254, then IPv6 addresses from 2001:db8:100::2:0/112 (on the
// lab's segment).
func benchVIPs(n int) []netip.Addr {
	var out []netip.Addr
	out = append(out, addrRange("192.0.2.1", 254)...)
	out = append(out, addrRange("203.0.113.1", 254)...)
	if n > len(out) {
		out = append(out, addrRange("2001:db8:100::2:1", n-len(out))...)
	}
	return out[:n]
}

// addServiceCIDR adds a ServiceCIDR to the API server for the benchmark's
// ClusterIPs and removes it when the benchmark ends. Without a controller
// manager there is no finalizer and no Ready condition, which the API
// server reads as ready.
func addServiceCIDR(b testing.TB) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cidrs := pkg.admin.NetworkingV1().ServiceCIDRs()
	c, err := cidrs.Create(ctx, &networkingv1.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "vipd-bench-"},
		Spec:       networkingv1.ServiceCIDRSpec{CIDRs: []string{benchServiceCIDR}},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatalf("adding ServiceCIDR %s: %v", benchServiceCIDR, err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := cidrs.Delete(ctx, c.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			b.Errorf("deleting ServiceCIDR %s: %v", c.Name, err)
		}
	})
}

// addrPoller reads the nodes' eth0 addresses through netlink handles kept
// open in their namespaces: the same kernel state as `ip -j addr`, without
// starting a process per node and read.
type addrPoller struct {
	nodes   []*lab.Node
	handles []*netlink.Handle
	links   []netlink.Link
}

func newAddrPoller(tb testing.TB, nodes []*lab.Node) *addrPoller {
	tb.Helper()
	p := &addrPoller{nodes: nodes}
	tb.Cleanup(func() {
		for _, h := range p.handles {
			h.Close()
		}
	})
	for _, n := range nodes {
		ns, err := netns.GetFromName(n.Netns)
		if err != nil {
			tb.Fatalf("opening namespace of %s: %v", n.Name, err)
		}
		h, err := netlink.NewHandleAt(ns)
		ns.Close()
		if err != nil {
			tb.Fatalf("netlink handle in %s: %v", n.Name, err)
		}
		p.handles = append(p.handles, h)
		link, err := h.LinkByName("eth0")
		if err != nil {
			tb.Fatalf("eth0 of %s: %v", n.Name, err)
		}
		p.links = append(p.links, link)
	}
	return p
}

// holders maps each of vips to the nodes that have it.
//
// The nodes are read one after the other, which with thousands of
// addresses takes a while: a VIP that moves from a node read early to one
// read later shows on both. So when some VIP shows on several nodes, every
// node is read again in the opposite order, and a node counts as having a
// VIP only if both reads say so: a move shows on at most one node then,
// while two nodes that really both have it show in both reads. (A VIP that
// moves between the reads may show on no node; the next poll sees it.)
func (p *addrPoller) holders(vips []netip.Addr) (map[netip.Addr][]string, error) {
	onNode, err := p.read(false)
	if err != nil {
		return nil, err
	}
	h := holdersFrom(p.nodes, onNode, vips)
	if !slices.ContainsFunc(vips, func(v netip.Addr) bool { return len(h[v]) > 1 }) {
		return h, nil
	}
	again, err := p.read(true)
	if err != nil {
		return nil, err
	}
	for i := range onNode {
		seen := make(map[netip.Addr]bool, len(again[i]))
		for _, a := range again[i] {
			seen[a] = true
		}
		onNode[i] = slices.DeleteFunc(onNode[i], func(a netip.Addr) bool { return !seen[a] })
	}
	return holdersFrom(p.nodes, onNode, vips), nil
}

// read lists the addresses on each node's eth0, the last node first if
// backwards.
func (p *addrPoller) read(backwards bool) ([][]netip.Addr, error) {
	onNode := make([][]netip.Addr, len(p.nodes))
	for k := range p.handles {
		i := k
		if backwards {
			i = len(p.handles) - 1 - k
		}
		addrs, err := p.handles[i].AddrList(p.links[i], netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("listing addresses of %s: %w", p.nodes[i].Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				onNode[i] = append(onNode[i], ip.Unmap())
			}
		}
	}
	return onNode, nil
}

// pollUntil reads the holders of vips every holderPollInterval until cond
// accepts them, and returns when that read started.
func pollUntil(tb testing.TB, p *addrPoller, timeout time.Duration, what string, cond func(map[netip.Addr][]string) error, vips []netip.Addr) time.Time {
	tb.Helper()
	at, err := pollFor(p, timeout, cond, vips)
	if err != nil {
		tb.Fatalf("waiting for %s: %v", what, err)
	}
	return at
}

// statusesMatch checks that every Service in ns has its VIP's holder in
// vipHost and one ingress entry {ip, ipMode: VIP}.
func statusesMatch(ctx context.Context, ns string, p placement) error {
	list, err := pkg.admin.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var problems []string
	for _, svc := range list.Items {
		v, err := netip.ParseAddr(svc.Annotations[annotationIPs])
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if pr := statusProblem(&svc, []netip.Addr{v}, p[v]); pr != "" {
			problems = append(problems, pr)
		}
	}
	if len(list.Items) != len(p) || len(problems) > 0 {
		return fmt.Errorf("%d Services, %d problems: %s", len(list.Items), len(problems), abbrev(problems))
	}
	return nil
}

// countRequests counts the API server's requests over window.
func countRequests(tb testing.TB, window time.Duration) controlplane.RequestCounts {
	tb.Helper()
	before := scrape(tb)
	// The window itself is the measurement.
	time.Sleep(window)
	return scrape(tb).Sub(before)
}

func scrape(tb testing.TB) controlplane.RequestCounts {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pkg.cp.RequestCount(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// settle waits until the burst of status writes and Events that follows
// placement is over: two seconds without a write to Services or Events.
func settle(tb testing.TB) {
	tb.Helper()
	prev := scrape(tb)
	quiet := 0
	waitFor(tb, 2*time.Minute, "the status writes and Events to end", func() error {
		time.Sleep(time.Second)
		cur := scrape(tb)
		d := cur.Sub(prev)
		prev = cur
		writes := 0.0
		for k, v := range d {
			if (k.Resource == "services" || k.Resource == "events") && k.Verb != "GET" && k.Verb != "LIST" && k.Verb != "WATCH" {
				writes += v
			}
		}
		if writes > 0 {
			quiet = 0
			return fmt.Errorf("%v writes to Services and Events in the last second", writes)
		}
		if quiet++; quiet < 2 {
			return fmt.Errorf("quiet for %d s", quiet)
		}
		return nil
	})
}

// agentRSS reads VmRSS of every agent still running, in MB: max and mean.
func agentRSS(tb testing.TB, procs map[string]*lab.Process) (maxMB, meanMB float64) {
	tb.Helper()
	var sum float64
	for name, p := range procs {
		kb, err := vmRSS(p.Pid())
		if err != nil {
			tb.Fatalf("RSS of vipd on %s: %v", name, err)
		}
		mb := float64(kb) / 1024
		maxMB = max(maxMB, mb)
		sum += mb
	}
	return maxMB, sum / float64(len(procs))
}

// clockTicks is the unit of utime and stime in /proc/<pid>/stat
// (USER_HZ, 100 on Linux).
const clockTicks = 100

// agentCPU reads the CPU time (user + system, in seconds) of each agent.
func agentCPU(tb testing.TB, procs map[string]*lab.Process) map[string]float64 {
	tb.Helper()
	out := map[string]float64{}
	for name, p := range procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
		if err != nil {
			tb.Fatalf("CPU time of vipd on %s: %v", name, err)
		}
		// Fields after the parenthesised command name, which may hold spaces.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		utime, err1 := strconv.ParseFloat(f[11], 64)
		stime, err2 := strconv.ParseFloat(f[12], 64)
		if err1 != nil || err2 != nil {
			tb.Fatalf("parsing /proc/%d/stat: %q", p.Pid(), s)
		}
		out[name] = (utime + stime) / clockTicks
	}
	return out
}

// cpuGrowth returns each agent's CPU time (s) between two readings of
// agentCPU.
func cpuGrowth(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for name, a := range after {
		out[name] = a - before[name]
	}
	return out
}

// cpuDelta returns the largest and the mean growth between two readings
// of agentCPU, times scale.
func cpuDelta(before, after map[string]float64, scale float64) (maxV, mean float64) {
	return maxMean(cpuGrowth(before, after), scale)
}

// cpuRates returns each agent's CPU use between two readings of agentCPU
// taken d apart, in cores.
func cpuRates(before, after map[string]float64, d time.Duration) map[string]float64 {
	out := cpuGrowth(before, after)
	for name := range out {
		out[name] /= d.Seconds()
	}
	return out
}

// cpuAbove returns the largest and the mean CPU time an agent spent
// between two readings of agentCPU taken d apart beyond its idle rate.
func cpuAbove(before, after, idle map[string]float64, d time.Duration) (maxV, mean float64) {
	above := cpuGrowth(before, after)
	for name := range above {
		above[name] -= idle[name] * d.Seconds()
	}
	return maxMean(above, 1)
}

// maxMean returns the largest and the mean of m's values, times scale.
func maxMean(m map[string]float64, scale float64) (maxV, mean float64) {
	first := true
	for _, v := range m {
		v *= scale
		if first || v > maxV {
			maxV, first = v, false
		}
		mean += v / float64(len(m))
	}
	return maxV, mean
}

// vmRSS reads a process's resident set size in kB from /proc.
func vmRSS(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
