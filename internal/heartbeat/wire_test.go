package heartbeat

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func TestBeatRoundTrip(t *testing.T) {
	long := make([]uint32, maxList)
	for i := range long {
		long[i] = uint32(i) * 2654435761
	}
	for _, b := range []beat{
		{Cluster: "uid/kube-system", From: "n1", To: "n2", Incarnation: 1, Seq: 1},
		{Cluster: "c", From: "node-with-a-long-name", To: "n", Incarnation: ^uint64(0), Seq: 1 << 40,
			EchoInc: 7, EchoSeq: 9, State: State{APIOK: true}, Hears: []uint32{1, 2}, Asks: []uint32{3}, Holds: []uint32{4, 5, 6}},
		{Cluster: "c", From: "n", To: "m", State: State{Live: true}, KeyID: keyID(testKey)},
		{Cluster: strings.Repeat("c", maxName), From: strings.Repeat("n", maxName), To: strings.Repeat("t", maxName),
			State: State{APIOK: true, Live: true}, Hears: long, Asks: long, Holds: long},
	} {
		p := appendBeat(nil, b, newMACer(testKey))
		if !bytes.HasPrefix(p, []byte("VIPDHB2")) {
			t.Errorf("%+v encodes to %q..., want the VIPDHB2 prefix", b, p[:min(len(p), 7)])
		}
		if len(p) > MaxBeatLen {
			t.Errorf("%+v encodes to %d bytes, more than MaxBeatLen %d", b, len(p), MaxBeatLen)
		}
		got, body, sum, err := decodeBeat(p, nil)
		if err != nil {
			t.Errorf("decoding %+v: %v", b, err)
			continue
		}
		if !reflect.DeepEqual(got, b) {
			t.Errorf("round trip: got %+v, want %+v", got, b)
		}
		if !authentic(newMACer(testKey), body, sum) {
			t.Errorf("%+v: MAC does not check under its own key", b)
		}
		if authentic(newMACer([]byte("another key, just as long as the first")), body, sum) {
			t.Errorf("%+v: MAC checks under another key", b)
		}
	}
}

func TestBeatLayout(t *testing.T) {
	p := appendBeat(nil, beat{KeyID: keyID4{0xa, 0xb, 0xc, 0xd}, Cluster: "ab", From: "n1", To: "n2",
		Incarnation: 0x0102030405060708, Seq: 9, EchoInc: 0x1112131415161718, EchoSeq: 10,
		State: State{APIOK: true, Live: true}, Hears: []uint32{0x01020304}, Holds: []uint32{0x0a0b0c0d}}, newMACer(testKey))
	want := []byte("VIPDHB2\x03\x0a\x0b\x0c\x0d\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x00\x00\x00\x00\x09" +
		"\x11\x12\x13\x14\x15\x16\x17\x18\x00\x00\x00\x00\x00\x00\x00\x0a\x02ab\x02n1\x02n2" +
		"\x00\x01\x01\x02\x03\x04\x00\x00\x00\x01\x0a\x0b\x0c\x0d")
	if !bytes.Equal(p[:len(p)-macLen], want) {
		t.Fatalf("encoding:\n got %q\nwant %q", p[:len(p)-macLen], want)
	}
	h := hmac.New(sha256.New, testKey)
	h.Write(want)
	if !bytes.Equal(p[len(p)-macLen:], h.Sum(nil)) {
		t.Fatalf("the MAC is not HMAC-SHA256 of the beat under the key")
	}
	// Unknown flag bits are ignored, for flags added later within version 2.
	p[7] |= 0xf0
	b, _, _, err := decodeBeat(p, nil)
	if err != nil || b.State != (State{APIOK: true, Live: true}) {
		t.Fatalf("with unknown flag bits: %+v, %v", b, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := appendBeat(nil, beat{Cluster: "c", From: "n1", To: "n2", Incarnation: 7, Seq: 3}, newMACer(testKey))
	nameAt := headerLen // cluster length; from and to follow
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
		{"other protocol", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n12345678"), errMagic},
		{"version 1", mutate(func(p []byte) []byte { p[6] = '1'; return p }), errVersion},
		{"cluster length past end", mutate(func(p []byte) []byte { p[nameAt] = 200; return p }), errLength},
		{"to length past end", mutate(func(p []byte) []byte { p[nameAt+5] = 90; return p }), errLength},
		{"list count past end", mutate(func(p []byte) []byte { p[nameAt+8] = 0x10; return p }), errLength},
		{"list too long", mutate(func(p []byte) []byte { p[nameAt+8], p[nameAt+9] = 0xff, 0xff; return p }), errLength},
		{"cut", good[:len(good)-1], errLength},
		{"trailing byte", append(append([]byte(nil), good...), 0), errLength},
		{"empty sender", mutate(func(p []byte) []byte { p[nameAt+2] = 0; return append(p[:nameAt+3], p[nameAt+5:]...) }), errNoName},
	} {
		_, _, _, err := decodeBeat(tc.p, nil)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s (%q): got %v, want %v", tc.name, tc.p, err, tc.want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(appendBeat(nil, beat{Cluster: "c", From: "n1", To: "n2", Incarnation: 7, Seq: 3, State: State{Live: true}}, newMACer(testKey)))
	f.Add(appendBeat(nil, beat{Cluster: strings.Repeat("c", maxName), From: "n", To: "m", Seq: 1, Hears: []uint32{1, 2, 3}}, newMACer(testKey)))
	f.Add([]byte("VIPDHB2"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		b, body, sum, err := decodeBeat(p, nil)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes, up to ignored flag
		// bits and the MAC, which only the key can make.
		q := appendBeat(nil, b, newMACer(testKey))
		want := append([]byte(nil), body...)
		want[7] &= flagAPIOK | flagLive
		if !bytes.Equal(q[:len(q)-macLen], want) {
			t.Fatalf("decoded %+v from %q, which encodes to %q", b, p, q)
		}
		if len(sum) != macLen {
			t.Fatalf("MAC of %d bytes", len(sum))
		}
	})
}

func TestKeys(t *testing.T) {
	if err := (Keys{Sign: []byte("short")}).Validate(); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Errorf("short signing key: %v", err)
	}
	if err := (Keys{Sign: testKey, Accept: [][]byte{[]byte("x")}}).Validate(); err == nil || !strings.Contains(err.Error(), "accepted key 1") {
		t.Errorf("short accepted key: %v", err)
	}
	if err := (Keys{}).Validate(); err == nil {
		t.Error("no key accepted")
	}
	if err := InsecureKeys().Validate(); err != nil || !InsecureKeys().IsInsecure() {
		t.Errorf("insecure keys: %v", err)
	}
	if (Keys{Sign: testKey}).IsInsecure() {
		t.Error("a real key reported as insecure")
	}
	if KeyID(testKey) == KeyID(insecureKey) || len(KeyID(testKey)) != 8 {
		t.Errorf("key IDs: %s, %s", KeyID(testKey), KeyID(insecureKey))
	}
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
		{"long cluster", Config{Node: "n1", Cluster: strings.Repeat("c", 256), Listen: listen}, "cluster identity"},
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

// TestNameCache: decoding through the cache gives the same beat, makes no
// new string for a name it has seen, and stays bounded under names that
// keep changing.
func TestNameCache(t *testing.T) {
	var nc nameCache
	b := beat{Cluster: "uid/kube-system", From: "n1", To: "n2", Incarnation: 1, Seq: 1, Hears: []uint32{7}}
	p := appendBeat(nil, b, newMACer(testKey))
	got, _, _, err := decodeBeat(p, &nc)
	if err != nil || !reflect.DeepEqual(got, b) {
		t.Fatalf("decoding through the cache: %+v, %v; want %+v", got, err, b)
	}
	// The beat's one list is all that is left to allocate.
	if n := testing.AllocsPerRun(100, func() { _, _, _, _ = decodeBeat(p, &nc) }); n != 1 {
		t.Errorf("decoding a beat whose names are cached allocated %v times, want 1 (its list)", n)
	}
	for i := range 1000 {
		name := []byte(strings.Repeat("x", i%200+1))
		if s := nc.get(name); s != string(name) {
			t.Fatalf("get(%q) = %q", name, s)
		}
	}
	if s := nc.get([]byte("n1")); s != "n1" {
		t.Errorf("get(n1) after the cache turned over = %q", s)
	}
}
