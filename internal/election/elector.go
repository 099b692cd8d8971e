package election

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	"github.com/vipd/vipd/internal/backoff"
	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/notify"
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

// Annotations on node Leases.
const (
	// AnnotationPeerAddr holds where the agent's failure detector listens.
	AnnotationPeerAddr = "vipd.io/heartbeat"
	// AnnotationRefused holds the contests the agent cannot hold, as a JSON
	// object from contest name to reason. The others do not place those
	// contests on it.
	AnnotationRefused = "vipd.io/refused"

	vipdAnnotationPrefix = "vipd.io/"
)

// writeWorkers bounds the claim writes in flight at once. When a node
// holding a hundred VIPs is lost among ten, each survivor takes about a
// dozen: all of them go out at once, rather than in rounds each as slow as
// the API server is under the burst. Few enough that the survivors together
// stay within the API server's default limit of mutating requests in flight.
const writeWorkers = 16

// Contest is one thing to elect a holder for: a VIP, or a group of VIPs
// that must move together. Its name is the name of its claim Lease.
type Contest struct {
	Name string
	// Candidates are the nodes allowed to hold the contest; nil means every
	// live agent.
	Candidates []string
	// Needs, if set, names something a holder's node must have (the
	// interface the contest's VIPs go on): nodes whose agents say they
	// lack it (SetLacking) are no candidates.
	Needs string
}

// Config describes an agent's elector.
type Config struct {
	Client kube.Interface
	// Namespace holds the agents' node Leases and, unless LeaseNamespaces
	// says otherwise, the claims.
	Namespace string
	// LeaseNamespaces places the claims of some contests, by name, in
	// another namespace: kube-vip's plndr-cp-lock and plndr-svcs-lock stay
	// where kube-vip kept them while vipd's own Leases live in a namespace
	// RBAC can fence. Only those Leases are watched there, by name.
	LeaseNamespaces map[string]string
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
	// to read (NodeAnnotation); SetNodeAnnotations adds to them later.
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
	// Vouched reports whether another agent that this one hears says, in
	// its latest beat, that it hears node: then node is not dead, whatever
	// this agent hears of it.
	Vouched(node string) bool
	// Self reports whether this agent is cut off from its peers.
	Self() SelfReport
	// Changes receives a value whenever a report may have changed.
	Changes() <-chan struct{}
	// SetPeers tells the detector where the agents listen.
	SetPeers(addrs map[string]string)
	// SetSelf tells the detector what to say about this agent.
	SetSelf(self PeerReport)
}

// PeerReport is one agent's state as a failure detector sees it.
type PeerReport struct {
	// Heard: an authenticated, fresh beat of the agent arrived within the
	// detector's timeout.
	Heard bool
	// Silent: the agent was heard, is not any more, and this agent is in a
	// position to judge that (it is not cut off itself, nor just back).
	Silent bool
	// APIOK: the agent renews its node Lease. Live: it considers itself
	// live, so it may hold VIPs.
	APIOK, Live bool
}

// SelfReport is what the failure detector knows about this agent's own
// connectivity.
type SelfReport struct {
	// LinkDown: the interface the beats use has no carrier.
	LinkDown bool
	// Isolated: this agent has heard peers before but hears none now.
	Isolated bool
}

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
	for name, ns := range c.LeaseNamespaces {
		if name == "" || ns == "" {
			return fmt.Errorf("lease namespaces: %q in %q: name and namespace must be set", name, ns)
		}
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
	publish chan struct{} // asks renewLoop to publish the node annotations now
	relist  chan struct{} // asks for a fresh read of every Lease
	jobs    chan job
	done    chan result
	// retries spaces out writes that keep failing, per contest.
	retries backoff.Tracker[string]

	mu       sync.Mutex
	contests map[string]Contest // nil until the first SetContests
	// contestMark is the call of SetContests (contestGen) that last named
	// each contest: those it did not name went away.
	contestMark map[string]uint64
	contestGen  uint64
	leases      map[string]*observed
	// nodeLeases are the node Leases among leases, by name.
	nodeLeases map[string]*observed
	status     map[string]Status
	// statusLog names the contests whose Status changed since the last
	// TakeStatusChanges; statusLogAll says that every one may have.
	statusLog    map[string]bool
	statusLogAll bool
	// eval is what evaluate keeps between runs (incremental.go).
	eval      evalState
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
	// annotations are published on our node Lease at each renewal.
	annotations map[string]string
	// refused are the contests this agent cannot hold, with the reason;
	// refusedOut is what the node Lease says, so that a held contest is
	// released only once the others can see why.
	refused, refusedOut map[string]string
	// lacking and lackingOut are the same for what this node lacks of
	// the contests' needs (SetLacking).
	lacking, lackingOut map[string]string
	// fence tracks this agent's own loss of connectivity (fence.go).
	fence fenceState
	// started is when Run began; see warmLocked.
	started time.Time
	// written is our node Lease as our last renewal wrote it, and
	// watched its resourceVersion as the watch last delivered it: a watch
	// that does not bring back our own writes is behind (watchBehindLocked).
	written      *coordinationv1.Lease
	writtenAt    time.Time
	watched      string
	watchLagging bool // as last logged
	// contradicted: agents heard saying they renew whose Leases look
	// expired here, since when (peerLiveLocked).
	contradicted map[string]time.Time
	// selfSent: the detector was told about this agent at least once.
	selfSent bool
	// foreignLogged: contests whose foreign holder was logged.
	foreignLogged map[string]bool
	// reports say why each contest was last taken or lost (report.go).
	reports map[string]Report
	synced  atomic.Bool
	// leadingEpoch counts the changes of which contests this agent leads
	// (LeadingEpoch).
	leadingEpoch atomic.Uint64
	// badAnnotations are node Lease annotations that did not parse, by
	// Lease, as last logged.
	badAnnotations map[string]string
	// lag is the slowest write to the API server in the last renew
	// deadline (writeLagLocked).
	lag writeLag
	// silenced, if set (SetSilenced), reports whether this node answers
	// for none of a contest's VIPs any more: a claim it lets go is
	// released only then.
	silenced func(contest string) bool
	// claims counts the takes queued or in flight (Claiming).
	claims *claimWrites
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
	ann := maps.Clone(cfg.NodeAnnotations)
	if ann == nil {
		ann = map[string]string{}
	}
	if cfg.PeerAddr != "" {
		ann[AnnotationPeerAddr] = cfg.PeerAddr
	}
	return &Elector{
		cfg:     cfg,
		log:     log,
		now:     time.Now,
		node:    NodeLeasePrefix + cfg.Identity,
		changes: make(chan struct{}, 1),
		wake:    make(chan struct{}, 1),
		probe:   make(chan struct{}, 1),
		publish: make(chan struct{}, 1),
		relist:  make(chan struct{}, 1),
		jobs:    make(chan job),
		done:    make(chan result, writeWorkers),
		claims:  newClaimWrites(),
		retries: backoff.Tracker[string]{Policy: backoff.Policy{Base: cfg.RetryPeriod / 4, Max: 30 * cfg.RetryPeriod}},

		leases:         map[string]*observed{},
		nodeLeases:     map[string]*observed{},
		status:         map[string]Status{},
		eval:           newEvalState(),
		annotations:    ann,
		refused:        map[string]string{},
		foreignLogged:  map[string]bool{},
		contradicted:   map[string]time.Time{},
		refusedOut:     map[string]string{},
		lacking:        map[string]string{},
		lackingOut:     map[string]string{},
		reports:        map[string]Report{},
		badAnnotations: map[string]string{},
	}, nil
}

// SetContests replaces the set of contests this agent takes part in. A
// held contest that disappears has its claim deleted; one whose candidates
// no longer include this agent is released. cs itself is not kept: the
// caller may reuse it.
func (e *Elector) SetContests(cs []Contest) {
	e.mu.Lock()
	// Updated in place: with a thousand contests, of which one changed,
	// a new map per call was most of what setting them cost.
	if e.contests == nil {
		e.contests = make(map[string]Contest, len(cs))
		e.contestMark = make(map[string]uint64, len(cs))
	}
	e.contestGen++
	distinct := 0
	for _, c := range cs {
		if e.contestMark[c.Name] != e.contestGen {
			e.contestMark[c.Name] = e.contestGen
			distinct++
		}
		if old, ok := e.contests[c.Name]; !ok || old.Needs != c.Needs ||
			!slices.Equal(old.Candidates, c.Candidates) || (old.Candidates == nil) != (c.Candidates == nil) {
			e.markDirtyLocked(c.Name)
			e.contests[c.Name] = c
		}
	}
	if len(e.contests) > distinct {
		for name := range e.contests {
			if e.contestMark[name] != e.contestGen {
				e.markDirtyLocked(name)
				delete(e.contests, name)
				delete(e.contestMark, name)
			}
		}
	}
	e.mu.Unlock()
	notify.Signal(e.wake)
}

// SetSilenced gives the election a way to ask whether this node still
// answers for a contest's VIPs. A claim this agent must let go (it is no
// candidate any more, refuses it, or lacks its interface) is then given up
// in two steps: its status stops Leading at once, with the reason in its
// Report, so that the agent silences its VIPs (or keeps them silent for a
// handover); the claim is released only once silenced says so, so that the
// next holder never answers beside this node. silenced is called with the
// election's lock held: it must not call the Elector.
func (e *Elector) SetSilenced(silenced func(contest string) bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.silenced = silenced
}

// SetNodeAnnotations publishes more annotations on this agent's node Lease,
// with its next regular renewal: no extra write. A vipd.io/ key set earlier
// and missing now is removed. Keys the Elector owns (AnnotationPeerAddr,
// AnnotationRefused, AnnotationLacking) cannot be set this way.
func (e *Elector) SetNodeAnnotations(ann map[string]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	next := maps.Clone(e.cfg.NodeAnnotations)
	if next == nil {
		next = map[string]string{}
	}
	for k, v := range ann {
		if k != AnnotationPeerAddr && k != AnnotationRefused && k != AnnotationLacking {
			next[k] = v
		}
	}
	if e.cfg.PeerAddr != "" {
		next[AnnotationPeerAddr] = e.cfg.PeerAddr
	}
	e.annotations = next
}

// Status returns what this agent has observed of one contest.
func (e *Elector) Status(name string) Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status[name]
}

// Statuses sets out[i] to the Status of names[i], for every i, all as
// observed at one moment: one lock for a thousand contests, not one each.
// out must be at least as long as names.
func (e *Elector) Statuses(names []string, out []Status) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, n := range names {
		out[i] = e.status[n]
	}
}

// TakeStatusChanges returns the contests whose Status changed since the
// last call, or all (every Status may have changed, or this is the first
// call), and starts a new log. The agent's reconciler, its one caller,
// looks at those and not at every contest: with thousands of contests a
// pass costs what changed.
func (e *Elector) TakeStatusChanges() (names map[string]bool, all bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	names, all = e.statusLog, e.statusLogAll || e.statusLog == nil
	e.statusLog, e.statusLogAll = map[string]bool{}, false
	return names, all
}

// Unlogged returns those of names that the log started by the last
// TakeStatusChanges does not name: a status read after that call may have
// changed since, and such a change is in the log.
func (e *Elector) Unlogged(names []string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return e.statusLogAll || e.statusLog[n] })
}

// logStatusLocked records that name's Status changed (TakeStatusChanges).
func (e *Elector) logStatusLocked(name string) {
	if e.statusLog != nil {
		e.statusLog[name] = true
	}
}

// Changes receives a value whenever any Status may have changed.
func (e *Elector) Changes() <-chan struct{} { return e.changes }

// LeadingEpoch grows whenever this agent starts or stops leading a
// contest. A caller that sees it unchanged after Changes knows that only
// other agents' contests changed: who holds them, not what this one must
// do.
func (e *Elector) LeadingEpoch() uint64 { return e.leadingEpoch.Load() }

// Members returns the agents this agent considers live, itself included
// while it is live, sorted.
func (e *Elector) Members() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.members)
}

// Live reports whether this agent currently considers itself live: its node
// Lease renewed within the renew deadline (or held through an outage every
// agent shares), and not cut off.
func (e *Elector) Live() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.liveLocked(e.now())
}
