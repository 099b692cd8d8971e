package address

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// testNS is a network namespace made for one test.
type testNS struct {
	t    testing.TB
	name string
	ns   *Namespace
}

// newTestNS creates a namespace with two veth pairs, v0-v1 and w0-w1, all
// up, and removes it when the test ends.
func newTestNS(t testing.TB) *testNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := fmt.Sprintf("vipd-addr-%d-%s", os.Getpid(), hex.EncodeToString(b))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })

	tn := &testNS{t: t, name: name}
	tn.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
	tn.ip("link", "add", "w0", "type", "veth", "peer", "name", "w1")
	for _, l := range []string{"lo", "v0", "v1", "w0", "w1"} {
		tn.ip("link", "set", l, "up")
	}

	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("opening namespace %s: %v", name, err)
	}
	t.Cleanup(func() { _ = h.Close() })
	tn.ns, err = Open(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tn.ns.Close)
	return tn
}

// ip runs `ip -n NS args...` and returns its output.
func (tn *testNS) ip(args ...string) string {
	tn.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", tn.name}, args...)...).CombinedOutput()
	if err != nil {
		tn.t.Fatalf("ip -n %s %s: %v: %s", tn.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (tn *testNS) lookup(name string) *Interface {
	tn.t.Helper()
	i, err := tn.ns.Lookup(name)
	if err != nil {
		tn.t.Fatal(err)
	}
	return i
}

// rawAddr is an address as read by the standard library's netlink code, a
// second opinion that does not go through this package.
type rawAddr struct {
	index int
	addr  netip.Addr
	plen  int
	flags uint32
	proto uint8
}

func (tn *testNS) kernelAddrs() []rawAddr {
	tn.t.Helper()
	type result struct {
		addrs []rawAddr
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine rather than
		// going back to the scheduler inside the test namespace.
		runtime.LockOSThread()
		h, err := netns.GetFromName(tn.name)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{err: err}
			return
		}
		b, err := syscall.NetlinkRIB(syscall.RTM_GETADDR, syscall.AF_UNSPEC)
		if err != nil {
			ch <- result{err: err}
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(b)
		if err != nil {
			ch <- result{err: err}
			return
		}
		var out []rawAddr
		for _, m := range msgs {
			if m.Header.Type != syscall.RTM_NEWADDR {
				continue
			}
			attrs, err := syscall.ParseNetlinkRouteAttr(&m)
			if err != nil {
				ch <- result{err: err}
				return
			}
			ra := rawAddr{plen: int(m.Data[1]), flags: uint32(m.Data[2]), index: int(binary.NativeEndian.Uint32(m.Data[4:8]))}
			var local, address netip.Addr
			for _, a := range attrs {
				switch a.Attr.Type {
				case syscall.IFA_LOCAL:
					local, _ = netip.AddrFromSlice(a.Value)
				case syscall.IFA_ADDRESS:
					address, _ = netip.AddrFromSlice(a.Value)
				case unix.IFA_FLAGS:
					ra.flags = binary.NativeEndian.Uint32(a.Value)
				case 11: // IFA_PROTO
					ra.proto = a.Value[0]
				}
			}
			ra.addr = local
			if !ra.addr.IsValid() {
				ra.addr = address
			}
			out = append(out, ra)
		}
		ch <- result{addrs: out}
	}()
	r := <-ch
	if r.err != nil {
		tn.t.Fatalf("dumping addresses in %s: %v", tn.name, r.err)
	}
	return r.addrs
}

func (tn *testNS) kernelEntries(ifc *Interface, vip netip.Addr) []rawAddr {
	var out []rawAddr
	for _, a := range tn.kernelAddrs() {
		if a.index == ifc.Index && a.addr == vip {
			out = append(out, a)
		}
	}
	return out
}

// ipShowsProto reports whether this iproute2 knows address protocols
// (6.2 and later); older ones neither set nor print them.
func ipShowsProto() bool {
	out, _ := exec.Command("ip", "address", "help").CombinedOutput()
	return strings.Contains(string(out), "proto")
}

func TestAddRemoveIPv4(t *testing.T) {
	tn := newTestNS(t)
	v0 := tn.lookup("v0")
	vip := netip.MustParseAddr("192.0.2.10")

	if err := v0.Add(vip); err != nil {
		t.Fatal(err)
	}
	out := tn.ip("-4", "addr", "show", "dev", "v0")
	if !strings.Contains(out, "inet 192.0.2.10/32 scope global v0") {
		t.Fatalf("ip addr does not show 192.0.2.10/32 on v0:\n%s", out)
	}
	if ipShowsProto() && !regexp.MustCompile(`192\.0\.2\.10/32 .*proto (0x76|118)\b`).MatchString(out) {
		t.Errorf("ip addr does not show proto 0x76:\n%s", out)
	}
	ents := tn.kernelEntries(v0, vip)
	if len(ents) != 1 || ents[0].plen != 32 || ents[0].proto != Proto {
		t.Fatalf("kernel entries for %s: %+v, want one /32 with proto %#x", vip, ents, Proto)
	}

	// Idempotent.
	if err := v0.Add(vip); err != nil {
		t.Fatalf("second Add: %v", err)
	}
	if n := len(tn.kernelEntries(v0, vip)); n != 1 {
		t.Fatalf("after second Add: %d entries for %s, want 1", n, vip)
	}
	if has, err := v0.Has(vip); err != nil || !has {
		t.Fatalf("Has(%s) = %v, %v; want true", vip, has, err)
	}
	owned, err := v0.Owned()
	if err != nil || !slices.Equal(owned, []netip.Addr{vip}) {
		t.Fatalf("Owned() = %v, %v; want [%s]", owned, err, vip)
	}

	if err := v0.Remove(vip); err != nil {
		t.Fatal(err)
	}
	if out := tn.ip("addr", "show", "dev", "v0"); strings.Contains(out, "192.0.2.10") {
		t.Fatalf("192.0.2.10 still on v0 after Remove:\n%s", out)
	}
	if err := v0.Remove(vip); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if has, err := v0.Has(vip); err != nil || has {
		t.Fatalf("Has(%s) after Remove = %v, %v; want false", vip, has, err)
	}
}

func TestAddRemoveIPv6(t *testing.T) {
	tn := newTestNS(t)
	v0 := tn.lookup("v0")
	vip := netip.MustParseAddr("2001:db8::10")

	if err := v0.Add(vip); err != nil {
		t.Fatal(err)
	}
	// Usable at once: nodad, and never "tentative".
	out := tn.ip("-6", "addr", "show", "dev", "v0")
	if !regexp.MustCompile(`inet6 2001:db8::10/128 scope global nodad\s`).MatchString(out) {
		t.Fatalf("ip addr does not show 2001:db8::10/128 nodad on v0:\n%s", out)
	}
	if regexp.MustCompile(`2001:db8::10/128[^\n]*tentative`).MatchString(out) {
		t.Fatalf("VIP is tentative:\n%s", out)
	}
	if ipShowsProto() && !regexp.MustCompile(`2001:db8::10/128 .*proto (0x76|118)\b`).MatchString(out) {
		t.Errorf("ip addr does not show proto 0x76:\n%s", out)
	}
	ents := tn.kernelEntries(v0, vip)
	if len(ents) != 1 || ents[0].plen != 128 || ents[0].proto != Proto || ents[0].flags&unix.IFA_F_NODAD == 0 {
		t.Fatalf("kernel entries for %s: %+v, want one /128 nodad with proto %#x", vip, ents, Proto)
	}

	if err := v0.Add(vip); err != nil {
		t.Fatalf("second Add: %v", err)
	}
	owned, err := v0.Owned()
	if err != nil || !slices.Equal(owned, []netip.Addr{vip}) {
		t.Fatalf("Owned() = %v, %v; want [%s]", owned, err, vip)
	}
	if err := v0.Remove(vip); err != nil {
		t.Fatal(err)
	}
	if out := tn.ip("addr", "show", "dev", "v0"); strings.Contains(out, "2001:db8::10") {
		t.Fatalf("2001:db8::10 still on v0 after Remove:\n%s", out)
	}
	if err := v0.Remove(vip); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

// An address the administrator configured is never taken over or removed,
// even when it is exactly the VIP.
func TestForeignAddressLeftAlone(t *testing.T) {
	tn := newTestNS(t)
	v0 := tn.lookup("v0")
	tn.ip("addr", "add", "192.0.2.20/32", "dev", "v0")
	tn.ip("addr", "add", "2001:db8::20/128", "dev", "v0", "nodad")
	tn.ip("addr", "add", "192.0.2.30/24", "dev", "v0") // same IP as a VIP, other prefix

	for _, s := range []string{"192.0.2.20", "2001:db8::20", "192.0.2.30"} {
		vip := netip.MustParseAddr(s)
		if err := v0.Remove(vip); !errors.Is(err, ErrNotOwned) {
			t.Errorf("Remove(%s) = %v, want ErrNotOwned", vip, err)
		}
		if err := v0.Add(vip); !errors.Is(err, ErrNotOwned) {
			t.Errorf("Add(%s) = %v, want ErrNotOwned", vip, err)
		}
		if out := tn.ip("addr", "show", "dev", "v0"); !strings.Contains(out, " "+s+"/") {
			t.Errorf("%s was removed:\n%s", s, out)
		}
		if ents := tn.kernelEntries(v0, vip); len(ents) != 1 || ents[0].proto == Proto {
			t.Errorf("kernel entries for %s: %+v, want the administrator's one only", vip, ents)
		}
		iface, found, err := tn.ns.Conflicts(vip)
		if err != nil || !found || iface != "v0" {
			t.Errorf("Conflicts(%s) = %q, %v, %v; want v0, true", vip, iface, found, err)
		}
	}
	if owned, err := v0.Owned(); err != nil || len(owned) != 0 {
		t.Errorf("Owned() = %v, %v; want none", owned, err)
	}

	// vipd's own VIPs, and absent addresses, are no conflict.
	mine := netip.MustParseAddr("198.51.100.10")
	if err := v0.Add(mine); err != nil {
		t.Fatal(err)
	}
	for _, vip := range []netip.Addr{mine, netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("2001:db8::99")} {
		if iface, found, err := tn.ns.Conflicts(vip); err != nil || found {
			t.Errorf("Conflicts(%s) = %q, %v, %v; want no conflict", vip, iface, found, err)
		}
	}
}

// AddListed adds what a listing shows absent without looking again, and
// treats what it shows present, or what appeared after it, as Add does:
// the administrator's address is refused and left alone, vipd's own is
// kept.
func TestAddListed(t *testing.T) {
	tn := newTestNS(t)
	v0 := tn.lookup("v0")
	tn.ip("addr", "add", "192.0.2.30/24", "dev", "v0") // same IP as a VIP, other prefix
	before, err := tn.ns.List()
	if err != nil {
		t.Fatal(err)
	}
	// Appear after the listing: another tool's, then vipd's own.
	tn.ip("addr", "add", "192.0.2.40/32", "dev", "v0")
	mine := netip.MustParseAddr("198.51.100.11")
	if err := v0.Add(mine); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		vip     string
		foreign bool
	}{
		{"192.0.2.30", true},     // in the listing, not vipd's
		{"192.0.2.40", true},     // added by someone else since
		{"198.51.100.11", false}, // added by vipd since
		{"198.51.100.12", false}, // absent
		{"2001:db8::12", false},  // absent
	} {
		vip := netip.MustParseAddr(c.vip)
		err := v0.AddListed(vip, before)
		if c.foreign {
			if !errors.Is(err, ErrNotOwned) {
				t.Errorf("AddListed(%s) = %v, want ErrNotOwned", vip, err)
			}
			if ents := tn.kernelEntries(v0, vip); len(ents) != 1 || ents[0].proto == Proto {
				t.Errorf("kernel entries for %s: %+v, want the administrator's one only", vip, ents)
			}
			continue
		}
		if err != nil {
			t.Errorf("AddListed(%s) = %v", vip, err)
		}
		if ents := tn.kernelEntries(v0, vip); len(ents) != 1 || ents[0].proto != Proto {
			t.Errorf("kernel entries for %s: %+v, want vipd's one", vip, ents)
		}
	}
	after, err := tn.ns.List()
	if err != nil {
		t.Fatal(err)
	}
	var owned []string
	for _, o := range after.Owned() {
		owned = append(owned, o.Addr.String()+"@"+o.Interface)
	}
	if want := []string{"198.51.100.11@v0", "198.51.100.12@v0", "2001:db8::12@v0"}; !slices.Equal(owned, want) {
		t.Errorf("owned after: %v, want %v", owned, want)
	}
	if !after.On(v0.Index, netip.MustParseAddr("192.0.2.30")) || after.On(v0.Index, netip.MustParseAddr("192.0.2.99")) {
		t.Error("On does not tell the listed addresses")
	}
}

// A restarted agent finds the VIPs an earlier run left behind, and only
// those, and can clean them up.
func TestOwnedAfterRestart(t *testing.T) {
	tn := newTestNS(t)
	vips := []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}
	for _, vip := range vips {
		if err := tn.lookup("v0").Add(vip); err != nil {
			t.Fatal(err)
		}
	}
	if err := tn.lookup("w0").Add(netip.MustParseAddr("198.51.100.10")); err != nil {
		t.Fatal(err)
	}
	tn.ip("addr", "add", "192.0.2.2/24", "dev", "v0")

	// A new agent: fresh sockets, fresh lookup.
	h, err := netns.GetFromName(tn.name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ns2, err := Open(h)
	if err != nil {
		t.Fatal(err)
	}
	defer ns2.Close()
	v0, err := ns2.Lookup("v0")
	if err != nil {
		t.Fatal(err)
	}
	owned, err := v0.Owned()
	if err != nil || !slices.Equal(owned, vips) {
		t.Fatalf("Owned() = %v, %v; want %v", owned, err, vips)
	}
	for _, vip := range owned {
		if err := v0.Remove(vip); err != nil {
			t.Fatal(err)
		}
	}
	out := tn.ip("addr", "show", "dev", "v0")
	if strings.Contains(out, "192.0.2.10") || strings.Contains(out, "2001:db8::10") {
		t.Fatalf("stale VIPs still on v0:\n%s", out)
	}
	if !strings.Contains(out, "inet 192.0.2.2/24") {
		t.Fatalf("administrator's address was removed:\n%s", out)
	}
	if owned, err := v0.Owned(); err != nil || len(owned) != 0 {
		t.Fatalf("Owned() after cleanup = %v, %v; want none", owned, err)
	}
}

func TestLookupMissing(t *testing.T) {
	tn := newTestNS(t)
	_, err := tn.ns.Lookup("eth9")
	if err == nil || !strings.Contains(err.Error(), `interface "eth9" not found`) {
		t.Fatalf("Lookup(eth9) error = %v, want it to name the missing interface", err)
	}
	v0 := tn.lookup("v0")
	if v0.Name != "v0" || v0.Index == 0 || len(v0.HardwareAddr) != 6 || v0.Net().Name != "v0" {
		t.Fatalf("Lookup(v0) = %+v", v0)
	}
}

func TestDetect(t *testing.T) {
	tn := newTestNS(t)
	detect := func() (string, error) {
		i, err := tn.ns.Detect()
		if err != nil {
			return "", err
		}
		return i.Name, nil
	}
	wantName := func(step, want string) {
		t.Helper()
		got, err := detect()
		if err != nil || got != want {
			t.Fatalf("%s: Detect() = %q, %v; want %s", step, got, err, want)
		}
	}
	wantErr := func(step string, contains ...string) {
		t.Helper()
		got, err := detect()
		if err == nil {
			t.Fatalf("%s: Detect() = %q, want an error", step, got)
		}
		for _, c := range contains {
			if !strings.Contains(err.Error(), c) {
				t.Fatalf("%s: Detect() error %q does not mention %q", step, err, c)
			}
		}
	}

	wantErr("nothing configured", "name the interface")

	// Only one interface with an address; vipd's own VIPs do not count.
	tn.ip("addr", "add", "192.0.2.2/24", "dev", "v0")
	if err := tn.lookup("w0").Add(netip.MustParseAddr("198.51.100.10")); err != nil {
		t.Fatal(err)
	}
	wantName("single addressed interface", "v0")

	tn.ip("addr", "add", "198.51.100.2/24", "dev", "w0")
	wantErr("two addressed interfaces", "v0", "w0", "name the interface")

	tn.ip("route", "add", "default", "via", "198.51.100.1", "dev", "w0")
	wantName("IPv4 default route", "w0")

	// The lowest metric wins; equal metrics on two interfaces are ambiguous.
	tn.ip("route", "add", "default", "via", "192.0.2.1", "dev", "v0", "metric", "10")
	wantName("lower metric", "w0")
	tn.ip("route", "del", "default", "via", "198.51.100.1", "dev", "w0")
	wantName("only default route", "v0")
	tn.ip("route", "append", "default", "via", "198.51.100.1", "dev", "w0", "metric", "10")
	wantErr("equal metrics", "v0", "w0", "name the interface")
	tn.ip("-4", "route", "flush", "default")

	// IPv6 only.
	tn.ip("addr", "add", "2001:db8:1::2/64", "dev", "w0", "nodad")
	tn.ip("-6", "route", "add", "default", "via", "2001:db8:1::1", "dev", "w0")
	wantName("IPv6 default route", "w0")

	// IPv4 is preferred over IPv6.
	tn.ip("route", "add", "default", "via", "192.0.2.1", "dev", "v0")
	wantName("IPv4 and IPv6 default routes", "v0")
}

// The package-level functions work in the namespace of the calling thread,
// as vipd uses them in production.
func TestCurrentNamespace(t *testing.T) {
	tn := newTestNS(t)
	tn.ip("addr", "add", "192.0.2.20/32", "dev", "v0")
	vip := netip.MustParseAddr("192.0.2.10")

	type result struct {
		owned    []netip.Addr
		conflict string
		err      error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		h, err := netns.GetFromName(tn.name)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{err: err}
			return
		}
		v0, err := Lookup("v0")
		if err != nil {
			ch <- result{err: err}
			return
		}
		if err := v0.Add(vip); err != nil {
			ch <- result{err: err}
			return
		}
		owned, err := v0.Owned()
		if err != nil {
			ch <- result{err: err}
			return
		}
		iface, _, err := Conflicts(netip.MustParseAddr("192.0.2.20"))
		ch <- result{owned: owned, conflict: iface, err: err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !slices.Equal(r.owned, []netip.Addr{vip}) || r.conflict != "v0" {
		t.Fatalf("Owned() = %v, Conflicts(192.0.2.20) = %q; want [%s], v0", r.owned, r.conflict, vip)
	}
	if ents := tn.kernelEntries(tn.lookup("v0"), vip); len(ents) != 1 || ents[0].proto != Proto {
		t.Fatalf("kernel entries for %s: %+v", vip, ents)
	}
}
