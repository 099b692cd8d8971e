package status

import (
	"bytes"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/vipd/vipd/internal/agent"
	"github.com/vipd/vipd/internal/election"
)

// FuzzNodeLeaseAnnotations: what agents publish on their node Leases is
// read by every other agent and by vipd status, and anyone allowed to
// write Leases in the namespace can put anything there. Garbage in any
// annotation never panics the report, and it still lists every VIP.
func FuzzNodeLeaseAnnotations(f *testing.F) {
	info := agent.Info{Heartbeats: true, ControlPlane: &agent.ControlPlaneInfo{Namespace: "vipd", Lease: "plndr-cp-lock",
		VIPs: []string{"198.51.100.100"}}}
	f.Add(info.Encode(), "n2=heard", "198.51.100.11", `{"plndr-cp-lock":"interface eth0 refused it"}`, "198.51.100.11:7947", "v1.0.0")
	f.Add("{{", "==,", "x,,300.1.2.3", "{not json", "no:such:port", "")
	f.Add(`{"controlPlane":{"vips":["not-an-ip"]},"services":{"perAddress":true}}`, "n2=silent,n3", ",", `[]`, "[::1]:0", "\x00")
	f.Add(`{"controlPlane":null}`, "n1=heard,n1=silent", "2001:db8::1,198.51.100.11", `{"":""}`, "", "v")
	f.Fuzz(func(t *testing.T, config, peers, addrs, refused, heartbeat, version string) {
		l := nodeLease("n1", time.Second, "", "", info)
		l.Annotations = map[string]string{agent.AnnotationConfig: config, agent.AnnotationPeers: peers,
			agent.AnnotationNodeAddrs: addrs, election.AnnotationRefused: refused,
			election.AnnotationPeerAddr: heartbeat, agent.AnnotationVersion: version}
		good := nodeLease("n2", time.Second, "n1=heard", "198.51.100.12", info)
		s := Snapshot{Namespace: "vipd", Leases: map[string][]coordinationv1.Lease{
			"vipd": {l, good, claim("vipd", "plndr-cp-lock", "n2", 1, time.Minute)}},
			Services: []*corev1.Service{lbService("web", "api", "192.0.2.10", "n2", "192.0.2.10")}}
		r := Compute(s, now)
		found := false
		for _, v := range r.VIPs {
			found = found || v.VIP == "198.51.100.100"
		}
		if !found {
			t.Fatalf("the control-plane VIP is missing from the report: %+v", r.VIPs)
		}
		var b bytes.Buffer
		if err := render(&b, r, "wide", false); err != nil {
			t.Fatal(err)
		}
		_ = election.ParseRefused(refused)
		_ = agent.ParsePeers(peers)
		_, _ = agent.ParseInfo(config)
	})
}
