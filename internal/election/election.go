// Package election decides, through coordination.k8s.io/v1 Leases on the
// Kubernetes API, which agent holds a VIP.
//
// The agent sees only contests and their Status: which node holds each, and
// whether it is this one. How that is decided (node Leases, claims,
// placement, fencing) stays behind the Elector.
package election

import (
	"strconv"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// Status is what this agent has observed of one contest at one moment.
type Status struct {
	// Leader is the node whose claim is valid; empty when the claim is
	// missing, released, or names a node that is no longer live.
	Leader string
	// Leading is true while this agent holds the claim and is live (its
	// node Lease renewed within the renew deadline). It turns false the
	// moment either stops being true, before any other agent may take over.
	Leading bool
}

func holder(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// newer reports whether resourceVersion a is newer than b. The API server
// hands out etcd revisions, which are integers; if either is not, a is
// trusted as the newer one.
func newer(a, b string) bool {
	ai, errA := strconv.ParseUint(a, 10, 64)
	bi, errB := strconv.ParseUint(b, 10, 64)
	if errA != nil || errB != nil {
		return a != b
	}
	return ai > bi
}
