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
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/vipd/vipd/internal/address"
	"github.com/vipd/vipd/internal/announce"
	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/heartbeat"
	"github.com/vipd/vipd/internal/services"
)

// resyncInterval is how often the reconciler re-reads the interface even
// when nothing changed, to repair an address someone else removed.
const resyncInterval = 5 * time.Second

// releaseTimeout bounds the final Lease release on shutdown, so a dead API
// server cannot hold up a node drain.
const releaseTimeout = 2 * time.Second

// Run runs the agent until ctx is cancelled; then it steps down cleanly
// (stops announcing, removes its VIPs, releases its Leases) and returns.
// Every check that can fail on bad configuration runs before anything on
// the node is changed.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	iface, err := resolveInterface(cfg.Interface)
	if err != nil {
		return err
	}
	log = log.With("iface", iface.Name)
	iface.Lifetime = cfg.VIPLifetime
	for _, vip := range cfg.VIPs {
		if err := checkNotNodeAddress(vip); err != nil {
			return err
		}
	}

	client, err := newClient(cfg, log)
	if err != nil {
		return err
	}
	m := newMetrics()
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
	if own, err := nodeAddrList(); err == nil {
		// Other agents refuse Service addresses that are this node's.
		elCfg.NodeAnnotations = map[string]string{AnnotationNodeAddrs: own}
	} else {
		log.Warn("cannot list this node's addresses for the other agents", "err", err)
	}
	if cfg.HeartbeatPort != 0 {
		if hb, err = newHeartbeat(cfg, iface, m, log); err != nil {
			return err
		}
		defer hb.Close()
		elCfg.Peers = peers{m: hb, log: log}
		elCfg.PeerAddr = hb.Addr().String()
	}
	el, err := election.New(elCfg)
	if err != nil {
		return fmt.Errorf("setting up the election: %w", err)
	}
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
		})
		if err != nil {
			return fmt.Errorf("setting up LoadBalancer Services: %w", err)
		}
	}

	if cfg.MetricsAddr != "" {
		if err := m.serve(ctx, cfg.MetricsAddr, log); err != nil {
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

	var ann announcer = noAnnouncer{}
	if cfg.ARP {
		a, err := announce.New(iface.Net(), announce.Options{Interval: cfg.ARPRate, Registerer: m.reg}, log)
		if err != nil {
			return fmt.Errorf("starting announcements on %s: %w", iface.Name, err)
		}
		defer a.Close()
		ann = a
	} else {
		log.Warn("vip_arp is off: VIPs are added but never announced; clients learn the new holder only when their neighbour entries expire")
	}

	// From here on the node is changed. A VIP left by an earlier run that
	// crashed is not ours to hold until we win its election again.
	if err := removeStale(iface, log); err != nil {
		return err
	}

	r := &reconciler{iface: iface, ann: ann, el: el, svc: svc,
		preserve: cfg.PreserveVIPOnLeadershipLoss, log: log, metrics: m}
	// Background work ends only after shutdown has released the Leases.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	done := make(chan error, 3)
	go func() { done <- wrap("election", el.Run(bg)) }()
	go reportAccess(bg, client, cfg, log)
	if hb != nil {
		go func() { done <- wrap("heartbeats", hb.Run(bg)) }()
	}
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
	log.Info("agent started", "vips", cfg.VIPs, "services", cfg.Services, "namespace", cfg.Namespace)

	resync := time.NewTicker(every)
	defer resync.Stop()
	stuck := wedge()
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
			r.addrs = svc.Addresses()
			r.setBindings(cfg)
		case <-el.Changes():
		case <-resync.C:
		}
		if svc != nil && r.synced && !maps.Equal(r.peerAddrs, el.NodeAnnotation(AnnotationNodeAddrs)) {
			// A node joined or its addresses changed.
			r.setBindings(cfg)
		}
		r.reconcile()
	}
}

// newHeartbeat binds the failure detector to the node's own address on the
// VIP interface: heartbeats travel the same network as the VIPs.
func newHeartbeat(cfg config.Config, iface *address.Interface, m *metrics, log *slog.Logger) (*heartbeat.Monitor, error) {
	ip, err := iface.NodeAddr()
	if err != nil {
		return nil, fmt.Errorf("heartbeats need the node's address on %s (set --heartbeat-port=0 to turn them off): %w", iface.Name, err)
	}
	hb, err := heartbeat.New(heartbeat.Config{
		Node:       cfg.NodeName,
		Cluster:    "vipd/" + cfg.Namespace,
		Listen:     netip.AddrPortFrom(ip, uint16(cfg.HeartbeatPort)),
		Log:        log,
		Registerer: m.reg,
	})
	if err != nil {
		return nil, fmt.Errorf("heartbeat-port %d: %w", cfg.HeartbeatPort, err)
	}
	return hb, nil
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
}

func contests(bs []binding) []election.Contest {
	out := make([]election.Contest, 0, len(bs))
	for _, b := range bs {
		out = append(out, election.Contest{Name: b.contest, Candidates: b.candidates})
	}
	return out
}

// announcer is the part of announce.Announcer the reconciler uses.
type announcer interface {
	Set(vips []netip.Addr)
}

type noAnnouncer struct{}

func (noAnnouncer) Set([]netip.Addr) {}

type reconciler struct {
	iface *address.Interface
	ann   announcer
	el    *election.Elector
	svc   *services.Controller // nil without Services
	addrs []services.Address   // the Services' addresses, last seen
	// synced: the contests were set once; peerAddrs are the other nodes'
	// addresses they were set with.
	synced    bool
	peerAddrs map[string]string
	bindings  []binding
	preserve  bool
	log       *slog.Logger
	metrics   *metrics
	last      map[string]election.Status
}

// AnnotationNodeAddrs on an agent's node Lease lists its node's own
// addresses, comma-separated.
const AnnotationNodeAddrs = "vipd.io/node-addresses"

// nodeAddrList is this node's own global addresses, for AnnotationNodeAddrs.
func nodeAddrList() (string, error) {
	own, err := address.NodeAddrs()
	if err != nil {
		return "", err
	}
	var list []string
	for a := range own {
		if a.IsGlobalUnicast() {
			list = append(list, a.String())
		}
	}
	slices.Sort(list)
	return strings.Join(list, ","), nil
}

// setBindings recomputes which contest carries which VIP, refusing service
// addresses that belong to a node — this one, or one whose agent published
// its addresses: holding such an address would take it from that node —
// and hands the contests to the election.
func (r *reconciler) setBindings(cfg config.Config) {
	r.synced = true
	r.peerAddrs = r.el.NodeAnnotation(AnnotationNodeAddrs)
	owner := map[netip.Addr]string{}
	for node, list := range r.peerAddrs {
		for _, s := range strings.Split(list, ",") {
			if a, err := netip.ParseAddr(s); err == nil {
				owner[a] = "node " + node
			}
		}
	}
	if len(r.addrs) > 0 {
		own, err := address.NodeAddrs()
		if err != nil {
			r.log.Error("listing this node's addresses", "err", err)
		}
		for a, ifname := range own {
			owner[a] = "this node (" + ifname + ")"
		}
	}
	var ok []services.Address
	for _, a := range r.addrs {
		if who, taken := owner[a.IP]; taken {
			reason := fmt.Sprintf("address %s belongs to %s; a VIP must not be a node address", a.IP, who)
			r.svc.Reject(a.IP, reason)
			r.log.Warn("refusing service address", "vip", a.IP, "reason", reason)
			continue
		}
		ok = append(ok, a)
	}
	var cpVIPs []netip.Addr
	if cfg.ControlPlane {
		cpVIPs = cfg.VIPs
	}
	r.bindings = bindingsFor(cfg.LeaseName, cpVIPs, cfg.ServiceLeaseName, cfg.ServiceElection, ok)
	r.el.SetContests(contests(r.bindings))
}

// reconcile makes the node match what the election says now.
func (r *reconciler) reconcile() {
	var want plan
	var servedHere []netip.Addr
	seen := make(map[string]election.Status, len(r.bindings))
	for _, b := range r.bindings {
		st := r.el.Status(b.contest)
		seen[b.contest] = st
		if prev := r.last[b.contest]; st != prev {
			r.log.Info("election status changed", "contest", b.contest, "vips", b.vips, "leading", st.Leading,
				"leader", st.Leader, "was_leading", prev.Leading, "was_leader", prev.Leader)
		}
		p := planFor(st, b.vips, r.preserve, r.onIface)
		want.present = append(want.present, p.present...)
		want.announce = append(want.announce, p.announce...)
		if st.Leading {
			servedHere = append(servedHere, b.vips...)
		}
	}
	r.last = seen
	r.apply(want)
	if r.svc != nil {
		// The controller writes the status of the Services among these.
		r.svc.SetHeld(servedHere)
	}
	r.metrics.live.Set(boolGauge(r.el.Live()))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (r *reconciler) onIface(vip netip.Addr) bool {
	ok, err := r.iface.Has(vip)
	if err != nil {
		r.log.Error("reading interface addresses", "vip", vip, "err", err)
	}
	return ok
}

// apply makes the interface and the announcer match p: every VIP vipd put
// on the interface that p does not want goes, every one it wants is added.
// Announcements stop before an address goes, and start only after it is in
// place.
func (r *reconciler) apply(p plan) {
	owned, err := r.iface.Owned()
	if err != nil {
		r.log.Error("listing VIPs on the interface", "err", err)
		return
	}
	var keep []netip.Addr
	for _, vip := range p.announce {
		if slices.Contains(owned, vip) {
			keep = append(keep, vip)
		}
	}
	r.ann.Set(keep)

	for _, vip := range owned {
		if slices.Contains(p.present, vip) {
			continue
		}
		if err := r.iface.Remove(vip); err != nil {
			r.log.Error("removing VIP", "vip", vip, "err", err)
			continue
		}
		r.log.Info("removed VIP", "vip", vip)
	}
	var announce []netip.Addr
	held := 0
	defer func() { r.metrics.held.Set(float64(held)) }()
	for _, vip := range p.present {
		if slices.Contains(owned, vip) {
			if err := r.iface.Refresh(vip); err != nil {
				r.log.Error("renewing VIP lifetime", "vip", vip, "err", err)
			}
		} else {
			if err := r.iface.Add(vip); err != nil {
				r.log.Error("adding VIP", "vip", vip, "err", err)
				continue
			}
			r.log.Info("added VIP", "vip", vip)
		}
		held++
		if slices.Contains(p.announce, vip) {
			announce = append(announce, vip)
		}
	}
	r.ann.Set(announce)
}

// shutdown steps down in the order that keeps one holder: silence, remove
// the addresses, then release so the next holders start at once.
func (r *reconciler) shutdown() {
	r.log.Info("shutting down: stepping down")
	r.apply(plan{})
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := r.el.Release(ctx); err != nil {
		r.log.Warn("could not release; others take over when this node's lease expires", "err", err)
	}
}

func resolveInterface(name string) (*address.Interface, error) {
	if name != "" {
		iface, err := address.Lookup(name)
		if err != nil {
			return nil, fmt.Errorf("vip_interface %q: %w", name, err)
		}
		return iface, nil
	}
	iface, err := address.Detect()
	if err != nil {
		return nil, fmt.Errorf("vip_interface is not set and no interface could be detected (set vip_interface): %w", err)
	}
	return iface, nil
}

// checkNotNodeAddress refuses a VIP that is already one of the node's own
// addresses: removing it on failover would cut the node off.
func checkNotNodeAddress(vip netip.Addr) error {
	ifname, found, err := address.Conflicts(vip)
	if err != nil {
		return fmt.Errorf("checking whether %s is already in use: %w", vip, err)
	}
	if found {
		return fmt.Errorf("address %s: already assigned to interface %s and not added by vipd; a VIP must not be a node address", vip, ifname)
	}
	return nil
}

func removeStale(iface *address.Interface, log *slog.Logger) error {
	stale, err := iface.Owned()
	if err != nil {
		return fmt.Errorf("listing VIPs left on %s by an earlier run: %w", iface.Name, err)
	}
	for _, vip := range stale {
		if err := iface.Remove(vip); err != nil {
			return fmt.Errorf("removing VIP %s left by an earlier run: %w", vip, err)
		}
		log.Info("removed VIP left by an earlier run", "vip", vip)
	}
	return nil
}

// bypassVIP points a client whose server is the control-plane VIP at the
// API server on this node instead. The VIP cannot carry the traffic that
// elects its holder: at cluster bootstrap, or when every control-plane node
// restarts, nobody holds it yet (kubeadm's admin.conf names it). The
// certificate is still verified for the VIP's address. A node whose own API
// server is down then cannot renew, and leaves the VIP to a node whose API
// server works.
func bypassVIP(rc *rest.Config, vips []netip.Addr, log *slog.Logger) error {
	u, err := url.Parse(rc.Host)
	if err != nil {
		return fmt.Errorf("server %q: %w", rc.Host, err)
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil || !slices.Contains(vips, ip.Unmap()) {
		return nil
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	if rc.TLSClientConfig.ServerName == "" {
		rc.TLSClientConfig.ServerName = u.Hostname()
	}
	local := "127.0.0.1"
	if ip.Is6() {
		local = "::1"
	}
	u.Host = net.JoinHostPort(local, port)
	log.Info("the kubeconfig's server is the control-plane VIP; using this node's API server instead",
		"vip", ip, "server", u.String(), "tls_server_name", rc.TLSClientConfig.ServerName)
	rc.Host = u.String()
	return nil
}

// newClient builds the API client. Its client-side rate limiter is off: a
// holder must never miss a renewal because its own client queued it.
func newClient(cfg config.Config, log *slog.Logger) (kubernetes.Interface, error) {
	var (
		rc  *rest.Config
		err error
	)
	cfg.Kubeconfig = defaultKubeconfig(cfg.Kubeconfig, log)
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("k8s_config_file %q: %w", cfg.Kubeconfig, err)
		}
		if cfg.ControlPlane {
			if err := bypassVIP(rc, cfg.VIPs, log); err != nil {
				return nil, fmt.Errorf("k8s_config_file %q: %w", cfg.Kubeconfig, err)
			}
		}
	} else {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig set (k8s_config_file or KUBECONFIG) and not running in a cluster: %w", err)
		}
	}
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	rc.UserAgent = "vipd"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("building the Kubernetes client: %w", err)
	}
	return client, nil
}
