package heartbeat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vipd/vipd/internal/notify"
)

// Run sends a round of beats to every peer each Interval (and at once when
// the State, the asks or the set of peers change), reads the beats that
// arrived meanwhile each time it wakes, and reports silences, until ctx is
// done. It closes the sockets when it returns; it can run only once.
func (m *Monitor) Run(ctx context.Context) error {
	if !m.started.CompareAndSwap(false, true) {
		return errors.New("heartbeat: Run called twice")
	}
	defer m.Close()

	// A ticker keeps the schedule fixed however long a send takes.
	ticker := time.NewTicker(m.cfg.Interval)
	defer ticker.Stop()
	// The silence timer fires at the exact moment the next Heard peer would
	// turn Silent, or this agent's rejoining ends; beats read meanwhile
	// only push that moment later, so an early firing just re-arms it.
	silence := time.NewTimer(m.cfg.Timeout)
	defer silence.Stop()
	m.round()
	for {
		send := false
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			send = true
		case <-m.kick:
			send = true
		case <-m.rearm:
		case <-silence.C:
		}
		m.wake(time.Now())
		// Every beat that arrived counts before anything is sent or
		// judged: the round echoes the newest of them, and no peer is
		// found silent whose beat is waiting in the socket.
		if err := m.drain(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("heartbeat: socket on %s: %w", m.addr, err)
		}
		// A beat just read may ask for an answer at once (a peer heard
		// for the first time): this round is it; and the sweep below
		// re-arms the silence timer anyway.
		select {
		case <-m.kick:
			send = true
		default:
		}
		select {
		case <-m.rearm:
		default:
		}
		if send {
			m.round()
		}
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

// sweep turns Heard peers that have been quiet for Timeout Silent, notes
// whether this agent is cut off, and returns how long until the next such
// change could happen, or 0 if none can.
func (m *Monitor) sweep(now time.Time) time.Duration {
	type quiet struct {
		name      string
		addr      netip.AddrPort
		silentFor time.Duration
	}
	var next time.Duration
	soon := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
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
		soon(left)
	}
	cutChanged := m.updateCutLocked(now)
	cut, blind := m.cut, m.blindLocked(now)
	blindChanged := blind != m.blindSignalled
	m.blindSignalled = blind
	if !m.rejoined.IsZero() {
		soon(m.rejoined.Add(m.cfg.Timeout).Sub(now))
	}
	m.mu.Unlock()
	for _, q := range silent {
		m.log.Info("heartbeat peer silent", "peer", q.name, "addr", q.addr, "quiet_for", q.silentFor.Round(time.Millisecond),
			"judged", !blind)
		m.metrics.silence(q.name)
	}
	if cutChanged {
		if cut {
			m.log.Warn("heartbeat: hearing no peer; judging none until beats are heard again for a full timeout")
		} else {
			m.log.Info("heartbeat: hearing peers again")
		}
	}
	if len(silent) > 0 || cutChanged || blindChanged {
		notify.Signal(m.changes)
	}
	if len(silent) > 0 {
		// Whom we hear changed: tell the others at once, since they wait
		// for that before judging the silent peer dead.
		notify.Signal(m.kick)
	}
	return next
}
