package services

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/vipd/vipd/internal/kube/kubetest"
)

// planTestBed is a Controller whose caches the test fills by hand.
type planTestBed struct {
	c              *Controller
	svcs, eps, cms cache.Indexer
}

func newPlanTestBed(t testing.TB) *planTestBed {
	t.Helper()
	c, err := New(Config{Client: kubetest.Wrap(fake.NewClientset()), NodeName: "n1", Class: "vipd", PoolNamespace: "kube-system", PoolConfigMap: "kubevip"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.queue.ShutDown)
	b := &planTestBed{c: c,
		svcs: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
		eps: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
			sliceServiceIndex: sliceService}),
		cms: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
	}
	c.services = corelisters.NewServiceLister(b.svcs)
	c.slices = discoverylisters.NewEndpointSliceLister(b.eps)
	c.sliceIndex = b.eps
	c.configMaps = corelisters.NewConfigMapLister(b.cms)
	return b
}

// check compares the controller's plan with one computed from scratch.
func (b *planTestBed) check(t *testing.T, step int) {
	t.Helper()
	svcs, _ := b.c.services.List(labels.Everything())
	eps, _ := b.c.slices.List(labels.Everything())
	want := computePlan(svcs, eps, b.c.currentPool(), b.c.filter)
	b.c.mu.Lock()
	got := b.c.plan
	b.c.mu.Unlock()
	if !equalAddresses(got.addresses, want.addresses) {
		t.Fatalf("step %d: addresses\n got %v\nwant %v", step, got.addresses, want.addresses)
	}
	if len(got.services) != len(want.services) {
		t.Fatalf("step %d: %d Services planned, want %d", step, len(got.services), len(want.services))
	}
	for nn, w := range want.services {
		if g := got.services[nn]; !reflect.DeepEqual(g, w) {
			t.Fatalf("step %d: Service %s\n got %+v\nwant %+v", step, nn, g, w)
		}
	}
}

// TestIncrementalPlanMatchesFull changes random Services a few at a time —
// shared addresses, port conflicts, dual stack, pool allocations, raced
// allocations, Local Services and their endpoints, other classes,
// deletions, pool changes — and checks after each replan that the plan is
// the one computePlan makes from scratch. Half of the runs have no Service
// that takes its address from the pool, so that most replans are partial.
func TestIncrementalPlanMatchesFull(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) { incrementalRun(t, seed) })
	}
}

func incrementalRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := newPlanTestBed(t)
	addrs := []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1", "2001:db8::2", "192.0.2.1,2001:db8::1", "bad"}
	nodes := []string{"n1", "n2", "n3"}
	name := func(i int) types.NamespacedName {
		return types.NamespacedName{Namespace: []string{"a", "b"}[i%2], Name: fmt.Sprintf("s%d", i)}
	}
	rv := 0
	randomService := func(nn types.NamespacedName, i int) *corev1.Service {
		rv++
		s := svc(nn.Namespace+"/"+nn.Name, i, class("vipd"))
		s.ResourceVersion = strconv.Itoa(rv)
		s.Spec.Ports[0].Port = []int32{80, 443}[rng.IntN(2)]
		r := rng.IntN(10)
		if seed >= 10 && (r == 5 || r >= 8) {
			r = 0 // the second half of the seeds: no pool users, so replans stay partial
		}
		switch {
		case r < 5:
			ann(addrs[rng.IntN(len(addrs))])(s)
		case r < 6:
			a := addrs[rng.IntN(3)]
			allocated(a)(s)
		case r < 7:
			specIP(addrs[rng.IntN(len(addrs))])(s)
		case r < 8:
			class("other")(s)
		}
		if rng.IntN(4) == 0 {
			local()(s)
		}
		if rng.IntN(5) == 0 {
			s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
		}
		// What couples Services beyond their addresses: sharing keys
		// (a waiting pool user may share an address in use), interfaces
		// and named pools.
		if rng.IntN(3) == 0 {
			annotate(AnnotationMetalLBSharedIP, []string{"k1", "k2"}[rng.IntN(2)])(s)
		}
		if rng.IntN(6) == 0 {
			annotate(AnnotationServiceInterface, []string{"eth1", "vlan7"}[rng.IntN(2)])(s)
		}
		if rng.IntN(6) == 0 {
			annotate(AnnotationAddressPool, []string{"edge", "none"}[rng.IntN(2)])(s)
		}
		return s
	}
	b.c.markDirty(types.NamespacedName{}, true)
	b.c.replan()
	for step := range 300 {
		switch r := rng.IntN(20); {
		case r == 0:
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kubevip"},
				Data: map[string]string{"range-global": []string{"192.0.2.1-192.0.2.3", "192.0.2.2-192.0.2.2,2001:db8::1-2001:db8::2"}[rng.IntN(2)]}}
			if rng.IntN(2) == 0 {
				cm.Data["pool-edge"] = []string{"192.0.2.3", "192.0.2.2-192.0.2.3"}[rng.IntN(2)]
				cm.Data["pool-edge.node-selector"] = "zone=a"
				cm.Data["pool-edge.interface"] = "eth1"
			}
			if rng.IntN(3) == 0 {
				_ = b.cms.Delete(cm)
			} else {
				_ = b.cms.Update(cm)
			}
			b.c.markDirty(types.NamespacedName{}, true)
		case r < 3:
			i := rng.IntN(12)
			nn := name(i)
			es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name + "-x",
				Labels: map[string]string{discoveryv1.LabelServiceName: nn.Name}},
				Endpoints: []discoveryv1.Endpoint{{NodeName: ptr.To(nodes[rng.IntN(3)]), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(rng.IntN(3) > 0)}}}}
			_ = b.eps.Update(es)
			if b.c.sliceMatters(es) {
				b.c.markDirty(nn, false)
			}
		default:
			for range 1 + rng.IntN(3) {
				i := rng.IntN(12)
				nn := name(i)
				if rng.IntN(5) == 0 {
					_ = b.svcs.Delete(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: nn.Namespace, Name: nn.Name}})
				} else {
					_ = b.svcs.Update(randomService(nn, i))
				}
				b.c.markDirty(nn, false)
			}
		}
		b.c.replan()
		b.check(t, step)
	}
}

// TestPlanInputsEqual: vipd's own writes (status, vipHost, the version)
// change nothing the plan reads; anything else does.
func TestPlanInputsEqual(t *testing.T) {
	base := svc("a/s", 0, ann("192.0.2.1"))
	mode := corev1.LoadBalancerIPModeVIP
	same := base.DeepCopy()
	same.ResourceVersion = "2"
	same.Annotations[AnnotationVIPHost] = "n1"
	same.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.1", IPMode: &mode}}
	if !planInputsEqual(base, same) {
		t.Error("a status and vipHost write counts as a change of the plan's inputs")
	}
	for what, change := range map[string]func(*corev1.Service){
		"address":   func(s *corev1.Service) { s.Annotations[AnnotationLoadBalancerIPs] = "192.0.2.2" },
		"port":      func(s *corev1.Service) { s.Spec.Ports[0].Port = 81 },
		"policy":    local(),
		"new key":   func(s *corev1.Service) { s.Annotations[AnnotationIgnore] = "true" },
		"class":     class("x"),
		"uid":       func(s *corev1.Service) { s.UID = "other" },
		"no annots": func(s *corev1.Service) { s.Annotations = nil },
	} {
		changed := same.DeepCopy()
		change(changed)
		if planInputsEqual(base, changed) {
			t.Errorf("a change of the %s does not count", what)
		}
	}
	if !planInputsEqual(svc("a/s", 0), svc("a/s", 0, func(s *corev1.Service) { s.Annotations = map[string]string{} })) {
		t.Error("nil and empty annotations differ")
	}
}

// BenchmarkReplanOne is the replan after one Service among n was created:
// what every agent does per Service when a thousand are created one by one.
func BenchmarkReplanOne(b *testing.B) {
	for _, n := range []int{10, 1000, 5000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			bed := newPlanTestBed(b)
			svcs, eps := benchCluster(n)
			for i, s := range svcs {
				s.Spec.LoadBalancerClass = ptr.To("vipd")
				_ = bed.svcs.Add(s)
				_ = bed.eps.Add(eps[i])
			}
			bed.c.markDirty(types.NamespacedName{}, true)
			bed.c.replan()
			last := svcs[n-1]
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				s := last.DeepCopy()
				s.ResourceVersion = strconv.Itoa(i)
				s.Annotations[AnnotationLoadBalancerIPs] = []string{"192.0.2.1", "192.0.2.2"}[i%2]
				_ = bed.svcs.Update(s)
				bed.c.markDirty(types.NamespacedName{Namespace: s.Namespace, Name: s.Name}, false)
				bed.c.replan()
			}
		})
	}
}

// A replan changes the address list in place: what Addresses handed out
// before must not change with it, and ReadAddresses sees the new list.
func TestAddressesAreACopy(t *testing.T) {
	b := newPlanTestBed(t)
	for i, ip := range []string{"192.0.2.1", "192.0.2.3", "192.0.2.5"} {
		nn := types.NamespacedName{Namespace: "a", Name: fmt.Sprintf("s%d", i)}
		_ = b.svcs.Update(svc("a/"+nn.Name, i, class("vipd"), ann(ip)))
	}
	b.c.markDirty(types.NamespacedName{}, true)
	b.c.replan()
	before := b.c.Addresses()
	kept := slices.Clone(before)
	// One Service moves to an address between the others: a partial
	// replan that changes the list.
	_ = b.svcs.Update(svc("a/s0", 0, class("vipd"), ann("192.0.2.4")))
	b.c.markDirty(types.NamespacedName{Namespace: "a", Name: "s0"}, false)
	b.c.replan()
	if !equalAddresses(before, kept) {
		t.Fatalf("the addresses handed out changed with the replan:\n got %v\nwant %v", before, kept)
	}
	var now []netip.Addr
	b.c.ReadAddresses(func(as []Address) {
		for _, a := range as {
			now = append(now, a.IP)
		}
	})
	want := []netip.Addr{netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.4"), netip.MustParseAddr("192.0.2.5")}
	if !slices.Equal(now, want) {
		t.Fatalf("ReadAddresses after the replan: %v, want %v", now, want)
	}
}
