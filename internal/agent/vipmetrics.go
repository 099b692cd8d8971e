package agent

import (
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/heartbeat"
)

// vipMetrics are the metrics an SRE alerts on (docs/metrics.md). Every
// label's values are bounded: by the VIPs and their Services, by the
// reasons and API verbs, or by the nodes.
type vipMetrics struct {
	takeovers     *prometheus.CounterVec
	losses        *prometheus.CounterVec
	announceDelay prometheus.Histogram
	apiErrors     *prometheus.CounterVec
	apiWrites     *prometheus.HistogramVec
}

// Sources of the metrics read at scrape time; any may be nil.
type scrapeSources struct {
	obs     *observer
	el      *election.Elector
	synced  func() bool // the Services' informers; nil without Services
	hb      *heartbeat.Monitor
	version string
}

func newVIPMetrics(reg prometheus.Registerer) *vipMetrics {
	m := &vipMetrics{
		takeovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vipd_takeovers_total",
			Help: "Elections this agent took, by reason (new, released, holder-released, holder-unknown, holder-expired, holder-silent, holder-not-live, already-holder).",
		}, []string{"reason"}),
		losses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vipd_losses_total",
			Help: "Elections this agent gave up, by reason (not-live, taken, not-candidate, refused, removed, shutdown).",
		}, []string{"reason"}),
		announceDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vipd_takeover_announce_seconds",
			Help:    "Time from a successful claim write to the first announcement (gratuitous ARP or unsolicited NA) of each VIP taken.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		apiErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vipd_api_write_errors_total",
			Help: "Writes to the Kubernetes API that failed, by verb, resource and HTTP status code (\"error\": no response).",
		}, []string{"verb", "resource", "code"}),
		apiWrites: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vipd_api_write_seconds",
			Help: "Time writes to the Kubernetes API took, failed ones included, by verb and resource.",
			// Up to the default renew deadline (3s): a node Lease
			// renewal that nears it is about to cost the VIPs.
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 1.5, 2, 3, 5},
		}, []string{"verb", "resource"}),
	}
	// Known reasons start at zero, so that rate() and increase() see them.
	for _, r := range []election.Reason{election.TookNew, election.TookReleased, election.TookHolderReleased,
		election.TookHolderUnknown, election.TookHolderExpired, election.TookHolderSilent, election.TookHolderNotLive, election.TookAlreadyHolder} {
		m.takeovers.WithLabelValues(string(r))
	}
	for _, r := range []election.Reason{election.LostNotLive, election.LostTaken, election.LostNotCandidate,
		election.LostRemoved, election.LostShutdown, election.LostRefused} {
		m.losses.WithLabelValues(string(r))
	}
	reg.MustRegister(m.takeovers, m.losses, m.announceDelay, m.apiErrors, m.apiWrites)
	return m
}

var (
	descVIPHeld = prometheus.NewDesc("vipd_vip_held",
		"1 while this agent holds the VIP, 0 while it takes part in its election without holding it; one series per Service the VIP serves (none for the control plane).",
		[]string{"vip", "service_namespace", "service_name", "election"}, nil)
	descSynced = prometheus.NewDesc("vipd_informer_synced",
		"1 once the informer's cache has synced with the API server; until then the agent takes part in no election (leases) or knows no Service (services).",
		[]string{"informer"}, nil)
	descPeers = prometheus.NewDesc("vipd_heartbeat_peers",
		"Other agents by heartbeat state: heard (beats arrive), silent (they stopped), unheard (never arrived).",
		[]string{"state"}, nil)
	descBuild = prometheus.NewDesc("vipd_build_info",
		"Always 1; the labels say which vipd runs.",
		[]string{"version", "goversion"}, nil)
)

// scrapeCollector reports what is read from the agent's state at scrape
// time.
type scrapeCollector struct{ src scrapeSources }

func (c scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descVIPHeld
	ch <- descSynced
	ch <- descPeers
	ch <- descBuild
}

func (c scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, s.version, runtime.Version())
	if s.obs != nil {
		for _, h := range s.obs.heldNow() {
			ch <- prometheus.MustNewConstMetric(descVIPHeld, prometheus.GaugeValue, boolGauge(h.held),
				h.vip, h.svc.Namespace, h.svc.Name, h.election)
		}
	}
	if s.el != nil {
		ch <- prometheus.MustNewConstMetric(descSynced, prometheus.GaugeValue, boolGauge(s.el.Synced()), "leases")
	}
	if s.synced != nil {
		ch <- prometheus.MustNewConstMetric(descSynced, prometheus.GaugeValue, boolGauge(s.synced()), "services")
	}
	if s.hb != nil {
		count := map[string]int{PeerHeard: 0, PeerSilent: 0, PeerUnheard: 0}
		for _, p := range s.hb.Peers() {
			switch {
			case p.Heard:
				count[PeerHeard]++
			case p.Ever:
				count[PeerSilent]++
			default:
				count[PeerUnheard]++
			}
		}
		for state, n := range count {
			ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(n), state)
		}
	}
}

// writeMetrics times API writes and counts the failed ones; it wraps the
// client's transport.
type writeMetrics struct {
	next    http.RoundTripper
	errors  *prometheus.CounterVec
	seconds *prometheus.HistogramVec
}

func (w writeMetrics) RoundTrip(req *http.Request) (*http.Response, error) {
	verb := writeVerb(req.Method)
	if verb == "" {
		return w.next.RoundTrip(req)
	}
	resource := apiResource(req.URL.Path)
	start := time.Now()
	resp, err := w.next.RoundTrip(req)
	w.seconds.WithLabelValues(verb, resource).Observe(time.Since(start).Seconds())
	switch {
	case err != nil:
		w.errors.WithLabelValues(verb, resource, "error").Inc()
	case resp.StatusCode >= 400:
		w.errors.WithLabelValues(verb, resource, strconv.Itoa(resp.StatusCode)).Inc()
	}
	return resp, err
}

// writeVerb is the Kubernetes verb of a write request; "" for reads.
func writeVerb(method string) string {
	switch method {
	case http.MethodPost:
		return "create"
	case http.MethodPut:
		return "update"
	case http.MethodPatch:
		return "patch"
	case http.MethodDelete:
		return "delete"
	}
	return ""
}

// apiResource is the resource (and subresource) a request path names:
// /api/v1/namespaces/ns/services/web/status is "services/status".
func apiResource(path string) string {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case len(segs) >= 2 && segs[0] == "api":
		segs = segs[2:]
	case len(segs) >= 3 && segs[0] == "apis":
		segs = segs[3:]
	default:
		return "other"
	}
	if len(segs) >= 3 && segs[0] == "namespaces" {
		segs = segs[2:]
	}
	switch len(segs) {
	case 0:
		return "other"
	case 1, 2:
		return segs[0]
	}
	return segs[0] + "/" + segs[2]
}
