package agent

import (
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/vipd/vipd/internal/services"
)

// ServiceLeasePrefix starts the claim name of a per-address service
// election: vipd-svc-192-0-2-10,
// vipd-svc-2001-0db8-0000-0000-0000-0000-0000-0010.
const ServiceLeasePrefix = "vipd-svc-"

// contestFor names the claim of one service address. IPv6 addresses are
// written in full: the short form can end in "::", and a Lease name may
// not end in "-".
func contestFor(ip netip.Addr) string {
	s := ip.String()
	if ip.Is6() {
		s = ip.StringExpanded()
	}
	b := make([]byte, 0, len(ServiceLeasePrefix)+len(s))
	b = append(b, ServiceLeasePrefix...)
	for i := range len(s) {
		c := s[i]
		if c == '.' || c == ':' {
			c = '-'
		}
		b = append(b, c)
	}
	return string(b)
}

// contestSettings are what decides, besides the Services' addresses,
// which contest carries each VIP.
type contestSettings struct {
	// cpLease carries cpVIPs (none: no control-plane VIP).
	cpLease string
	cpVIPs  []netip.Addr
	// svcLease carries the Service addresses that need no contest of their
	// own, unless perAddress.
	svcLease   string
	perAddress bool
	// iface is the control-plane VIPs' interface; svcIface the default of
	// Service VIPs.
	iface, svcIface string
}

// bindingsFor decides which contest carries each VIP, and on which
// interface.
//
// The control-plane VIPs have their contest. A service address that is also
// a control-plane VIP rides on that contest, so the shared address has one
// holder. In per-address mode every other address has its own contest. In
// one-for-all mode they share svcLease, except addresses whose holder must
// be chosen differently, which need a contest of their own: restricted to
// some nodes (externalTrafficPolicy: Local, a pool's node selector) or on
// another interface than the default (the one leader may lack it).
//
// memo, if not nil, keeps the per-address bindings between calls: an
// address whose Services, candidates, interface and pool did not change
// gets the binding it had, so that setting the bindings costs what
// changed, not an allocation per address.
//
// The bindings are made in buf, whose contents are replaced, when it has
// room.
func bindingsFor(s contestSettings, addrs []services.Address, memo *bindingMemo, buf []binding) []binding {
	memo.start()
	defer memo.done()
	clear(buf[:cap(buf)]) // nothing of an earlier use stays reachable through it
	out := slices.Grow(buf[:0], len(addrs)+2)
	if len(s.cpVIPs) > 0 {
		out = append(out, binding{contest: s.cpLease, vips: s.cpVIPs, controlPlane: true, iface: s.iface})
	}
	shared := binding{contest: s.svcLease, iface: s.svcIface}
	for _, a := range addrs {
		iface := a.Interface
		if iface == "" {
			iface = s.svcIface
		}
		switch {
		case slices.Contains(s.cpVIPs, a.IP):
			out[0].setServices(slices.Index(s.cpVIPs, a.IP), a.Services) // the control-plane binding
		case s.perAddress || a.Candidates != nil || a.NodeSelector != "" || iface != s.svcIface:
			out = append(out, memo.own(a, iface))
		default:
			shared.vips = append(shared.vips, a.IP)
			shared.setServices(len(shared.vips)-1, a.Services)
		}
	}
	if len(shared.vips) > 0 {
		out = append(out, shared)
	}
	for i := range out {
		if out[i].iface != s.iface {
			// Only the other interfaces are needs: without --interface
			// the agent does not run at all.
			out[i].needs = out[i].iface
		}
	}
	return out
}

// setServices records the Services of b's i-th VIP.
func (b *binding) setServices(i int, svcs []types.NamespacedName) {
	if len(svcs) == 0 {
		return
	}
	for len(b.services) < len(b.vips) {
		b.services = append(b.services, nil)
	}
	b.services[i] = svcs
}

// servicesOf returns the Services of b's VIP v.
func (b binding) servicesOf(v netip.Addr) []types.NamespacedName {
	if i := slices.Index(b.vips, v); i >= 0 && i < len(b.services) {
		return b.services[i]
	}
	return nil
}

// allServices lists the Services of all of b's addresses, sorted.
func (b binding) allServices() []types.NamespacedName {
	seen := map[types.NamespacedName]bool{}
	var out []types.NamespacedName
	for _, svcs := range b.services {
		for _, s := range svcs {
			if !seen[s] {
				seen[s] = true
				out = append(out, s)
			}
		}
	}
	slices.SortFunc(out, func(x, y types.NamespacedName) int { return strings.Compare(x.String(), y.String()) })
	return out
}

// cpVIP reports whether v is a control-plane VIP of b.
func (b binding) cpVIP(v netip.Addr) bool { return b.controlPlane && slices.Contains(b.vips, v) }

// bindingMemo keeps the binding of each address that has a contest of its
// own (bindingsFor).
type bindingMemo struct {
	entries map[netip.Addr]memoEntry
	// asked are the addresses the current call of bindingsFor asked for
	// (a buffer kept between calls).
	asked []netip.Addr
}

type memoEntry struct {
	addr services.Address
	b    binding
}

// own returns the binding of an address with a contest of its own, on
// iface.
func (m *bindingMemo) own(a services.Address, iface string) binding {
	if m != nil {
		m.asked = append(m.asked, a.IP)
		if e, ok := m.entries[a.IP]; ok && e.b.iface == iface && sameAddress(e.addr, a) {
			return e.b
		}
	}
	b := binding{contest: contestFor(a.IP), vips: []netip.Addr{a.IP}, candidates: a.Candidates, local: a.Candidates,
		iface: iface, pool: a.Pool, selector: a.NodeSelector}
	b.setServices(0, a.Services)
	if m != nil {
		if m.entries == nil {
			m.entries = map[netip.Addr]memoEntry{}
		}
		m.entries[a.IP] = memoEntry{addr: a, b: b}
	}
	return b
}

// sameAddress reports whether x and y give the same binding.
func sameAddress(x, y services.Address) bool {
	return x.Interface == y.Interface && x.Pool == y.Pool && x.NodeSelector == y.NodeSelector &&
		slices.Equal(x.Services, y.Services) &&
		(x.Candidates == nil) == (y.Candidates == nil) && slices.Equal(x.Candidates, y.Candidates)
}

// start begins a call of bindingsFor; done forgets the addresses it did
// not ask for. Entries are not marked as they are used, which with a
// thousand addresses was a map write each per call: an address is asked
// for once per call, so only when the memo holds more than were asked
// did some go away.
func (m *bindingMemo) start() {
	if m != nil {
		m.asked = m.asked[:0]
	}
}

func (m *bindingMemo) done() {
	if m == nil || len(m.entries) <= len(m.asked) {
		return
	}
	asked := make(map[netip.Addr]bool, len(m.asked))
	for _, ip := range m.asked {
		asked[ip] = true
	}
	for ip := range m.entries {
		if !asked[ip] {
			delete(m.entries, ip)
		}
	}
}
