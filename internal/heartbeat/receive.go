package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vipd/vipd/internal/notify"
)

// maxDrain bounds the datagrams one drain reads, so that a flood of junk
// cannot keep the loop from sending and judging; what is left waits for
// the next wake-up, an Interval at most.
const maxDrain = 4096

// drain handles every datagram waiting on the socket, and returns
// net.ErrClosed once the socket is closed. It runs on Run's loop, which
// wakes at least every Interval: nothing waits on the socket in between
// (see socket).
func (m *Monitor) drain() error {
	for range maxDrain {
		n, from, err := m.conn.recvfrom(m.rbuf)
		if err == unix.EAGAIN || err == unix.EWOULDBLOCK {
			return nil
		}
		now := time.Now()
		if errors.Is(err, net.ErrClosed) {
			return err
		}
		if err != nil {
			if ok, s := m.limit.allow("receive", now); ok {
				m.log.Debug("receiving heartbeat", "err", err, "suppressed", s)
			}
			return nil // try again at the next wake-up
		}
		m.handle(m.rbuf[:n], unmap(from), now)
	}
	return nil
}

// handle takes in one datagram received at now. The checks run cheapest
// first, and nothing a beat says is used before its MAC checked out.
func (m *Monitor) handle(p []byte, from netip.AddrPort, now time.Time) {
	b, body, sum, err := decodeBeat(p, &m.names)
	if err != nil {
		m.drop("malformed", from, "", err, now)
		return
	}
	m.mu.Lock()
	keys, cluster := m.keys, m.cluster
	m.mu.Unlock()
	if keys == nil || cluster == "" {
		m.drop("nokey", from, b.From, errors.New("this agent has no heartbeat key or cluster identity yet"), now)
		return
	}
	if b.Cluster != cluster {
		m.drop("cluster", from, b.From, fmt.Errorf("cluster %q", b.Cluster), now)
		return
	}
	if b.To != m.cfg.Node {
		m.drop("misrouted", from, b.From, fmt.Errorf("addressed to %q", b.To), now)
		return
	}
	key, ok := keys.byID[b.KeyID]
	if !ok {
		// The array, not a slice of it: slicing b here made every beat
		// received escape to the heap.
		m.drop("auth", from, b.From, fmt.Errorf("signed with key %x, which this agent does not have", b.KeyID), now)
		return
	}
	if !authentic(key, body, sum) {
		m.drop("auth", from, b.From, errors.New("MAC does not match"), now)
		return
	}

	m.mu.Lock()
	pr := m.peers[b.From]
	if pr == nil {
		m.mu.Unlock()
		m.drop("unknown", from, b.From, errors.New("not a peer"), now)
		return
	}
	if pr.echo && (b.Incarnation < pr.inc || (b.Incarnation == pr.inc && b.Seq <= pr.seq)) {
		// Reordered, duplicated, replayed, or from an earlier run of the
		// agent: a newer beat already counted.
		m.stats.Stale++
		m.mu.Unlock()
		m.metrics.received("stale")
		return
	}
	proof, fresh := m.echoedLocked(b, now)
	if !fresh {
		// Authentic but not fresh: the sender has not heard us yet (it just
		// started, or we did), or this is a replay. Until the peer is
		// heard, its numbers are what our next beats echo, so that its
		// answer can prove it alive; once it is heard, only fresh beats
		// count, so a replay cannot derail the echo.
		bootstrap := !m.heardLocked(pr, now)
		if bootstrap {
			pr.inc, pr.seq, pr.echo = b.Incarnation, b.Seq, true
		}
		m.stats.Unverified++
		m.mu.Unlock()
		m.metrics.received("unverified")
		if bootstrap {
			notify.Signal(m.kick) // answer at once, so that it hears us
		}
		return
	}
	wasHeard, wasEver, old := m.heardLocked(pr, now), pr.ever, *pr
	if pr.ever {
		pr.longestGap = max(pr.longestGap, now.Sub(pr.arrival))
	}
	pr.ever, pr.heard, pr.arrival, pr.from = true, true, now, from
	pr.last = later(pr.last, proof)
	pr.inc, pr.seq, pr.echo = b.Incarnation, b.Seq, true
	// Compared with the last beat's below: in a stable order, whatever
	// order the sender used.
	slices.Sort(b.Hears)
	slices.Sort(b.Holds)
	pr.state, pr.hears, pr.asks, pr.holds = b.State, b.Hears, b.Asks, b.Holds
	otherAddr := from.Addr() != pr.addr.Addr()
	m.stats.Accepted++
	if otherAddr {
		m.stats.OtherAddr++
	}
	cutChanged := m.updateCutLocked(now)
	gap := pr.longestGap
	m.mu.Unlock()
	m.metrics.received("accepted")

	if otherAddr {
		if ok, s := m.limit.allow("addr "+b.From, now); ok {
			m.log.Debug("heartbeat from another address than the peer's", "peer", b.From, "from", from, "suppressed", s)
		}
	}
	switch {
	case !wasHeard:
		m.log.Info("heartbeat peer heard", "peer", b.From, "from", from, "api_ok", b.State.APIOK, "live", b.State.Live,
			"first", !wasEver, "longest_gap", gap)
		notify.Signal(m.rearm)
		notify.Signal(m.changes)
		// Answer at once: our next beat echoes this one, which is what
		// makes us heard there.
		notify.Signal(m.kick)
	case cutChanged || old.state != b.State || !slices.Equal(old.hears, b.Hears) || !slices.Equal(old.holds, b.Holds):
		if old.state != b.State {
			m.log.Debug("heartbeat peer state", "peer", b.From, "api_ok", b.State.APIOK, "live", b.State.Live)
		}
		notify.Signal(m.changes)
	}
}

// echoedLocked dates a beat by the beat of ours that it echoes: the sender
// built it after that one arrived. It is fresh if it echoes this run of
// ours and a round of it recent enough to prove anything.
func (m *Monitor) echoedLocked(b beat, now time.Time) (time.Time, bool) {
	if b.EchoInc != m.inc || b.EchoSeq == 0 || b.EchoSeq > m.seq {
		return time.Time{}, false
	}
	r := m.sent[b.EchoSeq%ringSize]
	if r.seq != b.EchoSeq || now.Sub(r.at) >= m.cfg.Timeout {
		return time.Time{}, false
	}
	return r.at, true
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func (m *Monitor) drop(reason string, from netip.AddrPort, node string, err error, now time.Time) {
	m.mu.Lock()
	switch reason {
	case "malformed":
		m.stats.Malformed++
	case "cluster":
		m.stats.Cluster++
	case "misrouted":
		m.stats.Misrouted++
	case "nokey":
		m.stats.NoKey++
	case "auth":
		m.stats.Auth++
	case "unknown":
		m.stats.Unknown++
	}
	m.mu.Unlock()
	m.metrics.received(reason)
	if ok, s := m.limit.allow("drop "+reason, now); ok {
		lvl := slogDebug
		if reason == "auth" {
			// Someone sends beats this agent cannot trust: a key not
			// rotated everywhere, or a forger. Worth an operator's look.
			lvl = slogWarn
		}
		m.log.Log(context.Background(), lvl, "dropping heartbeat", "reason", reason, "from", from, "peer", node, "err", err, "suppressed", s)
	}
}
