package election

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func nodes(n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("n%d", i))
	}
	return out
}

func contests(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("vipd-192-0-2-%d", i))
	}
	return out
}

func loads(place map[string]string, held map[string]string) map[string]int {
	l := map[string]int{}
	for _, n := range place {
		l[n]++
	}
	for _, n := range held {
		l[n]++
	}
	return l
}

// TestPreferenceOrdersByScore: the candidates come highest score first, a
// tie by name, each once, and the input is left as it was.
func TestPreferenceOrdersByScore(t *testing.T) {
	in := nodes(10)
	rand.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
	given := slices.Clone(in)
	for _, c := range contests(50) {
		got := preference(c, in)
		if !slices.Equal(in, given) {
			t.Fatalf("preference changed its input: %v, was %v", in, given)
		}
		if sorted := slices.Sorted(slices.Values(got)); !slices.Equal(sorted, slices.Sorted(slices.Values(in))) {
			t.Fatalf("%s: %v is not an order of %v", c, got, in)
		}
		for i := 1; i < len(got); i++ {
			a, b := score(c, got[i-1]), score(c, got[i])
			if a < b || (a == b && got[i-1] > got[i]) {
				t.Errorf("%s: %s (score %d) before %s (score %d)", c, got[i-1], a, got[i], b)
			}
		}
	}
}

func TestPlaceFreeIsEven(t *testing.T) {
	for _, tc := range []struct{ contests, nodes int }{{50, 3}, {200, 3}, {1000, 10}, {7, 3}} {
		live := nodes(tc.nodes)
		all := func(string) []string { return live }
		place := placeFree(contests(tc.contests), all, nil, 0, live)
		if len(place) != tc.contests {
			t.Fatalf("%d contests: placed %d", tc.contests, len(place))
		}
		share := (tc.contests + tc.nodes - 1) / tc.nodes
		for n, l := range loads(place, nil) {
			if l > share {
				t.Errorf("%d contests on %d nodes: %s gets %d, fair share %d", tc.contests, tc.nodes, n, l, share)
			}
		}
	}
}

func TestPlaceFreeIsDeterministic(t *testing.T) {
	live := nodes(3)
	all := func(string) []string { return live }
	a := placeFree(contests(100), all, nil, 0, live)
	// Order of the input must not matter: agents list contests differently.
	rev := contests(100)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	b := placeFree(rev, all, nil, 0, []string{"n3", "n1", "n2"})
	for c, n := range a {
		if b[c] != n {
			t.Fatalf("%s placed on %s and on %s", c, n, b[c])
		}
	}
}

// A lost node's contests are spread over the survivors, and nothing that
// is held moves.
func TestPlaceFreeAfterNodeLoss(t *testing.T) {
	live := nodes(3)
	all := func(string) []string { return live }
	first := placeFree(contests(90), all, nil, 0, live)
	held := map[string]string{}
	var free []string
	for c, n := range first {
		if n == "n3" {
			free = append(free, c)
		} else {
			held[c] = n
		}
	}
	survivors := []string{"n1", "n2"}
	load := map[string]int{}
	for _, n := range held {
		load[n]++
	}
	second := placeFree(free, func(string) []string { return survivors }, load, len(held), survivors)
	if len(second) != len(free) {
		t.Fatalf("placed %d of %d", len(second), len(free))
	}
	l := loads(second, held)
	if l["n1"] != 45 || l["n2"] != 45 {
		t.Fatalf("after losing n3: loads %v, want 45/45", l)
	}
}

func TestPlaceFreeRespectsCandidates(t *testing.T) {
	live := nodes(3)
	only2 := func(string) []string { return []string{"n2"} }
	for c, n := range placeFree(contests(10), only2, nil, 0, live) {
		if n != "n2" {
			t.Fatalf("%s placed on %s, only n2 may hold it", c, n)
		}
	}
	none := func(string) []string { return nil }
	if p := placeFree(contests(3), none, nil, 0, live); len(p) != 0 {
		t.Fatalf("placed %v with no candidates", p)
	}
}

// After a node is lost, its claims land one at a time, in an order that
// differs from agent to agent. The contests still free must stay placed
// where they were, or two agents would write the same claim: a claim that
// lands on the node it was placed on moves none of the others.
func TestPlaceFreeIsStableAsClaimsLand(t *testing.T) {
	live := nodes(9)
	all := func(string) []string { return live }
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		// Uneven loads, so that some nodes reach their share and the
		// contests that prefer them spill to the next.
		held, load := 0, map[string]int{}
		for _, n := range live {
			load[n] = 90 + rng.IntN(20)
			held += load[n]
		}
		free := contests(100)
		first := placeFree(free, all, load, held, live)
		spilled := 0
		for _, c := range free {
			if first[c] != preference(c, live)[0] {
				spilled++
			}
		}
		if spilled == 0 {
			t.Fatalf("seed %d: no contest spilled to a less preferred node: the test shows nothing", seed)
		}
		for len(free) > 1 {
			i := rng.IntN(len(free))
			load[first[free[i]]]++
			held++
			free = slices.Delete(slices.Clone(free), i, i+1)
			again := placeFree(free, all, load, held, live)
			for _, c := range free {
				if again[c] != first[c] {
					t.Fatalf("seed %d, %d still free: %s moved from %s to %s", seed, len(free), c, first[c], again[c])
				}
			}
		}
	}
}

// An agent that is not the placed one takes a free contest only after the
// placed agent has had its chance, and that chance includes the time a
// write takes now: while the API server is slow, the placed agent's claim
// is still on its way when the plain delay is over.
func TestFallbackWaitsForSlowWrites(t *testing.T) {
	for _, lag := range []time.Duration{0, 800 * time.Millisecond} {
		e := benchElector(t, 0)
		clock := time.Now()
		e.now = func() time.Time { return clock }
		e.lastRenew = clock.Add(time.Hour)
		// A contest that n1, this agent, is the second choice for: its
		// fallback comes well within the other agents' node Leases, which
		// nobody renews here.
		name := ""
		for _, c := range contests(100) {
			if preference(c, nodes(10))[1] == "n1" {
				name = c
				break
			}
		}
		rank := slices.Index(preference(name, nodes(10)), "n1")
		e.SetContests([]Contest{{Name: name}})
		inflight, freeSince, retryAt := map[string]bool{}, map[string]time.Time{}, map[string]time.Time{}
		fallback := time.Duration(rank+1)*e.cfg.RetryPeriod + 2*lag
		for _, at := range []time.Duration{0, fallback - time.Millisecond} {
			clock = freeSinceOr(freeSince, name, clock).Add(at)
			e.mu.Lock()
			e.noteWriteLocked(lag, clock) // writes are still as slow
			e.mu.Unlock()
			if jobs, _ := e.evaluate(inflight, freeSince, retryAt); len(jobs) != 0 {
				t.Fatalf("write lag %v: %v after the contest became free, rank %d took it (fallback due after %v)", lag, at, rank, fallback)
			}
		}
		clock = freeSince[name].Add(fallback)
		e.mu.Lock()
		e.noteWriteLocked(lag, clock) // writes are still as slow
		e.mu.Unlock()
		if jobs, _ := e.evaluate(inflight, freeSince, retryAt); len(jobs) != 1 || jobs[0].op != opAcquire {
			t.Fatalf("write lag %v: %v after the contest became free, rank %d did not take it: %v", lag, fallback, rank, jobNames(jobs))
		}
	}
}

func freeSinceOr(freeSince map[string]time.Time, name string, t time.Time) time.Time {
	if s, ok := freeSince[name]; ok {
		return s
	}
	return t
}
