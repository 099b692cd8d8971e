package election

import (
	"cmp"
	"hash/fnv"
	"maps"
	"slices"
)

// score is the rendezvous (highest random weight) score of node for
// contest: every agent computes the same order of preference from names
// alone, and a node joining or leaving changes the preferred node only of
// the contests it wins or held.
func score(contest, node string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(contest))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return mix(h.Sum64())
}

// mix is the splitmix64 finaliser; FNV alone spreads similar names poorly.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// preference orders nodes from most to least preferred for contest. Each
// node's score is computed once, not at every comparison: a re-home
// orders the candidates of a hundred contests on every survivor.
func preference(contest string, nodes []string) []string {
	type ranked struct {
		node  string
		score uint64
	}
	var buf [16]ranked // most clusters have fewer candidates: no allocation
	rs := buf[:0]
	if len(nodes) > len(buf) {
		rs = make([]ranked, 0, len(nodes))
	}
	for _, n := range nodes {
		rs = append(rs, ranked{n, score(contest, n)})
	}
	slices.SortFunc(rs, func(a, b ranked) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return cmp.Compare(a.node, b.node)
	})
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.node
	}
	return out
}

// placeFree decides who should take each free contest. Contests already
// validly held stay where they are (no preemption) but count towards their
// holder's load; free ones go, in name order, to the most preferred live
// candidate that is below the fair share, so placement is even, not merely
// random. Every agent with the same view computes the same answer.
//
// candidates(c) returns the live nodes allowed to hold c, load counts the
// validly held contests of each holder (held of them in all), and free
// lists the contests to place.
func placeFree(free []string, candidates func(string) []string, load map[string]int, held int, live []string) map[string]string {
	if len(live) == 0 || len(free) == 0 {
		return nil
	}
	load = maps.Clone(load)
	if load == nil {
		load = map[string]int{}
	}
	total := held + len(free)
	share := (total + len(live) - 1) / len(live)

	free = slices.Clone(free)
	slices.Sort(free)
	out := make(map[string]string, len(free))
	for _, c := range free {
		order := preference(c, candidates(c))
		if len(order) == 0 {
			continue
		}
		pick := ""
		for _, n := range order {
			if load[n] < share {
				pick = n
				break
			}
		}
		if pick == "" {
			// Everyone allowed is at its share: the least loaded, by preference.
			pick = order[0]
			for _, n := range order[1:] {
				if load[n] < load[pick] {
					pick = n
				}
			}
		}
		out[c] = pick
		load[pick]++
	}
	return out
}
