package agent

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vipd/vipd/internal/address"
	"github.com/vipd/vipd/internal/announce"
)

// links are the interfaces vipd puts VIPs on: --interface for the
// control-plane VIPs, --services-interface (else --interface) for Service
// VIPs, and any interface a Service or its pool names. Each has its own
// announcer. Interfaces come and go (a VLAN interface made after the agent
// started, a bond taken down): they are looked up by name when used, and
// one netlink watch says when any of them changes.
type links struct {
	ns   *address.Namespace
	main *address.Interface // --interface, resolved at start
	// svc is the interface of Service VIPs that name none.
	svc      string
	lifetime time.Duration
	log      *slog.Logger
	// arp: announce at all (vip_arp); opts for each announcer.
	arp     bool
	annOpts announce.Options

	mu     sync.Mutex
	ifaces map[string]*address.Interface
	anns   map[string]ifAnnouncer
	// used are the interfaces VIPs go on now, besides main and svc.
	used map[string]bool
}

// ifAnnouncer is the announcer of one interface, and the index it was made for.
type ifAnnouncer struct {
	*announce.Announcer
	index int
}

func newLinks(ns *address.Namespace, main *address.Interface, svc string, lifetime time.Duration, arp bool, rate time.Duration, reg prometheus.Registerer, log *slog.Logger) *links {
	if svc == "" {
		svc = main.Name
	}
	main.Lifetime = lifetime
	return &links{
		ns: ns, main: main, svc: svc, lifetime: lifetime, log: log, arp: arp,
		annOpts: announce.Options{Interval: rate, Registerer: reg},
		ifaces:  map[string]*address.Interface{main.Name: main},
		anns:    map[string]ifAnnouncer{},
	}
}

// ifaceFor is the interface of a VIP given the interface its Service or
// pool names ("" for none).
func (l *links) ifaceFor(named string) string {
	if named == "" {
		return l.svc
	}
	return named
}

// problem says why the named interface cannot carry VIPs now ("" if it can).
func (l *links) problem(name string) string {
	st, err := l.ns.LinkState(name)
	switch {
	case err != nil:
		return err.Error()
	case !st.Exists:
		return fmt.Sprintf("interface %s does not exist on this node", name)
	case !st.Up:
		return fmt.Sprintf("interface %s is down on this node", name)
	}
	return ""
}

// iface returns the named interface for address changes, looked up afresh
// if it was made again since (its index changed): the same object, updated,
// so that holders of it (the main interface's) see the change.
func (l *links) iface(name string) (*address.Interface, error) {
	st, err := l.ns.LinkState(name)
	if err != nil {
		return nil, err
	}
	if !st.Exists {
		return nil, fmt.Errorf("interface %s does not exist on this node", name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	i := l.ifaces[name]
	if i != nil && i.Index == st.Index {
		return i, nil
	}
	fresh, err := l.ns.Lookup(name)
	if err != nil {
		return nil, err
	}
	fresh.Lifetime = l.lifetime
	if i == nil {
		l.ifaces[name] = fresh
		return fresh, nil
	}
	*i = *fresh
	return i, nil
}

// setUsed records the interfaces the bindings put VIPs on.
func (l *links) setUsed(names []string) {
	used := map[string]bool{}
	for _, n := range names {
		used[n] = true
	}
	l.mu.Lock()
	l.used = used
	l.mu.Unlock()
}

// matters reports whether changes of the named interface concern vipd: a
// node may have hundreds of others (a veth per pod).
func (l *links) matters(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return name == l.main.Name || name == l.svc || l.used[name]
}

// Reannounce announces every VIP of the named interface again at once.
func (l *links) Reannounce(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if a, ok := l.anns[name]; ok {
		a.Reannounce()
	}
}

// owned lists the VIPs vipd put on any interface.
func (l *links) owned() ([]address.OwnedVIP, error) { return l.ns.OwnedAll() }

// list dumps every address of the node's namespace.
func (l *links) list() (address.Listing, error) { return l.ns.List() }

// remove takes an owned VIP off its interface.
func (l *links) remove(o address.OwnedVIP) error { return l.ns.Remove(o) }

// Set announces, on each interface, the VIPs given for it, and nothing
// anywhere else: an interface left out stops announcing at once.
func (l *links) Set(on map[string][]netip.Addr) {
	if !l.arp {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, a := range l.anns {
		if len(on[name]) == 0 {
			a.Set(nil)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(on)) {
		vips := on[name]
		if len(vips) == 0 {
			continue
		}
		a, err := l.announcerLocked(name)
		if err != nil {
			l.log.Error("cannot announce VIPs", "iface", name, "vip", vips, "err", err)
			continue
		}
		a.Set(vips)
	}
}

// announcerLocked returns the announcer of the named interface, made anew
// if the interface was made again since (its index changed).
func (l *links) announcerLocked(name string) (*announce.Announcer, error) {
	i := l.ifaces[name]
	if i == nil {
		return nil, fmt.Errorf("interface %s not looked up", name)
	}
	if a, ok := l.anns[name]; ok {
		if a.index == i.Index {
			return a.Announcer, nil
		}
		_ = a.Close()
		delete(l.anns, name)
	}
	a, err := announce.New(i.Net(), l.annOpts, l.log.With("iface", name))
	if err != nil {
		return nil, fmt.Errorf("starting announcements on %s: %w", name, err)
	}
	l.anns[name] = ifAnnouncer{Announcer: a, index: i.Index}
	return a, nil
}

// Close stops every announcer.
func (l *links) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, a := range l.anns {
		if err := a.Close(); err != nil {
			l.log.Warn("closing the announcer", "iface", name, "err", err)
		}
	}
	clear(l.anns)
}
