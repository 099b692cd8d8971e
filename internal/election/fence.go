package election

import (
	"time"

	"github.com/vipd/vipd/internal/notify"
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
	// apiBack is when a renewal succeeded after failing; freshAt is when
	// the last complete read of every Lease began.
	apiBack, freshAt time.Time
	logged           bool // fenced, as last logged
	heldBack         bool // a claim was held back since apiBack, and logged
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

// apiRecovered notes that a renewal succeeded after failing past the renew
// deadline: the view must be read afresh before it is trusted again.
func (e *Elector) apiRecoveredLocked(now time.Time) {
	e.fence.apiBack, e.fence.heldBack = now, false
	notify.Signal(e.relist)
}

// staleSinceAPIBackLocked reports whether renewals failed and worked again
// since the last complete read of every Lease began: the claims this agent
// sees may have changed hands meanwhile.
func (e *Elector) staleSinceAPIBackLocked() bool {
	return e.fence.apiBack.After(e.fence.freshAt)
}

// takenSinceAPIBackLocked reports whether the claim name is as this
// agent's own take wrote it, a write begun after renewals worked again.
// The API server took that write on the claim's current version, so the
// claim was this agent's then, later than any view from before: the
// claims the agent takes once it is live again need not wait for the
// read of every Lease.
func (e *Elector) takenSinceAPIBackLocked(name string) bool {
	o := e.leases[name]
	return o != nil && o.takenFrom.After(e.fence.apiBack)
}
