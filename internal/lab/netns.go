package lab

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNetns runs fn on an OS thread switched into the named network namespace
// and switches the thread back afterwards. Sockets created inside fn belong to
// that namespace for their whole life, wherever they are used later.
// Goroutines started by fn do not inherit the namespace.
func InNetns(ns string, fn func() error) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", ns, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering netns %s: %w", ns, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread is stuck in the wrong namespace: keep it locked so the
			// runtime destroys it when this goroutine ends instead of reusing it.
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}
