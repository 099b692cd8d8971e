package election

import (
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Reason says why this agent took or lost a contest. The values are stable:
// they are metric labels and log fields.
type Reason string

// Why a contest was taken.
const (
	// TookNew: no claim existed yet.
	TookNew Reason = "new"
	// TookReleased: the claim had no holder (its holder let go of it).
	TookReleased Reason = "released"
	// TookHolderReleased: the holder released its node Lease (it shut down).
	TookHolderReleased Reason = "holder-released"
	// TookHolderUnknown: the claim names a holder that has no node Lease
	// at all: another program wrote it (kube-vip), or the node was
	// renamed. It holds nothing vipd knows of, so the claim is free.
	TookHolderUnknown Reason = "holder-unknown"
	// TookHolderExpired: the holder's node Lease was not renewed within
	// the lease duration.
	TookHolderExpired Reason = "holder-expired"
	// TookHolderSilent: the holder's heartbeats stopped.
	TookHolderSilent Reason = "holder-silent"
	// TookHolderNotLive: the holder's heartbeats say it has let go.
	TookHolderNotLive Reason = "holder-not-live"
	// TookAlreadyHolder: the claim already named this node (the agent
	// restarted, or came back from an outage); nothing was written.
	TookAlreadyHolder Reason = "already-holder"
)

// Why a contest was lost.
const (
	// LostNotLive: this agent's node Lease was not renewed within the
	// renew deadline (or an outage hold ended).
	LostNotLive Reason = "not-live"
	// LostTaken: another agent holds the claim now.
	LostTaken Reason = "taken"
	// LostNotCandidate: this node may no longer hold it, so it released the
	// claim (e.g. externalTrafficPolicy: Local and no endpoint here).
	LostNotCandidate Reason = "not-candidate"
	// LostRefused: this node cannot hold it (SetRefused), so it released
	// the claim.
	LostRefused Reason = "refused"
	// LostLacking: this node lacks what the contest needs (SetLacking),
	// e.g. the interface its VIPs go on, so it released the claim.
	LostLacking Reason = "lacking"
	// LostRemoved: the contest is gone (its Service was deleted or changed).
	LostRemoved Reason = "removed"
	// LostShutdown: the agent is stopping and released everything.
	LostShutdown Reason = "shutdown"
)

// Report is the last change of one contest's holder that this agent took
// part in.
type Report struct {
	// Leading is whether the change made this agent the holder.
	Leading bool
	// Reason is why it took or lost the contest.
	Reason Reason
	// Previous is the holder before a take ("" for a new claim or one
	// without holder).
	Previous string
	// At is when the change happened, on this agent's clock: for a take,
	// when the claim write was sent.
	At time.Time
	// LeaseUID is the claim Lease's UID, after a take.
	LeaseUID types.UID
}

// Report returns the last change of the named contest that concerned this
// agent, or the zero Report.
func (e *Elector) Report(contest string) Report {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.reports[contest]
}

// Synced reports whether the Lease informer has synced: before that the
// agent takes part in no contest.
func (e *Elector) Synced() bool { return e.synced.Load() }

// takeReasonLocked says why the claim lease (nil: none) is free to take.
func (e *Elector) takeReasonLocked(lease *coordinationv1.Lease) Reason {
	h := holder(lease)
	switch {
	case lease == nil:
		return TookNew
	case h == "":
		return TookReleased
	}
	o := e.leases[NodeLeasePrefix+h]
	if o == nil {
		return TookHolderUnknown
	}
	if holder(o.lease) != h {
		return TookHolderReleased
	}
	if e.cfg.Peers != nil {
		// As peerLiveLocked judges: a silent holder that another agent
		// still hears is judged by its node Lease.
		if r := e.cfg.Peers.Peer(h); r.Silent && !e.cfg.Peers.Vouched(h) {
			return TookHolderSilent
		} else if r.Heard && !r.Live {
			return TookHolderNotLive
		}
	}
	return TookHolderExpired
}

// noteTaking records a claim write about to be sent: the watch may show
// its result before the write returns, and the status turns to leading
// then.
func (e *Elector) noteTaking(contest, previous string, why Reason) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reports[contest] = Report{Leading: true, Reason: why, Previous: previous, At: e.now()}
}

// noteTaken completes the report of a take with the outcome of its write.
func (e *Elector) noteTaken(contest string, claim *coordinationv1.Lease, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.reports[contest]
	switch {
	case !ok || !r.Leading:
	case err != nil && !e.status[contest].Leading:
		delete(e.reports, contest) // not taken: nothing to report
	case err == nil:
		r.LeaseUID = claim.UID
		e.reports[contest] = r
		e.noteTakenLocked(contest, r.Reason, claim)
	}
}

// noteReleasing records why a release about to be written gives the
// contest up on purpose; the status change that follows keeps the reason.
// undo puts the report back if the write fails and the contest is still
// held.
func (e *Elector) noteReleasing(contest string, why Reason) (undo func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	before, had := e.reports[contest]
	mine := Report{Reason: why, At: e.now()}
	e.reports[contest] = mine
	return func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.reports[contest] != mine || !e.status[contest].Leading {
			return
		}
		if had {
			e.reports[contest] = before
		} else {
			delete(e.reports, contest)
		}
	}
}

// noteLettingGoLocked records why this agent lets contest go, before its
// release is written (SetSilenced): the agent acts on the reason when the
// status stops Leading (a node that may no longer hold a VIP hands it
// over make before break). A reason already noted is kept.
func (e *Elector) noteLettingGoLocked(contest string, refused, lacking bool, now time.Time) {
	why := LostNotCandidate
	switch {
	case refused:
		why = LostRefused
	case lacking:
		why = LostLacking
	}
	if r, ok := e.reports[contest]; ok && !r.Leading && r.Reason == why {
		return
	}
	e.reports[contest] = Report{Reason: why, At: now}
}

// statusChange is one contest's status as an evaluation changed it.
type statusChange struct {
	name      string
	old, next Status
	gone      bool // the contest went away
}

// noteStatusLocked completes the reports of contests whose leading changed.
func (e *Elector) noteStatusLocked(changes []statusChange, meLive bool) {
	now := e.now()
	for _, ch := range changes {
		r := e.reports[ch.name]
		switch {
		case ch.next.Leading && !ch.old.Leading && !r.Leading:
			// Leading without a write of ours: the claim named us already.
			r = Report{Leading: true, Reason: TookAlreadyHolder, Previous: e.cfg.Identity, At: now}
			if o := e.leases[ch.name]; o != nil {
				r.LeaseUID = o.lease.UID
			}
			e.reports[ch.name] = r
		case ch.next.Leading && r.Leading && r.LeaseUID == "":
			// Our write's result came through the watch before the write
			// returned (noteTaken): the claim is the one we wrote.
			if o := e.leases[ch.name]; o != nil && holder(o.lease) == e.cfg.Identity {
				r.LeaseUID = o.lease.UID
				e.reports[ch.name] = r
			}
		case ch.old.Leading && !ch.next.Leading && r.Leading:
			// A deliberate release said why already (not r.Leading).
			why := LostTaken
			if ch.gone {
				why = LostRemoved
			} else if o := e.leases[ch.name]; !meLive || (o != nil && holder(o.lease) == e.cfg.Identity) {
				why = LostNotLive
			}
			e.reports[ch.name] = Report{Reason: why, At: now}
		}
		if ch.gone {
			if ch.old.Leading {
				// Kept for the agent to read once, then forgotten.
				e.eval.forget = append(e.eval.forget, ch.name)
			} else {
				delete(e.reports, ch.name)
			}
		}
	}
}

// noteShutdownLocked records that every contest held is given up because
// the agent stops.
func (e *Elector) noteShutdownLocked() {
	now := e.now()
	for name, st := range e.status {
		if st.Leading {
			e.reports[name] = Report{Reason: LostShutdown, At: now}
		}
	}
}

// ParseRefused reads a node Lease's AnnotationRefused: contest → reason.
// Something that does not parse refuses nothing.
func ParseRefused(v string) map[string]string { return parseRefused(v) }
