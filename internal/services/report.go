package services

import (
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Every agent sees the same Services and finds the same problems; Events
// about them are recorded by one agent only (Config.Reporter), so that N
// nodes do not give N copies.

// pendingEvent is a Warning waiting until the reporter is known.
type pendingEvent struct {
	svc     types.NamespacedName
	uid     types.UID
	addrs   []netip.Addr
	warning warning
	// rejected: a VIPRejected warning, valid while the address is still
	// rejected for the same reason; otherwise a plan warning, valid while
	// the plan has it.
	rejected bool
	// here: only this node sees the problem (its own interface refused
	// the address), so it records the Warning itself.
	here bool
	// othersSince is when another node was first named to record it; it
	// is kept until ReporterGrace has passed, in case that node turns out
	// to be gone and this one becomes the reporter.
	othersSince time.Time
}

// Held is an address this node holds, and how it came to.
type Held struct {
	IP netip.Addr
	// Previous is the holder before this node ("" if none); equal to this
	// node when it held it already (a restart), which is not a takeover.
	Previous string
	// Reason is why this node took it (election.Reason).
	Reason string
}

// TakeoverNote says where a VIP came from, for Events: "was n1:
// holder-silent", or "no holder before: new".
func TakeoverNote(previous, reason string) string {
	if previous == "" {
		return "no holder before: " + reason
	}
	return "was " + previous + ": " + reason
}

// Synced reports whether the informers have synced.
func (c *Controller) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recorder != nil
}

// FlushEvents records the Warnings that waited for their reporter to be
// known. The agent calls it when who holds what, or who is live, may have
// changed.
func (c *Controller) FlushEvents() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flushLocked()
}

func (c *Controller) flushLocked() {
	if c.recorder == nil {
		return
	}
	now := time.Now()
	keep := c.pending[:0]
	for _, p := range c.pending {
		if !c.stillValidLocked(p) {
			continue
		}
		reporter := c.cfg.NodeName
		if c.cfg.Reporter != nil && !p.here {
			reporter = c.cfg.Reporter(p.addrs)
		}
		if reporter == "" {
			keep = append(keep, p) // not known yet
			continue
		}
		log := c.log.With("service", p.svc.String(), "reason", p.warning.reason, "problem", p.warning.message)
		if reporter != c.cfg.NodeName {
			if p.othersSince.IsZero() {
				log.Warn("service problem", "event_recorded_by", reporter)
				p.othersSince = now
			}
			if now.Sub(p.othersSince) < c.cfg.ReporterGrace {
				keep = append(keep, p)
			}
			continue
		}
		svc, err := c.services.Services(p.svc.Namespace).Get(p.svc.Name)
		if err != nil || svc.UID != p.uid {
			continue
		}
		c.recorder.Event(svc, corev1.EventTypeWarning, p.warning.reason, p.warning.message)
		if p.othersSince.IsZero() {
			log.Warn("service problem", "event_recorded_by", reporter)
		} else {
			log.Warn("recording a service problem that another node was to record", "event_recorded_by", reporter)
		}
	}
	clear(c.pending[len(keep):])
	c.pending = keep
}

// stillValidLocked reports whether a pending Warning still describes the
// cluster.
func (c *Controller) stillValidLocked(p pendingEvent) bool {
	if p.here {
		return true
	}
	if p.rejected {
		r := c.rejected[p.addrs[0]]
		return r != nil && reasonRejectedMessage(p.addrs[0], r.reason) == p.warning.message
	}
	return c.warned[p.uid][p.warning]
}

// reasonRejectedMessage is the text of a VIPRejected Warning. It does not
// name the node: every node rejects the address for the same reason, and
// one of them says so.
func reasonRejectedMessage(ip netip.Addr, reason string) string {
	return ip.String() + " rejected: " + reason
}

// heldInfoLocked returns how this node came to hold ip.
func (c *Controller) heldInfoLocked(ip netip.Addr) (Held, bool) {
	i := slices.IndexFunc(c.heldInfo, func(h Held) bool { return h.IP == ip })
	if i < 0 {
		return Held{}, false
	}
	return c.heldInfo[i], true
}
