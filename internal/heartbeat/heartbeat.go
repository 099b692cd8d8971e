// Package heartbeat is a fast failure detector between vipd agents: every
// agent sends a small UDP beat to every other agent each Interval over the
// node network, and reports a peer Silent once no beat arrived for Timeout.
// Node Leases on the API server expire in seconds; a beat stops within a
// tick, so a dead holder is noticed in about Timeout (200 ms by default).
//
// A beat also carries what its sender knows about itself (State): whether it
// reaches the API server and whether it considers itself live. During an API
// outage agents can thus tell "everyone lost the API" from "only the holder
// did".
//
// Beats are not authenticated: bind to the node network only (see
// docs/heartbeat.md).
package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Defaults for Config.
const (
	DefaultInterval = 20 * time.Millisecond
	// DefaultTimeoutIntervals is Timeout in Intervals when Timeout is zero:
	// a peer is suspected only after about ten beats in a row went missing,
	// which random loss of 10% each way practically never causes.
	DefaultTimeoutIntervals = 10
)

// Config configures New.
type Config struct {
	// Node is this agent's node name, 1..255 bytes.
	Node string
	// Cluster is a cluster identity string, 1..255 bytes; beats with another
	// Cluster are ignored (e.g. the Lease namespace + API server host).
	Cluster string
	// Listen is where to receive, e.g. 198.51.100.11:7947, 0.0.0.0:7947 or
	// [::]:7947 (IPv4 and IPv6). Port 0 picks a free port; see Addr.
	Listen netip.AddrPort
	// Interval is the send period; DefaultInterval when zero.
	Interval time.Duration
	// Timeout is how long a peer may go unheard before it is Silent;
	// DefaultTimeoutIntervals*Interval when zero. At least 2*Interval.
	Timeout time.Duration
	// Log receives transitions at info level and rate-limited send and
	// receive problems at debug level; nothing is logged when nil.
	Log *slog.Logger
	// Registerer, when set, receives the vipd_heartbeat_* counters.
	Registerer prometheus.Registerer
}

// State is what an agent tells its peers about itself in each beat.
type State struct {
	APIOK bool // it renewed its node Lease recently (reaches the API server)
	Live  bool // it considers itself live (may hold VIPs)
}

// PeerState is what this agent knows about one peer.
type PeerState struct {
	Heard bool      // a beat arrived within Timeout
	Ever  bool      // a beat ever arrived from this peer (since SetPeers listed it)
	Last  time.Time // local receive time of the last beat
	State           // what its last beat said

	// From is the source address of the last beat.
	From netip.AddrPort
	// Silences counts the times the peer went Silent after being Heard.
	Silences int
	// LongestGap is the longest time between two consecutive beats
	// received from the peer: how close it came to being Silent.
	LongestGap time.Duration
}

// Stats counts datagrams since New.
type Stats struct {
	Sent       uint64 // beats sent, one per peer per beat
	SendErrors uint64 // beats the kernel refused, e.g. while the link is down
	Accepted   uint64 // beats from a peer, taken into account
	Stale      uint64 // beats from a peer with an older or repeated sequence number, ignored
	Malformed  uint64 // datagrams that are not a beat of this version
	Cluster    uint64 // beats of another cluster
	Unknown    uint64 // beats from a node that is not a peer (or from this node's name)
	OtherAddr  uint64 // accepted beats that came from another address than the peer's
}

// Monitor sends beats to its peers and tracks theirs. Its methods are safe
// for concurrent use.
type Monitor struct {
	cfg     Config
	log     *slog.Logger
	conn    *net.UDPConn
	raw     syscall.RawConn
	addr    netip.AddrPort
	v6sock  bool
	inc     uint64
	metrics *metrics
	limit   limiter

	changes chan struct{} // for the user
	kick    chan struct{} // send a beat now
	rearm   chan struct{} // a peer became Heard: recompute the silence timer
	started atomic.Bool

	mu    sync.Mutex
	self  State
	seq   uint64
	peers map[string]*peer
	stats Stats
	// awake is when Run's loop last ran. Silence is judged only over time
	// the monitor was awake to hear: a process or machine stall must not
	// look like every peer dying at once.
	awake time.Time

	// Owned by Run's goroutine.
	buf     []byte
	targets []target
}

type peer struct {
	addr       netip.AddrPort // where to send
	ever       bool
	heard      bool // as last signalled through Changes
	last       time.Time
	from       netip.AddrPort
	state      State
	inc, seq   uint64
	silences   int
	longestGap time.Duration
}

type target struct {
	name    string
	addr    netip.AddrPort
	confirm bool
}

// New validates cfg and binds the socket. Until Run is called nothing is
// sent or received; Close releases the socket of a Monitor that never runs.
func New(cfg Config) (*Monitor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	listen := netip.AddrPortFrom(cfg.Listen.Addr().Unmap(), cfg.Listen.Port())
	network := "udp6"
	switch {
	case listen.Addr().Is4():
		network = "udp4"
	case listen.Addr().IsUnspecified():
		network = "udp" // [::]: IPv4 and IPv6
	}
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(listen))
	if err != nil {
		return nil, fmt.Errorf("heartbeat: listening on %s: %w", cfg.Listen, err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("heartbeat: socket on %s: %w", cfg.Listen, err)
	}
	m := &Monitor{
		cfg:     cfg,
		log:     cfg.Log,
		conn:    conn,
		raw:     raw,
		addr:    unmap(conn.LocalAddr().(*net.UDPAddr).AddrPort()),
		v6sock:  network != "udp4",
		inc:     rand.Uint64(),
		changes: make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
		rearm:   make(chan struct{}, 1),
		peers:   map[string]*peer{},
		limit:   limiter{every: 10 * time.Second},
	}
	if m.metrics, err = newMetrics(cfg.Registerer); err != nil {
		conn.Close()
		return nil, err
	}
	return m, nil
}

func (c Config) withDefaults() (Config, error) {
	if c.Node == "" || len(c.Node) > maxName {
		return c, fmt.Errorf("heartbeat: node name must be 1..%d bytes, got %d", maxName, len(c.Node))
	}
	if c.Cluster == "" || len(c.Cluster) > maxName {
		return c, fmt.Errorf("heartbeat: cluster identity must be 1..%d bytes, got %d", maxName, len(c.Cluster))
	}
	if !c.Listen.IsValid() {
		return c, errors.New("heartbeat: no listen address")
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Interval < time.Millisecond {
		return c, fmt.Errorf("heartbeat: interval %v is below 1ms", c.Interval)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeoutIntervals * c.Interval
	}
	if c.Timeout < 2*c.Interval {
		return c, fmt.Errorf("heartbeat: timeout %v must be at least twice the interval %v", c.Timeout, c.Interval)
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Addr is the address the socket is bound to.
func (m *Monitor) Addr() netip.AddrPort { return m.addr }

// Changes is signalled (coalesced, capacity one) when a peer becomes Heard
// or Silent, when its State changes, and when SetPeers changes the set.
func (m *Monitor) Changes() <-chan struct{} { return m.changes }

// Close releases the socket; Run does so itself when its context ends. It is
// for a Monitor whose Run never started or should stop at once.
func (m *Monitor) Close() error {
	if err := m.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("heartbeat: closing socket on %s: %w", m.addr, err)
	}
	return nil
}

// SetPeers replaces the set of peers: node name -> heartbeat address. A peer
// already known keeps what was heard from it (its address may change); a
// removed one is forgotten. An entry for this node itself is ignored, so the
// map may list every node.
func (m *Monitor) SetPeers(peers map[string]netip.AddrPort) {
	var warn []string
	m.mu.Lock()
	changed, added := false, false
	for name := range m.peers {
		if _, ok := peers[name]; !ok {
			delete(m.peers, name)
			changed = true
		}
	}
	for name, a := range peers {
		if name == m.cfg.Node {
			continue
		}
		if !a.IsValid() || a.Port() == 0 {
			warn = append(warn, name)
			if _, ok := m.peers[name]; ok {
				delete(m.peers, name)
				changed = true
			}
			continue
		}
		a = unmap(a)
		p, ok := m.peers[name]
		if ok && p.addr == a {
			continue
		}
		dualStack := m.v6sock && m.addr.Addr().IsUnspecified()
		if a.Addr().Is4() != m.addr.Addr().Is4() && !(dualStack && a.Addr().Is4()) {
			warn = append(warn, name)
		}
		if ok {
			p.addr = a
		} else {
			m.peers[name] = &peer{addr: a}
			changed = true
		}
		added = true
	}
	m.mu.Unlock()
	for _, name := range warn {
		m.log.Warn("heartbeat peer address unusable: invalid, port 0, or of another family than the listen address",
			"peer", name, "addr", peers[name], "listen", m.addr)
	}
	if added {
		signal(m.kick) // greet new (or moved) peers now rather than at the next tick
	}
	if changed {
		signal(m.changes)
	}
}

// SetState sets what the beats say from now on. A change is sent to every
// peer at once rather than at the next tick.
func (m *Monitor) SetState(s State) {
	m.mu.Lock()
	changed := s != m.self
	m.self = s
	m.mu.Unlock()
	if changed {
		signal(m.kick)
	}
}

// Peer reports what is known about one peer; the zero PeerState for a node
// that is not a peer. Heard is judged from the clock at the call, so it turns
// false exactly Timeout after the last beat, even before Changes fires.
func (m *Monitor) Peer(node string) PeerState {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[node]
	if p == nil {
		return PeerState{}
	}
	return m.peerState(p, now)
}

// Peers reports every peer, by node name.
func (m *Monitor) Peers() map[string]PeerState {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]PeerState, len(m.peers))
	for name, p := range m.peers {
		out[name] = m.peerState(p, now)
	}
	return out
}

func (m *Monitor) peerState(p *peer, now time.Time) PeerState {
	// If the loop has not run lately, the beats may be sitting unread in
	// the socket: judge as of the last moment it was surely listening.
	if lim := m.awake.Add(2 * m.cfg.Interval); !m.awake.IsZero() && now.After(lim) {
		now = lim
	}
	return PeerState{
		Heard:      p.ever && now.Sub(p.last) < m.cfg.Timeout,
		Ever:       p.ever,
		Last:       p.last,
		State:      p.state,
		From:       p.from,
		Silences:   p.silences,
		LongestGap: p.longestGap,
	}
}

// Stats reports the datagram counters.
func (m *Monitor) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// Run sends a beat to every peer each Interval (and at once when the State
// or the set of peers grows), receives beats and reports silences, until ctx
// is done. It closes the socket when it returns; it can run only once.
func (m *Monitor) Run(ctx context.Context) error {
	if !m.started.CompareAndSwap(false, true) {
		return errors.New("heartbeat: Run called twice")
	}
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		m.receive()
	}()
	defer func() {
		m.conn.Close()
		<-recvDone
	}()

	// A ticker keeps the schedule fixed however long a send takes.
	ticker := time.NewTicker(m.cfg.Interval)
	defer ticker.Stop()
	// The silence timer fires at the exact moment the next Heard peer would
	// turn Silent; beats arriving meanwhile only push that moment later, so
	// an early firing just re-arms it.
	silence := time.NewTimer(m.cfg.Timeout)
	defer silence.Stop()
	m.beat()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-recvDone:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("heartbeat: socket on %s closed", m.addr)
		case <-ticker.C:
			m.beat()
		case <-m.kick:
			m.beat()
		case <-m.rearm:
		case <-silence.C:
		}
		m.wake(time.Now())
		// Cheap enough to do on every wake-up: one pass over the peers.
		if next := m.sweep(time.Now()); next > 0 {
			silence.Reset(next)
		} else {
			silence.Stop()
		}
	}
}

// wake records that the loop runs. After a stall (the loop did not run for
// more than two intervals), the stalled time does not count towards any
// peer's silence: every peer gets a full Timeout to be heard again.
func (m *Monitor) wake(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.awake.IsZero() {
		if stalled := now.Sub(m.awake) - m.cfg.Interval; stalled > m.cfg.Interval {
			for _, p := range m.peers {
				p.last = p.last.Add(stalled)
				if p.last.After(now) {
					p.last = now
				}
			}
			if ok, _ := m.limit.allow("stall", now); ok {
				m.log.Warn("heartbeat monitor was stalled; not counting the stall as silence", "stalled", stalled.Round(time.Millisecond))
			}
		}
	}
	m.awake = now
}

// beat sends one beat to every peer.
func (m *Monitor) beat() {
	now := time.Now()
	m.mu.Lock()
	m.seq++
	m.buf = appendBeat(m.buf[:0], beat{
		Cluster:     m.cfg.Cluster,
		Node:        m.cfg.Node,
		Incarnation: m.inc,
		Seq:         m.seq,
		State:       m.self,
	})
	m.targets = m.targets[:0]
	for name, p := range m.peers {
		m.targets = append(m.targets, target{
			name: name,
			addr: p.addr,
			// Only what we just heard from that very address vouches for
			// the kernel's neighbour entry.
			confirm: p.ever && now.Sub(p.last) < m.cfg.Timeout && p.from.Addr() == p.addr.Addr(),
		})
	}
	m.mu.Unlock()

	var sent, failed uint64
	for _, t := range m.targets {
		if err := m.send(m.buf, t.addr, t.confirm); err != nil {
			failed++
			if ok, n := m.limit.allow("send "+t.name, now); ok {
				m.log.Debug("sending heartbeat", "peer", t.name, "addr", t.addr, "err", err, "suppressed", n)
			}
			continue
		}
		sent++
	}
	m.mu.Lock()
	m.stats.Sent += sent
	m.stats.SendErrors += failed
	m.mu.Unlock()
	m.metrics.sent(sent, failed)
}

// send writes one datagram. With confirm it passes MSG_CONFIRM, which tells
// the kernel the neighbour is reachable: beats are the only traffic to a
// peer, and without upper-layer confirmation Linux re-probes the
// neighbour every ~30 s. Under heavy loss those probes can fail, and a peer
// whose entry turned FAILED gets no beats until ARP or neighbour discovery
// resolves it again, seconds later, which would make it suspect us.
func (m *Monitor) send(b []byte, to netip.AddrPort, confirm bool) error {
	if !confirm || to.Addr().Zone() != "" || (!m.v6sock && !to.Addr().Is4()) {
		_, err := m.conn.WriteToUDPAddrPort(b, to)
		return err
	}
	var sa unix.Sockaddr
	if m.v6sock {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()} // IPv4 as ::ffff:a.b.c.d
	} else {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	}
	var serr error
	err := m.raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, unix.MSG_CONFIRM, sa)
		return serr != unix.EAGAIN // false: wait until writable, then retry
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("sendto %s: %w", to, serr)
	}
	return nil
}

// receive reads beats until the socket is closed.
func (m *Monitor) receive() {
	buf := make([]byte, MaxBeatLen+1) // a longer datagram is cut, and then too long
	for {
		n, from, err := m.conn.ReadFromUDPAddrPort(buf)
		now := time.Now()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			if ok, s := m.limit.allow("receive", now); ok {
				m.log.Debug("receiving heartbeat", "err", err, "suppressed", s)
			}
			time.Sleep(time.Millisecond) // no busy loop on a persistent error
			continue
		}
		m.handle(buf[:n], unmap(from), now)
	}
}

// handle takes in one datagram received at now.
func (m *Monitor) handle(p []byte, from netip.AddrPort, now time.Time) {
	b, err := decodeBeat(p)
	if err != nil {
		m.drop("malformed", from, "", err, now)
		return
	}
	if b.Cluster != m.cfg.Cluster {
		m.drop("cluster", from, b.Node, fmt.Errorf("cluster %q", b.Cluster), now)
		return
	}
	m.mu.Lock()
	pr := m.peers[b.Node]
	if pr == nil {
		m.mu.Unlock()
		m.drop("unknown", from, b.Node, errors.New("not a peer"), now)
		return
	}
	if pr.ever && b.Incarnation == pr.inc && b.Seq <= pr.seq {
		// Reordered or duplicated: the newer beat already counted.
		m.stats.Stale++
		m.mu.Unlock()
		m.metrics.received("stale")
		return
	}
	// Another incarnation is a restarted peer, whose count starts over.
	wasHeard, wasEver, old := pr.heard, pr.ever, pr.state
	if pr.ever {
		pr.longestGap = max(pr.longestGap, now.Sub(pr.last))
	}
	pr.ever, pr.heard, pr.last, pr.from = true, true, now, from
	pr.inc, pr.seq, pr.state = b.Incarnation, b.Seq, b.State
	otherAddr := from.Addr() != pr.addr.Addr()
	m.stats.Accepted++
	if otherAddr {
		m.stats.OtherAddr++
	}
	gap := pr.longestGap
	m.mu.Unlock()
	m.metrics.received("accepted")

	if otherAddr {
		if ok, s := m.limit.allow("addr "+b.Node, now); ok {
			m.log.Debug("heartbeat from another address than the peer's", "peer", b.Node, "from", from, "suppressed", s)
		}
	}
	if !wasHeard {
		m.log.Info("heartbeat peer heard", "peer", b.Node, "from", from, "apiOK", b.State.APIOK, "live", b.State.Live,
			"first", !wasEver, "longestGap", gap)
		signal(m.rearm)
		signal(m.changes)
	} else if old != b.State {
		m.log.Debug("heartbeat peer state", "peer", b.Node, "apiOK", b.State.APIOK, "live", b.State.Live)
		signal(m.changes)
	}
}

func (m *Monitor) drop(reason string, from netip.AddrPort, node string, err error, now time.Time) {
	m.mu.Lock()
	switch reason {
	case "malformed":
		m.stats.Malformed++
	case "cluster":
		m.stats.Cluster++
	case "unknown":
		m.stats.Unknown++
	}
	m.mu.Unlock()
	m.metrics.received(reason)
	if ok, s := m.limit.allow("drop "+reason, now); ok {
		m.log.Debug("dropping heartbeat", "reason", reason, "from", from, "peer", node, "err", err, "suppressed", s)
	}
}

// sweep turns Heard peers that have been quiet for Timeout Silent and
// returns how long until the next one would, or 0 if none is Heard.
func (m *Monitor) sweep(now time.Time) time.Duration {
	type quiet struct {
		name      string
		addr      netip.AddrPort
		silentFor time.Duration
	}
	var next time.Duration
	var silent []quiet
	m.mu.Lock()
	for name, p := range m.peers {
		if !p.heard {
			continue
		}
		left := m.cfg.Timeout - now.Sub(p.last)
		if left <= 0 {
			p.heard = false
			p.silences++
			silent = append(silent, quiet{name, p.addr, now.Sub(p.last)})
			continue
		}
		if next == 0 || left < next {
			next = left
		}
	}
	m.mu.Unlock()
	for _, q := range silent {
		m.log.Info("heartbeat peer silent", "peer", q.name, "addr", q.addr, "quietFor", q.silentFor.Round(time.Millisecond))
		m.metrics.silence(q.name)
	}
	if len(silent) > 0 {
		signal(m.changes)
	}
	return next
}

// signal sends on a coalescing channel of capacity one.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// limiter lets a message of each kind through once per period and counts
// the ones it held back.
type limiter struct {
	every time.Duration

	mu         sync.Mutex
	last       map[string]time.Time
	suppressed map[string]int
}

func (l *limiter) allow(key string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.suppressed = map[string]time.Time{}, map[string]int{}
	}
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		l.suppressed[key]++
		return false, 0
	}
	n := l.suppressed[key]
	l.last[key], l.suppressed[key] = now, 0
	return true, n
}
