package lab

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestSecondSegment: the listed nodes have an eth1 on a segment of its own
// that c2 reaches and c1 does not, the others have no eth1, and a node's
// link there goes down and up.
func TestSecondSegment(t *testing.T) {
	l := newLab(t, Options{Nodes: 3, Segment2Nodes: []int{1, 2}})
	ctx := testCtx(t)
	if l.Client2 == nil {
		t.Fatal("no Client2")
	}
	for _, n := range l.Nodes[:2] {
		for _, a := range []netip.Addr{n.Eth1IPv4, n.Eth1IPv6} {
			if err := l.Client2.Ping(ctx, a); err != nil {
				t.Errorf("c2 does not reach %s's eth1 %s: %v", n.Name, a, err)
			}
		}
	}
	n3 := l.Nodes[2]
	if n3.Eth1IPv4.IsValid() {
		t.Errorf("n3 has an eth1 address %s", n3.Eth1IPv4)
	}
	if out, err := l.Exec(ctx, n3.Netns, "ip", "link", "show", "eth1"); err == nil {
		t.Errorf("n3 has an eth1: %s", out)
	}
	if err := n3.Segment2Link(false); err == nil {
		t.Error("Segment2Link on a node off the second segment succeeded")
	}
	// The segments are apart.
	if err := l.Client.Ping(ctx, l.Client2.IPv4); err == nil {
		t.Errorf("c1 reaches c2 (%s)", l.Client2.IPv4)
	}
	n1 := l.Nodes[0]
	if err := n1.Segment2Link(false); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "n1's eth1 loses carrier", func() error {
		out, err := l.Exec(ctx, n1.Netns, "ip", "link", "show", "eth1")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "NO-CARRIER") {
			return errors.New("eth1 still has carrier: " + out)
		}
		return nil
	})
	if err := n1.Segment2Link(true); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "c2 reaches n1 again", func() error { return l.Client2.Ping(ctx, n1.Eth1IPv4) })
}
