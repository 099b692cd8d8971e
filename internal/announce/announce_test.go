package announce

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv6"

	"github.com/vipd/vipd/internal/logging/logtest"
)

var (
	vip4 = netip.MustParseAddr("192.0.2.100")
	vip6 = netip.MustParseAddr("2001:db8::100")
	// oldMAC is what B caches for the VIPs before A announces them.
	oldMAC = "02:00:00:00:00:01"
)

// lab is two namespaces, A and B, joined by the veth pair a0-b0. The
// announcer runs in A; B watches the wire and keeps a neighbour cache.
type lab struct {
	t     *testing.T
	a, b  string
	a0    *net.Interface // as seen in A
	aLL   netip.Addr     // link-local address of a0
	frame *capture
}

// labConfig varies A's IPv6 from the usual: on, with addresses usable at once.
type labConfig struct {
	noIPv6OnA  bool // IPv6 disabled on a0
	slowDADOnA bool // a0's link-local address stays tentative for minutes
}

func newLab(t *testing.T, cfg labConfig) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	rb := make([]byte, 3)
	_, _ = rand.Read(rb)
	suffix := fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(rb))
	l := &lab{t: t, a: "vipd-annA-" + suffix, b: "vipd-annB-" + suffix}
	for _, ns := range []string{l.a, l.b} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		// Link-local addresses usable at once, set before any link exists.
		if ns == l.a && cfg.slowDADOnA {
			run(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.default.dad_transmits=200")
			continue
		}
		run(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w",
			"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	run(t, "ip", "-n", l.a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", l.b)
	if cfg.noIPv6OnA {
		run(t, "ip", "netns", "exec", l.a, "sysctl", "-q", "-w", "net.ipv6.conf.a0.disable_ipv6=1")
	}
	run(t, "ip", "-n", l.a, "link", "set", "a0", "up")
	run(t, "ip", "-n", l.b, "link", "set", "b0", "up")
	run(t, "ip", "-n", l.a, "addr", "add", "192.0.2.1/24", "dev", "a0")
	run(t, "ip", "-n", l.b, "addr", "add", "192.0.2.2/24", "dev", "b0")
	run(t, "ip", "-n", l.b, "addr", "add", "2001:db8::2/64", "dev", "b0", "nodad")

	// B already caches the VIPs at some old MAC, as after a failover.
	run(t, "ip", "-n", l.b, "neigh", "replace", vip4.String(), "lladdr", oldMAC, "dev", "b0", "nud", "stale")
	run(t, "ip", "-n", l.b, "-6", "neigh", "replace", vip6.String(), "lladdr", oldMAC, "dev", "b0", "nud", "stale")

	inNetns(t, l.a, func() error {
		var err error
		l.a0, err = net.InterfaceByName("a0")
		return err
	})
	if !cfg.noIPv6OnA && !cfg.slowDADOnA {
		l.aLL = l.waitLinkLocal()
	}
	l.frame = l.capture()
	return l
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns runs f on a thread in namespace ns. The thread is never
// unlocked, so it ends with the goroutine instead of returning to the
// scheduler inside the test namespace.
func inNetns(t *testing.T, ns string, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in namespace %s: %v", ns, err)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *lab) waitLinkLocal() netip.Addr {
	var ll netip.Addr
	eventually(l.t, 5*time.Second, "a link-local address on a0", func() bool {
		out := run(l.t, "ip", "-n", l.a, "-6", "-o", "addr", "show", "dev", "a0", "scope", "link")
		f := strings.Fields(out)
		for i, w := range f {
			if w == "inet6" && i+1 < len(f) && !strings.Contains(out, "tentative") {
				p, err := netip.ParsePrefix(f[i+1])
				if err == nil {
					ll = p.Addr()
					return true
				}
			}
		}
		return false
	})
	return ll
}

// newAnnouncer creates the announcer with its sockets in A.
func (l *lab) newAnnouncer(opts Options, log *slog.Logger) *Announcer {
	l.t.Helper()
	opts.Netns = l.a
	a, err := New(l.a0, opts, log)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { _ = a.Close() })
	return a
}

func (l *lab) neigh(vip netip.Addr) string {
	return run(l.t, "ip", "-n", l.b, "neigh", "show", vip.String(), "dev", "b0")
}

// frame is one announcement seen on b0, with when it was read.
type frame struct {
	at  time.Time
	eth ethernet.Frame
	arp *arp.Packet
	ip6 *ipv6.Header
	na  *ndp.NeighborAdvertisement
}

func (f frame) target() netip.Addr {
	if f.arp != nil {
		return f.arp.SenderIP
	}
	return f.na.TargetAddress
}

// capture records, from B, the ARP packets and neighbour advertisements
// that A sends.
type capture struct {
	mu     sync.Mutex
	frames []frame
}

func (l *lab) capture() *capture {
	l.t.Helper()
	var conn *packet.Conn
	inNetns(l.t, l.b, func() error {
		b0, err := net.InterfaceByName("b0")
		if err != nil {
			return err
		}
		const ethPAll = 0x0003
		conn, err = packet.Listen(b0, packet.Raw, ethPAll, nil)
		return err
	})
	c := &capture{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			if f, ok := parseFrame(buf[:n], l.a0.HardwareAddr); ok {
				c.mu.Lock()
				c.frames = append(c.frames, f)
				c.mu.Unlock()
			}
		}
	}()
	l.t.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
	return c
}

func parseFrame(b []byte, from net.HardwareAddr) (frame, bool) {
	f := frame{at: time.Now()}
	if err := f.eth.UnmarshalBinary(b); err != nil || !bytes.Equal(f.eth.Source, from) {
		return f, false
	}
	switch f.eth.EtherType {
	case ethernet.EtherTypeARP:
		f.arp = &arp.Packet{}
		if err := f.arp.UnmarshalBinary(f.eth.Payload); err != nil {
			return f, false
		}
		return f, true
	case ethernet.EtherTypeIPv6:
		h, err := ipv6.ParseHeader(f.eth.Payload)
		if err != nil || h.NextHeader != 58 || len(f.eth.Payload) < ipv6.HeaderLen+h.PayloadLen {
			return f, false
		}
		m, err := ndp.ParseMessage(f.eth.Payload[ipv6.HeaderLen : ipv6.HeaderLen+h.PayloadLen])
		if err != nil {
			return f, false
		}
		na, ok := m.(*ndp.NeighborAdvertisement)
		if !ok {
			return f, false
		}
		f.ip6, f.na = h, na
		return f, true
	}
	return f, false
}

// of returns the announcements seen for vip.
func (c *capture) of(vip netip.Addr) []frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []frame
	for _, f := range c.frames {
		if f.target() == vip {
			out = append(out, f)
		}
	}
	return out
}

// waitN waits until at least n announcements for vip were seen.
func (c *capture) waitN(t *testing.T, vip netip.Addr, n int, timeout time.Duration) []frame {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d announcements of %s", n, vip), func() bool {
		return len(c.of(vip)) >= n
	})
	return c.of(vip)
}

// quiet watches for window and fails if any announcement for vip is read
// later than after (plus some slack for a packet sent just before but read
// late by a busy test process).
func (c *capture) quiet(t *testing.T, vip netip.Addr, after time.Time, window time.Duration) {
	t.Helper()
	time.Sleep(window) // absence can only be observed over a span of time
	for _, f := range c.of(vip) {
		if f.at.After(after.Add(100 * time.Millisecond)) {
			t.Fatalf("announcement of %s read %v after it was withdrawn", vip, f.at.Sub(after))
		}
	}
}

// checkTiming checks the burst spacing and the periodic refresh.
func checkTiming(t *testing.T, fs []frame, o Options) {
	t.Helper()
	for i := 1; i < len(fs); i++ {
		gap := fs[i].at.Sub(fs[i-1].at)
		want := o.Interval
		if i < o.Burst {
			want = o.BurstInterval
		}
		// Early never; late by a bounded scheduling delay.
		if gap < want-10*time.Millisecond || gap > want+400*time.Millisecond {
			t.Errorf("gap before announcement %d: %v, want about %v", i+1, gap, want)
		}
	}
}

var testOpts = Options{Interval: 400 * time.Millisecond, Burst: 3, BurstInterval: 60 * time.Millisecond}

func TestGratuitousARP(t *testing.T) {
	l := newLab(t, labConfig{})
	reg := prometheus.NewRegistry()
	o := testOpts
	o.Registerer = reg
	a := l.newAnnouncer(o, nil)

	if !strings.Contains(l.neigh(vip4), oldMAC) {
		t.Fatalf("B's neighbour entry not set up: %q", l.neigh(vip4))
	}
	a.Set([]netip.Addr{vip4})
	if s := a.Stats(); s.Sent != 1 || s.Errors != 0 {
		t.Fatalf("right after Set: %+v, want the first announcement sent", s)
	}

	f := l.frame.waitN(t, vip4, 1, 2*time.Second)[0]
	zero := make(net.HardwareAddr, 6)
	if !bytes.Equal(f.eth.Destination, ethernet.Broadcast) {
		t.Errorf("Ethernet destination %s, want broadcast", f.eth.Destination)
	}
	p := f.arp
	if p.Operation != arp.OperationRequest || p.HardwareType != 1 || p.ProtocolType != uint16(ethernet.EtherTypeIPv4) ||
		!bytes.Equal(p.SenderHardwareAddr, l.a0.HardwareAddr) || p.SenderIP != vip4 ||
		!bytes.Equal(p.TargetHardwareAddr, zero) || p.TargetIP != vip4 {
		t.Errorf("ARP packet %+v, want a request from %s for %s with sender IP = target IP and zero target MAC", p, l.a0.HardwareAddr, vip4)
	}

	// What users rely on: B's cache now points at A.
	eventually(t, 2*time.Second, "B's neighbour entry to move to A's MAC", func() bool {
		return strings.Contains(l.neigh(vip4), l.a0.HardwareAddr.String())
	})

	fs := l.frame.waitN(t, vip4, o.Burst+2, 5*time.Second)
	checkTiming(t, fs[:o.Burst+2], o)

	a.Set(nil)
	l.frame.quiet(t, vip4, time.Now(), 3*o.Interval)

	if s := a.Stats(); s.Errors != 0 {
		t.Errorf("stats %+v, want no errors", s)
	}
	if got := counter(t, reg, "vipd_announcements_sent_total", "ipv4"); got < float64(o.Burst+2) {
		t.Errorf("vipd_announcements_sent_total{family=ipv4} = %v, want at least %d", got, o.Burst+2)
	}
}

// TestPeriodicAnnouncementsGather: VIPs set a little apart are refreshed
// together once their bursts are over, one wake-up for all, and none
// sooner than three quarters of the interval after its last.
func TestPeriodicAnnouncementsGather(t *testing.T) {
	l := newLab(t, labConfig{})
	o := testOpts
	a := l.newAnnouncer(o, nil)
	var vips []netip.Addr
	for i := range 6 {
		vips = append(vips, netip.AddrFrom4([4]byte{192, 0, 2, byte(110 + i)}))
		a.Set(vips)
		time.Sleep(15 * time.Millisecond) // staggered Sets, 75 ms in all (< Interval/4)
	}
	// The bursts, then three periodic rounds.
	n := o.Burst + 3
	for _, v := range vips {
		l.frame.waitN(t, v, n, 5*time.Second)
	}
	rounds := make([][]time.Time, n)
	for _, v := range vips {
		fs := l.frame.of(v)
		for i := o.Burst; i < len(fs); i++ {
			if gap := fs[i].at.Sub(fs[i-1].at); gap < o.Interval*3/4-10*time.Millisecond || gap > o.Interval+400*time.Millisecond {
				t.Errorf("%s: gap before periodic announcement %d: %v, want %v to %v", v, i+1, gap, o.Interval*3/4, o.Interval)
			}
		}
		for i := range n {
			rounds[i] = append(rounds[i], fs[i].at)
		}
	}
	// The second and third periodic rounds: each one wake-up for all.
	// Frames are timed when the capture reads them, so a reader delayed in
	// mid-round would spread one round; both spread means no gathering
	// (without it they spread over the 75 ms of the Sets).
	spread := func(ts []time.Time) time.Duration {
		return slices.MaxFunc(ts, time.Time.Compare).Sub(slices.MinFunc(ts, time.Time.Compare))
	}
	if a, b := spread(rounds[n-2]), spread(rounds[n-1]); min(a, b) > 20*time.Millisecond {
		t.Errorf("the 2nd and 3rd periodic rounds of %d VIPs set over 75 ms spread over %v and %v, want one wake-up each", len(vips), a, b)
	}
}

func TestUnsolicitedNeighborAdvertisement(t *testing.T) {
	l := newLab(t, labConfig{})
	o := testOpts
	a := l.newAnnouncer(o, nil)

	if !strings.Contains(l.neigh(vip6), oldMAC) {
		t.Fatalf("B's neighbour entry not set up: %q", l.neigh(vip6))
	}
	a.Set([]netip.Addr{vip6})
	if s := a.Stats(); s.Sent != 1 || s.Errors != 0 {
		t.Fatalf("right after Set: %+v, want the first announcement sent", s)
	}

	f := l.frame.waitN(t, vip6, 1, 2*time.Second)[0]
	if want := (net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}); !bytes.Equal(f.eth.Destination, want) {
		t.Errorf("Ethernet destination %s, want %s", f.eth.Destination, want)
	}
	if src, _ := netip.AddrFromSlice(f.ip6.Src); src != l.aLL {
		t.Errorf("IPv6 source %s, want A's link-local %s", f.ip6.Src, l.aLL)
	}
	if dst, _ := netip.AddrFromSlice(f.ip6.Dst); dst != netip.IPv6LinkLocalAllNodes() {
		t.Errorf("IPv6 destination %s, want ff02::1", f.ip6.Dst)
	}
	if f.ip6.HopLimit != 255 {
		t.Errorf("hop limit %d, want 255", f.ip6.HopLimit)
	}
	na := f.na
	if na.Solicited || !na.Override || na.Router || na.TargetAddress != vip6 {
		t.Errorf("NA %+v, want S=0 O=1 R=0 target %s", na, vip6)
	}
	if len(na.Options) != 1 {
		t.Fatalf("NA options %v, want exactly the target link-layer address", na.Options)
	}
	lla, ok := na.Options[0].(*ndp.LinkLayerAddress)
	if !ok || lla.Direction != ndp.Target || !bytes.Equal(lla.Addr, l.a0.HardwareAddr) {
		t.Errorf("NA option %+v, want target link-layer address %s", na.Options[0], l.a0.HardwareAddr)
	}

	eventually(t, 2*time.Second, "B's neighbour entry to move to A's MAC", func() bool {
		return strings.Contains(l.neigh(vip6), l.a0.HardwareAddr.String())
	})

	fs := l.frame.waitN(t, vip6, o.Burst+2, 5*time.Second)
	checkTiming(t, fs[:o.Burst+2], o)

	a.Set(nil)
	l.frame.quiet(t, vip6, time.Now(), 3*o.Interval)
	if s := a.Stats(); s.Errors != 0 {
		t.Errorf("stats %+v, want no errors", s)
	}
}

// A VIP withdrawn in the middle of its burst gets nothing more; after
// Close nothing at all is sent, whatever Set says.
func TestWithdrawAndClose(t *testing.T) {
	l := newLab(t, labConfig{})
	o := testOpts
	a := l.newAnnouncer(o, nil)

	a.Set([]netip.Addr{vip4, vip6})
	a.Set([]netip.Addr{vip6})
	withdrawn := time.Now()
	l.frame.waitN(t, vip6, o.Burst+1, 5*time.Second)
	if n := len(l.frame.of(vip4)); n != 1 {
		t.Fatalf("%d announcements of %s, want only the one sent before it was withdrawn", n, vip4)
	}
	l.frame.quiet(t, vip4, withdrawn, 0)

	// Setting a VIP that is already announced does not restart its burst.
	n := len(l.frame.of(vip6))
	a.Set([]netip.Addr{vip6})
	fs := l.frame.waitN(t, vip6, n+2, 5*time.Second)
	for i := n; i < len(fs); i++ {
		if gap := fs[i].at.Sub(fs[i-1].at); gap < o.Interval-10*time.Millisecond {
			t.Errorf("re-setting %s restarted its burst: gap of %v", vip6, gap)
		}
	}

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	closed := time.Now()
	a.Set([]netip.Addr{vip4, vip6})
	l.frame.quiet(t, vip6, closed, 3*o.Interval)
	l.frame.quiet(t, vip4, closed, 0)
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// An interface without IPv6 still announces IPv4; the IPv6 failure is
// logged with the VIP and counted, and IPv6 starts once it is possible.
func TestIPv4WithoutIPv6(t *testing.T) {
	l := newLab(t, labConfig{noIPv6OnA: true})
	var logs logtest.Buffer
	// The caller's logger names the interface (the agent's does).
	log := slog.New(slog.NewTextHandler(&logs, nil)).With("iface", "a0")
	o := testOpts
	a := l.newAnnouncer(o, log)

	a.Set([]netip.Addr{vip4, vip6})
	if s := a.Stats(); s.Sent != 1 || s.Errors != 1 {
		t.Fatalf("right after Set: %+v, want one sent (IPv4) and one error (IPv6)", s)
	}
	l.frame.waitN(t, vip4, o.Burst+1, 5*time.Second)
	out := logs.String()
	if !strings.Contains(out, "announcement failed") || !strings.Contains(out, "vip="+vip6.String()) ||
		!strings.Contains(out, "iface=a0") || !strings.Contains(out, "link-local") {
		t.Fatalf("log does not explain the IPv6 failure:\n%s", out)
	}

	// IPv6 comes up: the next scheduled announcement goes out.
	run(t, "ip", "netns", "exec", l.a, "sysctl", "-q", "-w", "net.ipv6.conf.a0.disable_ipv6=0")
	l.aLL = l.waitLinkLocal()
	f := l.frame.waitN(t, vip6, 1, 2*o.Interval+time.Second)[0]
	if src, _ := netip.AddrFromSlice(f.ip6.Src); src != l.aLL {
		t.Errorf("IPv6 source %s, want A's link-local %s", f.ip6.Src, l.aLL)
	}
	eventually(t, 2*time.Second, "B's neighbour entry to move to A's MAC", func() bool {
		return strings.Contains(l.neigh(vip6), l.a0.HardwareAddr.String())
	})
}

func counter(t *testing.T, reg *prometheus.Registry, name, family string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["family"] == family && labels["interface"] == "a0" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// Right after an interface comes up its link-local address is tentative;
// the IPv6 announcement fails with a clear message and goes out as soon as
// the address is usable.
func TestIPv6WaitsForLinkLocal(t *testing.T) {
	l := newLab(t, labConfig{slowDADOnA: true})
	eventually(t, 5*time.Second, "a tentative link-local address on a0", func() bool {
		out := run(t, "ip", "-n", l.a, "-6", "addr", "show", "dev", "a0", "scope", "link")
		return strings.Contains(out, "fe80:") && strings.Contains(out, "tentative")
	})
	var logs logtest.Buffer
	o := testOpts
	a := l.newAnnouncer(o, slog.New(slog.NewTextHandler(&logs, nil)))

	a.Set([]netip.Addr{vip6})
	if s := a.Stats(); s.Sent != 0 || s.Errors != 1 {
		t.Fatalf("right after Set: %+v, want one error", s)
	}
	if out := logs.String(); !strings.Contains(out, "vip="+vip6.String()) || !strings.Contains(out, "not usable yet") {
		t.Fatalf("log does not explain the failure:\n%s", out)
	}

	// DAD "completes": a usable link-local address replaces the tentative one.
	run(t, "ip", "-n", l.a, "-6", "addr", "flush", "dev", "a0", "scope", "link")
	run(t, "ip", "-n", l.a, "addr", "add", "fe80::a/64", "dev", "a0", "nodad")
	f := l.frame.waitN(t, vip6, 1, 2*o.Interval+time.Second)[0]
	if src, _ := netip.AddrFromSlice(f.ip6.Src); src != netip.MustParseAddr("fe80::a") {
		t.Errorf("IPv6 source %s, want fe80::a", f.ip6.Src)
	}
	eventually(t, 2*time.Second, "B's neighbour entry to move to A's MAC", func() bool {
		return strings.Contains(l.neigh(vip6), l.a0.HardwareAddr.String())
	})
}

// TestFullQueueRetriedSoon: an announcement the interface's transmit queue
// refuses (ENOBUFS) is tried again every queueFullRetry, at most
// queueFullRetries times, instead of at the next announcement of its burst;
// the socket is kept, and the announcement goes out once the queue takes it.
func TestFullQueueRetriedSoon(t *testing.T) {
	l := newLab(t, labConfig{})
	o := testOpts
	o.BurstInterval, o.Interval = 5*time.Second, 10*time.Second // only a retry comes sooner
	a := l.newAnnouncer(o, nil)
	ns, err := netns.GetFromName(l.a)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName("a0")
	if err != nil {
		t.Fatal(err)
	}
	full := func() {
		run(t, "ip", "netns", "exec", l.a, "tc", "qdisc", "add", "dev", "a0", "root", "pfifo", "limit", "0")
	}
	free := func() {
		qs, err := h.QdiscList(link)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT {
				if err := h.QdiscDel(q); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	// The queue stays full: the first try and the retries fail, then the
	// announcement waits for the next of its burst.
	full()
	start := time.Now()
	a.Set([]netip.Addr{vip4})
	want := uint64(1 + queueFullRetries)
	eventually(t, 2*time.Second, "every retry", func() bool { return a.Stats().Errors >= want })
	if took := time.Since(start); took < queueFullRetries*queueFullRetry {
		t.Errorf("%d retries within %v, want them %v apart", queueFullRetries, took, queueFullRetry)
	}
	time.Sleep(5 * queueFullRetry) // a window for a retry too many
	if s := a.Stats(); s.Errors != want || s.Sent != 0 {
		t.Errorf("with the queue full: %+v, want %d errors and nothing sent", s, want)
	}

	// Retries keep their spacing while the announcer is woken meanwhile
	// (here by Set; in the agent also by other VIPs falling due), even
	// for a periodic announcement, which is otherwise sent early to
	// gather with others.
	free()
	a.Set(nil)
	o2 := o
	o2.Burst, o2.Interval = 1, 300*time.Millisecond
	a2 := l.newAnnouncer(o2, nil)
	a2.Set([]netip.Addr{vip4})
	if s := a2.Stats(); s.Sent != 1 {
		t.Fatalf("with the queue free: %+v, want the first announcement sent", s)
	}
	full()
	eventually(t, 2*time.Second, "the periodic announcement to fail", func() bool { return a2.Stats().Errors >= 1 })
	first := time.Now()
	for a2.Stats().Errors < want && time.Since(first) < 2*time.Second {
		a2.Set([]netip.Addr{vip4}) // wakes it
		time.Sleep(time.Millisecond)
	}
	if s := a2.Stats(); s.Errors < want {
		t.Fatalf("periodic announcement: %+v, want %d errors", s, want)
	}
	if took, min := time.Since(first), queueFullRetries*queueFullRetry/2; took < min {
		t.Errorf("%d retries of a periodic announcement within %v while woken every millisecond, want them %v apart",
			queueFullRetries, took, queueFullRetry)
	}
	a2.Set(nil)

	// The queue is full for a moment only: a retry sends the announcement,
	// long before the burst's next.
	a.Set(nil)
	for range 3 {
		set := time.Now()
		a.Set([]netip.Addr{vip4})
		free()
		if time.Since(set) > queueFullRetries*queueFullRetry/2 {
			// This test was too slow to free the queue within the retries.
			a.Set(nil)
			full()
			continue
		}
		before := len(l.frame.of(vip4)) // a2's, above
		f := l.frame.waitN(t, vip4, before+1, o.BurstInterval/2)[before]
		t.Logf("sent %v after the first try failed", f.at.Sub(set).Round(time.Millisecond))
		return
	}
	t.Fatal("could not free the queue within the retries in three tries")
}

// The agent sets every VIP it announces on each pass that applies: setting
// the same ones again, in any order, keeps them and allocates nothing
// (TestWithdrawAndClose: and restarts no burst).
func TestSetAgainAllocatesNothing(t *testing.T) {
	l := newLab(t, labConfig{})
	a := l.newAnnouncer(testOpts, nil)
	a.Set([]netip.Addr{vip4, vip6})
	l.frame.waitN(t, vip6, 1, 5*time.Second)
	again := []netip.Addr{vip6, vip4, vip6}
	if allocs := testing.AllocsPerRun(100, func() { a.Set(again) }); allocs > 0 {
		t.Errorf("setting the same VIPs again allocates %.0f times, want none", allocs)
	}
	a.mu.Lock()
	n := len(a.vips)
	a.mu.Unlock()
	if n != 2 {
		t.Errorf("%d VIPs announced after setting the same two again, want 2", n)
	}
}
