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

// PingRecord is the record of one target of a running or finished
// PingLoop or PingMany.
type PingRecord struct {
	p *pinger

	mu     sync.Mutex
	echoes []Echo
}

// pinger sends the echo requests of PingMany: one raw socket per address
// family, whatever the number of targets.
type pinger struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stop   sync.Once
	conns  []*icmp.PacketConn

	mu  sync.Mutex
	err error // first send or receive error other than closing
}

// PingLoop sends an ICMP echo request to ip from the client every interval
// (e.g. 10 ms) until ctx is done, Stop is called or the lab closes, and
// records when each was sent and answered. Its socket is a raw ICMP socket
// opened in the client's namespace.
func (c *Client) PingLoop(ctx context.Context, ip netip.Addr, interval time.Duration) (*PingRecord, error) {
	recs, err := c.PingMany(ctx, []netip.Addr{ip}, interval)
	if err != nil {
		return nil, err
	}
	return recs[ip], nil
}

// PingMany is PingLoop for several targets at once, each pinged every
// interval, through one raw socket per address family. Stopping any of the
// records stops them all.
func (c *Client) PingMany(ctx context.Context, ips []netip.Addr, interval time.Duration) (map[netip.Addr]*PingRecord, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("ping interval must be positive, got %v", interval)
	}
	byFamily := map[bool][]netip.Addr{}
	for _, ip := range ips {
		byFamily[ip.Is6()] = append(byFamily[ip.Is6()], ip)
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &pinger{cancel: cancel}
	recs := map[netip.Addr]*PingRecord{}
	for _, ip := range ips {
		recs[ip] = &PingRecord{p: p}
	}
	for _, v6 := range []bool{false, true} {
		targets := byFamily[v6]
		if len(targets) == 0 {
			continue
		}
		network, laddr := "ip4:icmp", "0.0.0.0"
		if v6 {
			network, laddr = "ip6:ipv6-icmp", "::"
		}
		var conn *icmp.PacketConn
		err := InNetns(c.Netns, func() error {
			var err error
			conn, err = icmp.ListenPacket(network, laddr)
			return err
		})
		if err != nil {
			cancel()
			for _, cn := range p.conns {
				cn.Close()
			}
			return nil, fmt.Errorf("opening ICMP socket on %s: %w", c.Name, err)
		}
		p.conns = append(p.conns, conn)
	}
	if err := c.lab.track(p); err != nil {
		cancel()
		for _, cn := range p.conns {
			cn.Close()
		}
		return nil, err
	}
	// A raw socket sees every echo reply in the namespace: the id picks ours.
	id := rand.IntN(1 << 16)
	i := 0
	for _, v6 := range []bool{false, true} {
		targets := byFamily[v6]
		if len(targets) == 0 {
			continue
		}
		conn := p.conns[i]
		i++
		p.wg.Add(2)
		go p.receive(conn, v6, id, recs)
		go p.send(ctx, conn, v6, targets, id, interval, recs)
	}
	return recs, nil
}

func (p *pinger) send(ctx context.Context, conn *icmp.PacketConn, v6 bool, targets []netip.Addr, id int, interval time.Duration, recs map[netip.Addr]*PingRecord) {
	defer p.wg.Done()
	// Closing the socket here ends receive too.
	defer conn.Close()
	typ := icmp.Type(ipv4.ICMPTypeEcho)
	if v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		// For IPv6 the kernel fills in the checksum.
		b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq & 0xffff, Data: []byte("vipd-lab")}}).Marshal(nil)
		if err != nil {
			p.fail(err)
			return
		}
		for _, ip := range targets {
			r := recs[ip]
			r.mu.Lock()
			r.echoes = append(r.echoes, Echo{Seq: seq, Sent: time.Now()})
			r.mu.Unlock()
			// A failed send (e.g. neighbour unreachable) is a lost echo, not the end.
			_, _ = conn.WriteTo(b, &net.IPAddr{IP: ip.AsSlice()})
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (p *pinger) receive(conn *icmp.PacketConn, v6 bool, id int, recs map[netip.Addr]*PingRecord) {
	defer p.wg.Done()
	proto, reply := 1, icmp.Type(ipv4.ICMPTypeEchoReply)
	if v6 {
		proto, reply = 58, ipv6.ICMPTypeEchoReply
	}
	buf := make([]byte, 1500)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.fail(err)
			}
			return
		}
		now := time.Now()
		pa, ok := peer.(*net.IPAddr)
		if !ok {
			continue
		}
		src, ok := netip.AddrFromSlice(pa.IP)
		if !ok {
			continue
		}
		r := recs[src.Unmap()]
		if r == nil {
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

func (p *pinger) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// Close stops the pings, for the lab's clean-up.
func (p *pinger) Close() error {
	p.stop.Do(func() {
		p.cancel()
		p.wg.Wait()
	})
	return nil
}

// Stop ends the loop (every target of the same PingMany) and waits until it
// has ended. Echoes still in flight stay unanswered.
func (r *PingRecord) Stop() { _ = r.p.Close() }

// Close is Stop, for the lab's clean-up.
func (r *PingRecord) Close() error {
	r.Stop()
	return nil
}

// Err returns the first error that ended or disturbed the loop, if any.
func (r *PingRecord) Err() error {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.p.err
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
