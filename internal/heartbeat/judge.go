package heartbeat

import (
	"slices"
	"time"
)

// What this agent knows of its peers and of itself, judged from the beats
// it received and its own connectivity.

// Peer reports what is known about one peer; the zero PeerState for a node
// that is not a peer. Heard is judged from the clock at the call, so it turns
// false exactly Timeout after the last proof of life, even before Changes
// fires.
func (m *Monitor) Peer(node string) PeerState {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[node]
	if p == nil {
		return PeerState{}
	}
	return m.peerStateLocked(p, now)
}

// Peers reports every peer, by node name.
func (m *Monitor) Peers() map[string]PeerState {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]PeerState, len(m.peers))
	for name, p := range m.peers {
		out[name] = m.peerStateLocked(p, now)
	}
	return out
}

// Vouched reports whether a peer this agent hears says, in its latest
// beat, that it hears node.
func (m *Monitor) Vouched(node string) bool {
	now := time.Now()
	h := nameHash(node)
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, p := range m.peers {
		if name != node && m.heardLocked(p, now) && slices.Contains(p.hears, h) {
			return true
		}
	}
	return false
}

// HolderOf returns a heard peer that says it holds contest, in answer to
// SetAsks; "" if none does.
func (m *Monitor) HolderOf(contest string) string {
	now := time.Now()
	h := nameHash(contest)
	m.mu.Lock()
	defer m.mu.Unlock()
	var found []string
	for name, p := range m.peers {
		if m.heardLocked(p, now) && slices.Contains(p.holds, h) {
			found = append(found, name)
		}
	}
	slices.Sort(found)
	if len(found) == 0 {
		return ""
	}
	return found[0]
}

// Self reports this agent's own connectivity.
func (m *Monitor) Self() SelfState {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	return SelfState{
		LinkDown:  m.linkDown,
		Isolated:  m.isolatedLocked(now),
		Rejoining: m.blindLocked(now) && !m.cut,
		Keys:      m.keys != nil && m.cluster != "",
	}
}

// LastRound reports when this agent last sent its peers a round of beats;
// zero before the first. The peers judge this node by those beats, so
// what must fall silent when they would judge it silent (the ARP/NDP
// guard) is kept alive only while rounds go out.
func (m *Monitor) LastRound() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seq == 0 {
		return time.Time{}
	}
	return m.sent[m.seq%ringSize].at
}

// Stats reports the datagram counters.
func (m *Monitor) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// judgedAtLocked is the moment peers are judged at: now, or, if the loop
// has not run lately, the last moment it was surely listening (the beats
// may be sitting unread in the socket).
func (m *Monitor) judgedAtLocked(now time.Time) time.Time {
	if lim := m.awake.Add(2 * m.cfg.Interval); !m.awake.IsZero() && now.After(lim) {
		return lim
	}
	return now
}

func (m *Monitor) heardLocked(p *peer, now time.Time) bool {
	return p.ever && m.judgedAtLocked(now).Sub(p.last) < m.cfg.Timeout
}

func (m *Monitor) peerStateLocked(p *peer, now time.Time) PeerState {
	heard := m.heardLocked(p, now)
	return PeerState{
		Heard: heard,
		Ever:  p.ever,
		// Isolation is judged at the same instant as the silence, not
		// when the loop next notices it (m.cut): when every peer falls
		// silent at once, this agent is the one cut off, and for a moment
		// it would otherwise call them all dead.
		Silent:     p.ever && !heard && !m.blindLocked(now) && !m.isolatedLocked(now),
		Last:       p.last,
		State:      p.state,
		From:       p.from,
		Silences:   p.silences,
		LongestGap: p.longestGap,
	}
}

// isolatedLocked: a peer was heard before and none is now.
func (m *Monitor) isolatedLocked(now time.Time) bool {
	ever := false
	for _, p := range m.peers {
		if m.heardLocked(p, now) {
			return false
		}
		ever = ever || p.ever
	}
	return ever
}

// blindLocked reports whether this agent is in no position to judge its
// peers: it is cut off (link down, or hears nobody), or it was less than
// Timeout ago. Silence that overlaps its own loss of connectivity says
// nothing about the peers.
func (m *Monitor) blindLocked(now time.Time) bool {
	return m.cut || (!m.rejoined.IsZero() && now.Before(m.rejoined.Add(m.cfg.Timeout)))
}

// updateCutLocked notes when this agent becomes cut off or connected
// again. It reports whether that changed.
func (m *Monitor) updateCutLocked(now time.Time) bool {
	cut := m.linkDown || m.isolatedLocked(now)
	if cut == m.cut {
		return false
	}
	m.cut = cut
	if !cut {
		m.rejoined = now
	}
	return true
}
