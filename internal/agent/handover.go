package agent

import (
	"context"
	"slices"
	"time"

	"github.com/vipd/vipd/internal/election"
)

// handovers make a graceful release seamless for clients. A node that lets
// go of VIPs because its labels no longer allow it to hold them (a node
// selector, --service-exclude-control-plane) would otherwise remove them
// at once, and clients that still send to it go unanswered until the new
// holder has taken the claim and announced (two Lease writes). Instead it
// keeps them on the interface, silent — not announced, and the guard keeps
// the kernel from answering ARP and NDP for them — until it sees the new
// holder, and a moment more, so clients are served by one node or the
// other throughout: the new holder announces right after its claim write
// returns, and this node may see that write first. A node that lost its
// endpoints (externalTrafficPolicy: Local) or its interface has nothing to
// serve them with and lets go at once. A node that stops hands over the
// same way (shutdown).
type handovers struct {
	// max bounds how long a VIP is kept when no new holder appears;
	// linger is how long it is kept once the new holder is seen.
	max, linger time.Duration
	until       map[string]time.Time // by contest
	seen        map[string]bool      // the new holder was seen
}

// keep reports whether this node, node, keeps b's VIPs silent now, given
// its status before (prev) and now (st) and why it last lost the contest.
func (h *handovers) keep(b binding, node string, prev, st election.Status, why election.Reason, now time.Time) bool {
	if h.until == nil {
		h.until, h.seen = map[string]time.Time{}, map[string]bool{}
	}
	c := b.contest
	// The new holder may be seen already when the loss is (changes are
	// gathered): then only the moment more for its announcement is left.
	if prev.Leading && !st.Leading && st.Leader != node && why == election.LostNotCandidate &&
		(b.local == nil || slices.Contains(b.local, node)) {
		h.until[c], h.seen[c] = now.Add(h.max), false
	}
	until, ok := h.until[c]
	switch {
	case !ok:
		return false
	case st.Leading || now.After(until):
		delete(h.until, c)
		delete(h.seen, c)
		return false
	case st.Leader != "" && !h.seen[c]:
		h.seen[c] = true
		if end := now.Add(h.linger); end.Before(until) {
			h.until[c] = end
		}
	}
	return true
}

// next is when the next handover ends (zero if none): the agent must
// look again then.
func (h *handovers) next() time.Time {
	var at time.Time
	for _, u := range h.until {
		if at.IsZero() || u.Before(at) {
			at = u
		}
	}
	return at
}

// forget drops the handovers of contests that are gone.
func (h *handovers) forget(exists func(contest string) bool) {
	for c := range h.until {
		if !exists(c) {
			delete(h.until, c)
			delete(h.seen, c)
		}
	}
}

// shutdown steps down without a gap for clients, in the order that keeps
// one answering holder: it silences its VIPs (no announcements, and the
// guard keeps the kernel from answering ARP and NDP for them) but leaves
// them on their interfaces, so the clients that still send here are
// served; it releases, so the next holders take over at once; it waits
// until it sees a new holder of every contest it led, and handoverLinger
// more for their announcements, at most stepDownMax; then it removes the
// VIPs. The guard goes last: with the addresses gone it has nothing left
// to guard.
func (r *reconciler) shutdown() {
	r.log.Info("shutting down: stepping down")
	var led []string
	for _, b := range r.bindings {
		if r.last[b.contest].Leading {
			led = append(led, b.contest)
		}
	}
	if len(led) > 0 {
		r.apply(plan{present: r.present, on: r.on})
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := r.el.Release(ctx); err != nil {
		r.log.Warn("could not release; others take over when this node's lease expires", "err", err)
	} else if len(led) > 0 {
		r.awaitSuccessors(led)
	}
	r.apply(plan{})
	if r.guard != nil {
		if err := r.guard.Close(); err != nil {
			r.log.Warn("removing the ARP/NDP guard", "err", err)
		}
	}
}

// stepDownMax bounds how long a stopping agent waits for the next holders
// of its VIPs: they take over within two Lease writes of the release, so
// a second means they are not coming (no other agent, or none reaches the
// API server) and waiting longer would only hold up the stop.
const stepDownMax = time.Second

// awaitSuccessors waits until every contest in led has a holder other than
// this node, as the election or an authenticated heartbeat says, and then
// handoverLinger more; or stepDownMax in all.
func (r *reconciler) awaitSuccessors(led []string) {
	deadline := time.NewTimer(stepDownMax)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond) // heartbeats bring news without a Changes signal
	defer tick.Stop()
	for {
		waiting := slices.DeleteFunc(slices.Clone(led), func(c string) bool {
			h := r.el.Status(c).Leader
			if h == "" && r.hb != nil {
				h = r.hb.HolderOf(c)
			}
			return h != "" && h != r.node
		})
		if len(waiting) == 0 {
			r.log.Info("the next holders have taken over; removing the VIPs", "elections", led)
			linger := time.NewTimer(handoverLinger)
			defer linger.Stop()
			select {
			case <-linger.C:
			case <-deadline.C:
			}
			return
		}
		select {
		case <-deadline.C:
			r.log.Warn("no new holder seen for some VIPs; removing them anyway", "elections", waiting, "waited", stepDownMax)
			return
		case <-r.el.Changes():
		case <-tick.C:
		}
	}
}
