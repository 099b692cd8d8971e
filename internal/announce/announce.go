// Package announce tells the layer-2 segment which node holds a VIP:
// gratuitous ARP for IPv4 and unsolicited neighbour advertisements with the
// override flag for IPv6, sent at once when a VIP is taken over, repeated in
// a short burst, then refreshed periodically.
package announce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netns"
	"golang.org/x/net/bpf"
	"golang.org/x/net/ipv6"
)

// Defaults of Options.
const (
	DefaultInterval      = 3 * time.Second
	DefaultBurst         = 3
	DefaultBurstInterval = 200 * time.Millisecond
)

// writeTimeout bounds one send; sends happen under the lock that Set takes.
const writeTimeout = 250 * time.Millisecond

// Options tune an Announcer. Zero values take the defaults.
type Options struct {
	// Interval is the periodic refresh (vip_arpRate); a refresh may go out
	// up to a quarter of it early, with other VIPs'. Default 3s.
	Interval time.Duration
	// Burst is how many announcements a newly set VIP gets before the
	// periodic refresh takes over, the first one at once. Default 3.
	Burst int
	// BurstInterval spaces the announcements of the burst. Default 200ms:
	// a lost first announcement is repaired well within a second.
	BurstInterval time.Duration
	// Registerer, if not nil, receives the announcement counters.
	Registerer prometheus.Registerer
	// Netns names a network namespace (as `ip netns` does) to open the
	// sockets in; empty means the process's own. Entering another namespace
	// takes CAP_SYS_ADMIN, which the agent does not have; tests use it.
	Netns string
}

// Stats counts announcements since New.
type Stats struct {
	Sent   uint64 // packets handed to the kernel
	Errors uint64 // failed sends, including sockets that could not be opened
}

// Announcer announces a set of VIPs on one interface.
type Announcer struct {
	ifi  *net.Interface
	opts Options
	log  *slog.Logger
	ns   netns.NsHandle // where sockets are opened
	// ownNS: the sockets belong in the process's own namespace, where
	// every goroutine not locked to a thread runs.
	ownNS bool

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex // guards everything below and every send
	closed bool
	vips   map[netip.Addr]*schedule
	want   []netip.Addr // Set's buffer
	arp    *packet.Conn // opened with the first IPv4 VIP
	ndp    *ndp.Conn    // opened with the first IPv6 VIP

	sent, errs atomic.Uint64
	metrics    *metrics
}

type schedule struct {
	sent    int // announcements since the VIP was set
	next    time.Time
	lastErr string // of the previous attempt, to log a persisting failure once
	retries int    // quick retries of the current announcement (queueFullRetry)
}

// A full transmit queue (ENOBUFS: the interface's queue, or with a veth
// its peer's backlog, dropped the frame) passes in milliseconds, while the
// next announcement of a burst is BurstInterval away and a client keeps
// the old holder's MAC meanwhile. Such a failure is retried every
// queueFullRetry, up to queueFullRetries times, before it counts as the
// announcement. The chaos soak saw them when many VIPs moved at once.
const (
	queueFullRetry   = 20 * time.Millisecond
	queueFullRetries = 5
)

// New starts an Announcer for ifi; Close stops it. Sockets are opened
// lazily, in the network namespace of the thread that calls New, when the
// first VIP of their family is set: an interface without IPv6 works for
// IPv4 and the other way round. log should name the interface: the
// Announcer adds no field of its own to it.
func New(ifi *net.Interface, opts Options, log *slog.Logger) (*Announcer, error) {
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("announcing on %s: no Ethernet hardware address (%q)", ifi.Name, ifi.HardwareAddr)
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.BurstInterval <= 0 {
		opts.BurstInterval = DefaultBurstInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer, ifi.Name)
	if err != nil {
		return nil, err
	}
	ns := netns.None()
	if opts.Netns != "" {
		if ns, err = netns.GetFromName(opts.Netns); err != nil {
			return nil, fmt.Errorf("announcing on %s: opening network namespace %s: %w", ifi.Name, opts.Netns, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Announcer{
		ifi:     ifi,
		opts:    opts,
		log:     log, // the agent's: it names the interface already
		ns:      ns,
		ownNS:   opts.Netns == "",
		wake:    make(chan struct{}, 1),
		cancel:  cancel,
		done:    make(chan struct{}),
		vips:    map[netip.Addr]*schedule{},
		metrics: m,
	}
	go a.run(ctx)
	return a, nil
}

// Set replaces the VIPs to announce. A new VIP is announced before Set
// returns, then Burst-1 more times BurstInterval apart, then every
// Interval. A VIP left out is never announced again once Set returns.
// VIPs that stay keep their schedule.
func (a *Announcer) Set(vips []netip.Addr) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	// want is vips, valid, sorted and without repeats, in a buffer kept
	// between calls: the agent sets every VIP it announces on each pass
	// that applies, and a set of them made each time was garbage.
	want := a.want[:0]
	for _, v := range vips {
		v = v.Unmap().WithZone("")
		if !v.IsValid() || v.IsUnspecified() || v.IsMulticast() {
			a.log.Warn("not announcing an invalid VIP", "vip", v)
			continue
		}
		want = append(want, v)
	}
	slices.SortFunc(want, netip.Addr.Compare)
	want = slices.Compact(want)
	a.want = want
	for v := range a.vips {
		if _, ok := slices.BinarySearchFunc(want, v, netip.Addr.Compare); !ok {
			delete(a.vips, v)
			a.log.Info("stopped announcing", "vip", v)
		}
	}
	now := time.Now()
	for _, v := range want {
		if _, ok := a.vips[v]; ok {
			continue
		}
		s := &schedule{}
		a.vips[v] = s
		a.log.Info("announcing", "vip", v)
		a.announceLocked(v, s, now)
	}
	a.mu.Unlock()

	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Reannounce starts every VIP's burst again at once, as for a VIP just
// set: after the link came back, switches and neighbours may have
// forgotten where the VIPs are.
func (a *Announcer) Reannounce() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	now := time.Now()
	for _, v := range slices.SortedFunc(maps.Keys(a.vips), netip.Addr.Compare) {
		s := a.vips[v]
		s.sent, s.retries = 0, 0
		a.announceLocked(v, s, now)
	}
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// SetInterface moves the announcements to ifi, the same interface made
// again (a new index, perhaps a new MAC): the sockets are opened afresh on
// the next announcement.
func (a *Announcer) SetInterface(ifi *net.Interface) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ifi = ifi
	a.closeSocketsLocked()
}

// Stats returns the announcement counters.
func (a *Announcer) Stats() Stats {
	return Stats{Sent: a.sent.Load(), Errors: a.errs.Load()}
}

// Close stops all announcements and releases the sockets; nothing is sent
// once Close returns. Set after Close does nothing.
func (a *Announcer) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	clear(a.vips)
	a.mu.Unlock()

	a.cancel()
	<-a.done

	a.mu.Lock()
	defer a.mu.Unlock()
	a.closeSocketsLocked()
	if a.ownNS {
		return nil
	}
	return a.ns.Close()
}

func (a *Announcer) run(ctx context.Context) {
	defer close(a.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		a.mu.Lock()
		next := a.sendDueLocked(time.Now())
		a.mu.Unlock()

		var tick <-chan time.Time
		if !next.IsZero() {
			timer.Reset(time.Until(next))
			tick = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		case <-tick:
		}
	}
}

// sendDueLocked announces every VIP whose time has come and returns when
// the next one is due (zero if none). A periodic announcement due within
// a quarter of the interval goes out now, with the others: the VIPs'
// refreshes gather into a few rounds per interval instead of a wake-up
// for each VIP (a hundred VIPs would wake the agent 33 times a second at
// the default 3 s). None is ever sent later than its interval.
func (a *Announcer) sendDueLocked(now time.Time) time.Time {
	var next time.Time
	early := now.Add(a.opts.Interval / 4)
	for v, s := range a.vips {
		// A quick retry (s.retries) keeps its own time: gathered early, it
		// would meet the same full queue.
		if !now.Before(s.next) || s.retries == 0 && s.sent >= a.opts.Burst && !early.Before(s.next) {
			a.announceLocked(v, s, now)
		}
		if next.IsZero() || s.next.Before(next) {
			next = s.next
		}
	}
	return next
}

func (a *Announcer) announceLocked(v netip.Addr, s *schedule, now time.Time) {
	s.sent++
	if s.sent < a.opts.Burst {
		s.next = now.Add(a.opts.BurstInterval)
	} else {
		s.next = now.Add(a.opts.Interval)
	}

	family := "ipv6"
	var err error
	if v.Is4() {
		family = "ipv4"
		err = a.sendARPLocked(v)
	} else {
		err = a.sendNALocked(v)
	}
	if err != nil {
		a.errs.Add(1)
		a.metrics.errors(family)
		if errors.Is(err, syscall.ENOBUFS) && s.retries < queueFullRetries {
			s.sent--
			s.retries++
			s.next = now.Add(queueFullRetry)
			// Said only if the retries do not help: a thousand VIPs moving
			// at once would log two lines each.
			a.log.Debug("announcement failed; retrying soon", "vip", v, "err", err, "retry_in", queueFullRetry)
			return
		}
		s.retries = 0
		level := slog.LevelWarn
		if err.Error() == s.lastErr {
			level = slog.LevelDebug // already said; the counter keeps going
		}
		s.lastErr = err.Error()
		a.log.Log(context.Background(), level, "announcement failed", "vip", v, "err", err)
		return
	}
	s.retries = 0
	if s.lastErr != "" {
		a.log.Info("announcement works again", "vip", v)
		s.lastErr = ""
	}
	a.sent.Add(1)
	a.metrics.sent(family)
	a.log.Debug("announced", "vip", v)
}

// sendARPLocked broadcasts a gratuitous ARP request for v: sender and
// target IP are the VIP, sender MAC ours, target MAC zero (RFC 5227's ARP
// Announcement). Every neighbour that caches v updates it (RFC 826's merge
// rule), and Linux treats this form as gratuitous, so it overrides even an
// entry updated less than locktime ago. The reply form (op 2, target MAC =
// sender MAC) would add nothing for those receivers and is not sent.
func (a *Announcer) sendARPLocked(v netip.Addr) error {
	if a.arp == nil {
		c, err := a.openARP()
		if err != nil {
			return err
		}
		a.arp = c
	}
	p, err := arp.NewPacket(arp.OperationRequest, a.ifi.HardwareAddr, v, make(net.HardwareAddr, 6), v)
	if err != nil {
		return fmt.Errorf("building ARP packet: %w", err)
	}
	b, err := p.MarshalBinary()
	if err != nil {
		return fmt.Errorf("building ARP packet: %w", err)
	}
	_ = a.arp.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := a.arp.WriteTo(b, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
		if !errors.Is(err, syscall.ENOBUFS) {
			// A fresh socket next time, in case the interface was re-created.
			_ = a.arp.Close()
			a.arp = nil
		}
		return fmt.Errorf("sending gratuitous ARP: %w", err)
	}
	return nil
}

func (a *Announcer) openARP() (*packet.Conn, error) {
	// Send-only: a filter that drops everything keeps the kernel from
	// queueing every ARP packet of the segment on a socket nobody reads.
	drop, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		return nil, fmt.Errorf("assembling BPF filter: %w", err)
	}
	var c *packet.Conn
	err = a.inNetns(func() error {
		var err error
		// Datagram: the kernel writes the Ethernet header (our MAC as
		// source, the ARP EtherType).
		c, err = packet.Listen(a.ifi, packet.Datagram, int(ethernet.EtherTypeARP), &packet.Config{Filter: drop})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening ARP socket: %w", err)
	}
	return c, nil
}

// sendNALocked sends an unsolicited neighbour advertisement for v to all
// nodes (ff02::1) from our link-local address: Override set so that
// neighbours replace the link-layer address they cache for v, Solicited
// clear as it answers no solicitation, Router clear as a VIP is no router.
func (a *Announcer) sendNALocked(v netip.Addr) error {
	if a.ndp == nil {
		c, err := a.openNDP()
		if err != nil {
			return err
		}
		a.ndp = c
	}
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: v,
		Options: []ndp.Option{&ndp.LinkLayerAddress{
			Direction: ndp.Target,
			Addr:      a.ifi.HardwareAddr,
		}},
	}
	_ = a.ndp.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := a.ndp.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes()); err != nil {
		if !errors.Is(err, syscall.ENOBUFS) {
			// A fresh socket next time, bound to the current link-local address.
			_ = a.ndp.Close()
			a.ndp = nil
		}
		return fmt.Errorf("sending neighbour advertisement: %w", err)
	}
	return nil
}

func (a *Announcer) openNDP() (*ndp.Conn, error) {
	var c *ndp.Conn
	err := a.inNetns(func() error {
		addrs, err := a.ifi.Addrs()
		if err != nil {
			return fmt.Errorf("listing addresses: %w", err)
		}
		var ll netip.Addr
		for _, ad := range addrs {
			if p, err := netip.ParsePrefix(ad.String()); err == nil && p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
				ll = p.Addr()
				break
			}
		}
		if !ll.IsValid() {
			return errors.New("no IPv6 link-local address (IPv6 disabled on the interface?)")
		}
		c, _, err = ndp.Listen(a.ifi, ndp.LinkLocal)
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			return fmt.Errorf("link-local address %s not usable yet (duplicate address detection still running?): %w", ll, err)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening NDP socket: %w", err)
	}
	// Send-only: block every ICMPv6 type from being queued on it.
	var f ipv6.ICMPFilter
	f.SetAll(true)
	if err := c.SetICMPFilter(&f); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("setting ICMPv6 filter: %w", err)
	}
	return c, nil
}

// inNetns runs f on a thread in the announcer's network namespace, so that
// sockets (re)opened from the background goroutine land in the same
// namespace as those opened by Set.
//
// In the process's own namespace (the agent on a node) it simply runs f:
// entering a namespace takes CAP_SYS_ADMIN, which the agent does not have.
func (a *Announcer) inNetns(f func() error) error {
	if a.ownNS {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine instead of
		// going back to the scheduler in a namespace it may not belong to.
		runtime.LockOSThread()
		if err := netns.Set(a.ns); err != nil {
			errc <- fmt.Errorf("entering network namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

func (a *Announcer) closeSocketsLocked() {
	var errs []error
	if a.arp != nil {
		errs = append(errs, a.arp.Close())
		a.arp = nil
	}
	if a.ndp != nil {
		errs = append(errs, a.ndp.Close())
		a.ndp = nil
	}
	if err := errors.Join(errs...); err != nil {
		a.log.Warn("closing announcement sockets", "err", err)
	}
}

// metrics are the optional Prometheus counters.
type metrics struct {
	sentTotal, errorsTotal *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, iface string) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"interface": iface}, reg)
	m := &metrics{
		sentTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vipd_announcements_sent_total",
			Help: "Gratuitous ARP (ipv4) and unsolicited neighbour advertisements (ipv6) sent.",
		}, []string{"family"}),
		errorsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vipd_announcement_errors_total",
			Help: "Announcement sends that failed; a send retried after a full transmit queue counts each time.",
		}, []string{"family"}),
	}
	for _, c := range []**prometheus.CounterVec{&m.sentTotal, &m.errorsTotal} {
		if err := reg.Register(*c); err != nil {
			// A new Announcer on the same interface keeps counting on the
			// collector of the previous one.
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("registering announcement metrics: %w", err)
			}
			existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
			if !ok {
				return nil, fmt.Errorf("registering announcement metrics: %w", err)
			}
			*c = existing
		}
	}
	return m, nil
}

func (m *metrics) sent(family string) {
	if m != nil {
		m.sentTotal.WithLabelValues(family).Inc()
	}
}

func (m *metrics) errors(family string) {
	if m != nil {
		m.errorsTotal.WithLabelValues(family).Inc()
	}
}
