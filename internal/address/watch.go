package address

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
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

// AddrChange is an address added to or removed from an interface, as the
// kernel announces it.
type AddrChange struct {
	Addr  netip.Addr
	Index int // the interface's index
	Added bool
}

// WatchAddrs reports every address added to or removed from any interface
// of the namespace until ctx ends, from netlink's address notifications:
// a VIP deleted by hand, or by the kernel when the interface stops
// carrying its family, is known within milliseconds.
func (i *Interface) WatchAddrs(ctx context.Context, report func(AddrChange)) error {
	updates := make(chan netlink.AddrUpdate, 256)
	done := make(chan struct{})
	var last subscriptionErr
	opts := netlink.AddrSubscribeOptions{Namespace: i.ns.nsh, ErrorCallback: last.set}
	if err := netlink.AddrSubscribeWithOptions(updates, done, opts); err != nil {
		return fmt.Errorf("watching addresses of %s: %w", i.Name, err)
	}
	defer close(done)
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				return last.closed("watching addresses of " + i.Name)
			}
			a, ok := netip.AddrFromSlice(u.LinkAddress.IP)
			if !ok {
				continue
			}
			report(AddrChange{Addr: a.Unmap(), Index: u.LinkIndex, Added: u.NewAddr})
		}
	}
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
