// Package address puts virtual IPs on a network interface and takes them off
// again, marking every address it adds so that vipd only ever removes its
// own: a restarted agent finds the VIPs it left behind, and an identical
// address that an administrator configured is never touched.
//
// The mark is the kernel's address protocol (IFA_PROTO, Linux 5.18 and
// later), set to Proto on every address vipd adds.
package address

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Proto is the address protocol (IFA_PROTO) that marks an address as added
// by vipd: 0x76, ASCII 'v'. The kernel reserves 0-3 for itself
// (unspec, kernel_lo, kernel_ra, kernel_ll); iproute2 6.2 and later shows it
// as "proto 0x76" in `ip address show`.
const Proto = 0x76

// ErrNotOwned reports that an address is present but was not added by vipd,
// so vipd leaves it alone.
var ErrNotOwned = errors.New("address present but not added by vipd")

// ErrProtoUnsupported reports a kernel that ignores IFA_PROTO (Linux older
// than 5.18): vipd could not mark the address and so does not keep it.
var ErrProtoUnsupported = errors.New("kernel does not record the address protocol (IFA_PROTO, Linux 5.18 or later needed)")

// Namespace is the network namespace whose interfaces are managed.
type Namespace struct {
	h *netlink.Handle
	// nsh is the namespace of Open; nil for the current one.
	nsh *netns.NsHandle
	// sockets is nil for the current namespace: each request then opens a
	// fresh netlink socket, as the netlink package's own functions do.
	sockets map[int]*nl.SocketHandle
	// protoKept: an address added here was found with vipd's IFA_PROTO
	// mark. The kernel does not change while vipd runs, so later adds
	// need not look again (a dump of every address each).
	protoKept atomic.Bool
}

// Current is the namespace of the calling thread (for vipd, the host's).
func Current() *Namespace {
	// A zero Handle opens a socket per request in the caller's namespace;
	// it holds nothing, so there is nothing to close.
	return &Namespace{h: &netlink.Handle{}}
}

// OpenCurrent is Current with netlink sockets of its own, kept open until
// Close. An agent renews the lifetime of every VIP it holds, one request
// each, and opening and closing a socket per request cost it as much CPU as
// the requests themselves (docs/scale-runs.md). Requests on the socket are
// serialised; it needs no privilege beyond what the requests need.
func OpenCurrent() (*Namespace, error) { return open(netns.None()) }

// Open returns a Namespace bound to ns with sockets of its own; Close it
// when done. Tests use it to work inside a namespace they created.
func Open(ns netns.NsHandle) (*Namespace, error) {
	n, err := open(ns)
	if err != nil {
		return nil, fmt.Errorf("in namespace %s: %w", ns, err)
	}
	n.nsh = &ns
	return n, nil
}

// open opens a netlink handle and socket in ns (netns.None(): the current
// one, entered without setns), with the bounds the netlink package sets on
// a socket per request.
func open(ns netns.NsHandle) (*Namespace, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink handle: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("opening netlink socket: %w", err)
	}
	if err := errors.Join(s.SetSendTimeout(&nl.SocketTimeoutTv), s.SetReceiveTimeout(&nl.SocketTimeoutTv)); err != nil {
		h.Close()
		s.Close()
		return nil, fmt.Errorf("setting netlink socket timeouts: %w", err)
	}
	return &Namespace{h: h, sockets: map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}}, nil
}

// Close releases the sockets of a Namespace returned by Open or
// OpenCurrent.
func (n *Namespace) Close() {
	n.h.Close()
	for _, s := range n.sockets {
		s.Close()
	}
	n.sockets = nil
}

// Interface is one network interface that carries VIPs.
type Interface struct {
	Name         string
	Index        int
	MTU          int
	Flags        net.Flags
	HardwareAddr net.HardwareAddr
	// Lifetime, if set, is the valid lifetime Add gives a VIP; Add and
	// Refresh renew it. The kernel removes a VIP whose lifetime runs out,
	// so the VIPs of an agent that died do not stay behind. Zero: forever.
	Lifetime time.Duration

	ns *Namespace
}

// Net returns the interface as the standard library describes it, for
// packages (such as announce) that take a *net.Interface.
func (i *Interface) Net() *net.Interface {
	return &net.Interface{Index: i.Index, MTU: i.MTU, Name: i.Name, HardwareAddr: i.HardwareAddr, Flags: i.Flags}
}

// Lookup finds an interface by name in the current namespace.
func Lookup(name string) (*Interface, error) { return Current().Lookup(name) }

// Detect picks the VIP interface in the current namespace; see
// Namespace.Detect.
func Detect() (*Interface, error) { return Current().Detect() }

// Conflicts tells whether vip is already an address of this node that vipd
// did not add (on any interface of the current namespace).
func Conflicts(vip netip.Addr) (iface string, found bool, err error) {
	return Current().Conflicts(vip)
}

// Lookup finds an interface by name.
func (n *Namespace) Lookup(name string) (*Interface, error) {
	link, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("interface %q not found", name)
		}
		return nil, fmt.Errorf("looking up interface %q: %w", name, err)
	}
	return n.iface(link), nil
}

func (n *Namespace) iface(link netlink.Link) *Interface {
	a := link.Attrs()
	return &Interface{Name: a.Name, Index: a.Index, MTU: a.MTU, Flags: a.Flags, HardwareAddr: a.HardwareAddr, ns: n}
}

// Detect picks the interface that carries the default route: the IPv4 one,
// else the IPv6 one (the lowest metric wins; a tie between interfaces is
// ambiguous). Without a default route it picks the only interface that has
// a global unicast address (VIPs that vipd added do not count). Anything
// else is an error that asks for the interface to be named.
func (n *Namespace) Detect() (*Interface, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		idx, err := n.defaultRouteLinks(family)
		if err != nil {
			return nil, err
		}
		switch len(idx) {
		case 0:
			continue
		case 1:
			return n.byIndex(idx[0])
		default:
			return nil, fmt.Errorf("detecting interface: default routes of equal metric leave through %s; name the interface", n.names(idx))
		}
	}

	addrs, err := n.dump(unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("detecting interface: %w", err)
	}
	var idx []int
	for _, a := range addrs {
		if a.proto == Proto || !a.addr.IsGlobalUnicast() || slices.Contains(idx, a.index) {
			continue
		}
		idx = append(idx, a.index)
	}
	switch len(idx) {
	case 0:
		return nil, errors.New("detecting interface: no default route and no interface with a global address; name the interface")
	case 1:
		return n.byIndex(idx[0])
	default:
		return nil, fmt.Errorf("detecting interface: no default route and several interfaces with global addresses (%s); name the interface", n.names(idx))
	}
}

// defaultRouteLinks returns the interfaces that the lowest-metric default
// routes of the main table leave through.
func (n *Namespace) defaultRouteLinks(family int) ([]int, error) {
	routes, err := n.h.RouteList(nil, family)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	var idx []int
	best := -1
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		var links []int
		if r.LinkIndex > 0 {
			links = append(links, r.LinkIndex)
		}
		for _, hop := range r.MultiPath {
			if hop.LinkIndex > 0 {
				links = append(links, hop.LinkIndex)
			}
		}
		if len(links) == 0 { // unreachable, blackhole, ...
			continue
		}
		if best == -1 || r.Priority < best {
			best, idx = r.Priority, nil
		}
		if r.Priority == best {
			for _, l := range links {
				if !slices.Contains(idx, l) {
					idx = append(idx, l)
				}
			}
		}
	}
	return idx, nil
}

func (n *Namespace) byIndex(index int) (*Interface, error) {
	link, err := n.h.LinkByIndex(index)
	if err != nil {
		return nil, fmt.Errorf("looking up interface %d: %w", index, err)
	}
	return n.iface(link), nil
}

// namer returns a function that names an interface by index, looking each
// one up once, not once per address: each lookup is a netlink request.
func (n *Namespace) namer() func(index int) string {
	named := map[int]string{}
	return func(index int) string {
		name, ok := named[index]
		if !ok {
			name = n.names([]int{index})
			named[index] = name
		}
		return name
	}
}

func (n *Namespace) names(idx []int) string {
	var names []string
	for _, i := range idx {
		if link, err := n.h.LinkByIndex(i); err == nil {
			names = append(names, link.Attrs().Name)
		} else {
			names = append(names, fmt.Sprintf("#%d", i))
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// Conflicts tells whether vip is already an address of this node that vipd
// did not add, and on which interface. VIPs that vipd added (for instance
// left over from a crash) are not conflicts.
func (n *Namespace) Conflicts(vip netip.Addr) (iface string, found bool, err error) {
	vip, err = checkVIP(vip)
	if err != nil {
		return "", false, err
	}
	addrs, err := n.dump(familyOf(vip))
	if err != nil {
		return "", false, fmt.Errorf("looking for %s on this node: %w", vip, err)
	}
	for _, a := range addrs {
		if a.addr == vip && a.proto != Proto {
			name := n.names([]int{a.index})
			return name, true, nil
		}
	}
	return "", false, nil
}

// NodeAddrs returns every address of this node that vipd did not add,
// with the interface that carries it: one look for many candidate VIPs.
func (n *Namespace) NodeAddrs() (map[netip.Addr]string, error) {
	addrs, err := n.dump(unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("listing this node's addresses: %w", err)
	}
	out := make(map[netip.Addr]string, len(addrs))
	name := n.namer()
	for _, a := range addrs {
		if a.proto != Proto {
			out[a.addr] = name(a.index)
		}
	}
	return out, nil
}

// NodeAddrs is Current().NodeAddrs().
func NodeAddrs() (map[netip.Addr]string, error) { return Current().NodeAddrs() }

// Add puts vip on the interface (IPv4 as /32, IPv6 as /128 without
// Duplicate Address Detection, so it is usable at once), marked as vipd's.
// Adding a VIP that vipd already added is a no-op. If the same address is
// on the interface without the mark, Add leaves it and returns an error
// wrapping ErrNotOwned.
func (i *Interface) Add(vip netip.Addr) error {
	vip, err := checkVIP(vip)
	if err != nil {
		return err
	}
	owned, foreign, err := i.find(vip)
	if err != nil {
		return fmt.Errorf("adding %s to %s: %w", vip, i.Name, err)
	}
	if owned != nil {
		return i.Refresh(vip)
	}
	if foreign != nil {
		return fmt.Errorf("adding %s to %s: %w", vip, i.Name, ErrNotOwned)
	}
	return i.addAbsent(vip)
}

// AddListed is Add for a caller that has just listed the namespace's
// addresses (Namespace.List): a VIP the listing shows nowhere on the
// interface is added without looking again. The reconciler adds the VIPs
// it takes one pass at a time, and each look is a dump of every address
// the node has.
func (i *Interface) AddListed(vip netip.Addr, l Listing) error {
	vip, err := checkVIP(vip)
	if err != nil {
		return err
	}
	if l.On(i.Index, vip) {
		return i.Add(vip) // vipd's (a refresh) or someone else's (refused)
	}
	return i.addAbsent(vip)
}

// addAbsent adds vip, which was not on the interface when last looked.
func (i *Interface) addAbsent(vip netip.Addr) error {
	err := i.ns.newAddr(i.Index, vip, i.Lifetime, false)
	if errors.Is(err, unix.EEXIST) {
		// Someone added it between our look and our add: whose is it?
		owned, _, ferr := i.find(vip)
		if ferr != nil {
			return fmt.Errorf("adding %s to %s: %w", vip, i.Name, ferr)
		}
		if owned != nil {
			return nil
		}
		return fmt.Errorf("adding %s to %s: %w", vip, i.Name, ErrNotOwned)
	}
	if err != nil {
		return fmt.Errorf("adding %s to %s: %w", vip, i.Name, err)
	}
	if i.ns.protoKept.Load() {
		return nil
	}
	// An old kernel accepts the request but drops IFA_PROTO; an unmarked
	// VIP could never be cleaned up safely, so take it off again.
	owned, foreign, err := i.find(vip)
	if err != nil {
		return fmt.Errorf("checking %s on %s: %w", vip, i.Name, err)
	}
	if owned == nil && foreign != nil && foreign.proto == 0 && foreign.prefixLen == vip.BitLen() {
		_ = i.ns.delAddr(i.Index, *foreign)
		return fmt.Errorf("adding %s to %s: %w", vip, i.Name, ErrProtoUnsupported)
	}
	if owned == nil {
		return fmt.Errorf("adding %s to %s: address vanished right after it was added", vip, i.Name)
	}
	i.ns.protoKept.Store(true)
	return nil
}

// Refresh restarts the lifetime of a VIP vipd added (see
// Interface.Lifetime); without a lifetime it does nothing. The caller must
// know the VIP is vipd's: Refresh does not look.
func (i *Interface) Refresh(vip netip.Addr) error {
	if i.Lifetime <= 0 {
		return nil
	}
	if err := i.ns.newAddr(i.Index, vip, i.Lifetime, true); err != nil {
		return fmt.Errorf("refreshing %s on %s: %w", vip, i.Name, err)
	}
	return nil
}

// RefreshAll is Refresh for many VIPs, in a few requests to the kernel
// rather than one each. It returns why each VIP whose refresh failed did.
func (i *Interface) RefreshAll(vips []netip.Addr) map[netip.Addr]error {
	if i.Lifetime <= 0 || len(vips) == 0 {
		return nil
	}
	fails := i.ns.replaceAddrs(i.Index, vips, i.Lifetime)
	for v, err := range fails {
		fails[v] = fmt.Errorf("refreshing %s on %s: %w", v, i.Name, err)
	}
	return fails
}

// Remove takes vip off the interface if vipd added it; removing an absent
// VIP is a no-op. An identical address without vipd's mark is left alone
// and reported with an error wrapping ErrNotOwned.
func (i *Interface) Remove(vip netip.Addr) error {
	vip, err := checkVIP(vip)
	if err != nil {
		return err
	}
	owned, foreign, err := i.find(vip)
	if err != nil {
		return fmt.Errorf("removing %s from %s: %w", vip, i.Name, err)
	}
	if owned == nil {
		if foreign != nil {
			return fmt.Errorf("removing %s from %s: %w", vip, i.Name, ErrNotOwned)
		}
		return nil
	}
	// The request names the exact prefix length, so an administrator's
	// 192.0.2.10/24 survives the removal of vipd's 192.0.2.10/32.
	if err := i.ns.delAddr(i.Index, *owned); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("removing %s from %s: %w", vip, i.Name, err)
	}
	return nil
}

// Has tells whether vip is on the interface, added by vipd.
func (i *Interface) Has(vip netip.Addr) (bool, error) {
	vip, err := checkVIP(vip)
	if err != nil {
		return false, err
	}
	owned, _, err := i.find(vip)
	if err != nil {
		return false, fmt.Errorf("looking for %s on %s: %w", vip, i.Name, err)
	}
	return owned != nil, nil
}

// Owned lists the addresses on the interface that vipd added, so that a
// starting agent can remove the VIPs a previous run left behind.
func (i *Interface) Owned() ([]netip.Addr, error) {
	addrs, err := i.ns.dump(unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("listing addresses of %s: %w", i.Name, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if a.index == i.Index && a.proto == Proto {
			out = append(out, a.addr)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// NodeAddr returns the interface's own address, the one vipd did not add:
// the first global unicast IPv4 address, else the first IPv6 one.
func (i *Interface) NodeAddr() (netip.Addr, error) {
	addrs, err := i.ns.dump(unix.AF_UNSPEC)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("listing addresses of %s: %w", i.Name, err)
	}
	var v6 netip.Addr
	for _, a := range addrs {
		if a.index != i.Index || a.proto == Proto || !a.addr.IsGlobalUnicast() {
			continue
		}
		if a.addr.Is4() {
			return a.addr, nil
		}
		if !v6.IsValid() {
			v6 = a.addr
		}
	}
	if !v6.IsValid() {
		return netip.Addr{}, fmt.Errorf("%s has no global address of its own", i.Name)
	}
	return v6, nil
}

// find returns vip's entries on the interface: the one marked as vipd's, and
// one without the mark.
func (i *Interface) find(vip netip.Addr) (owned, foreign *kernelAddr, err error) {
	addrs, err := i.ns.dump(familyOf(vip))
	if err != nil {
		return nil, nil, err
	}
	for _, a := range addrs {
		if a.index != i.Index || a.addr != vip {
			continue
		}
		if a.proto == Proto {
			owned = &a
		} else {
			foreign = &a
		}
	}
	return owned, foreign, nil
}

// VIPProblem says why a cannot be a VIP that other hosts reach on the
// link, or "" if it can. Configuration and Service annotations are checked
// with it, so both refuse the same addresses in the same words.
func VIPProblem(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "not an IP address"
	case a.Zone() != "":
		return "scoped to a zone; a VIP cannot carry one"
	case a.Is4In6():
		return "an IPv4-mapped IPv6 address; write the IPv4 address"
	case a.IsUnspecified():
		return "the unspecified address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsMulticast():
		return "a multicast address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}

// InterfaceNameProblem says why name cannot be a Linux interface name, or
// "" if it can: at most 15 characters, no '/', ':' or spaces, not "." or "..".
func InterfaceNameProblem(name string) string {
	switch {
	case name == "":
		return "empty"
	case len(name) > 15:
		return "interface names are at most 15 characters"
	case name == "." || name == "..":
		return "not an interface name"
	case strings.ContainsFunc(name, func(r rune) bool { return r == '/' || r == ':' || unicode.IsSpace(r) }):
		return "interface names cannot contain '/', ':' or spaces"
	}
	return ""
}

func checkVIP(vip netip.Addr) (netip.Addr, error) {
	vip = vip.Unmap().WithZone("")
	if !vip.IsValid() || vip.IsUnspecified() || vip.IsMulticast() || vip.IsLoopback() {
		return vip, fmt.Errorf("invalid VIP %q", vip)
	}
	return vip, nil
}
