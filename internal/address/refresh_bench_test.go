package address

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkRefreshAll renews the lifetimes of n VIPs of one family on one
// interface, as a holder does every 3/8 of --vip-lifetime. The kernel
// rechecks the lifetimes of addresses after each renewal (IPv6: every
// address of the namespace; IPv4: every address it knows), so the cost
// per address grows with the number of addresses: the ns/addr metric
// shows by how much.
func BenchmarkRefreshAll(b *testing.B) {
	for _, fam := range []string{"ipv4", "ipv6"} {
		sizes := []int{100, 300, 700}
		if fam == "ipv6" {
			sizes = append(sizes, 2000) // a node holding every VIP of one election for all Services
		}
		for _, n := range sizes {
			b.Run(fmt.Sprintf("%s/%d", fam, n), func(b *testing.B) {
				tn := newTestNS(b)
				ifc := tn.lookup("v0")
				// Long enough that nothing expires while the benchmark
				// runs; the kernel's work per renewal is the same.
				ifc.Lifetime = time.Minute
				vips := benchAddrs(fam, n)
				l, err := tn.ns.List()
				if err != nil {
					b.Fatal(err)
				}
				for _, v := range vips {
					if err := ifc.AddListed(v, l); err != nil {
						b.Fatal(err)
					}
				}
				b.ResetTimer()
				for b.Loop() {
					if fails := ifc.RefreshAll(vips); len(fails) > 0 {
						b.Fatalf("%d renewals failed, e.g. %v", len(fails), fails)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/addr")
			})
		}
	}
}

// benchAddrs returns n addresses of fam from the documentation ranges.
func benchAddrs(fam string, n int) []netip.Addr {
	out := make([]netip.Addr, 0, n)
	for i := range n {
		if fam == "ipv4" {
			// The three IPv4 documentation /24s hold 762.
			base := [3][3]byte{{192, 0, 2}, {198, 51, 100}, {203, 0, 113}}[i/254%3]
			out = append(out, netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(1 + i%254)}))
			continue
		}
		out = append(out, netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x", i+1)))
	}
	return out
}
