package guard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/google/nftables"
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
	if err := c.SetWriteBuffer(sendBuffer); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("nftables netlink socket: %w", err)
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

// send sends the batch in s.out, which asks for acks acknowledgements, and
// waits for them.
func (s *switchConn) send(acks int) error {
	s.acks = acks
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
// FlushSet(alive) and SetAddElements(alive, aliveElement(f, timeout)). It
// returns the batch and the acknowledgements it asks for.
func appendSwitchBatch(b []byte, fams []*family, timeout time.Duration) ([]byte, int) {
	seq, acks := uint32(1), 0
	b = appendBatchBegin(b, seq)
	for _, f := range fams {
		b, seq, acks = appendRenewal(b, seq, acks, f, f.alive, nil, timeout)
	}
	return appendBatchEnd(b, seq), acks
}

// appendMembersBatch appends to b the batch that renewLocked queues with
// withMembers for each of fams, as google/nftables builds it: for each
// family, the guarded and answered VIPs of gs and as renewed with
// guardTimeout, and the alive element with aliveTimeout if the family has
// an answered VIP and aliveTimeout > 0; a set with nothing to add is left
// alone. It returns the batch and the acknowledgements it asks for; no
// acknowledgement, no batch to send.
func appendMembersBatch(b []byte, fams []*family, gs, as []netip.Addr, guardTimeout, aliveTimeout time.Duration) ([]byte, int) {
	seq, acks := uint32(1), 0
	b = appendBatchBegin(b, seq)
	for _, f := range fams {
		if slices.ContainsFunc(gs, f.holds) {
			b, seq, acks = appendRenewal(b, seq, acks, f, f.guarded, gs, guardTimeout)
		}
		if slices.ContainsFunc(as, f.holds) {
			b, seq, acks = appendRenewal(b, seq, acks, f, f.answer, as, guardTimeout)
			if aliveTimeout > 0 {
				b, seq, acks = appendRenewal(b, seq, acks, f, f.alive, nil, aliveTimeout)
			}
		}
	}
	return appendBatchEnd(b, seq), acks
}

// appendRenewal appends FlushSet(set) and SetAddElements(set, elements)
// as google/nftables builds them, the elements in messages of at most
// maxElemsPerMsg (inMessages): the elements are f's addresses of addrs
// (elements(pick(addrs, f), timeout)), or for the alive set its one
// element (aliveElement(f, timeout)). There must be at least one.
func appendRenewal(b []byte, seq uint32, acks int, f *family, set *nftables.Set, addrs []netip.Addr, timeout time.Duration) ([]byte, uint32, int) {
	const nft = unix.NFNL_SUBSYS_NFTABLES << 8
	fam := uint8(f.table.Family)

	seq++
	b, m := beginMsg(b, nft|unix.NFT_MSG_DELSETELEM, netlink.Request|netlink.Acknowledge, seq, fam, 0)
	b = appendString(b, unix.NFTA_SET_TABLE, set.Table.Name)
	b = appendString(b, unix.NFTA_SET_NAME, set.Name)
	b = endMsg(b, m)
	acks++

	var list, n int // where the open message's element list starts, and its elements
	open := func() {
		seq++
		b, m = beginMsg(b, nft|unix.NFT_MSG_NEWSETELEM, netlink.Request|netlink.Acknowledge|netlink.Create, seq, fam, 0)
		b = appendString(b, unix.NFTA_SET_NAME, set.Name)
		b = binary.BigEndian.AppendUint32(appendAttrHeader(b, unix.NFTA_LOOKUP_SET_ID, 4), set.ID)
		b = appendString(b, unix.NFTA_SET_TABLE, set.Table.Name)
		list, n = len(b), 0
		b = appendAttrHeader(b, unix.NFTA_SET_ELEM_LIST_ELEMENTS|unix.NLA_F_NESTED, 0)
		acks++
	}
	shut := func() {
		b = closeNested(b, list)
		b = endMsg(b, m)
	}
	element := func(key ...byte) {
		if n == maxElemsPerMsg {
			shut()
			open()
		}
		n++
		elem := len(b)
		b = appendAttrHeader(b, uint16(n)|unix.NLA_F_NESTED, 0)
		k := len(b)
		b = appendAttrHeader(b, unix.NFTA_SET_ELEM_KEY|unix.NLA_F_NESTED, 0)
		b = pad(append(appendAttrHeader(b, unix.NFTA_DATA_VALUE, len(key)), key...), len(key))
		b = closeNested(b, k)
		if set.HasTimeout && timeout != 0 {
			b = binary.BigEndian.AppendUint64(appendAttrHeader(b, unix.NFTA_SET_ELEM_TIMEOUT, 8), uint64(timeout.Milliseconds()))
		}
		b = closeNested(b, elem)
	}
	open()
	if set == f.alive {
		element(fam)
	}
	for _, a := range addrs {
		switch {
		case !f.holds(a):
		case a.Is4():
			k := a.As4()
			element(k[:]...)
		default:
			k := a.As16()
			element(k[:]...)
		}
	}
	shut()
	return b, seq, acks
}

// appendBatchBegin begins a batch with sequence number seq.
func appendBatchBegin(b []byte, seq uint32) []byte {
	b, m := beginMsg(b, unix.NFNL_MSG_BATCH_BEGIN, netlink.Request, seq, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	return endMsg(b, m)
}

// appendBatchEnd ends a batch begun with sequence number 1 whose last
// message had seq.
func appendBatchEnd(b []byte, seq uint32) []byte {
	b, m := beginMsg(b, unix.NFNL_MSG_BATCH_END, netlink.Request, seq+1, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
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

// renewFastLocked renews, on the guard's own socket, the switch of each
// family with an answered VIP to lapse after t (> 0), and withMembers
// also the guarded and answered VIPs (once a second: their timeouts), as
// renewLocked would through google/nftables. On an error it drops the
// socket, whose acknowledgements may be out of step: the caller renews
// through google/nftables instead, which also mends tables someone
// removed.
func (g *Guard) renewFastLocked(t time.Duration, withMembers bool) error {
	if g.sw == nil {
		sw, err := g.dialSwitch()
		if err != nil {
			g.log.Debug("renewing the guard's sets through google/nftables", "err", err)
			return err
		}
		g.sw = sw
	}
	var acks int
	if withMembers {
		g.sw.out, acks = appendMembersBatch(g.sw.out[:0], g.fams, g.guarded, g.answer, g.guardTimeout(), t)
	} else {
		g.swBuf = g.answeredFamilies(g.swBuf)
		g.sw.out, acks = appendSwitchBatch(g.sw.out[:0], g.swBuf, t)
	}
	if acks == 0 {
		return nil
	}
	if err := g.sw.send(acks); err != nil {
		g.log.Debug("renewing the guard's sets through google/nftables", "err", err)
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
