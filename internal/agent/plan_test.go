package agent

import (
	"net/netip"
	"slices"
	"testing"

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
