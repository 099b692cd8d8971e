package election

import (
	"time"

	"github.com/vipd/vipd/internal/notify"
	coordinationv1 "k8s.io/api/coordination/v1"
)

// A holder that is cut off must stop holding before the others may take
// its claims, and must not start again from a stale view when it is back.
//
// The others take a silent agent's claims after the failure detector's
// timeout. So an agent stops holding at once when its link has no carrier,
// or when it hears none of its peers and cannot reach the API server
// either. (Hearing nobody while the API works means the peers are gone or
// only heartbeats are blocked: it keeps holding, and if the others take a
// claim through the API it sees that at once and stops.) Once it is
// connected again its watches may still be stale for a while, so it holds
// nothing until it has read every Lease afresh.

// fenceState is the bookkeeping behind fencedLocked and
// sharedOutageLocked; it lives under Elector.mu.
type fenceState struct {
	cut     bool      // cut off at the last look
	cleared time.Time // when the last cut ended
	// apiBack is when a renewal succeeded after failing (or after one was
	// slow); lapseBack when one succeeded after this agent had gone past
	// its renew deadline (or first); freshAt is when the last complete
	// read of every Lease began.
	apiBack, lapseBack, freshAt time.Time
	logged                      bool // fenced, as last logged
	heldBack                    bool // a claim was held back since apiBack or lapseBack, and logged
	// taken are the claims this agent's own write took, for a reason that
	// rests on the claim or on authenticated beats, that no evaluation has
	// seen since: contest → the resourceVersion the write returned
	// (takenFreshLocked).
	taken map[string]string
}

// cutLocked reports whether this agent is cut off now.
func (e *Elector) cutLocked() bool {
	if e.cfg.Peers == nil {
		return false
	}
	s := e.cfg.Peers.Self()
	return s.LinkDown || (s.Isolated && !e.apiOK)
}

// fencedLocked reports whether this agent must hold nothing because it is
// cut off, or was and has not refreshed its view since.
func (e *Elector) fencedLocked(now time.Time) bool {
	f := &e.fence
	if e.cutLocked() {
		f.cut = true
		return true
	}
	if f.cut {
		f.cut = false
		f.cleared = now
		notify.Signal(e.relist)
	}
	return !f.cleared.IsZero() && !f.freshAt.After(f.cleared)
}

// apiRecovered notes that a renewal succeeded after failing: the view must
// be read afresh before it is trusted again.
func (e *Elector) apiRecoveredLocked(now time.Time) {
	e.fence.apiBack, e.fence.heldBack = now, false
	notify.Signal(e.relist)
}

// staleSinceAPIBackLocked reports whether renewals failed and worked again
// since the last complete read of every Lease began: the Leases this agent
// sees may be as they were before, and another agent may be riding out
// the outage (sharedOutageLocked).
func (e *Elector) staleSinceAPIBackLocked() bool {
	return e.fence.apiBack.After(e.fence.freshAt)
}

// lapseEndedLocked notes a renewal that made this agent live again after
// it went past its renew deadline (or the first one): the others may have
// taken its claims meanwhile.
func (e *Elector) lapseEndedLocked(now time.Time) {
	e.fence.lapseBack, e.fence.heldBack = now, false
	notify.Signal(e.relist)
}

// claimsStaleLocked reports whether a claim this agent's view shows as its
// own may have changed hands since: renewals failed (or one was slow) and
// worked again, or this agent went past its renew deadline — even with
// no renewal failing, as when the process was stopped — and it has not
// read every Lease afresh since.
//
// Not only a lapse: a take decided meanwhile may rest on node Leases as
// stale as the claims (a watch that stalled with the renewals makes
// others' Leases look expired), and a release that timed out may have
// gone through. A claim just taken for a reason that rests on neither is
// exempt (takenFreshLocked): holding back the claims of a re-home cost it
// the time of that read whenever a renewal was slow (docs/scale-runs.md).
func (e *Elector) claimsStaleLocked() bool {
	return e.fence.lapseBack.After(e.fence.freshAt) || e.staleSinceAPIBackLocked()
}

// noteTakenLocked remembers a claim this agent's write has just taken and
// does not hold yet (see takenFreshLocked).
func (e *Elector) noteTakenLocked(contest string, why Reason, claim *coordinationv1.Lease) {
	switch why {
	case TookNew, TookReleased, TookHolderSilent, TookHolderNotLive:
	default:
		return // the take rests on node Leases, which may be as stale as the claims
	}
	if e.status[contest].Leading {
		return // held already: the fence does not apply
	}
	if e.fence.taken == nil {
		e.fence.taken = map[string]string{}
	}
	e.fence.taken[contest] = claim.ResourceVersion
}

// takenFreshLocked reports whether claim, as this agent's view shows it,
// is the one its own write has just taken (noteTakenLocked) and no
// evaluation has seen yet, with no lapse since the last complete read of
// every Lease: then it is no stale view of the claim, and
// claimsStaleLocked does not hold it back. Only the first evaluation that
// sees it: if that one does not hold it (this node stopped being a
// candidate meanwhile, say), a release may follow, and a release that
// timed out may have gone through unseen.
//
// The write succeeded only if the claim was still as this agent had read
// it (a create, or an update conditional on its resourceVersion), and the
// take's reason rests on that claim (none existed, or it had no holder) or
// on authenticated beats (its holder went silent, or said it let go) —
// not on node Leases that a stalled watch may show expired. What the fence
// guards against, claims that changed hands while this agent could not
// see, cannot have happened to it. This keeps a renewal that is merely
// slow during a re-home from holding back the VIPs just taken
// (docs/election.md). After a lapse the others may have judged this agent
// dead, so the fence holds as before.
func (e *Elector) takenFreshLocked(contest string, claim *coordinationv1.Lease) bool {
	rv, ok := e.fence.taken[contest]
	return ok && claim != nil && claim.ResourceVersion == rv && !e.fence.lapseBack.After(e.fence.freshAt)
}
