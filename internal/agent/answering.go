package agent

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/vipd/vipd/internal/heartbeat"
)

// What this node answers for: the ARP/NDP guard's members and its
// dead-man switch, and what the agent tells the beats (answering) and the
// election (silenced) about whether it still answers for a VIP.

// publishAnswering records, for silenced, the VIPs this node may still
// answer for after a pass: those announced, and those the kernel may
// answer for (the guard lets it, or there is no guard); with a removal
// stuck, every VIP on the interfaces.
func (r *reconciler) publishAnswering(present, announce []netip.Addr, stuck bool) {
	m := setOf(announce)
	switch {
	case stuck:
		owned, err := r.links.owned()
		if err != nil {
			m = nil // unknown: silenced says no
			break
		}
		for _, o := range owned {
			m[o.Addr] = true
		}
	case r.guard == nil:
		for _, v := range present {
			m[v] = true
		}
	default:
		for _, v := range r.answered {
			m[v] = true
		}
	}
	if m == nil {
		r.answeringNow.Store(nil)
		return
	}
	r.answeringNow.Store(&m)
}

// silenced reports whether, after the last pass, this node answers for
// none of contest's VIPs (election.Elector.SetSilenced): before any pass,
// or if the last one could not tell, it says no. It runs on the election's
// goroutine and reads only what the passes publish.
func (r *reconciler) silenced(contest string) bool {
	ans := r.answeringNow.Load()
	if ans == nil {
		return false
	}
	bound := r.boundNow.Load()
	if bound == nil {
		return true // no contest bound yet: none of its VIPs is here
	}
	b := (*bound)[contest]
	if b == nil {
		return true
	}
	for _, v := range b.vips {
		if (*ans)[v] {
			return false
		}
	}
	return true
}

// answering reports whether this node may still answer for a VIP after
// a pass that left present on the interfaces and announced announce:
// one is announced, or the kernel may answer for one, because the guard
// was not set as asked or there is none, or one could not be removed.
func (r *reconciler) answering(present, announce []netip.Addr, stuck bool) bool {
	if len(announce) > 0 || stuck {
		return true
	}
	if r.guard == nil {
		return len(present) > 0
	}
	return len(r.answered) > 0
}

// setGuard tells the guard which VIPs are on the interface and which of
// them the kernel may answer for, when that changed.
func (r *reconciler) setGuard(guarded, answer []netip.Addr) {
	if r.guard == nil {
		return
	}
	guarded, answer = sorted(guarded), sorted(answer)
	if slices.Equal(guarded, r.guarded) && slices.Equal(answer, r.answered) {
		return
	}
	if err := r.guard.Set(guarded, answer); err != nil {
		r.log.Error("updating the ARP/NDP guard", "err", err)
		return
	}
	r.guarded, r.answered = guarded, answer
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, r.passed.Load())) > stuck {
			continue
		}
		var err error
		if last := beats(); !last.IsZero() {
			err = r.guard.RefreshUntil(last.Add(guardAnswerTimeout))
		} else {
			err = r.guard.Refresh()
		}
		if err != nil {
			r.log.Error("refreshing the ARP/NDP guard", "err", err)
		}
	}
}

// lastRound is hb's LastRound; without heartbeats, always zero.
func lastRound(hb *heartbeat.Monitor) func() time.Time {
	if hb == nil {
		return func() time.Time { return time.Time{} }
	}
	return hb.LastRound
}
