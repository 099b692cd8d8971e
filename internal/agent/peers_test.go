package agent

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/heartbeat"
)

// The beats may say "not live" only once this node answers for no VIP:
// peers take its claims at once when they hear it.
func TestPeersSayNotLiveOnlyOnceSilent(t *testing.T) {
	var sent []heartbeat.State
	p := &peers{setState: func(s heartbeat.State) { sent = append(sent, s) }, log: slog.New(slog.DiscardHandler)}
	last := func() heartbeat.State {
		t.Helper()
		if len(sent) == 0 {
			t.Fatal("nothing published")
		}
		return sent[len(sent)-1]
	}

	p.setAnswering(false) // a pass before the election has said anything
	if len(sent) != 0 {
		t.Fatalf("published %+v before the election reported", sent)
	}
	p.SetSelf(election.PeerReport{APIOK: true, Live: true})
	p.setAnswering(true)
	if s := last(); !s.Live || !s.APIOK {
		t.Fatalf("live and holding: published %+v", s)
	}
	p.SetSelf(election.PeerReport{APIOK: false, Live: false})
	if s := last(); !s.Live || s.APIOK {
		t.Fatalf("election let go but the VIPs are still answered: published %+v, want live, not api_ok", s)
	}
	n := len(sent)
	p.setAnswering(true)
	if len(sent) != n {
		t.Fatalf("published again without a change: %+v", sent[n:])
	}
	p.setAnswering(false)
	if s := last(); s.Live {
		t.Fatalf("VIPs silenced after the election let go: published %+v, want not live", s)
	}
	p.SetSelf(election.PeerReport{APIOK: true, Live: true})
	if s := last(); !s.Live {
		t.Fatalf("live again: published %+v", s)
	}
	var none *peers
	none.setAnswering(true) // no heartbeats: nothing to tell
}

type fakeGuard struct{}

func (fakeGuard) Set(guarded, answer []netip.Addr) error { return nil }
func (fakeGuard) Refresh() error                         { return nil }
func (fakeGuard) RefreshUntil(time.Time) error           { return nil }
func (fakeGuard) Close() error                           { return nil }

func TestAnswering(t *testing.T) {
	v := []netip.Addr{netip.MustParseAddr("192.0.2.10")}
	guarded := &reconciler{guard: fakeGuard{}}
	bare := &reconciler{}
	for _, c := range []struct {
		name              string
		r                 *reconciler
		present, announce []netip.Addr
		answered          []netip.Addr
		stuck             []netip.Addr
		want              bool
	}{
		{name: "nothing left", r: guarded, want: false},
		{name: "announced", r: guarded, present: v, announce: v, answered: v, want: true},
		{name: "kept silent behind the guard", r: guarded, present: v, want: false},
		{name: "guard not updated, still lets the kernel answer", r: guarded, present: v, answered: v, want: true},
		{name: "removal failed", r: guarded, stuck: v, want: true},
		{name: "kept without a guard: the kernel answers", r: bare, present: v, want: true},
		{name: "nothing left, no guard", r: bare, want: false},
	} {
		c.r.answered = c.answered
		if got := len(c.r.answeringSet(c.present, c.announce, c.stuck)) > 0; got != c.want {
			t.Errorf("%s: answering = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestSilenced: the election may release a claim only once, after a pass,
// this node neither announces nor lets the kernel answer for any of its
// VIPs; before any pass it may not.
func TestSilenced(t *testing.T) {
	v1, v2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	bound := map[string]*binding{"one": {contest: "one", vips: []netip.Addr{v1}}, "two": {contest: "two", vips: []netip.Addr{v2}}}
	for _, c := range []struct {
		name             string
		guard            arpGuard
		answered         []netip.Addr // the guard's answer set
		present, announc []netip.Addr
		want             map[string]bool
	}{
		{"announced", fakeGuard{}, []netip.Addr{v1}, []netip.Addr{v1, v2}, []netip.Addr{v1}, map[string]bool{"one": false, "two": true}},
		{"answered by the kernel, not announced", fakeGuard{}, []netip.Addr{v2}, []netip.Addr{v1, v2}, nil, map[string]bool{"one": true, "two": false}},
		{"present, guarded, silent", fakeGuard{}, nil, []netip.Addr{v1, v2}, nil, map[string]bool{"one": true, "two": true}},
		{"present without a guard", nil, nil, []netip.Addr{v2}, nil, map[string]bool{"one": true, "two": false}},
	} {
		r := &reconciler{guard: c.guard, answered: c.answered}
		if r.silenced("one") {
			t.Errorf("%s: silenced before any pass", c.name)
		}
		r.boundNow = bound
		ans := r.answeringSet(c.present, c.announc, nil)
		r.answeringNow.Store(&ans)
		for contest, want := range c.want {
			if got := r.silenced(contest); got != want {
				t.Errorf("%s: silenced(%s) = %v, want %v", c.name, contest, got, want)
			}
		}
	}
}
