package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/vipd/vipd/internal/lab/controlplane"
	"github.com/vipd/vipd/internal/lab/kubelet"
	"github.com/vipd/vipd/internal/manifest"
)

// imageTag is the tag the test builds vipd's image under.
const imageTag = "localhost/vipd:e2e"

// needKubelet returns the kubelet binary, or ends the test: skipped on a
// developer machine without it or without containerd, runc and buildah
// (make deps installs them), failed in CI.
func needKubelet(t *testing.T) string {
	t.Helper()
	dir, err := controlplane.DefaultAssetsDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "kubelet")
	var missing []string
	if _, err := os.Stat(bin); err != nil {
		missing = append(missing, bin+" (hack/kube-assets.sh)")
	}
	for _, c := range []string{"containerd", "runc", "ctr", "buildah", "nsenter"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("missing %s; make deps installs them", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// buildImages builds vipd's image with hack/image.sh (what make image
// runs) and the sandbox image, as archives for containerd.
func buildImages(t *testing.T, dir string) (pause, vipd string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	vipd = filepath.Join(dir, "vipd.tar")
	cmd := exec.CommandContext(ctx, "hack/image.sh", "e2e", vipd)
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/image.sh: %v: %s", err, out)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if pause, err = kubelet.BuildPauseImage(ctx, root, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("images built in %v", time.Since(start).Round(100*time.Millisecond))
	return pause, vipd
}

// TestKubeletRunsStaticPod: a real kubelet with containerd and runc runs the
// static pod `vipd manifest pod` prints, from the image `make image` builds,
// on n1; n2 and n3 run the binary. The pod's process has exactly the
// capabilities the manifest declares, its probes pass, the VIP answers the
// client; removing the manifest hands the VIP over gracefully. The
// DaemonSet from `vipd manifest daemonset` passes a server-side dry run.
func TestKubeletRunsStaticPod(t *testing.T) {
	kubeletBin := needKubelet(t)
	e := newEnv(t, envOptions{})
	// Short: containerd's socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "vk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pause, image := buildImages(t, dir)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n1 := e.lab.Nodes[0]
	k, err := kubelet.Start(ctx, n1, kubeletBin, filepath.Join(dir, "n1"), kubelet.PauseImage, pause, image)
	if err != nil {
		t.Fatalf("starting containerd and the kubelet on n1: %v", err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Errorf("stopping the kubelet: %v", err)
		}
	})

	// The manifest as an operator generates it, pointed at the lab.
	pod := generateManifest(t, "pod", "--image", imageTag,
		"--interface", "eth0", "--address", vip4.String(), "--controlplane",
		"--namespace", e.ns, "--agent-namespace", e.ns, "--kubeconfig", e.kubeconfig,
		"--heartbeat-key-file", filepath.Join(dir, "key", "heartbeat-key"),
		"--leaseDuration", e.timing.lease.String(), "--leaseRenewDuration", e.timing.renew.String(),
		"--leaseRetry", e.timing.retry.String())
	w := watchVIP(t, e.lab.Nodes, vip4)
	started := time.Now()
	if err := k.AddStaticPod("vipd.yaml", pod); err != nil {
		t.Fatal(err)
	}
	var status corev1.Pod
	waitFor(t, 60*time.Second, "the kubelet to run vipd's pod and find it ready", func() error {
		pods, err := k.Pods(ctx)
		if err != nil {
			return err
		}
		for _, p := range pods {
			if p.Labels["app.kubernetes.io/name"] == "vipd" {
				status = p
				return podReady(p)
			}
		}
		return fmt.Errorf("no vipd pod among %d", len(pods))
	})
	t.Logf("pod ready %v after the manifest appeared", time.Since(started).Round(100*time.Millisecond))
	if h := e.waitSoleHolder(startTimeout); h != n1 {
		t.Fatalf("%s holds the VIP; only n1 runs vipd", h.Name)
	}
	e.mustReach(vip4, n1)

	// Exactly NET_ADMIN and NET_RAW: effective, permitted and bounding.
	cs := status.Status.ContainerStatuses[0]
	pid, err := k.ContainerPID(ctx, cs.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	caps, err := capabilities(pid)
	if err != nil {
		t.Fatal(err)
	}
	const want = 1<<12 | 1<<13 // CAP_NET_ADMIN, CAP_NET_RAW
	for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if caps[set] != want {
			t.Errorf("vipd's %s is %#x, want %#x (NET_ADMIN and NET_RAW only)", set, caps[set], want)
		}
	}
	if caps["CapAmb"] != 0 || caps["CapInh"] != 0 {
		t.Errorf("vipd has inheritable %#x, ambient %#x capabilities; want none", caps["CapInh"], caps["CapAmb"])
	}

	// The others run the binary; the pod's agent keeps the VIP.
	procs := map[string]bool{}
	for _, n := range e.lab.Nodes[1:] {
		p := e.start(n)
		waitLog(t, p, 0, 10*time.Second, "this agent is live")
		procs[n.Name] = true
	}
	if cs.RestartCount != 0 {
		t.Errorf("the vipd container restarted %d times", cs.RestartCount)
	}

	// An operator removes the manifest: the kubelet stops the container
	// with SIGTERM and the agent steps down; another node takes over at
	// once, not after the Lease expires, and never beside n1.
	removed := time.Now()
	if err := k.RemoveStaticPod("vipd.yaml"); err != nil {
		t.Fatal(err)
	}
	at, err := w.Wait(20*time.Second, func(h []string) bool { return len(h) == 1 && procs[h[0]] })
	if err != nil {
		t.Fatalf("%v\nkubelet log:\n%s", err, tailString(k.Log(), 3000))
	}
	var left time.Time
	for _, ev := range w.Events() {
		if ev.Node == n1.Name && !ev.Held {
			left = ev.At
		}
	}
	t.Logf("manifest removed; VIP off n1 after %v, on %v after %v", left.Sub(removed).Round(time.Millisecond),
		w.Holders(), at.Sub(removed).Round(time.Millisecond))
	if gap := at.Sub(left); gap > e.timing.lease/2 {
		t.Errorf("the VIP was on no node for %v after n1 stepped down; a graceful handover takes tens of ms, a Lease expiry %v", gap, e.timing.lease)
	}
	if d := w.Overlap(removed, time.Now(), nil); d > stepDownBound {
		t.Errorf("n1 kept the VIP, silent, for %v after the new holder had it; a stopping agent lets go once it sees the new holder (at most %v)", d, stepDownBound)
	}
	e.mustReach(vip4, e.node(w.Holders()[0]))

	checkDaemonSetDryRun(t, e.ns)
}

// podReady says why p is not running and ready, or nil.
func podReady(p corev1.Pod) error {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return nil
		}
	}
	return fmt.Errorf("pod %s is %s: %+v", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
}

// capabilities reads the capability sets of a process.
func capabilities(pid int) (map[string]uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	caps := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.HasPrefix(k, "Cap") {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("%s of %d: %w", k, pid, err)
			}
			caps[k] = n
		}
	}
	return caps, nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// generateManifest runs `vipd manifest kind args...` in-process.
func generateManifest(t *testing.T, kind string, args ...string) []byte {
	t.Helper()
	out, err := manifest.Generate("e2e", append([]string{"manifest", kind}, args...))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkDaemonSetDryRun: the DaemonSet `vipd manifest daemonset` prints is
// accepted by the API server (server-side dry run: defaulting, validation,
// admission).
func checkDaemonSetDryRun(t *testing.T, ns string) {
	t.Helper()
	y := generateManifest(t, "daemonset", "--image", imageTag, "--interface", "eth0",
		"--services", "--servicesElection", "--namespace", ns, "--agent-namespace", ns)
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(y)))
	codecs := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict)
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decoding the DaemonSet: %v", err)
		}
		ds, ok := obj.(*appsv1.DaemonSet)
		if !ok {
			t.Fatalf("vipd manifest daemonset printed a %T", obj)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got, err := pkg.admin.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			t.Fatalf("server-side dry run of the DaemonSet: %v", err)
		}
		if got.Spec.Template.Spec.Containers[0].LivenessProbe == nil {
			t.Error("the DaemonSet lost its liveness probe")
		}
	}
}
