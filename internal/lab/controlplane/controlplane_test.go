package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// startForTest starts a control plane stopped at test end. Missing binaries
// skip the test on a developer machine but fail it in CI, where
// hack/kube-assets.sh must have run.
func startForTest(t testing.TB) *ControlPlane {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	began := time.Now()
	cp, err := Start(ctx, Options{})
	if errors.Is(err, ErrAssetsMissing) && os.Getenv("CI") != "true" {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("control plane up at %s in %v", cp.Addr(), time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return cp
}

func TestControlPlane(t *testing.T) {
	cp := startForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	host, _, err := net.SplitHostPort(cp.Addr())
	if err != nil {
		t.Fatalf("Addr %q: %v", cp.Addr(), err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Fatalf("API server listens on %q, want host loopback", cp.Addr())
	}

	admin, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	before, err := cp.RequestCount(ctx)
	if err != nil {
		t.Fatalf("RequestCount before: %v", err)
	}

	leases := admin.CoordinationV1().Leases(metav1.NamespaceDefault)
	created, err := leases.Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "vip-192-0-2-10"},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To("node-a"),
			LeaseDurationSeconds: ptr.To[int32](15),
			AcquireTime:          &metav1.MicroTime{Time: time.Now()},
			RenewTime:            &metav1.MicroTime{Time: time.Now()},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating lease: %v", err)
	}

	// node-b takes the lease over; node-a's renewal still carries the
	// resourceVersion it read before, and must be refused.
	takeover := created.DeepCopy()
	takeover.Spec.HolderIdentity = ptr.To("node-b")
	updated, err := leases.Update(ctx, takeover, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("updating lease with current resourceVersion: %v", err)
	}
	if updated.ResourceVersion == created.ResourceVersion {
		t.Fatalf("resourceVersion did not change on update: %s", updated.ResourceVersion)
	}
	stale := created.DeepCopy()
	stale.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
	_, err = leases.Update(ctx, stale, metav1.UpdateOptions{})
	if !apierrors.IsConflict(err) {
		t.Fatalf("update with stale resourceVersion %s: got %v, want Conflict", created.ResourceVersion, err)
	}
	got, err := leases.Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting lease: %v", err)
	}
	if h := ptr.Deref(got.Spec.HolderIdentity, ""); h != "node-b" {
		t.Fatalf("holder after stale update = %q, want node-b", h)
	}

	// The agent's kubeconfig, pointed at an address the serving cert is not
	// issued for (as the lab's proxy is): it must verify through the TLS
	// server name.
	proxy := forward(t, "127.0.0.2:0", cp.Addr())
	kc, err := cp.Kubeconfig("https://" + proxy)
	if err != nil {
		t.Fatalf("Kubeconfig: %v", err)
	}
	agentCfg, err := clientcmd.RESTConfigFromKubeConfig(kc)
	if err != nil {
		t.Fatalf("loading kubeconfig:\n%s\n%v", kc, err)
	}
	if agentCfg.TLSClientConfig.ServerName != TLSServerName {
		t.Fatalf("kubeconfig TLS server name = %q, want %q", agentCfg.TLSClientConfig.ServerName, TLSServerName)
	}
	// Without the server name the same request must fail verification,
	// else the check above proves nothing.
	noName := rest.CopyConfig(agentCfg)
	noName.TLSClientConfig.ServerName = ""
	noNameClient, err := kubernetes.NewForConfig(noName)
	if err != nil {
		t.Fatalf("client without server name: %v", err)
	}
	_, err = noNameClient.CoordinationV1().Leases(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
	var hostErr x509.HostnameError
	if !errors.As(err, &hostErr) {
		t.Fatalf("listing through %s without TLS server name: got %v, want a certificate name mismatch", proxy, err)
	}
	agent, err := kubernetes.NewForConfig(agentCfg)
	if err != nil {
		t.Fatalf("agent client: %v", err)
	}
	list, err := agent.CoordinationV1().Leases(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing leases through the agent kubeconfig: %v", err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != created.Name {
		t.Fatalf("agent sees leases %v, want just %s", list.Items, created.Name)
	}
	review, err := agent.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("agent self review: %v", err)
	}
	if u := review.Status.UserInfo.Username; u != AgentUser {
		t.Fatalf("agent authenticates as %q, want %q", u, AgentUser)
	}

	after, err := cp.RequestCount(ctx)
	if err != nil {
		t.Fatalf("RequestCount after: %v", err)
	}
	delta := after.Sub(before)
	t.Logf("requests during test: %v", delta)
	// Create, the successful and the refused update, get, list; at least,
	// since the API server renews its own identity lease in the background.
	for key, want := range map[RequestKey]float64{
		{Verb: "POST", Resource: "leases"}: 1,
		{Verb: "PUT", Resource: "leases"}:  2,
		{Verb: "GET", Resource: "leases"}:  1,
		{Verb: "LIST", Resource: "leases"}: 1,
	} {
		if got := delta[key]; got < want {
			t.Errorf("%s %s requests = %v, want at least %v", key.Verb, key.Resource, got, want)
		}
	}
	if got := delta.Resource("leases"); got < 5 {
		t.Errorf("lease requests = %v, want at least 5", got)
	}
}

// forward relays TCP connections from a listener on listenAddr to target
// until the test ends, standing in for the lab's proxy.
func forward(t *testing.T, listenAddr, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		t.Fatalf("listening on %s: %v", listenAddr, err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	// Clients keep idle connections open, so closing the listener alone
	// would leave the relays running.
	track := func(c net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			track(in)
			wg.Go(func() {
				defer in.Close()
				out, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				track(out)
				defer out.Close()
				go func() {
					_, _ = io.Copy(out, in)
					out.Close()
				}()
				_, _ = io.Copy(in, out)
			})
		}
	})
	return ln.Addr().String()
}

func TestStartMissingAssets(t *testing.T) {
	dir := t.TempDir()
	_, err := Start(context.Background(), Options{AssetsDir: dir})
	if !errors.Is(err, ErrAssetsMissing) {
		t.Fatalf("Start with empty assets dir: got %v, want ErrAssetsMissing", err)
	}
	t.Logf("error reads: %v", err)
}

func TestParseRequestCounts(t *testing.T) {
	body := []byte(`# HELP apiserver_request_total [STABLE] Counter of apiserver requests.
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 3
apiserver_request_total{code="409",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 7
# TYPE other_total counter
other_total 9
`)
	got, err := parseRequestCounts(body)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	want := RequestCounts{
		{Verb: "PUT", Resource: "leases"}: 5,
		{Verb: "GET", Resource: ""}:       7,
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%v = %v, want %v", k, got[k], v)
		}
	}
}
