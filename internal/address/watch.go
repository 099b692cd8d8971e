package address

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
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
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	errs := make(chan error, 1)
	opts := netlink.LinkSubscribeOptions{
		Namespace:    i.ns.nsh,
		ListExisting: true,
		ErrorCallback: func(err error) {
			select {
			case errs <- err:
			default:
			}
		},
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		return fmt.Errorf("watching link %s: %w", i.Name, err)
	}
	defer close(done)
	var last LinkState
	first := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return fmt.Errorf("watching link %s: %w", i.Name, err)
		case u, ok := <-updates:
			if !ok {
				return fmt.Errorf("watching link %s: subscription closed", i.Name)
			}
			a := u.Attrs()
			if a == nil || a.Name != i.Name {
				continue
			}
			st := LinkState{Exists: u.Header.Type != unix.RTM_DELLINK, Index: a.Index}
			st.Up = st.Exists && a.Flags&net.FlagUp != 0 && a.RawFlags&unix.IFF_LOWER_UP != 0
			if first || st != last {
				first, last = false, st
				report(st)
			}
		}
	}
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
	var last error
	var mu sync.Mutex
	opts := netlink.AddrSubscribeOptions{
		Namespace: i.ns.nsh,
		// Only a subscription that ends has failed: the package also
		// reports messages it skips, such as another subscriber's dump.
		ErrorCallback: func(err error) {
			mu.Lock()
			last = err
			mu.Unlock()
		},
	}
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
				mu.Lock()
				defer mu.Unlock()
				return fmt.Errorf("watching addresses of %s: subscription closed: %v", i.Name, last)
			}
			a, ok := netip.AddrFromSlice(u.LinkAddress.IP)
			if !ok {
				continue
			}
			report(AddrChange{Addr: a.Unmap(), Index: u.LinkIndex, Added: u.NewAddr})
		}
	}
}
