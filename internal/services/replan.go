package services

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// Replanning follows what changed, not the number of Services.
//
// computePlan is the one definition of the plan: a pure function of the
// Services, EndpointSlices and pool. Its decisions couple Services only
// through the addresses they ask for (sharing, port conflicts, two
// allocations that raced onto one address) and through the pool (the
// first free address, in age order). So when some Services change, the
// controller recomputes only the Services that share an address, directly
// or through each other, with one of them, old or new — usually just the
// changed Service — and splices the result into the plan. It computes the
// whole plan again when the pool comes into it: the pool ConfigMap changed,
// a changed Service takes its address from the pool, or the addresses in
// use changed while some Service waits for an allocation.
//
// Events are collected for planDelay before a replan, so that a burst (a
// thousand Services created by a deploy) costs a few replans, each of the
// Services that arrived meanwhile; and updates that change nothing the
// plan reads (the status and vipHost writes that every placement causes)
// cost none.

// planDelay is how long Service events are collected before replanning.
// It adds at most this much to the time a new Service's address takes to
// be held.
const planDelay = 50 * time.Millisecond

// replan brings the plan up to date with what changed since the last
// one: the Services sharing addresses with the changed ones, or everything
// (replan.go says when).
func (c *Controller) replan() {
	d := c.takeDirty()
	p := c.currentPool()
	c.mu.Lock()
	first := !c.planned
	c.mu.Unlock()

	var group map[types.NamespacedName]bool // nil: all
	var svcs []*corev1.Service
	var sub plan
	ok := false
	if !d.full && !first {
		if len(d.services) == 0 {
			return
		}
		group, svcs, sub, ok = c.partialPlan(d.services, p)
	}
	if !ok {
		var err error
		if svcs, err = c.services.List(labels.Everything()); err != nil {
			c.log.Error("listing Services from the cache", "err", err)
			return
		}
		eps, err := c.slices.List(labels.Everything())
		if err != nil {
			c.log.Error("listing EndpointSlices from the cache", "err", err)
			return
		}
		group, sub = nil, computePlan(svcs, eps, p, c.filter)
	}

	c.mu.Lock()
	var prev map[types.NamespacedName]*servicePlan // the plans replaced
	var changed bool
	if group == nil {
		if !slices.Equal(c.plan.poolProblems, sub.poolProblems) {
			// Said once per change of the ConfigMap, not on every recomputation.
			for _, p := range sub.poolProblems {
				c.log.Warn("address pool ConfigMap has a key vipd cannot use", "configmap", c.cfg.PoolNamespace+"/"+c.cfg.PoolConfigMap, "problem", p)
			}
		}
		prev, changed = c.plan.services, first || !equalAddresses(c.plan.addresses, sub.addresses)
		c.plan = sub
	} else {
		prev, changed = c.spliceLocked(group, sub)
	}
	c.planned = true
	c.reindexLocked(group, svcs)
	scope := group
	if scope == nil {
		scope = make(map[types.NamespacedName]bool, len(sub.services)+len(prev))
		for nn := range sub.services {
			scope[nn] = true
		}
		for nn := range prev {
			scope[nn] = true
		}
	}

	// Warn once per problem, not on every recomputation; a problem that
	// goes away and comes back is reported again.
	was := c.warned
	if group == nil {
		c.warned = map[types.UID]map[warning]bool{}
	} else {
		was = map[types.UID]map[warning]bool{}
		for nn := range group {
			if old := prev[nn]; old != nil {
				was[old.uid] = c.warned[old.uid]
				delete(c.warned, old.uid)
			}
		}
	}
	for nn := range scope {
		sp := sub.services[nn]
		if sp == nil {
			continue
		}
		for _, w := range sp.warnings {
			if !was[sp.uid][w] {
				c.pending = append(c.pending, pendingEvent{svc: nn, uid: sp.uid, addrs: sp.addrs, warning: w})
			}
			if c.warned[sp.uid] == nil {
				c.warned[sp.uid] = map[warning]bool{}
			}
			c.warned[sp.uid][w] = true
		}
	}
	c.flushLocked()
	for ip := range c.rejected {
		if len(c.plan.servicesAt(ip)) == 0 {
			delete(c.rejected, ip)
		}
	}
	var todo []item
	for nn := range scope {
		sp, old := sub.services[nn], prev[nn]
		if sp == nil {
			delete(c.assigned, nn)
			continue
		}
		if sp.write {
			todo = append(todo, item{kind: kindAllocate, svc: nn})
		}
		if old == nil || old.source != sp.source || !slices.Equal(old.addrs, sp.addrs) {
			todo = append(todo, item{kind: kindStatus, svc: nn})
		}
	}
	c.mu.Unlock()

	if changed {
		select {
		case c.changes <- struct{}{}:
		default:
		}
	}
	for _, it := range todo {
		c.queue.Add(it)
	}
}

// sliceServiceIndex indexes EndpointSlices by the Service they belong to.
const sliceServiceIndex = "service"

func sliceService(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || es.Labels[discoveryv1.LabelServiceName] == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + es.Labels[discoveryv1.LabelServiceName]}, nil
}

// planIndex is what the incremental replan needs to know of the plan:
// which addresses each served Service asks for, and who asks for each.
type planIndex struct {
	asks   map[types.NamespacedName][]netip.Addr
	byAddr map[netip.Addr][]types.NamespacedName
	// poolUsers are the served Services that wait for an address from the
	// pool: they ask for none, or their plan has an allocation to write.
	poolUsers map[types.NamespacedName]bool
	// keyedUsers are the poolUsers with a sharing key (allow-shared-ip):
	// they may take an address in use, if its Services' keys, interface
	// and ports agree, so any change of a Service that asks for an
	// address may change what they get.
	keyedUsers map[types.NamespacedName]bool
}

func newPlanIndex() planIndex {
	return planIndex{asks: map[types.NamespacedName][]netip.Addr{}, byAddr: map[netip.Addr][]types.NamespacedName{},
		poolUsers: map[types.NamespacedName]bool{}, keyedUsers: map[types.NamespacedName]bool{}}
}

// set records what nn asks for now (nil: nothing, or not served), and
// whether it waits for a pool address, with a sharing key or not.
func (x *planIndex) set(nn types.NamespacedName, asks []netip.Addr, poolUser, keyed bool) {
	for _, a := range x.asks[nn] {
		x.byAddr[a] = slices.DeleteFunc(x.byAddr[a], func(o types.NamespacedName) bool { return o == nn })
		if len(x.byAddr[a]) == 0 {
			delete(x.byAddr, a)
		}
	}
	delete(x.asks, nn)
	delete(x.poolUsers, nn)
	delete(x.keyedUsers, nn)
	if len(asks) > 0 {
		x.asks[nn] = asks
		for _, a := range asks {
			x.byAddr[a] = append(x.byAddr[a], nn)
		}
	}
	if poolUser {
		x.poolUsers[nn] = true
		if keyed {
			x.keyedUsers[nn] = true
		}
	}
}

// asked reads what a served Service asks for, for the index: the addresses
// named explicitly, and whether it waits for one from the pool. A Service
// whose pool allocation was written asks for that address like any other;
// should it lose it to an older one (two allocations raced), its plan has
// a write, and the whole plan is computed again.
func asked(s *corev1.Service) (ips []netip.Addr, poolUser bool, sharingKey string) {
	r := readRequest(s)
	return r.ips, r.needPool, r.sharingKey
}

// planInputsEqual reports whether two versions of a Service are the same
// for computePlan: everything but the status, the resourceVersion and the
// vipHost annotation, which vipd writes itself on every placement.
func planInputsEqual(a, b *corev1.Service) bool {
	if a.UID != b.UID || !a.CreationTimestamp.Equal(&b.CreationTimestamp) || !maps.Equal(a.Labels, b.Labels) {
		return false
	}
	if len(a.Annotations) != len(b.Annotations) && (len(a.Annotations) == 0 || len(b.Annotations) == 0) {
		return false
	}
	for k, v := range a.Annotations {
		if w, ok := b.Annotations[k]; k != AnnotationVIPHost && (!ok || v != w) {
			return false
		}
	}
	for k := range b.Annotations {
		if _, ok := a.Annotations[k]; k != AnnotationVIPHost && !ok {
			return false
		}
	}
	return equality.Semantic.DeepEqual(a.Spec, b.Spec)
}

// dirtyState collects what changed since the last replan.
type dirtyState struct {
	full     bool
	services map[types.NamespacedName]bool
}

// markDirty records a changed Service (or, with full, a change that may
// concern every Service) and schedules a replan.
func (c *Controller) markDirty(nn types.NamespacedName, full bool) {
	c.dirtyMu.Lock()
	if full {
		c.dirty.full = true
	} else {
		if c.dirty.services == nil {
			c.dirty.services = map[types.NamespacedName]bool{}
		}
		c.dirty.services[nn] = true
	}
	c.dirtyMu.Unlock()
	c.queue.AddAfter(item{kind: kindPlan}, planDelay)
}

func (c *Controller) takeDirty() dirtyState {
	c.dirtyMu.Lock()
	defer c.dirtyMu.Unlock()
	d := c.dirty
	c.dirty = dirtyState{}
	return d
}

// pendingWrite reports whether the plan has an allocation write for nn:
// it is conditional on the Service's resourceVersion, so any update of the
// Service needs a replan.
func (c *Controller) pendingWrite(nn types.NamespacedName) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	sp := c.plan.services[nn]
	return sp != nil && sp.write
}

// servedService returns the Service from the cache if vipd serves it.
func (c *Controller) servedService(nn types.NamespacedName) *corev1.Service {
	s, err := c.services.Services(nn.Namespace).Get(nn.Name)
	if err != nil || !c.filter.serves(s) {
		return nil
	}
	return s
}

// partialPlan recomputes the Services sharing an address with the dirty
// ones. It returns the Services recomputed (group), the served ones among
// them as read from the cache, and their plan; or ok false when the pool
// comes into it and the whole plan must be recomputed.
func (c *Controller) partialPlan(dirty map[types.NamespacedName]bool, p pool) (group map[types.NamespacedName]bool, svcs []*corev1.Service, sub plan, ok bool) {
	c.mu.Lock()
	x := &c.index
	// The new requests of the dirty Services, and whether the addresses in
	// use change.
	fresh := map[types.NamespacedName][]netip.Addr{}
	usedChanged, anyAsks := false, false
	for nn := range dirty {
		var ips []netip.Addr
		poolUser := false
		if s := c.servedService(nn); s != nil {
			ips, poolUser, _ = asked(s)
		}
		if poolUser || x.poolUsers[nn] {
			c.mu.Unlock()
			return nil, nil, plan{}, false
		}
		fresh[nn] = ips
		if !slices.Equal(ips, x.asks[nn]) {
			usedChanged = true
		}
		anyAsks = anyAsks || len(ips) > 0 || len(x.asks[nn]) > 0
	}
	if (usedChanged || anyAsks && len(x.keyedUsers) > 0) && len(x.poolUsers) > 0 && p.data != nil {
		c.mu.Unlock()
		return nil, nil, plan{}, false // a waiting allocation may change
	}
	// The group: every Service linked to a dirty one through addresses,
	// old or new.
	group = map[types.NamespacedName]bool{}
	var todo []types.NamespacedName
	for nn := range dirty {
		group[nn] = true
		todo = append(todo, nn)
	}
	for len(todo) > 0 {
		nn := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		addrs := slices.Concat(x.asks[nn], fresh[nn])
		for _, a := range addrs {
			others := x.byAddr[a]
			for o := range fresh {
				if slices.Contains(fresh[o], a) {
					others = append(slices.Clone(others), o)
				}
			}
			for _, o := range others {
				if !group[o] {
					group[o] = true
					todo = append(todo, o)
				}
			}
		}
	}
	c.mu.Unlock()

	var eps []*discoveryv1.EndpointSlice
	for nn := range group {
		s := c.servedService(nn)
		if s == nil {
			continue
		}
		svcs = append(svcs, s)
		if s.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
			eps = append(eps, c.slicesOf(nn)...)
		}
	}
	sub = computePlan(svcs, eps, p, c.filter)
	for _, sp := range sub.services {
		if sp.write {
			return nil, nil, plan{}, false // an allocation race: the pool decides
		}
	}
	return group, svcs, sub, true
}

// slicesOf returns the EndpointSlices of one Service from the cache.
func (c *Controller) slicesOf(nn types.NamespacedName) []*discoveryv1.EndpointSlice {
	if c.sliceIndex == nil {
		return nil
	}
	objs, err := c.sliceIndex.ByIndex(sliceServiceIndex, nn.Namespace+"/"+nn.Name)
	if err != nil {
		return nil
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, es)
		}
	}
	return out
}

// spliceLocked replaces the plan of the Services in group, and of the
// addresses they share, with sub. It returns the Services' plans it
// replaced and whether the addresses changed. The services map and the
// addresses slice are changed in place: both are read under c.mu only
// (Addresses copies, ReadAddresses lends), and a new list of every address
// at each change of one was a good part of what an agent allocated while
// Services arrived.
func (c *Controller) spliceLocked(group map[types.NamespacedName]bool, sub plan) (replaced map[types.NamespacedName]*servicePlan, changed bool) {
	old := c.plan
	replaced = make(map[types.NamespacedName]*servicePlan, len(group))
	for nn := range group {
		if sp := old.services[nn]; sp != nil {
			replaced[nn] = sp
		}
		delete(old.services, nn)
	}
	maps.Copy(old.services, sub.services)

	// The old addresses that a Service of the group shares are among those
	// the group asked for (the index is still the old plan's); the others
	// stay, and the new ones go in among them in IP order.
	var drop []int
	for nn := range group {
		for _, a := range c.index.asks[nn] {
			i, ok := slices.BinarySearchFunc(old.addresses, a, func(x Address, ip netip.Addr) int { return x.IP.Compare(ip) })
			if ok && !slices.Contains(drop, i) && slices.ContainsFunc(old.addresses[i].Services, func(nn types.NamespacedName) bool { return group[nn] }) {
				drop = append(drop, i)
			}
		}
	}
	slices.Sort(drop)
	gone := make([]Address, len(drop))
	for k, i := range drop {
		gone[k] = old.addresses[i]
	}
	if equalAddresses(gone, sub.addresses) {
		// Put back, they would make the same list: most replans (a
		// status written, an endpoint moved) change no address.
		return replaced, false
	}
	addrs := old.addresses
	kept, k := 0, 0
	for n := range addrs {
		if k < len(drop) && drop[k] == n {
			k++
			continue
		}
		addrs[kept] = addrs[n]
		kept++
	}
	clear(addrs[kept:]) // no longer referenced from the spare capacity
	addrs = addrs[:kept]
	// The group's addresses are its own: none of them is among those
	// kept. Both lists are sorted: merged from the back, in place, each
	// address moves once however many come.
	n := len(sub.addresses)
	addrs = slices.Grow(addrs, n)[:kept+n]
	for i, j, k := kept-1, n-1, kept+n-1; j >= 0; k-- {
		if i >= 0 && addrs[i].IP.Compare(sub.addresses[j].IP) > 0 {
			addrs[k] = addrs[i]
			i--
		} else {
			addrs[k] = sub.addresses[j]
			j--
		}
	}
	c.plan.addresses = addrs
	return replaced, true
}

// reindexLocked brings the index up to date from the Services a plan was
// computed from: those of group (nil: every Service), of which svcs are the
// served ones.
func (c *Controller) reindexLocked(group map[types.NamespacedName]bool, svcs []*corev1.Service) {
	if group == nil {
		c.index = newPlanIndex()
	} else {
		for nn := range group {
			c.index.set(nn, nil, false, false)
		}
	}
	for _, s := range svcs {
		if c.filter.serves(s) {
			nn := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
			ips, poolUser, key := asked(s)
			// A pending allocation (or its removal, after a lost race)
			// depends on every address in use, as a waiting one does.
			if sp := c.plan.services[nn]; sp != nil && sp.write {
				poolUser = true
			}
			c.index.set(nn, ips, poolUser, key != "")
		}
	}
}

// sliceOwner returns the Service an EndpointSlice event is about.
func sliceOwner(obj any) (types.NamespacedName, bool) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || es.Labels[discoveryv1.LabelServiceName] == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: es.Namespace, Name: es.Labels[discoveryv1.LabelServiceName]}, true
}

// trimSlice keeps of an EndpointSlice what vipd reads — its Service, and
// which nodes have a ready endpoint — so that the cache of every slice in
// the cluster stays small. vipd never writes slices.
func trimSlice(es *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	out := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{
		Name: es.Name, Namespace: es.Namespace, UID: es.UID, ResourceVersion: es.ResourceVersion,
	}}
	if svc := es.Labels[discoveryv1.LabelServiceName]; svc != "" {
		out.Labels = map[string]string{discoveryv1.LabelServiceName: svc}
	}
	for _, ep := range es.Endpoints {
		if ep.NodeName == nil {
			continue
		}
		out.Endpoints = append(out.Endpoints, discoveryv1.Endpoint{NodeName: ep.NodeName,
			Conditions: discoveryv1.EndpointConditions{Ready: ep.Conditions.Ready}})
	}
	return out
}
