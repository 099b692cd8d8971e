package services

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func annotate(k, v string) svcOpt {
	return func(s *corev1.Service) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[k] = v
	}
}

// TestIgnoreAnnotation: kube-vip.io/ignore=true takes a Service out of the
// plan, address and all; false or garbage leaves it in.
func TestIgnoreAnnotation(t *testing.T) {
	svcs := []*corev1.Service{
		svc("a/ignored", 0, ann("192.0.2.1"), annotate(AnnotationIgnore, "true")),
		svc("a/served", 1, ann("192.0.2.2"), annotate(AnnotationIgnore, "false")),
		svc("a/odd", 2, ann("192.0.2.3"), annotate(AnnotationIgnore, "maybe")),
	}
	p := computePlan(svcs, nil, noPool(), defaultFilter)
	if _, ok := p.services[names("a/ignored")[0]]; ok {
		t.Error("the ignored Service is in the plan")
	}
	var got []string
	for _, a := range p.addresses {
		got = append(got, a.IP.String())
	}
	if strings.Join(got, ",") != "192.0.2.2,192.0.2.3" {
		t.Errorf("addresses %v, want 192.0.2.2 and 192.0.2.3", got)
	}
}

// TestUnsupportedAnnotations: a Service with a kube-vip annotation vipd does
// not implement is served, with a Warning naming the annotation.
func TestUnsupportedAnnotations(t *testing.T) {
	s := svc("a/egress", 0, ann("192.0.2.1"), annotate("kube-vip.io/egress", "true"), annotate("kube-vip.io/serviceVLAN", "eth0.200"))
	p := computePlan([]*corev1.Service{s}, nil, noPool(), defaultFilter)
	sp := p.services[names("a/egress")[0]]
	if sp == nil || len(sp.addrs) != 1 {
		t.Fatalf("the Service is not served: %+v", sp)
	}
	var msgs []string
	for _, w := range sp.warnings {
		if w.reason != reasonUnsupported {
			t.Errorf("warning %+v", w)
		}
		msgs = append(msgs, w.message)
	}
	if len(msgs) != 2 || !strings.Contains(msgs[0], `kube-vip.io/egress="true" is not implemented by vipd`) ||
		!strings.Contains(msgs[1], `kube-vip.io/serviceVLAN="eth0.200"`) {
		t.Errorf("warnings %q", msgs)
	}
}
