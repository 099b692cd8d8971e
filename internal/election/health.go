package election

import "time"

// LastRenew is when this agent's node Lease was last renewed (the start of
// the write that succeeded); zero before the first renewal, which comes
// only after the Lease cache has synced. Health checks read it.
func (e *Elector) LastRenew() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastRenew
}
