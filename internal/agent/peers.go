package agent

import (
	"log/slog"
	"net/netip"
	"sync"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/heartbeat"
)

// peers adapts the heartbeat monitor to what the election asks of a
// failure detector.
//
// It also decides when this node's beats say it is not live. The other
// agents take its claims at once when they hear that (holder-not-live),
// so it must be true on the wire only once this node answers for none of
// its VIPs: the election stops holding first, and the agent's next pass
// silences and removes the VIPs a few milliseconds later. Until that pass
// has run (answering), the beats still say live, and a take waits for it.
type peers struct {
	m        *heartbeat.Monitor
	setState func(heartbeat.State) // m.SetState
	log      *slog.Logger

	mu        sync.Mutex
	self      election.PeerReport // what the election last said of itself
	reported  bool                // the election has said it
	answering bool                // this node announces or answers for a VIP
	sent      heartbeat.State
	set       bool
}

func newPeers(m *heartbeat.Monitor, log *slog.Logger) *peers {
	return &peers{m: m, setState: m.SetState, log: log}
}

func (p *peers) Peer(node string) election.PeerReport {
	s := p.m.Peer(node)
	return election.PeerReport{Heard: s.Heard, Silent: s.Silent, APIOK: s.APIOK, Live: s.Live}
}

func (p *peers) Vouched(node string) bool { return p.m.Vouched(node) }

func (p *peers) Self() election.SelfReport {
	s := p.m.Self()
	return election.SelfReport{LinkDown: s.LinkDown, Isolated: s.Isolated}
}

func (p *peers) Changes() <-chan struct{} { return p.m.Changes() }

func (p *peers) SetSelf(r election.PeerReport) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.self, p.reported = r, true
	p.publishLocked()
}

// setAnswering tells whether this node still answers for a VIP, after a
// pass of the agent.
func (p *peers) setAnswering(answering bool) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answering = answering
	p.publishLocked()
}

// publishLocked hands the monitor the state to send, once the election
// has said what it is: until then the monitor sends no beats.
func (p *peers) publishLocked() {
	if !p.reported {
		return
	}
	s := heartbeat.State{APIOK: p.self.APIOK, Live: p.self.Live || p.answering}
	if s == p.sent && p.set {
		return
	}
	if !p.self.Live && p.answering {
		p.log.Debug("not live, but still answering for VIPs: the beats say live until they are silenced")
	}
	p.sent, p.set = s, true
	p.setState(s)
}

func (p *peers) SetPeers(addrs map[string]string) {
	out := make(map[string]netip.AddrPort, len(addrs))
	for node, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			p.log.Warn("ignoring a peer's heartbeat address from its node lease", "peer", node, "addr", a, "err", err)
			continue
		}
		out[node] = ap
	}
	p.m.SetPeers(out)
}
