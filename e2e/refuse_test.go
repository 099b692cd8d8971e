package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRefusedAddressMovesOn: a node whose interface refuses an address (IPv6
// turned off on it) does not keep the claim of a Service VIP it was
// placed: it releases it, says why on its node Lease and in an Event, and
// another node holds the VIP within the node-loss bound.
func TestRefusedAddressMovesOn(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	n1 := s.node("n1")
	if _, err := s.lab.Exec(t.Context(), n1.Netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1"); err != nil {
		t.Fatal(err)
	}
	procs := s.startAll()
	s.waitLive(startTimeout)
	s.waitHeard(procs)
	// Six addresses: even placement gives n1 two of them.
	vips := addrRange("2001:db8:100::1:70", 6)
	created := time.Now()
	for i, v := range vips {
		s.create(s.service(s.ns, fmt.Sprintf("v6-%d", i), v.String(), svcPort))
	}
	p := s.waitPlaced(placeTimeout, vips)
	took := time.Since(created)
	t.Logf("placement %v, %v after the Services were created", p, took.Round(time.Millisecond))
	if took > lossBound {
		t.Errorf("every VIP held only %v after the Services were created, want within %v", took, lossBound)
	}
	if on := p.onNode("n1"); len(on) > 0 {
		t.Errorf("n1, which cannot carry IPv6, holds %v", on)
	}
	s.reachAll(p)
	refused := waitRefused(t, s.ns, "n1")
	t.Logf("n1's node Lease says it refuses %v", refused)
	if len(refused) == 0 {
		t.Errorf("n1 refused no contest, though the placement must have given it some")
	}
	var refusals int
	for i := range vips {
		for _, ev := range events(t, s.ns, fmt.Sprintf("v6-%d", i)) {
			if ev.Reason == "VIPRefusedByNode" && strings.Contains(ev.Message, "node n1") {
				refusals++
			}
		}
	}
	if refusals == 0 {
		t.Errorf("no VIPRefusedByNode Event from n1 on any Service")
	}
	holdFor(t, 2*time.Second, "the VIPs to stay off n1", func() error {
		now, err := s.vipHolders(vips)
		if err != nil {
			return err
		}
		for v, hs := range now {
			if slices.Contains(hs, "n1") || len(hs) != 1 {
				return fmt.Errorf("%s held by %v", v, hs)
			}
		}
		return nil
	})
}

// waitRefused waits until node's Lease publishes the contests it refuses.
func waitRefused(t *testing.T, ns, node string) map[string]string {
	t.Helper()
	var refused map[string]string
	waitFor(t, 10*time.Second, node+"'s node Lease to publish its refusals", func() error {
		l, err := pkg.admin.CoordinationV1().Leases(ns).Get(t.Context(), nodeLease(node), metav1.GetOptions{})
		if err != nil {
			return err
		}
		v := l.Annotations["vipd.io/refused"]
		if v == "" {
			return fmt.Errorf("no vipd.io/refused annotation")
		}
		return json.Unmarshal([]byte(v), &refused)
	})
	return refused
}

// events lists the Events about one object.
func events(t *testing.T, ns, name string) []corev1.Event {
	t.Helper()
	list, err := pkg.admin.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// TestDeniedDeleteBacksOff: agents whose identity may not delete Leases
// (RBAC) hold a Service VIP whose Service is then deleted. The holder's
// deletes of the claim are refused; it retries with growing intervals,
// never in a tight loop, and keeps doing its other work.
func TestDeniedDeleteBacksOff(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	ctx := t.Context()
	const user = "vipd-no-lease-delete"
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update"}},
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"secrets", "configmaps", "services", "nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"services", "services/status"}, Verbs: []string{"update", "patch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
	}
	name := "e2e-" + s.ns
	if _, err := pkg.admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pkg.admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = pkg.admin.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = pkg.admin.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	kc, err := pkg.cp.UserKubeconfig(s.lab.APIServerURL(), user)
	if err != nil {
		t.Fatal(err)
	}
	s.kubeconfig = filepath.Join(t.TempDir(), "restricted")
	if err := os.WriteFile(s.kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}

	procs := s.startAll()
	s.waitLive(startTimeout)
	s.waitHeard(procs)
	vip := netip.MustParseAddr("192.0.2.190")
	s.create(s.service(s.ns, "doomed", vip.String(), svcPort))
	p := s.waitPlaced(placeTimeout, []netip.Addr{vip})
	s.waitClaims(5*time.Second, p)
	holder := procs[p[vip]]
	logged := len(holder.Log())
	s.deleteService(s.ns, "doomed")
	waitFor(t, 5*time.Second, "the VIP to leave "+p[vip], func() error {
		now, err := s.vipHolders([]netip.Addr{vip})
		if err != nil {
			return err
		}
		if len(now[vip]) > 0 {
			return fmt.Errorf("held by %v", now[vip])
		}
		return nil
	})
	time.Sleep(6 * time.Second) // counting the attempts over a fixed window is the point
	// Each refused attempt is logged with its time.
	var attempts []time.Time
	for _, line := range strings.Split(holder.Log()[logged:], "\n") {
		if !strings.Contains(line, "lease write failed") || !strings.Contains(line, "op=delete") {
			continue
		}
		_, rest, _ := strings.Cut(line, "time=")
		stamp, _, _ := strings.Cut(rest, " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil {
			t.Fatalf("no time in %q", line)
		}
		attempts = append(attempts, at)
	}
	var gaps []time.Duration
	for i := 1; i < len(attempts); i++ {
		gaps = append(gaps, attempts[i].Sub(attempts[i-1]).Round(time.Millisecond))
	}
	t.Logf("%s: %d denied deletes of the claim in 6 s, intervals %v", p[vip], len(attempts), gaps)
	// Backoff from a quarter retry period (62 ms), doubling, ±20% jitter:
	// six or seven tries in 6 s. A tight loop would make hundreds.
	if len(attempts) < 3 || len(attempts) > 9 {
		t.Errorf("%d delete attempts in 6 s, want 3..9", len(attempts))
	}
	for i := 1; i < len(gaps); i++ {
		if float64(gaps[i]) < 1.3*float64(gaps[i-1]) {
			t.Errorf("retry %d came %v after the previous one, which came %v after its own: not backing off", i+1, gaps[i], gaps[i-1])
		}
	}
	if err := s.lab.Client.Ping(ctx, vip); err == nil {
		t.Errorf("the deleted Service's VIP %s still answers", vip)
	}
}
