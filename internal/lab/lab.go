// Package lab builds the network that vipd's end-to-end tests, demo and
// benchmarks run on: a Linux bridge in its own network namespace, node
// namespaces n1..nN, a client namespace c1 and an "api" namespace where a TCP
// proxy exposes a kube-apiserver from the host's loopback at
// 198.51.100.2:6443; optionally a second segment (bridge br1) with a client
// c2, on which some nodes have an eth1. Everything is built from
// documentation address ranges inside namespaces the lab creates, and Close
// removes all of it.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Addresses of the lab segment. All of it is one layer-2 segment: a /24 and a /64.
const (
	Subnet4 = "198.51.100.0/24"
	Subnet6 = "2001:db8:100::/64"

	// The api namespace holds these; ServeAPI listens on them at APIPort.
	APIIPv4 = "198.51.100.2"
	APIIPv6 = "2001:db8:100::2"
	APIPort = 6443

	// Address for the control-plane VIP; nothing in the lab holds it.
	ControlPlaneVIPv4 = "198.51.100.100"
	ControlPlaneVIPv6 = "2001:db8:100::100"

	// Service VIP ranges. They are off-segment, so the client reaches them
	// through on-link routes on its eth0 and ARPs for each VIP directly.
	ServiceRangeA = "192.0.2.0/24"
	ServiceRangeB = "203.0.113.0/24"

	// MaxNodes keeps node addresses (198.51.100.11 onwards) clear of the
	// control-plane VIP.
	MaxNodes = 80
)

// Options configures New.
type Options struct {
	// Nodes is the number of node namespaces, 1..MaxNodes.
	Nodes int
	// Name is a short label ([a-z0-9]{1,8}) put into namespace names after
	// "vl<pid>-"; random when empty.
	Name string
	// Dir receives process logs. When empty, a temporary directory is used
	// and removed by Close.
	Dir string
	// Logf, when set, receives the lab's progress and every line of output of
	// processes started on nodes (prefixed with the node name), e.g. t.Logf.
	Logf func(format string, args ...any)

	// Segment2Nodes, when not empty, builds a second layer-2 segment
	// (bridge br1, Segment2Subnet4 and Segment2Subnet6) with a client c2
	// of its own (Lab.Client2), and gives the listed nodes (1-based) an
	// eth1 on it; the others have no eth1.
	Segment2Nodes []int

	// failAfter makes New fail after the named setup step; for tests of the
	// clean-up path.
	failAfter string
}

// Lab is a running lab. Its fields are set by New and must not be changed.
type Lab struct {
	Nodes  []*Node
	Client *Client
	// Client2 is the client on the second segment; nil without one.
	Client2 *Client
	// BridgeNetns holds the bridge "br0"; APINetns holds 198.51.100.2.
	BridgeNetns string
	APINetns    string

	logf   func(string, ...any)
	dir    string
	ownDir bool
	api    *apiProxy

	mu         sync.Mutex
	closed     bool
	namespaces []string
	procs      []*Process
	closers    []io.Closer
	logSeq     int
}

// Node is one node namespace with its eth0 on the bridge.
type Node struct {
	Name  string // "n1"
	Netns string
	MAC   net.HardwareAddr
	IPv4  netip.Addr
	IPv6  netip.Addr

	// Eth1IPv4 and Eth1IPv6 are the node's addresses on the second
	// segment, and Eth1MAC its eth1's MAC; invalid and nil if it has no
	// eth1 there.
	Eth1IPv4, Eth1IPv6 netip.Addr
	Eth1MAC            net.HardwareAddr

	lab        *Lab
	bridgePort string // the veth end in the bridge namespace
	port2      string // its end on the second segment's bridge; "" for none
}

// Client is the client namespace c1 with its eth0 on the bridge.
type Client struct {
	Name  string // "c1"
	Netns string
	MAC   net.HardwareAddr
	IPv4  netip.Addr
	IPv6  netip.Addr

	lab *Lab
}

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// staleRE matches namespaces made by this package and captures the pid of the
// process that made them.
var staleRE = regexp.MustCompile(`^vl([0-9]+)-`)

// New builds a lab. If any step fails, everything made so far is removed.
// It first removes namespaces left by labs whose process no longer exists.
func New(ctx context.Context, opts Options) (_ *Lab, err error) {
	if opts.Nodes < 1 || opts.Nodes > MaxNodes {
		return nil, fmt.Errorf("lab: Nodes must be 1..%d, got %d", MaxNodes, opts.Nodes)
	}
	for _, i := range opts.Segment2Nodes {
		if i < 1 || i > opts.Nodes {
			return nil, fmt.Errorf("lab: Segment2Nodes: no node %d of %d", i, opts.Nodes)
		}
	}
	if opts.Name == "" {
		opts.Name = strconv.FormatUint(rand.Uint64N(36*36*36*36), 36)
	}
	if !nameRE.MatchString(opts.Name) {
		return nil, fmt.Errorf("lab: Name %q must match %s", opts.Name, nameRE)
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	start := time.Now()
	if err := removeStale(ctx, logf); err != nil {
		return nil, err
	}

	prefix := fmt.Sprintf("vl%d-%s", os.Getpid(), opts.Name)
	l := &Lab{
		BridgeNetns: prefix + "-br",
		APINetns:    prefix + "-api",
		logf:        logf,
		dir:         opts.Dir,
	}
	l.api = &apiProxy{ns: l.APINetns, logf: logf}
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleaning up after failed setup: %w", cerr))
			}
		}
	}()
	step := func(name string) error {
		if opts.failAfter == name {
			return fmt.Errorf("lab: failing after step %q as asked", name)
		}
		return nil
	}

	if l.dir == "" {
		if l.dir, err = os.MkdirTemp("", prefix+"-"); err != nil {
			return nil, fmt.Errorf("creating log dir: %w", err)
		}
		l.ownDir = true
	} else if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating log dir: %w", err)
	}

	type member struct {
		port, netns string
		mac         net.HardwareAddr
		v4, v6      netip.Addr
		extra       []string // more ip commands for the member's namespace
	}
	var members []member
	for i := 1; i <= opts.Nodes; i++ {
		n := newNode(l, prefix, i)
		l.Nodes = append(l.Nodes, n)
		members = append(members, member{port: n.bridgePort, netns: n.Netns, mac: n.MAC, v4: n.IPv4, v6: n.IPv6})
	}
	l.Client = &Client{
		Name:  "c1",
		Netns: prefix + "-c1",
		MAC:   net.HardwareAddr{0x02, 0, 0, 0, 0, 0xc1},
		IPv4:  netip.MustParseAddr("198.51.100.200"),
		IPv6:  netip.MustParseAddr("2001:db8:100::200"),
		lab:   l,
	}
	members = append(members,
		member{port: "c1", netns: l.Client.Netns, mac: l.Client.MAC, v4: l.Client.IPv4, v6: l.Client.IPv6,
			extra: []string{
				"route add " + ServiceRangeA + " dev eth0",
				"route add " + ServiceRangeB + " dev eth0",
			}},
		member{port: "api", netns: l.APINetns, mac: net.HardwareAddr{0x02, 0, 0, 0, 0, 0xaa},
			v4: netip.MustParseAddr(APIIPv4), v6: netip.MustParseAddr(APIIPv6)},
	)

	if len(opts.Segment2Nodes) > 0 {
		l.Client2 = &Client{Name: "c2", Netns: prefix + "-c2", MAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 0xc2},
			IPv4: netip.MustParseAddr(Segment2Client4), IPv6: netip.MustParseAddr(Segment2Client6), lab: l}
	}
	// One by one, so that Close deletes exactly the namespaces this lab made,
	// never a same-named one of another lab.
	names := []string{l.BridgeNetns}
	for _, m := range members {
		names = append(names, m.netns)
	}
	if l.Client2 != nil {
		names = append(names, l.Client2.Netns)
	}
	for _, ns := range names {
		if err := ipBatch(ctx, "", "netns add "+ns+"\n"); err != nil {
			return nil, fmt.Errorf("creating namespaces: %w", err)
		}
		l.mu.Lock()
		l.namespaces = append(l.namespaces, ns)
		l.mu.Unlock()
	}
	if err := step("namespaces"); err != nil {
		return nil, err
	}

	// DAD off before any interface exists, so every address is usable at once.
	for _, ns := range l.namespaces {
		if err := disableDAD(ns, ns == l.BridgeNetns); err != nil {
			return nil, err
		}
	}

	var batch strings.Builder
	batch.WriteString("link set lo up\n")
	// No STP (ports forward at once) and no multicast snooping (every
	// neighbour advertisement reaches every port).
	batch.WriteString("link add br0 type bridge stp_state 0 mcast_snooping 0\n")
	batch.WriteString("link set br0 up\n")
	for _, m := range members {
		fmt.Fprintf(&batch, "link add %s type veth peer name eth0 netns %s address %s\n", m.port, m.netns, m.mac)
		fmt.Fprintf(&batch, "link set %s master br0 up\n", m.port)
	}
	if err := ipBatch(ctx, l.BridgeNetns, batch.String()); err != nil {
		return nil, fmt.Errorf("building bridge: %w", err)
	}
	if err := step("bridge"); err != nil {
		return nil, err
	}

	for _, m := range members {
		batch.Reset()
		batch.WriteString("link set lo up\n")
		batch.WriteString("link set eth0 up\n")
		fmt.Fprintf(&batch, "addr add %s/24 dev eth0\n", m.v4)
		fmt.Fprintf(&batch, "addr add %s/64 dev eth0 nodad\n", m.v6)
		for _, e := range m.extra {
			batch.WriteString(e + "\n")
		}
		if err := ipBatch(ctx, m.netns, batch.String()); err != nil {
			return nil, fmt.Errorf("configuring %s: %w", m.netns, err)
		}
	}
	if err := step("members"); err != nil {
		return nil, err
	}
	if err := l.buildSegment2(ctx, opts.Segment2Nodes); err != nil {
		return nil, err
	}
	logf("lab %s: %d nodes, client and api namespace ready in %v (logs in %s)",
		prefix, opts.Nodes, time.Since(start).Round(time.Millisecond), l.dir)
	return l, nil
}

// Close removes everything the lab made: it stops the API proxy, closes
// responders, captures and ping loops, kills the processes started on nodes
// and any other process left in the lab's namespaces, and deletes the
// namespaces. It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs, closers, namespaces := l.procs, l.closers, l.namespaces
	l.mu.Unlock()

	var errs []error
	l.api.stop(true)
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i].Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for _, p := range procs {
		if err := p.Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := killInNetns(namespaces); err != nil {
		errs = append(errs, err)
	}
	if err := deleteNetns(namespaces); err != nil {
		errs = append(errs, err)
	}
	if l.ownDir && l.dir != "" {
		if err := os.RemoveAll(l.dir); err != nil {
			errs = append(errs, fmt.Errorf("removing log dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Exec runs a command inside the network namespace ns (a Node's or the
// Client's Netns, BridgeNetns or APINetns) and returns its combined output.
func (l *Lab) Exec(ctx context.Context, ns string, name string, args ...string) (string, error) {
	return execIn(ctx, ns, nil, name, args...)
}

// LogLines returns the lines of every process's log so far that contain
// substr, each prefixed with the log's file name.
func (l *Lab) LogLines(substr string) ([]string, error) {
	l.mu.Lock()
	procs := slices.Clone(l.procs)
	l.mu.Unlock()
	var out []string
	for _, p := range procs {
		b, err := os.ReadFile(p.logPath)
		if err != nil {
			return out, fmt.Errorf("reading %s: %w", p.logPath, err)
		}
		for line := range strings.Lines(string(b)) {
			if strings.Contains(line, substr) {
				out = append(out, filepath.Base(p.logPath)+": "+strings.TrimSpace(line))
			}
		}
	}
	return out, nil
}

// Dir is the directory holding process logs.
func (l *Lab) Dir() string { return l.dir }

// track registers c to be closed by Close; it refuses once the lab is closed.
func (l *Lab) track(c io.Closer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab is closed")
	}
	l.closers = append(l.closers, c)
	return nil
}

func execIn(ctx context.Context, ns string, stdin io.Reader, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Stdin = stdin
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running %s %s in %s: %w: %s",
			name, strings.Join(args, " "), ns, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// ipBatch runs ip commands, one a line, in namespace ns (the current one if
// empty); ip stops at the first failing line and names it.
func ipBatch(ctx context.Context, ns, batch string) error {
	args := []string{"-b", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(batch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// ipCmd runs one ip command in namespace ns with a bounded time, for the
// failure-injection helpers that take no context.
func ipCmd(ns string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"-n", ns}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s %s: %w: %s", ns, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// disableDAD turns duplicate address detection off for interfaces created
// later in ns; the bridge namespace gets no IPv6 at all, so the segment
// carries only what the members send.
func disableDAD(ns string, noIPv6 bool) error {
	settings := map[string]string{
		"net/ipv6/conf/all/accept_dad":     "0",
		"net/ipv6/conf/default/accept_dad": "0",
	}
	if noIPv6 {
		settings["net/ipv6/conf/all/disable_ipv6"] = "1"
		settings["net/ipv6/conf/default/disable_ipv6"] = "1"
	}
	return InNetns(ns, func() error {
		// /proc/sys/net shows the namespace of the thread that opens it.
		for k, v := range settings {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("setting %s in %s: %w", k, ns, err)
			}
		}
		return nil
	})
}

// removeStale deletes namespaces named vl<pid>-* whose pid no longer runs,
// left by a lab whose process was killed, with any process still inside, and
// the log directories such labs left in the temporary directory.
func removeStale(ctx context.Context, logf func(string, ...any)) error {
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	var stale []string
	for _, e := range entries {
		if deadOwner(e.Name()) {
			stale = append(stale, e.Name())
		}
	}
	if len(stale) > 0 {
		logf("lab: removing stale namespaces %v", stale)
		if err := killInNetns(stale); err != nil {
			return fmt.Errorf("removing stale namespaces: %w", err)
		}
		if err := deleteNetns(stale); err != nil {
			return fmt.Errorf("removing stale namespaces: %w", err)
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "vl*-*"))
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() && deadOwner(filepath.Base(d)) {
			_ = os.RemoveAll(d)
		}
	}
	return ctx.Err()
}

// deadOwner reports whether name is vl<pid>-... for a pid, not ours, that no
// longer runs. A zombie counts as dead: its owner was killed and nobody has
// reaped it yet.
func deadOwner(name string) bool {
	m := staleRE.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid == os.Getpid() {
		return false
	}
	err = unix.Kill(pid, 0)
	return errors.Is(err, unix.ESRCH) || (err == nil && isZombie(pid))
}

// killInNetns SIGKILLs every process (other than this one) whose network
// namespace is one of the named ones, and waits until they are gone.
func killInNetns(names []string) error {
	type key struct{ dev, ino uint64 }
	want := map[key]bool{}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join("/run/netns", n), &st); err == nil {
			want[key{st.Dev, st.Ino}] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("listing processes: %w", err)
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
			continue // gone, or a kernel thread
		}
		if want[key{st.Dev, st.Ino}] {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	// Our own children are reaped by their Process; others by their parent.
	// Wait until none exists, so deleting the namespaces really frees them.
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for unix.Kill(pid, 0) == nil && !isZombie(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d in a lab namespace survived SIGKILL", pid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name, which may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}

// deleteNetns deletes the named namespaces that exist.
func deleteNetns(names []string) error {
	var batch strings.Builder
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); err == nil {
			fmt.Fprintf(&batch, "netns del %s\n", n)
		}
	}
	if batch.Len() == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ipBatch(ctx, "", batch.String()); err != nil {
		return fmt.Errorf("deleting namespaces: %w", err)
	}
	return nil
}
