package election

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"time"

	"github.com/vipd/vipd/internal/notify"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// renewLoop keeps this agent's node Lease fresh. It is the only periodic
// write an agent makes, whatever the number of contests.
func (e *Elector) renewLoop(ctx context.Context) {
	interval := e.cfg.RenewDeadline / 2
	timer := time.NewTimer(0)
	defer timer.Stop()
	wasLive, failing, publish := false, false, false
	var lastAttempt time.Time
	for {
		probe := false
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-e.probe:
			probe = true
		case <-e.publish:
			publish = true
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
		// but at most once a retry period; a change of what this agent
		// refuses is published at once.
		if now.Sub(last) >= interval || publish || (probe && now.Sub(lastAttempt) >= e.cfg.RetryPeriod) {
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
			publish = publish && err != nil
		}
		e.mu.Lock()
		last = e.lastRenew
		live := e.liveLocked(e.now())
		e.mu.Unlock()
		if live != wasLive {
			if live {
				e.log.Info("node lease renewed: this agent is live")
			} else {
				e.log.Warn("stopped holding: not live", "renew_deadline", e.cfg.RenewDeadline, "last_renewal", last)
			}
			wasLive = live
			notify.Signal(e.wake)
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

// refreshLoop reads every Lease afresh when asked (after this agent was
// cut off, or the API server came back), retrying until it succeeds, and
// every retry period while the watch is behind.
func (e *Elector) refreshLoop(ctx context.Context) {
	t := time.NewTicker(e.cfg.RetryPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.relist:
		case <-t.C:
			e.mu.Lock()
			behind := e.watchBehindLocked(e.now())
			if behind != e.watchLagging {
				e.watchLagging = behind
				if behind {
					e.log.Warn("the watch on Leases is behind: reading them directly every retry period until it catches up")
				} else {
					e.log.Info("the watch on Leases caught up")
				}
			}
			e.mu.Unlock()
			if !behind {
				continue
			}
		}
		for failures := 1; ; failures++ {
			start := e.now()
			err := e.refresh(ctx)
			if err == nil {
				e.mu.Lock()
				e.fence.freshAt = start
				e.mu.Unlock()
				notify.Signal(e.wake)
				break
			}
			d := e.retries.Policy.Delay(failures)
			e.log.Debug("reading leases afresh failed; retrying", "err", err, "retry_in", d.Round(time.Millisecond))
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
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
		if ok {
			e.apiRecoveredLocked(e.now())
		}
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

// writeLag remembers the slowest write to the API server lately. Every
// agent shares that API server, so it is also about how long another
// agent's claim write takes now: a fallback waits for it (evaluate).
type writeLag struct {
	d  time.Duration
	at time.Time
}

// noteWriteLocked records a write that took d and ended at now.
func (e *Elector) noteWriteLocked(d time.Duration, now time.Time) {
	if d >= e.lag.d || now.Sub(e.lag.at) > e.cfg.RenewDeadline {
		e.lag = writeLag{d: d, at: now}
	}
}

// writeLagLocked is the slowest write that ended within the last renew
// deadline.
func (e *Elector) writeLagLocked(now time.Time) time.Duration {
	if now.Sub(e.lag.at) > e.cfg.RenewDeadline {
		return 0
	}
	return e.lag.d
}

func (e *Elector) renewOnce(ctx context.Context, start time.Time) error {
	e.mu.Lock()
	var base *coordinationv1.Lease
	if o := e.leases[e.node]; o != nil {
		base = o.lease
	}
	annotations := maps.Clone(e.annotations)
	refused, lacking := maps.Clone(e.refused), maps.Clone(e.lacking)
	if v := formatRefused(refused); v != "" {
		annotations[AnnotationRefused] = v
	}
	if v := formatRefused(lacking); v != "" {
		annotations[AnnotationLacking] = v
	}
	e.mu.Unlock()
	var drop []string
	if base != nil {
		// Every vipd.io/ annotation of the node Lease is this agent's: one
		// it no longer sets (say, a refusal left by an earlier run) goes.
		for k := range base.Annotations {
			if _, ok := annotations[k]; !ok && strings.HasPrefix(k, vipdAnnotationPrefix) {
				drop = append(drop, k)
			}
		}
	}
	out, err := e.writeLease(ctx, e.node, KindNode, base, annotations, drop)
	if apierrors.IsConflict(err) {
		// Our view was stale; read once and retry at the next tick.
		if cur, gerr := e.cfg.Client.Leases(e.nsFor(e.node)).Get(ctx, e.node, metav1.GetOptions{}); gerr == nil {
			e.record(cur)
		}
	}
	if err != nil {
		return err
	}
	e.mu.Lock()
	// Under the same lock as the renewal that makes this agent live again:
	// no evaluation may see it live with its old view of the claims.
	if now := e.now(); !e.renewedLocked(now) {
		e.lapseEndedLocked(now)
	}
	e.lastRenew = start
	e.apiBackAt = time.Time{}
	e.refusedOut, e.lackingOut = refused, lacking
	e.written, e.writtenAt = out, e.now()
	e.mu.Unlock()
	e.record(out)
	return nil
}

// writeLease makes this agent the holder of the named Lease, conditional on
// base (created if base is nil), setting annotations and removing the keys
// in drop. It records how long the write took (writeLagLocked).
func (e *Elector) writeLease(ctx context.Context, name, kind string, base *coordinationv1.Lease, annotations map[string]string, drop []string) (*coordinationv1.Lease, error) {
	start := e.now()
	defer func() {
		now := e.now()
		e.mu.Lock()
		e.noteWriteLocked(now.Sub(start), now)
		e.mu.Unlock()
	}()
	ns := e.nsFor(name)
	leases := e.cfg.Client.Leases(ns)
	now := metav1.NewMicroTime(e.now())
	secs := int32(math.Ceil(e.cfg.LeaseDuration.Seconds()))
	id := e.cfg.Identity
	if base == nil {
		return leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: annotations,
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
	if len(annotations) > 0 && l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	maps.Copy(l.Annotations, annotations)
	for _, k := range drop {
		delete(l.Annotations, k)
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
			case e.done <- result{name: j.name, op: j.op, err: err}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// isRace reports a write that lost to another writer: the claim changed
// under it, or someone created it first. Retrying soon is right.
func isRace(err error) bool {
	return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err)
}

// errTakeStale: a take waited in the queue until what it was decided on
// no longer held (takeStands); nothing was written.
var errTakeStale = errors.New("take no longer stands")

// takeStands says why a take decided earlier must not be written now, or
// "" if it still stands: this agent is live and still a candidate, the
// last evaluation still found the contest free, the claim is as the take
// read it, and the beats that judged its holder do not say otherwise now.
//
// Takes wait in a queue behind each other (a re-home decides hundreds at
// once, and an API server under load writes a few dozen a second), and a
// claim's holder that was judged not live may be live again by then. The
// write is conditional on the claim's resourceVersion, but that does not
// catch it: a holder that comes back takes its claims back without
// writing them (already-holder), so the claim is unchanged and the write
// would take it from a live holder that answers for its VIPs. The beats
// are asked again here because a worker may take the job before the
// evaluation that follows the change of the beats has run.
func (e *Elector) takeStands(j job) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	// Not liveLocked: that moves the fence's state, which is the
	// evaluation's to move; the last evaluation's verdict, and the renew
	// deadline since, say the same here.
	if !e.wasLive || (!e.renewedLocked(e.now()) && !e.holdingThrough) {
		return "this agent is not live"
	}
	c, ok := e.contests[j.name]
	if !ok {
		return "the contest is gone"
	}
	switch notCandidate, refused, lacking := e.unfitLocked(j.name, c); {
	case notCandidate:
		return "this node is no longer a candidate"
	case refused:
		return "this node refuses it"
	case lacking:
		return "this node lacks " + c.Needs
	}
	if !e.eval.free[j.name] {
		return "the claim is held validly now"
	}
	o := e.leases[j.name]
	switch {
	case j.base == nil && o != nil:
		return "the claim was created meanwhile"
	case j.base != nil && (o == nil || o.lease.ResourceVersion != j.base.ResourceVersion):
		return "the claim changed meanwhile"
	}
	if e.cfg.Peers != nil && (j.why == TookHolderNotLive || j.why == TookHolderSilent) {
		r := e.cfg.Peers.Peer(holder(j.base))
		if r.Heard && r.Live {
			return "its holder is heard live again"
		}
	}
	return ""
}

func (e *Elector) do(ctx context.Context, j job) error {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.RenewDeadline)
	defer cancel()
	leases := e.cfg.Client.Leases(e.nsFor(j.name))
	log := e.log.With("contest", j.name)
	switch j.op {
	case opAcquire:
		prev := holder(j.base)
		if why := e.takeStands(j); why != "" {
			log.Info("not taking a claim after all: what the take was decided on no longer holds",
				"previous_holder", prev, "reason", j.why, "because", why)
			return errTakeStale
		}
		if j.why == TookHolderUnknown {
			log.Warn("taking over a claim whose holder has no vipd node Lease: another program (kube-vip?) wrote it, or the node was renamed",
				"previous_holder", prev)
		}
		e.noteTaking(j.name, prev, j.why)
		out, err := e.writeLease(ctx, j.name, KindClaim, j.base, nil, nil)
		e.noteTaken(j.name, out, err)
		if err != nil {
			if isRace(err) {
				log.Debug("claim changed before we could take it", "err", err)
			}
			return err
		}
		e.record(out)
		// The agent logs the decision, with the VIPs, when it acts on it.
		log.Debug("took claim", "previous_holder", prev, "reason", j.why)
	case opRelease:
		l := j.base.DeepCopy()
		empty := ""
		l.Spec.HolderIdentity = &empty
		e.mu.Lock()
		reason, refused := e.refused[j.name]
		lacks, lacking := e.lacking[e.contests[j.name].Needs]
		e.mu.Unlock()
		why := LostNotCandidate
		switch {
		case refused:
			why = LostRefused
		case lacking:
			why, reason = LostLacking, lacks
		}
		// Said before the write: the watch may show the release before
		// the write returns, and the agent acts on the reason then (a
		// node that may no longer hold a VIP hands it over make before
		// break).
		undo := e.noteReleasing(j.name, why)
		out, err := leases.Update(ctx, l, metav1.UpdateOptions{})
		if err != nil {
			undo()
			return err
		}
		e.record(out)
		// The agent logs the decision, with the VIPs.
		log.Debug("released claim", "reason", why, "refused_because", reason)
	case opDelete:
		rv := j.base.ResourceVersion
		err := leases.Delete(ctx, j.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		log.Info("deleted claim of a removed contest")
	}
	return nil
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

	leases := e.cfg.Client.Leases(e.nsFor(e.node))
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
			return fmt.Errorf("releasing node lease %s/%s: %w", e.nsFor(e.node), e.node, err)
		}
		cur, gerr := leases.Get(ctx, e.node, metav1.GetOptions{})
		if gerr != nil {
			return fmt.Errorf("releasing node lease %s/%s: %w", e.nsFor(e.node), e.node, gerr)
		}
		e.record(cur)
	}
}
