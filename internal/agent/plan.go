package agent

import (
	"net/netip"
	"slices"

	"github.com/vipd/vipd/internal/election"
)

// plan is the state the interfaces and the announcers should be in.
type plan struct {
	// present are the VIPs that must be on their interface.
	present []netip.Addr
	// announce are the VIPs to announce; always a subset of present.
	announce []netip.Addr
	// on is the interface of each present VIP.
	on map[netip.Addr]string
}

// add adds q, whose VIPs go on iface, to p.
func (p *plan) add(q plan, iface string) {
	p.present = append(p.present, q.present...)
	p.announce = append(p.announce, q.announce...)
	if p.on == nil {
		p.on = map[netip.Addr]string{}
	}
	for _, v := range q.present {
		p.on[v] = iface
	}
}

// addHeld adds vips, held on iface, to p: present and announced, as
// planFor plans them for a holder, without a plan of their own.
func (p *plan) addHeld(vips []netip.Addr, iface string) {
	p.present = append(p.present, vips...)
	p.announce = append(p.announce, vips...)
	if p.on == nil {
		p.on = map[netip.Addr]string{}
	}
	for _, v := range vips {
		p.on[v] = iface
	}
}

// byIface groups vips by the interface p puts them on.
func (p plan) byIface(vips []netip.Addr) map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	for _, v := range vips {
		out[p.on[v]] = append(out[p.on[v]], v)
	}
	return out
}

// planFor derives the desired state of one election's VIPs from what the
// election observed. onIface reports whether a VIP is on the interface now.
//
// A leader holds and announces every VIP. A non-leader announces nothing.
// With preserve set it keeps an IPv4 VIP that is still on its interface
// until a new leader is observed, so that clients' established connections
// survive a short loss of leadership; IPv6 VIPs always go at once, because
// a second node holding one would fail Duplicate Address Detection. During
// a handover (handovers) it keeps every VIP still on its interface: the
// handover ends when the new holder is seen.
func planFor(st election.Status, vips []netip.Addr, preserve, handover bool, onIface func(netip.Addr) bool) plan {
	var p plan
	for _, vip := range vips {
		switch {
		case st.Leading:
			p.present = append(p.present, vip)
			p.announce = append(p.announce, vip)
		case handover && onIface(vip):
			p.present = append(p.present, vip)
		case preserve && vip.Is4() && st.Leader == "" && onIface(vip):
			p.present = append(p.present, vip)
		}
	}
	return p
}

// same reports whether p and q ask for the same state: the same VIPs
// present, each on the same interface, and the same ones announced.
func (p plan) same(q plan) bool {
	if len(p.present) != len(q.present) || len(p.announce) != len(q.announce) {
		return false
	}
	// Plans are made in the bindings' order, so two of a row usually list
	// their VIPs alike; sorting copies (a pass each) only when they don't.
	inOrder := slices.Equal(p.present, q.present) && slices.Equal(p.announce, q.announce)
	if !inOrder && (!slices.Equal(sorted(p.present), sorted(q.present)) || !slices.Equal(sorted(p.announce), sorted(q.announce))) {
		return false
	}
	for _, v := range p.present {
		if p.on[v] != q.on[v] {
			return false
		}
	}
	return true
}
