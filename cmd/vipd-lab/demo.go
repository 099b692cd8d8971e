package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

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
		// Make before break: the stopping agent silenced the VIP (no
		// announcements, no ARP answers) but kept it until it saw the
		// new holder, so packets the client still sent to it were served.
		d.say("%s kept %s on its eth0, silent, until it saw %s hold it: the client was answered throughout", old.Name, d.vip, o.newHolder.Name)
	} else {
		d.say("%s removed %s before %s added it", old.Name, d.vip, o.newHolder.Name)
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
