package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vipd/vipd/internal/lab"
)

// vipWatch records, from the kernel's address notifications in every node
// namespace, when one VIP appears on and disappears from each node. Unlike
// polling `ip addr`, it misses no short-lived state (two holders for a
// millisecond) and times changes to within the notification's delivery.
type vipWatch struct {
	vip netip.Addr

	mu      sync.Mutex
	held    map[string]bool
	events  []vipEvent
	err     error
	changed chan struct{} // closed and replaced on every event
}

type vipEvent struct {
	At   time.Time
	Node string
	Held bool // added (true) or removed
}

// watchVIP starts a vipWatch that stops when the test ends.
func watchVIP(tb testing.TB, nodes []*lab.Node, vip netip.Addr) *vipWatch {
	tb.Helper()
	return watchVIPs(tb, nodes, []netip.Addr{vip})[vip]
}

// watchVIPs starts a vipWatch for each of vips, on one subscription per
// node, that stop when the test ends. A VIP counts as held by a node
// whatever the interface it is on.
func watchVIPs(tb testing.TB, nodes []*lab.Node, vips []netip.Addr) map[netip.Addr]*vipWatch {
	tb.Helper()
	ws := map[netip.Addr]*vipWatch{}
	for _, vip := range vips {
		ws[vip] = &vipWatch{vip: vip, held: map[string]bool{}, changed: make(chan struct{})}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		close(done)
		wg.Wait()
	})
	for _, n := range nodes {
		h, err := netns.GetFromName(n.Netns)
		if err != nil {
			tb.Fatalf("opening namespace of %s: %v", n.Name, err)
		}
		ch := make(chan netlink.AddrUpdate, 64)
		var last lastErr
		err = netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
			Namespace:     &h,
			ListExisting:  true, // the starting state, after the subscription
			ErrorCallback: last.set,
		})
		h.Close()
		if err != nil {
			tb.Fatalf("subscribing to addresses of %s: %v", n.Name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range ch {
				if ip, ok := netip.AddrFromSlice(u.LinkAddress.IP); ok {
					if w := ws[ip.Unmap()]; w != nil {
						w.record(n.Name, u.NewAddr)
					}
				}
			}
			select {
			case <-done: // closed on purpose
			default:
				for _, w := range ws {
					w.fail(fmt.Errorf("address notifications from %s stopped: %v", n.Name, last.get()))
				}
			}
		}()
	}
	return ws
}

func (w *vipWatch) record(node string, held bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held[node] == held {
		return // a flag change of a present address, or a repeat
	}
	w.held[node] = held
	w.events = append(w.events, vipEvent{At: time.Now(), Node: node, Held: held})
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *vipWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
		close(w.changed)
		w.changed = make(chan struct{})
	}
}

// Holders lists, sorted, the nodes holding the VIP now.
func (w *vipWatch) Holders() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for n, h := range w.held {
		if h {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// Events returns every change so far, oldest first.
func (w *vipWatch) Events() []vipEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.events)
}

// Wait waits until cond, given the current holders, returns true, and
// returns the time of the event that made it so.
func (w *vipWatch) Wait(timeout time.Duration, cond func(holders []string) bool) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		changed, err := w.changed, w.err
		var at time.Time
		if len(w.events) > 0 {
			at = w.events[len(w.events)-1].At
		}
		w.mu.Unlock()
		if err != nil {
			return time.Time{}, err
		}
		if cond(w.Holders()) {
			return at, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("%s: condition not met within %v; holders %v", w.vip, timeout, w.Holders())
		}
	}
}

// Err is the first error of the notification sockets, if any.
func (w *vipWatch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// stepDownBound is the longest a stopping agent keeps its VIPs on its
// interfaces, silent, once it has released them (the agent's stepDownMax):
// the time two nodes may carry a VIP across a graceful handover. Who
// answers for it is checked on the wire (arpWatch).
const stepDownBound = time.Second

// Overlap is how long, between from and to, at least two of the given
// nodes held the VIP at once (nil nodes: all).
func (w *vipWatch) Overlap(from, to time.Time, nodes []string) time.Duration {
	counted := func(n string) bool { return nodes == nil || slices.Contains(nodes, n) }
	held := map[string]bool{}
	var total time.Duration
	var since time.Time // start of the current overlap
	count := func() int {
		c := 0
		for n, h := range held {
			if h && counted(n) {
				c++
			}
		}
		return c
	}
	for _, ev := range w.Events() {
		before := count()
		held[ev.Node] = ev.Held
		after := count()
		switch {
		case before < 2 && after >= 2:
			since = ev.At
		case before >= 2 && after < 2:
			total += clip(since, ev.At, from, to)
		}
	}
	if count() >= 2 {
		total += clip(since, to, from, to)
	}
	return total
}

// clip is the length of [a, b] within [from, to].
func clip(a, b, from, to time.Time) time.Duration {
	if a.Before(from) {
		a = from
	}
	if b.After(to) {
		b = to
	}
	if b.Before(a) {
		return 0
	}
	return b.Sub(a)
}

// lastErr keeps the latest error a subscription reported. Only a
// subscription that ends counts as failed: the netlink package also reports
// messages it skips, such as another subscriber's dump request, which it
// multicasts to the group.
type lastErr struct {
	mu  sync.Mutex
	err error
}

func (l *lastErr) set(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
}

func (l *lastErr) get() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// neighWatch records, from the kernel's neighbour notifications in the
// client's namespace, every change of the client's entry for one VIP.
type neighWatch struct {
	vip netip.Addr

	mu      sync.Mutex
	events  []neighEvent
	err     error
	changed chan struct{}
}

type neighEvent struct {
	At    time.Time
	MAC   net.HardwareAddr // nil when deleted or unresolved
	State int              // NUD_* bits
}

// watchNeighbor starts a neighWatch that stops when the test ends.
func watchNeighbor(tb testing.TB, c *lab.Client, vip netip.Addr) *neighWatch {
	tb.Helper()
	w := &neighWatch{vip: vip, changed: make(chan struct{})}
	done := make(chan struct{})
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		close(done)
		wg.Wait()
	})
	h, err := netns.GetFromName(c.Netns)
	if err != nil {
		tb.Fatalf("opening namespace of %s: %v", c.Name, err)
	}
	defer h.Close()
	ch := make(chan netlink.NeighUpdate, 64)
	var last lastErr
	err = netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{
		Namespace:     &h,
		ListExisting:  true,
		ErrorCallback: last.set,
	})
	if err != nil {
		tb.Fatalf("subscribing to neighbours of %s: %v", c.Name, err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for u := range ch {
			ip, ok := netip.AddrFromSlice(u.IP)
			if !ok || ip.Unmap() != vip {
				continue
			}
			ev := neighEvent{At: time.Now(), MAC: u.HardwareAddr, State: u.State}
			if u.Type == unix.RTM_DELNEIGH {
				ev.MAC = nil
			}
			w.mu.Lock()
			w.events = append(w.events, ev)
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
		select {
		case <-done:
		default:
			w.mu.Lock()
			w.err = fmt.Errorf("neighbour notifications from %s stopped: %v", c.Name, last.get())
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
	}()
	return w
}

// WaitMAC waits until an entry with mac is reported after t, and returns
// when it was first reported.
func (w *neighWatch) WaitMAC(t time.Time, mac net.HardwareAddr, timeout time.Duration) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		events, changed, err := slices.Clone(w.events), w.changed, w.err
		w.mu.Unlock()
		if err != nil {
			return time.Time{}, err
		}
		for _, ev := range events {
			if ev.At.After(t) && ev.MAC.String() == mac.String() {
				return ev.At, nil
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			last := "none"
			if len(events) > 0 {
				last = events[len(events)-1].MAC.String()
			}
			return time.Time{}, fmt.Errorf("client's entry for %s not %s within %v (last %s)", w.vip, mac, timeout, last)
		}
	}
}
