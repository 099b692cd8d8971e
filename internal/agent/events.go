package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/kube"
	"github.com/vipd/vipd/internal/services"
)

// reasonAssigned is the Event reason of a takeover, as on Services.
const reasonAssigned = "VIPAssigned"

// leaseEvents records the takeovers of the control-plane VIP as Events on
// its claim Lease: the control plane has no Service to carry them. Only the
// new holder records one, so each takeover is told once.
type leaseEvents struct {
	namespace, lease string
	recorder         record.EventRecorder
}

// newLeaseEvents starts an Event broadcaster that lives as long as ctx.
func newLeaseEvents(ctx context.Context, client kube.Interface, node, namespace, lease string) (*leaseEvents, error) {
	sch, err := kube.NewScheme()
	if err != nil {
		return nil, fmt.Errorf("recording Events: %w", err)
	}
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&refusedSink{sink: kube.EventSink{Client: client}})
	go func() {
		<-ctx.Done()
		b.Shutdown()
	}()
	return &leaseEvents{namespace: namespace, lease: lease,
		recorder: b.NewRecorder(sch, corev1.EventSource{Component: "vipd", Host: node})}, nil
}

// concerns reports whether contest is the control-plane election.
func (l *leaseEvents) concerns(contest string) bool { return contest == l.lease }

// took records that node took vips, as r says.
func (l *leaseEvents) took(vips []netip.Addr, node string, r election.Report) {
	ref := &corev1.ObjectReference{Kind: "Lease", APIVersion: "coordination.k8s.io/v1",
		Namespace: l.namespace, Name: l.lease, UID: r.LeaseUID}
	l.recorder.Eventf(ref, corev1.EventTypeNormal, reasonAssigned, "%s held by node %s (%s)",
		joinVIPs(vips), node, services.TakeoverNote(r.Previous, string(r.Reason)))
}

// warn records a Warning about the control-plane VIPs on their Lease.
func (l *leaseEvents) warn(reason, message string) {
	ref := &corev1.ObjectReference{Kind: "Lease", APIVersion: "coordination.k8s.io/v1", Namespace: l.namespace, Name: l.lease}
	l.recorder.Event(ref, corev1.EventTypeWarning, reason, message)
}

func joinVIPs(vips []netip.Addr) string {
	s := make([]string, len(vips))
	for i, v := range vips {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}
