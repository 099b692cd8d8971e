package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation"

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
	flagHeartbeatPort    = "heartbeat-port"
	flagVIPLifetime      = "vip-lifetime"
	flagHealthAddr       = "health-addr"
)

// envLeaderElection is kube-vip's switch for leader election. vipd has no
// flag for it: it always elects each VIP's holder, and accepts false only
// where that is what kube-vip does too (see leaderElection).
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
	str(flagNamespace, d.Namespace, "namespace of the Leases")
	str(flagLeaseName, d.LeaseName, "name of the control-plane Lease")
	str(flagLeaseDuration, d.LeaseDuration.String(), "Lease duration (Go duration; a bare integer is seconds)")
	str(flagRenewDeadline, d.RenewDeadline.String(), "how long a holder keeps trying to renew before it steps down (Go duration; a bare integer is seconds)")
	str(flagRetryPeriod, d.RetryPeriod.String(), "interval between election attempts (Go duration; a bare integer is seconds)")
	str(flagNodeName, "", "identity of this node in Leases (default: the host name)")
	boolean(flagPreserveVIP, d.PreserveVIPOnLeadershipLoss, "keep IPv4 VIPs on the interface, silent, after losing leadership until a new holder is seen")
	str(flagKubeconfig, "", "path of a kubeconfig (empty: in-cluster configuration)")
	str(flagMetricsAddr, "", "host:port to serve Prometheus metrics on, e.g. :2112 (empty: no metrics)")
	boolean(flagServices, d.Services, "serve VIPs of LoadBalancer Services")
	boolean(flagServiceElection, d.ServiceElection, "elect a holder for each Service address separately")
	str(flagServiceNamespace, "", "only serve Services in this namespace (empty: all)")
	str(flagServiceLeaseName, d.ServiceLeaseName, "name of the Lease for all Services when not electing per Service")
	str(flagLBClass, d.LoadBalancerClass, "spec.loadBalancerClass of the Services vipd serves")
	boolean(flagLBClassOnly, d.LoadBalancerClassOnly, "serve only Services of --lb-class, not those without a class")
	str(flagPoolConfigMap, d.PoolConfigMap, "ConfigMap with the address pools (cidr-<namespace>, range-<namespace>, cidr-global, range-global)")
	str(flagPoolNamespace, d.PoolNamespace, "namespace of the address pool ConfigMap")
	str(flagLogLevel, d.LogLevel, "debug, info, warn or error")
	str(flagHeartbeatPort, strconv.Itoa(d.HeartbeatPort), "UDP port of the heartbeats between agents that detect a dead holder fast (0: off, Lease expiry only)")
	str(flagHealthAddr, d.HealthAddr, "host:port to serve /healthz and /readyz on (empty: off; kube-vip's health_check_port N means :N)")
	str(flagVIPLifetime, d.VIPLifetime.String(), "valid lifetime of a VIP, renewed while held, so a crashed agent's VIP expires (Go duration, at least 1s; 0: never)")
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
	if c.LeaseName, err = objectNameSetting(l.lookup(flagLeaseName), c.LeaseName); err != nil {
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
	if c.ServiceLeaseName, err = objectNameSetting(l.lookup(flagServiceLeaseName), c.ServiceLeaseName); err != nil {
		return Config{}, err
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
	if c.PoolConfigMap, err = configMapNameSetting(l.lookup(flagPoolConfigMap), c.PoolConfigMap); err != nil {
		return Config{}, err
	}
	if c.PoolNamespace, err = namespaceSetting(l.lookup(flagPoolNamespace), c.PoolNamespace); err != nil {
		return Config{}, err
	}
	if c.LogLevel, err = logLevel(l.lookup(flagLogLevel), c.LogLevel); err != nil {
		return Config{}, err
	}
	if c.HeartbeatPort, err = portSetting(l.lookup(flagHeartbeatPort), c.HeartbeatPort); err != nil {
		return Config{}, err
	}
	if c.VIPLifetime, err = lifetimeSetting(l.lookup(flagVIPLifetime), c.VIPLifetime); err != nil {
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
	if c.RenewDeadline >= c.LeaseDuration {
		return Config{}, fmt.Errorf("%s must be shorter than %s", renewDeadline.describe(c.RenewDeadline), leaseDuration.describe(c.LeaseDuration))
	}
	if c.RetryPeriod >= c.RenewDeadline {
		return Config{}, fmt.Errorf("%s must be shorter than %s", retryPeriod.describe(c.RetryPeriod), renewDeadline.describe(c.RenewDeadline))
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

// checkInterfaceName applies the kernel's rules for interface names; whether
// the interface exists is the agent's business.
func checkInterfaceName(s source) error {
	switch {
	case s.raw == "":
		return nil
	case len(s.raw) > 15:
		return s.errorf("interface names are at most 15 characters")
	case s.raw == "." || s.raw == "..":
		return s.errorf("not an interface name")
	case strings.ContainsFunc(s.raw, func(r rune) bool { return r == '/' || r == ':' || unicode.IsSpace(r) }):
		return s.errorf("interface names cannot contain '/', ':' or spaces")
	}
	return nil
}

func boolSetting(s source, def bool) (bool, error) {
	if !s.set {
		return def, nil
	}
	v, err := strconv.ParseBool(s.raw)
	if err != nil {
		return false, s.errorf("not a boolean (use true or false)")
	}
	return v, nil
}

// durationSetting reads a Go duration ("500ms") or a bare integer in unit,
// which is how kube-vip spells these settings.
func durationSetting(s source, unit time.Duration, def time.Duration) (time.Duration, error) {
	if !s.set {
		return def, nil
	}
	unitName := "seconds"
	if unit == time.Millisecond {
		unitName = "milliseconds"
	}
	var d time.Duration
	if n, err := strconv.ParseInt(s.raw, 10, 64); err == nil {
		if n > math.MaxInt64/int64(unit) || n < math.MinInt64/int64(unit) {
			return 0, s.errorf("out of range")
		}
		d = time.Duration(n) * unit
	} else if d, err = time.ParseDuration(s.raw); err != nil {
		return 0, s.errorf("not a duration (use e.g. 1500ms, or an integer number of %s)", unitName)
	}
	if d <= 0 {
		return 0, s.errorf("must be greater than zero")
	}
	return d, nil
}

// Rules for Kubernetes names, in words, for error messages.
const (
	namespaceRule = "lower-case letters, digits and '-', at most 63 characters"
	objectRule    = "lower-case letters, digits, '-' and '.', at most 253 characters"
	classRule     = "an optional DNS-subdomain prefix and '/', then a name of letters, digits, '-', '_' and '.', at most 63 characters, starting and ending with a letter or digit"
)

// namespaceSetting and objectNameSetting check Kubernetes names. An empty
// value falls back to def; def "" means none.
func namespaceSetting(s source, def string) (string, error) {
	if s.raw == "" {
		return def, nil
	}
	if len(validation.IsDNS1123Label(s.raw)) > 0 {
		return "", s.errorf("not a valid namespace name (%s)", namespaceRule)
	}
	return s.raw, nil
}

func objectNameSetting(s source, def string) (string, error) {
	if s.raw == "" {
		return def, nil
	}
	if len(validation.IsDNS1123Subdomain(s.raw)) > 0 {
		return "", s.errorf("not a valid Lease name (%s)", objectRule)
	}
	return s.raw, nil
}

func configMapNameSetting(s source, def string) (string, error) {
	if s.raw == "" {
		return def, nil
	}
	if len(validation.IsDNS1123Subdomain(s.raw)) > 0 {
		return "", s.errorf("not a valid ConfigMap name (%s)", objectRule)
	}
	return s.raw, nil
}

// lbClass checks a loadBalancerClass the way the API server checks
// spec.loadBalancerClass, so that a class no Service can carry is refused.
func lbClass(s source, def string) (string, error) {
	if s.raw == "" {
		return def, nil
	}
	if len(validation.IsQualifiedName(s.raw)) > 0 {
		return "", s.errorf("not a valid loadBalancerClass (%s)", classRule)
	}
	return s.raw, nil
}

// nodeName defaults to the host name in lower case, as the kubelet does, so
// that the default matches the Node's name.
func nodeName(s source) (string, error) {
	// The name is the holder identity in Leases and is matched against
	// Node names, so it must be a valid Node name.
	valid := func(name string) bool { return len(validation.IsDNS1123Subdomain(name)) == 0 }
	if !s.set {
		host, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("finding the node name: %w; set --%s or vip_nodename", err, flagNodeName)
		}
		name := strings.ToLower(host)
		if !valid(name) {
			return "", fmt.Errorf("host name %q is not a valid node name (%s); set --%s or vip_nodename", name, objectRule, flagNodeName)
		}
		return name, nil
	}
	if s.raw == "" {
		return "", s.errorf("must not be empty")
	}
	if !valid(s.raw) {
		return "", s.errorf("not a valid node name (%s)", objectRule)
	}
	return s.raw, nil
}

// portSetting accepts a UDP or TCP port number; 0 means off.
func portSetting(s source, def int) (int, error) {
	if !s.set {
		return def, nil
	}
	p, err := strconv.ParseUint(s.raw, 10, 16)
	if err != nil {
		return 0, s.errorf("not a port number (0 to 65535; 0 turns it off)")
	}
	return int(p), nil
}

// lifetimeSetting accepts 0 (never expire) or a Go duration of whole
// seconds, at least one: the kernel counts address lifetimes in seconds.
func lifetimeSetting(s source, def time.Duration) (time.Duration, error) {
	if !s.set {
		return def, nil
	}
	if s.raw == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s.raw)
	if err != nil {
		return 0, s.errorf("not a duration (use e.g. 2s, or 0 for never)")
	}
	if d < time.Second || d%time.Second != 0 {
		return 0, s.errorf("must be whole seconds, at least 1s (the kernel counts address lifetimes in seconds), or 0")
	}
	return d, nil
}

func metricsAddr(s source) (string, error) {
	if s.raw == "" {
		return "", nil
	}
	_, port, err := net.SplitHostPort(s.raw)
	if err == nil {
		var p uint64
		if p, err = strconv.ParseUint(port, 10, 16); err == nil && p == 0 {
			err = fmt.Errorf("port 0")
		}
	}
	if err != nil {
		return "", s.errorf("not a listen address (use host:port, e.g. :2112)")
	}
	return s.raw, nil
}

// logLevel accepts slog's level names everywhere and, from vip_loglevel,
// kube-vip's numeric levels (logrus numbering: 0-2 panic/fatal/error,
// 3 warn, 4 info, 5 debug, 6 trace).
func logLevel(s source, def string) (string, error) {
	if !s.set {
		return def, nil
	}
	switch v := strings.ToLower(s.raw); v {
	case "debug", "info", "warn", "error":
		return v, nil
	case "warning":
		return "warn", nil
	}
	if s.name == "vip_loglevel" {
		if n, err := strconv.Atoi(s.raw); err == nil && n >= 0 && n <= 6 {
			switch {
			case n >= 5:
				return "debug", nil
			case n == 4:
				return "info", nil
			case n == 3:
				return "warn", nil
			}
			return "error", nil
		}
		return "", s.errorf("unknown log level (use 0-6, or debug, info, warn or error)")
	}
	return "", s.errorf("unknown log level (use debug, info, warn or error)")
}
