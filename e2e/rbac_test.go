package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/vipd/vipd/internal/lab/controlplane"
	"github.com/vipd/vipd/internal/manifest"
)

// identity is a user the agents run as, with RBAC applied for it.
type identity struct {
	user       *controlplane.User
	client     kubernetes.Interface
	kubeconfig string // reaches the API server through the lab's proxy
}

// newIdentity issues a client certificate for name in groups and writes a
// kubeconfig for it. Its rights are whatever RBAC the test applies.
func (e *env) newIdentity(name string, groups ...string) *identity {
	e.tb.Helper()
	u, err := pkg.cp.AddUser(name, groups...)
	if err != nil {
		e.tb.Fatal(err)
	}
	kc, err := pkg.cp.KubeconfigFor(u, e.lab.APIServerURL())
	if err != nil {
		e.tb.Fatal(err)
	}
	path := filepath.Join(e.tb.TempDir(), "kubeconfig-"+strings.NewReplacer(":", "-").Replace(name))
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		e.tb.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(u.Config())
	if err != nil {
		e.tb.Fatal(err)
	}
	return &identity{user: u, client: c, kubeconfig: path}
}

// apply creates objects as the admin; cluster-scoped ones get suffix in
// their name (the API server outlives the test) and are deleted when the
// test ends.
func apply(tb testing.TB, suffix string, objs ...runtime.Object) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := pkg.admin
	var err error
	for _, o := range objs {
		switch x := o.(type) {
		case *corev1.Namespace:
			continue // the test made its own
		case *corev1.ServiceAccount:
			_, err = a.CoreV1().ServiceAccounts(x.Namespace).Create(ctx, x, metav1.CreateOptions{})
		case *coordinationv1.Lease:
			_, err = a.CoordinationV1().Leases(x.Namespace).Create(ctx, x, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = a.RbacV1().Roles(x.Namespace).Create(ctx, x, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = a.RbacV1().RoleBindings(x.Namespace).Create(ctx, x, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			x.Name += suffix
			_, err = a.RbacV1().ClusterRoles().Create(ctx, x, metav1.CreateOptions{})
			name := x.Name
			tb.Cleanup(func() { _ = a.RbacV1().ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		case *rbacv1.ClusterRoleBinding:
			x.Name += suffix
			x.RoleRef.Name += suffix
			_, err = a.RbacV1().ClusterRoleBindings().Create(ctx, x, metav1.CreateOptions{})
			name := x.Name
			tb.Cleanup(func() {
				_ = a.RbacV1().ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
			})
		default:
			tb.Fatalf("apply: %T", o)
		}
		if err != nil {
			tb.Fatalf("creating %T: %v", o, err)
		}
	}
}

// TestLeastPrivilege runs the agents as the DaemonSet's ServiceAccount under
// the RBAC `vipd manifest rbac` prints, through a failover of the
// control-plane VIP and a Service's whole life, and then proves what that
// identity is refused.
func TestLeastPrivilege(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true, controlPlane: true})
	own := s.ns // vipd's namespace: node Leases, claims, the key
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv := createNamespace(ctx, t) // kube-vip's Leases, kube-system's stand-in

	o := manifest.Defaults("test")
	o.ControlPlane, o.Services, o.ServiceElection = true, true, true
	o.AgentNamespace, o.Namespace, o.PoolNamespace = own, kv, kv
	apply(t, "-"+own, manifest.Rules(o)...)
	user, groups := controlplane.ServiceAccountUser(own, manifest.ServiceAccount)
	id := s.newIdentity(user, groups...)

	// What the identity must not touch: the other controllers' Leases and a
	// Secret that is not its key.
	for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
		holder := name + "-node"
		if _, err := pkg.admin.CoordinationV1().Leases(kv).Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kv},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The harness made the heartbeat key; this is another Secret beside it.
	if _, err := pkg.admin.CoreV1().Secrets(own).Get(ctx, o.HeartbeatSecret, metav1.GetOptions{}); err != nil {
		t.Fatalf("the heartbeat key: %v", err)
	}
	if _, err := pkg.admin.CoreV1().Secrets(own).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: own},
		StringData: map[string]string{"password": "not for vipd"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	extra := []string{"--namespace", kv, "--agent-namespace", own, "--pool-namespace", kv, "--kubeconfig", id.kubeconfig}
	procs := s.startAll(extra...)
	s.waitLive(startTimeout)
	h := s.waitSoleHolder(startTimeout)
	s.mustReach(vip4, h)
	if holder, err := leaseHolderOf(ctx, kv, o.LeaseName); err != nil || holder != h.Name {
		t.Fatalf("Lease %s/%s names %q (%v), want %s", kv, o.LeaseName, holder, err, h.Name)
	}

	// A Service's life: served, reported, moved, deleted.
	ip := netip.MustParseAddr("192.0.2.50")
	svc := s.create(s.service(own, "web", ip.String(), 80))
	p := s.waitPlaced(startTimeout, []netip.Addr{ip})
	s.reachAll(p)
	s.waitStatus(10*time.Second, own, svc.Name, []netip.Addr{ip}, p[ip])
	waitEvent(t, 10*time.Second, own, svc.Name, corev1.EventTypeNormal, "VIPAssigned", ip.String())

	if err := procs[h.Name].Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	n2, _ := s.waitNewHolder(10*time.Second, h)
	s.mustReach(vip4, n2)
	if p[ip] == h.Name {
		p = s.waitPlaced(10*time.Second, []netip.Addr{ip}, h.Name)
		s.waitStatus(10*time.Second, own, svc.Name, []netip.Addr{ip}, p[ip])
	}
	s.deleteService(own, svc.Name)
	waitFor(t, 10*time.Second, "the deleted Service's VIP to leave every node and its claim to go", func() error {
		held, err := s.vipHolders([]netip.Addr{ip})
		if err != nil {
			return err
		}
		if len(held[ip]) > 0 {
			return fmt.Errorf("%s still on %v", ip, held[ip])
		}
		if _, err := pkg.admin.CoordinationV1().Leases(own).Get(ctx, claimLease(ip), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("claim %s: %v", claimLease(ip), err)
		}
		return nil
	})
	// Nothing the agents did was refused.
	for name, proc := range procs {
		for _, line := range strings.Split(proc.Log(), "\n") {
			if strings.Contains(line, "forbidden") || strings.Contains(line, "may not") {
				t.Errorf("%s: %s", name, line)
			}
		}
	}

	// What the identity is refused, tried for real.
	c := id.client
	svcs := c.CoreV1().Services(own)
	for what, err := range map[string]error{
		"update Lease kube-controller-manager": updateLease(ctx, c, kv, "kube-controller-manager"),
		"update Lease kube-scheduler":          updateLease(ctx, c, kv, "kube-scheduler"),
		"update Lease " + o.ServiceLeaseName:   updateLease(ctx, c, kv, o.ServiceLeaseName),
		"create a Lease in " + kv: func() error {
			_, err := c.CoordinationV1().Leases(kv).Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}(),
		"get Secret other": func() error { _, err := c.CoreV1().Secrets(own).Get(ctx, "other", metav1.GetOptions{}); return err }(),
		"list Secrets":     func() error { _, err := c.CoreV1().Secrets(own).List(ctx, metav1.ListOptions{}); return err }(),
		"update a Service": func() error {
			cur, err := pkg.admin.CoreV1().Services(own).Create(ctx, s.service(own, "probe", "192.0.2.51", 80), metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("creating it as admin: %w", err)
			}
			s.mu.Lock()
			s.created[types.NamespacedName{Namespace: own, Name: "probe"}] = true
			s.mu.Unlock()
			cur.Spec.Ports[0].Port = 81
			_, err = svcs.Update(ctx, cur, metav1.UpdateOptions{})
			return err
		}(),
		"delete a Service": svcs.Delete(ctx, "probe", metav1.DeleteOptions{}),
		"create a ConfigMap": func() error {
			_, err := c.CoreV1().ConfigMaps(own).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
			return err
		}(),
		"patch a Node": func() error {
			_, err := c.CoreV1().Nodes().Patch(ctx, "n1", types.MergePatchType, []byte(`{}`), metav1.PatchOptions{})
			return err
		}(),
	} {
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s: got %v, want forbidden", what, err)
		}
	}
	checkWrites(t, user, groups, own, kv)
}

func updateLease(ctx context.Context, c kubernetes.Interface, ns, name string) error {
	l, err := pkg.admin.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading it as admin: %w", err)
	}
	me := "intruder"
	l.Spec.HolderIdentity = &me
	_, err = c.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// checkWrites asks the API server's authorizer, for every resource it
// serves and every writing verb, whether user may: only the writes vipd
// needs may be allowed. Namespaced resources are asked about in vipd's
// namespace, kube-vip's and another one; the rest cluster-wide.
func checkWrites(t *testing.T, user string, groups []string, own, kv string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lists, err := pkg.admin.Discovery().ServerPreferredResources()
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	// needed: group/resource -> verbs, anywhere; ownOnly: only in own.
	needed := map[string][]string{
		"/services":        {"patch"},
		"/services/status": {"update"},
		"/events":          {"create", "patch"},
	}
	ownOnly := map[string][]string{"coordination.k8s.io/leases": {"create", "update", "delete"}}
	// Questions about oneself, which every authenticated user may ask
	// (system:basic-user) and which store nothing.
	everyone := map[string]bool{
		"authentication.k8s.io/selfsubjectreviews":      true,
		"authorization.k8s.io/selfsubjectaccessreviews": true,
		"authorization.k8s.io/selfsubjectrulesreviews":  true,
	}
	asked, allowed := 0, 0
	for _, l := range lists {
		gv := strings.Split(l.GroupVersion, "/")
		group := ""
		if len(gv) == 2 {
			group = gv[0]
		}
		for _, r := range l.APIResources {
			for _, res := range []string{r.Name, r.Name + "/status"} {
				for _, verb := range []string{"create", "update", "patch", "delete", "deletecollection"} {
					namespaces := []string{""}
					if r.Namespaced {
						namespaces = []string{own, kv, "default"}
					}
					for _, ns := range namespaces {
						ok, err := subjectMay(ctx, user, groups, verb, group, res, ns)
						if err != nil {
							t.Fatal(err)
						}
						asked++
						if !ok {
							continue
						}
						allowed++
						key := group + "/" + res
						if slices.Contains(needed[key], verb) || (ns == own && slices.Contains(ownOnly[key], verb)) || everyone[key] {
							continue
						}
						t.Errorf("%s may %s %s in namespace %q; vipd needs no such right", user, verb, key, ns)
					}
				}
			}
		}
	}
	t.Logf("asked the authorizer %d questions about writes; %d allowed", asked, allowed)
}

func subjectMay(ctx context.Context, user string, groups []string, verb, group, resource, ns string) (bool, error) {
	res, sub, _ := strings.Cut(resource, "/")
	r, err := pkg.admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Group: group, Resource: res, Subresource: sub, Namespace: ns}},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("asking whether %s may %s %s: %w", user, verb, resource, err)
	}
	return r.Status.Allowed, nil
}
