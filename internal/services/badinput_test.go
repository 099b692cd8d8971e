package services

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestBadInput: objects users of other tools report trouble with give one
// clear Warning each, and the other Services keep their addresses.
func TestBadInput(t *testing.T) {
	var many []string
	for i := range 1000 {
		many = append(many, netip.AddrFrom4([4]byte{192, 0, 2, byte(i % 250)}).String())
	}
	pl := pool{name: "kube-system/kubevip", data: map[string]string{
		"range-a": "192.0.2.10-192.0.2.20, 192.0.2.15-192.0.2.30",
		"range-b": "192.0.2.40-192.0.2.50,not-a-range",
	}}
	p := computePlan([]*corev1.Service{
		svc("a/many", 0, ann(strings.Join(many, ","))),
		svc("a/twice4", 1, ann("192.0.2.60,192.0.2.61")),
		svc("a/good", 2, ann("192.0.2.62")),
		svc("a/pooled", 3),
		svc("b/pooled", 4),
	}, nil, pl, filter{})
	want := map[string]struct {
		addrs  string
		reason string
		say    []string
	}{
		"a/many":   {"", reasonInvalidIPs, []string{"(11559 characters)", "same family"}},
		"a/twice4": {"", reasonInvalidIPs, []string{"192.0.2.60 and 192.0.2.61 are of the same family"}},
		"a/good":   {"[192.0.2.62]", "", nil},
		"a/pooled": {"", reasonPoolOverlap, []string{"192.0.2.10-192.0.2.20 overlaps 192.0.2.15-192.0.2.30"}},
		"b/pooled": {"", reasonInvalidPool, []string{`"not-a-range" is not a range`}},
	}
	for name, w := range want {
		ns, n, _ := strings.Cut(name, "/")
		sp := p.services[types.NamespacedName{Namespace: ns, Name: n}]
		if sp == nil {
			t.Fatalf("%s: no plan", name)
		}
		if w.addrs != "" && fmt.Sprint(sp.addrs) != w.addrs {
			t.Errorf("%s: addresses %v, want %s", name, sp.addrs, w.addrs)
		}
		if w.reason == "" {
			if len(sp.warnings) > 0 {
				t.Errorf("%s: warnings %v, want none", name, sp.warnings)
			}
			continue
		}
		if len(sp.warnings) != 1 || sp.warnings[0].reason != w.reason {
			t.Errorf("%s: warnings %+v, want one %s", name, sp.warnings, w.reason)
			continue
		}
		msg := sp.warnings[0].message
		if len(msg) > 400 {
			t.Errorf("%s: warning of %d characters: %.100s…", name, len(msg), msg)
		}
		for _, s := range w.say {
			if !strings.Contains(msg, s) {
				t.Errorf("%s: warning %q does not say %q", name, msg, s)
			}
		}
	}
	// The overlapping pool still allocates, each address once.
	if sp := p.services[types.NamespacedName{Namespace: "a", Name: "pooled"}]; !sp.write || fmt.Sprint(sp.alloc) != "[192.0.2.10]" {
		t.Errorf("a/pooled: allocation %v (write %v), want [192.0.2.10]", sp.alloc, sp.write)
	}
}
