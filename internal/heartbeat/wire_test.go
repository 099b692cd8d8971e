package heartbeat

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestBeatRoundTrip(t *testing.T) {
	for _, b := range []beat{
		{Cluster: "kube-system@198.51.100.2", Node: "n1", Incarnation: 1, Seq: 1},
		{Cluster: "c", Node: "node-with-a-long-name", Incarnation: ^uint64(0), Seq: 1 << 40, State: State{APIOK: true}},
		{Cluster: "c", Node: "n", State: State{Live: true}},
		{Cluster: strings.Repeat("c", maxName), Node: strings.Repeat("n", maxName), State: State{APIOK: true, Live: true}},
	} {
		p := appendBeat(nil, b)
		if !bytes.HasPrefix(p, []byte("VIPDHB1")) {
			t.Errorf("%+v encodes to %q..., want the VIPDHB1 prefix", b, p[:min(len(p), 7)])
		}
		if len(p) > MaxBeatLen {
			t.Errorf("%+v encodes to %d bytes, more than MaxBeatLen %d", b, len(p), MaxBeatLen)
		}
		got, err := decodeBeat(p)
		if err != nil {
			t.Errorf("decoding %+v: %v", b, err)
			continue
		}
		if got != b {
			t.Errorf("round trip: got %+v, want %+v", got, b)
		}
	}
}

func TestBeatLayout(t *testing.T) {
	p := appendBeat(nil, beat{Cluster: "ab", Node: "n1", Incarnation: 0x0102030405060708, Seq: 9, State: State{APIOK: true, Live: true}})
	want := []byte("VIPDHB1\x03\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x00\x00\x00\x00\x09\x02ab\x02n1")
	if !bytes.Equal(p, want) {
		t.Fatalf("encoding:\n got %q\nwant %q", p, want)
	}
	// Unknown flag bits are ignored, for flags added later within version 1.
	p[7] |= 0xf0
	b, err := decodeBeat(p)
	if err != nil || b.State != (State{APIOK: true, Live: true}) {
		t.Fatalf("with unknown flag bits: %+v, %v", b, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := appendBeat(nil, beat{Cluster: "c", Node: "n1", Incarnation: 7, Seq: 3})
	mutate := func(f func(p []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	for _, tc := range []struct {
		name string
		p    []byte
		want error
	}{
		{"empty", nil, errShort},
		{"one byte", []byte{'V'}, errShort},
		{"header only", good[:headerLen], errShort},
		{"bad magic", mutate(func(p []byte) []byte { p[0] = 'X'; return p }), errMagic},
		{"other protocol", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), errMagic},
		{"version 2", mutate(func(p []byte) []byte { p[6] = '2'; return p }), errVersion},
		{"cluster length past end", mutate(func(p []byte) []byte { p[headerLen] = 200; return p }), errLength},
		{"node length past end", mutate(func(p []byte) []byte { p[headerLen+2] = 3; return p }), errLength},
		{"node cut", good[:len(good)-1], errLength},
		{"trailing byte", append(append([]byte(nil), good...), 0), errLength},
		{"empty node", mutate(func(p []byte) []byte { p[headerLen+2] = 0; return p[:headerLen+3] }), errNoNode},
		{"no node length", good[:headerLen+2], errLength},
	} {
		_, err := decodeBeat(tc.p)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s (%q): got %v, want %v", tc.name, tc.p, err, tc.want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(appendBeat(nil, beat{Cluster: "c", Node: "n1", Incarnation: 7, Seq: 3, State: State{Live: true}}))
	f.Add(appendBeat(nil, beat{Cluster: strings.Repeat("c", maxName), Node: "n", Seq: 1}))
	f.Add([]byte("VIPDHB1"))
	f.Add([]byte("VIPDHB2\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x01n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		b, err := decodeBeat(p)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes, up to ignored flag bits.
		q := appendBeat(nil, b)
		want := append([]byte(nil), p...)
		want[7] &= flagAPIOK | flagLive
		if !bytes.Equal(q, want) {
			t.Fatalf("decoded %+v from %q, which encodes to %q", b, p, q)
		}
	})
}

func TestConfigDefaults(t *testing.T) {
	listen := netip.MustParseAddrPort("198.51.100.11:7947")
	c, err := Config{Node: "n1", Cluster: "c", Listen: listen}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Interval != 20*time.Millisecond || c.Timeout != 200*time.Millisecond || c.Log == nil {
		t.Errorf("defaults: interval %v, timeout %v, log %v; want 20ms, 200ms, a logger", c.Interval, c.Timeout, c.Log)
	}
	c, err = Config{Node: "n1", Cluster: "c", Listen: listen, Interval: 50 * time.Millisecond}.withDefaults()
	if err != nil || c.Timeout != 500*time.Millisecond {
		t.Errorf("timeout with a 50ms interval: %v, %v; want 500ms", c.Timeout, err)
	}

	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no node", Config{Cluster: "c", Listen: listen}, "node name"},
		{"long node", Config{Node: strings.Repeat("n", 256), Cluster: "c", Listen: listen}, "node name"},
		{"no cluster", Config{Node: "n1", Listen: listen}, "cluster identity"},
		{"no listen address", Config{Node: "n1", Cluster: "c"}, "listen address"},
		{"negative interval", Config{Node: "n1", Cluster: "c", Listen: listen, Interval: -time.Second}, "below 1ms"},
		{"tiny interval", Config{Node: "n1", Cluster: "c", Listen: listen, Interval: time.Microsecond}, "below 1ms"},
		{"timeout too short", Config{Node: "n1", Cluster: "c", Listen: listen, Interval: time.Second, Timeout: time.Second}, "at least twice"},
	} {
		_, err := New(tc.cfg) // fails before binding anything
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error about %q", tc.name, err, tc.want)
		}
	}
}

func TestLimiter(t *testing.T) {
	l := limiter{every: time.Second}
	t0 := time.Now()
	if ok, _ := l.allow("a", t0); !ok {
		t.Fatal("first message held back")
	}
	for i := range 3 {
		if ok, _ := l.allow("a", t0.Add(time.Duration(i)*time.Millisecond)); ok {
			t.Fatal("repeat within the period let through")
		}
	}
	if ok, _ := l.allow("b", t0); !ok {
		t.Fatal("another kind held back")
	}
	if ok, n := l.allow("a", t0.Add(time.Second)); !ok || n != 3 {
		t.Fatalf("after the period: %v with %d suppressed, want true with 3", ok, n)
	}
}
