package agent

import (
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
// returns, and this node may see that write first. A
// node that lost its endpoints (externalTrafficPolicy: Local) or its
// interface, or that stops, has nothing to serve them with and lets go at
// once.
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
	if prev.Leading && !st.Leading && st.Leader == "" && why == election.LostNotCandidate &&
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
func (h *handovers) forget(keep map[string]election.Status) {
	for c := range h.until {
		if _, ok := keep[c]; !ok {
			delete(h.until, c)
			delete(h.seen, c)
		}
	}
}
