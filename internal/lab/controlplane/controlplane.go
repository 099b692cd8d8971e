// Package controlplane runs a throwaway Kubernetes control plane (etcd and
// kube-apiserver, through controller-runtime's envtest) for the lab tests.
//
// The API server listens on host loopback only; the lab reaches it from its
// network namespaces through a proxy, which is also where outages are
// simulated, so this package only starts, describes and stops it.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// AssetsEnv names the environment variable that overrides the assets folder.
const AssetsEnv = "VIPD_KUBE_ASSETS"

// TLSServerName is a name the envtest serving certificate carries (it is
// issued for "localhost" and its addresses), so clients that reach the API
// server through another address verify it under this name.
const TLSServerName = "localhost"

// AgentUser is the user that Kubeconfig authenticates as.
const AgentUser = "vipd-agent"

// ErrAssetsMissing is returned (wrapped) by Start when the etcd or
// kube-apiserver binary is not in the assets folder.
var ErrAssetsMissing = errors.New("control plane binaries missing")

// defaultStartTimeout bounds the start when ctx has no deadline. etcd and
// kube-apiserver come up in ~5 s on the project's 2-core machines.
const defaultStartTimeout = 60 * time.Second

// Options configures Start. The zero value is ready to use.
type Options struct {
	// AssetsDir holds the etcd and kube-apiserver binaries. Empty means
	// $VIPD_KUBE_ASSETS, or else $HOME/.cache/vipd/kube-assets.
	AssetsDir string
	// Logger receives start/stop logs; nil means slog.Default().
	Logger *slog.Logger
}

// ControlPlane is a running etcd + kube-apiserver pair.
type ControlPlane struct {
	env   *envtest.Environment
	admin *rest.Config
	agent *rest.Config
	log   *slog.Logger

	stopOnce sync.Once
	stopErr  error
}

// DefaultAssetsDir is where hack/kube-assets.sh puts the binaries unless
// VIPD_KUBE_ASSETS says otherwise.
func DefaultAssetsDir() (string, error) {
	if dir := os.Getenv(AssetsEnv); dir != "" {
		return dir, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the default kube assets folder: %w", err)
	}
	return filepath.Join(home, ".cache", "vipd", "kube-assets"), nil
}

// Start runs etcd and kube-apiserver on free loopback ports and waits until
// the API server serves. ctx bounds the start only; the control plane runs
// until Stop.
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	dir := opts.AssetsDir
	if dir == "" {
		var err error
		if dir, err = DefaultAssetsDir(); err != nil {
			return nil, err
		}
	}
	apiserverPath, etcdPath, err := findAssets(dir)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("starting control plane: %w", err)
	}

	// envtest takes no context; a start timeout from ctx's deadline is how
	// the caller's bound reaches it.
	timeout := defaultStartTimeout
	if deadline, ok := ctx.Deadline(); ok {
		timeout = time.Until(deadline)
	}

	env := &envtest.Environment{
		BinaryAssetsDirectory:    dir,
		ControlPlaneStartTimeout: timeout,
		ControlPlaneStopTimeout:  20 * time.Second,
		ControlPlane: envtest.ControlPlane{
			// Explicit paths so TEST_ASSET_* / KUBEBUILDER_ASSETS in the
			// environment can't swap in other binaries than the checked ones.
			APIServer: &envtest.APIServer{Path: apiserverPath},
			Etcd:      &envtest.Etcd{Path: etcdPath},
		},
	}
	began := time.Now()
	admin, err := env.Start()
	if err != nil {
		// A half-started plane may hold processes and temp dirs.
		_ = env.Stop()
		return nil, fmt.Errorf("starting control plane from %s: %w", dir, err)
	}
	c := &ControlPlane{env: env, admin: admin, log: logger}

	agent, err := env.AddUser(envtest.User{Name: AgentUser, Groups: []string{"system:masters"}}, &rest.Config{})
	if err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("adding user %s to control plane: %w", AgentUser, err)
	}
	c.agent = agent.Config()

	if err := ctx.Err(); err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("starting control plane: %w", err)
	}
	logger.Info("control plane started", "addr", c.Addr(), "took", time.Since(began).Round(time.Millisecond))
	return c, nil
}

// findAssets checks the binaries are there and executable, so a missing
// setup step reads as such rather than as an obscure exec error.
func findAssets(dir string) (apiserver, etcd string, err error) {
	var missing []string
	for _, name := range []string{"kube-apiserver", "etcd"} {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return "", "", fmt.Errorf("%w: %v not found in %s; run hack/kube-assets.sh (make kube-assets) to build/install them, or set %s",
			ErrAssetsMissing, missing, dir, AssetsEnv)
	}
	return filepath.Join(dir, "kube-apiserver"), filepath.Join(dir, "etcd"), nil
}

// Addr is host:port of the API server's secure port on host loopback.
func (c *ControlPlane) Addr() string {
	return c.env.ControlPlane.APIServer.SecureServing.ListenAddr.HostPort()
}

// Config is an admin (system:masters) client config for the test process.
// Each call returns a fresh copy the caller may change.
func (c *ControlPlane) Config() *rest.Config {
	return rest.CopyConfig(c.admin)
}

// Kubeconfig renders a kubeconfig for an agent with full rights whose
// cluster is reached at server (e.g. "https://198.51.100.2:6443", a proxy in
// front of Addr). The serving certificate is checked against TLSServerName,
// since it is not issued for the proxy's address.
func (c *ControlPlane) Kubeconfig(server string) ([]byte, error) {
	return kubeconfig(server, AgentUser, c.agent)
}

// kubeconfig renders a kubeconfig for user, whose credentials rc holds.
func kubeconfig(server, user string, rc *rest.Config) ([]byte, error) {
	const name = "vipd-lab"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{
		Server:                   server,
		TLSServerName:            TLSServerName,
		CertificateAuthorityData: rc.CAData,
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: rc.CertData,
		ClientKeyData:         rc.KeyData,
	}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user}
	cfg.CurrentContext = name
	out, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("writing kubeconfig for %s: %w", server, err)
	}
	return out, nil
}

// Stop terminates kube-apiserver and etcd and removes their data. Calling it
// again returns the first result.
func (c *ControlPlane) Stop() error {
	c.stopOnce.Do(func() {
		if err := c.env.Stop(); err != nil {
			c.stopErr = fmt.Errorf("stopping control plane: %w", err)
			return
		}
		c.log.Info("control plane stopped")
	})
	return c.stopErr
}
