package election

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/kube/kubetest"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// stubPeers is a failure detector whose reports the test sets.
type stubPeers struct {
	reports map[string]PeerReport
	vouched map[string]bool
}

func (p *stubPeers) Peer(node string) PeerReport { return p.reports[node] }
func (p *stubPeers) Vouched(node string) bool    { return p.vouched[node] }
func (p *stubPeers) Self() SelfReport            { return SelfReport{} }
func (p *stubPeers) Changes() <-chan struct{}    { return nil }
func (p *stubPeers) SetPeers(map[string]string)  {}
func (p *stubPeers) SetSelf(PeerReport)          {}

// fenceElector is n1's Elector on a fake clientset, on a clock the test
// moves, with n1's node Lease renewed last at the clock's start.
func fenceElector(t *testing.T, peers Peers) (*Elector, *time.Time) {
	t.Helper()
	return fenceElectorOn(t, kubetest.Wrap(fake.NewClientset()), "ns", peers)
}

// fenceElectorOn is fenceElector on the given client and namespace.
func fenceElectorOn(t *testing.T, client kube.Interface, ns string, peers Peers) (*Elector, *time.Time) {
	t.Helper()
	e, err := New(Config{Client: client, Namespace: ns, Identity: "n1", Peers: peers,
		LeaseDuration: 5 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	e.now = func() time.Time { return clock }
	e.started = clock.Add(-time.Minute)
	if err := e.renew(context.Background(), time.Time{}, clock); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.fence.freshAt = clock.Add(time.Millisecond) // the first read of every Lease
	e.mu.Unlock()
	clock = clock.Add(time.Second)
	return e, &clock
}

func claimOf(name, holder string) *coordinationv1.Lease {
	return claimIn("ns", name, holder)
}

func claimIn(ns, name, holder string) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1", Labels: map[string]string{LabelKind: KindClaim}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To(int32(5))}}
}

// TestRecoveryOrLapseFencesTheClaims: once renewals work again after
// failing, or after this agent went past its renew deadline — even with
// no renewal failing, as when its process was stopped — it holds none of
// the claims its view shows as its own until it has read every Lease
// afresh: the others may have taken them meanwhile. The lapse is noted
// under the same lock as the renewal that ends it.
func TestRecoveryOrLapseFencesTheClaims(t *testing.T) {
	inflight, freeSince, retryAt := map[string]bool{}, map[string]time.Time{}, map[string]time.Time{}
	leading := func(e *Elector, name string) bool {
		e.evaluate(inflight, freeSince, retryAt)
		return e.Status(name).Leading
	}
	readAfresh := func(e *Elector, clock *time.Time) {
		e.mu.Lock()
		e.fence.freshAt = clock.Add(time.Millisecond)
		e.mu.Unlock()
		*clock = clock.Add(2 * time.Millisecond)
	}

	// A renewal failed (or was slow) and the next worked in time.
	e, clock := fenceElector(t, nil)
	e.SetContests([]Contest{{Name: "mine", Candidates: []string{"n1"}}})
	e.setAPIOK(false)
	*clock = clock.Add(time.Second)
	if err := e.renew(context.Background(), clock.Add(-2*time.Second), *clock); err != nil {
		t.Fatal(err)
	}
	e.record(claimOf("mine", "n1"))
	if leading(e, "mine") {
		t.Error("holds a claim from its view of before renewals failed, before reading every Lease afresh")
	}
	readAfresh(e, clock)
	if !leading(e, "mine") {
		t.Error("the claim is still held back after every Lease was read afresh")
	}

	// Past the deadline with no renewal failing: the process was stopped.
	e, clock = fenceElector(t, nil)
	e.SetContests([]Contest{{Name: "mine", Candidates: []string{"n1"}}})
	e.record(claimOf("mine", "n1"))
	if !leading(e, "mine") {
		t.Fatal("does not hold its claim while live")
	}
	*clock = clock.Add(3 * time.Second) // 4 s since the last renewal
	if leading(e, "mine") {
		t.Fatal("holds a claim past its renew deadline")
	}
	if err := e.renew(context.Background(), clock.Add(-4*time.Second), *clock); err != nil {
		t.Fatal(err)
	}
	if leading(e, "mine") {
		t.Error("holds a claim from its view of before the lapse, before reading every Lease afresh")
	}
	readAfresh(e, clock)
	if !leading(e, "mine") {
		t.Error("the claim is still held back after every Lease was read afresh")
	}
}

// TestBriefFailureKeepsOutageGrace: a peer heard saying it cannot reach
// the API server, whose node Lease looks expired, may be riding out a
// shared outage. Once this agent's own renewals work again — even without
// a lapse — it is still counted live until every Lease is read afresh and
// a retry period more has passed: time for the beat that tells it to let
// go or renew.
func TestBriefFailureKeepsOutageGrace(t *testing.T) {
	peers := &stubPeers{reports: map[string]PeerReport{"n2": {Heard: true, Live: true}}}
	e, clock := fenceElector(t, peers)
	e.record(&coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: NodeLeasePrefix + "n2", ResourceVersion: "1", Labels: map[string]string{LabelKind: KindNode}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("n2"), LeaseDurationSeconds: ptr.To(int32(5))}})
	// Renewed in time until n2's Lease looks expired (n2 says, in its
	// beats, that it cannot reach the API server: not APIOK).
	for range 3 {
		*clock = clock.Add(2 * time.Second)
		if err := e.renew(context.Background(), clock.Add(-2*time.Second), *clock); err != nil {
			t.Fatal(err)
		}
	}
	e.mu.Lock()
	stale := e.staleSinceAPIBackLocked()
	e.mu.Unlock()
	if stale {
		t.Fatal("the view counts as stale with every renewal in time")
	}
	e.setAPIOK(false) // this agent's renewal fails, and the next works in time
	*clock = clock.Add(500 * time.Millisecond)
	if err := e.renew(context.Background(), clock.Add(-2500*time.Millisecond), *clock); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	live, why := e.peerLiveLocked("n2", false, *clock)
	e.mu.Unlock()
	if !live {
		t.Errorf("n2, heard riding out an outage, judged not live (%s) right after this agent's renewals worked again", why)
	}
}

// TestFreshTakeNotFenced: after a renewal that was slow or failed, a claim
// this agent's own write has just taken is held at once when the take
// rests on the claim or on authenticated beats (here: its holder went
// silent) — the write succeeded only if the claim was as read, so it is no
// stale view. Held back as before: a take that rests on node Leases (the
// holder's looked expired), every take after a lapse, a claim that changed
// after the take, and one whose first evaluation did not hold it (a
// release may have followed); and once held, a claim is fenced like any
// other at the next recovery. On the real API server: the claim's
// resourceVersion is what tells the take's result from an older view.
func TestFreshTakeNotFenced(t *testing.T) {
	client := newClient(t, nil)
	ctx := context.Background()
	inflight, freeSince, retryAt := map[string]bool{}, map[string]time.Time{}, map[string]time.Time{}
	leading := func(e *Elector, name string) bool {
		e.evaluate(inflight, freeSince, retryAt)
		return e.Status(name).Leading
	}
	// setup: n2 held the claim "c" and its node Lease is n2's; the
	// failure detector says of n2 what n2 is given. n1's renewal was slow
	// (apiOK false) and the next one worked, so its view counts as stale
	// until every Lease is read afresh.
	setup := func(t *testing.T, n2 PeerReport) (*Elector, *time.Time, string) {
		peers := &stubPeers{reports: map[string]PeerReport{"n2": n2}}
		ns := newNamespace(t)
		e, clock := fenceElectorOn(t, client, ns, peers)
		e.SetContests([]Contest{{Name: "c", Candidates: []string{"n1", "n2"}}})
		n2HoldsC(t, e, client, ns)
		e.setAPIOK(false)
		*clock = clock.Add(500 * time.Millisecond)
		if err := e.renew(ctx, clock.Add(-1500*time.Millisecond), *clock); err != nil {
			t.Fatal(err)
		}
		return e, clock, ns
	}
	// take writes the claim as the write loop does, for the reason the
	// election gives.
	take := func(t *testing.T, e *Elector, want Reason) {
		t.Helper()
		e.evaluate(inflight, freeSince, retryAt) // decides the take
		e.mu.Lock()
		base := e.leases["c"].lease
		why := e.takeReasonLocked(base)
		e.mu.Unlock()
		if why != want {
			t.Fatalf("take reason %q, want %q", why, want)
		}
		if err := e.do(ctx, job{name: "c", base: base, op: opAcquire, why: why}); err != nil {
			t.Fatal(err)
		}
	}
	silent := PeerReport{Silent: true}

	e, clock, ns := setup(t, silent)
	take(t, e, TookHolderSilent)
	if !leading(e, "c") {
		t.Error("a claim just taken from a silent holder is held back after a slow renewal")
	}
	e.mu.Lock()
	fresh := e.takenFreshLocked("c", e.leases["c"].lease)
	e.mu.Unlock()
	if fresh {
		t.Error("a claim still counts as just taken once it is held")
	}

	e, _, _ = setup(t, PeerReport{}) // never heard: its node Lease decides
	e.mu.Lock()
	e.leases[NodeLeasePrefix+"n2"].seen = e.now().Add(-time.Minute) // and has expired
	e.mu.Unlock()
	take(t, e, TookHolderExpired)
	if leading(e, "c") {
		t.Error("a claim taken because its holder's node Lease looked expired is held before every Lease is read afresh")
	}

	// A lapse past the renew deadline: the others may have judged this
	// agent dead, whatever it took.
	e, clock, _ = setup(t, silent)
	*clock = clock.Add(4 * time.Second)
	if err := e.renew(ctx, clock.Add(-4*time.Second), *clock); err != nil {
		t.Fatal(err)
	}
	take(t, e, TookHolderSilent)
	if leading(e, "c") {
		t.Error("a claim taken after a lapse is held before every Lease is read afresh")
	}

	// The claim was written again after the take: not the take's version.
	e, _, ns = setup(t, silent)
	take(t, e, TookHolderSilent)
	e.mu.Lock()
	cur := e.leases["c"].lease.DeepCopy()
	e.mu.Unlock()
	cur.Annotations = map[string]string{"test": "written again"}
	again, err := client.Leases(ns).Update(ctx, cur, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.record(again)
	if leading(e, "c") {
		t.Error("a claim written again after the take is held before every Lease is read afresh")
	}

	// The first evaluation after the take does not hold it (this node is
	// no candidate any more, and releases it); candidate again, the claim
	// as its view shows it may have been released and taken unseen.
	e, _, _ = setup(t, silent)
	e.SetSilenced(func(string) bool { return true })
	take(t, e, TookHolderSilent)
	e.SetContests([]Contest{{Name: "c", Candidates: []string{"n2"}}})
	if leading(e, "c") {
		t.Fatal("holds a claim it is no candidate for")
	}
	e.SetContests([]Contest{{Name: "c", Candidates: []string{"n1", "n2"}}})
	if leading(e, "c") {
		t.Error("a claim whose first evaluation after the take did not hold it is held before every Lease is read afresh")
	}
}

// TestSilentTakeReason: a take is said to rest on its holder's silence
// only when that is what judged the holder dead — silent, and no other
// agent hears it; otherwise its node Lease decided (holder-expired), and
// such a take stays behind the fence.
func TestSilentTakeReason(t *testing.T) {
	peers := &stubPeers{reports: map[string]PeerReport{"n2": {Silent: true}}, vouched: map[string]bool{}}
	e, _ := fenceElector(t, peers)
	e.record(&coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: NodeLeasePrefix + "n2", ResourceVersion: "1", Labels: map[string]string{LabelKind: KindNode}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("n2"), LeaseDurationSeconds: ptr.To(int32(5))}})
	reason := func() Reason {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.takeReasonLocked(claimOf("c", "n2"))
	}
	if got := reason(); got != TookHolderSilent {
		t.Errorf("holder silent, heard by nobody: reason %q, want %q", got, TookHolderSilent)
	}
	peers.vouched["n2"] = true
	if got := reason(); got != TookHolderExpired {
		t.Errorf("holder silent here but heard by another agent: reason %q, want %q", got, TookHolderExpired)
	}
}

// n2HoldsC gives n2 a node Lease in e's view, renewed now, and a claim
// "c" on the API server, in e's view too.
func n2HoldsC(t *testing.T, e *Elector, client kube.Interface, ns string) {
	t.Helper()
	e.record(&coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: NodeLeasePrefix + "n2", ResourceVersion: "1", Labels: map[string]string{LabelKind: KindNode}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("n2"), LeaseDurationSeconds: ptr.To(int32(5))}})
	claim := claimIn(ns, "c", "n2")
	claim.ResourceVersion = ""
	c, err := client.Leases(ns).Create(context.Background(), claim, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.record(c)
}

// TestQueuedTakeDroppedWhenHolderIsBack: a take waits in the queue behind
// others; if its holder, judged not live when it was decided, is live
// again before it is written, it is not written. The holder took its claim
// back without writing it (already-holder), so the conditional write alone
// would have succeeded and taken the claim from a live holder that answers
// for its VIPs (seen at 5,000 Services x 10 nodes, docs/scale-runs-2.md).
// On the real API server, whose write is conditional on the version read.
func TestQueuedTakeDroppedWhenHolderIsBack(t *testing.T) {
	client := newClient(t, nil)
	ctx := context.Background()
	ns := newNamespace(t)
	peers := &stubPeers{reports: map[string]PeerReport{"n2": {Heard: true, APIOK: true, Live: false}}}
	e, _ := fenceElectorOn(t, client, ns, peers)
	e.SetContests([]Contest{{Name: "c"}})
	n2HoldsC(t, e, client, ns)

	inflight, freeSince, retryAt := map[string]bool{}, map[string]time.Time{}, map[string]time.Time{}
	decide := func() job {
		t.Helper()
		jobs, _ := e.evaluate(inflight, freeSince, retryAt)
		if len(jobs) != 1 || jobs[0].name != "c" || jobs[0].op != opAcquire || jobs[0].why != TookHolderNotLive {
			t.Fatalf("jobs = %+v, want one take of c from a holder that is not live", jobs)
		}
		inflight["c"] = true // queued, as Run marks it
		return jobs[0]
	}
	j := decide()
	// n2 is live again before the take is written, and still holds c.
	peers.reports["n2"] = PeerReport{Heard: true, APIOK: true, Live: true}
	e.evaluate(inflight, freeSince, retryAt)
	if s := e.Status("c"); s.Leader != "n2" {
		t.Fatalf("status %+v once n2 is live again, want n2 leading", s)
	}
	if err := e.do(ctx, j); !errors.Is(err, errTakeStale) {
		t.Fatalf("queued take written after its holder came back: err %v, want %v", err, errTakeStale)
	}
	if h := claimHolder(t, ns, "c"); h != "n2" {
		t.Fatalf("claim holder %q after the dropped take, want n2", h)
	}
	if e.Report("c").Leading {
		t.Error("a dropped take is reported as taken")
	}

	// n2 is heard live again, but no evaluation has run since (a worker
	// took the job first): the beats are asked again.
	delete(inflight, "c")
	peers.reports["n2"] = PeerReport{Heard: true, APIOK: true, Live: false}
	j = decide()
	peers.reports["n2"] = PeerReport{Heard: true, APIOK: true, Live: true}
	if err := e.do(ctx, j); !errors.Is(err, errTakeStale) {
		t.Fatalf("take written after its holder was heard live again, before an evaluation: err %v, want %v", err, errTakeStale)
	}
	// This node stopped being a candidate while the take waited.
	peers.reports["n2"] = PeerReport{Heard: true, APIOK: true, Live: false}
	e.evaluate(inflight, freeSince, retryAt)
	e.SetContests([]Contest{{Name: "c", Candidates: []string{"n2", "n3"}}})
	if err := e.do(ctx, j); !errors.Is(err, errTakeStale) {
		t.Fatalf("take written for a node that is no candidate any more: err %v, want %v", err, errTakeStale)
	}
	if h := claimHolder(t, ns, "c"); h != "n2" {
		t.Fatalf("claim holder %q after the dropped takes, want n2", h)
	}
	// A dropped take is decided afresh at once: no backoff, no failure
	// counted.
	if d := e.retryDelay(result{name: "c", op: opAcquire, err: errTakeStale}); d != 0 || e.retries.Failures("c") != 0 {
		t.Errorf("a dropped take waits %v and counts %d failures, want neither", d, e.retries.Failures("c"))
	}

	// The take still stands when its holder is still not live: written.
	e.SetContests([]Contest{{Name: "c"}})
	delete(inflight, "c")
	peers.reports["n2"] = PeerReport{Heard: true, APIOK: true, Live: false}
	j = decide()
	if err := e.do(ctx, j); err != nil {
		t.Fatalf("a take that still stands: %v", err)
	}
	if h := claimHolder(t, ns, "c"); h != "n1" {
		t.Fatalf("claim holder %q after the take, want n1", h)
	}
}
