package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/vipd/vipd/internal/lab"
)

// heartbeatPort is vipd's default heartbeat port.
const heartbeatPort = 7947

// beatTap records, on a node's port of the lab's bridge, the heartbeats it
// sends: what anyone on the segment could capture.
type beatTap struct {
	conn *packet.Conn
	from netip.Addr

	mu    sync.Mutex
	beats []tappedBeat
	err   error // why reading stopped
}

type tappedBeat struct {
	to      netip.Addr
	payload []byte
}

func tapBeats(tb testing.TB, e *env, n *lab.Node) *beatTap {
	tb.Helper()
	t := &beatTap{from: n.IPv4}
	err := lab.InNetns(e.lab.BridgeNetns, func() error {
		ifi, err := net.InterfaceByName(n.Name) // the node's port on the bridge
		if err != nil {
			return err
		}
		// All protocols: a bridge port's frames reach only sockets that
		// take every protocol; the bridge consumes them before the others.
		t.conn, err = packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
		return err
	})
	if err != nil {
		tb.Fatalf("tapping %s's port: %v", n.Name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 9000)
		for {
			k, _, err := t.conn.ReadFrom(buf)
			if err != nil {
				t.mu.Lock()
				t.err = err
				t.mu.Unlock()
				return
			}
			// Whole Ethernet frames: only IPv4 ones count.
			if k < 14 || binary.BigEndian.Uint16(buf[12:14]) != unix.ETH_P_IP {
				continue
			}
			p := buf[14:k]
			// IPv4, no options needed: header length from the first byte.
			if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_UDP {
				continue
			}
			hl := int(p[0]&0xf) * 4
			if len(p) < hl+8 {
				continue
			}
			src, _ := netip.AddrFromSlice(p[12:16])
			dst, _ := netip.AddrFromSlice(p[16:20])
			if src != t.from || binary.BigEndian.Uint16(p[hl+2:]) != heartbeatPort {
				continue
			}
			t.mu.Lock()
			t.beats = append(t.beats, tappedBeat{to: dst, payload: append([]byte(nil), p[hl+8:]...)})
			t.mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		t.conn.Close()
		<-done
	})
	return t
}

// stop ends the capture and returns what it recorded.
func (t *beatTap) stop() ([]tappedBeat, error) {
	t.mu.Lock()
	err := t.err
	t.mu.Unlock()
	t.conn.Close()
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]tappedBeat(nil), t.beats...), err
}

// sender is a UDP socket in the client namespace: a host on the segment.
func sender(tb testing.TB, e *env) *net.UDPConn {
	tb.Helper()
	var conn *net.UDPConn
	if err := lab.InNetns(e.lab.Client.Netns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: e.lab.Client.IPv4.AsSlice()})
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// flood sends payloads produced by next to every addr every interval until
// ctx ends.
func flood(ctx context.Context, conn *net.UDPConn, interval time.Duration, next func(seq uint64) []tappedBeat) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		for _, b := range next(seq) {
			_, _ = conn.WriteToUDPAddrPort(b.payload, netip.AddrPortFrom(b.to, heartbeatPort))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// forgeBeat writes a heartbeat as docs/heartbeat.md describes the wire
// format (version 2), from the document rather than vipd's code, signed
// with key: a forger who knows the format but not the cluster's key.
func forgeBeat(cluster, from, to string, live bool, inc, seq uint64, key []byte) []byte {
	b := []byte("VIPDHB2")
	flags := byte(1) // APIOK
	if live {
		flags |= 2
	}
	b = append(b, flags)
	id := sha256.Sum256(append([]byte("vipd heartbeat key id\x00"), key...))
	b = append(b, id[:4]...)
	b = binary.BigEndian.AppendUint64(b, inc)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, 0) // no echo: the forger heard nothing
	b = binary.BigEndian.AppendUint64(b, 0)
	for _, s := range []string{cluster, from, to} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	b = append(b, 0, 0, 0, 0, 0, 0) // no heard peers, asks or holds
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return m.Sum(b)
}

// clusterIdentity is what the agents of e put in their beats: the UID of
// kube-system and the agents' namespace. Not a secret: a forger can know it.
func (e *env) clusterIdentity(ctx context.Context) (string, error) {
	ns, err := pkg.admin.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return string(ns.UID) + "/" + e.ns, nil
}

// guardHolds checks the nftables guard on n as an operator would, with
// `nft -j list ruleset`: nothing of vipd's guard names an address that n
// does not carry. Without VIPs there may be no guard at all, or empty sets.
func guardHolds(ctx context.Context, e *env, n *lab.Node) error {
	out, err := e.lab.Exec(ctx, n.Netns, "nft", "-j", "list", "ruleset")
	if err != nil {
		return err
	}
	var rs struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return fmt.Errorf("parsing the ruleset of %s: %w", n.Name, err)
	}
	have, err := addrsOn(ctx, n)
	if err != nil {
		return err
	}
	for _, obj := range rs.Nftables {
		raw, ok := obj["set"]
		if !ok {
			continue
		}
		var set struct {
			Table string            `json:"table"`
			Name  string            `json:"name"`
			Elem  []json.RawMessage `json:"elem"`
		}
		if err := json.Unmarshal(raw, &set); err != nil || set.Table != "vipd" {
			continue
		}
		for _, el := range set.Elem {
			a := guardElemAddr(el)
			if a.IsValid() && !slices.Contains(have, a) {
				return fmt.Errorf("the guard's set %s names %s, which %s does not carry", set.Name, a, n.Name)
			}
		}
	}
	return nil
}

// guardElemAddr reads an address from a set element as nft -j prints it:
// a string, or {"elem": {"val": "...", "timeout": ...}}.
func guardElemAddr(raw json.RawMessage) netip.Addr {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		a, _ := netip.ParseAddr(s)
		return a
	}
	var el struct {
		Elem struct {
			Val string `json:"val"`
		} `json:"elem"`
	}
	if json.Unmarshal(raw, &el) == nil {
		a, _ := netip.ParseAddr(el.Elem.Val)
		return a
	}
	return netip.Addr{}
}
