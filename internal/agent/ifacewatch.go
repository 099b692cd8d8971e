package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/vipd/vipd/internal/address"
	"github.com/vipd/vipd/internal/backoff"
	"github.com/vipd/vipd/internal/heartbeat"
)

// ifaceEvents are what the kernel says about the interfaces, from netlink
// subscriptions rather than polling: the reconciler acts on them at once.
type ifaceEvents struct {
	link chan linkEvent
	// gone are addresses removed from any interface of the node.
	gone chan netip.Addr
}

// linkEvent is a change of one interface's link.
type linkEvent struct {
	name string
	st   address.LinkState
}

// watchIface subscribes to the link notifications of every interface and
// to the address notifications until ctx ends; a subscription that fails
// is made again after a growing delay (meanwhile the periodic resync
// repairs what it would have). The failure detector hears of a lost
// carrier of the main interface (--interface, which the heartbeats use)
// straight from the link watch, so that a node cut off judges nobody for
// it and stops holding at once.
func watchIface(ctx context.Context, l *links, hb *heartbeat.Monitor, log *slog.Logger) *ifaceEvents {
	ev := &ifaceEvents{link: make(chan linkEvent, 64), gone: make(chan netip.Addr, 256)}
	main := l.main.Name
	go keepWatching(ctx, "link", log, func() error {
		return l.ns.WatchLinks(ctx, func(name string, s address.LinkState) {
			if name == main {
				if !s.Up {
					log.Warn("interface link is down", "iface", name, "exists", s.Exists)
				}
				if hb != nil {
					hb.SetLinkUp(s.Up)
				}
			}
			if !l.matters(name) {
				return
			}
			select {
			case ev.link <- linkEvent{name: name, st: s}:
			default: // the reconciler is far behind; the resync catches up
			}
		})
	})
	go keepWatching(ctx, "addresses", log, func() error {
		return l.main.WatchRemovals(ctx, func(c address.AddrChange) {
			select {
			case ev.gone <- c.Addr:
			default:
			}
		})
	})
	return ev
}

// keepWatching runs watch until ctx ends, again after each failure.
func keepWatching(ctx context.Context, what string, log *slog.Logger, watch func() error) {
	retry := backoff.Policy{Base: time.Second, Max: time.Minute}
	for failures := 1; ctx.Err() == nil; failures++ {
		err := watch()
		if ctx.Err() != nil {
			return
		}
		d := retry.Delay(failures)
		log.Warn("watching the interface failed; until it works again, changes are found by the periodic resync",
			"watch", what, "err", err, "retry_in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// linkChanged acts on a change of an interface's link. The main
// interface (--interface) made again (a new index): VIPs go on the new one
// (links looks it up afresh), the conflict detector moves to it, and
// refusals caused by the old one's absence end. Any interface whose
// carrier came back: every VIP held on it is announced again at once, as
// switches and neighbours may have forgotten where it is. Whether this
// node lacks an interface its VIPs need is looked at again.
func (r *reconciler) linkChanged(name string, st address.LinkState) {
	defer func() {
		if r.synced {
			r.updateLacking(r.bindings)
		}
	}()
	main := r.links.main
	if !st.Exists {
		if name == main.Name {
			r.log.Warn("the VIP interface was deleted: VIPs cannot be held here until it is back", "iface", name)
		}
		delete(r.linksUp, name)
		return
	}
	if name == main.Name && st.Index != main.Index {
		if _, err := r.links.iface(name); err != nil {
			r.log.Error("the VIP interface was made again, but cannot be read", "iface", name, "err", err)
			return
		}
		if r.conflicts != nil {
			r.openDetector()
		}
		r.log.Info("the VIP interface was made again; VIPs go on it from now on", "iface", name, "index", main.Index, "mac", main.HardwareAddr)
		now := time.Now()
		for c, f := range r.refused {
			f.until = now
			r.refused[c] = f
		}
		r.expireRefusals(now.Add(time.Nanosecond))
	}
	if st.Up && !r.linksUp[name] {
		if r.present != nil {
			r.log.Info("interface link is up: announcing every VIP held on it again", "iface", name)
		}
		r.ann.Reannounce(name)
	}
	r.linksUp[name] = st.Up
}

// lostHeld reports whether a is a VIP this node holds: someone (or the
// kernel) removed it, and it must be put back at once.
func (r *reconciler) lostHeld(a netip.Addr) bool {
	if !slices.Contains(r.present, a) {
		return false
	}
	r.log.Warn("a VIP held here was removed from the interface by someone else; adding it again", "vip", a)
	return true
}
