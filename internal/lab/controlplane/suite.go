package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"
)

// Suite is one control plane shared by all the tests of a package.
type Suite struct {
	cp  *ControlPlane
	err error
}

// Run starts the control plane, runs the package's tests and stops it. Call
// it from TestMain: os.Exit(suite.Run(m)).
func (s *Suite) Run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	s.cp, s.err = Start(ctx, Options{})
	cancel()
	code := m.Run()
	if s.cp != nil {
		if err := s.cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping control plane:", err)
		}
	}
	return code
}

// Need returns the control plane, or ends t: skipped on a developer machine
// without the binaries (hack/kube-assets.sh builds them), failed in CI
// (CI=true) or when the control plane did not start.
func (s *Suite) Need(t testing.TB) *ControlPlane {
	t.Helper()
	if errors.Is(s.err, ErrAssetsMissing) && os.Getenv("CI") != "true" {
		t.Skipf("skipping: %v", s.err)
	}
	if s.err != nil {
		t.Fatalf("control plane: %v", s.err)
	}
	return s.cp
}
