package services

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
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
	// allocFrom names the pool alloc comes from, for the Event.
	allocFrom string
}

// plan is the outcome of one computation over the whole API state.
type plan struct {
	addresses []Address
	services  map[types.NamespacedName]*servicePlan
	// poolProblems are about pool ConfigMap keys vipd cannot use.
	poolProblems []string
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
	parts := []string{string(s.UID), string(s.Spec.Type), class, s.Spec.LoadBalancerIP}
	for _, k := range sourceAnnotations {
		parts = append(parts, k+"="+s.Annotations[k])
	}
	return strings.Join(parts, "\x00")
}

// sourceAnnotations are the annotations that decide a Service's addresses
// and where they live.
var sourceAnnotations = []string{AnnotationLoadBalancerIPs, AnnotationPoolAllocated, AnnotationMetalLBIPs, AnnotationMetalLBIPsOld,
	AnnotationAddressPool, AnnotationMetalLBPool, AnnotationMetalLBPoolOld, AnnotationMetalLBSharedIP, AnnotationMetalLBSharedIPOld,
	AnnotationServiceInterface}

// candidate is one served Service during the computation.
type candidate struct {
	svc  *corev1.Service
	name types.NamespacedName
	sp   *servicePlan
	req  request
	// pool is the pool the Service names, once looked up.
	pool *addrPool
	// where says where each of its addresses may live.
	where map[netip.Addr]where
}

// where is where an address may live: the interface it goes on ("" for
// the agent's default) and the named pool whose node selector applies.
type where struct {
	iface, pool, selector string
}

// whereOf decides where a Service's address lives: the settings of the
// pool the Service names, else of the pool that holds the address; the
// Service's own interface annotation wins over the pool's.
func (c *candidate) whereOf(ps poolSet, a netip.Addr) where {
	pl := c.pool
	if pl == nil {
		pl = ps.placement(c.svc.Namespace, a)
	}
	var w where
	if pl != nil {
		w = where{iface: pl.iface, pool: pl.name, selector: pl.selector}
	}
	if c.req.iface != "" {
		w.iface = c.req.iface
	}
	return w
}

// computePlan decides, from the Services, EndpointSlices and pool that the
// informers hold, which addresses exist, who shares them and where they may
// live. It is a pure function of its inputs, so every agent that sees the
// same API state reaches the same plan — including the same pool
// allocations.
func computePlan(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice, p pool, f filter) plan {
	ps := readPools(p)
	var cands []*candidate
	for _, s := range svcs {
		if !f.serves(s) {
			continue
		}
		c := &candidate{svc: s, name: types.NamespacedName{Namespace: s.Namespace, Name: s.Name},
			sp: &servicePlan{uid: s.UID, source: sourceOf(s)}, req: readRequest(s), where: map[netip.Addr]where{}}
		c.check(ps)
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
		for _, a := range c.req.ips {
			used[a] = true
		}
	}

	// Accept the explicit addresses, oldest Service first.
	sharers := map[netip.Addr][]*candidate{}
	for _, c := range cands {
		if len(c.req.ips) == 0 || c.req.problem != nil {
			continue
		}
		for _, a := range c.req.ips {
			c.where[a] = c.whereOf(ps, a)
		}
		w, conflict := shareProblem(c, c.req.ips, sharers)
		taken := slices.ContainsFunc(c.req.ips, func(a netip.Addr) bool { return len(sharers[a]) > 0 })
		if c.req.fromPool && taken && (conflict || c.req.sharingKey == "") {
			// Two allocations raced onto one address (agents that saw
			// different Services); the older Service keeps it. (A pool
			// puts Services with one sharing key on one address on
			// purpose.)
			c.req.needPool = true
			continue
		}
		if conflict {
			c.sp.warnings = append(c.sp.warnings, w)
			continue
		}
		for _, a := range c.req.ips {
			sharers[a] = append(sharers[a], c)
		}
		c.sp.addrs = c.req.ips
	}

	// Allocate from the pools, oldest Service first: an address in use only
	// by Services with the Service's sharing key, if it has one, else never
	// an address in use.
	pending := map[netip.Addr][]*candidate{}
	for _, c := range cands {
		if !c.req.needPool || c.req.problem != nil {
			continue
		}
		usable := func(a netip.Addr) bool {
			if !used[a] {
				return true
			}
			others := append(slices.Clone(sharers[a]), pending[a]...)
			if c.req.sharingKey == "" || len(others) == 0 {
				return false
			}
			c.where[a] = c.whereOf(ps, a)
			_, conflict := shareProblem(c, []netip.Addr{a}, map[netip.Addr][]*candidate{a: others})
			return !conflict
		}
		pools, name := ps.defaults(c.svc.Namespace), ""
		if c.pool != nil {
			pools, name = []*addrPool{c.pool}, c.pool.name
		}
		ips, from, w, note := allocate(c.svc, p, pools, name, usable)
		if note != nil {
			c.sp.warnings = append(c.sp.warnings, *note)
		}
		if w != nil {
			c.sp.warnings = append(c.sp.warnings, *w)
			c.sp.write, c.sp.writeRV = c.req.fromPool, c.svc.ResourceVersion
			continue
		}
		for _, a := range ips {
			used[a] = true
			c.where[a] = c.whereOf(ps, a)
			pending[a] = append(pending[a], c)
		}
		c.sp.write, c.sp.alloc, c.sp.writeRV, c.sp.allocFrom = true, ips, c.svc.ResourceVersion, from.describe()
	}

	pl := plan{services: make(map[types.NamespacedName]*servicePlan, len(cands)), poolProblems: ps.problems}
	for _, c := range cands {
		if c.req.problem != nil {
			c.sp.warnings = append([]warning{*c.req.problem}, c.sp.warnings...)
		}
		pl.services[c.name] = c.sp
	}
	nodes := readyNodes(eps)
	for ip, cs := range sharers {
		w := cs[0].where[ip]
		a := Address{IP: ip, Interface: w.iface, Pool: w.pool, NodeSelector: w.selector}
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

// check looks up the pool the Service names and checks its explicit
// addresses against it; a problem keeps the Service from any address.
func (c *candidate) check(ps poolSet) {
	if c.req.problem != nil || c.req.pool == "" {
		return
	}
	pl, w := ps.lookup(c.req.pool, c.svc.Namespace)
	if w != nil {
		c.req.problem = w
		return
	}
	c.pool = pl
	for _, a := range c.req.ips {
		if !pl.contains(a) {
			c.req.problem = &warning{reasonNotInPool, fmt.Sprintf(
				"%s is not in pool %s (ConfigMap %s), which the Service names; it gets no address until the address or the pool changes", a, pl.name, ps.src.name)}
			return
		}
	}
}

func compareNames(a, b types.NamespacedName) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
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
