package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// LeaseConfig describes one Lease election.
type LeaseConfig struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
	// Identity is written as the Lease holder; the node name.
	Identity string
	// LeaseDuration is how long others wait after the last renewal they saw
	// before they may take the Lease.
	LeaseDuration time.Duration
	// RenewDeadline is how long the holder keeps leading without a
	// successful renewal. It must be shorter than LeaseDuration: the holder
	// stops before anyone else may start.
	RenewDeadline time.Duration
	// RetryPeriod is the interval between renewals and between attempts to
	// acquire.
	RetryPeriod time.Duration
	Log         *slog.Logger
}

func (c LeaseConfig) validate() error {
	switch {
	case c.Client == nil:
		return errors.New("no Kubernetes client")
	case c.Namespace == "" || c.Name == "":
		return errors.New("lease namespace and name must be set")
	case c.Identity == "":
		return errors.New("identity must be set")
	case c.RetryPeriod <= 0 || c.RenewDeadline <= c.RetryPeriod || c.LeaseDuration <= c.RenewDeadline:
		return fmt.Errorf("need 0 < retry period (%s) < renew deadline (%s) < lease duration (%s)",
			c.RetryPeriod, c.RenewDeadline, c.LeaseDuration)
	}
	return nil
}

// LeaseElection is an Election on one Lease with optimistic concurrency:
// every write carries the resourceVersion it was based on, so two agents
// can never both believe they acquired the same Lease. Other agents' changes
// arrive through a watch, so a released Lease is taken as soon as the
// release is seen.
type LeaseElection struct {
	cfg LeaseConfig
	log *slog.Logger
	now func() time.Time

	changes chan struct{} // coalesced Status notifications
	nudge   chan struct{} // coalesced "the Lease changed" from the watch
	release chan chan error

	mu     sync.Mutex
	status Status
	// watched is the newest Lease the watch delivered; the loop adopts it.
	watched *coordinationv1.Lease
	deleted bool
}

// NewLease returns a LeaseElection; it campaigns once Run is called.
func NewLease(cfg LeaseConfig) (*LeaseElection, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("lease %s/%s: %w", cfg.Namespace, cfg.Name, err)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LeaseElection{
		cfg:     cfg,
		log:     log.With("lease", cfg.Namespace+"/"+cfg.Name),
		now:     time.Now,
		changes: make(chan struct{}, 1),
		nudge:   make(chan struct{}, 1),
		release: make(chan chan error),
	}, nil
}

// Status implements Election.
func (e *LeaseElection) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status
}

// Changes implements Election.
func (e *LeaseElection) Changes() <-chan struct{} { return e.changes }

// Release implements Election.
func (e *LeaseElection) Release(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case e.release <- reply:
	case <-ctx.Done():
		return fmt.Errorf("releasing lease: %w", ctx.Err())
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return fmt.Errorf("releasing lease: %w", ctx.Err())
	}
}

func (e *LeaseElection) setStatus(s Status) {
	e.mu.Lock()
	changed := e.status != s
	e.status = s
	e.mu.Unlock()
	if changed {
		signal(e.changes)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// state is owned by the Run loop.
type state struct {
	lease *coordinationv1.Lease // newest known version; nil if none exists
	// seen is the local time at which the current holder's latest renewal
	// was first observed. Expiry is judged on the local clock from this
	// moment, so clock skew between nodes does not matter.
	seen      time.Time
	leading   bool
	lastRenew time.Time // local time of our last successful write, when leading
	// nextTry holds back the next write after a failed one, so that an
	// unreachable API server is retried every RetryPeriod, not in a loop.
	// New information from the watch clears it.
	nextTry  time.Time
	released bool
}

// Run implements Election.
func (e *LeaseElection) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(e.cfg.Client, 0,
		informers.WithNamespace(e.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", e.cfg.Name).String()
		}))
	inf := factory.Coordination().V1().Leases().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { e.observe(obj, false) },
		UpdateFunc: func(_, obj any) { e.observe(obj, false) },
		DeleteFunc: func(obj any) { e.observe(obj, true) },
	})
	if err != nil {
		return fmt.Errorf("watching lease: %w", err)
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	factory.StartWithContext(watchCtx)
	defer factory.Shutdown()
	// Act on what the API holds, not on an empty cache: otherwise the first
	// step would try to create a Lease that exists.
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}

	st := &state{}
	e.adoptWatched(st)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			if st.leading {
				e.log.Info("stopped leading: election ended without release")
			}
			e.setStatus(Status{})
			return nil
		case reply := <-e.release:
			reply <- e.doRelease(ctx, st)
		case <-e.nudge:
			e.adoptWatched(st)
		case <-timer.C:
		}
		if !st.released {
			e.step(ctx, st)
		}
		e.publish(st)
		timer.Reset(e.nextWake(st))
	}
}

func (e *LeaseElection) observe(obj any, deleted bool) {
	lease, ok := obj.(*coordinationv1.Lease)
	if !ok {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			lease, _ = tomb.Obj.(*coordinationv1.Lease)
		}
	}
	if lease == nil {
		return
	}
	e.mu.Lock()
	e.watched = lease
	e.deleted = deleted
	e.mu.Unlock()
	signal(e.nudge)
}

// adoptWatched takes the watch's newest Lease unless the loop already knows
// a newer version (its own write may have overtaken the watch).
func (e *LeaseElection) adoptWatched(st *state) {
	e.mu.Lock()
	w, deleted := e.watched, e.deleted
	e.mu.Unlock()
	if w == nil {
		return
	}
	if deleted {
		if st.lease != nil && st.lease.ResourceVersion == w.ResourceVersion {
			st.lease = nil
			st.seen = e.now()
		}
		return
	}
	if st.lease != nil && !newer(w.ResourceVersion, st.lease.ResourceVersion) {
		return
	}
	e.adopt(st, w)
}

// adopt records a Lease version and, when the holder or its renewal time
// changed, the local time at which that was seen.
func (e *LeaseElection) adopt(st *state, l *coordinationv1.Lease) {
	prev := st.lease
	st.lease = l
	if prev == nil || holder(prev) != holder(l) || !prev.Spec.RenewTime.Equal(l.Spec.RenewTime) {
		st.seen = e.now()
		st.nextTry = time.Time{}
	}
	if st.leading && holder(l) != e.cfg.Identity {
		st.leading = false
		e.log.Warn("stopped leading: lease taken by another holder", "holder", holder(l))
	}
}

// newer reports whether resourceVersion a is newer than b. The API server
// hands out etcd revisions, which are integers; if either is not, the
// watch's version is trusted.
func newer(a, b string) bool {
	ai, errA := strconv.ParseUint(a, 10, 64)
	bi, errB := strconv.ParseUint(b, 10, 64)
	if errA != nil || errB != nil {
		return a != b
	}
	return ai > bi
}

func holder(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func (e *LeaseElection) duration(l *coordinationv1.Lease) time.Duration {
	if l != nil && l.Spec.LeaseDurationSeconds != nil {
		return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return e.cfg.LeaseDuration
}

// step does what the state calls for: renew while leading, step down past
// the renew deadline, or try to acquire a free or expired Lease.
func (e *LeaseElection) step(ctx context.Context, st *state) {
	now := e.now()
	if st.leading {
		deadline := st.lastRenew.Add(e.cfg.RenewDeadline)
		if !now.Before(deadline) {
			st.leading = false
			e.log.Warn("stopped leading: lease not renewed within the renew deadline",
				"renew_deadline", e.cfg.RenewDeadline, "last_renewal", st.lastRenew)
			return
		}
		if now.Sub(st.lastRenew) < e.cfg.RetryPeriod || now.Before(st.nextTry) {
			return
		}
		// The write may not outlive the deadline: leadership must end on
		// time even if the API server hangs.
		wctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		if err := e.write(wctx, st, false); err != nil {
			st.nextTry = now.Add(e.cfg.RetryPeriod)
			e.log.Warn("renewing lease failed", "err", err, "until_step_down", deadline.Sub(e.now()).Round(time.Millisecond))
			if !e.now().Before(deadline) {
				st.leading = false
				e.log.Warn("stopped leading: lease not renewed within the renew deadline",
					"renew_deadline", e.cfg.RenewDeadline)
			}
		}
		return
	}

	h := holder(st.lease)
	free := st.lease == nil || h == "" || h == e.cfg.Identity ||
		!now.Before(st.seen.Add(e.duration(st.lease)))
	if !free || now.Before(st.nextTry) {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, e.cfg.RetryPeriod)
	defer cancel()
	if err := e.write(wctx, st, true); err != nil {
		st.nextTry = now.Add(e.cfg.RetryPeriod)
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			e.log.Debug("lease changed under us; waiting for the watch", "err", err)
			return
		}
		e.log.Warn("acquiring lease failed", "err", err)
		return
	}
	e.log.Info("started leading", "previous_holder", h)
}

// write creates, takes or renews the Lease, conditional on the version in
// st. On success st holds the written version and this agent leads.
func (e *LeaseElection) write(ctx context.Context, st *state, acquire bool) error {
	leases := e.cfg.Client.CoordinationV1().Leases(e.cfg.Namespace)
	now := metav1.NewMicroTime(e.now())
	secs := int32(math.Ceil(e.cfg.LeaseDuration.Seconds()))
	id := e.cfg.Identity

	var (
		out *coordinationv1.Lease
		err error
	)
	if st.lease == nil {
		out, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: e.cfg.Name, Namespace: e.cfg.Namespace},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: &id, LeaseDurationSeconds: &secs,
				AcquireTime: &now, RenewTime: &now,
			},
		}, metav1.CreateOptions{})
	} else {
		l := st.lease.DeepCopy()
		if acquire && holder(l) != id {
			l.Spec.AcquireTime = &now
			transitions := int32(0)
			if l.Spec.LeaseTransitions != nil {
				transitions = *l.Spec.LeaseTransitions
			}
			if holder(l) != "" {
				transitions++
			}
			l.Spec.LeaseTransitions = &transitions
		}
		if l.Spec.AcquireTime == nil {
			l.Spec.AcquireTime = &now
		}
		l.Spec.HolderIdentity = &id
		l.Spec.LeaseDurationSeconds = &secs
		l.Spec.RenewTime = &now
		out, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	}
	if err != nil {
		if apierrors.IsConflict(err) && st.leading {
			// Someone else wrote the Lease. Read it once to learn whether we
			// still hold it; the watch will catch up too.
			if cur, gerr := leases.Get(ctx, e.cfg.Name, metav1.GetOptions{}); gerr == nil {
				e.adopt(st, cur)
			}
		}
		return err
	}
	st.leading = true
	st.lastRenew = now.Time
	e.adopt(st, out)
	return nil
}

// doRelease steps down and clears the holder, so that followers see the
// Lease free at once.
func (e *LeaseElection) doRelease(ctx context.Context, st *state) error {
	st.released = true
	if !st.leading {
		return nil
	}
	st.leading = false
	e.publish(st)
	l := st.lease.DeepCopy()
	empty := ""
	one := int32(1)
	now := metav1.NewMicroTime(e.now())
	l.Spec.HolderIdentity = &empty
	l.Spec.LeaseDurationSeconds = &one
	l.Spec.RenewTime = &now
	out, err := e.cfg.Client.CoordinationV1().Leases(e.cfg.Namespace).Update(ctx, l, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("releasing lease %s/%s: %w", e.cfg.Namespace, e.cfg.Name, err)
	}
	e.adopt(st, out)
	e.log.Info("released lease")
	return nil
}

func (e *LeaseElection) publish(st *state) {
	s := Status{Leader: holder(st.lease), Leading: st.leading}
	if !st.leading && s.Leader == e.cfg.Identity {
		// The Lease still names us, but we no longer lead: report no
		// leader, so nobody mistakes the stale record for a new leader.
		s.Leader = ""
	}
	e.setStatus(s)
}

// nextWake is when the loop must look again even if the watch is silent.
func (e *LeaseElection) nextWake(st *state) time.Duration {
	now := e.now()
	if st.released {
		return time.Hour
	}
	var next time.Time
	if st.leading {
		// The next renewal, but no later than the step-down deadline.
		next = st.lastRenew.Add(e.cfg.RetryPeriod)
		if st.nextTry.After(next) {
			next = st.nextTry
		}
		if d := st.lastRenew.Add(e.cfg.RenewDeadline); d.Before(next) {
			next = d
		}
	} else {
		next = now.Add(e.cfg.RetryPeriod)
		if st.lease != nil && holder(st.lease) != "" {
			if exp := st.seen.Add(e.duration(st.lease)); exp.Before(next) {
				next = exp
			}
		}
		if st.nextTry.After(next) {
			next = st.nextTry
		}
	}
	return max(next.Sub(now), time.Millisecond)
}
