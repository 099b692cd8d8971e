package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/vipd/vipd/internal/lab"
)

// Names vipd uses for Services, as the documentation gives them.
const (
	annotationIPs     = "kube-vip.io/loadbalancerIPs"
	annotationVIPHost = "kube-vip.io/vipHost"
	// svcLeaseName is the one-for-all services Lease (kube-vip's name).
	svcLeaseName = "plndr-svcs-lock"
	// svcPort is the port the test Services declare. Nothing translates
	// ports in the lab (there is no kube-proxy): the client reaches a
	// service VIP on tcpPort, where every node's responder answers.
	svcPort = 80
	// reachWorkers bounds the pings and connections in flight at once when
	// many VIPs are checked.
	reachWorkers = 8
)

// claimLease is the name of the claim Lease of one service address in
// per-service mode: vipd-svc-192-0-2-10, and IPv6 written in full,
// vipd-svc-2001-0db8-0100-0000-0000-0000-0001-0050.
func claimLease(ip netip.Addr) string {
	s := ip.String()
	if ip.Is6() {
		s = ip.StringExpanded()
	}
	return "vipd-svc-" + strings.NewReplacer(".", "-", ":", "-").Replace(s)
}

// nodeLease is the liveness Lease every agent renews.
func nodeLease(node string) string { return "vipd-node-" + node }

// svcEnv is an env whose agents serve LoadBalancer Services.
//
// Its agents serve only Services of a loadBalancerClass of its own
// (--lb-class, --lb-class-only). The API server outlives each test, and a
// deleted namespace is never emptied in it (envtest runs no namespace
// controller), so without the class one test's agents would serve another
// test's Services. The Services a test creates are deleted when it ends,
// after its agents are stopped.
type svcEnv struct {
	*env
	o     svcOptions
	class string

	mu      sync.Mutex
	procs   []*lab.Process // every agent started, to stop before clean-up
	created map[types.NamespacedName]bool
	slices  map[types.NamespacedName]bool // EndpointSlices created
}

type svcOptions struct {
	// nodes is the number of node namespaces; 0 means 3.
	nodes int
	// perService elects a holder per address (--service-election);
	// otherwise one Lease (plndr-svcs-lock) carries every address.
	perService bool
	// controlPlane also serves the control-plane VIP 198.51.100.100.
	controlPlane bool
	// defaults runs agents at vipd's default timings (5s/3s/1s); otherwise
	// fastTimings.
	defaults bool
	// quiet keeps agent output out of the test log.
	quiet bool
	// dir keeps the agents' logs there, beyond the test; "" removes them.
	dir string
	// segment2 are the nodes (1-based) with an eth1 on a second segment.
	segment2 []int
}

// newSvcEnv builds a lab for o and a Kubernetes namespace for the Leases
// (and the test's Services); no agent is started yet.
func newSvcEnv(tb testing.TB, o svcOptions) *svcEnv {
	tb.Helper()
	if o.nodes == 0 {
		o.nodes = 3
	}
	e := newEnvNodes(tb, envOptions{defaults: o.defaults, quiet: o.quiet, dir: o.dir, segment2: o.segment2}, o.nodes)
	s := &svcEnv{env: e, o: o, class: "e2e.vipd.io/" + e.ns,
		created: map[types.NamespacedName]bool{}, slices: map[types.NamespacedName]bool{}}
	// Runs before the lab and the namespace go (clean-ups run last first).
	tb.Cleanup(s.cleanup)
	return s
}

// newEnvNodes is newEnv with a given number of nodes (1..lab.MaxNodes).
func newEnvNodes(tb testing.TB, o envOptions, nodes int) *env {
	tb.Helper()
	if pkg.skip != "" {
		tb.Skip(pkg.skip)
	}
	e := &env{tb: tb, vips: o.vips, timing: fastTimings(), defaults: o.defaults}
	if len(e.vips) == 0 {
		e.vips = []netip.Addr{vip4}
	}
	if o.defaults {
		e.timing = defaultTimings()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Registered first, so it runs after the lab (and its agents) is gone.
	e.ns = createNamespace(ctx, tb)
	if !o.noKey {
		e.key = createKeySecret(ctx, tb, e.ns)
	}
	logf := tb.Logf
	if o.quiet {
		logf = nil
	}
	l, err := lab.New(ctx, lab.Options{Nodes: nodes, Logf: logf, Dir: o.dir, Segment2Nodes: o.segment2})
	if err != nil {
		tb.Fatalf("building the lab: %v", err)
	}
	e.lab = l
	tb.Cleanup(func() {
		// The agents say so when their own checks find a fault in vipd.
		bad, err := l.LogLines(`msg="internal error`)
		if err != nil {
			tb.Errorf("reading the agents' logs: %v", err)
		}
		for _, line := range bad {
			tb.Errorf("an agent found a fault in itself: %s", line)
		}
		if err := l.Close(); err != nil {
			tb.Errorf("closing the lab: %v", err)
		}
	})
	if err := l.ServeAPI(pkg.cp.Addr()); err != nil {
		tb.Fatal(err)
	}
	kc, err := pkg.cp.Kubeconfig(l.APIServerURL())
	if err != nil {
		tb.Fatal(err)
	}
	e.kubeconfig = filepath.Join(tb.TempDir(), "kubeconfig")
	if err := os.WriteFile(e.kubeconfig, kc, 0o600); err != nil {
		tb.Fatal(err)
	}
	for _, n := range l.Nodes {
		if err := n.ServeTCP(tcpPort); err != nil {
			tb.Fatal(err)
		}
	}
	return e
}

// cleanup stops the agents, so they do not react, then deletes what the
// test created in the API.
func (s *svcEnv) cleanup() {
	s.mu.Lock()
	procs := slices.Clone(s.procs)
	svcs := slices.Collect(maps.Keys(s.created))
	eps := slices.Collect(maps.Keys(s.slices))
	s.mu.Unlock()
	for _, p := range procs {
		if err := p.Kill(); err != nil {
			s.tb.Error(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := parallel(ctx, 8, len(svcs)+len(eps), func(ctx context.Context, i int) error {
		var err error
		if i < len(svcs) {
			nn := svcs[i]
			err = pkg.admin.CoreV1().Services(nn.Namespace).Delete(ctx, nn.Name, metav1.DeleteOptions{})
		} else {
			nn := eps[i-len(svcs)]
			err = pkg.admin.DiscoveryV1().EndpointSlices(nn.Namespace).Delete(ctx, nn.Name, metav1.DeleteOptions{})
		}
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
	if err != nil {
		s.tb.Errorf("deleting the test's Services and EndpointSlices: %v", err)
	}
}

// args is the command line of an agent on n.
func (s *svcEnv) args(n *lab.Node) []string {
	args := []string{"run", "--services",
		"--lb-class", s.class, "--lb-class-only",
		"--interface", "eth0",
		"--node-name", n.Name,
		"--namespace", s.ns,
		"--kubeconfig", s.kubeconfig,
	}
	if s.o.perService {
		args = append(args, "--service-election")
	}
	if s.o.controlPlane {
		args = append(args, "--control-plane", "--address", vip4.String())
	}
	if !s.defaults {
		args = append(args,
			"--lease-duration", s.timing.lease.String(),
			"--renew-deadline", s.timing.renew.String(),
			"--retry-period", s.timing.retry.String())
	}
	return args
}

// start runs an agent on n, with extra flags.
func (s *svcEnv) start(n *lab.Node, extra ...string) *lab.Process {
	s.tb.Helper()
	p := s.startRaw(n, append(s.args(n), extra...)...)
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p
}

// startAll runs an agent on every node.
func (s *svcEnv) startAll(extra ...string) map[string]*lab.Process {
	s.tb.Helper()
	procs := map[string]*lab.Process{}
	for _, n := range s.lab.Nodes {
		procs[n.Name] = s.start(n, extra...)
	}
	return procs
}

// waitLive waits until every node's agent holds its node Lease: it is
// live, and the others count it when they place addresses.
func (s *svcEnv) waitLive(timeout time.Duration) {
	s.tb.Helper()
	waitFor(s.tb, timeout, "every agent to hold its node Lease", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, n := range s.lab.Nodes {
			holder, err := leaseHolderOf(ctx, s.ns, nodeLease(n.Name))
			if err != nil {
				return err
			}
			if holder != n.Name {
				return fmt.Errorf("Lease %s names %q", nodeLease(n.Name), holder)
			}
		}
		return nil
	})
}

// service builds a LoadBalancer Service of the env's class asking for ips
// through the annotation ("" for none), with one TCP port.
func (s *svcEnv) service(ns, name, ips string, port int32) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: &s.class,
			Ports: []corev1.ServicePort{{Name: "web", Protocol: corev1.ProtocolTCP, Port: port,
				TargetPort: intstr.FromInt(tcpPort)}},
		},
	}
	if ips != "" {
		svc.Annotations = map[string]string{annotationIPs: ips}
	}
	return svc
}

// create creates svc, failing the test on error.
func (s *svcEnv) create(svc *corev1.Service) *corev1.Service {
	s.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := s.createService(ctx, svc)
	if err != nil {
		s.tb.Fatal(err)
	}
	return out
}

// createService creates svc and remembers it for deletion.
func (s *svcEnv) createService(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	out, err := pkg.admin.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	s.mu.Lock()
	s.created[types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}] = true
	s.mu.Unlock()
	return out, nil
}

// createServices creates svcs with a few requests in flight at once and
// returns when the last one was created.
func (s *svcEnv) createServices(ctx context.Context, svcs []*corev1.Service) (time.Time, error) {
	err := parallel(ctx, 8, len(svcs), func(ctx context.Context, i int) error {
		_, err := s.createService(ctx, svcs[i])
		return err
	})
	return time.Now(), err
}

// deleteService deletes a Service the test created.
func (s *svcEnv) deleteService(ns, name string) {
	s.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pkg.admin.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		s.tb.Fatalf("deleting Service %s/%s: %v", ns, name, err)
	}
}

// endpointSlice builds a ready EndpointSlice of Service svc with one
// endpoint on node (a host-network pod: the node's own address).
func (s *svcEnv) endpointSlice(ns, svc, name string, node *lab.Node) *discoveryv1.EndpointSlice {
	ready := true
	port := int32(tcpPort)
	proto := corev1.ProtocolTCP
	portName := "web"
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{node.IPv4.String()},
			NodeName:   &node.Name,
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
	}
}

// createSlice creates es and remembers it for deletion.
func (s *svcEnv) createSlice(ctx context.Context, es *discoveryv1.EndpointSlice) error {
	if _, err := pkg.admin.DiscoveryV1().EndpointSlices(es.Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating EndpointSlice %s/%s: %w", es.Namespace, es.Name, err)
	}
	s.mu.Lock()
	s.slices[types.NamespacedName{Namespace: es.Namespace, Name: es.Name}] = true
	s.mu.Unlock()
	return nil
}

// parallel runs fn(ctx, 0..n-1) with at most workers calls at once and
// returns the errors joined.
func parallel(ctx context.Context, workers, n int, fn func(ctx context.Context, i int) error) error {
	next := make(chan int)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return errors.Join(errs...)
}

// addrRange returns n consecutive addresses from first.
func addrRange(first string, n int) []netip.Addr {
	a := netip.MustParseAddr(first)
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = a
		a = a.Next()
	}
	return out
}

// vipHolders reads every node's eth0, the way an operator would (`ip -j
// addr`), and returns the nodes that have each of vips, sorted.
func (e *env) vipHolders(vips []netip.Addr) (map[netip.Addr][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	onNode := make([][]netip.Addr, len(e.lab.Nodes))
	err := parallel(ctx, len(e.lab.Nodes), len(e.lab.Nodes), func(ctx context.Context, i int) error {
		var err error
		onNode[i], err = addrsOn(ctx, e.lab.Nodes[i])
		return err
	})
	if err != nil {
		return nil, err
	}
	return holdersFrom(e.lab.Nodes, onNode, vips), nil
}

// holdersFrom maps each of vips to the nodes whose address list has it.
func holdersFrom(nodes []*lab.Node, onNode [][]netip.Addr, vips []netip.Addr) map[netip.Addr][]string {
	want := make(map[netip.Addr]bool, len(vips))
	h := make(map[netip.Addr][]string, len(vips))
	for _, v := range vips {
		want[v] = true
		h[v] = nil
	}
	for i, n := range nodes {
		for _, a := range onNode[i] {
			if want[a] && !slices.Contains(h[a], n.Name) {
				h[a] = append(h[a], n.Name)
			}
		}
	}
	for _, names := range h {
		slices.Sort(names)
	}
	return h
}

// placement maps each VIP to the one node that holds it.
type placement map[netip.Addr]string

// perNode counts the VIPs of each of nodes (zero counts included).
func (p placement) perNode(nodes []*lab.Node) map[string]int {
	out := map[string]int{}
	for _, n := range nodes {
		out[n.Name] = 0
	}
	for _, n := range p {
		out[n]++
	}
	return out
}

// onNode lists, sorted, the VIPs held by node.
func (p placement) onNode(node string) []netip.Addr {
	var out []netip.Addr
	for v, n := range p {
		if n == node {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// holderNames lists, sorted, the nodes that hold at least one VIP.
func (p placement) holderNames() []string {
	var out []string
	for _, n := range p {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// singleHolders returns where each of vips is, or an error naming the VIPs
// that are held by no node or by more than one. Nodes in ignore do not
// count (a lost node that still has addresses on its unplugged interface).
func singleHolders(h map[netip.Addr][]string, vips []netip.Addr, ignore ...string) (placement, error) {
	p := placement{}
	var none, many []string
	for _, v := range vips {
		var holders []string
		for _, n := range h[v] {
			if !slices.Contains(ignore, n) {
				holders = append(holders, n)
			}
		}
		switch len(holders) {
		case 0:
			none = append(none, v.String())
		case 1:
			p[v] = holders[0]
		default:
			many = append(many, fmt.Sprintf("%s on %v", v, holders))
		}
	}
	if len(none)+len(many) > 0 {
		return p, fmt.Errorf("%d of %d VIPs held by no node %s, %d by several %v", len(none), len(vips), abbrev(none), len(many), many)
	}
	return p, nil
}

// abbrev shows at most a few items of a long list.
func abbrev(items []string) string {
	if len(items) > 6 {
		return fmt.Sprintf("%v…", items[:6])
	}
	return fmt.Sprint(items)
}

// waitPlaced waits until each of vips is held by exactly one node (not
// counting ignore) and returns where.
func (s *svcEnv) waitPlaced(timeout time.Duration, vips []netip.Addr, ignore ...string) placement {
	s.tb.Helper()
	var p placement
	waitFor(s.tb, timeout, "every VIP to be held by exactly one node", func() error {
		h, err := s.vipHolders(vips)
		if err != nil {
			return err
		}
		p, err = singleHolders(h, vips, ignore...)
		return err
	})
	return p
}

// reachAll checks, a few VIPs at a time, that the client reaches each VIP
// by ping and TCP at its holder; each VIP gets a few seconds of retries.
func (s *svcEnv) reachAll(p placement) {
	s.tb.Helper()
	vips := slices.SortedFunc(maps.Keys(p), netip.Addr.Compare)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := parallel(ctx, reachWorkers, len(vips), func(ctx context.Context, i int) error {
		v := vips[i]
		n := s.node(p[v])
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := s.reach(v, n)
			if err == nil || time.Now().After(deadline) {
				return err
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	if err != nil {
		s.tb.Errorf("the client does not reach every VIP at its holder: %v", err)
	}
}

// getService reads a Service.
func getService(ctx context.Context, ns, name string) (*corev1.Service, error) {
	svc, err := pkg.admin.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading Service %s/%s: %w", ns, name, err)
	}
	return svc, nil
}

// statusProblem says how svc's status and vipHost differ from ingress
// entries {ip, ipMode: VIP} for ips, in order, and host; "" if they don't.
func statusProblem(svc *corev1.Service, ips []netip.Addr, host string) string {
	var want []string
	for _, ip := range ips {
		want = append(want, ip.String()+"/VIP")
	}
	var got []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		mode := "<nil>"
		if in.IPMode != nil {
			mode = string(*in.IPMode)
		}
		got = append(got, in.IP+"/"+mode)
	}
	if !slices.Equal(got, want) {
		return fmt.Sprintf("Service %s/%s: ingress %v, want %v", svc.Namespace, svc.Name, got, want)
	}
	if h := svc.Annotations[annotationVIPHost]; h != host {
		return fmt.Sprintf("Service %s/%s: %s=%q, want %q", svc.Namespace, svc.Name, annotationVIPHost, h, host)
	}
	return ""
}

// waitStatus waits until the Service's status has exactly the ingress
// entries {ip, ipMode: VIP} for ips, in order, and its vipHost annotation
// is host ("" for none).
func (s *svcEnv) waitStatus(timeout time.Duration, ns, name string, ips []netip.Addr, host string) {
	s.tb.Helper()
	waitFor(s.tb, timeout, fmt.Sprintf("the status of Service %s/%s", ns, name), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		svc, err := getService(ctx, ns, name)
		if err != nil {
			return err
		}
		if p := statusProblem(svc, ips, host); p != "" {
			return errors.New(p)
		}
		return nil
	})
}

// waitEvent waits for an Event of the given type and reason about the
// Service whose message holds all of contains.
func waitEvent(tb testing.TB, timeout time.Duration, ns, name, typ, reason string, contains ...string) corev1.Event {
	tb.Helper()
	var ev corev1.Event
	waitFor(tb, timeout, fmt.Sprintf("a %s Event %s on Service %s/%s saying %q", typ, reason, ns, name, contains), func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sel := fields.Set{"involvedObject.kind": "Service", "involvedObject.name": name}.AsSelector().String()
		list, err := pkg.admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return fmt.Errorf("listing Events of Service %s/%s: %w", ns, name, err)
		}
		var seen []string
		for _, e := range list.Items {
			seen = append(seen, e.Type+" "+e.Reason+": "+e.Message)
			if e.Type != typ || e.Reason != reason {
				continue
			}
			all := true
			for _, c := range contains {
				all = all && strings.Contains(e.Message, c)
			}
			if all {
				ev = e
				return nil
			}
		}
		return fmt.Errorf("Events so far: %q", seen)
	})
	return ev
}

// leaseHolderOf reads the holder of a Lease ("" if released); a missing
// Lease is an error for which apierrors.IsNotFound holds.
func leaseHolderOf(ctx context.Context, ns, name string) (string, error) {
	l, err := pkg.admin.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading Lease %s/%s: %w", ns, name, err)
	}
	if l.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *l.Spec.HolderIdentity, nil
}

// leases lists the Leases in the env's namespace that are not node
// Leases, by name.
func (s *svcEnv) leases() (map[string]coordinationv1.Lease, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := pkg.admin.CoordinationV1().Leases(s.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Leases in %s: %w", s.ns, err)
	}
	out := map[string]coordinationv1.Lease{}
	for _, l := range list.Items {
		if !strings.HasPrefix(l.Name, "vipd-node-") {
			out[l.Name] = l
		}
	}
	return out, nil
}

// waitClaims waits until the Leases of the namespace other than node
// Leases are exactly the claims of p's VIPs (per-service mode), each
// naming the VIP's holder.
func (s *svcEnv) waitClaims(timeout time.Duration, p placement) {
	s.tb.Helper()
	waitFor(s.tb, timeout, "one claim Lease per VIP, naming its holder", func() error {
		ls, err := s.leases()
		if err != nil {
			return err
		}
		want := map[string]string{}
		for v, n := range p {
			want[claimLease(v)] = n
		}
		var problems []string
		for name, holder := range want {
			l, ok := ls[name]
			switch {
			case !ok:
				problems = append(problems, name+" missing")
			case l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != holder:
				problems = append(problems, fmt.Sprintf("%s names %v, want %s", name, ptrString(l.Spec.HolderIdentity), holder))
			}
		}
		for name := range ls {
			if _, ok := want[name]; !ok {
				problems = append(problems, name+" should not exist")
			}
		}
		if len(problems) > 0 {
			slices.Sort(problems)
			return fmt.Errorf("%d problems: %s", len(problems), abbrev(problems))
		}
		return nil
	})
}

func ptrString(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}
