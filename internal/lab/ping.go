package lab

import (
	"context"
	"encoding/binary"
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
	"golang.org/x/sys/unix"
)

// Echo is one echo request of a PingLoop.
type Echo struct {
	Seq  int       // 0, 1, 2, ... in send order
	Sent time.Time // when it was sent
	// Reply is when its first reply reached the client's namespace, as
	// the kernel stamped it on arrival (SO_TIMESTAMPNS): a test process
	// that a loaded machine schedules late does not move it. Zero if no
	// reply came.
	Reply time.Time
	Dups  int // replies after the first: more than one station answered
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
	cancel   context.CancelFunc
	interval time.Duration // between two echoes to each target
	wg       sync.WaitGroup
	stop     sync.Once
	conns    []*net.IPConn

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
	p := &pinger{cancel: cancel, interval: interval}
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
		var conn *net.IPConn
		err := InNetns(c.Netns, func() error {
			pc, err := net.ListenPacket(network, laddr)
			if err != nil {
				return err
			}
			conn = pc.(*net.IPConn)
			if err := stampArrivals(conn); err != nil {
				conn.Close()
				return err
			}
			return nil
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
		go p.send(ctx, conn, v6, targets, id, recs)
	}
	return recs, nil
}

func (p *pinger) send(ctx context.Context, conn *net.IPConn, v6 bool, targets []netip.Addr, id int, recs map[netip.Addr]*PingRecord) {
	defer p.wg.Done()
	// Closing the socket here ends receive too.
	defer conn.Close()
	typ := icmp.Type(ipv4.ICMPTypeEcho)
	if v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	tick := time.NewTicker(p.interval)
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

func (p *pinger) receive(conn *net.IPConn, v6 bool, id int, recs map[netip.Addr]*PingRecord) {
	defer p.wg.Done()
	proto, reply := 1, icmp.Type(ipv4.ICMPTypeEchoReply)
	if v6 {
		proto, reply = 58, ipv6.ICMPTypeEchoReply
	}
	buf := make([]byte, 1500)
	oob := make([]byte, 128)
	for {
		n, oobn, _, peer, err := conn.ReadMsgIP(buf, oob)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.fail(err)
			}
			return
		}
		now, ok := arrival(oob[:oobn])
		if !ok {
			p.fail(errors.New("an echo reply came without the kernel's arrival time (SO_TIMESTAMPNS)"))
			return
		}
		msg := buf[:n]
		if !v6 {
			// A raw IPv4 socket reads the IP header too.
			if len(msg) < 20 || msg[0]>>4 != 4 || len(msg) < int(msg[0]&0x0f)*4 {
				continue
			}
			msg = msg[int(msg[0]&0x0f)*4:]
		}
		if peer == nil {
			continue
		}
		src, ok := netip.AddrFromSlice(peer.IP)
		if !ok {
			continue
		}
		r := recs[src.Unmap()]
		if r == nil {
			continue
		}
		m, err := icmp.ParseMessage(proto, msg)
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
// in send order, the largest time between the reply to one and the reply to
// the next answered one. The window should extend past recovery, or the
// outage has no closing reply. Zero when fewer than two were answered.
//
// It is what the client saw, not what the test process saw: replies are
// timed by the kernel on arrival, and a stretch in which the loop sent
// nothing (the test process not scheduled on a loaded machine) is not
// counted while no echo was waiting for an answer. Waiting starts at the
// reply, or at one interval before the next echo went out if that was
// later.
func (r *PingRecord) LongestGap(from, to time.Time) time.Duration {
	echoes := r.Echoes()
	interval := r.p.interval
	var gap time.Duration
	prev := -1 // the last answered echo
	for i, e := range echoes {
		if e.Sent.Before(from) || e.Sent.After(to) || e.Reply.IsZero() {
			continue
		}
		if prev >= 0 {
			start := echoes[prev].Reply
			if next := echoes[prev+1].Sent.Add(-interval); next.After(start) {
				start = next
			}
			gap = max(gap, e.Reply.Sub(start))
		}
		prev = i
	}
	return gap
}

// stampArrivals asks the kernel to stamp each packet conn reads with the
// time it arrived (SO_TIMESTAMPNS).
func stampArrivals(conn *net.IPConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("asking for arrival times (SO_TIMESTAMPNS): %w", serr)
	}
	return nil
}

// arrival reads the kernel's arrival time from a packet's control messages.
func arrival(oob []byte) (time.Time, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return time.Unix(sec, nsec), true
		}
	}
	return time.Time{}, false
}
