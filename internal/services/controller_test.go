package services

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/lab/controlplane"
)

// The tests share one real API server; each works in namespaces of its own
// and, where a controller sees all namespaces, looks only at its own
// addresses.
var suite controlplane.Suite

func TestMain(m *testing.M) { os.Exit(suite.Run(m)) }

// needAPI returns the shared API server, or skips or fails t.
func needAPI(t *testing.T) *controlplane.ControlPlane {
	t.Helper()
	return suite.Need(t)
}

const waitTimeout = 15 * time.Second

func newClient(t *testing.T) kube.Interface {
	t.Helper()
	rc := suite.Need(t).Config()
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	c, err := kube.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// namespace creates a namespace for one test. Its Services are deleted at
// the end; the namespace itself stays Terminating, as envtest runs no
// namespace controller, which is harmless.
func namespace(t *testing.T, prefix string) string {
	t.Helper()
	client := newClient(t)
	name := fmt.Sprintf("%s-%d-%04x", prefix, os.Getpid()%100000, rand.IntN(1<<16))
	if _, err := client.Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		list, err := client.Services(name).List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, s := range list.Items {
				_ = client.Services(name).Delete(ctx, s.Name, metav1.DeleteOptions{})
			}
		}
		if slices, err := client.EndpointSlices(name).List(ctx, metav1.ListOptions{}); err == nil {
			for _, es := range slices.Items {
				_ = client.EndpointSlices(name).Delete(ctx, es.Name, metav1.DeleteOptions{})
			}
		}
		_ = client.Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

// start runs a Controller for node until the test ends.
func start(t *testing.T, node string, cfg Config) *Controller {
	t.Helper()
	cfg.Client = newClient(t)
	cfg.NodeName = node
	if cfg.Class == "" {
		cfg.Class = "kube-vip.io/kube-vip-class"
	}
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return run(t, cfg)
}

// run runs a Controller with cfg until the test ends.
func run(t *testing.T, cfg Config) *Controller {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// create makes a Service built by svc (plan_test.go) in ns.
func create(t *testing.T, client kube.Interface, ns, name string, opts ...svcOpt) *corev1.Service {
	t.Helper()
	s := svc(ns+"/"+name, 0, opts...)
	s.UID, s.ResourceVersion, s.CreationTimestamp = "", "", metav1.Time{}
	out, err := client.Services(ns).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Service %s/%s: %v", ns, name, err)
	}
	return out
}

// update changes a Service, retrying on conflicts.
func update(t *testing.T, client kube.Interface, ns, name string, change func(*corev1.Service)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := client.Services(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(s)
		_, err = client.Services(ns).Update(context.Background(), s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("updating Service %s/%s: %v", ns, name, err)
	}
}

func get(t *testing.T, client kube.Interface, ns, name string) *corev1.Service {
	t.Helper()
	s, err := client.Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading Service %s/%s: %v", ns, name, err)
	}
	return s
}

// events returns the Events about a Service with the given reason.
func events(t *testing.T, client kube.Interface, ns, name, reason string) []corev1.Event {
	t.Helper()
	list, err := client.Events(ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: fields.AndSelectors(fields.OneTermEqualSelector("involvedObject.name", name),
			fields.OneTermEqualSelector("reason", reason)).String(),
	})
	if err != nil {
		t.Fatalf("listing Events of %s/%s: %v", ns, name, err)
	}
	return list.Items
}

func hasEvent(t *testing.T, client kube.Interface, ns, name, reason string, match func(corev1.Event) bool) bool {
	return slices.ContainsFunc(events(t, client, ns, name, reason), match)
}

// addressesIn keeps the addresses inside prefix, for controllers that see
// other tests' Services too.
func addressesIn(c *Controller, prefix string) []Address {
	p := netip.MustParsePrefix(prefix)
	var out []Address
	for _, a := range c.Addresses() {
		if p.Contains(a.IP) {
			out = append(out, a)
		}
	}
	return out
}

// changed waits for a notification on Changes. It is sent just after the
// new Addresses are in place, so a caller that saw them may still wait.
func changed(t *testing.T, c *Controller) {
	t.Helper()
	select {
	case <-c.Changes():
	case <-time.After(waitTimeout):
		t.Fatal("no notification on Changes")
	}
}

func TestAddressesFromAnnotationAndSpec(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-addr")
	c := start(t, "n1", Config{Namespace: ns})

	// The first Addresses, empty, are announced once the caches are read.
	changed(t, c)

	create(t, client, ns, "web", ann("192.0.2.10"))
	create(t, client, ns, "dual", ann(" 192.0.2.11 , 2001:db8::11"))
	create(t, client, ns, "legacy", specIP("192.0.2.12"))
	create(t, client, ns, "internal", ann("192.0.2.13"), clusterIP())
	want := []Address{
		addr("192.0.2.10", ns+"/web"), addr("192.0.2.11", ns+"/dual"), addr("192.0.2.12", ns+"/legacy"),
		addr("2001:db8::11", ns+"/dual"),
	}
	waitFor(t, fmt.Sprintf("Addresses %v", want), func() bool { return equalAddresses(c.Addresses(), want) })
	changed(t, c)

	// A deleted Service and a changed address are reflected.
	select {
	case <-c.Changes():
	default:
	}
	if err := client.Services(ns).Delete(context.Background(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	update(t, client, ns, "legacy", func(s *corev1.Service) { s.Spec.LoadBalancerIP = "192.0.2.14" })
	want = []Address{addr("192.0.2.11", ns+"/dual"), addr("192.0.2.14", ns+"/legacy"), addr("2001:db8::11", ns+"/dual")}
	waitFor(t, fmt.Sprintf("Addresses %v", want), func() bool { return equalAddresses(c.Addresses(), want) })
	changed(t, c)
}

func TestBadAnnotation(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-bad")
	c := start(t, "n1", Config{Namespace: ns})

	create(t, client, ns, "bad", ann("192.0.2.20,192.0.2.21"), specIP("192.0.2.22"))
	create(t, client, ns, "good", ann("192.0.2.23"))
	waitFor(t, "a Warning naming the annotation and its value", func() bool {
		return hasEvent(t, client, ns, "bad", reasonInvalidIPs, func(e corev1.Event) bool {
			return e.Type == corev1.EventTypeWarning && e.ReportingController == "vipd" &&
				strings.Contains(e.Message, `kube-vip.io/loadbalancerIPs "192.0.2.20,192.0.2.21"`)
		})
	})
	// Nothing of the bad Service is applied, not even spec.loadBalancerIP.
	want := []Address{addr("192.0.2.23", ns+"/good")}
	waitFor(t, "only the good Service's address", func() bool { return equalAddresses(c.Addresses(), want) })

	update(t, client, ns, "bad", func(s *corev1.Service) { s.Annotations[AnnotationLoadBalancerIPs] = "192.0.2.20" })
	want = []Address{addr("192.0.2.20", ns+"/bad"), addr("192.0.2.23", ns+"/good")}
	waitFor(t, "the fixed address", func() bool { return equalAddresses(c.Addresses(), want) })
}

// TestOneReporter runs two controllers that agree that n1 reports: a bad
// annotation gets one Warning, from n1.
func TestOneReporter(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-reporter")
	known := make(chan struct{})
	reporter := func([]netip.Addr) string {
		select {
		case <-known:
			return "n1"
		default:
			return "" // not known yet: the Warning waits
		}
	}
	c1 := start(t, "n1", Config{Namespace: ns, Reporter: reporter})
	c2 := start(t, "n2", Config{Namespace: ns, Reporter: reporter})
	create(t, client, ns, "bad", ann("not-an-ip"))
	create(t, client, ns, "good", ann("192.0.2.24"))
	want := []Address{addr("192.0.2.24", ns+"/good")}
	for _, c := range []*Controller{c1, c2} {
		waitFor(t, "the good Service", func() bool { return equalAddresses(c.Addresses(), want) })
	}
	if evs := events(t, client, ns, "bad", reasonInvalidIPs); len(evs) != 0 {
		t.Fatalf("Events recorded before the reporter is known: %+v", evs)
	}
	close(known)
	c1.FlushEvents()
	c2.FlushEvents()
	waitFor(t, "the Warning", func() bool { return len(events(t, client, ns, "bad", reasonInvalidIPs)) > 0 })
	// Events are sent in the background: give a wrong second one time to
	// arrive, by waiting for a later Warning.
	create(t, client, ns, "bad2", ann("not-an-ip-either"))
	waitFor(t, "the second Warning", func() bool { return len(events(t, client, ns, "bad2", reasonInvalidIPs)) > 0 })
	evs := events(t, client, ns, "bad", reasonInvalidIPs)
	if len(evs) != 1 || evs[0].Count != 1 || evs[0].ReportingInstance != "n1" {
		t.Errorf("Warnings on bad: %+v, want one from n1", evs)
	}
}

// held is SetHeld's argument for addresses taken with no holder before.
func held(ips ...string) []Held {
	var out []Held
	for _, a := range addrs(ips...) {
		out = append(out, Held{IP: a, Reason: "new"})
	}
	return out
}

// pool creates the pool ConfigMap.
func createPool(t *testing.T, client kube.Interface, ns string, data map[string]string) {
	t.Helper()
	_, err := client.ConfigMaps(ns).Create(context.Background(),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kubevip"}, Data: data}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pool ConfigMap: %v", err)
	}
}

func TestPoolAllocation(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-pool")
	c := start(t, "n1", Config{Namespace: ns, PoolNamespace: ns, PoolConfigMap: "kubevip"})

	create(t, client, ns, "early")
	waitFor(t, "a Warning that there is no pool", func() bool {
		return hasEvent(t, client, ns, "early", reasonNoPool, func(e corev1.Event) bool {
			return strings.Contains(e.Message, "ConfigMap "+ns+"/kubevip not found")
		})
	})
	createPool(t, client, ns, map[string]string{"cidr-" + ns: "198.51.100.0/30", "range-global": "203.0.113.5-203.0.113.6"})

	waitFor(t, "the allocation written to the annotation", func() bool {
		s := get(t, client, ns, "early")
		return s.Annotations[AnnotationLoadBalancerIPs] == "198.51.100.1" && s.Annotations[AnnotationPoolAllocated] == "198.51.100.1"
	})
	create(t, client, ns, "later")
	want := []Address{addr("198.51.100.1", ns+"/early"), addr("198.51.100.2", ns+"/later")}
	waitFor(t, fmt.Sprintf("Addresses %v", want), func() bool { return equalAddresses(c.Addresses(), want) })
	waitFor(t, "an AddressAllocated Event", func() bool {
		return hasEvent(t, client, ns, "later", reasonAllocated, func(e corev1.Event) bool {
			return strings.HasPrefix(e.Message, "198.51.100.2 allocated from the address pool")
		})
	})

	// The /30 has two usable addresses; the third Service waits.
	create(t, client, ns, "third")
	waitFor(t, "a Warning that the pool is exhausted", func() bool {
		return hasEvent(t, client, ns, "third", reasonPoolExhausted, func(corev1.Event) bool { return true })
	})
	if a := get(t, client, ns, "third").Annotations[AnnotationLoadBalancerIPs]; a != "" {
		t.Errorf("exhausted pool, yet annotation %q", a)
	}
}

// TestRacingAllocation runs two agents allocating from one pool while
// Services are created in a burst, named so that the younger ones sort
// first: agents whose caches differ then disagree about the order, and
// must still end with one address per Service.
func TestRacingAllocation(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-race")
	createPool(t, client, ns, map[string]string{"range-" + ns: "198.51.100.100-198.51.100.109"})
	cfg := Config{Namespace: ns, PoolNamespace: ns, PoolConfigMap: "kubevip"}
	c1, c2 := start(t, "n1", cfg), start(t, "n2", cfg)

	// All at once, so creation order, name order and what each agent has
	// seen so far disagree.
	const n = 11 // one more than the pool holds
	errs := make(chan error, n)
	for i := range n {
		go func() {
			s := svc(fmt.Sprintf("%s/svc-%c", ns, 'a'+n-1-i), 0)
			s.UID, s.ResourceVersion, s.CreationTimestamp = "", "", metav1.Time{}
			_, err := client.Services(ns).Create(context.Background(), s, metav1.CreateOptions{})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("creating Service: %v", err)
		}
	}

	// The agents agree on one Service per address, and so does what the
	// API holds: ten distinct pool addresses and one Service without.
	var without []string
	settled := func() bool {
		a1, a2 := c1.Addresses(), c2.Addresses()
		if len(a1) != n-1 || !equalAddresses(a1, a2) {
			return false
		}
		for _, a := range a1 {
			if len(a.Services) != 1 {
				return false
			}
		}
		list, err := client.Services(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		without = nil
		for _, s := range list.Items {
			v := s.Annotations[AnnotationLoadBalancerIPs]
			if v == "" {
				without = append(without, s.Name)
				continue
			}
			if seen[v] {
				return false
			}
			seen[v] = true
			if a, err := netip.ParseAddr(v); err != nil || a.Less(netip.MustParseAddr("198.51.100.100")) || netip.MustParseAddr("198.51.100.109").Less(a) {
				t.Fatalf("%s got %q, outside the pool", s.Name, v)
			}
		}
		return len(without) == 1
	}
	waitFor(t, "one address per Service in the agents and in the API", settled)
	waitFor(t, "the pool-exhausted Warning for "+without[0], func() bool {
		return hasEvent(t, client, ns, without[0], reasonPoolExhausted, func(corev1.Event) bool { return true })
	})
}

// TestRacedAllocationIsMoved sets up what a lost race leaves behind: two
// Services with the same pool allocation. The younger gets another address.
func TestRacedAllocationIsMoved(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-moved")
	createPool(t, client, ns, map[string]string{"cidr-global": "198.51.100.120/30"})
	create(t, client, ns, "a-old", allocated("198.51.100.121"))
	create(t, client, ns, "b-young", allocated("198.51.100.121"))
	create(t, client, ns, "c-user", ann("198.51.100.121"), ports(port(53, corev1.ProtocolUDP)))
	c := start(t, "n1", Config{Namespace: ns, PoolNamespace: ns, PoolConfigMap: "kubevip"})

	want := []Address{addr("198.51.100.121", ns+"/a-old", ns+"/c-user"), addr("198.51.100.122", ns+"/b-young")}
	waitFor(t, fmt.Sprintf("Addresses %v", want), func() bool { return equalAddresses(c.Addresses(), want) })
	if s := get(t, client, ns, "b-young"); s.Annotations[AnnotationLoadBalancerIPs] != "198.51.100.122" || s.Annotations[AnnotationPoolAllocated] != "198.51.100.122" {
		t.Errorf("b-young annotations %v", s.Annotations)
	}
}

func TestSharedAcrossNamespaces(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	nsA, nsB := namespace(t, "svc-share-a"), namespace(t, "svc-share-b")
	c := start(t, "n1", Config{})

	create(t, client, nsA, "web", ann("203.0.113.10"))
	create(t, client, nsB, "dns", ann("203.0.113.10"), ports(port(53, corev1.ProtocolUDP)))
	want := []Address{{IP: netip.MustParseAddr("203.0.113.10"), Services: names(nsA+"/web", nsB+"/dns")}}
	slices.SortFunc(want[0].Services, compareNames)
	waitFor(t, fmt.Sprintf("one shared address %v", want), func() bool {
		return equalAddresses(addressesIn(c, "203.0.113.10/32"), want)
	})
}

func TestPortConflict(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-conflict")
	c := start(t, "n1", Config{Namespace: ns})

	create(t, client, ns, "a-first", ann("192.0.2.30"))
	create(t, client, ns, "b-second", ann("192.0.2.30"))
	waitFor(t, "a PortConflict Warning on the later Service", func() bool {
		return hasEvent(t, client, ns, "b-second", reasonPortConflict, func(e corev1.Event) bool {
			return e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, "port 80/TCP on 192.0.2.30 is already used by Service "+ns+"/a-first")
		})
	})
	want := []Address{addr("192.0.2.30", ns+"/a-first")}
	waitFor(t, "the address with the first Service only", func() bool { return equalAddresses(c.Addresses(), want) })
	if evs := events(t, client, ns, "a-first", reasonPortConflict); len(evs) != 0 {
		t.Errorf("the earlier Service got %d PortConflict Events", len(evs))
	}

	// Moving the later one to another port resolves it.
	update(t, client, ns, "b-second", func(s *corev1.Service) { s.Spec.Ports[0].Port = 8080 })
	want = []Address{addr("192.0.2.30", ns+"/a-first", ns+"/b-second")}
	waitFor(t, "both Services on the address", func() bool { return equalAddresses(c.Addresses(), want) })
}

func TestClassAndNamespace(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	nsA, nsB := namespace(t, "svc-class-a"), namespace(t, "svc-class-b")
	const own = "kube-vip.io/kube-vip-class"
	create(t, client, nsA, "unset", ann("192.0.2.40"))
	create(t, client, nsA, "own", ann("192.0.2.41"), class(own))
	create(t, client, nsA, "other", ann("192.0.2.42"), class("example.com/other"))
	create(t, client, nsB, "unset", ann("192.0.2.43"))

	inA := start(t, "n1", Config{Namespace: nsA})
	onlyOwn := start(t, "n2", Config{Namespace: nsA, OnlyOwnClass: true})
	all := start(t, "n3", Config{})

	for _, tc := range []struct {
		c    *Controller
		what string
		want []Address
	}{
		{inA, "unset and own class in " + nsA, []Address{addr("192.0.2.40", nsA+"/unset"), addr("192.0.2.41", nsA+"/own")}},
		{onlyOwn, "own class only", []Address{addr("192.0.2.41", nsA+"/own")}},
		{all, "all namespaces", []Address{addr("192.0.2.40", nsA+"/unset"), addr("192.0.2.41", nsA+"/own"), addr("192.0.2.43", nsB+"/unset")}},
	} {
		waitFor(t, tc.what, func() bool { return equalAddresses(addressesIn(tc.c, "192.0.2.40/30"), tc.want) })
	}
}

func endpointSlice(ns, svcName, name string, eps ...endpoint) *discoveryv1.EndpointSlice {
	es := slice(ns+"/"+svcName, eps...)
	es.Name = name
	return es
}

func TestLocalCandidatesFollowEndpointSlices(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-local")
	c := start(t, "n1", Config{Namespace: ns})
	slicesAPI := client.EndpointSlices(ns)
	ctx := context.Background()

	create(t, client, ns, "web", ann("192.0.2.50"), local())
	expect := func(what string, candidates []string) {
		t.Helper()
		want := []Address{addrOn("192.0.2.50", candidates, ns+"/web")}
		waitFor(t, fmt.Sprintf("%s: candidates %v", what, candidates), func() bool { return equalAddresses(c.Addresses(), want) })
	}
	expect("no endpoints", []string{})

	es, err := slicesAPI.Create(ctx, endpointSlice(ns, "web", "web-1", endpoint{"n1", ptr.To(true)}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	expect("ready on n1", []string{"n1"})

	es.Endpoints[0].Conditions.Ready = ptr.To(false)
	if es, err = slicesAPI.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("not ready", []string{})

	es.Endpoints[0].NodeName = ptr.To("n2")
	es.Endpoints[0].Conditions.Ready = nil
	if _, err = slicesAPI.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("moved to n2, readiness unknown", []string{"n2"})

	if _, err := slicesAPI.Create(ctx, endpointSlice(ns, "web", "web-2", endpoint{"n3", ptr.To(true)}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("second slice on n3", []string{"n2", "n3"})

	if err := slicesAPI.Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("first slice gone", []string{"n3"})

	update(t, client, ns, "web", func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		s.Spec.HealthCheckNodePort = 0
	})
	expect("policy Cluster", nil)
}

func ingressIs(s *corev1.Service, ips ...string) bool {
	in := s.Status.LoadBalancer.Ingress
	if len(in) != len(ips) {
		return false
	}
	for i, ip := range ips {
		if in[i].IP != ip || in[i].IPMode == nil || *in[i].IPMode != corev1.LoadBalancerIPModeVIP {
			return false
		}
	}
	return true
}

// assignedBy counts the VIPAssigned Events a node recorded, repeats included.
func assignedBy(t *testing.T, client kube.Interface, ns, name, node string) int32 {
	var n int32
	for _, e := range events(t, client, ns, name, reasonAssigned) {
		if e.ReportingInstance == node {
			n += e.Count
		}
	}
	return n
}

func TestSetHeldWritesStatus(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-held")
	c1, c2 := start(t, "n1", Config{Namespace: ns}), start(t, "n2", Config{Namespace: ns})
	ip := netip.MustParseAddr("192.0.2.60")
	create(t, client, ns, "web", ann("192.0.2.60"))

	c1.SetHeld([]Held{{IP: ip, Reason: "new"}})
	waitFor(t, "ingress 192.0.2.60 (VIP) and vipHost n1", func() bool {
		s := get(t, client, ns, "web")
		return ingressIs(s, "192.0.2.60") && s.Annotations[AnnotationVIPHost] == "n1"
	})
	waitFor(t, "a VIPAssigned Event from n1", func() bool {
		return hasEvent(t, client, ns, "web", reasonAssigned, func(e corev1.Event) bool {
			return e.ReportingController == "vipd" && e.Message == "192.0.2.60 held by node n1 (no holder before: new)"
		})
	})

	// Resyncs are not takeovers.
	c1.SetHeld([]Held{{IP: ip, Reason: "new"}})
	update(t, client, ns, "web", func(s *corev1.Service) { s.Labels = map[string]string{"touched": "1"} })

	// Another node takes over.
	c1.SetHeld(nil)
	c2.SetHeld([]Held{{IP: ip, Previous: "n1", Reason: "holder-silent"}})
	waitFor(t, "vipHost n2", func() bool { return get(t, client, ns, "web").Annotations[AnnotationVIPHost] == "n2" })
	waitFor(t, "a VIPAssigned Event from n2 naming n1", func() bool {
		return hasEvent(t, client, ns, "web", reasonAssigned, func(e corev1.Event) bool {
			return e.Message == "192.0.2.60 held by node n2 (was n1: holder-silent)"
		})
	})
	// A restart that finds the address held already is no takeover.
	c2.SetHeld(nil)
	c2.SetHeld([]Held{{IP: ip, Previous: "n2", Reason: "already-holder"}})
	update(t, client, ns, "web", func(s *corev1.Service) { s.Labels = map[string]string{"touched": "2"} })
	if s := get(t, client, ns, "web"); !ingressIs(s, "192.0.2.60") {
		t.Errorf("ingress after takeover: %+v", s.Status.LoadBalancer.Ingress)
	}
	if n := assignedBy(t, client, ns, "web", "n1"); n != 1 {
		t.Errorf("n1 recorded %d VIPAssigned Events, want 1", n)
	}
}

func TestReleaseAfterAddressChange(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-release")
	c := start(t, "n1", Config{Namespace: ns})
	create(t, client, ns, "web", ann("192.0.2.70"))
	create(t, client, ns, "dual", ann("192.0.2.71,2001:db8::71"))

	c.SetHeld(held("192.0.2.70", "192.0.2.71", "2001:db8::71"))
	waitFor(t, "status of both Services", func() bool {
		return ingressIs(get(t, client, ns, "web"), "192.0.2.70") && ingressIs(get(t, client, ns, "dual"), "192.0.2.71", "2001:db8::71")
	})

	// web loses its address; dual drops its IPv6 address. The node lets
	// go of everything; it must clear what no longer exists and leave the
	// rest for whoever holds it next.
	update(t, client, ns, "web", func(s *corev1.Service) { delete(s.Annotations, AnnotationLoadBalancerIPs) })
	update(t, client, ns, "dual", func(s *corev1.Service) { s.Annotations[AnnotationLoadBalancerIPs] = "192.0.2.71" })
	c.SetHeld(nil)
	waitFor(t, "web's ingress and vipHost cleared", func() bool {
		s := get(t, client, ns, "web")
		_, host := s.Annotations[AnnotationVIPHost]
		return len(s.Status.LoadBalancer.Ingress) == 0 && !host
	})
	waitFor(t, "dual's IPv6 entry cleared, its IPv4 entry kept", func() bool {
		s := get(t, client, ns, "dual")
		return ingressIs(s, "192.0.2.71") && s.Annotations[AnnotationVIPHost] == "n1"
	})
}

func TestRejectOnce(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-reject")
	c := start(t, "n1", Config{Namespace: ns})
	create(t, client, ns, "web", ann("192.0.2.80"))
	create(t, client, ns, "dns", ann("192.0.2.80"), ports(port(53, corev1.ProtocolUDP)))
	ip := netip.MustParseAddr("192.0.2.80")
	want := []Address{addr("192.0.2.80", ns+"/dns", ns+"/web")}
	waitFor(t, "the shared address", func() bool { return equalAddresses(c.Addresses(), want) })

	for range 3 {
		c.Reject(ip, "it is node n1's own address")
	}
	update(t, client, ns, "web", func(s *corev1.Service) { s.Labels = map[string]string{"touched": "1"} })
	c.Reject(ip, "it is node n1's own address")
	// A new reason is news. Events are recorded in order, so once it is in,
	// any repeat of the first would be too.
	c.Reject(ip, "second reason")
	for _, name := range []string{"web", "dns"} {
		waitFor(t, "the second reason on "+name, func() bool {
			return hasEvent(t, client, ns, name, reasonRejected, func(e corev1.Event) bool { return strings.HasSuffix(e.Message, "second reason") })
		})
		var first []corev1.Event
		for _, e := range events(t, client, ns, name, reasonRejected) {
			if strings.HasSuffix(e.Message, "own address") {
				first = append(first, e)
			}
		}
		if len(first) != 1 || first[0].Count != 1 || first[0].Type != corev1.EventTypeWarning ||
			first[0].Message != "192.0.2.80 rejected: it is node n1's own address" {
			t.Errorf("%s: first-reason Events %+v, want one Warning with count 1", name, first)
		}
	}
}

// TestNewChecksConfig covers the configuration New refuses.
func TestNewChecksConfig(t *testing.T) {
	if _, err := New(Config{NodeName: "n1"}); err == nil {
		t.Error("no client accepted")
	}
	needAPI(t)
	if _, err := New(Config{Client: newClient(t)}); err == nil {
		t.Error("no node name accepted")
	}
	if _, err := New(Config{Client: newClient(t), NodeName: "n1", PoolConfigMap: "kubevip"}); err == nil {
		t.Error("pool without namespace accepted")
	}
}
