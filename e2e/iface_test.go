package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// TestVIPDeletedByHandRestored: an administrator (or a script) deletes the
// VIP from the holder's interface. The agent hears of it from the kernel's
// address notifications and puts it back, announced again, within one
// retry period, not at its next periodic resync.
func TestVIPDeletedByHandRestored(t *testing.T) {
	e := newEnv(t, envOptions{})
	w := watchVIP(t, e.lab.Nodes, vip4)
	cp := e.capture()
	e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.mustReach(vip4, h)

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	del := time.Now()
	if _, err := e.lab.Exec(ctx, h.Netns, "ip", "addr", "del", vip4.String()+"/32", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	// The removal and the repair may both come before a look at the
	// holders: read them from the recorded notifications.
	var back time.Time
	waitFor(t, 5*time.Second, "the VIP to be removed and put back", func() error {
		gone := false
		for _, ev := range w.Events() {
			switch {
			case ev.At.Before(del) || ev.Node != h.Name:
			case !ev.Held:
				gone = true
			case gone:
				back = ev.At
				return nil
			}
		}
		return fmt.Errorf("events %+v", w.Events())
	})
	garp, err := cp.WaitFor(ctx, func(a lab.Announcement) bool { return a.Time.After(del) && gratuitousFrom(h, vip4)(a) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("deleted by hand: back on %s after %v, announced after %v", h.Name,
		back.Sub(del).Round(time.Microsecond), garp.Time.Sub(del).Round(time.Microsecond))
	if d := back.Sub(del); d > e.timing.retry {
		t.Errorf("the VIP came back after %v; want within one retry period (%v)", d, e.timing.retry)
	}
	if d := garp.Time.Sub(del); d > e.timing.retry {
		t.Errorf("the VIP was announced again after %v; want within one retry period (%v)", d, e.timing.retry)
	}
	e.mustReach(vip4, h)
	if holders := w.Holders(); !slices.Equal(holders, []string{h.Name}) {
		t.Errorf("holders after the repair: %v", holders)
	}
}

// TestLinkUpReannounces: the holder's link goes down for a moment, too
// short for it to let go. When the link comes back, switches and
// neighbours may have forgotten the VIP, so the holder announces it at
// once rather than at its next periodic refresh (vip_arpRate, 3 s). One
// agent without heartbeats: nothing else would move the VIP.
func TestLinkUpReannounces(t *testing.T) {
	e := newEnv(t, envOptions{})
	cp := e.capture()
	h := e.lab.Nodes[0]
	p := e.start(h, "--heartbeat-port", "0")
	e.waitSoleHolder(startTimeout)
	e.mustReach(vip4, h)
	// The burst of the takeover is over.
	waitFor(t, 5*time.Second, "the takeover's announcements to end", func() error {
		if n := len(announcementsSince(cp, time.Now().Add(-time.Second), gratuitousFrom(h, vip4))); n > 0 {
			return fmt.Errorf("%d announcements in the last second", n)
		}
		return nil
	})

	if err := h.LinkDown(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := h.LinkUp(); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	garp, err := cp.WaitFor(ctx, func(a lab.Announcement) bool { return a.Time.After(up) && gratuitousFrom(h, vip4)(a) })
	if err != nil {
		t.Fatalf("no announcement after the link came back: %v", err)
	}
	t.Logf("announced %v after the link came back", garp.Time.Sub(up).Round(time.Microsecond))
	// Far below the periodic refresh; the margin is for a loaded machine.
	if d := garp.Time.Sub(up); d > 500*time.Millisecond {
		t.Errorf("announced %v after the link came back; want at once", d)
	}
	if holders := e.mustHolding().holdersOf(vip4); !slices.Equal(holders, []string{h.Name}) {
		t.Errorf("holders after the flap: %v (log %s)", holders, p.LogPath())
	}
}

// TestInterfaceRecreated: the holder's interface is deleted (a NIC
// unplugged, a driver reloaded) and made again with a new index. While it
// is gone the others take over; once it is back the agent works on the
// new interface: when it is the last agent left it holds the VIP there,
// announced, and the client reaches it.
func TestInterfaceRecreated(t *testing.T) {
	e := newEnv(t, envOptions{})
	procs := e.startAll()
	h := e.waitSoleHolder(startTimeout)
	e.mustReach(vip4, h)
	e.waitHeard(procs)

	w := watchVIP(t, e.lab.Nodes, vip4)
	from := len(procs[h.Name].Log())
	if err := h.DeleteLink(); err != nil {
		t.Fatal(err)
	}
	var next *lab.Node
	if _, err := w.Wait(5*time.Second, func(holders []string) bool {
		for _, n := range holders {
			if n != h.Name {
				next = e.node(n)
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	e.mustReach(vip4, next)
	if err := h.RecreateLink(); err != nil {
		t.Fatal(err)
	}
	waitLog(t, procs[h.Name], from, 10*time.Second, "the VIP interface was made again")
	// It hears the others again: it is a full member once more. A peer
	// it judged silent while its link was gone is heard again; one whose
	// beats stopped for less than the silence timeout was never judged
	// silent, and must not be for longer than that timeout now.
	judgedSilent := func() error {
		log := procs[h.Name].Log()
		if from > len(log) {
			from = 0 // trimmed; look at what is kept
		}
		silent := map[string]bool{}
		for _, line := range strings.Split(log[from:], "\n") {
			for _, n := range e.lab.Nodes {
				switch {
				case !strings.Contains(line, "peer="+n.Name+" "):
				case strings.Contains(line, "heartbeat peer silent"):
					silent[n.Name] = true
				case strings.Contains(line, "heartbeat peer heard"):
					silent[n.Name] = false
				}
			}
		}
		for n, s := range silent {
			if s {
				return fmt.Errorf("%s judges %s silent", h.Name, n)
			}
		}
		return nil
	}
	waitFor(t, 10*time.Second, "every peer heard again", judgedSilent)
	holdFor(t, time.Second, "every peer heard", judgedSilent) // the silence timeout is 200 ms

	// The others step down: the VIP must come back to h.
	for _, n := range e.lab.Nodes {
		if n == h {
			continue
		}
		if err := procs[n.Name].Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := waitExit(t, procs[n.Name], 10*time.Second); code != 0 {
			t.Fatalf("vipd on %s exited with %d", n.Name, code)
		}
	}
	got := e.waitSoleHolder(10 * time.Second)
	if got != h {
		t.Fatalf("%s holds the VIP, want %s", got.Name, h.Name)
	}
	e.waitNeighbor(5*time.Second, vip4, h)
	e.mustReach(vip4, h)
}
