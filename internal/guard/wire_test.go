package guard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/vipd/vipd/internal/lab"
)

// asker asks, from B, who has a VIP, and tells whether A answered within
// wait.
type asker interface {
	ask(vip netip.Addr, wait time.Duration) (bool, error)
}

// arpAsker sends ARP requests and reads the replies.
type arpAsker struct{ c *arp.Client }

func newARPAsker(t *testing.T, ns, ifname string) *arpAsker {
	t.Helper()
	var c *arp.Client
	if err := lab.InNetns(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c, err = arp.Dial(ifi)
		return err
	}); err != nil {
		t.Fatalf("opening ARP client in %s: %v", ns, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &arpAsker{c: c}
}

func (a *arpAsker) ask(vip netip.Addr, wait time.Duration) (bool, error) {
	if err := a.c.Request(vip); err != nil {
		return false, err
	}
	if err := a.c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return false, err
	}
	for {
		p, _, err := a.c.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if p.Operation == arp.OperationReply && p.SenderIP == vip {
			return true, nil
		}
	}
}

// ndpAsker sends neighbour solicitations and reads the advertisements.
type ndpAsker struct {
	c   *ndp.Conn
	mac net.HardwareAddr
}

func newNDPAsker(t *testing.T, ns, ifname string) *ndpAsker {
	t.Helper()
	a := &ndpAsker{}
	if err := lab.InNetns(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		a.mac = ifi.HardwareAddr
		a.c, _, err = ndp.Listen(ifi, ndp.LinkLocal)
		if err != nil {
			return err
		}
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeNeighborAdvertisement)
		return a.c.SetICMPFilter(&f)
	}); err != nil {
		t.Fatalf("opening NDP socket in %s: %v", ns, err)
	}
	t.Cleanup(func() { _ = a.c.Close() })
	return a
}

func (a *ndpAsker) ask(vip netip.Addr, wait time.Duration) (bool, error) {
	snm, err := ndp.SolicitedNodeMulticast(vip)
	if err != nil {
		return false, err
	}
	ns := &ndp.NeighborSolicitation{
		TargetAddress: vip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: a.mac}},
	}
	if err := a.c.WriteTo(ns, nil, snm); err != nil {
		return false, err
	}
	if err := a.c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return false, err
	}
	for {
		m, _, _, err := a.c.ReadFrom()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if na, ok := m.(*ndp.NeighborAdvertisement); ok && na.Solicited && na.TargetAddress == vip {
			return true, nil
		}
	}
}

// seen is one ARP or neighbour discovery packet read on B's interface.
type seen struct {
	kind string     // "arp", "ns" or "na"
	ip   netip.Addr // ARP sender IP, NS source address, NA target address
}

// capture records the ARP and neighbour discovery packets that reach B.
type capture struct {
	mu    sync.Mutex
	pkts  []seen
	conn  *packet.Conn
	self  net.HardwareAddr // B's own frames are not recorded
	ended chan struct{}
}

func newCapture(t *testing.T, ns, ifname string) *capture {
	t.Helper()
	c := &capture{ended: make(chan struct{})}
	if err := lab.InNetns(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		c.self = ifi.HardwareAddr
		c.conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	}); err != nil {
		t.Fatalf("opening capture in %s: %v", ns, err)
	}
	go c.read()
	t.Cleanup(func() {
		_ = c.conn.Close()
		<-c.ended
	})
	return c
}

func (c *capture) read() {
	defer close(c.ended)
	buf := make([]byte, 2048)
	for {
		n, _, err := c.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if s, ok := decode(buf[:n], c.self); ok {
			c.mu.Lock()
			c.pkts = append(c.pkts, s)
			c.mu.Unlock()
		}
	}
}

// count tells how many packets of kind naming ip have been seen.
func (c *capture) count(kind string, ip netip.Addr) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.pkts {
		if s.kind == kind && s.ip == ip {
			n++
		}
	}
	return n
}

func decode(b []byte, self net.HardwareAddr) (seen, bool) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(b); err != nil || bytes.Equal(f.Source, self) {
		return seen{}, false
	}
	switch f.EtherType {
	case ethernet.EtherTypeARP:
		var p arp.Packet
		if err := p.UnmarshalBinary(f.Payload); err != nil {
			return seen{}, false
		}
		return seen{kind: "arp", ip: p.SenderIP}, true
	case ethernet.EtherTypeIPv6:
		pl := f.Payload
		if len(pl) < ipv6.HeaderLen || pl[6] != icmp6Proto {
			return seen{}, false
		}
		end := min(ipv6.HeaderLen+int(binary.BigEndian.Uint16(pl[4:6])), len(pl))
		m, err := ndp.ParseMessage(pl[ipv6.HeaderLen:end])
		if err != nil {
			return seen{}, false
		}
		switch m := m.(type) {
		case *ndp.NeighborSolicitation:
			src, _ := netip.AddrFromSlice(pl[8:24])
			return seen{kind: "ns", ip: src}, true
		case *ndp.NeighborAdvertisement:
			return seen{kind: "na", ip: m.TargetAddress}, true
		}
	}
	return seen{}, false
}
