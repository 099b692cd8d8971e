package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/hbkey"
	"github.com/vipd/vipd/internal/lab"
	"github.com/vipd/vipd/internal/lab/controlplane"
)

const (
	demoNodes = 3
	// The Lease vipd uses for the control-plane VIP by default.
	leaseNamespace = "kube-system"
	leaseName      = "plndr-cp-lock"
	// The Secret the agents read their heartbeat key from, by default.
	keySecret = "vipd-heartbeat-key"
	// Every node answers TCP connections here with its name.
	responderPort = 8080
	// The client's ping loop interval, as in MEASURE.md.
	pingInterval = 10 * time.Millisecond
	// How often the node namespaces' addresses are read while a VIP moves.
	holderPoll = 2 * time.Millisecond
)

type demoOptions struct {
	vipd    string
	logDir  string
	verbose bool
}

// demo is one run of the demo: what it set up (torn down by teardown) and
// where it narrates.
type demo struct {
	opts   demoOptions
	out    io.Writer // the narration
	errOut io.Writer // logs, with --verbose
	began  time.Time
	vip    netip.Addr

	cp         *controlplane.ControlPlane
	admin      kubernetes.Interface
	lab        *lab.Lab
	kubeconfig string
	// operator is a kubeconfig for vipd status, run on the host.
	operator string
	agents   map[string]*lab.Process // the latest vipd started on each node
	agentsUp time.Time               // when the first agents were started

	results []result
}

// result is one failover as the client saw it, for the closing summary.
type result struct {
	scenario          string
	held, neigh, gap  time.Duration
	newHolder, before string
}

func runDemo(ctx context.Context, opts demoOptions, out, errOut io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo builds network namespaces and must run as root (sudo make demo)")
	}
	bin, err := filepath.Abs(opts.vipd)
	if err != nil {
		return fmt.Errorf("--vipd %s: %w", opts.vipd, err)
	}
	if info, err := os.Stat(bin); err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		return fmt.Errorf("--vipd %s: not an executable file (make build puts vipd in bin/vipd)", opts.vipd)
	}
	opts.vipd = bin
	// envtest logs through controller-runtime's logger; without one set it
	// prints a warning with a stack trace after 30 s.
	ctrllog.SetLogger(ctrllog.Log.WithSink(ctrllog.NullLogSink{}))

	d := &demo{
		opts:   opts,
		out:    out,
		errOut: errOut,
		began:  time.Now(),
		vip:    netip.MustParseAddr(lab.ControlPlaneVIPv4),
		agents: map[string]*lab.Process{},
	}
	defer func() {
		if err != nil && ctx.Err() == nil {
			d.dumpAgentLogs()
		}
		err = errors.Join(err, d.teardown())
	}()
	fmt.Fprintf(out, "vipd demo: %d nodes on one layer-2 segment share the control-plane VIP %s.\n", demoNodes, d.vip)
	fmt.Fprintf(out, "The Lease %s/%s names the node that holds it; a client on the segment watches.\n", leaseNamespace, leaseName)
	for _, step := range []func(context.Context) error{d.setUp, d.firstHolder, d.graceful, d.nodeLoss, d.comeBack} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	d.summary()
	return nil
}

func (d *demo) setUp(ctx context.Context) error {
	d.section("Setting up")
	var logger *slog.Logger
	if d.opts.verbose {
		logger = slog.New(slog.NewTextHandler(d.errOut, nil))
	} else {
		logger = slog.New(slog.DiscardHandler)
	}
	began := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	cp, err := controlplane.Start(sctx, controlplane.Options{Logger: logger})
	if err != nil {
		return err
	}
	d.cp = cp
	if d.admin, err = kubernetes.NewForConfig(cp.Config()); err != nil {
		return fmt.Errorf("building the demo's API client: %w", err)
	}
	d.say("etcd and kube-apiserver are up (%s), listening on %s", dur(time.Since(began)), cp.Addr())
	key, err := hbkey.NewKey()
	if err != nil {
		return err
	}
	if _, err := d.admin.CoreV1().Secrets(leaseNamespace).Create(sctx, hbkey.Secret(leaseNamespace, keySecret, key), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the heartbeat key Secret: %w", err)
	}
	d.say("a random key in Secret %s/%s authenticates the heartbeats between the agents", leaseNamespace, keySecret)

	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var labLog func(string, ...any)
	if d.opts.verbose {
		labLog = func(format string, args ...any) { fmt.Fprintf(d.errOut, "lab: "+format+"\n", args...) }
	}
	l, err := lab.New(lctx, lab.Options{Nodes: demoNodes, Name: "demo", Dir: d.opts.logDir, Logf: labLog})
	if err != nil {
		return err
	}
	d.lab = l
	d.say("lab: one bridge (namespace %s) joins", l.BridgeNetns)
	for _, n := range l.Nodes {
		d.say("  node   %s  %-15s %s", n.Name, n.IPv4, n.MAC)
	}
	d.say("  client %s  %-15s %s", l.Client.Name, l.Client.IPv4, l.Client.MAC)
	d.say("  and the API server, proxied at %s", l.APIServerURL())
	if err := l.ServeAPI(cp.Addr()); err != nil {
		return err
	}
	kc, err := cp.Kubeconfig(l.APIServerURL())
	if err != nil {
		return err
	}
	d.kubeconfig = filepath.Join(l.Dir(), "kubeconfig")
	if err := os.WriteFile(d.kubeconfig, kc, 0o600); err != nil {
		return fmt.Errorf("writing the agents' kubeconfig: %w", err)
	}
	if kc, err = cp.Kubeconfig("https://" + cp.Addr()); err != nil {
		return err
	}
	d.operator = filepath.Join(l.Dir(), "operator-kubeconfig")
	if err := os.WriteFile(d.operator, kc, 0o600); err != nil {
		return fmt.Errorf("writing the operator's kubeconfig: %w", err)
	}
	for _, n := range l.Nodes {
		if err := n.ServeTCP(responderPort); err != nil {
			return err
		}
	}
	d.say("every node answers TCP on port %d with its name", responderPort)
	d.say("starting vipd on each node:")
	d.say("  %s %s", d.opts.vipd, strings.Join(d.agentArgs(l.Nodes[0]), " "))
	d.agentsUp = time.Now()
	for _, n := range l.Nodes {
		if err := d.startAgent(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) agentArgs(n *lab.Node) []string {
	return []string{"run", "--control-plane", "--address", d.vip.String(), "--interface", "eth0",
		"--node-name", n.Name, "--namespace", leaseNamespace, "--kubeconfig", d.kubeconfig}
}

func (d *demo) startAgent(ctx context.Context, n *lab.Node) error {
	p, err := n.Start(ctx, d.opts.vipd, d.agentArgs(n), nil)
	if err != nil {
		return err
	}
	d.agents[n.Name] = p
	return nil
}

// firstHolder waits for the election and shows the client reaching the VIP.
func (d *demo) firstHolder(ctx context.Context) error {
	d.section("Who holds the VIP?")
	var holder *lab.Node
	err := poll(ctx, 30*time.Second, 10*time.Millisecond, "waiting for a node to hold "+d.vip.String(), func() (bool, error) {
		if err := d.agentsRunning(nil); err != nil {
			return false, err
		}
		hs, err := d.holders(d.lab.Nodes)
		if err != nil || len(hs) > 1 {
			return false, errors.Join(err, twoHolders(hs))
		}
		if len(hs) == 1 {
			holder = hs[0]
		}
		return holder != nil, nil
	})
	if err != nil {
		return err
	}
	d.say("%s has %s on its eth0, %s after the agents started", holder.Name, d.vip, dur(time.Since(d.agentsUp)))
	if err := d.showLease(ctx); err != nil {
		return err
	}
	if err := d.showStatus(ctx, holder.Name, "--nodes"); err != nil {
		return err
	}
	if err := d.showStatus(ctx, holder.Name); err != nil {
		return err
	}
	c := d.lab.Client
	if err := c.Ping(ctx, d.vip); err != nil {
		return err
	}
	d.say("client %s pings %s: answered", c.Name, d.vip)
	if err := d.showNeighbor(); err != nil {
		return err
	}
	return d.showTCP(ctx)
}

// graceful stops the holder's agent with SIGTERM, as a drain or a rolling
// update does, then brings it back as a follower.
func (d *demo) graceful(ctx context.Context) error {
	old, err := d.holder()
	if err != nil {
		return err
	}
	d.section("Failover 1, graceful: SIGTERM to vipd on " + old.Name + " (a node drain or rolling update)")
	p := d.agents[old.Name]
	o, err := d.failover(ctx, old, false, func() error { return p.Signal(syscall.SIGTERM) })
	if err != nil {
		return err
	}
	if !o.oldGone.IsZero() {
		o.events = append(o.events, event{o.oldGone, fmt.Sprintf("%s removed %s from its eth0", old.Name, d.vip)})
	}
	d.report(o)
	if o.overlap {
		d.say("%s and %s had the VIP at the same moment", old.Name, o.newHolder.Name)
	} else {
		d.say("at no moment did two nodes have the VIP")
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.Wait(wctx); err != nil {
		return fmt.Errorf("vipd on %s after SIGTERM: %w", old.Name, err)
	}
	d.say("vipd on %s exited with status 0", old.Name)
	if err := d.showLease(ctx); err != nil {
		return err
	}
	if err := d.showStatus(ctx, o.newHolder.Name); err != nil {
		return err
	}
	if err := d.showTCP(ctx); err != nil {
		return err
	}
	d.keep("graceful (SIGTERM)", old, o)

	d.say("restarting vipd on %s (the rolling update is done)", old.Name)
	if err := d.startAgent(ctx, old); err != nil {
		return err
	}
	if err := d.waitAgentUp(ctx, old); err != nil {
		return err
	}
	if hs, err := d.holders(d.lab.Nodes); err != nil || len(hs) != 1 || hs[0] != o.newHolder {
		return errors.Join(err, fmt.Errorf("after %s rejoined, %v hold the VIP, want only %s", old.Name, names(hs), o.newHolder.Name))
	}
	d.say("%s is back and follows; %s keeps the VIP", old.Name, o.newHolder.Name)
	return nil
}

// nodeLoss kills the holder's agent and takes its link down: nothing tells
// the others, they must notice that its heartbeats stopped or that its node
// Lease is no longer renewed.
func (d *demo) nodeLoss(ctx context.Context) error {
	old, err := d.holder()
	if err != nil {
		return err
	}
	d.section("Failover 2, node loss: SIGKILL to vipd on " + old.Name + " and its link down")
	var last *coordinationv1.Lease
	o, err := d.failover(ctx, old, true, func() error {
		if err := d.agents[old.Name].Kill(); err != nil {
			return err
		}
		if err := old.LinkDown(); err != nil {
			return err
		}
		// Nobody renews old's node Lease any more.
		var err error
		last, err = d.nodeLease(ctx, old.Name)
		return err
	})
	if err != nil {
		return err
	}
	// Through the API alone, the others may consider old gone once its
	// node Lease expires.
	var early string
	if last != nil {
		renewed := last.Spec.RenewTime.Time
		secs := *last.Spec.LeaseDurationSeconds
		if expires := renewed.Add(time.Duration(secs) * time.Second); expires.After(o.t0) {
			o.events = append(o.events, event{renewed,
				fmt.Sprintf("%s renews its node Lease %s for the last time (valid %d s from a renewal)", old.Name, last.Name, secs)})
			if expires.Before(o.held) {
				o.events = append(o.events, event{expires, fmt.Sprintf("Lease %s expires: %s is no longer live", last.Name, old.Name)})
			} else {
				early = fmt.Sprintf("%s took over %s before %s's node Lease expired (at %s): the agents noticed that %s's heartbeats stopped",
					o.newHolder.Name, dur(expires.Sub(o.held)), old.Name, signed(expires.Sub(o.t0)), old.Name)
			}
		}
	}
	d.report(o)
	if early != "" {
		d.say("%s", early)
	}
	if err := d.leftover(ctx, old, o.t0); err != nil {
		return err
	}
	if err := d.showLease(ctx); err != nil {
		return err
	}
	if err := d.showStatus(ctx, o.newHolder.Name); err != nil {
		return err
	}
	if err := d.showStatus(ctx, o.newHolder.Name, "--nodes"); err != nil {
		return err
	}
	if err := d.showTCP(ctx); err != nil {
		return err
	}
	d.keep("node loss (SIGKILL, link down)", old, o)
	return nil
}

// leftover tells what became of the VIP on the lost node, whose agent
// died holding it: it stays until an agent removes it, unless vipd gave it
// a lifetime, which nobody renews any more.
func (d *demo) leftover(ctx context.Context, old *lab.Node, t0 time.Time) error {
	found, valid, err := addrOn(old.Netns, "eth0", d.vip)
	switch {
	case err != nil:
		return err
	case !found:
		d.say("%s's eth0 no longer has %s", old.Name, d.vip)
		return nil
	case valid == forever:
		d.say("%s, off the segment, still has %s on its eth0: its agent died before it could remove it", old.Name, d.vip)
		return nil
	}
	d.say("%s, off the segment, still has %s on its eth0; its lifetime has %d s left and nobody renews it", old.Name, d.vip, int(valid.Seconds()))
	err = poll(ctx, valid+5*time.Second, 10*time.Millisecond, "waiting for the VIP on "+old.Name+" to expire", func() (bool, error) {
		has, err := hasAddr(old.Netns, "eth0", d.vip)
		return !has, err
	})
	if err != nil {
		return err
	}
	d.at(t0, time.Now(), "%s's kernel removed %s: its lifetime ran out", old.Name, d.vip)
	return nil
}

// comeBack returns the lost node: its new agent must clear any address the
// killed one left before the node is back on the segment.
func (d *demo) comeBack(ctx context.Context) error {
	var lost *lab.Node
	for _, n := range d.lab.Nodes {
		if d.agents[n.Name].Exited() {
			lost = n
		}
	}
	if lost == nil {
		return errors.New("no node lost its agent")
	}
	holder := d.results[len(d.results)-1].newHolder
	d.section(lost.Name + " comes back")
	stale, err := hasAddr(lost.Netns, "eth0", d.vip)
	if err != nil {
		return err
	}
	d.say("restarting vipd on %s while its link is still down", lost.Name)
	t0 := time.Now()
	if err := d.startAgent(ctx, lost); err != nil {
		return err
	}
	if !stale {
		d.say("(%s's eth0 no longer has the VIP: nothing to clean up)", lost.Name)
	} else {
		err := poll(ctx, 10*time.Second, holderPoll, "waiting for "+lost.Name+" to drop the stale VIP", func() (bool, error) {
			has, err := hasAddr(lost.Netns, "eth0", d.vip)
			return !has, err
		})
		if err != nil {
			return err
		}
		d.at(t0, time.Now(), "vipd on %s removed the VIP its killed predecessor left on eth0", lost.Name)
		d.say("(vipd marks the addresses it adds with IFA_PROTO 0x76 and clears its own leftovers when it starts)")
	}
	if err := d.waitAgentUp(ctx, lost); err != nil {
		return err
	}
	if err := lost.LinkUp(); err != nil {
		return err
	}
	d.say("%s's link is up again", lost.Name)
	hs, err := d.holders(d.lab.Nodes)
	if err != nil {
		return err
	}
	if len(hs) != 1 || hs[0].Name != holder {
		return fmt.Errorf("after %s came back, %v hold the VIP, want only %s", lost.Name, names(hs), holder)
	}
	d.say("%s follows; %s keeps the VIP", lost.Name, holder)
	return d.showTCP(ctx)
}

// outcome is what one failover looked like; times are absolute.
type outcome struct {
	t0        time.Time // the disruption
	oldGone   time.Time // the old holder's eth0 lost the VIP (zero if it kept it)
	newHolder *lab.Node
	held      time.Time // the new holder had the VIP
	garp      *lab.Announcement
	neigh     time.Time // the client's neighbour entry showed the new holder
	gap       time.Duration
	dups      int  // echo replies beyond the first: two nodes answered
	overlap   bool // the old and the new holder had the VIP at once
	// events are more moments to show in the timeline.
	events []event
}

type event struct {
	t   time.Time
	msg string
}

// failover disrupts old, the holder, while the client pings the VIP every
// 10 ms and captures announcements, and measures the takeover. With
// offSegment the old holder is unreachable afterwards, so whatever is left
// on its interface does not count as holding the VIP.
func (d *demo) failover(ctx context.Context, old *lab.Node, offSegment bool, disrupt func() error) (outcome, error) {
	c := d.lab.Client
	capture, err := c.Capture(ctx)
	if err != nil {
		return outcome{}, err
	}
	defer capture.Close()
	loopStart := time.Now()
	rec, err := c.PingLoop(ctx, d.vip, pingInterval)
	if err != nil {
		return outcome{}, err
	}
	defer rec.Stop()
	repliesSince := func(t time.Time) int {
		n := 0
		for _, r := range rec.Replies() {
			if r.After(t) {
				n++
			}
		}
		return n
	}
	// A steady stream of replies first, so the gap measured is the failover's.
	err = poll(ctx, 5*time.Second, pingInterval, "waiting for the client's pings to be answered", func() (bool, error) {
		return repliesSince(loopStart) >= 20, nil
	})
	if err != nil {
		return outcome{}, err
	}
	d.say("client %s pings %s every %s; disrupting %s now", c.Name, d.vip, dur(pingInterval), old.Name)

	o := outcome{t0: time.Now()}
	if err := disrupt(); err != nil {
		return o, err
	}
	err = poll(ctx, 30*time.Second, holderPoll, "waiting for another node to take "+d.vip.String(), func() (bool, error) {
		now := time.Now()
		if err := d.agentsRunning(old); err != nil {
			return false, err
		}
		hs, err := d.holders(d.lab.Nodes)
		if err != nil {
			return false, err
		}
		oldHas := slices.Contains(hs, old)
		others := slices.DeleteFunc(hs, func(n *lab.Node) bool { return n == old })
		if len(others) > 1 {
			return false, twoHolders(others)
		}
		if !oldHas && o.oldGone.IsZero() {
			o.oldGone = now
		}
		if len(others) == 1 {
			if o.newHolder == nil {
				o.newHolder, o.held = others[0], now
			}
			o.overlap = o.overlap || (oldHas && !offSegment)
		}
		return o.newHolder != nil && (offSegment || !oldHas), nil
	})
	if err != nil {
		return o, err
	}
	want := o.newHolder.MAC
	err = poll(ctx, 10*time.Second, 5*time.Millisecond, "waiting for the client's neighbour entry to follow", func() (bool, error) {
		mac, _, err := c.Neighbor(d.vip)
		if err != nil || !bytes.Equal(mac, want) {
			return false, nil // absent or still resolving: look again
		}
		o.neigh = time.Now()
		return true, nil
	})
	if err != nil {
		return o, err
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	a, err := capture.WaitFor(actx, func(a lab.Announcement) bool {
		return a.IP == d.vip && bytes.Equal(a.MAC, want) && !a.Time.Before(o.t0)
	})
	if err == nil {
		o.garp = &a
		// vipd announces only a VIP that is on its interface: an
		// announcement seen before the address poll saw the VIP dates the
		// takeover more precisely than the poll.
		if a.Time.Before(o.held) {
			o.held = a.Time
		}
	}
	// Pings answered after the move close the gap being measured.
	after := o.neigh
	err = poll(ctx, 5*time.Second, pingInterval, "waiting for pings to the new holder to be answered", func() (bool, error) {
		return repliesSince(after) >= 10, nil
	})
	if err != nil {
		return o, err
	}
	rec.Stop()
	o.gap = rec.LongestGap(loopStart, time.Now())
	for _, e := range rec.Echoes() {
		o.dups += e.Dups
	}
	return o, rec.Err()
}

// report prints a failover's timeline, relative to the disruption.
func (d *demo) report(o outcome) {
	n := o.newHolder
	events := append(slices.Clone(o.events),
		event{o.held, fmt.Sprintf("%s has %s on its eth0", n.Name, d.vip)},
		event{o.neigh, fmt.Sprintf("client's neighbour entry for %s shows %s (%s)", d.vip, n.MAC, n.Name)})
	if o.garp != nil {
		kind := "an announcement"
		if o.garp.Kind == "arp-request" && o.garp.Gratuitous {
			kind = "a gratuitous ARP"
		}
		events = append(events, event{o.garp.Time, fmt.Sprintf("client gets %s: %s is at %s (%s)", kind, d.vip, o.garp.MAC, n.Name)})
	}
	// Stable: of two events at the same moment, the cause comes first.
	slices.SortStableFunc(events, func(a, b event) int { return a.t.Compare(b.t) })
	for _, e := range events {
		d.at(o.t0, e.t, "%s", e.msg)
	}
	d.say("longest time without a ping reply: %s (one ping every %s)", dur(o.gap), dur(pingInterval))
	if o.dups > 0 {
		d.say("%d pings were answered more than once: two nodes answered for the VIP", o.dups)
	}
}

// keep records a failover for the summary.
func (d *demo) keep(scenario string, old *lab.Node, o outcome) {
	d.results = append(d.results, result{scenario: scenario, before: old.Name, newHolder: o.newHolder.Name,
		held: o.held.Sub(o.t0), neigh: o.neigh.Sub(o.t0), gap: o.gap})
}

func (d *demo) summary() {
	d.section("Summary")
	row := "%-32s %-9s %-14s %-19s %s\n"
	fmt.Fprintf(d.out, row, "scenario", "holder", "new holder at", "neighbour entry at", "longest ping gap")
	for _, r := range d.results {
		fmt.Fprintf(d.out, row, r.scenario, r.before+"→"+r.newHolder, "+"+dur(r.held), "+"+dur(r.neigh), dur(r.gap))
	}
}

// teardown removes everything the demo made, whatever state it is in, and
// checks that no namespace of the lab is left.
func (d *demo) teardown() error {
	if d.lab == nil && d.cp == nil {
		return nil
	}
	d.section("Tearing down")
	began := time.Now()
	var errs []error
	if d.lab != nil {
		prefix := strings.TrimSuffix(d.lab.BridgeNetns, "-br")
		if err := d.lab.Close(); err != nil {
			errs = append(errs, fmt.Errorf("removing the lab: %w", err))
		}
		left, err := namespacesWithPrefix(prefix)
		switch {
		case err != nil:
			errs = append(errs, err)
		case len(left) > 0:
			errs = append(errs, fmt.Errorf("namespaces left behind: %v", left))
		default:
			d.say("agents stopped, the lab's namespaces deleted: `ip netns list` shows none of %s-*", prefix)
		}
	}
	if d.cp != nil {
		if err := d.cp.Stop(); err != nil {
			errs = append(errs, err)
		} else {
			d.say("etcd and kube-apiserver stopped")
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	d.say("done in %s", dur(time.Since(began)))
	return nil
}

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
