package guard

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestMembers(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		guarded, answer      []netip.Addr
		wantGuarded, wantAns []netip.Addr
		wantErr              string
	}{
		{name: "none"},
		{
			name:        "answered VIPs are guarded too, each once, sorted",
			guarded:     addrs("2001:db8::1", "198.51.100.2", "198.51.100.1", "198.51.100.2"),
			answer:      addrs("198.51.100.3", "198.51.100.1"),
			wantGuarded: addrs("198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::1"),
			wantAns:     addrs("198.51.100.1", "198.51.100.3"),
		},
		{
			name:        "IPv4-mapped IPv6 is IPv4",
			guarded:     addrs("::ffff:198.51.100.1"),
			answer:      addrs("::ffff:198.51.100.1"),
			wantGuarded: addrs("198.51.100.1"),
			wantAns:     addrs("198.51.100.1"),
		},
		{name: "invalid", guarded: []netip.Addr{{}}, wantErr: "guarded VIP invalid IP: not an IP address"},
		{name: "zone", answer: addrs("2001:db8::1%eth0"), wantErr: "answered VIP 2001:db8::1%eth0: scoped to a zone"},
		{name: "multicast", guarded: addrs("ff02::1"), wantErr: "multicast"},
		{name: "link-local", guarded: addrs("fe80::1"), wantErr: "link-local"},
		{name: "loopback", answer: addrs("127.0.0.1"), wantErr: "loopback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gs, as, err := members(tc.guarded, tc.answer)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(gs, tc.wantGuarded) || !slices.Equal(as, tc.wantAns) {
				t.Errorf("members = %v, %v; want %v, %v", gs, as, tc.wantGuarded, tc.wantAns)
			}
		})
	}
}

func TestPickAndElements(t *testing.T) {
	all := addrs("198.51.100.1", "2001:db8::1", "198.51.100.2")
	fams := newFamilies(TableName)
	if got, want := pick(all, fams[0]), addrs("198.51.100.1", "198.51.100.2"); !slices.Equal(got, want) {
		t.Errorf("ARP table gets %v, want %v", got, want)
	}
	if got, want := pick(all, fams[1]), addrs("2001:db8::1"); !slices.Equal(got, want) {
		t.Errorf("ip6 table gets %v, want %v", got, want)
	}
	els := elements(all, 1500*time.Millisecond)
	for i, e := range els {
		if got, _ := netip.AddrFromSlice(e.Key); got != all[i] || len(e.Key) != all[i].BitLen()/8 {
			t.Errorf("element %d key %x, want %s in %d bytes", i, e.Key, all[i], all[i].BitLen()/8)
		}
		if e.Timeout != 1500*time.Millisecond {
			t.Errorf("element %d timeout %v, want 1.5s", i, e.Timeout)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []Options{{AnswerTimeout: time.Microsecond}, {AnswerTimeout: -time.Second}, {GuardTimeout: -time.Second}} {
		if g, err := New(o); err == nil {
			_ = g.Close()
			t.Errorf("New(%+v) succeeded, want an error", o)
		}
	}
}
