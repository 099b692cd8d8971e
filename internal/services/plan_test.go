package services

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// t0 is the creation time of the first Service in a table; svc's age
// argument counts seconds after it.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type svcOpt func(*corev1.Service)

// svc builds a LoadBalancer Service "ns/name" created age seconds after t0
// with port 80/TCP unless options say otherwise.
func svc(nsName string, age int, opts ...svcOpt) *corev1.Service {
	ns, name, _ := strings.Cut(nsName, "/")
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(nsName), ResourceVersion: "1",
			CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(age) * time.Second))},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func ann(v string) svcOpt {
	return func(s *corev1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[AnnotationLoadBalancerIPs] = v
	}
}

// allocated marks the annotation as written by a pool allocation.
func allocated(v string) svcOpt {
	return func(s *corev1.Service) {
		ann(v)(s)
		s.Annotations[AnnotationPoolAllocated] = v
	}
}

func specIP(v string) svcOpt { return func(s *corev1.Service) { s.Spec.LoadBalancerIP = v } }
func class(v string) svcOpt  { return func(s *corev1.Service) { s.Spec.LoadBalancerClass = ptr.To(v) } }
func local() svcOpt {
	return func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal }
}
func clusterIP() svcOpt { return func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeClusterIP } }
func ports(ps ...corev1.ServicePort) svcOpt {
	return func(s *corev1.Service) { s.Spec.Ports = ps }
}
func port(n int32, proto corev1.Protocol) corev1.ServicePort {
	return corev1.ServicePort{Port: n, Protocol: proto}
}
func familiesOpt(policy corev1.IPFamilyPolicy, fams ...corev1.IPFamily) svcOpt {
	return func(s *corev1.Service) { s.Spec.IPFamilyPolicy, s.Spec.IPFamilies = &policy, fams }
}

// endpoint is one endpoint on node; ready nil means the condition is unset.
type endpoint struct {
	node  string
	ready *bool
}

func slice(nsName string, eps ...endpoint) *discoveryv1.EndpointSlice {
	ns, name, _ := strings.Cut(nsName, "/")
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for i, e := range eps {
		ep := discoveryv1.Endpoint{Addresses: []string{netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)}).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready}}
		if e.node != "" {
			ep.NodeName = ptr.To(e.node)
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
	return es
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func names(s ...string) []types.NamespacedName {
	var out []types.NamespacedName
	for _, n := range s {
		ns, name, _ := strings.Cut(n, "/")
		out = append(out, types.NamespacedName{Namespace: ns, Name: name})
	}
	return out
}

func addr(ip string, svcs ...string) Address {
	return Address{IP: netip.MustParseAddr(ip), Services: names(svcs...)}
}

func addrOn(ip string, candidates []string, svcs ...string) Address {
	a := addr(ip, svcs...)
	a.Candidates = candidates
	return a
}

var defaultFilter = filter{class: "kube-vip.io/kube-vip-class"}

func noPool() pool { return pool{name: "kube-system/kubevip"} }

func poolOf(kv ...string) pool {
	p := pool{name: "kube-system/kubevip", data: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		p.data[kv[i]] = kv[i+1]
	}
	return p
}

func TestComputePlan(t *testing.T) {
	yes, no := ptr.To(true), ptr.To(false)
	cases := []struct {
		name   string
		svcs   []*corev1.Service
		slices []*discoveryv1.EndpointSlice
		pool   pool
		filter *filter
		want   []Address
		// warnings: Service -> reasons and a piece of each message.
		warn map[string][]string
		// alloc: Service -> addresses the pool allocation writes.
		alloc map[string][]netip.Addr
		// write: Services whose allocation is removed (alloc empty).
		write map[string]bool
	}{
		{name: "annotation",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10"))},
			want: []Address{addr("192.0.2.10", "a/web")}},
		{name: "dual-stack annotation with spaces",
			svcs: []*corev1.Service{svc("a/web", 0, ann(" 2001:db8::10 ,192.0.2.10 "))},
			want: []Address{addr("192.0.2.10", "a/web"), addr("2001:db8::10", "a/web")}},
		{name: "spec.loadBalancerIP",
			svcs: []*corev1.Service{svc("a/web", 0, specIP("198.51.100.7"))},
			want: []Address{addr("198.51.100.7", "a/web")}},
		{name: "annotation before spec.loadBalancerIP",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10"), specIP("198.51.100.7"))},
			want: []Address{addr("192.0.2.10", "a/web")}},
		{name: "not an IP",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10,nope"))},
			pool: poolOf("cidr-global", "198.51.100.0/24"),
			warn: map[string][]string{"a/web": {reasonInvalidIPs, `annotation kube-vip.io/loadbalancerIPs "192.0.2.10,nope": "nope" is not an IP address`}}},
		{name: "two of one family",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10,192.0.2.11"))},
			warn: map[string][]string{"a/web": {reasonInvalidIPs, "192.0.2.10 and 192.0.2.11 are of the same family"}}},
		{name: "trailing comma",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10,"))},
			warn: map[string][]string{"a/web": {reasonInvalidIPs, `"" is not an IP address`}}},
		{name: "loopback",
			svcs: []*corev1.Service{svc("a/web", 0, ann("127.0.0.1"))},
			warn: map[string][]string{"a/web": {reasonInvalidIPs, "127.0.0.1 is a loopback address"}}},
		{name: "unspecified",
			svcs: []*corev1.Service{svc("a/web", 0, ann("0.0.0.0"))},
			warn: map[string][]string{"a/web": {reasonInvalidIPs, "0.0.0.0 is the unspecified address"}}},
		{name: "multicast",
			svcs: []*corev1.Service{svc("a/web", 0, ann("ff02::1"))},
			warn: map[string][]string{"a/web": {reasonInvalidIPs, "ff02::1 is a multicast address"}}},
		{name: "link-local",
			svcs: []*corev1.Service{svc("a/web", 0, ann("169.254.1.1"))},
			warn: map[string][]string{"a/web": {reasonInvalidIPs, "169.254.1.1 is a link-local address"}}},
		{name: "bad spec.loadBalancerIP",
			svcs: []*corev1.Service{svc("a/web", 0, specIP("fe80::1"))},
			warn: map[string][]string{"a/web": {reasonInvalidIP, `spec.loadBalancerIP "fe80::1": fe80::1 is a link-local address`}}},
		{name: "one bad Service does not hide another",
			svcs: []*corev1.Service{svc("a/bad", 0, ann("x")), svc("a/good", 1, ann("192.0.2.10"))},
			want: []Address{addr("192.0.2.10", "a/good")},
			warn: map[string][]string{"a/bad": {reasonInvalidIPs, `"x" is not an IP address`}}},

		{name: "class: unset and own served, other and non-LoadBalancer not",
			svcs: []*corev1.Service{
				svc("a/unset", 0, ann("192.0.2.1")),
				svc("a/own", 0, ann("192.0.2.2"), class("kube-vip.io/kube-vip-class")),
				svc("a/other", 0, ann("192.0.2.3"), class("example.com/lb")),
				svc("a/cluster", 0, ann("192.0.2.4"), clusterIP()),
			},
			want: []Address{addr("192.0.2.1", "a/unset"), addr("192.0.2.2", "a/own")}},
		{name: "only own class",
			svcs: []*corev1.Service{
				svc("a/unset", 0, ann("192.0.2.1")),
				svc("a/own", 0, ann("192.0.2.2"), class("kube-vip.io/kube-vip-class")),
			},
			filter: &filter{class: "kube-vip.io/kube-vip-class", onlyOwnClass: true},
			want:   []Address{addr("192.0.2.2", "a/own")}},
		{name: "namespace restriction",
			svcs:   []*corev1.Service{svc("a/web", 0, ann("192.0.2.1")), svc("b/web", 0, ann("192.0.2.2"))},
			filter: &filter{namespace: "b", class: "kube-vip.io/kube-vip-class"},
			want:   []Address{addr("192.0.2.2", "b/web")}},

		{name: "sharing across namespaces",
			svcs: []*corev1.Service{
				svc("b/dns", 0, ann("192.0.2.10"), ports(port(53, corev1.ProtocolUDP), port(53, corev1.ProtocolTCP))),
				svc("a/web", 1, specIP("192.0.2.10"), ports(port(80, ""), port(443, corev1.ProtocolTCP))),
			},
			want: []Address{addr("192.0.2.10", "a/web", "b/dns")}},
		{name: "same port, other protocol shares",
			svcs: []*corev1.Service{
				svc("a/tcp", 0, ann("192.0.2.10"), ports(port(53, corev1.ProtocolTCP))),
				svc("a/udp", 0, ann("192.0.2.10"), ports(port(53, corev1.ProtocolUDP))),
			},
			want: []Address{addr("192.0.2.10", "a/tcp", "a/udp")}},
		{name: "port conflict: the younger Service loses",
			svcs: []*corev1.Service{
				svc("a/young", 5, ann("192.0.2.10")),
				svc("z/old", 1, ann("192.0.2.10"), ports(port(80, ""))),
			},
			want: []Address{addr("192.0.2.10", "z/old")},
			warn: map[string][]string{"a/young": {reasonPortConflict, "port 80/TCP on 192.0.2.10 is already used by Service z/old"}}},
		{name: "port conflict: same age, name decides",
			svcs: []*corev1.Service{
				svc("a/b", 0, ann("192.0.2.10")),
				svc("a/a", 0, ann("192.0.2.10")),
			},
			want: []Address{addr("192.0.2.10", "a/a")},
			warn: map[string][]string{"a/b": {reasonPortConflict, "already used by Service a/a"}}},
		{name: "port conflict on one family: no address at all",
			svcs: []*corev1.Service{
				svc("a/v4", 0, ann("192.0.2.10")),
				svc("a/dual", 1, ann("192.0.2.10,2001:db8::10")),
			},
			want: []Address{addr("192.0.2.10", "a/v4")},
			warn: map[string][]string{"a/dual": {reasonPortConflict, "192.0.2.10"}}},

		{name: "pool: first usable address of a /24",
			svcs:  []*corev1.Service{svc("a/web", 0)},
			pool:  poolOf("cidr-global", "192.0.2.0/24"),
			alloc: map[string][]netip.Addr{"a/web": addrs("192.0.2.1")}},
		{name: "pool: namespace key before global, used addresses skipped",
			svcs:  []*corev1.Service{svc("a/x", 0, ann("198.51.100.10")), svc("a/web", 1)},
			pool:  poolOf("cidr-global", "192.0.2.0/24", "range-a", "198.51.100.10-198.51.100.20"),
			want:  []Address{addr("198.51.100.10", "a/x")},
			alloc: map[string][]netip.Addr{"a/web": addrs("198.51.100.11")}},
		{name: "pool: addresses used by any namespace are taken",
			svcs:  []*corev1.Service{svc("b/x", 0, ann("192.0.2.1")), svc("a/web", 1)},
			pool:  poolOf("cidr-global", "192.0.2.0/30"),
			want:  []Address{addr("192.0.2.1", "b/x")},
			alloc: map[string][]netip.Addr{"a/web": addrs("192.0.2.2")}},
		{name: "pool: several Services, oldest first, distinct",
			svcs:  []*corev1.Service{svc("a/c", 2), svc("a/b", 0), svc("a/a", 1)},
			pool:  poolOf("range-global", "192.0.2.10-192.0.2.11, 192.0.2.20-192.0.2.20"),
			alloc: map[string][]netip.Addr{"a/b": addrs("192.0.2.10"), "a/a": addrs("192.0.2.11"), "a/c": addrs("192.0.2.20")}},
		{name: "pool: cidr and range keys of a namespace together",
			svcs:  []*corev1.Service{svc("a/x", 0, ann("192.0.2.1")), svc("a/web", 1)},
			pool:  poolOf("cidr-a", "192.0.2.1/32", "range-a", "198.51.100.5-198.51.100.6"),
			want:  []Address{addr("192.0.2.1", "a/x")},
			alloc: map[string][]netip.Addr{"a/web": addrs("198.51.100.5")}},
		{name: "pool: exhausted",
			svcs: []*corev1.Service{svc("a/x", 0, ann("192.0.2.1")), svc("a/web", 1)},
			pool: poolOf("cidr-global", "192.0.2.1/32"),
			want: []Address{addr("192.0.2.1", "a/x")},
			warn: map[string][]string{"a/web": {reasonPoolExhausted, "no free IPv4 address in the pool (ConfigMap kube-system/kubevip, cidr-global)"}}},
		{name: "pool: no ConfigMap",
			svcs: []*corev1.Service{svc("a/web", 0)},
			pool: noPool(),
			warn: map[string][]string{"a/web": {reasonNoPool, "ConfigMap kube-system/kubevip not found"}}},
		{name: "pool: no key for the namespace",
			svcs: []*corev1.Service{svc("a/web", 0)},
			pool: poolOf("cidr-b", "192.0.2.0/24"),
			warn: map[string][]string{"a/web": {reasonNoPool, "has none of cidr-a, range-a, cidr-global, range-global"}}},
		{name: "pool: bad entry",
			svcs: []*corev1.Service{svc("a/web", 0)},
			pool: poolOf("range-global", "192.0.2.10-192.0.2.20,192.0.2.30"),
			warn: map[string][]string{"a/web": {reasonInvalidPool, `ConfigMap kube-system/kubevip key range-global: "192.0.2.30" is not a range`}}},
		{name: "pool: IPv6 single stack",
			svcs:  []*corev1.Service{svc("a/web", 0, familiesOpt(corev1.IPFamilyPolicySingleStack, corev1.IPv6Protocol))},
			pool:  poolOf("cidr-global", "192.0.2.0/24,2001:db8:1::/64"),
			alloc: map[string][]netip.Addr{"a/web": addrs("2001:db8:1::1")}},
		{name: "pool: no address of the family",
			svcs: []*corev1.Service{svc("a/web", 0, familiesOpt(corev1.IPFamilyPolicySingleStack, corev1.IPv6Protocol))},
			pool: poolOf("cidr-global", "192.0.2.0/24"),
			warn: map[string][]string{"a/web": {reasonPoolExhausted, "no free IPv6 address"}}},
		{name: "pool: dual stack, primary family first",
			svcs:  []*corev1.Service{svc("a/web", 0, familiesOpt(corev1.IPFamilyPolicyRequireDualStack, corev1.IPv6Protocol, corev1.IPv4Protocol))},
			pool:  poolOf("cidr-global", "192.0.2.0/24,2001:db8:1::/64"),
			alloc: map[string][]netip.Addr{"a/web": addrs("2001:db8:1::1", "192.0.2.1")}},
		{name: "pool: prefer dual stack settles for one family",
			svcs:  []*corev1.Service{svc("a/web", 0, familiesOpt(corev1.IPFamilyPolicyPreferDualStack, corev1.IPv4Protocol, corev1.IPv6Protocol))},
			pool:  poolOf("cidr-global", "192.0.2.0/24"),
			alloc: map[string][]netip.Addr{"a/web": addrs("192.0.2.1")}},
		{name: "pool: require dual stack does not",
			svcs: []*corev1.Service{svc("a/web", 0, familiesOpt(corev1.IPFamilyPolicyRequireDualStack, corev1.IPv4Protocol, corev1.IPv6Protocol))},
			pool: poolOf("cidr-global", "192.0.2.0/24"),
			warn: map[string][]string{"a/web": {reasonPoolExhausted, "no free IPv6 address"}}},
		{name: "pool: single stack IPv4 with a dual-stack pool",
			svcs:  []*corev1.Service{svc("a/web", 0, familiesOpt(corev1.IPFamilyPolicySingleStack, corev1.IPv4Protocol))},
			pool:  poolOf("cidr-global", "192.0.2.0/24,2001:db8:1::/64"),
			alloc: map[string][]netip.Addr{"a/web": addrs("192.0.2.1")}},
		{name: "pool: bad annotation is not replaced by the pool",
			svcs: []*corev1.Service{svc("a/web", 0, ann("nope"))},
			pool: poolOf("cidr-global", "192.0.2.0/24"),
			warn: map[string][]string{"a/web": {reasonInvalidIPs, "nope"}}},
		{name: "pool: racing allocations onto one address, the younger moves",
			svcs:  []*corev1.Service{svc("a/a", 3, allocated("192.0.2.1")), svc("a/b", 2, allocated("192.0.2.1"))},
			pool:  poolOf("cidr-global", "192.0.2.0/24"),
			want:  []Address{addr("192.0.2.1", "a/b")},
			alloc: map[string][]netip.Addr{"a/a": addrs("192.0.2.2")}},
		{name: "pool: racing allocations, no other address free: the younger's is removed",
			svcs:  []*corev1.Service{svc("a/a", 0, allocated("192.0.2.1")), svc("a/b", 1, allocated("192.0.2.1"))},
			pool:  poolOf("cidr-global", "192.0.2.1/32"),
			want:  []Address{addr("192.0.2.1", "a/a")},
			warn:  map[string][]string{"a/b": {reasonPoolExhausted, "no free IPv4 address"}},
			write: map[string]bool{"a/b": true}},
		{name: "pool: an allocation racing a user's explicit address moves",
			svcs:  []*corev1.Service{svc("a/user", 0, ann("192.0.2.1"), ports(port(53, corev1.ProtocolUDP))), svc("a/pool", 1, allocated("192.0.2.1"))},
			pool:  poolOf("cidr-global", "192.0.2.0/24"),
			want:  []Address{addr("192.0.2.1", "a/user")},
			alloc: map[string][]netip.Addr{"a/pool": addrs("192.0.2.2")}},
		{name: "pool: a user may share an allocated address on purpose",
			svcs: []*corev1.Service{svc("a/pool", 0, allocated("192.0.2.1")), svc("a/user", 1, ann("192.0.2.1"), ports(port(53, corev1.ProtocolUDP)))},
			pool: poolOf("cidr-global", "192.0.2.0/24"),
			want: []Address{addr("192.0.2.1", "a/pool", "a/user")}},
		{name: "pool: an annotation edited by a user is not an allocation",
			svcs: []*corev1.Service{
				svc("a/a", 0, ann("192.0.2.1"), ports(port(53, corev1.ProtocolUDP))),
				svc("a/b", 1, allocated("192.0.2.5"), ann("192.0.2.1")),
			},
			pool: poolOf("cidr-global", "192.0.2.0/24"),
			want: []Address{addr("192.0.2.1", "a/a", "a/b")}},

		{name: "local: ready nodes, unset ready counts, not-ready and unscheduled do not",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10"), local())},
			slices: []*discoveryv1.EndpointSlice{
				slice("a/web", endpoint{"n3", yes}, endpoint{"n1", nil}, endpoint{"n2", no}, endpoint{"", yes}),
				slice("b/web", endpoint{"n9", yes}),
			},
			want: []Address{addrOn("192.0.2.10", []string{"n1", "n3"}, "a/web")}},
		{name: "local: no endpoints, no node",
			svcs: []*corev1.Service{svc("a/web", 0, ann("192.0.2.10"), local())},
			want: []Address{addrOn("192.0.2.10", []string{}, "a/web")}},
		{name: "local: cluster policy ignores endpoints",
			svcs:   []*corev1.Service{svc("a/web", 0, ann("192.0.2.10"))},
			slices: []*discoveryv1.EndpointSlice{slice("a/web", endpoint{"n1", yes})},
			want:   []Address{addr("192.0.2.10", "a/web")}},
		{name: "local: sharers intersect, cluster sharer adds no limit",
			svcs: []*corev1.Service{
				svc("a/web", 0, ann("192.0.2.10"), local()),
				svc("a/dns", 0, ann("192.0.2.10"), local(), ports(port(53, corev1.ProtocolUDP))),
				svc("a/ssh", 0, ann("192.0.2.10"), ports(port(22, corev1.ProtocolTCP))),
			},
			slices: []*discoveryv1.EndpointSlice{
				slice("a/web", endpoint{"n1", yes}, endpoint{"n2", yes}),
				slice("a/dns", endpoint{"n2", yes}, endpoint{"n3", yes}),
				slice("a/ssh", endpoint{"n4", yes}),
			},
			want: []Address{addrOn("192.0.2.10", []string{"n2"}, "a/dns", "a/ssh", "a/web")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := defaultFilter
			if tc.filter != nil {
				f = *tc.filter
			}
			p := tc.pool
			if p.name == "" {
				p = noPool()
			}
			checkPlan(t, computePlan(tc.svcs, tc.slices, p, f), tc.want, tc.warn, tc.alloc, tc.write)
		})
	}
}

// checkPlan compares a plan with the addresses wanted, each Service's one
// warning (reason and a piece of its message), pool allocation, and
// whether an allocation is written although empty.
func checkPlan(t *testing.T, got plan, want []Address, warn map[string][]string, alloc map[string][]netip.Addr, write map[string]bool) {
	t.Helper()
	if !reflect.DeepEqual(got.addresses, want) {
		t.Errorf("addresses:\n got %+v\nwant %+v", got.addresses, want)
	}
	for nn, sp := range got.services {
		w := warn[nn.String()]
		switch {
		case len(w) == 0 && len(sp.warnings) > 0:
			t.Errorf("%s: unexpected warnings %v", nn, sp.warnings)
		case len(w) > 0 && (len(sp.warnings) != 1 || sp.warnings[0].reason != w[0] || !strings.Contains(sp.warnings[0].message, w[1])):
			t.Errorf("%s: warnings %v, want one %s containing %q", nn, sp.warnings, w[0], w[1])
		}
		if want := alloc[nn.String()]; !slices.Equal(sp.alloc, want) || sp.write != (want != nil || write[nn.String()]) {
			t.Errorf("%s: allocation %v (write %v), want %v", nn, sp.alloc, sp.write, want)
		}
		if len(sp.warnings) > 0 && len(sp.addrs) > 0 {
			t.Errorf("%s: warned but has addresses %v", nn, sp.addrs)
		}
	}
	for nn := range warn {
		if got.services[names(nn)[0]] == nil {
			t.Errorf("%s: not served, want warnings", nn)
		}
	}
}

// TestComputePlanIsDeterministic checks that the input order does not
// matter, as agents list their caches in different orders.
func TestComputePlanIsDeterministic(t *testing.T) {
	svcs := []*corev1.Service{
		svc("a/one", 0), svc("b/two", 0), svc("a/three", 1, ann("192.0.2.1")),
		svc("c/four", 0, ann("192.0.2.1"), ports(port(53, corev1.ProtocolUDP))), svc("a/five", 2, ann("192.0.2.1")),
	}
	p := poolOf("cidr-global", "192.0.2.0/29")
	first := computePlan(svcs, nil, p, defaultFilter)
	for i := range 20 {
		shuffled := slices.Clone(svcs)
		for j := range shuffled {
			k := (j*7 + i) % len(shuffled)
			shuffled[j], shuffled[k] = shuffled[k], shuffled[j]
		}
		if got := computePlan(shuffled, nil, p, defaultFilter); !reflect.DeepEqual(got, first) {
			t.Fatalf("order %d: plan differs:\n got %+v\nwant %+v", i, got, first)
		}
	}
}

func TestParsePool(t *testing.T) {
	ok := []struct{ in, first, last string }{
		{"192.0.2.0/24", "192.0.2.1", "192.0.2.254"},
		{"192.0.2.77/24", "192.0.2.1", "192.0.2.254"}, // host bits ignored
		{"192.0.2.8/30", "192.0.2.9", "192.0.2.10"},
		{"192.0.2.8/31", "192.0.2.8", "192.0.2.9"},
		{"192.0.2.8/32", "192.0.2.8", "192.0.2.8"},
		{"2001:db8::/64", "2001:db8::1", "2001:db8::ffff:ffff:ffff:ffff"},
		{"2001:db8::/127", "2001:db8::", "2001:db8::1"},
	}
	for _, tc := range ok {
		r, err := parseCIDR(tc.in)
		if err != nil || r.first.String() != tc.first || r.last.String() != tc.last {
			t.Errorf("parseCIDR(%q) = %v-%v, %v; want %s-%s", tc.in, r.first, r.last, err, tc.first, tc.last)
		}
	}
	for _, in := range []string{"192.0.2.0", "192.0.2.0/33", "127.0.0.0/8", "224.0.0.0/4", "fe80::/64", ""} {
		if _, err := parseCIDR(in); err == nil {
			t.Errorf("parseCIDR(%q) succeeded", in)
		}
	}
	r, err := parseRange(" 192.0.2.10 - 192.0.2.20")
	if err != nil || r.first.String() != "192.0.2.10" || r.last.String() != "192.0.2.20" {
		t.Errorf("parseRange = %v-%v, %v", r.first, r.last, err)
	}
	for in, want := range map[string]string{
		"192.0.2.10":                "is not a range",
		"192.0.2.20-192.0.2.10":     "ends before it starts",
		"192.0.2.10-2001:db8::1":    "mixes IPv4 and IPv6",
		"192.0.2.10-192.0.2.x":      "is not a range",
		"127.0.0.1-127.0.0.9":       "loopback",
		"192.0.2.1-255.255.255.255": "broadcast",
	} {
		if _, err := parseRange(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseRange(%q) error %v, want %q", in, err, want)
		}
	}
}

func TestDesiredIngress(t *testing.T) {
	vip := corev1.LoadBalancerIPModeVIP
	proxy := corev1.LoadBalancerIPModeProxy
	in := func(ip string, mode *corev1.LoadBalancerIPMode) corev1.LoadBalancerIngress {
		return corev1.LoadBalancerIngress{IP: ip, IPMode: mode}
	}
	held := func(s ...string) map[netip.Addr]bool {
		m := map[netip.Addr]bool{}
		for _, a := range addrs(s...) {
			m[a] = true
		}
		return m
	}
	cases := []struct {
		name  string
		cur   []corev1.LoadBalancerIngress
		addrs []netip.Addr
		held  map[netip.Addr]bool
		want  []corev1.LoadBalancerIngress
	}{
		{"take over", nil, addrs("192.0.2.10"), held("192.0.2.10"),
			[]corev1.LoadBalancerIngress{in("192.0.2.10", &vip)}},
		{"fix the mode", []corev1.LoadBalancerIngress{in("192.0.2.10", &proxy)}, addrs("192.0.2.10"), held("192.0.2.10"),
			[]corev1.LoadBalancerIngress{in("192.0.2.10", &vip)}},
		{"keep the other family's holder, drop stale", []corev1.LoadBalancerIngress{in("2001:db8::10", &proxy), in("192.0.2.9", &vip)},
			addrs("192.0.2.10", "2001:db8::10"), held("192.0.2.10"),
			[]corev1.LoadBalancerIngress{in("192.0.2.10", &vip), in("2001:db8::10", &proxy)}},
		{"release: drop only addresses the Service no longer has",
			[]corev1.LoadBalancerIngress{in("192.0.2.9", &vip), in("192.0.2.10", &vip), {Hostname: "lb.example"}},
			addrs("192.0.2.10"), nil,
			[]corev1.LoadBalancerIngress{in("192.0.2.10", &vip)}},
		{"release: no address left", []corev1.LoadBalancerIngress{in("192.0.2.9", &vip)}, nil, nil, nil},
		{"non-canonical IPv6 of a held address is rewritten", []corev1.LoadBalancerIngress{in("2001:DB8:0::10", &vip)},
			addrs("2001:db8::10"), held("2001:db8::10"),
			[]corev1.LoadBalancerIngress{in("2001:db8::10", &vip)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := desiredIngress(tc.cur, tc.addrs, tc.held)
			if !ingressEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestClaimsHost(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	dual := []netip.Addr{v4, v6}
	cases := []struct {
		current string
		held    []netip.Addr
		want    bool
	}{
		{"", []netip.Addr{v4}, true},
		{"n2", []netip.Addr{v4}, true}, // holder of the primary takes over
		{"n1", []netip.Addr{v4}, false},
		{"", []netip.Addr{v6}, true},
		{"n2", []netip.Addr{v6}, false}, // the primary's holder names itself
	}
	for _, tc := range cases {
		h := map[netip.Addr]bool{}
		for _, a := range tc.held {
			h[a] = true
		}
		if got := claimsHost(tc.current, "n1", dual, h); got != tc.want {
			t.Errorf("vipHost %q, n1 holds %v: claims %v, want %v", tc.current, tc.held, got, tc.want)
		}
	}
}
