package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

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

// serve exposes /metrics and /healthz on addr until ctx ends. The listener
// is opened before it returns, so a bad or busy address fails start-up.
func (m *metrics) serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("prometheus_server %q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}
