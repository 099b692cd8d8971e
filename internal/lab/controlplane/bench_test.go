package controlplane

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// BenchmarkLeaseUpdates: how long the API server alone (nothing else on
// the machine busy) takes to answer a re-home's worth of claims: 100
// Lease updates sent at once, each conditional on the version read, with
// ten watchers of the namespace's Leases as ten agents would be. It is the
// reference for the re-home figure of BenchmarkServices
// (docs/scale.md), where the same writes share the machine with the
// agents.
func BenchmarkLeaseUpdates(b *testing.B) {
	const leases, watchers = 100, 10
	cp := startForTest(b)
	rc := cp.Config()
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	rc.ContentType = runtime.ContentTypeProtobuf // as the agents talk
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := "lease-bench"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	current := make([]*coordinationv1.Lease, leases)
	for i := range current {
		holder := "n0"
		l, err := client.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("vipd-svc-192-0-2-%d", i+1)},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder},
		}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		current[i] = l
	}
	var drained sync.WaitGroup
	defer drained.Wait()
	for range watchers {
		// A client each, as each agent has its own connection.
		own, err := kubernetes.NewForConfig(rest.CopyConfig(rc))
		if err != nil {
			b.Fatal(err)
		}
		w, err := own.CoordinationV1().Leases(ns).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		drained.Go(func() {
			for range w.ResultChan() {
			}
		})
		defer w.Stop()
	}
	round := 0
	for b.Loop() {
		round++
		holder := fmt.Sprintf("n%d", round)
		var wg sync.WaitGroup
		errs := make(chan error, leases)
		for i := range current {
			wg.Go(func() {
				l := current[i].DeepCopy()
				l.Spec.HolderIdentity = &holder
				out, err := client.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
				if err != nil {
					errs <- err
					return
				}
				current[i] = out
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(round), "ms/100-updates")
}
