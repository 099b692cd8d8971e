package manifest

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Command is `vipd manifest pod|daemonset|rbac`, with kube-vip's manifest
// generator's flag names where the setting is the same. version is vipd's,
// the default image tag; cmdline is the whole command line, for the headers.
func Command(version string, cmdline []string) *cobra.Command {
	o := Defaults(version)
	cmd := &cobra.Command{
		Use:   "manifest",
		Short: "Print Kubernetes manifests that install vipd",
		Long: `Print Kubernetes manifests that install vipd: a static pod for the
control-plane nodes (pod), a DaemonSet for the other nodes (daemonset) and
the least-privilege RBAC of the DaemonSet's identity (rbac). Flags are
kube-vip's manifest generator's where the setting is the same.`,
	}
	fs := cmd.PersistentFlags()
	fs.StringVar(&o.Image, "image", o.Image, "container image, with its tag")
	fs.StringVar(&o.Interface, "interface", o.Interface, "interface that carries the VIPs (vip_interface; empty: detected)")
	fs.StringVar(&o.ServicesInterface, "serviceInterface", o.ServicesInterface, "interface that carries the Service VIPs (vip_servicesinterface; empty: --interface)")
	fs.StringVar(&o.Address, "address", o.Address, "control-plane VIP: one address, or one IPv4 and one IPv6 address separated by a comma")
	fs.StringVar(&o.Address, "vip", o.Address, "same as --address")
	fs.BoolVar(&o.ControlPlane, "controlplane", o.ControlPlane, "serve the control-plane VIP (cp_enable)")
	fs.BoolVar(&o.Services, "services", o.Services, "serve LoadBalancer Services (svc_enable)")
	fs.BoolVar(&o.ServiceElection, "servicesElection", o.ServiceElection, "elect a holder for each Service address (svc_election)")
	fs.BoolVar(&o.ARP, "arp", o.ARP, "announce VIPs with gratuitous ARP and unsolicited neighbour advertisements (vip_arp)")
	fs.BoolVar(&o.LeaderElection, "leaderElection", o.LeaderElection, "elect through Leases (vip_leaderelection); false only with --servicesElection and no --controlplane")
	fs.StringVar(&o.LeaseName, "leaseName", o.LeaseName, "Lease of the control-plane VIP (vip_leasename)")
	fs.StringVar(&o.LeaseDuration, "leaseDuration", o.LeaseDuration, "Lease duration (vip_leaseduration; seconds, or a Go duration)")
	fs.StringVar(&o.RenewDeadline, "leaseRenewDuration", o.RenewDeadline, "renew deadline (vip_renewdeadline; seconds, or a Go duration)")
	fs.StringVar(&o.RetryPeriod, "leaseRetry", o.RetryPeriod, "retry period (vip_retryperiod; seconds, or a Go duration)")
	fs.StringVarP(&o.Namespace, "namespace", "n", o.Namespace, "namespace of kube-vip's Leases and the static pod (cp_namespace)")
	fs.StringVar(&o.AgentNamespace, "agent-namespace", o.AgentNamespace, "namespace of vipd's own Leases, heartbeat key, DaemonSet and ServiceAccount")
	fs.StringVar(&o.ServiceLeaseName, "servicesLeaseName", o.ServiceLeaseName, "Lease of all Services when not electing per Service (svc_leasename)")
	fs.StringVar(&o.PoolNamespace, "pool-namespace", o.PoolNamespace, "namespace of the address pool ConfigMap")
	fs.StringVar(&o.PoolConfigMap, "pool-configmap", o.PoolConfigMap, "name of the address pool ConfigMap")
	fs.BoolVar(&o.InCluster, "inCluster", o.InCluster, "authenticate with the ServiceAccount's token (DaemonSet only)")
	fs.StringVar(&o.Kubeconfig, "k8sConfigPath", o.Kubeconfig, "kubeconfig on the host, when not --inCluster")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "same as --k8sConfigPath")
	fs.StringVar(&o.MetricsAddr, "prometheusHTTPServer", o.MetricsAddr, "host:port for Prometheus metrics (prometheus_server; empty: none)")
	fs.StringVar(&o.HealthAddr, "health-addr", o.HealthAddr, "host:port for /healthz and /readyz, which the probes use")
	fs.StringVar(&o.HeartbeatKeyFile, "heartbeat-key-file", o.HeartbeatKeyFile, "heartbeat key on the host (static pod)")
	fs.StringVar(&o.HeartbeatSecret, "heartbeat-key-secret", o.HeartbeatSecret, "Secret with the heartbeat key in --agent-namespace (DaemonSet)")
	fs.IntVar(&o.HeartbeatPort, "heartbeat-port", o.HeartbeatPort, "UDP port of the heartbeats")
	refuseKubeVIPOnly(fs)

	print := func(use, short string, gen func(io.Writer, Options) error, inCluster bool) *cobra.Command {
		c := &cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := refusedFlags(cmd.Flags()); err != nil {
					return err
				}
				opts := o
				if !cmd.Flags().Changed("inCluster") {
					opts.InCluster = inCluster
				}
				opts.Args = append([]string{}, cmdline...)
				return gen(cmd.OutOrStdout(), opts)
			},
		}
		return c
	}
	ds := print("daemonset", "Print the DaemonSet (nodes without the static pod)", DaemonSet, true)
	ds.Flags().BoolVar(&o.Taint, "taint", o.Taint, "run on control-plane nodes only")
	ds.Flags().BoolVar(&o.AllNodes, "all-nodes", o.AllNodes, "run on every node, control plane included")
	cmd.AddCommand(
		print("pod", "Print the static pod (control-plane nodes)", Pod, false),
		ds,
		print("rbac", "Print the RBAC of the DaemonSet's ServiceAccount", RBAC, true),
	)
	return cmd
}

// kubeVIPOnly are kube-vip generator flags for what vipd does not do.
var kubeVIPOnly = map[string]string{
	"bgp":                "BGP mode is not implemented; vipd announces VIPs with ARP/NDP",
	"table":              "routing-table mode is not implemented",
	"wireguard":          "WireGuard mode is not implemented",
	"enableLoadBalancer": "vipd does not load-balance the control plane",
	"ddns":               "vipd does not get VIPs by DHCP; give --address",
	"dhcpMode":           "vipd does not get VIPs by DHCP; give --address",
	"enableNodeLabeling": "vipd does not label the node that holds a VIP",
}

// refuseKubeVIPOnly registers kube-vip's flags vipd lacks, hidden, so that
// using one says why instead of "unknown flag".
func refuseKubeVIPOnly(fs *pflag.FlagSet) {
	for name := range kubeVIPOnly {
		fs.String(name, "", "")
		fs.Lookup(name).NoOptDefVal = "true"
		_ = fs.MarkHidden(name)
	}
}

func refusedFlags(fs *pflag.FlagSet) error {
	for name, why := range kubeVIPOnly {
		if f := fs.Lookup(name); f != nil && f.Changed {
			return fmt.Errorf("--%s is not supported: %s", name, why)
		}
	}
	return nil
}

// Generate runs `vipd manifest …` with args (starting with "manifest") in
// the process and returns what it prints.
func Generate(version string, args []string) ([]byte, error) {
	cmd := Command(version, args)
	cmd.SetArgs(args[1:])
	var out, errs bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errs)
	cmd.SilenceUsage = true
	if err := cmd.Execute(); err != nil {
		return nil, fmt.Errorf("vipd %s: %w %s", strings.Join(args, " "), err, strings.TrimSpace(errs.String()))
	}
	return out.Bytes(), nil
}
