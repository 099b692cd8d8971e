package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/address"
	"github.com/vipd/vipd/internal/backoff"
	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/hbkey"
	"github.com/vipd/vipd/internal/heartbeat"
	"github.com/vipd/vipd/internal/kube"
)

// clusterNamespace is the namespace whose UID identifies the cluster in
// heartbeats: every cluster has it, and every agent reads the same UID.
const clusterNamespace = "kube-system"

// newHeartbeat binds the failure detector to the node's own address on the
// VIP interface: heartbeats travel the same network as the VIPs. It sends
// and accepts nothing until runFastPath gives it the cluster identity and a
// key.
func newHeartbeat(cfg config.Config, iface *address.Interface, m *metrics, log *slog.Logger) (*heartbeat.Monitor, error) {
	ip, err := iface.NodeAddr()
	if err != nil {
		return nil, fmt.Errorf("heartbeats need the node's address on %s (set --heartbeat-port=0 to turn them off): %w", iface.Name, err)
	}
	hb, err := heartbeat.New(heartbeat.Config{
		Node:   cfg.NodeName,
		Listen: netip.AddrPortFrom(ip, uint16(cfg.HeartbeatPort)),
		// The election says what this agent is before it says anything.
		WaitForState: true,
		Log:          log,
		Registerer:   m.reg,
	})
	if err != nil {
		return nil, fmt.Errorf("heartbeat-port %d: %w", cfg.HeartbeatPort, err)
	}
	return hb, nil
}

// runFastPath gives the failure detector what it needs to run: the cluster
// identity (the UID of kube-system), then the key, and keeps the key
// current. Until both are there, failover waits for Lease expiry; the log
// says why.
func runFastPath(ctx context.Context, cfg config.Config, client kube.Interface, hb *heartbeat.Monitor, log *slog.Logger) error {
	id, err := clusterID(ctx, client, log)
	if err != nil {
		return nil // ctx ended
	}
	if err := hb.SetCluster(id + "/" + cfg.AgentNamespace); err != nil {
		return err
	}
	apply := func(u hbkey.Update) {
		if u.Err != nil {
			if errors.Is(u.Err, hbkey.ErrNoKey) {
				log.Warn("no heartbeat key: heartbeats are off and failover waits for Lease expiry until the key appears", "reason", u.Err)
			} else {
				log.Error("heartbeat key unusable: heartbeats are off and failover waits for Lease expiry until it is fixed", "err", u.Err)
			}
			_ = hb.SetKeys(nil)
			return
		}
		if err := hb.SetKeys(u.Keys); err != nil {
			log.Error("heartbeat key unusable", "err", err)
		}
	}
	switch {
	case cfg.HeartbeatInsecure:
		log.Warn("heartbeats are NOT authenticated (--heartbeat-insecure): any host that can reach UDP port " +
			fmt.Sprint(cfg.HeartbeatPort) + " can make this agent keep a dead holder or drop a live one")
		k := heartbeat.InsecureKeys()
		apply(hbkey.Update{Keys: &k})
		<-ctx.Done()
		return nil
	case cfg.HeartbeatKeyFile != "":
		log.Info("heartbeat key from a file", "path", cfg.HeartbeatKeyFile)
		hbkey.WatchFile(ctx, cfg.HeartbeatKeyFile, apply)
		return nil
	default:
		log.Info("heartbeat key from a Secret", "secret", cfg.AgentNamespace+"/"+cfg.HeartbeatSecret)
		return hbkey.WatchSecret(ctx, client, cfg.AgentNamespace, cfg.HeartbeatSecret, log, apply)
	}
}

// clusterID reads the UID of kube-system, retrying until it succeeds or
// ctx ends.
func clusterID(ctx context.Context, client kube.Interface, log *slog.Logger) (string, error) {
	retry := backoff.Policy{Base: time.Second, Max: time.Minute}
	for failures := 1; ; failures++ {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ns, err := client.Namespaces().Get(rctx, clusterNamespace, metav1.GetOptions{})
		cancel()
		if err == nil {
			return string(ns.UID), nil
		}
		d := retry.Delay(failures)
		if failures == 1 || failures%10 == 0 {
			log.Warn("cannot read the cluster identity (the UID of namespace "+clusterNamespace+
				"); heartbeats are off and failover waits for Lease expiry until it can", "err", err, "retry_in", d.Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(d):
		}
	}
}
