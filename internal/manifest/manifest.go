// Package manifest prints the Kubernetes objects that install vipd: a
// static pod for control-plane nodes, a DaemonSet for the others, and the
// RBAC the DaemonSet's identity needs and no more. `vipd manifest` is its
// command line; deploy/*.yaml are its output.
package manifest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// Options are what the manifests say. The names follow kube-vip's manifest
// generator where it has the same setting.
type Options struct {
	// Image is the container image, with a pinned tag.
	Image string

	Interface string // vip_interface; empty: vipd detects it
	// ServicesInterface carries Service VIPs (vip_servicesinterface);
	// empty: Interface.
	ServicesInterface string
	Address           string // control-plane VIP(s): address
	ControlPlane      bool   // cp_enable
	Services          bool   // svc_enable
	// ServiceElection elects each Service address on its own (svc_election).
	ServiceElection bool
	ARP             bool // vip_arp
	// LeaderElection false is kube-vip's "no global election"; vipd
	// accepts it only with ServiceElection and no control plane.
	LeaderElection bool
	LeaseName      string // vip_leasename
	// Election timings, as vipd reads them: a bare integer is seconds.
	LeaseDuration, RenewDeadline, RetryPeriod string

	// Namespace holds kube-vip's Leases (cp_namespace): plndr-cp-lock and
	// plndr-svcs-lock, and the static pod.
	Namespace string
	// AgentNamespace holds vipd's own objects: the DaemonSet and its
	// ServiceAccount, node Leases, per-address claims, the heartbeat key.
	AgentNamespace   string
	ServiceLeaseName string // svc_leasename
	PoolNamespace    string // address pool ConfigMap, for the RBAC
	PoolConfigMap    string

	// InCluster authenticates with the ServiceAccount's token; otherwise
	// with the kubeconfig at Kubeconfig on the host.
	InCluster  bool
	Kubeconfig string

	// MetricsAddr is prometheus_server ("" none); HealthAddr serves the
	// probes and must be set.
	MetricsAddr, HealthAddr string

	// HeartbeatKeyFile is where static pods read the heartbeat key on the
	// host (its directory is mounted); DaemonSet pods read HeartbeatSecret
	// in AgentNamespace through the API.
	HeartbeatKeyFile string
	HeartbeatSecret  string
	HeartbeatPort    int

	// Args are the command-line arguments the manifest was generated with,
	// printed in its header so it can be generated again.
	Args []string

	// Taint runs the DaemonSet on control-plane nodes only (kube-vip's
	// --taint); AllNodes on every node. Neither: every node but the
	// control-plane ones, which run the static pod.
	Taint, AllNodes bool
}

// Defaults are the options `vipd manifest` starts from; version is the
// image tag.
func Defaults(version string) Options {
	return Options{
		Image:            "localhost/vipd:" + version,
		ARP:              true,
		LeaderElection:   true,
		LeaseName:        "plndr-cp-lock",
		LeaseDuration:    "5",
		RenewDeadline:    "3",
		RetryPeriod:      "1",
		Namespace:        "kube-system",
		AgentNamespace:   "vipd-system",
		ServiceLeaseName: "plndr-svcs-lock",
		PoolNamespace:    "kube-system",
		PoolConfigMap:    "kubevip",
		Kubeconfig:       "/etc/kubernetes/admin.conf",
		MetricsAddr:      ":2112",
		HealthAddr:       "127.0.0.1:7948",
		HeartbeatKeyFile: "/etc/vipd/heartbeat-key",
		HeartbeatSecret:  "vipd-heartbeat-key",
		HeartbeatPort:    7947,
	}
}

// check refuses options that make manifests vipd would refuse, or that
// cannot work, before anything is printed.
func (o Options) check(kind string) error {
	switch {
	case o.Image == "":
		return fmt.Errorf("--image is empty")
	case !o.ControlPlane && !o.Services:
		return fmt.Errorf("nothing to do: give --controlplane, --services or both")
	case o.ControlPlane && o.Address == "":
		return fmt.Errorf("--controlplane needs the VIP: --address")
	case !o.LeaderElection && (o.ControlPlane || !o.ServiceElection):
		return fmt.Errorf("--leaderElection=false is only possible with --services --servicesElection and without --controlplane: otherwise every node would answer for the same VIP")
	case o.HealthAddr == "":
		return fmt.Errorf("--health-addr is empty: the probes need it")
	case kind == "pod" && o.InCluster:
		return fmt.Errorf("--inCluster: a static pod cannot use a ServiceAccount (its kubelet serves it before any API server exists); it reads the kubeconfig at --kubeconfig")
	case o.Taint && o.AllNodes:
		return fmt.Errorf("--taint (control-plane nodes only) and --all-nodes contradict each other")
	}
	if _, _, err := net.SplitHostPort(o.HealthAddr); err != nil {
		return fmt.Errorf("--health-addr %q: %w", o.HealthAddr, err)
	}
	return nil
}

// healthPort is the port of HealthAddr, for the probes.
func (o Options) healthPort() int32 {
	_, port, _ := net.SplitHostPort(o.HealthAddr)
	p, _ := strconv.ParseInt(port, 10, 32)
	return int32(p)
}

// healthHost is the address the probes connect to: the health address's
// host, or the node's own address (the kubelet's default) when it listens
// on all of them.
func (o Options) healthHost() string {
	host, _, _ := net.SplitHostPort(o.HealthAddr)
	if host == "" || host == "0.0.0.0" || host == "::" {
		return ""
	}
	return host
}

// write prints a header comment and the objects as one YAML stream.
func write(w io.Writer, header string, objs ...runtime.Object) error {
	var b bytes.Buffer
	for _, line := range strings.Split(strings.TrimSpace(header), "\n") {
		b.WriteString(strings.TrimRight("# "+line, " ") + "\n")
	}
	for i, o := range objs {
		if i > 0 {
			b.WriteString("---\n")
		}
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return fmt.Errorf("encoding %T: %w", o, err)
		}
		// What the API server fills in, not what an operator writes.
		delete(m, "status")
		dropNull(m)
		y, err := yaml.Marshal(m)
		if err != nil {
			return fmt.Errorf("encoding %T: %w", o, err)
		}
		b.Write(y)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// dropNull removes keys with null values (creationTimestamp and the like
// that Go's zero values leave), at any depth.
func dropNull(v any) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if e == nil {
				delete(x, k)
				continue
			}
			dropNull(e)
			if m, ok := e.(map[string]any); ok && len(m) == 0 && k != "emptyDir" {
				delete(x, k)
			}
		}
	case []any:
		for _, e := range x {
			dropNull(e)
		}
	}
}
