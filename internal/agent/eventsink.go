package agent

import (
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/record"
)

// refusedSink passes Events on to sink, and drops the ones the API server
// refuses (an identity that may not create Events, as under kube-vip's
// RBAC), which client-go would log one by one. reportAccess says once that
// Events are not recorded.
type refusedSink struct {
	sink record.EventSink
}

func (s *refusedSink) Create(e *corev1.Event) (*corev1.Event, error) {
	out, err := s.sink.Create(e)
	return s.check(e, out, err)
}

func (s *refusedSink) Update(e *corev1.Event) (*corev1.Event, error) {
	out, err := s.sink.Update(e)
	return s.check(e, out, err)
}

func (s *refusedSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	out, err := s.sink.Patch(e, data)
	return s.check(e, out, err)
}

// check drops a refused Event as if it had been recorded: the recorder
// then neither retries it nor logs it.
func (s *refusedSink) check(in, out *corev1.Event, err error) (*corev1.Event, error) {
	if apierrors.IsForbidden(err) {
		return in, nil
	}
	return out, err
}
