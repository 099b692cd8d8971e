package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/config"
)

// vipd runs the command in-process with env as its environment and agent in
// place of the real agent. It returns the exit code, stdout and stderr.
func vipd(t *testing.T, args []string, env map[string]string, agent func(context.Context, config.Config, string, *slog.Logger) error) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if agent == nil {
		agent = func(context.Context, config.Config, string, *slog.Logger) error {
			t.Error("agent started")
			return nil
		}
	}
	a := app{getenv: func(k string) string { return env[k] }, stdout: &stdout, stderr: &stderr, runAgent: agent}
	code := a.execute(context.Background(), args)
	return code, stdout.String(), stderr.String()
}

func TestBadSettingExits2(t *testing.T) {
	env := map[string]string{"cp_enable": "true", "vip_address": "10.0.0.x", "vip_nodename": "node-a"}
	code, stdout, stderr := vipd(t, []string{"manager"}, env, nil)
	if code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	if want := "vipd: vip_address \"10.0.0.x\": not an IP address\n"; stderr != want {
		t.Errorf("stderr %q, want %q", stderr, want)
	}
	if stdout != "" {
		t.Errorf("stdout %q, want nothing", stdout)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{{"run", "--bogus"}, {"run", "extra"}, {"nonsense"}} {
		code, _, stderr := vipd(t, args, nil, nil)
		if code != 2 || !strings.HasPrefix(stderr, "vipd: ") {
			t.Errorf("%q: exit %d stderr %q, want 2 and a vipd: message", args, code, stderr)
		}
	}
}

// TestJSONLogs runs with --log-format json: every line is one JSON object,
// each key once, and the agent's logger names the node.
func TestJSONLogs(t *testing.T) {
	env := map[string]string{"cp_enable": "true", "vip_address": "192.0.2.10", "vip_nodename": "node-a"}
	agent := func(ctx context.Context, _ config.Config, _ string, log *slog.Logger) error {
		log.Info("took VIP", "vip", "192.0.2.10", "reason", "new")
		return nil
	}
	code, _, stderr := vipd(t, []string{"run", "--log-format=json"}, env, agent)
	if code != 0 {
		t.Fatalf("exit code %d, stderr %s", code, stderr)
	}
	var took map[string]any
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %v: %s", err, line)
		}
		if m["msg"] == "took VIP" {
			took = m
		}
	}
	if took["node"] != "node-a" || took["vip"] != "192.0.2.10" || took["reason"] != "new" {
		t.Errorf("decision line %v lacks node, vip or reason", took)
	}
}

func TestRunPassesConfigAndLogsIt(t *testing.T) {
	env := map[string]string{"cp_enable": "true", "vip_address": "192.0.2.10", "vip_nodename": "node-a"}
	var got config.Config
	agent := func(ctx context.Context, cfg config.Config, _ string, log *slog.Logger) error {
		got = cfg
		log.Debug("hidden at info")
		return nil
	}
	code, _, stderr := vipd(t, []string{"run", "--arp-rate=1s"}, env, agent)
	if code != 0 {
		t.Fatalf("exit code %d, stderr %s", code, stderr)
	}
	if got.NodeName != "node-a" || len(got.VIPs) != 1 || got.VIPs[0].String() != "192.0.2.10" || got.ARPRate != time.Second {
		t.Errorf("agent got %+v", got)
	}
	for _, want := range []string{`level=INFO msg="starting vipd"`, "node=node-a", "version=dev", "config.vips=192.0.2.10", "config.arp_rate=1s"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("log lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "hidden at info") {
		t.Errorf("debug message logged at info level:\n%s", stderr)
	}
}

// TestRuntimeSettings: vipd run uses one processor and collects garbage
// at a quarter's growth, says so, and leaves either to the environment
// when GOMAXPROCS or GOGC is set there.
func TestRuntimeSettings(t *testing.T) {
	before, beforeGC := runtime.GOMAXPROCS(0), debug.SetGCPercent(100)
	t.Cleanup(func() { runtime.GOMAXPROCS(before); debug.SetGCPercent(beforeGC) })
	env := map[string]string{"cp_enable": "true", "vip_address": "192.0.2.10", "vip_nodename": "node-a"}
	agent := func(context.Context, config.Config, string, *slog.Logger) error { return nil }

	runtime.GOMAXPROCS(2)
	code, _, stderr := vipd(t, []string{"run"}, env, agent)
	if code != 0 {
		t.Fatalf("exit code %d, stderr %s", code, stderr)
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS %d, want 1", got)
	}
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GC percent %d, want %d", got, gcPercent)
	}
	for _, want := range []string{"gomaxprocs=1", "gogc=25"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("log lacks %q:\n%s", want, stderr)
		}
	}

	// Set in the environment: the runtime read them at start, and they stay.
	runtime.GOMAXPROCS(2)
	debug.SetGCPercent(60)
	env["GOMAXPROCS"], env["GOGC"] = "2", "60"
	if code, _, stderr = vipd(t, []string{"run"}, env, agent); code != 0 {
		t.Fatalf("exit code %d, stderr %s", code, stderr)
	}
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Errorf("GOMAXPROCS %d with GOMAXPROCS=2 in the environment, want 2", got)
	}
	if got := debug.SetGCPercent(100); got != 60 {
		t.Errorf("GC percent %d with GOGC=60 in the environment, want 60", got)
	}
	for _, want := range []string{"gomaxprocs=2", "gogc=60"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("log lacks %q:\n%s", want, stderr)
		}
	}
}

func TestLogLevelApplies(t *testing.T) {
	env := map[string]string{"svc_enable": "true", "vip_nodename": "node-a", "vip_loglevel": "5"}
	agent := func(ctx context.Context, cfg config.Config, _ string, log *slog.Logger) error {
		log.Debug("shown at debug")
		return nil
	}
	_, _, stderr := vipd(t, []string{"run"}, env, agent)
	if !strings.Contains(stderr, `level=DEBUG msg="shown at debug" node=node-a`) {
		t.Errorf("debug message missing with vip_loglevel=5:\n%s", stderr)
	}
}

func TestAgentErrorExits1(t *testing.T) {
	env := map[string]string{"svc_enable": "true", "vip_nodename": "node-a"}
	agent := func(context.Context, config.Config, string, *slog.Logger) error { return errors.New("no API server") }
	code, _, stderr := vipd(t, []string{"run"}, env, agent)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if !strings.Contains(stderr, `level=ERROR msg="agent failed" node=node-a err="no API server"`) {
		t.Errorf("stderr lacks the failure:\n%s", stderr)
	}
}

// TestSIGTERMStopsAgent checks that SIGTERM cancels the agent's context
// and vipd exits 0, as a pod being deleted expects.
func TestSIGTERMStopsAgent(t *testing.T) {
	env := map[string]string{"svc_enable": "true", "vip_nodename": "node-a"}
	agent := func(ctx context.Context, _ config.Config, _ string, _ *slog.Logger) error {
		// The handler is installed before the agent starts, so this
		// signal reaches vipd's context rather than ending the test.
		if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("context not cancelled by SIGTERM")
		}
	}
	code, _, stderr := vipd(t, []string{"run"}, env, agent)
	if code != 0 {
		t.Errorf("exit code %d, want 0; stderr:\n%s", code, stderr)
	}
	if !strings.Contains(stderr, `msg="vipd stopped"`) || !strings.Contains(stderr, "terminated") {
		t.Errorf("stderr lacks the stop and its cause:\n%s", stderr)
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := vipd(t, []string{"version"}, nil, nil)
	if code != 0 || stdout != "vipd dev\n" {
		t.Errorf("exit %d stdout %q, want 0 and %q", code, stdout, "vipd dev\n")
	}
}

// TestBuiltBinary builds vipd with a version stamped in, as a release does,
// and checks the version and a configuration error's exit status.
func TestBuiltBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "vipd")
	build := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version=v9.8.7", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil || string(out) != "vipd v9.8.7\n" {
		t.Errorf("vipd version: %q, %v", out, err)
	}

	cmd := exec.CommandContext(ctx, bin, "manager")
	cmd.Env = []string{"cp_enable=true", "vip_nodename=node-a"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Errorf("vipd manager without an address: %v, want exit status 2", err)
	}
	if want := "vipd: cp_enable is true but no VIP is set (--address, VIPD_ADDRESS, address, vip_address)\n"; stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
}
