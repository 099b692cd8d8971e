package e2e

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// faultKind is one kind of fault the soak injects. do applies it (and
// heals it, if it heals) and returns the node it hit and a short detail.
type faultKind struct {
	name    string
	planned bool // a planned stop: its bound is the tighter one
	weight  int
	do      func(w *soakWorld) (target, detail string)
}

// faultKinds are the faults of the soak, as the issue lists them.
var faultKinds = []faultKind{
	{name: "sigkill", weight: 3, do: (*soakWorld).sigkill},
	{name: "sigterm", planned: true, weight: 3, do: (*soakWorld).sigterm},
	{name: "link-flap", weight: 2, do: (*soakWorld).linkFlap},
	{name: "api-cut", weight: 2, do: (*soakWorld).apiCut},
	{name: "api-stop", weight: 1, do: (*soakWorld).apiStop},
	{name: "loss-10%", weight: 1, do: (*soakWorld).loss},
	{name: "node-lost", weight: 1, do: (*soakWorld).replaceNode},
	{name: "udp-pair", weight: 1, do: (*soakWorld).udpPair},
}

// draw picks the next fault kind at random, by weight.
func (w *soakWorld) draw() faultKind {
	total := 0
	for _, k := range faultKinds {
		total += k.weight
	}
	x := w.rng.IntN(total)
	for _, k := range faultKinds {
		if x < k.weight {
			return k
		}
		x -= k.weight
	}
	panic("unreachable")
}

func (w *soakWorld) fatal(err error) {
	if err != nil {
		w.t.Fatal(err)
	}
}

// sigkill crashes a node's agent and starts it again a little later, as
// a supervisor (kubelet) would.
func (w *soakWorld) sigkill() (string, string) {
	n := w.target()
	down := w.between(300*time.Millisecond, 4*time.Second)
	w.fatal(w.procs[n.Name].Kill())
	time.Sleep(down)
	w.startAgent(n)
	return n.Name, fmt.Sprintf("restart after %v", down.Round(time.Millisecond))
}

// sigterm stops a node's agent cleanly (a drain) and starts it again.
func (w *soakWorld) sigterm() (string, string) {
	n := w.target()
	p := w.procs[n.Name]
	w.fatal(p.Signal(syscall.SIGTERM))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		w.t.Errorf("vipd on %s after SIGTERM: %v", n.Name, err)
	}
	down := w.between(200*time.Millisecond, 3*time.Second)
	time.Sleep(down)
	w.startAgent(n)
	return n.Name, fmt.Sprintf("restart after %v", down.Round(time.Millisecond))
}

// linkFlap pulls a node's cable and plugs it back.
func (w *soakWorld) linkFlap() (string, string) {
	n := w.target()
	d := w.between(300*time.Millisecond, 5*time.Second)
	w.fatal(n.LinkDown())
	time.Sleep(d)
	w.fatal(n.LinkUp())
	return n.Name, fmt.Sprintf("down %v", d.Round(time.Millisecond))
}

// apiCut cuts a node (mostly a holder) from the API server only.
func (w *soakWorld) apiCut() (string, string) {
	n := w.target()
	d := w.between(time.Second, 10*time.Second)
	w.fatal(n.BlockAPI())
	time.Sleep(d)
	w.fatal(n.UnblockAPI())
	return n.Name, fmt.Sprintf("cut %v", d.Round(time.Millisecond))
}

// apiStop stops the API server for everyone.
func (w *soakWorld) apiStop() (string, string) {
	d := w.between(2*time.Second, 30*time.Second)
	w.s.lab.StopAPI()
	time.Sleep(d)
	w.fatal(w.s.lab.StartAPI())
	return "all", fmt.Sprintf("stopped %v", d.Round(time.Millisecond))
}

// loss drops 10% of a node's frames each way for a while.
func (w *soakWorld) loss() (string, string) {
	n := w.target()
	d := w.between(3*time.Second, 20*time.Second)
	w.fatal(n.DropPercent(10))
	time.Sleep(d)
	w.fatal(n.DropPercent(0))
	return n.Name, fmt.Sprintf("for %v", d.Round(time.Millisecond))
}

// udpPair drops UDP (the heartbeats) between two members, both ways.
func (w *soakWorld) udpPair() (string, string) {
	i := w.rng.IntN(len(w.members))
	j := (i + 1 + w.rng.IntN(len(w.members)-1)) % len(w.members)
	a, b := w.members[i], w.members[j]
	d := w.between(3*time.Second, 20*time.Second)
	w.fatal(a.DropUDP(b))
	time.Sleep(d)
	w.fatal(a.DropUDP())
	return a.Name + "/" + b.Name, fmt.Sprintf("for %v", d.Round(time.Millisecond))
}

// replaceNode loses a node for good (its agent killed, its cable pulled)
// and, a little later, a new node joins in its place.
func (w *soakWorld) replaceNode() (string, string) {
	n := w.target()
	w.fatal(w.procs[n.Name].Kill())
	w.fatal(n.LinkDown())
	var kept []*lab.Node
	for _, m := range w.members {
		if m != n {
			kept = append(kept, m)
		}
	}
	w.members = kept
	w.check.dropNode(n.Name)
	delete(w.procs, n.Name)
	d := w.between(time.Second, 5*time.Second)
	time.Sleep(d)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nn, err := w.s.lab.AddNode(ctx)
	w.fatal(err)
	w.fatal(w.check.addNode(nn))
	w.members = append(w.members, nn)
	w.startAgent(nn)
	return n.Name, fmt.Sprintf("%s joins after %v", nn.Name, d.Round(time.Millisecond))
}
