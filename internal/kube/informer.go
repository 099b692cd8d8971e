package kube

import (
	"context"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Lister is the part of a Resource an informer needs.
type Lister[L runtime.Object] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// InformerOptions shape an informer: tweak narrows its list and watch (a
// field or label selector), transform trims what its cache keeps.
type InformerOptions struct {
	Tweak     func(*metav1.ListOptions)
	Transform cache.TransformFunc
	Indexers  cache.Indexers
}

// NewInformer makes an informer of example's kind from r, without resync.
func NewInformer[L runtime.Object](r Lister[L], example runtime.Object, o InformerOptions) cache.SharedIndexInformer {
	tweak := func(opts *metav1.ListOptions) {
		if o.Tweak != nil {
			o.Tweak(opts)
		}
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			tweak(&opts)
			return r.List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			tweak(&opts)
			return r.Watch(ctx, opts)
		},
	}
	idx := o.Indexers
	if idx == nil {
		idx = cache.Indexers{}
	}
	inf := cache.NewSharedIndexInformer(lw, example, 0, idx)
	if o.Transform != nil {
		// Set before the informer runs, so it cannot fail.
		_ = inf.SetTransform(o.Transform)
	}
	return inf
}

// StripManagedFields is a transform that drops an object's managedFields:
// nothing in vipd reads them, they are much of a small object's size, and
// a write without them leaves the server's copy as is.
func StripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Start runs infs until ctx ends or stop is called; stop waits until they
// have stopped.
func Start(ctx context.Context, infs ...cache.SharedIndexInformer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, inf := range infs {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}
