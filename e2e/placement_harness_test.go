package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/lab"
)

// labelControlPlane is the role label kubeadm puts on control-plane nodes.
const labelControlPlane = "node-role.kubernetes.io/control-plane"

// createNodes makes a Node object for each lab node (the lab runs no
// kubelet), with the given labels, and deletes them when the test ends.
// Nodes are cluster-wide: the tests of the package run one at a time, and
// each deletes its Nodes before the next starts.
func createNodes(tb testing.TB, nodes []*lab.Node, labels map[string]map[string]string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels[n.Name]}}
		if _, err := pkg.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			tb.Fatalf("creating Node %s: %v", n.Name, err)
		}
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := pkg.admin.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				tb.Errorf("deleting Node %s: %v", n.Name, err)
			}
		})
	}
}

// setNodeLabels replaces a Node's labels.
func setNodeLabels(tb testing.TB, node string, labels map[string]string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := pkg.admin.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	n.Labels = labels
	if _, err := pkg.admin.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		tb.Fatalf("labelling Node %s: %v", node, err)
	}
}

// createPools makes the pool ConfigMap "pools" in the env's namespace;
// poolArgs points agents at it.
func (s *svcEnv) createPools(data map[string]string) {
	s.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: "pools"}, Data: data}
	if _, err := pkg.admin.CoreV1().ConfigMaps(s.ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		s.tb.Fatalf("creating the pool ConfigMap: %v", err)
	}
}

func (s *svcEnv) poolArgs() []string {
	return []string{"--pool-namespace", s.ns, "--pool-configmap", "pools"}
}

// neverHeldBy fails the test if any of the watches saw one of nodes hold
// its VIP at any moment so far.
func neverHeldBy(tb testing.TB, ws map[netip.Addr]*vipWatch, nodes ...string) {
	tb.Helper()
	for _, vip := range slices.SortedFunc(maps.Keys(ws), netip.Addr.Compare) {
		w := ws[vip]
		if err := w.Err(); err != nil {
			tb.Fatal(err)
		}
		for _, ev := range w.Events() {
			if ev.Held && slices.Contains(nodes, ev.Node) {
				tb.Errorf("%s was held by %s at %s, which may not hold it: %+v", vip, ev.Node, ev.At.Format("15:04:05.000"), w.Events())
				break
			}
		}
	}
}

// heldBy says which of the watched VIPs one of nodes holds now, if any.
func heldBy(ws map[netip.Addr]*vipWatch, nodes ...string) error {
	for vip, w := range ws {
		for _, h := range w.Holders() {
			if slices.Contains(nodes, h) {
				return fmt.Errorf("%s is held by %s", vip, h)
			}
		}
	}
	return nil
}

// holdersOn maps each of vips to the nodes that have it on interface dev.
func (e *env) holdersOn(dev string, vips []netip.Addr) (map[netip.Addr][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	onNode := make([][]netip.Addr, len(e.lab.Nodes))
	err := parallel(ctx, len(e.lab.Nodes), len(e.lab.Nodes), func(ctx context.Context, i int) error {
		var err error
		onNode[i], err = addrsOnDev(ctx, e.lab.Nodes[i], dev)
		return err
	})
	if err != nil {
		return nil, err
	}
	return holdersFrom(e.lab.Nodes, onNode, vips), nil
}

// waitPlacedOn waits until each of vips is on interface dev of exactly one
// node and returns where.
func (s *svcEnv) waitPlacedOn(timeout time.Duration, dev string, vips []netip.Addr) placement {
	s.tb.Helper()
	var p placement
	waitFor(s.tb, timeout, "every VIP on "+dev+" of exactly one node", func() error {
		h, err := s.holdersOn(dev, vips)
		if err != nil {
			return err
		}
		p, err = singleHolders(h, vips)
		return err
	})
	return p
}

// waitAllOn waits until every one of vips is on interface dev of node and
// of no other node, and returns when that was seen.
func (s *svcEnv) waitAllOn(timeout time.Duration, dev string, vips []netip.Addr, node string) time.Time {
	s.tb.Helper()
	return waitFor(s.tb, timeout, fmt.Sprintf("%d VIPs on %s of %s only", len(vips), dev, node), func() error {
		hs, err := s.holdersOn(dev, vips)
		if err != nil {
			return err
		}
		for _, v := range vips {
			if !slices.Equal(hs[v], []string{node}) {
				return fmt.Errorf("%s on %v", v, hs[v])
			}
		}
		return nil
	})
}

// nodeLeaseAnnotation reads an annotation of an agent's node Lease.
func nodeLeaseAnnotation(ns, node, key string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := pkg.admin.CoordinationV1().Leases(ns).Get(ctx, nodeLease(node), metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading the node Lease of %s: %w", node, err)
	}
	return l.Annotations[key], nil
}

// serviceAddrs reads the addresses a Service was given (its annotation,
// which pool allocations write).
func serviceAddrs(ns, name string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	svc, err := getService(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	v := svc.Annotations[annotationIPs]
	if v == "" {
		return nil, fmt.Errorf("Service %s/%s has no address yet", ns, name)
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return nil, fmt.Errorf("Service %s/%s: %s %q: %w", ns, name, annotationIPs, v, err)
	}
	return []netip.Addr{a}, nil
}

// waitAllocated waits until a Service has been allocated an address and
// returns it.
func waitAllocated(tb testing.TB, timeout time.Duration, ns, name string) netip.Addr {
	tb.Helper()
	var got []netip.Addr
	waitFor(tb, timeout, fmt.Sprintf("an address for Service %s/%s", ns, name), func() error {
		var err error
		got, err = serviceAddrs(ns, name)
		return err
	})
	return got[0]
}

// inPrefix checks that every VIP is in prefix.
func inPrefix(tb testing.TB, prefix string, vips ...netip.Addr) {
	tb.Helper()
	p := netip.MustParsePrefix(prefix)
	for _, v := range vips {
		if !p.Contains(v) {
			tb.Errorf("%s is not in %s", v, p)
		}
	}
}
