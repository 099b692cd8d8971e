package agent

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/nodes"
)

// fakeNodes is a fixed set of Nodes and their labels.
type fakeNodes map[string]labels.Set

func (f fakeNodes) Matching(sel labels.Selector) []string {
	out := []string{}
	for _, n := range slices.Sorted(maps.Keys(f)) {
		if sel.Matches(f[n]) {
			out = append(out, n)
		}
	}
	return out
}

func (f fakeNodes) Labels(node string) (labels.Set, bool) { l, ok := f[node]; return l, ok }

func TestPlacerCandidates(t *testing.T) {
	cluster := fakeNodes{
		"cp1": {nodes.LabelControlPlane: "", "zone": "a"},
		"cp2": {nodes.LabelControlPlane: "", "zone": "b"},
		"w1":  {"zone": "a"},
		"w2":  {"zone": "b", "vip": "no"},
		"w3":  {"zone": "b"},
	}
	vip := []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	svc := [][]types.NamespacedName{{{Namespace: "a", Name: "web"}}}
	bindings := func() []binding {
		return []binding{
			{contest: "cp", controlPlane: true},
			{contest: "shared", vips: vip, services: svc},
			{contest: "pooled", vips: vip, services: svc, pool: "edge", selector: "zone=b"},
			{contest: "local", vips: vip, services: svc, candidates: []string{"cp2", "w1", "w3"}},
			{contest: "bad", vips: vip, services: svc, pool: "broken", selector: "zone in ("},
		}
	}
	cases := []struct {
		name      string
		global    string
		excludeCP bool
		want      map[string][]string
	}{
		{name: "pool selector only",
			want: map[string][]string{"cp": nil, "shared": nil, "pooled": {"cp2", "w2", "w3"}, "local": {"cp2", "w1", "w3"}, "bad": {}}},
		{name: "global selector applies to every VIP",
			global: "vip!=no",
			want:   map[string][]string{"cp": {"cp1", "cp2", "w1", "w3"}, "shared": {"cp1", "cp2", "w1", "w3"}, "pooled": {"cp2", "w3"}, "local": {"cp2", "w1", "w3"}, "bad": {}}},
		{name: "control-plane nodes excluded from Service VIPs only",
			excludeCP: true,
			want:      map[string][]string{"cp": nil, "shared": {"w1", "w2", "w3"}, "pooled": {"w2", "w3"}, "local": {"w1", "w3"}, "bad": {}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := newPlacer("w1", tc.global, tc.excludeCP, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			bs := bindings()
			if !p.needsNodes(bs) {
				t.Fatal("needsNodes is false with a pool selector")
			}
			p.apply(bs, cluster)
			for _, b := range bs {
				want := tc.want[b.contest]
				if (b.candidates == nil) != (want == nil) || !slices.Equal(b.candidates, want) {
					t.Errorf("%s: candidates %#v, want %#v", b.contest, b.candidates, want)
				}
			}
		})
	}
	p, err := newPlacer("w1", "", false, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if p.needsNodes([]binding{{contest: "cp", controlPlane: true}, {contest: "shared", vips: vip, services: svc}}) {
		t.Error("needsNodes is true without any selector: agents would need to read Nodes for nothing")
	}
	if _, err := newPlacer("w1", "zone in (", false, nil); err == nil {
		t.Error("newPlacer accepted a selector that does not parse")
	}
}

// TestHandovers: a node that let go of a contest because it is no longer a
// candidate keeps its VIPs until it sees the new holder, or at most max; a
// node that lost its endpoints, or lost for any other reason, does not.
func TestHandovers(t *testing.T) {
	t0 := time.Now()
	held := election.Status{Leading: true, Leader: "n1"}
	free := election.Status{}
	taken := election.Status{Leader: "n2"}
	b := binding{contest: "c"}
	h := handovers{max: 5 * time.Second, linger: 100 * time.Millisecond}
	if !h.keep(b, "n1", held, free, election.LostNotCandidate, t0) {
		t.Fatal("not kept after a release as no longer a candidate")
	}
	if !h.keep(b, "n1", free, free, election.LostNotCandidate, t0.Add(time.Second)) {
		t.Error("not kept while no new holder is seen")
	}
	// The new holder announces right after its write: a moment more.
	if !h.keep(b, "n1", free, taken, election.LostNotCandidate, t0.Add(2*time.Second)) {
		t.Error("not kept for a moment after the new holder was seen")
	}
	if at := h.next(); !at.Equal(t0.Add(2*time.Second + 100*time.Millisecond)) {
		t.Errorf("next look at %v, want the new holder's sighting + 100ms", at.Sub(t0))
	}
	if h.keep(b, "n1", taken, taken, election.LostNotCandidate, t0.Add(2200*time.Millisecond)) {
		t.Error("kept past the moment after the new holder was seen")
	}
	if !h.keep(b, "n1", held, free, election.LostNotCandidate, t0) || h.keep(b, "n1", free, free, election.LostNotCandidate, t0.Add(6*time.Second)) {
		t.Error("not kept at first, or kept past max")
	}
	// Released and already taken by the time this node looks: kept for
	// the moment the new holder's announcement takes.
	if !h.keep(b, "n1", held, taken, election.LostNotCandidate, t0) {
		t.Error("not kept for a moment when the new holder was seen at once")
	}
	if at := h.next(); !at.Equal(t0.Add(100 * time.Millisecond)) {
		t.Errorf("next look at %v, want 100ms", at.Sub(t0))
	}
	if h.keep(b, "n1", taken, taken, election.LostNotCandidate, t0.Add(200*time.Millisecond)) {
		t.Error("kept past the moment after the new holder was seen")
	}
	for _, why := range []election.Reason{election.LostLacking, election.LostRefused, election.LostNotLive, election.LostShutdown} {
		if h.keep(b, "n1", held, free, why, t0) {
			t.Errorf("kept after losing for %s", why)
		}
	}
	local := binding{contest: "l", local: []string{"n2"}}
	if h.keep(local, "n1", held, free, election.LostNotCandidate, t0) {
		t.Error("kept although this node has no endpoint left (externalTrafficPolicy: Local)")
	}
	h.keep(b, "n1", held, free, election.LostNotCandidate, t0)
	h.forget(func(string) bool { return false })
	if len(h.until) != 0 {
		t.Errorf("handovers of gone contests kept: %v", h.until)
	}
}
