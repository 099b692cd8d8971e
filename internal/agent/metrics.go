package agent

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's own gauges; the announcer registers its counters
// in the same registry.
type metrics struct {
	reg     *prometheus.Registry
	live    prometheus.Gauge
	held    prometheus.Gauge
	refused prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vipd_live",
			Help: "1 while this agent's node Lease is renewed within the renew deadline, so it may hold VIPs.",
		}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vipd_vips_held",
			Help: "VIPs this agent holds on its interface.",
		}),
		refused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vipd_contests_refused",
			Help: "Contests this node is not a candidate for because its interface refused one of their VIPs.",
		}),
	}
	m.reg.MustRegister(m.live, m.held, m.refused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// serve exposes /metrics on addr until ctx ends; a bad or busy address
// fails start-up. Health has an address of its own (health.go).
func (m *metrics) serve(ctx context.Context, addr string, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return serveHTTP(ctx, "prometheus_server", addr, "metrics", mux, log)
}
