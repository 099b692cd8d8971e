// Package kubetest lets tests hand a client-go clientset (a fake one, or
// one with an admin's rights) to code that takes a kube.Interface. Only
// tests import it: it links the whole clientset.
package kubetest

import (
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vipd/vipd/internal/kube"
)

// Wrap adapts cs to kube.Interface.
func Wrap(cs kubernetes.Interface) kube.Interface { return wrapped{cs} }

type wrapped struct{ cs kubernetes.Interface }

func (w wrapped) Leases(ns string) kube.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return w.cs.CoordinationV1().Leases(ns)
}

func (w wrapped) Services(ns string) kube.StatusResource[*corev1.Service, *corev1.ServiceList] {
	return w.cs.CoreV1().Services(ns)
}

func (w wrapped) EndpointSlices(ns string) kube.Resource[*discoveryv1.EndpointSlice, *discoveryv1.EndpointSliceList] {
	return w.cs.DiscoveryV1().EndpointSlices(ns)
}

func (w wrapped) Nodes() kube.Resource[*corev1.Node, *corev1.NodeList] { return w.cs.CoreV1().Nodes() }

func (w wrapped) Namespaces() kube.Resource[*corev1.Namespace, *corev1.NamespaceList] {
	return w.cs.CoreV1().Namespaces()
}

func (w wrapped) ConfigMaps(ns string) kube.Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return w.cs.CoreV1().ConfigMaps(ns)
}

func (w wrapped) Secrets(ns string) kube.Resource[*corev1.Secret, *corev1.SecretList] {
	return w.cs.CoreV1().Secrets(ns)
}

func (w wrapped) Events(ns string) kube.Resource[*corev1.Event, *corev1.EventList] {
	return w.cs.CoreV1().Events(ns)
}

func (w wrapped) SelfSubjectAccessReviews() kube.Creator[*authorizationv1.SelfSubjectAccessReview] {
	return w.cs.AuthorizationV1().SelfSubjectAccessReviews()
}
