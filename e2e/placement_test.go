package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// gracefulGap is the longest a client may go unanswered when a holder
// hands its VIPs over gracefully (docs/placement.md): the handover is a
// release and a take, two Lease writes, with margin for a loaded machine.
const gracefulGap = 50 * time.Millisecond

// pingGap measures the longest gap in a client's answers from each VIP
// while fault runs, and until every VIP answers again.
func pingGap(t *testing.T, c *lab.Client, vips []netip.Addr, fault func()) map[netip.Addr]time.Duration {
	t.Helper()
	recs := map[netip.Addr]*lab.PingRecord{}
	for _, v := range vips {
		rec, err := c.PingLoop(t.Context(), v, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer rec.Close()
		recs[v] = rec
	}
	// Every VIP answers before the fault.
	waitFor(t, 5*time.Second, "answers from every VIP before the fault", func() error {
		for v, rec := range recs {
			if len(rec.Replies()) < 3 {
				return fmt.Errorf("%s: %d replies", v, len(rec.Replies()))
			}
		}
		return nil
	})
	from := time.Now()
	fault()
	// ... and after it: the gap has an answer closing it.
	after := time.Now()
	waitFor(t, 5*time.Second, "answers from every VIP after the fault", func() error {
		for v, rec := range recs {
			rs := rec.Replies()
			if len(rs) == 0 || !rs[len(rs)-1].After(after.Add(100*time.Millisecond)) {
				return fmt.Errorf("%s: no answer since the fault", v)
			}
		}
		return nil
	})
	gaps := map[netip.Addr]time.Duration{}
	for v, rec := range recs {
		rec.Stop()
		if err := rec.Err(); err != nil {
			t.Fatal(err)
		}
		gaps[v] = rec.LongestGap(from.Add(-500*time.Millisecond), time.Now())
	}
	return gaps
}

// TestNodeSelector: with a global node selector, a node it excludes never
// holds any VIP, the control-plane VIP included. When the labels of the
// holder change so that it no longer matches, it hands its VIPs over
// gracefully: the client's pings go unanswered for no longer than
// gracefulGap, and the node ends up holding nothing.
func TestNodeSelector(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true, controlPlane: true})
	createNodes(t, s.lab.Nodes, map[string]map[string]string{
		"n1": {"vipd.example/vip": "yes"}, "n2": {"vipd.example/vip": "yes"}, "n3": {"vipd.example/vip": "no"},
	})
	svcVIPs := addrRange("192.0.2.60", 8)
	vips := append([]netip.Addr{vip4}, svcVIPs...)
	ws := watchVIPs(t, s.lab.Nodes, vips)
	for i, v := range svcVIPs {
		s.create(s.service(s.ns, fmt.Sprintf("svc-%d", i), v.String(), svcPort))
	}
	procs := s.startAll("--node-selector", "vipd.example/vip=yes")
	s.waitLive(startTimeout)
	s.waitHeard(procs)
	p := s.waitPlaced(placeTimeout, vips)
	t.Logf("placed: %v", p.perNode(s.lab.Nodes))
	s.reachAll(p)
	holdFor(t, 2*time.Second, "n3 holding nothing", func() error { return heldBy(ws, "n3") })
	neverHeldBy(t, ws, "n3")

	// The holder of the control-plane VIP stops matching.
	h := p[vip4]
	moving := p.onNode(h)
	other := "n1"
	if h == "n1" {
		other = "n2"
	}
	gaps := pingGap(t, s.lab.Client, moving, func() {
		setNodeLabels(t, h, map[string]string{"vipd.example/vip": "no"})
		s.waitAllOn(10*time.Second, "eth0", moving, other)
	})
	for _, v := range moving {
		t.Logf("%s: %s -> %s, longest gap %v", v, h, other, gaps[v].Round(time.Millisecond))
		if gaps[v] > gracefulGap {
			t.Errorf("the client went %v without an answer from %s when %s stopped matching; want at most %v", gaps[v], v, h, gracefulGap)
		}
	}
	after := s.waitPlaced(placeTimeout, vips)
	if on := after.onNode(h); len(on) > 0 {
		t.Errorf("%s still holds %v after its labels changed", h, on)
	}
	s.reachAll(after)
	neverHeldBy(t, ws, "n3")
	// The old holder kept each VIP, silent, only until shortly after it
	// saw the new one.
	for _, v := range moving {
		w := ws[v]
		if d := w.Overlap(time.Time{}, time.Now(), nil); d > s.timing.retry {
			t.Errorf("%s kept %s for %v after %s held it too; it should let go once it sees the new holder: %+v", h, v, d, other, w.Events())
		}
	}
	waitLog(t, procs[h], 0, 5*time.Second, "this node's labels keep it from holding some VIPs")
}

// TestPoolNodeSelector: a pool's node selector keeps that pool's VIPs on
// the nodes it matches, while VIPs of other pools go anywhere; a Service
// naming the pool gets its address from it. When the labels of a node of
// the pool change, its pool VIPs move to the pool's other nodes only.
func TestPoolNodeSelector(t *testing.T) {
	s := newSvcEnv(t, svcOptions{})
	createNodes(t, s.lab.Nodes, map[string]map[string]string{
		"n1": {"zone": "core"}, "n2": {"zone": "edge"}, "n3": {"zone": "edge"},
	})
	const edgeRange = "192.0.2.200/29"
	s.createPools(map[string]string{
		"pool-edge":               "192.0.2.201-192.0.2.206",
		"pool-edge.node-selector": "zone=edge",
		"cidr-global":             "192.0.2.64/28",
	})
	var edge, plain []string
	for i := range 6 {
		name := fmt.Sprintf("edge-%d", i)
		svc := s.service(s.ns, name, "", svcPort)
		svc.Annotations = map[string]string{"vipd.io/address-pool": "edge"}
		s.create(svc)
		edge = append(edge, name)
		name = fmt.Sprintf("plain-%d", i)
		s.create(s.service(s.ns, name, "", svcPort))
		plain = append(plain, name)
	}
	procs := s.startAll(s.poolArgs()...)
	s.waitLive(startTimeout)
	s.waitHeard(procs)
	var edgeVIPs, plainVIPs []netip.Addr
	for _, name := range edge {
		edgeVIPs = append(edgeVIPs, waitAllocated(t, placeTimeout, s.ns, name))
	}
	for _, name := range plain {
		plainVIPs = append(plainVIPs, waitAllocated(t, placeTimeout, s.ns, name))
	}
	inPrefix(t, edgeRange, edgeVIPs...)
	inPrefix(t, "192.0.2.64/28", plainVIPs...)
	ws := watchVIPs(t, s.lab.Nodes, edgeVIPs)
	p := s.waitPlaced(placeTimeout, append(slices.Clone(edgeVIPs), plainVIPs...))
	s.reachAll(p)
	holdFor(t, 2*time.Second, "the edge VIPs on the edge nodes only", func() error { return heldBy(ws, "n1") })
	neverHeldBy(t, ws, "n1")

	// A node of the pool leaves it: its pool VIPs go to the other one.
	var leaving string
	for _, v := range edgeVIPs {
		leaving = p[v]
		break
	}
	stays := "n2"
	if leaving == "n2" {
		stays = "n3"
	}
	setNodeLabels(t, leaving, map[string]string{"zone": "core"})
	s.waitAllOn(10*time.Second, "eth0", edgeVIPs, stays)
	after := s.waitPlaced(placeTimeout, append(slices.Clone(edgeVIPs), plainVIPs...))
	s.reachAll(after)
	neverHeldBy(t, ws, "n1")
}

// TestExcludeControlPlane: with --service-exclude-control-plane, Service
// VIPs stay off the nodes labelled node-role.kubernetes.io/control-plane,
// while the control-plane VIP, served by those nodes' agents, still moves
// among them when its holder stops.
func TestExcludeControlPlane(t *testing.T) {
	s := newSvcEnv(t, svcOptions{nodes: 4, perService: true})
	createNodes(t, s.lab.Nodes, map[string]map[string]string{
		"n1": {labelControlPlane: ""}, "n2": {labelControlPlane: ""}, "n3": {}, "n4": {},
	})
	svcVIPs := addrRange("192.0.2.80", 8)
	ws := watchVIPs(t, s.lab.Nodes, append([]netip.Addr{vip4}, svcVIPs...))
	for i, v := range svcVIPs {
		s.create(s.service(s.ns, fmt.Sprintf("svc-%d", i), v.String(), svcPort))
	}
	procs := map[string]*lab.Process{}
	for _, n := range s.lab.Nodes {
		extra := []string{"--service-exclude-control-plane"}
		if n.Name == "n1" || n.Name == "n2" {
			// The control-plane nodes' agents, as kube-vip's static pods.
			extra = append(extra, "--control-plane", "--address", vip4.String())
		}
		procs[n.Name] = s.start(n, extra...)
	}
	s.waitLive(startTimeout)
	s.waitHeard(procs)
	p := s.waitPlaced(placeTimeout, append([]netip.Addr{vip4}, svcVIPs...))
	t.Logf("placed: %v", p.perNode(s.lab.Nodes))
	s.reachAll(p)
	cpHolder := p[vip4]
	if cpHolder != "n1" && cpHolder != "n2" {
		t.Fatalf("the control-plane VIP is on %s", cpHolder)
	}
	for _, v := range svcVIPs {
		if p[v] == "n1" || p[v] == "n2" {
			t.Errorf("Service VIP %s on control-plane node %s", v, p[v])
		}
	}
	if err := procs[cpHolder].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next := "n1"
	if cpHolder == "n1" {
		next = "n2"
	}
	if _, err := ws[vip4].Wait(10*time.Second, func(hs []string) bool { return slices.Equal(hs, []string{next}) }); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, procs[cpHolder], 10*time.Second); code != 0 {
		t.Errorf("vipd on %s exited %d after SIGTERM", cpHolder, code)
	}
	s.mustReach(vip4, s.node(next))
	after := s.waitPlaced(placeTimeout, svcVIPs)
	for _, v := range svcVIPs {
		if after[v] != p[v] {
			t.Errorf("Service VIP %s moved from %s to %s when the control-plane VIP moved", v, p[v], after[v])
		}
	}
	for _, v := range svcVIPs {
		neverHeldBy(t, map[netip.Addr]*vipWatch{v: ws[v]}, "n1", "n2")
	}
	neverHeldBy(t, map[netip.Addr]*vipWatch{vip4: ws[vip4]}, "n3", "n4")
}
