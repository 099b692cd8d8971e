// Package status tells what vipd is doing in a cluster, from the API alone:
// one row per VIP (what it serves, its election, holder, since when, the
// holder's liveness as the agents see it, problems) and one per agent. It
// reads Leases, Services, EndpointSlices and the address pool, never writes,
// and needs no access to the nodes.
package status

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vipd/vipd/internal/agent"
	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/services"
)

// ControlPlane is what a VIP of the control plane serves.
const ControlPlane = "control plane"

// Agent liveness as read from a node Lease.
const (
	LeaseLive     = "live"     // renewed within its duration
	LeaseExpired  = "expired"  // not renewed within its duration
	LeaseReleased = "released" // the agent stopped and let go
	LeaseMissing  = "missing"  // no node Lease: not a vipd agent
)

// Report is vipd's state at one moment.
type Report struct {
	// Namespace holds the agents' node Leases.
	Namespace string    `json:"namespace"`
	Time      time.Time `json:"time"`
	VIPs      []VIP     `json:"vips"`
	Nodes     []Node    `json:"nodes"`
	// Problems concern no single VIP.
	Problems []string `json:"problems,omitempty"`
}

// VIP is one virtual IP.
type VIP struct {
	// VIP is the address; "" for a Service that has none because of a
	// problem.
	VIP string `json:"vip"`
	// Serves is ControlPlane and/or the Services (namespace/name).
	Serves []string `json:"serves"`
	// Election and ElectionNamespace name the claim Lease; "" when the
	// address is not contested (refused by every agent).
	Election          string `json:"election,omitempty"`
	ElectionNamespace string `json:"electionNamespace,omitempty"`
	// Holder is the node the claim names; Since when it took it,
	// Transitions how often the holder changed.
	Holder      string     `json:"holder"`
	Since       *time.Time `json:"since,omitempty"`
	Transitions int32      `json:"transitions"`
	// HolderLease is the holder's node Lease state (LeaseLive, …) and
	// HolderLeaseAge the time since its last renewal.
	HolderLease    string   `json:"holderLease,omitempty"`
	HolderLeaseAge *float64 `json:"holderLeaseAgeSeconds,omitempty"`
	// HolderLive is whether the agents count the holder as live (Lease
	// and heartbeats together).
	HolderLive bool `json:"holderLive"`
	// HeardBy of HeardOf live agents hear the holder's heartbeats.
	HeardBy int `json:"heardBy"`
	HeardOf int `json:"heardOf"`
	// Candidates restricts who may hold it (externalTrafficPolicy: Local);
	// nil means any agent.
	Candidates []string `json:"candidates,omitempty"`
	Problems   []string `json:"problems,omitempty"`
}

// Node is one agent.
type Node struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Live is whether the agents count it as live (Lease and heartbeats).
	Live      bool     `json:"live"`
	Lease     string   `json:"lease"`
	LeaseAge  *float64 `json:"leaseAgeSeconds,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
	// Heartbeat is where its heartbeats listen ("" without them).
	Heartbeat string `json:"heartbeat,omitempty"`
	// Hears of Peers: the other agents it hears; HeardBy of HeardOf: the
	// live agents that hear it.
	Hears   int `json:"hears"`
	Peers   int `json:"peers"`
	HeardBy int `json:"heardBy"`
	HeardOf int `json:"heardOf"`
	// VIPs it holds (claims naming it).
	VIPs         int  `json:"vips"`
	ControlPlane bool `json:"controlPlane"`
	Services     bool `json:"services"`
}

// Snapshot is what Compute reads, as the API server returned it.
type Snapshot struct {
	// Namespace holds the node Leases and per-address claims.
	Namespace string
	// Leases by namespace: Namespace and the namespaces of the claims the
	// agents' configurations name.
	Leases map[string][]coordinationv1.Lease
	// Services and Slices are nil unless an agent serves Services.
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
	// Pools holds the pool ConfigMaps' data by namespace/name; a missing
	// ConfigMap has no entry.
	Pools map[string]map[string]string
}

// agentView is one node Lease, read.
type agentView struct {
	name    string
	lease   *coordinationv1.Lease
	state   string
	age     time.Duration
	info    agent.Info
	infoErr error
	peers   map[string]string
	// refused are the elections its agent cannot hold, with the reason.
	refused map[string]string
	// conflicts are the addresses it found another host answering for.
	conflicts map[netip.Addr]string
}

// Compute builds the report from a snapshot, at now.
func Compute(s Snapshot, now time.Time) Report {
	r := Report{Namespace: s.Namespace, Time: now}
	agents := readAgents(s.Leases[s.Namespace], now)
	if len(agents) == 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("no vipd agent: no Lease labelled %s=%s in namespace %s",
			election.LabelKind, election.KindNode, s.Namespace))
	}
	byName := map[string]*agentView{}
	for _, a := range agents {
		byName[a.name] = a
		if a.infoErr != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("agent %s: %v", a.name, a.infoErr))
		}
	}
	c := computer{s: s, now: now, agents: agents, byName: byName}
	r.VIPs = append(r.VIPs, c.controlPlane(&r)...)
	r.VIPs = append(r.VIPs, c.services(&r)...)
	r.Nodes = c.nodes(r.VIPs)
	return r
}

func readAgents(leases []coordinationv1.Lease, now time.Time) []*agentView {
	var out []*agentView
	for i := range leases {
		l := &leases[i]
		node, ok := strings.CutPrefix(l.Name, election.NodeLeasePrefix)
		if !ok || l.Labels[election.LabelKind] != election.KindNode {
			continue
		}
		a := &agentView{name: node, lease: l, state: leaseState(l, node, now),
			peers: agent.ParsePeers(l.Annotations[agent.AnnotationPeers])}
		if l.Spec.RenewTime != nil {
			a.age = now.Sub(l.Spec.RenewTime.Time)
		}
		if v, ok := l.Annotations[agent.AnnotationConfig]; ok {
			a.info, a.infoErr = agent.ParseInfo(v)
		}
		a.refused = election.ParseRefused(l.Annotations[election.AnnotationRefused])
		a.conflicts = agent.ParseConflicts(l.Annotations[agent.AnnotationConflicts])
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b *agentView) int { return cmp.Compare(a.name, b.name) })
	return out
}

func leaseState(l *coordinationv1.Lease, node string, now time.Time) string {
	h := ""
	if l.Spec.HolderIdentity != nil {
		h = *l.Spec.HolderIdentity
	}
	switch {
	case h != node:
		return LeaseReleased
	case l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil:
		return LeaseExpired
	case now.Before(l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)):
		return LeaseLive
	}
	return LeaseExpired
}

type computer struct {
	s      Snapshot
	now    time.Time
	agents []*agentView
	byName map[string]*agentView
}

// live reports whether the agents consider node live, as they judge it:
// heartbeats, where they have any, overrule the Lease both ways (a node
// whose beats stopped is dead however fresh its Lease; one still heard
// stays live through an API outage every agent shares).
func (c computer) live(node string) bool {
	a := c.byName[node]
	if a == nil || a.state == LeaseReleased {
		return false
	}
	by, of := c.heardBy(node)
	if by > 0 {
		return true
	}
	return a.state == LeaseLive && (of == 0 || c.silentTo(node) == 0)
}

// silentTo counts the live agents that heard node once and hear it no more.
func (c computer) silentTo(node string) int {
	n := 0
	for _, a := range c.agents {
		if a.name != node && a.state == LeaseLive && a.peers[node] == agent.PeerSilent {
			n++
		}
	}
	return n
}

// heardBy counts the live agents whose heartbeat view hears node, of those
// that have a view of it.
func (c computer) heardBy(node string) (by, of int) {
	for _, a := range c.agents {
		if a.name == node || a.state != LeaseLive {
			continue
		}
		st, ok := a.peers[node]
		if !ok {
			continue
		}
		of++
		if st == agent.PeerHeard {
			by++
		}
	}
	return by, of
}

// claim finds a claim Lease.
func (c computer) claim(ns, name string) *coordinationv1.Lease {
	for i, l := range c.s.Leases[ns] {
		if l.Name == name {
			return &c.s.Leases[ns][i]
		}
	}
	return nil
}

// fill sets the election fields of v from its claim.
func (c computer) fill(v *VIP, ns, name string) {
	v.Election, v.ElectionNamespace = name, ns
	if ip, err := netip.ParseAddr(v.VIP); err == nil {
		for _, a := range c.agents {
			if what, ok := a.conflicts[ip]; ok {
				v.Problems = append(v.Problems, fmt.Sprintf("address conflict: another host answers for %s (%s, seen by %s)", v.VIP, what, a.name))
			}
		}
	}
	l := c.claim(ns, name)
	if l == nil {
		v.Problems = append(v.Problems, "no holder: no claim yet")
		return
	}
	if l.Spec.HolderIdentity != nil {
		v.Holder = *l.Spec.HolderIdentity
	}
	if l.Spec.AcquireTime != nil {
		t := l.Spec.AcquireTime.Time
		v.Since = &t
	}
	if l.Spec.LeaseTransitions != nil {
		v.Transitions = *l.Spec.LeaseTransitions
	}
	if v.Holder == "" {
		v.Problems = append(v.Problems, "no holder: the claim was released")
		return
	}
	a := c.byName[v.Holder]
	if a == nil {
		v.HolderLease = LeaseMissing
		v.Problems = append(v.Problems, fmt.Sprintf("conflicting owner: %s holds %s/%s but has no node Lease in %s; is another program (kube-vip?) using this Lease?",
			v.Holder, ns, name, c.s.Namespace))
		return
	}
	v.HolderLease = a.state
	age := a.age.Seconds()
	v.HolderLeaseAge = &age
	v.HeardBy, v.HeardOf = c.heardBy(v.Holder)
	v.HolderLive = c.live(v.Holder)
	if !v.HolderLive {
		v.Problems = append(v.Problems, fmt.Sprintf("no holder: %s is not live (%s)", v.Holder, c.why(a)))
	}
	for _, other := range c.agents {
		if why, ok := other.refused[name]; ok {
			v.Problems = append(v.Problems, fmt.Sprintf("address refused by %s: %s", other.name, why))
		}
	}
}

// why says why the agents do not count a as live.
func (c computer) why(a *agentView) string {
	switch {
	case a.state == LeaseReleased:
		return "it released its node Lease"
	case a.state == LeaseLive:
		return "its heartbeats stopped"
	}
	return "node Lease expired, heartbeats not heard"
}

// controlPlane returns the rows of the control-plane VIPs that agents
// publish.
func (c computer) controlPlane(r *Report) []VIP {
	type key struct{ ns, lease, vip string }
	seen := map[key]bool{}
	var out []VIP
	for _, a := range c.agents {
		cp := a.info.ControlPlane
		if cp == nil {
			continue
		}
		for _, vip := range cp.VIPs {
			k := key{cp.Namespace, cp.Lease, vip}
			if seen[k] {
				continue
			}
			seen[k] = true
			v := VIP{VIP: vip, Serves: []string{ControlPlane}}
			c.fill(&v, cp.Namespace, cp.Lease)
			out = append(out, v)
		}
	}
	vips := map[string]int{}
	for _, v := range out {
		vips[v.VIP]++
	}
	for vip, n := range vips {
		if n > 1 {
			r.Problems = append(r.Problems, fmt.Sprintf("agents disagree on the control-plane election of %s", vip))
		}
	}
	return out
}

// servicesConfig is the Services settings the agents share; the first
// agent's when they differ (a report problem then).
func (c computer) servicesConfig(r *Report) *agent.ServicesInfo {
	var first *agent.ServicesInfo
	for _, a := range c.agents {
		si := a.info.Services
		if si == nil {
			continue
		}
		if first == nil {
			first = si
		} else if *si != *first {
			r.Problems = append(r.Problems, fmt.Sprintf("agents disagree on Services settings: %s has %+v, %s has %+v",
				c.firstServing().name, *first, a.name, *si))
		}
	}
	return first
}

func (c computer) firstServing() *agentView {
	for _, a := range c.agents {
		if a.info.Services != nil {
			return a
		}
	}
	return nil
}

// services returns the rows of the Services' VIPs.
func (c computer) services(r *Report) []VIP {
	si := c.servicesConfig(r)
	if si == nil {
		return nil
	}
	sel := services.Selection{Namespace: si.ServiceNamespace, Class: si.Class, OnlyOwnClass: si.ClassOnly}
	if si.PoolConfigMap != "" {
		sel.PoolName = si.PoolNamespace + "/" + si.PoolConfigMap
		sel.Pool = c.s.Pools[sel.PoolName]
	}
	addrs, problems := services.Desired(c.s.Services, c.s.Slices, sel)

	var cpLease string
	var cpVIPs []netip.Addr
	for _, a := range c.agents {
		if cp := a.info.ControlPlane; cp != nil && cpLease == "" {
			cpLease = cp.Lease
			for _, s := range cp.VIPs {
				if ip, err := netip.ParseAddr(s); err == nil {
					cpVIPs = append(cpVIPs, ip)
				}
			}
		}
	}
	owners := c.nodeAddresses()
	var usable []services.Address
	for _, a := range addrs {
		if _, taken := owners[a.IP]; !taken {
			usable = append(usable, a)
		}
	}
	contests := agent.ContestsFor(cpLease, cpVIPs, si.Lease, si.PerAddress, usable)
	svcs := map[types.NamespacedName]*corev1.Service{}
	for _, s := range c.s.Services {
		svcs[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = s
	}

	var out []VIP
	for _, a := range addrs {
		v := VIP{VIP: a.IP.String(), Candidates: a.Candidates}
		for _, nn := range a.Services {
			v.Serves = append(v.Serves, nn.String())
		}
		if node, taken := owners[a.IP]; taken {
			v.Problems = append(v.Problems, fmt.Sprintf("conflicting owner: %s is node %s's own address; every agent refuses it", a.IP, node))
			out = append(out, v)
			continue
		}
		contest := contests[a.IP]
		if contest == cpLease && slices.Contains(cpVIPs, a.IP) {
			// Rides on the control-plane election: merge into its row.
			c.mergeIntoControlPlane(r, a.IP, v.Serves)
			continue
		}
		ns := c.s.Namespace
		if contest == si.Lease {
			ns = si.Namespace
		}
		c.fill(&v, ns, contest)
		if a.Candidates != nil && !slices.ContainsFunc(a.Candidates, c.live) {
			v.Problems = append(v.Problems, fmt.Sprintf("no candidate: no live agent may hold it (externalTrafficPolicy: Local; ready endpoints on %v)", a.Candidates))
		}
		if len(c.liveServing()) == 0 {
			v.Problems = append(v.Problems, "no candidate: no live agent serves Services")
		}
		v.Problems = append(v.Problems, c.ingressProblems(a, v.Holder, svcs)...)
		out = append(out, v)
	}
	c.vipHostProblems(out, svcs)
	// Services with no address at all, because of a problem.
	for _, nn := range sortedNames(problems) {
		for _, p := range problems[nn] {
			if hasAddress(addrs, nn) {
				continue
			}
			out = append(out, VIP{Serves: []string{nn.String()}, Problems: []string{p.Reason + ": " + p.Message}})
		}
	}
	return out
}

// mergeIntoControlPlane adds Services to the row of a control-plane VIP.
func (c computer) mergeIntoControlPlane(r *Report, ip netip.Addr, serves []string) {
	for i := range r.VIPs {
		if r.VIPs[i].VIP == ip.String() {
			r.VIPs[i].Serves = append(r.VIPs[i].Serves, serves...)
		}
	}
}

// ingressProblems says which of the address's Services lack it in their
// status although its holder is live.
func (c computer) ingressProblems(a services.Address, holder string, svcs map[types.NamespacedName]*corev1.Service) []string {
	if holder == "" || !c.live(holder) {
		return nil
	}
	var out []string
	for _, nn := range a.Services {
		s := svcs[nn]
		if s != nil && !slices.ContainsFunc(s.Status.LoadBalancer.Ingress, func(in corev1.LoadBalancerIngress) bool { return in.IP == a.IP.String() }) {
			out = append(out, fmt.Sprintf("Service %s: status.loadBalancer.ingress lacks %s", nn, a.IP))
		}
	}
	return out
}

// vipHostProblems flags Services whose vipHost annotation names a node
// that holds none of their addresses.
func (c computer) vipHostProblems(rows []VIP, svcs map[types.NamespacedName]*corev1.Service) {
	holders := map[string][]string{} // Service → holders of its addresses
	for _, v := range rows {
		for _, s := range v.Serves {
			holders[s] = append(holders[s], v.Holder)
		}
	}
	for i := range rows {
		v := &rows[i]
		if v.Holder == "" || !c.live(v.Holder) {
			continue
		}
		for _, s := range v.Serves {
			ns, name, _ := strings.Cut(s, "/")
			svc := svcs[types.NamespacedName{Namespace: ns, Name: name}]
			if svc == nil {
				continue
			}
			if h := svc.Annotations[services.AnnotationVIPHost]; h != "" && !slices.Contains(holders[s], h) {
				v.Problems = append(v.Problems, fmt.Sprintf("conflicting owner: Service %s says %s=%s", s, services.AnnotationVIPHost, h))
			}
		}
	}
}

func (c computer) liveServing() []string {
	var out []string
	for _, a := range c.agents {
		if a.info.Services != nil && c.live(a.name) {
			out = append(out, a.name)
		}
	}
	return out
}

// nodeAddresses maps the nodes' own addresses, as agents publish them, to
// their node.
func (c computer) nodeAddresses() map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, a := range c.agents {
		for _, s := range strings.Split(a.lease.Annotations[agent.AnnotationNodeAddrs], ",") {
			if ip, err := netip.ParseAddr(strings.TrimSpace(s)); err == nil {
				out[ip] = a.name
			}
		}
	}
	return out
}

// nodes returns one row per agent.
func (c computer) nodes(vips []VIP) []Node {
	var out []Node
	for _, a := range c.agents {
		n := Node{Name: a.name, Version: a.lease.Annotations[agent.AnnotationVersion], Lease: a.state, Live: c.live(a.name),
			Heartbeat:    a.lease.Annotations[election.AnnotationPeerAddr],
			ControlPlane: a.info.ControlPlane != nil, Services: a.info.Services != nil}
		if a.lease.Spec.RenewTime != nil {
			age := a.age.Seconds()
			n.LeaseAge = &age
		}
		for _, s := range strings.Split(a.lease.Annotations[agent.AnnotationNodeAddrs], ",") {
			if s = strings.TrimSpace(s); s != "" {
				n.Addresses = append(n.Addresses, s)
			}
		}
		for _, st := range a.peers {
			n.Peers++
			if st == agent.PeerHeard {
				n.Hears++
			}
		}
		n.HeardBy, n.HeardOf = c.heardBy(a.name)
		for _, v := range vips {
			if v.Holder == a.name && v.VIP != "" {
				n.VIPs++
			}
		}
		out = append(out, n)
	}
	return out
}

func hasAddress(addrs []services.Address, nn types.NamespacedName) bool {
	for _, a := range addrs {
		if slices.Contains(a.Services, nn) {
			return true
		}
	}
	return false
}

func sortedNames(m map[types.NamespacedName][]services.Problem) []types.NamespacedName {
	out := make([]types.NamespacedName, 0, len(m))
	for nn := range m {
		out = append(out, nn)
	}
	slices.SortFunc(out, func(a, b types.NamespacedName) int { return cmp.Compare(a.String(), b.String()) })
	return out
}
