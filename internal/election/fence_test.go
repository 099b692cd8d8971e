package election

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/kube/kubetest"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

// TestTakeAfterRenewalsRecoverIsNotHeldBack: once renewals work again
// after failing (or after one was slow), a claim this agent's view shows
// as its own is held back until every Lease is read afresh — but not a
// claim this agent took itself after that: the API server accepted that
// write on the claim's current version. A take whose write began before
// renewals came back is held back like any other view of before.
func TestTakeAfterRenewalsRecoverIsNotHeldBack(t *testing.T) {
	cs := fake.NewClientset()
	rv := 1
	cs.PrependReactor("update", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		rv++ // as the API server does; the fake keeps the version given
		a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease).ResourceVersion = strconv.Itoa(rv)
		return false, nil, nil
	})
	e, err := New(Config{Client: kubetest.Wrap(cs), Namespace: "ns", Identity: "n1",
		LeaseDuration: 5 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	e.now = func() time.Time { return clock }
	e.started = clock.Add(-time.Minute)
	e.apiOK = true
	lease := func(name, kind, holder string) *coordinationv1.Lease {
		return &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: "1", Labels: map[string]string{LabelKind: kind}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To(int32(5))}}
	}
	// n3 renewed last 10 s ago: its claims are free to take.
	e.record(lease(NodeLeasePrefix+"n3", KindNode, "n3"))
	clock = clock.Add(10 * time.Second)
	e.lastRenew = clock
	for _, n := range []string{"n1", "n2"} {
		e.record(lease(NodeLeasePrefix+n, KindNode, n))
	}
	// "early" and "late" are the lost n3's, and only n1 may hold them or
	// "mine", whose Lease comes later.
	for _, c := range []*coordinationv1.Lease{lease("early", KindClaim, "n3"), lease("late", KindClaim, "n3")} {
		if _, err := cs.CoordinationV1().Leases("ns").Create(context.Background(), c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		e.record(c)
	}
	only := []string{"n1"}
	e.SetContests([]Contest{{Name: "mine", Candidates: only}, {Name: "early", Candidates: only}, {Name: "late", Candidates: only}})

	inflight, freeSince, retryAt := map[string]bool{}, map[string]time.Time{}, map[string]time.Time{}
	take := func(name string) {
		t.Helper()
		jobs, _ := e.evaluate(inflight, freeSince, retryAt)
		for _, j := range jobs {
			if j.name == name && j.op == opAcquire {
				if err := e.do(context.Background(), j); err != nil {
					t.Fatalf("taking %s: %v", name, err)
				}
				return
			}
		}
		t.Fatalf("no take of %s among the writes %v", name, jobNames(jobs))
	}
	recovered := func() {
		e.mu.Lock()
		e.apiRecoveredLocked(clock)
		e.mu.Unlock()
	}
	leading := func(name string) bool {
		e.evaluate(inflight, freeSince, retryAt)
		return e.Status(name).Leading
	}

	// "early" is taken, then renewals fail and work again before the
	// agent acts on the take.
	take("early")
	clock = clock.Add(100 * time.Millisecond)
	recovered()
	clock = clock.Add(100 * time.Millisecond)
	take("late")
	// The watch brings "mine" as it was before renewals failed: n1's.
	e.record(lease("mine", KindClaim, "n1"))
	if leading("mine") {
		t.Error("holds the claim it read before renewals failed, before reading every Lease afresh")
	}
	if leading("early") {
		t.Error("holds a claim whose take was written before renewals worked again, before reading every Lease afresh")
	}
	if !leading("late") {
		t.Error("does not hold the claim it took after renewals worked again")
	}

	// Every Lease read afresh: the rest is held too.
	e.mu.Lock()
	e.fence.freshAt = clock
	e.mu.Unlock()
	clock = clock.Add(time.Millisecond)
	if !leading("mine") || !leading("early") {
		t.Error("holds back its claims after reading every Lease afresh")
	}
}

// TestOnlyALapseFencesTheView: renewals that failed or were slow but
// worked again within the renew deadline leave this agent's view of the
// claims trusted — no other agent took anything from a live agent, and
// under the load of a re-home a renewal slower than half a retry period
// is common. Once the agent went past its deadline, the view is fenced
// until every Lease is read afresh.
func TestOnlyALapseFencesTheView(t *testing.T) {
	e, err := New(Config{Client: kubetest.Wrap(fake.NewClientset()), Namespace: "ns", Identity: "n1",
		LeaseDuration: 5 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	e.now = func() time.Time { return clock }
	stale := func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.staleSinceAPIBackLocked()
	}
	for _, c := range []struct {
		name    string
		sinceOK time.Duration // since the last renewal that worked
		want    bool
	}{
		{"failed, then renewed in time", 2 * time.Second, false},
		{"renewed past the renew deadline", 3 * time.Second, true},
	} {
		clock = clock.Add(time.Minute)
		e.mu.Lock()
		e.fence.freshAt = clock // every Lease read afresh just now
		e.mu.Unlock()
		clock = clock.Add(time.Millisecond)
		e.setAPIOK(false, false) // a renewal failed, or was slow
		if stale() {
			t.Fatalf("%s: the view is fenced while the API server does not answer", c.name)
		}
		if err := e.renew(context.Background(), clock.Add(-c.sinceOK), clock); err != nil {
			t.Fatal(err)
		}
		if got := stale(); got != c.want {
			t.Errorf("%s: view to be read afresh = %v, want %v", c.name, got, c.want)
		}
	}
}
