package guard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The renewal of the dead-man switch, every 25 ms in the agent, is the
// guard's hot path. Through google/nftables each one cost the encoding of
// its messages and a page-sized buffer for every acknowledgement: with
// IPv4 and IPv6 VIPs answered, four of them, and together more than a
// quarter of everything an agent allocated while Services arrived, paid
// again in garbage collection (docs/guard.md). switchConn sends the same
// batch, byte for byte what google/nftables sends for FlushSet and
// SetAddElements (TestSwitchBatchMatchesLibrary), from a buffer it keeps,
// and reads the acknowledgements into another: a renewal allocates
// nothing. Everything else the guard does still goes through
// google/nftables.

// switchConn renews the alive elements on a netlink socket of its own.
type switchConn struct {
	conn *netlink.Conn
	raw  syscall.RawConn
	out  []byte // the batch
	in   []byte // one acknowledgement at a time
	acks int    // acknowledgements the batch asks for
	poll []unix.PollFd
	err  error
	// run is exchange bound once, as RawConn.Control takes a func: a
	// method value made at each renewal would be allocated each time.
	run func(fd uintptr)
}

// switchAckWait bounds the wait for an acknowledgement. The kernel handles
// an nftables batch within the send, so the acknowledgements are queued
// when it returns; the bound only keeps a kernel that does otherwise from
// stopping the guard.
const switchAckWait = time.Second

// dialSwitch opens a switchConn in the guard's namespace.
func (g *Guard) dialSwitch() (*switchConn, error) {
	var cfg netlink.Config
	if g.ns.IsOpen() {
		cfg.NetNS = int(g.ns)
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &cfg)
	if err != nil {
		return nil, fmt.Errorf("opening nftables netlink socket: %w", err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("nftables netlink socket: %w", err)
	}
	s := &switchConn{conn: c, raw: raw, in: make([]byte, 4096), poll: make([]unix.PollFd, 1)}
	s.run = s.exchange
	return s, nil
}

func (s *switchConn) close() { _ = s.conn.Close() }

// renew replaces the alive element of each of fams with one that lapses
// after timeout, in one batch, and waits for the kernel's
// acknowledgements.
func (s *switchConn) renew(fams []*family, timeout time.Duration) error {
	s.out = appendSwitchBatch(s.out[:0], fams, timeout)
	s.acks = 2 * len(fams)
	s.err = nil
	if err := s.raw.Control(s.run); err != nil {
		return err
	}
	return s.err
}

// exchange sends the batch and reads its acknowledgements, on the socket's
// descriptor.
func (s *switchConn) exchange(fd uintptr) {
	if _, err := unix.Write(int(fd), s.out); err != nil {
		s.err = fmt.Errorf("sending: %w", err)
		return
	}
	for got := 0; got < s.acks; {
		n, err := unix.Read(int(fd), s.in)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			s.poll[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
			if k, err := unix.Poll(s.poll, int(switchAckWait/time.Millisecond)); err != nil && !errors.Is(err, unix.EINTR) {
				s.err = fmt.Errorf("waiting for acknowledgements: %w", err)
				return
			} else if k == 0 {
				s.err = fmt.Errorf("no acknowledgement within %v (%d of %d)", switchAckWait, got, s.acks)
				return
			}
			continue
		}
		if err != nil {
			s.err = fmt.Errorf("receiving acknowledgements: %w", err)
			return
		}
		k, err := countAcks(s.in[:n])
		got += k
		if err != nil {
			s.err = err
			return
		}
	}
}

// countAcks counts the acknowledgements in b, one or more netlink
// messages; a refusal is returned as its errno.
func countAcks(b []byte) (int, error) {
	n := 0
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b))
		typ := binary.NativeEndian.Uint16(b[4:])
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return n, fmt.Errorf("malformed netlink message (length %d of %d)", l, len(b))
		}
		if typ != unix.NLMSG_ERROR || l < unix.SizeofNlMsghdr+4 {
			return n, fmt.Errorf("unexpected netlink message of type %d", typ)
		}
		if code := int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:])); code != 0 {
			return n, unix.Errno(-code)
		}
		n++
		b = b[min(nlAlign(l), len(b)):]
	}
	return n, nil
}

// appendSwitchBatch appends to b the batch that replaces the alive
// element of each of fams, as google/nftables builds it: for each family,
// FlushSet(alive) and SetAddElements(alive, aliveElement(f, timeout)).
func appendSwitchBatch(b []byte, fams []*family, timeout time.Duration) []byte {
	const nft = unix.NFNL_SUBSYS_NFTABLES << 8
	seq := uint32(1)
	b, m := beginMsg(b, unix.NFNL_MSG_BATCH_BEGIN, netlink.Request, seq, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	b = endMsg(b, m)
	for _, f := range fams {
		fam, set := uint8(f.table.Family), f.alive

		seq++
		b, m = beginMsg(b, nft|unix.NFT_MSG_DELSETELEM, netlink.Request|netlink.Acknowledge, seq, fam, 0)
		b = appendString(b, unix.NFTA_SET_TABLE, set.Table.Name)
		b = appendString(b, unix.NFTA_SET_NAME, set.Name)
		b = endMsg(b, m)

		seq++
		b, m = beginMsg(b, nft|unix.NFT_MSG_NEWSETELEM, netlink.Request|netlink.Acknowledge|netlink.Create, seq, fam, 0)
		b = appendString(b, unix.NFTA_SET_NAME, set.Name)
		b = binary.BigEndian.AppendUint32(appendAttrHeader(b, unix.NFTA_LOOKUP_SET_ID, 4), set.ID)
		b = appendString(b, unix.NFTA_SET_TABLE, set.Table.Name)
		list := len(b)
		b = appendAttrHeader(b, unix.NFTA_SET_ELEM_LIST_ELEMENTS|unix.NLA_F_NESTED, 0)
		elem := len(b)
		b = appendAttrHeader(b, 1|unix.NLA_F_NESTED, 0) // the first element
		key := len(b)
		b = appendAttrHeader(b, unix.NFTA_SET_ELEM_KEY|unix.NLA_F_NESTED, 0)
		b = pad(append(appendAttrHeader(b, unix.NFTA_DATA_VALUE, 1), fam), 1) // aliveElement's key
		b = closeNested(b, key)
		b = binary.BigEndian.AppendUint64(appendAttrHeader(b, unix.NFTA_SET_ELEM_TIMEOUT, 8), uint64(timeout.Milliseconds()))
		b = closeNested(b, elem)
		b = closeNested(b, list)
		b = endMsg(b, m)
	}
	seq++
	b, m = beginMsg(b, unix.NFNL_MSG_BATCH_END, netlink.Request, seq, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	return endMsg(b, m)
}

// beginMsg appends the headers of a netlink message to an nftables
// subsystem (the length to be set by endMsg) and returns where it starts.
func beginMsg(b []byte, typ uint16, flags netlink.HeaderFlags, seq uint32, family uint8, resID uint16) ([]byte, int) {
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, set by endMsg
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, uint16(flags))
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port: the kernel fills it
	b = append(b, family, unix.NFNETLINK_V0)   // struct nfgenmsg
	return binary.BigEndian.AppendUint16(b, resID), start
}

func endMsg(b []byte, start int) []byte {
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// appendString appends an attribute holding s, NUL-terminated, padded.
func appendString(b []byte, typ uint16, s string) []byte {
	b = append(appendAttrHeader(b, typ, len(s)+1), s...)
	return pad(append(b, 0), len(s)+1)
}

// appendAttrHeader appends the header of an attribute of n bytes.
func appendAttrHeader(b []byte, typ uint16, n int) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofNlAttr+n))
	return binary.NativeEndian.AppendUint16(b, typ)
}

// closeNested sets the length of the nested attribute that starts at
// start to what follows it.
func closeNested(b []byte, start int) []byte {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b
}

func pad(b []byte, n int) []byte {
	for range nlAlign(n) - n {
		b = append(b, 0)
	}
	return b
}

func nlAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }

// renewSwitchLocked renews the switch of each family with an answered VIP
// to lapse after t (> 0). On an error it drops the socket, whose
// acknowledgements may be out of step: the caller renews through
// google/nftables instead, which also mends tables someone removed.
func (g *Guard) renewSwitchLocked(t time.Duration) error {
	if g.sw == nil {
		sw, err := g.dialSwitch()
		if err != nil {
			g.log.Debug("renewing the guard's switch through google/nftables", "err", err)
			return err
		}
		g.sw = sw
	}
	g.swBuf = g.answeredFamilies(g.swBuf)
	if len(g.swBuf) == 0 {
		return nil
	}
	if err := g.sw.renew(g.swBuf, t); err != nil {
		g.log.Debug("renewing the guard's switch through google/nftables", "err", err)
		g.dropSwitchLocked()
		return err
	}
	return nil
}

func (g *Guard) dropSwitchLocked() {
	if g.sw != nil {
		g.sw.close()
		g.sw = nil
	}
}

// answeredFamilies returns, into buf, the families with an answered VIP.
func (g *Guard) answeredFamilies(buf []*family) []*family {
	out := buf[:0]
	for _, f := range g.fams {
		if slices.ContainsFunc(g.answer, f.holds) {
			out = append(out, f)
		}
	}
	return out
}
