package election

import (
	"fmt"
	"testing"
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
