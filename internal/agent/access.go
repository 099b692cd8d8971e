package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/kube"
)

// permission is one thing the agent's identity should be allowed to do,
// and what is lost without it.
type permission struct {
	verb, group, resource, namespace, name string
	without                                string
}

// permissions are the agent's Lease and key accesses (Services check their
// own, in the services package).
func permissions(cfg config.Config) []permission {
	leases := func(verb, ns, name, without string) permission {
		return permission{verb: verb, group: "coordination.k8s.io", resource: "leases", namespace: ns, name: name, without: without}
	}
	ps := []permission{
		leases("list", cfg.AgentNamespace, "", "the agent cannot see the other agents and elects nothing"),
		leases("watch", cfg.AgentNamespace, "", "the agent cannot see the other agents and elects nothing"),
		leases("create", cfg.AgentNamespace, "", "the agent cannot write its node Lease and never holds a VIP"),
		leases("update", cfg.AgentNamespace, "", "the agent cannot renew its node Lease and never holds a VIP"),
		leases("delete", cfg.AgentNamespace, "", "claims of Services that are gone stay behind"),
	}
	if cfg.ControlPlane {
		ps = append(ps,
			leases("watch", cfg.Namespace, cfg.LeaseName, "the agent cannot see who holds the control-plane VIP"),
			leases("update", cfg.Namespace, cfg.LeaseName, "the agent cannot take the control-plane VIP"))
	}
	if cfg.Services && !cfg.ServiceElection {
		ps = append(ps,
			leases("watch", cfg.Namespace, cfg.ServiceLeaseName, "the agent cannot see who holds the Service VIPs"),
			leases("update", cfg.Namespace, cfg.ServiceLeaseName, "the agent cannot take the Service VIPs"))
	}
	ps = append(ps, permission{verb: "create", resource: "events",
		without: "no Events are recorded (on Services, on the control-plane Lease)"})
	if cfg.NodeSelector != "" || (cfg.Services && cfg.ServiceExcludeControlPlane) {
		for _, verb := range []string{"list", "watch"} {
			ps = append(ps, permission{verb: verb, resource: "nodes",
				without: "node labels cannot be read: the VIPs a node selector applies to are not placed"})
		}
	}
	if cfg.HeartbeatKeyFile == "" && !cfg.HeartbeatInsecure && cfg.HeartbeatPort != 0 {
		ps = append(ps, permission{verb: "get", resource: "secrets", namespace: cfg.AgentNamespace, name: cfg.HeartbeatSecret,
			without: "no heartbeat key: heartbeats stay off and failures are detected by Lease expiry"})
	}
	return ps
}

// reportAccess asks the API server, once it answers, whether this identity
// has each permission the agent uses, and logs one line for each it lacks:
// a missing permission must read as such, not as an agent that does
// nothing. It gives up quietly when ctx ends.
func reportAccess(ctx context.Context, client kube.Interface, cfg config.Config, log *slog.Logger) {
	for _, p := range permissions(cfg) {
		allowed, err := mayRetry(ctx, client, p)
		if err != nil {
			return // ctx ended
		}
		if !allowed {
			what := p.resource
			if p.name != "" {
				what += " " + p.name
			}
			where := " in namespace " + p.namespace
			if p.namespace == "" {
				where = ""
			}
			log.Warn(fmt.Sprintf("this identity may not %s %s%s: %s", p.verb, what, where, p.without))
		}
	}
}

// mayRetry asks with a SelfSubjectAccessReview, retrying until the API
// server answers or ctx ends.
func mayRetry(ctx context.Context, client kube.Interface, p permission) (bool, error) {
	review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: p.verb, Group: p.group, Resource: p.resource, Namespace: p.namespace, Name: p.name,
		}}}
	delay := 250 * time.Millisecond
	for {
		r, err := client.SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err == nil {
			return r.Status.Allowed, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}
