// Command pause is the sandbox ("pause") container of the lab's kubelet: it
// holds a pod's namespaces and does nothing else until it is told to stop.
// The lab builds it into a local image, since no registry is reachable.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
