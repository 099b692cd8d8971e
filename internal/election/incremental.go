package election

import (
	"maps"
	"slices"
	"strconv"
	"strings"
)

// An evaluation looks only at the contests whose inputs changed.
//
// What decides one contest's status is partly its own — its claim Lease,
// its candidates, its pending write — and partly shared by all: who is
// live, whether this agent is, who refuses what. evaluate computes the
// shared part every time (it costs the number of nodes) and compares it
// with the last run's; when it is unchanged, only the contests marked
// dirty since (their claim or contest changed, a write of theirs ended)
// and those that wait on a timer (free ones, foreign holders, releases
// and retries due) are looked at again. So placing a thousand contests,
// or re-homing a lost node's, costs each Lease event the contests it
// concerns, not all of them.

// evalState is what evaluate keeps between runs; it lives under
// Elector.mu.
type evalState struct {
	// sig is the shared input of the last run (signatureLocked); "" before
	// the first.
	sig string
	// dirty are the names (contests or Leases) to look at in the next run.
	dirty map[string]bool
	// heldBy maps each validly held contest to its holder; load counts
	// them per holder.
	heldBy map[string]string
	load   map[string]int
	// free are the contests without a valid holder; watch the held ones
	// looked at in every run (a foreign holder's renewals, a release due).
	free, watch map[string]bool
	// orphans are the claim Leases of no contest.
	orphans map[string]bool
	// forget are reports of contests that went away, deleted in the next
	// run.
	forget []string
}

func newEvalState() evalState {
	return evalState{dirty: map[string]bool{}, heldBy: map[string]string{}, load: map[string]int{},
		free: map[string]bool{}, watch: map[string]bool{}, orphans: map[string]bool{}}
}

// markDirtyLocked asks the next evaluation to look at name again.
func (e *Elector) markDirtyLocked(name string) {
	e.eval.dirty[name] = true
}

// hold records contest as validly held by h.
func (s *evalState) hold(contest, h string) {
	s.heldBy[contest] = h
	s.load[h]++
}

// drop forgets what the last run decided about contest.
func (s *evalState) drop(contest string) {
	if h, ok := s.heldBy[contest]; ok {
		if s.load[h]--; s.load[h] <= 0 {
			delete(s.load, h)
		}
		delete(s.heldBy, contest)
	}
	delete(s.free, contest)
	delete(s.watch, contest)
}

// toLookAt returns the names this run looks at, and clears the dirty set.
// After a change of the shared input that is every contest and claim;
// otherwise the dirty ones and those waiting on time.
func (e *Elector) toLookAtLocked(full bool) map[string]bool {
	s := &e.eval
	var names map[string]bool
	if full {
		sig := s.sig
		*s = newEvalState()
		s.sig = sig
		names = make(map[string]bool, len(e.contests)+len(e.leases))
		for n := range e.contests {
			names[n] = true
		}
		for n := range e.leases {
			names[n] = true
		}
		return names
	}
	names = s.dirty
	s.dirty = map[string]bool{}
	for n := range s.free {
		names[n] = true
	}
	for n := range s.watch {
		names[n] = true
	}
	return names
}

// signatureLocked sums up the input that every contest's status depends
// on: whether this agent is live and may take claims yet, the live nodes,
// which agents have node Leases and which renew them, and what every live
// node refuses.
func (e *Elector) signatureLocked(meLive, warm bool, liveNodes []string, renewing map[string]bool, refusedBy, lackedBy map[string][]string) string {
	var b strings.Builder
	b.WriteString(strconv.FormatBool(meLive))
	b.WriteString(strconv.FormatBool(warm))
	for _, n := range liveNodes {
		b.WriteString("|")
		b.WriteString(n)
	}
	b.WriteString("/")
	for _, name := range slices.Sorted(maps.Keys(e.nodeLeases)) {
		b.WriteString(name)
		if renewing[holder(e.nodeLeases[name].lease)] {
			b.WriteString("+")
		}
		b.WriteString(",")
	}
	for _, c := range slices.Sorted(maps.Keys(refusedBy)) {
		b.WriteString("/" + c + "=" + strings.Join(slices.Sorted(slices.Values(refusedBy[c])), ","))
	}
	for _, c := range slices.Sorted(maps.Keys(e.refusedOut)) {
		b.WriteString("/out=" + c)
	}
	for _, n := range slices.Sorted(maps.Keys(lackedBy)) {
		b.WriteString("/lacks:" + n + "=" + strings.Join(slices.Sorted(slices.Values(lackedBy[n])), ","))
	}
	for _, n := range slices.Sorted(maps.Keys(e.lackingOut)) {
		b.WriteString("/lacksout=" + n)
	}
	return b.String()
}
