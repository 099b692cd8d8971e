package agent

import (
	"log/slog"
	"net/netip"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/heartbeat"
)

// peers adapts the heartbeat monitor to what the election asks of a
// failure detector.
type peers struct {
	m   *heartbeat.Monitor
	log *slog.Logger
}

func (p peers) Peer(node string) election.PeerReport {
	s := p.m.Peer(node)
	return election.PeerReport{Heard: s.Heard, Silent: s.Ever && !s.Heard && !p.isolated(),
		APIOK: s.APIOK, Live: s.Live}
}

// isolated: some peer was heard before, none is now.
func (p peers) isolated() bool {
	ever := false
	for _, s := range p.m.Peers() {
		if s.Heard {
			return false
		}
		ever = ever || s.Ever
	}
	return ever
}

func (p peers) Vouched(string) bool { return false }

func (p peers) Self() election.SelfReport { return election.SelfReport{Isolated: p.isolated()} }

func (p peers) Changes() <-chan struct{} { return p.m.Changes() }

func (p peers) SetSelf(r election.PeerReport) {
	p.m.SetState(heartbeat.State{APIOK: r.APIOK, Live: r.Live})
}

func (p peers) SetPeers(addrs map[string]string) {
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
