package services

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// annos sets annotations, key then value.
func annos(kv ...string) svcOpt {
	return func(s *corev1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			s.Annotations[kv[i]] = kv[i+1]
		}
	}
}

// placed is an Address with where it lives.
func placed(ip, iface, pool, selector string, svcs ...string) Address {
	a := addr(ip, svcs...)
	a.Interface, a.Pool, a.NodeSelector = iface, pool, selector
	return a
}

// TestMetalLBAndPlacement covers MetalLB's annotations, sharing keys, named
// pools and interfaces. Each case lists every Service's warning (reason and
// a piece of its message) and pool allocation; Services not listed have
// neither.
func TestMetalLBAndPlacement(t *testing.T) {
	const (
		mlbIPs, mlbIPsOld   = AnnotationMetalLBIPs, AnnotationMetalLBIPsOld
		mlbPool, mlbPoolOld = AnnotationMetalLBPool, AnnotationMetalLBPoolOld
		share, shareOld     = AnnotationMetalLBSharedIP, AnnotationMetalLBSharedIPOld
		iface               = AnnotationServiceInterface
	)
	edge := []string{"pool-edge", "203.0.113.0/29", "pool-edge.node-selector", "zone in (a, b)", "pool-edge.interface", "eth1"}
	cases := []struct {
		name  string
		svcs  []*corev1.Service
		pool  pool
		want  []Address
		warn  map[string][]string
		alloc map[string][]netip.Addr
	}{
		{name: "metallb.io/loadBalancerIPs",
			svcs: []*corev1.Service{svc("a/web", 0, annos(mlbIPs, "192.0.2.10, 2001:db8::10"))},
			want: []Address{addr("192.0.2.10", "a/web"), addr("2001:db8::10", "a/web")}},
		{name: "metallb.universe.tf/loadBalancerIPs",
			svcs: []*corev1.Service{svc("a/web", 0, annos(mlbIPsOld, "192.0.2.10"))},
			want: []Address{addr("192.0.2.10", "a/web")}},
		{name: "the current MetalLB spelling wins over the older",
			svcs: []*corev1.Service{svc("a/web", 0, annos(mlbIPs, "192.0.2.10", mlbIPsOld, "192.0.2.99"))},
			want: []Address{addr("192.0.2.10", "a/web")}},
		{name: "kube-vip's and MetalLB's annotations agreeing",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10,2001:db8::10"), annos(mlbIPs, "2001:db8::10,192.0.2.10"))},
			want: []Address{addr("192.0.2.10", "a/web"), addr("2001:db8::10", "a/web")}},
		{name: "kube-vip's and MetalLB's annotations disagreeing",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10"), annos(mlbIPsOld, "192.0.2.11"))},
			warn: map[string][]string{"a/web": {reasonInvalidIPs, `annotations kube-vip.io/loadbalancerIPs "192.0.2.10" and metallb.universe.tf/loadBalancerIPs "192.0.2.11" ask for different addresses`}}},
		{name: "bad MetalLB annotation",
			svcs: []*corev1.Service{svc("a/web", 0, annos(mlbIPs, "192.0.2.300"))},
			pool: poolOf("cidr-global", "192.0.2.0/24"),
			warn: map[string][]string{"a/web": {reasonInvalidIPs, `annotation metallb.io/loadBalancerIPs "192.0.2.300": "192.0.2.300" is not an IP address`}}},

		{name: "allow-shared-ip: same key, other ports share",
			svcs: []*corev1.Service{
				svc("a/web", 0, annos(mlbIPs, "192.0.2.10", share, "k")),
				svc("b/dns", 1, annos(mlbIPsOld, "192.0.2.10", shareOld, "k"), ports(port(53, corev1.ProtocolUDP))),
			},
			want: []Address{addr("192.0.2.10", "a/web", "b/dns")}},
		{name: "allow-shared-ip: same key, same port: the younger loses",
			svcs: []*corev1.Service{
				svc("a/web", 0, annos(mlbIPs, "192.0.2.10", share, "k")),
				svc("a/web2", 1, annos(mlbIPs, "192.0.2.10", share, "k")),
			},
			want: []Address{addr("192.0.2.10", "a/web")},
			warn: map[string][]string{"a/web2": {reasonPortConflict, "port 80/TCP on 192.0.2.10 is already used by Service a/web"}}},
		{name: "allow-shared-ip: another key does not share",
			svcs: []*corev1.Service{
				svc("a/web", 0, annos(mlbIPs, "192.0.2.10", share, "k")),
				svc("a/dns", 1, annos(mlbIPs, "192.0.2.10", share, "other"), ports(port(53, corev1.ProtocolUDP))),
			},
			want: []Address{addr("192.0.2.10", "a/web")},
			warn: map[string][]string{"a/dns": {reasonSharingKeyConflict, `192.0.2.10 is used by Service a/web, whose metallb.io/allow-shared-ip is "k", and this Service's is "other"`}}},
		{name: "allow-shared-ip: a key and no key do not share",
			svcs: []*corev1.Service{
				svc("a/web", 0, ann("192.0.2.10")),
				svc("a/dns", 1, annos(mlbIPs, "192.0.2.10", share, "k"), ports(port(53, corev1.ProtocolUDP))),
			},
			want: []Address{addr("192.0.2.10", "a/web")},
			warn: map[string][]string{"a/dns": {reasonSharingKeyConflict, "whose metallb.io/allow-shared-ip is not set"}}},
		{name: "allow-shared-ip: the pool puts one key's Services on one address",
			svcs: []*corev1.Service{
				svc("a/web", 0, annos(share, "k")),
				svc("a/dns", 1, annos(share, "k"), ports(port(53, corev1.ProtocolUDP))),
				svc("a/other", 2, ports(port(22, corev1.ProtocolTCP))),
				svc("a/clash", 3, annos(share, "k")),
			},
			pool:  poolOf("cidr-global", "192.0.2.0/24"),
			alloc: map[string][]netip.Addr{"a/web": addrs("192.0.2.1"), "a/dns": addrs("192.0.2.1"), "a/other": addrs("192.0.2.2"), "a/clash": addrs("192.0.2.3")}},
		{name: "allow-shared-ip: allocations of one key on one address stay",
			svcs: []*corev1.Service{
				svc("a/web", 0, allocated("192.0.2.1"), annos(share, "k")),
				svc("a/dns", 1, allocated("192.0.2.1"), annos(share, "k"), ports(port(53, corev1.ProtocolUDP))),
			},
			pool: poolOf("cidr-global", "192.0.2.0/24"),
			want: []Address{addr("192.0.2.1", "a/dns", "a/web")}},

		{name: "named pool by vipd's annotation",
			svcs:  []*corev1.Service{svc("a/web", 0, annos(AnnotationAddressPool, "edge"))},
			pool:  poolOf(append(edge, "cidr-global", "192.0.2.0/24")...),
			alloc: map[string][]netip.Addr{"a/web": addrs("203.0.113.1")}},
		{name: "named pool by MetalLB's annotations",
			svcs: []*corev1.Service{
				svc("a/new", 0, annos(mlbPool, "edge")),
				svc("a/old", 1, annos(mlbPoolOld, "edge")),
			},
			pool:  poolOf(edge...),
			alloc: map[string][]netip.Addr{"a/new": addrs("203.0.113.1"), "a/old": addrs("203.0.113.2")}},
		{name: "an allocation from a named pool lives where the pool says",
			svcs: []*corev1.Service{svc("a/web", 0, annos(AnnotationAddressPool, "edge"), allocated("203.0.113.1"))},
			pool: poolOf(edge...),
			want: []Address{placed("203.0.113.1", "eth1", "edge", "zone in (a,b)", "a/web")}},
		{name: "an explicit address in a named pool lives where the pool says",
			svcs: []*corev1.Service{svc("a/web", 0, annos(mlbIPs, "203.0.113.5"))},
			pool: poolOf(edge...),
			want: []Address{placed("203.0.113.5", "eth1", "edge", "zone in (a,b)", "a/web")}},
		{name: "the Service's interface annotation wins over the pool's",
			svcs: []*corev1.Service{svc("a/web", 0, annos(mlbIPs, "203.0.113.5", iface, "vlan7"))},
			pool: poolOf(edge...),
			want: []Address{placed("203.0.113.5", "vlan7", "edge", "zone in (a,b)", "a/web")}},
		{name: "an address outside the named pool the Service names",
			svcs: []*corev1.Service{svc("a/web", 0, annos(AnnotationAddressPool, "edge"), ann("192.0.2.10"))},
			pool: poolOf(edge...),
			warn: map[string][]string{"a/web": {reasonNotInPool, "192.0.2.10 is not in pool edge (ConfigMap kube-system/kubevip)"}}},
		{name: "unknown pool",
			svcs: []*corev1.Service{svc("a/web", 0, annos(mlbPool, "nope"))},
			pool: poolOf(edge...),
			warn: map[string][]string{"a/web": {reasonUnknownPool, `names pool "nope", but ConfigMap kube-system/kubevip has no key pool-nope`}}},
		{name: "two annotations naming different pools",
			svcs: []*corev1.Service{svc("a/web", 0, annos(AnnotationAddressPool, "edge", mlbPool, "core"))},
			pool: poolOf(edge...),
			warn: map[string][]string{"a/web": {reasonUnknownPool, `annotations vipd.io/address-pool "edge" and metallb.io/address-pool "core" name different pools`}}},
		{name: "a pool for some namespaces: theirs by default, refused to others",
			svcs: []*corev1.Service{
				svc("a/web", 0),
				svc("b/web", 1, annos(AnnotationAddressPool, "team")),
				svc("c/web", 2),
			},
			pool:  poolOf("pool-team", "192.0.2.8/30", "pool-team.namespaces", "a", "range-c", "198.51.100.5-198.51.100.6"),
			alloc: map[string][]netip.Addr{"a/web": addrs("192.0.2.9"), "c/web": addrs("198.51.100.5")},
			warn:  map[string][]string{"b/web": {reasonUnknownPool, "pool team serves only namespaces a (pool-team.namespaces)"}}},
		{name: "a namespace's own keys before its named pools",
			svcs:  []*corev1.Service{svc("a/x", 0, ann("198.51.100.5")), svc("a/web", 1), svc("a/web2", 2)},
			pool:  poolOf("pool-team", "192.0.2.8/30", "pool-team.namespaces", "a", "range-a", "198.51.100.5-198.51.100.6"),
			want:  []Address{addr("198.51.100.5", "a/x")},
			alloc: map[string][]netip.Addr{"a/web": addrs("198.51.100.6"), "a/web2": addrs("192.0.2.9")}},
		{name: "a pool for every namespace after the global keys",
			svcs:  []*corev1.Service{svc("a/x", 0, ann("192.0.2.1")), svc("a/web", 1), svc("b/web", 2)},
			pool:  poolOf("pool-all", "203.0.113.0/30", "pool-all.namespaces", "*", "cidr-global", "192.0.2.1/32"),
			want:  []Address{addr("192.0.2.1", "a/x")},
			alloc: map[string][]netip.Addr{"a/web": addrs("203.0.113.1"), "b/web": addrs("203.0.113.2")}},
		{name: "kube-vip's interface-<namespace> for its cidr- and range- keys",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.5")), svc("b/web", 0, ann("192.0.2.6")), svc("a/out", 0, ann("198.51.100.9"))},
			pool: poolOf("cidr-global", "192.0.2.0/24", "interface-a", "eth2", "interface-global", "eth3"),
			want: []Address{placed("192.0.2.5", "eth2", "", "", "a/web"), placed("192.0.2.6", "eth3", "", "", "b/web"), addr("198.51.100.9", "a/out")}},
		{name: "sharers that put the address on different interfaces",
			svcs: []*corev1.Service{
				svc("a/web", 0, ann("192.0.2.10"), annos(iface, "eth1")),
				svc("a/dns", 1, ann("192.0.2.10"), ports(port(53, corev1.ProtocolUDP))),
			},
			want: []Address{placed("192.0.2.10", "eth1", "", "", "a/web")},
			warn: map[string][]string{"a/dns": {reasonPlacementConflict, "192.0.2.10 is used by Service a/web, which puts it on interface eth1, and this Service would put it on the default interface"}}},
		{name: "bad interface annotation",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10"), annos(iface, "eth0:1"))},
			warn: map[string][]string{"a/web": {reasonInvalidServiceInterface, `annotation kube-vip.io/serviceInterface "eth0:1": interface names cannot contain`}}},
		{name: "kube-vip's auto interface",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10"), annos(iface, "auto"))},
			warn: map[string][]string{"a/web": {reasonInvalidServiceInterface, "(auto) is not supported"}}},
		{name: "a broken pool the Service names",
			svcs: []*corev1.Service{svc("a/web", 0, annos(AnnotationAddressPool, "edge"))},
			pool: poolOf("pool-edge", "203.0.113.0/29", "pool-edge.node-selector", "zone=a=b"),
			warn: map[string][]string{"a/web": {reasonInvalidPool, `key pool-edge.node-selector: "zone=a=b" is not a label selector`}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.pool
			if p.name == "" {
				p = noPool()
			}
			checkPlan(t, computePlan(tc.svcs, nil, p, defaultFilter), tc.want, tc.warn, tc.alloc, nil)
		})
	}
}

// TestPoolKeys: the keys vipd cannot use are named once, with why.
func TestPoolKeys(t *testing.T) {
	ps := readPools(poolOf(
		"cidr-global", "192.0.2.0/24",
		"interface-a", "eth1",
		"pool-edge", "203.0.113.0/29, 203.0.113.20-203.0.113.22, 203.0.113.40",
		"pool-edge.namespaces", "a, b",
		"pool-Bad", "203.0.113.64/29",
		"pool-lonely.interface", "eth1",
		"search-order", "desc",
		"allow-share-a", "true",
		"colour", "blue",
	))
	want := []string{
		"key allow-share-a is kube-vip's and not supported",
		"key colour ignored: not a pool key",
		`key pool-Bad ignored: "Bad" is not a pool name`,
		"key search-order is kube-vip's and not supported",
		"key pool-lonely: missing: pool lonely has settings but no addresses",
	}
	if len(ps.problems) != len(want) {
		t.Fatalf("problems %q, want %d", ps.problems, len(want))
	}
	for i, w := range want {
		if !strings.Contains(ps.problems[i], w) {
			t.Errorf("problem %d %q, want it to contain %q", i, ps.problems[i], w)
		}
	}
	edge := ps.named["edge"]
	if edge == nil || edge.err != nil || len(edge.ranges) != 3 || !slices.Equal(edge.namespaces, []string{"a", "b"}) {
		t.Fatalf("pool edge %+v", edge)
	}
	for a, in := range map[string]bool{"203.0.113.1": true, "203.0.113.21": true, "203.0.113.40": true, "203.0.113.41": false, "192.0.2.1": false} {
		if got := edge.contains(netip.MustParseAddr(a)); got != in {
			t.Errorf("pool edge contains %s: %v, want %v", a, got, in)
		}
	}
}
