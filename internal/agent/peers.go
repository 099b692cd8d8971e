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
	return election.PeerReport{Heard: s.Heard, Silent: s.Silent, APIOK: s.APIOK, Live: s.Live}
}

func (p peers) Vouched(node string) bool { return p.m.Vouched(node) }

func (p peers) Self() election.SelfReport {
	s := p.m.Self()
	return election.SelfReport{LinkDown: s.LinkDown, Isolated: s.Isolated}
}

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
