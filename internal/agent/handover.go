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
// holder, so clients are served by one node or the other throughout. A
// node that lost its endpoints (externalTrafficPolicy: Local) or its
// interface, or that stops, has nothing to serve them with and lets go at
// once.
type handovers struct {
	// max bounds how long a VIP is kept when no new holder appears.
	max   time.Duration
	until map[string]time.Time // by contest
}

// keep reports whether this node, node, keeps b's VIPs silent now, given
// its status before (prev) and now (st) and why it last lost the contest.
func (h *handovers) keep(b binding, node string, prev, st election.Status, why election.Reason, now time.Time) bool {
	if h.until == nil {
		h.until = map[string]time.Time{}
	}
	if prev.Leading && !st.Leading && st.Leader == "" && why == election.LostNotCandidate &&
		(b.local == nil || slices.Contains(b.local, node)) {
		h.until[b.contest] = now.Add(h.max)
	}
	until, ok := h.until[b.contest]
	switch {
	case !ok:
		return false
	case st.Leading || st.Leader != "" || now.After(until):
		delete(h.until, b.contest)
		return false
	}
	return true
}

// forget drops the handovers of contests that are gone.
func (h *handovers) forget(keep map[string]election.Status) {
	for c := range h.until {
		if _, ok := keep[c]; !ok {
			delete(h.until, c)
		}
	}
}
