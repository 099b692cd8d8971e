package election

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestIncrementalEvaluateMatchesFull changes claims, node Leases, contests,
// refusals and lacking interfaces at random, and checks after each
// evaluation that looking only at what changed gave the statuses and
// writes that looking at everything gives.
func TestIncrementalEvaluateMatchesFull(t *testing.T) {
	for seed := range uint64(10) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) { incrementalEvaluateRun(t, seed) })
	}
}

func incrementalEvaluateRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	e := benchElector(t, 0)
	clock := time.Now()
	e.now = func() time.Time { return clock }
	e.lastRenew = clock.Add(time.Hour)
	nodes := []string{"n1", "n2", "n3", "n4"}
	rv := 10
	lease := func(name, kind, holder string) *coordinationv1.Lease {
		rv++
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: strconv.Itoa(rv), Labels: map[string]string{LabelKind: kind}},
			Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: ptr.To(int32(5)), RenewTime: ptr.To(metav1.NewMicroTime(clock))}}
		if holder != "" {
			l.Spec.HolderIdentity = ptr.To(holder)
		}
		return l
	}
	for name := range e.nodeLeases {
		if n := name[len(NodeLeasePrefix):]; !slices.Contains(nodes, n) {
			e.observe(e.leases[name].lease, true)
		}
	}
	for _, n := range nodes {
		e.record(lease(NodeLeasePrefix+n, KindNode, n))
	}
	contests := map[string]Contest{}
	inflight, freeSince, retryAt := map[string]bool{}, map[string]time.Time{}, map[string]time.Time{}
	partial, writes, logged := 0, 0, 0
	// mirror is what a reader that follows TakeStatusChanges knows.
	mirror := map[string]Status{}
	for step := range 400 {
		switch r := rng.IntN(20); {
		case r < 8: // a claim changes hands, is released or deleted
			name := fmt.Sprintf("c%d", rng.IntN(12))
			switch rng.IntN(4) {
			case 0:
				if o := e.leases[name]; o != nil {
					e.observe(o.lease, true)
				}
			default:
				e.record(lease(name, KindClaim, []string{"", "n1", "n2", "n3", "n4", "stranger"}[rng.IntN(6)]))
			}
		case r < 11: // contests come and go, candidates change
			name := fmt.Sprintf("c%d", rng.IntN(12))
			if rng.IntN(3) == 0 {
				delete(contests, name)
			} else {
				c := Contest{Name: name}
				if rng.IntN(3) == 0 {
					c.Candidates = []string{nodes[rng.IntN(len(nodes))]}
				}
				if rng.IntN(3) == 0 {
					c.Needs = []string{"eth1", "eth2"}[rng.IntN(2)]
				}
				contests[name] = c
			}
			e.SetContests(slices.Collect(maps.Values(contests)))
		case r < 13: // a node's Lease expires or is renewed
			clock = clock.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
			n := nodes[1+rng.IntN(len(nodes)-1)]
			e.record(lease(NodeLeasePrefix+n, KindNode, n))
		case r < 14: // this node refuses a contest, or lacks an interface
			e.mu.Lock()
			e.refusedOut = map[string]string{}
			if rng.IntN(2) == 0 {
				e.refusedOut[fmt.Sprintf("c%d", rng.IntN(12))] = "test"
			}
			e.lackingOut = map[string]string{}
			if rng.IntN(2) == 0 {
				e.lackingOut[[]string{"eth1", "eth2"}[rng.IntN(2)]] = "no such interface"
			}
			e.mu.Unlock()
		case r < 16: // a write ends
			for name := range inflight {
				delete(inflight, name)
				if rng.IntN(2) == 0 {
					retryAt[name] = clock.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
				}
				e.mu.Lock()
				e.markDirtyLocked(name)
				e.mu.Unlock()
				break
			}
		default:
			clock = clock.Add(time.Duration(rng.IntN(800)) * time.Millisecond)
		}
		e.mu.Lock()
		contestsSet := e.contests != nil
		e.mu.Unlock()
		if !contestsSet {
			continue
		}
		// The same evaluation twice: incrementally, and from scratch.
		fs, ra := maps.Clone(freeSince), maps.Clone(retryAt)
		e.mu.Lock()
		sig := e.eval.sig
		e.mu.Unlock()
		jobs, _ := e.evaluate(maps.Clone(inflight), freeSince, retryAt)
		e.mu.Lock()
		got := maps.Clone(e.status)
		if e.eval.sig == sig {
			partial++
		}
		e.eval.sig = ""
		e.mu.Unlock()
		fullJobs, _ := e.evaluate(maps.Clone(inflight), fs, ra)
		e.mu.Lock()
		want := maps.Clone(e.status)
		e.mu.Unlock()
		if !maps.Equal(got, want) {
			t.Fatalf("step %d: statuses\n got %v\nwant %v", step, got, want)
		}
		if a, b := jobNames(jobs), jobNames(fullJobs); !slices.Equal(a, b) {
			t.Fatalf("step %d: writes\n got %v\nwant %v", step, a, b)
		}
		names, all := e.TakeStatusChanges()
		e.mu.Lock()
		if all {
			mirror = maps.Clone(e.status)
		}
		for n := range names {
			logged++
			if st, ok := e.status[n]; ok {
				mirror[n] = st
			} else {
				delete(mirror, n)
			}
		}
		if !maps.Equal(mirror, e.status) {
			t.Fatalf("step %d: following TakeStatusChanges gives\n%v\nnot\n%v", step, mirror, e.status)
		}
		e.mu.Unlock()
		for _, j := range jobs {
			inflight[j.name] = true
		}
		writes += len(jobs)
	}
	t.Logf("%d partial evaluations, %d writes, %d status changes logged", partial, writes, logged)
	if partial < 100 || writes < 20 || logged < 50 {
		t.Errorf("%d partial evaluations and %d writes in 400 steps: the test no longer tries what it should", partial, writes)
	}
}

func jobNames(js []job) []string {
	var out []string
	for _, j := range js {
		out = append(out, j.op.String()+" "+j.name)
	}
	slices.Sort(out)
	return out
}

// TestSetContestsMarksWhatChanged pins what the in-place SetContests must
// keep of the map it used to build anew: the contests it was not given go
// (a name given twice counts once), and only the changed ones are looked
// at again.
func TestSetContestsMarksWhatChanged(t *testing.T) {
	e := benchElector(t, 0)
	a, b, c := Contest{Name: "a"}, Contest{Name: "b", Needs: "eth1"}, Contest{Name: "c", Candidates: []string{"n2"}}
	set := func(cs ...Contest) []string {
		e.mu.Lock()
		e.eval.dirty = map[string]bool{}
		e.mu.Unlock()
		e.SetContests(cs)
		e.mu.Lock()
		defer e.mu.Unlock()
		return slices.Sorted(maps.Keys(e.eval.dirty))
	}
	if got := set(a, b, c); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("new contests looked at: %v, want a, b, c", got)
	}
	if got := set(a, b, c); len(got) != 0 {
		t.Errorf("unchanged contests looked at again: %v", got)
	}
	c2 := Contest{Name: "c", Candidates: []string{"n3"}}
	if got := set(a, a, c2); !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("looked at %v after b went and c's candidates changed, want b, c", got)
	}
	e.mu.Lock()
	names := slices.Sorted(maps.Keys(e.contests))
	cands := e.contests["c"].Candidates
	e.mu.Unlock()
	if !slices.Equal(names, []string{"a", "c"}) || !slices.Equal(cands, []string{"n3"}) {
		t.Errorf("contests %v, c's candidates %v; want a, c and [n3]", names, cands)
	}
	if got := set(); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("looked at %v when every contest went, want a, c", got)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.contests == nil || len(e.contests) != 0 {
		t.Errorf("contests after setting none: %v (must be empty, not nil: nil means not set yet)", e.contests)
	}
}

// Unlogged names what the log started by TakeStatusChanges does not: a
// status the reader took for missed may have changed since, and then the
// next TakeStatusChanges gives it.
func TestUnlogged(t *testing.T) {
	e := benchElector(t, 0)
	if _, all := e.TakeStatusChanges(); !all {
		t.Error("the first TakeStatusChanges does not say every status may have changed")
	}
	e.mu.Lock()
	e.logStatusLocked("a")
	e.mu.Unlock()
	if got := e.Unlogged([]string{"a", "b"}); !slices.Equal(got, []string{"b"}) {
		t.Errorf("Unlogged(a, b) after a changed = %v, want [b]", got)
	}
	names, all := e.TakeStatusChanges()
	if all || !maps.Equal(names, map[string]bool{"a": true}) {
		t.Errorf("TakeStatusChanges = %v, %v; want [a], false", names, all)
	}
	if got := e.Unlogged([]string{"a", "b"}); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Unlogged(a, b) after a new log = %v, want both", got)
	}
}
