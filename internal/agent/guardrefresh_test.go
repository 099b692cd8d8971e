package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/heartbeat"
	"github.com/vipd/vipd/internal/logging/logtest"
)

// recordingGuard records how the dead-man switch was last renewed.
type recordingGuard struct {
	mu        sync.Mutex
	renewals  int
	lastUntil time.Time // zero: renewed by Refresh
}

func (*recordingGuard) Set(guarded, answer []netip.Addr) error { return nil }
func (*recordingGuard) Close() error                           { return nil }

func (g *recordingGuard) Refresh() error { return g.RefreshUntil(time.Time{}) }

func (g *recordingGuard) RefreshUntil(until time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.renewals++
	g.lastUntil = until
	return nil
}

func (g *recordingGuard) last() (int, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.renewals, g.lastUntil
}

// TestGuardFollowsTheBeats: with heartbeats the switch is renewed to lapse
// guardAnswerTimeout after the last round of beats, not after the renewal,
// so a node whose beats stop falls silent before its peers can find it
// silent; before the first round it is renewed plainly (nobody judges it
// by beats yet); with the reconciler stuck it is not renewed at all.
func TestGuardFollowsTheBeats(t *testing.T) {
	var lastRound atomic.Int64 // Unix nanoseconds; 0: no round yet
	beats := func() time.Time {
		if n := lastRound.Load(); n != 0 {
			return time.Unix(0, n)
		}
		return time.Time{}
	}
	g := &recordingGuard{}
	r := &reconciler{guard: g, log: slog.New(slog.DiscardHandler)}
	r.passed.Store(time.Now().UnixNano())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go r.refreshGuard(ctx, time.Millisecond, time.Hour, beats)

	// renewedWith waits for a renewal after this call and returns its
	// deadline; ok is false if none came within a second.
	renewedWith := func() (until time.Time, ok bool) {
		t.Helper()
		n0, _ := g.last()
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			// Two renewals: the first may have passed its checks before the call.
			if n, u := g.last(); n >= n0+2 {
				return u, true
			}
		}
		return time.Time{}, false
	}

	if until, ok := renewedWith(); !ok || !until.IsZero() {
		t.Errorf("before the first round of beats: renewed %v with deadline %v, want a plain renewal", ok, until)
	}
	round := time.Now().Add(-50 * time.Millisecond)
	lastRound.Store(round.UnixNano())
	if until, ok := renewedWith(); !ok || !until.Equal(round.Add(guardAnswerTimeout)) {
		t.Errorf("with the last round at %v: renewed %v until %v, want until %v", round, ok, until, round.Add(guardAnswerTimeout))
	}
	r.passed.Store(time.Now().Add(-2 * time.Hour).UnixNano())
	if _, ok := renewedWith(); ok {
		t.Error("renewed with the reconciler stuck")
	}
}

// TestGuardLapsesBeforeTakeover checks the guard's timing against the
// heartbeats': the crashed node's kernel falls silent before the earliest
// takeover, with room for its own delays, and a live agent has several
// renewals within the timeout.
func TestGuardLapsesBeforeTakeover(t *testing.T) {
	const nftRounding = 4 * time.Millisecond
	interval := heartbeat.DefaultInterval
	earliestTake := interval*heartbeat.DefaultTimeoutIntervals - interval // after the crashed node's last round
	lastAnswer := guardAnswerTimeout + nftRounding
	if margin := earliestTake - lastAnswer; margin < 40*time.Millisecond {
		t.Errorf("the guard lapses %v after the last round, the earliest takeover comes %v after it: margin %v, want at least 40ms",
			lastAnswer, earliestTake, margin)
	}
	if guardRefresh*4 > guardAnswerTimeout {
		t.Errorf("renewed every %v, the switch (%v) survives fewer than four missed renewals", guardRefresh, guardAnswerTimeout)
	}
}

// TestGuardLapseIsLogged: a live agent whose node stops answering because
// its beats stopped, or its main loop is stuck, says so once, with the
// reason, and says when it answers again; a moment's lateness is not
// reported.
func TestGuardLapseIsLogged(t *testing.T) {
	var lastRound atomic.Int64
	lastRound.Store(time.Now().UnixNano())
	beats := func() time.Time { return time.Unix(0, lastRound.Load()) }
	var out logtest.Buffer
	r := &reconciler{guard: &recordingGuard{}, log: slog.New(slog.NewTextHandler(&out, nil))}
	r.passed.Store(time.Now().UnixNano())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		r.refreshGuard(ctx, time.Millisecond, time.Second, beats)
	}()
	// Keep the beats and the loop fresh until told otherwise.
	var beating, passing atomic.Bool
	beating.Store(true)
	passing.Store(true)
	go func() {
		for ctx.Err() == nil {
			if beating.Load() {
				lastRound.Store(time.Now().UnixNano())
			}
			if passing.Load() {
				r.passed.Store(time.Now().UnixNano())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	waitFor := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), what); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log:\n%s", what, out.String())
			}
		}
	}

	// A stall shorter than lapseReported is not reported.
	beating.Store(false)
	time.Sleep(lapseReported / 2)
	beating.Store(true)
	time.Sleep(50 * time.Millisecond)
	if s := out.String(); s != "" {
		t.Errorf("a %v stall was logged:\n%s", lapseReported/2, s)
	}

	beating.Store(false)
	waitFor(`reason="no heartbeat round sent"`)
	beating.Store(true)
	waitFor("answers ARP/NDP for its VIPs again")

	passing.Store(false)
	waitFor(`reason="main loop stuck"`)
	passing.Store(true)
	cancel()
	<-stopped
	if n := strings.Count(out.String(), "left to lapse"); n != 2 {
		t.Errorf("logged the lapse %d times, want once per stretch (2):\n%s", n, out.String())
	}
}
