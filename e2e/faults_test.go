package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/vipd/vipd/internal/lab"
)

// serviceVIPs creates n Services of s, the first 3/4 with an IPv4 address
// from 192.0.2.0/24 (from first on), the rest with an IPv6 one on the
// lab's segment, and returns their addresses.
func (s *svcEnv) serviceVIPs(n int, first byte) []netip.Addr {
	s.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var vips []netip.Addr
	var svcs []*corev1.Service
	for i := range n {
		ip := netip.AddrFrom4([4]byte{192, 0, 2, first + byte(i)})
		if i >= n*3/4 {
			ip = netip.MustParseAddr(fmt.Sprintf("2001:db8:100::2:%x", int(first)+i))
		}
		vips = append(vips, ip)
		svcs = append(svcs, s.service(s.ns, fmt.Sprintf("svc-%d", i), ip.String(), svcPort))
	}
	if _, err := s.createServices(ctx, svcs); err != nil {
		s.tb.Fatal(err)
	}
	return vips
}

// TestServicesThroughAPIOutage: the API server is down for 60 s while 20
// Services are served, in each election mode. Users of other tools lose
// every Service VIP then. With vipd every VIP stays held where it was and
// keeps answering; when the API server is back no VIP moves and none is
// held twice.
func TestServicesThroughAPIOutage(t *testing.T) {
	for _, perService := range []bool{false, true} {
		name := "one-for-all"
		if perService {
			name = "per-address"
		}
		// One after the other: two labs at once load two cores enough to
		// stall the client's pings for half a second.
		t.Run(name, func(t *testing.T) {
			s := newSvcEnv(t, svcOptions{perService: perService, quiet: true, dir: keptLogs(t)})
			procs := s.startAll()
			s.waitLive(30 * time.Second)
			vips := s.serviceVIPs(20, 80)
			before := s.waitPlaced(30*time.Second, vips)
			s.reachAll(before)
			s.waitHeard(procs)
			c, err := newChecker(s.lab, s.lab.Nodes, vips)
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()
			nodes := []string{"n1", "n2", "n3"}
			waitFor(t, 10*time.Second, "the checker to see every VIP steady", func() error {
				if why := c.steady(nodes); why != "" {
					return fmt.Errorf("%s", why)
				}
				return nil
			})

			down := time.Now()
			s.lab.StopAPI()
			// Where the VIPs are, from the interfaces; what the client saw
			// is judged over the whole window below.
			unchanged := func() error {
				h, err := s.vipHolders(vips)
				if err != nil {
					return err
				}
				now, err := singleHolders(h, vips)
				if err != nil {
					return err
				}
				if !maps.Equal(now, before) {
					return fmt.Errorf("VIPs moved: %v, before %v", now, before)
				}
				return nil
			}
			checkFor(t, 60*time.Second, "every VIP to stay where it was through the outage", unchanged)
			if err := s.lab.StartAPI(); err != nil {
				t.Fatal(err)
			}
			up := time.Now()
			checkFor(t, 2*s.timing.lease, "no VIP to move once the API server is back", unchanged)
			o := c.judge(down, time.Now())
			t.Logf("API server down %v: longest gap %v, two answerers %v, nobody answering %v in all (%v in a row)",
				up.Sub(down).Round(time.Millisecond), o.gap.Round(time.Millisecond), o.twoTotal, o.noAnswerTotal, o.noAnswerer)
			// No failover happened: the client sees what a loaded machine
			// shows anyway (a late ping or ARP reply), far below the
			// smallest failover.
			if o.gap > 200*time.Millisecond || o.twoTotal > 0 || o.noAnswerer > 3*sampleInterval {
				t.Errorf("the client saw the outage: longest gap %v, two answerers %v, nobody answering for %v in a row",
					o.gap, o.twoTotal, o.noAnswerer)
			}
		})
	}
}

// keptLogs is a directory for the agents' logs of a quiet test: removed
// when the test passes, named when it fails.
func keptLogs(t *testing.T) string {
	dir, err := os.MkdirTemp("", "vipd-e2e-logs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agents' logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// checkFor is holdFor at a slower pace, for conditions that read every
// node's interface.
func checkFor(tb testing.TB, window time.Duration, what string, cond func() error) {
	tb.Helper()
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		if err := cond(); err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// agentClient is a client with the agents' credentials.
func (e *env) agentClient() kubernetes.Interface {
	e.tb.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", e.kubeconfig)
	if err != nil {
		e.tb.Fatal(err)
	}
	// The lab's proxy is only reachable from its namespaces; the test
	// process talks to the API server directly.
	cfg.Host = "https://" + pkg.cp.Addr()
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.tb.Fatal(err)
	}
	return c
}

// TestStatusWriteRefused: the API server refuses every update of the
// test's Services by the agents (a ValidatingAdmissionPolicy, as a webhook
// or a policy engine would). The VIP is held and answered all the same;
// the agents retry with growing delays, not in a tight loop; and once the
// refusal is lifted the status is written.
func TestStatusWriteRefused(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	policy := "e2e-deny-service-updates-" + s.ns
	adm := pkg.admin.AdmissionregistrationV1()
	_, err := adm.ValidatingAdmissionPolicies().Create(ctx, &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: policy},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Update},
					Rule: admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"},
						Resources: []string{"services", "services/status"}},
				},
			}}},
			MatchConditions: []admissionv1.MatchCondition{{Name: "agents", Expression: "request.userInfo.username == 'vipd-agent'"}},
			Validations:     []admissionv1.Validation{{Expression: "false", Message: "refused by the e2e test"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = adm.ValidatingAdmissionPolicies().Delete(context.Background(), policy, metav1.DeleteOptions{})
	})
	binding, err := adm.ValidatingAdmissionPolicyBindings().Create(ctx, &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: policy},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        policy,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"kubernetes.io/metadata.name": s.ns}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = adm.ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
	})
	// The policy is in force once an update as the agents is refused.
	probe := s.create(s.service(s.ns, "probe", "", svcPort))
	agent := s.agentClient()
	waitFor(t, 30*time.Second, "the policy to refuse the agents' updates", func() error {
		cur, err := agent.CoreV1().Services(s.ns).Get(ctx, probe.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.250"}}
		_, err = agent.CoreV1().Services(s.ns).UpdateStatus(ctx, cur, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
		if apierrors.IsInvalid(err) || apierrors.IsForbidden(err) {
			return nil
		}
		return fmt.Errorf("update as the agents: %v", err)
	})

	procs := s.startAll()
	s.waitLive(30 * time.Second)
	vip := netip.MustParseAddr("192.0.2.90")
	s.create(s.service(s.ns, "web", vip.String(), svcPort))
	p := s.waitPlaced(20*time.Second, []netip.Addr{vip})
	h := s.node(p[vip])
	s.mustReach(vip, h)
	refusedSince := time.Now()
	checkFor(t, 8*time.Second, "the VIP to stay held and answered while its status is refused", func() error {
		if err := s.reach(vip, h); err != nil {
			return err
		}
		if who, err := s.arpAnswerers(vip, 100*time.Millisecond); err != nil || !slices.Equal(who, []string{h.Name}) {
			return fmt.Errorf("ARP answered by %v (%v)", who, err)
		}
		return nil
	})
	svc, err := getService(ctx, s.ns, "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Status.LoadBalancer.Ingress) != 0 {
		t.Fatalf("the status was written despite the policy: %+v", svc.Status.LoadBalancer.Ingress)
	}
	// Retries back off: the holder's log shows growing intervals.
	var tries []time.Time
	for _, line := range strings.Split(procs[h.Name].Log(), "\n") {
		if strings.Contains(line, "will retry") && strings.Contains(line, "service="+s.ns+"/web") {
			if ts, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(strings.Fields(line)[0], "time=")); err == nil {
				tries = append(tries, ts)
			}
		}
	}
	t.Logf("%d refused writes in %v: %v", len(tries), time.Since(refusedSince).Round(time.Second), tries)
	if len(tries) < 3 || len(tries) > 10 {
		t.Errorf("%d retries of the refused status write in ~10 s; want a few, growing apart", len(tries))
	}
	for i := 1; i < len(tries); i++ {
		if d := tries[i].Sub(tries[i-1]); d < 150*time.Millisecond {
			t.Errorf("retry %d came %v after the previous one: a tight loop", i, d)
		}
	}
	if n := len(tries); n >= 3 && tries[n-1].Sub(tries[n-2]) <= tries[1].Sub(tries[0]) {
		t.Errorf("the retries do not grow apart: %v", tries)
	}

	// Lift the refusal: the status follows (the backoff is capped at 30 s).
	if err := adm.ValidatingAdmissionPolicyBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s.waitStatus(45*time.Second, s.ns, "web", []netip.Addr{vip}, h.Name)
	if got := s.mustHoldersOf(vip); !slices.Equal(got, []string{h.Name}) {
		t.Errorf("the VIP moved: %v", got)
	}
}

// mustHoldersOf lists the nodes carrying vip.
func (e *env) mustHoldersOf(vip netip.Addr) []string {
	e.tb.Helper()
	h, err := e.vipHolders([]netip.Addr{vip})
	if err != nil {
		e.tb.Fatal(err)
	}
	return h[vip]
}

// TestWholeClusterRestart: every agent is killed at once and started
// again (a power cut, a botched upgrade). The VIPs come back within the
// lease duration, each on exactly one node, and addresses vipd did not add
// (an administrator's) are left alone.
func TestWholeClusterRestart(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true, controlPlane: true, defaults: true})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// An administrator's own addresses, one of them in the Services' range.
	foreign := map[*lab.Node]string{s.lab.Nodes[0]: "192.0.2.199/32", s.lab.Nodes[1]: "203.0.113.77/32"}
	for n, a := range foreign {
		if _, err := s.lab.Exec(ctx, n.Netns, "ip", "addr", "add", a, "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	procs := s.startAll()
	s.waitLive(30 * time.Second)
	vips := append(s.serviceVIPs(8, 100), vip4)
	before := s.waitPlaced(30*time.Second, vips)
	s.reachAll(before)
	s.waitHeard(procs)

	// Power cut: all at once.
	for _, p := range procs {
		if err := p.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		waitExit(t, p, 10*time.Second)
	}
	restart := time.Now()
	// The VIPs of the killed agents are still on the interfaces (until
	// their lifetime ends): only what the new agents hold counts, once
	// each has cleared what the old one left.
	for _, p := range s.startAll() {
		waitLog(t, p, 0, s.timing.lease, "agent started")
	}
	s.waitPlaced(s.timing.lease-time.Since(restart), vips)
	t.Logf("every VIP held by one node %v after the restart", time.Since(restart).Round(time.Millisecond))
	// No address left over: each VIP on exactly one node, for a while.
	var after placement
	checkFor(t, s.timing.lease, "each VIP on exactly one node after the restart", func() error {
		h, err := s.vipHolders(vips)
		if err != nil {
			return err
		}
		after, err = singleHolders(h, vips)
		return err
	})
	s.reachAll(after)
	for n, a := range foreign {
		out, err := s.lab.Exec(ctx, n.Netns, "ip", "-o", "addr", "show", "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, a) {
			t.Errorf("%s lost the administrator's address %s: %s", n.Name, a, out)
		}
	}
}

// TestBadObjectsInTheAPI: Leases and Services that other tools, renamed
// nodes or typos leave behind. Each gives a clear Warning, and the rest
// keeps working: a control-plane Lease and a claim whose holder is a node
// that does not exist (with an hour's duration) do not block the
// takeover; a node Lease whose annotations do not parse refuses nothing;
// a Service listing 1,000 addresses, or two of one family, gets a Warning
// and no address.
func TestBadObjectsInTheAPI(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true, controlPlane: true})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	leases := pkg.admin.CoordinationV1().Leases(s.ns)
	now := metav1.NewMicroTime(time.Now())
	ghost := func(name, holder string, labels map[string]string, ann map[string]string) {
		_, err := leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: ann},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To(int32(3600)),
				AcquireTime: &now, RenewTime: &now},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	svcVIP := netip.MustParseAddr("192.0.2.120")
	ghost(leaseName, "kube-vip-old-node", nil, nil)
	ghost(claimLease(svcVIP), "renamed-node", map[string]string{"vipd.io/kind": "claim", "app.kubernetes.io/managed-by": "vipd"}, nil)
	// A node Lease with a short duration, long expired, whose annotations
	// are garbage.
	_, err := leases.Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: nodeLease("garbled"),
			Labels: map[string]string{"vipd.io/kind": "node", "app.kubernetes.io/managed-by": "vipd"},
			Annotations: map[string]string{"vipd.io/refused": "{not json", "vipd.io/heartbeat": "no:such:port",
				"vipd.io/node-addresses": "x,,300.1.2.3", "vipd.io/config": "{{", "vipd.io/peers": "==,"}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("garbled"), LeaseDurationSeconds: ptr.To(int32(1)),
			RenewTime: &metav1.MicroTime{Time: time.Now().Add(-time.Hour)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	var many []string
	for i := range 1000 {
		many = append(many, fmt.Sprintf("192.0.2.%d", i%250+1))
	}
	s.create(s.service(s.ns, "many", strings.Join(many, ","), svcPort))
	s.create(s.service(s.ns, "twice4", "192.0.2.121,192.0.2.122", svcPort))
	s.create(s.service(s.ns, "good", svcVIP.String(), svcPort))

	procs := s.startAll()
	p := s.waitPlaced(20*time.Second, []netip.Addr{svcVIP, vip4})
	s.reachAll(p)
	s.waitLeaseHolder(5*time.Second, p[vip4])
	if h, err := leaseHolderOf(ctx, s.ns, claimLease(svcVIP)); err != nil || h != p[svcVIP] {
		t.Errorf("claim %s names %q (%v), want %s", claimLease(svcVIP), h, err, p[svcVIP])
	}
	waitLog(t, procs[p[vip4]], 0, 5*time.Second, "taking over a claim whose holder has no vipd node Lease", "previous_holder=kube-vip-old-node")
	waitLog(t, procs[p[svcVIP]], 0, 5*time.Second, "taking over a claim whose holder has no vipd node Lease", "previous_holder=renamed-node")
	for _, pr := range procs {
		waitLog(t, pr, 0, 5*time.Second, "does not parse", "vipd.io/refused")
	}
	ev := waitEvent(t, 10*time.Second, s.ns, "many", corev1.EventTypeWarning, "InvalidLoadBalancerIPs", "characters)", "same family")
	if len(ev.Message) > 400 {
		t.Errorf("the Warning about 1,000 addresses is %d characters long", len(ev.Message))
	}
	waitEvent(t, 10*time.Second, s.ns, "twice4", corev1.EventTypeWarning, "InvalidLoadBalancerIPs", "of the same family")
	for _, bad := range []string{"192.0.2.1", "192.0.2.121", "192.0.2.122"} {
		if got := s.mustHoldersOf(netip.MustParseAddr(bad)); len(got) > 0 {
			t.Errorf("%s is held by %v; its Service is invalid", bad, got)
		}
	}
}

// TestAddressConflict: a host on the segment that is not a vipd node
// already uses a Service's address. vipd probes a newly assigned address
// before adding it, so no node takes it: a Warning Event on the Service,
// vipd_address_conflicts_total, and vipd status say why. A host that
// starts answering for a VIP vipd holds is reported the same way.
func TestAddressConflict(t *testing.T) {
	s := newSvcEnv(t, svcOptions{perService: true})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	taken := netip.MustParseAddr("192.0.2.130")
	c := s.lab.Client
	if _, err := s.lab.Exec(ctx, c.Netns, "ip", "addr", "add", taken.String()+"/32", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	procs := s.startAll("--metrics-addr", fmt.Sprintf("127.0.0.1:%d", metricsPort))
	s.waitLive(30 * time.Second)
	s.waitHeard(procs)
	s.create(s.service(s.ns, "taken", taken.String(), svcPort))
	waitEvent(t, 10*time.Second, s.ns, "taken", corev1.EventTypeWarning, "VIPRejected", "in use by another host", c.MAC.String())
	checkFor(t, 3*time.Second, "no node to take an address another host uses", func() error {
		if got := s.mustHoldersOf(taken); len(got) > 0 {
			return fmt.Errorf("%s is held by %v", taken, got)
		}
		return nil
	})
	var total float64
	for _, n := range s.lab.Nodes {
		v, _, err := metricValue(n, "vipd_address_conflicts_total", nil)
		if err != nil {
			t.Fatal(err)
		}
		total += v
	}
	if total < 1 {
		t.Errorf("vipd_address_conflicts_total is %v on all nodes together", total)
	}
	reader := statusReader(t, s.ns)
	waitFor(t, 10*time.Second, "vipd status to show the conflict", func() error {
		r, err := vipdStatus(reader, s.ns)
		if err != nil {
			return err
		}
		row, err := statusRow(r, taken.String())
		if err != nil {
			return err
		}
		for _, p := range row.Problems {
			if strings.Contains(p, "address conflict") && strings.Contains(p, c.MAC.String()) {
				return nil
			}
		}
		return fmt.Errorf("problems %q", row.Problems)
	})

	// A free address is served as usual, after its probe.
	free := netip.MustParseAddr("192.0.2.131")
	created := time.Now()
	s.create(s.service(s.ns, "free", free.String(), svcPort))
	p := s.waitPlaced(10*time.Second, []netip.Addr{free})
	t.Logf("a new address held %v after its Service was created (probe included)", time.Since(created).Round(time.Millisecond))
	h := s.node(p[free])
	s.mustReach(free, h)

	// The client starts claiming the held address (a misconfigured host):
	// its gratuitous ARP is seen and reported.
	if _, err := s.lab.Exec(ctx, c.Netns, "ip", "addr", "add", free.String()+"/32", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the holder to report the foreign host", func() error {
		if err := sendGratuitousARP(c, free); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
		if !hasLine(procs[h.Name].Log(), "another host answers for a VIP held here", "vip="+free.String(), c.MAC.String()) {
			return errors.New("not reported yet")
		}
		return nil
	})
	waitEvent(t, 10*time.Second, s.ns, "free", corev1.EventTypeWarning, "VIPRejected", "also claimed by another host", c.MAC.String())
}

// sendGratuitousARP broadcasts a gratuitous ARP for ip from the client:
// "ip is at my MAC".
func sendGratuitousARP(c *lab.Client, ip netip.Addr) error {
	var conn *packet.Conn
	err := lab.InNetns(c.Netns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("opening an ARP socket on %s: %w", c.Name, err)
	}
	defer conn.Close()
	p, err := arp.NewPacket(arp.OperationRequest, c.MAC, ip, ethernet.Broadcast, ip)
	if err != nil {
		return err
	}
	b, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	for range 2 {
		if _, err := conn.WriteTo(b, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
			return fmt.Errorf("sending a gratuitous ARP for %s: %w", ip, err)
		}
	}
	return nil
}
