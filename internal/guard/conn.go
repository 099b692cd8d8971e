package guard

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Talking to nftables through google/nftables: a connection in the
// guard's namespace, batches that take effect whole, and messages small
// enough for netlink however many VIPs the node holds.

// renew replaces the elements of s with els. Flushing and adding in one
// batch is atomic for the packet path, renews the timeouts (adding an
// existing element does not), and cannot fail on an element that expired
// since (deleting one would, with ENOENT). An empty set is left alone
// unless always.
func renew(c *nftables.Conn, s *nftables.Set, els []nftables.SetElement, always bool) error {
	if len(els) == 0 && !always {
		return nil
	}
	c.FlushSet(s)
	return inMessages(c.SetAddElements, s, els)
}

// maxElemsPerMsg bounds the elements of one message. google/nftables
// puts all the elements it is given in one nested attribute, whose length
// has 16 bits: past 1,638 IPv6 elements (40 bytes each) it wraps around,
// and the kernel took the first 361 of 2,000 and reported success. 1,024
// IPv6 elements make 41 KB.
const maxElemsPerMsg = 1024

// inMessages queues op (SetAddElements, SetDeleteElements) for els in
// messages of at most maxElemsPerMsg elements each; the batch they go in
// still takes effect whole or not at all.
func inMessages(op func(*nftables.Set, []nftables.SetElement) error, s *nftables.Set, els []nftables.SetElement) error {
	for len(els) > 0 {
		n := min(len(els), maxElemsPerMsg)
		if err := op(s, els[:n]); err != nil {
			return err
		}
		els = els[n:]
	}
	return nil
}

// batchLocked sends what build queues as one netlink batch: all of it
// takes effect, or none of it.
func (g *Guard) batchLocked(build func(*nftables.Conn) error) error {
	if g.conn == nil {
		c, err := g.dial(nftables.AsLasting())
		if err != nil {
			if errors.Is(err, unix.EPROTONOSUPPORT) {
				return fmt.Errorf("opening nftables netlink socket: kernel without nfnetlink (CONFIG_NETFILTER_NETLINK): %w", err)
			}
			return fmt.Errorf("opening nftables netlink socket: %w", err)
		}
		g.conn = c
	}
	if err := build(g.conn); err != nil {
		// Part of a batch may be queued on the connection: drop it.
		g.dropConnLocked()
		return fmt.Errorf("building nftables batch: %w", err)
	}
	if err := g.conn.Flush(); err != nil {
		// After a failure the acknowledgements may be out of step with
		// the requests: the next batch gets a fresh socket.
		g.dropConnLocked()
		return withPermHint(err)
	}
	return nil
}

// withPermHint says which capability is missing when the kernel refuses.
func withPermHint(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("%w (CAP_NET_ADMIN needed)", err)
	}
	return err
}

// dial opens an nftables connection in the guard's namespace.
func (g *Guard) dial(opts ...nftables.ConnOption) (*nftables.Conn, error) {
	if g.ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(g.ns)))
	}
	opts = append(opts, nftables.WithSockOptions(func(c *netlink.Conn) error { return c.SetWriteBuffer(sendBuffer) }))
	return nftables.New(opts...)
}

// sendBuffer is the send buffer the guard asks for on its netlink sockets.
// A batch goes in one send, and with the default buffer (212 KB) a node
// holding 3,000 IPv6 VIPs could not set its guard ("message too long": 80
// bytes a VIP, in two sets). With CAP_NET_ADMIN, which the guard needs
// anyway, the kernel grants it (SO_SNDBUFFORCE: 8 MB, about 100,000 VIPs);
// without, at most twice net.core.wmem_max (425 KB by default, about
// 5,000 IPv6 VIPs), and a larger batch fails with "message too long".
const sendBuffer = 4 << 20

// closeNS closes a namespace handle of NewAt's; New's has none.
func closeNS(ns *netns.NsHandle) {
	if ns.IsOpen() {
		_ = ns.Close()
	}
}

func (g *Guard) dropConnLocked() {
	if g.conn != nil {
		_ = g.conn.CloseLasting()
		g.conn = nil
	}
}
