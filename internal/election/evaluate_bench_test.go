package election

import (
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"k8s.io/utils/ptr"

	"github.com/vipd/vipd/internal/kube/kubetest"
)

// benchElector is an Elector that has seen the node Leases of 10 agents
// and n claims spread over them, as in e2e's BenchmarkServices.
func benchElector(b testing.TB, n int) *Elector {
	e, err := New(Config{Client: kubetest.Wrap(fake.NewClientset()), Namespace: "ns", Identity: "n1",
		LeaseDuration: 5 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	e.lastRenew = now.Add(time.Hour) // live for the whole benchmark
	e.apiOK = true
	e.started = now.Add(-time.Minute)
	for i := 1; i <= 10; i++ {
		node := fmt.Sprintf("n%d", i)
		e.record(&coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: NodeLeasePrefix + node, ResourceVersion: "1", Labels: map[string]string{LabelKind: KindNode}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(node), LeaseDurationSeconds: ptr.To(int32(5))}})
	}
	var cs []Contest
	for i := range n {
		name := fmt.Sprintf("vipd-svc-192-0-%d-%d", i/250, i%250)
		cs = append(cs, Contest{Name: name})
		node := fmt.Sprintf("n%d", i%10+1)
		e.record(&coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: "1", Labels: map[string]string{LabelKind: KindClaim}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(node), LeaseDurationSeconds: ptr.To(int32(5))}})
	}
	e.SetContests(cs)
	return e
}

// BenchmarkEvaluate is one evaluation after one claim changed, the common
// case while Services are placed or a lost node's VIPs re-homed.
func BenchmarkEvaluate(b *testing.B) {
	for _, n := range []int{10, 1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			e := benchElector(b, n)
			inflight, freeSince, retryAt := map[string]bool{}, map[string]time.Time{}, map[string]time.Time{}
			e.evaluate(inflight, freeSince, retryAt)
			claim := e.leases["vipd-svc-192-0-0-5"].lease.DeepCopy()
			rv := 1
			b.ReportAllocs()
			for b.Loop() {
				rv++
				claim = claim.DeepCopy()
				claim.ResourceVersion = fmt.Sprint(rv)
				e.record(claim)
				e.evaluate(inflight, freeSince, retryAt)
			}
		})
	}
}
