package address

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// TestWatchRemovals: a VIP removed by hand is reported; its additions and
// the renewals of its lifetime, which the kernel announces as additions
// too, are dropped by the socket's filter before anyone reads them.
func TestWatchRemovals(t *testing.T) {
	tn := newTestNS(t)
	v0, err := tn.ns.Lookup("v0")
	if err != nil {
		t.Fatal(err)
	}
	v0.Lifetime = 5 * time.Second
	vip := netip.MustParseAddr("192.0.2.50")

	// What the socket lets through, read raw: the first message must be
	// the removal, with the add and ten renewals before it.
	s, err := tn.ns.subscribe(unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SetReceiveTimeout(&unix.Timeval{Sec: 5}); err != nil {
		t.Fatal(err)
	}
	if err := onlyType(s, unix.RTM_DELADDR); err != nil {
		t.Fatal(err)
	}
	if err := v0.Add(vip); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if err := v0.Refresh(vip); err != nil {
			t.Fatal(err)
		}
	}

	changes := make(chan AddrChange, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- v0.WatchRemovals(ctx, func(c AddrChange) { changes <- c }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	// The watch is subscribed once a renewal is no longer the news: wait
	// for it by removing and adding a second address until reported.
	probe := netip.MustParseAddr("192.0.2.51")
	deadline := time.Now().Add(5 * time.Second)
	for ready := false; !ready; {
		if time.Now().After(deadline) {
			t.Fatal("the watch reported no removal in 5s")
		}
		if err := v0.Add(probe); err != nil {
			t.Fatal(err)
		}
		if err := v0.Remove(probe); err != nil {
			t.Fatal(err)
		}
		select {
		case c := <-changes:
			ready = c.Addr == probe
		case <-time.After(100 * time.Millisecond):
		}
	}
	for range 10 {
		if err := v0.Refresh(vip); err != nil {
			t.Fatal(err)
		}
	}
	tn.ip("addr", "del", vip.String()+"/32", "dev", "v0")
	select {
	case c := <-changes:
		if c.Addr != vip || c.Index != v0.Index {
			t.Errorf("reported %+v, want the removal of %s from index %d", c, vip, v0.Index)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("removal of %s not reported", vip)
	}

	msgs, _, err := s.Receive()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_DELADDR {
			t.Errorf("the filtered socket let through a message of type %d", m.Header.Type)
		}
	}
}
