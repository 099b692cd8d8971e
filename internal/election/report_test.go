package election

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestReportsSayWhy follows one contest through a new claim, a graceful
// handover and a crash, and checks what each agent reports.
func TestReportsSayWhy(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	cp := Contest{Name: "cp"}
	a := startAgent(t, ns, "a", cp)
	waitFor(t, 5*time.Second, "a holds", func() bool { return a.e.Status(cp.Name).Leading })
	if r := a.e.Report(cp.Name); !r.Leading || r.Reason != TookNew || r.Previous != "" || r.LeaseUID == "" || r.At.IsZero() {
		t.Errorf("a after a new claim: %+v", r)
	}
	if !a.e.Synced() {
		t.Error("a holds but says its informer has not synced")
	}

	b := startAgent(t, ns, "b", cp)
	waitFor(t, 5*time.Second, "b sees a", func() bool { return b.e.Status(cp.Name).Leader == "a" })
	if err := a.e.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := a.e.Report(cp.Name); r.Leading || r.Reason != LostShutdown {
		t.Errorf("a after Release: %+v", r)
	}
	waitFor(t, testLease, "b holds", func() bool { return b.e.Status(cp.Name).Leading })
	if r := b.e.Report(cp.Name); !r.Leading || r.Reason != TookHolderReleased || r.Previous != "a" {
		t.Errorf("b after a released: %+v", r)
	}

	c := startAgent(t, ns, "c", cp)
	waitFor(t, 5*time.Second, "c sees b", func() bool { return c.e.Status(cp.Name).Leader == "b" })
	b.stop() // a crash: nothing released
	waitFor(t, 3*testLease, "c holds", func() bool { return c.e.Status(cp.Name).Leading })
	if r := c.e.Report(cp.Name); !r.Leading || r.Reason != TookHolderExpired || r.Previous != "b" {
		t.Errorf("c after b crashed: %+v", r)
	}
}

// TestReleaseSaysWhyAtOnce: when an agent releases contests it may no
// longer hold, the status change that shows them lost already carries the
// reason, even when the watch shows the release before its write returns;
// the agent acts on that reason (a handover make before break).
func TestReleaseSaysWhyAtOnce(t *testing.T) {
	needAPI(t)
	ns := newNamespace(t)
	var contests []Contest
	for i := range 10 {
		contests = append(contests, Contest{Name: fmt.Sprintf("svc-%d", i), Candidates: []string{"a"}})
	}
	a := startAgent(t, ns, "a", contests...)
	b := startAgent(t, ns, "b", contests...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type seen struct {
		contest string
		report  Report
	}
	bad := make(chan seen, 100)
	go func() {
		leading := map[string]bool{}
		for {
			select {
			case <-ctx.Done():
				return
			case <-a.e.Changes():
			}
			for _, c := range contests {
				st := a.e.Status(c.Name)
				if leading[c.Name] && !st.Leading {
					if r := a.e.Report(c.Name); r.Reason != LostNotCandidate {
						bad <- seen{c.Name, r}
					}
				}
				leading[c.Name] = st.Leading
			}
		}
	}()
	with := func(node string) []Contest {
		out := slices.Clone(contests)
		for i := range out {
			out[i].Candidates = []string{node}
		}
		return out
	}
	for round := range 5 {
		waitFor(t, 5*time.Second, "a holds every contest", func() bool {
			for _, c := range contests {
				if !a.e.Status(c.Name).Leading {
					return false
				}
			}
			return true
		})
		// a may no longer hold them: it releases them, b takes them.
		a.e.SetContests(with("b"))
		b.e.SetContests(with("b"))
		waitFor(t, 5*time.Second, "b holds every contest", func() bool {
			for _, c := range contests {
				if !b.e.Status(c.Name).Leading || a.e.Status(c.Name).Leading {
					return false
				}
			}
			return true
		})
		// And back.
		b.e.SetContests(with("a"))
		a.e.SetContests(with("a"))
		select {
		case s := <-bad:
			t.Fatalf("round %d: a saw %s lost with report %+v; want reason %s", round, s.contest, s.report, LostNotCandidate)
		default:
		}
	}
}
