// Package kube is vipd's client for the Kubernetes API: typed clients for
// the few kinds vipd reads and writes, and informers for them.
//
// client-go's clientset is not used: it, its typed clients and its
// informer factory import a scheme that registers every API group, and an
// agent that links them carries the code and type data of all of them:
// about 8 MB of its resident memory (docs/scale-runs.md). The clients here
// are client-go's own generic ones (gentype) over a scheme of the four
// groups vipd uses.
package kube

import (
	"context"
	"fmt"

	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
)

// Resource is a client for one kind, in one namespace or cluster-wide.
// client-go's typed clients satisfy it too (kubetest).
type Resource[T runtime.Object, L runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

// StatusResource is a Resource with a status subresource.
type StatusResource[T runtime.Object, L runtime.Object] interface {
	Resource[T, L]
	UpdateStatus(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// Creator is a client for a kind that is only ever created (a review).
type Creator[T runtime.Object] interface {
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
}

// Interface is what vipd asks of the API server.
type Interface interface {
	Leases(namespace string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
	Services(namespace string) StatusResource[*corev1.Service, *corev1.ServiceList]
	EndpointSlices(namespace string) Resource[*discoveryv1.EndpointSlice, *discoveryv1.EndpointSliceList]
	Nodes() Resource[*corev1.Node, *corev1.NodeList]
	Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList]
	ConfigMaps(namespace string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList]
	Secrets(namespace string) Resource[*corev1.Secret, *corev1.SecretList]
	Events(namespace string) Resource[*corev1.Event, *corev1.EventList]
	SelfSubjectAccessReviews() Creator[*authorizationv1.SelfSubjectAccessReview]
}

// NewScheme returns a scheme of the kinds vipd uses: core, coordination,
// discovery and authorization v1, and the options every request carries.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, coordinationv1.AddToScheme,
		discoveryv1.AddToScheme, authorizationv1.AddToScheme} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	return s, nil
}

// Client implements Interface over REST.
type Client struct {
	core, coordination, discovery, authorization rest.Interface
	params                                       runtime.ParameterCodec
}

// NewForConfig makes a Client; its groups share one HTTP client.
func NewForConfig(rc *rest.Config) (*Client, error) {
	s, err := NewScheme()
	if err != nil {
		return nil, fmt.Errorf("building the API scheme: %w", err)
	}
	codecs := serializer.NewCodecFactory(s)
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, fmt.Errorf("building the HTTP client: %w", err)
	}
	group := func(gv schema.GroupVersion, path string) (rest.Interface, error) {
		c := rest.CopyConfig(rc)
		c.GroupVersion, c.APIPath = &gv, path
		c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(s, codecs).WithoutConversion()
		if c.UserAgent == "" {
			c.UserAgent = rest.DefaultKubernetesUserAgent()
		}
		rc, err := rest.RESTClientForConfigAndClient(c, hc)
		if err != nil {
			return nil, fmt.Errorf("building the client of %s: %w", gv, err)
		}
		return rc, nil
	}
	c := &Client{params: runtime.NewParameterCodec(s)}
	for _, g := range []struct {
		into *rest.Interface
		gv   schema.GroupVersion
		path string
	}{
		{&c.core, corev1.SchemeGroupVersion, "/api"},
		{&c.coordination, coordinationv1.SchemeGroupVersion, "/apis"},
		{&c.discovery, discoveryv1.SchemeGroupVersion, "/apis"},
		{&c.authorization, authorizationv1.SchemeGroupVersion, "/apis"},
	} {
		if *g.into, err = group(g.gv, g.path); err != nil {
			return nil, err
		}
	}
	return c, nil
}

type object interface {
	runtime.Object
	metav1.Object
}

func resource[T object, L runtime.Object](c *Client, rc rest.Interface, name, namespace string, newObj func() T, newList func() L) *gentype.ClientWithList[T, L] {
	return gentype.NewClientWithList[T, L](name, rc, c.params, namespace, newObj, newList, gentype.PrefersProtobuf[T]())
}

func (c *Client) Leases(ns string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return resource(c, c.coordination, "leases", ns,
		func() *coordinationv1.Lease { return &coordinationv1.Lease{} }, func() *coordinationv1.LeaseList { return &coordinationv1.LeaseList{} })
}

func (c *Client) Services(ns string) StatusResource[*corev1.Service, *corev1.ServiceList] {
	return resource(c, c.core, "services", ns,
		func() *corev1.Service { return &corev1.Service{} }, func() *corev1.ServiceList { return &corev1.ServiceList{} })
}

func (c *Client) EndpointSlices(ns string) Resource[*discoveryv1.EndpointSlice, *discoveryv1.EndpointSliceList] {
	return resource(c, c.discovery, "endpointslices", ns,
		func() *discoveryv1.EndpointSlice { return &discoveryv1.EndpointSlice{} }, func() *discoveryv1.EndpointSliceList { return &discoveryv1.EndpointSliceList{} })
}

func (c *Client) Nodes() Resource[*corev1.Node, *corev1.NodeList] {
	return resource(c, c.core, "nodes", "",
		func() *corev1.Node { return &corev1.Node{} }, func() *corev1.NodeList { return &corev1.NodeList{} })
}

func (c *Client) Namespaces() Resource[*corev1.Namespace, *corev1.NamespaceList] {
	return resource(c, c.core, "namespaces", "",
		func() *corev1.Namespace { return &corev1.Namespace{} }, func() *corev1.NamespaceList { return &corev1.NamespaceList{} })
}

func (c *Client) ConfigMaps(ns string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return resource(c, c.core, "configmaps", ns,
		func() *corev1.ConfigMap { return &corev1.ConfigMap{} }, func() *corev1.ConfigMapList { return &corev1.ConfigMapList{} })
}

func (c *Client) Secrets(ns string) Resource[*corev1.Secret, *corev1.SecretList] {
	return resource(c, c.core, "secrets", ns,
		func() *corev1.Secret { return &corev1.Secret{} }, func() *corev1.SecretList { return &corev1.SecretList{} })
}

func (c *Client) Events(ns string) Resource[*corev1.Event, *corev1.EventList] {
	return resource(c, c.core, "events", ns,
		func() *corev1.Event { return &corev1.Event{} }, func() *corev1.EventList { return &corev1.EventList{} })
}

func (c *Client) SelfSubjectAccessReviews() Creator[*authorizationv1.SelfSubjectAccessReview] {
	return gentype.NewClient[*authorizationv1.SelfSubjectAccessReview]("selfsubjectaccessreviews", c.authorization, c.params, "",
		func() *authorizationv1.SelfSubjectAccessReview { return &authorizationv1.SelfSubjectAccessReview{} },
		gentype.PrefersProtobuf[*authorizationv1.SelfSubjectAccessReview]())
}
