package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/heartbeat"
)

// countingGuard counts the renewals of the dead-man switch.
type countingGuard struct{ refreshed atomic.Int64 }

func (*countingGuard) Set(guarded, answer []netip.Addr) error { return nil }
func (g *countingGuard) Refresh() error                       { g.refreshed.Add(1); return nil }
func (*countingGuard) Close() error                           { return nil }

// TestGuardRenewedOnlyWhileBeatsGoOut: the switch is renewed while the
// reconciler runs and the last round of beats is fresh, and not once the
// beats stop (the peers will judge this node silent) or the reconciler is
// stuck; before the first round it is renewed (nobody judges it by beats).
func TestGuardRenewedOnlyWhileBeatsGoOut(t *testing.T) {
	var lastRound atomic.Int64 // Unix nanoseconds; 0: no round yet
	beats := func() time.Time {
		if n := lastRound.Load(); n != 0 {
			return time.Unix(0, n)
		}
		return time.Time{}
	}
	g := &countingGuard{}
	r := &reconciler{guard: g, log: slog.New(slog.DiscardHandler)}
	r.passed.Store(time.Now().UnixNano())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go r.refreshGuard(ctx, time.Millisecond, time.Hour, beats)

	renews := func(what string, want bool) {
		t.Helper()
		// Settle: a renewal that had passed its checks may still be under way.
		time.Sleep(5 * time.Millisecond)
		before := g.refreshed.Load()
		deadline := time.Now().Add(200 * time.Millisecond)
		for time.Now().Before(deadline) {
			if want && g.refreshed.Load() > before {
				return
			}
			if lastRound.Load() != 0 && want {
				lastRound.Store(time.Now().UnixNano()) // beats keep going out
			}
			time.Sleep(time.Millisecond)
		}
		if got := g.refreshed.Load() > before; got != want {
			t.Errorf("%s: renewed %v, want %v", what, got, want)
		}
	}
	renews("before the first round of beats", true)
	lastRound.Store(time.Now().UnixNano())
	renews("while beats go out", true)
	lastRound.Store(time.Now().Add(-guardBeatFresh - time.Millisecond).UnixNano())
	renews("once the beats stopped", false)
	lastRound.Store(time.Now().UnixNano())
	renews("once they go out again", true)
	r.passed.Store(time.Now().Add(-2 * time.Hour).UnixNano())
	renews("with the reconciler stuck", false)
}

// TestGuardLapsesBeforeTakeover checks the arithmetic of the guard's
// timings against the heartbeats': the crashed node's kernel falls silent
// before the earliest takeover, with room for its own delays.
func TestGuardLapsesBeforeTakeover(t *testing.T) {
	const nftRounding = 4 * time.Millisecond
	interval := heartbeat.DefaultInterval
	earliestTake := interval*heartbeat.DefaultTimeoutIntervals - interval // after the crashed node's last round
	lastAnswer := guardBeatFresh + guardAnswerTimeout + nftRounding
	if margin := earliestTake - lastAnswer; margin < 40*time.Millisecond {
		t.Errorf("the guard lapses %v after the last round, the earliest takeover comes %v after it: margin %v, want at least 40ms",
			lastAnswer, earliestTake, margin)
	}
	if guardRefresh*3 > guardAnswerTimeout {
		t.Errorf("renewed every %v, the switch (%v) survives fewer than three missed renewals", guardRefresh, guardAnswerTimeout)
	}
}
