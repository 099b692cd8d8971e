//go:build vipd_testhooks

package agent

import (
	"os"
	"os/signal"
	"syscall"
)

// wedge fires on SIGUSR2: the main loop then stops going round, as a loop
// stuck in a call would, so that the tests can watch /healthz fail. Only
// binaries built with the tag vipd_testhooks have it.
func wedge() <-chan struct{} {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR2)
	out := make(chan struct{})
	go func() {
		<-sig
		close(out)
	}()
	return out
}
