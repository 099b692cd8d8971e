package services

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// benchCluster is n Services with an address each and a ready
// EndpointSlice each, on 10 nodes: the shape of BenchmarkServices in e2e.
func benchCluster(n int) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	svcs := make([]*corev1.Service, n)
	eps := make([]*discoveryv1.EndpointSlice, n)
	a := netip.MustParseAddr("2001:db8:100::2:1")
	for i := range n {
		name := fmt.Sprintf("svc-%04d", i)
		svcs[i] = svc("bench/"+name, i, ann(a.String()))
		a = a.Next()
		node := fmt.Sprintf("n%d", i%10+1)
		eps[i] = &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name + "-1",
				Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"198.51.100.11"}, NodeName: ptr.To(node),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		}
	}
	return svcs, eps
}

func BenchmarkComputePlan(b *testing.B) {
	for _, n := range []int{10, 1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svcs, eps := benchCluster(n)
			b.ReportAllocs()
			for b.Loop() {
				computePlan(svcs, eps, pool{}, filter{})
			}
		})
	}
}
