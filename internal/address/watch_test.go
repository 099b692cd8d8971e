package address

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestWatchLink: carrier loss on the peer side, the interface going down,
// and the interface deleted and made again are each reported at once.
func TestWatchLink(t *testing.T) {
	tn := newTestNS(t)
	v0, err := tn.ns.Lookup("v0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []LinkState
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- v0.WatchLink(ctx, func(s LinkState) {
			mu.Lock()
			seen = append(seen, s)
			mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	wait := func(what string, want func(LinkState) bool) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < 2*time.Second {
			mu.Lock()
			var last LinkState
			ok := len(seen) > 0
			if ok {
				last = seen[len(seen)-1]
			}
			mu.Unlock()
			if ok && want(last) {
				return time.Since(start)
			}
			time.Sleep(time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%s: not reported; saw %+v", what, seen)
		return 0
	}
	wait("up at start", func(s LinkState) bool { return s.Exists && s.Up && s.Index == v0.Index })
	tn.ip("link", "set", "v1", "down") // the cable's other end: v0 loses carrier
	took := wait("carrier lost", func(s LinkState) bool { return s.Exists && !s.Up })
	t.Logf("carrier loss reported after %v", took)
	tn.ip("link", "set", "v1", "up")
	wait("carrier back", func(s LinkState) bool { return s.Up })
	tn.ip("link", "set", "v0", "down")
	wait("administratively down", func(s LinkState) bool { return s.Exists && !s.Up })
	tn.ip("link", "del", "v0")
	wait("deleted", func(s LinkState) bool { return !s.Exists })
	tn.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
	tn.ip("link", "set", "v0", "up")
	tn.ip("link", "set", "v1", "up")
	wait("made again, with a new index", func(s LinkState) bool { return s.Exists && s.Up && s.Index != v0.Index })
}
