package agent

import (
	"testing"
	"time"
)

// TestGatherGapFollowsPassCost: while passes are cheap, changes are
// gathered for busyGap; a dear pass stretches the gap so that passes take
// at most a passShare-th of the time, up to maxGap; an agent waiting to
// see a new holder gathers for changeGap whatever a pass costs.
func TestGatherGapFollowsPassCost(t *testing.T) {
	for _, c := range []struct {
		waiting bool
		cost    time.Duration
		want    time.Duration
	}{
		{false, 0, busyGap},
		{false, time.Millisecond, busyGap},
		{false, 10 * time.Millisecond, passShare * 10 * time.Millisecond},
		{false, 30 * time.Millisecond, passShare * 30 * time.Millisecond},
		{false, time.Second, maxGap},
		{true, 30 * time.Millisecond, changeGap},
	} {
		if got := gatherGap(c.waiting, c.cost); got != c.want {
			t.Errorf("gatherGap(waiting %v, pass %v) = %v, want %v", c.waiting, c.cost, got, c.want)
		}
	}
}
