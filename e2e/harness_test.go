package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/hbkey"
	"github.com/vipd/vipd/internal/lab"
)

// The control-plane VIPs of the lab.
var (
	vip4 = netip.MustParseAddr(lab.ControlPlaneVIPv4)
	vip6 = netip.MustParseAddr(lab.ControlPlaneVIPv6)
)

const (
	// leaseName is vipd's default control-plane Lease (kube-vip's name).
	leaseName = "plndr-cp-lock"
	// tcpPort is where every node's ServeTCP responder answers with the
	// node's name.
	tcpPort = 8080
	// probeIP is the sender address of the client's ARP probes. No station
	// has it, so the answers are ignored by the client's kernel and leave
	// its neighbour table alone.
	probeIP = "198.51.100.250"
)

// timings are the election timings agents run with.
type timings struct{ lease, renew, retry time.Duration }

// defaultTimings are vipd's defaults (docs/configuration.md).
func defaultTimings() timings { return timings{5 * time.Second, 3 * time.Second, time.Second} }

// fastTimings keep failovers short in tests that are not about the
// defaults; config validation needs retry < renew < lease.
func fastTimings() timings {
	return timings{2 * time.Second, 1500 * time.Millisecond, 250 * time.Millisecond}
}

// env is one test's world: a fresh 3-node lab whose API proxy leads to the
// package's control plane, and a Kubernetes namespace of its own for the
// Leases, so tests never see each other's elections.
type env struct {
	tb         testing.TB
	lab        *lab.Lab
	ns         string // Kubernetes namespace of the Leases
	kubeconfig string
	vips       []netip.Addr // the control-plane VIPs agents are started with
	timing     timings
	defaults   bool   // start agents without timing flags
	key        []byte // the heartbeat key in the Secret the agents read; nil: none
}

type envOptions struct {
	// vips are the control-plane VIPs; default: the IPv4 one.
	vips []netip.Addr
	// defaults starts agents with vipd's default timings (no flags);
	// otherwise fastTimings are passed.
	defaults bool
	// quiet keeps process output out of tb's log (it still goes to the
	// lab's log files); benchmarks print their log.
	quiet bool
	// noKey creates no heartbeat key Secret: heartbeats stay off.
	noKey bool
	// dir keeps the lab's logs there, beyond the test; "" removes them.
	dir string
	// segment2 are the nodes (1-based) with an eth1 on a second segment.
	segment2 []int
}

// newEnv builds an env that is torn down when the test ends, or skips the
// test when the suite cannot run.
func newEnv(tb testing.TB, o envOptions) *env {
	tb.Helper()
	return newEnvNodes(tb, o, 3)
}

var nsUnsafe = regexp.MustCompile(`[^a-z0-9]+`)

// createNamespace makes a Kubernetes namespace named after the test and
// deletes it when the test ends. (envtest runs no namespace controller, so
// a deleted namespace stays Terminating; its name is never reused.)
func createNamespace(ctx context.Context, tb testing.TB) string {
	tb.Helper()
	prefix := strings.Trim(nsUnsafe.ReplaceAllString(strings.ToLower(tb.Name()), "-"), "-")
	if len(prefix) > 40 {
		prefix = strings.TrimRight(prefix[:40], "-")
	}
	ns, err := pkg.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-" + prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("creating a namespace for the Leases: %v", err)
	}
	tb.Logf("Leases in namespace %s", ns.Name)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := pkg.admin.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			tb.Errorf("deleting namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// waitHeard waits until every agent hears every other one (heartbeats), as
// a fault injected before that would test Lease expiry instead.
func (e *env) waitHeard(procs map[string]*lab.Process) {
	e.tb.Helper()
	for name, p := range procs {
		for other := range procs {
			if other != name {
				waitLog(e.tb, p, 0, 10*time.Second, "heartbeat peer heard", "peer="+other)
			}
		}
	}
}

// keySecret is the Secret agents read their heartbeat key from (vipd's
// default --heartbeat-key-secret).
const keySecret = "vipd-heartbeat-key"

// createKeySecret puts a fresh random heartbeat key into ns, as an operator
// does at install (docs/heartbeat.md).
func createKeySecret(ctx context.Context, tb testing.TB, ns string) []byte {
	tb.Helper()
	key, err := hbkey.NewKey()
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := pkg.admin.CoreV1().Secrets(ns).Create(ctx, hbkey.Secret(ns, keySecret, key), metav1.CreateOptions{}); err != nil {
		tb.Fatalf("creating the heartbeat key Secret: %v", err)
	}
	return key
}

// node returns the lab node with the given name.
func (e *env) node(name string) *lab.Node {
	for _, n := range e.lab.Nodes {
		if n.Name == name {
			return n
		}
	}
	e.tb.Fatalf("no node %q in the lab", name)
	return nil
}

// agentArgs is the command line of vipd on n: the control-plane VIP on eth0,
// elected through the test's namespace, with the env's timings.
func (e *env) agentArgs(n *lab.Node) []string {
	addrs := make([]string, len(e.vips))
	for i, v := range e.vips {
		addrs[i] = v.String()
	}
	args := []string{"run", "--control-plane",
		"--address", strings.Join(addrs, ","),
		"--interface", "eth0",
		"--node-name", n.Name,
		"--namespace", e.ns,
		"--kubeconfig", e.kubeconfig,
	}
	if !e.defaults {
		args = append(args,
			"--lease-duration", e.timing.lease.String(),
			"--renew-deadline", e.timing.renew.String(),
			"--retry-period", e.timing.retry.String())
	}
	return args
}

// start runs vipd on n with agentArgs plus extra flags (a flag given again
// in extra overrides the earlier value). The lab kills it at the end.
func (e *env) start(n *lab.Node, extra ...string) *lab.Process {
	e.tb.Helper()
	return e.startRaw(n, append(e.agentArgs(n), extra...)...)
}

// startRaw runs vipd on n with exactly args.
func (e *env) startRaw(n *lab.Node, args ...string) *lab.Process {
	e.tb.Helper()
	p, err := n.Start(context.Background(), pkg.bin, args, nil)
	if err != nil {
		e.tb.Fatal(err)
	}
	return p
}

// startAll starts vipd on every node, with extra flags; the result maps
// node names to their agents.
func (e *env) startAll(extra ...string) map[string]*lab.Process {
	e.tb.Helper()
	procs := map[string]*lab.Process{}
	for _, n := range e.lab.Nodes {
		procs[n.Name] = e.start(n, extra...)
	}
	return procs
}

// addrsOn lists the addresses of n's eth0 as `ip -n <netns> -j addr show
// dev eth0` reports them.
func addrsOn(ctx context.Context, n *lab.Node) ([]netip.Addr, error) {
	return addrsOnDev(ctx, n, "eth0")
}

// addrsOnDev lists the addresses of n's interface dev; none if n has no
// such interface.
func addrsOnDev(ctx context.Context, n *lab.Node, dev string) ([]netip.Addr, error) {
	out, err := exec.CommandContext(ctx, "ip", "-n", n.Netns, "-j", "addr", "show", "dev", dev).Output()
	if err != nil {
		if dev != "eth0" {
			if _, lerr := exec.CommandContext(ctx, "ip", "-n", n.Netns, "link", "show", "dev", dev).Output(); lerr != nil {
				return nil, nil // no such interface
			}
		}
		return nil, fmt.Errorf("listing addresses of %s %s: %w", n.Name, dev, err)
	}
	var links []struct {
		AddrInfo []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("parsing addresses of %s: %w: %s", n.Name, err, out)
	}
	var addrs []netip.Addr
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if ip, err := netip.ParseAddr(a.Local); err == nil {
				addrs = append(addrs, ip)
			}
		}
	}
	return addrs, nil
}

// holding maps each node's name to the env's VIPs it has on eth0 (nodes
// without any are left out).
type holding map[string][]netip.Addr

func (h holding) String() string {
	if len(h) == 0 {
		return "no node holds a VIP"
	}
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(h)) {
		parts = append(parts, fmt.Sprintf("%s has %v", name, h[name]))
	}
	return strings.Join(parts, "; ")
}

// has reports whether node holds vip.
func (h holding) has(node string, vip netip.Addr) bool { return slices.Contains(h[node], vip) }

// holdersOf lists, sorted, the nodes that hold vip.
func (h holding) holdersOf(vip netip.Addr) []string {
	var names []string
	for name, vips := range h {
		if slices.Contains(vips, vip) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// holding reads every node's eth0.
func (e *env) holding() (holding, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := holding{}
	for _, n := range e.lab.Nodes {
		addrs, err := addrsOn(ctx, n)
		if err != nil {
			return nil, err
		}
		for _, v := range e.vips {
			if slices.Contains(addrs, v) {
				h[n.Name] = append(h[n.Name], v)
			}
		}
	}
	return h, nil
}

// mustHolding is holding that fails the test on error.
func (e *env) mustHolding() holding {
	e.tb.Helper()
	h, err := e.holding()
	if err != nil {
		e.tb.Fatal(err)
	}
	return h
}

// soleHolder is the node that holds all of the env's VIPs while no other
// node holds any, or an error describing what is there instead.
func (e *env) soleHolder(h holding) (*lab.Node, error) {
	names := slices.Collect(maps.Keys(h))
	if len(names) != 1 {
		return nil, fmt.Errorf("want exactly one node with the VIP: %v", h)
	}
	if vips := h[names[0]]; len(vips) != len(e.vips) {
		return nil, fmt.Errorf("%s holds only %v of %v", names[0], vips, e.vips)
	}
	return e.node(names[0]), nil
}

// waitSoleHolder waits until exactly one node holds the VIPs.
func (e *env) waitSoleHolder(timeout time.Duration) *lab.Node {
	e.tb.Helper()
	var n *lab.Node
	waitFor(e.tb, timeout, "a single node to hold the VIP", func() error {
		h, err := e.holding()
		if err != nil {
			return err
		}
		n, err = e.soleHolder(h)
		return err
	})
	return n
}

// waitNewHolder waits until a node other than old holds all of the env's
// VIPs (old may still hold some) and returns it with the time it was seen.
func (e *env) waitNewHolder(timeout time.Duration, old *lab.Node) (*lab.Node, time.Time) {
	e.tb.Helper()
	var n *lab.Node
	at := waitFor(e.tb, timeout, "another node than "+old.Name+" to hold the VIP", func() error {
		h, err := e.holding()
		if err != nil {
			return err
		}
		var found []string
		for name, vips := range h {
			if name != old.Name && len(vips) == len(e.vips) {
				found = append(found, name)
			}
		}
		if len(found) != 1 {
			return fmt.Errorf("want one new holder: %v", h)
		}
		n = e.node(found[0])
		return nil
	})
	return n, at
}

// waitFor polls cond until it returns nil and returns when that was seen;
// after timeout it fails the test with cond's last error.
func waitFor(tb testing.TB, timeout time.Duration, what string, cond func() error) time.Time {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return time.Now()
		}
		if time.Now().After(deadline) {
			tb.Fatalf("waiting for %s: still not after %v: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdFor checks cond every few milliseconds for the whole window, failing
// the test at the first violation: for "this stays true for X".
func holdFor(tb testing.TB, window time.Duration, what string, cond func() error) {
	tb.Helper()
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		if err := cond(); err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leaseHolder reads the holder of the control-plane Lease ("" if released).
func (e *env) leaseHolder() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := pkg.admin.CoordinationV1().Leases(e.ns).Get(ctx, leaseName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading Lease %s/%s: %w", e.ns, leaseName, err)
	}
	if l.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *l.Spec.HolderIdentity, nil
}

// waitLeaseHolder waits until the Lease names want.
func (e *env) waitLeaseHolder(timeout time.Duration, want string) {
	e.tb.Helper()
	waitFor(e.tb, timeout, "the Lease to name "+want, func() error {
		got, err := e.leaseHolder()
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("Lease %s/%s names %q", e.ns, leaseName, got)
		}
		return nil
	})
}

// leaseExists reports whether the control-plane Lease exists.
func (e *env) leaseExists() bool {
	e.tb.Helper()
	_, err := e.leaseHolder()
	if apierrors.IsNotFound(err) {
		return false
	}
	if err != nil {
		e.tb.Fatal(err)
	}
	return true
}

// waitNeighbor waits until the client's neighbour entry for vip has the MAC
// of n.
func (e *env) waitNeighbor(timeout time.Duration, vip netip.Addr, n *lab.Node) time.Time {
	e.tb.Helper()
	return waitFor(e.tb, timeout, fmt.Sprintf("the client's neighbour entry for %s to be %s's MAC", vip, n.Name), func() error {
		mac, state, err := e.lab.Client.Neighbor(vip)
		if err != nil {
			return err
		}
		if mac.String() != n.MAC.String() {
			return fmt.Errorf("entry is %v (%s), %s is %v", mac, state, n.Name, n.MAC)
		}
		return nil
	})
}

// reach checks that the client gets answers from the VIP: a ping, and a TCP
// connection that n's responder accepts.
func (e *env) reach(vip netip.Addr, n *lab.Node) error {
	return reachFrom(e.lab.Client, vip, n)
}

// reachFrom checks that client c gets answers from the VIP: a ping, and a
// TCP connection that n's responder accepts.
func reachFrom(c *lab.Client, vip netip.Addr, n *lab.Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx, vip); err != nil {
		return err
	}
	got, err := c.DialTCP(ctx, vip, tcpPort)
	if err != nil {
		return err
	}
	if got != n.Name {
		return fmt.Errorf("TCP to %s answered by %s, want %s", vip, got, n.Name)
	}
	return nil
}

// mustReach is reach, retried briefly (the first packets may race the
// neighbour update), failing the test if it never works.
func (e *env) mustReach(vip netip.Addr, n *lab.Node) {
	e.tb.Helper()
	waitFor(e.tb, 5*time.Second, fmt.Sprintf("the client to reach %s at %s", vip, n.Name), func() error {
		return e.reach(vip, n)
	})
}

// arpAnswerers broadcasts one ARP request for vip from the client's eth0
// and returns the names of the nodes (or MACs of other stations) that
// answered within window: which stations' kernels answer for the VIP. The
// request's sender IP is probeIP, so the answers are not for the client's
// kernel and its neighbour entry for the VIP stays as it was.
func (e *env) arpAnswerers(vip netip.Addr, window time.Duration) ([]string, error) {
	return e.arpAnswerersFrom(e.lab.Client, netip.MustParseAddr(probeIP), vip, window)
}

// arpAnswerersFrom is arpAnswerers from client c, with the sender address
// probe (one of c's segment that no station has).
func (e *env) arpAnswerersFrom(c *lab.Client, probe, vip netip.Addr, window time.Duration) ([]string, error) {
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
		return nil, fmt.Errorf("opening an ARP socket on %s: %w", c.Name, err)
	}
	defer conn.Close()
	req, err := arp.NewPacket(arp.OperationRequest, c.MAC, probe, ethernet.Broadcast, vip)
	if err != nil {
		return nil, err
	}
	b, err := req.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if _, err := conn.WriteTo(b, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
		return nil, fmt.Errorf("sending an ARP request for %s: %w", vip, err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(window))
	var who []string
	buf := make([]byte, 1500)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			return nil, fmt.Errorf("reading ARP replies: %w", err)
		}
		var p arp.Packet
		if p.UnmarshalBinary(buf[:n]) != nil || p.Operation != arp.OperationReply ||
			p.SenderIP != vip || p.TargetIP != probe {
			continue
		}
		name := p.SenderHardwareAddr.String()
		for _, node := range e.lab.Nodes {
			if node.MAC.String() == name || node.Eth1MAC.String() == name {
				name = node.Name
			}
		}
		if !slices.Contains(who, name) {
			who = append(who, name)
		}
	}
	slices.Sort(who)
	return who, nil
}

// mustAnswerers is arpAnswerers that fails the test on error.
func (e *env) mustAnswerers(vip netip.Addr) []string {
	e.tb.Helper()
	who, err := e.arpAnswerers(vip, 300*time.Millisecond)
	if err != nil {
		e.tb.Fatal(err)
	}
	return who
}

// exitCode is the exit status that Process.Wait's error stands for.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// waitExit waits for p to exit and returns its exit status.
func waitExit(tb testing.TB, p *lab.Process, timeout time.Duration) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := p.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		tb.Fatalf("vipd on %s still runs after %v; log:\n%s", p.Node, timeout, p.Log())
	}
	return exitCode(err)
}

// waitKnownHolder waits until every agent has logged that h holds the
// control-plane VIP: h that it took it, the others that h is the holder.
func (e *env) waitKnownHolder(procs map[string]*lab.Process, h *lab.Node) {
	e.tb.Helper()
	for _, n := range e.lab.Nodes {
		if n == h {
			waitLog(e.tb, procs[n.Name], 0, 10*time.Second, "took VIP")
		} else {
			waitLog(e.tb, procs[n.Name], 0, 10*time.Second, " holder="+h.Name)
		}
	}
}

// waitLog waits until p's output after the first from bytes holds all of
// the substrings on one line.
func waitLog(tb testing.TB, p *lab.Process, from int, timeout time.Duration, substrs ...string) {
	tb.Helper()
	waitFor(tb, timeout, fmt.Sprintf("vipd on %s to log %q", p.Node, substrs), func() error {
		log := p.Log()
		if from > len(log) {
			from = 0 // trimmed; look at what is kept
		}
		if !hasLine(log[from:], substrs...) {
			return errors.New("not logged yet")
		}
		return nil
	})
}

// hasLine reports whether one line of log contains all of substrs.
func hasLine(log string, substrs ...string) bool {
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, s := range substrs {
			all = all && strings.Contains(line, s)
		}
		if all {
			return true
		}
	}
	return false
}

// gratuitousFrom selects announcements of vip that n sent of its own
// accord: gratuitous ARP or unsolicited NA.
func gratuitousFrom(n *lab.Node, vip netip.Addr) func(lab.Announcement) bool {
	return func(a lab.Announcement) bool {
		return a.IP == vip && a.Gratuitous && a.SrcMAC.String() == n.MAC.String()
	}
}

// announcementsSince returns the captured announcements matching match
// that were recorded after t.
func announcementsSince(cp *lab.Capture, t time.Time, match func(lab.Announcement) bool) []lab.Announcement {
	var out []lab.Announcement
	for _, a := range cp.Announcements() {
		if a.Time.After(t) && match(a) {
			out = append(out, a)
		}
	}
	return out
}

// capture starts recording announcements at the client until the test ends.
func (e *env) capture() *lab.Capture {
	e.tb.Helper()
	cp, err := e.lab.Client.Capture(context.Background())
	if err != nil {
		e.tb.Fatal(err)
	}
	e.tb.Cleanup(func() { cp.Close() })
	return cp
}
