package agent

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/vipd/vipd/internal/election"
)

// TestHolderChangedLevel: another node taking the control-plane VIP, or a
// shared election's VIPs, is logged at info on every agent; a per-address
// Service VIP changing hands only at debug (the new holder logs "took
// VIP"), so a lost node's hundred VIPs do not make every agent log two
// hundred lines.
func TestHolderChangedLevel(t *testing.T) {
	for _, c := range []struct {
		b    binding
		want string
	}{
		{binding{contest: "plndr-cp-lock", vips: []netip.Addr{netip.MustParseAddr("198.51.100.100")}, controlPlane: true}, "level=INFO"},
		{binding{contest: "plndr-svcs-lock", vips: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}}, "level=INFO"},
		{binding{contest: contestFor(netip.MustParseAddr("192.0.2.3")), vips: []netip.Addr{netip.MustParseAddr("192.0.2.3")}}, "level=DEBUG"},
	} {
		var buf bytes.Buffer
		o := &observer{log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
		o.changed(c.b, election.Status{Leader: "n1"}, election.Status{Leader: "n2"})
		line := buf.String()
		if !strings.Contains(line, `msg="VIP holder changed"`) || !strings.Contains(line, c.want) {
			t.Errorf("%s: logged %q, want %s", c.b.contest, line, c.want)
		}
	}
}
