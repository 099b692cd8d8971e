package main

import (
	"context"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/status"
)

// statusCommand is `vipd status`: what vipd is doing, read from the API.
func (a app) statusCommand() *cobra.Command {
	var (
		o          status.Options
		kubeconfig string
		kubeCtx    string
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every VIP: what it serves, its holder, since when, the holder's liveness, problems",
		Long: `Show what vipd is doing, read from the Kubernetes API alone (read-only access
suffices): one row per VIP, or with --nodes one per agent.

Without -n, vipd status finds the namespace of vipd's node Leases itself
(falling back to kube-system if it may not list Leases across namespaces);
where the control-plane and Services claims live it reads from what the
agents publish on their node Leases.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			rules.ExplicitPath = kubeconfig
			rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
				&clientcmd.ConfigOverrides{CurrentContext: kubeCtx}).ClientConfig()
			if err != nil {
				return fmt.Errorf("reading the kubeconfig: %w", err)
			}
			rc.UserAgent = "vipd-status"
			if o.Client, err = kube.NewForConfig(rc); err != nil {
				return fmt.Errorf("building the Kubernetes client: %w", err)
			}
			ctx := cmd.Context()
			if o.Watch {
				var stop context.CancelFunc
				ctx, stop = signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
				defer stop()
			}
			return status.Run(ctx, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "path of a kubeconfig (default: $KUBECONFIG, then ~/.kube/config, then in-cluster)")
	f.StringVar(&kubeCtx, "context", "", "kubeconfig context to use")
	f.StringVarP(&o.Namespace, "namespace", "n", "", "namespace of vipd's node Leases (default: found across the cluster, else kube-system)")
	f.StringVarP(&o.Output, "output", "o", "", "wide, json or yaml (default: a table)")
	f.BoolVar(&o.Nodes, "nodes", false, "one row per agent: version, Lease, heartbeats, VIPs held, addresses")
	f.BoolVarP(&o.Watch, "watch", "w", false, "keep running; print again whenever something changes")
	return cmd
}
