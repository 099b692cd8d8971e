package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Ping sends one echo request to ip from the client with the system's ping
// and fails, with ping's output, unless it is answered within a second.
func (c *Client) Ping(ctx context.Context, ip netip.Addr) error {
	args := []string{"-c1", "-W1"}
	if ip.Is6() {
		args = append(args, "-6")
	}
	if _, err := execIn(ctx, c.Netns, nil, "ping", append(args, ip.String())...); err != nil {
		return fmt.Errorf("pinging %s from %s: %w", ip, c.Name, err)
	}
	return nil
}

// DialTCP connects from the client to ip:port and returns the line a node's
// ServeTCP responder answers with: the name of the node that got the
// connection.
func (c *Client) DialTCP(ctx context.Context, ip netip.Addr, port int) (string, error) {
	addr := netip.AddrPortFrom(ip, uint16(port)).String()
	var conn net.Conn
	err := InNetns(c.Netns, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("connecting to %s from %s: %w", addr, c.Name, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetReadDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading answer from %s: %w", addr, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// Neighbor returns the client's neighbour entry for ip on eth0: the MAC
// (nil while unresolved) and the state as ip shows it, e.g. "REACHABLE",
// "STALE" or "FAILED" (several states are joined with commas). An absent
// entry is an error.
func (c *Client) Neighbor(ip netip.Addr) (net.HardwareAddr, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := execIn(ctx, c.Netns, nil, "ip", "-j", "neigh", "show", ip.String(), "dev", "eth0")
	if err != nil {
		return nil, "", fmt.Errorf("reading neighbour %s on %s: %w", ip, c.Name, err)
	}
	var entries []struct {
		Dst    string   `json:"dst"`
		LLAddr string   `json:"lladdr"`
		State  []string `json:"state"`
	}
	if out = strings.TrimSpace(out); out == "" {
		out = "[]"
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		return nil, "", fmt.Errorf("parsing neighbour %s on %s: %w: %s", ip, c.Name, err, out)
	}
	for _, e := range entries {
		if a, err := netip.ParseAddr(e.Dst); err != nil || a != ip {
			continue
		}
		state := strings.Join(e.State, ",")
		if e.LLAddr == "" {
			return nil, state, nil
		}
		mac, err := net.ParseMAC(e.LLAddr)
		if err != nil {
			return nil, state, fmt.Errorf("parsing neighbour %s on %s: %w", ip, c.Name, err)
		}
		return mac, state, nil
	}
	return nil, "", fmt.Errorf("no neighbour entry for %s on %s", ip, c.Name)
}

// FlushNeighbors empties the client's neighbour table on eth0.
func (c *Client) FlushNeighbors() error {
	if err := ipCmd(c.Netns, "neigh", "flush", "dev", "eth0"); err != nil {
		return fmt.Errorf("flushing neighbours on %s: %w", c.Name, err)
	}
	return nil
}
