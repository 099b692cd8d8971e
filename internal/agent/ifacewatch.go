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

// ifaceEvents are what the kernel says about the VIP interface, from
// netlink subscriptions rather than polling: the reconciler acts on them
// at once.
type ifaceEvents struct {
	link chan address.LinkState
	// gone are addresses removed from any interface of the node.
	gone chan netip.Addr
}

// watchIface subscribes to the interface's link and address notifications
// until ctx ends; a subscription that fails is made again after a growing
// delay (meanwhile the periodic resync repairs what it would have). The
// failure detector hears of a lost carrier straight from the link watch,
// so that a node cut off judges nobody for it and stops holding at once.
func watchIface(ctx context.Context, iface *address.Interface, hb *heartbeat.Monitor, log *slog.Logger) *ifaceEvents {
	ev := &ifaceEvents{link: make(chan address.LinkState, 64), gone: make(chan netip.Addr, 256)}
	go keepWatching(ctx, "link", log, func() error {
		return iface.WatchLink(ctx, func(s address.LinkState) {
			if !s.Up {
				log.Warn("interface link is down", "exists", s.Exists)
			}
			if hb != nil {
				hb.SetLinkUp(s.Up)
			}
			select {
			case ev.link <- s:
			default: // the reconciler is far behind; the resync catches up
			}
		})
	})
	go keepWatching(ctx, "addresses", log, func() error {
		return iface.WatchAddrs(ctx, func(c address.AddrChange) {
			if c.Added {
				return
			}
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

// linkChanged acts on a change of the interface's link: the interface was
// made again (a new index) — VIPs go on the new one, and refusals caused
// by the old one's absence end; its carrier came back — every VIP held is
// announced again at once, as switches and neighbours may have forgotten
// where it is.
func (r *reconciler) linkChanged(st address.LinkState) {
	if !st.Exists {
		r.log.Warn("the VIP interface was deleted: VIPs cannot be held here until it is back")
		r.linkUp = false
		return
	}
	if st.Index != r.iface.Index {
		fresh, err := address.Lookup(r.iface.Name)
		if err != nil {
			r.log.Error("the VIP interface was made again, but cannot be read", "err", err)
			return
		}
		r.iface.Index, r.iface.MTU, r.iface.Flags, r.iface.HardwareAddr = fresh.Index, fresh.MTU, fresh.Flags, fresh.HardwareAddr
		r.ann.SetInterface(r.iface.Net())
		if r.conflicts != nil {
			r.openDetector()
		}
		r.log.Info("the VIP interface was made again; VIPs go on it from now on", "index", fresh.Index, "mac", fresh.HardwareAddr)
		now := time.Now()
		for c, f := range r.refused {
			f.until = now
			r.refused[c] = f
		}
		r.expireRefusals(now.Add(time.Nanosecond))
	}
	if st.Up && !r.linkUp {
		r.log.Info("interface link is up: announcing every VIP held again")
		r.ann.Reannounce()
	}
	r.linkUp = st.Up
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
