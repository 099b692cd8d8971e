package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/vipd/vipd/internal/address"
	"github.com/vipd/vipd/internal/lab"
)

// The invariant the soak proves, per fault (docs/faults.md): every VIP has
// exactly one holder that answers the client, except for a bounded window
// after the fault, and nothing is lost.
//
// A planned stop hands over make before break (docs/control-plane.md), so
// the client's gap is the ping interval or little more; the issue asks
// 50 ms. The client's gaps are timed by the kernel on arrival
// (lab.PingRecord.LongestGap), so the checker's own load on two cores does
// not show as a gap.
const (
	boundPlannedGap   = 50 * time.Millisecond  // a planned stop (SIGTERM)
	boundUnplannedGap = 500 * time.Millisecond // any other fault
	boundTwoAnswerers = 300 * time.Millisecond // two stations answer ARP/NDP
	boundNoAnswerer   = 500 * time.Millisecond // nobody answers (longest stretch)
	sampleInterval    = 50 * time.Millisecond  // carriers and answerers
	pingInterval      = 10 * time.Millisecond  // the client's reachability
)

// checker watches every VIP from three sides: which nodes carry it (their
// interfaces, read through netlink), who answers ARP/NDP for it (from the
// client), and whether the client's pings are answered.
type checker struct {
	vips    []netip.Addr
	answers *lab.Answers
	pings   map[netip.Addr]*lab.PingRecord

	mu      sync.Mutex
	nodes   map[string]*address.Interface // sampled nodes' eth0
	closers []func()
	samples []carrierSample
	macs    map[string]string // MAC → node name
	err     error
	stop    chan struct{}
	done    chan struct{}
}

type carrierSample struct {
	at       time.Time
	carriers map[netip.Addr][]string
}

func newChecker(l *lab.Lab, nodes []*lab.Node, vips []netip.Addr) (*checker, error) {
	c := &checker{vips: vips, nodes: map[string]*address.Interface{}, macs: map[string]string{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, n := range nodes {
		if err := c.addNode(n); err != nil {
			c.close()
			return nil, err
		}
	}
	var err error
	if c.answers, err = l.Client.WatchAnswers(context.Background(), vips, sampleInterval); err != nil {
		c.close()
		return nil, err
	}
	if c.pings, err = l.Client.PingMany(context.Background(), vips, pingInterval); err != nil {
		c.close()
		return nil, err
	}
	go c.sample()
	return c, nil
}

// addNode starts sampling n's eth0.
func (c *checker) addNode(n *lab.Node) error {
	h, err := netns.GetFromName(n.Netns)
	if err != nil {
		return fmt.Errorf("opening namespace of %s: %w", n.Name, err)
	}
	ns, err := address.Open(h)
	if err != nil {
		h.Close()
		return err
	}
	ifi, err := ns.Lookup("eth0")
	if err != nil {
		ns.Close()
		h.Close()
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes[n.Name] = ifi
	c.macs[n.MAC.String()] = n.Name
	c.closers = append(c.closers, func() { ns.Close(); h.Close() })
	return nil
}

// dropNode stops sampling a node that is gone for good.
func (c *checker) dropNode(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, name)
}

func (c *checker) sample() {
	defer close(c.done)
	t := time.NewTicker(sampleInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		s := carrierSample{at: time.Now(), carriers: map[netip.Addr][]string{}}
		c.mu.Lock()
		for name, ifi := range c.nodes {
			owned, err := ifi.Owned()
			if err != nil {
				continue // a node whose link is being torn down
			}
			for _, a := range owned {
				s.carriers[a] = append(s.carriers[a], name)
			}
		}
		for _, names := range s.carriers {
			slices.Sort(names)
		}
		c.samples = append(c.samples, s)
		c.mu.Unlock()
	}
}

func (c *checker) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
		if c.answers != nil || c.pings != nil {
			<-c.done
		}
	}
	if c.answers != nil {
		c.answers.Close()
	}
	for _, p := range c.pings {
		p.Stop()
		break // one stops them all
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.closers {
		f()
	}
	c.closers = nil
}

// name is the node a MAC belongs to, or the MAC itself.
func (c *checker) name(mac string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.macs[mac]; ok {
		return n
	}
	return mac
}

// steady says why the VIPs are not yet each carried by exactly one of the
// members, answered for by that node alone and reachable, or "" if they
// are.
func (c *checker) steady(members []string) string {
	c.mu.Lock()
	var last carrierSample
	if len(c.samples) > 0 {
		last = c.samples[len(c.samples)-1]
	}
	c.mu.Unlock()
	if time.Since(last.at) > 4*sampleInterval {
		return "no recent sample of the nodes' addresses"
	}
	var problems []string
	for _, v := range c.vips {
		var carriers []string
		for _, n := range last.carriers[v] {
			if slices.Contains(members, n) {
				carriers = append(carriers, n)
			}
		}
		if len(carriers) != 1 {
			problems = append(problems, fmt.Sprintf("%s carried by %v", v, carriers))
			continue
		}
		rounds := c.answers.Rounds(v)
		if len(rounds) < 4 {
			problems = append(problems, fmt.Sprintf("%s: too few ARP/NDP rounds", v))
			continue
		}
		for _, r := range rounds[len(rounds)-4 : len(rounds)-1] {
			if len(r.MACs) != 1 || c.name(r.MACs[0]) != carriers[0] {
				problems = append(problems, fmt.Sprintf("%s carried by %s, answered by %v", v, carriers[0], c.names(r.MACs)))
				break
			}
		}
		// Reachable: an echo sent in the last 300 ms was answered (a loaded
		// machine may lose or delay one; judge measures the gaps).
		echoes := c.pings[v].Echoes()
		reached := false
		for i := len(echoes) - 1; i >= 0 && time.Since(echoes[i].Sent) < 300*time.Millisecond; i-- {
			reached = reached || !echoes[i].Reply.IsZero()
		}
		if !reached {
			problems = append(problems, fmt.Sprintf("%s not reachable", v))
		}
	}
	if len(problems) > 0 {
		return fmt.Sprintf("%d VIPs not steady: %s", len(problems), abbrev(problems))
	}
	return ""
}

func (c *checker) names(macs []string) []string {
	out := make([]string, len(macs))
	for i, m := range macs {
		out[i] = c.name(m)
	}
	slices.Sort(out)
	return out
}

// outcome is what the client saw of one fault, worst over all VIPs.
type outcome struct {
	gap, twoAnswerers, noAnswerer time.Duration
	// noAnswerTotal is the time, summed over VIPs, nobody answered.
	noAnswerTotal, twoTotal time.Duration
	worstVIP                string // whose gap was the worst
	moved                   int    // VIPs whose carrier changed
}

// judge measures the window [from, to] of one fault.
func (c *checker) judge(from, to time.Time) outcome {
	var o outcome
	for _, v := range c.vips {
		if g := c.pings[v].LongestGap(from, to); g > o.gap {
			o.gap, o.worstVIP = g, v.String()
		}
		var run time.Duration
		rounds := c.answers.Rounds(v)
		var two time.Duration
		for i, r := range rounds {
			if i == len(rounds)-1 || r.At.Before(from) || r.At.After(to) {
				continue
			}
			switch len(r.MACs) {
			case 0:
				run += sampleInterval
				o.noAnswerTotal += sampleInterval
				o.noAnswerer = max(o.noAnswerer, run)
				continue
			case 1:
			default:
				two += sampleInterval
			}
			run = 0
		}
		o.twoTotal += two
		o.twoAnswerers = max(o.twoAnswerers, two)
	}
	c.mu.Lock()
	first, last := map[netip.Addr]string{}, map[netip.Addr]string{}
	for _, s := range c.samples {
		if s.at.Before(from) || s.at.After(to) {
			continue
		}
		for _, v := range c.vips {
			h := strings.Join(s.carriers[v], "+")
			if _, ok := first[v]; !ok {
				first[v] = h
			}
			last[v] = h
		}
	}
	c.mu.Unlock()
	for v, h := range first {
		if last[v] != h {
			o.moved++
		}
	}
	return o
}

// violations lists how o breaks the bounds of a fault that was planned or
// not.
func (o outcome) violations(planned bool) []string {
	var out []string
	bound := boundUnplannedGap
	if planned {
		bound = boundPlannedGap
	}
	if o.gap > bound {
		out = append(out, fmt.Sprintf("client-seen gap %v on %s > %v", o.gap.Round(time.Millisecond), o.worstVIP, bound))
	}
	if o.twoAnswerers > boundTwoAnswerers {
		out = append(out, fmt.Sprintf("two answerers for %v > %v", o.twoAnswerers, boundTwoAnswerers))
	}
	if o.noAnswerer > boundNoAnswerer {
		out = append(out, fmt.Sprintf("no answerer for %v > %v", o.noAnswerer, boundNoAnswerer))
	}
	return out
}
