package services

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestStatusWaitsForClaims: a status write waits while this node's claim
// writes are pending, and once they are done it goes out; claims that stay
// pending hold it up for statusHold at most.
func TestStatusWaitsForClaims(t *testing.T) {
	needAPI(t)
	client := newClient(t)
	ns := namespace(t, "svc-hold")
	var mu sync.Mutex
	claims := make(chan struct{}) // open: a claim write is pending
	pending := func() <-chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		return claims
	}
	c := start(t, "n1", Config{Namespace: ns, Claiming: pending})
	create(t, client, ns, "web", ann("192.0.2.61"))
	create(t, client, ns, "api", ann("192.0.2.62"))
	waitFor(t, "both addresses planned", func() bool { return len(c.Addresses()) == 2 })

	// doneLater ends the pending claims 300 ms from now; ended reports
	// whether it has.
	var done bool
	doneLater := func() {
		time.AfterFunc(300*time.Millisecond, func() {
			mu.Lock()
			defer mu.Unlock()
			done = true
			close(claims)
		})
	}
	ended := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return done
	}

	// The claims are done 300 ms after the VIP is held: its status may
	// only come after that.
	web := netip.MustParseAddr("192.0.2.61")
	c.SetHeld([]Held{{IP: web, Reason: "new"}})
	doneLater()
	waitFor(t, "ingress 192.0.2.61", func() bool { return ingressIs(get(t, client, ns, "web"), "192.0.2.61") })
	if !ended() {
		t.Fatal("the status was written while the claim writes were pending")
	}

	// Claims that stay pending hold the next status up for statusHold,
	// not for ever.
	mu.Lock()
	claims = make(chan struct{})
	mu.Unlock()
	held := time.Now()
	c.SetHeld([]Held{{IP: web, Reason: "new"}, {IP: netip.MustParseAddr("192.0.2.62"), Reason: "new"}})
	waitFor(t, "ingress 192.0.2.62", func() bool { return ingressIs(get(t, client, ns, "api"), "192.0.2.62") })
	if d := time.Since(held); d < statusHold {
		t.Errorf("status written %v after the VIP was held with claims pending, want at least %v", d, statusHold)
	}

	// Those takes are written, with no status pending; later ones hold
	// the next status up again.
	mu.Lock()
	close(claims)
	claims, done = make(chan struct{}), false
	mu.Unlock()
	create(t, client, ns, "db", ann("192.0.2.63"))
	waitFor(t, "three addresses planned", func() bool { return len(c.Addresses()) == 3 })
	c.SetHeld([]Held{{IP: web, Reason: "new"}, {IP: netip.MustParseAddr("192.0.2.62"), Reason: "new"},
		{IP: netip.MustParseAddr("192.0.2.63"), Reason: "new"}})
	doneLater()
	waitFor(t, "ingress 192.0.2.63", func() bool { return ingressIs(get(t, client, ns, "db"), "192.0.2.63") })
	if !ended() {
		t.Fatal("after a wait cut short, the status of a later take was written while its claim write was pending")
	}
}
