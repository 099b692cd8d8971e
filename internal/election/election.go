// Package election decides, through coordination.k8s.io/v1 Leases on the
// Kubernetes API, which agent holds a VIP.
//
// The rest of the agent sees an election only through the Election
// interface: a Status snapshot, a channel that signals changes, and Release.
// How leadership is decided behind it (renewals, watches, fencing) can change
// without the agent noticing.
package election

import "context"

// Status is what an election has observed at one moment.
type Status struct {
	// Leader is the identity the Lease names as holder; empty when the Lease
	// is released, missing, or not yet observed.
	Leader string
	// Leading is true while this agent holds the Lease and has renewed it
	// within its renew deadline. It turns false the moment either stops
	// being true, before any other agent can take the Lease.
	Leading bool
}

// Election is one contest for one Lease.
type Election interface {
	// Run campaigns until ctx is done. It does not release the Lease when
	// ctx ends: call Release first, once the VIPs are gone.
	Run(ctx context.Context) error
	// Status returns the latest observation.
	Status() Status
	// Changes receives a value whenever Status may have changed. Values are
	// coalesced: read Status after each receive.
	Changes() <-chan struct{}
	// Release gives up leadership at once and, if this agent holds the
	// Lease, clears its holder so that another agent takes over without
	// waiting for the Lease to expire. The election stays stopped (it does
	// not campaign again) until Run returns.
	Release(ctx context.Context) error
}
