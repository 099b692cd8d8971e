package manifest

import (
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"manifest", "pod", "--services"}, ""},
		{[]string{"manifest", "pod"}, "nothing to do"},
		{[]string{"manifest", "pod", "--controlplane"}, "--controlplane needs the VIP"},
		{[]string{"manifest", "pod", "--services", "--inCluster"}, "a static pod cannot use a ServiceAccount"},
		{[]string{"manifest", "daemonset", "--services", "--leaderElection=false"}, "--leaderElection=false is only possible"},
		{[]string{"manifest", "daemonset", "--services", "--servicesElection", "--leaderElection=false"}, ""},
		{[]string{"manifest", "daemonset", "--services", "--taint", "--all-nodes"}, "contradict"},
		{[]string{"manifest", "daemonset", "--services", "--bgp"}, "--bgp is not supported: BGP mode is not implemented"},
		{[]string{"manifest", "pod", "--services", "--health-addr="}, "--health-addr is empty"},
	} {
		_, err := Generate("test", tc.args)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
	}
}

// TestDaemonSetPlacement: --taint, --all-nodes and neither place the
// DaemonSet on control-plane nodes only, everywhere, or the other nodes.
func TestDaemonSetPlacement(t *testing.T) {
	for flag, want := range map[string]string{
		"--taint":     "nodeSelector:",
		"--all-nodes": "tolerations:",
		"--services":  "operator: DoesNotExist",
	} {
		out, err := Generate("test", []string{"manifest", "daemonset", "--services", flag})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("%s: no %q in\n%s", flag, want, out)
		}
	}
}

// TestRBACContests: the identity may update only the kube-vip Leases it
// contends for.
func TestRBACContests(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want []string
	}{
		{Options{Services: true, ServiceElection: true}, nil},
		{Options{Services: true}, []string{"plndr-svcs-lock"}},
		{Options{ControlPlane: true, Services: true, ServiceElection: true}, []string{"plndr-cp-lock"}},
	} {
		o := Defaults("test")
		o.ControlPlane, o.Services, o.ServiceElection = tc.o.ControlPlane, tc.o.Services, tc.o.ServiceElection
		var got []string
		for _, obj := range Rules(o) {
			if r, ok := obj.(interface{ GetName() string }); ok && r.GetName() == roleKubeVIP {
				for _, rule := range roleRules(obj) {
					if len(rule.Verbs) == 1 && rule.Verbs[0] == "update" {
						got = append(got, rule.ResourceNames...)
					}
				}
			}
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%+v: update on %v, want %v", tc.o, got, tc.want)
		}
	}
}

func roleRules(obj any) []rbacv1.PolicyRule {
	if r, ok := obj.(*rbacv1.Role); ok {
		return r.Rules
	}
	return nil
}

// TestServiceInterface: kube-vip's --serviceInterface becomes
// vip_servicesinterface, which vipd reads.
func TestServiceInterface(t *testing.T) {
	out, err := Generate("test", []string{"manifest", "daemonset", "--services", "--serviceInterface", "eth1"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "name: vip_servicesinterface\n          value: eth1") {
		t.Errorf("no vip_servicesinterface=eth1 in\n%s", out)
	}
}
