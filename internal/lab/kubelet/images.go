package kubelet

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// PauseImage is the tag of the sandbox image BuildPauseImage makes.
const PauseImage = "localhost/vipd-lab-pause:1"

// BuildPauseImage builds the sandbox ("pause") image from ./pause with
// buildah and writes it as an OCI archive into dir; no registry is
// reachable to pull one. repoRoot is the module's root.
func BuildPauseImage(ctx context.Context, repoRoot, dir string) (string, error) {
	bin := filepath.Join(dir, "pause")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./internal/lab/kubelet/pause")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building pause: %w: %s", err, out)
	}
	archive := filepath.Join(dir, "pause.tar")
	script := `set -e
c=$(buildah --storage-driver vfs from scratch)
trap 'buildah --storage-driver vfs rm "$c" >/dev/null' EXIT
buildah --storage-driver vfs copy "$c" "$1" /pause >/dev/null
buildah --storage-driver vfs config --entrypoint '["/pause"]' "$c"
buildah --storage-driver vfs commit --quiet "$c" "$2" >/dev/null
buildah --storage-driver vfs push --quiet "$2" "oci-archive:$3:$2"
`
	cmd := exec.CommandContext(ctx, "bash", "-c", script, "pause-image", bin, PauseImage, archive)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("making the pause image with buildah: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return archive, nil
}
