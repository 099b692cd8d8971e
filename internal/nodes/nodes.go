// Package nodes keeps the labels of the cluster's Nodes, which decide where
// a VIP may live: a node selector names the nodes that may hold a VIP, and
// every agent must compute the same set from the same Nodes.
package nodes

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/vipd/vipd/internal/kube"
)

// LabelControlPlane marks the nodes of the control plane (kubeadm sets it,
// with an empty value).
const LabelControlPlane = "node-role.kubernetes.io/control-plane"

// Watcher holds the labels of every Node, from a watch.
type Watcher struct {
	client  kube.Interface
	log     *slog.Logger
	changes chan struct{}
	synced  atomic.Bool
	running atomic.Bool

	mu     sync.Mutex
	labels map[string]labels.Set
}

// New returns a Watcher; Run starts it. log may be nil.
func New(client kube.Interface, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{client: client, log: log, changes: make(chan struct{}, 1), labels: map[string]labels.Set{}}
}

// Run watches Nodes until ctx ends. Matching answers only once the first
// list is in (Synced). Run may be called once.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("nodes: Run called twice")
	}
	inf := kube.NewInformer(w.client.Nodes(), &corev1.Node{}, kube.InformerOptions{
		// Only names and labels matter; a Node's status (images, conditions)
		// is most of its size and changes all the time.
		Transform: func(obj any) (any, error) {
			if n, ok := obj.(*corev1.Node); ok {
				return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: n.Labels, ResourceVersion: n.ResourceVersion}}, nil
			}
			return obj, nil
		}})
	var forbidden atomic.Bool
	if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		// Said once while it lasts: without Nodes no node selector can be
		// applied, so the VIPs that need one are held by no node.
		if apierrors.IsForbidden(err) {
			if forbidden.CompareAndSwap(false, true) {
				w.log.Error("cannot read Nodes, so no node selector can be applied and the VIPs that need one are not placed; grant get, list and watch on nodes", "err", err)
			}
			return
		}
		forbidden.Store(false)
		w.log.Warn("watching Nodes", "err", err)
	}); err != nil {
		return err
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.set(obj, false) },
		UpdateFunc: func(_, obj any) { w.set(obj, false) },
		DeleteFunc: func(obj any) { w.set(obj, true) },
	}
	if _, err := inf.AddEventHandler(handler); err != nil {
		return err
	}
	defer kube.Start(ctx, inf)()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	w.synced.Store(true)
	w.signal()
	<-ctx.Done()
	return nil
}

func (w *Watcher) set(obj any, deleted bool) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, deleted = tomb.Obj, true
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	w.mu.Lock()
	old, had := w.labels[n.Name]
	changed := false
	switch {
	case deleted:
		delete(w.labels, n.Name)
		changed = had
	case !had || !maps.Equal(old, labels.Set(n.Labels)):
		w.labels[n.Name] = maps.Clone(labels.Set(n.Labels))
		changed = true
	}
	w.mu.Unlock()
	if changed && w.synced.Load() {
		w.signal()
	}
}

func (w *Watcher) signal() {
	select {
	case w.changes <- struct{}{}:
	default:
	}
}

// Synced reports whether the first list of Nodes is in.
func (w *Watcher) Synced() bool { return w.synced.Load() }

// Changes receives a value (coalesced) when the watcher has synced and
// whenever a Node is added or deleted or its labels change.
func (w *Watcher) Changes() <-chan struct{} { return w.changes }

// Matching returns the names of the Nodes whose labels sel matches, sorted.
func (w *Watcher) Matching(sel labels.Selector) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := []string{}
	for name, l := range w.labels {
		if sel.Matches(l) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Labels returns a Node's labels, and whether the Node exists.
func (w *Watcher) Labels(node string) (labels.Set, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	l, ok := w.labels[node]
	return maps.Clone(l), ok
}
