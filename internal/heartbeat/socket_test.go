package heartbeat

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRecvfromSender: a datagram read from the socket comes with its
// sender's address and port, IPv4 and IPv6, and reading it allocates
// nothing (hundreds of beats a second).
func TestRecvfromSender(t *testing.T) {
	for _, c := range []struct{ network, addr string }{{"udp4", "127.0.0.1:0"}, {"udp6", "[::1]:0"}} {
		t.Run(c.network, func(t *testing.T) {
			listen := netip.MustParseAddrPort(c.addr)
			rx, rxAddr, err := listenUDP(c.network, listen)
			if err != nil {
				t.Skipf("no %s loopback here: %v", c.network, err)
			}
			defer rx.close()
			tx, txAddr, err := listenUDP(c.network, listen)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.close()
			to, err := sockaddr(rxAddr, c.network == "udp6")
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			roundTrip := func() {
				if err := tx.sendto([]byte("beat"), unix.MSG_DONTWAIT, to); err != nil {
					t.Fatal(err)
				}
				n, from, err := rx.recvfrom(buf)
				if err != nil {
					t.Fatal(err)
				}
				if string(buf[:n]) != "beat" || from != txAddr {
					t.Fatalf("got %q from %v, want %q from %v", buf[:n], from, "beat", txAddr)
				}
			}
			roundTrip()
			if n := testing.AllocsPerRun(100, roundTrip); n != 0 {
				t.Errorf("a datagram sent and read allocates %.1f times", n)
			}
			if _, _, err := rx.recvfrom(buf); err != unix.EAGAIN {
				t.Errorf("reading with nothing waiting: %v, want EAGAIN", err)
			}
		})
	}
}
