package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vipd/vipd/internal/address"
	"github.com/vipd/vipd/internal/backoff"
	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/heartbeat"
	"github.com/vipd/vipd/internal/services"
)

// announcer is the part of announce.Announcer the reconciler uses.
type announcer interface {
	Set(vips []netip.Addr)
	Reannounce()
	SetInterface(ifi *net.Interface)
}

type noAnnouncer struct{}

func (noAnnouncer) Set([]netip.Addr)            {}
func (noAnnouncer) Reannounce()                 {}
func (noAnnouncer) SetInterface(*net.Interface) {}

// arpGuard is the part of guard.Guard the reconciler uses.
type arpGuard interface {
	Set(guarded, answer []netip.Addr) error
	Refresh() error
	Close() error
}

// refusalBackoff spaces out the retries of an address the interface
// refused: the cause (IPv6 turned off, a foreign address, ...) rarely
// clears by itself within seconds, and each retry may move the VIP here.
func refusalBackoff() backoff.Policy {
	return backoff.Policy{Base: 30 * time.Second, Max: 5 * time.Minute}
}

type reconciler struct {
	iface *address.Interface
	ann   announcer
	guard arpGuard // nil: no guard on this node
	el    *election.Elector
	svc   *services.Controller // nil without Services
	hb    *heartbeat.Monitor   // nil without heartbeats
	addrs []services.Address   // the Services' addresses, last seen
	// synced: the contests were set once; peerAddrs are the other nodes'
	// addresses they were set with.
	synced    bool
	peerAddrs map[string]string
	bindings  []binding
	memo      bindingMemo
	preserve  bool
	log       *slog.Logger
	metrics   *metrics
	obs       *observer
	last      map[string]election.Status
	lastBound map[string]binding // the bindings of last
	bound     map[string]binding // bindings by contest, made with them
	// rejected are the service addresses refused as node addresses, and why.
	rejected map[netip.Addr]string
	// badAddrs are other agents' AnnotationNodeAddrs that did not parse,
	// as last logged.
	badAddrs map[string]string

	// guarded and answered are what the guard was last set to.
	guarded, answered []netip.Addr
	// present are the VIPs apply last left on the interface; linkUp is
	// whether the interface had carrier at the last link report.
	present []netip.Addr
	linkUp  bool
	// conflicts probes new VIPs and watches held ones for foreign hosts.
	conflicts *conflicts
	// refused are the contests this node cannot hold now, until when, and
	// why; refusals counts the refusals of each, to space them out.
	refused  map[string]refusal
	refusals backoff.Tracker[string]
	// passed is when reconcile last ran to the end (Unix nanoseconds): the
	// guard is refreshed only while the agent is not stuck.
	passed atomic.Int64
	// refreshEvery is how often the VIPs' lifetimes are renewed
	// (refreshEvery in agent.go), and refreshed when they last were: not
	// on every reconciliation, which with hundreds of VIPs held would cost
	// a netlink write each per Lease event.
	refreshEvery time.Duration
	refreshed    time.Time
}

type refusal struct {
	reason string
	until  time.Time
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
			if s == "" {
				continue
			}
			a, err := netip.ParseAddr(s)
			if err != nil {
				if r.badAddrs[node] != list {
					r.log.Warn("ignoring an address another agent published that does not parse",
						"peer", node, "annotation", AnnotationNodeAddrs, "value", s)
					r.badAddrs[node] = list
				}
				continue
			}
			owner[a] = "node " + node
		}
	}
	if len(r.addrs) > 0 {
		own, err := address.NodeAddrs()
		if err != nil {
			r.log.Error("listing this node's addresses", "err", err)
		}
		for a, ifname := range own {
			// Named, not "this node": the Event about it is cluster-wide.
			owner[a] = "node " + cfg.NodeName + " (" + ifname + ")"
		}
	}
	var ok []services.Address
	rejected := map[netip.Addr]string{}
	defer func() { r.rejected = rejected }()
	for _, a := range r.addrs {
		if who, taken := owner[a.IP]; taken {
			reason := fmt.Sprintf("address %s belongs to %s; a VIP must not be a node address", a.IP, who)
			r.svc.Reject(a.IP, reason)
			if r.rejected[a.IP] != reason {
				r.log.Warn("refusing service address", "vip", a.IP, "service", joinNames(a.Services), "reason", reason)
			}
			rejected[a.IP] = reason
			continue
		}
		ok = append(ok, a)
	}
	var cpVIPs []netip.Addr
	if cfg.ControlPlane {
		cpVIPs = cfg.VIPs
	}
	r.bindings = bindingsFor(cfg.LeaseName, cpVIPs, cfg.ServiceLeaseName, cfg.ServiceElection, ok, &r.memo)
	r.bound = make(map[string]binding, len(r.bindings))
	for _, b := range r.bindings {
		r.bound[b.contest] = b
	}
	r.el.SetContests(contests(r.bindings))
}

// reconcile makes the node match what the election says now.
func (r *reconciler) reconcile() {
	now := time.Now()
	r.expireRefusals(now)
	var want plan
	var servedHere []services.Held
	var asks, holding []string
	seen := make(map[string]election.Status, len(r.bindings))
	for _, b := range r.bindings {
		st := r.el.Status(b.contest)
		if !st.Leading && st.Leader == "" && r.hb != nil {
			// Cut from the API, a node that lost a contest cannot see the new
			// holder there; an authenticated beat of the holder tells.
			st.Leader = r.hb.HolderOf(b.contest)
		}
		seen[b.contest] = st
		if prev := r.last[b.contest]; st != prev {
			r.obs.changed(b, prev, st)
		}
		p := planFor(st, b.vips, r.preserve, r.onIface)
		if len(p.present) > len(p.announce) {
			asks = append(asks, b.contest) // preserved: who holds it now?
		}
		want.present = append(want.present, p.present...)
		want.announce = append(want.announce, p.announce...)
		if st.Leading {
			rep := r.el.Report(b.contest)
			for _, v := range b.vips {
				servedHere = append(servedHere, services.Held{IP: v, Previous: rep.Previous, Reason: string(rep.Reason)})
			}
			holding = append(holding, b.contest)
		}
	}
	want = r.screen(want, seen, now)
	for contest, prev := range r.last {
		if _, ok := seen[contest]; !ok && prev.Leading {
			r.obs.lost(r.lastBound[contest], "", election.LostRemoved) // its Services went away
		}
	}
	r.last, r.lastBound = seen, r.bound
	if r.hb != nil {
		r.hb.SetAsks(asks)
		r.hb.SetHolding(holding)
	}
	for vip, err := range r.apply(want) {
		r.refuse(vip, err, now)
	}
	r.obs.reconciled(r.bindings, seen)
	if r.svc != nil {
		// The controller writes the status of the Services among these.
		r.svc.SetHeld(servedHere)
		r.svc.FlushEvents() // who holds what, or who is live, may have changed
	}
	r.metrics.live.Set(boolGauge(r.el.Live()))
	r.passed.Store(time.Now().UnixNano())
}

// refuse stops this node from holding the contest that carries vip, which
// the interface would not take: it releases the claim and is no candidate
// for it until the refusal expires (30 s, doubling with each repeat, at
// most 5 min). Meanwhile another node holds it.
func (r *reconciler) refuse(vip netip.Addr, err error, now time.Time) {
	for _, b := range r.bindings {
		if !slices.Contains(b.vips, vip) {
			continue
		}
		if _, ok := r.refused[b.contest]; ok {
			return
		}
		d := r.refusals.Failed(b.contest)
		reason := fmt.Sprintf("interface %s refused %s: %v", r.iface.Name, vip, err)
		r.refused[b.contest] = refusal{reason: reason, until: now.Add(d)}
		r.log.Warn("cannot hold VIP here: releasing it to another node", "vip", vip, "contest", b.contest,
			"reason", reason, "retry_in", d.Round(time.Second))
		if r.svc != nil {
			r.svc.RefusedHere(vip, reason)
		}
		r.publishRefusals()
		return
	}
}

// expireRefusals makes this node a candidate again for contests whose
// refusal has run out. Nothing moves back: it takes them only if their
// holder goes.
func (r *reconciler) expireRefusals(now time.Time) {
	changed := false
	for c, f := range r.refused {
		if now.After(f.until) {
			delete(r.refused, c)
			r.log.Info("candidate again for a VIP this node refused", "contest", c)
			changed = true
		}
	}
	if changed {
		r.publishRefusals()
	}
}

func (r *reconciler) publishRefusals() {
	m := make(map[string]string, len(r.refused))
	for c, f := range r.refused {
		m[c] = f.reason
	}
	r.el.SetRefused(m)
	r.metrics.refused.Set(float64(len(m)))
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

// apply makes the interface, the guard and the announcer match p: every
// VIP vipd put on the interface that p does not want goes, every one it
// wants is added. Announcements and the kernel's answers stop before an
// address goes, and start only after it is in place. It returns the VIPs
// the interface refused, with why.
func (r *reconciler) apply(p plan) map[netip.Addr]error {
	ownedList, err := r.iface.Owned()
	if err != nil {
		r.log.Error("listing VIPs on the interface", "err", err)
		return nil
	}
	owned := setOf(ownedList)
	wanted, announced := setOf(p.present), setOf(p.announce)
	var keep []netip.Addr
	for _, vip := range p.announce {
		if owned[vip] {
			keep = append(keep, vip)
		}
	}
	r.ann.Set(keep)
	// Silence what goes and guard what comes, before either changes.
	r.setGuard(union(ownedList, p.present), keep)

	for _, vip := range ownedList {
		if wanted[vip] {
			continue
		}
		if err := r.iface.Remove(vip); err != nil {
			r.log.Error("removing VIP", "vip", vip, "err", err)
			continue
		}
		r.log.Info("removed VIP", "vip", vip)
	}
	var present, announce []netip.Addr
	var refused map[netip.Addr]error
	defer func() {
		r.present = present
		r.metrics.held.Set(float64(len(present)))
		r.conflicts.watchHeld(present)
	}()
	now := time.Now()
	refresh := now.Sub(r.refreshed) >= r.refreshEvery
	if refresh {
		r.refreshed = now
	}
	for _, vip := range p.present {
		if owned[vip] {
			if refresh {
				if err := r.iface.Refresh(vip); err != nil {
					r.log.Error("renewing VIP lifetime", "vip", vip, "err", err)
				}
			}
		} else {
			if err := r.iface.Add(vip); err != nil {
				r.log.Error("adding VIP", "vip", vip, "err", err)
				if refused == nil {
					refused = map[netip.Addr]error{}
				}
				refused[vip] = err
				continue
			}
			r.log.Info("added VIP", "vip", vip)
		}
		present = append(present, vip)
		if announced[vip] {
			announce = append(announce, vip)
		}
	}
	r.setGuard(present, announce)
	r.ann.Set(announce)
	return refused
}

// setGuard tells the guard which VIPs are on the interface and which of
// them the kernel may answer for, when that changed.
func (r *reconciler) setGuard(guarded, answer []netip.Addr) {
	if r.guard == nil {
		return
	}
	guarded, answer = sorted(guarded), sorted(answer)
	if slices.Equal(guarded, r.guarded) && slices.Equal(answer, r.answered) {
		return
	}
	if err := r.guard.Set(guarded, answer); err != nil {
		r.log.Error("updating the ARP/NDP guard", "err", err)
		return
	}
	r.guarded, r.answered = guarded, answer
}

// refreshGuard renews the guard's dead-man switch every interval while
// the reconciler keeps running: if the agent dies or gets stuck, the node
// stops answering ARP and NDP for its VIPs within the guard's timeout.
func (r *reconciler) refreshGuard(ctx context.Context, interval, stuck time.Duration) {
	if r.guard == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(time.Unix(0, r.passed.Load())) > stuck {
			continue
		}
		if err := r.guard.Refresh(); err != nil {
			r.log.Error("refreshing the ARP/NDP guard", "err", err)
		}
	}
}

// shutdown steps down in the order that keeps one holder: silence, remove
// the addresses, then release so the next holders start at once. The guard
// goes last: with the addresses gone it has nothing left to guard, and
// removing it must not delay the release.
func (r *reconciler) shutdown() {
	r.log.Info("shutting down: stepping down")
	r.apply(plan{})
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := r.el.Release(ctx); err != nil {
		r.log.Warn("could not release; others take over when this node's lease expires", "err", err)
	}
	if r.guard != nil {
		if err := r.guard.Close(); err != nil {
			r.log.Warn("removing the ARP/NDP guard", "err", err)
		}
	}
}

func union(a, b []netip.Addr) []netip.Addr {
	return slices.Concat(a, b) // setGuard sorts and compacts
}

func setOf(vips []netip.Addr) map[netip.Addr]bool {
	m := make(map[netip.Addr]bool, len(vips))
	for _, v := range vips {
		m[v] = true
	}
	return m
}

func sorted(a []netip.Addr) []netip.Addr {
	a = slices.Clone(a)
	slices.SortFunc(a, netip.Addr.Compare)
	return slices.Compact(a)
}
