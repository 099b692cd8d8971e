package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestAPIOutageKeepsVIP: every agent loses the API server at once. Nobody
// can take the claim, and every agent's heartbeat says so, so the holder
// keeps the VIP: the clients never notice the outage. When the API server
// returns, the same node still holds it.
func TestAPIOutageKeepsVIP(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.mustReach(vip4, h)
	// Every agent has reached the API server and hears the others.
	for _, p := range procs {
		waitLog(t, p, 0, 10*time.Second, "this agent is live")
	}
	for _, n := range e.lab.Nodes {
		for _, peer := range e.lab.Nodes {
			if peer != n {
				waitLog(t, procs[n.Name], 0, 10*time.Second, "heartbeat peer heard", "peer="+peer.Name)
			}
		}
	}
	ping, err := e.lab.Client.PingLoop(t.Context(), vip4, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer ping.Close()

	// Several Lease durations without an API server.
	outage := 3 * e.timing.lease
	down := time.Now()
	e.lab.StopAPI()
	holdFor(t, outage, h.Name+" to keep the VIP through the outage", func() error {
		if holders := w.Holders(); !slices.Equal(holders, []string{h.Name}) {
			return fmt.Errorf("holders %v", holders)
		}
		return nil
	})
	if err := e.lab.StartAPI(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	holdFor(t, e.timing.lease, h.Name+" to keep the VIP after the outage", func() error {
		if holders := w.Holders(); !slices.Equal(holders, []string{h.Name}) {
			return fmt.Errorf("holders %v", holders)
		}
		return nil
	})
	ping.Stop()
	gap := ping.LongestGap(down, up)
	t.Logf("API server down for %v: longest gap between answered pings %v", up.Sub(down).Round(time.Millisecond), gap)
	if gap > 100*time.Millisecond {
		t.Errorf("the client lost the VIP for %v during an API outage; want no gap", gap)
	}
	e.waitLeaseHolder(5*time.Second, h.Name)
	if err := w.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestNoFlappingUnderPacketLoss: 10% of the holder's frames are dropped
// each way. The heartbeats must not mistake loss for death: the VIP stays
// where it is.
func TestNoFlappingUnderPacketLoss(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.mustReach(vip4, h)

	if err := h.DropPercent(10); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.DropPercent(0) })
	holdFor(t, 4*e.timing.lease, "the VIP to stay on "+h.Name+" under 10% packet loss", func() error {
		if holders := w.Holders(); !slices.Equal(holders, []string{h.Name}) {
			return fmt.Errorf("holders %v", holders)
		}
		return nil
	})
	if n := len(w.Events()); n != 1 {
		t.Errorf("the VIP changed hands under packet loss: %+v", w.Events())
	}
}
