package agent

import (
	"net/netip"
	"slices"
	"time"

	"github.com/vipd/vipd/internal/address"
)

// Making the node match the plan: the interfaces, the guard and the
// announcers (apply), and when that is needed.

// applyNeeded reports whether the node must be made to match want: it
// changed since the last apply, that one failed in part, the VIPs'
// lifetimes are due for renewal, or something asked for a recheck.
func (r *reconciler) applyNeeded(want plan, now time.Time) bool {
	return r.recheck || !r.appliedOK || r.lifetimesDue(now) || !want.same(r.applied)
}

// lifetimesDue reports whether the held VIPs' lifetimes are to be renewed.
func (r *reconciler) lifetimesDue(now time.Time) bool {
	return now.Sub(r.refreshed) >= r.refreshEvery
}

// apply makes the interfaces, the guard and the announcers match p: every
// VIP vipd put on any interface that p does not want there goes, every one
// it wants is added on its interface. Announcements and the kernel's
// answers stop before an address goes, and start only after it is in
// place. It returns the VIPs an interface refused, with why.
func (r *reconciler) apply(p plan) map[netip.Addr]error {
	r.applied, r.appliedOK = p, false
	clean := true
	// One listing serves the whole pass: what to remove, and which VIPs
	// can be added without looking again (AddListed).
	listing, err := r.links.list()
	if err != nil {
		r.log.Error("listing VIPs on the interfaces", "err", err)
		return nil
	}
	owned := listing.Owned()
	// A VIP may be on two interfaces for a moment (its Service moved).
	type onIface struct {
		addr  netip.Addr
		iface string
	}
	have := make(map[onIface]bool, len(owned))
	for _, o := range owned {
		have[onIface{o.Addr, o.Interface}] = true
	}
	in := func(vip netip.Addr, iface string) bool { return have[onIface{vip, iface}] }
	wanted, announced := setOf(p.present), setOf(p.announce)
	var keep []netip.Addr
	for _, vip := range p.announce {
		if in(vip, p.on[vip]) {
			keep = append(keep, vip)
		}
	}
	r.ann.Set(p.byIface(keep))
	// Silence what goes and guard what comes, before either changes.
	var ownedAddrs []netip.Addr
	for _, o := range owned {
		ownedAddrs = append(ownedAddrs, o.Addr)
	}
	clean = r.setGuard(union(ownedAddrs, p.present), keep) && clean

	var stuck []netip.Addr // VIPs that should go and are still on an interface
	for _, o := range owned {
		if wanted[o.Addr] && p.on[o.Addr] == o.Interface {
			continue
		}
		if err := r.links.remove(o); err != nil {
			r.log.Error("removing VIP", "vip", o.Addr, "iface", o.Interface, "err", err)
			stuck = append(stuck, o.Addr)
			continue
		}
		r.log.Info("removed VIP", "vip", o.Addr, "iface", o.Interface)
	}
	var present, announce []netip.Addr
	var refused map[netip.Addr]error
	defer func() {
		r.present, r.on = present, p.on
		r.appliedOK = clean && len(stuck) == 0 && len(refused) == 0
		r.metrics.held.Set(float64(len(present)))
		r.conflicts.watchHeld(present, p, r.links.main.Name)
		ans := r.answeringSet(present, announce, stuck)
		r.answeringNow.Store(&ans)
		r.peers.setAnswering(len(ans) > 0)
	}()
	now := time.Now()
	refresh := r.lifetimesDue(now)
	if refresh {
		r.refreshed = now
	}
	// Each interface is looked up once per pass, not once per VIP: a
	// lookup is a netlink request, and with a hundred VIPs held they were
	// a third of the agent's steady CPU.
	type lookup struct {
		i   *address.Interface
		err error
	}
	ifaces := map[string]lookup{}
	// Lifetimes are renewed together, in a few requests per interface.
	renew := map[*address.Interface][]netip.Addr{}
	for _, vip := range p.present {
		name := p.on[vip]
		l, ok := ifaces[name]
		if !ok {
			l.i, l.err = r.links.iface(name)
			ifaces[name] = l
		}
		i, err := l.i, l.err
		if err != nil {
			// Gone since the election was told: not the address's fault.
			r.log.Error("adding VIP", "vip", vip, "iface", name, "err", err)
			clean = false
			continue
		}
		if in(vip, name) {
			if refresh {
				renew[i] = append(renew[i], vip)
			}
		} else {
			if err := i.AddListed(vip, listing); err != nil {
				r.log.Error("adding VIP", "vip", vip, "iface", name, "err", err)
				if refused == nil {
					refused = map[netip.Addr]error{}
				}
				refused[vip] = err
				continue
			}
			r.log.Info("added VIP", "vip", vip, "iface", name)
		}
		present = append(present, vip)
		if announced[vip] {
			announce = append(announce, vip)
		}
	}
	renewing := time.Now()
	n := 0
	for i, vips := range renew {
		n += len(vips)
		for vip, err := range i.RefreshAll(vips) {
			r.log.Error("renewing VIP lifetime", "vip", vip, "iface", i.Name, "err", err)
		}
	}
	if took := time.Since(renewing); n > 0 && r.renewals.slow(took, time.Now()) {
		r.log.Warn("renewing the VIPs' lifetimes takes the kernel too long for --vip-lifetime: VIPs may expire before they are renewed; "+
			"give them a longer --vip-lifetime, or spread them over more nodes (per-address elections)",
			"vips", n, "took", took.Round(time.Millisecond), "vip_lifetime", r.renewals.lifetime)
	}
	clean = r.setGuard(present, announce) && clean
	r.ann.Set(p.byIface(announce))
	return refused
}

func union(a, b []netip.Addr) []netip.Addr {
	return slices.Concat(a, b) // setGuard sorts and compacts
}

func setOf(vips []netip.Addr) map[netip.Addr]bool {
	m := make(map[netip.Addr]bool, len(vips))
	for _, v := range vips {
		m[v] = true
	}
	return m
}

func sorted(a []netip.Addr) []netip.Addr {
	a = slices.Clone(a)
	slices.SortFunc(a, netip.Addr.Compare)
	return slices.Compact(a)
}

// renewalWatch tells when a round of lifetime renewals took more than a
// quarter of the VIP lifetime, at most once per renewalWarnEvery: the
// kernel's cost of a renewal grows with the IPv6 addresses of the node, so
// a round of 2,000 IPv6 VIPs takes about 0.6 s, and a much larger one
// longer than the default 2 s lifetime
// (docs/addresses-and-announcements.md).
type renewalWatch struct {
	lifetime time.Duration
	warned   time.Time
}

const renewalWarnEvery = time.Minute

// slow reports whether a round that took took, ending at now, is to be
// warned about.
func (w *renewalWatch) slow(took time.Duration, now time.Time) bool {
	if w.lifetime <= 0 || took <= w.lifetime/4 || (!w.warned.IsZero() && now.Sub(w.warned) < renewalWarnEvery) {
		return false
	}
	w.warned = now
	return true
}
