package address

import "context"

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
