package election

import "sync"

// claimWrites counts this agent's claim writes (takes) queued or in
// flight. What only reports on the claims, such as the Services' status,
// can wait for them (Claiming): when a node is lost, every survivor writes
// its takes at once, and each report written meanwhile is one more write
// the API server serves before the last take lands.
type claimWrites struct {
	mu sync.Mutex
	n  int
	// idle is closed while n is 0, and replaced when n leaves 0.
	idle chan struct{}
}

func newClaimWrites() *claimWrites {
	c := &claimWrites{idle: make(chan struct{})}
	close(c.idle)
	return c
}

// add counts d more claim writes (fewer if negative, never below 0).
func (c *claimWrites) add(d int) {
	if d == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	was := c.n
	c.n = max(0, c.n+d)
	switch {
	case was == 0 && c.n > 0:
		c.idle = make(chan struct{})
	case was > 0 && c.n == 0:
		close(c.idle)
	}
}

// reset forgets every claim write: the loop that made them stopped.
func (c *claimWrites) reset() {
	c.mu.Lock()
	n := c.n
	c.mu.Unlock()
	c.add(-n)
}

func (c *claimWrites) done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.idle
}

// Claiming returns a channel that is closed once none of this agent's
// claim writes is queued or in flight; it is closed already when none is.
// Ask again after it closes: later takes come with a new channel.
func (e *Elector) Claiming() <-chan struct{} { return e.claims.done() }

// countClaims counts the takes among jobs as queued.
func (e *Elector) countClaims(jobs []job) {
	n := 0
	for _, j := range jobs {
		if j.op == opAcquire {
			n++
		}
	}
	e.claims.add(n)
}
