package address

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// validLifetimes reads what the kernel says is left of each address's
// valid lifetime on dev, in seconds (forever: 4294967295).
func (tn *testNS) validLifetimes(dev string) map[netip.Addr]int {
	tn.t.Helper()
	var out []struct {
		AddrInfo []struct {
			Local string `json:"local"`
			Valid int    `json:"valid_life_time"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(tn.ip("-j", "addr", "show", "dev", dev)), &out); err != nil {
		tn.t.Fatal(err)
	}
	m := map[netip.Addr]int{}
	for _, l := range out {
		for _, a := range l.AddrInfo {
			m[netip.MustParseAddr(a.Local)] = a.Valid
		}
	}
	return m
}

// TestRefreshAll: the lifetimes of 200 VIPs (two batches) are all renewed,
// not only those whose request asked for an answer; in a batch where one
// request fails, that one is reported and the others are renewed.
func TestRefreshAll(t *testing.T) {
	tn := newTestNS(t)
	v0, err := tn.ns.Lookup("v0")
	if err != nil {
		t.Fatal(err)
	}
	v0.Lifetime = 5 * time.Second
	var vips []netip.Addr
	for i := range 200 {
		vips = append(vips, netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}))
	}
	vips = append(vips, netip.MustParseAddr("2001:db8::1"))
	for _, v := range vips {
		if err := v0.Add(v); err != nil {
			t.Fatal(err)
		}
	}
	v0.Lifetime = time.Minute
	if fails := v0.RefreshAll(vips); len(fails) > 0 {
		t.Fatalf("refreshing: %v", fails)
	}
	got := tn.validLifetimes("v0")
	for _, v := range vips {
		if got[v] < 50 || got[v] > 60 {
			t.Errorf("%s: valid for %ds after the refresh, want about 60", v, got[v])
		}
	}

	// IPv6 turned off on w0: the IPv6 VIP in the middle of the batch is
	// refused, the IPv4 ones around it are renewed.
	w0, err := tn.ns.Lookup("w0")
	if err != nil {
		t.Fatal(err)
	}
	w0.Lifetime = 5 * time.Second
	a, b, six := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("2001:db8::2")
	for _, v := range []netip.Addr{a, b} {
		if err := w0.Add(v); err != nil {
			t.Fatal(err)
		}
	}
	tn.ip("netns", "exec", tn.name, "sysctl", "-q", "-w", "net.ipv6.conf.w0.disable_ipv6=1")
	w0.Lifetime = time.Minute
	fails := w0.RefreshAll([]netip.Addr{a, six, b})
	if len(fails) != 1 || fails[six] == nil {
		t.Fatalf("failures %v, want only %s's", fails, six)
	}
	if !errors.Is(fails[six], unix.EACCES) {
		t.Errorf("%s: %v, want the kernel's EACCES", six, fails[six])
	}
	got = tn.validLifetimes("w0")
	for _, v := range []netip.Addr{a, b} {
		if got[v] < 50 {
			t.Errorf("%s: valid for %ds after the refresh, want about 60", v, got[v])
		}
	}
}
