package status

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vipd/vipd/internal/agent"
	"github.com/vipd/vipd/internal/election"
)

var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func nodeLease(node string, renewedAgo time.Duration, peers, addrs string, info agent.Info) coordinationv1.Lease {
	secs := int32(5)
	renew := metav1.NewMicroTime(now.Add(-renewedAgo))
	return coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: election.NodeLeasePrefix + node, Namespace: "vipd",
			Labels: map[string]string{election.LabelKind: election.KindNode},
			Annotations: map[string]string{agent.AnnotationVersion: "v1.0.0", agent.AnnotationConfig: info.Encode(),
				agent.AnnotationPeers: peers, agent.AnnotationNodeAddrs: addrs, election.AnnotationPeerAddr: addrs + ":7947"}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &node, LeaseDurationSeconds: &secs, RenewTime: &renew},
	}
}

func claim(ns, name, holder string, transitions int32, acquiredAgo time.Duration) coordinationv1.Lease {
	at := metav1.NewMicroTime(now.Add(-acquiredAgo))
	return coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{election.LabelKind: election.KindClaim}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, AcquireTime: &at, LeaseTransitions: &transitions},
	}
}

func lbService(ns, name, ips, vipHost string, ingress ...string) *corev1.Service {
	class := "kube-vip.io/kube-vip-class"
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name),
			Annotations: map[string]string{"kube-vip.io/loadbalancerIPs": ips}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class,
			Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if vipHost != "" {
		s.Annotations["kube-vip.io/vipHost"] = vipHost
	}
	for _, ip := range ingress {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	return s
}

func row(t *testing.T, r Report, vip, serves string) VIP {
	t.Helper()
	for _, v := range r.VIPs {
		if v.VIP == vip && strings.Join(v.Serves, ",") == serves {
			return v
		}
	}
	t.Fatalf("no row for %q serving %q in %+v", vip, serves, r.VIPs)
	return VIP{}
}

func hasProblem(v VIP, substr string) bool {
	for _, p := range v.Problems {
		if strings.Contains(p, substr) {
			return true
		}
	}
	return false
}

func TestCompute(t *testing.T) {
	info := agent.Info{Heartbeats: true,
		ControlPlane: &agent.ControlPlaneInfo{Namespace: "kube-system", Lease: "plndr-cp-lock", VIPs: []string{"198.51.100.100"}},
		Services: &agent.ServicesInfo{Namespace: "kube-system", Lease: "plndr-svcs-lock", PerAddress: true,
			Class: "kube-vip.io/kube-vip-class", PoolNamespace: "kube-system", PoolConfigMap: "kubevip"}}
	s := Snapshot{
		Namespace: "vipd",
		Leases: map[string][]coordinationv1.Lease{
			"vipd": {
				nodeLease("n1", time.Second, "n2=heard,n3=silent", "198.51.100.11", info),
				nodeLease("n2", 500*time.Millisecond, "n1=heard,n3=silent", "198.51.100.12", info),
				nodeLease("n3", 20*time.Second, "n1=heard,n2=heard", "198.51.100.13", info),
				claim("vipd", "vipd-svc-192-0-2-10", "n1", 0, time.Minute),
				claim("vipd", "vipd-svc-192-0-2-11", "n3", 1, time.Hour),
				claim("vipd", "vipd-svc-192-0-2-12", "kube-vip-n4", 4, time.Hour),
			},
			"kube-system": {claim("kube-system", "plndr-cp-lock", "n2", 3, 90*time.Second)},
		},
		Services: []*corev1.Service{
			lbService("web", "api", "192.0.2.10", "n1", "192.0.2.10"),
			lbService("web", "old", "192.0.2.11", "n3", "192.0.2.11"),
			lbService("web", "other", "192.0.2.12", ""),
			lbService("web", "bad", "not-an-ip", ""),
			lbService("web", "own", "198.51.100.12", ""),
			lbService("web", "cpshare", "198.51.100.100", "n2", "198.51.100.100"),
		},
	}
	r := Compute(s, now)

	cp := row(t, r, "198.51.100.100", "control plane,web/cpshare")
	if cp.Holder != "n2" || cp.Transitions != 3 || cp.Election != "plndr-cp-lock" || cp.ElectionNamespace != "kube-system" ||
		cp.HolderLease != LeaseLive || cp.HeardBy != 1 || cp.HeardOf != 1 || len(cp.Problems) != 0 {
		t.Errorf("control-plane row %+v", cp)
	}
	if cp.Since == nil || !cp.Since.Equal(now.Add(-90*time.Second)) {
		t.Errorf("since %v", cp.Since)
	}
	if api := row(t, r, "192.0.2.10", "web/api"); api.Holder != "n1" || len(api.Problems) != 0 {
		t.Errorf("web/api row %+v", api)
	}
	// n3's Lease expired and the live agents no longer hear it.
	if old := row(t, r, "192.0.2.11", "web/old"); old.HolderLease != LeaseExpired || !hasProblem(old, "no holder: n3 is not live") {
		t.Errorf("web/old row %+v", old)
	}
	// Heartbeats overrule a fresh Lease: n1 is silent to n2, which hears others.
	s2 := s
	s2.Leases = map[string][]coordinationv1.Lease{"vipd": slices.Clone(s.Leases["vipd"]), "kube-system": s.Leases["kube-system"]}
	s2.Leases["vipd"][1] = nodeLease("n2", 500*time.Millisecond, "n1=silent,n3=heard", "198.51.100.12", info)
	s2.Leases["vipd"][2] = nodeLease("n3", 200*time.Millisecond, "n1=silent,n2=heard", "198.51.100.13", info)
	if api := row(t, Compute(s2, now), "192.0.2.10", "web/api"); api.HolderLive || !hasProblem(api, "its heartbeats stopped") {
		t.Errorf("silent holder's row %+v", api)
	}
	if other := row(t, r, "192.0.2.12", "web/other"); other.HolderLease != LeaseMissing || !hasProblem(other, "conflicting owner: kube-vip-n4") {
		t.Errorf("web/other row %+v", other)
	}
	// n1 cannot hold web/api's address: it says so on its node Lease.
	s3 := s
	s3.Leases = map[string][]coordinationv1.Lease{"vipd": slices.Clone(s.Leases["vipd"]), "kube-system": s.Leases["kube-system"]}
	n1 := nodeLease("n1", time.Second, "n2=heard,n3=silent", "198.51.100.11", info)
	n1.Annotations[election.AnnotationRefused] = `{"vipd-svc-192-0-2-10":"adding 192.0.2.10 to eth0: permission denied"}`
	s3.Leases["vipd"][0] = n1
	if api := row(t, Compute(s3, now), "192.0.2.10", "web/api"); !hasProblem(api, "address refused by n1: adding 192.0.2.10") {
		t.Errorf("refused row %+v", api)
	}
	if own := row(t, r, "198.51.100.12", "web/own"); own.Election != "" || !hasProblem(own, "node n2's own address") {
		t.Errorf("web/own row %+v", own)
	}
	if bad := row(t, r, "", "web/bad"); !hasProblem(bad, "InvalidLoadBalancerIPs") {
		t.Errorf("web/bad row %+v", bad)
	}

	var n2 Node
	for _, n := range r.Nodes {
		if n.Name == "n2" {
			n2 = n
		}
	}
	if n2.VIPs != 1 || n2.Version != "v1.0.0" || n2.Lease != LeaseLive || n2.Hears != 1 || n2.Peers != 2 || n2.HeardBy != 1 || n2.HeardOf != 1 {
		t.Errorf("n2 %+v", n2)
	}

	// Every format renders; JSON round-trips.
	for _, f := range []string{OutputTable, OutputWide, OutputJSON, OutputYAML} {
		var b bytes.Buffer
		if err := render(&b, r, f, false); err != nil || b.Len() == 0 {
			t.Errorf("render %q: %v", f, err)
		}
	}
	var b bytes.Buffer
	if err := render(&b, r, OutputJSON, false); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.VIPs) != len(r.VIPs) {
		t.Errorf("JSON: %v, %d rows", err, len(back.VIPs))
	}
	if significant(r) != significant(Compute(s, now)) {
		t.Error("the same state is a change")
	}
}

func TestNoAgents(t *testing.T) {
	r := Compute(Snapshot{Namespace: "vipd"}, now)
	if len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "no vipd agent") {
		t.Errorf("problems %v", r.Problems)
	}
}
