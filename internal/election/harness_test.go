package election

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/lab/controlplane"
)

// The tests share one real API server; each uses a Lease of its own.
var suite controlplane.Suite

func TestMain(m *testing.M) { os.Exit(suite.Run(m)) }

// needAPI returns the shared API server, or skips or fails t.
func needAPI(t *testing.T) *controlplane.ControlPlane {
	t.Helper()
	return suite.Need(t)
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

// newAdmin is a clientset with the suite's rights, for what vipd's own
// client cannot do (RBAC objects).
func newAdmin(t *testing.T) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(suite.Need(t).Config())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newClient(t *testing.T, d *cutDialer) kube.Interface {
	t.Helper()
	rc := suite.Need(t).Config()
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	if d != nil {
		rc.Dial = d.DialContext
	}
	c, err := kube.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return c
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
