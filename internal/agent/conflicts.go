package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vipd/vipd/internal/backoff"
	"github.com/vipd/vipd/internal/conflict"
	"github.com/vipd/vipd/internal/election"
)

// Node Lease annotations about address conflicts.
const (
	// AnnotationMAC is the MAC of the agent's VIP interface: the others do
	// not count its answers for a VIP as a conflict.
	AnnotationMAC = "vipd.io/mac"
	// AnnotationConflicts lists the addresses a foreign host answers for,
	// as a JSON object from address to what was seen.
	AnnotationConflicts = "vipd.io/conflicts"
)

// probeWait is how long a probe for a newly assigned address waits for an
// answer: two probes, half of it apart. Failovers are never probed.
const probeWait = 60 * time.Millisecond

// conflictBackoff spaces out new probes of an address a foreign host
// answered for: it may have been a host that goes away.
func conflictBackoff() backoff.Policy {
	return backoff.Policy{Base: 30 * time.Second, Max: 5 * time.Minute}
}

// conflicts is the reconciler's bookkeeping of address conflicts.
type conflicts struct {
	det     *conflict.Detector
	results chan map[netip.Addr]net.HardwareAddr
	foreign chan conflict.Answer
	// ours are vipd's nodes' MACs, read by the detector's goroutines.
	ours atomic.Pointer[map[string]bool]
	// probing: a probe is out; cleared: probed, nobody else answered.
	probing, cleared map[netip.Addr]bool
	// found are the addresses a foreign host answered for, until when
	// they are not probed again.
	found map[netip.Addr]foundConflict
	tries backoff.Tracker[netip.Addr]
	total prometheus.Counter
	// seen are the foreign answers for held VIPs, last reported when.
	seen map[netip.Addr]time.Time
	// scratch are screen's sets, emptied and filled again by every pass
	// rather than made anew: a pass makes them as large as what this
	// node holds.
	scratch struct{ reported, fresh, held, present, kept map[netip.Addr]bool }
}

// reset empties *m for reuse, making it on first use.
func reset(m *map[netip.Addr]bool) map[netip.Addr]bool {
	if *m == nil {
		*m = map[netip.Addr]bool{}
	}
	clear(*m)
	return *m
}

type foundConflict struct {
	mac   string
	until time.Time
	held  bool // seen while held, rather than by a probe
}

// newConflicts opens the detector on the interface; nil when it cannot be
// (then nothing is probed, and the log says why).
func (r *reconciler) newConflicts(reg prometheus.Registerer) *conflicts {
	c := &conflicts{results: make(chan map[netip.Addr]net.HardwareAddr, 16), foreign: make(chan conflict.Answer, 64),
		probing: map[netip.Addr]bool{}, cleared: map[netip.Addr]bool{}, found: map[netip.Addr]foundConflict{},
		seen: map[netip.Addr]time.Time{}, tries: backoff.Tracker[netip.Addr]{Policy: conflictBackoff()}}
	c.total = prometheus.NewCounter(prometheus.CounterOpts{Name: "vipd_address_conflicts_total",
		Help: "Times a host that is not a vipd node answered for a VIP: found by a probe before the VIP was added, or seen while it was held."})
	reg.MustRegister(c.total)
	empty := map[string]bool{}
	c.ours.Store(&empty)
	r.conflicts = c
	r.openDetector()
	return c
}

// openDetector (re)opens the detector on the interface as it is now.
func (r *reconciler) openDetector() {
	c := r.conflicts
	if c.det != nil {
		_ = c.det.Close()
		c.det = nil
	}
	det, err := conflict.New(r.links.main.Net(), func(mac net.HardwareAddr) bool { return (*c.ours.Load())[mac.String()] },
		func(a conflict.Answer) {
			select {
			case c.foreign <- a:
			default:
			}
		}, r.log)
	if err != nil {
		r.log.Error("cannot watch for address conflicts: new VIPs are added without probing", "err", err)
		return
	}
	c.det = det
}

func (c *conflicts) close() {
	if c != nil && c.det != nil {
		_ = c.det.Close()
	}
}

// screen takes out of p the VIPs that may not be added yet: those a
// foreign host answered for, and those assigned for the first time (a new
// claim, or a new address in a held claim), which are probed first. A
// failover is never probed, so it stays as fast as before.
//
// It runs before the reconciler records what it saw: r.last and
// r.lastBound are still the previous round's.
func (r *reconciler) screen(p plan, leading []*binding, now time.Time) plan {
	c := r.conflicts
	if c == nil || c.det == nil {
		return p
	}
	main := r.links.main
	macs := map[string]bool{main.HardwareAddr.String(): true}
	for _, m := range r.el.NodeAnnotation(AnnotationMAC) {
		macs[m] = true
	}
	c.ours.Store(&macs)
	reported := reset(&c.scratch.reported)
	for _, v := range r.el.NodeAnnotation(AnnotationConflicts) {
		for a := range parseConflicts(v) {
			reported[a] = true
		}
	}
	fresh := reset(&c.scratch.fresh)
	// A VIP this node no longer holds is probed again when it comes back.
	// Looked at from the held side: a node holds a tenth of a thousand.
	held := reset(&c.scratch.held)
	for _, b := range leading {
		for _, v := range b.vips {
			held[v] = true
		}
	}
	for v := range c.cleared {
		if !held[v] {
			delete(c.cleared, v)
		}
	}
	for _, b := range leading {
		isNew := r.el.Report(b.contest).Reason == election.TookNew
		heldBefore := r.last[b.contest].Leading
		for _, v := range b.vips {
			added := heldBefore && !slices.Contains(r.lastBinding(b.contest).vips, v)
			if isNew || added || reported[v] {
				fresh[v] = true
			}
		}
	}
	var probe []netip.Addr
	present := reset(&c.scratch.present)
	for _, v := range r.present {
		present[v] = true
	}
	keep := func(v netip.Addr) bool {
		if f, ok := c.found[v]; ok {
			if now.Before(f.until) {
				return false
			}
			delete(c.found, v)
			delete(c.cleared, v)
		}
		// Only the main interface is probed and watched: VIPs on the
		// others are added unprobed.
		if present[v] || c.cleared[v] || !fresh[v] || p.on[v] != main.Name {
			return true
		}
		if !c.probing[v] {
			c.probing[v] = true
			probe = append(probe, v)
		}
		return false
	}
	// In place: the plan is the pass's own, made for this call.
	p.present = slices.DeleteFunc(p.present, func(v netip.Addr) bool { return !keep(v) })
	kept := reset(&c.scratch.kept)
	for _, v := range p.present {
		kept[v] = true
	}
	p.announce = slices.DeleteFunc(p.announce, func(v netip.Addr) bool { return !kept[v] })
	if len(probe) > 0 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			got, err := c.det.Probe(ctx, probe, probeWait)
			if err != nil {
				r.log.Warn("probing new VIPs for conflicts", "vip", probe, "err", err)
			}
			res := map[netip.Addr]net.HardwareAddr{}
			for _, v := range probe {
				res[v] = got[v]
			}
			c.results <- res
		}()
	}
	return p
}

// watchHeld has the detector watch the VIPs on the main interface now.
func (c *conflicts) watchHeld(present []netip.Addr, p plan, main string) {
	if c == nil || c.det == nil {
		return
	}
	var on []netip.Addr
	for _, v := range present {
		if p.on[v] == main {
			on = append(on, v)
		}
	}
	c.det.SetHeld(on)
}

// probed records the outcome of a probe: an address nobody else answered
// for may be added; one a foreign host answered for is not, and is said
// so (Event, metric, node Lease for vipd status) until it is probed again.
func (r *reconciler) probed(res map[netip.Addr]net.HardwareAddr, now time.Time) {
	c := r.conflicts
	for v, mac := range res {
		delete(c.probing, v)
		if mac == nil {
			c.cleared[v] = true
			c.tries.Forget(v)
			continue
		}
		d := c.tries.Failed(v)
		c.found[v] = foundConflict{mac: mac.String(), until: now.Add(d)}
		c.total.Inc()
		reason := fmt.Sprintf("address %s is in use by another host (MAC %s answered a probe); not taking it", v, mac)
		r.log.Warn("address conflict: not adding VIP", "vip", v, "mac", mac.String(), "retry_in", d.Round(time.Second))
		r.warnConflict(v, reason)
	}
}

// foreignAnswer reports a host that is not a vipd node answering for a
// VIP held here: at most once a minute per address.
func (r *reconciler) foreignAnswer(a conflict.Answer) {
	c := r.conflicts
	if !slices.Contains(r.present, a.IP) || a.At.Sub(c.seen[a.IP]) < time.Minute {
		return
	}
	c.seen[a.IP] = a.At
	c.total.Inc()
	c.found[a.IP] = foundConflict{mac: a.MAC.String(), until: a.At, held: true}
	reason := fmt.Sprintf("address %s held by node %s is also claimed by another host (MAC %s)", a.IP, r.obs.node, a.MAC)
	r.log.Warn("address conflict: another host answers for a VIP held here", "vip", a.IP, "mac", a.MAC.String())
	r.warnConflict(a.IP, reason)
}

// warnConflict records a Warning Event about vip: on its Services, or on
// the control-plane Lease.
func (r *reconciler) warnConflict(vip netip.Addr, reason string) {
	for _, b := range r.bindings {
		if !slices.Contains(b.vips, vip) {
			continue
		}
		if b.cpVIP(vip) && r.obs.events != nil {
			r.obs.events.warn(reasonConflict, reason)
		}
		if r.svc != nil && len(b.servicesOf(vip)) > 0 {
			r.svc.Reject(vip, reason)
		}
	}
}

// reasonConflict is the Event reason of an address conflict.
const reasonConflict = "AddressConflict"

// conflictAnnotation is the value of AnnotationConflicts: the conflicts
// found within the last backoff, or seen while held in the last minute.
func (r *reconciler) conflictAnnotation(now time.Time) string {
	c := r.conflicts
	if c == nil {
		return ""
	}
	m := map[string]string{}
	for v, f := range c.found {
		if now.Before(f.until) || (f.held && now.Sub(f.until) < time.Minute) {
			m[v.String()] = "answered by " + f.mac
		}
	}
	if len(m) == 0 {
		return ""
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// parseConflicts reads AnnotationConflicts; what does not parse lists no
// conflict.
func parseConflicts(v string) map[netip.Addr]string {
	if v == "" {
		return nil
	}
	var m map[string]string
	if json.Unmarshal([]byte(v), &m) != nil {
		return nil
	}
	out := map[netip.Addr]string{}
	for k, why := range m {
		if a, err := netip.ParseAddr(k); err == nil {
			out[a] = why
		}
	}
	return out
}

// ParseConflicts reads a node Lease's AnnotationConflicts: address → what
// was seen.
func ParseConflicts(v string) map[netip.Addr]string { return maps.Clone(parseConflicts(v)) }
