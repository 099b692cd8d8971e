package election

import (
	"time"

	"github.com/vipd/vipd/internal/notify"
)

// Who is live, as this agent judges it. The Lease is the authority: an
// agent is live while its node Lease is renewed. The failure detector
// (heartbeats, authenticated) may only make that judgement faster, never
// extend it — with one exception, an API outage that every agent shares,
// during which nobody can renew and nobody can take a claim either.

// liveLocked reports whether this agent may hold VIPs now.
func (e *Elector) liveLocked(now time.Time) bool {
	if e.fencedLocked(now) {
		return false
	}
	return e.renewedLocked(now) || e.outageHoldLocked(now)
}

// renewedLocked: our node Lease was renewed within the renew deadline.
func (e *Elector) renewedLocked(now time.Time) bool {
	return !e.released && !e.lastRenew.IsZero() && now.Before(e.lastRenew.Add(e.cfg.RenewDeadline))
}

// outageHoldLocked decides whether this agent, unable to renew, may keep
// holding anyway. It may when every agent that was live when it last
// renewed is heard from and says it cannot reach the API server either:
// then nobody can take a claim from it, and dropping the VIPs would turn
// an API outage into a VIP outage. If any of them is not heard it could
// take over: the holder lets go by its renew deadline as usual. If one
// reaches the API server again, the holder probes it too and keeps holding
// for half a retry period, long enough for its own renewal to succeed when
// the outage is over; only if it is cut off alone does it let go. The
// others do not take over meanwhile (sharedOutageLocked).
func (e *Elector) outageHoldLocked(now time.Time) bool {
	if e.released || e.cfg.Peers == nil || e.lastRenew.IsZero() || !e.wasLive {
		return false
	}
	peerReachesAPI := false
	for h, o := range e.peerLeasesLocked() {
		if !e.lastRenew.Before(e.expiry(o)) {
			continue // not live when we last reached the API: not a rival
		}
		r := e.cfg.Peers.Peer(h)
		if !r.Heard {
			return false
		}
		peerReachesAPI = peerReachesAPI || r.APIOK
	}
	if !peerReachesAPI {
		e.apiBackAt = time.Time{}
		return true
	}
	if e.apiBackAt.IsZero() {
		e.apiBackAt = now
		notify.Signal(e.probe)
	}
	return now.Before(e.apiBackAt.Add(e.cfg.RetryPeriod / 2))
}

// sharedOutageLocked reports whether this agent must still allow for an
// API outage that a holder may be riding out: it cannot reach the API
// server itself, or it has not yet read every Lease afresh since it came
// back, or it did so less than a retry period ago. A holder that hears an
// agent reach the API again gets half a retry period to renew or let go
// (outageHoldLocked); the other half covers the beat that tells it.
func (e *Elector) sharedOutageLocked(now time.Time) bool {
	f := &e.fence
	if !e.apiOK || e.staleSinceAPIBackLocked() {
		return true
	}
	return !f.apiBack.IsZero() && now.Before(f.freshAt.Add(e.cfg.RetryPeriod))
}

// peerLiveLocked judges another agent whose node Lease is live or not by
// this agent's clock (leaseLive).
//
//   - Heard, saying it is not live: it has let go, so its claims are free
//     at once. Beats are authenticated, so only that agent can say so.
//   - Heard, saying it is live: live while its Lease is, and beyond only
//     during an API outage that this agent shares (sharedOutageLocked). A
//     beat never holds a VIP back past the Lease otherwise. But when it
//     also says it reaches the API server, its renewals succeed, and a
//     Lease that looks expired means this agent's view is stale (a watch
//     behind after an outage): it reads every Lease afresh first, and
//     judges by the Lease only once a read made after it saw the
//     contradiction still shows it expired.
//   - Silent (heard before, not now, and this agent is not itself cut off
//     or just back): dead at once, unless another agent this one hears
//     still hears it. Two agents that cannot hear each other but both hear
//     a third therefore never judge each other dead.
//   - Anything else (never heard, or vouched for): the Lease decides.
func (e *Elector) peerLiveLocked(node string, leaseLive bool, now time.Time) (bool, string) {
	if e.cfg.Peers == nil {
		return leaseLive, leaseReason(leaseLive)
	}
	r := e.cfg.Peers.Peer(node)
	if leaseLive || !r.Heard || !r.Live || !r.APIOK {
		delete(e.contradicted, node)
	}
	switch {
	case r.Heard && !r.Live:
		return false, "its heartbeats say it has let go"
	case r.Heard && !leaseLive && e.sharedOutageLocked(now):
		return true, "heard during an API outage"
	case r.Heard && !leaseLive && r.APIOK:
		seen, ok := e.contradicted[node]
		if !ok {
			seen = now
			e.contradicted[node] = now
			e.log.Info("an agent that renews says it reaches the API server, but its Lease looks expired here: reading every Lease afresh",
				"peer", node)
			notify.Signal(e.relist)
		}
		if !e.fence.freshAt.After(seen) {
			return true, "heard renewing; its Lease is being read afresh"
		}
		return false, "its Lease is expired, read afresh"
	case r.Heard:
		return leaseLive, leaseReason(leaseLive)
	case r.Silent && !e.cfg.Peers.Vouched(node):
		return false, "its heartbeats stopped and no other agent hears it"
	}
	return leaseLive, leaseReason(leaseLive)
}

func leaseReason(live bool) string {
	if live {
		return "node lease renewed"
	}
	return "node lease expired"
}
