// Package deploy holds example manifests. Its test checks that they are
// objects a real API server accepts, that vipd accepts the configuration
// they give it, and that the RBAC grants what vipd does.
package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/lab/controlplane"
)

var files = []string{"static-pod.yaml", "rbac.yaml", "daemonset.yaml"}

// decode reads every object of a manifest, refusing unknown fields.
func decode(t *testing.T, name string) []runtime.Object {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	codecs := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var objs []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if strings.TrimSpace(string(doc)) == "" {
			continue
		}
		obj, _, err := codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		objs = append(objs, obj)
	}
}

func only[T runtime.Object](t *testing.T, objs []runtime.Object) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want one %T, found %d", zero, len(found))
	}
	return found[0]
}

// load runs vipd's configuration loading on a container's environment, as
// `vipd manager` would see it on node "node-a".
func load(t *testing.T, c corev1.Container) config.Config {
	t.Helper()
	if !slices.Equal(c.Args, []string{"manager"}) {
		t.Errorf("container %s runs %v, want [manager]", c.Name, c.Args)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
			env[e.Name] = "node-a"
		case e.ValueFrom != nil:
			t.Errorf("env %s: unexpected source %+v", e.Name, e.ValueFrom)
		default:
			env[e.Name] = e.Value
		}
	}
	fs := pflag.NewFlagSet("vipd", pflag.ContinueOnError)
	config.AddFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(fs, func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("vipd refuses the configuration of container %s: %v", c.Name, err)
	}
	return cfg
}

// checkPod checks what every vipd pod needs: the host's network, the
// capabilities, and a health probe or metrics where configured.
func checkPod(t *testing.T, spec corev1.PodSpec, cfg config.Config) corev1.Container {
	t.Helper()
	if !spec.HostNetwork {
		t.Error("not on the host network: VIPs would land in the pod's namespace")
	}
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == "vipd" })
	if i < 0 {
		t.Fatal("no container named vipd")
	}
	c := spec.Containers[i]
	var caps []corev1.Capability
	if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil {
		caps = c.SecurityContext.Capabilities.Add
	}
	for _, want := range []corev1.Capability{"NET_ADMIN", "NET_RAW"} {
		if !slices.Contains(caps, want) {
			t.Errorf("capability %s missing: %v", want, caps)
		}
	}
	// The declared ports are the ones vipd listens on.
	for _, p := range c.Ports {
		want := ""
		switch p.Name {
		case "heartbeat":
			want = fmt.Sprint(cfg.HeartbeatPort)
		case "metrics":
			_, want, _ = net.SplitHostPort(cfg.MetricsAddr)
		}
		if got := fmt.Sprint(p.ContainerPort); got != want {
			t.Errorf("port %s declared as %s, vipd uses %q", p.Name, got, want)
		}
	}
	if cfg.NodeName != "node-a" {
		t.Errorf("node name %q, want it from spec.nodeName", cfg.NodeName)
	}
	if p := c.LivenessProbe; p != nil && p.HTTPGet != nil {
		_, port, err := net.SplitHostPort(cfg.MetricsAddr)
		if err != nil || port != p.HTTPGet.Port.String() {
			t.Errorf("liveness probe on port %s, metrics on %q", p.HTTPGet.Port.String(), cfg.MetricsAddr)
		}
	}
	return c
}

func TestStaticPod(t *testing.T) {
	pod := only[*corev1.Pod](t, decode(t, "static-pod.yaml"))
	cfg := load(t, pod.Spec.Containers[0])
	c := checkPod(t, pod.Spec, cfg)
	if !cfg.ControlPlane || !slices.Equal(cfg.VIPs, []netip.Addr{netip.MustParseAddr("192.0.2.100")}) || cfg.Interface != "eth0" {
		t.Errorf("control plane %v VIPs %v interface %q, want the VIP 192.0.2.100 on eth0", cfg.ControlPlane, cfg.VIPs, cfg.Interface)
	}
	if pod.Namespace != "kube-system" || cfg.Namespace != "kube-system" || cfg.LeaseName != "plndr-cp-lock" {
		t.Errorf("pod in %q, Leases in %q named %q", pod.Namespace, cfg.Namespace, cfg.LeaseName)
	}
	mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return cfg.Kubeconfig == m.MountPath || strings.HasPrefix(cfg.Kubeconfig, m.MountPath+"/")
	})
	if !mounted {
		t.Errorf("kubeconfig %q is on no volume of the container", cfg.Kubeconfig)
	}
}

func TestDaemonSet(t *testing.T) {
	ds := only[*appsv1.DaemonSet](t, decode(t, "daemonset.yaml"))
	cfg := load(t, ds.Spec.Template.Spec.Containers[0])
	checkPod(t, ds.Spec.Template.Spec, cfg)
	if !cfg.Services || cfg.ControlPlane || cfg.Kubeconfig != "" {
		t.Errorf("services %v control plane %v kubeconfig %q, want Services only, in-cluster", cfg.Services, cfg.ControlPlane, cfg.Kubeconfig)
	}

	// The static pods serve Services too, with the same Lease namespace:
	// both kinds of agent must agree, or each counts the other as a
	// candidate that never takes anything.
	static := load(t, only[*corev1.Pod](t, decode(t, "static-pod.yaml")).Spec.Containers[0])
	if static.Services != cfg.Services || static.ServiceElection != cfg.ServiceElection || static.Namespace != cfg.Namespace {
		t.Errorf("static pod (services %v, per service %v, Leases in %s) and DaemonSet (%v, %v, %s) disagree",
			static.Services, static.ServiceElection, static.Namespace, cfg.Services, cfg.ServiceElection, cfg.Namespace)
	}

	rbac := decode(t, "rbac.yaml")
	sa := ds.Spec.Template.Spec.ServiceAccountName
	allowed := func(kind, namespace, group, resource, verb string) bool {
		var roles []string
		for _, o := range rbac {
			switch b := o.(type) {
			case *rbacv1.RoleBinding:
				if b.Namespace == namespace && kind == "Role" && b.RoleRef.Kind == "Role" && boundTo(b.Subjects, sa, ds.Namespace) {
					roles = append(roles, b.RoleRef.Name)
				}
			case *rbacv1.ClusterRoleBinding:
				if kind == "ClusterRole" && b.RoleRef.Kind == "ClusterRole" && boundTo(b.Subjects, sa, ds.Namespace) {
					roles = append(roles, b.RoleRef.Name)
				}
			}
		}
		for _, o := range rbac {
			var rules []rbacv1.PolicyRule
			switch r := o.(type) {
			case *rbacv1.Role:
				if kind == "Role" && r.Namespace == namespace && slices.Contains(roles, r.Name) {
					rules = r.Rules
				}
			case *rbacv1.ClusterRole:
				if kind == "ClusterRole" && slices.Contains(roles, r.Name) {
					rules = r.Rules
				}
			}
			for _, rule := range rules {
				if slices.Contains(rule.APIGroups, group) && slices.Contains(rule.Resources, resource) && slices.Contains(rule.Verbs, verb) {
					return true
				}
			}
		}
		return false
	}
	for _, want := range []struct {
		kind, namespace, group, resource string
		verbs                            []string
	}{
		{"Role", cfg.Namespace, "coordination.k8s.io", "leases", []string{"get", "list", "watch", "create", "update", "delete"}},
		{"Role", cfg.PoolNamespace, "", "configmaps", []string{"get", "list", "watch"}},
		{"ClusterRole", "", "", "services", []string{"get", "list", "watch", "update", "patch"}},
		{"ClusterRole", "", "", "services/status", []string{"update", "patch"}},
		{"ClusterRole", "", "discovery.k8s.io", "endpointslices", []string{"get", "list", "watch"}},
		{"ClusterRole", "", "", "events", []string{"create", "patch"}},
	} {
		for _, verb := range want.verbs {
			if !allowed(want.kind, want.namespace, want.group, want.resource, verb) {
				t.Errorf("service account %s may not %s %s (group %q) through a %s in %q", sa, verb, want.resource, want.group, want.kind, want.namespace)
			}
		}
	}
}

func boundTo(subjects []rbacv1.Subject, sa, namespace string) bool {
	return slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
		return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == namespace
	})
}

// TestAPIServerAccepts creates every object with a server-side dry run on a
// real kube-apiserver, which validates what decoding alone does not.
func TestAPIServerAccepts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := controlplane.Start(ctx, controlplane.Options{})
	if errors.Is(err, controlplane.ErrAssetsMissing) && os.Getenv("CI") != "true" {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	c, err := client.New(cp.Config(), client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		for _, o := range decode(t, name) {
			obj, ok := o.(client.Object)
			if !ok {
				t.Fatalf("%s: %T is not an object", name, o)
			}
			if err := c.Create(ctx, obj, client.DryRunAll); err != nil {
				t.Errorf("%s: %s %s: %v", name, kindOf(obj), obj.GetName(), err)
			}
		}
	}
}

func kindOf(o runtime.Object) string {
	if gvks, _, err := scheme.Scheme.ObjectKinds(o); err == nil && len(gvks) > 0 {
		return gvks[0].Kind
	}
	return fmt.Sprintf("%T", o)
}
