// Package conflict finds hosts other than vipd's nodes that answer for a
// VIP: before an address is first assigned, a short probe (RFC 5227's ARP
// probe, and for IPv6 a neighbour solicitation from the unspecified
// address, as duplicate address detection sends); while it is held, any
// ARP packet or neighbour advertisement for it from a foreign MAC.
//
// A foreign answer means someone else uses the address: taking it would
// split the clients between two hosts. vipd then does not take it and says
// so (an Event, a metric, vipd status).
package conflict

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// Answer is a foreign host seen answering for an address.
type Answer struct {
	IP  netip.Addr
	MAC net.HardwareAddr
	At  time.Time
}

// Detector listens on one interface for ARP packets and neighbour
// advertisements, and sends probes.
type Detector struct {
	ifi     *net.Interface
	arp, nd *packet.Conn
	// ours reports whether a MAC belongs to a vipd node (this one or
	// another agent's): those are failovers, not conflicts.
	ours func(net.HardwareAddr) bool
	done chan struct{}

	mu     sync.Mutex
	probes map[netip.Addr]chan net.HardwareAddr // addresses being probed
	watch  func(Answer)                         // foreign answers for held addresses
	held   map[netip.Addr]bool
	// filtered is what the sockets' filters let through, sorted; nil after
	// a failed update, so that the next one is tried.
	filtered     []netip.Addr
	filterFailed bool
	log          *slog.Logger
	read         func(netip.Addr) // tests: every address a reader got a packet about
}

// New opens the sockets on ifi. ours tells vipd's own MACs; watch receives
// foreign packets about the addresses given to SetHeld; log (nil: none)
// receives failures to update the sockets' filters. Close ends it.
func New(ifi *net.Interface, ours func(net.HardwareAddr) bool, watch func(Answer), log *slog.Logger) (*Detector, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Detector{ifi: ifi, ours: ours, watch: watch, done: make(chan struct{}), log: log,
		probes: map[netip.Addr]chan net.HardwareAddr{}, held: map[netip.Addr]bool{}}
	// Until SetHeld or Probe names an address, the filters let nothing
	// through (filter.go).
	arpNone, err := arpFilter(nil)
	if err != nil {
		return nil, fmt.Errorf("assembling ARP filter: %w", err)
	}
	naNone, err := naFilter(nil)
	if err != nil {
		return nil, fmt.Errorf("assembling neighbour advertisement filter: %w", err)
	}
	if d.arp, err = packet.Listen(ifi, packet.Datagram, unix.ETH_P_ARP, &packet.Config{Filter: arpNone}); err != nil {
		return nil, fmt.Errorf("listening for ARP on %s: %w", ifi.Name, err)
	}
	if d.nd, err = packet.Listen(ifi, packet.Datagram, unix.ETH_P_IPV6, &packet.Config{Filter: naNone}); err != nil {
		d.arp.Close()
		return nil, fmt.Errorf("listening for neighbour advertisements on %s: %w", ifi.Name, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); d.readARP() }()
	go func() { defer wg.Done(); d.readNA() }()
	go func() { wg.Wait(); close(d.done) }()
	return d, nil
}

const ipv6NA = 136

// Close stops listening.
func (d *Detector) Close() error {
	err := errors.Join(d.arp.Close(), d.nd.Close())
	<-d.done
	return err
}

// SetHeld sets the addresses watched while held.
func (d *Detector) SetHeld(ips []netip.Addr) {
	m := make(map[netip.Addr]bool, len(ips))
	for _, ip := range ips {
		m[ip] = true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.held = m
	d.filterLocked()
}

// filterLocked gives the sockets' filters the addresses now watched, held
// or probed, if they changed. A packet that slipped through an older
// filter is still checked against the maps in seen.
func (d *Detector) filterLocked() {
	watch := make([]netip.Addr, 0, len(d.held)+len(d.probes))
	for a := range d.held {
		watch = append(watch, a)
	}
	for a := range d.probes {
		if !d.held[a] {
			watch = append(watch, a)
		}
	}
	slices.SortFunc(watch, netip.Addr.Compare)
	if d.filtered != nil && slices.Equal(watch, d.filtered) {
		return
	}
	if err := d.setFilters(watch); err != nil {
		// Not fatal: the old filter stays, and the failure is said until a
		// filter is set again.
		d.filtered = nil
		if !d.filterFailed {
			d.filterFailed = true
			d.log.Warn("setting the conflict readers' filters; answers for newly held or probed addresses may be missed", "err", err)
		}
		return
	}
	if d.filterFailed {
		d.filterFailed = false
		d.log.Info("conflict readers' filters set again")
	}
	d.filtered = watch
}

func (d *Detector) setFilters(watch []netip.Addr) error {
	f4, err := arpFilter(watch)
	if err != nil {
		return fmt.Errorf("assembling ARP filter: %w", err)
	}
	f6, err := naFilter(watch)
	if err != nil {
		return fmt.Errorf("assembling neighbour advertisement filter: %w", err)
	}
	if err := d.arp.SetBPF(f4); err != nil {
		return fmt.Errorf("setting ARP filter on %s: %w", d.ifi.Name, err)
	}
	if err := d.nd.SetBPF(f6); err != nil {
		return fmt.Errorf("setting neighbour advertisement filter on %s: %w", d.ifi.Name, err)
	}
	return nil
}

// Probe asks twice, wait/2 apart, whether any host has each of ips, and
// returns the foreign MACs that answered within wait. It takes about wait.
func (d *Detector) Probe(ctx context.Context, ips []netip.Addr, wait time.Duration) (map[netip.Addr]net.HardwareAddr, error) {
	chans := map[netip.Addr]chan net.HardwareAddr{}
	d.mu.Lock()
	for _, ip := range ips {
		ch := make(chan net.HardwareAddr, 1)
		chans[ip] = ch
		d.probes[ip] = ch
	}
	d.filterLocked()
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		for _, ip := range ips {
			delete(d.probes, ip)
		}
		// The filters keep letting the probed addresses through: most are
		// held next, and SetHeld then finds the filters as it wants them
		// (setting one costs the kernel a new program per socket). What
		// passes without being watched any more is dropped by the reader.
		d.mu.Unlock()
	}()
	var errs []error
	for round := range 2 {
		for _, ip := range ips {
			if err := d.send(ip); err != nil && round == 0 {
				errs = append(errs, err)
			}
		}
		t := time.NewTimer(wait / 2)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	out := map[netip.Addr]net.HardwareAddr{}
	for ip, ch := range chans {
		select {
		case mac := <-ch:
			out[ip] = mac
		default:
		}
	}
	return out, errors.Join(errs...)
}

func (d *Detector) send(ip netip.Addr) error {
	if ip.Is4() {
		// RFC 5227: sender IP 0.0.0.0, so no host's cache changes.
		p, err := arp.NewPacket(arp.OperationRequest, d.ifi.HardwareAddr, netip.IPv4Unspecified(), ethernet.Broadcast, ip)
		if err != nil {
			return err
		}
		b, err := p.MarshalBinary()
		if err != nil {
			return err
		}
		if _, err := d.arp.WriteTo(b, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
			return fmt.Errorf("probing for %s: %w", ip, err)
		}
		return nil
	}
	group, err := ndp.SolicitedNodeMulticast(ip)
	if err != nil {
		return err
	}
	// As duplicate address detection: from ::, without our link-layer
	// address; an owner answers to all nodes.
	icmp, err := ndp.MarshalMessageChecksum(&ndp.NeighborSolicitation{TargetAddress: ip}, netip.IPv6Unspecified(), group)
	if err != nil {
		return err
	}
	g := group.As16()
	dst := net.HardwareAddr{0x33, 0x33, g[12], g[13], g[14], g[15]}
	if _, err := d.nd.WriteTo(IPv6Packet(netip.IPv6Unspecified(), group, icmp), &packet.Addr{HardwareAddr: dst}); err != nil {
		return fmt.Errorf("probing for %s: %w", ip, err)
	}
	return nil
}

// IPv6Packet wraps an ICMPv6 message in an IPv6 header with hop limit 255,
// as neighbour discovery requires, for a packet socket.
func IPv6Packet(src, dst netip.Addr, icmp []byte) []byte {
	b := make([]byte, 40, 40+len(icmp))
	b[0] = 6 << 4
	binary.BigEndian.PutUint16(b[4:6], uint16(len(icmp)))
	b[6] = unix.IPPROTO_ICMPV6
	b[7] = 255
	s, t := src.As16(), dst.As16()
	copy(b[8:24], s[:])
	copy(b[24:40], t[:])
	return append(b, icmp...)
}

func (d *Detector) readARP() {
	buf := make([]byte, 1500)
	for {
		n, _, err := d.arp.ReadFrom(buf)
		if err != nil {
			return
		}
		var p arp.Packet
		if p.UnmarshalBinary(buf[:n]) != nil || !p.SenderIP.IsValid() || p.SenderIP.IsUnspecified() {
			continue
		}
		d.seen(p.SenderIP, p.SenderHardwareAddr)
	}
}

// Advertised reads a neighbour advertisement from an IPv6 packet (header
// included) that came from the MAC from: the address it is for, and the
// MAC it gives for it (its target link-layer option, else the sender's).
func Advertised(pkt []byte, from net.HardwareAddr) (target netip.Addr, mac net.HardwareAddr, ok bool) {
	if len(pkt) < 40 {
		return netip.Addr{}, nil, false
	}
	m, err := ndp.ParseMessage(pkt[40:])
	if err != nil {
		return netip.Addr{}, nil, false
	}
	na, isNA := m.(*ndp.NeighborAdvertisement)
	if !isNA {
		return netip.Addr{}, nil, false
	}
	mac = from
	for _, o := range na.Options {
		if l, isLL := o.(*ndp.LinkLayerAddress); isLL && l.Direction == ndp.Target {
			mac = l.Addr
		}
	}
	return na.TargetAddress, mac, true
}

func (d *Detector) readNA() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.nd.ReadFrom(buf)
		if err != nil {
			return
		}
		if target, mac, ok := Advertised(buf[:n], from.(*packet.Addr).HardwareAddr); ok {
			d.seen(target, mac)
		}
	}
}

// seen handles a packet in which mac claims ip.
func (d *Detector) seen(ip netip.Addr, mac net.HardwareAddr) {
	d.mu.Lock()
	ch := d.probes[ip]
	held := d.held[ip]
	read := d.read
	d.mu.Unlock()
	if read != nil {
		read(ip)
	}
	if ch == nil && !held || len(mac) == 0 || mac.String() == d.ifi.HardwareAddr.String() || d.ours(mac) {
		return
	}
	if ch != nil {
		select {
		case ch <- mac:
		default:
		}
	}
	if held && d.watch != nil {
		d.watch(Answer{IP: ip, MAC: mac, At: time.Now()})
	}
}
