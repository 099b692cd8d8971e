package agent

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"slices"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/transport"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/kube"
)

// bypassVIP points a client whose server is the control-plane VIP at the
// API server on this node instead. The VIP cannot carry the traffic that
// elects its holder: at cluster bootstrap, or when every control-plane node
// restarts, nobody holds it yet (kubeadm's admin.conf names it). The
// certificate is still verified for the VIP's address. A node whose own API
// server is down then cannot renew, and leaves the VIP to a node whose API
// server works.
func bypassVIP(rc *rest.Config, vips []netip.Addr, log *slog.Logger) error {
	u, err := url.Parse(rc.Host)
	if err != nil {
		return fmt.Errorf("server %q: %w", rc.Host, err)
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil || !slices.Contains(vips, ip.Unmap()) {
		return nil
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	if rc.TLSClientConfig.ServerName == "" {
		rc.TLSClientConfig.ServerName = u.Hostname()
	}
	local := "127.0.0.1"
	if ip.Is6() {
		local = "::1"
	}
	u.Host = net.JoinHostPort(local, port)
	log.Info("the kubeconfig's server is the control-plane VIP; using this node's API server instead",
		"vip", ip, "server", u.String(), "tls_server_name", rc.TLSClientConfig.ServerName)
	rc.Host = u.String()
	return nil
}

// newClient builds the API client. Its client-side rate limiter is off: a
// holder must never miss a renewal because its own client queued it.
func newClient(cfg config.Config, log *slog.Logger, wrap transport.WrapperFunc) (kube.Interface, error) {
	var (
		rc  *rest.Config
		err error
	)
	cfg.Kubeconfig = defaultKubeconfig(cfg.Kubeconfig, log)
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("k8s_config_file %q: %w", cfg.Kubeconfig, err)
		}
		if cfg.ControlPlane {
			if err := bypassVIP(rc, cfg.VIPs, log); err != nil {
				return nil, fmt.Errorf("k8s_config_file %q: %w", cfg.Kubeconfig, err)
			}
		}
	} else {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no kubeconfig set (k8s_config_file or KUBECONFIG) and not running in a cluster: %w", err)
		}
	}
	rc.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()
	// Protobuf, not JSON: every agent decodes every Service, EndpointSlice
	// and Lease event, and the API server encodes each once per watcher;
	// protobuf costs both sides several times less CPU and garbage. Every
	// type vipd reads or writes through this client has it.
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	rc.Wrap(wrap)
	rc.UserAgent = "vipd"
	client, err := kube.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("building the Kubernetes client: %w", err)
	}
	return client, nil
}
