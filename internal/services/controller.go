// Package services is the Kubernetes side of LoadBalancer Services: it
// works out which service addresses exist (from annotations,
// spec.loadBalancerIP and the address pool ConfigMap), which Services share
// each, and which nodes may hold it; and it reports the holder back in the
// Services' status, annotations and Events. Electing holders and putting
// addresses on interfaces is the agent's job.
package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vipd/vipd/internal/backoff"
	"github.com/vipd/vipd/internal/kube"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// Config describes the Services one agent serves.
type Config struct {
	Client kube.Interface
	// Namespace restricts the Services served (svc_namespace); "" means all.
	Namespace string
	// Class is vipd's loadBalancerClass.
	Class string
	// OnlyOwnClass serves only Services with spec.loadBalancerClass ==
	// Class; otherwise Services without a class are served too.
	OnlyOwnClass bool
	// PoolNamespace and PoolConfigMap name the address pool ConfigMap;
	// an empty PoolConfigMap means no pool.
	PoolNamespace, PoolConfigMap string
	// NodeName is this agent's node, named in status annotations and Events.
	NodeName string
	// Log receives the controller's logs; nil discards them. It is the
	// agent's logger, which names the node already.
	Log *slog.Logger
	// Reporter names the node that records Warning Events about a Service
	// with the given addresses, "" while unknown (see FlushEvents). Nil:
	// this node records them all.
	Reporter func(addrs []netip.Addr) string
	// ReporterGrace is how long a Warning that another node is to record
	// is kept, in case this node becomes the reporter meanwhile (the other
	// turned out to be gone): about a Lease duration.
	ReporterGrace time.Duration
	// Claiming, if set, returns a channel closed once none of this node's
	// claim writes is pending (election.Elector.Claiming): status writes
	// wait for it, at most statusHold.
	Claiming func() <-chan struct{}
}

// Address is one service VIP and everything that shares it.
type Address struct {
	IP netip.Addr
	// Services sharing this address (possibly across namespaces), sorted.
	Services []types.NamespacedName
	// Candidates restricts which nodes may hold the address: nil means any
	// node; non-nil (possibly empty) means only these (externalTrafficPolicy:
	// Local — the nodes with a ready endpoint, from EndpointSlices; if
	// several sharers are Local, the intersection). Sorted.
	Candidates []string
	// Interface is the interface the address goes on: a Service's
	// kube-vip.io/serviceInterface or its pool's; "" for the agent's
	// default for Services.
	Interface string
	// Pool is the named pool the address belongs to ("" none), and
	// NodeSelector that pool's node selector (canonical; "" any node).
	Pool, NodeSelector string
}

// retryPolicy spaces out the retries of a write that failed (a status
// update refused by RBAC or a webhook, an API server that is down): each
// Service's retries back off with jitter to at most 30 s, so a refusal
// that persists costs two requests a minute, and a Service whose write
// fails does not hold up the others. Failed writes never touch the VIPs:
// the agent holds and answers for them whatever the status says.
func retryPolicy() backoff.Policy {
	return backoff.Policy{Base: 250 * time.Millisecond, Max: 30 * time.Second}
}

// workers is how many items are processed at once: status writes for
// different Services may proceed in parallel, and a slow write must not
// hold up recomputing the addresses.
const workers = 4

type itemKind int

const (
	kindPlan     itemKind = iota // recompute Addresses
	kindAllocate                 // write a pool allocation to a Service
	kindStatus                   // make a Service's status match what this node holds
)

type item struct {
	kind itemKind
	svc  types.NamespacedName
}

// rejection is the last reason the agent rejected an address for, and the
// Services already told.
type rejection struct {
	reason string
	told   map[types.NamespacedName]bool
}

// Controller watches Services, their EndpointSlices and the pool ConfigMap.
type Controller struct {
	cfg     Config
	log     *slog.Logger
	filter  filter
	queue   workqueue.TypedRateLimitingInterface[item]
	changes chan struct{}
	running atomic.Bool

	// Set by Run before any worker starts.
	access access
	// hostByStatus: vipHost is written with the status, in one request
	// (status.go); cleared if the API server turns out to drop it.
	hostByStatus atomic.Bool
	services     corelisters.ServiceLister
	configMaps   corelisters.ConfigMapLister // nil without a pool
	slices       discoverylisters.EndpointSliceLister
	sliceIndex   cache.Indexer // by Service (sliceServiceIndex); nil without access

	// dirty is what changed since the last replan (replan.go).
	dirtyMu sync.Mutex
	dirty   dirtyState

	mu       sync.Mutex
	recorder record.EventRecorder // nil until the caches have synced
	plan     plan
	planned  bool
	index    planIndex
	held     map[netip.Addr]bool
	heldInfo []Held
	warned   map[types.UID]map[warning]bool
	pending  []pendingEvent
	assigned map[types.NamespacedName]map[netip.Addr]bool // takeovers already reported
	rejected map[netip.Addr]*rejection

	hold statusHolder
}

// New checks cfg and returns a Controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil {
		return nil, errors.New("services: no Kubernetes client")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("services: no node name")
	}
	if cfg.PoolConfigMap != "" && cfg.PoolNamespace == "" {
		return nil, fmt.Errorf("services: pool ConfigMap %s has no namespace", cfg.PoolConfigMap)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Controller{
		cfg:    cfg,
		log:    log, // the agent's: it names the node already
		filter: filter{namespace: cfg.Namespace, class: cfg.Class, onlyOwnClass: cfg.OnlyOwnClass},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig[item](backoff.NewRateLimiter[item](retryPolicy()),
			workqueue.TypedRateLimitingQueueConfig[item]{Name: "services"}),
		changes:  make(chan struct{}, 1),
		held:     map[netip.Addr]bool{},
		warned:   map[types.UID]map[warning]bool{},
		assigned: map[types.NamespacedName]map[netip.Addr]bool{},
		rejected: map[netip.Addr]*rejection{},
		index:    newPlanIndex(),
	}, nil
}

// Run watches the API until ctx is done. Addresses stays empty until the
// caches have synced, so an agent never acts on a half-read cluster. Run
// may be called once.
func (c *Controller) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("services: Run called twice")
	}
	defer c.queue.ShutDown()

	acc, err := c.waitAccess(ctx)
	if errors.Is(err, errNoServices) {
		return c.serveNothing(ctx, err)
	}
	if err != nil {
		return nil // ctx ended
	}
	c.access = acc
	c.hostByStatus.Store(acc.status)

	var recorder record.EventRecorder = &record.FakeRecorder{} // drops Events
	if acc.events {
		broadcaster := record.NewBroadcaster(record.WithContext(ctx))
		defer broadcaster.Shutdown()
		broadcaster.StartRecordingToSink(kube.EventSink{Client: c.cfg.Client})
		sch, err := kube.NewScheme()
		if err != nil {
			return fmt.Errorf("recording Events: %w", err)
		}
		recorder = broadcaster.NewRecorder(sch, corev1.EventSource{Component: reportingController, Host: c.cfg.NodeName})
	}

	// Nothing here reads managedFields; dropping them keeps the cache of
	// every Service small. Updates without them leave the server's copy
	// as is. EndpointSlices, never written, keep only what the plan reads
	// (trimSlice).
	byNamespace := cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}
	svcInf := kube.NewInformer(c.cfg.Client.Services(c.cfg.Namespace), &corev1.Service{}, kube.InformerOptions{
		Indexers: byNamespace, Transform: kube.StripManagedFields})
	infs := []cache.SharedIndexInformer{svcInf}
	c.services = corelisters.NewServiceLister(svcInf.GetIndexer())
	synced := []cache.InformerSynced{svcInf.HasSynced}

	replanAll := func(any) { c.markDirty(types.NamespacedName{}, true) }
	onService := func(old, obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			return
		}
		ns, name, err := cache.SplitMetaNamespaceKey(key)
		if err != nil {
			return
		}
		nn := types.NamespacedName{Namespace: ns, Name: name}
		// vipd's own status and vipHost writes change nothing the plan
		// reads: only the Service's status needs a look.
		o, okOld := old.(*corev1.Service)
		n, okNew := obj.(*corev1.Service)
		if !okOld || !okNew || !planInputsEqual(o, n) || c.pendingWrite(nn) {
			c.markDirty(nn, false)
		}
		c.queue.Add(item{kind: kindStatus, svc: nn})
	}
	if _, err := svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { onService(nil, obj) }, UpdateFunc: onService, DeleteFunc: func(obj any) { onService(nil, obj) },
	}); err != nil {
		return fmt.Errorf("watching Services: %w", err)
	}
	// EndpointSlices change all the time and matter only for Services with
	// externalTrafficPolicy Local; a Service that becomes Local is
	// replanned with its slices.
	onSlice := func(obj any) {
		if nn, ok := sliceOwner(obj); ok && c.sliceMatters(obj) {
			c.markDirty(nn, false)
		}
	}
	if acc.slices {
		epInf := kube.NewInformer(c.cfg.Client.EndpointSlices(c.cfg.Namespace), &discoveryv1.EndpointSlice{}, kube.InformerOptions{
			Indexers: cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, sliceServiceIndex: sliceService},
			Transform: func(obj any) (any, error) {
				if es, ok := obj.(*discoveryv1.EndpointSlice); ok {
					return trimSlice(es), nil
				}
				return obj, nil
			}})
		infs = append(infs, epInf)
		c.slices = discoverylisters.NewEndpointSliceLister(epInf.GetIndexer())
		c.sliceIndex = epInf.GetIndexer()
		synced = append(synced, epInf.HasSynced)
		if _, err := epInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: onSlice, UpdateFunc: func(_, obj any) { onSlice(obj) }, DeleteFunc: onSlice,
		}); err != nil {
			return fmt.Errorf("watching EndpointSlices: %w", err)
		}
	} else {
		// Never filled: Local Services see no ready endpoint anywhere.
		c.slices = discoverylisters.NewEndpointSliceLister(cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}))
	}
	other := cache.ResourceEventHandlerFuncs{AddFunc: replanAll, UpdateFunc: func(_, obj any) { replanAll(obj) }, DeleteFunc: replanAll}
	if acc.pool {
		// The pool lives in its own namespace and is one object, watched by
		// name.
		cmInf := kube.NewInformer(c.cfg.Client.ConfigMaps(c.cfg.PoolNamespace), &corev1.ConfigMap{}, kube.InformerOptions{
			Indexers: byNamespace, Transform: kube.StripManagedFields,
			Tweak: func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", c.cfg.PoolConfigMap).String()
			}})
		infs = append(infs, cmInf)
		c.configMaps = corelisters.NewConfigMapLister(cmInf.GetIndexer())
		synced = append(synced, cmInf.HasSynced)
		if _, err := cmInf.AddEventHandler(other); err != nil {
			return fmt.Errorf("watching ConfigMap %s/%s: %w", c.cfg.PoolNamespace, c.cfg.PoolConfigMap, err)
		}
	}

	defer kube.Start(ctx, infs...)()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	c.mu.Lock()
	c.recorder = recorder
	c.mu.Unlock()
	c.takeDirty() // the first plan reads everything
	c.queue.Add(item{kind: kindPlan})

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

func (c *Controller) processNext(ctx context.Context) bool {
	it, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(it)
	var err error
	switch it.kind {
	case kindPlan:
		c.replan()
	case kindAllocate:
		err = c.allocate(ctx, it.svc)
	case kindStatus:
		if c.holdStatus(ctx, it.svc) {
			break
		}
		err = c.syncStatus(ctx, it.svc)
	}
	if err != nil && ctx.Err() == nil {
		c.queue.AddRateLimited(it)
		c.log.Warn("will retry", "service", it.svc.String(), "err", err, "failures", c.queue.NumRequeues(it))
		return true
	}
	c.queue.Forget(it)
	return true
}

// sliceMatters reports whether an EndpointSlice belongs to a served Service
// with externalTrafficPolicy Local.
func (c *Controller) sliceMatters(obj any) bool {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return true
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return false
	}
	svc, err := c.services.Services(es.Namespace).Get(name)
	if err != nil {
		return false
	}
	return c.filter.serves(svc) && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
}

// Addresses returns a copy of the current desired addresses, sorted by IP.
func (c *Controller) Addresses() []Address {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.plan.addresses)
}

// ReadAddresses calls f with the current desired addresses, sorted by IP,
// without copying them: f must neither keep nor change the slice (the
// Address values in it are its own to keep), and must not call back into
// the controller, which is locked meanwhile. A replan changes the list in
// place, so that a change of one address does not cost a copy of all.
func (c *Controller) ReadAddresses(f func([]Address)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c.plan.addresses)
}

// Changes delivers a value (coalesced) whenever Addresses may have changed,
// and once when the first Addresses are known.
func (c *Controller) Changes() <-chan struct{} {
	return c.changes
}

// SetHeld tells the controller which service addresses this node holds now.
// The Services of addresses that changed hands get their status brought up
// to date in the background.
func (c *Controller) SetHeld(held []Held) {
	next := make(map[netip.Addr]bool, len(held))
	for _, h := range held {
		next[h.IP] = true
	}
	c.mu.Lock()
	c.heldInfo = held
	var todo []types.NamespacedName
	for a := range next {
		if !c.held[a] {
			todo = append(todo, c.plan.servicesAt(a)...)
		}
	}
	for a := range c.held {
		if !next[a] {
			todo = append(todo, c.plan.servicesAt(a)...)
		}
	}
	c.held = next
	c.mu.Unlock()
	for _, nn := range todo {
		c.queue.Add(item{kind: kindStatus, svc: nn})
	}
}

// Reject records a Warning Event on every Service of ip saying why this
// node will not hold it. The same reason for the same address is reported
// once per Service, by the reporter only.
func (c *Controller) Reject(ip netip.Addr, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.rejected[ip]
	if r == nil || r.reason != reason {
		r = &rejection{reason: reason, told: map[types.NamespacedName]bool{}}
		c.rejected[ip] = r
	}
	if c.recorder == nil {
		return
	}
	for _, nn := range c.plan.servicesAt(ip) {
		if r.told[nn] {
			continue
		}
		svc, err := c.services.Services(nn.Namespace).Get(nn.Name)
		if err != nil {
			continue
		}
		c.pending = append(c.pending, pendingEvent{svc: nn, uid: svc.UID, addrs: []netip.Addr{ip}, rejected: true,
			warning: warning{reason: reasonRejected, message: reasonRejectedMessage(ip, reason)}})
		r.told[nn] = true
	}
	c.flushLocked()
}

// RefusedHere records a Warning Event on every Service of ip saying that
// this node cannot hold it, and why (its interface refused the address).
// Unlike Reject, only this node sees the problem, so it records the Event
// itself, once per Service and reason.
func (c *Controller) RefusedHere(ip netip.Addr, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recorder == nil {
		return
	}
	msg := fmt.Sprintf("%s cannot be held by node %s: %s", ip, c.cfg.NodeName, reason)
	for _, nn := range c.plan.servicesAt(ip) {
		svc, err := c.services.Services(nn.Namespace).Get(nn.Name)
		if err != nil {
			continue
		}
		c.pending = append(c.pending, pendingEvent{svc: nn, uid: svc.UID, addrs: []netip.Addr{ip}, here: true,
			warning: warning{reason: reasonRefusedHere, message: msg}})
	}
	c.flushLocked()
}

// currentPool reads the pool ConfigMap from the cache.
func (c *Controller) currentPool() pool {
	p := pool{}
	if c.configMaps != nil {
		p.name = c.cfg.PoolNamespace + "/" + c.cfg.PoolConfigMap
		if cm, err := c.configMaps.ConfigMaps(c.cfg.PoolNamespace).Get(c.cfg.PoolConfigMap); err == nil {
			p.data = cm.Data
			if p.data == nil {
				p.data = map[string]string{}
			}
		}
	}
	return p
}

func equalAddresses(a, b []Address) bool {
	return slices.EqualFunc(a, b, func(x, y Address) bool {
		return x.IP == y.IP && slices.Equal(x.Services, y.Services) &&
			x.Interface == y.Interface && x.Pool == y.Pool && x.NodeSelector == y.NodeSelector &&
			(x.Candidates == nil) == (y.Candidates == nil) && slices.Equal(x.Candidates, y.Candidates)
	})
}

// allocate writes the pool allocation the plan made for a Service. The
// write is conditional on the resourceVersion the plan was computed from,
// so when agents race only one write lands; the others see a conflict and
// recompute from what it wrote.
func (c *Controller) allocate(ctx context.Context, nn types.NamespacedName) error {
	c.mu.Lock()
	sp := c.plan.services[nn]
	c.mu.Unlock()
	if sp == nil || !sp.write || !c.access.annotate() {
		return nil
	}
	svc, err := c.services.Services(nn.Namespace).Get(nn.Name)
	if err != nil || svc.ResourceVersion != sp.writeRV {
		return nil // gone or changed: a newer plan is on its way
	}
	value := joinAddrs(sp.alloc)
	set := map[string]*string{AnnotationLoadBalancerIPs: nil, AnnotationPoolAllocated: nil}
	if value != "" {
		set = map[string]*string{AnnotationLoadBalancerIPs: &value, AnnotationPoolAllocated: &value}
	}
	_, err = c.setAnnotations(ctx, svc, set, sp.writeRV)
	switch {
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
		c.log.Debug("pool allocation lost a race", "service", nn.String(), "vip", value)
		return nil
	case err != nil:
		return fmt.Errorf("writing pool allocation %q to Service %s: %w", value, nn, err)
	}
	if value == "" {
		c.log.Info("removed an allocation that lost a race; no other address is free", "service", nn.String(), "vip", svc.Annotations[AnnotationLoadBalancerIPs])
		return nil
	}
	c.log.Info("allocated service address from the pool", "service", nn.String(), "vip", value)
	c.mu.Lock()
	c.recorder.Eventf(svc, corev1.EventTypeNormal, reasonAllocated, "%s allocated from the address pool (ConfigMap %s/%s, %s) by node %s",
		value, c.cfg.PoolNamespace, c.cfg.PoolConfigMap, sp.allocFrom, c.cfg.NodeName)
	c.mu.Unlock()
	return nil
}

func joinAddrs(ips []netip.Addr) string {
	s := ""
	for i, a := range ips {
		if i > 0 {
			s += ","
		}
		s += a.String()
	}
	return s
}
