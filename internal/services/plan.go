package services

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vipd/vipd/internal/address"
)

// Annotations vipd reads and writes on Services.
const (
	// AnnotationLoadBalancerIPs asks for addresses: comma-separated, at most
	// one IPv4 and one IPv6 address. vipd writes it when it allocates from
	// the pool.
	AnnotationLoadBalancerIPs = "kube-vip.io/loadbalancerIPs"
	// AnnotationVIPHost names the node that last wrote the Service's status.
	AnnotationVIPHost = "kube-vip.io/vipHost"
	// AnnotationPoolAllocated holds the value vipd wrote to
	// AnnotationLoadBalancerIPs from the pool. While the two agree the
	// address counts as allocated rather than chosen by a user, so two
	// allocations that raced onto one address can be told from deliberate
	// sharing and the later one moved.
	AnnotationPoolAllocated = "vipd.io/pool-allocated"
)

// Event reasons.
const (
	reasonInvalidIPs    = "InvalidLoadBalancerIPs"
	reasonInvalidIP     = "InvalidLoadBalancerIP"
	reasonNoPool        = "NoAddressPool"
	reasonInvalidPool   = "InvalidAddressPool"
	reasonPoolOverlap   = "AddressPoolOverlap"
	reasonPoolExhausted = "AddressPoolExhausted"
	reasonPortConflict  = "PortConflict"
	reasonAllocated     = "AddressAllocated"
	reasonAssigned      = "VIPAssigned"
	reasonRejected      = "VIPRejected"
	// reasonRefusedHere: one node cannot hold the address (its interface
	// refused it); the others can.
	reasonRefusedHere = "VIPRefusedByNode"
)

// reportingController names vipd in Events; fieldManager in its writes.
const (
	reportingController = "vipd"
	fieldManager        = "vipd"
)

// filter decides which Services vipd serves.
type filter struct {
	namespace    string // "" = all
	class        string
	onlyOwnClass bool
}

func (f filter) serves(s *corev1.Service) bool {
	if s.Spec.Type != corev1.ServiceTypeLoadBalancer || ignored(s) {
		return false
	}
	if f.namespace != "" && s.Namespace != f.namespace {
		return false
	}
	if s.Spec.LoadBalancerClass == nil {
		return !f.onlyOwnClass
	}
	return *s.Spec.LoadBalancerClass == f.class
}

// warning is a problem with one Service, reported as a Warning Event.
type warning struct {
	reason, message string
}

// servicePlan is what the computation decided for one served Service.
type servicePlan struct {
	uid types.UID
	// source is the part of the Service the addresses were computed from;
	// a status write is only made against an object with the same source.
	source string
	// addrs are the addresses the Service is served on, primary first;
	// empty if it has none (yet).
	addrs    []netip.Addr
	warnings []warning
	// write, when set, rewrites the allocation annotations of the Service
	// at resourceVersion writeRV: to alloc, or away if alloc is empty (an
	// allocation that lost a race and found no other free address, so that
	// the annotation does not claim an address the Service doesn't get).
	write   bool
	alloc   []netip.Addr
	writeRV string
}

// plan is the outcome of one computation over the whole API state.
type plan struct {
	addresses []Address
	services  map[types.NamespacedName]*servicePlan
}

// servicesAt returns the Services sharing ip.
func (p plan) servicesAt(ip netip.Addr) []types.NamespacedName {
	i, ok := slices.BinarySearchFunc(p.addresses, ip, func(a Address, ip netip.Addr) int { return a.IP.Compare(ip) })
	if !ok {
		return nil
	}
	return p.addresses[i].Services
}

// sourceOf is the fingerprint of everything that decides which addresses a
// Service asks for.
func sourceOf(s *corev1.Service) string {
	class := "<none>"
	if s.Spec.LoadBalancerClass != nil {
		class = *s.Spec.LoadBalancerClass
	}
	return strings.Join([]string{string(s.UID), string(s.Spec.Type), class,
		s.Annotations[AnnotationLoadBalancerIPs], s.Annotations[AnnotationPoolAllocated], s.Spec.LoadBalancerIP}, "\x00")
}

// candidate is one served Service during the computation.
type candidate struct {
	svc  *corev1.Service
	name types.NamespacedName
	sp   *servicePlan
	// requested are the addresses asked for explicitly (annotation or spec).
	requested []netip.Addr
	// fromPool: requested was written by a pool allocation.
	fromPool bool
	// needPool: allocate from the pool.
	needPool bool
}

// computePlan decides, from the Services, EndpointSlices and pool that the
// informers hold, which addresses exist and who shares them. It is a pure
// function of its inputs, so every agent that sees the same API state
// reaches the same plan — including the same pool allocations.
func computePlan(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice, p pool, f filter) plan {
	var cands []*candidate
	for _, s := range svcs {
		if !f.serves(s) {
			continue
		}
		c := &candidate{svc: s, name: types.NamespacedName{Namespace: s.Namespace, Name: s.Name},
			sp: &servicePlan{uid: s.UID, source: sourceOf(s)}}
		c.requested, c.fromPool, c.needPool, c.sp.warnings = requestedAddrs(s)
		c.sp.warnings = append(c.sp.warnings, unsupported(s)...)
		cands = append(cands, c)
	}
	// One order for every decision that has a winner: oldest first, then
	// by name, so that the decision does not depend on who computes it.
	slices.SortFunc(cands, func(a, b *candidate) int {
		if c := a.svc.CreationTimestamp.Compare(b.svc.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.name.Namespace, b.name.Namespace), cmp.Compare(a.name.Name, b.name.Name))
	})

	used := map[netip.Addr]bool{}
	for _, c := range cands {
		for _, a := range c.requested {
			used[a] = true
		}
	}

	// Accept the explicit addresses, oldest Service first.
	sharers := map[netip.Addr][]*candidate{}
	for _, c := range cands {
		if len(c.requested) == 0 {
			continue
		}
		if c.fromPool && slices.ContainsFunc(c.requested, func(a netip.Addr) bool { return len(sharers[a]) > 0 }) {
			// Two allocations raced onto one address (agents that saw
			// different Services); the older Service keeps it.
			c.needPool = true
			continue
		}
		if w, ok := portConflict(c, c.requested, sharers); ok {
			c.sp.warnings = append(c.sp.warnings, w)
			continue
		}
		for _, a := range c.requested {
			sharers[a] = append(sharers[a], c)
		}
		c.sp.addrs = c.requested
	}

	// Allocate from the pool, oldest Service first, never an address in use.
	for _, c := range cands {
		if !c.needPool {
			continue
		}
		ips, w, note := p.allocate(c.svc, used)
		if note != nil {
			c.sp.warnings = append(c.sp.warnings, *note)
		}
		if w != nil {
			c.sp.warnings = append(c.sp.warnings, *w)
			c.sp.write, c.sp.writeRV = c.fromPool, c.svc.ResourceVersion
			continue
		}
		for _, a := range ips {
			used[a] = true
		}
		c.sp.write, c.sp.alloc, c.sp.writeRV = true, ips, c.svc.ResourceVersion
	}

	pl := plan{services: make(map[types.NamespacedName]*servicePlan, len(cands))}
	for _, c := range cands {
		pl.services[c.name] = c.sp
	}
	nodes := readyNodes(eps)
	for ip, cs := range sharers {
		a := Address{IP: ip}
		for _, c := range cs {
			a.Services = append(a.Services, c.name)
			if c.svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
				a.Candidates = intersect(a.Candidates, nodes[c.name])
			}
		}
		slices.SortFunc(a.Services, compareNames)
		pl.addresses = append(pl.addresses, a)
	}
	slices.SortFunc(pl.addresses, func(a, b Address) int { return a.IP.Compare(b.IP) })
	return pl
}

func compareNames(a, b types.NamespacedName) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// requestedAddrs reads the addresses a Service asks for: the annotation,
// else spec.loadBalancerIP, else none (needPool). A bad value yields a
// warning and no address at all, not a fall-back to the pool: the user
// asked for something specific.
func requestedAddrs(s *corev1.Service) (ips []netip.Addr, fromPool, needPool bool, ws []warning) {
	if raw := strings.TrimSpace(s.Annotations[AnnotationLoadBalancerIPs]); raw != "" {
		ips, err := parseAddrList(raw)
		if err != nil {
			return nil, false, false, []warning{{reasonInvalidIPs,
				fmt.Sprintf("annotation %s %s: %v; the Service gets no address until it is fixed", AnnotationLoadBalancerIPs, quoteShort(s.Annotations[AnnotationLoadBalancerIPs]), err)}}
		}
		return ips, s.Annotations[AnnotationPoolAllocated] == s.Annotations[AnnotationLoadBalancerIPs], false, nil
	}
	if raw := strings.TrimSpace(s.Spec.LoadBalancerIP); raw != "" {
		a, err := netip.ParseAddr(raw)
		if err == nil {
			if problem := address.VIPProblem(a); problem != "" {
				err = fmt.Errorf("%s is %s", a, problem)
			}
		} else {
			err = fmt.Errorf("not an IP address")
		}
		if err != nil {
			return nil, false, false, []warning{{reasonInvalidIP,
				fmt.Sprintf("spec.loadBalancerIP %s: %v; the Service gets no address until it is fixed", quoteShort(s.Spec.LoadBalancerIP), err)}}
		}
		return []netip.Addr{a}, false, false, nil
	}
	return nil, false, true, nil
}

// quoteShort quotes a value for a message, cut short when it is long (an
// annotation listing a thousand addresses): Events and logs stay readable.
func quoteShort(v string) string {
	const max = 80
	if len(v) <= max {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("%s… (%d characters)", strconv.Quote(v[:max]), len(v))
}

// parseAddrList parses the annotation: at most one address per family.
func parseAddrList(raw string) ([]netip.Addr, error) {
	var ips []netip.Addr
	for _, part := range strings.Split(raw, ",") {
		part = strings.TrimSpace(part)
		a, err := netip.ParseAddr(part)
		if err != nil {
			return nil, fmt.Errorf("%s is not an IP address", quoteShort(part))
		}
		if problem := address.VIPProblem(a); problem != "" {
			return nil, fmt.Errorf("%s is %s", a, problem)
		}
		for _, b := range ips {
			if b.Is4() == a.Is4() {
				return nil, fmt.Errorf("%s and %s are of the same family; give at most one IPv4 and one IPv6 address", b, a)
			}
		}
		ips = append(ips, a)
	}
	return ips, nil
}

type portKey struct {
	port     int32
	protocol corev1.Protocol
}

// portConflict reports whether c uses a port+protocol that a Service
// already accepted on one of addrs uses.
func portConflict(c *candidate, addrs []netip.Addr, sharers map[netip.Addr][]*candidate) (warning, bool) {
	mine := map[portKey]bool{}
	for _, p := range c.svc.Spec.Ports {
		mine[portOf(p)] = true
	}
	for _, a := range addrs {
		for _, other := range sharers[a] {
			for _, p := range other.svc.Spec.Ports {
				if k := portOf(p); mine[k] {
					return warning{reasonPortConflict, fmt.Sprintf(
						"port %d/%s on %s is already used by Service %s, which shares the address; this Service gets no address until one of them changes",
						k.port, k.protocol, a, other.name)}, true
				}
			}
		}
	}
	return warning{}, false
}

func portOf(p corev1.ServicePort) portKey {
	k := portKey{port: p.Port, protocol: p.Protocol}
	if k.protocol == "" {
		k.protocol = corev1.ProtocolTCP // the API's default
	}
	return k
}

// readyNodes maps each Service to the nodes with a ready endpoint of it.
func readyNodes(eps []*discoveryv1.EndpointSlice) map[types.NamespacedName]map[string]bool {
	out := map[types.NamespacedName]map[string]bool{}
	for _, es := range eps {
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		name := types.NamespacedName{Namespace: es.Namespace, Name: svc}
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		for _, e := range es.Endpoints {
			// A nil ready condition means unknown, which consumers are
			// told to treat as ready.
			if e.NodeName == nil || *e.NodeName == "" || (e.Conditions.Ready != nil && !*e.Conditions.Ready) {
				continue
			}
			out[name][*e.NodeName] = true
		}
	}
	return out
}

// intersect narrows candidates (nil: any node) to the nodes in set; the
// result is sorted and non-nil.
func intersect(candidates []string, set map[string]bool) []string {
	out := []string{}
	if candidates == nil {
		for n := range set {
			out = append(out, n)
		}
		slices.Sort(out)
		return out
	}
	for _, n := range candidates {
		if set[n] {
			out = append(out, n)
		}
	}
	return out
}
