package election

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/vipd/vipd/internal/kube"
)

// TestClaimInAnotherNamespace: kube-vip's Lease stays in its namespace
// while the node Leases live in the agents' own; the claim is written and
// watched there, and a same-named Lease in the agents' namespace is not
// mistaken for it.
func TestClaimInAnotherNamespace(t *testing.T) {
	needAPI(t)
	agents, legacy := newNamespace(t), newNamespace(t)
	c := Contest{Name: "plndr-cp-lock"}
	start := func(id string) *agent {
		return startAgentWith(t, id, Config{Namespace: agents, LeaseNamespaces: map[string]string{c.Name: legacy}}, c)
	}
	// A decoy in the agents' namespace that names a node that is not here.
	client := newClient(t, nil)
	decoy, other := "ghost", "plndr-cp-lock"
	if _, err := client.Leases(agents).Create(context.Background(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: other},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &decoy},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	a, b := start("a"), start("b")
	waitFor(t, 5*time.Second, "one holder", func() bool { return len(holders(c.Name, a, b)) == 1 })
	h := holders(c.Name, a, b)[0]
	if got := claimHolder(t, legacy, c.Name); got != h {
		t.Errorf("claim in %s names %q, want %s", legacy, got, h)
	}
	if got := claimHolder(t, agents, other); got != decoy {
		t.Errorf("the decoy in %s was changed: names %q", agents, got)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := client.Leases(agents).Get(context.Background(), NodeLeasePrefix+id, metav1.GetOptions{}); err != nil {
			t.Errorf("node Lease of %s not in %s: %v", id, agents, err)
		}
	}
}

// TestNodeAnnotationsPublishedWithRenewals: what an agent publishes rides on
// its regular renewals, and a key it stops setting goes.
func TestNodeAnnotationsPublishedWithRenewals(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	a := startAgent(t, ns, "a")
	b := startAgent(t, ns, "b")
	a.e.SetNodeAnnotations(map[string]string{"vipd.io/version": "v1", "vipd.io/extra": "x"})
	waitFor(t, 3*testRenew, "b reads a's annotations", func() bool {
		return b.e.NodeAnnotation("vipd.io/version")["a"] == "v1" && b.e.NodeAnnotation("vipd.io/extra")["a"] == "x"
	})
	a.e.SetNodeAnnotations(map[string]string{"vipd.io/version": "v2"})
	waitFor(t, 3*testRenew, "the dropped key gone and the new value there", func() bool {
		_, extra := b.e.NodeAnnotation("vipd.io/extra")["a"]
		return b.e.NodeAnnotation("vipd.io/version")["a"] == "v2" && !extra
	})
}

// TestRefusedContestIsReleasedAndSkipped: an agent that cannot hold a
// contest publishes that, releases it, and the others skip it at once; once
// it can again it is a candidate, but nothing moves back.
func TestRefusedContestIsReleasedAndSkipped(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	c := Contest{Name: "refused"}
	as := []*agent{startAgent(t, ns, "a", c), startAgent(t, ns, "b", c), startAgent(t, ns, "c", c)}
	waitFor(t, 5*time.Second, "one holder", func() bool { return len(holders(c.Name, as...)) == 1 })
	var h *agent
	for _, a := range as {
		if a.e.Status(c.Name).Leading {
			h = a
		}
	}
	h.e.SetRefused(map[string]string{c.Name: "interface refuses the address"})
	var next string
	took := waitFor(t, 2*time.Second, "another agent holds it", func() bool {
		hs := holders(c.Name, as...)
		if len(hs) == 1 && hs[0] != h.id {
			next = hs[0]
			return true
		}
		return false
	})
	t.Logf("%s refused %s; %s held it %v later", h.id, c.Name, next, took)
	// The preferred next holder acts at once; waiting for a node that
	// refused would take a retry period per rank.
	if took > testRetry {
		t.Errorf("the claim moved after %v; the others should skip %s at once (within a retry period %v)", took, h.id, testRetry)
	}
	for _, a := range as {
		if a != h {
			waitFor(t, 3*testRenew, a.id+" reads the refusal", func() bool {
				return parseRefused(a.e.NodeAnnotation(AnnotationRefused)[h.id])[c.Name] != ""
			})
		}
	}
	h.e.SetRefused(nil)
	waitFor(t, 3*testRenew, "the refusal withdrawn", func() bool {
		for _, a := range as {
			if a != h && a.e.NodeAnnotation(AnnotationRefused)[h.id] != "" {
				return false
			}
		}
		return true
	})
	if hs := holders(c.Name, as...); len(hs) != 1 || hs[0] != next {
		t.Errorf("after the refusal was withdrawn the holders are %v, want %s still", hs, next)
	}
}

// TestDeniedDeleteBacksOff: a holder that may not delete a claim (RBAC)
// retries with growing intervals instead of a tight loop.
func TestDeniedDeleteBacksOff(t *testing.T) {
	cp := needAPI(t)
	ns := newNamespace(t)
	admin := newAdmin(t)
	ctx := context.Background()
	const user = "no-lease-delete"
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			Verbs: []string{"get", "list", "watch", "create", "update"}}},
	}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: user},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rc := cp.Config()
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	rc.Impersonate = rest.ImpersonationConfig{UserName: user}
	var mu sync.Mutex
	var deletes []time.Time
	rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if r.Method == http.MethodDelete {
				mu.Lock()
				deletes = append(deletes, time.Now())
				mu.Unlock()
			}
			return rt.RoundTrip(r)
		})
	}
	client, err := kube.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	gone := Contest{Name: "gone"}
	a := startAgentWith(t, "a", Config{Namespace: ns, Client: client}, gone)
	waitFor(t, 5*time.Second, "a holds the contest", func() bool { return a.e.Status(gone.Name).Leading })
	a.e.SetContests(nil)
	const window = 4 * time.Second
	time.Sleep(window) // counting requests over a fixed window is the point
	mu.Lock()
	ds := append([]time.Time(nil), deletes...)
	mu.Unlock()
	t.Logf("%d delete attempts in %v", len(ds), window)
	// Base retry/4 = 50ms, doubling: 50+100+...+3200 > 4s, so at most 8
	// tries (one more for jitter); a tight loop would make hundreds.
	if len(ds) < 3 || len(ds) > 9 {
		t.Fatalf("%d delete attempts in %v, want 3..9 (backing off from %v)", len(ds), window, testRetry/4)
	}
	for i := 2; i < len(ds); i++ {
		prev, cur := ds[i-1].Sub(ds[i-2]), ds[i].Sub(ds[i-1])
		// Each wait doubles; jitter is ±20%, so it grows by at least 1.33x.
		if float64(cur) < 1.3*float64(prev) {
			t.Errorf("retry %d came %v after the previous one, which came %v after its own: not backing off", i, cur, prev)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// startAgentWith starts an agent with cfg's Namespace, LeaseNamespaces and
// Client (a fresh one if nil) and the test timings.
func startAgentWith(t *testing.T, id string, cfg Config, contests ...Contest) *agent {
	t.Helper()
	d := &cutDialer{}
	if cfg.Client == nil {
		cfg.Client = newClient(t, d)
	}
	cfg.Identity = id
	cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod = testLease, testRenew, testRetry
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", id)
	return runAgent(t, id, cfg, d, contests)
}

// TestForeignHolderWhileItRenews: a claim held by something that is not a
// vipd agent (no node Lease: kube-vip during a migration) is left alone
// while that holder keeps renewing it, and taken once it stops; a leftover
// nobody renews, whatever duration it declares, is taken a lease duration
// after the agents first saw it.
func TestForeignHolderWhileItRenews(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	leases := newClient(t, nil).Leases(ns)
	ctx := context.Background()
	foreign := func(name string, secs int32) {
		id := "kube-vip-node"
		now := metav1.NewMicroTime(time.Now())
		if _, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &id, LeaseDurationSeconds: &secs, RenewTime: &now}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	foreign("renewed", 2)
	foreign("ghost", 3600)
	stop := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			l, err := leases.Get(ctx, "renewed", metav1.GetOptions{})
			if err != nil {
				continue
			}
			now := metav1.NewMicroTime(time.Now())
			l.Spec.RenewTime = &now
			_, _ = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
	}()
	cs := []Contest{{Name: "renewed"}, {Name: "ghost"}}
	started := time.Now()
	a, b := startAgent(t, ns, "a", cs...), startAgent(t, ns, "b", cs...)
	waitFor(t, 2*testLease, "the ghost's claim taken", func() bool { return len(holders("ghost", a, b)) == 1 })
	t.Logf("the unrenewed leftover (3600 s) was taken %v after the agents started", time.Since(started).Round(time.Millisecond))
	if got := claimHolder(t, ns, "renewed"); got != "kube-vip-node" || len(holders("renewed", a, b)) != 0 {
		t.Fatalf("the claim renewed by its foreign holder was taken: names %q", got)
	}
	time.Sleep(2 * testLease) // the foreign holder renewing for a while is the point
	if got := claimHolder(t, ns, "renewed"); got != "kube-vip-node" {
		t.Fatalf("the claim renewed by its foreign holder was taken after %v: names %q", 2*testLease, got)
	}
	close(stop)
	<-renewed
	gone := time.Now()
	waitFor(t, 2*testLease, "the claim taken once its foreign holder stopped renewing", func() bool {
		return len(holders("renewed", a, b)) == 1
	})
	t.Logf("taken %v after the foreign holder stopped renewing", time.Since(gone).Round(time.Millisecond))
}

// TestLetGoWaitsForSilence: a holder that must let a claim go (here it
// refuses it) stops Leading at once, with the reason in its Report, but
// releases the claim only once the agent says the VIPs are silent
// (SetSilenced): until then nobody else may take it and answer beside it.
func TestLetGoWaitsForSilence(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	c := Contest{Name: "let-go"}
	as := []*agent{startAgent(t, ns, "a", c), startAgent(t, ns, "b", c)}
	waitFor(t, 5*time.Second, "one holder", func() bool { return len(holders(c.Name, as...)) == 1 })
	h, other := as[0], as[1]
	if !h.e.Status(c.Name).Leading {
		h, other = other, h
	}
	var silent atomic.Bool
	h.e.SetSilenced(func(name string) bool { return name != c.Name || silent.Load() })
	h.e.SetRefused(map[string]string{c.Name: "interface refuses the address"})

	waitFor(t, 2*time.Second, h.id+" to stop leading", func() bool { return !h.e.Status(c.Name).Leading })
	if r := h.e.Report(c.Name); r.Reason != LostRefused {
		t.Errorf("report while letting go: %+v, want reason %s", r, LostRefused)
	}
	// Several retry periods: the claim stays, and nobody else leads.
	for end := time.Now().Add(5 * testRetry); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if got := claimHolder(t, ns, c.Name); got != h.id {
			t.Fatalf("the claim names %q before %s said its VIPs are silent, want %s still", got, h.id, h.id)
		}
		if other.e.Status(c.Name).Leading {
			t.Fatalf("%s leads before %s said its VIPs are silent", other.id, h.id)
		}
	}
	silent.Store(true)
	took := waitFor(t, 2*time.Second, other.id+" to take it once silenced", func() bool {
		return other.e.Status(c.Name).Leading && claimHolder(t, ns, c.Name) == other.id
	})
	t.Logf("%s took the claim %v after %s's VIPs were silent", other.id, took, h.id)
}
