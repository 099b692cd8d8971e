package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// withAnnotations is a Service of the env's class with one TCP port and
// exactly the given annotations.
func (s *svcEnv) withAnnotations(ns, name string, port int32, kv ...string) *corev1.Service {
	svc := s.service(ns, name, "", port)
	svc.Annotations = map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		svc.Annotations[kv[i]] = kv[i+1]
	}
	return svc
}

// TestMetalLBAnnotations: Services annotated the MetalLB way are served:
// an address asked for with metallb.universe.tf/ or metallb.io/
// loadBalancerIPs; Services with the same allow-shared-ip key (either
// spelling) and different ports share one address; one with that key and a
// port already used there, and one with another key, each get one Warning
// Event from the agents and no address.
func TestMetalLBAnnotations(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	old, cur, shared := netip.MustParseAddr("192.0.2.30"), netip.MustParseAddr("192.0.2.31"), netip.MustParseAddr("192.0.2.32")
	s.create(s.withAnnotations(s.ns, "old-spelling", svcPort, "metallb.universe.tf/loadBalancerIPs", old.String()))
	s.create(s.withAnnotations(s.ns, "new-spelling", svcPort, "metallb.io/loadBalancerIPs", cur.String()))
	s.create(s.withAnnotations(s.ns, "web", svcPort,
		"metallb.io/loadBalancerIPs", shared.String(), "metallb.io/allow-shared-ip", "front"))
	dns := s.withAnnotations(s.ns, "dns", 53,
		"metallb.universe.tf/loadBalancerIPs", shared.String(), "metallb.universe.tf/allow-shared-ip", "front")
	dns.Spec.Ports = []corev1.ServicePort{{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt(53)}}
	s.create(dns)
	procs := s.startAll()
	s.waitLive(startTimeout)
	// Who records an Event depends on who is live: every agent must count
	// every other live before the problems appear.
	for _, n := range s.lab.Nodes {
		for _, peer := range s.lab.Nodes {
			if peer != n {
				waitLog(t, procs[n.Name], 0, 10*time.Second, "judged another agent", "peer="+peer.Name, "live=true")
			}
		}
	}
	p := s.waitPlaced(placeTimeout, []netip.Addr{old, cur, shared})
	s.reachAll(p)
	s.waitStatus(10*time.Second, s.ns, "old-spelling", []netip.Addr{old}, p[old])
	s.waitStatus(10*time.Second, s.ns, "new-spelling", []netip.Addr{cur}, p[cur])
	s.waitStatus(10*time.Second, s.ns, "web", []netip.Addr{shared}, p[shared])
	s.waitStatus(10*time.Second, s.ns, "dns", []netip.Addr{shared}, p[shared])

	// Created after the sharers, so they are the younger ones: by creation
	// time, which counts whole seconds, then by name.
	s.create(s.withAnnotations(s.ns, "x-clash", svcPort,
		"metallb.io/loadBalancerIPs", shared.String(), "metallb.io/allow-shared-ip", "front"))
	s.create(s.withAnnotations(s.ns, "y-stranger", 8443,
		"metallb.io/loadBalancerIPs", shared.String(), "metallb.io/allow-shared-ip", "other"))
	for _, c := range []struct{ name, reason, says string }{
		{"x-clash", "PortConflict", "port 80/TCP on 192.0.2.32 is already used by Service " + s.ns + "/web"},
		{"y-stranger", "SharingKeyConflict", `whose metallb.io/allow-shared-ip is "front", and this Service's is "other"`},
	} {
		ev := waitEvent(t, 15*time.Second, s.ns, c.name, corev1.EventTypeWarning, c.reason, c.says)
		// Events are sent in the background: a second one would arrive
		// within this window.
		holdFor(t, 2*time.Second, "one "+c.reason+" Warning on "+c.name, func() error {
			return oneEventFrom(s.ns, c.name, c.reason, ev.Source.Host)
		})
		s.waitStatus(5*time.Second, s.ns, c.name, nil, "")
	}
	// The sharers are still served as before.
	s.waitStatus(5*time.Second, s.ns, "web", []netip.Addr{shared}, p[shared])
	s.waitStatus(5*time.Second, s.ns, "dns", []netip.Addr{shared}, p[shared])
	s.reachAll(placement{shared: p[shared]})
}

// TestNamedPoolsAndNamespaceDefaults: in the pool ConfigMap, a Service
// naming a pool (vipd's annotation or MetalLB's) gets its address from that
// pool; a Service naming none gets its namespace's default: kube-vip's
// cidr-<namespace>, or a named pool that lists the namespace; others the
// global one.
func TestNamedPoolsAndNamespaceDefaults(t *testing.T) {
	s := newSvcEnv(t, svcOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	teamA, teamB := createNamespace(ctx, t), createNamespace(ctx, t)
	s.createPools(map[string]string{
		"cidr-global":           "192.0.2.48/29",
		"cidr-" + teamA:         "192.0.2.160/29",
		"pool-blue":             "192.0.2.176-192.0.2.179",
		"pool-green":            "192.0.2.184/30",
		"pool-green.namespaces": teamB,
	})
	cases := []struct {
		ns, name, want string
		annotations    []string
	}{
		{s.ns, "named-vipd", "192.0.2.176/30", []string{"vipd.io/address-pool", "blue"}},
		{s.ns, "named-metallb", "192.0.2.176/30", []string{"metallb.io/address-pool", "blue"}},
		{s.ns, "named-metallb-old", "192.0.2.176/30", []string{"metallb.universe.tf/address-pool", "blue"}},
		{teamA, "team-a-default", "192.0.2.160/29", nil},
		{teamB, "team-b-default", "192.0.2.184/30", nil},
		{s.ns, "global-default", "192.0.2.48/29", nil},
	}
	for _, c := range cases {
		s.create(s.withAnnotations(c.ns, c.name, svcPort, c.annotations...))
	}
	s.startAll(s.poolArgs()...)
	s.waitLive(startTimeout)
	var vips []netip.Addr
	for _, c := range cases {
		v := waitAllocated(t, placeTimeout, c.ns, c.name)
		t.Logf("%s/%s: %s", c.ns, c.name, v)
		inPrefix(t, c.want, v)
		vips = append(vips, v)
		waitEvent(t, 10*time.Second, c.ns, c.name, corev1.EventTypeNormal, "AddressAllocated", v.String())
	}
	p := s.waitPlaced(placeTimeout, vips)
	s.reachAll(p)
	for i, c := range cases {
		s.waitStatus(10*time.Second, c.ns, c.name, []netip.Addr{vips[i]}, p[vips[i]])
	}
	// A namespace the green pool does not list may not name it.
	s.create(s.withAnnotations(s.ns, "not-green", svcPort, "metallb.io/address-pool", "green"))
	waitEvent(t, 15*time.Second, s.ns, "not-green", corev1.EventTypeWarning, "UnknownAddressPool",
		fmt.Sprintf("pool green serves only namespaces %s", teamB))
}
