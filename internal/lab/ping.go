package lab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Echo is one echo request of a PingLoop.
type Echo struct {
	Seq   int       // 0, 1, 2, ... in send order
	Sent  time.Time // when it was sent
	Reply time.Time // when its first reply came; zero if none did
	Dups  int       // replies after the first: more than one station answered
}

// PingRecord is a running or finished PingLoop.
type PingRecord struct {
	conn   *icmp.PacketConn
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stop   sync.Once

	mu     sync.Mutex
	echoes []Echo
	err    error // first send or receive error other than closing
}

// PingLoop sends an ICMP echo request to ip from the client every interval
// (e.g. 10 ms) until ctx is done, Stop is called or the lab closes, and
// records when each was sent and answered. Its socket is a raw ICMP socket
// opened in the client's namespace.
func (c *Client) PingLoop(ctx context.Context, ip netip.Addr, interval time.Duration) (*PingRecord, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("ping interval must be positive, got %v", interval)
	}
	network, laddr := "ip4:icmp", "0.0.0.0"
	if ip.Is6() {
		network, laddr = "ip6:ipv6-icmp", "::"
	}
	var conn *icmp.PacketConn
	err := InNetns(c.Netns, func() error {
		var err error
		conn, err = icmp.ListenPacket(network, laddr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening ICMP socket on %s: %w", c.Name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &PingRecord{conn: conn, cancel: cancel}
	if err := c.lab.track(r); err != nil {
		cancel()
		conn.Close()
		return nil, err
	}
	// A raw socket sees every echo reply in the namespace: the id picks ours.
	id := rand.IntN(1 << 16)
	r.wg.Add(2)
	go r.receive(ip, id)
	go r.send(ctx, ip, id, interval)
	return r, nil
}

func (r *PingRecord) send(ctx context.Context, ip netip.Addr, id int, interval time.Duration) {
	defer r.wg.Done()
	// Closing the socket here ends receive too.
	defer r.conn.Close()
	typ := icmp.Type(ipv4.ICMPTypeEcho)
	if ip.Is6() {
		typ = ipv6.ICMPTypeEchoRequest
	}
	dst := &net.IPAddr{IP: ip.AsSlice()}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		// For IPv6 the kernel fills in the checksum.
		b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq & 0xffff, Data: []byte("vipd-lab")}}).Marshal(nil)
		if err != nil {
			r.fail(err)
			return
		}
		r.mu.Lock()
		r.echoes = append(r.echoes, Echo{Seq: seq, Sent: time.Now()})
		r.mu.Unlock()
		// A failed send (e.g. neighbour unreachable) is a lost echo, not the end.
		_, _ = r.conn.WriteTo(b, dst)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (r *PingRecord) receive(ip netip.Addr, id int) {
	defer r.wg.Done()
	proto, reply := 1, icmp.Type(ipv4.ICMPTypeEchoReply)
	if ip.Is6() {
		proto, reply = 58, ipv6.ICMPTypeEchoReply
	}
	buf := make([]byte, 1500)
	for {
		n, peer, err := r.conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.fail(err)
			}
			return
		}
		now := time.Now()
		pa, ok := peer.(*net.IPAddr)
		if !ok {
			continue
		}
		if src, ok := netip.AddrFromSlice(pa.IP); !ok || src.Unmap() != ip {
			continue
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != id {
			continue
		}
		r.mu.Lock()
		// Map the 16-bit sequence number to the latest echo that carried it.
		last := len(r.echoes) - 1
		i := last - int(uint16(last)-uint16(e.Seq))
		if i >= 0 {
			if r.echoes[i].Reply.IsZero() {
				r.echoes[i].Reply = now
			} else {
				r.echoes[i].Dups++
			}
		}
		r.mu.Unlock()
	}
}

func (r *PingRecord) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

// Stop ends the loop and waits until it has ended. Echoes still in flight
// stay unanswered.
func (r *PingRecord) Stop() {
	r.stop.Do(func() {
		r.cancel()
		r.wg.Wait()
	})
}

// Close is Stop, for the lab's clean-up.
func (r *PingRecord) Close() error {
	r.Stop()
	return nil
}

// Err returns the first error that ended or disturbed the loop, if any.
func (r *PingRecord) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Echoes returns every echo sent so far, in send order.
func (r *PingRecord) Echoes() []Echo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.echoes)
}

// Replies returns the times of the first replies, earliest first.
func (r *PingRecord) Replies() []time.Time {
	var ts []time.Time
	for _, e := range r.Echoes() {
		if !e.Reply.IsZero() {
			ts = append(ts, e.Reply)
		}
	}
	slices.SortFunc(ts, time.Time.Compare)
	return ts
}

// LongestGap is the longest time a client went without an answer around a
// disruption: among echoes sent within [from, to] that were answered, taken
// in send order, the largest difference between the reply times of two
// consecutive ones. Zero when fewer than two were answered. The window
// should extend past recovery, or the outage has no closing reply.
func (r *PingRecord) LongestGap(from, to time.Time) time.Duration {
	var gap time.Duration
	var prev time.Time
	for _, e := range r.Echoes() {
		if e.Sent.Before(from) || e.Sent.After(to) || e.Reply.IsZero() {
			continue
		}
		if !prev.IsZero() {
			gap = max(gap, e.Reply.Sub(prev))
		}
		prev = e.Reply
	}
	return gap
}
