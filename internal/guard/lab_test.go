package guard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/vipd/vipd/internal/lab"
)

var (
	vip4   = netip.MustParseAddr("198.51.100.100")
	vip6   = netip.MustParseAddr("2001:db8:100::100")
	other4 = netip.MustParseAddr("198.51.100.101")
	nodeA4 = netip.MustParseAddr("198.51.100.1")
	nodeB4 = netip.MustParseAddr("198.51.100.2")
	nodeB6 = netip.MustParseAddr("2001:db8:100::2")
)

// pair is two namespaces joined by the veth pair a0-b0: A holds the VIPs
// on a0 and runs the guard, B asks who has them.
type pair struct {
	t    testing.TB
	a, b string
	aNS  netns.NsHandle
}

func newPair(t testing.TB) *pair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	rb := make([]byte, 3)
	_, _ = rand.Read(rb)
	suffix := fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(rb))
	p := &pair{t: t, a: "vipd-guardA-" + suffix, b: "vipd-guardB-" + suffix}
	for _, ns := range []string{p.a, p.b} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		// Link-local addresses usable at once: set before the links exist.
		p.exec(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	run(t, "ip", "-n", p.a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", p.b)
	for _, c := range [][]string{
		{p.a, "link", "set", "lo", "up"},
		{p.a, "link", "set", "a0", "up"},
		{p.b, "link", "set", "b0", "up"},
		{p.a, "addr", "add", "198.51.100.1/24", "dev", "a0"},
		{p.a, "addr", "add", "2001:db8:100::1/64", "dev", "a0", "nodad"},
		{p.a, "addr", "add", vip4.String() + "/32", "dev", "a0"},
		{p.a, "addr", "add", vip6.String() + "/128", "dev", "a0", "nodad"},
		{p.b, "addr", "add", nodeB4.String() + "/24", "dev", "b0"},
		{p.b, "addr", "add", nodeB6.String() + "/64", "dev", "b0", "nodad"},
	} {
		run(t, "ip", append([]string{"-n", c[0]}, c[1:]...)...)
	}
	h, err := netns.GetFromName(p.a)
	if err != nil {
		t.Fatalf("opening namespace %s: %v", p.a, err)
	}
	p.aNS = h
	t.Cleanup(func() { _ = h.Close() })
	for _, l := range []struct{ ns, dev string }{{p.a, "a0"}, {p.b, "b0"}} {
		eventually(t, 5*time.Second, "a link-local address on "+l.dev, func() bool {
			out := run(t, "ip", "-n", l.ns, "-6", "-o", "addr", "show", "dev", l.dev, "scope", "link")
			return strings.Contains(out, "fe80") && !strings.Contains(out, "tentative")
		})
	}
	return p
}

// guard starts a Guard in A, closed when the test ends.
func (p *pair) guard(opts Options) *Guard {
	p.t.Helper()
	opts.Log = slog.New(slog.NewTextHandler(p.t.Output(), nil))
	g, err := NewAt(p.aNS, opts)
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() {
		if err := g.Close(); err != nil {
			p.t.Errorf("Close: %v", err)
		}
	})
	return g
}

func (p *pair) exec(ns string, args ...string) string {
	p.t.Helper()
	return run(p.t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// sendFrom sends one UDP datagram from src in A to dst, so that A's kernel
// resolves dst with src as its source address.
func (p *pair) sendFrom(src, dst netip.Addr) {
	p.t.Helper()
	err := lab.InNetns(p.a, func() error {
		c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	})
	if err != nil {
		p.t.Fatalf("sending from %s to %s: %v", src, dst, err)
	}
}

// ruleset is what `nft -j list ruleset` shows in A of the guard's tables.
type ruleset struct {
	tables []string            // "arp vipd", "ip6 vipd"
	elems  map[string][]string // "arp guarded" -> members
	drops  map[string]int      // rule comment -> packets counted
}

func (p *pair) ruleset() ruleset {
	p.t.Helper()
	out := p.exec(p.a, "nft", "-j", "list", "ruleset")
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		p.t.Fatalf("parsing nft -j output: %v\n%s", err, out)
	}
	rs := ruleset{elems: map[string][]string{}, drops: map[string]int{}}
	for _, obj := range doc.Nftables {
		var o struct {
			Family, Name, Table, Comment string
			Elem                         []json.RawMessage
			Expr                         []map[string]json.RawMessage
		}
		for kind, raw := range obj {
			if kind != "table" && kind != "set" && kind != "rule" {
				continue
			}
			if err := json.Unmarshal(raw, &o); err != nil {
				p.t.Fatalf("parsing nft -j %s: %v", kind, err)
			}
			switch {
			case kind == "table" && strings.HasPrefix(o.Name, TableName):
				rs.tables = append(rs.tables, o.Family+" "+o.Name)
			case kind == "set" && o.Table == TableName:
				key := o.Family + " " + o.Name
				rs.elems[key] = []string{}
				for _, e := range o.Elem {
					rs.elems[key] = append(rs.elems[key], elemValue(p.t, e))
				}
			case kind == "rule" && o.Table == TableName:
				for _, e := range o.Expr {
					var c struct{ Packets int }
					if raw, ok := e["counter"]; ok && json.Unmarshal(raw, &c) == nil {
						rs.drops[o.Comment] += c.Packets
					}
				}
			}
		}
	}
	slices.Sort(rs.tables)
	return rs
}

// elemValue reads a set element: a bare value, or an object with a
// timeout; a number comes back as its decimal text.
func elemValue(t testing.TB, raw json.RawMessage) string {
	var o struct{ Elem struct{ Val json.RawMessage } }
	if json.Unmarshal(raw, &o) == nil && o.Elem.Val != nil {
		raw = o.Elem.Val
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		t.Fatalf("parsing set element %s: %v", raw, err)
	}
	return n.String()
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func set(t testing.TB, g *Guard, guarded, answer []netip.Addr) {
	t.Helper()
	if err := g.Set(guarded, answer); err != nil {
		t.Fatal(err)
	}
}

// expect asks once and fails the test unless the answer is as wanted.
// A silent node is given 100ms to prove it; an answer takes microseconds.
func expect(t *testing.T, a asker, vip netip.Addr, want bool, when string) {
	t.Helper()
	got, err := a.ask(vip, 100*time.Millisecond)
	if err != nil {
		t.Fatalf("asking for %s %s: %v", vip, when, err)
	}
	if got != want {
		t.Fatalf("%s answered=%v %s, want %v", vip, got, when, want)
	}
}

// firstSilence asks for vip every 5ms until A no longer answers. It
// returns when the first unanswered question was sent and when the last
// answered one was, both counted from since.
func firstSilence(a asker, vip netip.Addr, since time.Time) (silent, lastAnswer time.Duration, err error) {
	for {
		at := time.Since(since)
		if at > 2*time.Second {
			return 0, 0, fmt.Errorf("%s still answered %v later", vip, at)
		}
		ok, err := a.ask(vip, 30*time.Millisecond)
		if err != nil {
			return 0, 0, err
		}
		if !ok {
			return at, lastAnswer, nil
		}
		lastAnswer = at
		time.Sleep(time.Until(since.Add(at + 5*time.Millisecond)))
	}
}
