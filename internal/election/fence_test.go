package election

import (
	"context"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/kube/kubetest"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// stubPeers is a failure detector whose reports the test sets.
type stubPeers struct{ reports map[string]PeerReport }

func (p *stubPeers) Peer(node string) PeerReport { return p.reports[node] }
func (p *stubPeers) Vouched(string) bool         { return false }
func (p *stubPeers) Self() SelfReport            { return SelfReport{} }
func (p *stubPeers) Changes() <-chan struct{}    { return nil }
func (p *stubPeers) SetPeers(map[string]string)  {}
func (p *stubPeers) SetSelf(PeerReport)          {}

// fenceElector is n1's Elector on a fake clientset, on a clock the test
// moves, with n1's node Lease renewed last at the clock's start.
func fenceElector(t *testing.T, peers Peers) (*Elector, *time.Time) {
	t.Helper()
	e, err := New(Config{Client: kubetest.Wrap(fake.NewClientset()), Namespace: "ns", Identity: "n1", Peers: peers,
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
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: "1", Labels: map[string]string{LabelKind: KindClaim}},
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
