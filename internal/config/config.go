// Package config holds vipd's settings: what they mean, their defaults, and
// how they are read from flags and environment variables (kube-vip's names
// are accepted so that an existing manifest keeps working).
package config

import (
	"log/slog"
	"net/netip"
	"strings"
	"time"
)

// Config is the validated configuration of one agent.
type Config struct {
	// NodeName identifies this agent in Leases (vip_nodename; default: hostname).
	NodeName string

	// ControlPlane enables the control-plane VIP (cp_enable).
	ControlPlane bool
	// VIPs are the control-plane virtual IPs (address / vip_address). One
	// address, or one IPv4 and one IPv6 address separated by a comma.
	VIPs []netip.Addr
	// Interface carries the VIPs (vip_interface). Empty: auto-detect.
	Interface string
	// ServicesInterface carries the Service VIPs that name no interface of
	// their own (vip_servicesinterface). Empty: Interface.
	ServicesInterface string
	// NodeSelector is a label selector on Nodes: only the nodes it matches
	// may hold any VIP. Empty: every node.
	NodeSelector string
	// ServiceExcludeControlPlane keeps Service VIPs off nodes labelled
	// node-role.kubernetes.io/control-plane; the control-plane VIP is not
	// affected.
	ServiceExcludeControlPlane bool

	// ARP enables gratuitous ARP / unsolicited neighbour advertisements (vip_arp).
	ARP bool
	// ARPRate is the refresh interval of announcements (vip_arpRate, milliseconds).
	ARPRate time.Duration

	// Namespace holds the kube-vip-compatible Leases: the control-plane
	// claim and the one-for-all Services claim (cp_namespace; default
	// kube-system).
	Namespace string
	// AgentNamespace holds vipd's own objects: the agents' node Leases, the
	// per-address claims and the heartbeat key Secret. Default: Namespace.
	// A namespace of its own lets RBAC fence them from everything else.
	AgentNamespace string
	// LeaseName is the control-plane Lease (vip_leasename; default plndr-cp-lock).
	LeaseName string
	// LeaseDuration, RenewDeadline and RetryPeriod are the election timings
	// (vip_leaseduration, vip_renewdeadline, vip_retryperiod; seconds, or a Go
	// duration such as 500ms). Defaults 5s, 3s, 1s.
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration

	// PreserveVIPOnLeadershipLoss keeps IPv4 VIPs on the interface (silent)
	// after leadership is lost, until a new leader is observed
	// (vip_preserve_on_leadership_loss).
	PreserveVIPOnLeadershipLoss bool

	// Kubeconfig is the path of a kubeconfig (k8s_config_file, then
	// KUBECONFIG). Empty: in-cluster configuration.
	Kubeconfig string

	// MetricsAddr is where Prometheus metrics are served (prometheus_server,
	// e.g. ":2112"). Empty: no metrics server.
	MetricsAddr string
	// DebugAddr is where Go's profiler (/debug/pprof/) is served. Empty
	// (the default): off. It tells anyone who reaches it about the
	// process's memory, so bind it to the node itself.
	DebugAddr string

	// Services enables LoadBalancer Services (svc_enable).
	Services bool
	// ServiceElection elects each service address separately (svc_election).
	ServiceElection bool
	// ServiceNamespace restricts the Services served (svc_namespace; empty: all).
	ServiceNamespace string
	// ServiceLeaseName is the Lease of the one-for-all services election
	// (svc_leasename; default plndr-svcs-lock).
	ServiceLeaseName string
	// LoadBalancerClass is the spec.loadBalancerClass vipd serves
	// (lb_class_name; default kube-vip.io/kube-vip-class).
	LoadBalancerClass string
	// LoadBalancerClassOnly serves only Services of LoadBalancerClass;
	// otherwise Services without a class are served too (lb_class_only).
	LoadBalancerClassOnly bool
	// PoolNamespace and PoolConfigMap name the ConfigMap with the address
	// pools for Services that ask for no address (default kube-system/kubevip,
	// the ConfigMap kube-vip's cloud provider reads).
	PoolNamespace string
	PoolConfigMap string

	// HeartbeatPort is the UDP port of the agents' failure detector
	// (heartbeats on the VIP interface's node address). 0 turns it off:
	// then only Lease expiry detects a dead holder.
	HeartbeatPort int
	// VIPLifetime is the valid lifetime vipd gives each VIP and keeps
	// renewing while it holds it, so that the kernel removes the VIP of an
	// agent that crashed instead of answering for it beside the new holder.
	// 0: VIPs never expire.
	VIPLifetime time.Duration

	// HeartbeatKeyFile is a file (or a directory with files key and accept)
	// holding the heartbeat key. Empty: HeartbeatSecret is read instead.
	HeartbeatKeyFile string
	// HeartbeatSecret names the Secret in AgentNamespace that holds the
	// heartbeat key when no key file is set.
	HeartbeatSecret string
	// HeartbeatInsecure sends and accepts heartbeats without a shared key.
	// Only an explicit setting turns authentication off.
	HeartbeatInsecure bool

	// HealthAddr is where /healthz and /readyz are served (host:port;
	// empty: off). kube-vip's health_check_port N means ":N".
	HealthAddr string

	// Warnings are kube-vip settings that change nothing in ARP mode, one
	// line each, for the agent to log at start.
	Warnings []string

	// LogLevel is debug, info, warn or error (vip_loglevel, which also
	// takes kube-vip's numeric levels).
	LogLevel string
	// LogFormat is text (logfmt-style key=value) or json, one object a line.
	LogFormat string
}

// DefaultHealthAddr serves /healthz and /readyz to the node itself: probes
// of a pod on the host network can name 127.0.0.1.
const DefaultHealthAddr = "127.0.0.1:7948"

// Defaults returns the settings used when neither a flag nor an environment
// variable says otherwise. NodeName is left empty: Load fills in the host name.
func Defaults() Config {
	return Config{
		ARP:               true,
		ARPRate:           3 * time.Second,
		Namespace:         "kube-system",
		LeaseName:         "plndr-cp-lock",
		LeaseDuration:     5 * time.Second,
		RenewDeadline:     3 * time.Second,
		RetryPeriod:       time.Second,
		ServiceLeaseName:  "plndr-svcs-lock",
		LoadBalancerClass: "kube-vip.io/kube-vip-class",
		PoolNamespace:     "kube-system",
		PoolConfigMap:     "kubevip",
		HeartbeatPort:     7947,
		HeartbeatSecret:   "vipd-heartbeat-key",
		VIPLifetime:       2 * time.Second,
		HealthAddr:        DefaultHealthAddr,
		LogLevel:          "info",
		LogFormat:         "text",
	}
}

// Level is LogLevel as a slog level; anything unknown counts as info.
func (c Config) Level() slog.Level {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// LogValue lets the effective configuration be logged as one group.
func (c Config) LogValue() slog.Value {
	vips := make([]string, len(c.VIPs))
	for i, a := range c.VIPs {
		vips[i] = a.String()
	}
	return slog.GroupValue(
		slog.String("node_name", c.NodeName),
		slog.Bool("control_plane", c.ControlPlane),
		slog.String("vips", strings.Join(vips, ",")),
		slog.String("interface", c.Interface),
		slog.String("services_interface", c.ServicesInterface),
		slog.String("node_selector", c.NodeSelector),
		slog.Bool("service_exclude_control_plane", c.ServiceExcludeControlPlane),
		slog.Bool("arp", c.ARP),
		slog.Duration("arp_rate", c.ARPRate),
		slog.String("namespace", c.Namespace),
		slog.String("agent_namespace", c.AgentNamespace),
		slog.String("lease_name", c.LeaseName),
		slog.Duration("lease_duration", c.LeaseDuration),
		slog.Duration("renew_deadline", c.RenewDeadline),
		slog.Duration("retry_period", c.RetryPeriod),
		slog.Bool("preserve_vip_on_leadership_loss", c.PreserveVIPOnLeadershipLoss),
		slog.String("kubeconfig", c.Kubeconfig),
		slog.String("metrics_addr", c.MetricsAddr),
		slog.String("debug_addr", c.DebugAddr),
		slog.Bool("services", c.Services),
		slog.Bool("service_election", c.ServiceElection),
		slog.String("service_namespace", c.ServiceNamespace),
		slog.String("service_lease_name", c.ServiceLeaseName),
		slog.String("lb_class", c.LoadBalancerClass),
		slog.Bool("lb_class_only", c.LoadBalancerClassOnly),
		slog.String("pool_namespace", c.PoolNamespace),
		slog.String("pool_configmap", c.PoolConfigMap),
		slog.Int("heartbeat_port", c.HeartbeatPort),
		slog.Duration("vip_lifetime", c.VIPLifetime),
		slog.String("heartbeat_key_file", c.HeartbeatKeyFile),
		slog.String("heartbeat_key_secret", c.HeartbeatSecret),
		slog.Bool("heartbeat_insecure", c.HeartbeatInsecure),
		slog.String("health_addr", c.HealthAddr),
		slog.String("log_level", c.LogLevel),
		slog.String("log_format", c.LogFormat),
	)
}
