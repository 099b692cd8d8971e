// Command vipd gives a Kubernetes cluster highly available virtual IPs on
// layer 2. It reads kube-vip's environment variables, so a kube-vip
// manifest (args: ["manager"]) runs it unchanged.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vipd/vipd/internal/agent"
	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/logging"
	"github.com/vipd/vipd/internal/manifest"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes: a usage or configuration error is 2, so a crash-looping pod
// with a bad manifest is told apart from an agent that failed while running.
const (
	exitAgentFailed = 1
	exitUsage       = 2
)

func main() {
	a := app{getenv: os.Getenv, environ: os.Environ, stdout: os.Stdout, stderr: os.Stderr, runAgent: agent.Run}
	os.Exit(a.execute(context.Background(), os.Args[1:]))
}

// app is vipd with its surroundings passed in, so tests can run it in-process.
type app struct {
	getenv         func(string) string
	environ        func() []string // nil: no environment to check
	args           []string        // the command line, for manifest headers
	stdout, stderr io.Writer
	runAgent       func(ctx context.Context, cfg config.Config, version string, log *slog.Logger) error
}

// agentError marks a failure of the running agent, as opposed to a usage
// or configuration error.
type agentError struct{ err error }

func (e agentError) Error() string { return e.err.Error() }
func (e agentError) Unwrap() error { return e.err }

// execute runs vipd with args and returns the process exit code.
func (a app) execute(ctx context.Context, args []string) int {
	a.args = args
	root := a.command()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if errors.As(err, new(agentError)) {
		// Already logged by the agent's logger; nothing more to say.
		return exitAgentFailed
	}
	fmt.Fprintf(a.stderr, "vipd: %v\n", err)
	return exitUsage
}

func (a app) command() *cobra.Command {
	root := &cobra.Command{
		Use:           "vipd",
		Short:         "Highly available virtual IPs for bare-metal Kubernetes",
		SilenceErrors: true, // execute prints errors itself, as one line
		SilenceUsage:  true,
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)

	run := &cobra.Command{
		Use:     "run",
		Aliases: []string{"manager"}, // what kube-vip manifests run
		Short:   "Run the agent until SIGTERM or SIGINT",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.run(cmd.Context(), cmd)
		},
	}
	config.AddFlags(run.Flags())

	ver := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "vipd", version)
		},
	}

	root.AddCommand(run, ver, a.statusCommand(), manifest.Command(version, a.args))
	return root
}

// gcPercent is the agent's garbage collection target unless GOGC is set.
const gcPercent = 25

// tuneRuntime makes the Go runtime's settings for an agent, unless the
// environment makes them (docs/configuration.md#the-go-runtimes-settings).
func (a app) tuneRuntime() {
	if a.getenv("GOMAXPROCS") == "" {
		// One processor: an agent is idle but for bursts of small
		// events, and with one per CPU the runtime spent a sixth of its
		// CPU on threads spinning for work and on marking in parallel on
		// otherwise idle processors; placing 1,000 Services took each
		// agent a fifth less CPU with one (docs/scale-runs-2.md).
		runtime.GOMAXPROCS(1)
	}
	if a.getenv("GOGC") == "" {
		// The agent's heap is mostly caches that change little; collecting
		// when it has grown by a quarter rather than doubled keeps its
		// resident memory near what it holds, for a few percent more CPU
		// (docs/scale-runs.md). GOGC, when set, decides as usual.
		debug.SetGCPercent(gcPercent)
	}
}

// gcSetting is the garbage collection target as set, for the log.
func gcSetting(getenv func(string) string) string {
	if v := getenv("GOGC"); v != "" {
		return v
	}
	return fmt.Sprint(gcPercent)
}

func (a app) run(ctx context.Context, cmd *cobra.Command) error {
	cfg, err := config.Load(cmd.Flags(), a.getenv)
	if err != nil {
		return err
	}
	log, err := logging.New(a.stderr, cfg.LogFormat, cfg.Level())
	if err != nil {
		return err
	}
	log = log.With("node", cfg.NodeName)
	logging.RouteKlog(log, cfg.Level())

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	a.tuneRuntime()
	log.Info("starting vipd", "version", version, "config", cfg,
		"gomaxprocs", runtime.GOMAXPROCS(0), "gogc", gcSetting(a.getenv))
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	if a.environ != nil {
		for _, w := range config.CheckEnvironment(a.environ()) {
			log.Warn(w)
		}
	}
	if cfg.DebugAddr == "" {
		// Nobody can read a heap profile without the debug endpoint: not
		// sampling allocations saves the CPU of recording their stacks and
		// the memory of the table they are kept in (docs/scale-runs.md).
		runtime.MemProfileRate = 0
	}
	if err := a.runAgent(ctx, cfg, version, log); err != nil {
		log.Error("agent failed", "err", err)
		return agentError{err}
	}
	if cause := context.Cause(ctx); cause != nil {
		// Says which signal ended the run.
		log.Info("vipd stopped", "cause", cause)
		return nil
	}
	log.Info("vipd stopped")
	return nil
}
