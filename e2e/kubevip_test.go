package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/lab"
)

// kubeVIPClusterRole is the ClusterRole kube-vip's manifest generator
// prints (`kube-vip manifest rbac`, kube-vip v1.2.3, system:kube-vip-role):
// no Lease delete, no Service patch, no Events, no ConfigMaps, no Secrets.
func kubeVIPClusterRole() *rbacv1.ClusterRole {
	rule := func(group string, resources []string, verbs ...string) rbacv1.PolicyRule {
		return rbacv1.PolicyRule{APIGroups: []string{group}, Resources: resources, Verbs: verbs}
	}
	return &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "system:kube-vip-role"},
		Rules: []rbacv1.PolicyRule{
			rule("", []string{"services/status"}, "update"),
			rule("", []string{"services", "endpoints"}, "list", "get", "watch", "update"),
			rule("", []string{"nodes"}, "list", "get", "watch", "update", "patch"),
			rule("coordination.k8s.io", []string{"leases"}, "list", "get", "watch", "update", "create"),
			rule("discovery.k8s.io", []string{"endpointslices"}, "list", "get", "watch", "update"),
			rule("", []string{"pods"}, "list"),
		},
	}
}

// TestKubeVIPRBAC swaps kube-vip's image for vipd and keeps everything
// else: kube-vip's environment variables and kube-vip's ClusterRole. vipd
// must hold the control-plane VIP and serve annotated Services, and say
// once per agent what it cannot do with that identity (no Events, no
// address pool, no claim clean-up), never hang on it.
func TestKubeVIPRBAC(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true, controlPlane: true})
	ns := s.ns
	suffix := "-" + ns
	role := kubeVIPClusterRole()
	apply(t, suffix, role, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "system:kube-vip-binding"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "kube-vip", Namespace: ns}},
	})
	id := s.newIdentity("system:serviceaccount:"+ns+":kube-vip", "system:serviceaccounts", "system:serviceaccounts:"+ns, "system:authenticated")

	// kube-vip's environment, as its generator prints it for ARP mode
	// with the control plane and per-Service election, at short timings;
	// the class keeps other tests' Services away.
	env := func(n *lab.Node) []string {
		return []string{
			"vip_arp=true", "port=6443", "vip_nodename=" + n.Name, "vip_interface=eth0",
			"cp_enable=true", "cp_namespace=" + ns,
			"svc_enable=true", "svc_leasename=plndr-svcs-lock", "svc_election=true",
			"vip_leaderelection=true", "vip_leasename=plndr-cp-lock",
			"vip_leaseduration=3", "vip_renewdeadline=2", "vip_retryperiod=1",
			"address=" + vip4.String(), "prometheus_server=:2112",
			"lb_class_name=" + s.class, "lb_class_only=true",
			"k8s_config_file=" + id.kubeconfig,
		}
	}
	procs := map[string]*lab.Process{}
	for _, n := range s.lab.Nodes {
		p, err := n.Start(context.Background(), pkg.bin, []string{"manager"}, env(n))
		if err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		s.procs = append(s.procs, p)
		s.mu.Unlock()
		procs[n.Name] = p
	}
	h := s.waitSoleHolder(startTimeout)
	s.mustReach(vip4, h)

	ips := addrRange("192.0.2.60", 3)
	for i, ip := range ips {
		s.create(s.service(ns, fmt.Sprintf("web-%d", i), ip.String(), 80))
	}
	p := s.waitPlaced(startTimeout, ips)
	s.reachAll(p)
	for i, ip := range ips {
		// Status and vipHost by one update of services/status, which
		// kube-vip's role grants.
		s.waitStatus(10*time.Second, ns, fmt.Sprintf("web-%d", i), []netip.Addr{ip}, p[ip])
	}

	// One line per missing capability, per agent; no client-go retry loop.
	for name, proc := range procs {
		waitLog(t, proc, 0, 10*time.Second, "may not create events", "no Events are recorded (on Services, on the control-plane Lease)")
		log := proc.Log()
		for _, want := range []string{
			"may not create events",
			"may not read ConfigMap " + "kube-system/kubevip",
			"may not delete leases",
			"may update but not patch Services",
		} {
			if n := strings.Count(log, want); n != 1 {
				t.Errorf("%s logged %q %d times, want once", name, want, n)
			}
		}
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "Failed to watch") || strings.Contains(line, "Failed to list") || strings.Contains(line, "rejected event") {
				t.Errorf("%s: %s", name, line)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if evs, err := pkg.admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err != nil || len(evs.Items) > 0 {
		t.Errorf("Events in %s: %v (%v); want none: the identity may not create them", ns, evs, err)
	}
}
