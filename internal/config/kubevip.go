package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// Verdicts on a kube-vip setting, as docs/migration.md lists them.
const (
	// Honoured: vipd does what the setting asks.
	Honoured = "honoured"
	// Warned: the setting changes nothing in ARP mode; vipd says so once
	// at start and goes on.
	Warned = "warned"
	// Refused: vipd does not do what the setting asks, and running without
	// it would do something else than the operator wants; vipd exits.
	Refused = "refused"
)

// unmapped is a kube-vip environment variable that no vipd flag reads.
type unmapped struct {
	name string
	// refuse reports whether a value asks for something vipd does not do;
	// nil means no value does (the setting is warned about).
	refuse func(v string) bool
	// quiet is a value that is not even warned about: the value kube-vip's
	// manifest generator prints by default, which changes nothing here.
	quiet string
	// why says what kube-vip does with it and what to do instead.
	why string
}

// isTrue is the refusal of a switch that asks for a feature vipd lacks.
func isTrue(v string) bool { b, err := strconv.ParseBool(v); return err != nil || b }

// notEmpty is the refusal of a setting whose every value asks for a
// feature vipd lacks.
func notEmpty(string) bool { return true }

// unmappedSettings are kube-vip's settings (kube-vip v1.2.3) that vipd has
// no flag for, with what vipd does about each. The ones vipd honours are
// the kube-vip names in kubeVIPNames and the few handled below by name.
var unmappedSettings = []unmapped{
	// Other modes than ARP: refused, since vipd would silently do ARP instead.
	{name: "bgp_enable", refuse: isTrue, why: "BGP mode is not implemented; vipd announces VIPs with ARP/NDP on one layer-2 segment only. Keep kube-vip for BGP"},
	{name: "vip_routingtable", refuse: isTrue, why: "routing-table mode is not implemented; vipd puts VIPs on an interface and announces them with ARP/NDP. Keep kube-vip for it"},
	{name: "vip_wireguard", refuse: isTrue, why: "WireGuard mode is not implemented. Keep kube-vip for it"},
	{name: "lb_enable", refuse: isTrue, why: "vipd does not load-balance the control plane (IPVS); the VIP goes to one API server. Remove lb_enable, or keep kube-vip"},
	{name: "enable_node_labeling", refuse: isTrue, why: "vipd does not label the node that holds a VIP; remove it (and anything that selects on kube-vip.io/has-ip)"},
	{name: "vip_ddns", refuse: isTrue, why: "vipd does not get VIPs by DHCP; set vip_address to a fixed address"},
	{name: "dhcp_mode", refuse: notEmpty, why: "vipd does not get VIPs by DHCP; set vip_address to a fixed address"},
	{name: "egress_podcidr", refuse: notEmpty, why: "egress (SNAT of a Service's pods to its VIP) is not implemented; remove it"},
	{name: "egress_servicecidr", refuse: notEmpty, why: "egress (SNAT of a Service's pods to its VIP) is not implemented; remove it"},
	{name: "egress_enableinternalsnat", refuse: isTrue, why: "egress (SNAT of a Service's pods to its VIP) is not implemented; remove it"},
	{name: "egress_clean", refuse: isTrue, why: "egress is not implemented, so vipd has no egress rules to clean; remove it"},
	{name: "enable_service_security", refuse: isTrue, why: "vipd does not filter traffic to Service VIPs by port; use a NetworkPolicy or host firewall, then remove it"},
	{name: "disable_service_updates", refuse: isTrue, why: "vipd always writes the status of the Services it serves; remove it"},
	{name: "mirror_dest_interface", refuse: notEmpty, why: "traffic mirroring is not implemented; remove it"},
	{name: "enable_upnp", refuse: isTrue, why: "UPnP port forwarding is not implemented; remove it"},
	{name: "vip_loseleadership", refuse: isTrue, why: "vipd does not step down when the VIP interface goes down; a node that loses the segment is replaced once its node Lease or heartbeats stop. Remove it"},
	{name: "vip_singlenode", refuse: isTrue, why: "vipd always elects the holder through a Lease; remove it"},
	{name: "vip_startleader", refuse: isTrue, why: "vipd always elects the holder through a Lease; remove it"},
	{name: "per_service_election_on_demand", refuse: isTrue, why: "set svc_election=true for one election per Service address"},
	{name: "kubernetes_addr", refuse: notEmpty, why: "set the API server in the kubeconfig (k8s_config_file) instead; with cp_enable vipd reaches the API server on its own node when the kubeconfig names the VIP"},
	{name: "config_file", refuse: notEmpty, why: "vipd reads no configuration file; give the settings as environment variables or flags"},
	{name: "zebra_enable", refuse: isTrue, why: "Zebra (BGP) is not implemented; keep kube-vip for BGP"},

	// Settings of those modes that change nothing unless the mode is on.
	{name: "port", quiet: "6443", why: "the API server port for kube-vip's control-plane load balancer; vipd does not load-balance"},
	{name: "lb_port", why: "only used with lb_enable"},
	{name: "lb_fwdmethod", quiet: "local", why: "only used with lb_enable"},
	{name: "backend_health_check_interval", why: "only used with lb_enable"},
	{name: "iptables_backend", why: "only used by egress, which vipd does not implement"},
	{name: "egress_withnftables", quiet: "true", why: "only used by egress, which vipd does not implement"},
	{name: "instance_name", why: "only used to name egress nftables tables"},
	{name: "dns_mode", quiet: "first", why: "only used when the VIP is a DNS name; vipd needs an IP address"},
	{name: "dhcp_backoff_attempts", why: "only used with DHCP, which vipd does not do"},
	{name: "cp_detect", why: "vipd always reaches the API server on its own node when the kubeconfig names the VIP"},
	{name: "vip_interfaceloglobal", why: "only used for VIPs on lo (BGP, routing table)"},
	{name: "vip_allow_interface_not_up", why: "vipd starts on an interface that is down and adds VIPs to it"},
	{name: "vip_skipdad", why: "vipd adds VIPs without duplicate address detection anyway"},
	{name: "vip_loseleadership_timeout_seconds", why: "only used with vip_loseleadership"},
	{name: "vip_leaseannotations", why: "vipd puts no extra annotations on its Leases"},
	{name: "annotation", why: "node annotations are only read for BGP"},
	{name: "debounce_time", why: "vipd reacts to each change at once"},
	{name: "enable_endpoints", why: "vipd reads EndpointSlices, which carry the same endpoints"},
	{name: "bgp_attach_ip_to_interface", why: "only used with bgp_enable"},
	{name: "bgp_routerid", why: "only used with bgp_enable"},
	{name: "bgp_routerinterface", why: "only used with bgp_enable"},
	{name: "bgp_as", why: "only used with bgp_enable"},
	{name: "bgp_peeraddress", why: "only used with bgp_enable"},
	{name: "bgp_peers", why: "only used with bgp_enable"},
	{name: "bgp_peeras", why: "only used with bgp_enable"},
	{name: "bgp_peerpass", why: "only used with bgp_enable"},
	{name: "bgp_multihop", why: "only used with bgp_enable"},
	{name: "bgp_sourceif", why: "only used with bgp_enable"},
	{name: "bgp_sourceip", why: "only used with bgp_enable"},
	{name: "bgp_hold_time", why: "only used with bgp_enable"},
	{name: "bgp_keepalive_interval", why: "only used with bgp_enable"},
	{name: "mpbgp_nexthop", why: "only used with bgp_enable"},
	{name: "mpbgp_ipv4", why: "only used with bgp_enable"},
	{name: "mpbgp_ipv6", why: "only used with bgp_enable"},
	{name: "zebra_url", why: "only used with zebra_enable"},
	{name: "zebra_version", why: "only used with zebra_enable"},
	{name: "zebra_software_name", why: "only used with zebra_enable"},
	{name: "control_plane_health_check_address", why: "only used with BGP without leader election"},
	{name: "control_plane_health_check_period_seconds", why: "only used with BGP without leader election"},
	{name: "control_plane_health_check_timeout_seconds", why: "only used with BGP without leader election"},
	{name: "control_plane_health_check_failure_threshold", why: "only used with BGP without leader election"},
	{name: "control_plane_health_check_ca_path", why: "only used with BGP without leader election"},
	{name: "vip_routingtableid", why: "only used with vip_routingtable"},
	{name: "vip_routingtabletype", why: "only used with vip_routingtable"},
	{name: "vip_routingprotocol", why: "only used with vip_routingtable"},
	{name: "vip_cleanroutingtable", why: "only used with vip_routingtable"},
}

// Kube-vip settings honoured here rather than through a flag's names.
const (
	envSubnet         = "vip_subnet"
	envCIDR           = "vip_cidr" // kube-vip's older name for vip_subnet
	envLegacyClass    = "lb_class_legacy_handling"
	envHealthPort     = "health_check_port"
	envServiceElectOn = "svc_election"
)

// Setting is one row of the table in docs/migration.md.
type Setting struct {
	Name    string
	Verdict string // Honoured, Warned or Refused
	// Note says when a Refused setting is accepted after all (the values
	// that ask for nothing vipd lacks), or what a Warned one does in kube-vip.
	Note string
}

// KubeVIPSettings lists every kube-vip environment variable vipd knows,
// with its verdict, sorted by name.
func KubeVIPSettings() []Setting {
	var out []Setting
	seen := map[string]bool{}
	add := func(s Setting) {
		if !seen[s.Name] {
			seen[s.Name] = true
			out = append(out, s)
		}
	}
	for _, f := range flagNames() {
		for _, name := range kubeVIPNames(f) {
			note := "--" + f
			if f == flagAddress {
				note += "; 0.0.0.0 or :: (a VIP by DHCP) is refused"
			}
			add(Setting{Name: name, Verdict: Honoured, Note: note})
		}
	}
	add(Setting{Name: envLeaderElection, Verdict: Honoured, Note: "false only with svc_election=true and cp_enable=false (one election per Service, none global)"})
	add(Setting{Name: envSubnet, Verdict: Honoured, Note: "only /32 and /128: VIPs are host addresses"})
	add(Setting{Name: envCIDR, Verdict: Honoured, Note: "as vip_subnet"})
	add(Setting{Name: envLegacyClass, Verdict: Honoured, Note: "false: serve only Services of lb_class_name, as lb_class_only=true"})
	add(Setting{Name: envHealthPort, Verdict: Honoured, Note: "serves /healthz and /readyz on that port of every address (--health-addr)"})
	for _, u := range unmappedSettings {
		s := Setting{Name: u.name, Verdict: Warned, Note: u.why}
		switch {
		case u.refuse == nil && u.quiet != "":
			s.Note += " (no warning at kube-vip's default, " + u.quiet + ")"
		case u.refuse != nil && u.refuse("false"):
			s.Verdict, s.Note = Refused, "any value: "+u.why
		case u.refuse != nil:
			s.Verdict, s.Note = Refused, "when true (false is accepted): "+u.why
		}
		add(s)
	}
	slices.SortFunc(out, func(a, b Setting) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// flagNames lists vipd's flags, as AddFlags registers them.
func flagNames() []string {
	fs := pflag.NewFlagSet("vipd", pflag.ContinueOnError)
	AddFlags(fs)
	var names []string
	fs.VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	return names
}

// checkUnmapped refuses the first kube-vip setting that asks for something
// vipd does not do, and returns a warning for each one that changes nothing.
func checkUnmapped(getenv func(string) string) (warnings []string, err error) {
	for _, u := range unmappedSettings {
		v := strings.TrimSpace(getenv(u.name))
		if v == "" {
			continue
		}
		if u.refuse != nil && u.refuse(v) {
			return nil, fmt.Errorf("%s=%s is not supported: %s", u.name, v, u.why)
		}
		if v == u.quiet || u.refuse != nil {
			// A refusable switch turned off asks for nothing.
			continue
		}
		warnings = append(warnings, fmt.Sprintf("%s=%s ignored: %s", u.name, v, u.why))
	}
	for _, name := range []string{"address", "vip_address"} {
		if v := strings.TrimSpace(getenv(name)); v == "0.0.0.0" || v == "::" {
			return nil, fmt.Errorf("%s=%s asks for a VIP by DHCP, which vipd does not do: set a fixed address", name, v)
		}
	}
	for _, name := range []string{envSubnet, envCIDR} {
		if err := checkSubnet(name, strings.TrimSpace(getenv(name))); err != nil {
			return nil, err
		}
	}
	return warnings, nil
}

// checkSubnet accepts only host prefixes: "32", "/128", or one of each
// separated by a comma (dual stack).
func checkSubnet(name, v string) error {
	if v == "" {
		return nil
	}
	for _, p := range strings.Split(v, ",") {
		switch strings.TrimPrefix(strings.TrimSpace(p), "/") {
		case "32", "128":
			continue
		}
		return fmt.Errorf("%s=%s is not supported: vipd adds each VIP as a host address (/32 or /128), never a wider prefix, which would route the whole subnet to the interface; remove %s or set it to 32 (IPv4) or 128 (IPv6)", name, v, name)
	}
	return nil
}

// leaderElection honours kube-vip's vip_leaderelection. false means no
// global election: accepted where vipd still elects each VIP's holder
// (Services with svc_election=true), refused where every node would
// answer for the same VIP.
func (l loader) leaderElection(c Config, cp, svc source) error {
	s := source{name: envLeaderElection, raw: strings.TrimSpace(l.getenv(envLeaderElection))}
	if s.raw == "" {
		return nil
	}
	s.set = true
	on, err := boolSetting(s, true)
	if err != nil || on {
		return err
	}
	if c.ControlPlane {
		return fmt.Errorf("%s=false with %s=true is not supported: without an election every control-plane node would answer for the VIP; set %s=true", envLeaderElection, cp.name, envLeaderElection)
	}
	if c.Services && !c.ServiceElection {
		return fmt.Errorf("%s=false with %s=true is not supported unless %s=true: without an election every node would answer for every Service VIP; set %s=true (one election per Service)", envLeaderElection, svc.name, envServiceElectOn, envServiceElectOn)
	}
	return nil
}

// legacyClassHandling applies lb_class_legacy_handling=false: kube-vip then
// serves only Services whose class is lb_class_name.
func (l loader) legacyClassHandling(def bool) (bool, error) {
	s := source{name: envLegacyClass, raw: strings.TrimSpace(l.getenv(envLegacyClass))}
	if s.raw == "" {
		return def, nil
	}
	s.set = true
	legacy, err := boolSetting(s, true)
	if err != nil {
		return false, err
	}
	return def || !legacy, nil
}

// kubeVIPPrefixes are how kube-vip's variables start; an unknown variable
// with one of them is probably a misspelt setting.
var kubeVIPPrefixes = []string{"vip_", "cp_", "svc_", "lb_", "bgp_", "egress_", "dhcp_", "dns_", "zebra_", "mpbgp_", "enable_", "control_plane_"}

// CheckEnvironment looks at every variable of environ ("NAME=value") for
// settings nobody reads, probably misspelt: an unknown VIPD_ variable, or
// one that looks like kube-vip's. Each gets a warning. (Not a refusal: the
// test tools' own VIPD_ variables may be in an agent's environment.)
func CheckEnvironment(environ []string) (warnings []string) {
	known := map[string]bool{}
	for _, f := range flagNames() {
		known[envName(f)] = true
	}
	for _, s := range KubeVIPSettings() {
		known[s.Name] = true
	}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if known[name] || strings.TrimSpace(value) == "" {
			continue
		}
		if strings.HasPrefix(name, "VIPD_") {
			warnings = append(warnings, fmt.Sprintf("%s ignored: not a vipd setting; check its spelling (docs/configuration.md lists them)", name))
			continue
		}
		for _, p := range kubeVIPPrefixes {
			if strings.HasPrefix(name, p) {
				warnings = append(warnings, fmt.Sprintf("%s ignored: not a kube-vip setting vipd knows; check its spelling (docs/migration.md lists them)", name))
				break
			}
		}
	}
	return warnings
}

// healthAddr reads where /healthz and /readyz are served: --health-addr or
// VIPD_HEALTH_ADDR (empty given explicitly: off), else kube-vip's
// health_check_port N as ":N", else def.
func (l loader) healthAddr(def string) (string, error) {
	s := l.lookup(flagHealthAddr)
	if !s.set {
		raw := strings.TrimSpace(l.getenv(envHealthPort))
		if raw == "" {
			return def, nil
		}
		hp := source{raw: raw, name: envHealthPort, set: true}
		p, err := strconv.ParseUint(raw, 10, 16)
		if err != nil || p == 0 {
			return "", hp.errorf("not a port number (1 to 65535)")
		}
		return ":" + raw, nil
	}
	if s.raw == "" {
		return "", nil
	}
	return metricsAddr(s)
}
