package address

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// LinkState is what the kernel says about an interface's link.
type LinkState struct {
	// Exists is false once the interface is gone.
	Exists bool
	// Up: administratively up and with carrier (IFF_UP and IFF_LOWER_UP).
	Up bool
	// Index is the interface's index; it changes when the interface is
	// deleted and made again.
	Index int
}

// WatchLink reports the state of the interface named like i now and at
// every change the kernel announces, until ctx ends. It subscribes to
// netlink's link notifications rather than polling, so a lost carrier is
// known within milliseconds.
func (i *Interface) WatchLink(ctx context.Context, report func(LinkState)) error {
	return i.ns.WatchLinks(ctx, func(name string, st LinkState) {
		if name == i.Name {
			report(st)
		}
	})
}

// AddrChange is an address removed from an interface, as the kernel
// announces it.
type AddrChange struct {
	Addr  netip.Addr
	Index int // the interface's index
}

// WatchRemovals reports every address removed from any interface of the
// namespace until ctx ends, from netlink's address notifications: a VIP
// deleted by hand, or by the kernel when the interface stops carrying its
// family, is known within milliseconds.
//
// The kernel also announces every renewal of an address's lifetime as an
// addition; an agent holding a hundred VIPs renews one every few
// milliseconds. A filter on the socket drops additions in the kernel, so
// that they wake no one.
func (i *Interface) WatchRemovals(ctx context.Context, report func(AddrChange)) error {
	s, err := i.ns.subscribe(unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR)
	if err != nil {
		return fmt.Errorf("watching addresses of %s: %w", i.Name, err)
	}
	if err := onlyType(s, unix.RTM_DELADDR); err != nil {
		s.Close()
		return fmt.Errorf("watching addresses of %s: %w", i.Name, err)
	}
	stop := context.AfterFunc(ctx, s.Close)
	defer stop()
	defer s.Close()
	for {
		msgs, from, err := s.Receive()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("watching addresses of %s: %w", i.Name, err)
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != unix.RTM_DELADDR {
				continue // queued before the filter was set
			}
			a, err := parseAddr(m.Data)
			if err != nil || !a.addr.IsValid() {
				continue
			}
			report(AddrChange{Addr: a.addr.Unmap(), Index: a.index})
		}
	}
}

// subscribe opens a netlink socket in the namespace that receives the
// route multicast groups given.
func (n *Namespace) subscribe(groups ...uint) (*nl.NetlinkSocket, error) {
	if n.nsh == nil {
		return nl.Subscribe(unix.NETLINK_ROUTE, groups...)
	}
	return nl.SubscribeAt(*n.nsh, netns.None(), unix.NETLINK_ROUTE, groups...)
}

// onlyType attaches a classic BPF filter to a netlink socket that keeps
// only messages of type typ. The type is in host byte order in the
// message header; a BPF load reads big-endian.
func onlyType(s *nl.NetlinkSocket, typ uint16) error {
	var b [2]byte
	nl.NativeEndian().PutUint16(b[:], typ)
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 2}, // nlmsg_type
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(binary.BigEndian.Uint16(b[:])), SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.RetConstant{Val: 0xffffffff},
	})
	if err != nil {
		return fmt.Errorf("assembling netlink filter: %w", err)
	}
	f := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		f[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	if err := unix.SetsockoptSockFprog(s.GetFd(), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}); err != nil {
		return fmt.Errorf("attaching netlink filter: %w", err)
	}
	return nil
}
