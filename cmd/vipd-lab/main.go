// Command vipd-lab runs vipd in the network-namespace lab (internal/lab) for
// people to watch. `vipd-lab demo --vipd bin/vipd` starts a throwaway
// control plane and three nodes, fails the control-plane VIP over twice and
// narrates what a client on the segment sees. It needs root.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// exitInterrupted is the shell's status for a program ended by SIGINT.
const exitInterrupted = 130

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(execute(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs vipd-lab with args and returns the process exit code.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:           "vipd-lab",
		Short:         "Run vipd in a lab of network namespaces",
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)

	var opts demoOptions
	demo := &cobra.Command{
		Use:   "demo",
		Short: "Fail the control-plane VIP over between three nodes and narrate it (needs root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), opts, stdout, stderr)
		},
	}
	demo.Flags().StringVar(&opts.vipd, "vipd", "", "path of the vipd binary to run on the nodes (required; make build puts it in bin/vipd)")
	demo.Flags().StringVar(&opts.logDir, "logs", "", "keep the agents' logs in this directory (default: a temporary one, removed at the end)")
	demo.Flags().BoolVarP(&opts.verbose, "verbose", "v", false, "also print the lab's and the agents' logs to stderr")
	_ = demo.MarkFlagRequired("vipd")
	root.AddCommand(demo)

	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil:
		// Whatever the interrupted step reported, the cause is the signal.
		fmt.Fprintln(stderr, "vipd-lab: interrupted")
		return exitInterrupted
	default:
		fmt.Fprintf(stderr, "vipd-lab: %v\n", err)
		return 1
	}
}
