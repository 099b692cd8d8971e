package agent

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/heartbeat"
	"github.com/vipd/vipd/internal/services"
)

// What an agent publishes on its node Lease for `vipd status` and the other
// agents, within the renewals it makes anyway.
const (
	// AnnotationVersion is the agent's version.
	AnnotationVersion = "vipd.io/version"
	// AnnotationConfig is the part of the agent's configuration that says
	// which elections it takes part in and where their Leases are (Info,
	// as JSON).
	AnnotationConfig = "vipd.io/config"
	// AnnotationPeers is the agent's heartbeat view of the other agents:
	// "n2=heard,n3=silent", sorted by node.
	AnnotationPeers = "vipd.io/peers"
)

// Heartbeat states in AnnotationPeers.
const (
	PeerHeard   = "heard"   // its beats arrive
	PeerSilent  = "silent"  // they arrived once, and stopped
	PeerUnheard = "unheard" // none ever arrived
)

// Info is an agent's configuration as published in AnnotationConfig.
type Info struct {
	ControlPlane *ControlPlaneInfo `json:"controlPlane,omitempty"`
	Services     *ServicesInfo     `json:"services,omitempty"`
	// Heartbeats is false when the agent runs without heartbeats.
	Heartbeats bool `json:"heartbeats"`
}

// ControlPlaneInfo locates the control-plane election.
type ControlPlaneInfo struct {
	Namespace string   `json:"namespace"`
	Lease     string   `json:"lease"`
	VIPs      []string `json:"vips"`
}

// ServicesInfo says which Services the agent serves and how they are
// elected.
type ServicesInfo struct {
	// Namespace and Lease locate the one-for-all claim; per-address claims
	// are beside the node Leases.
	Namespace  string `json:"namespace"`
	Lease      string `json:"lease"`
	PerAddress bool   `json:"perAddress"`
	// ServiceNamespace restricts the Services served ("" = all).
	ServiceNamespace string `json:"serviceNamespace,omitempty"`
	Class            string `json:"class"`
	ClassOnly        bool   `json:"classOnly"`
	PoolNamespace    string `json:"poolNamespace"`
	PoolConfigMap    string `json:"poolConfigMap"`
	// Interface is the default interface of Service VIPs; an address on
	// another one has an election of its own.
	Interface string `json:"interface,omitempty"`
}

// InfoFor describes cfg.
func InfoFor(cfg config.Config) Info {
	info := Info{Heartbeats: cfg.HeartbeatPort != 0}
	if cfg.ControlPlane {
		cp := &ControlPlaneInfo{Namespace: cfg.Namespace, Lease: cfg.LeaseName}
		for _, v := range cfg.VIPs {
			cp.VIPs = append(cp.VIPs, v.String())
		}
		info.ControlPlane = cp
	}
	if cfg.Services {
		info.Services = &ServicesInfo{
			Namespace: cfg.Namespace, Lease: cfg.ServiceLeaseName, PerAddress: cfg.ServiceElection,
			ServiceNamespace: cfg.ServiceNamespace, Class: cfg.LoadBalancerClass, ClassOnly: cfg.LoadBalancerClassOnly,
			PoolNamespace: cfg.PoolNamespace, PoolConfigMap: cfg.PoolConfigMap,
			Interface: cfg.ServicesInterface,
		}
		if info.Services.Interface == "" {
			info.Services.Interface = cfg.Interface
		}
	}
	return info
}

// Encode is Info as the value of AnnotationConfig.
func (i Info) Encode() string {
	b, err := json.Marshal(i)
	if err != nil {
		panic(err) // only strings and bools: cannot fail
	}
	return string(b)
}

// ParseInfo reads the value of AnnotationConfig.
func ParseInfo(s string) (Info, error) {
	var i Info
	if err := json.Unmarshal([]byte(s), &i); err != nil {
		return Info{}, fmt.Errorf("reading %s: %w", AnnotationConfig, err)
	}
	return i, nil
}

// peersValue renders a heartbeat view for AnnotationPeers.
func peersValue(peers map[string]heartbeat.PeerState) string {
	parts := make([]string, 0, len(peers))
	for _, node := range slices.Sorted(maps.Keys(peers)) {
		s := peers[node]
		state := PeerUnheard
		switch {
		case s.Heard:
			state = PeerHeard
		case s.Ever:
			state = PeerSilent
		}
		parts = append(parts, node+"="+state)
	}
	return strings.Join(parts, ",")
}

// ParsePeers reads the value of AnnotationPeers: node → state.
func ParsePeers(s string) map[string]string {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		if node, state, ok := strings.Cut(strings.TrimSpace(part), "="); ok && node != "" {
			out[node] = state
		}
	}
	return out
}

// ContestsFor says which election carries each address, as agents decide
// it (bindingsFor), for readers such as `vipd status`. svcIface is the
// default interface of Service VIPs (ServicesInfo.Interface).
func ContestsFor(cpLease string, cpVIPs []netip.Addr, svcLease string, perAddress bool, svcIface string, addrs []services.Address) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	s := contestSettings{cpLease: cpLease, cpVIPs: cpVIPs, svcLease: svcLease, perAddress: perAddress, svcIface: svcIface}
	for _, b := range bindingsFor(s, addrs, nil, nil) {
		for _, v := range b.vips {
			out[v] = b.contest
		}
	}
	return out
}
