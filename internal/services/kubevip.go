package services

import (
	"fmt"
	"maps"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// AnnotationIgnore is kube-vip's "leave this Service alone": a Service
// carrying it with a true value is not served, whatever its class.
const AnnotationIgnore = "kube-vip.io/ignore"

// reasonUnsupported is the Event reason for a kube-vip annotation whose
// feature vipd does not have.
const reasonUnsupported = "UnsupportedAnnotation"

// unsupportedAnnotations are kube-vip's Service annotations for features
// vipd does not implement, with what the Service gets instead.
var unsupportedAnnotations = map[string]string{
	"kube-vip.io/egress":                  "no egress: the Service's pods do not leave the cluster from its VIP",
	"kube-vip.io/egress-ipv6":             "no egress: the Service's pods do not leave the cluster from its VIP",
	"kube-vip.io/serviceVLAN":             "no VLAN interface is made; its VIP goes on vipd's interface",
	"kube-vip.io/forwardUPNP":             "no UPnP port forwarding",
	"kube-vip.io/loadbalancerHostname":    "no DHCP: give it an address (kube-vip.io/loadbalancerIPs)",
	"kube-vip.io/hwaddr":                  "no DHCP: give it an address (kube-vip.io/loadbalancerIPs)",
	"kube-vip.io/leaseName":               "its election uses vipd's own Lease (vipd-svc-<address> with svc_election)",
	"kube-vip.io/flush-conntrack":         "conntrack entries are not flushed on failover",
	"kube-vip.io/rp_filter":               "rp_filter is left as the node has it",
	"kube-vip.io/ignore-service-security": "vipd does not filter traffic to Service VIPs, so there is nothing to ignore",
}

// ignored reports whether the Service asks vipd (as kube-vip) to leave it
// alone.
func ignored(s *corev1.Service) bool {
	v, err := strconv.ParseBool(s.Annotations[AnnotationIgnore])
	return err == nil && v
}

// unsupported returns a warning for each kube-vip annotation on the Service
// whose feature vipd does not have; the Service is served without it.
func unsupported(s *corev1.Service) []warning {
	var ws []warning
	for _, k := range slices.Sorted(maps.Keys(unsupportedAnnotations)) {
		if v, ok := s.Annotations[k]; ok && v != "" {
			ws = append(ws, warning{reasonUnsupported,
				fmt.Sprintf("annotation %s=%q is not implemented by vipd: %s", k, v, unsupportedAnnotations[k])})
		}
	}
	return ws
}
