package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/vipd/vipd/internal/lab"
	"github.com/vipd/vipd/internal/status"
)

// TestObservabilityAcrossFailover runs three agents serving the
// control-plane VIP and a Service (JSON logs, metrics on), cuts the holder
// of the control-plane VIP off the API server, and checks what an operator
// would look at, before and after: `vipd status` as a read-only user (the
// holder and the transition count), vipd_vip_held on every agent, one
// takeover Event on the control-plane Lease, and the agents' logs.
func TestObservabilityAcrossFailover(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true, controlPlane: true})
	cp := vip4.String()
	procs := s.startAll("--log-format", "json", "--metrics-addr", "127.0.0.1:"+strconv.Itoa(metricsPort))
	s.waitLive(20 * time.Second)
	svcVIP := netip.MustParseAddr("192.0.2.180")
	s.create(s.service(s.ns, "web", svcVIP.String(), svcPort))
	h := s.waitSoleHolder(20 * time.Second)
	p := s.waitPlaced(20*time.Second, []netip.Addr{svcVIP})
	s.waitStatus(20*time.Second, s.ns, "web", []netip.Addr{svcVIP}, p[svcVIP])
	reader := statusReader(t, s.ns)

	// Before: status names the holders; the metrics agree on every node.
	before := waitStatusRow(t, reader, s.ns, cp, h.Name, -1)
	if !slices.Contains(before.Serves, "control plane") || before.Election != leaseName || before.Since == nil {
		t.Errorf("control-plane row %+v", before)
	}
	svcRow := waitStatusRow(t, reader, s.ns, svcVIP.String(), p[svcVIP], -1)
	if !slices.Equal(svcRow.Serves, []string{s.ns + "/web"}) || svcRow.Election != claimLease(svcVIP) {
		t.Errorf("Service row %+v", svcRow)
	}
	waitHeldMetric(t, s.lab.Nodes, cp, "", h.Name)
	waitHeldMetric(t, s.lab.Nodes, svcVIP.String(), "web", p[svcVIP])
	r, err := vipdStatus(reader, s.ns, "--nodes")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Nodes) != 3 {
		t.Fatalf("vipd status --nodes: %+v", r.Nodes)
	}
	for _, n := range r.Nodes {
		if n.Lease != "live" || n.Version == "" || len(n.Addresses) == 0 || !n.ControlPlane || !n.Services {
			t.Errorf("agent row %+v", n)
		}
	}

	// --watch prints the report, then again on every change.
	watch := watchStatus(t, reader, s.ns)
	holds := func(node string, transitions int32) func(status.Report) error {
		return func(r status.Report) error {
			row, err := statusRow(r, cp)
			if err != nil {
				return err
			}
			if row.Holder != node || row.Transitions != transitions {
				return fmt.Errorf("holder %q, transitions %d", row.Holder, row.Transitions)
			}
			return nil
		}
	}
	nextReport(t, watch, 20*time.Second, cp+" held by "+h.Name, holds(h.Name, before.Transitions))

	// The failover: the holder loses the API server, lets go at its renew
	// deadline and says so in its heartbeats; another node takes over.
	if err := h.BlockAPI(); err != nil {
		t.Fatal(err)
	}
	unblocked := false
	defer func() {
		if !unblocked {
			_ = h.UnblockAPI()
		}
	}()
	next, _ := s.waitNewHolder(20*time.Second, h)
	waitFor(t, 10*time.Second, h.Name+" to drop the VIP", func() error {
		if s.mustHolding().has(h.Name, vip4) {
			return fmt.Errorf("%s still has %s", h.Name, vip4)
		}
		return nil
	})

	// After: status shows the new holder and one more transition; the old
	// holder, still running, reports 0.
	after := waitStatusRow(t, reader, s.ns, cp, next.Name, before.Transitions+1)
	if after.Since == nil || !after.Since.After(*before.Since) {
		t.Errorf("since: before %v, after %v", before.Since, after.Since)
	}
	waitHeldMetric(t, s.lab.Nodes, cp, "", next.Name)
	nextReport(t, watch, 10*time.Second, cp+" held by "+next.Name, holds(next.Name, before.Transitions+1))
	// What an SRE alerts on, as the agents count it.
	for _, m := range []struct {
		n      *lab.Node
		name   string
		labels map[string]string
		min    float64
	}{
		{next, "vipd_takeovers_total", map[string]string{"reason": "holder-not-live"}, 1},
		{next, "vipd_takeover_announce_seconds", nil, 1},
		{next, "vipd_api_write_seconds", map[string]string{"verb": "update", "resource": "leases"}, 1},
		{next, "vipd_informer_synced", map[string]string{"informer": "leases"}, 1},
		{next, "vipd_informer_synced", map[string]string{"informer": "services"}, 1},
		{next, "vipd_build_info", map[string]string{"version": "dev"}, 1},
		{next, "vipd_heartbeat_peers", map[string]string{"state": "heard"}, 1},
		{next, "go_goroutines", nil, 1},
		{next, "process_resident_memory_bytes", nil, 1},
		{h, "vipd_losses_total", map[string]string{"reason": "not-live"}, 1},
		{h, "vipd_api_write_errors_total", map[string]string{"verb": "update", "resource": "leases", "code": "error"}, 1},
	} {
		v, ok, err := metricValue(m.n, m.name, m.labels)
		if err != nil || !ok || v < m.min {
			t.Errorf("%s on %s: %v (present %v, %v), want at least %v", m.name+fmt.Sprint(m.labels), m.n.Name, v, ok, err, m.min)
		}
	}

	// One takeover Event, on the control-plane Lease, naming both holders.
	var takeover corev1.Event
	waitFor(t, 10*time.Second, "a VIPAssigned Event on Lease "+leaseName, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		evs, err := eventsAbout(ctx, s.ns, "Lease", leaseName)
		if err != nil {
			return err
		}
		var seen []string
		for _, e := range evs {
			seen = append(seen, e.Message)
			if e.Reason == "VIPAssigned" && strings.Contains(e.Message, "held by node "+next.Name+" (was "+h.Name+":") {
				takeover = e
				return nil
			}
		}
		return fmt.Errorf("Events so far: %q", seen)
	})
	if takeover.Count != 1 || takeover.Source.Host != next.Name {
		t.Errorf("takeover Event %+v: want count 1 from %s", takeover, next.Name)
	}

	if err := h.UnblockAPI(); err != nil {
		t.Fatal(err)
	}
	unblocked = true
	waitStatusRow(t, reader, s.ns, cp, next.Name, before.Transitions+1)

	// Logs: every line of every agent is one JSON object with each key
	// once; the decisions carry vip, node and reason (and the Service).
	lines := map[string][]map[string]any{}
	for name, pr := range procs {
		lines[name] = jsonLogLines(t, pr)
	}
	took := findLine(lines[next.Name], map[string]string{"msg": "took VIP", "vip": cp, "election": leaseName, "node": next.Name})
	if took == nil || took["reason"] == "" || took["previous_holder"] != h.Name {
		t.Errorf("%s logged no take of %s from %s with a reason: %v", next.Name, cp, h.Name, took)
	}
	released := findLine(lines[h.Name], map[string]string{"msg": "released VIP", "vip": cp, "node": h.Name, "reason": "not-live"})
	if released == nil {
		t.Errorf("%s logged no release of %s for reason not-live", h.Name, cp)
	}
	svcTook := findLine(lines[p[svcVIP]], map[string]string{"msg": "took VIP", "vip": svcVIP.String(), "service": s.ns + "/web", "node": p[svcVIP]})
	if svcTook == nil || svcTook["reason"] == "" {
		t.Errorf("%s logged no take of %s with its Service and a reason: %v", p[svcVIP], svcVIP, svcTook)
	}
}

// TestOneWarningPerBadService: with three agents running, a Service with a
// bad annotation and one asking for a node's own address each get exactly
// one Warning Event, recorded by the first live agent by name (no agent
// holds their addresses), although every agent finds the problem.
func TestOneWarningPerBadService(t *testing.T) {
	s := newSvcEnv(t, svcOptions{})
	procs := s.startAll()
	s.waitLive(20 * time.Second)
	// Who records depends on who is live: every agent must count every
	// other live before the problems appear.
	for _, n := range s.lab.Nodes {
		for _, peer := range s.lab.Nodes {
			if peer != n {
				waitLog(t, procs[n.Name], 0, 10*time.Second, "judged another agent", "peer="+peer.Name, "live=true")
			}
		}
	}
	n1 := s.lab.Nodes[0]
	s.create(s.service(s.ns, "bad", "not-an-ip", svcPort))
	s.create(s.service(s.ns, "mine", n1.IPv4.String(), svcPort))

	for _, c := range []struct{ name, reason string }{{"bad", "InvalidLoadBalancerIPs"}, {"mine", "VIPRejected"}} {
		// Every agent decided (and logged) whether it records the Event.
		for _, pr := range procs {
			waitLog(t, pr, 0, 20*time.Second, `msg="service problem"`, "service="+s.ns+"/"+c.name, "reason="+c.reason)
		}
		waitEvent(t, 10*time.Second, s.ns, c.name, corev1.EventTypeWarning, c.reason)
		// Events are sent in the background: a second one would arrive
		// within this window.
		holdFor(t, 2*time.Second, "one "+c.reason+" Warning on "+c.name, func() error {
			return oneEventFrom(s.ns, c.name, c.reason, "n1")
		})
	}
}

// oneEventFrom checks that there is exactly one Event of reason about the
// Service, seen once, recorded by node.
func oneEventFrom(ns, name, reason, node string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, err := eventsAbout(ctx, ns, "Service", name)
	if err != nil {
		return err
	}
	var got []corev1.Event
	for _, e := range evs {
		if e.Reason == reason {
			got = append(got, e)
		}
	}
	if len(got) != 1 || got[0].Count != 1 || got[0].Source.Host != node {
		var desc []string
		for _, e := range got {
			desc = append(desc, fmt.Sprintf("%s×%d from %s: %s", e.Reason, e.Count, e.Source.Host, e.Message))
		}
		return fmt.Errorf("want one %s Event from %s, got %q", reason, node, desc)
	}
	return nil
}
