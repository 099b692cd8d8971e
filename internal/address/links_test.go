package address

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestOwnedAllAndRemove: VIPs on two interfaces are all listed, each with
// its interface, an administrator's addresses are not, and each VIP can be
// removed wherever it is.
func TestOwnedAllAndRemove(t *testing.T) {
	tn := newTestNS(t)
	v0, err := tn.ns.Lookup("v0")
	if err != nil {
		t.Fatal(err)
	}
	w0, err := tn.ns.Lookup("w0")
	if err != nil {
		t.Fatal(err)
	}
	a, b := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	for _, step := range []struct {
		i   *Interface
		vip netip.Addr
	}{{v0, a}, {w0, b}, {w0, a}} {
		if err := step.i.Add(step.vip); err != nil {
			t.Fatal(err)
		}
	}
	tn.ip("addr", "add", "192.0.2.99/24", "dev", "w0") // an administrator's
	got, err := tn.ns.OwnedAll()
	if err != nil {
		t.Fatal(err)
	}
	want := []OwnedVIP{{a, "v0", v0.Index}, {a, "w0", w0.Index}, {b, "w0", w0.Index}}
	if len(got) != len(want) {
		t.Fatalf("OwnedAll = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("OwnedAll[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	if err := tn.ns.Remove(got[1]); err != nil {
		t.Fatal(err)
	}
	if on, _ := w0.Has(a); on {
		t.Errorf("%s still on w0 after Remove", a)
	}
	if on, _ := v0.Has(a); !on {
		t.Errorf("%s gone from v0: Remove took the wrong one", a)
	}
}

// TestWatchLinks: one watch reports every interface by name.
func TestWatchLinks(t *testing.T) {
	tn := newTestNS(t)
	var mu sync.Mutex
	seen := map[string]LinkState{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- tn.ns.WatchLinks(ctx, func(name string, s LinkState) {
			mu.Lock()
			seen[name] = s
			mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	wait := func(what string, want func(map[string]LinkState) bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			ok := want(seen)
			mu.Unlock()
			if ok {
				return
			}
			time.Sleep(time.Millisecond)
		}
		t.Fatalf("%s: not reported; saw %+v", what, seen)
	}
	wait("both up", func(m map[string]LinkState) bool { return m["v0"].Up && m["w0"].Up })
	tn.ip("link", "set", "w1", "down")
	wait("w0 lost carrier, v0 up", func(m map[string]LinkState) bool { return !m["w0"].Up && m["w0"].Exists && m["v0"].Up })
	tn.ip("link", "add", "x0", "type", "veth", "peer", "name", "x1")
	tn.ip("link", "set", "x0", "up")
	wait("a new interface", func(m map[string]LinkState) bool { return m["x0"].Exists })
	tn.ip("link", "del", "x0")
	wait("it went", func(m map[string]LinkState) bool { return !m["x0"].Exists })
}

// TestWatchLinksBesideAnotherSubscriber: another subscriber in the
// namespace (the netlink package sends its list request to the group)
// does not end the watch.
func TestWatchLinksBesideAnotherSubscriber(t *testing.T) {
	tn := newTestNS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var w0 []LinkState
	done := make(chan error, 3)
	go func() {
		done <- tn.ns.WatchLinks(ctx, func(name string, s LinkState) {
			if name == "w0" {
				mu.Lock()
				w0 = append(w0, s)
				mu.Unlock()
			}
		})
	}()
	// The others have sent their list requests once they report a link.
	listed := make(chan struct{}, 2)
	for range 2 {
		var once sync.Once
		go func() {
			done <- tn.ns.WatchLinks(ctx, func(string, LinkState) {
				once.Do(func() { listed <- struct{}{} })
			})
		}()
	}
	for range 2 {
		select {
		case <-listed:
		case <-time.After(2 * time.Second):
			t.Fatal("the other watches listed no link")
		}
	}
	tn.ip("link", "set", "w1", "down")
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		n := len(w0)
		lost := n > 0 && !w0[n-1].Up
		mu.Unlock()
		if lost {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("a watch ended: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("carrier loss of w0 not reported: %+v", w0)
		}
		time.Sleep(time.Millisecond)
	}
}
