package config

import (
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/vipd/vipd/internal/address"
)

// Parsers for the kinds of value a setting can hold. Each takes the source
// of the value, so its error names the flag or variable it came from.

// checkInterfaceName applies the kernel's rules for interface names; whether
// the interface exists is the agent's business.
func checkInterfaceName(s source) error {
	if s.raw == "" {
		return nil
	}
	if problem := address.InterfaceNameProblem(s.raw); problem != "" {
		return s.errorf("%s", problem)
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

// objectNameSetting checks the name of an object of the given kind
// ("Lease", "Secret", ...).
func objectNameSetting(s source, kind, def string) (string, error) {
	if s.raw == "" {
		return def, nil
	}
	if len(validation.IsDNS1123Subdomain(s.raw)) > 0 {
		return "", s.errorf("not a valid %s name (%s)", kind, objectRule)
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
