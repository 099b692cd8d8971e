package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vipd/vipd/internal/lab"
	"github.com/vipd/vipd/internal/status"
)

// metricsPort is where agents serve metrics in observability tests, on
// each node namespace's own loopback.
const metricsPort = 2112

// statusReader makes a user that may do what deploy/status-reader.yaml
// grants, and nothing else, and returns a kubeconfig for it (reaching the
// API server directly: vipd status runs off the nodes).
func statusReader(t *testing.T, ns string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f, err := os.Open("../deploy/status-reader.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var role *rbacv1.ClusterRole
	var pool *rbacv1.Role
	r := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var obj struct {
			Kind string `json:"kind"`
		}
		var raw json.RawMessage
		if err := r.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("deploy/status-reader.yaml: %v", err)
		}
		if err := json.Unmarshal(raw, &obj); err != nil {
			t.Fatal(err)
		}
		switch obj.Kind {
		case "ClusterRole":
			role = &rbacv1.ClusterRole{}
			err = json.Unmarshal(raw, role)
		case "Role":
			pool = &rbacv1.Role{}
			err = json.Unmarshal(raw, pool)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if role == nil || pool == nil {
		t.Fatal("deploy/status-reader.yaml: want a ClusterRole and a Role")
	}
	// The API server outlives the test: names of the test's own.
	user := "status-" + ns
	role.Name = user
	pool.Name = user
	rbac := pkg.admin.RbacV1()
	subject := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects: subject}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.Roles(pool.Namespace).Create(ctx, pool, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(pool.Namespace).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
		Subjects: subject}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, err := range []error{
			rbac.ClusterRoleBindings().Delete(ctx, user, metav1.DeleteOptions{}),
			rbac.ClusterRoles().Delete(ctx, user, metav1.DeleteOptions{}),
			rbac.RoleBindings(pool.Namespace).Delete(ctx, user, metav1.DeleteOptions{}),
			rbac.Roles(pool.Namespace).Delete(ctx, user, metav1.DeleteOptions{}),
		} {
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("deleting the status reader's RBAC: %v", err)
			}
		}
	})
	kc, err := pkg.cp.UserKubeconfig("https://"+pkg.cp.Addr(), user)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "status-kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	// Read-only indeed: the user may not write a Lease.
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "probe"}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("the status reader creating a Lease: %v, want forbidden", err)
	}
	return path
}

// vipdStatus runs `vipd status -o json` with kubeconfig and parses its
// report.
func vipdStatus(kubeconfig, ns string, extra ...string) (status.Report, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append([]string{"status", "--kubeconfig", kubeconfig, "-n", ns, "-o", "json"}, extra...)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pkg.bin, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return status.Report{}, fmt.Errorf("vipd %s: %w: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	var r status.Report
	if err := json.Unmarshal(out, &r); err != nil {
		return status.Report{}, fmt.Errorf("vipd status output is not a report: %w: %s", err, out)
	}
	return r, nil
}

// statusRow finds the row of vip in r.
func statusRow(r status.Report, vip string) (status.VIP, error) {
	for _, v := range r.VIPs {
		if v.VIP == vip {
			return v, nil
		}
	}
	return status.VIP{}, fmt.Errorf("vipd status has no row for %s: %+v", vip, r.VIPs)
}

// waitStatusRow waits until vipd status shows vip held by holder with the
// given number of transitions (-1: any) and no problem, and returns it.
func waitStatusRow(t *testing.T, kubeconfig, ns, vip, holder string, transitions int32) status.VIP {
	t.Helper()
	var row status.VIP
	waitFor(t, 20*time.Second, fmt.Sprintf("vipd status to show %s held by %s", vip, holder), func() error {
		r, err := vipdStatus(kubeconfig, ns)
		if err != nil {
			return err
		}
		if row, err = statusRow(r, vip); err != nil {
			return err
		}
		switch {
		case row.Holder != holder:
			return fmt.Errorf("holder %q", row.Holder)
		case transitions >= 0 && row.Transitions != transitions:
			return fmt.Errorf("transitions %d, want %d", row.Transitions, transitions)
		case len(row.Problems) > 0:
			return fmt.Errorf("problems %q", row.Problems)
		case row.HolderLease != status.LeaseLive || !row.HolderLive:
			return fmt.Errorf("holder's Lease %q, live %v", row.HolderLease, row.HolderLive)
		}
		return nil
	})
	return row
}

// scrapeAgent reads an agent's metrics from inside its node's namespace.
func scrapeAgent(n *lab.Node) (map[string]*dto.MetricFamily, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := lab.InNetns(n.Netns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if err != nil {
		return nil, fmt.Errorf("scraping vipd on %s: %w", n.Name, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parsing the metrics of vipd on %s: %w", n.Name, err)
	}
	return mfs, nil
}

// vipHeld is the value of vipd_vip_held{vip=vip, service_name=svc} on n;
// ok is false when there is no such series.
func vipHeld(n *lab.Node, vip, svc string) (v float64, ok bool, err error) {
	mfs, err := scrapeAgent(n)
	if err != nil {
		return 0, false, err
	}
	mf := mfs["vipd_vip_held"]
	if mf == nil {
		return 0, false, nil
	}
	for _, m := range mf.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["vip"] == vip && labels["service_name"] == svc {
			return m.GetGauge().GetValue(), true, nil
		}
	}
	return 0, false, nil
}

// waitHeldMetric waits until vipd_vip_held for vip (and Service name svc,
// "" for the control plane) is 1 on holder and absent or 0 on every other
// node whose agent runs.
func waitHeldMetric(t *testing.T, nodes []*lab.Node, vip, svc, holder string) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("vipd_vip_held{vip=%q,service_name=%q} to be 1 on %s only", vip, svc, holder), func() error {
		for _, n := range nodes {
			v, ok, err := vipHeld(n, vip, svc)
			if err != nil {
				return err
			}
			switch {
			case n.Name == holder && (!ok || v != 1):
				return fmt.Errorf("%s: %v (present %v)", n.Name, v, ok)
			case n.Name != holder && ok && v != 0:
				return fmt.Errorf("%s: %v", n.Name, v)
			}
		}
		return nil
	})
}

// jsonLogLines checks that every line of an agent's log is one JSON object
// with no key twice at any level, and returns the lines parsed.
func jsonLogLines(t *testing.T, p *lab.Process) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.Log()))
	sc.Buffer(make([]byte, 0, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := noRepeatedKey(json.NewDecoder(bytes.NewReader(line))); err != nil {
			t.Errorf("vipd on %s: %v: %s", p.Node, err, line)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Errorf("vipd on %s: not JSON: %v: %s", p.Node, err, line)
			continue
		}
		out = append(out, m)
	}
	return out
}

// noRepeatedKey reads one JSON value and fails if an object in it has a key
// twice.
func noRepeatedKey(d *json.Decoder) error {
	tok, err := d.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for d.More() {
			k, err := d.Token()
			if err != nil {
				return err
			}
			key := k.(string)
			if seen[key] {
				return fmt.Errorf("key %q twice", key)
			}
			seen[key] = true
			if err := noRepeatedKey(d); err != nil {
				return err
			}
		}
		_, err = d.Token()
		return err
	case json.Delim('['):
		for d.More() {
			if err := noRepeatedKey(d); err != nil {
				return err
			}
		}
		_, err = d.Token()
		return err
	}
	return nil
}

// findLine returns the first log line whose fields have all of want.
func findLine(lines []map[string]any, want map[string]string) map[string]any {
	for _, l := range lines {
		all := true
		for k, v := range want {
			all = all && fmt.Sprint(l[k]) == v
		}
		if all {
			return l
		}
	}
	return nil
}

// eventsAbout lists the Events about an object of a kind.
func eventsAbout(ctx context.Context, ns, kind, name string) ([]corev1.Event, error) {
	sel := fields.Set{"involvedObject.kind": kind, "involvedObject.name": name}.AsSelector().String()
	list, err := pkg.admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("listing Events of %s %s/%s: %w", kind, ns, name, err)
	}
	return list.Items, nil
}

// watchStatus runs `vipd status --watch -o json` until the test ends and
// delivers each report it prints.
func watchStatus(t *testing.T, kubeconfig, ns string) <-chan status.Report {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, pkg.bin, "status", "--watch", "--kubeconfig", kubeconfig, "-n", ns, "-o", "json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reports := make(chan status.Report, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(reports)
		d := json.NewDecoder(out)
		for {
			var r status.Report
			if err := d.Decode(&r); err != nil {
				return
			}
			reports <- r
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("vipd status --watch stderr: %s", stderr.Bytes())
		}
	})
	return reports
}

// nextReport waits for a report from reports for which match returns nil.
func nextReport(t *testing.T, reports <-chan status.Report, timeout time.Duration, what string, match func(status.Report) error) {
	t.Helper()
	deadline := time.After(timeout)
	last := errors.New("no report yet")
	for {
		select {
		case r, ok := <-reports:
			if !ok {
				t.Fatalf("vipd status --watch ended while waiting for %s (last: %v)", what, last)
			}
			if last = match(r); last == nil {
				return
			}
		case <-deadline:
			t.Fatalf("vipd status --watch: no report with %s within %v (last: %v)", what, timeout, last)
		}
	}
}

// metricValue is the value of the series of name with all of labels on n
// (a counter's, a gauge's, or a histogram's sample count); ok is false
// when there is none.
func metricValue(n *lab.Node, name string, labels map[string]string) (v float64, ok bool, err error) {
	mfs, err := scrapeAgent(n)
	if err != nil {
		return 0, false, err
	}
	mf := mfs[name]
	if mf == nil {
		return 0, false, nil
	}
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		all := true
		for k, want := range labels {
			all = all && have[k] == want
		}
		if !all {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true, nil
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true, nil
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true, nil
		}
	}
	return 0, false, nil
}
