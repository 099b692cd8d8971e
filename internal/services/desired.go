package services

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Selection is what decides an agent's addresses besides the Services
// themselves: which Services it serves and its address pool.
type Selection struct {
	// Namespace restricts the Services served ("" = all).
	Namespace string
	// Class and OnlyOwnClass are as in Config.
	Class        string
	OnlyOwnClass bool
	// PoolName is the pool ConfigMap's namespace/name ("" for none), and
	// Pool its data (nil if it does not exist).
	PoolName string
	Pool     map[string]string
}

// Problem is why a Service lacks an address, as its Warning Event says.
type Problem struct {
	Reason, Message string
}

// Desired computes from a snapshot of the cluster what every agent
// computes: the service addresses, and the problems of each Service. It is
// for readers such as `vipd status`; agents get the same from Controller.
func Desired(svcs []*corev1.Service, eps []*discoveryv1.EndpointSlice, sel Selection) ([]Address, map[types.NamespacedName][]Problem) {
	p := computePlan(svcs, eps, pool{name: sel.PoolName, data: sel.Pool},
		filter{namespace: sel.Namespace, class: sel.Class, onlyOwnClass: sel.OnlyOwnClass})
	problems := map[types.NamespacedName][]Problem{}
	for nn, sp := range p.services {
		for _, w := range sp.warnings {
			problems[nn] = append(problems[nn], Problem{Reason: w.reason, Message: w.message})
		}
	}
	return p.addresses, problems
}
