package election

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Labels on the Leases vipd writes. A claim is told from a node Lease by
// its kind, so that a claim whose contest is gone can be deleted and a
// node Lease never is.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelKind      = "vipd.io/kind"
	KindNode       = "node"
	KindClaim      = "claim"
	managedBy      = "vipd"
	// NodeLeasePrefix starts the name of each agent's own liveness Lease.
	NodeLeasePrefix = "vipd-node-"
)

// writeWorkers bounds the claim writes in flight at once: enough to place
// hundreds of VIPs in well under a second, few enough not to flood the API
// server when a node with many VIPs is lost.
const writeWorkers = 8

// Contest is one thing to elect a holder for: a VIP, or a group of VIPs
// that must move together. Its name is the name of its claim Lease.
type Contest struct {
	Name string
	// Candidates are the nodes allowed to hold the contest; nil means every
	// live agent.
	Candidates []string
}

// Config describes an agent's elector.
type Config struct {
	Client    kubernetes.Interface
	Namespace string
	// Identity is this agent's node name.
	Identity string
	// LeaseDuration is how long others consider an agent live after they
	// last saw it renew its node Lease.
	LeaseDuration time.Duration
	// RenewDeadline is how long an agent considers itself live after its
	// last successful renewal; shorter than LeaseDuration, so that an agent
	// that cannot renew has let go before anyone takes over.
	RenewDeadline time.Duration
	// RetryPeriod paces retries and the fallback of less preferred
	// candidates when the preferred one does not act.
	RetryPeriod time.Duration
	Log         *slog.Logger

	// Peers, if set, is a fast failure detector: heartbeats between the
	// agents. It lets a dead holder be replaced long before its node Lease
	// expires, and lets a holder keep its VIPs through an API outage that
	// every agent shares. Nil: Leases alone decide.
	Peers Peers
	// PeerAddr is where this agent's detector listens; it is published on
	// the node Lease so that the others know where to send.
	PeerAddr string
	// NodeAnnotations are published on the node Lease for the other agents
	// to read (NodeAnnotation).
	NodeAnnotations map[string]string
	// OrphanPrefix names the claims whose contests come and go (one per
	// Service address). Such a claim whose contest is gone and whose holder
	// is gone too is deleted by one live agent. Other claims are only ever
	// deleted by their holder. Empty: none.
	OrphanPrefix string
}

// Peers is what a failure detector knows of the other agents.
type Peers interface {
	// Peer reports on one agent, by node name.
	Peer(node string) PeerReport
	// Changes receives a value whenever a report may have changed.
	Changes() <-chan struct{}
	// SetPeers tells the detector where the agents listen.
	SetPeers(addrs map[string]string)
	// SetSelf tells the detector what to say about this agent.
	SetSelf(self PeerReport)
}

// PeerReport is one agent's state as a failure detector sees it.
type PeerReport struct {
	// Heard: the agent's heartbeats arrive. Ever: they ever did.
	Heard, Ever bool
	// APIOK: the agent renews its node Lease. Live: it considers itself
	// live, so it may hold VIPs.
	APIOK, Live bool
}

// AnnotationPeerAddr on a node Lease holds where its agent's failure
// detector listens.
const AnnotationPeerAddr = "vipd.io/heartbeat"

func (c Config) validate() error {
	switch {
	case c.Client == nil:
		return errors.New("no Kubernetes client")
	case c.Namespace == "":
		return errors.New("namespace must be set")
	case c.Identity == "":
		return errors.New("identity must be set")
	case c.RetryPeriod <= 0 || c.RenewDeadline <= c.RetryPeriod || c.LeaseDuration <= c.RenewDeadline:
		return fmt.Errorf("need 0 < retry period (%s) < renew deadline (%s) < lease duration (%s)",
			c.RetryPeriod, c.RenewDeadline, c.LeaseDuration)
	}
	return nil
}

// Elector elects holders for many contests at an API cost that does not
// depend on how many there are.
//
// Liveness is separate from ownership. Each agent renews one node Lease of
// its own (vipd-node-<name>); a contest's claim Lease names its holder and
// is written only when ownership changes. A claim is valid while its
// holder is live: for others, while they keep seeing its node Lease renewed
// within LeaseDuration; for the holder itself, while its own renewals
// succeed within RenewDeadline. A free contest (no claim, a released one,
// or a holder that is no longer live) is taken by the candidate that the
// deterministic placement prefers, through a compare-and-swap on the claim,
// so two agents can never both take it; others follow only if the
// preferred one has not acted after a delay that grows with their rank.
type Elector struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	node string // name of our node Lease

	changes chan struct{}
	wake    chan struct{}
	probe   chan struct{} // asks renewLoop to check the API server now
	jobs    chan job
	done    chan result

	mu        sync.Mutex
	contests  map[string]Contest // nil until the first SetContests
	leases    map[string]*observed
	status    map[string]Status
	members   []string  // live agents as last evaluated
	lastRenew time.Time // start of our last successful node Lease write
	released  bool
	// wasLive is whether we were live at the last evaluation: an outage
	// hold only continues holding, it never starts it.
	wasLive        bool
	holdingThrough bool // live through an outage hold
	lastSelf       PeerReport
	apiOK          bool // the last renewal succeeded, and none is hanging
	// apiBackAt is when, during an outage hold, a peer first said it
	// reaches the API server again.
	apiBackAt time.Time
	peerAddr  map[string]string

	// Observability (report.go).
	reports          map[string]Report
	extraAnnotations map[string]string
	synced           atomic.Bool
}

// observed is a Lease as this agent last saw it.
type observed struct {
	lease *coordinationv1.Lease
	// seen is the local time at which the holder or renewal last changed;
	// expiry is judged on the local clock from it, so skew between nodes'
	// clocks does not matter.
	seen time.Time
}

type job struct {
	name string
	base *coordinationv1.Lease // version the write is conditional on; nil to create
	op   op
	why  Reason // of a take
}

type op int

const (
	opAcquire op = iota
	opRelease
	opDelete
)

type result struct {
	name string
	err  error
}

// New returns an Elector; it starts once Run is called and contends only
// after the first SetContests.
func New(cfg Config) (*Elector, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("election in %s: %w", cfg.Namespace, err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Elector{
		cfg:     cfg,
		log:     log,
		now:     time.Now,
		node:    NodeLeasePrefix + cfg.Identity,
		changes: make(chan struct{}, 1),
		wake:    make(chan struct{}, 1),
		probe:   make(chan struct{}, 1),
		jobs:    make(chan job),
		done:    make(chan result, writeWorkers),
		leases:  map[string]*observed{},
		status:  map[string]Status{},
		reports: map[string]Report{},
	}, nil
}

// SetContests replaces the set of contests this agent takes part in. A
// held contest that disappears has its claim deleted; one whose candidates
// no longer include this agent is released.
func (e *Elector) SetContests(cs []Contest) {
	m := make(map[string]Contest, len(cs))
	for _, c := range cs {
		m[c.Name] = c
	}
	e.mu.Lock()
	e.contests = m
	e.mu.Unlock()
	signal(e.wake)
}

// Status returns what this agent has observed of one contest.
func (e *Elector) Status(name string) Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status[name]
}

// Changes receives a value whenever any Status may have changed.
func (e *Elector) Changes() <-chan struct{} { return e.changes }

// NodeAnnotation returns, for every other agent that has a node Lease, the
// value it published under key (see Config.NodeAnnotations).
func (e *Elector) NodeAnnotation(key string) map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]string{}
	for name, o := range e.leases {
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

// Members returns the agents this agent considers live, itself included
// while it is live, sorted.
func (e *Elector) Members() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.members)
}

// Live reports whether this agent currently considers itself live: its node
// Lease renewed within the renew deadline.
func (e *Elector) Live() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.liveLocked(e.now())
}

func (e *Elector) liveLocked(now time.Time) bool {
	return e.renewedLocked(now) || e.outageHoldLocked(now)
}

// renewedLocked: our node Lease was renewed within the renew deadline.
func (e *Elector) renewedLocked(now time.Time) bool {
	return !e.released && !e.lastRenew.IsZero() && now.Before(e.lastRenew.Add(e.cfg.RenewDeadline))
}

// outageHoldLocked decides whether this agent, unable to renew, may keep
// holding anyway. It may when every agent that was live when it last
// renewed is heard from and says it cannot reach the API server either:
// then nobody can take a claim from it, and dropping the VIPs would turn
// an API outage into a VIP outage. If any of them is silent it could take
// over: the holder lets go by its renew deadline as usual. If one reaches
// the API server again, the holder probes it too and keeps holding for
// half a retry period, long enough for its own renewal to succeed when the
// outage is over; only if it is cut off alone does it let go. The others
// do not take over meanwhile: they hear it say it is live.
func (e *Elector) outageHoldLocked(now time.Time) bool {
	if e.released || e.cfg.Peers == nil || e.lastRenew.IsZero() || !e.wasLive {
		return false
	}
	peerReachesAPI := false
	for h, o := range e.peerLeasesLocked() {
		if !e.lastRenew.Before(o.seen.Add(leaseDuration(o.lease, e.cfg.LeaseDuration))) {
			continue // not live when we last reached the API: not a rival
		}
		r := e.cfg.Peers.Peer(h)
		if !r.Heard {
			return false
		}
		peerReachesAPI = peerReachesAPI || r.APIOK
	}
	if !peerReachesAPI {
		e.apiBackAt = time.Time{}
		return true
	}
	if e.apiBackAt.IsZero() {
		e.apiBackAt = now
		signal(e.probe)
	}
	return now.Before(e.apiBackAt.Add(e.cfg.RetryPeriod / 2))
}

// peerLeasesLocked yields the node Leases of the other agents that hold
// them (not released), with each agent's name.
func (e *Elector) peerLeasesLocked() iter.Seq2[string, *observed] {
	return func(yield func(string, *observed) bool) {
		for _, o := range e.leases {
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

// isolatedLocked reports whether this agent has heard other agents before
// but hears none now.
func (e *Elector) isolatedLocked() bool {
	if e.cfg.Peers == nil {
		return false
	}
	ever := false
	for h := range e.peerLeasesLocked() {
		r := e.cfg.Peers.Peer(h)
		if r.Heard {
			return false
		}
		ever = ever || r.Ever
	}
	return ever
}

// peerLiveLocked judges another agent. Heartbeats, where there are any,
// overrule the Lease in both directions: a node whose beats stopped is dead
// at once, and one that says it has let go is not live; one still heard and
// saying it is live stays live even when no one can renew a Lease.
//
// When this agent hears no other agent at all, silence proves nothing: it
// may be the one cut off (or stalled), so only the Leases count. A holder's
// death is then noticed at Lease expiry; with three or more agents the
// survivors still hear each other and act at once.
func (e *Elector) peerLiveLocked(node string, leaseLive, isolated bool) bool {
	if e.cfg.Peers == nil {
		return leaseLive
	}
	r := e.cfg.Peers.Peer(node)
	switch {
	case r.Ever && !r.Heard:
		return isolated && leaseLive
	case r.Heard && !r.Live:
		return false
	case r.Heard && r.Live:
		return true
	}
	return leaseLive
}

// Release stops this agent from holding anything, at once, and clears the
// holder of its node Lease so that every other agent sees it gone and takes
// over its contests without waiting for expiry. Call it after the VIPs are
// removed. The Elector holds nothing afterwards.
func (e *Elector) Release(ctx context.Context) error {
	e.mu.Lock()
	e.released = true
	e.mu.Unlock()
	e.dropHolding()

	leases := e.cfg.Client.CoordinationV1().Leases(e.cfg.Namespace)
	for {
		e.mu.Lock()
		o := e.leases[e.node]
		e.mu.Unlock()
		if o == nil || holder(o.lease) != e.cfg.Identity {
			return nil
		}
		l := o.lease.DeepCopy()
		empty := ""
		l.Spec.HolderIdentity = &empty
		out, err := leases.Update(ctx, l, metav1.UpdateOptions{})
		if err == nil {
			e.record(out)
			e.log.Info("released node lease; other agents take over at once")
			return nil
		}
		if !apierrors.IsConflict(err) {
			return fmt.Errorf("releasing node lease %s/%s: %w", e.cfg.Namespace, e.node, err)
		}
		cur, gerr := leases.Get(ctx, e.node, metav1.GetOptions{})
		if gerr != nil {
			return fmt.Errorf("releasing node lease %s/%s: %w", e.cfg.Namespace, e.node, gerr)
		}
		e.record(cur)
	}
}

// Run elects until ctx is done. It does not release anything when ctx ends:
// call Release first, once the VIPs are gone.
func (e *Elector) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(e.cfg.Client, 0, informers.WithNamespace(e.cfg.Namespace),
		// Nothing here reads managedFields; dropping them keeps a large
		// cache small. Writes without them leave the server's copy as is.
		informers.WithTransform(stripManagedFields))
	inf := factory.Coordination().V1().Leases().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.observe(obj, false) },
		UpdateFunc: func(_, obj any) { e.observe(obj, false) },
		DeleteFunc: func(obj any) { e.observe(obj, true) },
	}); err != nil {
		return fmt.Errorf("watching leases in %s: %w", e.cfg.Namespace, err)
	}
	factory.StartWithContext(ctx)
	defer factory.Shutdown()
	// Judge only from what the API holds: an empty cache would make every
	// contest look free.
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	e.synced.Store(true)

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { e.renewLoop(ctx) })
	for range writeWorkers {
		wg.Go(func() { e.writeLoop(ctx) })
	}

	var peerChanges <-chan struct{}
	if e.cfg.Peers != nil {
		peerChanges = e.cfg.Peers.Changes()
	}
	inflight := map[string]bool{}
	freeSince := map[string]time.Time{}
	retryAt := map[string]time.Time{}
	timer := time.NewTimer(0)
	defer timer.Stop()
	var queue []job
	for {
		var send chan job
		var next job
		if len(queue) > 0 {
			send, next = e.jobs, queue[0]
		}
		select {
		case <-ctx.Done():
			e.mu.Lock()
			e.status = map[string]Status{}
			e.mu.Unlock()
			signal(e.changes)
			return nil
		case send <- next:
			queue = queue[1:]
			continue
		case r := <-e.done:
			// Take every finished write before evaluating once: placing
			// hundreds of claims must not cost an evaluation each.
			for more := true; more; {
				delete(inflight, r.name)
				if r.err != nil {
					retryAt[r.name] = e.now().Add(e.cfg.RetryPeriod / 4)
				}
				select {
				case r = <-e.done:
				default:
					more = false
				}
			}
		case <-e.wake:
		case <-peerChanges:
		case <-timer.C:
		}
		jobs, wakeAt := e.evaluate(inflight, freeSince, retryAt)
		for _, j := range jobs {
			inflight[j.name] = true
		}
		queue = append(queue, jobs...)
		timer.Reset(max(wakeAt.Sub(e.now()), time.Millisecond))
	}
}

// evaluate publishes the status of every contest and decides the writes
// this agent should make. It returns them and when to look again.
func (e *Elector) evaluate(inflight map[string]bool, freeSince, retryAt map[string]time.Time) ([]job, time.Time) {
	now := e.now()
	wakeAt := now.Add(e.cfg.RetryPeriod)
	soon := func(t time.Time) {
		if t.Before(wakeAt) {
			wakeAt = t
		}
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.contests == nil {
		return nil, wakeAt
	}

	me := e.cfg.Identity
	meLive := e.liveLocked(now)
	live := map[string]bool{}
	renewing := map[string]bool{} // by node Lease alone
	isolated := e.isolatedLocked()
	for h, o := range e.peerLeasesLocked() {
		expiry := o.seen.Add(leaseDuration(o.lease, e.cfg.LeaseDuration))
		leaseLive := now.Before(expiry)
		if leaseLive {
			soon(expiry)
			renewing[h] = true
		}
		if e.peerLiveLocked(h, leaseLive, isolated) {
			live[h] = true
		}
		if e.cfg.Peers != nil && e.apiOK {
			if r := e.cfg.Peers.Peer(h); r.Heard && !r.APIOK {
				signal(e.probe)
			}
		}
	}
	if meLive {
		live[me] = true
		if d := e.lastRenew.Add(e.cfg.RenewDeadline); d.After(now) {
			soon(d)
		}
	}
	if end := e.apiBackAt.Add(e.cfg.RetryPeriod / 2); !e.apiBackAt.IsZero() && end.After(now) {
		soon(end)
	}
	if hold := meLive && !e.renewedLocked(now); hold != e.holdingThrough {
		e.holdingThrough = hold
		if hold {
			e.log.Warn("cannot renew the node lease, but every live agent reports the API server unreachable too: keeping VIPs through the outage")
		} else if meLive {
			e.log.Info("node lease renewed again: API outage over")
		} else {
			e.log.Warn("stopped holding: an agent is silent or reaches the API server, so it may take over")
		}
	}
	e.wasLive = meLive
	e.reportSelfLocked(now)
	liveNodes := make([]string, 0, len(live))
	for n := range live {
		liveNodes = append(liveNodes, n)
	}
	slices.Sort(liveNodes)
	e.members = liveNodes
	candidates := func(name string) []string {
		c := e.contests[name]
		if c.Candidates == nil {
			return liveNodes
		}
		var out []string
		for _, n := range c.Candidates {
			if live[n] {
				out = append(out, n)
			}
		}
		return out
	}

	var jobs []job
	held := map[string]string{}
	var free []string
	status := make(map[string]Status, len(e.contests))
	for name, c := range e.contests {
		var lease *coordinationv1.Lease
		if o := e.leases[name]; o != nil {
			lease = o.lease
		}
		h := holder(lease)
		if h != "" && live[h] {
			held[name] = h
			delete(freeSince, name)
			status[name] = Status{Leader: h, Leading: h == me}
			if h == me && c.Candidates != nil && !slices.Contains(c.Candidates, me) && !inflight[name] {
				jobs = append(jobs, job{name: name, base: lease, op: opRelease})
			}
			continue
		}
		status[name] = Status{}
		free = append(free, name)
		if _, ok := freeSince[name]; !ok {
			freeSince[name] = now
		}
	}
	if !maps.Equal(status, e.status) {
		e.noteStatusLocked(e.status, status, meLive)
		e.status = status
		signal(e.changes)
	}

	if meLive {
		place := placeFree(free, candidates, held, liveNodes)
		for _, name := range free {
			if inflight[name] {
				continue // its result wakes the loop
			}
			if now.Before(retryAt[name]) {
				soon(retryAt[name])
				continue
			}
			cands := candidates(name)
			rank := slices.Index(preference(name, cands), me)
			if rank < 0 {
				continue
			}
			if place[name] != me {
				// Fallback: the preferred agent has had its chance.
				at := freeSince[name].Add(time.Duration(rank+1) * e.cfg.RetryPeriod)
				if now.Before(at) {
					soon(at)
					continue
				}
			}
			var base *coordinationv1.Lease
			if o := e.leases[name]; o != nil {
				base = o.lease
			}
			jobs = append(jobs, job{name: name, base: base, op: opAcquire, why: e.takeReasonLocked(base)})
		}
		// Claims whose contest is gone: delete them, so a deleted Service
		// leaves no Lease behind. Its holder does; if the holder is gone
		// too — its node Lease released or expired, whatever heartbeats
		// say — the first live agent by name deletes it if it is one of the
		// claims that come and go (OrphanPrefix).
		janitor := len(liveNodes) > 0 && liveNodes[0] == me
		for name, o := range e.leases {
			if _, ok := e.contests[name]; ok || inflight[name] || o.lease.Labels[LabelKind] != KindClaim {
				continue
			}
			orphan := janitor && e.cfg.OrphanPrefix != "" && strings.HasPrefix(name, e.cfg.OrphanPrefix)
			if h := holder(o.lease); h == me || (orphan && !renewing[h]) {
				jobs = append(jobs, job{name: name, base: o.lease, op: opDelete})
			}
		}
	}
	for name := range freeSince {
		if _, ok := e.contests[name]; !ok {
			delete(freeSince, name)
		}
	}
	for name, t := range retryAt {
		if now.After(t) {
			delete(retryAt, name)
		}
	}
	return jobs, wakeAt
}

// dropHolding makes a release visible at once, before the next
// evaluation, to the agent and to the other agents' failure detectors.
func (e *Elector) dropHolding() {
	e.mu.Lock()
	e.noteShutdownLocked()
	for name, s := range e.status {
		if s.Leading {
			e.status[name] = Status{}
		}
	}
	e.reportSelfLocked(e.now())
	e.mu.Unlock()
	signal(e.changes)
}

// reportSelfLocked keeps the failure detector's message about us current,
// and hands it the addresses of the other agents.
func (e *Elector) reportSelfLocked(now time.Time) {
	if e.cfg.Peers == nil {
		return
	}
	self := PeerReport{APIOK: e.apiOK, Live: e.liveLocked(now)}
	if self != e.lastSelf {
		e.lastSelf = self
		e.cfg.Peers.SetSelf(self)
	}
	addrs := map[string]string{}
	for h, o := range e.peerLeasesLocked() {
		if a := o.lease.Annotations[AnnotationPeerAddr]; a != "" {
			addrs[h] = a
		}
	}
	if !maps.Equal(addrs, e.peerAddr) {
		e.peerAddr = addrs
		e.cfg.Peers.SetPeers(addrs)
	}
}

func (e *Elector) observe(obj any, deleted bool) {
	l, ok := obj.(*coordinationv1.Lease)
	if !ok {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			l, _ = tomb.Obj.(*coordinationv1.Lease)
		}
	}
	if l == nil {
		return
	}
	if deleted {
		e.mu.Lock()
		if o := e.leases[l.Name]; o != nil && !newer(o.lease.ResourceVersion, l.ResourceVersion) {
			delete(e.leases, l.Name)
		}
		e.mu.Unlock()
		signal(e.wake)
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
		e.leases[l.Name] = &observed{lease: l, seen: e.now()}
	case newer(l.ResourceVersion, o.lease.ResourceVersion):
		if holder(o.lease) != holder(l) || !o.lease.Spec.RenewTime.Equal(l.Spec.RenewTime) {
			o.seen = e.now()
		}
		o.lease = l
	}
	e.mu.Unlock()
	signal(e.wake)
}

// renewLoop keeps this agent's node Lease fresh. It is the only periodic
// write an agent makes, whatever the number of contests.
func (e *Elector) renewLoop(ctx context.Context) {
	interval := e.cfg.RenewDeadline / 2
	timer := time.NewTimer(0)
	defer timer.Stop()
	wasLive, failing := false, false
	var lastAttempt time.Time
	for {
		probe := false
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-e.probe:
			probe = true
		}
		e.mu.Lock()
		last, released := e.lastRenew, e.released
		e.mu.Unlock()
		if released {
			return
		}
		now := e.now()
		var err error
		// A probe (a peer lost the API server: have we?) renews early,
		// but at most once a retry period.
		if now.Sub(last) >= interval || (probe && now.Sub(lastAttempt) >= e.cfg.RetryPeriod) {
			lastAttempt = now
			err = e.renew(ctx, last, now)
			switch {
			case err != nil && !failing:
				e.log.Warn("renewing node lease failed; retrying", "err", err)
			case err != nil:
				e.log.Debug("renewing node lease failed", "err", err)
			case failing:
				e.log.Info("node lease renewed again")
			}
			failing = err != nil
		}
		e.mu.Lock()
		last = e.lastRenew
		live := e.liveLocked(e.now())
		e.mu.Unlock()
		if live != wasLive {
			if live {
				e.log.Info("node lease renewed: this agent is live")
			} else {
				e.log.Warn("stopped holding: node lease not renewed within the renew deadline",
					"renew_deadline", e.cfg.RenewDeadline, "last_renewal", last)
			}
			wasLive = live
			signal(e.wake)
		}
		next := last.Add(interval)
		if err != nil {
			next = e.now().Add(e.cfg.RetryPeriod / 4)
		}
		if deadline := last.Add(e.cfg.RenewDeadline); live && deadline.Before(next) {
			next = deadline
		}
		timer.Reset(max(next.Sub(e.now()), time.Millisecond))
	}
}

// setAPIOK records whether this agent reaches the API server, and tells the
// other agents at once: a holder cut off from the API keeps its VIPs only
// while every other agent says it is cut off too.
func (e *Elector) setAPIOK(ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.apiOK != ok {
		e.apiOK = ok
		e.reportSelfLocked(e.now())
	}
}

// writeContext bounds a renewal: it may not outlive the deadline by which
// this agent must consider itself no longer live.
func (e *Elector) writeContext(ctx context.Context, last time.Time) (context.Context, context.CancelFunc) {
	if !last.IsZero() {
		if d := last.Add(e.cfg.RenewDeadline); d.After(e.now()) {
			return context.WithDeadline(ctx, d)
		}
	}
	return context.WithTimeout(ctx, e.cfg.RetryPeriod)
}

func (e *Elector) renew(ctx context.Context, last, start time.Time) error {
	ctx, cancel := e.writeContext(ctx, last)
	defer cancel()
	// A renewal that hangs means no API server just as much as one that
	// fails: say so before the renew deadline, while it still matters.
	slow := time.AfterFunc(e.cfg.RetryPeriod/2, func() { e.setAPIOK(false) })
	err := e.renewOnce(ctx, start)
	slow.Stop()
	e.setAPIOK(err == nil)
	return err
}

func (e *Elector) renewOnce(ctx context.Context, start time.Time) error {
	e.mu.Lock()
	var base *coordinationv1.Lease
	if o := e.leases[e.node]; o != nil {
		base = o.lease
	}
	e.mu.Unlock()
	out, err := e.writeLease(ctx, e.node, KindNode, base, e.nodeAnnotations())
	if apierrors.IsConflict(err) {
		// Our view was stale; read once and retry at the next tick.
		if cur, gerr := e.cfg.Client.CoordinationV1().Leases(e.cfg.Namespace).Get(ctx, e.node, metav1.GetOptions{}); gerr == nil {
			e.record(cur)
		}
	}
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.lastRenew = start
	e.apiBackAt = time.Time{}
	e.mu.Unlock()
	e.record(out)
	return nil
}

// writeLease makes this agent the holder of the named Lease, conditional on
// base (created if base is nil).
func (e *Elector) writeLease(ctx context.Context, name, kind string, base *coordinationv1.Lease, annotations map[string]string) (*coordinationv1.Lease, error) {
	leases := e.cfg.Client.CoordinationV1().Leases(e.cfg.Namespace)
	now := metav1.NewMicroTime(e.now())
	secs := int32(math.Ceil(e.cfg.LeaseDuration.Seconds()))
	id := e.cfg.Identity
	if base == nil {
		return leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.cfg.Namespace, Annotations: annotations,
				Labels: map[string]string{LabelManagedBy: managedBy, LabelKind: kind}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &id, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now},
		}, metav1.CreateOptions{})
	}
	l := base.DeepCopy()
	if holder(l) != id {
		l.Spec.AcquireTime = &now
		if holder(l) != "" || l.Spec.LeaseTransitions != nil {
			t := int32(1)
			if l.Spec.LeaseTransitions != nil {
				t = *l.Spec.LeaseTransitions + 1
			}
			l.Spec.LeaseTransitions = &t
		}
	}
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	l.Labels[LabelManagedBy] = managedBy
	l.Labels[LabelKind] = kind
	if len(annotations) > 0 {
		if l.Annotations == nil {
			l.Annotations = map[string]string{}
		}
		maps.Copy(l.Annotations, annotations)
	}
	l.Spec.HolderIdentity = &id
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &now
	return leases.Update(ctx, l, metav1.UpdateOptions{})
}

func (e *Elector) writeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-e.jobs:
			err := e.do(ctx, j)
			select {
			case e.done <- result{name: j.name, err: err}:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (e *Elector) do(ctx context.Context, j job) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RenewDeadline)
	defer cancel()
	leases := e.cfg.Client.CoordinationV1().Leases(e.cfg.Namespace)
	log := e.log.With("contest", j.name)
	switch j.op {
	case opAcquire:
		prev := holder(j.base)
		e.noteTaking(j.name, prev, j.why)
		out, err := e.writeLease(ctx, j.name, KindClaim, j.base, nil)
		e.noteTaken(j.name, out, err)
		if err != nil {
			if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
				log.Debug("claim changed before we could take it", "err", err)
			} else {
				log.Warn("taking claim failed", "err", err)
			}
			return err
		}
		e.record(out)
		// The agent logs the decision, with the VIPs, once it acts on it.
		log.Debug("took claim", "previous_holder", prev, "reason", j.why)
	case opRelease:
		l := j.base.DeepCopy()
		empty := ""
		l.Spec.HolderIdentity = &empty
		out, err := leases.Update(ctx, l, metav1.UpdateOptions{})
		if err != nil {
			log.Warn("releasing claim failed", "err", err)
			return err
		}
		e.noteLost(j.name, LostNotCandidate)
		e.record(out)
		log.Debug("released claim: this node is no longer a candidate")
	case opDelete:
		rv := j.base.ResourceVersion
		err := leases.Delete(ctx, j.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		if err != nil && !apierrors.IsNotFound(err) {
			log.Warn("deleting claim of a removed contest failed", "err", err)
			return err
		}
		log.Info("deleted claim of a removed contest")
	}
	return nil
}

func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

func leaseDuration(l *coordinationv1.Lease, def time.Duration) time.Duration {
	if l != nil && l.Spec.LeaseDurationSeconds != nil {
		return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return def
}
