package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/vipd/vipd/internal/lab/controlplane"
)

// binEnv names the environment variable that makes the tests run a vipd
// binary built elsewhere instead of building ./cmd/vipd.
const binEnv = "VIPD_E2E_BIN"

// suite is what TestMain prepares once for all tests and benchmarks of the
// package. It is written before m.Run and only read afterwards.
type suite struct {
	bin   string // the vipd binary under test
	cp    *controlplane.ControlPlane
	admin kubernetes.Interface
	// skip, when set, is why every test and benchmark skips.
	skip string
}

var pkg suite

func TestMain(m *testing.M) { os.Exit(runSuite(m)) }

func runSuite(m *testing.M) int {
	if os.Geteuid() != 0 {
		pkg.skip = "the e2e tests need root: they build network namespaces and open raw sockets"
		return m.Run()
	}

	dir, err := os.MkdirTemp("", "vipd-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: creating a temporary directory: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if bin := os.Getenv(binEnv); bin != "" {
		// A binary built elsewhere, e.g. a release candidate.
		if pkg.bin, err = filepath.Abs(bin); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s: %v\n", binEnv, err)
			return 1
		}
	} else {
		pkg.bin = filepath.Join(dir, "vipd")
		if err := buildVipd(pkg.bin); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cp, err := controlplane.Start(ctx, controlplane.Options{Logger: quiet})
	if errors.Is(err, controlplane.ErrAssetsMissing) && os.Getenv("CI") != "true" {
		// A developer machine without the binaries: skip, saying how to get
		// them. CI must have them, so there it is a failure.
		pkg.skip = fmt.Sprintf("no control plane: %v", err)
		return m.Run()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		}
	}()
	pkg.cp = cp
	if pkg.admin, err = kubernetes.NewForConfig(cp.Config()); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: admin client: %v\n", err)
		return 1
	}
	return m.Run()
}

// buildVipd builds ./cmd/vipd of this module into bin, with the go command
// that runs the tests.
func buildVipd(bin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/vipd")
	cmd.Dir = ".." // the module root; go test runs in the package directory
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building vipd: %w: %s", err, out)
	}
	return nil
}
