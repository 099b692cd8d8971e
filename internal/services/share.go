package services

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

// Reasons of the Warnings about Services that may not share an address.
const (
	reasonPortConflict       = "PortConflict"
	reasonSharingKeyConflict = "SharingKeyConflict"
	reasonPlacementConflict  = "PlacementConflict"
)

// Services share an address when they ask for the same one (kube-vip's
// way), or when the pool puts Services with one MetalLB sharing key on one
// address. Either way the sharers must agree: on the sharing key (none, or
// the same), on where the address lives (interface and pool), and they
// must not use the same port and protocol.

// shareProblem reports whether c may not join the Services that already
// have one of addrs, and why; sharers lists them per address, oldest
// first. c.where must hold c's placement of each address.
func shareProblem(c *candidate, addrs []netip.Addr, sharers map[netip.Addr][]*candidate) (warning, bool) {
	for _, a := range addrs {
		others := sharers[a]
		if len(others) == 0 {
			continue
		}
		first := others[0]
		if k, o := c.req.sharingKey, first.req.sharingKey; k != o {
			return warning{reasonSharingKeyConflict, fmt.Sprintf(
				"%s is used by Service %s, whose %s is %s, and this Service's is %s: Services share an address only with the same key; this Service gets no address until one of them changes",
				a, first.name, AnnotationMetalLBSharedIP, keyOrNone(o), keyOrNone(k))}, true
		}
		if w, o := c.where[a], first.where[a]; w != o {
			return warning{reasonPlacementConflict, fmt.Sprintf(
				"%s is used by Service %s, which puts it %s, and this Service would put it %s; this Service gets no address until one of them changes",
				a, first.name, o.describe(), w.describe())}, true
		}
		if w, ok := portConflict(c, a, others); ok {
			return w, true
		}
	}
	return warning{}, false
}

func keyOrNone(k string) string {
	if k == "" {
		return "not set"
	}
	return fmt.Sprintf("%q", k)
}

// describe says where an address lives, for messages.
func (w where) describe() string {
	s := "on the default interface"
	if w.iface != "" {
		s = "on interface " + w.iface
	}
	if w.pool != "" {
		s += " as part of pool " + w.pool
	}
	return s
}

type portKey struct {
	port     int32
	protocol corev1.Protocol
}

// portConflict reports whether c uses a port+protocol that one of others
// already uses on a.
func portConflict(c *candidate, a netip.Addr, others []*candidate) (warning, bool) {
	mine := map[portKey]bool{}
	for _, p := range c.svc.Spec.Ports {
		mine[portOf(p)] = true
	}
	for _, other := range others {
		for _, p := range other.svc.Spec.Ports {
			if k := portOf(p); mine[k] {
				return warning{reasonPortConflict, fmt.Sprintf(
					"port %d/%s on %s is already used by Service %s, which shares the address; this Service gets no address until one of them changes",
					k.port, k.protocol, a, other.name)}, true
			}
		}
	}
	return warning{}, false
}

func portOf(p corev1.ServicePort) portKey {
	k := portKey{port: p.Port, protocol: p.Protocol}
	if k.protocol == "" {
		k.protocol = corev1.ProtocolTCP // the API's default
	}
	return k
}
