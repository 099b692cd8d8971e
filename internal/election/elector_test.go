package election

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Timings short enough for tests; Leases count whole seconds.
const (
	testLease = 2 * time.Second
	testRenew = 1 * time.Second
	testRetry = 200 * time.Millisecond
)

// newNamespace gives a test its own namespace: an Elector watches every
// Lease in its namespace.
func newNamespace(t *testing.T) string {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	name = fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%100000)
	c := newClient(t, nil)
	if _, err := c.Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return name
}

type agent struct {
	id     string
	e      *Elector
	cancel context.CancelFunc
	done   chan error
	dial   *cutDialer
	once   sync.Once
}

func startAgent(t *testing.T, ns, id string, contests ...Contest) *agent {
	t.Helper()
	d := &cutDialer{}
	return runAgent(t, id, Config{
		Client: newClient(t, d), Namespace: ns, Identity: id,
		LeaseDuration: testLease, RenewDeadline: testRenew, RetryPeriod: testRetry,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", id),
	}, d, contests)
}

// runAgent starts an Elector with cfg in the background until the test ends.
func runAgent(t *testing.T, id string, cfg Config, d *cutDialer, contests []Contest) *agent {
	t.Helper()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.SetContests(contests)
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{id: id, e: e, cancel: cancel, done: make(chan error, 1), dial: d}
	go func() { a.done <- e.Run(ctx) }()
	t.Cleanup(a.stop)
	return a
}

// stop ends the agent without releasing anything, as a crash would.
func (a *agent) stop() {
	a.once.Do(func() {
		a.cancel()
		<-a.done
	})
}

func holders(name string, as ...*agent) []string {
	var ids []string
	for _, a := range as {
		if a.e.Status(name).Leading {
			ids = append(ids, a.id)
		}
	}
	return ids
}

func claimHolder(t *testing.T, ns, name string) string {
	t.Helper()
	l, err := newClient(t, nil).Leases(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return holder(l)
}

func TestOneHolderAndTheClaimNamesIt(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	cp := Contest{Name: "plndr-cp-lock"}
	as := []*agent{startAgent(t, ns, "a", cp), startAgent(t, ns, "b", cp), startAgent(t, ns, "c", cp)}
	waitFor(t, 5*time.Second, "a holder", func() bool { return len(holders(cp.Name, as...)) == 1 })
	// Over several renewals there is never a second holder.
	for end := time.Now().Add(2 * testRenew); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if h := holders(cp.Name, as...); len(h) != 1 {
			t.Fatalf("holders = %v, want exactly one", h)
		}
	}
	h := holders(cp.Name, as...)[0]
	if got := claimHolder(t, ns, cp.Name); got != h {
		t.Fatalf("claim names %q, holder is %q", got, h)
	}
	for _, a := range as {
		if s := a.e.Status(cp.Name); s.Leader != h {
			t.Errorf("%s sees leader %q, want %q", a.id, s.Leader, h)
		}
	}
}

func TestReleaseHandsOverAtOnce(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	cp := Contest{Name: "cp"}
	a := startAgent(t, ns, "a", cp)
	waitFor(t, 5*time.Second, "a holds", func() bool { return a.e.Status(cp.Name).Leading })
	b := startAgent(t, ns, "b", cp)
	waitFor(t, 5*time.Second, "b sees a", func() bool { return b.e.Status(cp.Name).Leader == "a" })

	began := time.Now()
	if err := a.e.Release(context.Background()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if a.e.Status(cp.Name).Leading {
		t.Fatal("a still holds after Release returned")
	}
	took := waitFor(t, testLease, "b holds", func() bool { return b.e.Status(cp.Name).Leading })
	t.Logf("handover after release took %v", time.Since(began))
	// Far quicker than expiry: the release is seen through the watch.
	if took >= testRetry {
		t.Fatalf("b took %v to hold after the release; the watch should make it immediate", took)
	}
}

func TestCrashedHolderIsReplacedOnlyAfterExpiry(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	cp := Contest{Name: "cp"}
	a := startAgent(t, ns, "a", cp)
	waitFor(t, 5*time.Second, "a holds", func() bool { return a.e.Status(cp.Name).Leading })
	b := startAgent(t, ns, "b", cp)
	waitFor(t, 5*time.Second, "b sees a", func() bool { return b.e.Status(cp.Name).Leader == "a" })

	a.stop() // no release: the node Lease and the claim still name a
	took := waitFor(t, 3*testLease, "b holds", func() bool { return b.e.Status(cp.Name).Leading })
	t.Logf("b held %v after a crashed", took)
	// b saw a's last renewal at most half a renew deadline before the crash.
	if took < testLease-testRenew/2-50*time.Millisecond {
		t.Fatalf("b held %v after the crash, before a's node Lease (%v) could have expired", took, testLease)
	}
	if got := claimHolder(t, ns, cp.Name); got != "b" {
		t.Fatalf("claim names %q, want b", got)
	}
}

func TestPartitionedHolderLetsGoByRenewDeadline(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	cp := Contest{Name: "cp"}
	a := startAgent(t, ns, "a", cp)
	waitFor(t, 5*time.Second, "a holds", func() bool { return a.e.Status(cp.Name).Leading })
	b := startAgent(t, ns, "b", cp)
	waitFor(t, 5*time.Second, "b sees a", func() bool { return b.e.Status(cp.Name).Leader == "a" })

	a.dial.setCut(true)
	stepDown := waitFor(t, 2*testRenew, "a lets go", func() bool { return !a.e.Status(cp.Name).Leading })
	t.Logf("a let go %v after the partition", stepDown)
	if stepDown > testRenew+100*time.Millisecond {
		t.Fatalf("a let go after %v, later than its renew deadline %v", stepDown, testRenew)
	}
	waitFor(t, 3*testLease, "b holds", func() bool {
		if a.e.Status(cp.Name).Leading {
			t.Fatal("partitioned a holds again")
		}
		return b.e.Status(cp.Name).Leading
	})
	// Healed, a follows b and does not take the claim back, not even for
	// the moment its renewals work again while its view of the claims
	// is still the one from before the partition.
	a.dial.setCut(false)
	waitFor(t, 5*time.Second, "a sees b", func() bool {
		if a.e.Status(cp.Name).Leading {
			t.Fatal("healed a holds again from its view of before the partition")
		}
		return a.e.Status(cp.Name).Leader == "b"
	})
	for end := time.Now().Add(3 * testRetry); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if h := holders(cp.Name, a, b); len(h) != 1 || h[0] != "b" {
			t.Fatalf("holders after healing = %v, want [b]", h)
		}
	}
}

func manyContests(n int) []Contest {
	var cs []Contest
	for i := range n {
		cs = append(cs, Contest{Name: fmt.Sprintf("vipd-192-0-2-%d", i)})
	}
	return cs
}

// heldBy counts contests per holder and fails on any contest held by zero
// or several agents.
func heldBy(cs []Contest, as ...*agent) (map[string]int, error) {
	count := map[string]int{}
	for _, c := range cs {
		h := holders(c.Name, as...)
		if len(h) != 1 {
			return nil, fmt.Errorf("%s held by %v", c.Name, h)
		}
		count[h[0]]++
	}
	return count, nil
}

func TestManyContestsSpreadAndMoveOnNodeLoss(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	cs := manyContests(50)
	// As in a cluster: the agents run, then the Services appear.
	as := []*agent{startAgent(t, ns, "a"), startAgent(t, ns, "b"), startAgent(t, ns, "c")}
	waitFor(t, 5*time.Second, "every agent sees all three live", func() bool {
		for _, a := range as {
			if len(a.e.Members()) != 3 {
				return false
			}
		}
		return true
	})
	for _, a := range as {
		a.e.SetContests(cs)
	}
	var spread map[string]int
	took := waitFor(t, 10*time.Second, "every contest held once", func() bool {
		var err error
		spread, err = heldBy(cs, as...)
		return err == nil
	})
	t.Logf("50 contests held after %v, spread %v", took, spread)
	for id, n := range spread {
		if n > 50/3+1+2 {
			t.Errorf("%s holds %d of 50", id, n)
		}
	}

	// Lose the agent with the most; only its contests move.
	victim := slices.MaxFunc(as, func(x, y *agent) int { return spread[x.id] - spread[y.id] })
	before := map[string]string{}
	for _, c := range cs {
		before[c.Name] = holders(c.Name, as...)[0]
	}
	victim.stop()
	var rest []*agent
	for _, a := range as {
		if a != victim {
			rest = append(rest, a)
		}
	}
	waitFor(t, 4*testLease, "the lost agent's contests held again", func() bool {
		_, err := heldBy(cs, rest...)
		return err == nil
	})
	after, _ := heldBy(cs, rest...)
	t.Logf("after losing %s: %v", victim.id, after)
	for _, c := range cs {
		now := holders(c.Name, rest...)[0]
		if before[c.Name] != victim.id && now != before[c.Name] {
			t.Errorf("%s moved from %s to %s, though its holder was not lost", c.Name, before[c.Name], now)
		}
	}
}

func TestCandidatesRestrictTheHolder(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	c := Contest{Name: "local", Candidates: []string{"b"}}
	a, b, x := startAgent(t, ns, "a", c), startAgent(t, ns, "b", c), startAgent(t, ns, "c", c)
	waitFor(t, 5*time.Second, "b holds", func() bool { return b.e.Status(c.Name).Leading })

	// The endpoints move to c: b lets go, c takes it, a never does.
	c2 := Contest{Name: "local", Candidates: []string{"c"}}
	for _, ag := range []*agent{a, b, x} {
		ag.e.SetContests([]Contest{c2})
	}
	waitFor(t, 5*time.Second, "c holds", func() bool {
		if a.e.Status(c.Name).Leading {
			t.Fatal("a holds a contest it is not a candidate for")
		}
		return x.e.Status(c.Name).Leading && !b.e.Status(c.Name).Leading
	})
	if got := claimHolder(t, ns, c.Name); got != "c" {
		t.Fatalf("claim names %q, want c", got)
	}
}

func TestRemovedContestLeavesNoClaim(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	keep, gone := Contest{Name: "keep"}, Contest{Name: "gone"}
	a := startAgent(t, ns, "a", keep, gone)
	waitFor(t, 5*time.Second, "a holds both", func() bool {
		return a.e.Status(keep.Name).Leading && a.e.Status(gone.Name).Leading
	})
	a.e.SetContests([]Contest{keep})
	leases := newClient(t, nil).Leases(ns)
	waitFor(t, 5*time.Second, "the claim deleted", func() bool {
		_, err := leases.Get(context.Background(), gone.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if !a.e.Status(keep.Name).Leading {
		t.Fatal("a lost the contest it kept")
	}
}
