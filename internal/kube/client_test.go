package kube

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/vipd/vipd/internal/lab/controlplane"
)

var suite controlplane.Suite

func TestMain(m *testing.M) { os.Exit(suite.Run(m)) }

func newTestClient(t *testing.T) *Client {
	t.Helper()
	rc := suite.Need(t).Config()
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	// As the agent asks (agent/client.go): every kind here must have it.
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	c, err := NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClientAgainstAPIServer: every kind vipd uses is read and written
// through this client on a real API server, with protobuf as the agent
// asks, and an informer built on it syncs and sees changes.
func TestClientAgainstAPIServer(t *testing.T) {
	c := newTestClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := "kube-client-test"
	if _, err := c.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating a Namespace: %v", err)
	}
	t.Cleanup(func() { _ = c.Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })

	// An informer on Leases, started before the writes it must see.
	inf := NewInformer(c.Leases(ns), &coordinationv1.Lease{}, InformerOptions{
		Transform: func(obj any) (any, error) {
			if l, ok := obj.(*coordinationv1.Lease); ok {
				l.ManagedFields = nil
			}
			return obj, nil
		}})
	stop := Start(ctx, inf)
	defer stop()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("the Lease informer did not sync")
	}

	holder := "n1"
	l, err := c.Leases(ns).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "claim"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a Lease: %v", err)
	}
	holder = "n2"
	l.Spec.HolderIdentity = &holder
	if _, err := c.Leases(ns).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating a Lease: %v", err)
	}
	if _, err := c.Leases(ns).Update(ctx, l, metav1.UpdateOptions{}); err == nil {
		t.Fatal("an update from a stale resourceVersion was accepted")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		obj, ok, _ := inf.GetStore().GetByKey(ns + "/claim")
		if ok && *obj.(*coordinationv1.Lease).Spec.HolderIdentity == "n2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the informer did not see the Lease's update")
		}
		time.Sleep(20 * time.Millisecond)
	}

	svc, err := c.Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a Service: %v", err)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.10"}}
	if _, err := c.Services(ns).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("updating a Service's status: %v", err)
	}
	got, err := c.Services(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil || len(got.Status.LoadBalancer.Ingress) != 1 || got.Status.LoadBalancer.Ingress[0].IP != "192.0.2.10" {
		t.Fatalf("the Service's status was not written: %v, %+v", err, got.Status)
	}

	ev, err := EventSink{Client: c}.Create(&corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "web.1", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Service", Namespace: ns, Name: "web"}, Reason: "VIPAssigned",
		Message: "test", Type: corev1.EventTypeNormal})
	if err != nil || ev.Namespace != ns {
		t.Fatalf("recording an Event in its namespace: %v", err)
	}
	if _, err := (EventSink{Client: c}).Patch(ev, []byte(`{"count":2}`)); err != nil {
		t.Fatalf("patching an Event: %v", err)
	}

	rev, err := c.SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: ns, Verb: "update", Group: "coordination.k8s.io", Resource: "leases"}}}, metav1.CreateOptions{})
	if err != nil || !rev.Status.Allowed {
		t.Fatalf("asking what the identity may do: %v, %+v", err, rev)
	}
	for _, read := range []func() error{
		func() error { _, err := c.Nodes().List(ctx, metav1.ListOptions{Limit: 1}); return err },
		func() error { _, err := c.EndpointSlices(ns).List(ctx, metav1.ListOptions{}); return err },
		func() error { _, err := c.ConfigMaps(ns).List(ctx, metav1.ListOptions{}); return err },
		func() error { _, err := c.Secrets(ns).List(ctx, metav1.ListOptions{}); return err },
	} {
		if err := read(); err != nil {
			t.Errorf("listing: %v", err)
		}
	}
}

// TestAgentLinksNoClientset: the vipd binary does not link client-go's
// clientset or informer factory, which would bring every API group back
// (the point of this package).
func TestAgentLinksNoClientset(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/vipd/vipd/cmd/vipd").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "k8s.io/client-go/kubernetes" || strings.HasPrefix(pkg, "k8s.io/client-go/kubernetes/") ||
			strings.HasPrefix(pkg, "k8s.io/client-go/informers") {
			t.Errorf("cmd/vipd links %s", pkg)
		}
	}
}
