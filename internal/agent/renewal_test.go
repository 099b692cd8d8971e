package agent

import (
	"testing"
	"time"
)

// A round of lifetime renewals that takes more than a quarter of the VIP
// lifetime is warned about, at most once a minute; without lifetimes never.
func TestRenewalWatch(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 16, 0, 0, 0, time.UTC)
	w := renewalWatch{lifetime: 2 * time.Second}
	for _, step := range []struct {
		took time.Duration
		at   time.Duration // after t0
		want bool
	}{
		{100 * time.Millisecond, 0, false},                // 2,000 IPv6 VIPs take about 0.6 s
		{500 * time.Millisecond, time.Second, false},      // a quarter: still enough margin
		{501 * time.Millisecond, 2 * time.Second, true},   // too slow: warned
		{3 * time.Second, 3 * time.Second, false},         // again within a minute: not repeated
		{time.Second, 62 * time.Second, true},             // a minute later: warned again
		{10 * time.Millisecond, 130 * time.Second, false}, // fast again
	} {
		if got := w.slow(step.took, t0.Add(step.at)); got != step.want {
			t.Errorf("a round of %v at +%v: warned %v, want %v", step.took, step.at, got, step.want)
		}
	}
	none := renewalWatch{}
	if none.slow(time.Hour, t0) {
		t.Error("warned without VIP lifetimes")
	}
}
