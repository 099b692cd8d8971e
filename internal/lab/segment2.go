package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// The second segment (Options.Segment2Nodes): a layer-2 segment of its own,
// for VIPs on another interface than the first segment's. Nodes on it have
// eth1 at 203.0.113.(130+n) and 2001:db8:200::(10+n); its client c2 has
// eth0 at Segment2Client4 and Segment2Client6. Service VIPs of tests on it
// come from Segment2VIPs, on-link for c2.
const (
	Segment2Subnet4 = "203.0.113.128/25"
	Segment2Subnet6 = "2001:db8:200::/64"
	Segment2Client4 = "203.0.113.250"
	Segment2Client6 = "2001:db8:200::250"
	// Segment2VIPs holds no station of the lab.
	Segment2VIPs = "203.0.113.224/28"
)

// buildSegment2 makes bridge br1 beside br0, client c2 on it, and an eth1
// on it for each listed node (1-based).
func (l *Lab) buildSegment2(ctx context.Context, nodes []int) error {
	if len(nodes) == 0 {
		return nil
	}
	c := l.Client2
	var batch strings.Builder
	batch.WriteString("link add br1 type bridge stp_state 0 mcast_snooping 0\n")
	batch.WriteString("link set br1 up\n")
	fmt.Fprintf(&batch, "link add c2 type veth peer name eth0 netns %s address %s\n", c.Netns, c.MAC)
	batch.WriteString("link set c2 master br1 up\n")
	for _, i := range nodes {
		n := l.Nodes[i-1]
		n.port2 = n.Name + "s2"
		n.Eth1IPv4 = netip.AddrFrom4([4]byte{203, 0, 113, byte(130 + i)})
		n.Eth1IPv6 = netip.MustParseAddr(fmt.Sprintf("2001:db8:200::%d", 10+i))
		n.Eth1MAC = net.HardwareAddr{0x02, 0, 0, 0, 2, byte(i)}
		fmt.Fprintf(&batch, "link add %s type veth peer name eth1 netns %s address %s\n", n.port2, n.Netns, n.Eth1MAC)
		fmt.Fprintf(&batch, "link set %s master br1 up\n", n.port2)
	}
	if err := ipBatch(ctx, l.BridgeNetns, batch.String()); err != nil {
		return fmt.Errorf("building the second segment: %w", err)
	}
	configure := func(ns, dev string, v4, v6 netip.Addr, extra ...string) error {
		cmds := []string{"link set lo up", "link set " + dev + " up",
			fmt.Sprintf("addr add %s/25 dev %s", v4, dev), fmt.Sprintf("addr add %s/64 dev %s nodad", v6, dev)}
		if err := ipBatch(ctx, ns, strings.Join(append(cmds, extra...), "\n")+"\n"); err != nil {
			return fmt.Errorf("configuring %s on the second segment: %w", ns, err)
		}
		return nil
	}
	if err := configure(c.Netns, "eth0", c.IPv4, c.IPv6); err != nil {
		return err
	}
	for _, i := range nodes {
		n := l.Nodes[i-1]
		if err := configure(n.Netns, "eth1", n.Eth1IPv4, n.Eth1IPv6); err != nil {
			return err
		}
	}
	return nil
}

// Segment2Link takes the node's eth1 off the second segment (its port on
// br1 down: eth1 loses carrier) or puts it back.
func (n *Node) Segment2Link(up bool) error {
	if n.port2 == "" {
		return fmt.Errorf("%s is not on the second segment", n.Name)
	}
	state := "down"
	if up {
		state = "up"
	}
	if err := ipCmd(n.lab.BridgeNetns, "link", "set", n.port2, state); err != nil {
		return fmt.Errorf("setting %s's link on the second segment %s: %w", n.Name, state, err)
	}
	return nil
}
