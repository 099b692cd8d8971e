package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// placeTimeout bounds how long agents that are live take to put new
// Services' VIPs on interfaces.
const placeTimeout = 20 * time.Second

// TestServicesOneForAll: in the default mode one Lease (plndr-svcs-lock)
// carries every service address, so one node holds all of them; each
// answers the client there, and each Service's status, vipHost annotation
// and Events say so.
func TestServicesOneForAll(t *testing.T) {
	s := newSvcEnv(t, svcOptions{})
	s.startAll()
	s.waitLive(startTimeout)
	vips := addrRange("192.0.2.1", 5)
	for i, v := range vips {
		s.create(s.service(s.ns, fmt.Sprintf("web-%d", i+1), v.String(), svcPort))
	}
	p := s.waitPlaced(placeTimeout, vips)
	holders := p.holderNames()
	if len(holders) != 1 {
		t.Fatalf("want one node holding every service VIP, got %v", p)
	}
	h := holders[0]
	t.Logf("%s holds %v", h, p.onNode(h))
	s.reachAll(p)
	for i, v := range vips {
		name := fmt.Sprintf("web-%d", i+1)
		s.waitStatus(10*time.Second, s.ns, name, []netip.Addr{v}, h)
		ev := waitEvent(t, 10*time.Second, s.ns, name, corev1.EventTypeNormal, "VIPAssigned", v.String()+" held by node "+h)
		if ev.Source.Component != "vipd" || ev.Source.Host != h {
			t.Errorf("Event on %s from %+v, want component vipd, host %s", name, ev.Source, h)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := leaseHolderOf(ctx, s.ns, svcLeaseName); err != nil || got != h {
		t.Errorf("Lease %s names %q (%v), want %s", svcLeaseName, got, err, h)
	}
	ls, err := s.leases()
	if err != nil {
		t.Fatal(err)
	}
	if names := slices.Sorted(maps.Keys(ls)); !slices.Equal(names, []string{svcLeaseName}) {
		t.Errorf("Leases besides node Leases: %v, want only %s", names, svcLeaseName)
	}
}

// TestServicesPerServiceSpread: with --service-election, 50 Services are
// spread evenly over 3 nodes (none holds more than ⌈50/3⌉+2), each VIP is
// on exactly one node's interface, answers the client there, and its claim
// Lease and Service status name that node.
func TestServicesPerServiceSpread(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	s.startAll()
	s.waitLive(startTimeout)
	vips := addrRange("192.0.2.10", 50)
	for i, v := range vips {
		s.create(s.service(s.ns, fmt.Sprintf("svc-%02d", i), v.String(), svcPort))
	}
	p := s.waitPlaced(placeTimeout, vips)
	counts := p.perNode(s.lab.Nodes)
	t.Logf("spread: %v", counts)
	limit := (len(vips)+len(s.lab.Nodes)-1)/len(s.lab.Nodes) + 2
	for n, c := range counts {
		if c > limit {
			t.Errorf("%s holds %d VIPs, want at most %d: %v", n, c, limit, counts)
		}
	}
	s.reachAll(p)
	s.waitClaims(10*time.Second, p)
	waitFor(t, 15*time.Second, "every Service's status to name its VIP's holder", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		list, err := pkg.admin.CoreV1().Services(s.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var problems []string
		for _, svc := range list.Items {
			v := netip.MustParseAddr(svc.Annotations[annotationIPs])
			if pr := statusProblem(&svc, []netip.Addr{v}, p[v]); pr != "" {
				problems = append(problems, pr)
			}
		}
		if len(list.Items) != len(vips) || len(problems) > 0 {
			return fmt.Errorf("%d Services, %d problems: %s", len(list.Items), len(problems), abbrev(problems))
		}
		return nil
	})
}

// TestServicesNodeLoss: per-service election, 30 Services. The node with
// the most VIPs loses power (agent SIGKILLed, link down): its VIPs move to
// the others, each to exactly one node, and every other VIP stays where it
// was all along.
func TestServicesNodeLoss(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	procs := s.startAll()
	s.waitLive(startTimeout)
	vips := addrRange("192.0.2.100", 30)
	for i, v := range vips {
		s.create(s.service(s.ns, fmt.Sprintf("svc-%02d", i), v.String(), svcPort))
	}
	before := s.waitPlaced(placeTimeout, vips)
	counts := before.perNode(s.lab.Nodes)
	lost := s.lab.Nodes[0]
	for _, n := range s.lab.Nodes {
		if counts[n.Name] > counts[lost.Name] {
			lost = n
		}
	}
	moving := before.onNode(lost.Name)
	t.Logf("spread %v; losing %s with %d VIPs", counts, lost.Name, len(moving))

	start := time.Now()
	if err := procs[lost.Name].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := lost.LinkDown(); err != nil {
		t.Fatal(err)
	}
	var after placement
	at := waitFor(t, s.timing.lease+10*time.Second, "the lost node's VIPs to be held by one other node each", func() error {
		h, err := s.vipHolders(vips)
		if err != nil {
			return err
		}
		// At every observation: a VIP of another node has not moved.
		for v, n := range before {
			if n != lost.Name && !slices.Equal(h[v], []string{n}) {
				t.Fatalf("%s, held by %s before %s was lost, is now on %v", v, n, lost.Name, h[v])
			}
		}
		after, err = singleHolders(h, vips, lost.Name)
		return err
	})
	t.Logf("%s's %d VIPs held again %v after it was lost; spread now %v",
		lost.Name, len(moving), at.Sub(start).Round(time.Millisecond), after.perNode(s.lab.Nodes))
	for _, v := range moving {
		if after[v] == lost.Name {
			t.Errorf("%s still on %s", v, lost.Name)
		}
	}
	s.reachAll(after)
	s.waitClaims(10*time.Second, after)
}

// TestServicesLocalTrafficPolicy: a Service with externalTrafficPolicy
// Local is held only by a node with a ready endpoint of it, and follows the
// endpoint when it moves to another node, never held by two at once.
func TestServicesLocalTrafficPolicy(t *testing.T) {
	s := newSvcEnv(t, svcOptions{})
	vip := netip.MustParseAddr("192.0.2.140")
	w := watchVIP(t, s.lab.Nodes, vip)
	n2, n3 := s.node("n2"), s.node("n3")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	es := s.endpointSlice(s.ns, "local", "local-1", n2)
	if err := s.createSlice(ctx, es); err != nil {
		t.Fatal(err)
	}
	svc := s.service(s.ns, "local", vip.String(), svcPort)
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	s.create(svc)
	s.startAll()

	if _, err := w.Wait(startTimeout, func(h []string) bool { return slices.Equal(h, []string{"n2"}) }); err != nil {
		t.Fatalf("the VIP of a Local Service with its endpoint on n2: %v", err)
	}
	s.reachAll(placement{vip: "n2"})
	s.waitStatus(10*time.Second, s.ns, "local", []netip.Addr{vip}, "n2")

	moved := time.Now()
	cur, err := pkg.admin.DiscoveryV1().EndpointSlices(s.ns).Get(ctx, es.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Endpoints[0].NodeName = &n3.Name
	cur.Endpoints[0].Addresses = []string{n3.IPv4.String()}
	if _, err := pkg.admin.DiscoveryV1().EndpointSlices(s.ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	at, err := w.Wait(10*time.Second, func(h []string) bool { return slices.Equal(h, []string{"n3"}) })
	if err != nil {
		t.Fatalf("after the endpoint moved to n3: %v", err)
	}
	t.Logf("VIP moved to n3 %v after the endpoint did", at.Sub(moved).Round(time.Millisecond))
	s.reachAll(placement{vip: "n3"})
	s.waitStatus(10*time.Second, s.ns, "local", []netip.Addr{vip}, "n3")

	// No ready endpoint on any node: no node may hold the address.
	cur, err = pkg.admin.DiscoveryV1().EndpointSlices(s.ns).Get(ctx, es.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	notReady := false
	cur.Endpoints[0].Conditions.Ready = &notReady
	if _, err := pkg.admin.DiscoveryV1().EndpointSlices(s.ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Wait(10*time.Second, func(h []string) bool { return len(h) == 0 }); err != nil {
		t.Fatalf("after the only endpoint became not ready: %v", err)
	}
	holdFor(t, 2*s.timing.lease, "no node holds the VIP of a Local Service without ready endpoints", func() error {
		if h := w.Holders(); len(h) > 0 {
			return fmt.Errorf("held by %v", h)
		}
		return nil
	})
	if svc, err := getService(ctx, s.ns, "local"); err == nil {
		// Documented: entries of addresses the Service still has are left
		// for the next holder. Recorded, not asserted.
		var ingress []string
		for _, in := range svc.Status.LoadBalancer.Ingress {
			ingress = append(ingress, in.IP)
		}
		t.Logf("status with no holder: ingress %v, %s=%q", ingress, annotationVIPHost, svc.Annotations[annotationVIPHost])
	}
	if d := w.Overlap(time.Time{}, time.Now(), nil); d > 0 {
		t.Errorf("two nodes held %s at once for %v: %+v", vip, d, w.Events())
	}
	if err := w.Err(); err != nil {
		t.Error(err)
	}
}

// TestServicesSharedAddress: two Services in two namespaces ask for the
// same address on different ports. Exactly one node holds it, both
// Services' status name it, and when its agent is stopped (SIGTERM) the
// address moves to one other node: the kernel's address notifications show
// no moment with two holders.
func TestServicesSharedAddress(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	vip := netip.MustParseAddr("192.0.2.150")
	w := watchVIP(t, s.lab.Nodes, vip)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	other := createNamespace(ctx, t)
	sharers := []types.NamespacedName{{Namespace: s.ns, Name: "shared-a"}, {Namespace: other, Name: "shared-b"}}
	s.create(s.service(sharers[0].Namespace, sharers[0].Name, vip.String(), 80))
	s.create(s.service(sharers[1].Namespace, sharers[1].Name, vip.String(), 81))
	procs := s.startAll()

	var h string
	if _, err := w.Wait(startTimeout, func(hs []string) bool {
		if len(hs) == 1 {
			h = hs[0]
		}
		return len(hs) == 1
	}); err != nil {
		t.Fatal(err)
	}
	s.reachAll(placement{vip: h})
	for _, nn := range sharers {
		s.waitStatus(10*time.Second, nn.Namespace, nn.Name, []netip.Addr{vip}, h)
	}
	s.waitClaims(5*time.Second, placement{vip: h})

	stop := time.Now()
	if err := procs[h].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var next string
	took, err := w.Wait(10*time.Second, func(hs []string) bool {
		if len(hs) == 1 && hs[0] != h {
			next = hs[0]
		}
		return next != ""
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s -> %s in %v", h, next, took.Sub(stop).Round(time.Millisecond))
	if code := waitExit(t, procs[h], 10*time.Second); code != 0 {
		t.Errorf("vipd on %s exited %d after SIGTERM", h, code)
	}
	s.reachAll(placement{vip: next})
	for _, nn := range sharers {
		s.waitStatus(10*time.Second, nn.Namespace, nn.Name, []netip.Addr{vip}, next)
	}
	s.waitClaims(5*time.Second, placement{vip: next})
	if d := w.Overlap(time.Time{}, time.Now(), nil); d > stepDownBound {
		t.Errorf("%s kept %s, silent, for %v beside %s; a stopping agent lets go once it sees the new holder: %+v", h, vip, d, next, w.Events())
	}
	if err := w.Err(); err != nil {
		t.Error(err)
	}
}

// TestServicesShareControlPlaneVIP: a Service asking for the control-plane
// VIP rides on the control-plane election: one holder, the one the Lease
// plndr-cp-lock names, no claim Lease of its own, and the Service's status
// follows the holder through a graceful handover.
func TestServicesShareControlPlaneVIP(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true, controlPlane: true})
	w := watchVIP(t, s.lab.Nodes, vip4)
	s.create(s.service(s.ns, "apiserver", vip4.String(), 443))
	procs := s.startAll()
	h := s.waitSoleHolder(startTimeout)
	s.waitLeaseHolder(5*time.Second, h.Name)
	s.mustReach(vip4, h)
	s.waitStatus(10*time.Second, s.ns, "apiserver", []netip.Addr{vip4}, h.Name)
	ls, err := s.leases()
	if err != nil {
		t.Fatal(err)
	}
	if names := slices.Sorted(maps.Keys(ls)); !slices.Equal(names, []string{leaseName}) {
		t.Errorf("Leases besides node Leases: %v, want only %s", names, leaseName)
	}

	if err := procs[h.Name].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next, _ := s.waitNewHolder(10*time.Second, h)
	if code := waitExit(t, procs[h.Name], 10*time.Second); code != 0 {
		t.Errorf("vipd on %s exited %d after SIGTERM", h.Name, code)
	}
	s.waitLeaseHolder(5*time.Second, next.Name)
	s.mustReach(vip4, next)
	s.waitStatus(10*time.Second, s.ns, "apiserver", []netip.Addr{vip4}, next.Name)
	if d := w.Overlap(time.Time{}, time.Now(), nil); d > stepDownBound {
		t.Errorf("%s kept %s, silent, for %v beside %s; a stopping agent lets go once it sees the new holder: %+v", h.Name, vip4, d, next.Name, w.Events())
	}
}

// TestServicesDualStack: a dual-stack Service (one IPv4 and one IPv6
// address) and an IPv6-only one: every address is held by one node and
// answers ping and ping -6 and TCP there; the status lists both families,
// primary first.
func TestServicesDualStack(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	v4 := netip.MustParseAddr("192.0.2.160")
	v6 := netip.MustParseAddr("2001:db8:100::1:60")
	only6 := netip.MustParseAddr("2001:db8:100::1:61")
	// Agents first, so the three addresses are spread: the two families
	// of "dual" are then likely held by different nodes, which both write
	// its status.
	procs := s.startAll()
	s.waitLive(startTimeout)
	s.create(s.service(s.ns, "dual", v4.String()+","+v6.String(), svcPort))
	s.create(s.service(s.ns, "v6only", only6.String(), svcPort))
	p := s.waitPlaced(placeTimeout, []netip.Addr{v4, v6, only6})
	t.Logf("placement: %v", p)
	s.reachAll(p)
	// vipHost names the holder of the primary (first) address.
	s.waitStatus(10*time.Second, s.ns, "dual", []netip.Addr{v4, v6}, p[v4])
	s.waitStatus(10*time.Second, s.ns, "v6only", []netip.Addr{only6}, p[only6])
	s.waitClaims(5*time.Second, p)

	// The primary's holder stops: its addresses move, and vipHost follows
	// the primary address.
	h := p[v4]
	if err := procs[h].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, procs[h], 10*time.Second); code != 0 {
		t.Errorf("vipd on %s exited %d after SIGTERM", h, code)
	}
	after := s.waitPlaced(10*time.Second, []netip.Addr{v4, v6, only6})
	t.Logf("after %s stopped: %v", h, after)
	if after[v4] == h {
		t.Fatalf("%s still on %s after its agent stopped", v4, h)
	}
	s.reachAll(after)
	s.waitStatus(10*time.Second, s.ns, "dual", []netip.Addr{v4, v6}, after[v4])
	s.waitStatus(10*time.Second, s.ns, "v6only", []netip.Addr{only6}, after[only6])
	s.waitClaims(5*time.Second, after)
}

// TestServicesBadAnnotation: an annotation that is not an address, or
// holds two IPv4 addresses, gets the Service a Warning Event naming the
// problem, and no address anywhere: none on any interface, no claim Lease,
// no status.
func TestServicesBadAnnotation(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	before := s.allAddrs(t)
	s.create(s.service(s.ns, "not-an-ip", "not-an-ip", svcPort))
	s.create(s.service(s.ns, "two-ipv4", "192.0.2.171,192.0.2.172", svcPort))
	good := netip.MustParseAddr("192.0.2.170")
	s.startAll()
	waitEvent(t, startTimeout, s.ns, "not-an-ip", corev1.EventTypeWarning, "InvalidLoadBalancerIPs", annotationIPs, `"not-an-ip" is not an IP address`)
	waitEvent(t, 5*time.Second, s.ns, "two-ipv4", corev1.EventTypeWarning, "InvalidLoadBalancerIPs", "192.0.2.171", "192.0.2.172", "same family")
	// A good Service created afterwards is served: the agents have seen
	// the bad ones by then.
	s.create(s.service(s.ns, "good", good.String(), svcPort))
	p := s.waitPlaced(placeTimeout, []netip.Addr{good})

	after := s.allAddrs(t)
	for name, addrs := range after {
		extra := slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool {
			return slices.Contains(before[name], a) || (a == good && p[good] == name)
		})
		if len(extra) > 0 {
			t.Errorf("%s has addresses no valid Service asked for: %v", name, extra)
		}
	}
	s.waitClaims(5*time.Second, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, name := range []string{"not-an-ip", "two-ipv4"} {
		svc, err := getService(ctx, s.ns, name)
		if err != nil {
			t.Fatal(err)
		}
		if pr := statusProblem(svc, nil, ""); pr != "" {
			t.Error(pr)
		}
	}
}

// TestServicesDeleteAndChange: deleting a Service takes its VIP off every
// interface and deletes its claim Lease; changing a Service's annotation
// moves it to the new address (the old one goes, with its Lease) and
// updates its status.
func TestServicesDeleteAndChange(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	gone := netip.MustParseAddr("192.0.2.180")
	old := netip.MustParseAddr("192.0.2.181")
	moved := netip.MustParseAddr("192.0.2.182")
	s.create(s.service(s.ns, "gone", gone.String(), svcPort))
	s.create(s.service(s.ns, "moving", old.String(), svcPort))
	s.startAll()
	all := []netip.Addr{gone, old, moved}
	p := s.waitPlaced(startTimeout+placeTimeout, []netip.Addr{gone, old})
	s.waitClaims(5*time.Second, p)
	s.waitStatus(10*time.Second, s.ns, "moving", []netip.Addr{old}, p[old])

	s.deleteService(s.ns, "gone")
	waitFor(t, 10*time.Second, "the deleted Service's VIP to leave every interface", func() error {
		h, err := s.vipHolders(all)
		if err != nil {
			return err
		}
		if len(h[gone]) > 0 {
			return fmt.Errorf("%s still on %v", gone, h[gone])
		}
		if !slices.Equal(h[old], []string{p[old]}) {
			t.Fatalf("%s, held by %s, is now on %v", old, p[old], h[old])
		}
		return nil
	})
	s.waitClaims(10*time.Second, placement{old: p[old]})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svc, err := getService(ctx, s.ns, "moving")
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations[annotationIPs] = moved.String()
	if _, err := pkg.admin.CoreV1().Services(s.ns).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var after placement
	waitFor(t, 10*time.Second, "the changed Service's VIP to move to its new address", func() error {
		h, err := s.vipHolders(all)
		if err != nil {
			return err
		}
		if len(h[old]) > 0 || len(h[gone]) > 0 {
			return fmt.Errorf("%s on %v, %s on %v", old, h[old], gone, h[gone])
		}
		after, err = singleHolders(h, []netip.Addr{moved})
		return err
	})
	s.reachAll(after)
	s.waitStatus(10*time.Second, s.ns, "moving", []netip.Addr{moved}, after[moved])
	s.waitClaims(10*time.Second, after)
	if _, err := leaseHolderOf(ctx, s.ns, claimLease(gone)); !apierrors.IsNotFound(err) {
		t.Errorf("claim Lease of the deleted Service: %v, want not found", err)
	}
}

// TestServicesIPv6AddressEndingInDoubleColon: an IPv6 service address
// whose text ends in "::" (2001:db8:100:0:1::, a valid unicast address) is
// served like any other in per-service mode.
func TestServicesIPv6AddressEndingInDoubleColon(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	vip := netip.MustParseAddr("2001:db8:100:0:1::")
	s.create(s.service(s.ns, "v6", vip.String(), svcPort))
	s.startAll()
	p := s.waitPlaced(startTimeout, []netip.Addr{vip})
	s.reachAll(p)
	s.waitStatus(10*time.Second, s.ns, "v6", []netip.Addr{vip}, p[vip])
}

// TestServicesNodeAddressNotTaken: a Service asking for a node's own
// address must not take that address from the node. The node itself
// refuses it (VIPRejected); no other node may hold it either, or its
// gratuitous ARP moves the node's address to it on every station.
func TestServicesNodeAddressNotTaken(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	n1 := s.node("n1")
	control := netip.MustParseAddr("192.0.2.190")
	s.startAll()
	s.waitLive(startTimeout)
	s.create(s.service(s.ns, "node-address", n1.IPv4.String(), svcPort))
	s.create(s.service(s.ns, "control", control.String(), svcPort))
	waitEvent(t, 10*time.Second, s.ns, "node-address", corev1.EventTypeWarning, "VIPRejected", n1.IPv4.String(), "n1")
	s.waitPlaced(placeTimeout, []netip.Addr{control})
	holdFor(t, 2*s.timing.lease, n1.Name+" keeps its own address to itself", func() error {
		h, err := s.vipHolders([]netip.Addr{n1.IPv4})
		if err != nil {
			return err
		}
		if !slices.Equal(h[n1.IPv4], []string{n1.Name}) {
			return fmt.Errorf("%s (%s's address) is on %v", n1.IPv4, n1.Name, h[n1.IPv4])
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if got, err := s.lab.Client.DialTCP(ctx, n1.IPv4, tcpPort); err != nil || got != n1.Name {
		t.Errorf("TCP to %s's address answered by %q (%v), want %s", n1.Name, got, err, n1.Name)
	}
}

// TestServicesDeleteWhileHolderDown: a Service deleted while the node
// holding its address is down (and never comes back) leaves no claim Lease
// behind: the live agents clean up the claim of a gone contest whose holder
// is no longer live.
func TestServicesDeleteWhileHolderDown(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	vip := netip.MustParseAddr("192.0.2.195")
	s.create(s.service(s.ns, "doomed", vip.String(), svcPort))
	procs := s.startAll()
	p := s.waitPlaced(startTimeout, []netip.Addr{vip})
	s.waitClaims(5*time.Second, p)
	h := s.node(p[vip])

	// The holder is lost for good; the others are down while the Service
	// is deleted, so that none of them takes the claim over first.
	for _, pr := range procs {
		if err := pr.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.LinkDown(); err != nil {
		t.Fatal(err)
	}
	s.deleteService(s.ns, "doomed")
	for _, n := range s.lab.Nodes {
		if n != h {
			s.start(n)
		}
	}
	waitFor(t, s.timing.lease+5*time.Second, "the claim Lease of the deleted Service to go", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		holder, err := leaseHolderOf(ctx, s.ns, claimLease(vip))
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		return fmt.Errorf("Lease %s still exists, naming %q", claimLease(vip), holder)
	})
}
