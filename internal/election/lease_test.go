package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/vipd/vipd/internal/lab/controlplane"
)

// The tests share one real API server; each uses a Lease of its own.
var (
	cp    *controlplane.ControlPlane
	cpErr error
)

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	cp, cpErr = controlplane.Start(ctx, controlplane.Options{})
	cancel()
	code := m.Run()
	if cp != nil {
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping control plane:", err)
		}
	}
	os.Exit(code)
}

func needAPI(t *testing.T) {
	t.Helper()
	if errors.Is(cpErr, controlplane.ErrAssetsMissing) && os.Getenv("CI") != "true" {
		t.Skipf("skipping: %v", cpErr)
	}
	if cpErr != nil {
		t.Fatalf("control plane: %v", cpErr)
	}
}

// cutDialer lets a test cut one client off the API server, as a network
// partition would: open connections break and new ones fail.
type cutDialer struct {
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func (d *cutDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cut {
		return nil, errors.New("test partition: API server unreachable")
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		d.conns = append(d.conns, c)
	}
	return c, err
}

func (d *cutDialer) setCut(cut bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cut = cut
	if cut {
		for _, c := range d.conns {
			c.Close()
		}
		d.conns = nil
	}
}

func newClient(t *testing.T, d *cutDialer) kubernetes.Interface {
	t.Helper()
	rc := rest.CopyConfig(cp.Config())
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	if d != nil {
		rc.Dial = d.DialContext
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type candidate struct {
	id     string
	e      *LeaseElection
	cancel context.CancelFunc
	done   chan error
	dial   *cutDialer
	once   sync.Once
}

// timings short enough for tests; the Lease itself counts whole seconds.
const (
	testLease = 2 * time.Second
	testRenew = 1 * time.Second
	testRetry = 200 * time.Millisecond
)

func start(t *testing.T, lease, id string) *candidate {
	t.Helper()
	d := &cutDialer{}
	e, err := NewLease(LeaseConfig{
		Client: newClient(t, d), Namespace: "default", Name: lease, Identity: id,
		LeaseDuration: testLease, RenewDeadline: testRenew, RetryPeriod: testRetry,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", id),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{id: id, e: e, cancel: cancel, done: make(chan error, 1), dial: d}
	go func() { c.done <- e.Run(ctx) }()
	t.Cleanup(c.stop)
	return c
}

// stop ends the candidate without releasing, as a crash would.
func (c *candidate) stop() {
	c.once.Do(func() {
		c.cancel()
		<-c.done
	})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	began := time.Now()
	for !cond() {
		if time.Since(began) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(began)
}

func leaders(cs ...*candidate) []string {
	var ids []string
	for _, c := range cs {
		if c.e.Status().Leading {
			ids = append(ids, c.id)
		}
	}
	return ids
}

func getLease(t *testing.T, name string) *coordinationv1.Lease {
	t.Helper()
	l, err := newClient(t, nil).CoordinationV1().Leases("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestOneLeaderAndTheLeaseNamesIt(t *testing.T) {
	needAPI(t)
	a, b, c := start(t, "one-leader", "a"), start(t, "one-leader", "b"), start(t, "one-leader", "c")
	waitFor(t, 5*time.Second, "a leader", func() bool { return len(leaders(a, b, c)) == 1 })
	// Over several renewals there is never a second leader.
	deadline := time.Now().Add(3 * testRetry * 5)
	for time.Now().Before(deadline) {
		if l := leaders(a, b, c); len(l) != 1 {
			t.Fatalf("leaders = %v, want exactly one", l)
		}
		time.Sleep(10 * time.Millisecond)
	}
	leader := leaders(a, b, c)[0]
	if got := holder(getLease(t, "one-leader")); got != leader {
		t.Fatalf("Lease holder = %q, leader = %q", got, leader)
	}
	for _, x := range []*candidate{a, b, c} {
		if s := x.e.Status(); s.Leader != leader {
			t.Errorf("%s sees leader %q, want %q", x.id, s.Leader, leader)
		}
	}
}

func TestReleaseHandsOverAtOnce(t *testing.T) {
	needAPI(t)
	a := start(t, "release", "a")
	waitFor(t, 5*time.Second, "a leads", func() bool { return a.e.Status().Leading })
	b := start(t, "release", "b")
	waitFor(t, 5*time.Second, "b sees a", func() bool { return b.e.Status().Leader == "a" })

	began := time.Now()
	if err := a.e.Release(context.Background()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if a.e.Status().Leading {
		t.Fatal("a still leads after Release returned")
	}
	took := waitFor(t, testLease, "b leads", func() bool { return b.e.Status().Leading })
	t.Logf("handover after release took %v", time.Since(began))
	// Far quicker than expiry: the release is seen through the watch.
	if took >= testRenew {
		t.Fatalf("b took %v to lead after the release; the watch should make it immediate", took)
	}
	// A released election does not campaign again.
	b.e.Release(context.Background())
	time.Sleep(3 * testRetry)
	if a.e.Status().Leading {
		t.Fatal("a led again after releasing")
	}
}

func TestCrashedLeaderIsReplacedOnlyAfterExpiry(t *testing.T) {
	needAPI(t)
	a := start(t, "crash", "a")
	waitFor(t, 5*time.Second, "a leads", func() bool { return a.e.Status().Leading })
	b := start(t, "crash", "b")
	waitFor(t, 5*time.Second, "b sees a", func() bool { return b.e.Status().Leader == "a" })

	a.stop() // no release: the Lease still names a
	took := waitFor(t, 3*testLease, "b leads", func() bool { return b.e.Status().Leading })
	t.Logf("b led %v after a crashed", took)
	// b saw a's last renewal at most one retry period before the crash.
	if took < testLease-testRetry-50*time.Millisecond {
		t.Fatalf("b led %v after the crash, before a's Lease (%v) could have expired", took, testLease)
	}
	if got := holder(getLease(t, "crash")); got != "b" {
		t.Fatalf("Lease holder = %q, want b", got)
	}
}

func TestPartitionedLeaderStepsDownByRenewDeadline(t *testing.T) {
	needAPI(t)
	a := start(t, "partition", "a")
	waitFor(t, 5*time.Second, "a leads", func() bool { return a.e.Status().Leading })
	b := start(t, "partition", "b")
	waitFor(t, 5*time.Second, "b sees a", func() bool { return b.e.Status().Leader == "a" })

	a.dial.setCut(true)
	stepDown := waitFor(t, 2*testRenew, "a steps down", func() bool { return !a.e.Status().Leading })
	t.Logf("a stepped down %v after the partition", stepDown)
	if stepDown > testRenew+100*time.Millisecond {
		t.Fatalf("a stepped down after %v, later than its renew deadline %v", stepDown, testRenew)
	}
	// b takes over after expiry, and a — cut off — never leads meanwhile.
	waitFor(t, 3*testLease, "b leads", func() bool {
		if a.e.Status().Leading {
			t.Fatal("partitioned a leads again")
		}
		return b.e.Status().Leading
	})
	// Healed, a follows b and does not take the Lease back.
	a.dial.setCut(false)
	waitFor(t, 5*time.Second, "a sees b", func() bool { return a.e.Status().Leader == "b" })
	if l := leaders(a, b); len(l) != 1 || l[0] != "b" {
		t.Fatalf("leaders after healing = %v, want [b]", l)
	}
}

func TestLeaderSeesLeaseTakenAndStops(t *testing.T) {
	needAPI(t)
	a := start(t, "taken", "a")
	waitFor(t, 5*time.Second, "a leads", func() bool { return a.e.Status().Leading })

	// Another writer (an operator, or a peer acting on a stale view) takes
	// the Lease. a must notice through the watch or its next renewal.
	client := newClient(t, nil)
	l := getLease(t, "taken")
	other := "intruder"
	l.Spec.HolderIdentity = &other
	now := metav1.NewMicroTime(time.Now())
	l.Spec.RenewTime = &now
	if _, err := client.CoordinationV1().Leases("default").Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, testRenew, "a stops leading", func() bool { return !a.e.Status().Leading })
	if s := a.e.Status(); s.Leader != "intruder" {
		t.Fatalf("a sees leader %q, want intruder", s.Leader)
	}
}

func TestConfigIsValidated(t *testing.T) {
	_, err := NewLease(LeaseConfig{Client: newFakeless(), Namespace: "default", Name: "x", Identity: "a",
		LeaseDuration: time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 100 * time.Millisecond})
	if err == nil {
		t.Fatal("a renew deadline longer than the lease duration was accepted")
	}
}

// newFakeless returns a client that is never called.
func newFakeless() kubernetes.Interface {
	c, _ := kubernetes.NewForConfig(&rest.Config{Host: "https://192.0.2.1:1"})
	return c
}
