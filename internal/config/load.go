package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/vipd/vipd/internal/address"
)

// Flag names. Each flag's vipd environment variable is derived from it by
// envName; kubeVIPNames lists the kube-vip variables that set the same thing.
const (
	flagAddress          = "address"
	flagInterface        = "interface"
	flagARP              = "arp"
	flagARPRate          = "arp-rate"
	flagControlPlane     = "control-plane"
	flagNamespace        = "namespace"
	flagLeaseName        = "lease-name"
	flagLeaseDuration    = "lease-duration"
	flagRenewDeadline    = "renew-deadline"
	flagRetryPeriod      = "retry-period"
	flagNodeName         = "node-name"
	flagPreserveVIP      = "preserve-vip-on-leadership-loss"
	flagKubeconfig       = "kubeconfig"
	flagMetricsAddr      = "metrics-addr"
	flagServices         = "services"
	flagServiceElection  = "service-election"
	flagServiceNamespace = "service-namespace"
	flagServiceLeaseName = "service-lease-name"
	flagLBClass          = "lb-class"
	flagLBClassOnly      = "lb-class-only"
	flagPoolConfigMap    = "pool-configmap"
	flagPoolNamespace    = "pool-namespace"
	flagLogLevel         = "log-level"
	flagLogFormat        = "log-format"
	flagHeartbeatPort    = "heartbeat-port"
	flagVIPLifetime      = "vip-lifetime"
	flagAgentNamespace   = "agent-namespace"
	flagHeartbeatKeyFile = "heartbeat-key-file"
	flagHeartbeatSecret  = "heartbeat-key-secret"
	flagHeartbeatNoAuth  = "heartbeat-insecure"
	flagHealthAddr       = "health-addr"
	flagServicesIface    = "services-interface"
	flagNodeSelector     = "node-selector"
	flagExcludeCP        = "service-exclude-control-plane"
	flagDebugAddr        = "debug-addr"
)

// envLeaderElection is kube-vip's switch for leader election. vipd has no
// flag for it: it only accepts the value that matches what it does (true).
const envLeaderElection = "vip_leaderelection"

// envName is vipd's own environment variable for a flag: VIPD_ and the flag
// in upper case with '-' as '_'.
func envName(flag string) string {
	return "VIPD_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// kubeVIPNames are the kube-vip environment variables for a flag, in the
// order they are consulted.
func kubeVIPNames(flag string) []string {
	switch flag {
	case flagAddress:
		return []string{"address", "vip_address"}
	case flagInterface:
		return []string{"vip_interface"}
	case flagServicesIface:
		return []string{"vip_servicesinterface"}
	case flagARP:
		return []string{"vip_arp"}
	case flagARPRate:
		return []string{"vip_arpRate"}
	case flagControlPlane:
		return []string{"cp_enable"}
	case flagNamespace:
		return []string{"cp_namespace"}
	case flagLeaseName:
		return []string{"vip_leasename"}
	case flagLeaseDuration:
		return []string{"vip_leaseduration"}
	case flagRenewDeadline:
		return []string{"vip_renewdeadline"}
	case flagRetryPeriod:
		return []string{"vip_retryperiod"}
	case flagNodeName:
		return []string{"vip_nodename"}
	case flagPreserveVIP:
		return []string{"vip_preserve_on_leadership_loss"}
	case flagKubeconfig:
		// KUBECONFIG last: it is often set for other tools too.
		return []string{"k8s_config_file", "KUBECONFIG"}
	case flagMetricsAddr:
		return []string{"prometheus_server"}
	case flagServices:
		return []string{"svc_enable"}
	case flagServiceElection:
		return []string{"svc_election"}
	case flagServiceNamespace:
		return []string{"svc_namespace"}
	case flagServiceLeaseName:
		return []string{"svc_leasename"}
	case flagLBClass:
		return []string{"lb_class_name"}
	case flagLBClassOnly:
		return []string{"lb_class_only"}
	case flagLogLevel:
		return []string{"vip_loglevel"}
	}
	return nil
}

// AddFlags registers vipd's flags on fs. Their usage text names the
// environment variables that set the same thing.
func AddFlags(fs *pflag.FlagSet) {
	d := Defaults()
	str := func(name, value, usage string) { fs.String(name, value, usage+envHelp(name)) }
	boolean := func(name string, value bool, usage string) { fs.Bool(name, value, usage+envHelp(name)) }

	str(flagAddress, "", "control-plane VIP: one address, or one IPv4 and one IPv6 address separated by a comma")
	str(flagInterface, "", "interface that carries the VIPs (empty: auto-detect)")
	boolean(flagARP, d.ARP, "announce VIPs with gratuitous ARP / unsolicited neighbour advertisements")
	str(flagARPRate, d.ARPRate.String(), "interval between announcements (Go duration; a bare integer is milliseconds)")
	boolean(flagControlPlane, d.ControlPlane, "serve the control-plane VIP")
	str(flagNamespace, d.Namespace, "namespace of the kube-vip-compatible Leases (the control-plane and one-for-all Services claims)")
	str(flagAgentNamespace, "", "namespace of vipd's own objects: node Leases, per-address claims and the heartbeat key Secret (default: --namespace)")
	str(flagLeaseName, d.LeaseName, "name of the control-plane Lease")
	str(flagLeaseDuration, d.LeaseDuration.String(), "Lease duration (Go duration; a bare integer is seconds)")
	str(flagRenewDeadline, d.RenewDeadline.String(), "how long a holder keeps trying to renew before it steps down (Go duration; a bare integer is seconds)")
	str(flagRetryPeriod, d.RetryPeriod.String(), "interval between election attempts (Go duration; a bare integer is seconds)")
	str(flagNodeName, "", "identity of this node in Leases (default: the host name)")
	boolean(flagPreserveVIP, d.PreserveVIPOnLeadershipLoss, "keep IPv4 VIPs on the interface, silent, after losing leadership until a new holder is seen")
	str(flagKubeconfig, "", "path of a kubeconfig (empty: in-cluster configuration)")
	str(flagMetricsAddr, "", "host:port to serve Prometheus metrics on, e.g. :2112 (empty: no metrics)")
	str(flagDebugAddr, "", "host:port to serve Go's profiler (/debug/pprof/) on, e.g. 127.0.0.1:6060, for diagnosing CPU and memory use (empty: off)")
	boolean(flagServices, d.Services, "serve VIPs of LoadBalancer Services")
	boolean(flagServiceElection, d.ServiceElection, "elect a holder for each Service address separately")
	str(flagServiceNamespace, "", "only serve Services in this namespace (empty: all)")
	str(flagServiceLeaseName, d.ServiceLeaseName, "name of the Lease for all Services when not electing per Service")
	str(flagLBClass, d.LoadBalancerClass, "spec.loadBalancerClass of the Services vipd serves")
	boolean(flagLBClassOnly, d.LoadBalancerClassOnly, "serve only Services of --lb-class, not those without a class")
	str(flagServicesIface, "", "interface that carries the Service VIPs which name none of their own (empty: --interface)")
	str(flagNodeSelector, "", "label selector on Nodes: only matching nodes may hold any VIP, e.g. vipd.example/edge=true (empty: every node)")
	boolean(flagExcludeCP, d.ServiceExcludeControlPlane, "keep Service VIPs off nodes labelled node-role.kubernetes.io/control-plane")
	str(flagPoolConfigMap, d.PoolConfigMap, "ConfigMap with the address pools (cidr-<namespace>, range-<namespace>, cidr-global, range-global, pool-<name>)")
	str(flagPoolNamespace, d.PoolNamespace, "namespace of the address pool ConfigMap")
	str(flagLogLevel, d.LogLevel, "debug, info, warn or error")
	str(flagLogFormat, d.LogFormat, "text (key=value) or json (one object a line)")
	str(flagHeartbeatPort, strconv.Itoa(d.HeartbeatPort), "UDP port of the heartbeats between agents that detect a dead holder fast (0: off, Lease expiry only)")
	str(flagHealthAddr, d.HealthAddr, "host:port to serve /healthz and /readyz on (empty: off; kube-vip's health_check_port N means :N)")
	str(flagVIPLifetime, d.VIPLifetime.String(), "valid lifetime of a VIP, renewed while held, so a crashed agent's VIP expires (Go duration, at least 1s; 0: never)")
	str(flagHeartbeatKeyFile, "", "file with the heartbeat key (first line signs, further lines are also accepted), or a directory with files key and accept (a mounted Secret); wins over --heartbeat-key-secret")
	str(flagHeartbeatSecret, d.HeartbeatSecret, "Secret in --agent-namespace holding the heartbeat key (data key signs, optional accept is also accepted); used when no key file is set")
	boolean(flagHeartbeatNoAuth, d.HeartbeatInsecure, "send and accept heartbeats without a shared key; anyone who can reach the port can then forge them (not for production)")
}

func envHelp(flag string) string {
	return " (env " + strings.Join(append([]string{envName(flag)}, kubeVIPNames(flag)...), ", ") + ")"
}

// Load reads every setting from its flag if it was given on the command
// line, else from vipd's environment variable, else from kube-vip's, else
// the default; then validates the result. flags may be nil (environment
// only). Errors are one line naming the flag or variable the value came from.
func Load(flags *pflag.FlagSet, getenv func(string) string) (Config, error) {
	l := loader{flags: flags, getenv: getenv}
	c := Defaults()
	var err error

	// kube-vip settings vipd has no flag for: refused before anything else,
	// so a manifest for another mode never starts half-right.
	if c.Warnings, err = checkUnmapped(getenv); err != nil {
		return Config{}, err
	}

	// Settings are read in the order they are documented, so the first
	// error reported is the first one an operator reading the docs meets.
	addr := l.lookup(flagAddress)
	if c.VIPs, err = l.vips(addr); err != nil {
		return Config{}, err
	}
	iface := l.lookup(flagInterface)
	if err = checkInterfaceName(iface); err != nil {
		return Config{}, err
	}
	c.Interface = iface.raw
	if c.ARP, err = boolSetting(l.lookup(flagARP), c.ARP); err != nil {
		return Config{}, err
	}
	if c.ARPRate, err = durationSetting(l.lookup(flagARPRate), time.Millisecond, c.ARPRate); err != nil {
		return Config{}, err
	}
	cp := l.lookup(flagControlPlane)
	if c.ControlPlane, err = boolSetting(cp, c.ControlPlane); err != nil {
		return Config{}, err
	}
	if c.Namespace, err = namespaceSetting(l.lookup(flagNamespace), c.Namespace); err != nil {
		return Config{}, err
	}
	if c.AgentNamespace, err = namespaceSetting(l.lookup(flagAgentNamespace), c.Namespace); err != nil {
		return Config{}, err
	}
	if c.LeaseName, err = objectNameSetting(l.lookup(flagLeaseName), "Lease", c.LeaseName); err != nil {
		return Config{}, err
	}
	leaseDuration := l.lookup(flagLeaseDuration)
	if c.LeaseDuration, err = durationSetting(leaseDuration, time.Second, c.LeaseDuration); err != nil {
		return Config{}, err
	}
	renewDeadline := l.lookup(flagRenewDeadline)
	if c.RenewDeadline, err = durationSetting(renewDeadline, time.Second, c.RenewDeadline); err != nil {
		return Config{}, err
	}
	retryPeriod := l.lookup(flagRetryPeriod)
	if c.RetryPeriod, err = durationSetting(retryPeriod, time.Second, c.RetryPeriod); err != nil {
		return Config{}, err
	}
	if c.NodeName, err = nodeName(l.lookup(flagNodeName)); err != nil {
		return Config{}, err
	}
	if c.PreserveVIPOnLeadershipLoss, err = boolSetting(l.lookup(flagPreserveVIP), c.PreserveVIPOnLeadershipLoss); err != nil {
		return Config{}, err
	}
	c.Kubeconfig = l.lookup(flagKubeconfig).raw
	if c.MetricsAddr, err = metricsAddr(l.lookup(flagMetricsAddr)); err != nil {
		return Config{}, err
	}
	if c.DebugAddr, err = metricsAddr(l.lookup(flagDebugAddr)); err != nil {
		return Config{}, err
	}
	svc := l.lookup(flagServices)
	if c.Services, err = boolSetting(svc, c.Services); err != nil {
		return Config{}, err
	}
	if c.ServiceElection, err = boolSetting(l.lookup(flagServiceElection), c.ServiceElection); err != nil {
		return Config{}, err
	}
	if c.ServiceNamespace, err = namespaceSetting(l.lookup(flagServiceNamespace), ""); err != nil {
		return Config{}, err
	}
	if c.ServiceLeaseName, err = objectNameSetting(l.lookup(flagServiceLeaseName), "Lease", c.ServiceLeaseName); err != nil {
		return Config{}, err
	}
	if c.Services && c.ServiceLeaseName == c.LeaseName {
		// Two elections in one Lease: the agent would take them for one.
		return Config{}, fmt.Errorf("%s and %s both name the Lease %q: the control-plane election and the Services' one need a Lease each",
			l.lookup(flagLeaseName).name, l.lookup(flagServiceLeaseName).name, c.LeaseName)
	}
	if c.LoadBalancerClass, err = lbClass(l.lookup(flagLBClass), c.LoadBalancerClass); err != nil {
		return Config{}, err
	}
	if c.LoadBalancerClassOnly, err = boolSetting(l.lookup(flagLBClassOnly), c.LoadBalancerClassOnly); err != nil {
		return Config{}, err
	}
	if c.LoadBalancerClassOnly, err = l.legacyClassHandling(c.LoadBalancerClassOnly); err != nil {
		return Config{}, err
	}
	svcIface := l.lookup(flagServicesIface)
	if c.ServicesInterface, err = servicesInterface(svcIface); err != nil {
		return Config{}, err
	}
	if c.NodeSelector, err = nodeSelector(l.lookup(flagNodeSelector)); err != nil {
		return Config{}, err
	}
	if c.ServiceExcludeControlPlane, err = boolSetting(l.lookup(flagExcludeCP), c.ServiceExcludeControlPlane); err != nil {
		return Config{}, err
	}
	if c.PoolConfigMap, err = objectNameSetting(l.lookup(flagPoolConfigMap), "ConfigMap", c.PoolConfigMap); err != nil {
		return Config{}, err
	}
	if c.PoolNamespace, err = namespaceSetting(l.lookup(flagPoolNamespace), c.PoolNamespace); err != nil {
		return Config{}, err
	}
	if c.LogLevel, err = logLevel(l.lookup(flagLogLevel), c.LogLevel); err != nil {
		return Config{}, err
	}
	if c.LogFormat, err = logFormat(l.lookup(flagLogFormat), c.LogFormat); err != nil {
		return Config{}, err
	}
	if c.HeartbeatPort, err = portSetting(l.lookup(flagHeartbeatPort), c.HeartbeatPort); err != nil {
		return Config{}, err
	}
	if c.VIPLifetime, err = lifetimeSetting(l.lookup(flagVIPLifetime), c.VIPLifetime); err != nil {
		return Config{}, err
	}
	keyFile := l.lookup(flagHeartbeatKeyFile)
	c.HeartbeatKeyFile = keyFile.raw
	if c.HeartbeatSecret, err = objectNameSetting(l.lookup(flagHeartbeatSecret), "Secret", c.HeartbeatSecret); err != nil {
		return Config{}, err
	}
	insecure := l.lookup(flagHeartbeatNoAuth)
	if c.HeartbeatInsecure, err = boolSetting(insecure, c.HeartbeatInsecure); err != nil {
		return Config{}, err
	}
	if c.HealthAddr, err = l.healthAddr(c.HealthAddr); err != nil {
		return Config{}, err
	}
	if err = l.leaderElection(c, cp, svc); err != nil {
		return Config{}, err
	}

	// Settings that only make sense together.
	if !c.ControlPlane && !c.Services {
		return Config{}, fmt.Errorf("nothing to do: %s and %s are both false; enable the control-plane VIP or Services", cp.name, svc.name)
	}
	if c.ControlPlane && len(c.VIPs) == 0 {
		return Config{}, fmt.Errorf("%s is true but no VIP is set (--%s, %s, %s)", cp.name, flagAddress, envName(flagAddress), strings.Join(kubeVIPNames(flagAddress), ", "))
	}
	if err := checkTimings(c, leaseDuration, renewDeadline, retryPeriod); err != nil {
		return Config{}, err
	}
	if c.HeartbeatInsecure && c.HeartbeatKeyFile != "" {
		return Config{}, fmt.Errorf("%s and %s contradict each other: a key authenticates heartbeats; set only one", insecure.name, keyFile.name)
	}
	return c, nil
}

// source is where one setting's value came from.
type source struct {
	raw  string // the value as given, surrounding spaces removed
	name string // "--flag", or the environment variable; the flag for defaults
	set  bool   // false: the default applies
}

func (s source) errorf(format string, args ...any) error {
	return fmt.Errorf("%s %q: %s", s.name, s.raw, fmt.Sprintf(format, args...))
}

// describe names the setting and its value for messages about two settings.
func (s source) describe(v any) string {
	if !s.set {
		return fmt.Sprintf("%s (default %v)", s.name, v)
	}
	return fmt.Sprintf("%s (%v)", s.name, v)
}

type loader struct {
	flags  *pflag.FlagSet
	getenv func(string) string
}

// lookup finds a setting: a flag given on the command line wins even when
// empty (so --kubeconfig= can force in-cluster configuration); an empty
// environment variable counts as unset, as manifests often carry value: "".
func (l loader) lookup(flag string) source {
	if l.flags != nil && l.flags.Changed(flag) {
		return source{raw: strings.TrimSpace(l.flags.Lookup(flag).Value.String()), name: "--" + flag, set: true}
	}
	for _, env := range append([]string{envName(flag)}, kubeVIPNames(flag)...) {
		if v := strings.TrimSpace(l.getenv(env)); v != "" {
			return source{raw: v, name: env, set: true}
		}
	}
	return source{name: "--" + flag}
}

// vips parses the control-plane VIP list. kube-vip has two names for it; if
// a manifest sets both differently it is unclear which was meant.
func (l loader) vips(s source) ([]netip.Addr, error) {
	if s.name == "address" {
		if other := strings.TrimSpace(l.getenv("vip_address")); other != "" && other != s.raw {
			return nil, fmt.Errorf("address %q and vip_address %q disagree; set only one", s.raw, other)
		}
	}
	if s.raw == "" {
		return nil, nil
	}
	parts := strings.Split(s.raw, ",")
	if len(parts) > 2 {
		return nil, s.errorf("at most one IPv4 and one IPv6 address")
	}
	var vips []netip.Addr
	for _, p := range parts {
		p = strings.TrimSpace(p)
		a, err := netip.ParseAddr(p)
		if err != nil {
			if len(parts) == 1 {
				return nil, s.errorf("not an IP address")
			}
			return nil, s.errorf("%q is not an IP address", p)
		}
		if problem := address.VIPProblem(a); problem != "" {
			return nil, s.errorf("%s is %s", a, problem)
		}
		if len(vips) == 1 && vips[0].Is4() == a.Is4() {
			return nil, s.errorf("two addresses of the same family; give at most one IPv4 and one IPv6 address")
		}
		vips = append(vips, a)
	}
	return vips, nil
}

// logFormat accepts the formats of internal/logging.
func logFormat(s source, def string) (string, error) {
	if !s.set {
		return def, nil
	}
	switch v := strings.ToLower(s.raw); v {
	case "text", "json":
		return v, nil
	}
	return "", s.errorf("unknown log format (use text or json)")
}
