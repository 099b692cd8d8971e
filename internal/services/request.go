package services

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/vipd/vipd/internal/address"
)

// Annotations read from Services besides kube-vip's AnnotationLoadBalancerIPs.
// MetalLB's come in two spellings, metallb.io/ (current) and
// metallb.universe.tf/ (older); as MetalLB does, the current one wins when
// a Service has both.
const (
	// AnnotationServiceInterface (kube-vip) names the interface the
	// Service's VIPs go on.
	AnnotationServiceInterface = "kube-vip.io/serviceInterface"
	// AnnotationAddressPool names the pool to allocate from (vipd's own).
	AnnotationAddressPool = "vipd.io/address-pool"

	AnnotationMetalLBIPs          = "metallb.io/loadBalancerIPs"
	AnnotationMetalLBIPsOld       = "metallb.universe.tf/loadBalancerIPs"
	AnnotationMetalLBPool         = "metallb.io/address-pool"
	AnnotationMetalLBPoolOld      = "metallb.universe.tf/address-pool"
	AnnotationMetalLBSharedIP     = "metallb.io/allow-shared-ip"
	AnnotationMetalLBSharedIPOld  = "metallb.universe.tf/allow-shared-ip"
	reasonInvalidServiceInterface = "InvalidServiceInterface"
)

// request is what a Service asks for, read from its annotations and spec.
type request struct {
	// ips are the addresses asked for explicitly (annotation or spec).
	ips []netip.Addr
	// fromPool: ips were written by a pool allocation.
	fromPool bool
	// needPool: allocate from a pool (nothing asked for, nothing wrong).
	needPool bool
	// pool is the pool an annotation names ("" none).
	pool string
	// iface is the interface an annotation names ("" none).
	iface string
	// sharingKey is MetalLB's allow-shared-ip ("" none).
	sharingKey string
	// problem, when set, keeps the Service from getting any address.
	problem *warning
}

// newer returns the value of the current spelling of a MetalLB annotation,
// else the older one's, and which key it came from.
func newer(s *corev1.Service, current, older string) (value, key string) {
	if v, ok := s.Annotations[current]; ok {
		return strings.TrimSpace(v), current
	}
	return strings.TrimSpace(s.Annotations[older]), older
}

// readRequest reads what a Service asks for. An annotation that is wrong,
// or two that disagree, give a warning and no address at all — neither a
// valid part nor a pool address: the user asked for something specific.
func readRequest(s *corev1.Service) request {
	var r request
	r.sharingKey, _ = newer(s, AnnotationMetalLBSharedIP, AnnotationMetalLBSharedIPOld)
	r.iface = strings.TrimSpace(s.Annotations[AnnotationServiceInterface])
	if problem := interfaceProblem(r.iface); problem != "" {
		r.problem = &warning{reasonInvalidServiceInterface, fmt.Sprintf(
			"annotation %s %q: %s; the Service gets no address until it is fixed", AnnotationServiceInterface, r.iface, problem)}
		return r
	}
	var w *warning
	if r.pool, w = poolAnnotation(s); w != nil {
		r.problem = w
		return r
	}
	r.ips, r.fromPool, r.needPool, r.problem = requestedAddrs(s)
	return r
}

// interfaceProblem says what is wrong with an interface name from the
// API ("" for a valid name or none).
func interfaceProblem(name string) string {
	switch {
	case name == "":
		return ""
	case strings.EqualFold(name, "auto"):
		return "finding the interface from the address (auto) is not supported; name the interface"
	}
	return address.InterfaceNameProblem(name)
}

// poolAnnotation reads the pool a Service names: vipd's annotation or
// MetalLB's; if both are set they must agree.
func poolAnnotation(s *corev1.Service) (string, *warning) {
	own := strings.TrimSpace(s.Annotations[AnnotationAddressPool])
	mlb, key := newer(s, AnnotationMetalLBPool, AnnotationMetalLBPoolOld)
	if own != "" && mlb != "" && own != mlb {
		return "", &warning{reasonUnknownPool, fmt.Sprintf(
			"annotations %s %q and %s %q name different pools; the Service gets no address until one is removed", AnnotationAddressPool, own, key, mlb)}
	}
	if own != "" {
		return own, nil
	}
	return mlb, nil
}

// requestedAddrs reads the addresses a Service asks for: kube-vip's or
// MetalLB's annotation (both, if they agree), else spec.loadBalancerIP,
// else none (needPool).
func requestedAddrs(s *corev1.Service) (ips []netip.Addr, fromPool, needPool bool, problem *warning) {
	kv := strings.TrimSpace(s.Annotations[AnnotationLoadBalancerIPs])
	mlb, mlbKey := newer(s, AnnotationMetalLBIPs, AnnotationMetalLBIPsOld)
	var mlbIPs []netip.Addr
	if mlb != "" {
		var err error
		if mlbIPs, err = parseAddrList(mlb); err != nil {
			return nil, false, false, &warning{reasonInvalidIPs,
				fmt.Sprintf("annotation %s %s: %v; the Service gets no address until it is fixed", mlbKey, quoteShort(s.Annotations[mlbKey]), err)}
		}
	}
	if kv != "" {
		ips, err := parseAddrList(kv)
		if err != nil {
			return nil, false, false, &warning{reasonInvalidIPs,
				fmt.Sprintf("annotation %s %s: %v; the Service gets no address until it is fixed", AnnotationLoadBalancerIPs, quoteShort(s.Annotations[AnnotationLoadBalancerIPs]), err)}
		}
		if mlbIPs != nil && !sameAddrs(ips, mlbIPs) {
			return nil, false, false, &warning{reasonInvalidIPs, fmt.Sprintf(
				"annotations %s %s and %s %s ask for different addresses; the Service gets no address until they agree or one is removed",
				AnnotationLoadBalancerIPs, quoteShort(kv), mlbKey, quoteShort(mlb))}
		}
		return ips, s.Annotations[AnnotationPoolAllocated] == s.Annotations[AnnotationLoadBalancerIPs], false, nil
	}
	if mlbIPs != nil {
		return mlbIPs, false, false, nil
	}
	if raw := strings.TrimSpace(s.Spec.LoadBalancerIP); raw != "" {
		a, err := netip.ParseAddr(raw)
		if err == nil {
			if problem := address.VIPProblem(a); problem != "" {
				err = fmt.Errorf("%s is %s", a, problem)
			}
		} else {
			err = fmt.Errorf("not an IP address")
		}
		if err != nil {
			return nil, false, false, &warning{reasonInvalidIP,
				fmt.Sprintf("spec.loadBalancerIP %s: %v; the Service gets no address until it is fixed", quoteShort(s.Spec.LoadBalancerIP), err)}
		}
		return []netip.Addr{a}, false, false, nil
	}
	return nil, false, true, nil
}

// quoteShort quotes a value for a message, cut short when it is long (an
// annotation listing a thousand addresses): Events and logs stay readable.
func quoteShort(v string) string {
	const max = 80
	if len(v) <= max {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("%s… (%d characters)", strconv.Quote(v[:max]), len(v))
}

// sameAddrs compares two address lists regardless of order.
func sameAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		found := false
		for _, y := range b {
			found = found || x == y
		}
		if !found {
			return false
		}
	}
	return true
}

// parseAddrList parses an address annotation: at most one address per family.
func parseAddrList(raw string) ([]netip.Addr, error) {
	var ips []netip.Addr
	for _, part := range strings.Split(raw, ",") {
		part = strings.TrimSpace(part)
		a, err := netip.ParseAddr(part)
		if err != nil {
			return nil, fmt.Errorf("%s is not an IP address", quoteShort(part))
		}
		if problem := address.VIPProblem(a); problem != "" {
			return nil, fmt.Errorf("%s is %s", a, problem)
		}
		for _, b := range ips {
			if b.Is4() == a.Is4() {
				return nil, fmt.Errorf("%s and %s are of the same family; give at most one IPv4 and one IPv6 address", b, a)
			}
		}
		ips = append(ips, a)
	}
	return ips, nil
}
