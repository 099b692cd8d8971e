package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab/controlplane"
)

func TestDur(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{600 * time.Microsecond, "0.6 ms"},
		{9400 * time.Microsecond, "9.4 ms"},
		{118 * time.Millisecond, "118 ms"},
		{4812 * time.Millisecond, "4.81 s"},
		{-351 * time.Millisecond, "-351 ms"},
	} {
		if got := dur(c.d); got != c.want {
			t.Errorf("dur(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	if got := signed(118 * time.Millisecond); got != "+118 ms" {
		t.Errorf("signed(118ms) = %q", got)
	}
}

func TestDemoNeedsVipd(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := execute(context.Background(), []string{"demo"}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), `required flag(s) "vipd" not set`) {
		t.Errorf("demo without --vipd: exit %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	code = execute(context.Background(), []string{"demo", "--vipd", filepath.Join(t.TempDir(), "missing")}, &stdout, &stderr)
	if os.Geteuid() == 0 && (code != 1 || !strings.Contains(stderr.String(), "not an executable file")) {
		t.Errorf("demo with a missing binary: exit %d, stderr %q", code, stderr.String())
	}
}

// TestDemo runs `make demo`'s program end to end against a freshly built
// vipd and checks that it narrates both failovers and leaves nothing behind.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the demo needs root for network namespaces")
	}
	if testing.Short() {
		t.Skip("runs a control plane and a lab")
	}
	dir, err := controlplane.DefaultAssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); errors.Is(err, os.ErrNotExist) && os.Getenv("CI") != "true" {
		t.Skipf("no kube-apiserver in %s; run make kube-assets", dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "vipd")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../vipd").CombinedOutput(); err != nil {
		t.Fatalf("building vipd: %v\n%s", err, out)
	}

	var out, logs bytes.Buffer
	err = runDemo(ctx, demoOptions{vipd: bin}, &out, &logs)
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, logs.String())
	}
	for _, want := range []string{
		"longest time without a ping reply",
		"graceful (SIGTERM)",
		"node loss (SIGKILL, link down)",
		"shows none of",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	// The VIP the killed agent left is gone by the time the node is back:
	// expired, or removed by the restarted agent.
	if !strings.Contains(out.String(), "its lifetime ran out") && !strings.Contains(out.String(), "removed the VIP its killed predecessor left") {
		t.Error("the demo does not say what became of the VIP the killed agent left")
	}
	left, err := namespacesWithPrefix("vl" + strconv.Itoa(os.Getpid()) + "-demo")
	if err != nil || len(left) > 0 {
		t.Errorf("namespaces left after the demo: %v %v", left, err)
	}
}
