package heartbeat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// round sends one beat to every peer, each echoing what this agent last
// heard from that peer and answering its asks.
func (m *Monitor) round() {
	now := time.Now()
	m.mu.Lock()
	if m.keys == nil || m.cluster == "" || (m.cfg.WaitForState && !m.stateSet) {
		m.mu.Unlock()
		return
	}
	key, id := m.keys.sign, m.keys.signID
	m.seq++
	m.sent[m.seq%ringSize] = sentRound{seq: m.seq, at: now}
	b := beat{
		KeyID:       id,
		Incarnation: m.inc,
		Seq:         m.seq,
		State:       m.self,
		Cluster:     m.cluster,
		From:        m.cfg.Node,
		Asks:        m.asks,
	}
	for name, p := range m.peers {
		if m.heardLocked(p, now) {
			b.Hears = append(b.Hears, nameHash(name))
		}
	}
	// In a stable order: a receiver tells the agent when the list changes,
	// and the map's order would change it on nearly every beat, making
	// every agent reconcile all its VIPs tens of times a second.
	slices.Sort(b.Hears)
	if len(b.Hears) > maxList {
		b.Hears = b.Hears[:maxList]
	}
	m.targets = m.targets[:0]
	for name, p := range m.peers {
		heard := m.heardLocked(p, now)
		t := target{
			name:  name,
			addr:  p.addr,
			heard: heard,
			// Only what we just heard from that very address vouches for
			// the kernel's neighbour entry.
			confirm: heard && p.from.Addr() == p.addr.Addr(),
		}
		if p.echo {
			t.echoInc, t.echoSeq = p.inc, p.seq
		}
		if p.ever {
			for _, a := range p.asks {
				if m.holding[a] {
					t.holds = append(t.holds, a)
				}
			}
		}
		m.targets = append(m.targets, t)
	}
	m.mu.Unlock()

	var sent, failed, dropped uint64
	for _, t := range m.targets {
		b.To, b.EchoInc, b.EchoSeq, b.Holds = t.name, t.echoInc, t.echoSeq, t.holds
		m.buf = appendBeat(m.buf[:0], b, key)
		sock := m.conn
		if !t.heard {
			sock = m.probe
		}
		err := m.send(sock, m.buf, t.addr, t.confirm)
		switch {
		case err == nil:
			sent++
		case err == unix.EAGAIN || err == unix.EWOULDBLOCK:
			// The socket buffer is full, typically of beats waiting for a
			// dead peer's address to resolve: drop, never block the beats
			// to live peers.
			dropped++
		default:
			failed++
			if ok, n := m.limit.allow("send "+t.name, now); ok {
				m.log.Debug("sending heartbeat", "peer", t.name, "addr", t.addr, "err", err, "suppressed", n)
			}
		}
	}
	m.mu.Lock()
	m.stats.Sent += sent
	m.stats.SendErrors += failed
	m.stats.Dropped += dropped
	m.mu.Unlock()
	m.metrics.sent(sent, failed, dropped)
}

// send writes one datagram on sock without ever waiting for buffer space
// (MSG_DONTWAIT). With confirm it passes MSG_CONFIRM, which tells the
// kernel the neighbour is reachable: beats are the only traffic to a peer,
// and without upper-layer confirmation Linux re-probes the neighbour every
// ~30 s. Under heavy loss those probes can fail, and a peer whose entry
// turned FAILED gets no beats until ARP or neighbour discovery resolves it
// again, seconds later, which would make it suspect us.
func (m *Monitor) send(sock *socket, b []byte, to netip.AddrPort, confirm bool) error {
	sa, err := sockaddr(to, m.v6sock)
	if err != nil {
		return fmt.Errorf("sendto %s: %w", to, err)
	}
	flags := unix.MSG_DONTWAIT
	if confirm {
		flags |= unix.MSG_CONFIRM
	}
	serr := sock.sendto(b, flags, sa)
	if errors.Is(serr, net.ErrClosed) {
		return serr
	}
	if serr == unix.EAGAIN || serr == unix.EWOULDBLOCK {
		return serr
	}
	if serr != nil {
		return fmt.Errorf("sendto %s: %w", to, serr)
	}
	return nil
}
