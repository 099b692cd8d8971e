package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/vipd/vipd/internal/heartbeat"
)

// What this node answers for: the ARP/NDP guard's members and its
// dead-man switch, and what the agent tells the beats and the election
// (answeringSet, silenced) about whether it still answers for a VIP.

// answeringSet is the VIPs this node may still answer for after a pass
// that left present on the interfaces, announced announce and failed to
// remove stuck: those announced or stuck, and those the kernel may answer
// for (the guard lets it, or there is no guard).
func (r *reconciler) answeringSet(present, announce, stuck []netip.Addr) map[netip.Addr]bool {
	m := setOf(announce)
	kernel := r.answered
	if r.guard == nil {
		kernel = present
	}
	for _, v := range slices.Concat(stuck, kernel) {
		m[v] = true
	}
	return m
}

// silenced reports whether, after the last pass, this node answers for
// none of contest's VIPs (election.Elector.SetSilenced): before any pass
// it says no. It runs on the election's
// goroutine and reads only what the passes publish.
func (r *reconciler) silenced(contest string) bool {
	ans := r.answeringNow.Load()
	if ans == nil {
		return false
	}
	r.boundMu.RLock()
	defer r.boundMu.RUnlock()
	b := r.boundNow[contest]
	if b == nil {
		return true // not bound (yet): none of its VIPs is here
	}
	for _, v := range b.vips {
		if (*ans)[v] {
			return false
		}
	}
	return true
}

// setGuard tells the guard which VIPs are on the interface and which of
// them the kernel may answer for, when that changed. It reports whether
// the guard is as asked.
func (r *reconciler) setGuard(guarded, answer []netip.Addr) bool {
	if r.guard == nil {
		return true
	}
	guarded, answer = sorted(guarded), sorted(answer)
	if slices.Equal(guarded, r.guarded) && slices.Equal(answer, r.answered) {
		return true
	}
	if err := r.guard.Set(guarded, answer); err != nil {
		r.log.Error("updating the ARP/NDP guard", "err", err)
		return false
	}
	r.guarded, r.answered = guarded, answer
	return true
}

// refreshGuard renews the guard's dead-man switch every interval while
// the reconciler keeps running: if the agent dies or gets stuck, the node
// stops answering ARP and NDP for its VIPs within the guard's timeout.
// beats gives the time of this agent's last round of heartbeats (zero
// before the first, or without heartbeats); once there is one, the switch
// lapses no later than guardAnswerTimeout after the last round, whatever
// renews it: before the peers, who judge this node by those beats, can
// find it silent and take its VIPs.
func (r *reconciler) refreshGuard(ctx context.Context, interval, stuck time.Duration, beats func() time.Time) {
	if r.guard == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var lapse guardLapse
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if idle := now.Sub(time.Unix(0, r.passed.Load())); idle > stuck {
			lapse.note(r.log, now, "main loop stuck", idle)
			continue
		}
		var err error
		last := beats()
		if !last.IsZero() {
			err = r.guard.RefreshUntil(last.Add(guardAnswerTimeout))
		} else {
			err = r.guard.Refresh()
		}
		switch {
		case err != nil:
			r.log.Error("refreshing the ARP/NDP guard", "err", err)
		case !last.IsZero() && now.Sub(last) > guardAnswerTimeout:
			lapse.note(r.log, now, "no heartbeat round sent", now.Sub(last))
		default:
			lapse.end(r.log, now)
		}
	}
}

// lapseReported is how long the guard's switch must have been left to
// lapse before the log says so: beats late by more than the switch's
// 130 ms happen for a moment on a loaded node, and a client waits for a
// resolution longer than that only when it lasts.
const lapseReported = 500 * time.Millisecond

// guardLapse tells the log, once per stretch, that this node has stopped
// answering ARP/NDP for its VIPs although the agent runs, and why; and
// when it answers again. Without it, the only trace of a live holder gone
// silent was the clients' failures.
type guardLapse struct {
	since time.Time // zero: the switch is renewed
	said  bool
}

// note records a renewal skipped or cut short for why; stalled is how long
// ago the beats or the loop last showed life.
func (l *guardLapse) note(log *slog.Logger, now time.Time, why string, stalled time.Duration) {
	if l.since.IsZero() {
		l.since = now
	}
	if !l.said && now.Sub(l.since) >= lapseReported {
		l.said = true
		log.Warn("the guard's switch is left to lapse: this node does not answer ARP/NDP for any VIP it holds",
			"reason", why, "stalled_for", stalled.Round(time.Millisecond))
	}
}

func (l *guardLapse) end(log *slog.Logger, now time.Time) {
	if l.said {
		log.Info("this node answers ARP/NDP for its VIPs again", "after", now.Sub(l.since).Round(time.Millisecond))
	}
	*l = guardLapse{}
}

// lastRound is hb's LastRound; without heartbeats, always zero.
func lastRound(hb *heartbeat.Monitor) func() time.Time {
	if hb == nil {
		return func() time.Time { return time.Time{} }
	}
	return hb.LastRound
}
