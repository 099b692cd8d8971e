package e2e

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// arpWatch asks, from the client, who has a VIP every interval
// (lab.Client.WatchAnswers) and reads the record by node: which nodes
// answered for the VIP, and when. This is what split brain costs on the
// wire, whatever the interfaces say.
type arpWatch struct {
	vip      netip.Addr
	interval time.Duration
	nodes    []*lab.Node
	a        *lab.Answers
}

// watchARP starts an arpWatch that stops when the test ends.
func watchARP(tb testing.TB, e *env, vip netip.Addr, interval time.Duration) *arpWatch {
	tb.Helper()
	a, err := e.lab.Client.WatchAnswers(tb.Context(), []netip.Addr{vip}, interval)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = a.Close() })
	return &arpWatch{vip: vip, interval: interval, nodes: e.lab.Nodes, a: a}
}

// Stop ends the probing; the record stays.
func (w *arpWatch) Stop() { _ = w.a.Close() }

// Err is the first error the watch met.
func (w *arpWatch) Err() error { return w.a.Err() }

// rounds are the questions asked in [from, to], with the nodes that
// answered each (a MAC that is no node's, by itself). The last question
// may still be waiting for its answer, so it is left out.
func (w *arpWatch) rounds(from, to time.Time) [][]string {
	all := w.a.Rounds(w.vip)
	if len(all) > 0 {
		all = all[:len(all)-1]
	}
	var out [][]string
	for _, r := range all {
		if r.At.Before(from) || r.At.After(to) {
			continue
		}
		var who []string
		for _, mac := range r.MACs {
			name := mac
			for _, n := range w.nodes {
				if n.MAC.String() == mac {
					name = n.Name
				}
			}
			who = append(who, name)
		}
		out = append(out, who)
	}
	return out
}

// LastFrom is the time of the last question node answered, zero if none.
func (w *arpWatch) LastFrom(node string) time.Time {
	var n *lab.Node
	for _, x := range w.nodes {
		if x.Name == node {
			n = x
		}
	}
	rs := w.a.Rounds(w.vip)
	for i := len(rs) - 1; i >= 0; i-- {
		if n != nil && slices.Contains(rs[i].MACs, n.MAC.String()) {
			return rs[i].At
		}
	}
	return time.Time{}
}

// FirstFrom is the time of the first question at or after from that node
// answered, zero if none.
func (w *arpWatch) FirstFrom(node string, from time.Time) time.Time {
	for _, x := range w.nodes {
		if x.Name != node {
			continue
		}
		for _, r := range w.a.Rounds(w.vip) {
			if !r.At.Before(from) && slices.Contains(r.MACs, x.MAC.String()) {
				return r.At
			}
		}
	}
	return time.Time{}
}

// Answerers lists who answered any question asked in [from, to].
func (w *arpWatch) Answerers(from, to time.Time) []string {
	var who []string
	for _, r := range w.rounds(from, to) {
		for _, n := range r {
			if !slices.Contains(who, n) {
				who = append(who, n)
			}
		}
	}
	slices.Sort(who)
	return who
}

// Doubled is how long, within [from, to], two or more stations answered the
// same question: the number of such questions times the interval.
func (w *arpWatch) Doubled(from, to time.Time) time.Duration {
	var d time.Duration
	for _, r := range w.rounds(from, to) {
		if len(r) > 1 {
			d += w.interval
		}
	}
	return d
}

// Unanswered is how long, within [from, to], nobody answered.
func (w *arpWatch) Unanswered(from, to time.Time) time.Duration {
	var d time.Duration
	for _, r := range w.rounds(from, to) {
		if len(r) == 0 {
			d += w.interval
		}
	}
	return d
}
