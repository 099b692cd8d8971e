package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// LinkDown takes the node off the segment by setting its port on the bridge
// down; the node's eth0 loses carrier, as when its cable is pulled.
func (n *Node) LinkDown() error {
	if err := ipCmd(n.lab.BridgeNetns, "link", "set", n.bridgePort, "down"); err != nil {
		return fmt.Errorf("taking %s off the segment: %w", n.Name, err)
	}
	return nil
}

// LinkUp puts the node back on the segment.
func (n *Node) LinkUp() error {
	if err := ipCmd(n.lab.BridgeNetns, "link", "set", n.bridgePort, "up"); err != nil {
		return fmt.Errorf("putting %s back on the segment: %w", n.Name, err)
	}
	return nil
}

// BlockAPI adds blackhole routes to the API server's addresses in the node's
// namespace: the node loses the API server but keeps its clients.
func (n *Node) BlockAPI() error {
	if err := ipCmd(n.Netns, "route", "add", "blackhole", APIIPv4+"/32"); err != nil {
		return fmt.Errorf("blocking the API server on %s: %w", n.Name, err)
	}
	if err := ipCmd(n.Netns, "-6", "route", "add", "blackhole", APIIPv6+"/128"); err != nil {
		return fmt.Errorf("blocking the API server on %s: %w", n.Name, err)
	}
	return nil
}

// UnblockAPI removes the routes BlockAPI added.
func (n *Node) UnblockAPI() error {
	if err := ipCmd(n.Netns, "route", "del", "blackhole", APIIPv4+"/32"); err != nil {
		return fmt.Errorf("unblocking the API server on %s: %w", n.Name, err)
	}
	if err := ipCmd(n.Netns, "-6", "route", "del", "blackhole", APIIPv6+"/128"); err != nil {
		return fmt.Errorf("unblocking the API server on %s: %w", n.Name, err)
	}
	return nil
}

// dropTable is the nftables table DropPercent owns in a node's namespace.
const dropTable = "vipdlab"

// DropPercent makes the node's eth0 drop p percent of frames at random in
// both directions (ARP and neighbour discovery included); 0 removes the
// drop. It stands in for netem, which this kernel lacks.
func (n *Node) DropPercent(p int) error {
	if p < 0 || p > 100 {
		return fmt.Errorf("drop percentage %d out of 0..100", p)
	}
	// Declaring then deleting the table makes the script work whether or
	// not the table exists.
	script := fmt.Sprintf("table netdev %[1]s\ndelete table netdev %[1]s\n", dropTable)
	if p > 0 {
		rule := fmt.Sprintf("numgen random mod 100 < %d drop", p)
		if p == 100 {
			rule = "drop" // numgen's values stop at 99
		}
		chain := func(hook string) string {
			return fmt.Sprintf("  chain %[1]s { type filter hook %[1]s device \"eth0\" priority 0; policy accept; %[2]s; }\n", hook, rule)
		}
		script += "table netdev " + dropTable + " {\n" + chain("ingress") + chain("egress") + "}\n"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := execIn(ctx, n.Netns, strings.NewReader(script), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("setting %d%% drop on %s: %w", p, n.Name, err)
	}
	return nil
}

// ServeTCP listens on port on 0.0.0.0 and [::] in the node's namespace and
// answers every connection with the node's name and a newline, so a client
// connecting to a VIP learns which node holds it. The listeners close with
// the lab.
func (n *Node) ServeTCP(port int) error {
	var lns []net.Listener
	err := InNetns(n.Netns, func() error {
		for _, a := range []struct{ network, addr string }{
			{"tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(port))},
			{"tcp6", net.JoinHostPort("::", strconv.Itoa(port))},
		} {
			ln, err := net.Listen(a.network, a.addr)
			if err != nil {
				return fmt.Errorf("listening on %s on %s: %w", a.addr, n.Name, err)
			}
			lns = append(lns, ln)
		}
		return nil
	})
	for _, ln := range lns {
		if err != nil {
			ln.Close()
			continue
		}
		if terr := n.lab.track(ln); terr != nil {
			ln.Close()
			err = terr
			continue
		}
		go answerName(ln, n.Name)
	}
	return err
}

func answerName(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Temporary, e.g. out of file descriptors: back off a little.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = c.Write([]byte(name + "\n"))
		}()
	}
}

// udpTable is the nftables table DropUDP owns in a node's namespace.
const udpTable = "vipdlab_udp"

// DropUDP makes the node drop every UDP datagram to and from the given
// nodes (both address families), as a host firewall rule between a pair of
// nodes would; heartbeats stop, everything else (ARP, the API server's TCP)
// still flows. No nodes removes the drop.
func (n *Node) DropUDP(peers ...*Node) error {
	script := fmt.Sprintf("table inet %[1]s\ndelete table inet %[1]s\n", udpTable)
	if len(peers) > 0 {
		var v4, v6 []string
		for _, p := range peers {
			v4 = append(v4, p.IPv4.String())
			v6 = append(v6, p.IPv6.String())
		}
		set := func(addrs []string) string { return "{ " + strings.Join(addrs, ", ") + " }" }
		script += "table inet " + udpTable + " {\n" +
			"  chain input { type filter hook input priority 0; policy accept;\n" +
			"    ip saddr " + set(v4) + " meta l4proto udp drop\n" +
			"    ip6 saddr " + set(v6) + " meta l4proto udp drop\n  }\n" +
			"  chain output { type filter hook output priority 0; policy accept;\n" +
			"    ip daddr " + set(v4) + " meta l4proto udp drop\n" +
			"    ip6 daddr " + set(v6) + " meta l4proto udp drop\n  }\n" +
			"}\n"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := execIn(ctx, n.Netns, strings.NewReader(script), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("dropping UDP between %s and %d nodes: %w", n.Name, len(peers), err)
	}
	return nil
}

// AddNode adds a node namespace to the running lab, named and addressed
// after the last one (n4 after n3, ...; names are never reused), with its
// eth0 on the bridge: a new machine joining the segment.
func (l *Lab) AddNode(ctx context.Context) (*Node, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab is closed")
	}
	i := len(l.Nodes) + 1
	l.mu.Unlock()
	if i > MaxNodes {
		return nil, fmt.Errorf("lab: at most %d nodes", MaxNodes)
	}
	prefix := strings.TrimSuffix(l.BridgeNetns, "-br")
	n := newNode(l, prefix, i)
	if err := ipBatch(ctx, "", "netns add "+n.Netns+"\n"); err != nil {
		return nil, fmt.Errorf("adding node %s: %w", n.Name, err)
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, n.Netns)
	l.Nodes = append(l.Nodes, n)
	l.mu.Unlock()
	if err := disableDAD(n.Netns, false); err != nil {
		return nil, err
	}
	if err := n.plug(ctx); err != nil {
		return nil, fmt.Errorf("adding node %s: %w", n.Name, err)
	}
	l.logf("lab: node %s added", n.Name)
	return n, nil
}

// newNode describes node i of the lab whose namespaces start with prefix.
func newNode(l *Lab, prefix string, i int) *Node {
	return &Node{
		Name:  fmt.Sprintf("n%d", i),
		Netns: fmt.Sprintf("%s-n%d", prefix, i),
		MAC:   net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i)},
		IPv4:  netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}),
		// ::11 for n1, mirroring .11, as the lab's documentation says.
		IPv6:       netip.MustParseAddr(fmt.Sprintf("2001:db8:100::%d", 10+i)),
		lab:        l,
		bridgePort: fmt.Sprintf("n%d", i),
	}
}

// plug makes the node's eth0 (a veth whose other end is its port on the
// bridge) and gives it the node's addresses, as New does for every member.
func (n *Node) plug(ctx context.Context) error {
	l := n.lab
	batch := fmt.Sprintf("link add %s type veth peer name eth0 netns %s address %s\nlink set %s master br0 up\n",
		n.bridgePort, n.Netns, n.MAC, n.bridgePort)
	if err := ipBatch(ctx, l.BridgeNetns, batch); err != nil {
		return err
	}
	return ipBatch(ctx, n.Netns, fmt.Sprintf("link set lo up\nlink set eth0 up\naddr add %s/24 dev eth0\naddr add %s/64 dev eth0 nodad\n", n.IPv4, n.IPv6))
}

// DeleteLink deletes the node's eth0 (and with it its port on the bridge),
// as when a NIC is unplugged from the machine or its driver is unloaded.
// RecreateLink makes it again.
func (n *Node) DeleteLink() error {
	if err := ipCmd(n.Netns, "link", "del", "eth0"); err != nil {
		return fmt.Errorf("deleting eth0 of %s: %w", n.Name, err)
	}
	return nil
}

// RecreateLink makes the node's eth0 again after DeleteLink, with the same
// MAC and addresses but a new interface index.
func (n *Node) RecreateLink() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.plug(ctx); err != nil {
		return fmt.Errorf("making eth0 of %s again: %w", n.Name, err)
	}
	return nil
}
