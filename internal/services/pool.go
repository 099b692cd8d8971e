package services

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/vipd/vipd/internal/address"
)

// pool is the address pool ConfigMap as the informer holds it.
type pool struct {
	name string            // namespace/name, for messages
	data map[string]string // nil: the ConfigMap does not exist
}

// ipRange is an inclusive range of addresses of one family.
type ipRange struct {
	first, last netip.Addr
}

// rangesFor returns the pool for a namespace: cidr-<ns> and range-<ns> if
// either is set, else cidr-global and range-global; keys names the keys used.
func (p pool) rangesFor(namespace string) (rs []ipRange, keys []string, err error) {
	for _, scope := range []string{namespace, "global"} {
		keys = nil
		for _, kind := range []string{"cidr", "range"} {
			key := kind + "-" + scope
			raw := strings.TrimSpace(p.data[key])
			if raw == "" {
				continue
			}
			keys = append(keys, key)
			for _, entry := range strings.Split(raw, ",") {
				entry = strings.TrimSpace(entry)
				var r ipRange
				if kind == "cidr" {
					r, err = parseCIDR(entry)
				} else {
					r, err = parseRange(entry)
				}
				if err != nil {
					return nil, keys, fmt.Errorf("ConfigMap %s key %s: %w", p.name, key, err)
				}
				rs = append(rs, r)
			}
		}
		if len(keys) > 0 {
			return rs, keys, nil
		}
	}
	return nil, nil, nil
}

// parseCIDR turns a prefix into the range of addresses that can be handed
// out: an IPv4 prefix loses its network and broadcast addresses, an IPv6
// prefix its subnet-router anycast address, unless that leaves too few.
// Host bits are ignored, as kube-vip's cloud provider does.
func parseCIDR(s string) (ipRange, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return ipRange{}, fmt.Errorf("%q is not a CIDR (e.g. 192.0.2.0/24)", s)
	}
	p = p.Masked()
	r := ipRange{first: p.Addr(), last: lastAddr(p)}
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits >= 2 {
		r.first = r.first.Next()
		if p.Addr().Is4() {
			r.last = r.last.Prev()
		}
	}
	if err := checkRangeEnds(r); err != nil {
		return ipRange{}, fmt.Errorf("%q: %w", s, err)
	}
	return r, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// parseRange reads "first-last", inclusive.
func parseRange(s string) (ipRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return ipRange{}, fmt.Errorf("%q is not a range (e.g. 192.0.2.10-192.0.2.20)", s)
	}
	first, err1 := netip.ParseAddr(strings.TrimSpace(lo))
	last, err2 := netip.ParseAddr(strings.TrimSpace(hi))
	if err1 != nil || err2 != nil {
		return ipRange{}, fmt.Errorf("%q is not a range (e.g. 192.0.2.10-192.0.2.20)", s)
	}
	if first.Is4() != last.Is4() {
		return ipRange{}, fmt.Errorf("%q mixes IPv4 and IPv6", s)
	}
	if last.Less(first) {
		return ipRange{}, fmt.Errorf("%q ends before it starts", s)
	}
	r := ipRange{first: first, last: last}
	if err := checkRangeEnds(r); err != nil {
		return ipRange{}, fmt.Errorf("%q: %w", s, err)
	}
	return r, nil
}

// checkRangeEnds refuses ranges that start or end on an address that can't
// be a VIP: such a pool is a typo, and searching a huge multicast or
// loopback block for a usable address would be slow.
func checkRangeEnds(r ipRange) error {
	for _, a := range []netip.Addr{r.first, r.last} {
		if problem := address.VIPProblem(a); problem != "" {
			return fmt.Errorf("%s is %s", a, problem)
		}
	}
	return nil
}

// families returns the address families to allocate for a Service, primary
// first, and whether all of them are required.
func families(s *corev1.Service) (fams []corev1.IPFamily, required bool) {
	fams = s.Spec.IPFamilies
	if len(fams) == 0 {
		return []corev1.IPFamily{corev1.IPv4Protocol}, true
	}
	policy := s.Spec.IPFamilyPolicy
	if len(fams) == 2 && policy != nil && (*policy == corev1.IPFamilyPolicyRequireDualStack || *policy == corev1.IPFamilyPolicyPreferDualStack) {
		return fams, *policy == corev1.IPFamilyPolicyRequireDualStack
	}
	return fams[:1], true
}

// overlap describes the first two ranges of rs that share addresses, or
// returns "". Overlapping ranges are harmless (an address is handed out
// once whatever range it is found in) but usually a typo.
func overlap(rs []ipRange) string {
	for i, a := range rs {
		for _, b := range rs[i+1:] {
			if a.first.Is4() == b.first.Is4() && !a.last.Less(b.first) && !b.last.Less(a.first) {
				return fmt.Sprintf("%s-%s overlaps %s-%s", a.first, a.last, b.first, b.last)
			}
		}
	}
	return ""
}

// allocate picks the first free address of each family the Service needs,
// or says why it cannot. note, when set, is a problem of the pool that
// did not stop the allocation.
func (p pool) allocate(s *corev1.Service, used map[netip.Addr]bool) (ips []netip.Addr, fail, note *warning) {
	if p.data == nil {
		why := "no address pool is configured"
		if p.name != "" {
			why = fmt.Sprintf("there is no address pool (ConfigMap %s not found)", p.name)
		}
		return nil, &warning{reasonNoPool, fmt.Sprintf(
			"no address: the Service has no %s annotation or spec.loadBalancerIP, and %s", AnnotationLoadBalancerIPs, why)}, nil
	}
	rs, keys, err := p.rangesFor(s.Namespace)
	if err != nil {
		return nil, &warning{reasonInvalidPool, fmt.Sprintf("no address: %v", err)}, nil
	}
	if o := overlap(rs); o != "" {
		note = &warning{reasonPoolOverlap, fmt.Sprintf("address pool ConfigMap %s (%s): %s; each address is still handed out once",
			p.name, strings.Join(keys, ", "), o)}
	}
	if len(keys) == 0 {
		return nil, &warning{reasonNoPool, fmt.Sprintf(
			"no address: the Service has no %s annotation or spec.loadBalancerIP, and ConfigMap %s has none of cidr-%s, range-%s, cidr-global, range-global",
			AnnotationLoadBalancerIPs, p.name, s.Namespace, s.Namespace)}, nil
	}
	fams, required := families(s)
	for i, fam := range fams {
		a, ok := firstFree(rs, fam == corev1.IPv6Protocol, used)
		if ok {
			ips = append(ips, a)
			continue
		}
		if i > 0 && !required {
			break // PreferDualStack: one family will do
		}
		return nil, &warning{reasonPoolExhausted, fmt.Sprintf("no free %s address in the pool (ConfigMap %s, %s)", fam, p.name, strings.Join(keys, ", "))}, note
	}
	return ips, nil, note
}

// unusable are the blocks no VIP comes from; pastUnusable skips them
// whole, so a range that spans one (224.0.0.0/4 has 2^28 addresses) costs
// nothing to scan.
func unusable() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/32"), netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("255.255.255.255/32"), netip.MustParsePrefix("::/128"),
		netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("::ffff:0:0/96"),
		netip.MustParsePrefix("fe80::/10"), netip.MustParsePrefix("ff00::/8"),
	}
}

// pastUnusable is the first address after the unusable block holding a,
// or a's successor if a is unusable for another reason (a zone).
func pastUnusable(a netip.Addr) netip.Addr {
	for _, p := range unusable() {
		if p.Contains(a) {
			return lastAddr(p).Next()
		}
	}
	return a.Next()
}

// firstFree scans the ranges in order. It steps over used (and the rare
// unusable) addresses only, so the size of a range costs nothing.
func firstFree(rs []ipRange, v6 bool, used map[netip.Addr]bool) (netip.Addr, bool) {
	for _, r := range rs {
		if r.first.Is6() != v6 {
			continue
		}
		for a := r.first; a.IsValid() && !r.last.Less(a); {
			if address.VIPProblem(a) != "" {
				a = pastUnusable(a)
				continue
			}
			if !used[a] {
				return a, true
			}
			a = a.Next()
		}
	}
	return netip.Addr{}, false
}
