package services

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

// syncStatus makes one Service's status and vipHost annotation say what
// this node holds. A holder writes its addresses; a node that holds nothing
// only cleans up after itself, and only entries for addresses the Service
// no longer has, so that it never fights the new holder.
func (c *Controller) syncStatus(ctx context.Context, nn types.NamespacedName) error {
	svc, err := c.services.Services(nn.Namespace).Get(nn.Name)
	if apierrors.IsNotFound(err) {
		c.mu.Lock()
		delete(c.assigned, nn)
		c.mu.Unlock()
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading Service %s from the cache: %w", nn, err)
	}
	c.mu.Lock()
	sp := c.plan.services[nn]
	held := map[netip.Addr]bool{}
	if sp != nil {
		for _, a := range sp.addrs {
			if c.held[a] {
				held[a] = true
			}
		}
	}
	c.mu.Unlock()
	// A Service vipd does not serve is left alone; one whose addresses
	// changed since the plan waits for the next plan, which requeues it.
	if sp == nil || sp.source != sourceOf(svc) {
		return nil
	}
	if len(held) == 0 {
		c.mu.Lock()
		delete(c.assigned, nn)
		c.mu.Unlock()
		return c.release(ctx, svc, sp)
	}
	return c.claim(ctx, svc, sp, held)
}

// claim writes this node as the holder of held.
//
// vipHost goes with the status, in one request: the API server keeps the
// metadata of a Service written through services/status (as it does for
// Pods and Namespaces), and a take is a write fewer for an API server that
// a re-home or a thousand new Services keep busy. Should an API server
// drop it, or refuse the write for it, vipHost is patched on its own from
// then on.
func (c *Controller) claim(ctx context.Context, svc *corev1.Service, sp *servicePlan, held map[netip.Addr]bool) error {
	node := c.cfg.NodeName
	names := func(cur *corev1.Service) bool {
		return c.access.annotate() && claimsHost(cur.Annotations[AnnotationVIPHost], node, sp.addrs, held)
	}
	byStatus := c.hostByStatus.Load()
	if !byStatus && names(svc) {
		patched, err := c.setHost(ctx, svc)
		if err != nil || patched == nil {
			return err
		}
		svc = patched
	}
	sentHost := false // the last write attempted carried vipHost
	written, err := c.updateIngress(ctx, svc, func(cur *corev1.Service) ([]corev1.LoadBalancerIngress, string, bool) {
		if cur.UID != sp.uid || sourceOf(cur) != sp.source {
			return nil, "", false
		}
		host := ""
		if byStatus && names(cur) {
			host = node
		}
		sentHost = host != ""
		return desiredIngress(cur.Status.LoadBalancer.Ingress, sp.addrs, held), host, true
	})
	if sentHost && (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) {
		// An admission policy may refuse metadata in status writes. The
		// retry writes vipHost on its own.
		if c.hostByStatus.CompareAndSwap(true, false) {
			c.log.Warn("the API server refused a Service status written with "+AnnotationVIPHost+
				"; it is patched on its own from now on", "err", err)
		}
	}
	if err != nil {
		return err
	}
	if written != nil && byStatus && names(written) {
		// Written, and still not naming this node: the API server dropped
		// the annotation.
		if c.hostByStatus.CompareAndSwap(true, false) {
			c.log.Info("the API server drops annotations written with a Service's status; " +
				AnnotationVIPHost + " is patched on its own from now on")
		}
		if _, err := c.setHost(ctx, written); err != nil {
			return err
		}
	}

	// Report each address this node newly holds once, not on every sync.
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := c.assigned[nn]
	for _, a := range sp.addrs {
		if !held[a] || seen[a] {
			continue
		}
		// The agent logged the takeover; a restart that finds the address
		// held already is no takeover.
		if h, ok := c.heldInfoLocked(a); ok && h.Previous != node {
			c.recorder.Eventf(svc, corev1.EventTypeNormal, reasonAssigned, "%s held by node %s (%s)", a, node,
				TakeoverNote(h.Previous, h.Reason))
		}
	}
	c.assigned[nn] = held
	return nil
}

// release removes what this node wrote and no longer stands for: ingress
// entries of addresses the Service no longer has, and, once none is left,
// the vipHost annotation. Entries of addresses the Service still has are
// left for their holder to overwrite.
func (c *Controller) release(ctx context.Context, svc *corev1.Service, sp *servicePlan) error {
	node := c.cfg.NodeName
	if svc.Annotations[AnnotationVIPHost] != node || !c.access.annotate() {
		return nil
	}
	_, err := c.updateIngress(ctx, svc, func(cur *corev1.Service) ([]corev1.LoadBalancerIngress, string, bool) {
		if cur.UID != sp.uid || sourceOf(cur) != sp.source || cur.Annotations[AnnotationVIPHost] != node {
			return nil, "", false
		}
		return desiredIngress(cur.Status.LoadBalancer.Ingress, sp.addrs, nil), "", true
	})
	if err != nil || len(sp.addrs) > 0 {
		return err
	}
	if !c.access.patch {
		return c.releaseByUpdate(ctx, svc)
	}
	// The test makes the removal conditional: if another node has taken
	// over meanwhile, its annotation stays.
	patch, err := json.Marshal([]map[string]string{
		{"op": "test", "path": "/metadata/annotations/" + jsonPointerEscape(AnnotationVIPHost), "value": node},
		{"op": "remove", "path": "/metadata/annotations/" + jsonPointerEscape(AnnotationVIPHost)},
	})
	if err != nil {
		return fmt.Errorf("encoding %s patch: %w", AnnotationVIPHost, err)
	}
	services := c.cfg.Client.Services(svc.Namespace)
	_, err = services.Patch(ctx, svc.Name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if err == nil || apierrors.IsNotFound(err) {
		return nil
	}
	// A failed test is an error too; only retry if it was not that.
	fresh, getErr := services.Get(ctx, svc.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(getErr) || (getErr == nil && fresh.Annotations[AnnotationVIPHost] != node) {
		return nil
	}
	return fmt.Errorf("removing %s from Service %s/%s: %w", AnnotationVIPHost, svc.Namespace, svc.Name, err)
}

// updateIngress writes the ingress want computes from the Service, and the
// vipHost it names (if any: "" leaves it), if either differs, re-reading
// the Service from the API on conflict. want returns false to leave the
// Service alone. It returns the Service as written, nil if nothing was.
func (c *Controller) updateIngress(ctx context.Context, svc *corev1.Service,
	want func(*corev1.Service) (ingress []corev1.LoadBalancerIngress, host string, ok bool)) (*corev1.Service, error) {
	if !c.access.status {
		return nil, nil // said once at start
	}
	services := c.cfg.Client.Services(svc.Namespace)
	cur := svc
	var written *corev1.Service
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		desired, host, ok := want(cur)
		setHost := host != "" && cur.Annotations[AnnotationVIPHost] != host
		if !ok || (ingressEqual(cur.Status.LoadBalancer.Ingress, desired) && !setHost) {
			return nil
		}
		upd := cur.DeepCopy()
		upd.Status.LoadBalancer.Ingress = desired
		if setHost {
			if upd.Annotations == nil {
				upd.Annotations = map[string]string{}
			}
			upd.Annotations[AnnotationVIPHost] = host
		}
		out, err := services.UpdateStatus(ctx, upd, metav1.UpdateOptions{FieldManager: fieldManager})
		if apierrors.IsConflict(err) {
			fresh, getErr := services.Get(ctx, svc.Name, metav1.GetOptions{})
			if getErr != nil {
				return getErr
			}
			cur = fresh
		}
		if err == nil {
			written = out
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("updating status of Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return written, nil
}

// setHost names this node in svc's vipHost annotation by a write of its
// own. It returns the Service as written, nil if it is gone.
func (c *Controller) setHost(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	node := c.cfg.NodeName
	patched, err := c.setAnnotations(ctx, svc, map[string]*string{AnnotationVIPHost: &node}, "")
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("setting %s=%s on Service %s/%s: %w", AnnotationVIPHost, node, svc.Namespace, svc.Name, err)
	}
	return patched, nil
}

// claimsHost reports whether a node holding held should name itself in
// vipHost. vipHost names the holder of the primary (first) address; the
// holder of another address only fills it in when it is empty, so holders
// of the two families of a dual-stack Service don't take turns.
func claimsHost(current, node string, addrs []netip.Addr, held map[netip.Addr]bool) bool {
	if current == node || len(addrs) == 0 {
		return false
	}
	return held[addrs[0]] || current == ""
}

// desiredIngress is the ingress a node holding held writes: an entry with
// ipMode VIP for each held address; for the Service's other addresses, the
// entries their holders wrote; nothing for addresses the Service does not
// have. In the order of addrs.
func desiredIngress(cur []corev1.LoadBalancerIngress, addrs []netip.Addr, held map[netip.Addr]bool) []corev1.LoadBalancerIngress {
	existing := map[netip.Addr]corev1.LoadBalancerIngress{}
	for _, in := range cur {
		if a, err := netip.ParseAddr(in.IP); err == nil {
			if _, dup := existing[a]; !dup {
				existing[a] = in
			}
		}
	}
	var out []corev1.LoadBalancerIngress
	for _, a := range addrs {
		if held[a] {
			mode := corev1.LoadBalancerIPModeVIP
			out = append(out, corev1.LoadBalancerIngress{IP: a.String(), IPMode: &mode})
		} else if in, ok := existing[a]; ok {
			out = append(out, in)
		}
	}
	return out
}

func ingressEqual(a, b []corev1.LoadBalancerIngress) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

// jsonPointerEscape escapes a map key for a JSON Patch path (RFC 6901).
func jsonPointerEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// releaseByUpdate removes this node's vipHost annotation with an update
// conditional on the version read, for identities that may not patch.
func (c *Controller) releaseByUpdate(ctx context.Context, svc *corev1.Service) error {
	fresh, err := c.cfg.Client.Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && fresh.Annotations[AnnotationVIPHost] != c.cfg.NodeName) {
		return nil
	}
	if err == nil {
		_, err = c.setAnnotations(ctx, fresh, map[string]*string{AnnotationVIPHost: nil}, fresh.ResourceVersion)
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing %s from Service %s/%s: %w", AnnotationVIPHost, svc.Namespace, svc.Name, err)
	}
	return nil
}
