package election

import (
	"context"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/notify"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/tools/cache"
)

// observed is a Lease as this agent last saw it.
type observed struct {
	lease *coordinationv1.Lease
	// seen is the local time at which the holder or renewal last changed;
	// expiry is judged on the local clock from it, so skew between nodes'
	// clocks does not matter.
	seen time.Time
}

// nsFor is the namespace of the Lease with the given name.
func (e *Elector) nsFor(name string) string {
	if ns, ok := e.cfg.LeaseNamespaces[name]; ok {
		return ns
	}
	return e.cfg.Namespace
}

// watch starts the informers: every Lease in the agents' namespace, and
// each Lease kept elsewhere by name. It returns once they have synced, or
// false if ctx ended first.
func (e *Elector) watch(ctx context.Context) (stop func(), synced bool, err error) {
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.observe(obj, false) },
		UpdateFunc: func(_, obj any) { e.observe(obj, false) },
		DeleteFunc: func(obj any) { e.observe(obj, true) },
	}
	var infs []cache.SharedIndexInformer
	var hasSynced []cache.InformerSynced
	add := func(ns string, tweak func(*metav1.ListOptions)) error {
		inf := kube.NewInformer(e.cfg.Client.Leases(ns), &coordinationv1.Lease{}, kube.InformerOptions{
			Tweak: tweak,
			// Nothing here reads managedFields; dropping them keeps a
			// large cache small. Writes without them leave the server's
			// copy as is.
			Transform: kube.StripManagedFields,
		})
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("watching leases in %s: %w", ns, err)
		}
		infs = append(infs, inf)
		hasSynced = append(hasSynced, inf.HasSynced)
		return nil
	}
	if err := add(e.cfg.Namespace, nil); err != nil {
		return nil, false, err
	}
	for name, ns := range e.cfg.LeaseNamespaces {
		if ns == e.cfg.Namespace {
			continue
		}
		// One Lease by name: RBAC can grant exactly that one.
		sel := fields.OneTermEqualSelector("metadata.name", name).String()
		if err := add(ns, func(o *metav1.ListOptions) { o.FieldSelector = sel }); err != nil {
			return nil, false, err
		}
	}
	stop = kube.Start(ctx, infs...)
	// Judge only from what the API holds: an empty cache would make every
	// contest look free.
	return stop, cache.WaitForCacheSync(ctx.Done(), hasSynced...), nil
}

// refresh reads every watched Lease directly and records what it finds.
// After this agent was cut off or the API server was down, its watches may
// take a while to resume; until then it would judge from a stale view.
func (e *Elector) refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RenewDeadline)
	defer cancel()
	list, err := e.cfg.Client.Leases(e.cfg.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing leases in %s: %w", e.cfg.Namespace, err)
	}
	items := list.Items
	for name, ns := range e.cfg.LeaseNamespaces {
		if ns == e.cfg.Namespace {
			continue
		}
		sel := fields.OneTermEqualSelector("metadata.name", name).String()
		l, err := e.cfg.Client.Leases(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return fmt.Errorf("listing lease %s/%s: %w", ns, name, err)
		}
		items = append(items, l.Items...)
	}
	for i := range items {
		l := &items[i]
		l.ManagedFields = nil
		e.record(l)
	}
	return nil
}

func (e *Elector) observe(obj any, deleted bool) {
	l, ok := obj.(*coordinationv1.Lease)
	if !ok {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			l, _ = tomb.Obj.(*coordinationv1.Lease)
		}
	}
	if l == nil || l.Namespace != e.nsFor(l.Name) {
		// A same-named Lease in the wrong namespace is not ours.
		return
	}
	if l.Name == e.node && !deleted {
		e.mu.Lock()
		if e.watched == "" || newer(l.ResourceVersion, e.watched) {
			e.watched = l.ResourceVersion
		}
		e.mu.Unlock()
	}
	if deleted {
		e.mu.Lock()
		if o := e.leases[l.Name]; o != nil && !newer(o.lease.ResourceVersion, l.ResourceVersion) {
			delete(e.leases, l.Name)
			delete(e.nodeLeases, l.Name)
			e.markDirtyLocked(l.Name)
		}
		e.mu.Unlock()
		notify.Signal(e.wake)
		return
	}
	e.record(l)
}

// record adopts a Lease version unless a newer one is known: our own write
// may overtake the watch.
func (e *Elector) record(l *coordinationv1.Lease) {
	e.mu.Lock()
	o := e.leases[l.Name]
	switch {
	case o == nil:
		o = &observed{lease: l, seen: e.now()}
		e.leases[l.Name] = o
	case newer(l.ResourceVersion, o.lease.ResourceVersion):
		if holder(o.lease) != holder(l) || !o.lease.Spec.RenewTime.Equal(l.Spec.RenewTime) {
			o.seen = e.now()
		}
		o.lease = l
	}
	if o.lease.Labels[LabelKind] == KindNode {
		e.nodeLeases[l.Name] = o
	} else {
		delete(e.nodeLeases, l.Name)
	}
	e.markDirtyLocked(l.Name)
	e.mu.Unlock()
	notify.Signal(e.wake)
}

// watchBehindLocked reports whether the watch has not delivered our own
// last renewal a retry period after it was written. After an API outage
// client-go's watches come back only after a backoff of seconds, and a
// watch can stall silently; meanwhile the others' renewals are not seen
// and their Leases would seem to expire. Then every Lease is read directly
// each retry period instead (refreshLoop), until the watch catches up.
func (e *Elector) watchBehindLocked(now time.Time) bool {
	if e.written == nil || now.Sub(e.writtenAt) < e.cfg.RetryPeriod {
		return false
	}
	return e.watched == "" || newer(e.written.ResourceVersion, e.watched)
}

// NodeAnnotation returns, for every other agent that has a node Lease, the
// value it published under key (see Config.NodeAnnotations).
func (e *Elector) NodeAnnotation(key string) map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]string{}
	for name, o := range e.nodeLeases {
		// By name: an agent that stopped has released its Lease, but what
		// it published still describes its node.
		node, ok := strings.CutPrefix(name, NodeLeasePrefix)
		if o.lease.Labels[LabelKind] != KindNode || !ok || node == e.cfg.Identity {
			continue
		}
		if v, ok := o.lease.Annotations[key]; ok {
			out[node] = v
		}
	}
	return out
}

// peerLeasesLocked yields the node Leases of the other agents that hold
// them (not released), with each agent's name.
func (e *Elector) peerLeasesLocked() iter.Seq2[string, *observed] {
	return func(yield func(string, *observed) bool) {
		for _, o := range e.nodeLeases {
			h := holder(o.lease)
			if o.lease.Labels[LabelKind] != KindNode || h == "" || h == e.cfg.Identity {
				continue
			}
			if !yield(h, o) {
				return
			}
		}
	}
}

// expiry is when o's Lease runs out for this agent, on its own clock.
func (e *Elector) expiry(o *observed) time.Time {
	return o.seen.Add(leaseDuration(o.lease, e.cfg.LeaseDuration))
}

func leaseDuration(l *coordinationv1.Lease, def time.Duration) time.Duration {
	if l != nil && l.Spec.LeaseDurationSeconds != nil {
		return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return def
}
