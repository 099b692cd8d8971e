package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/vipd/vipd/internal/conflict"
)

// Source addresses of the client's probes, one per round in turn: an
// answer names the address it answers, so a late answer is counted in
// the round that asked, not the next one. No station has them, so the
// answers are not for the client's kernel: an NA to them is dropped by
// its IP layer, and an ARP reply creates no entry.
func probeSources() [2][2]netip.Addr {
	return [2][2]netip.Addr{
		{netip.MustParseAddr("198.51.100.250"), netip.MustParseAddr("198.51.100.251")},
		{netip.MustParseAddr("2001:db8:100::250"), netip.MustParseAddr("2001:db8:100::251")},
	}
}

// AnswerRound is one question "who has this address?" and the MACs that
// answered it.
type AnswerRound struct {
	At   time.Time
	MACs []string
}

// Answers asks, from the client, who has each of a set of addresses every
// interval (ARP requests for IPv4, neighbour solicitations for IPv6) and
// records who answers: which stations' kernels answer for a VIP, as a
// client resolving it would see.
type Answers struct {
	arp, nd *packet.Conn
	stop    context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once

	mu      sync.Mutex
	rounds  map[netip.Addr][]AnswerRound
	err     error
	closing bool // errors from here on are the sockets closing
}

// WatchAnswers starts asking about ips every interval until ctx is done,
// Close is called or the lab closes.
func (c *Client) WatchAnswers(ctx context.Context, ips []netip.Addr, interval time.Duration) (*Answers, error) {
	a := &Answers{rounds: map[netip.Addr][]AnswerRound{}}
	for _, ip := range ips {
		a.rounds[ip] = nil
	}
	// Only neighbour advertisements reach the IPv6 socket: the client's
	// pings must not be copied to it.
	naOnly, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 6, Size: 1}, // next header
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_ICMPV6, SkipTrue: 3},
		bpf.LoadAbsolute{Off: 40, Size: 1}, // ICMPv6 type
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 136, SkipTrue: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		return nil, fmt.Errorf("assembling BPF filter: %w", err)
	}
	err = InNetns(c.Netns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		if a.arp, err = packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, nil); err != nil {
			return err
		}
		a.nd, err = packet.Listen(ifi, packet.Datagram, unix.ETH_P_IPV6, &packet.Config{Filter: naOnly})
		return err
	})
	if err != nil {
		a.closeConns()
		return nil, fmt.Errorf("opening probe sockets on %s: %w", c.Name, err)
	}
	var frames [2][]probeFrame
	for k := range 2 {
		for _, ip := range ips {
			f, err := probeFor(c.MAC, ip, k)
			if err != nil {
				a.closeConns()
				return nil, err
			}
			frames[k] = append(frames[k], f)
		}
	}
	if err := c.lab.track(a); err != nil {
		a.closeConns()
		return nil, err
	}
	ctx, a.stop = context.WithCancel(ctx)
	a.wg.Add(3)
	go a.readARP()
	go a.readNA()
	go a.ask(ctx, frames, interval)
	return a, nil
}

type probeFrame struct {
	ip   netip.Addr
	b    []byte
	dst  net.HardwareAddr
	conn func(*Answers) *packet.Conn
}

// probeFor builds the question about ip in rounds of parity k: a
// broadcast ARP request, or a neighbour solicitation to ip's
// solicited-node group, from the round's probe source.
func probeFor(mac net.HardwareAddr, ip netip.Addr, k int) (probeFrame, error) {
	src := probeSources()
	if ip.Is4() {
		p, err := arp.NewPacket(arp.OperationRequest, mac, src[0][k], ethernet.Broadcast, ip)
		if err != nil {
			return probeFrame{}, err
		}
		b, err := p.MarshalBinary()
		return probeFrame{ip: ip, b: b, dst: ethernet.Broadcast, conn: func(a *Answers) *packet.Conn { return a.arp }}, err
	}
	group, err := ndp.SolicitedNodeMulticast(ip)
	if err != nil {
		return probeFrame{}, err
	}
	ns := &ndp.NeighborSolicitation{TargetAddress: ip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: mac}}}
	icmp, err := ndp.MarshalMessageChecksum(ns, src[1][k], group)
	if err != nil {
		return probeFrame{}, err
	}
	b := conflict.IPv6Packet(src[1][k], group, icmp)
	g := group.As16()
	dst := net.HardwareAddr{0x33, 0x33, g[12], g[13], g[14], g[15]}
	return probeFrame{ip: ip, b: b, dst: dst, conn: func(a *Answers) *packet.Conn { return a.nd }}, nil
}

func (a *Answers) ask(ctx context.Context, frames [2][]probeFrame, interval time.Duration) {
	defer a.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for round := 0; ; round++ {
		now := time.Now()
		a.mu.Lock()
		for _, f := range frames[round%2] {
			a.rounds[f.ip] = append(a.rounds[f.ip], AnswerRound{At: now})
		}
		a.mu.Unlock()
		for _, f := range frames[round%2] {
			if _, err := f.conn(a).WriteTo(f.b, &packet.Addr{HardwareAddr: f.dst}); err != nil && ctx.Err() == nil {
				a.fail(fmt.Errorf("asking who has %s: %w", f.ip, err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Answers) readARP() {
	defer a.wg.Done()
	src := probeSources()
	buf := make([]byte, 1500)
	for {
		n, _, err := a.arp.ReadFrom(buf)
		if err != nil {
			a.readFailed(err)
			return
		}
		var p arp.Packet
		if p.UnmarshalBinary(buf[:n]) != nil || p.Operation != arp.OperationReply {
			continue
		}
		if k := slices.Index(src[0][:], p.TargetIP); k >= 0 {
			a.answered(p.SenderIP, p.SenderHardwareAddr, k)
		}
	}
}

func (a *Answers) readNA() {
	defer a.wg.Done()
	src := probeSources()
	buf := make([]byte, 1500)
	for {
		n, from, err := a.nd.ReadFrom(buf)
		if err != nil {
			a.readFailed(err)
			return
		}
		if n < 40 {
			continue
		}
		k := slices.Index(src[1][:], netip.AddrFrom16([16]byte(buf[24:40])))
		if k < 0 {
			continue
		}
		if target, mac, ok := conflict.Advertised(buf[:n], from.(*packet.Addr).HardwareAddr); ok {
			a.answered(target, mac, k)
		}
	}
}

// answered adds mac to the latest round about ip of parity k: the round
// that asked, even if the answer comes after the next one began.
func (a *Answers) answered(ip netip.Addr, mac net.HardwareAddr, k int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rs := a.rounds[ip]
	i := len(rs) - 1
	if i >= 0 && i%2 != k {
		i--
	}
	if i < 0 {
		return
	}
	r := &rs[i]
	if s := mac.String(); !slices.Contains(r.MACs, s) {
		r.MACs = append(r.MACs, s)
	}
}

func (a *Answers) readFailed(err error) {
	if !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrClosed) {
		a.fail(fmt.Errorf("reading answers: %w", err))
	}
}

func (a *Answers) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err == nil && !a.closing {
		a.err = err
	}
}

// Rounds returns the questions about ip so far, oldest first. The last one
// may still be waiting for its answers.
func (a *Answers) Rounds(ip netip.Addr) []AnswerRound {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]AnswerRound, len(a.rounds[ip]))
	for i, r := range a.rounds[ip] {
		out[i] = AnswerRound{At: r.At, MACs: slices.Clone(r.MACs)}
	}
	return out
}

// Err is the first error met while asking or reading.
func (a *Answers) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Close stops asking; what was recorded stays readable.
func (a *Answers) Close() error {
	a.once.Do(func() {
		a.mu.Lock()
		a.closing = true
		a.mu.Unlock()
		if a.stop != nil {
			a.stop()
		}
		a.closeConns()
		a.wg.Wait()
	})
	return nil
}

func (a *Answers) closeConns() {
	for _, c := range []*packet.Conn{a.arp, a.nd} {
		if c != nil {
			c.Close()
		}
	}
}
