package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/ndp"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root for network namespaces")
	}
}

// newLab builds a lab that is closed when the test ends.
func newLab(t *testing.T, opts Options) *Lab {
	t.Helper()
	needRoot(t)
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// eventually polls cond until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// labNamespaces lists the existing namespaces whose names start with prefix.
func labNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var found []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			found = append(found, f[0])
		}
	}
	return found
}

// dialFrom connects to addr from inside namespace ns.
func dialFrom(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetns(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	})
	return c, err
}

// echoOnce writes a line on c and expects it back.
func echoOnce(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo returned %q, want %q", got, msg)
	}
	return nil
}

// hostEchoServer serves TCP echo on the host's loopback, standing in for the
// kube-apiserver.
func hostEchoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func TestLab(t *testing.T) {
	start := time.Now()
	l := newLab(t, Options{Nodes: 3})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("building a 3-node lab took %v, want well under 2s", d)
	}
	n1, n2, n3 := l.Nodes[0], l.Nodes[1], l.Nodes[2]
	c := l.Client
	if n1.IPv4 != netip.MustParseAddr("198.51.100.11") || n3.IPv6 != netip.MustParseAddr("2001:db8:100::13") {
		t.Fatalf("node addresses %v %v, want 198.51.100.11 and 2001:db8:100::13", n1.IPv4, n3.IPv6)
	}

	t.Run("ping", func(t *testing.T) {
		ctx := testCtx(t)
		for _, ip := range []netip.Addr{n1.IPv4, n2.IPv6, n3.IPv4, n3.IPv6} {
			if err := c.Ping(ctx, ip); err != nil {
				t.Errorf("client: %v", err)
			}
		}
		for _, ip := range []netip.Addr{n2.IPv4, n2.IPv6} {
			args := []string{"-c1", "-W1", ip.String()}
			if ip.Is6() {
				args = append([]string{"-6"}, args...)
			}
			if out, err := l.Exec(ctx, n1.Netns, "ping", args...); err != nil {
				t.Errorf("n1 to n2: %v", err)
			} else if !strings.Contains(out, "1 received") {
				t.Errorf("n1 to n2 %s: %s", ip, out)
			}
		}
	})

	t.Run("neighbor", func(t *testing.T) {
		ctx := testCtx(t)
		for _, ip := range []netip.Addr{n2.IPv4, n2.IPv6} {
			if err := c.Ping(ctx, ip); err != nil {
				t.Fatal(err)
			}
			mac, state, err := c.Neighbor(ip)
			if err != nil {
				t.Fatal(err)
			}
			if mac.String() != n2.MAC.String() {
				t.Errorf("neighbour %s is %s (%s), want n2's %s", ip, mac, state, n2.MAC)
			}
		}
		if err := c.FlushNeighbors(); err != nil {
			t.Fatal(err)
		}
		// After a flush the entry is gone, or left FAILED/INCOMPLETE without a MAC.
		if mac, state, err := c.Neighbor(n2.IPv4); err == nil && mac != nil {
			t.Errorf("after flush the neighbour entry still has %s (%s)", mac, state)
		}
	})

	t.Run("tcp responder", func(t *testing.T) {
		ctx := testCtx(t)
		for _, n := range l.Nodes {
			if err := n.ServeTCP(8080); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range []*Node{n1, n3} {
			for _, ip := range []netip.Addr{n.IPv4, n.IPv6} {
				got, err := c.DialTCP(ctx, ip, 8080)
				if err != nil {
					t.Fatal(err)
				}
				if got != n.Name {
					t.Errorf("responder at %s answered %q, want %q", ip, got, n.Name)
				}
			}
		}
	})

	t.Run("api proxy", func(t *testing.T) {
		if got := l.APIServerURL(); got != "https://198.51.100.2:6443" {
			t.Errorf("APIServerURL = %s", got)
		}
		if err := l.ServeAPI(hostEchoServer(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.StopAPI)
		api4, api6 := "198.51.100.2:6443", "[2001:db8:100::2]:6443"
		for _, addr := range []string{api4, api6} {
			conn, err := dialFrom(n1.Netns, addr)
			if err != nil {
				t.Fatalf("n1 dialling the API at %s: %v", addr, err)
			}
			if err := echoOnce(conn, "hello via "+addr); err != nil {
				t.Fatal(err)
			}
			conn.Close()
		}

		open, err := dialFrom(n2.Netns, api4)
		if err != nil {
			t.Fatal(err)
		}
		defer open.Close()
		if err := echoOnce(open, "before the outage"); err != nil {
			t.Fatal(err)
		}
		l.StopAPI()
		_ = open.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := open.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
			t.Errorf("an open API connection survived StopAPI: read %d bytes, %v", n, err)
		}
		for _, addr := range []string{api4, api6} {
			if conn, err := dialFrom(n2.Netns, addr); !errors.Is(err, syscall.ECONNREFUSED) {
				if conn != nil {
					conn.Close()
				}
				t.Errorf("dialling %s while the API is stopped: %v, want connection refused", addr, err)
			}
		}
		if err := l.StartAPI(); err != nil {
			t.Fatal(err)
		}
		conn, err := dialFrom(n2.Netns, api6)
		if err != nil {
			t.Fatalf("after StartAPI: %v", err)
		}
		defer conn.Close()
		if err := echoOnce(conn, "after the outage"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("block api", func(t *testing.T) {
		ctx := testCtx(t)
		pingAPI := func(n *Node, ip string) error {
			args := []string{"-c1", "-W1", ip}
			if strings.Contains(ip, ":") {
				args = append([]string{"-6"}, args...)
			}
			_, err := l.Exec(ctx, n.Netns, "ping", args...)
			return err
		}
		if err := n2.BlockAPI(); err != nil {
			t.Fatal(err)
		}
		for _, ip := range []string{APIIPv4, APIIPv6} {
			if err := pingAPI(n2, ip); err == nil {
				t.Errorf("n2 still reaches the API server at %s while blocked", ip)
			}
			if err := pingAPI(n1, ip); err != nil {
				t.Errorf("n1 lost the API server at %s when n2 was blocked: %v", ip, err)
			}
		}
		if err := c.Ping(ctx, n2.IPv4); err != nil {
			t.Errorf("the client lost n2 when n2 lost the API server: %v", err)
		}
		if err := n2.UnblockAPI(); err != nil {
			t.Fatal(err)
		}
		if err := pingAPI(n2, APIIPv4); err != nil {
			t.Errorf("after UnblockAPI: %v", err)
		}
	})

	t.Run("link down", func(t *testing.T) {
		ctx := testCtx(t)
		if err := n3.LinkDown(); err != nil {
			t.Fatal(err)
		}
		if err := c.Ping(ctx, n3.IPv4); err == nil {
			t.Error("n3 answers with its link down")
		}
		if err := n3.LinkUp(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "pinging n3 after LinkUp", func() error { return c.Ping(ctx, n3.IPv4) })
	})

	t.Run("drop", func(t *testing.T) {
		ctx := testCtx(t)
		cp, err := c.Capture(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer cp.Close()
		if err := n3.DropPercent(100); err != nil {
			t.Fatal(err)
		}
		for _, ip := range []netip.Addr{n3.IPv4, n3.IPv6} {
			if err := c.Ping(ctx, ip); err == nil {
				t.Errorf("n3 answers %s with 100%% drop", ip)
			}
		}
		// Egress drops what n3 sends itself, packet-socket frames included:
		// of a gratuitous ARP sent during the drop and one after, only the
		// second reaches the client.
		garp(t, l, n3)
		if err := n3.DropPercent(0); err != nil {
			t.Fatal(err)
		}
		garp(t, l, n3)
		fromN3 := func(a Announcement) bool { return a.IP == n3.IPv4 && a.Gratuitous }
		if _, err := cp.WaitFor(ctx, fromN3); err != nil {
			t.Fatal(err)
		}
		if got := slices.DeleteFunc(cp.Announcements(), func(a Announcement) bool { return !fromN3(a) }); len(got) != 1 {
			t.Errorf("captured %d gratuitous ARPs from n3, want only the one sent after the drop: %+v", len(got), got)
		}
		if err := n3.DropPercent(0); err != nil {
			t.Fatalf("DropPercent(0) twice: %v", err)
		}
		eventually(t, 5*time.Second, "pinging n3 after DropPercent(0)", func() error { return c.Ping(ctx, n3.IPv4) })
	})

	t.Run("capture", func(t *testing.T) {
		ctx := testCtx(t)
		cp, err := c.Capture(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer cp.Close()

		garp(t, l, n1)
		a, err := cp.WaitFor(ctx, func(a Announcement) bool { return a.IP == n1.IPv4 && a.Gratuitous })
		if err != nil {
			t.Fatalf("%v; seen: %+v", err, cp.Announcements())
		}
		if a.MAC.String() != n1.MAC.String() || a.SrcMAC.String() != n1.MAC.String() ||
			a.DstMAC.String() != "ff:ff:ff:ff:ff:ff" || a.Kind != "arp-request" {
			t.Errorf("gratuitous ARP from n1 captured as %+v", a)
		}

		// No ndsend here, so n1 sends an unsolicited NA with the override
		// flag to all nodes itself.
		if err := sendNA(n1); err != nil {
			t.Fatal(err)
		}
		a, err = cp.WaitFor(ctx, func(a Announcement) bool { return a.Kind == "na" && a.IP == n1.IPv6 && !a.Solicited })
		if err != nil {
			t.Fatalf("%v; seen: %+v", err, cp.Announcements())
		}
		if !a.Override || !a.Gratuitous || a.MAC.String() != n1.MAC.String() || a.DstMAC.String() != "33:33:00:00:00:01" {
			t.Errorf("unsolicited NA from n1 captured as %+v", a)
		}
		for _, a := range cp.Announcements() {
			if a.SrcMAC.String() == c.MAC.String() {
				t.Errorf("capture recorded the client's own frame %+v", a)
			}
		}
	})

	t.Run("ping loop", func(t *testing.T) {
		ctx := testCtx(t)
		for _, ip := range []netip.Addr{n1.IPv4, n1.IPv6} {
			start := time.Now()
			rec, err := c.PingLoop(ctx, ip, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second) // the measurement itself: 1 s of echoes
			rec.Stop()
			end := time.Now()
			if err := rec.Err(); err != nil {
				t.Errorf("%s: %v", ip, err)
			}
			replies := rec.Replies()
			if len(replies) < 80 || len(replies) > 102 {
				t.Errorf("%s: %d replies in 1 s at 10 ms, want about 100", ip, len(replies))
			}
			if gap := rec.LongestGap(start, end); gap <= 0 || gap > 100*time.Millisecond {
				t.Errorf("%s: longest gap %v on a quiet lab", ip, gap)
			}
			for _, e := range rec.Echoes() {
				if e.Dups > 0 {
					t.Errorf("%s: echo %d answered %d extra times", ip, e.Seq, e.Dups)
				}
			}
		}
	})

	t.Run("ping loop gap", func(t *testing.T) {
		ctx := testCtx(t)
		rec, err := c.PingLoop(ctx, n2.IPv4, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		defer rec.Stop()
		start := time.Now()
		waitReplies := func(n int) {
			eventually(t, 2*time.Second, "ping replies", func() error {
				if got := len(rec.Replies()); got < n {
					return fmt.Errorf("%d replies", got)
				}
				return nil
			})
		}
		waitReplies(10)
		if err := n2.DropPercent(100); err != nil {
			t.Fatal(err)
		}
		outage := time.Now()
		time.Sleep(300 * time.Millisecond) // the outage being measured
		if err := n2.DropPercent(0); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		waitReplies(len(rec.Replies()) + 10)
		rec.Stop()
		gap := rec.LongestGap(start, time.Now())
		t.Logf("longest gap %v around a %v outage", gap, back.Sub(outage))
		if min, max := back.Sub(outage), back.Sub(outage)+200*time.Millisecond; gap < min-20*time.Millisecond || gap > max {
			t.Errorf("longest gap %v around a %v outage", gap, min)
		}
	})
}

// garp makes n send a gratuitous ARP for its IPv4 address with the system's
// arping (Thomas Habets' arping: -U sends an unsolicited request with sender
// IP -S equal to the target). Nobody answers it, which arping reports with
// exit status 1; -w keeps it from waiting long for that.
func garp(t *testing.T, l *Lab, n *Node) {
	t.Helper()
	ip := n.IPv4.String()
	var ee *exec.ExitError
	if _, err := l.Exec(testCtx(t), n.Netns, "arping", "-q", "-U", "-c1", "-w", "0.1", "-i", "eth0", "-S", ip, ip); err != nil &&
		!(errors.As(err, &ee) && ee.ExitCode() == 1) {
		t.Fatal(err)
	}
}

// sendNA makes n send an unsolicited neighbour advertisement with the
// override flag for its IPv6 address to all nodes.
func sendNA(n *Node) error {
	return InNetns(n.Netns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		conn, _, err := ndp.Listen(ifi, ndp.LinkLocal)
		if err != nil {
			return err
		}
		defer conn.Close()
		na := &ndp.NeighborAdvertisement{
			Override:      true,
			TargetAddress: n.IPv6,
			Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: n.MAC}},
		}
		return conn.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes())
	})
}

func TestProcess(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	l := newLab(t, Options{Nodes: 1, Logf: func(format string, args ...any) {
		mu.Lock()
		lines = append(lines, fmt.Sprintf(format, args...))
		mu.Unlock()
		t.Logf(format, args...)
	}})
	n1 := l.Nodes[0]
	ctx := testCtx(t)
	// The harness's own settings stay with the harness: an agent would
	// warn about each.
	t.Setenv("VIPD_BENCH_LOGS", "/nowhere")
	p, err := n1.Start(ctx, "sh", []string{"-c", `echo "out $LABVAR bench=${VIPD_BENCH_LOGS:-unset}"; echo err >&2; exec sleep 60`}, []string{"LABVAR=set"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "process output", func() error {
		if log := p.Log(); !strings.Contains(log, "out set bench=unset\n") || !strings.Contains(log, "err\n") {
			return fmt.Errorf("log so far %q", log)
		}
		return nil
	})
	file, err := os.ReadFile(p.LogPath())
	if err != nil || !strings.Contains(string(file), "out set") {
		t.Errorf("log file %s: %q, %v", p.LogPath(), file, err)
	}
	mu.Lock()
	teed := strings.Join(lines, "\n")
	mu.Unlock()
	if !strings.Contains(teed, "n1: out set") || !strings.Contains(teed, "n1: err") {
		t.Errorf("Logf did not get the output prefixed with the node name:\n%s", teed)
	}

	// The pid is the program's, and it runs in the node's namespace.
	var want, got unix.Stat_t
	if err := unix.Stat("/run/netns/"+n1.Netns, &want); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "sleep running in n1", func() error {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.Pid()))
		if strings.TrimSpace(string(comm)) != "sleep" {
			return fmt.Errorf("pid %d is %q", p.Pid(), comm)
		}
		return unix.Stat(fmt.Sprintf("/proc/%d/ns/net", p.Pid()), &got)
	})
	if got.Ino != want.Ino || got.Dev != want.Dev {
		t.Errorf("process is not in %s", n1.Netns)
	}

	if p.Exited() {
		t.Fatal("process exited early")
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if err := p.Wait(ctx); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("Wait after SIGTERM = %v, want killed by SIGTERM", err)
	}
	if !p.Exited() {
		t.Error("Exited is false after Wait")
	}
	if err := p.Kill(); err != nil {
		t.Errorf("Kill after exit: %v", err)
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	needRoot(t)
	ctx := testCtx(t)
	l, err := New(ctx, Options{Nodes: 2, Name: "close", Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	prefix := fmt.Sprintf("vl%d-close-", os.Getpid())
	if got := labNamespaces(t, prefix); len(got) != 5 {
		t.Errorf("namespaces %v, want br, api, c1, n1, n2", got)
	}
	// A second lab of the same name fails without harming the first.
	if _, err := New(ctx, Options{Nodes: 2, Name: "close"}); err == nil {
		t.Fatal("a second lab with the same name was built")
	}
	if got := labNamespaces(t, prefix); len(got) != 5 {
		t.Errorf("after a clashing New, namespaces %v, want br, api, c1, n1, n2", got)
	}
	p, err := l.Nodes[1].Start(ctx, "sleep", []string{"60"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A process the lab did not start, left in a node namespace.
	if _, err := l.Exec(ctx, l.Nodes[0].Netns, "sh", "-c", "sleep 60 >/dev/null 2>&1 &"); err != nil {
		t.Fatal(err)
	}
	if err := l.ServeAPI("127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Nodes[0].ServeTCP(8080); err != nil {
		t.Fatal(err)
	}
	dir := l.Dir()

	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := labNamespaces(t, prefix); len(got) != 0 {
		t.Errorf("namespaces left after Close: %v", got)
	}
	if !p.Exited() {
		t.Error("the process started on n2 survived Close")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("log dir %s left after Close: %v", dir, err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := l.StartAPI(); err == nil {
		t.Error("StartAPI works after Close")
	}
	if _, err := l.Nodes[0].Start(ctx, "sleep", []string{"60"}, nil); err == nil {
		t.Error("Start works after Close")
	}
}

func TestFailedNewCleansUp(t *testing.T) {
	needRoot(t)
	for _, step := range []string{"namespaces", "bridge", "members"} {
		opts := Options{Nodes: 2, Name: "fail", Logf: t.Logf, failAfter: step}
		if _, err := New(testCtx(t), opts); err == nil {
			t.Fatalf("New did not fail after %s", step)
		}
		if got := labNamespaces(t, fmt.Sprintf("vl%d-fail-", os.Getpid())); len(got) != 0 {
			t.Errorf("failing after %s left namespaces %v", step, got)
		}
	}
	if _, err := New(testCtx(t), Options{Nodes: 0}); err == nil {
		t.Error("New accepted 0 nodes")
	}
	if _, err := New(testCtx(t), Options{Nodes: 1, Name: "Bad-Name"}); err == nil {
		t.Error("New accepted a bad name")
	}
}

func TestRemovesStaleNamespaces(t *testing.T) {
	needRoot(t)
	// A pid that no longer runs: a finished child's.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("vl%d-old-n1", dead.Process.Pid)
	// pid 1 always runs: its namespaces are not stale. Nor is another name.
	alive, other := "vl1-live-n1", fmt.Sprintf("xvl%d-old-n1", dead.Process.Pid)
	for _, ns := range []string{stale, alive, other} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	staleDir, err := os.MkdirTemp("", fmt.Sprintf("vl%d-old-", dead.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(staleDir) })
	// A process left running in the stale namespace, as an agent of a killed run would be.
	out, err := exec.Command("ip", "netns", "exec", stale, "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	leftover, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Kill(leftover, syscall.SIGKILL) })

	newLab(t, Options{Nodes: 1})
	if got := labNamespaces(t, stale); len(got) != 0 {
		t.Errorf("stale namespace %s was not removed", stale)
	}
	if _, err := os.Stat(staleDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale log dir %s was not removed: %v", staleDir, err)
	}
	if unix.Kill(leftover, 0) == nil && !isZombie(leftover) {
		t.Errorf("process %d left in the stale namespace still runs", leftover)
	}
	for _, ns := range []string{alive, other} {
		if got := labNamespaces(t, ns); len(got) != 1 {
			t.Errorf("namespace %s was removed", ns)
		}
	}
}
