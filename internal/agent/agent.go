// Package agent wires configuration, election, addresses and announcements
// into one running vipd.
//
// Data flows one way: the election's status gives the desired set of VIPs
// (planFor), and the reconciler makes the interface and the announcer match
// it. Nothing else adds, removes or announces a VIP.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/vipd/vipd/internal/address"
	"github.com/vipd/vipd/internal/backoff"
	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/guard"
	"github.com/vipd/vipd/internal/heartbeat"
	"github.com/vipd/vipd/internal/nodes"
	"github.com/vipd/vipd/internal/services"
	"k8s.io/apimachinery/pkg/types"
)

// resyncInterval is how often the reconciler re-reads the interface even
// when nothing changed, to repair an address someone else removed.
const resyncInterval = 5 * time.Second

// handoverLinger is how long a node keeps a VIP it handed over after it
// sees the new holder (handovers): longer than the new holder takes from
// its claim write to its announcement.
const handoverLinger = 100 * time.Millisecond

// refreshEvery is the least time between two renewals of the VIPs'
// lifetimes. With the loop's resync every quarter lifetime (loopEvery),
// they are renewed about twice per lifetime, which leaves half of it for a
// late reconciliation. Each renewal is a netlink write per VIP held; with
// hundreds held, renewing on every reconciliation was the agent's largest
// cost (docs/scale-runs.md).
func refreshEvery(cfg config.Config) time.Duration {
	return cfg.VIPLifetime * 3 / 8
}

// changeGap and busyGap are how long other agents' claims and changes of
// the Services are gathered before a reconciliation. While a thousand
// Services are placed, each Service and each Lease event changes one
// contest, and a pass made the bindings again and looked at every one, so
// a pass per event made placing cost the number of events times the number
// of Services (docs/scale-runs.md); making the bindings still costs that. The first change after a quiet spell is acted on
// at once; later ones wait for the gap. It is changeGap while this agent keeps a VIP silent for a handover
// or keeps one after losing it (PreserveVIPOnLeadershipLoss): it is waiting
// to see the new holder then. A VIP this agent takes or loses in the
// election is acted on at once.
const (
	changeGap = 20 * time.Millisecond
	busyGap   = 100 * time.Millisecond
)

// passShare and maxGap stretch busyGap while passes are dear: a pass that
// follows a change of the Services makes every binding again, so with
// thousands of Services it costs milliseconds,
// and a pass every busyGap on each of ten agents sharing a machine with
// the API server took the CPU its renewals needed (5,000 Services on the
// benchmark's two cores, docs/scale.md). While other agents' changes
// and the Services' stream in, passes are at least passShare times their
// own wall time apart (so at most a twentieth of the time), never more
// than maxGap. What this agent takes or loses is still acted on at once.
const (
	passShare = 20
	maxGap    = time.Second
)

// gatherGap is how long after a pass the changes of other agents and of
// the Services are gathered before the next: changeGap while this agent
// waits to see a new holder, else busyGap stretched to passShare times
// the last pass's cost, at most maxGap.
func gatherGap(waiting bool, passCost time.Duration) time.Duration {
	if waiting {
		return changeGap
	}
	return min(max(busyGap, passShare*passCost), maxGap)
}

// releaseTimeout bounds the final Lease release on shutdown, so a dead API
// server cannot hold up a node drain.
const releaseTimeout = 2 * time.Second

// The guard's dead-man switch: renewed every guardRefresh while the
// reconciler has run within guardStuck, it lapses guardAnswerTimeout after
// the last renewal and, with heartbeats, no later than guardAnswerTimeout
// after this agent's last round of beats (Guard.RefreshUntil); then the
// node stops answering ARP and NDP for its VIPs. The reconciler runs at
// least every guardResync, so a healthy agent always has.
//
// The survivors of a crash judge it silent a heartbeat Timeout (200 ms)
// after the send time of their last beat it echoed, which can be one beat
// interval (20 ms) before its last round: the earliest takeover comes
// 180 ms after that round. The crashed node's kernel falls silent at most
// 130 + 4 (nftables' millisecond rounding) = 134 ms after it: the two
// never answer together, with 46 ms to spare for the crashed agent's own
// delays in reading beats (docs/guard.md). A 200 ms timeout from the last
// renewal, as before, let it answer for up to ~40 ms beside the new
// holder. A live agent's node falls silent only if its beats stop for
// 130 ms, or no renewal comes for about 100 ms.
const (
	guardRefresh       = 25 * time.Millisecond
	guardAnswerTimeout = 130 * time.Millisecond
	guardResync        = time.Second
	guardStuck         = 4 * guardResync
)

// newGuard sets up the ARP/NDP guard. Its entries for the VIPs outlive
// their addresses' lifetime a little, so a crashed agent's guard lapses
// only after the kernel removed the addresses themselves.
func newGuard(cfg config.Config, log *slog.Logger) (*guard.Guard, error) {
	var keep time.Duration
	if cfg.VIPLifetime > 0 {
		keep = cfg.VIPLifetime + 2*time.Second
	}
	g, err := guard.New(guard.Options{AnswerTimeout: guardAnswerTimeout, GuardTimeout: keep, Log: log})
	if err != nil {
		return nil, fmt.Errorf("setting up the ARP/NDP guard: %w", err)
	}
	return g, nil
}

// Run runs the agent until ctx is cancelled; then it steps down cleanly
// (stops announcing, removes its VIPs, releases its Leases) and returns.
// Every check that can fail on bad configuration runs before anything on
// the node is changed.
func Run(ctx context.Context, cfg config.Config, version string, log *slog.Logger) error {
	ns, err := address.OpenCurrent()
	if err != nil {
		return err
	}
	defer ns.Close()
	iface, err := resolveInterface(ns, cfg.Interface)
	if err != nil {
		return err
	}
	// Named from here on, for what the agent publishes about itself.
	cfg.Interface = iface.Name
	place, err := newPlacer(cfg.NodeName, cfg.NodeSelector, cfg.ServiceExcludeControlPlane, log)
	if err != nil {
		return err
	}
	for _, vip := range cfg.VIPs {
		if err := checkNotNodeAddress(ns, vip); err != nil {
			return err
		}
	}

	m := newMetrics()
	vm := newVIPMetrics(m.reg)
	client, err := newClient(cfg, log, func(rt http.RoundTripper) http.RoundTripper {
		return writeMetrics{next: rt, errors: vm.apiErrors, seconds: vm.apiWrites}
	})
	if err != nil {
		return err
	}
	var hb *heartbeat.Monitor
	elCfg := election.Config{
		Client:    client,
		Namespace: cfg.AgentNamespace,
		// kube-vip's Leases stay where kube-vip kept them.
		LeaseNamespaces: map[string]string{cfg.LeaseName: cfg.Namespace, cfg.ServiceLeaseName: cfg.Namespace},
		Identity:        cfg.NodeName,
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.RenewDeadline,
		RetryPeriod:     cfg.RetryPeriod,
		Log:             log,
		OrphanPrefix:    ServiceLeasePrefix,
	}
	elCfg.NodeAnnotations = map[string]string{AnnotationVersion: version, AnnotationConfig: InfoFor(cfg).Encode(),
		AnnotationMAC: iface.HardwareAddr.String()}
	if own, err := nodeAddrList(ns); err == nil {
		// Other agents refuse Service addresses that are this node's.
		elCfg.NodeAnnotations[AnnotationNodeAddrs] = own
	} else {
		log.Warn("cannot list this node's addresses for the other agents", "err", err)
	}
	var pr *peers
	if cfg.HeartbeatPort != 0 {
		if hb, err = newHeartbeat(cfg, iface, m, log); err != nil {
			return err
		}
		defer hb.Close()
		pr = newPeers(hb, log)
		elCfg.Peers = pr
		elCfg.PeerAddr = hb.Addr().String()
	}
	el, err := election.New(elCfg)
	if err != nil {
		return fmt.Errorf("setting up the election: %w", err)
	}
	// Background work ends only after shutdown has released the Leases.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	var events *leaseEvents
	if cfg.ControlPlane {
		if events, err = newLeaseEvents(bg, client, cfg.NodeName, cfg.Namespace, cfg.LeaseName); err != nil {
			return err
		}
	}
	obs := newObserver(log, cfg.NodeName, el, vm, events)
	scrape := scrapeSources{obs: obs, el: el, hb: hb, version: version}
	var svc *services.Controller
	if cfg.Services {
		svc, err = services.New(services.Config{
			Client:        client,
			Namespace:     cfg.ServiceNamespace,
			Class:         cfg.LoadBalancerClass,
			OnlyOwnClass:  cfg.LoadBalancerClassOnly,
			PoolNamespace: cfg.PoolNamespace,
			PoolConfigMap: cfg.PoolConfigMap,
			NodeName:      cfg.NodeName,
			Log:           log,
			Reporter:      obs.Reporter,
			ReporterGrace: cfg.LeaseDuration,
			Claiming:      el.Claiming,
		})
		if err != nil {
			return fmt.Errorf("setting up LoadBalancer Services: %w", err)
		}
		scrape.synced = svc.Synced
	}
	m.reg.MustRegister(scrapeCollector{src: scrape})

	if cfg.MetricsAddr != "" {
		if err := m.serve(ctx, cfg.MetricsAddr, log); err != nil {
			return err
		}
	}
	if cfg.DebugAddr != "" {
		if err := serveDebug(ctx, cfg.DebugAddr, log); err != nil {
			return err
		}
	}
	every := loopEvery(cfg)
	h := newHealth(el, svc, every, cfg.LeaseDuration)
	if cfg.HealthAddr != "" {
		if err := serveHealth(ctx, cfg.HealthAddr, h, log); err != nil {
			return err
		}
	}

	if !cfg.ARP {
		log.Warn("vip_arp is off: VIPs are added but never announced; clients learn the new holder only when their neighbour entries expire")
	}
	links := newLinks(ns, iface, cfg.ServicesInterface, cfg.VIPLifetime, cfg.ARP, cfg.ARPRate, m.reg, log)
	defer links.Close()
	if cfg.Services && links.svc != iface.Name {
		if problem := links.problem(links.svc); problem != "" {
			log.Warn("Service VIPs go on another interface, which this node lacks: it holds none of them until it has it", "iface", links.svc, "reason", problem)
		}
	}

	// From here on the node is changed. The guard keeps the kernel from
	// answering for VIPs vipd left on any interface; a VIP left by an
	// earlier run that crashed is not ours to hold until we win its
	// election again.
	var cpVIPs []netip.Addr
	if cfg.ControlPlane {
		cpVIPs = cfg.VIPs
	}
	done := make(chan error, 8)
	r := &reconciler{links: links, ann: &timedAnnouncer{announcer: links, obs: obs}, el: el, svc: svc, hb: hb, peers: pr,
		preserve: cfg.PreserveVIPOnLeadershipLoss, log: log, metrics: m, obs: obs, node: cfg.NodeName,
		handovers: handovers{max: cfg.LeaseDuration, linger: handoverLinger}, wake: make(chan struct{}, 1),
		refused: map[string]refusal{}, freshBound: map[string]bool{}, active: map[string]bool{}, badAddrs: map[string]string{}, refusals: backoff.Tracker[string]{Policy: refusalBackoff()},
		linksUp: map[string]bool{iface.Name: true}, refreshEvery: refreshEvery(cfg), renewals: renewalWatch{lifetime: cfg.VIPLifetime},
		settings: contestSettings{cpLease: cfg.LeaseName, cpVIPs: cpVIPs, svcLease: cfg.ServiceLeaseName, perAddress: cfg.ServiceElection,
			iface: iface.Name, svcIface: links.svc},
		place: place,
		startNodes: func() *nodes.Watcher {
			w := nodes.New(client, log)
			go func() { done <- wrap("watching Nodes", w.Run(bg)) }()
			return w
		}}
	if g, err := newGuard(cfg, log); err != nil {
		log.Error("no ARP/NDP guard: if this agent dies, its node may answer for its VIPs beside the new holder until they expire",
			"err", err, "vip_lifetime", cfg.VIPLifetime)
	} else {
		r.guard = g
		if stale, err := links.owned(); err == nil {
			var addrs []netip.Addr
			for _, o := range stale {
				addrs = append(addrs, o.Addr)
			}
			r.setGuard(addrs, nil) // silent until removed
		}
	}
	if err := removeStale(links, log); err != nil {
		return err
	}
	// A claim this node must let go is released only once its VIPs are
	// silent here, so that the next holder never answers beside it.
	el.SetSilenced(r.silenced)
	go func() { done <- wrap("election", el.Run(bg)) }()
	go reportAccess(bg, client, cfg, log)
	if hb != nil {
		go func() { done <- wrap("heartbeats", hb.Run(bg)) }()
		go func() { done <- wrap("heartbeat key", runFastPath(bg, cfg, client, hb, log)) }()
	} else {
		log.Warn("heartbeats are off (--heartbeat-port=0): failover waits for Lease expiry")
	}
	r.conflicts = r.newConflicts(m.reg)
	defer r.conflicts.close()
	go r.refreshGuard(bg, guardRefresh, guardStuck, lastRound(hb))
	ifaceEv := watchIface(bg, links, hb, log)
	var svcChanges <-chan struct{}
	if svc != nil {
		go func() { done <- wrap("watching Services", svc.Run(bg)) }()
		svcChanges = svc.Changes()
	} else {
		// Without Services the contests are known now. With them, they
		// are set once the Services are synced: contending with a partial
		// set would give up claims this node still holds.
		r.setBindings(cfg)
	}
	log.Info("agent started", "vips", cfg.VIPs, "iface", iface.Name, "services", cfg.Services, "services_iface", links.svc,
		"namespace", cfg.Namespace, "agent_namespace", cfg.AgentNamespace)

	resync := time.NewTicker(every)
	defer resync.Stop()
	stuck := wedge()
	// later brings the changes of other agents' contests gathered since the
	// last pass (changeGap); epoch is the election's LeadingEpoch then.
	var later <-chan time.Time
	var lastPass time.Time
	epoch := el.LeadingEpoch()
	// svcChanged: the Services changed since the last pass; rebind: the
	// bindings are to be made again before it (setBindings).
	svcChanged, rebind := false, false
	// gather reports whether a change is left for a pass within the gap
	// (gatherGap) after the last one, and arranges that pass.
	var passCost time.Duration // the last pass's, wall time
	gather := func() bool {
		wait := gatherGap(r.waiting(), passCost) - time.Since(lastPass)
		if wait <= 0 {
			return false
		}
		if later == nil {
			later = time.After(wait)
		}
		return true
	}
	for {
		h.beat()
		select {
		case <-stuck:
			log.Warn("test hook: the main loop stops until the agent is stopped")
			<-ctx.Done()
			r.shutdown()
			return nil
		case <-ctx.Done():
			r.shutdown()
			return nil
		case err := <-done:
			r.apply(plan{})
			if err == nil {
				err = errors.New("stopped unexpectedly")
			}
			return err
		case <-svcChanges:
			svcChanged = true
			if gather() {
				continue
			}
		case <-r.nodeChanges():
			rebind = true
		case <-el.Changes():
			if el.LeadingEpoch() == epoch && gather() {
				continue
			}
		case <-later:
			later = nil
		case <-r.wake:
			r.recheck = true
		case <-resync.C:
			r.recheck = true  // someone may have changed what vipd put in place
			r.fullPass = true // and every binding is looked at again
		case l := <-ifaceEv.link:
			r.linkChanged(l.name, l.st)
			r.forgetNodeAddrs()
			r.recheck = true
		case a := <-ifaceEv.gone:
			if !r.lostHeld(a) {
				continue
			}
			r.recheck = true
		case res := <-r.conflicts.results:
			r.probed(res, time.Now())
			r.recheck = true
		case a := <-r.conflicts.foreign:
			r.foreignAnswer(a)
			continue
		}
		passStart := time.Now()
		if svcChanged {
			svcChanged, rebind = false, true
		}
		if svc != nil && r.synced && !maps.Equal(r.peerAddrs, el.NodeAnnotation(AnnotationNodeAddrs)) {
			rebind = true // a node joined or its addresses changed
		}
		if rebind {
			// Once per pass, whatever asked for it.
			rebind = false
			r.setBindings(cfg)
		}
		epoch, lastPass = el.LeadingEpoch(), time.Now()
		r.reconcile()
		passCost = time.Since(passStart)
		// Published with the next renewal, for vipd status and the others.
		ann := map[string]string{}
		if hb != nil {
			ann[AnnotationPeers] = peersValue(hb.Peers())
		}
		if v := r.conflictAnnotation(time.Now()); v != "" {
			ann[AnnotationConflicts] = v
		}
		el.SetNodeAnnotations(ann)
	}
}

func wrap(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// binding ties VIPs to the contest whose holder carries them.
type binding struct {
	contest string
	vips    []netip.Addr
	// candidates restricts the holders (nil: any node).
	candidates []string
	// controlPlane: the control-plane election, whose vips are the
	// control-plane VIPs.
	controlPlane bool
	// services are the Services of each VIP, for logs and metrics: those
	// of vips[i] at i (nil without any; a slice, not a map, as a thousand
	// bindings of one VIP each are common).
	services [][]types.NamespacedName
	// iface is the interface the VIPs go on; needs is the same when it is
	// not --interface: a node lacking it is no candidate.
	iface, needs string
	// pool is the named pool of a Service address, and selector that
	// pool's node selector ("" any node).
	pool, selector string
	// local are the nodes with a ready endpoint when the VIP is restricted
	// to them (externalTrafficPolicy: Local); nil for none.
	local []string
	// pos is the binding's index in the reconciler's bindings.
	pos int
}

// sameBinding reports whether x and y bind the same VIPs and Services to
// the same contest, candidates and interface (pos aside).
func sameBinding(x, y binding) bool {
	return x.contest == y.contest && x.controlPlane == y.controlPlane && x.iface == y.iface && x.needs == y.needs &&
		x.pool == y.pool && x.selector == y.selector && slices.Equal(x.vips, y.vips) &&
		sameList(x.candidates, y.candidates) && sameList(x.local, y.local) &&
		slices.EqualFunc(x.services, y.services, slices.Equal)
}

// sameList compares two lists of nodes where nil (no restriction) differs
// from empty (no node).
func sameList(x, y []string) bool { return (x == nil) == (y == nil) && slices.Equal(x, y) }

// contests lists the contests of bs, in buf (whose contents it replaces).
func contests(buf []election.Contest, bs []binding) []election.Contest {
	out := buf[:0]
	for _, b := range bs {
		out = append(out, election.Contest{Name: b.contest, Candidates: b.candidates, Needs: b.needs})
	}
	return out
}

func resolveInterface(ns *address.Namespace, name string) (*address.Interface, error) {
	if name != "" {
		iface, err := ns.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("vip_interface %q: %w", name, err)
		}
		return iface, nil
	}
	iface, err := ns.Detect()
	if err != nil {
		return nil, fmt.Errorf("vip_interface is not set and no interface could be detected (set vip_interface): %w", err)
	}
	return iface, nil
}

// checkNotNodeAddress refuses a VIP that is already one of the node's own
// addresses: removing it on failover would cut the node off.
func checkNotNodeAddress(ns *address.Namespace, vip netip.Addr) error {
	ifname, found, err := ns.Conflicts(vip)
	if err != nil {
		return fmt.Errorf("checking whether %s is already in use: %w", vip, err)
	}
	if found {
		return fmt.Errorf("address %s: already assigned to interface %s and not added by vipd; a VIP must not be a node address", vip, ifname)
	}
	return nil
}

// removeStale removes the VIPs an earlier run left on any interface.
func removeStale(l *links, log *slog.Logger) error {
	stale, err := l.owned()
	if err != nil {
		return fmt.Errorf("listing VIPs left by an earlier run: %w", err)
	}
	for _, o := range stale {
		if err := l.remove(o); err != nil {
			return fmt.Errorf("removing VIP %s left on %s by an earlier run: %w", o.Addr, o.Interface, err)
		}
		log.Info("removed VIP left by an earlier run", "vip", o.Addr, "iface", o.Interface)
	}
	return nil
}
