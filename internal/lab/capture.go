package lab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Announcement is an ARP packet or ICMPv6 neighbour advertisement seen on the
// client's eth0: some station telling the segment which MAC holds IP.
type Announcement struct {
	Time time.Time
	IP   netip.Addr       // ARP sender IP, or NA target address
	MAC  net.HardwareAddr // ARP sender hardware address, or NA target link-layer address (nil if absent)
	// Ethernet source and destination of the frame.
	SrcMAC, DstMAC net.HardwareAddr
	Kind           string // "arp-request", "arp-reply" or "na"
	// Gratuitous: an ARP whose sender and target IP are the same, or an NA
	// that is not solicited.
	Gratuitous bool
	// NA flags.
	Override, Solicited bool
}

// Capture records announcements reaching the client until closed.
type Capture struct {
	conn   *packet.Conn
	self   net.HardwareAddr
	done   chan struct{}
	closer sync.Once

	mu      sync.Mutex
	anns    []Announcement
	changed chan struct{} // closed and replaced when an announcement arrives
	err     error         // why reading stopped, if not Close
}

// Capture starts recording, from a packet socket on the client's eth0, the
// ARP packets and neighbour advertisements other stations send. It stops
// when ctx is done, on Close, or when the lab closes.
func (c *Client) Capture(ctx context.Context) (*Capture, error) {
	var conn *packet.Conn
	err := InNetns(c.Netns, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening capture on %s: %w", c.Name, err)
	}
	cp := &Capture{conn: conn, self: c.MAC, done: make(chan struct{}), changed: make(chan struct{})}
	if err := c.lab.track(cp); err != nil {
		conn.Close()
		return nil, err
	}
	go cp.read()
	go func() {
		select {
		case <-ctx.Done():
			cp.Close()
		case <-cp.done:
		}
	}()
	return cp, nil
}

// Announcements returns what was recorded so far, oldest first.
func (cp *Capture) Announcements() []Announcement {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]Announcement(nil), cp.anns...)
}

// WaitFor waits until an announcement matching match has been recorded
// (earlier ones count) and returns the first such one.
func (cp *Capture) WaitFor(ctx context.Context, match func(Announcement) bool) (Announcement, error) {
	seen := 0
	for {
		cp.mu.Lock()
		anns, changed, rerr := cp.anns[seen:], cp.changed, cp.err
		seen = len(cp.anns)
		cp.mu.Unlock()
		for _, a := range anns {
			if match(a) {
				return a, nil
			}
		}
		if rerr != nil {
			return Announcement{}, rerr
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Announcement{}, fmt.Errorf("waiting for an announcement: %w", ctx.Err())
		}
	}
}

// Close stops the capture; recorded announcements stay readable.
func (cp *Capture) Close() error {
	var err error
	cp.closer.Do(func() {
		err = cp.conn.Close()
		<-cp.done
	})
	return err
}

func (cp *Capture) read() {
	defer close(cp.done)
	buf := make([]byte, 65536)
	for {
		n, _, err := cp.conn.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("capture stopped: %w", err)
			} else {
				err = errors.New("capture closed")
			}
			cp.mu.Lock()
			cp.err = err
			close(cp.changed)
			cp.mu.Unlock()
			return
		}
		// decode's result may alias its input: give it its own copy.
		a, ok := decode(bytes.Clone(buf[:n]))
		if !ok || bytes.Equal(a.SrcMAC, cp.self) {
			continue // not an announcement, or the client's own
		}
		a.Time = time.Now()
		cp.mu.Lock()
		cp.anns = append(cp.anns, a)
		close(cp.changed)
		cp.changed = make(chan struct{})
		cp.mu.Unlock()
	}
}

// decode turns an Ethernet frame holding ARP or an ICMPv6 neighbour
// advertisement into an Announcement.
func decode(b []byte) (Announcement, bool) {
	var f ethernet.Frame
	if err := f.UnmarshalBinary(b); err != nil {
		return Announcement{}, false
	}
	a := Announcement{SrcMAC: f.Source, DstMAC: f.Destination}
	switch f.EtherType {
	case ethernet.EtherTypeARP:
		var p arp.Packet
		if err := p.UnmarshalBinary(f.Payload); err != nil {
			return Announcement{}, false
		}
		a.IP, a.MAC = p.SenderIP, p.SenderHardwareAddr
		a.Gratuitous = p.SenderIP == p.TargetIP
		switch p.Operation {
		case arp.OperationRequest:
			a.Kind = "arp-request"
		case arp.OperationReply:
			a.Kind = "arp-reply"
		default:
			return Announcement{}, false
		}
		return a, true
	case ethernet.EtherTypeIPv6:
		const hdrLen = 40
		pl := f.Payload
		if len(pl) < hdrLen || pl[6] != 58 { // next header: ICMPv6, no extension headers
			return Announcement{}, false
		}
		end := min(hdrLen+int(binary.BigEndian.Uint16(pl[4:6])), len(pl))
		body := pl[hdrLen:end]
		if len(body) == 0 || ipv6.ICMPType(body[0]) != ipv6.ICMPTypeNeighborAdvertisement {
			return Announcement{}, false
		}
		m, err := ndp.ParseMessage(body)
		if err != nil {
			return Announcement{}, false
		}
		na, ok := m.(*ndp.NeighborAdvertisement)
		if !ok {
			return Announcement{}, false
		}
		a.Kind = "na"
		a.IP = na.TargetAddress
		a.Override, a.Solicited = na.Override, na.Solicited
		a.Gratuitous = !na.Solicited
		for _, o := range na.Options {
			if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Target {
				a.MAC = lla.Addr
			}
		}
		return a, true
	}
	return Announcement{}, false
}
