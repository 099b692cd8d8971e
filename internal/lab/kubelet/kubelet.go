// Package kubelet runs a real kubelet with a real container runtime
// (Debian's containerd and runc) on a lab node, so that the tests can give
// it vipd's static pod manifest the way a control-plane node gets it.
//
// The kubelet runs standalone (no API server: it serves static pods only,
// as during kubeadm init) in the node's network namespace, so a pod on the
// host network shares the node's interfaces. Both daemons see the host's
// mounts (a netns-only nsenter, not ip netns exec, whose private /sys has
// no cgroups). Everything lives under one directory and one cgroup of its
// own, which Close removes.
package kubelet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/vipd/vipd/internal/lab"
)

// Ports the kubelet serves in the node's namespace.
const (
	readOnlyPort = 10255 // GET /pods, unauthenticated, for the tests
	healthzPort  = 10248
)

// Kubelet is containerd and a kubelet running on one lab node.
type Kubelet struct {
	node       *lab.Node
	dir        string
	sock       string // containerd's socket
	manifests  string // the kubelet's staticPodPath
	cgroupRoot string

	containerd, kubelet *lab.Process
}

// Start runs containerd and the kubelet binary (built from the pinned
// Kubernetes release, hack/kube-assets.sh) on node, under dir (which
// must be new, short: socket paths are limited to 107 bytes). images are
// OCI archives imported into the runtime before the kubelet starts; the
// first must be the sandbox ("pause") image, tagged sandboxImage.
func Start(ctx context.Context, node *lab.Node, kubeletBin, dir, sandboxImage string, images ...string) (k *Kubelet, err error) {
	k = &Kubelet{node: node, dir: dir, sock: filepath.Join(dir, "containerd.sock"), manifests: filepath.Join(dir, "manifests")}
	defer func() {
		if err != nil {
			err = errors.Join(err, k.Close())
			k = nil
		}
	}()
	for _, d := range []string{k.manifests, filepath.Join(dir, "pods")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return k, err
		}
	}
	// Named after dir, which is new: never an earlier run's cgroup.
	cgroupRoot := "vipdlab" + strings.ReplaceAll(filepath.Clean(dir), "/", "-")
	k.cgroupRoot = cgroupRoot
	if err = makeCgroups(cgroupRoot); err != nil {
		return k, err
	}

	conf := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig(dir, k.sock, sandboxImage)), 0o644); err != nil {
		return k, err
	}
	if k.containerd, err = node.StartHostMounts(context.Background(), "containerd", []string{"--config", conf}, nil); err != nil {
		return k, err
	}
	if err := k.waitFor(ctx, "containerd to serve", func() error {
		_, err := k.ctr(ctx, "version")
		return err
	}); err != nil {
		return k, err
	}
	for _, img := range images {
		if _, err := k.ctr(ctx, "images", "import", img); err != nil {
			return k, fmt.Errorf("importing %s into containerd: %w", img, err)
		}
	}

	kconf := filepath.Join(dir, "kubelet.yaml")
	if err := os.WriteFile(kconf, []byte(kubeletConfig(dir, k.sock, k.manifests, cgroupRoot)), 0o644); err != nil {
		return k, err
	}
	if k.kubelet, err = node.StartHostMounts(context.Background(), kubeletBin, []string{
		"--config", kconf, "--root-dir", filepath.Join(dir, "kubelet"), "--hostname-override", node.Name, "--v", "1",
	}, nil); err != nil {
		return k, err
	}
	if err := k.waitFor(ctx, "the kubelet's healthz", func() error {
		code, body, err := node.HTTPGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/healthz", healthzPort))
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	}); err != nil {
		return k, err
	}
	return k, nil
}

// containerdConfig is containerd 1.6's configuration for the lab: its own
// root, state and sockets; cgroupfs (no systemd here); oom_score_adj never
// below containerd's own, since the kernel here refuses lowering it (runc
// would fail every sandbox); no CNI: pods run on the host network.
func containerdConfig(dir, sock, sandboxImage string) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[6]q
    conf_dir = %[6]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[7]q
`, filepath.Join(dir, "containerd/root"), filepath.Join(dir, "containerd/state"), sock, sock+".ttrpc",
		sandboxImage, filepath.Join(dir, "cni"), filepath.Join(dir, "containerd/opt"))
}

// kubeletConfig runs a standalone kubelet: static pods from manifests, no
// API server, its secure port refusing everyone (the tests read the
// read-only port, in the node's namespace only), on cgroup v1 if that is
// what the machine has (Kubernetes 1.35 and later refuse v1 by default).
func kubeletConfig(dir, sock, manifests, cgroupRoot string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: %q
fileCheckFrequency: 1s
syncFrequency: 5s
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
containerRuntimeEndpoint: unix://%s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
readOnlyPort: %d
healthzPort: %d
healthzBindAddress: 127.0.0.1
podLogsDir: %q
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
resolvConf: ""
`, manifests, cgroupRoot, sock, readOnlyPort, healthzPort, filepath.Join(dir, "pods"))
}

// ctr runs containerd's client against this containerd, in the kubelet's
// namespace of containerd.
func (k *Kubelet) ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", k.sock, "--namespace", "k8s.io"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (k *Kubelet) waitFor(ctx context.Context, what string, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		for _, p := range []*lab.Process{k.containerd, k.kubelet} {
			if p != nil && p.Exited() {
				return fmt.Errorf("waiting for %s: %s exited: %s", what, filepath.Base(p.LogPath()), tail(p.Log(), 2000))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// AddStaticPod puts a pod manifest where the kubelet reads static pods.
func (k *Kubelet) AddStaticPod(name string, manifest []byte) error {
	// Written aside and renamed, so the kubelet never reads half a file.
	tmp := filepath.Join(k.dir, "."+name)
	if err := os.WriteFile(tmp, manifest, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(k.manifests, name))
}

// RemoveStaticPod removes a manifest: the kubelet stops the pod, as when
// an operator deletes /etc/kubernetes/manifests/vipd.yaml.
func (k *Kubelet) RemoveStaticPod(name string) error {
	return os.Remove(filepath.Join(k.manifests, name))
}

// Pods are the pods the kubelet runs, with their status, as its read-only
// endpoint reports them.
func (k *Kubelet) Pods(ctx context.Context) ([]corev1.Pod, error) {
	code, body, err := k.node.HTTPGet(ctx, fmt.Sprintf("http://127.0.0.1:%d/pods", readOnlyPort))
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("kubelet /pods: %d %s", code, body)
	}
	var list corev1.PodList
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		return nil, fmt.Errorf("kubelet /pods: %w", err)
	}
	return list.Items, nil
}

// ContainerPID is the host pid of a running container, by its ID
// ("containerd://…" as a pod status gives it, or bare).
func (k *Kubelet) ContainerPID(ctx context.Context, id string) (int, error) {
	id = strings.TrimPrefix(id, "containerd://")
	out, err := k.ctr(ctx, "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no task for container %s: %s", id, out)
}

// Log is the kubelet's output so far, for failing tests.
func (k *Kubelet) Log() string {
	if k.kubelet == nil {
		return ""
	}
	return k.kubelet.Log()
}

// Close stops every pod (by removing the manifests), then the kubelet and
// containerd, unmounts what they mounted, and removes their cgroups and
// directory. The lab removes any process left in the node's namespace.
func (k *Kubelet) Close() error {
	var errs []error
	if k.kubelet != nil && !k.kubelet.Exited() {
		entries, _ := os.ReadDir(k.manifests)
		for _, e := range entries {
			_ = os.Remove(filepath.Join(k.manifests, e.Name()))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := k.waitFor(ctx, "the pods to stop", func() error {
			out, err := k.ctr(ctx, "tasks", "ls", "-q")
			if err == nil && strings.TrimSpace(out) != "" {
				err = fmt.Errorf("tasks still running: %s", strings.Fields(out))
			}
			return err
		})
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []*lab.Process{k.kubelet, k.containerd} {
		if p != nil {
			if err := p.Kill(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// containerd's shims outlive it; they and their containers are in the
	// node's namespace, which the lab empties. Mounts and cgroups are ours.
	if err := unmountUnder(k.dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(k.cgroupRoot); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(k.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
