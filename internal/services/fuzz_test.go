package services

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vipd/vipd/internal/address"
)

// FuzzServiceAddresses feeds Service annotations and spec.loadBalancerIP
// as users write them (and worse) through the computation every agent
// makes: it never panics, and an address it serves is one a VIP can be,
// at most one of each family.
func FuzzServiceAddresses(f *testing.F) {
	f.Add("192.0.2.10", "")
	f.Add("192.0.2.10,2001:db8::10", "")
	f.Add(" 192.0.2.10 , 2001:db8::10 ,", "")
	f.Add("192.0.2.10,192.0.2.11", "")
	f.Add("fe80::1%eth0", "")
	f.Add("::ffff:192.0.2.1", "224.0.0.1")
	f.Add("", "192.0.2.300")
	f.Add("", "2001:db8::1")
	f.Fuzz(func(t *testing.T, annotation, lbIP string) {
		s := svc("a/web", 0, ann(annotation), specIP(lbIP))
		p := computePlan([]*corev1.Service{s}, nil, pool{}, filter{})
		sp := p.services[types.NamespacedName{Namespace: "a", Name: "web"}]
		if sp == nil {
			t.Fatal("a served Service has no plan")
		}
		if len(sp.addrs) > 2 {
			t.Fatalf("%d addresses", len(sp.addrs))
		}
		for i, a := range sp.addrs {
			if problem := address.VIPProblem(a); problem != "" {
				t.Fatalf("serves %s: %s", a, problem)
			}
			if i == 1 && a.Is4() == sp.addrs[0].Is4() {
				t.Fatalf("two addresses of one family: %v", sp.addrs)
			}
		}
		for _, w := range sp.warnings {
			if w.reason == "" || w.message == "" || len(w.message) > 1000 {
				t.Fatalf("warning %+v", w)
			}
		}
	})
}

// FuzzPool feeds the pool ConfigMap's ranges through allocation: it never
// panics nor takes long, and an address it hands out lies in a range of
// the pool and can be a VIP.
func FuzzPool(f *testing.F) {
	f.Add("192.0.2.0/24", "192.0.2.10-192.0.2.20")
	f.Add("2001:db8::/120", "")
	f.Add("192.0.2.0/31,192.0.2.5/32", "192.0.2.10-192.0.2.5")
	f.Add("10.0.0.0/8", "223.255.255.255-240.0.0.1")
	f.Add("garbage", "192.0.2.1-2001:db8::1")
	f.Add("", "192.0.2.10-192.0.2.20,192.0.2.15-192.0.2.30")
	f.Fuzz(func(t *testing.T, cidr, ranges string) {
		pl := pool{name: "kube-system/kubevip", data: map[string]string{"cidr-global": cidr, "range-global": ranges}}
		rs, _, err := pl.rangesFor("a")
		used := map[netip.Addr]bool{}
		for _, r := range rs {
			used[r.first] = true // the first of each is taken
		}
		start := time.Now()
		ips, fail, _ := pl.allocate(svc("a/web", 0), used)
		if d := time.Since(start); d > time.Second {
			t.Fatalf("allocation took %v", d)
		}
		if err != nil && len(ips) > 0 {
			t.Fatalf("allocated %v from a pool that does not parse: %v", ips, err)
		}
		if fail == nil && len(ips) == 0 {
			t.Fatal("no address and no warning")
		}
		for _, a := range ips {
			if problem := address.VIPProblem(a); problem != "" || used[a] {
				t.Fatalf("allocated %s (%s, used %v)", a, problem, used[a])
			}
			in := false
			for _, r := range rs {
				in = in || (!a.Less(r.first) && !r.last.Less(a))
			}
			if !in {
				t.Fatalf("allocated %s outside %v", a, rs)
			}
		}
	})
}
