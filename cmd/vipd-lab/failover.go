package main

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// outcome is what one failover looked like; times are absolute.
type outcome struct {
	t0        time.Time // the disruption
	oldGone   time.Time // the old holder's eth0 lost the VIP (zero if it kept it)
	newHolder *lab.Node
	held      time.Time // the new holder had the VIP
	garp      *lab.Announcement
	neigh     time.Time // the client's neighbour entry showed the new holder
	gap       time.Duration
	dups      int  // echo replies beyond the first: two nodes answered
	overlap   bool // the old and the new holder had the VIP at once
	// events are more moments to show in the timeline.
	events []event
}

type event struct {
	t   time.Time
	msg string
}

// failover disrupts old, the holder, while the client pings the VIP every
// 10 ms and captures announcements, and measures the takeover. With
// offSegment the old holder is unreachable afterwards, so whatever is left
// on its interface does not count as holding the VIP.
func (d *demo) failover(ctx context.Context, old *lab.Node, offSegment bool, disrupt func() error) (outcome, error) {
	c := d.lab.Client
	capture, err := c.Capture(ctx)
	if err != nil {
		return outcome{}, err
	}
	defer capture.Close()
	loopStart := time.Now()
	rec, err := c.PingLoop(ctx, d.vip, pingInterval)
	if err != nil {
		return outcome{}, err
	}
	defer rec.Stop()
	repliesSince := func(t time.Time) int {
		n := 0
		for _, r := range rec.Replies() {
			if r.After(t) {
				n++
			}
		}
		return n
	}
	// A steady stream of replies first, so the gap measured is the failover's.
	err = poll(ctx, 5*time.Second, pingInterval, "waiting for the client's pings to be answered", func() (bool, error) {
		return repliesSince(loopStart) >= 20, nil
	})
	if err != nil {
		return outcome{}, err
	}
	d.say("client %s pings %s every %s; disrupting %s now", c.Name, d.vip, dur(pingInterval), old.Name)

	o := outcome{t0: time.Now()}
	if err := disrupt(); err != nil {
		return o, err
	}
	err = poll(ctx, 30*time.Second, holderPoll, "waiting for another node to take "+d.vip.String(), func() (bool, error) {
		now := time.Now()
		if err := d.agentsRunning(old); err != nil {
			return false, err
		}
		hs, err := d.holders(d.lab.Nodes)
		if err != nil {
			return false, err
		}
		oldHas := slices.Contains(hs, old)
		others := slices.DeleteFunc(hs, func(n *lab.Node) bool { return n == old })
		if len(others) > 1 {
			return false, twoHolders(others)
		}
		if !oldHas && o.oldGone.IsZero() {
			o.oldGone = now
		}
		if len(others) == 1 {
			if o.newHolder == nil {
				o.newHolder, o.held = others[0], now
			}
			o.overlap = o.overlap || (oldHas && !offSegment)
		}
		return o.newHolder != nil && (offSegment || !oldHas), nil
	})
	if err != nil {
		return o, err
	}
	want := o.newHolder.MAC
	err = poll(ctx, 10*time.Second, 5*time.Millisecond, "waiting for the client's neighbour entry to follow", func() (bool, error) {
		mac, _, err := c.Neighbor(d.vip)
		if err != nil || !bytes.Equal(mac, want) {
			return false, nil // absent or still resolving: look again
		}
		o.neigh = time.Now()
		return true, nil
	})
	if err != nil {
		return o, err
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	a, err := capture.WaitFor(actx, func(a lab.Announcement) bool {
		return a.IP == d.vip && bytes.Equal(a.MAC, want) && !a.Time.Before(o.t0)
	})
	if err == nil {
		o.garp = &a
		// vipd announces only a VIP that is on its interface: an
		// announcement seen before the address poll saw the VIP dates the
		// takeover more precisely than the poll.
		if a.Time.Before(o.held) {
			o.held = a.Time
		}
	}
	// Pings answered after the move close the gap being measured.
	after := o.neigh
	err = poll(ctx, 5*time.Second, pingInterval, "waiting for pings to the new holder to be answered", func() (bool, error) {
		return repliesSince(after) >= 10, nil
	})
	if err != nil {
		return o, err
	}
	rec.Stop()
	o.gap = rec.LongestGap(loopStart, time.Now())
	for _, e := range rec.Echoes() {
		o.dups += e.Dups
	}
	return o, rec.Err()
}

// report prints a failover's timeline, relative to the disruption.
func (d *demo) report(o outcome) {
	n := o.newHolder
	events := append(slices.Clone(o.events),
		event{o.held, fmt.Sprintf("%s has %s on its eth0", n.Name, d.vip)},
		event{o.neigh, fmt.Sprintf("client's neighbour entry for %s shows %s (%s)", d.vip, n.MAC, n.Name)})
	if o.garp != nil {
		kind := "an announcement"
		if o.garp.Kind == "arp-request" && o.garp.Gratuitous {
			kind = "a gratuitous ARP"
		}
		events = append(events, event{o.garp.Time, fmt.Sprintf("client gets %s: %s is at %s (%s)", kind, d.vip, o.garp.MAC, n.Name)})
	}
	// Stable: of two events at the same moment, the cause comes first.
	slices.SortStableFunc(events, func(a, b event) int { return a.t.Compare(b.t) })
	for _, e := range events {
		d.at(o.t0, e.t, "%s", e.msg)
	}
	d.say("longest time without a ping reply: %s (one ping every %s)", dur(o.gap), dur(pingInterval))
	if o.dups > 0 {
		d.say("%d pings were answered more than once: two nodes answered for the VIP", o.dups)
	}
}

// keep records a failover for the summary.
func (d *demo) keep(scenario string, old *lab.Node, o outcome) {
	d.results = append(d.results, result{scenario: scenario, before: old.Name, newHolder: o.newHolder.Name,
		held: o.held.Sub(o.t0), neigh: o.neigh.Sub(o.t0), gap: o.gap})
}

func (d *demo) summary() {
	d.section("Summary")
	row := "%-32s %-9s %-14s %-19s %s\n"
	fmt.Fprintf(d.out, row, "scenario", "holder", "new holder at", "neighbour entry at", "longest ping gap")
	for _, r := range d.results {
		fmt.Fprintf(d.out, row, r.scenario, r.before+"→"+r.newHolder, "+"+dur(r.held), "+"+dur(r.neigh), dur(r.gap))
	}
}
