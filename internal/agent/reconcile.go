package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vipd/vipd/internal/backoff"
	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/heartbeat"
	"github.com/vipd/vipd/internal/nodes"
	"github.com/vipd/vipd/internal/notify"
	"github.com/vipd/vipd/internal/services"
)

// announcer announces, on each interface, the VIPs given for it, and
// nothing on the others (links does, with an announce.Announcer per
// interface).
type announcer interface {
	Set(on map[string][]netip.Addr)
	// Reannounce announces every VIP of the named interface again at once.
	Reannounce(iface string)
}

// arpGuard is the part of guard.Guard the reconciler uses.
type arpGuard interface {
	Set(guarded, answer []netip.Addr) error
	Refresh() error
	RefreshUntil(until time.Time) error
	Close() error
}

// refusalBackoff spaces out the retries of an address the interface
// refused: the cause (IPv6 turned off, a foreign address, ...) rarely
// clears by itself within seconds, and each retry may move the VIP here.
func refusalBackoff() backoff.Policy {
	return backoff.Policy{Base: 30 * time.Second, Max: 5 * time.Minute}
}

type reconciler struct {
	links *links
	ann   announcer
	guard arpGuard // nil: no guard on this node
	el    *election.Elector
	svc   *services.Controller // nil without Services
	hb    *heartbeat.Monitor   // nil without heartbeats
	peers *peers               // says in the beats when this node is not live; nil without heartbeats
	// synced: the contests were set once; peerAddrs are the other nodes'
	// addresses they were set with.
	synced    bool
	peerAddrs map[string]string
	bindings  []binding
	memo      bindingMemo
	preserve  bool
	handovers handovers
	// asking: this node keeps VIPs it lost (preserve) until it sees who
	// holds them now.
	asking bool
	// wake makes the agent reconcile again, at wakeAt.
	wake      chan struct{}
	wakeAt    time.Time
	node      string
	log       *slog.Logger
	metrics   *metrics
	obs       *observer
	last      map[string]election.Status
	lastBound map[string]*binding // the bindings of last
	bound     map[string]*binding // bindings by contest, made with them (into bindings)
	// rejected are the service addresses refused as node addresses, and why.
	rejected map[netip.Addr]string
	// settings and place decide the contests and their candidates; nodes
	// is the Node watch, started (startNodes) once a selector needs it.
	settings   contestSettings
	place      *placer
	nodes      *nodes.Watcher
	startNodes func() *nodes.Watcher
	// lacking are the interfaces this node lacks of those the bindings
	// need, with why, as given to the election.
	lacking map[string]string
	// names is reconcile's buffer for reading the bindings' statuses at
	// once.
	names []string
	// rebound: setBindings made the bindings again since the last pass;
	// freshBound are the contests whose binding it changed or made.
	rebound    bool
	freshBound map[string]bool
	// active are the contests the next pass looks at whatever changed:
	// held, without a holder, or with VIPs in the plan (reconcile).
	active map[string]bool
	// fullPass: the next pass looks at every binding (something that
	// concerns them all changed).
	fullPass bool
	// lookBuf is reconcile's buffer for the bindings it looks at.
	lookBuf []int
	// contestBuf is setBindings' buffer for the contests it hands over.
	contestBuf []election.Contest
	// A pass's buffers for the statuses it reads, the VIPs it serves and
	// the contests it holds; heldSent and holdingSent are what the last
	// pass that saw a change handed to the Services controller and the
	// beats. Most passes change neither: a new list, and a map made from
	// it, per pass were a good part of what a pass allocated.
	seenBuf                 []election.Status
	heldBuf, heldSent       []services.Held
	holdingBuf, holdingSent []string
	// ownAddrs are this node's own addresses as nodeAddrs last read them,
	// at ownAddrsAt; nil: to be read.
	ownAddrs   map[netip.Addr]string
	ownAddrsAt time.Time
	// badAddrs are other agents' AnnotationNodeAddrs that did not parse,
	// as last logged.
	badAddrs map[string]string

	// guarded and answered are what the guard was last set to.
	guarded, answered []netip.Addr
	// present are the VIPs apply last left on the interfaces; linksUp
	// says which interfaces had carrier at their last link report.
	present []netip.Addr
	on      map[netip.Addr]string // the interface of each of present
	linksUp map[string]bool
	// applied is the plan apply last made the node match, and appliedOK
	// whether it did so without an error. A pass whose plan is the same
	// leaves the interfaces, the guard and the announcers alone unless
	// recheck asks to look at them (a resync, a link or address event):
	// while a thousand Services are placed, most passes change nothing
	// on this node, and each look costs netlink dumps and lookups.
	applied   plan
	appliedOK bool
	recheck   bool
	// conflicts probes new VIPs and watches held ones for foreign hosts.
	conflicts *conflicts
	// refused are the contests this node cannot hold now, until when, and
	// why; refusals counts the refusals of each, to space them out.
	refused  map[string]refusal
	refusals backoff.Tracker[string]
	// passed is when reconcile last ran to the end (Unix nanoseconds): the
	// guard is refreshed only while the agent is not stuck.
	passed atomic.Int64
	// refreshEvery is how often the VIPs' lifetimes are renewed
	// (refreshEvery in agent.go), and refreshed when they last were: not
	// on every reconciliation, which with hundreds of VIPs held would cost
	// a netlink write each per Lease event.
	refreshEvery time.Duration
	refreshed    time.Time
	renewals     renewalWatch // warns when a round of renewals is too slow
	// boundNow is bound, for the election's goroutine (silenced), under
	// boundMu: setBindings reuses the bindings and map of two rounds ago
	// (spare), which no reader may still be looking at.
	boundMu  sync.RWMutex
	boundNow map[string]*binding
	// spare are the bindings and map setBindings made two rounds ago,
	// which nothing refers to once a pass has run since the last round
	// (passedSinceBind): the next round makes its own in them. With a
	// thousand Services a new slice and map per round were a fifth of
	// what an agent allocated while placing them.
	spareBindings   []binding
	spareBound      map[string]*binding
	passedSinceBind bool
	// answeringNow is the VIPs this node answers for (announced, or
	// answered by the kernel) after the last pass, for the election's
	// goroutine (silenced).
	answeringNow atomic.Pointer[map[netip.Addr]bool]
}

type refusal struct {
	reason string
	until  time.Time
}

// reconcile makes the node match what the election says now.
//
// It looks at the bindings whose status or binding changed since the last
// pass, and at those that may change without either: held ones (their
// VIPs are in the plan), ones without a holder (a heartbeat may name it;
// preserve keeps a lost IPv4 VIP until one is seen) and handovers. The
// others contribute nothing to the plan, and did not at the last pass, so
// a pass costs what changed, not the number of Services. Every binding is
// looked at after a change that concerns all of them (fullPass).
func (r *reconciler) reconcile() {
	now := time.Now()
	r.expireRefusals(now)
	var want plan
	servedHere, holding := r.heldBuf[:0], r.holdingBuf[:0]
	defer func() { r.heldBuf, r.holdingBuf = servedHere, holding }()
	var asks []string
	changedNames, all := r.el.TakeStatusChanges()
	full := all || r.fullPass || r.last == nil
	r.fullPass = false
	// A full pass after a partial one checks that the partial ones miss
	// nothing: a status change in a binding they would not have looked at
	// is a fault of this code, said at once (the full pass mends it).
	var partial map[int]bool
	if full && !all && r.last != nil {
		partial = map[int]bool{}
		for _, i := range r.toLook(false, changedNames) {
			partial[i] = true
		}
	}
	var missed []string
	look := r.toLook(full, changedNames)
	// seen[k] is the status of look[k]; changed are the k whose status is
	// not what r.last says, which learns them after screen.
	seen := slices.Grow(r.seenBuf[:0], len(look))[:len(look)]
	r.seenBuf = seen
	var changed []int
	var leaders []leaderChange
	var leadingNow []leadingChange
	var leading []*binding // as the election says, whatever this node lacks
	r.names = r.names[:0]
	for _, i := range look {
		r.names = append(r.names, r.bindings[i].contest)
	}
	r.el.Statuses(r.names, seen)
	for k, i := range look {
		b := &r.bindings[i]
		st := seen[k]
		// Without a holder in the API, a contest is looked at in every
		// pass: a beat may name the holder, or stop naming it.
		leaderless := !st.Leading && st.Leader == ""
		if leaderless && r.hb != nil {
			// Cut from the API, a node that lost a contest cannot see the new
			// holder there; an authenticated beat of the holder tells.
			st.Leader = r.hb.HolderOf(b.contest)
			seen[k] = st
		}
		if st.Leading {
			leading = append(leading, b)
		}
		prev := r.last[b.contest]
		if st != prev {
			if partial != nil && !partial[i] {
				missed = append(missed, b.contest)
			}
			changed = append(changed, k)
			r.obs.changed(*b, prev, st)
		}
		if r.freshBound[b.contest] {
			if old := r.lastBound[b.contest]; old != nil {
				leaders = append(leaders, leaderChange{vips: old.vips, gone: true})
			}
		}
		if all || r.freshBound[b.contest] || st.Leader != prev.Leader {
			leaders = append(leaders, leaderChange{vips: b.vips, leader: st.Leader})
		}
		if all || st.Leading != prev.Leading {
			leadingNow = append(leadingNow, leadingChange{contest: b.contest, leading: st.Leading})
		}
		if _, lacks := r.lacking[b.needs]; b.needs != "" && lacks {
			// Released as soon as the election has said why; meanwhile
			// there is no interface to put the VIPs on.
			st = election.Status{Leader: st.Leader}
		}
		var why election.Reason // only a loss needs it: a Report per binding was a lock each
		if prev.Leading && !st.Leading {
			why = r.el.Report(b.contest).Reason
		}
		handover := r.handovers.keep(*b, r.node, prev, st, why, now)
		planned := st.Leading // and p is not needed: a holder's VIPs all go in, announced
		if planned {
			want.addHeld(b.vips, b.iface)
		} else {
			p := planFor(st, b.vips, r.preserve, handover, func(v netip.Addr) bool { return r.onIface(b.iface, v) })
			if len(p.present) > len(p.announce) {
				asks = append(asks, b.contest) // preserved: who holds it now?
			}
			want.add(p, b.iface)
			planned = len(p.present) > 0
		}
		if st.Leading {
			rep := r.el.Report(b.contest)
			for _, v := range b.vips {
				servedHere = append(servedHere, services.Held{IP: v, Previous: rep.Previous, Reason: string(rep.Reason)})
			}
			holding = append(holding, b.contest)
		}
		// Looked at again in the next pass, whatever changes: what is
		// held, what has no holder, what the plan keeps.
		switch was := r.active[b.contest]; {
		case leaderless || seen[k].Leading || planned:
			if !was {
				r.active[b.contest] = true
			}
		case was:
			delete(r.active, b.contest)
		}
	}
	// Contests that went are looked for only if some did: as many as the
	// last pass had, less those still bound, which were bound then or are
	// new since.
	gone := false
	if r.rebound {
		added := 0
		for c := range r.freshBound {
			if r.bound[c] != nil && r.lastBound[c] == nil {
				added++
			}
		}
		gone = len(r.lastBound) > len(r.bound)-added
	}
	clear(r.freshBound)
	if len(missed) > 0 {
		missed = r.el.Unlogged(missed) // changed since TakeStatusChanges: logged for the next pass
	}
	if len(missed) > 0 {
		r.log.Error("internal error: passes that look only at what changed missed status changes; a full pass mends them",
			"elections", missed)
	}
	want = r.screen(want, leading, now)
	// r.last is kept up to date in place, not made anew: with a thousand
	// contests, of which a pass changes a few, a new map per pass was
	// most of what a pass allocated.
	if r.last == nil {
		r.last = make(map[string]election.Status, len(r.bindings))
	}
	for _, k := range changed {
		r.last[r.bindings[look[k]].contest] = seen[k]
	}
	if r.rebound {
		// The bindings were made again: forget the contests that went.
		r.rebound = false
		for contest, ob := range r.lastBound {
			if !gone {
				break // none went: a thousand lookups spared
			}
			if _, ok := r.bound[contest]; ok {
				continue
			}
			if r.last[contest].Leading {
				r.obs.lost(*ob, "", election.LostRemoved) // its Services went away
			}
			leaders = append(leaders, leaderChange{vips: ob.vips, gone: true})
			leadingNow = append(leadingNow, leadingChange{contest: contest})
			delete(r.last, contest)
			delete(r.active, contest)
		}
		if len(r.last) > len(r.bound) {
			// Statuses of contests bound by no pass (made and gone between
			// two): nothing was done with them.
			for contest := range r.last {
				if _, ok := r.bound[contest]; !ok {
					delete(r.last, contest)
				}
			}
		}
		r.handovers.forget(func(c string) bool { _, ok := r.bound[c]; return ok })
	}
	r.lastBound = r.bound
	r.passedSinceBind = true
	if at := r.handovers.next(); !at.IsZero() && !at.Equal(r.wakeAt) {
		// Look again when a kept VIP is to go.
		r.wakeAt = at
		time.AfterFunc(time.Until(at)+time.Millisecond, func() { notify.Signal(r.wake) })
	}
	r.asking = len(asks) > 0
	if r.hb != nil {
		r.hb.SetAsks(asks)
		if !slices.Equal(holding, r.holdingSent) {
			r.hb.SetHolding(holding)
			r.holdingSent = append(r.holdingSent[:0], holding...)
		}
	}
	if r.applyNeeded(want, now) {
		r.recheck = false
		for vip, err := range r.apply(want) {
			r.refuse(vip, err, now)
		}
	}
	r.obs.reconciled(r.bindings, leaders, leadingNow)
	if r.svc != nil {
		// The controller writes the status of the Services among these;
		// it keeps the list, so it gets one of its own.
		if r.heldSent == nil || !slices.Equal(servedHere, r.heldSent) {
			r.heldSent = append([]services.Held{}, servedHere...) // not nil: sent
			r.svc.SetHeld(r.heldSent)
		}
		r.svc.FlushEvents() // who holds what, or who is live, may have changed
	}
	r.metrics.live.Set(boolGauge(r.el.Live()))
	r.passed.Store(time.Now().UnixNano())
}

// toLook returns the indexes in r.bindings of the bindings a pass looks
// at, in order: all of them if full; otherwise those whose status changed
// (names), whose binding changed, the active ones and the handovers.
func (r *reconciler) toLook(full bool, names map[string]bool) []int {
	look := r.lookBuf[:0]
	defer func() { r.lookBuf = look }()
	if full {
		for i := range r.bindings {
			look = append(look, i)
		}
		return look
	}
	add := func(c string) {
		if b := r.bound[c]; b != nil {
			look = append(look, b.pos)
		}
	}
	for c := range names {
		add(c)
	}
	for c := range r.freshBound {
		add(c)
	}
	for c := range r.active {
		add(c)
	}
	for c := range r.handovers.until {
		add(c)
	}
	slices.Sort(look)
	return slices.Compact(look)
}

// lastBinding is the binding contest had at the last pass (zero if none).
func (r *reconciler) lastBinding(contest string) binding {
	if b := r.lastBound[contest]; b != nil {
		return *b
	}
	return binding{}
}

// waiting reports whether this node keeps VIPs until it sees their new
// holder (a handover, or preserve after a loss): other agents' changes
// matter to it at once then.
func (r *reconciler) waiting() bool {
	return r.asking || len(r.handovers.until) > 0
}

// refuse stops this node from holding the contest that carries vip, which
// the interface would not take: it releases the claim and is no candidate
// for it until the refusal expires (30 s, doubling with each repeat, at
// most 5 min). Meanwhile another node holds it.
func (r *reconciler) refuse(vip netip.Addr, err error, now time.Time) {
	for _, b := range r.bindings {
		if !slices.Contains(b.vips, vip) {
			continue
		}
		if _, ok := r.refused[b.contest]; ok {
			return
		}
		d := r.refusals.Failed(b.contest)
		reason := fmt.Sprintf("interface %s refused %s: %v", b.iface, vip, err)
		r.refused[b.contest] = refusal{reason: reason, until: now.Add(d)}
		r.log.Warn("cannot hold VIP here: releasing it to another node", "vip", vip, "contest", b.contest,
			"reason", reason, "retry_in", d.Round(time.Second))
		if r.svc != nil {
			r.svc.RefusedHere(vip, reason)
		}
		r.publishRefusals()
		return
	}
}

// expireRefusals makes this node a candidate again for contests whose
// refusal has run out. Nothing moves back: it takes them only if their
// holder goes.
func (r *reconciler) expireRefusals(now time.Time) {
	changed := false
	for c, f := range r.refused {
		if now.After(f.until) {
			delete(r.refused, c)
			r.log.Info("candidate again for a VIP this node refused", "contest", c)
			changed = true
		}
	}
	if changed {
		r.publishRefusals()
	}
}

func (r *reconciler) publishRefusals() {
	m := make(map[string]string, len(r.refused))
	for c, f := range r.refused {
		m[c] = f.reason
	}
	r.el.SetRefused(m)
	r.metrics.refused.Set(float64(len(m)))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// onIface reports whether vip is on the named interface, put there by vipd.
func (r *reconciler) onIface(name string, vip netip.Addr) bool {
	i, err := r.links.iface(name)
	if err != nil {
		return false
	}
	ok, err := i.Has(vip)
	if err != nil {
		r.log.Error("reading interface addresses", "vip", vip, "iface", name, "err", err)
	}
	return ok
}
