package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// healthURL is where an agent started with the default health address
// answers, from inside its node's namespace, as the kubelet's probe does.
const healthURL = "http://127.0.0.1:7948"

// probe GETs path of n's agent and returns the status and body.
func probe(n *lab.Node, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.HTTPGet(ctx, healthURL+path)
}

// waitProbe waits until path on n answers with status want.
func waitProbe(tb testing.TB, n *lab.Node, path string, want int, timeout time.Duration) string {
	tb.Helper()
	var body string
	waitFor(tb, timeout, fmt.Sprintf("%s on %s to answer %d", path, n.Name, want), func() error {
		code, b, err := probe(n, path)
		if err != nil {
			return err
		}
		body = b
		if code != want {
			return fmt.Errorf("%d %q", code, b)
		}
		return nil
	})
	return body
}

// TestReadyzWaitsForTheAPIServer: an agent that starts while the API server
// is unreachable is live but not ready, and says why; it becomes ready once
// the API server answers.
func TestReadyzWaitsForTheAPIServer(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.lab.StopAPI()
	n := e.lab.Nodes[0]
	e.start(n)
	body := waitProbe(t, n, "/healthz", 200, 10*time.Second)
	if body != "ok" {
		t.Errorf("/healthz says %q", body)
	}
	// Several renew deadlines without an API server: never ready.
	holdFor(t, 2*e.timing.lease, "/readyz to fail while the API server is unreachable", func() error {
		code, body, err := probe(n, "/readyz")
		if err != nil {
			return err
		}
		if code != 503 || !strings.Contains(body, "node Lease not renewed yet") {
			return fmt.Errorf("/readyz answered %d %q", code, body)
		}
		return nil
	})
	if err := e.lab.StartAPI(); err != nil {
		t.Fatal(err)
	}
	waitProbe(t, n, "/readyz", 200, 15*time.Second)
}

// TestHealthzThroughAPIOutage: through a 60 s outage of the API server
// that every agent shares, every agent stays live (a liveness probe must
// never restart a holder riding it out); readiness fails once the node
// Lease is stale, and comes back after. Whether the holder keeps the VIP
// is TestAPIOutageKeepsVIP's question; here it is only logged.
func TestHealthzThroughAPIOutage(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	procs := e.startAll()
	e.waitSoleHolder(startTimeout)
	for _, n := range e.lab.Nodes {
		waitLog(t, procs[n.Name], 0, 10*time.Second, "this agent is live")
		waitProbe(t, n, "/readyz", 200, 10*time.Second)
	}

	const outage = 60 * time.Second
	e.lab.StopAPI()
	end := time.Now().Add(outage)
	unready := map[string]bool{}
	for time.Now().Before(end) {
		for _, n := range e.lab.Nodes {
			code, body, err := probe(n, "/healthz")
			if err != nil || code != 200 {
				t.Fatalf("%s /healthz during the outage: %d %q %v", n.Name, code, body, err)
			}
			if code, _, err := probe(n, "/readyz"); err == nil && code == 503 {
				unready[n.Name] = true
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := e.lab.StartAPI(); err != nil {
		t.Fatal(err)
	}
	if len(unready) != len(e.lab.Nodes) {
		t.Errorf("/readyz failed during the outage only on %v; want every node (their node Leases went stale)", unready)
	}
	for _, n := range e.lab.Nodes {
		waitProbe(t, n, "/readyz", 200, 15*time.Second)
	}
	t.Logf("the VIP changed hands %d times around the outage", len(w.Events())-1)
	if err := w.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestHealthzFailsWhenWedged: when the main loop stops going round (here a
// test hook, compiled in with the tag vipd_testhooks, stops it on SIGUSR2,
// as a call that never returns would), /healthz fails and says why, while
// the process still answers HTTP.
func TestHealthzFailsWhenWedged(t *testing.T) {
	e := newEnv(t, envOptions{})
	bin := filepath.Join(t.TempDir(), "vipd-testhooks")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-tags", "vipd_testhooks", "-o", bin, "./cmd/vipd")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building vipd with test hooks: %v: %s", err, out)
	}
	n := e.lab.Nodes[0]
	p, err := n.Start(context.Background(), bin, e.agentArgs(n), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.waitSoleHolder(startTimeout)
	waitProbe(t, n, "/healthz", 200, 10*time.Second)
	waitProbe(t, n, "/readyz", 200, 10*time.Second)

	if err := p.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	wedged := time.Now()
	waitLog(t, p, 0, 5*time.Second, "test hook: the main loop stops")
	// The limit is 10 s without a round at the lab's loop interval.
	body := waitProbe(t, n, "/healthz", 503, 20*time.Second)
	t.Logf("/healthz failed %v after the main loop stopped: %q", time.Since(wedged).Round(time.Second), body)
	if !strings.Contains(body, "main loop stuck") {
		t.Errorf("/healthz says %q; want it to name the stuck main loop", body)
	}
	if time.Since(wedged) < 9*time.Second {
		t.Errorf("/healthz failed after %v, before the 10 s limit", time.Since(wedged))
	}
	if code, _, _ := probe(n, "/readyz"); code != 503 {
		t.Errorf("/readyz answered %d with the main loop stuck", code)
	}
}
