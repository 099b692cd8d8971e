package nodes

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/lab/controlplane"
)

var suite controlplane.Suite

func TestMain(m *testing.M) { os.Exit(suite.Run(m)) }

// TestMatchingFollowsLabels: the set a selector matches follows Nodes being
// added, relabelled and deleted, and each change is signalled.
func TestMatchingFollowsLabels(t *testing.T) {
	cp := suite.Need(t)
	client, err := kube.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Node names of this test only: Nodes are cluster-wide.
	names := []string{"nodes-test-a", "nodes-test-b", "nodes-test-c"}
	for i, n := range names {
		l := map[string]string{"zone": "a"}
		if i == 2 {
			l = map[string]string{"zone": "b", LabelControlPlane: ""}
		}
		if _, err := client.Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: l}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Nodes().Delete(context.Background(), n, metav1.DeleteOptions{}) })
	}
	w := New(client, nil)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	zoneA := labels.SelectorFromSet(labels.Set{"zone": "a"})
	notCP, err := labels.Parse("!" + LabelControlPlane)
	if err != nil {
		t.Fatal(err)
	}
	ours := func(all []string) []string {
		return slices.DeleteFunc(all, func(n string) bool { return !slices.Contains(names, n) })
	}
	wait := func(what string, sel labels.Selector, want []string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			got := ours(w.Matching(sel))
			if w.Synced() && slices.Equal(got, want) {
				return
			}
			select {
			case <-w.Changes():
			case <-deadline:
				t.Fatalf("%s: matching %v, want %v", what, got, want)
			}
		}
	}
	wait("at start", zoneA, names[:2])
	wait("not control plane", notCP, names[:2])
	if l, ok := w.Labels(names[2]); !ok || l["zone"] != "b" {
		t.Errorf("labels of %s: %v, %v", names[2], l, ok)
	}

	n, err := client.Nodes().Get(ctx, names[0], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Labels["zone"] = "b"
	if _, err := client.Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("after relabelling", zoneA, names[1:2])
	if err := client.Nodes().Delete(ctx, names[1], metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("after deleting", zoneA, []string{})
	if _, ok := w.Labels(names[1]); ok {
		t.Errorf("%s still known after it was deleted", names[1])
	}
}
