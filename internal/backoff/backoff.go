// Package backoff spaces out retries of writes that can keep failing: a
// denied delete, a refused status update or a webhook that rejects every
// request must not turn into a tight request loop against the API server.
//
// Delays grow exponentially from a base to a cap, and each is spread by a
// random jitter so that agents that failed together do not retry together.
package backoff

import (
	"math/rand/v2"
	"sync"
	"time"
)

// DefaultJitter spreads each delay over ±20% of its nominal value.
const DefaultJitter = 0.2

// Policy describes how retry delays grow.
type Policy struct {
	// Base is the delay after the first failure; each further failure
	// doubles it.
	Base time.Duration
	// Max caps the nominal delay.
	Max time.Duration
	// Jitter is the fraction by which a delay may vary either way; 0 means
	// DefaultJitter, a negative value none.
	Jitter float64
}

// Delay is how long to wait after the given number of consecutive failures
// (1 for the first).
func (p Policy) Delay(failures int) time.Duration {
	if failures < 1 {
		failures = 1
	}
	d := p.Base
	for i := 1; i < failures && d < p.Max; i++ {
		d *= 2
	}
	if p.Max > 0 && d > p.Max {
		d = p.Max
	}
	j := p.Jitter
	if j == 0 {
		j = DefaultJitter
	}
	if j > 0 {
		d = time.Duration(float64(d) * (1 - j + 2*j*rand.Float64()))
	}
	return d
}

// Tracker counts consecutive failures per key and says when each key may be
// tried again. It is safe for concurrent use.
type Tracker[K comparable] struct {
	Policy Policy

	mu       sync.Mutex
	failures map[K]int
}

// Failed records a failure of key and returns the delay before the next try.
func (t *Tracker[K]) Failed(key K) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.failures == nil {
		t.failures = map[K]int{}
	}
	t.failures[key]++
	return t.Policy.Delay(t.failures[key])
}

// Failures is the number of consecutive failures of key.
func (t *Tracker[K]) Failures(key K) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failures[key]
}

// Forget clears key's failures, after a success or when it is gone.
func (t *Tracker[K]) Forget(key K) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.failures, key)
}

// RateLimiter adapts a Tracker to client-go's workqueue: items that fail
// are requeued after a growing, jittered delay. It implements
// workqueue.TypedRateLimiter.
type RateLimiter[T comparable] struct {
	t Tracker[T]
}

// NewRateLimiter returns a workqueue rate limiter following p.
func NewRateLimiter[T comparable](p Policy) *RateLimiter[T] {
	return &RateLimiter[T]{t: Tracker[T]{Policy: p}}
}

// When records a failure of item and returns how long to wait.
func (r *RateLimiter[T]) When(item T) time.Duration { return r.t.Failed(item) }

// Forget clears item's failures.
func (r *RateLimiter[T]) Forget(item T) { r.t.Forget(item) }

// NumRequeues is the number of consecutive failures of item.
func (r *RateLimiter[T]) NumRequeues(item T) int { return r.t.Failures(item) }
