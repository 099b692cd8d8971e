package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/lab"
)

// TestServicesOnAnotherInterface: the control-plane VIP on eth0 and the
// Service VIPs on eth1 (--services-interface, kube-vip's
// vip_servicesinterface), each segment's client reaching its VIPs. n3 has no
// eth1: it says so on its node Lease and never holds a VIP that goes there,
// while a Service annotated kube-vip.io/serviceInterface=eth0 may go to any
// node. When the holder's eth1 loses its link, its VIPs move to the other
// node with eth1 at once. A holder killed with its VIPs on eth1 leaves them
// silent, and its restart removes them there.
func TestServicesOnAnotherInterface(t *testing.T) {
	s := newSvcEnv(t, svcOptions{controlPlane: true, segment2: []int{1, 2}})
	c2 := s.lab.Client2
	seg2 := addrRange("203.0.113.225", 4) // in lab.Segment2VIPs
	inPrefix(t, lab.Segment2VIPs, seg2...)
	onEth0 := netip.MustParseAddr("192.0.2.90")
	ws := watchVIPs(t, s.lab.Nodes, append(slices.Clone(seg2), vip4, onEth0))
	for i, v := range seg2 {
		s.create(s.service(s.ns, fmt.Sprintf("seg2-%d", i), v.String(), svcPort))
	}
	own := s.service(s.ns, "on-eth0", onEth0.String(), svcPort)
	own.Annotations["kube-vip.io/serviceInterface"] = "eth0"
	s.create(own)
	// No VIP lifetime: a killed agent's VIPs stay for its restart to find.
	extra := []string{"--services-interface", "eth1", "--vip-lifetime", "0"}
	procs := s.startAll(extra...)
	s.waitLive(startTimeout)
	s.waitHeard(procs)

	p2 := s.waitPlacedOn(placeTimeout, "eth1", seg2)
	p0 := s.waitPlacedOn(placeTimeout, "eth0", []netip.Addr{vip4, onEth0})
	t.Logf("on eth1: %v; on eth0: %v", p2, p0)
	for _, v := range seg2 {
		waitFor(t, 5*time.Second, fmt.Sprintf("c2 to reach %s at %s", v, p2[v]), func() error { return reachFrom(c2, v, s.node(p2[v])) })
	}
	for _, v := range []netip.Addr{vip4, onEth0} {
		s.mustReach(v, s.node(p0[v]))
	}
	if h, err := s.holdersOn("eth0", seg2); err != nil {
		t.Fatal(err)
	} else if p, _ := singleHolders(h, seg2); len(p) > 0 {
		t.Errorf("Service VIPs of eth1 on eth0: %v", p)
	}
	waitFor(t, 5*time.Second, "n3's node Lease to say it lacks eth1", func() error {
		v, err := nodeLeaseAnnotation(s.ns, "n3", election.AnnotationLacking)
		if err != nil {
			return err
		}
		if !strings.Contains(election.ParseLacking(v)["eth1"], "does not exist") {
			return fmt.Errorf("%s is %q", election.AnnotationLacking, v)
		}
		return nil
	})
	holdFor(t, 2*time.Second, "n3 holding no VIP of eth1", func() error { return heldBy(pick(ws, seg2), "n3") })

	// The holder's eth1 loses its link.
	h := s.node(p2[seg2[0]])
	other := "n1"
	if h.Name == "n1" {
		other = "n2"
	}
	cut := time.Now()
	if err := h.Segment2Link(false); err != nil {
		t.Fatal(err)
	}
	moved := s.waitAllOn(10*time.Second, "eth1", seg2, other)
	t.Logf("%s's eth1 lost its link; its VIPs were on %s's %v later", h.Name, other, moved.Sub(cut).Round(time.Millisecond))
	// Lease expiry would take a Lease duration; the others skip it at once.
	if d := moved.Sub(cut); d > s.timing.lease {
		t.Errorf("the VIPs moved %v after %s's eth1 lost its link; want well within a Lease duration (%v)", d, h.Name, s.timing.lease)
	}
	for _, v := range seg2 {
		waitFor(t, 5*time.Second, fmt.Sprintf("c2 to reach %s at %s", v, other), func() error { return reachFrom(c2, v, s.node(other)) })
	}
	if err := h.Segment2Link(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, h.Name+"'s node Lease to lack nothing", func() error {
		v, err := nodeLeaseAnnotation(s.ns, h.Name, election.AnnotationLacking)
		if err != nil || v != "" {
			return fmt.Errorf("%s is %q (%v)", election.AnnotationLacking, v, err)
		}
		return nil
	})

	// The holder of the eth1 VIPs is killed: they stay on its eth1,
	// silent; its restart removes them there.
	holder := s.node(other)
	if err := procs[other].Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s.timing.lease+5*time.Second, "the VIPs of eth1 on "+h.Name, func() error {
		hs, err := s.holdersOn("eth1", seg2)
		if err != nil {
			return err
		}
		for _, v := range seg2 {
			if !slices.Contains(hs[v], h.Name) {
				return fmt.Errorf("%s on %v", v, hs[v])
			}
		}
		return nil
	})
	probe := netip.MustParseAddr("203.0.113.251")
	waitFor(t, 5*time.Second, "only "+h.Name+" to answer ARP for the eth1 VIPs", func() error {
		for _, v := range seg2 {
			who, err := s.arpAnswerersFrom(c2, probe, v, 300*time.Millisecond)
			if err != nil {
				return err
			}
			if !slices.Equal(who, []string{h.Name}) {
				return fmt.Errorf("%s answered by %v", v, who)
			}
		}
		return nil
	})
	stale, err := s.holdersOn("eth1", seg2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(stale[seg2[0]], other) {
		t.Fatalf("the killed agent's VIPs are gone from %s's eth1 before its restart: %v", other, stale)
	}
	restarted := s.start(holder, extra...)
	waitLog(t, restarted, 0, 10*time.Second, "removed VIP left by an earlier run", "iface=eth1")
	waitFor(t, 10*time.Second, "the eth1 VIPs on "+h.Name+" only", func() error {
		hs, err := s.holdersOn("eth1", seg2)
		if err != nil {
			return err
		}
		_, err = singleHolders(hs, seg2)
		return err
	})
	neverHeldBy(t, pick(ws, seg2), "n3")
}

// pick is the watches of vips.
func pick(ws map[netip.Addr]*vipWatch, vips []netip.Addr) map[netip.Addr]*vipWatch {
	out := map[netip.Addr]*vipWatch{}
	for _, v := range vips {
		out[v] = ws[v]
	}
	return out
}
