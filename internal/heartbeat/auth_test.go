package heartbeat

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// forgerConn is a UDP socket in the lab's client namespace: a host on the
// segment that knows the wire format but not the key.
func forgerConn(t *testing.T, l *lab.Lab, port uint16) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	if err := lab.InNetns(l.Client.Netns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.Client.IPv4, port)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestForgedBeatsIgnored: beats in a peer's name without the key change
// nothing: a dead peer goes silent on time, a live one stays heard.
func TestForgedBeatsIgnored(t *testing.T) {
	l := newLab(t, 3)
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	n1, n2 := ms[0], ms[1]
	n2.SetState(State{APIOK: true, Live: true})
	if _, ok := await(n1, time.Second, func() bool { return n1.Peer("n2").Live }); !ok {
		t.Fatal("n1 does not see n2 live")
	}
	forger := forgerConn(t, l, 0)
	otherKey := []byte("the forger's guess at the key, 32+ bytes long")
	forge := func(live bool, seq uint64) [][]byte {
		b := beat{Cluster: testCluster, From: "n2", To: "n1", Incarnation: uint64(time.Now().UnixNano()), Seq: seq,
			State: State{APIOK: true, Live: live}, Hears: []uint32{nameHash("n1"), nameHash("n3")}}
		wrongKey := b
		wrongKey.KeyID = keyID(otherKey)
		rightID := b // the right key ID, a MAC made with another key
		rightID.KeyID = keyID(testKey)
		return [][]byte{appendBeat(nil, wrongKey, newMACer(otherKey)), appendBeat(nil, rightID, newMACer(otherKey))}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	send := func(live bool) {
		wg.Go(func() {
			for seq := uint64(1); ctx.Err() == nil; seq++ {
				for _, p := range forge(live, seq) {
					_, _ = forger.WriteToUDPAddrPort(p, n1.Addr())
				}
				time.Sleep(2 * time.Millisecond) // a flood, paced so the socket keeps up
			}
		})
	}
	// "n2 has let go": n1 must still hear it live.
	send(false)
	time.Sleep(300 * time.Millisecond) // forging for longer than the timeout is the point
	if p := n1.Peer("n2"); !p.Heard || !p.Live || p.Silences != 0 {
		t.Errorf("n1's view of n2 under forged beats: %+v", p)
	}
	// n2 dies; the forger keeps saying it is alive.
	send(true)
	stop := time.Now()
	n2.Close()
	at, ok := await(n1, 2*time.Second, func() bool { return n1.Peer("n2").Silent })
	if !ok {
		t.Fatalf("n1 still hears the dead n2 while a forger speaks for it: %+v", n1.Peer("n2"))
	}
	t.Logf("n1 judged n2 silent %v after it stopped, despite the forger", at.Sub(stop).Round(time.Millisecond))
	if at.Sub(stop) > n1.cfg.Timeout+50*time.Millisecond {
		t.Errorf("n2 judged silent only %v after it stopped, want within the timeout %v", at.Sub(stop), n1.cfg.Timeout)
	}
	if s := n1.Stats(); s.Auth < 100 {
		t.Errorf("only %d forged beats were refused: %+v", s.Auth, s)
	}
	time.Sleep(300 * time.Millisecond) // the forger goes on; nothing it sends counts
	if p := n1.Peer("n2"); p.Heard {
		t.Errorf("n1 hears n2 again from forged beats: %+v", p)
	}
}

// relay stands between a sender and a receiver, like a tap on the wire:
// it records every datagram and passes it on.
type relay struct {
	conn *net.UDPConn
	to   netip.AddrPort

	mu   sync.Mutex
	seen [][]byte
	pass bool
}

func (r *relay) run() {
	buf := make([]byte, MaxBeatLen)
	for {
		n, _, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		p := append([]byte(nil), buf[:n]...)
		r.mu.Lock()
		r.seen = append(r.seen, p)
		pass := r.pass
		r.mu.Unlock()
		if pass {
			_, _ = r.conn.WriteToUDPAddrPort(p, r.to)
		}
	}
}

func (r *relay) recorded() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pass = false
	return append([][]byte(nil), r.seen...)
}

// TestReplayedBeatsIgnored: genuine beats captured on the wire and sent
// again prove nothing: not to the receiver they were for, and not to that
// receiver after it restarted.
func TestReplayedBeatsIgnored(t *testing.T) {
	l := newLab(t, 2)
	n1, n2 := l.Nodes[0], l.Nodes[1]
	tap := &relay{conn: forgerConn(t, l, 7947), to: netip.AddrPortFrom(n1.IPv4, 7947), pass: true}
	go tap.run()
	m1 := newMonitor(t, n1, Config{})
	m2 := newMonitor(t, n2, Config{})
	m1.SetPeers(map[string]netip.AddrPort{"n2": netip.AddrPortFrom(n2.IPv4, 7947)})
	m2.SetPeers(map[string]netip.AddrPort{"n1": tap.conn.LocalAddr().(*net.UDPAddr).AddrPort()}) // through the tap
	run(t, m1)
	run(t, m2)
	if _, ok := await(m1, time.Second, func() bool { return m1.Peer("n2").Heard }); !ok {
		t.Fatalf("n1 does not hear n2 through the tap: %+v %+v", m1.Peer("n2"), m1.Stats())
	}
	time.Sleep(time.Second) // let the tap record a second of genuine beats
	captured := tap.recorded()
	stop := time.Now()
	m2.Close()
	if len(captured) < 20 {
		t.Fatalf("the tap recorded only %d beats", len(captured))
	}
	t.Logf("captured %d genuine beats from n2 to n1", len(captured))

	replay := func(to netip.AddrPort, d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			for _, p := range captured {
				_, _ = tap.conn.WriteToUDPAddrPort(p, to)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	go replay(m1.Addr(), time.Second)
	// With no other peer n1 is cut off once n2 is quiet, so it does not
	// judge n2 Silent; what matters is that it stops hearing it.
	at, ok := await(m1, 2*time.Second, func() bool { return !m1.Peer("n2").Heard })
	if !ok {
		t.Fatalf("replayed beats keep the stopped n2 alive at n1: %+v %+v", m1.Peer("n2"), m1.Stats())
	}
	t.Logf("n1 judged n2 silent %v after it stopped, under replay", at.Sub(stop).Round(time.Millisecond))
	if at.Sub(stop) > m1.cfg.Timeout+50*time.Millisecond {
		t.Errorf("silent only %v after n2 stopped", at.Sub(stop))
	}
	if s := m1.Stats(); s.Stale+s.Unverified == 0 {
		t.Errorf("no replayed beat was refused: %+v", s)
	}

	// n1 restarts (a new incarnation, nothing remembered) and gets the
	// whole capture again.
	m1.Close()
	r1 := newMonitor(t, n1, Config{})
	r1.SetPeers(map[string]netip.AddrPort{"n2": netip.AddrPortFrom(n2.IPv4, 7947)})
	run(t, r1)
	replay(r1.Addr(), time.Second)
	if p := r1.Peer("n2"); p.Ever {
		t.Errorf("the restarted n1 took replayed beats of n2 as proof of life: %+v", p)
	}
	s := r1.Stats()
	t.Logf("restarted n1: %+v", s)
	if s.Unverified+s.Stale == 0 {
		t.Errorf("the restarted n1 saw no replayed beat: %+v", s)
	}
}

// TestVouchedWhenCutFromOnePeer: n1 and n2 stop hearing each other but both
// still hear n3, which hears them: neither is dead to the other.
func TestVouchedWhenCutFromOnePeer(t *testing.T) {
	l := newLab(t, 3)
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	n1, n2 := l.Nodes[0], l.Nodes[1]
	if err := n1.DropUDP(n2); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n1.DropUDP() })
	awaitEach(t, "n1 and n2 silent to each other", ms[:2], time.Second, func(i int, m *Monitor) bool {
		return m.Peer(l.Nodes[1-i].Name).Silent
	})
	for i, m := range ms[:2] {
		other := l.Nodes[1-i].Name
		if !m.Vouched(other) {
			t.Errorf("%s: %s is silent and n3 hears it, but it is not vouched for", m.cfg.Node, other)
		}
		if s := m.Self(); s.Isolated || s.Rejoining {
			t.Errorf("%s thinks it is cut off: %+v", m.cfg.Node, s)
		}
	}
	// n3 dies: n1 and n2 hear nobody now, so they judge nobody.
	ms[2].Close()
	awaitEach(t, "n1 and n2 isolated", ms[:2], time.Second, func(_ int, m *Monitor) bool { return m.Self().Isolated })
	for _, m := range ms[:2] {
		for name, p := range m.Peers() {
			if p.Silent {
				t.Errorf("%s, isolated, judged %s silent: %+v", m.cfg.Node, name, p)
			}
		}
	}
}

// TestCutOffNodeJudgesNobody: a node whose link flaps judges no peer dead
// (silent and unvouched) during the flap or right after it, while the others
// do judge it.
func TestCutOffNodeJudgesNobody(t *testing.T) {
	l := newLab(t, 3)
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	n3, m3 := l.Nodes[2], ms[2]
	for _, tellCarrier := range []bool{true, false} {
		judged := 0
		var mu sync.Mutex
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-m3.Changes():
				}
				for name, p := range m3.Peers() {
					if p.Silent && !m3.Vouched(name) {
						mu.Lock()
						judged++
						mu.Unlock()
						t.Logf("n3 judged %s dead: %+v, self %+v", name, p, m3.Self())
					}
				}
			}
		})
		if tellCarrier {
			m3.SetLinkUp(false)
		}
		if err := n3.LinkDown(); err != nil {
			t.Fatal(err)
		}
		awaitEach(t, "n3 silent to the others", ms[:2], time.Second, func(_ int, m *Monitor) bool {
			return m.Peer("n3").Silent && !m.Vouched("n3")
		})
		if _, ok := await(m3, time.Second, func() bool { return m3.Self().Isolated || m3.Self().LinkDown }); !ok {
			t.Errorf("n3 does not know it is cut off: %+v", m3.Self())
		}
		time.Sleep(200 * time.Millisecond) // a 0.5 s flap in all
		if err := n3.LinkUp(); err != nil {
			t.Fatal(err)
		}
		if tellCarrier {
			m3.SetLinkUp(true)
		}
		back := time.Now()
		awaitEach(t, "every peer heard again", ms, 3*time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
		if _, ok := await(m3, 2*m3.cfg.Timeout, func() bool { return !m3.Self().Rejoining }); !ok {
			t.Errorf("n3 still rejoining %v after its link came back: %+v", time.Since(back), m3.Self())
		}
		cancel()
		wg.Wait()
		if judged > 0 {
			t.Errorf("carrier told: %v: n3 judged a peer dead %d times around its own link flap", tellCarrier, judged)
		}
	}
}

// TestHolderAnswersAsks: an agent that asks who holds a contest learns it
// from the holder's beats, and learns when it stops.
func TestHolderAnswersAsks(t *testing.T) {
	l := newLab(t, 3)
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	n1, n2 := ms[0], ms[1]
	n2.SetHolding([]string{"plndr-cp-lock", "vipd-svc-192-0-2-1"})
	n1.SetAsks([]string{"plndr-cp-lock"})
	if _, ok := await(n1, time.Second, func() bool { return n1.HolderOf("plndr-cp-lock") == "n2" }); !ok {
		t.Fatalf("n1 does not learn that n2 holds the contest")
	}
	if h := n1.HolderOf("vipd-svc-192-0-2-1"); h != "" {
		t.Errorf("n1 learnt about a contest it did not ask about: %q", h)
	}
	n2.SetHolding(nil)
	if _, ok := await(n1, time.Second, func() bool { return n1.HolderOf("plndr-cp-lock") == "" }); !ok {
		t.Errorf("n1 still thinks n2 holds the contest after it let go")
	}
}

// TestNoKeyNoBeats: without a key nothing is sent or accepted; with one,
// beats flow.
func TestNoKeyNoBeats(t *testing.T) {
	l := newLab(t, 2)
	var ms []*Monitor
	for _, n := range l.Nodes {
		m := newMonitor(t, n, Config{Keys: &Keys{}}) // the empty Keys mean: none
		m.SetPeers(peersAt(l.Nodes, 7947, false))
		run(t, m)
		ms = append(ms, m)
	}
	time.Sleep(200 * time.Millisecond) // ten intervals of nothing is the point
	for _, m := range ms {
		if s := m.Stats(); s.Sent != 0 || s.Accepted != 0 {
			t.Errorf("%s without a key: %+v", m.cfg.Node, s)
		}
		if m.Self().Keys {
			t.Errorf("%s says it has keys", m.cfg.Node)
		}
	}
	for _, m := range ms {
		if err := m.SetKeys(&Keys{Sign: testKey}); err != nil {
			t.Fatal(err)
		}
	}
	awaitEach(t, "every peer heard once keys are set", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	if err := ms[0].SetKeys(&Keys{Sign: []byte("short")}); err == nil {
		t.Error("a short key was accepted")
	}
}

// TestKeyRotationWithoutOutage: the documented rotation keeps every peer
// heard at every step; an agent that drops the old key too early stops
// hearing one that still signs with it.
func TestKeyRotationWithoutOutage(t *testing.T) {
	l := newLab(t, 3)
	oldKey, newKey := testKey, []byte("the new key, also at least 32 bytes!")
	ms := startAll(t, l.Nodes, Config{})
	awaitEach(t, "every peer heard", ms, time.Second, func(_ int, m *Monitor) bool { return heardAll(m) })
	steps := []Keys{
		{Sign: oldKey, Accept: [][]byte{newKey}}, // 1: accept the new key everywhere
		{Sign: newKey, Accept: [][]byte{oldKey}}, // 2: sign with it
		{Sign: newKey},                           // 3: drop the old one
	}
	for i, k := range steps {
		for _, m := range ms { // one agent at a time, as a rollout goes
			if err := m.SetKeys(&k); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // agents pick up a change at different times
			for _, o := range ms {
				if !heardAll(o) {
					t.Fatalf("step %d: %s lost a peer while the keys rolled out: %+v", i+1, o.cfg.Node, o.Peers())
				}
			}
		}
	}
	for _, m := range ms {
		for name, p := range m.Peers() {
			if p.Silences != 0 {
				t.Errorf("%s counted %d silences of %s during the rotation", m.cfg.Node, p.Silences, name)
			}
		}
	}
	// n3 alone goes back to the old key: nobody accepts it any more.
	if err := ms[2].SetKeys(&Keys{Sign: oldKey}); err != nil {
		t.Fatal(err)
	}
	awaitEach(t, "n3 no longer heard", ms[:2], time.Second, func(_ int, m *Monitor) bool { return m.Peer("n3").Silent })
	if s := ms[0].Stats(); s.Auth == 0 {
		t.Errorf("n1 counted no beat with an unknown key: %+v", s)
	}
}

// TestSendNeverBlocks: beats to peers whose addresses nobody answers fill
// the kernel's queues; beats to live peers go on, and the live peers never
// go silent.
func TestSendNeverBlocks(t *testing.T) {
	l := newLab(t, 2)
	peers := peersAt(l.Nodes, 7947, false)
	for i := range 40 { // on the segment, so the kernel queues beats while it asks ARP
		peers["dead"+string(rune('a'+i%26))+string(rune('a'+i/26))] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(150 + i)}), 7947)
	}
	var ms []*Monitor
	for _, n := range l.Nodes {
		m := newMonitor(t, n, Config{})
		m.SetPeers(peers)
		run(t, m)
		ms = append(ms, m)
	}
	awaitEach(t, "the live peer heard", ms, time.Second, func(i int, m *Monitor) bool {
		return m.Peer(l.Nodes[1-i].Name).Heard
	})
	time.Sleep(5 * time.Second) // the ARP queues fill and fail over and over meanwhile
	for i, m := range ms {
		p := m.Peer(l.Nodes[1-i].Name)
		t.Logf("%s: live peer %+v; stats %+v", m.cfg.Node, p, m.Stats())
		if !p.Heard || p.Silences != 0 {
			t.Errorf("%s lost its live peer while beating 40 dead ones: %+v", m.cfg.Node, p)
		}
	}
}

// TestWaitForState: an agent that waits for its state says nothing until
// it knows it, so no peer reads a starting agent as one that let go.
func TestWaitForState(t *testing.T) {
	l := newLab(t, 2)
	waiting := newMonitor(t, l.Nodes[0], Config{WaitForState: true})
	other := newMonitor(t, l.Nodes[1], Config{})
	for _, m := range []*Monitor{waiting, other} {
		m.SetPeers(peersAt(l.Nodes, 7947, false))
		run(t, m)
	}
	time.Sleep(200 * time.Millisecond) // ten intervals of silence are the point
	if s := waiting.Stats(); s.Sent != 0 {
		t.Errorf("sent %d beats before its state was set", s.Sent)
	}
	if p := other.Peer("n1"); p.Ever {
		t.Errorf("n2 heard n1 before n1 said anything: %+v", p)
	}
	waiting.SetState(State{APIOK: true, Live: true})
	if _, ok := await(other, time.Second, func() bool { p := other.Peer("n1"); return p.Heard && p.Live }); !ok {
		t.Fatalf("n2 does not hear n1 live once its state is set: %+v", other.Peer("n1"))
	}
}
