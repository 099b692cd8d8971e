package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/vipd/vipd/internal/lab"
)

// arpWatch asks, from the client, who has a VIP every interval and records
// every reply: which nodes answered for the VIP, and when. This is what
// split brain costs on the wire, whatever the interfaces say.
type arpWatch struct {
	vip      netip.Addr
	interval time.Duration
	nodes    []*lab.Node
	conn     *packet.Conn

	mu      sync.Mutex
	rounds  []arpRound
	err     error
	stopped chan struct{}
}

// arpRound is one request and the nodes that answered it.
type arpRound struct {
	At  time.Time
	Who []string
}

// watchARP starts an arpWatch that stops when the test ends. Requests come
// from probeIP, so the replies do not touch the client's neighbour table.
func watchARP(tb testing.TB, e *env, vip netip.Addr, interval time.Duration) *arpWatch {
	tb.Helper()
	c := e.lab.Client
	w := &arpWatch{vip: vip, interval: interval, nodes: e.lab.Nodes, stopped: make(chan struct{})}
	err := lab.InNetns(c.Netns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		w.conn, err = packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil)
		return err
	})
	if err != nil {
		tb.Fatalf("opening an ARP socket on %s: %v", c.Name, err)
	}
	req, err := arp.NewPacket(arp.OperationRequest, c.MAC, netip.MustParseAddr(probeIP), ethernet.Broadcast, vip)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := req.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(w.read)
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			w.mu.Lock()
			w.rounds = append(w.rounds, arpRound{At: time.Now()})
			w.mu.Unlock()
			if _, err := w.conn.WriteTo(b, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
				w.fail(fmt.Errorf("sending an ARP request for %s: %w", vip, err))
			}
			select {
			case <-w.stopped:
				return
			case <-t.C:
			}
		}
	})
	tb.Cleanup(func() {
		w.Stop()
		wg.Wait()
	})
	return w
}

func (w *arpWatch) read() {
	buf := make([]byte, 1500)
	for {
		n, _, err := w.conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) && !errors.Is(err, net.ErrClosed) {
				w.fail(fmt.Errorf("reading ARP replies: %w", err))
			}
			return
		}
		var p arp.Packet
		if p.UnmarshalBinary(buf[:n]) != nil || p.Operation != arp.OperationReply || p.SenderIP != w.vip ||
			p.TargetIP != netip.MustParseAddr(probeIP) {
			continue
		}
		name := p.SenderHardwareAddr.String()
		for _, node := range w.nodes {
			if node.MAC.String() == name {
				name = node.Name
			}
		}
		w.mu.Lock()
		if r := &w.rounds[len(w.rounds)-1]; !slices.Contains(r.Who, name) {
			r.Who = append(r.Who, name)
		}
		w.mu.Unlock()
	}
}

func (w *arpWatch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

// Stop ends the probing; the record stays.
func (w *arpWatch) Stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.stopped:
	default:
		close(w.stopped)
		w.conn.Close()
	}
}

// Err is the first error the watch met.
func (w *arpWatch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// LastFrom is the time of the last request that node answered, zero if
// none.
func (w *arpWatch) LastFrom(node string) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(w.rounds) - 1; i >= 0; i-- {
		if slices.Contains(w.rounds[i].Who, node) {
			return w.rounds[i].At
		}
	}
	return time.Time{}
}

// Answerers lists who answered any request made in [from, to].
func (w *arpWatch) Answerers(from, to time.Time) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var who []string
	for _, r := range w.rounds {
		if r.At.Before(from) || r.At.After(to) {
			continue
		}
		for _, n := range r.Who {
			if !slices.Contains(who, n) {
				who = append(who, n)
			}
		}
	}
	slices.Sort(who)
	return who
}

// Doubled is how long, within [from, to], two or more nodes answered the
// same request: the number of such requests times the interval.
func (w *arpWatch) Doubled(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var d time.Duration
	for _, r := range w.rounds {
		if !r.At.Before(from) && !r.At.After(to) && len(r.Who) > 1 {
			d += w.interval
		}
	}
	return d
}

// Unanswered is how long, within [from, to], nobody answered.
func (w *arpWatch) Unanswered(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var d time.Duration
	// The last request may still be waiting for its answer.
	for i, r := range w.rounds {
		if i < len(w.rounds)-1 && !r.At.Before(from) && !r.At.After(to) && len(r.Who) == 0 {
			d += w.interval
		}
	}
	return d
}
