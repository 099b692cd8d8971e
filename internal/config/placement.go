package config

import (
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// servicesInterface reads vip_servicesinterface. kube-vip's "auto" (the
// interface whose subnet holds each address) is refused rather than taken
// for an interface of that name.
func servicesInterface(s source) (string, error) {
	if strings.EqualFold(s.raw, "auto") {
		return "", s.errorf("finding each Service's interface from its address is not supported; name the interface")
	}
	if err := checkInterfaceName(s); err != nil {
		return "", err
	}
	return s.raw, nil
}

// nodeSelector reads a label selector in the syntax of kubectl's -l
// (key=value, key!=value, key in (a,b), key, !key, joined by commas) and
// returns it in canonical form.
func nodeSelector(s source) (string, error) {
	if s.raw == "" {
		return "", nil
	}
	sel, err := labels.Parse(s.raw)
	if err != nil {
		return "", s.errorf("not a label selector: %v", err)
	}
	if sel.Empty() {
		return "", nil
	}
	return sel.String(), nil
}
