package agent

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/election"
)

func TestPlanFor(t *testing.T) {
	v4 := netip.MustParseAddr("198.51.100.100")
	v6 := netip.MustParseAddr("2001:db8:100::100")
	vips := []netip.Addr{v4, v6}
	on := func(netip.Addr) bool { return true }
	off := func(netip.Addr) bool { return false }

	tests := []struct {
		name         string
		st           election.Status
		preserve     bool
		handover     bool
		onIface      func(netip.Addr) bool
		wantPresent  []netip.Addr
		wantAnnounce []netip.Addr
	}{
		{"leader holds and announces all", election.Status{Leading: true, Leader: "n1"}, false, false, off, vips, vips},
		{"leader with preserve is the same", election.Status{Leading: true, Leader: "n1"}, true, false, on, vips, vips},
		{"follower holds nothing", election.Status{Leader: "n2"}, false, false, on, nil, nil},
		{"lost, no new leader, no preserve: drop all", election.Status{}, false, false, on, nil, nil},
		{"lost, no new leader, preserve: keep IPv4 silent, drop IPv6", election.Status{}, true, false, on, []netip.Addr{v4}, nil},
		{"lost, new leader seen, preserve: drop all", election.Status{Leader: "n2"}, true, false, on, nil, nil},
		{"preserve never adds a VIP that is not there", election.Status{}, true, false, off, nil, nil},
		{"handover keeps both families silent", election.Status{}, false, true, on, vips, nil},
		{"handover never adds a VIP that is not there", election.Status{}, false, true, off, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := planFor(tt.st, vips, tt.preserve, tt.handover, tt.onIface)
			if !slices.Equal(p.present, tt.wantPresent) {
				t.Errorf("present = %v, want %v", p.present, tt.wantPresent)
			}
			if !slices.Equal(p.announce, tt.wantAnnounce) {
				t.Errorf("announce = %v, want %v", p.announce, tt.wantAnnounce)
			}
		})
	}
}

func TestPlanSame(t *testing.T) {
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("2001:db8::1")
	base := plan{present: []netip.Addr{a, b, c}, announce: []netip.Addr{a, c}, on: map[netip.Addr]string{a: "eth0", b: "eth0", c: "eth1"}}
	cases := []struct {
		name string
		q    plan
		same bool
	}{
		{"another order", plan{present: []netip.Addr{c, b, a}, announce: []netip.Addr{c, a},
			on: map[netip.Addr]string{a: "eth0", b: "eth0", c: "eth1"}}, true},
		{"an interface entry for a VIP screened out", plan{present: []netip.Addr{a, b, c}, announce: []netip.Addr{a, c},
			on: map[netip.Addr]string{a: "eth0", b: "eth0", c: "eth1", netip.MustParseAddr("192.0.2.9"): "eth0"}}, true},
		{"one VIP fewer", plan{present: []netip.Addr{a, b}, announce: []netip.Addr{a},
			on: map[netip.Addr]string{a: "eth0", b: "eth0"}}, false},
		{"another VIP announced", plan{present: []netip.Addr{a, b, c}, announce: []netip.Addr{a, b},
			on: map[netip.Addr]string{a: "eth0", b: "eth0", c: "eth1"}}, false},
		{"a VIP on another interface", plan{present: []netip.Addr{a, b, c}, announce: []netip.Addr{a, c},
			on: map[netip.Addr]string{a: "eth0", b: "eth1", c: "eth1"}}, false},
		{"nothing", plan{}, false},
	}
	for _, tc := range cases {
		if got := base.same(tc.q); got != tc.same {
			t.Errorf("%s: same = %v, want %v", tc.name, got, tc.same)
		}
		if got := tc.q.same(base); got != tc.same {
			t.Errorf("%s, the other way: same = %v, want %v", tc.name, got, tc.same)
		}
	}
	if !(plan{}).same(plan{}) {
		t.Error("two empty plans differ")
	}
}

// TestApplyNeeded: a pass leaves the node alone only when its plan is the
// one last applied without error, no recheck was asked for and the
// lifetimes are not due for renewal.
func TestApplyNeeded(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	p := plan{present: []netip.Addr{a}, announce: []netip.Addr{a}, on: map[netip.Addr]string{a: "eth0"}}
	now := time.Now()
	fresh := func() *reconciler {
		return &reconciler{applied: p, appliedOK: true, refreshEvery: time.Minute, refreshed: now}
	}
	if r := fresh(); r.applyNeeded(p, now) {
		t.Error("the same plan, applied without error, is applied again")
	}
	if r := fresh(); !r.applyNeeded(plan{}, now) {
		t.Error("a changed plan is not applied")
	}
	r := fresh()
	r.appliedOK = false
	if !r.applyNeeded(p, now) {
		t.Error("a plan whose last apply failed is not applied again")
	}
	r = fresh()
	r.recheck = true
	if !r.applyNeeded(p, now) {
		t.Error("a recheck does not apply the plan")
	}
	if r := fresh(); !r.applyNeeded(p, now.Add(time.Minute)) {
		t.Error("the plan is not applied when the lifetimes are due")
	}
	if r := (&reconciler{refreshEvery: time.Minute, refreshed: now}); !r.applyNeeded(plan{}, now) {
		t.Error("the first pass does not apply")
	}
}

// addHeld plans a holder's VIPs as add does with planFor's plan.
func TestAddHeldIsPlanForLeading(t *testing.T) {
	vips := []netip.Addr{netip.MustParseAddr("198.51.100.100"), netip.MustParseAddr("2001:db8:100::100")}
	other := []netip.Addr{netip.MustParseAddr("203.0.113.5")}
	var got, want plan
	got.addHeld(other, "eth1")
	got.addHeld(vips, "eth0")
	want.add(planFor(election.Status{Leading: true}, other, false, false, nil), "eth1")
	want.add(planFor(election.Status{Leading: true}, vips, false, false, nil), "eth0")
	if !slices.Equal(got.present, want.present) || !slices.Equal(got.announce, want.announce) || !maps.Equal(got.on, want.on) {
		t.Errorf("addHeld: %+v, planFor and add: %+v", got, want)
	}
}
