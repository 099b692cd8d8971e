package manifest

import (
	"fmt"
	"io"
	"strings"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// RBAC names.
const (
	roleOwn     = "vipd"          // in AgentNamespace: vipd's own objects
	roleKubeVIP = "vipd-kube-vip" // in Namespace: kube-vip's two Leases, the pool
	clusterRole = "vipd"          // Services, EndpointSlices, Events, Nodes
)

// Rules returns the objects of the RBAC manifest: the agent namespace, the
// ServiceAccount, kube-vip's two Leases (so that nobody needs to create
// Leases in kube-system), and roles bound to the ServiceAccount. Every
// write is fenced by namespace or by name, except Services (patch) and
// their status (update): RBAC cannot fence fields, and vipd serves
// Services in every namespace. docs/security.md says what that leaves.
func Rules(o Options) []runtime.Object {
	sa := rbacv1.Subject{Kind: "ServiceAccount", Name: ServiceAccount, Namespace: o.AgentNamespace}
	leaseNames := []string{o.LeaseName, o.ServiceLeaseName}
	var contested []string // the kube-vip Leases this identity may take
	if o.ControlPlane {
		contested = append(contested, o.LeaseName)
	}
	if o.Services && !o.ServiceElection {
		contested = append(contested, o.ServiceLeaseName)
	}

	objs := []runtime.Object{
		&corev1.Namespace{TypeMeta: typeMeta("v1", "Namespace"), ObjectMeta: metav1.ObjectMeta{Name: o.AgentNamespace}},
		&corev1.ServiceAccount{TypeMeta: typeMeta("v1", "ServiceAccount"),
			ObjectMeta: metav1.ObjectMeta{Name: ServiceAccount, Namespace: o.AgentNamespace}},
	}
	for _, name := range leaseNames {
		objs = append(objs, &coordinationv1.Lease{TypeMeta: typeMeta("coordination.k8s.io/v1", "Lease"),
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace}})
	}

	own := []rbacv1.PolicyRule{
		// Node Leases (vipd-node-<node>) and per-address claims
		// (vipd-svc-<address>); a claim whose Service is gone is deleted.
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
		// The heartbeat key, and no other Secret.
		{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{o.HeartbeatSecret},
			Verbs: []string{"get", "list", "watch"}},
	}
	kubeVIP := []rbacv1.PolicyRule{
		// kube-vip's Leases by name: read both, write only those contended
		// here. Creating is left to the manifest (objects above): create
		// cannot be fenced by name.
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: leaseNames,
			Verbs: []string{"get", "list", "watch"}},
	}
	if len(contested) > 0 {
		kubeVIP = append(kubeVIP, rbacv1.PolicyRule{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			ResourceNames: contested, Verbs: []string{"update"}})
	}
	cluster := []rbacv1.PolicyRule{
		// The cluster's identity in heartbeats: the UID of kube-system.
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, ResourceNames: []string{"kube-system"}, Verbs: []string{"get"}},
	}
	if o.Services {
		cluster = append(cluster,
			// Annotations by merge patch: kube-vip.io/vipHost, and pool
			// allocations (kube-vip.io/loadbalancerIPs, vipd.io/pool-allocated).
			rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch", "patch"}},
			// status.loadBalancer.ingress: the address and its holder.
			rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"services/status"}, Verbs: []string{"update"}},
			// Which nodes have ready endpoints (externalTrafficPolicy Local).
			rbacv1.PolicyRule{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
			// Events on Services: address held, moved, refused.
			rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
			// Node labels, read only while a node selector is in use (a
			// pool's, which may appear at any time, --node-selector,
			// --service-exclude-control-plane).
			rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		)
		pool := rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{o.PoolConfigMap},
			Verbs: []string{"get", "list", "watch"}}
		if o.PoolNamespace == o.Namespace {
			kubeVIP = append(kubeVIP, pool)
		} else {
			objs = append(objs, role(o.PoolNamespace, "vipd-pool", []rbacv1.PolicyRule{pool}), binding(o.PoolNamespace, "vipd-pool", sa))
		}
	}
	objs = append(objs,
		role(o.AgentNamespace, roleOwn, own), binding(o.AgentNamespace, roleOwn, sa),
		role(o.Namespace, roleKubeVIP, kubeVIP), binding(o.Namespace, roleKubeVIP, sa),
		&rbacv1.ClusterRole{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRole"),
			ObjectMeta: metav1.ObjectMeta{Name: clusterRole}, Rules: cluster},
		&rbacv1.ClusterRoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
			ObjectMeta: metav1.ObjectMeta{Name: clusterRole},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole},
			Subjects:   []rbacv1.Subject{sa}},
	)
	return objs
}

func typeMeta(apiVersion, kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}
}

func role(namespace, name string, rules []rbacv1.PolicyRule) *rbacv1.Role {
	return &rbacv1.Role{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "Role"),
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Rules: rules}
}

func binding(namespace, name string, sa rbacv1.Subject) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{TypeMeta: typeMeta("rbac.authorization.k8s.io/v1", "RoleBinding"),
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{sa}}
}

// RBAC writes what the DaemonSet's ServiceAccount may do.
func RBAC(w io.Writer, o Options) error {
	if err := o.check("rbac"); err != nil {
		return err
	}
	header := fmt.Sprintf(`What vipd's DaemonSet (ServiceAccount %s/%s) may do, and no more.
Generated by: vipd %s
Apply before the DaemonSet. Writes are fenced by namespace (%s holds
vipd's own Leases and its heartbeat key) or by name (kube-vip's Leases in
%s), except Services: RBAC cannot fence fields, so the patch on services
and the update on services/status reach every Service in the cluster.
docs/security.md says what an identity with these rights could still do.`,
		o.AgentNamespace, ServiceAccount, strings.Join(o.Args, " "), o.AgentNamespace, o.Namespace)
	return write(w, header, Rules(o)...)
}
