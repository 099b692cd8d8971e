package heartbeat

import (
	"testing"
	"time"
)

// TestAllSilentAtOnceIsIsolation: when every peer's last beat is older than
// the timeout, this agent is cut off, not they: none is reported Silent,
// even before the loop has noticed the isolation. One peer silent while
// another is heard is Silent.
func TestAllSilentAtOnceIsIsolation(t *testing.T) {
	now := time.Now()
	m := &Monitor{cfg: Config{Interval: 20 * time.Millisecond, Timeout: 200 * time.Millisecond}, peers: map[string]*peer{
		"n1": {ever: true, last: now.Add(-300 * time.Millisecond)},
		"n2": {ever: true, last: now.Add(-250 * time.Millisecond)},
	}}
	for _, n := range []string{"n1", "n2"} {
		if s := m.Peer(n); s.Heard || s.Silent {
			t.Errorf("%s: heard %v, silent %v; want neither while no peer is heard", n, s.Heard, s.Silent)
		}
	}
	if !m.Self().Isolated {
		t.Error("no peer heard, but not isolated")
	}

	m.peers["n2"].last = now
	if s := m.Peer("n1"); !s.Silent {
		t.Error("n1 quiet while n2 is heard: want silent")
	}
	if s := m.Peer("n2"); !s.Heard || s.Silent {
		t.Errorf("n2: heard %v, silent %v; want heard", s.Heard, s.Silent)
	}
}
