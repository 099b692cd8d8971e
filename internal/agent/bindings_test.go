package agent

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/vipd/vipd/internal/services"
)

func TestBindingsFor(t *testing.T) {
	cp := netip.MustParseAddr("198.51.100.100")
	a := netip.MustParseAddr("192.0.2.10")
	b := netip.MustParseAddr("203.0.113.7")
	v6 := netip.MustParseAddr("2001:db8::10")
	addrs := []services.Address{
		{IP: a},
		{IP: b, Candidates: []string{"n2"}},
		{IP: cp, Services: []types.NamespacedName{{Namespace: "web", Name: "api"}}}, // sharing the control-plane VIP
		{IP: v6},
	}
	type want struct {
		contest    string
		vips       []netip.Addr
		candidates []string
	}
	check := func(t *testing.T, got []binding, ws []want) {
		t.Helper()
		if len(got) != len(ws) {
			t.Fatalf("got %d bindings %+v, want %d", len(got), got, len(ws))
		}
		for i, w := range ws {
			g := got[i]
			if g.contest != w.contest || !slices.Equal(g.vips, w.vips) || !slices.Equal(g.candidates, w.candidates) {
				t.Errorf("binding %d = %+v, want %+v", i, g, w)
			}
		}
	}
	settings := func(perAddress bool, cpVIPs ...netip.Addr) contestSettings {
		return contestSettings{cpLease: "plndr-cp-lock", cpVIPs: cpVIPs, svcLease: "plndr-svcs-lock", perAddress: perAddress,
			iface: "eth0", svcIface: "eth0"}
	}
	t.Run("per address", func(t *testing.T) {
		check(t, bindingsFor(settings(true, cp), addrs, nil, nil), []want{
			{"plndr-cp-lock", []netip.Addr{cp}, nil},
			{"vipd-svc-192-0-2-10", []netip.Addr{a}, nil},
			{"vipd-svc-203-0-113-7", []netip.Addr{b}, []string{"n2"}},
			{"vipd-svc-2001-0db8-0000-0000-0000-0000-0000-0010", []netip.Addr{v6}, nil},
		})
	})
	t.Run("one for all", func(t *testing.T) {
		check(t, bindingsFor(settings(false, cp), addrs, nil, nil), []want{
			{"plndr-cp-lock", []netip.Addr{cp}, nil},
			{"vipd-svc-203-0-113-7", []netip.Addr{b}, []string{"n2"}},
			{"plndr-svcs-lock", []netip.Addr{a, v6}, nil},
		})
	})
	t.Run("Services are carried", func(t *testing.T) {
		got := bindingsFor(settings(false, cp), addrs, nil, nil)
		if svcs := got[0].allServices(); len(svcs) != 1 || svcs[0].String() != "web/api" || !got[0].cpVIP(cp) {
			t.Errorf("control-plane binding: Services %v, cpVIP %v; want [web/api], true", svcs, got[0].cpVIP(cp))
		}
		if got[2].cpVIP(a) || len(got[2].allServices()) != 0 {
			t.Errorf("services binding: %+v", got[2])
		}
	})
	t.Run("services only", func(t *testing.T) {
		got := bindingsFor(settings(false), addrs[:1], nil, nil)
		check(t, got, []want{{"plndr-svcs-lock", []netip.Addr{a}, nil}})
	})
	t.Run("interfaces and pools", func(t *testing.T) {
		pooled := netip.MustParseAddr("192.0.2.20")
		other := netip.MustParseAddr("192.0.2.30")
		same := netip.MustParseAddr("192.0.2.40")
		s := settings(false, cp)
		s.svcIface = "eth1"
		got := bindingsFor(s, []services.Address{
			{IP: a},
			{IP: pooled, Pool: "edge", NodeSelector: "zone=a"},
			{IP: other, Interface: "vlan7"},
			{IP: same, Interface: "eth1"},
			{IP: cp, Interface: "vlan7"}, // rides on the control plane, on its interface
		}, nil, nil)
		type where struct{ contest, iface, needs, selector string }
		var gotW []where
		for _, b := range got {
			gotW = append(gotW, where{b.contest, b.iface, b.needs, b.selector})
		}
		wantW := []where{
			{"plndr-cp-lock", "eth0", "", ""},
			{"vipd-svc-192-0-2-20", "eth1", "eth1", "zone=a"},
			{"vipd-svc-192-0-2-30", "vlan7", "vlan7", ""},
			{"plndr-svcs-lock", "eth1", "eth1", ""},
		}
		if !slices.Equal(gotW, wantW) {
			t.Errorf("bindings\n got %+v\nwant %+v", gotW, wantW)
		}
		if !slices.Equal(got[3].vips, []netip.Addr{a, same}) {
			t.Errorf("one-for-all binding carries %v, want %v", got[3].vips, []netip.Addr{a, same})
		}
	})
}

// TestBindingMemo: with a memo, an unchanged address keeps its binding,
// a changed one gets a new one, and the result is what no memo gives.
func TestBindingMemo(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	web := []types.NamespacedName{{Namespace: "x", Name: "web"}}
	addrs := []services.Address{{IP: a, Services: web}, {IP: b, Services: web}}
	set := contestSettings{cpLease: "cp", svcLease: "svcs", perAddress: true, iface: "eth0", svcIface: "eth0"}
	var memo bindingMemo
	first := bindingsFor(set, addrs, &memo, nil)
	changed := []services.Address{{IP: a, Services: web}, {IP: b, Services: web, Candidates: []string{"n2"}}}
	second := bindingsFor(set, changed, &memo, nil)
	if !reflect.DeepEqual(second, bindingsFor(set, changed, nil, nil)) {
		t.Fatalf("with a memo %+v, without %+v", second, bindingsFor(set, changed, nil, nil))
	}
	if reflect.ValueOf(first[0].vips).Pointer() != reflect.ValueOf(second[0].vips).Pointer() {
		t.Error("an unchanged address got a new binding")
	}
	if !slices.Equal(second[1].candidates, []string{"n2"}) {
		t.Errorf("a changed address kept its old binding: %+v", second[1])
	}
	moved := []services.Address{{IP: a, Services: web, Interface: "vlan7"}, changed[1]}
	if third := bindingsFor(set, moved, &memo, nil); third[0].iface != "vlan7" || third[0].needs != "vlan7" {
		t.Errorf("an address moved to another interface kept its old binding: %+v", third[0])
	}
	bindingsFor(set, changed[:1], &memo, nil)
	if _, ok := memo.entries[b]; ok || len(memo.entries) != 1 {
		t.Errorf("the memo keeps an address that is gone: %v", memo.entries)
	}
}

// TestBindingsInBuffer: bindings made in the buffer of an earlier round
// are what a fresh slice gives, in the buffer's array, and nothing of the
// earlier round stays in it (setBindings reuses the bindings of two rounds
// ago).
func TestBindingsInBuffer(t *testing.T) {
	set := contestSettings{cpLease: "cp", svcLease: "svcs", perAddress: true, iface: "eth0", svcIface: "eth0"}
	web := []types.NamespacedName{{Namespace: "x", Name: "web"}}
	var many, few []services.Address
	for i := range 5 {
		many = append(many, services.Address{IP: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), Services: web})
	}
	few = append(few, services.Address{IP: netip.MustParseAddr("198.51.100.7"), Services: web, Candidates: []string{"n2"}})
	var memo bindingMemo
	buf := bindingsFor(set, many, &memo, nil)
	got := bindingsFor(set, few, &memo, buf)
	if want := bindingsFor(set, few, nil, nil); !reflect.DeepEqual(got, want) {
		t.Fatalf("made in a used buffer: %+v, want %+v", got, want)
	}
	if &got[0] != &buf[0] {
		t.Error("the buffer, which had room, was not used")
	}
	for i, b := range buf[len(got):cap(buf)] {
		if !reflect.DeepEqual(b, binding{}) {
			t.Errorf("buffer entry %d past the result still holds %+v", len(got)+i, b)
		}
	}
}
