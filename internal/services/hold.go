package services

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// statusHold bounds how long the Services' status writes wait for this
// node's claim writes (Config.Claiming). Takes last tens to hundreds of
// milliseconds, a re-home of a hundred VIPs on a busy API server about
// half a second; after statusHold the status is written whatever is
// pending, so that takes that keep coming never starve it.
const statusHold = time.Second

// statusHolder parks status writes while this node's claims are being
// written: a status says who holds a VIP, and the claim is what makes it
// so. When a node is lost, each survivor's status writes and Events would
// otherwise compete with every survivor's takes for the API server, and
// the last VIP would move later.
type statusHolder struct {
	mu sync.Mutex
	// since is when the current wait began, on the channel on that
	// Claiming gave then: a new channel means the takes were all written
	// in between, and a new wait begins.
	since time.Time
	on    <-chan struct{}
	// parked are the Services whose status waits; waiting: a goroutine
	// puts them back in the queue when the claims are written.
	parked  map[types.NamespacedName]bool
	waiting bool
}

// holdStatus reports whether nn's status write is parked until this
// node's pending claim writes are done, or statusHold after the wait
// began, whichever comes first.
func (c *Controller) holdStatus(ctx context.Context, nn types.NamespacedName) bool {
	if c.cfg.Claiming == nil {
		return false
	}
	claims := c.cfg.Claiming()
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-claims:
		return false
	default:
	}
	now := time.Now()
	if claims != h.on {
		h.since, h.on = now, claims
	}
	if now.Sub(h.since) >= statusHold {
		return false // waited long enough; a new wait begins once the claims are done
	}
	if h.parked == nil {
		h.parked = map[types.NamespacedName]bool{}
	}
	h.parked[nn] = true
	if !h.waiting {
		h.waiting = true
		go c.unpark(ctx, claims, h.since.Add(statusHold))
	}
	return true
}

// unpark queues the parked status writes again once claims is closed or
// at deadline.
func (c *Controller) unpark(ctx context.Context, claims <-chan struct{}, deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-claims:
	case <-t.C:
	}
	h := &c.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	for nn := range h.parked {
		c.queue.Add(item{kind: kindStatus, svc: nn})
	}
	clear(h.parked)
	h.waiting = false
}
