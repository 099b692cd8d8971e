package services

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// setAnnotations writes annotations on a Service (a nil value removes the
// key) and returns the Service as written. With rv set the write only lands
// on that version of the Service (a conflict otherwise).
//
// A merge patch touches nothing but the named keys, so it is used when the
// identity may patch Services; the least-privilege RBAC grants patch and
// not update. Under kube-vip's RBAC, which grants update and not patch, the
// Service is updated whole from svc, conditional on its version.
func (c *Controller) setAnnotations(ctx context.Context, svc *corev1.Service, set map[string]*string, rv string) (*corev1.Service, error) {
	services := c.cfg.Client.Services(svc.Namespace)
	if c.access.patch {
		meta := map[string]any{"annotations": set}
		if rv != "" {
			meta["resourceVersion"] = rv
		}
		patch, err := json.Marshal(map[string]any{"metadata": meta})
		if err != nil {
			return nil, fmt.Errorf("encoding annotations patch: %w", err)
		}
		return services.Patch(ctx, svc.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	}
	upd := svc.DeepCopy()
	if rv != "" {
		upd.ResourceVersion = rv
	}
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	for k, v := range set {
		if v == nil {
			delete(upd.Annotations, k)
		} else {
			upd.Annotations[k] = *v
		}
	}
	return services.Update(ctx, upd, metav1.UpdateOptions{FieldManager: fieldManager})
}
