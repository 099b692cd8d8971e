package election

import (
	"slices"
	"testing"
	"time"
)

// TestLackingNodeReleasesAndIsSkipped: a holder whose node loses what its
// contests need publishes that, releases every contest with that need and
// keeps the others; the rest of the agents skip it at once, for contests
// that exist now and for ones made later; once the need is met again it is
// a candidate, but nothing moves back.
func TestLackingNodeReleasesAndIsSkipped(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	var needing []Contest
	for _, name := range []string{"svc-a", "svc-b", "svc-c", "svc-d"} {
		needing = append(needing, Contest{Name: name, Needs: "eth1"})
	}
	plain := Contest{Name: "plain"}
	all := append([]Contest{plain}, needing...)
	as := []*agent{startAgent(t, ns, "a", all...), startAgent(t, ns, "b", all...), startAgent(t, ns, "c", all...)}
	placed := func() map[string]string {
		out := map[string]string{}
		for _, c := range all {
			if hs := holders(c.Name, as...); len(hs) == 1 {
				out[c.Name] = hs[0]
			}
		}
		return out
	}
	waitFor(t, 5*time.Second, "every contest held once", func() bool { return len(placed()) == len(all) })
	// The agent holding the most contests that need eth1 loses it.
	count := map[string]int{}
	for _, c := range needing {
		count[placed()[c.Name]]++
	}
	var h *agent
	for _, a := range as {
		if h == nil || count[a.id] > count[h.id] {
			h = a
		}
	}
	plainHolder := placed()[plain.Name]
	h.e.SetLacking(map[string]string{"eth1": "interface eth1 is down"})
	took := waitFor(t, 2*time.Second, h.id+"'s contests needing eth1 held elsewhere", func() bool {
		p := placed()
		for _, c := range needing {
			if p[c.Name] == "" || p[c.Name] == h.id {
				return false
			}
		}
		return true
	})
	t.Logf("%s held %d contests needing eth1; held elsewhere %v after it lacked eth1", h.id, count[h.id], took)
	if took > testRetry {
		t.Errorf("the contests moved after %v; the others should skip %s at once (within a retry period %v)", took, h.id, testRetry)
	}
	if got := placed()[plain.Name]; got != plainHolder {
		t.Errorf("contest %s, which needs nothing, moved from %s to %s", plain.Name, plainHolder, got)
	}
	// Each contest h held was released for what it lacks.
	for _, c := range needing {
		if r := h.e.Report(c.Name); r.Reason != "" && !r.Leading && r.Reason != LostLacking {
			t.Errorf("%s lost %s for %q, want %q", h.id, c.Name, r.Reason, LostLacking)
		}
	}
	// Every other agent reads the annotation; a new contest needing eth1
	// is never placed on h, even where the placement prefers it.
	for _, a := range as {
		if a != h {
			waitFor(t, 3*testRenew, a.id+" reads what "+h.id+" lacks", func() bool {
				return ParseLacking(a.e.NodeAnnotation(AnnotationLacking)[h.id])["eth1"] != ""
			})
		}
	}
	var later []Contest
	for i := range 12 {
		later = append(later, Contest{Name: "later-" + string(rune('a'+i)), Needs: "eth1"})
	}
	all = append(all, later...)
	for _, a := range as {
		a.e.SetContests(all)
	}
	waitFor(t, 5*time.Second, "the later contests held", func() bool { return len(placed()) == len(all) })
	for _, c := range later {
		if placed()[c.Name] == h.id {
			t.Errorf("%s, which needs eth1, was placed on %s, which lacks it", c.Name, h.id)
		}
	}
	before := placed()
	h.e.SetLacking(nil)
	waitFor(t, 3*testRenew, "the lack withdrawn", func() bool {
		for _, a := range as {
			if a != h && a.e.NodeAnnotation(AnnotationLacking)[h.id] != "" {
				return false
			}
		}
		return true
	})
	after := placed()
	for name, n := range before {
		if after[name] != n {
			t.Errorf("%s moved from %s to %s when %s had eth1 again; nothing should move back", name, n, after[name], h.id)
		}
	}
	if !slices.Contains(h.e.Members(), h.id) {
		t.Errorf("%s is not live after lacking eth1: members %v", h.id, h.e.Members())
	}
}
