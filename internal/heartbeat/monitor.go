// Package heartbeat is a fast failure detector between vipd agents: every
// agent sends a small UDP beat to every other agent each Interval over the
// node network, and reports a peer Silent once no fresh beat arrived for
// Timeout. Node Leases on the API server expire in seconds; a beat stops
// within a tick, so a dead holder is noticed in about Timeout (200 ms by
// default).
//
// Beats are authenticated (HMAC-SHA256 under a key the agents share) and
// fresh: each echoes the newest beat its sender received from the
// receiver, so a replayed beat proves nothing. A beat carries what its
// sender knows about itself (State) and which peers it hears, so that a
// peer one agent no longer hears but another still does is not taken for
// dead; and it answers questions about who holds a contest. See
// docs/heartbeat.md.
package heartbeat

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vipd/vipd/internal/notify"
)

// Defaults for Config.
const (
	DefaultInterval = 20 * time.Millisecond
	// DefaultTimeoutIntervals is Timeout in Intervals when Timeout is zero:
	// a peer is suspected only after about ten beats in a row went missing,
	// which random loss of 10% each way practically never causes.
	DefaultTimeoutIntervals = 10
)

// ringSize is how many of its own rounds an agent remembers the send time
// of, to date the echoes it receives: more than Timeout's worth.
const ringSize = 256

// Config configures New.
type Config struct {
	// Node is this agent's node name, 1..255 bytes.
	Node string
	// Cluster is a cluster identity string, at most 255 bytes, the same for
	// every agent of a cluster (e.g. the kube-system namespace's UID);
	// beats with another Cluster are ignored. Empty: not known yet; nothing
	// is sent or accepted until SetCluster gives it.
	Cluster string
	// Listen is where to receive, e.g. 198.51.100.11:7947, 0.0.0.0:7947 or
	// [::]:7947 (IPv4 and IPv6). Port 0 picks a free port; see Addr.
	Listen netip.AddrPort
	// Interval is the send period; DefaultInterval when zero.
	Interval time.Duration
	// Timeout is how long a peer may go unheard before it is Silent;
	// DefaultTimeoutIntervals*Interval when zero. At least 2*Interval.
	Timeout time.Duration
	// Keys authenticate beats. Nil: none yet; nothing is sent or accepted
	// until SetKeys gives some.
	Keys *Keys
	// WaitForState sends nothing until SetState is called: an agent that is
	// starting has nothing to say yet, and a beat saying it is not live
	// would make the others take the claims it still holds.
	WaitForState bool
	// Log receives transitions at info level and rate-limited send and
	// receive problems at debug level; nothing is logged when nil.
	Log *slog.Logger
	// Registerer, when set, receives the vipd_heartbeat_* metrics.
	Registerer prometheus.Registerer
}

// State is what an agent tells its peers about itself in each beat.
type State struct {
	APIOK bool // it renewed its node Lease recently (reaches the API server)
	Live  bool // it considers itself live (may hold VIPs)
}

// PeerState is what this agent knows about one peer.
type PeerState struct {
	// Heard: a fresh, authenticated beat proved the peer alive within
	// Timeout.
	Heard bool
	// Ever: the peer was heard at some point since SetPeers listed it.
	Ever bool
	// Silent: heard before and not now, while this agent was in a position
	// to tell (not cut off itself, nor just back; see Self).
	Silent bool
	// Last is the latest moment the peer is known to have been alive: the
	// local send time of the beat of ours that it echoed.
	Last  time.Time
	State // what its last beat said

	// From is the source address of the last beat.
	From netip.AddrPort
	// Silences counts the times the peer went Silent after being Heard.
	Silences int
	// LongestGap is the longest time between two consecutive fresh beats
	// received from the peer: how close it came to being Silent.
	LongestGap time.Duration
}

// SelfState is what this agent knows about its own connectivity.
type SelfState struct {
	// LinkDown: SetLinkUp(false) was called, e.g. the interface lost carrier.
	LinkDown bool
	// Isolated: some peer was heard before and none is now.
	Isolated bool
	// Rejoining: it was cut off (link down or isolated) less than Timeout
	// ago; it judges no peer Silent until a full Timeout after it hears
	// beats again.
	Rejoining bool
	// Keys: it has keys and the cluster identity, so it sends and accepts
	// beats.
	Keys bool
}

// Stats counts datagrams since New.
type Stats struct {
	Sent       uint64 // beats sent, one per peer per round
	SendErrors uint64 // beats the kernel refused, e.g. while the link is down
	Dropped    uint64 // beats not sent because the socket buffer was full
	Accepted   uint64 // fresh, authenticated beats from a peer
	Unverified uint64 // authentic beats that do not echo a recent beat of ours: not proof of life
	Stale      uint64 // authentic beats with an old sequence number or incarnation
	Auth       uint64 // beats whose MAC does not check, or signed with an unknown key
	NoKey      uint64 // beats received while this agent has no key
	Malformed  uint64 // datagrams that are not a beat of this version
	Cluster    uint64 // beats of another cluster
	Misrouted  uint64 // beats addressed to another node
	Unknown    uint64 // beats from a node that is not a peer
	OtherAddr  uint64 // accepted beats that came from another address than the peer's
}

// Monitor sends beats to its peers and tracks theirs. Its methods are safe
// for concurrent use.
type Monitor struct {
	cfg  Config
	log  *slog.Logger
	conn *socket
	// probe is a send-only socket for the peers not heard now. Beats to
	// an address nobody answers wait in the kernel for neighbour
	// resolution and fill their socket's buffer; on a socket of their own
	// they never crowd out the beats to live peers.
	probe   *socket
	addr    netip.AddrPort
	v6sock  bool
	inc     uint64
	metrics *metrics
	limit   limiter

	changes chan struct{} // for the user
	kick    chan struct{} // send a round now
	rearm   chan struct{} // recompute the silence timer
	started atomic.Bool

	mu       sync.Mutex
	keys     *keyring // nil: no key
	cluster  string
	self     State
	stateSet bool // SetState was called
	seq      uint64
	sent     [ringSize]sentRound
	peers    map[string]*peer
	holding  map[uint32]bool // contests this agent holds
	asks     []uint32        // contests it asks about
	stats    Stats
	// awake is when Run's loop last ran. Silence is judged only over time
	// the monitor was awake to hear: a process or machine stall must not
	// look like every peer dying at once.
	awake    time.Time
	linkDown bool
	cut      bool      // link down or isolated, at the last look
	rejoined time.Time // when the last cut ended
	// blindSignalled is blindLocked as last signalled through Changes.
	blindSignalled bool

	// Owned by Run's goroutine.
	buf     []byte
	rbuf    []byte    // a longer datagram than MaxBeatLen is cut, and then too long
	names   nameCache // the names beats carry; used by drain only
	targets []target
}

// sentRound is one round of beats this agent sent: its sequence number and
// local send time.
type sentRound struct {
	seq uint64
	at  time.Time
}

type peer struct {
	addr  netip.AddrPort // where to send
	ever  bool
	heard bool // as last signalled through Changes
	last  time.Time
	// arrival is when its last fresh beat arrived, for LongestGap.
	arrival time.Time
	from    netip.AddrPort
	state   State
	hears   []uint32
	asks    []uint32
	holds   []uint32
	// inc and seq are its newest incarnation and sequence number that
	// this agent accepted, echoed in every beat to it; echo says they are
	// known.
	inc, seq   uint64
	echo       bool
	silences   int
	longestGap time.Duration
}

type target struct {
	name    string
	addr    netip.AddrPort
	heard   bool
	confirm bool
	echoInc uint64
	echoSeq uint64
	holds   []uint32
}

// New validates cfg and binds the socket. Until Run is called nothing is
// sent or received; Close releases the socket of a Monitor that never runs.
func New(cfg Config) (*Monitor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	var keys *keyring
	if cfg.Keys != nil {
		if keys, err = newKeyring(*cfg.Keys); err != nil {
			return nil, fmt.Errorf("heartbeat: %w", err)
		}
	}
	listen := netip.AddrPortFrom(cfg.Listen.Addr().Unmap(), cfg.Listen.Port())
	network := "udp6"
	switch {
	case listen.Addr().Is4():
		network = "udp4"
	case listen.Addr().IsUnspecified():
		network = "udp" // [::]: IPv4 and IPv6
	}
	conn, local, err := listenUDP(network, listen)
	if err != nil {
		return nil, fmt.Errorf("heartbeat: listening on %s: %w", cfg.Listen, err)
	}
	probe, _, err := listenUDP(network, netip.AddrPortFrom(listen.Addr(), 0))
	if err != nil {
		conn.close()
		return nil, fmt.Errorf("heartbeat: second socket on %s: %w", listen.Addr(), err)
	}
	m := &Monitor{
		cfg:    cfg,
		log:    cfg.Log,
		conn:   conn,
		probe:  probe,
		addr:   unmap(local),
		v6sock: network != "udp4",
		// The start time: a later run of the same agent has a larger one,
		// and receivers refuse beats of an older run.
		inc:     uint64(time.Now().UnixNano()),
		changes: make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
		rearm:   make(chan struct{}, 1),
		peers:   map[string]*peer{},
		holding: map[uint32]bool{},
		keys:    keys,
		cluster: cfg.Cluster,
		limit:   limiter{every: 10 * time.Second},
		rbuf:    make([]byte, MaxBeatLen+1),
	}
	if m.metrics, err = newMetrics(cfg.Registerer); err != nil {
		conn.close()
		probe.close()
		return nil, err
	}
	return m, nil
}

func (c Config) withDefaults() (Config, error) {
	if c.Node == "" || len(c.Node) > maxName {
		return c, fmt.Errorf("heartbeat: node name must be 1..%d bytes, got %d", maxName, len(c.Node))
	}
	if len(c.Cluster) > maxName {
		return c, fmt.Errorf("heartbeat: cluster identity must be at most %d bytes, got %d", maxName, len(c.Cluster))
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
// or Silent, when what it says changes (State, whom it hears, what it
// holds), when SetPeers changes the set, and when this agent's own
// connectivity (Self) changes.
func (m *Monitor) Changes() <-chan struct{} { return m.changes }

// Close releases the socket; Run does so itself when its context ends. It is
// for a Monitor whose Run never started or should stop at once.
func (m *Monitor) Close() error {
	var errs []error
	for _, c := range []*socket{m.conn, m.probe} {
		if err := c.close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("heartbeat: closing sockets on %s: %w", m.addr, err)
	}
	return nil
}

// SetKeys replaces the keys; nil turns beats off (none sent, none
// accepted) until keys are set again.
func (m *Monitor) SetKeys(k *Keys) error {
	var r *keyring
	if k != nil {
		var err error
		if r, err = newKeyring(*k); err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
	}
	m.mu.Lock()
	had := m.keys != nil
	m.keys = r
	m.mu.Unlock()
	switch {
	case r != nil:
		m.log.Info("heartbeat keys set", "signing_key", KeyID(k.Sign), "accepted_keys", r.ids(), "insecure", k.IsInsecure())
		notify.Signal(m.kick)
	case had:
		m.log.Warn("heartbeat keys removed: no beats are sent or accepted; failover waits for Lease expiry")
	}
	notify.Signal(m.changes)
	return nil
}

// SetCluster sets the cluster identity (see Config.Cluster).
func (m *Monitor) SetCluster(id string) error {
	if id == "" || len(id) > maxName {
		return fmt.Errorf("heartbeat: cluster identity must be 1..%d bytes, got %d", maxName, len(id))
	}
	m.mu.Lock()
	changed := id != m.cluster
	m.cluster = id
	m.mu.Unlock()
	if changed {
		notify.Signal(m.kick)
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
	if changed {
		m.updateCutLocked(time.Now())
	}
	m.mu.Unlock()
	for _, name := range warn {
		m.log.Warn("heartbeat peer address unusable: invalid, port 0, or of another family than the listen address",
			"peer", name, "addr", peers[name], "listen", m.addr)
	}
	if added {
		notify.Signal(m.kick) // greet new (or moved) peers now rather than at the next tick
	}
	if changed {
		notify.Signal(m.changes)
	}
}

// SetState sets what the beats say from now on. A change is sent to every
// peer at once rather than at the next tick.
func (m *Monitor) SetState(s State) {
	m.mu.Lock()
	changed := s != m.self || !m.stateSet
	m.self, m.stateSet = s, true
	m.mu.Unlock()
	if changed {
		notify.Signal(m.kick)
	}
}

// SetHolding tells which contests this agent holds, so that it can answer
// peers that ask (HolderOf).
func (m *Monitor) SetHolding(contests []string) {
	next := make(map[uint32]bool, len(contests))
	for _, c := range contests {
		next[nameHash(c)] = true
	}
	m.mu.Lock()
	m.holding = next
	m.mu.Unlock()
}

// SetAsks sets the contests this agent wants to know the holder of; the
// peers that hold one say so in their beats (HolderOf). At most maxList.
func (m *Monitor) SetAsks(contests []string) {
	var asks []uint32
	for _, c := range contests {
		asks = append(asks, nameHash(c))
	}
	slices.Sort(asks)
	asks = slices.Compact(asks)
	if len(asks) > maxList {
		asks = asks[:maxList]
	}
	m.mu.Lock()
	changed := !slices.Equal(asks, m.asks)
	m.asks = asks
	m.mu.Unlock()
	if changed {
		notify.Signal(m.kick)
	}
}

// SetLinkUp tells whether the interface the beats use has carrier. While it
// has not, this agent is cut off: it judges no peer.
func (m *Monitor) SetLinkUp(up bool) {
	m.mu.Lock()
	changed := m.linkDown == up
	m.linkDown = !up
	m.updateCutLocked(time.Now())
	m.mu.Unlock()
	if changed {
		if up {
			m.log.Info("heartbeat link up")
			notify.Signal(m.kick)
		} else {
			m.log.Warn("heartbeat link down: judging no peer until it is back and heard for a full timeout")
		}
		notify.Signal(m.rearm)
		notify.Signal(m.changes)
	}
}
