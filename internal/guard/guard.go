package guard

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vipd/vipd/internal/address"
)

// TableName names the guard's tables: one of family arp, one of family ip6.
const TableName = "vipd"

// probeTableName names the throwaway table that narrows down a refusal of
// the kernel; it is created and deleted in one batch, so never seen.
const probeTableName = "vipd-probe"

// DefaultAnswerTimeout is Options.AnswerTimeout when left zero.
const DefaultAnswerTimeout = 200 * time.Millisecond

// guardRenewal is how often Refresh renews the guarded and answered VIPs.
// They carry GuardTimeout plus this much, so each stays at least
// GuardTimeout after the last Set or Refresh while Refresh renews them only
// once a second, not at every call.
const guardRenewal = time.Second

// ErrClosed is returned by Set and Refresh after Close.
var ErrClosed = errors.New("guard closed")

// Options tune a Guard.
type Options struct {
	// AnswerTimeout is how long after the last Set or Refresh the node
	// still answers for the VIPs it holds: the dead-man switch. Call
	// Refresh several times within it (every AnswerTimeout/4 leaves room
	// for three late calls). Default 200ms.
	AnswerTimeout time.Duration
	// GuardTimeout is how long after the last Set or Refresh a VIP stays
	// guarded, at least (at most a second more). It should outlast the
	// VIP's valid lifetime on the interface plus the kernel's lag in
	// removing an expired address (up to a second): lifetime + 2s. Zero:
	// guarded until the next Set, Close or New.
	GuardTimeout time.Duration
	// Log receives the guard's messages; nil discards them.
	Log *slog.Logger
}

// Guard keeps this node from answering ARP requests and neighbour
// solicitations for VIPs it does not hold, with nftables tables that stay
// in the kernel when the process dies. It is safe for concurrent use.
type Guard struct {
	opts Options
	log  *slog.Logger
	ns   netns.NsHandle // owned: where every netlink socket is opened

	mu   sync.Mutex
	conn *nftables.Conn // nil until needed, and after a failed batch
	// sw renews the switch (switch.go); nil until needed, and after a
	// failed renewal.
	sw    *switchConn
	fams  []*family
	swBuf []*family // the families renewed, kept between renewals
	// The current members, sorted; answer is part of guarded.
	guarded, answer []netip.Addr
	guardRenewed    time.Time
	// until, if set (RefreshUntil), is when the switch lapses, whatever
	// renews it; zero: AnswerTimeout after each renewal.
	until  time.Time
	closed bool
}

// New sets up the guard in the network namespace of the process,
// replacing in one atomic step any vipd tables an earlier run left: it
// starts with no VIP guarded. An agent that finds VIPs of an earlier run
// on its interface should guard them (Set(leftover, nil)) before it
// removes them. Close removes the tables again. It needs CAP_NET_ADMIN.
func New(opts Options) (*Guard, error) {
	// No namespace handle: entering even the current namespace (setns)
	// would need CAP_SYS_ADMIN, which vipd does not have.
	return newGuard(netns.None(), opts)
}

// NewAt is New in the network namespace ns (which the caller still
// closes). It enters ns for every netlink socket it opens, which needs
// CAP_SYS_ADMIN; tests use it to guard a namespace they created.
func NewAt(ns netns.NsHandle, opts Options) (*Guard, error) {
	fd, err := unix.FcntlInt(uintptr(ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("guard: duplicating network namespace handle %s: %w", ns, err)
	}
	return newGuard(netns.NsHandle(fd), opts)
}

func newGuard(ns netns.NsHandle, opts Options) (*Guard, error) {
	switch {
	case opts.AnswerTimeout == 0:
		opts.AnswerTimeout = DefaultAnswerTimeout
	case opts.AnswerTimeout < time.Millisecond:
		closeNS(&ns)
		return nil, fmt.Errorf("guard: answer timeout %v: want at least 1ms (nftables counts milliseconds)", opts.AnswerTimeout)
	}
	if opts.GuardTimeout < 0 {
		closeNS(&ns)
		return nil, fmt.Errorf("guard: negative guard timeout %v", opts.GuardTimeout)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Guard{opts: opts, log: log, ns: ns, fams: newFamilies(TableName)}

	g.mu.Lock()
	defer g.mu.Unlock()
	left, err := g.tablesLeftLocked()
	if err == nil {
		err = g.replaceLocked(nil, nil)
	}
	if err != nil {
		g.dropConnLocked()
		err = g.diagnoseLocked(err, newFamilies(probeTableName))
		closeNS(&ns)
		return nil, fmt.Errorf("guard: setting up nftables tables %q: %w", TableName, err)
	}
	if left {
		log.Info("replaced the nftables guard tables an earlier run left", "table", TableName)
	}
	log.Info("guarding ARP and NDP answers", "table", TableName,
		"answer_timeout", opts.AnswerTimeout, "guard_timeout", opts.GuardTimeout)
	return g, nil
}

// Set makes guarded the VIPs this node must answer for only while it holds
// them, and answer those it holds now; an answered VIP is guarded too.
// IPv4 and IPv6 VIPs may be mixed. New members get a fresh timeout; the
// others keep theirs until the next renewal of the members (at most a
// second away) unless Set has to replace the sets whole.
func (g *Guard) Set(guarded, answer []netip.Addr) error {
	gs, as, err := members(guarded, answer)
	if err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	if g.changeInPlaceLocked() {
		err = g.batchLocked(func(c *nftables.Conn) error {
			for _, f := range g.fams {
				if err := g.changeLocked(c, f, gs, as); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			g.logChanges(gs, as)
			g.guarded, g.answer = gs, as
			return nil
		}
		// A member went behind the guard's back (deleting it failed), or
		// the tables did: setting the sets whole mends both.
		g.log.Debug("changing the guard's sets in place failed; setting them whole", "err", err)
	}
	err = g.updateLocked(gs, as, true, func(c *nftables.Conn, f *family) error {
		return g.renewLocked(c, f, gs, as, true, true)
	})
	if err != nil {
		return fmt.Errorf("guard: setting guarded and answered VIPs: %w", err)
	}
	g.logChanges(gs, as)
	g.guarded, g.answer = gs, as
	return nil
}

// changeInPlaceLocked reports whether Set may add and delete only the
// members that change: the sets were last set whole (flushed and filled
// from g.guarded and g.answer) less than guardRenewal ago, so none of
// their members can have expired (their timeout is longer; deleting an
// expired element would fail the batch), and a kernel that drifted from
// what the guard believes (a failed batch whose effect is unknown, a set
// flushed by someone else) is mended within guardRenewal. Setting the
// sets whole flushed and re-added a hundred members for each VIP taken.
func (g *Guard) changeInPlaceLocked() bool {
	return !g.guardRenewed.IsZero() && time.Since(g.guardRenewed) < guardRenewal
}

// changeLocked queues, for f's table, the addition of the members of gs
// and as that are new, the deletion of those that went, and a renewal of
// the switch if any of f's VIPs was or is answered.
func (g *Guard) changeLocked(c *nftables.Conn, f *family, gs, as []netip.Addr) error {
	for _, s := range []struct {
		set       *nftables.Set
		old, next []netip.Addr
	}{{f.guarded, g.guarded, gs}, {f.answer, g.answer, as}} {
		gone, added := diff(s.old, s.next, f)
		if err := inMessages(c.SetDeleteElements, s.set, elements(gone, 0)); err != nil {
			return err
		}
		if err := inMessages(c.SetAddElements, s.set, elements(added, g.guardTimeout())); err != nil {
			return err
		}
	}
	// Set renews the switch, as Refresh does, where it matters.
	was, now := slices.ContainsFunc(g.answer, f.holds), slices.ContainsFunc(as, f.holds)
	if !was && !now {
		return nil
	}
	var alive []nftables.SetElement
	if t := g.aliveTimeoutLocked(); now && t > 0 {
		alive = []nftables.SetElement{aliveElement(f, t)}
	}
	return renew(c, f.alive, alive, true)
}

// diff returns the addresses of f's family in the sorted old but not in
// the sorted next, and those in next but not in old.
func diff(old, next []netip.Addr, f *family) (gone, added []netip.Addr) {
	i, j := 0, 0
	for i < len(old) || j < len(next) {
		switch {
		case j == len(next) || (i < len(old) && old[i].Less(next[j])):
			if f.holds(old[i]) {
				gone = append(gone, old[i])
			}
			i++
		case i == len(old) || next[j].Less(old[i]):
			if f.holds(next[j]) {
				added = append(added, next[j])
			}
			j++
		default:
			i++
			j++
		}
	}
	return gone, added
}

// Refresh renews the dead-man switch, and once a second the timeouts of the
// guarded and answered VIPs. It costs one netlink batch whatever the
// number of VIPs, and none when no VIP is answered.
func (g *Guard) Refresh() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.refreshLocked()
}

// RefreshUntil is Refresh, but the switch lapses at until (at most
// AnswerTimeout from now; nftables counts milliseconds), and every later
// renewal, Set's included, keeps that moment until the next RefreshUntil:
// the caller ties the node's answers to a deadline of its own, such as
// the last sign of life its peers judge it by. An until already past
// renews nothing, so the switch lapses.
func (g *Guard) RefreshUntil(until time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.until = until
	return g.refreshLocked()
}

// aliveTimeoutLocked is the timeout to renew the switch with; 0: let it
// lapse.
func (g *Guard) aliveTimeoutLocked() time.Duration {
	if g.until.IsZero() {
		return g.opts.AnswerTimeout
	}
	d := min(time.Until(g.until), g.opts.AnswerTimeout).Truncate(time.Millisecond)
	if d < time.Millisecond {
		return 0
	}
	return d
}

func (g *Guard) refreshLocked() error {
	if g.closed {
		return ErrClosed
	}
	withMembers := g.opts.GuardTimeout > 0 && len(g.guarded) > 0 && time.Since(g.guardRenewed) >= guardRenewal
	t := g.aliveTimeoutLocked()
	if (len(g.answer) == 0 || t == 0) && !withMembers {
		return nil // nothing to renew, or the switch is to lapse
	}
	if g.renewFastLocked(t, withMembers) == nil {
		if withMembers {
			g.guardRenewed = time.Now()
		}
		return nil
	}
	err := g.updateLocked(g.guarded, g.answer, withMembers, func(c *nftables.Conn, f *family) error {
		return g.renewLocked(c, f, g.guarded, g.answer, withMembers, false)
	})
	if err != nil {
		return fmt.Errorf("guard: renewing timeouts: %w", err)
	}
	return nil
}

// Close deletes the tables: the node answers as if there were no guard.
// Later calls do nothing.
func (g *Guard) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	g.dropSwitchLocked()
	err := g.batchLocked(func(c *nftables.Conn) error {
		for _, f := range g.fams {
			// Adding first makes the deletion succeed even if the table
			// is gone already.
			c.AddTable(f.table)
			c.DelTable(f.table)
		}
		return nil
	})
	g.dropConnLocked()
	closeNS(&g.ns)
	if err != nil {
		return fmt.Errorf("guard: removing nftables tables %q: %w", TableName, err)
	}
	g.log.Info("stopped guarding ARP and NDP answers", "table", TableName)
	return nil
}

func (g *Guard) guardTimeout() time.Duration {
	if g.opts.GuardTimeout <= 0 {
		return 0
	}
	return g.opts.GuardTimeout + guardRenewal
}

// renewLocked queues, for f's table, a fresh alive element if any of its
// family's VIPs is answered, and withMembers the guarded and answered VIPs
// of its family with fresh timeouts. With always, sets left empty are
// flushed too.
func (g *Guard) renewLocked(c *nftables.Conn, f *family, gs, as []netip.Addr, withMembers, always bool) error {
	if withMembers {
		if err := renew(c, f.guarded, elements(pick(gs, f), g.guardTimeout()), always); err != nil {
			return err
		}
		if err := renew(c, f.answer, elements(pick(as, f), g.guardTimeout()), always); err != nil {
			return err
		}
	}
	// The switch matters only in a table with answered VIPs: renewing it
	// in the other family's too doubled the cost of every renewal on a
	// single-family node (docs/guard.md).
	var alive []nftables.SetElement
	if t := g.aliveTimeoutLocked(); t > 0 && slices.ContainsFunc(as, f.holds) {
		alive = []nftables.SetElement{aliveElement(f, t)}
	}
	return renew(c, f.alive, alive, always)
}

// updateLocked sends one batch built by fill for each family. If the
// tables or sets are gone (someone ran `nft flush ruleset`), it builds
// them again with gs and as as members.
func (g *Guard) updateLocked(gs, as []netip.Addr, withMembers bool, fill func(*nftables.Conn, *family) error) error {
	err := g.batchLocked(func(c *nftables.Conn) error {
		for _, f := range g.fams {
			if err := fill(c, f); err != nil {
				return err
			}
		}
		return nil
	})
	if withMembers {
		if err == nil {
			g.guardRenewed = time.Now()
		} else {
			// The kernel may hold something else than the guard believes
			// (the acknowledgements were not all read): no change in
			// place until the sets are set whole again.
			g.guardRenewed = time.Time{}
		}
	}
	if !errors.Is(err, unix.ENOENT) {
		return err
	}
	g.log.Warn("nftables guard tables or sets were removed by someone else; creating them again", "table", TableName)
	return g.replaceLocked(gs, as)
}

// replaceLocked creates the tables afresh with gs and as as members, in
// one batch, so the packet path sees the old tables or the new ones and
// nothing in between.
func (g *Guard) replaceLocked(gs, as []netip.Addr) error {
	err := g.batchLocked(func(c *nftables.Conn) error {
		for _, f := range g.fams {
			c.AddTable(f.table)
			c.DelTable(f.table)
			for _, s := range f.steps {
				if err := s.add(c, f); err != nil {
					return err
				}
			}
			if err := g.renewLocked(c, f, gs, as, true, false); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		g.guardRenewed = time.Now()
	} else {
		g.guardRenewed = time.Time{}
	}
	return err
}

// tablesLeftLocked tells whether a table of the guard's is present.
func (g *Guard) tablesLeftLocked() (bool, error) {
	c, err := g.dial()
	if err != nil {
		return false, fmt.Errorf("opening nftables netlink socket: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return false, fmt.Errorf("listing nftables tables: %w", withPermHint(err))
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == TableName }), nil
}

// diagnoseLocked narrows a refusal to build the tables down to the first
// piece of kernel support that is missing: it builds the throwaway tables
// fams one step more at a time, each attempt in a batch that deletes its
// table again.
func (g *Guard) diagnoseLocked(cause error, fams []*family) error {
	if errors.Is(cause, os.ErrPermission) {
		return cause
	}
	for _, f := range fams {
		for i, s := range f.steps {
			err := g.batchLocked(func(c *nftables.Conn) error {
				c.AddTable(f.table)
				c.DelTable(f.table)
				for _, s := range f.steps[:i+1] {
					if err := s.add(c, f); err != nil {
						return err
					}
				}
				c.DelTable(f.table)
				return nil
			})
			if err != nil {
				return fmt.Errorf("kernel lacks %s, needed for %s VIPs: %w", s.needs, f.what, err)
			}
		}
	}
	return cause
}

func (g *Guard) logChanges(gs, as []netip.Addr) {
	for _, a := range as {
		if !has(g.answer, a) {
			g.log.Info("answering ARP/NDP for VIP", "vip", a)
		}
	}
	for _, a := range gs {
		if !has(as, a) && (has(g.answer, a) || !has(g.guarded, a)) {
			g.log.Info("not answering ARP/NDP for VIP while it stays guarded", "vip", a)
		}
	}
	for _, a := range g.guarded {
		if !has(gs, a) {
			g.log.Debug("no longer guarding VIP", "vip", a)
		}
	}
}

// has tells whether the sorted addrs hold a.
func has(addrs []netip.Addr, a netip.Addr) bool {
	_, ok := slices.BinarySearchFunc(addrs, a, netip.Addr.Compare)
	return ok
}

// members checks and normalises the VIPs given to Set: each one once,
// sorted, IPv4-mapped IPv6 as IPv4, and every answered VIP guarded too.
func members(guarded, answer []netip.Addr) (gs, as []netip.Addr, err error) {
	as, gs = make([]netip.Addr, 0, len(answer)), make([]netip.Addr, 0, len(guarded)+len(answer))
	for _, a := range answer {
		a = a.Unmap()
		if p := address.VIPProblem(a); p != "" {
			return nil, nil, fmt.Errorf("answered VIP %s: %s", a, p)
		}
		as = append(as, a)
	}
	for _, a := range guarded {
		a = a.Unmap()
		if p := address.VIPProblem(a); p != "" {
			return nil, nil, fmt.Errorf("guarded VIP %s: %s", a, p)
		}
		gs = append(gs, a)
	}
	gs = append(gs, as...)
	slices.SortFunc(gs, netip.Addr.Compare)
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(gs), slices.Compact(as), nil
}

// pick returns the addresses of addrs that belong in f's table.
func pick(addrs []netip.Addr, f *family) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if f.holds(a) {
			out = append(out, a)
		}
	}
	return out
}

// holds reports whether a belongs in f's table.
func (f *family) holds(a netip.Addr) bool { return a.Is4() == f.ipv4 }
