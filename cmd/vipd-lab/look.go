package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/lab"
	"github.com/vishvananda/netlink"
	coordinationv1 "k8s.io/api/coordination/v1"
)

// How the demo looks at the lab: agents, addresses, Leases, the client's
// view, and the narration.

// dumpAgentLogs shows the end of each agent's log after a failure.
func (d *demo) dumpAgentLogs() {
	for _, name := range slices.Sorted(maps.Keys(d.agents)) {
		lines := strings.Split(strings.TrimRight(d.agents[name].Log(), "\n"), "\n")
		lines = lines[max(0, len(lines)-15):]
		fmt.Fprintf(d.errOut, "--- last lines of vipd on %s:\n%s\n", name, strings.Join(lines, "\n"))
	}
}

// waitAgentUp waits until a (re)started agent says it runs.
func (d *demo) waitAgentUp(ctx context.Context, n *lab.Node) error {
	p := d.agents[n.Name]
	return poll(ctx, 10*time.Second, 10*time.Millisecond, "waiting for vipd on "+n.Name+" to start", func() (bool, error) {
		if err := d.agentsRunning(nil); err != nil {
			return false, err
		}
		return strings.Contains(p.Log(), "agent started"), nil
	})
}

// agentsRunning fails if the agent of a node other than skip has exited.
func (d *demo) agentsRunning(skip *lab.Node) error {
	for _, n := range d.lab.Nodes {
		if p := d.agents[n.Name]; n != skip && p != nil && p.Exited() {
			return fmt.Errorf("vipd on %s exited: %v", n.Name, p.Wait(context.Background()))
		}
	}
	return nil
}

// holder returns the one node that has the VIP.
func (d *demo) holder() (*lab.Node, error) {
	hs, err := d.holders(d.lab.Nodes)
	if err != nil {
		return nil, err
	}
	if len(hs) != 1 {
		return nil, fmt.Errorf("%v have %s, want exactly one node", names(hs), d.vip)
	}
	return hs[0], nil
}

// holders reads which nodes have the VIP on eth0, as `ip addr` in each node
// would show.
func (d *demo) holders(nodes []*lab.Node) ([]*lab.Node, error) {
	var hs []*lab.Node
	for _, n := range nodes {
		has, err := hasAddr(n.Netns, "eth0", d.vip)
		if err != nil {
			return nil, err
		}
		if has {
			hs = append(hs, n)
		}
	}
	return hs, nil
}

func hasAddr(ns, ifname string, ip netip.Addr) (bool, error) {
	found, _, err := addrOn(ns, ifname, ip)
	return found, err
}

// forever is the valid lifetime the kernel reports for an address that
// never expires.
const forever = -1

// addrOn reads whether ip is an address of ifname in namespace ns, and how
// long it stays valid (forever, or the time until the kernel removes it).
func addrOn(ns, ifname string, ip netip.Addr) (found bool, valid time.Duration, err error) {
	err = lab.InNetns(ns, func() error {
		link, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
				found, valid = true, forever
				if uint32(a.ValidLft) != math.MaxUint32 {
					valid = time.Duration(a.ValidLft) * time.Second
				}
			}
		}
		return nil
	})
	if err != nil {
		return false, 0, fmt.Errorf("reading the addresses of %s in %s: %w", ifname, ns, err)
	}
	return found, valid, nil
}

func (d *demo) lease(ctx context.Context) (*coordinationv1.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := d.admin.CoordinationV1().Leases(leaseNamespace).Get(ctx, leaseName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading Lease %s/%s: %w", leaseNamespace, leaseName, err)
	}
	return l, nil
}

// nodeLease returns node's own Lease, whose renewals tell the other agents
// that node is alive; nil if it has none.
func (d *demo) nodeLease(ctx context.Context, node string) (*coordinationv1.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	name := election.NodeLeasePrefix + node
	l, err := d.admin.CoordinationV1().Leases(leaseNamespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading Lease %s/%s: %w", leaseNamespace, name, err)
	}
	if leaseHolder(l) != node || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return nil, nil
	}
	return l, nil
}

func leaseHolder(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func (d *demo) showLease(ctx context.Context) error {
	l, err := d.lease(ctx)
	if err != nil {
		return err
	}
	transitions := int32(0)
	if l.Spec.LeaseTransitions != nil {
		transitions = *l.Spec.LeaseTransitions
	}
	d.say("Lease %s/%s: holder %q, holder changes so far: %d", leaseNamespace, leaseName, leaseHolder(l), transitions)
	return nil
}

func (d *demo) showNeighbor() error {
	c := d.lab.Client
	mac, state, err := c.Neighbor(d.vip)
	if err != nil {
		return err
	}
	d.say("client's neighbour entry: %s lladdr %s %s, the MAC of %s", d.vip, mac, state, d.nodeByMAC(mac))
	return nil
}

func (d *demo) showTCP(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	name, err := d.lab.Client.DialTCP(ctx, d.vip, responderPort)
	if err != nil {
		return err
	}
	d.say("client connects to %s:%d: answered by %s", d.vip, responderPort, name)
	return nil
}

func (d *demo) nodeByMAC(mac net.HardwareAddr) string {
	for _, n := range d.lab.Nodes {
		if bytes.Equal(n.MAC, mac) {
			return n.Name
		}
	}
	return "no node"
}

func namespacesWithPrefix(prefix string) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	var left []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			left = append(left, e.Name())
		}
	}
	return left, nil
}

func names(nodes []*lab.Node) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

func twoHolders(nodes []*lab.Node) error {
	if len(nodes) < 2 {
		return nil
	}
	return fmt.Errorf("%v all have the VIP on eth0 at once", names(nodes))
}

// poll calls cond every interval until it reports true or an error, ctx
// ends or timeout passes.
func poll(ctx context.Context, timeout, interval time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: gave up after %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

// Narration.

func (d *demo) section(title string) {
	fmt.Fprintf(d.out, "\n== %s\n", title)
}

// say prints a line stamped with the time since the demo began.
func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "[%5.1fs] %s\n", time.Since(d.began).Seconds(), fmt.Sprintf(format, args...))
}

// at prints a line stamped with t relative to t0, the disruption.
func (d *demo) at(t0, t time.Time, format string, args ...any) {
	fmt.Fprintf(d.out, "%10s  %s\n", signed(t.Sub(t0)), fmt.Sprintf(format, args...))
}

// dur formats a duration for reading: 4.2 ms, 37 ms, 4.71 s.
func dur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + dur(-d)
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

// signed is dur with an explicit sign, for times around a disruption.
func signed(d time.Duration) string {
	if d < 0 {
		return dur(d)
	}
	return "+" + dur(d)
}
