package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// The tests below run Monitors inside the node namespaces of a lab: real
// sockets, a real bridge, and the lab's failure injection.

const testCluster = "kube-system@198.51.100.2"

func newLab(t *testing.T, nodes int) *lab.Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root for network namespaces")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := lab.New(ctx, lab.Options{Nodes: nodes, Logf: t.Logf})
	if err != nil {
		t.Fatalf("building lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing lab: %v", err)
		}
	})
	return l
}

func testLogger(t *testing.T, node string) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", node)
}

// newMonitor makes a Monitor whose socket lives in n's namespace; it is
// closed when the test ends.
func newMonitor(t *testing.T, n *lab.Node, cfg Config) *Monitor {
	t.Helper()
	if cfg.Node == "" {
		cfg.Node = n.Name
	}
	if cfg.Cluster == "" {
		cfg.Cluster = testCluster
	}
	if !cfg.Listen.IsValid() {
		cfg.Listen = netip.AddrPortFrom(n.IPv4, 7947)
	}
	if cfg.Log == nil {
		cfg.Log = testLogger(t, cfg.Node)
	}
	switch {
	case cfg.Keys == nil:
		cfg.Keys = &Keys{Sign: testKey}
	case cfg.Keys.Sign == nil:
		cfg.Keys = nil // no key at all
	}
	var m *Monitor
	err := lab.InNetns(n.Netns, func() error {
		var err error
		m, err = New(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("New on %s: %v", n.Name, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// run runs m until the test ends, and checks that Run returns cleanly then.
// The returned channel is closed if Run returns earlier.
func run(t *testing.T, m *Monitor) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		err = m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
			// A Monitor the test closed on purpose (a crash) ends so.
			if err != nil && !errors.Is(err, net.ErrClosed) {
				t.Errorf("Run on %s: %v", m.cfg.Node, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run on %s did not return after its context ended", m.cfg.Node)
		}
	})
	return done
}

// peersAt maps every node's name to its address at port; v6 picks IPv6.
func peersAt(nodes []*lab.Node, port uint16, v6 bool) map[string]netip.AddrPort {
	peers := map[string]netip.AddrPort{}
	for _, n := range nodes {
		a := n.IPv4
		if v6 {
			a = n.IPv6
		}
		peers[n.Name] = netip.AddrPortFrom(a, port)
	}
	return peers
}

// startAll makes and runs a Monitor on every node with every node as a peer.
func startAll(t *testing.T, nodes []*lab.Node, cfg Config) []*Monitor {
	t.Helper()
	ms := make([]*Monitor, len(nodes))
	for i, n := range nodes {
		ms[i] = newMonitor(t, n, cfg)
		ms[i].SetPeers(peersAt(nodes, 7947, false))
	}
	for _, m := range ms {
		run(t, m)
	}
	return ms
}

// await waits until cond holds, woken only by m.Changes, and returns when
// it held; ok is false if it did not within timeout.
func await(m *Monitor, timeout time.Duration, cond func() bool) (at time.Time, ok bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if cond() {
			return time.Now(), true
		}
		select {
		case <-m.Changes():
		case <-deadline.C:
			return time.Now(), cond()
		}
	}
}

// awaitEach runs await on every Monitor at once and fails the test if one
// times out. It returns when cond held for each.
func awaitEach(t *testing.T, what string, ms []*Monitor, timeout time.Duration, cond func(i int, m *Monitor) bool) []time.Time {
	t.Helper()
	at := make([]time.Time, len(ms))
	ok := make([]bool, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() { at[i], ok[i] = await(m, timeout, func() bool { return cond(i, m) }) })
	}
	wg.Wait()
	for i, m := range ms {
		if !ok[i] {
			t.Fatalf("%s: not so on %s after %v; peers: %+v", what, m.cfg.Node, timeout, m.Peers())
		}
	}
	return at
}

func heardAll(m *Monitor) bool {
	ps := m.Peers()
	for _, p := range ps {
		if !p.Heard {
			return false
		}
	}
	return len(ps) > 0
}

// eventually polls cond (for what Changes does not signal, e.g. Stats).
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not so after %v: %v", what, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPeersHearEachOther(t *testing.T) {
	l := newLab(t, 3)
	for _, tc := range []struct {
		name   string
		port   uint16
		listen func(n *lab.Node) netip.Addr
		v6     bool
	}{
		{"ipv4", 7947, func(n *lab.Node) netip.Addr { return n.IPv4 }, false},
		{"ipv6", 7948, func(n *lab.Node) netip.Addr { return n.IPv6 }, true},
		// [::] takes IPv4 too; peers are IPv4.
		{"dual-stack socket", 7949, func(*lab.Node) netip.Addr { return netip.IPv6Unspecified() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peers := peersAt(l.Nodes, tc.port, tc.v6)
			ms := make([]*Monitor, len(l.Nodes))
			for i, n := range l.Nodes {
				ms[i] = newMonitor(t, n, Config{Listen: netip.AddrPortFrom(tc.listen(n), tc.port)})
				if got, want := ms[i].Addr(), netip.AddrPortFrom(tc.listen(n), tc.port); got != want {
					t.Errorf("Addr on %s: %s, want %s", n.Name, got, want)
				}
				ms[i].SetPeers(peers) // lists the node itself too, which is ignored
			}
			start := time.Now()
			for _, m := range ms {
				run(t, m)
			}
			at := awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
			for i, m := range ms {
				took := at[i].Sub(start)
				t.Logf("%s heard all peers %v after the first Run started", m.cfg.Node, took.Round(10*time.Microsecond))
				// Three hops (a first beat, the answer that echoes it,
				// the answer to that), each read at the receiver's next
				// wake-up, at most an Interval later; one more for a
				// loaded machine.
				if took > 4*DefaultInterval {
					t.Errorf("%s heard all peers only after %v, want within 4 intervals (%v)", m.cfg.Node, took, 4*DefaultInterval)
				}
				ps := m.Peers()
				if len(ps) != len(l.Nodes)-1 {
					t.Errorf("%s has %d peers, want %d (itself excluded): %+v", m.cfg.Node, len(ps), len(l.Nodes)-1, ps)
				}
				for name, p := range ps {
					if !p.Ever || p.Silences != 0 || p.From.Addr() != peers[name].Addr() || p.State != (State{}) {
						t.Errorf("%s's view of %s: %+v; want heard from %s with the zero State", m.cfg.Node, name, p, peers[name].Addr())
					}
				}
				if s := m.Stats(); s.Malformed+s.Cluster+s.Unknown+s.OtherAddr != 0 {
					t.Errorf("%s dropped beats: %+v", m.cfg.Node, s)
				}
			}
		})
	}
}

func TestStateChangePropagatesAtOnce(t *testing.T) {
	l := newLab(t, 3)
	// A long interval on n1, so that only the beat it sends on the change
	// can carry it; the receivers read their socket every default
	// interval, and a long timeout keeps n1's rare beats fresh for them.
	const interval = time.Second
	ms := make([]*Monitor, len(l.Nodes))
	for i, n := range l.Nodes {
		cfg := Config{Timeout: 5 * time.Second}
		if i == 0 {
			cfg.Interval = interval
		}
		ms[i] = newMonitor(t, n, cfg)
		ms[i].SetPeers(peersAt(l.Nodes, 7947, false))
	}
	for _, m := range ms {
		run(t, m)
	}
	awaitEach(t, "every peer heard", ms, 4*interval, func(_ int, m *Monitor) bool { return heardAll(m) })

	var worst time.Duration
	for _, s := range []State{
		{APIOK: true}, {APIOK: true, Live: true}, {Live: true}, {}, {APIOK: true, Live: true}, {APIOK: true}, {},
	} {
		start := time.Now()
		ms[0].SetState(s)
		at := awaitEach(t, fmt.Sprintf("n1's state %+v seen", s), ms[1:], interval/2, func(_ int, m *Monitor) bool {
			return m.Peer("n1").State == s
		})
		for i, a := range at {
			took := a.Sub(start)
			worst = max(worst, took)
			t.Logf("%+v reached %s in %v", s, ms[1+i].cfg.Node, took.Round(10*time.Microsecond))
		}
	}
	t.Logf("slowest state change: %v (interval %v)", worst.Round(10*time.Microsecond), interval)
	// Sent at once, read at the receiver's next wake-up: a default
	// interval, and margin for a loaded machine.
	if worst > DefaultInterval+30*time.Millisecond {
		t.Errorf("a state change took %v to reach a peer, want well under n1's interval", worst)
	}
	// Setting the same state again sends nothing extra.
	before := ms[0].Stats().Sent
	for range 100 {
		ms[0].SetState(State{})
	}
	if sent := ms[0].Stats().Sent - before; sent > 2*2 { // at most one tick to two peers meanwhile
		t.Errorf("repeating the same State sent %d beats", sent)
	}
}

func TestLinkDownDetected(t *testing.T) {
	l := newLab(t, 3)
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	timeout := ms[0].cfg.Timeout

	n3 := l.Nodes[2]
	start := time.Now()
	if err := n3.LinkDown(); err != nil {
		t.Fatal(err)
	}
	linkDownTook := time.Since(start)
	t.Cleanup(func() { _ = n3.LinkUp() })
	// n1 and n2 lose n3; n3, alone, loses both.
	silent := func(i int, m *Monitor) bool {
		if i < 2 {
			return !m.Peer("n3").Heard
		}
		return !m.Peer("n1").Heard && !m.Peer("n2").Heard
	}
	at := awaitEach(t, "n3 silent", ms, timeout+time.Second, silent)
	for i, m := range ms {
		took := at[i].Sub(start)
		who := "n3"
		if i == 2 {
			who = "n1"
		}
		p := m.Peer(who)
		t.Logf("%s: %s silent %v after LinkDown began (the ip command took %v), %v after its last beat",
			m.cfg.Node, who, took.Round(100*time.Microsecond), linkDownTook.Round(100*time.Microsecond),
			at[i].Sub(p.Last).Round(100*time.Microsecond))
		if took > timeout+50*time.Millisecond {
			t.Errorf("%s noticed %s silent only %v after LinkDown, want within %v", m.cfg.Node, who, took, timeout+50*time.Millisecond)
		}
		// Heard follows the clock; the count follows at the silence timer.
		eventually(t, 100*time.Millisecond, m.cfg.Node+" counts one silence of "+who, func() error {
			if n := m.Peer(who).Silences; n != 1 {
				return fmt.Errorf("%d silences", n)
			}
			return nil
		})
	}
	// Nobody else was suspected.
	if p := ms[0].Peer("n2"); !p.Heard || p.Silences != 0 {
		t.Errorf("n1's view of n2 while n3 is down: %+v", p)
	}

	start = time.Now()
	if err := n3.LinkUp(); err != nil {
		t.Fatal(err)
	}
	// Losing carrier flushed n3's neighbour entries; its beats wait for ARP,
	// which the kernel retries once a second (retrans_time_ms).
	at = awaitEach(t, "every peer heard again", ms, 3*time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	for i, m := range ms {
		t.Logf("%s hears every peer again %v after LinkUp began", m.cfg.Node, at[i].Sub(start).Round(100*time.Microsecond))
	}
	t.Logf("n3 stats: %+v", ms[2].Stats())
}

func TestNoFalseSuspicionUnderLoss(t *testing.T) {
	l := newLab(t, 3)
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })

	// 10% on every node: each beat crosses two lossy links, so ~19% of
	// beats are lost, more than 10% each way.
	for _, n := range l.Nodes {
		if err := n.DropPercent(10); err != nil {
			t.Fatal(err)
		}
	}
	before := make([]Stats, len(ms))
	for i, m := range ms {
		before[i] = m.Stats()
	}
	const window = 5 * time.Second
	// Watch every Changes signal for a peer that is not Heard.
	suspected := make([]int, len(ms))
	stop := time.After(window)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for i, m := range ms {
		wg.Go(func() {
			for {
				select {
				case <-m.Changes():
					if !heardAll(m) {
						suspected[i]++
					}
				case <-done:
					return
				}
			}
		})
	}
	<-stop
	close(done)
	wg.Wait()

	var sent, accepted uint64
	var worst time.Duration
	for i, m := range ms {
		s := m.Stats()
		sent += s.Sent - before[i].Sent
		accepted += s.Accepted - before[i].Accepted
		for name, p := range m.Peers() {
			worst = max(worst, p.LongestGap)
			t.Logf("%s's view of %s: longest gap %v, silences %d", m.cfg.Node, name, p.LongestGap.Round(100*time.Microsecond), p.Silences)
			if p.Silences != 0 || !p.Heard {
				t.Errorf("%s suspected %s under 10%% loss: %+v", m.cfg.Node, name, p)
			}
		}
		if suspected[i] != 0 {
			t.Errorf("%s reported a silent peer %d times under 10%% loss", m.cfg.Node, suspected[i])
		}
	}
	loss := 1 - float64(accepted)/float64(sent)
	t.Logf("over %v: %d beats sent, %d accepted, %.1f%% lost; worst gap %v, timeout %v",
		window, sent, accepted, 100*loss, worst.Round(100*time.Microsecond), ms[0].cfg.Timeout)
	if loss < 0.10 {
		t.Errorf("only %.1f%% of beats were lost; the drop did not work", 100*loss)
	}
}

func TestOtherClusterIgnored(t *testing.T) {
	l := newLab(t, 3)
	peers := peersAt(l.Nodes, 7947, false)
	ms := make([]*Monitor, 3)
	for i, n := range l.Nodes {
		cluster := testCluster
		if n.Name == "n2" {
			cluster = "other@198.51.100.3"
		}
		ms[i] = newMonitor(t, n, Config{Cluster: cluster})
		ms[i].SetPeers(peers)
		run(t, ms[i])
	}
	n1, n2, n3 := ms[0], ms[1], ms[2]
	if _, ok := await(n1, time.Second, func() bool { return n1.Peer("n3").Heard }); !ok {
		t.Fatalf("n1 does not hear n3 of its own cluster: %+v", n1.Peers())
	}
	eventually(t, 2*time.Second, "n2's beats dropped", func() error {
		for _, m := range []*Monitor{n1, n3} {
			if s := m.Stats(); s.Cluster < 10 {
				return fmt.Errorf("%s dropped %d beats of another cluster", m.cfg.Node, s.Cluster)
			}
		}
		if s := n2.Stats(); s.Cluster < 20 {
			return fmt.Errorf("n2 dropped %d beats of another cluster", s.Cluster)
		}
		return nil
	})
	for _, m := range []*Monitor{n1, n3} {
		if p := m.Peer("n2"); p.Ever || p.Heard {
			t.Errorf("%s took beats from another cluster: %+v", m.cfg.Node, p)
		}
	}
	for name, p := range n2.Peers() {
		if p.Ever {
			t.Errorf("n2 took beats of %s from another cluster: %+v", name, p)
		}
	}
}

func TestGarbageIgnored(t *testing.T) {
	l := newLab(t, 3)
	ms := startAll(t, l.Nodes[:2], Config{})
	n1 := ms[0]
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })

	good := beat{Cluster: testCluster, From: "n2", To: "n1", Incarnation: 1, Seq: 1}
	valid := appendBeat(nil, good, newMACer(testKey))
	random := make([]byte, 1400)
	for i := range random {
		random[i] = byte(rand.Uint32())
	}
	malformed := [][]byte{
		{},
		[]byte("x"),
		random,
		make([]byte, 4000), // fragmented, larger than any beat
		[]byte("VIPDHB2"),
		append([]byte("XIPDHB2"), valid[7:]...),
		append([]byte("VIPDHB9"), valid[7:]...),
		valid[:len(valid)-1],
		append(append([]byte(nil), valid...), 0),
		append(append([]byte(nil), valid[:headerLen]...), 0xff, 'c'),
	}
	// Authentic, but from a node that is not a peer (n1's own name too).
	unknown := [][]byte{
		appendBeat(nil, beat{KeyID: keyID(testKey), Cluster: testCluster, From: "n9", To: "n1", Seq: 1}, newMACer(testKey)),
		appendBeat(nil, beat{KeyID: keyID(testKey), Cluster: testCluster, From: "n1", To: "n1", Seq: 1}, newMACer(testKey)),
	}
	var conn *net.UDPConn
	if err := lab.InNetns(l.Nodes[2].Netns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.Nodes[2].IPv4, 0)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// Round by round, so that a burst does not overflow the socket buffer.
	for round := range 20 {
		before := n1.Stats()
		for _, p := range append(malformed, unknown...) {
			if _, err := conn.WriteToUDPAddrPort(p, n1.Addr()); err != nil {
				t.Fatalf("sending garbage: %v", err)
			}
		}
		eventually(t, 2*time.Second, fmt.Sprintf("garbage of round %d counted", round), func() error {
			s := n1.Stats()
			if s.Malformed-before.Malformed != uint64(len(malformed)) || s.Unknown-before.Unknown != uint64(len(unknown)) {
				return fmt.Errorf("%d malformed and %d unknown counted, want %d and %d", s.Malformed-before.Malformed,
					s.Unknown-before.Unknown, len(malformed), len(unknown))
			}
			return nil
		})
	}
	// Still running, still hearing n2, and the garbage changed nothing.
	before := n1.Stats()
	eventually(t, time.Second, "beats from n2 after the garbage", func() error {
		if got := n1.Stats().Accepted - before.Accepted; got < 5 {
			return fmt.Errorf("%d accepted", got)
		}
		return nil
	})
	if p := n1.Peer("n2"); !p.Heard || p.Silences != 0 || p.From.Addr() != l.Nodes[1].IPv4 {
		t.Errorf("n1's view of n2 after the garbage: %+v", p)
	}
	if _, ok := n1.Peers()["n9"]; ok {
		t.Errorf("an unknown node became a peer")
	}
}

func TestBeatFromOtherAddressAccepted(t *testing.T) {
	l := newLab(t, 3)
	n1, n2 := l.Nodes[0], l.Nodes[1]
	// n2 has a second address and listens on every address; n1 sends to the
	// second one, while n2's replies leave from its first.
	second := netip.MustParseAddr("198.51.100.112")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := l.Exec(ctx, n2.Netns, "ip", "addr", "add", second.String()+"/32", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	m1 := newMonitor(t, n1, Config{})
	m2 := newMonitor(t, n2, Config{Listen: netip.MustParseAddrPort("0.0.0.0:7947")})
	m1.SetPeers(map[string]netip.AddrPort{"n2": netip.AddrPortFrom(second, 7947)})
	m2.SetPeers(map[string]netip.AddrPort{"n1": netip.AddrPortFrom(n1.IPv4, 7947)})
	run(t, m1)
	run(t, m2)
	if _, ok := await(m1, time.Second, func() bool { return m1.Peer("n2").Heard }); !ok {
		t.Fatalf("n1 does not take n2's beats from another address: %+v, %+v", m1.Peer("n2"), m1.Stats())
	}
	if p := m1.Peer("n2"); p.From.Addr() != n2.IPv4 {
		t.Errorf("n2's beats came from %s", p.From)
	}
	if s := m1.Stats(); s.OtherAddr == 0 || s.OtherAddr != s.Accepted {
		t.Errorf("beats from another address not counted: %+v", s)
	}
}

func TestSetPeersForgets(t *testing.T) {
	l := newLab(t, 3)
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	n1, n3 := ms[0], ms[2]
	timeout := n1.cfg.Timeout

	all := peersAt(l.Nodes, 7947, false)
	start := time.Now()
	n1.SetPeers(map[string]netip.AddrPort{"n2": all["n2"]})
	if p := n1.Peer("n3"); p != (PeerState{}) {
		t.Errorf("n1 still knows the removed n3: %+v", p)
	}
	if ps := n1.Peers(); len(ps) != 1 {
		t.Errorf("n1's peers after removing n3: %+v", ps)
	}
	// n1 stops sending to n3, so n3 loses n1.
	at, ok := await(n3, timeout+time.Second, func() bool { return !n3.Peer("n1").Heard })
	if !ok {
		t.Fatalf("n3 still hears n1 after n1 dropped it: %+v", n3.Peer("n1"))
	}
	t.Logf("n3 noticed n1's silence %v after n1 dropped it", at.Sub(start).Round(100*time.Microsecond))
	if at.Sub(start) > timeout+50*time.Millisecond {
		t.Errorf("n3 noticed n1's silence only after %v", at.Sub(start))
	}
	// n3 still sends; n1 now drops its beats.
	before := n1.Stats().Unknown
	eventually(t, time.Second, "n3's beats dropped by n1", func() error {
		if n1.Stats().Unknown < before+3 {
			return fmt.Errorf("%d dropped", n1.Stats().Unknown-before)
		}
		return nil
	})
	if p := n1.Peer("n3"); p.Ever {
		t.Errorf("n1 took beats from the removed n3: %+v", p)
	}

	// Back in the set: a fresh record, and n1 greets n3 at once.
	start = time.Now()
	n1.SetPeers(all)
	at, ok = await(n3, time.Second, func() bool { return n3.Peer("n1").Heard })
	if !ok {
		t.Fatalf("n3 does not hear n1 again: %+v", n3.Peer("n1"))
	}
	t.Logf("n3 hears n1 again %v after n1 listed it", at.Sub(start).Round(10*time.Microsecond))
	// n1 greets at once; n3 reads it at its next wake-up, an interval at
	// most, and answers at once; n1 reads that within an interval.
	if at.Sub(start) > 2*DefaultInterval+20*time.Millisecond {
		t.Errorf("n1 greeted the re-added n3 only after %v", at.Sub(start))
	}
	if _, ok := await(n1, time.Second, func() bool { return n1.Peer("n3").Heard }); !ok {
		t.Fatalf("n1 does not hear n3 again: %+v", n1.Peer("n3"))
	}
	// The gap while n3 was forgotten is not counted against it.
	if p := n1.Peer("n3"); p.LongestGap > timeout/2 || p.Silences != 0 {
		t.Errorf("n1's record of n3 is not fresh: %+v", p)
	}
}

// Beats sent while the peer is heard confirm the kernel's neighbour entry,
// so it stays REACHABLE instead of going STALE and being re-probed.
func TestNeighbourStaysReachable(t *testing.T) {
	l := newLab(t, 2)
	for _, tc := range []struct {
		name string
		v6   bool
		port uint16
	}{{"ipv4", false, 7947}, {"ipv6", true, 7948}} {
		t.Run(tc.name, func(t *testing.T) {
			n1, n2 := l.Nodes[0], l.Nodes[1]
			family, peer := "ipv4", n2.IPv4
			if tc.v6 {
				family, peer = "ipv6", n2.IPv6
			}
			// Entries of n1 would go STALE 150-450 ms after the last
			// confirmation, and be probed 1 s later.
			if err := lab.InNetns(n1.Netns, func() error {
				for k, v := range map[string]string{"base_reachable_time_ms": "300", "delay_first_probe_time": "1"} {
					p := fmt.Sprintf("/proc/sys/net/%s/neigh/eth0/%s", family, k)
					if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
						return fmt.Errorf("setting %s: %w", p, err)
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			peers := peersAt(l.Nodes, tc.port, tc.v6)
			var ms []*Monitor
			for _, n := range l.Nodes {
				m := newMonitor(t, n, Config{Listen: peers[n.Name]})
				m.SetPeers(peers)
				run(t, m)
				ms = append(ms, m)
			}
			awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })

			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			state := func() string {
				out, err := l.Exec(ctx, n1.Netns, "ip", "neigh", "show", peer.String(), "dev", "eth0")
				if err != nil {
					t.Fatal(err)
				}
				f := strings.Fields(out)
				if len(f) == 0 {
					t.Fatalf("no neighbour entry for %s on n1", peer)
				}
				return f[len(f)-1]
			}
			// The entry may start STALE (learnt from n2's own ARP request or
			// neighbour solicitation) and then sit in DELAY for
			// delay_first_probe_time before confirmations count.
			eventually(t, 5*time.Second, "neighbour entry REACHABLE", func() error {
				if s := state(); s != "REACHABLE" {
					return fmt.Errorf("n1's entry for %s is %s", peer, s)
				}
				return nil
			})
			states := map[string]int{}
			for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
				states[state()]++
				time.Sleep(50 * time.Millisecond) // sampling, not waiting for a condition
			}
			t.Logf("n1's neighbour entry for %s over 2 s: %v", peer, states)
			if len(states) != 1 || states["REACHABLE"] == 0 {
				t.Errorf("n1's neighbour entry for %s left REACHABLE: %v", peer, states)
			}
		})
	}
}

func TestNewAndRunErrors(t *testing.T) {
	l := newLab(t, 1)
	n1 := l.Nodes[0]
	absent := netip.MustParseAddrPort("198.51.100.250:7947")
	err := lab.InNetns(n1.Netns, func() error {
		_, err := New(Config{Node: "n1", Cluster: testCluster, Listen: absent})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), absent.String()) {
		t.Errorf("binding to an address n1 lacks: %v, want an error naming %s", err, absent)
	}

	m := newMonitor(t, n1, Config{})
	err = lab.InNetns(n1.Netns, func() error {
		_, err := New(Config{Node: "n1", Cluster: testCluster, Listen: m.Addr()})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), m.Addr().String()) {
		t.Errorf("binding twice: %v, want an error naming %s", err, m.Addr())
	}

	// Port 0 picks a port; Addr tells which.
	eph := newMonitor(t, n1, Config{Listen: netip.AddrPortFrom(n1.IPv4, 0)})
	if eph.Addr().Addr() != n1.IPv4 || eph.Addr().Port() == 0 {
		t.Errorf("Addr with port 0: %s", eph.Addr())
	}

	done := run(t, m)
	eventually(t, time.Second, "Run started", func() error {
		if !m.started.Load() {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.Run(ctx); err == nil {
		t.Error("a second Run did not fail")
	}
	// Closing under a running Monitor ends Run with an error.
	m2 := newMonitor(t, n1, Config{Listen: netip.AddrPortFrom(n1.IPv4, 0)})
	errc := make(chan error, 1)
	go func() { errc <- m2.Run(context.Background()) }()
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("Run after Close returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	select {
	case <-done:
		t.Error("the first Run ended early")
	default:
	}
}

// TestSteadyBeatsChangeNothing: once every peer hears every other, beats
// that say the same as the last ones are no change for the agent, whatever
// order their lists come in; a change makes the agent look at all its
// VIPs.
func TestSteadyBeatsChangeNothing(t *testing.T) {
	l := newLab(t, 5)
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, 2*time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	// Beats that were on their way when the last peer was heard.
	time.Sleep(3 * DefaultInterval)
	for _, m := range ms {
		select {
		case <-m.Changes():
		default:
		}
	}
	const window = time.Second // the measurement: beats every DefaultInterval from four peers
	silences := func() int {
		n := 0
		for _, p := range ms[0].Peers() {
			n += p.Silences
		}
		return n
	}
	changes := 0
	// A window in which n1 judged a peer silent (a machine too loaded to
	// keep the beats' pace) is measured again: that is a change.
	for try := 0; try < 3; try++ {
		awaitEach(t, "every peer heard", ms, 2*time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
		select {
		case <-ms[0].Changes():
		default:
		}
		before := silences()
		changes = 0
		deadline := time.After(window)
		for done := false; !done; {
			select {
			case <-ms[0].Changes():
				changes++
			case <-deadline:
				done = true
			}
		}
		if silences() == before {
			break
		}
		t.Logf("n1 judged a peer silent during the window; measuring again")
	}
	if s := ms[0].Stats(); s.Accepted == 0 {
		t.Fatalf("n1 accepted no beat: %+v", s)
	}
	if changes > 0 {
		t.Errorf("n1 signalled %d changes in %v of steady beats, want none", changes, window)
	}
}
