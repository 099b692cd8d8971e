package election

import (
	"context"
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
