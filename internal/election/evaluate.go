package election

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vipd/vipd/internal/notify"
	coordinationv1 "k8s.io/api/coordination/v1"
)

type job struct {
	name string
	base *coordinationv1.Lease // version the write is conditional on; nil to create
	op   op
	why  Reason // of a take
}

type op int

const (
	opAcquire op = iota
	opRelease
	opDelete
)

func (o op) String() string {
	switch o {
	case opAcquire:
		return "acquire"
	case opRelease:
		return "release"
	}
	return "delete"
}

type result struct {
	name string
	op   op
	err  error
}

// Run elects until ctx is done. It does not release anything when ctx ends:
// call Release first, once the VIPs are gone.
func (e *Elector) Run(ctx context.Context) error {
	e.mu.Lock()
	e.started = e.now()
	e.mu.Unlock()
	stop, synced, err := e.watch(ctx)
	if err != nil {
		return err
	}
	defer stop()
	if !synced {
		return nil
	}
	e.synced.Store(true)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer e.claims.reset() // the loop that counts the takes stops here
	wg.Go(func() { e.renewLoop(ctx) })
	wg.Go(func() { e.refreshLoop(ctx) })
	for range writeWorkers {
		wg.Go(func() { e.writeLoop(ctx) })
	}

	var peerChanges <-chan struct{}
	if e.cfg.Peers != nil {
		peerChanges = e.cfg.Peers.Changes()
	}
	inflight := map[string]bool{}
	freeSince := map[string]time.Time{}
	retryAt := map[string]time.Time{}
	timer := time.NewTimer(0)
	defer timer.Stop()
	var queue []job
	for {
		var send chan job
		var next job
		if len(queue) > 0 {
			send, next = e.jobs, queue[0]
		}
		select {
		case <-ctx.Done():
			e.mu.Lock()
			e.status = map[string]Status{}
			e.statusLogAll = true
			e.mu.Unlock()
			notify.Signal(e.changes)
			return nil
		case send <- next:
			queue = queue[1:]
			continue
		case r := <-e.done:
			// Take every finished write before evaluating once: placing
			// hundreds of claims must not cost an evaluation each.
			for more := true; more; {
				delete(inflight, r.name)
				if r.op == opAcquire {
					e.claims.add(-1)
				}
				if d := e.retryDelay(r); d > 0 {
					retryAt[r.name] = e.now().Add(d)
				}
				select {
				case r = <-e.done:
				default:
					more = false
				}
			}
		case <-e.wake:
		case <-peerChanges:
			// What peers say matters to the agent too (who holds what).
			notify.Signal(e.changes)
		case <-timer.C:
		}
		jobs, wakeAt := e.evaluate(inflight, freeSince, retryAt)
		for _, j := range jobs {
			inflight[j.name] = true
		}
		e.countClaims(jobs)
		queue = append(queue, jobs...)
		timer.Reset(max(wakeAt.Sub(e.now()), time.Millisecond))
	}
}

// retryDelay is how long to wait before writing r's Lease again. Losing a
// race for a claim is normal and retried soon; any other failure (a denied
// or invalid request, an unreachable API server) is retried with a growing,
// jittered delay, so it never becomes a tight request loop.
func (e *Elector) retryDelay(r result) time.Duration {
	switch {
	case r.err == nil:
		e.retries.Forget(r.name)
		return 0
	case isRace(r.err):
		return e.cfg.RetryPeriod / 4
	case errors.Is(r.err, errTakeStale):
		return 0 // decided afresh by the next evaluation
	}
	d := e.retries.Failed(r.name)
	e.log.Warn("lease write failed; retrying later", "lease", r.name, "op", r.op.String(), "err", r.err,
		"retry_in", d.Round(time.Millisecond), "failures", e.retries.Failures(r.name))
	return d
}

// releaseRecheck is how often the election asks whether the agent has
// silenced a contest it is letting go (SetSilenced), for the first second:
// the agent's pass takes about a millisecond.
const releaseRecheck = 5 * time.Millisecond

// evaluate publishes the status of every contest and decides the writes
// this agent should make. It returns them and when to look again.
func (e *Elector) evaluate(inflight map[string]bool, freeSince, retryAt map[string]time.Time) ([]job, time.Time) {
	now := e.now()
	wakeAt := now.Add(e.cfg.RetryPeriod)
	soon := func(t time.Time) {
		if t.Before(wakeAt) {
			wakeAt = t
		}
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.contests == nil {
		return nil, wakeAt
	}

	me := e.cfg.Identity
	meLive := e.liveLocked(now)
	live := map[string]bool{}
	renewing := map[string]bool{} // by node Lease alone
	refusedBy := map[string][]string{}
	lackedBy := map[string][]string{} // need → the live nodes that lack it
	for h, o := range e.peerLeasesLocked() {
		expiry := e.expiry(o)
		leaseLive := now.Before(expiry)
		if leaseLive {
			soon(expiry)
			renewing[h] = true
		}
		alive, why := e.peerLiveLocked(h, leaseLive, now)
		if alive != slices.Contains(e.members, h) {
			e.log.Info("judged another agent", "peer", h, "live", alive, "reason", why)
		}
		if alive {
			live[h] = true
			for c := range e.refusedOfLocked(o) {
				refusedBy[c] = append(refusedBy[c], h)
			}
			for need := range ParseLacking(o.lease.Annotations[AnnotationLacking]) {
				lackedBy[need] = append(lackedBy[need], h)
			}
		}
		if e.cfg.Peers != nil && e.apiOK {
			if r := e.cfg.Peers.Peer(h); r.Heard && !r.APIOK {
				notify.Signal(e.probe)
			}
		}
	}
	if meLive {
		live[me] = true
		if d := e.lastRenew.Add(e.cfg.RenewDeadline); d.After(now) {
			soon(d)
		}
		for c := range e.refused {
			refusedBy[c] = append(refusedBy[c], me)
		}
		for need := range e.lacking {
			lackedBy[need] = append(lackedBy[need], me)
		}
	}
	if end := e.apiBackAt.Add(e.cfg.RetryPeriod / 2); !e.apiBackAt.IsZero() && end.After(now) {
		soon(end)
	}
	if end := e.fence.freshAt.Add(e.cfg.RetryPeriod); end.After(now) {
		soon(end)
	}
	e.logTransitionsLocked(now, meLive)
	e.wasLive = meLive
	e.reportSelfLocked(now)
	liveNodes := make([]string, 0, len(live))
	for n := range live {
		liveNodes = append(liveNodes, n)
	}
	slices.Sort(liveNodes)
	e.members = liveNodes
	candidates := func(name string) []string {
		c := e.contests[name]
		var out []string
		for _, n := range liveNodes {
			if (c.Candidates == nil || slices.Contains(c.Candidates, n)) && !slices.Contains(refusedBy[name], n) &&
				(c.Needs == "" || !slices.Contains(lackedBy[c.Needs], n)) {
				out = append(out, n)
			}
		}
		return out
	}

	warm := e.warmLocked(now, live)
	if !warm {
		soon(e.started.Add(e.cfg.RetryPeriod))
	}
	sig := e.signatureLocked(meLive, warm, liveNodes, renewing, refusedBy, lackedBy)
	full := sig != e.eval.sig
	e.eval.sig = sig
	forget := e.eval.forget
	names := e.toLookAtLocked(full)
	for _, name := range forget {
		if _, ok := e.contests[name]; !ok && !e.status[name].Leading {
			delete(e.reports, name) // bounded by the contests
		}
	}

	var jobs []job
	var changes []statusChange
	for name := range names {
		e.eval.drop(name)
		delete(e.eval.orphans, name)
		c, ok := e.contests[name]
		if !ok {
			delete(e.fence.taken, name)
			if old, had := e.status[name]; had {
				delete(e.status, name)
				e.logStatusLocked(name)
				changes = append(changes, statusChange{name: name, old: old, gone: true})
			}
			if o := e.leases[name]; o != nil && o.lease.Labels[LabelKind] == KindClaim {
				e.eval.orphans[name] = true
			}
			continue
		}
		var lease *coordinationv1.Lease
		if o := e.leases[name]; o != nil {
			lease = o.lease
		}
		h := holder(lease)
		foreign := h != "" && !live[h] && e.foreignLiveLocked(name, h, now, soon)
		st := Status{}
		if h != "" && (live[h] || foreign) {
			e.eval.hold(name, h)
			if foreign {
				e.eval.watch[name] = true // until it stops renewing
			}
			delete(freeSince, name)
			st = Status{Leader: h, Leading: h == me}
			if h == me && !e.status[name].Leading && e.claimsStaleLocked() && !e.takenFreshLocked(name, lease) {
				// Renewals work again, but the claims are still as read
				// before they failed or lapsed: another agent may have
				// taken this one meanwhile, and the watch tells later than
				// a renewal succeeds. Not taken back until every Lease is
				// read afresh (refreshLoop, which wakes the election when
				// done).
				st = Status{}
				e.eval.watch[name] = true
				if !e.fence.heldBack {
					e.fence.heldBack = true
					e.log.Info("renewals work again; claims this agent held are not taken back until every Lease is read afresh",
						"lease", name)
				}
			}
			notCandidate, refused, lacking := e.unfitLocked(name, c)
			if h == me && (notCandidate || refused || lacking) {
				e.eval.watch[name] = true // until released
				if e.silenced != nil {
					// Let go here first (SetSilenced): no holder, as after
					// the release, so that the agent silences the VIPs,
					// or keeps them silent for a handover.
					st = Status{}
					e.noteLettingGoLocked(name, refused, lacking, now)
				}
				switch {
				case e.silenced != nil && !e.silenced(name):
					// Asked often at first; after a second (a removal
					// that keeps failing, a stuck agent), once a retry
					// period, not hundreds of evaluations a second.
					if now.Sub(e.reports[name].At) < time.Second {
						soon(now.Add(releaseRecheck))
					} else {
						soon(now.Add(e.cfg.RetryPeriod))
					}
				case !inflight[name] && !now.Before(retryAt[name]):
					jobs = append(jobs, job{name: name, base: lease, op: opRelease})
				}
			}
		} else {
			e.eval.free[name] = true
			if _, ok := freeSince[name]; !ok {
				freeSince[name] = now
			}
		}
		if t, ok := e.fence.taken[name]; ok && (lease == nil || !newer(t, lease.ResourceVersion)) {
			// One evaluation of the version the take wrote may use the
			// exemption, whatever it decides; a claim that changed since
			// has none (takenFreshLocked).
			delete(e.fence.taken, name)
		}
		if old, had := e.status[name]; !had || old != st {
			e.status[name] = st
			e.logStatusLocked(name)
			changes = append(changes, statusChange{name: name, old: old, next: st})
		}
	}
	if len(changes) > 0 {
		e.noteStatusLocked(changes, meLive)
		if slices.ContainsFunc(changes, func(c statusChange) bool { return c.old.Leading != c.next.Leading }) {
			e.leadingEpoch.Add(1)
		}
		notify.Signal(e.changes)
	}

	if meLive {
		free := slices.Sorted(maps.Keys(e.eval.free))
		place := placeFree(free, candidates, e.eval.load, len(e.eval.heldBy), liveNodes)
		lag := min(e.writeLagLocked(now), e.cfg.LeaseDuration)
		for _, name := range free {
			if inflight[name] {
				continue // its result wakes the loop
			}
			if now.Before(retryAt[name]) {
				soon(retryAt[name])
				continue
			}
			if !warm {
				continue
			}
			cands := candidates(name)
			rank := slices.Index(preference(name, cands), me)
			if rank < 0 {
				continue
			}
			if place[name] != me {
				// Fallback: the preferred agent has had its chance,
				// counting the time a write takes now: an API server
				// slowed by a burst of claims must not turn every
				// fallback into a second write racing the first.
				at := freeSince[name].Add(time.Duration(rank+1)*e.cfg.RetryPeriod + 2*lag)
				if now.Before(at) {
					soon(at)
					continue
				}
			}
			var base *coordinationv1.Lease
			if o := e.leases[name]; o != nil {
				base = o.lease
			}
			jobs = append(jobs, job{name: name, base: base, op: opAcquire, why: e.takeReasonLocked(base)})
		}
		// Claims whose contest is gone: delete them, so a deleted Service
		// leaves no Lease behind. Its holder does; if the holder is gone
		// too — its node Lease released or expired, whatever heartbeats
		// say — the first live agent by name deletes it if it is one of the
		// claims that come and go (OrphanPrefix).
		janitor := len(liveNodes) > 0 && liveNodes[0] == me
		for name := range e.eval.orphans {
			o := e.leases[name]
			if o == nil || inflight[name] {
				continue
			}
			if now.Before(retryAt[name]) {
				soon(retryAt[name])
				continue
			}
			orphan := janitor && e.cfg.OrphanPrefix != "" && strings.HasPrefix(name, e.cfg.OrphanPrefix)
			if h := holder(o.lease); h == me || (orphan && !renewing[h]) {
				jobs = append(jobs, job{name: name, base: o.lease, op: opDelete})
			}
		}
	}
	for name := range freeSince {
		if _, ok := e.contests[name]; !ok {
			delete(freeSince, name)
		}
	}
	for name, t := range retryAt {
		if now.After(t) {
			delete(retryAt, name)
		}
	}
	return jobs, wakeAt
}

// unfitLocked says why this node may not hold contest c, if it may not:
// it is no candidate, it refuses the contest (SetRefused), or it lacks
// what the contest needs (SetLacking).
func (e *Elector) unfitLocked(name string, c Contest) (notCandidate, refused, lacking bool) {
	notCandidate = c.Candidates != nil && !slices.Contains(c.Candidates, e.cfg.Identity)
	_, refused = e.refusedOut[name]
	_, lacking = e.lackingOut[c.Needs]
	return notCandidate, refused, lacking && c.Needs != ""
}

// foreignLiveLocked reports whether the claim of contest, held by h, which
// has no node Lease at all — not a vipd agent, typically kube-vip during a
// migration — is still being renewed: h counts as live while it renews the
// claim itself within the lease duration (the shorter of the claim's and
// ours), as kube-vip does. A leftover that nobody renews stops blocking a
// lease duration after this agent first saw it.
func (e *Elector) foreignLiveLocked(contest, h string, now time.Time, soon func(time.Time)) bool {
	if _, ok := e.leases[NodeLeasePrefix+h]; ok {
		return false // a vipd agent: its node Lease decides
	}
	o := e.leases[contest]
	if o == nil {
		return false
	}
	d := min(leaseDuration(o.lease, e.cfg.LeaseDuration), e.cfg.LeaseDuration)
	until := o.seen.Add(d)
	if !now.Before(until) {
		return false
	}
	soon(until)
	if !e.foreignLogged[contest] {
		e.foreignLogged[contest] = true
		e.log.Warn("a holder that is not a vipd agent renews this claim (kube-vip still running?); waiting until it stops renewing",
			"contest", contest, "holder", h, "lease_duration", d)
	}
	return true
}

// warmLocked reports whether this agent, just started, may take claims:
// once it hears every other agent it judges live (they then hear it too,
// so if it dies right after taking a claim they notice within the
// heartbeat timeout instead of at Lease expiry), and at the latest a retry
// period after it started.
func (e *Elector) warmLocked(now time.Time, live map[string]bool) bool {
	if e.cfg.Peers == nil || !now.Before(e.started.Add(e.cfg.RetryPeriod)) {
		return true
	}
	for h := range live {
		if h != e.cfg.Identity && !e.cfg.Peers.Peer(h).Heard {
			return false
		}
	}
	return true
}

// logTransitionsLocked says once why this agent started or stopped holding
// for a reason other than its own renewals (which renewLoop logs).
func (e *Elector) logTransitionsLocked(now time.Time, meLive bool) {
	if fenced := e.fencedLocked(now); fenced != e.fence.logged {
		e.fence.logged = fenced
		switch {
		case fenced && e.cutLocked():
			s := e.cfg.Peers.Self()
			e.log.Warn("stopped holding: this node is cut off, so the others may take over",
				"link_down", s.LinkDown, "hears_no_peer", s.Isolated, "api_ok", e.apiOK)
		case fenced:
			e.log.Info("connected again; holding nothing until every Lease is read afresh")
		default:
			e.log.Info("Leases read afresh after being cut off; may hold again")
		}
	}
	if hold := meLive && !e.renewedLocked(now); hold != e.holdingThrough {
		e.holdingThrough = hold
		switch {
		case hold:
			e.log.Warn("cannot renew the node lease, but every live agent reports the API server unreachable too: keeping VIPs through the outage")
		case meLive:
			e.log.Info("node lease renewed again: API outage over")
		case !e.fencedLocked(now):
			e.log.Warn("stopped holding: an agent is not heard or reaches the API server, so it may take over")
		}
	}
}

// dropHolding makes a release visible at once, before the next
// evaluation, to the agent and to the other agents' failure detectors.
func (e *Elector) dropHolding() {
	e.mu.Lock()
	e.noteShutdownLocked()
	for name, s := range e.status {
		if s.Leading {
			e.status[name] = Status{}
			e.logStatusLocked(name)
		}
	}
	e.leadingEpoch.Add(1)
	e.reportSelfLocked(e.now())
	e.mu.Unlock()
	notify.Signal(e.changes)
}

// reportSelfLocked keeps the failure detector's message about us current,
// and hands it the addresses of the other agents: every agent with a node
// Lease, except one that is gone (goneLocked).
func (e *Elector) reportSelfLocked(now time.Time) {
	if e.cfg.Peers == nil {
		return
	}
	self := PeerReport{APIOK: e.apiOK, Live: e.liveLocked(now)}
	if self != e.lastSelf || !e.selfSent {
		e.lastSelf, e.selfSent = self, true
		e.cfg.Peers.SetSelf(self)
	}
	addrs := map[string]string{}
	for h, o := range e.peerLeasesLocked() {
		if e.goneLocked(o, now) {
			continue
		}
		if a := o.lease.Annotations[AnnotationPeerAddr]; a != "" {
			addrs[h] = a
		}
	}
	if !maps.Equal(addrs, e.peerAddr) {
		e.peerAddr = addrs
		e.cfg.Peers.SetPeers(addrs)
	}
}

// goneLocked reports whether the agent of a node Lease is gone for good:
// its Lease has not been renewed for a further lease duration after it
// expired, while this agent reached the API server and read it afresh. In
// an outage every Lease looks expired, and when the API server returns the
// others renew a little later than this agent: neither may end the beats.
func (e *Elector) goneLocked(o *observed, now time.Time) bool {
	f := &e.fence
	if !e.apiOK || e.staleSinceAPIBackLocked() || e.watchBehindLocked(now) {
		return false
	}
	since := e.expiry(o)
	if f.freshAt.After(since) {
		since = f.freshAt
	}
	return now.After(since.Add(leaseDuration(o.lease, e.cfg.LeaseDuration)))
}
