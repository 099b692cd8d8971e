package address

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// OwnedVIP is an address vipd added, and the interface that carries it.
type OwnedVIP struct {
	Addr      netip.Addr
	Interface string
	Index     int
}

// OwnedAll lists the addresses vipd added on every interface of the
// namespace, in one dump: crash clean-up and the reconciler must find a
// VIP wherever it was put.
func (n *Namespace) OwnedAll() ([]OwnedVIP, error) {
	l, err := n.List()
	if err != nil {
		return nil, err
	}
	return l.Owned(), nil
}

// Listing is one dump of every address in a namespace (List).
type Listing struct {
	owned []OwnedVIP
	on    map[addrOn]bool
}

type addrOn struct {
	addr  netip.Addr
	index int
}

// List dumps every address of the namespace, vipd's and others'.
func (n *Namespace) List() (Listing, error) {
	addrs, err := n.dump(unix.AF_UNSPEC)
	if err != nil {
		return Listing{}, fmt.Errorf("listing the VIPs vipd added: %w", err)
	}
	l := Listing{on: make(map[addrOn]bool, len(addrs))}
	name := n.namer()
	for _, a := range addrs {
		l.on[addrOn{a.addr, a.index}] = true
		if a.proto == Proto {
			l.owned = append(l.owned, OwnedVIP{Addr: a.addr, Interface: name(a.index), Index: a.index})
		}
	}
	slices.SortFunc(l.owned, func(x, y OwnedVIP) int {
		if c := x.Addr.Compare(y.Addr); c != 0 {
			return c
		}
		return x.Index - y.Index
	})
	l.owned = slices.Compact(l.owned)
	return l, nil
}

// Owned are the addresses vipd added, sorted by address; the caller
// must not change them.
func (l Listing) Owned() []OwnedVIP { return l.owned }

// On reports whether a was on the interface with the given index, with
// any prefix length, vipd's or not.
func (l Listing) On(index int, a netip.Addr) bool { return l.on[addrOn{a, index}] }

// OwnedAll is Current().OwnedAll().
func OwnedAll() ([]OwnedVIP, error) { return Current().OwnedAll() }

// Remove takes an owned VIP off its interface, wherever it is.
func (n *Namespace) Remove(o OwnedVIP) error {
	i, err := n.byIndex(o.Index)
	if err != nil {
		return fmt.Errorf("removing %s from %s: %w", o.Addr, o.Interface, err)
	}
	return i.Remove(o.Addr)
}

// WatchLinks reports the state of every interface of the namespace now and
// at every change the kernel announces, by name, until ctx ends. Like
// WatchLink it subscribes to netlink's link notifications, so a lost
// carrier or a deleted interface is known within milliseconds.
func (n *Namespace) WatchLinks(ctx context.Context, report func(name string, st LinkState)) error {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	var failed subscriptionErr
	opts := netlink.LinkSubscribeOptions{Namespace: n.nsh, ListExisting: true, ErrorCallback: failed.set}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		return fmt.Errorf("watching links: %w", err)
	}
	defer close(done)
	last := map[string]LinkState{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				return failed.closed("watching links")
			}
			a := u.Attrs()
			if a == nil {
				continue
			}
			st := LinkState{Exists: u.Header.Type != unix.RTM_DELLINK, Index: a.Index}
			st.Up = st.Exists && a.Flags&net.FlagUp != 0 && a.RawFlags&unix.IFF_LOWER_UP != 0
			if prev, seen := last[a.Name]; !seen || prev != st {
				last[a.Name] = st
				if !st.Exists {
					delete(last, a.Name)
				}
				report(a.Name, st)
			}
		}
	}
}

// LinkState reads the state of the named interface now; one that does not
// exist is reported with Exists false, not as an error.
func (n *Namespace) LinkState(name string) (LinkState, error) {
	link, err := n.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return LinkState{}, nil
		}
		return LinkState{}, fmt.Errorf("looking up interface %q: %w", name, err)
	}
	a := link.Attrs()
	return LinkState{Exists: true, Index: a.Index, Up: a.Flags&net.FlagUp != 0 && a.RawFlags&unix.IFF_LOWER_UP != 0}, nil
}

// subscriptionErr keeps the last error a netlink subscription reported.
// Only a subscription that ends has failed: the netlink package also
// reports messages it skips, such as another subscriber's list request,
// which it sends to the multicast group too.
type subscriptionErr struct {
	mu  sync.Mutex
	err error
}

func (e *subscriptionErr) set(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.err = err
}

// closed is the error of a subscription that ended.
func (e *subscriptionErr) closed(what string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return fmt.Errorf("%s: subscription closed: %v", what, e.err)
}
