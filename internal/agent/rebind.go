package agent

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vipd/vipd/internal/address"
	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/services"
)

// Making the bindings from the Services' addresses (setBindings): which
// contest carries each VIP, which addresses are refused because a node
// owns them, and what this node lacks; then handing the contests to the
// election.

// AnnotationNodeAddrs on an agent's node Lease lists its node's own
// addresses, comma-separated.
const AnnotationNodeAddrs = "vipd.io/node-addresses"

// nodeAddrList is this node's own global addresses, for AnnotationNodeAddrs.
func nodeAddrList(ns *address.Namespace) (string, error) {
	own, err := ns.NodeAddrs()
	if err != nil {
		return "", err
	}
	var list []string
	for a := range own {
		if a.IsGlobalUnicast() {
			list = append(list, a.String())
		}
	}
	slices.Sort(list)
	return strings.Join(list, ","), nil
}

// setBindings recomputes which contest carries which VIP, refusing service
// addresses that belong to a node — this one, or one whose agent published
// its addresses: holding such an address would take it from that node —
// and hands the contests to the election.
func (r *reconciler) setBindings(cfg config.Config) {
	r.synced = true
	r.peerAddrs = r.el.NodeAnnotation(AnnotationNodeAddrs)
	owner := map[netip.Addr]string{}
	for node, list := range r.peerAddrs {
		for _, s := range strings.Split(list, ",") {
			if s == "" {
				continue
			}
			a, err := netip.ParseAddr(s)
			if err != nil {
				if r.badAddrs[node] != list {
					r.log.Warn("ignoring an address another agent published that does not parse",
						"peer", node, "annotation", AnnotationNodeAddrs, "value", s)
					r.badAddrs[node] = list
				}
				continue
			}
			owner[a] = "node " + node
		}
	}
	// The Services' addresses are read in place (services.ReadAddresses):
	// copying a thousand addresses on every change of one was the largest
	// part of what this cost. Nothing in here may call the controller.
	read := func(f func([]services.Address)) { f(nil) }
	if r.svc != nil {
		read = r.svc.ReadAddresses
		// Read before the addresses, which may appear meanwhile (at most
		// once a second: nodeAddrs keeps what it read).
		for a, ifname := range r.nodeAddrs(time.Now()) {
			// Named, not "this node": the Event about it is cluster-wide.
			owner[a] = "node " + cfg.NodeName + " (" + ifname + ")"
		}
	}
	type refusal struct {
		addr   services.Address
		reason string
	}
	var refused []refusal
	var bs []binding
	read(func(addrs []services.Address) {
		// ok is addrs without the refused ones: addrs itself while none
		// is.
		var ok []services.Address
		for i, a := range addrs {
			if who, taken := owner[a.IP]; taken {
				refused = append(refused, refusal{a, fmt.Sprintf("address %s belongs to %s; a VIP must not be a node address", a.IP, who)})
				if ok == nil {
					ok = make([]services.Address, i, len(addrs))
					copy(ok, addrs[:i])
				}
				continue
			}
			if ok != nil {
				ok = append(ok, a)
			}
		}
		if ok == nil {
			ok = addrs
		}
		bs = bindingsFor(r.settings, ok, &r.memo, r.spareFor())
	})
	rejected := make(map[netip.Addr]string, len(refused))
	defer func() { r.rejected = rejected }()
	for _, f := range refused {
		r.svc.Reject(f.addr.IP, f.reason)
		if r.rejected[f.addr.IP] != f.reason {
			r.log.Warn("refusing service address", "vip", f.addr.IP, "service", joinNames(f.addr.Services), "reason", f.reason)
		}
		rejected[f.addr.IP] = f.reason
	}
	if r.place.needsNodes(bs) {
		if r.nodes == nil {
			r.log.Info("watching Nodes: a node selector decides where some VIPs may live")
			r.nodes = r.startNodes()
		}
		if !r.nodes.Synced() {
			// Candidates from a partial list of Nodes would release
			// claims that this node may hold; Synced brings us back.
			return
		}
	}
	var nw nodeLabels
	if r.nodes != nil {
		nw = r.nodes
	}
	r.place.apply(bs, nw)
	// What this node lacks is published before the contests are set, so
	// that it takes none of them in between.
	r.updateLacking(bs)
	var used []string // a few interfaces, named by many bindings
	for _, b := range bs {
		if !slices.Contains(used, b.iface) {
			used = append(used, b.iface)
		}
	}
	r.links.setUsed(used)
	old := r.bound
	r.spareBindings, r.bindings = r.bindings, bs
	// Pointers into bindings, which is replaced, not changed, so that
	// lastBound stays as it was: a thousand bindings are copied no more.
	var bound map[string]*binding
	if r.passedSinceBind && r.spareBound != nil {
		bound = r.spareBound
		clear(bound)
	} else {
		bound = make(map[string]*binding, len(r.bindings))
	}
	r.spareBound, r.passedSinceBind = old, false
	for i := range r.bindings {
		b := &r.bindings[i]
		b.pos = i
		bound[b.contest] = b
		if o := old[b.contest]; o == nil || !sameBinding(*o, *b) {
			r.freshBound[b.contest] = true
		}
	}
	// Published once filled: the election's goroutine reads it
	// (silenced).
	r.bound = bound
	r.boundMu.Lock()
	r.boundNow = bound
	r.boundMu.Unlock()
	r.rebound = true
	// SetContests keeps the values, not the slice: the buffer is reused.
	r.contestBuf = contests(r.contestBuf, r.bindings)
	r.el.SetContests(r.contestBuf)
}

// spareFor returns the buffer for the next bindings: those of two rounds
// ago once a pass has run since the last round, when nothing refers to
// them any more (lastBound is the last round's, the observer was handed
// those, and the election reads boundNow, swapped under boundMu since);
// otherwise none.
func (r *reconciler) spareFor() []binding {
	if !r.passedSinceBind {
		return nil
	}
	return r.spareBindings
}

// nodeAddrs returns this node's own addresses (those vipd did not add),
// read from the kernel at most once per ownAddrsMaxAge, or at once after
// forgetNodeAddrs: setBindings runs on every change of the Services,
// and a dump of the node's addresses each time cost more than the rest of
// it. An error is logged, and leaves no address known.
func (r *reconciler) nodeAddrs(now time.Time) map[netip.Addr]string {
	if r.ownAddrs != nil && now.Sub(r.ownAddrsAt) < ownAddrsMaxAge {
		return r.ownAddrs
	}
	own, err := r.links.ns.NodeAddrs()
	if err != nil {
		r.log.Error("listing this node's addresses", "err", err)
		return nil
	}
	r.ownAddrs, r.ownAddrsAt = own, now
	return own
}

// ownAddrsMaxAge bounds how old the node's addresses nodeAddrs returns
// may be: a Service address that a node address took a moment ago is
// refused at the next change of the Services at least that much later.
const ownAddrsMaxAge = time.Second

// forgetNodeAddrs makes the next nodeAddrs read the kernel again.
func (r *reconciler) forgetNodeAddrs() { r.ownAddrs = nil }

// nodeChanges receives when Node labels change; nil before the watch.
func (r *reconciler) nodeChanges() <-chan struct{} {
	if r.nodes == nil {
		return nil
	}
	return r.nodes.Changes()
}

// updateLacking tells the election which of the interfaces bs need this
// node lacks (missing, or down), so that it holds none of their VIPs and
// the others skip it at once.
func (r *reconciler) updateLacking(bs []binding) {
	lacking := map[string]string{}
	for _, b := range bs {
		if _, done := lacking[b.needs]; b.needs == "" || done {
			continue
		}
		if problem := r.links.problem(b.needs); problem != "" {
			lacking[b.needs] = problem
		}
	}
	if maps.Equal(lacking, r.lacking) {
		return
	}
	for need, why := range lacking {
		if _, was := r.lacking[need]; !was {
			r.log.Warn("not a candidate for the VIPs on an interface this node lacks", "iface", need, "reason", why)
		}
	}
	for need := range r.lacking {
		if _, is := lacking[need]; !is {
			r.log.Info("candidate again for the VIPs on an interface", "iface", need)
		}
	}
	r.lacking = lacking
	r.fullPass = true // every binding that needs one of them
	r.el.SetLacking(lacking)
}
