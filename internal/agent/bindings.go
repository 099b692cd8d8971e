package agent

import (
	"net/netip"
	"slices"
	"strings"

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
	return ServiceLeasePrefix + strings.NewReplacer(".", "-", ":", "-").Replace(s)
}

// bindingsFor decides which contest carries each VIP.
//
// The control-plane VIPs have their contest. A service address that is also
// a control-plane VIP rides on that contest, so the shared address has one
// holder. In per-address mode every other address has its own contest. In
// one-for-all mode they share svcLease, except addresses restricted to some
// nodes (externalTrafficPolicy: Local), which need a contest of their own:
// the one leader may have no endpoint for them.
func bindingsFor(cpLease string, cpVIPs []netip.Addr, svcLease string, perAddress bool, addrs []services.Address) []binding {
	var out []binding
	if len(cpVIPs) > 0 {
		out = append(out, binding{contest: cpLease, vips: cpVIPs})
	}
	var shared []netip.Addr
	for _, a := range addrs {
		switch {
		case slices.Contains(cpVIPs, a.IP):
		case perAddress || a.Candidates != nil:
			out = append(out, binding{contest: contestFor(a.IP), vips: []netip.Addr{a.IP}, candidates: a.Candidates})
		default:
			shared = append(shared, a.IP)
		}
	}
	if len(shared) > 0 {
		out = append(out, binding{contest: svcLease, vips: shared})
	}
	return out
}
