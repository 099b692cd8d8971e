package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/vipd/vipd/internal/election"
)

// observer turns what the reconciler sees into the decisions' log lines,
// the per-VIP metrics and the control-plane takeover Events: the one place
// where a take or a loss is told, once.
type observer struct {
	log    *slog.Logger
	node   string
	el     *election.Elector
	m      *vipMetrics
	events *leaseEvents // nil without the control-plane VIP

	mu sync.Mutex
	// took holds, per VIP taken and not announced yet, when it was taken.
	took map[netip.Addr]time.Time

	// leaders is who holds each VIP after the last reconciliation, for
	// the Services' choice of reporter, and leading the contests this
	// agent led then, kept up to date a binding at a time (nil before the
	// first); bs are the bindings then. vipd_vip_held is worked out from
	// bs and leading when scraped.
	leaders map[netip.Addr]string
	leading map[string]bool
	bs      []binding
}

// leaderChange is what a reconciliation learnt of who holds some VIPs.
type leaderChange struct {
	vips   []netip.Addr
	leader string
	gone   bool // the VIPs' binding went: forget them
}

// leadingChange says whether this agent leads a contest after a
// reconciliation.
type leadingChange struct {
	contest string
	leading bool
}

// reconciled records the state after a reconciliation: the bindings, and
// the changes of who holds their VIPs (the gone ones are applied first, as
// a VIP may have moved to another binding) and of what this agent leads.
func (o *observer) reconciled(bs []binding, changes []leaderChange, leading []leadingChange) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.bs = bs
	if o.leaders == nil {
		o.leaders = map[netip.Addr]string{}
		o.leading = map[string]bool{}
	}
	for _, c := range leading {
		if c.leading {
			o.leading[c.contest] = true
		} else {
			delete(o.leading, c.contest)
		}
	}
	for _, c := range changes {
		if c.gone {
			for _, v := range c.vips {
				delete(o.leaders, v)
			}
		}
	}
	for _, c := range changes {
		if !c.gone {
			for _, v := range c.vips {
				o.leaders[v] = c.leader
			}
		}
	}
}

// heldSeries is one series of vipd_vip_held.
type heldSeries struct {
	vip, election string
	svc           types.NamespacedName
	held          bool
}

func newObserver(log *slog.Logger, node string, el *election.Elector, m *vipMetrics, events *leaseEvents) *observer {
	return &observer{log: log, node: node, el: el, m: m, events: events, took: map[netip.Addr]time.Time{}}
}

// bindingLog is the logger of one binding's decisions: the election, its
// VIPs and the Services they serve, each named once.
func (o *observer) bindingLog(b binding) *slog.Logger {
	vips := make([]string, len(b.vips))
	for i, v := range b.vips {
		vips[i] = v.String()
	}
	args := []any{"election", b.contest, "vip", strings.Join(vips, ",")}
	if svcs := b.allServices(); len(svcs) > 0 {
		args = append(args, "service", joinNames(svcs))
	}
	return o.log.With(args...)
}

// joinNames is the value of a "service" log field: namespace/name, comma
// separated.
func joinNames(svcs []types.NamespacedName) string {
	names := make([]string, len(svcs))
	for i, s := range svcs {
		names[i] = s.String()
	}
	return strings.Join(names, ",")
}

// changed tells one binding's change of status. A take or a loss is a
// decision of this agent: logged at info with its reason, and counted.
func (o *observer) changed(b binding, prev, st election.Status) {
	switch {
	case st.Leading && !prev.Leading:
		r := o.el.Report(b.contest)
		why := string(r.Reason)
		o.bindingLog(b).Info("took VIP", "reason", why, "previous_holder", r.Previous)
		o.m.takeovers.WithLabelValues(why).Inc()
		if r.Reason == election.TookAlreadyHolder {
			return
		}
		o.mu.Lock()
		for _, v := range b.vips {
			o.took[v] = r.At
		}
		o.mu.Unlock()
		if o.events != nil && o.events.concerns(b.contest) {
			o.events.took(b.vips, o.node, r)
		}
	case prev.Leading && !st.Leading:
		o.lost(b, st.Leader, "")
	case prev.Leader != st.Leader:
		// Not a decision of this agent, but what it now follows. A lost
		// node's hundred per-address Service VIPs would make every agent
		// log two lines each (holder gone, then the new one) beside the
		// new holders' "took VIP": those are for debugging.
		level := slog.LevelInfo
		if strings.HasPrefix(b.contest, ServiceLeasePrefix) {
			level = slog.LevelDebug
		}
		o.bindingLog(b).Log(context.Background(), level, "VIP holder changed", "holder", st.Leader, "previous_holder", prev.Leader)
	}
}

// lost tells that this agent gave up a binding's VIPs, for why or, if
// that is empty, for the reason the election gives.
func (o *observer) lost(b binding, holder string, why election.Reason) {
	if why == "" {
		r := o.el.Report(b.contest)
		why = r.Reason
		if r.Leading || why == "" {
			why = election.LostNotLive
		}
	}
	o.bindingLog(b).Info("released VIP", "reason", string(why), "holder", holder)
	o.m.losses.WithLabelValues(string(why)).Inc()
	o.mu.Lock()
	for _, v := range b.vips {
		delete(o.took, v)
	}
	o.mu.Unlock()
}

// announced is called with the VIPs the announcer just announced for the
// first time: a take that waited for it is complete.
func (o *observer) announced(vips []netip.Addr) {
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, v := range vips {
		if at, ok := o.took[v]; ok {
			o.m.announceDelay.Observe(now.Sub(at).Seconds())
			delete(o.took, v)
		}
	}
}

// reporters are the live agents that serve Services, sorted by name.
func (o *observer) reporters() []string {
	infos := o.el.NodeAnnotation(AnnotationConfig)
	var out []string
	for _, n := range o.el.Members() {
		if n == o.node {
			out = append(out, n) // this agent serves Services, or it would not ask
			continue
		}
		if info, err := ParseInfo(infos[n]); err == nil && info.Services != nil {
			out = append(out, n)
		}
	}
	return out
}

// Reporter names the one agent that records Events about a Service with
// these addresses: the holder of the first one held, otherwise the first
// live agent serving Services by name; "" while that is not known, which
// includes while this agent is not live: its view of the others may be
// incomplete. The live agents are read from the election at the call, not
// from the last reconciliation: all agents must judge from the freshest
// view they have, or two would record, or none.
func (o *observer) Reporter(addrs []netip.Addr) string {
	o.mu.Lock()
	if o.leaders == nil {
		o.mu.Unlock()
		return ""
	}
	for _, a := range addrs {
		if h := o.leaders[a]; h != "" {
			o.mu.Unlock()
			return h
		}
	}
	o.mu.Unlock()
	r := o.reporters()
	if !slices.Contains(r, o.node) {
		return ""
	}
	return r[0]
}

// heldNow returns the series of vipd_vip_held.
func (o *observer) heldNow() []heldSeries {
	o.mu.Lock()
	defer o.mu.Unlock()
	var series []heldSeries
	for _, b := range o.bs {
		st := election.Status{Leading: o.leading[b.contest]}
		for i, v := range b.vips {
			var svcs []types.NamespacedName
			if i < len(b.services) {
				svcs = b.services[i]
			}
			if len(svcs) == 0 || b.cpVIP(v) {
				series = append(series, heldSeries{vip: v.String(), election: b.contest, held: st.Leading})
			}
			for _, s := range svcs {
				series = append(series, heldSeries{vip: v.String(), election: b.contest, svc: s, held: st.Leading})
			}
		}
	}
	return series
}

// timedAnnouncer tells the observer when a VIP is announced for the first
// time since it was last left out: Set sends the first announcement before
// it returns.
type timedAnnouncer struct {
	announcer
	obs  *observer
	last []netip.Addr
}

func (t *timedAnnouncer) Set(on map[string][]netip.Addr) {
	t.announcer.Set(on)
	var vips, fresh []netip.Addr
	for _, vs := range on {
		vips = append(vips, vs...)
	}
	last := setOf(t.last)
	for _, v := range vips {
		if !last[v] {
			fresh = append(fresh, v)
		}
	}
	t.last = slices.Clone(vips)
	if len(fresh) > 0 {
		t.obs.announced(fresh)
	}
}
