package status

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/kube"
)

// source reads the objects a Snapshot holds. A missing ConfigMap is nil
// without error.
type source interface {
	leases(ctx context.Context, ns string) ([]coordinationv1.Lease, error)
	services(ctx context.Context, ns string) ([]*corev1.Service, error)
	endpointSlices(ctx context.Context, ns string) ([]*discoveryv1.EndpointSlice, error)
	configMap(ctx context.Context, ns, name string) (*corev1.ConfigMap, error)
}

// gather reads a Snapshot: the node Leases in ns first, then what the
// agents' published configurations point at.
func gather(ctx context.Context, src source, ns string) (Snapshot, []string, error) {
	s := Snapshot{Namespace: ns, Leases: map[string][]coordinationv1.Lease{}, Pools: map[string]map[string]string{}}
	var notes []string
	ls, err := src.leases(ctx, ns)
	if err != nil {
		return s, nil, fmt.Errorf("reading Leases in %s: %w", ns, hint(err))
	}
	s.Leases[ns] = ls
	claimNS := map[string]bool{}
	svcNS := map[string]bool{}
	pools := map[[2]string]bool{}
	for _, a := range readAgents(ls, time.Now()) {
		if cp := a.info.ControlPlane; cp != nil {
			claimNS[cp.Namespace] = true
		}
		if si := a.info.Services; si != nil {
			claimNS[si.Namespace] = true
			svcNS[si.ServiceNamespace] = true
			if si.PoolConfigMap != "" {
				pools[[2]string{si.PoolNamespace, si.PoolConfigMap}] = true
			}
		}
	}
	for other := range claimNS {
		if other == ns {
			continue
		}
		if s.Leases[other], err = src.leases(ctx, other); err != nil {
			return s, nil, fmt.Errorf("reading Leases in %s (where the agents' claims are): %w", other, hint(err))
		}
	}
	if len(svcNS) > 0 {
		// One namespace if every agent is restricted to the same one.
		scope := ""
		if len(svcNS) == 1 {
			for n := range svcNS {
				scope = n
			}
		}
		if s.Services, err = src.services(ctx, scope); err != nil {
			return s, nil, fmt.Errorf("reading Services: %w", hint(err))
		}
		if s.Slices, err = src.endpointSlices(ctx, scope); err != nil {
			return s, nil, fmt.Errorf("reading EndpointSlices: %w", hint(err))
		}
	}
	for p := range pools {
		cm, err := src.configMap(ctx, p[0], p[1])
		switch {
		case apierrors.IsForbidden(err):
			notes = append(notes, fmt.Sprintf("cannot read the address pool ConfigMap %s/%s (forbidden): addresses still to be allocated from it are not shown", p[0], p[1]))
		case err != nil:
			return s, nil, fmt.Errorf("reading ConfigMap %s/%s: %w", p[0], p[1], err)
		case cm != nil:
			data := cm.Data
			if data == nil {
				data = map[string]string{}
			}
			s.Pools[p[0]+"/"+p[1]] = data
		}
	}
	return s, notes, nil
}

// hint adds what to do to a permission error.
func hint(err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%w (vipd status needs get, list and watch on Leases, Services, EndpointSlices and the pool ConfigMap; see docs/status.md)", err)
	}
	return err
}

// apiSource reads straight from the API server: for one report.
type apiSource struct{ client kube.Interface }

func (a apiSource) leases(ctx context.Context, ns string) ([]coordinationv1.Lease, error) {
	l, err := a.client.Leases(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

func (a apiSource) services(ctx context.Context, ns string) ([]*corev1.Service, error) {
	l, err := a.client.Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make([]*corev1.Service, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	return out, nil
}

func (a apiSource) endpointSlices(ctx context.Context, ns string) ([]*discoveryv1.EndpointSlice, error) {
	l, err := a.client.EndpointSlices(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := make([]*discoveryv1.EndpointSlice, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	return out, nil
}

func (a apiSource) configMap(ctx context.Context, ns, name string) (*corev1.ConfigMap, error) {
	cm, err := a.client.ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return cm, err
}

// syncTimeout bounds the wait for a new watch's first list.
const syncTimeout = 30 * time.Second

// watchSource reads from informers it starts on first use, for --watch;
// changed receives a value (coalesced) on every change.
type watchSource struct {
	client  kube.Interface
	ctx     context.Context
	changed chan struct{}

	mu        sync.Mutex
	informers map[string]cache.SharedIndexInformer
}

func newWatchSource(ctx context.Context, client kube.Interface) *watchSource {
	return &watchSource{client: client, ctx: ctx, changed: make(chan struct{}, 1), informers: map[string]cache.SharedIndexInformer{}}
}

// informer returns the informer under key, starting it with newInf and
// waiting for its first list if it is new.
func (w *watchSource) informer(key string, newInf func() cache.SharedIndexInformer) (cache.SharedIndexInformer, error) {
	w.mu.Lock()
	inf, ok := w.informers[key]
	w.mu.Unlock()
	if ok {
		return inf, nil
	}
	inf = newInf()
	_ = inf.SetTransform(kube.StripManagedFields)
	notify := func(any) {
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: notify, UpdateFunc: func(_, o any) { notify(o) }, DeleteFunc: notify,
	}); err != nil {
		return nil, fmt.Errorf("watching %s: %w", key, err)
	}
	go inf.RunWithContext(w.ctx)
	ctx, cancel := context.WithTimeout(w.ctx, syncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		if w.ctx.Err() != nil {
			return nil, w.ctx.Err()
		}
		return nil, fmt.Errorf("watching %s: no complete list within %s (is watch allowed?)", key, syncTimeout)
	}
	w.mu.Lock()
	w.informers[key] = inf
	w.mu.Unlock()
	return inf, nil
}

func (w *watchSource) leases(_ context.Context, ns string) ([]coordinationv1.Lease, error) {
	inf, err := w.informer("leases/"+ns, func() cache.SharedIndexInformer {
		return kube.NewInformer(w.client.Leases(ns), &coordinationv1.Lease{}, kube.InformerOptions{})
	})
	if err != nil {
		return nil, err
	}
	var out []coordinationv1.Lease
	for _, o := range inf.GetStore().List() {
		out = append(out, *o.(*coordinationv1.Lease))
	}
	return out, nil
}

func (w *watchSource) services(_ context.Context, ns string) ([]*corev1.Service, error) {
	inf, err := w.informer("services/"+ns, func() cache.SharedIndexInformer {
		return kube.NewInformer(w.client.Services(ns), &corev1.Service{}, kube.InformerOptions{})
	})
	if err != nil {
		return nil, err
	}
	return listOf[*corev1.Service](inf), nil
}

func (w *watchSource) endpointSlices(_ context.Context, ns string) ([]*discoveryv1.EndpointSlice, error) {
	inf, err := w.informer("endpointslices/"+ns, func() cache.SharedIndexInformer {
		return kube.NewInformer(w.client.EndpointSlices(ns), &discoveryv1.EndpointSlice{}, kube.InformerOptions{})
	})
	if err != nil {
		return nil, err
	}
	return listOf[*discoveryv1.EndpointSlice](inf), nil
}

func (w *watchSource) configMap(_ context.Context, ns, name string) (*corev1.ConfigMap, error) {
	inf, err := w.informer("configmaps/"+ns+"/"+name, func() cache.SharedIndexInformer {
		return kube.NewInformer(w.client.ConfigMaps(ns), &corev1.ConfigMap{}, kube.InformerOptions{Tweak: func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}})
	})
	if err != nil {
		return nil, err
	}
	cms := listOf[*corev1.ConfigMap](inf)
	if len(cms) == 0 {
		return nil, nil
	}
	return cms[0], nil
}

func listOf[T any](inf cache.SharedIndexInformer) []T {
	var out []T
	for _, o := range inf.GetStore().List() {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// errManyNamespaces is returned by findNamespace when agents are in more
// than one namespace.
var errManyNamespaces = errors.New("vipd agents in several namespaces")

// findNamespace looks for the namespace of the agents' node Leases across
// the cluster; def when listing across namespaces is forbidden.
func findNamespace(ctx context.Context, client kube.Interface, def string) (string, error) {
	sel := labels.SelectorFromSet(labels.Set{election.LabelKind: election.KindNode}).String()
	l, err := client.Leases("").List(ctx, metav1.ListOptions{LabelSelector: sel})
	if apierrors.IsForbidden(err) {
		return def, nil
	}
	if err != nil {
		return "", fmt.Errorf("looking for vipd's node Leases: %w", err)
	}
	var found []string
	for _, lease := range l.Items {
		if !slices.Contains(found, lease.Namespace) {
			found = append(found, lease.Namespace)
		}
	}
	switch len(found) {
	case 0:
		return def, nil
	case 1:
		return found[0], nil
	}
	slices.Sort(found)
	return "", fmt.Errorf("%w: %v; choose one with -n", errManyNamespaces, found)
}
