package services

import (
	"context"
	"errors"
	"fmt"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/tools/record"
)

// access is what this agent's identity may do, found out once at start, so
// that a missing permission costs the feature that needs it, said once in
// the log, and never a silent hang: an informer whose list is forbidden
// never syncs, and an Event the API server refuses is retried for ever.
type access struct {
	pool   bool // list and watch the pool ConfigMap
	slices bool // list and watch EndpointSlices
	events bool // create Events
	// Service writes: annotations (vipHost, pool allocations) by patch, or
	// else by update; status by update.
	patch, update, status bool
}

// annotate reports whether Service annotations can be written at all.
func (a access) annotate() bool { return a.patch || a.update }

// probeAccess finds out what the identity may do. Lists are tried for real
// (a forbidden list is exactly what would hang an informer); writes are
// asked about with SelfSubjectAccessReviews, which every authenticated
// identity may create. Listing Services is the one permission vipd cannot
// serve Services without: its absence is an error.
func (c *Controller) probeAccess(ctx context.Context) (access, error) {
	var a access
	core := c.cfg.Client
	if _, err := core.Services(c.cfg.Namespace).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		return a, fmt.Errorf("listing Services%s: %w", c.scope(), err)
	}
	var err error
	if a.slices, err = c.mayList(ctx, "EndpointSlices", func() error {
		_, err := c.cfg.Client.EndpointSlices(c.cfg.Namespace).List(ctx, metav1.ListOptions{Limit: 1})
		return err
	}); err != nil {
		return a, err
	}
	if !a.slices {
		c.log.Warn("this identity may not list EndpointSlices" + c.scope() + ": Services with externalTrafficPolicy Local have no node to hold their address and are not served")
	}
	if c.cfg.PoolConfigMap != "" {
		if a.pool, err = c.mayList(ctx, "ConfigMap "+c.cfg.PoolNamespace+"/"+c.cfg.PoolConfigMap, func() error {
			_, err := core.ConfigMaps(c.cfg.PoolNamespace).List(ctx, metav1.ListOptions{
				FieldSelector: fields.OneTermEqualSelector("metadata.name", c.cfg.PoolConfigMap).String(), Limit: 1})
			return err
		}); err != nil {
			return a, err
		}
		if !a.pool {
			c.log.Warn(fmt.Sprintf("this identity may not read ConfigMap %s/%s: no address pool; Services that ask for no address get none",
				c.cfg.PoolNamespace, c.cfg.PoolConfigMap))
		}
	}
	checks := []struct {
		allowed              *bool
		verb, resource, sub  string
		namespace, withoutIt string
	}{
		// A missing right to create Events is the agent's to report: it
		// records Events of its own too.
		{&a.events, "create", "events", "", "", ""},
		{&a.patch, "patch", "services", "", c.cfg.Namespace, ""},
		{&a.update, "update", "services", "", c.cfg.Namespace, ""},
		{&a.status, "update", "services", "status", c.cfg.Namespace, "Service status is not written: Services stay <pending>"},
	}
	for _, ch := range checks {
		ok, err := c.may(ctx, ch.verb, ch.resource, ch.sub, ch.namespace)
		if err != nil {
			return a, err
		}
		*ch.allowed = ok
		if !ok && ch.withoutIt != "" {
			res := ch.resource
			if ch.sub != "" {
				res += "/" + ch.sub
			}
			c.log.Warn(fmt.Sprintf("this identity may not %s %s: %s", ch.verb, res, ch.withoutIt))
		}
	}
	switch {
	case !a.annotate():
		c.log.Warn("this identity may neither patch nor update Services: no " + AnnotationVIPHost + " annotation and no pool allocations")
	case !a.patch:
		c.log.Info("this identity may update but not patch Services: annotations are written by update")
	}
	return a, nil
}

// mayList runs list and reports false if it was forbidden.
func (c *Controller) mayList(ctx context.Context, what string, list func() error) (bool, error) {
	err := list()
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsForbidden(err):
		return false, nil
	}
	return false, fmt.Errorf("listing %s: %w", what, err)
}

// may asks the API server whether this identity may do verb on resource.
func (c *Controller) may(ctx context.Context, verb, resource, sub, namespace string) (bool, error) {
	r, err := c.cfg.Client.SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Verb: verb, Resource: resource, Subresource: sub,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("asking the API server whether this identity may %s %s: %w", verb, resource, err)
	}
	return r.Status.Allowed, nil
}

// scope says which namespace the Services come from, for messages.
func (c *Controller) scope() string {
	if c.cfg.Namespace == "" {
		return " in all namespaces"
	}
	return " in namespace " + c.cfg.Namespace
}

// errNoServices marks a probe that found the identity may not list
// Services: nothing to serve, which is no reason to wait.
var errNoServices = errors.New("may not list Services")

// waitAccess probes until the API server answers: at start it may not be
// up yet (a static pod at kubeadm init). It returns errNoServices (wrapped)
// if Services may not be listed, and ctx's error if ctx ends first.
func (c *Controller) waitAccess(ctx context.Context) (access, error) {
	delay := 250 * time.Millisecond
	for attempt := 0; ; attempt++ {
		a, err := c.probeAccess(ctx)
		if err == nil {
			return a, nil
		}
		if apierrors.IsForbidden(err) {
			return a, fmt.Errorf("%w: %w", errNoServices, err)
		}
		if attempt == 0 {
			c.log.Warn("cannot reach the API server to start serving Services; retrying", "err", err)
		} else {
			c.log.Debug("still cannot reach the API server to start serving Services", "err", err)
		}
		select {
		case <-ctx.Done():
			return a, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// serveNothing is what the controller does when it may not list Services:
// it says so once, reports an empty set of addresses (so the agent goes on
// with the control-plane VIP) and waits for the end.
func (c *Controller) serveNothing(ctx context.Context, err error) error {
	c.log.Error("Services are not served: this identity may not list them; grant list and watch on services", "err", err)
	c.mu.Lock()
	c.recorder = &record.FakeRecorder{}
	c.planned = true
	c.mu.Unlock()
	select {
	case c.changes <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return nil
}
