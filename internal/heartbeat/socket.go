package heartbeat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socket is a UDP socket that Go's network poller does not know about.
// The monitor reads it only when its loop wakes anyway (each Interval, or
// sooner for a reason of its own), never because a datagram arrived: with
// a poller-registered socket, every beat of every peer woke the process,
// hundreds of times a second, which cost an idle agent more CPU than the
// beats themselves (docs/scale-runs.md). Its methods are safe for
// concurrent use; after close they return net.ErrClosed.
type socket struct {
	mu sync.RWMutex
	fd int // -1 once closed
}

// listenUDP binds a non-blocking UDP socket like net.ListenUDP does:
// "udp4" an IPv4 socket; "udp6" an IPv6-only one; "udp" (for [::]) an IPv6
// socket that takes IPv4 as well.
func listenUDP(network string, addr netip.AddrPort) (*socket, netip.AddrPort, error) {
	family := unix.AF_INET6
	if network == "udp4" {
		family = unix.AF_INET
	}
	sa, err := sockaddr(addr, family == unix.AF_INET6)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("socket: %w", err)
	}
	if family == unix.AF_INET6 {
		v6only := 1
		if network == "udp" {
			v6only = 0
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			unix.Close(fd)
			return nil, netip.AddrPort{}, fmt.Errorf("setsockopt IPV6_V6ONLY: %w", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, netip.AddrPort{}, fmt.Errorf("bind: %w", err)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, netip.AddrPort{}, fmt.Errorf("getsockname: %w", err)
	}
	return &socket{fd: fd}, sockaddrPort(local), nil
}

// sockaddr is a as the kernel takes it for a socket of family AF_INET6
// (v6; IPv4 as ::ffff:a.b.c.d on a dual-stack socket) or AF_INET.
func sockaddr(a netip.AddrPort, v6 bool) (unix.Sockaddr, error) {
	switch {
	case v6:
		sa := &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
		if z := a.Addr().Zone(); z != "" {
			ifi, err := netInterfaceIndex(z)
			if err != nil {
				return nil, err
			}
			sa.ZoneId = uint32(ifi)
		}
		return sa, nil
	case a.Addr().Is4():
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}, nil
	}
	return nil, errors.New("an IPv6 address on an IPv4 socket")
}

// sockaddrPort converts a socket address of the kernel's. A scoped IPv6
// address (link-local, rare for node addresses) gets its interface's name
// as zone, as the net package gives it, or the index if that is gone.
func sockaddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			zone := strconv.Itoa(int(sa.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
			a = a.WithZone(zone)
		}
		return netip.AddrPortFrom(a, uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// sendto sends one datagram without waiting: flags should hold
// MSG_DONTWAIT, since the socket is never polled for room.
func (s *socket) sendto(b []byte, flags int, to unix.Sockaddr) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.fd < 0 {
		return net.ErrClosed
	}
	return unix.Sendto(s.fd, b, flags, to)
}

// recvfrom reads one datagram if one is waiting, and unix.EAGAIN if none
// is.
func (s *socket) recvfrom(buf []byte) (int, netip.AddrPort, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.fd < 0 {
		return 0, netip.AddrPort{}, net.ErrClosed
	}
	if len(buf) == 0 {
		return 0, netip.AddrPort{}, unix.EINVAL
	}
	// The system call itself rather than unix.Recvfrom, which allocates
	// the sender's address twice for every datagram: hundreds of beats a
	// second, a steady trickle of garbage for the collector.
	var rsa unix.RawSockaddrAny
	salen := uint32(unix.SizeofSockaddrAny)
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(s.fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
		unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&salen)))
	if errno != 0 {
		return 0, netip.AddrPort{}, errno
	}
	return int(n), rawAddrPort(&rsa), nil
}

// rawAddrPort is sockaddrPort for an address as the kernel wrote it.
func rawAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		if sa.Scope_id != 0 {
			// Rare for node addresses: the zone's name is looked up.
			return sockaddrPort(&unix.SockaddrInet6{Port: int(ntohs(sa.Port)), ZoneId: sa.Scope_id, Addr: sa.Addr})
		}
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// ntohs reads a port as the kernel stores it, in network byte order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// close closes the socket once; later calls return net.ErrClosed.
func (s *socket) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fd < 0 {
		return net.ErrClosed
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil && !errors.Is(err, unix.EINTR) {
		return err
	}
	return nil
}
