package backoff

import (
	"testing"
	"time"

	"k8s.io/client-go/util/workqueue"
)

var _ workqueue.TypedRateLimiter[string] = (*RateLimiter[string])(nil)

func TestDelayGrowsAndIsCapped(t *testing.T) {
	p := Policy{Base: 100 * time.Millisecond, Max: time.Second, Jitter: -1}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := p.Delay(i + 1); got != w*time.Millisecond {
			t.Errorf("after %d failures: %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
}

func TestJitterStaysInBounds(t *testing.T) {
	p := Policy{Base: time.Second, Max: time.Second}
	lo, hi := time.Duration(1<<62), time.Duration(0)
	for range 1000 {
		d := p.Delay(1)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 800*time.Millisecond || hi > 1200*time.Millisecond {
		t.Errorf("delays spread over [%v, %v], want within ±20%% of 1s", lo, hi)
	}
	if hi-lo < 200*time.Millisecond {
		t.Errorf("delays spread over [%v, %v] only: no jitter", lo, hi)
	}
}

func TestTrackerForgets(t *testing.T) {
	tr := Tracker[string]{Policy: Policy{Base: time.Second, Max: time.Minute, Jitter: -1}}
	tr.Failed("a")
	if d := tr.Failed("a"); d != 2*time.Second {
		t.Errorf("second failure: %v, want 2s", d)
	}
	tr.Forget("a")
	if n := tr.Failures("a"); n != 0 {
		t.Errorf("failures after Forget: %d", n)
	}
	if d := tr.Failed("a"); d != time.Second {
		t.Errorf("first failure after Forget: %v, want 1s", d)
	}
}
