package address

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The netlink package (v1.3.1) neither sets nor reports IFA_PROTO, so the
// address requests are built here with its nl package.

// ifaProto is IFA_PROTO from linux/if_addr.h (Linux 5.18); x/sys/unix does
// not name it.
const ifaProto = 11

// kernelAddr is one address as the kernel reports it.
type kernelAddr struct {
	addr      netip.Addr
	prefixLen int
	index     int
	proto     uint8
	flags     uint32
}

func (n *Namespace) request(typ, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(typ, flags)
	if n.sockets != nil {
		req.Sockets = n.sockets
	}
	return req
}

// dump lists the addresses of family (AF_UNSPEC: all) in the namespace.
func (n *Namespace) dump(family int) ([]kernelAddr, error) {
	var err error
	// A dump that raced with an address change is flagged by the kernel;
	// asking again gives a consistent one.
	for range 3 {
		var out []kernelAddr
		req := n.request(unix.RTM_GETADDR, unix.NLM_F_DUMP)
		req.AddData(nl.NewIfAddrmsg(family))
		var msgs [][]byte
		msgs, err = req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
		if errors.Is(err, nl.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("dumping addresses: %w", err)
		}
		for _, m := range msgs {
			a, err := parseAddr(m)
			if err != nil {
				return nil, err
			}
			if family == unix.AF_UNSPEC || family == familyOf(a.addr) {
				out = append(out, a)
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("dumping addresses: %w", err)
}

func parseAddr(m []byte) (kernelAddr, error) {
	if len(m) < unix.SizeofIfAddrmsg {
		return kernelAddr{}, fmt.Errorf("short address message (%d bytes)", len(m))
	}
	msg := nl.DeserializeIfAddrmsg(m)
	a := kernelAddr{prefixLen: int(msg.Prefixlen), index: int(msg.Index), flags: uint32(msg.Flags)}
	var local, address netip.Addr
	// The attributes are read in place: a listing parses every address of
	// the node on every pass that applies, and the netlink packages' parsers
	// allocate a slice of attributes per address, or copy each one, which
	// was most of what a listing allocated.
	for b := m[msg.Len():]; len(b) >= unix.SizeofRtAttr; {
		l := int(nl.NativeEndian().Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return kernelAddr{}, fmt.Errorf("parsing address message: attribute of %d bytes in %d", l, len(b))
		}
		v := b[unix.SizeofRtAttr:l]
		switch nl.NativeEndian().Uint16(b[2:4]) {
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(v)
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(v)
		case unix.IFA_FLAGS:
			if len(v) >= 4 {
				a.flags = nl.NativeEndian().Uint32(v)
			}
		case ifaProto:
			if len(v) >= 1 {
				a.proto = v[0]
			}
		}
		b = b[min(len(b), (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1)):]
	}
	// IFA_LOCAL is the address itself; IFA_ADDRESS is the peer of a
	// point-to-point address, and the only one IPv6 usually sends.
	a.addr = local
	if !a.addr.IsValid() {
		a.addr = address
	}
	return a, nil
}

// newAddr adds vip as a host address (/32 or /128), marked with Proto.
// With replace it updates an existing one instead (its lifetime). A
// lifetime of zero means forever.
func (n *Namespace) newAddr(index int, vip netip.Addr, lifetime time.Duration, replace bool) error {
	_, err := n.addrRequest(index, vip, lifetime, replace).Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func (n *Namespace) addrRequest(index int, vip netip.Addr, lifetime time.Duration, replace bool) *nl.NetlinkRequest {
	flags := unix.NLM_F_CREATE | unix.NLM_F_EXCL | unix.NLM_F_ACK
	if replace {
		flags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE | unix.NLM_F_ACK
	}
	req := n.request(unix.RTM_NEWADDR, flags)
	msg := nl.NewIfAddrmsg(familyOf(vip))
	msg.Prefixlen = uint8(vip.BitLen())
	msg.Index = uint32(index)
	msg.Scope = unix.RT_SCOPE_UNIVERSE
	if vip.Is6() {
		// A VIP moves between nodes; DAD would keep it unusable ("tentative")
		// for a second or more after every takeover.
		msg.Flags = unix.IFA_F_NODAD
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, vip.AsSlice()))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, vip.AsSlice()))
	if vip.Is6() {
		req.AddData(nl.NewRtAttr(unix.IFA_FLAGS, nl.Uint32Attr(unix.IFA_F_NODAD)))
	}
	if lifetime > 0 {
		secs := uint32(max(1, lifetime.Round(time.Second)/time.Second))
		ci := nl.IfaCacheInfo{IfaCacheinfo: unix.IfaCacheinfo{Valid: secs, Prefered: secs}}
		if vip.Is6() {
			// Deprecated at once: the kernel then never picks the VIP as the
			// source of the node's own connections, which would break when
			// the VIP moves. It still answers for it.
			ci.Prefered = 0
		}
		req.AddData(nl.NewRtAttr(unix.IFA_CACHEINFO, ci.Serialize()))
	}
	req.AddData(nl.NewRtAttr(ifaProto, nl.Uint8Attr(Proto)))
	return req
}

// replaceBatch is how many address updates go to the kernel in one send.
const replaceBatch = 128

// replaceAddrs is newAddr with replace for many VIPs of one interface. On
// the namespace's own socket the requests go in batches of one send each,
// and only the last of a batch asks for an acknowledgement: the kernel
// handles a batch in order and answers a failed request whether asked or
// not, so once the last is acknowledged every failure before it has been
// read. An agent renewing a hundred VIPs' lifetimes makes two system calls
// instead of two hundred. It returns why each VIP that failed did.
func (n *Namespace) replaceAddrs(index int, vips []netip.Addr, lifetime time.Duration) map[netip.Addr]error {
	fails := map[netip.Addr]error{}
	sh := n.sockets[unix.NETLINK_ROUTE]
	if sh == nil {
		for _, v := range vips {
			if err := n.newAddr(index, v, lifetime, true); err != nil {
				fails[v] = err
			}
		}
		return fails
	}
	for len(vips) > 0 {
		batch := vips[:min(replaceBatch, len(vips))]
		vips = vips[len(batch):]
		var buf []byte
		seqs := make(map[uint32]netip.Addr, len(batch))
		var last uint32
		for i, v := range batch {
			req := n.addrRequest(index, v, lifetime, true)
			if i < len(batch)-1 {
				req.Flags &^= unix.NLM_F_ACK
			}
			req.Seq = atomic.AddUint32(&sh.Seq, 1)
			seqs[req.Seq], last = v, req.Seq
			buf = append(buf, req.Serialize()...)
		}
		if err := exchange(sh.Socket, buf, seqs, last, fails); err != nil {
			for _, v := range batch {
				if fails[v] == nil {
					fails[v] = err
				}
			}
		}
	}
	return fails
}

// exchange sends the requests in buf and reads the answers until the one
// to the request numbered last, recording in fails the errors of the
// requests in seqs.
func exchange(s *nl.NetlinkSocket, buf []byte, seqs map[uint32]netip.Addr, last uint32, fails map[netip.Addr]error) error {
	s.Lock()
	defer s.Unlock()
	if err := unix.Sendto(s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending address updates: %w", err)
	}
	for {
		msgs, from, err := s.Receive()
		if err != nil {
			return fmt.Errorf("reading answers to address updates: %w", err)
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, m := range msgs {
			v, ok := seqs[m.Header.Seq]
			if !ok || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue // a late answer to an earlier request on the socket
			}
			if errno := int32(nl.NativeEndian().Uint32(m.Data[:4])); errno != 0 {
				fails[v] = syscall.Errno(-errno)
			}
			if m.Header.Seq == last {
				return nil
			}
		}
	}
}

// delAddr deletes exactly a (same address and prefix length).
func (n *Namespace) delAddr(index int, a kernelAddr) error {
	req := n.request(unix.RTM_DELADDR, unix.NLM_F_ACK)
	msg := nl.NewIfAddrmsg(familyOf(a.addr))
	msg.Prefixlen = uint8(a.prefixLen)
	msg.Index = uint32(index)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, a.addr.AsSlice()))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, a.addr.AsSlice()))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
