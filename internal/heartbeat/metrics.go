package heartbeat

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the optional Prometheus counters; a nil *metrics counts nothing.
type metrics struct {
	sentTotal       prometheus.Counter
	sendErrorsTotal prometheus.Counter
	droppedTotal    prometheus.Counter
	receivedTotal   *prometheus.CounterVec
	silencesTotal   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		sentTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vipd_heartbeat_sent_total",
			Help: "Heartbeats sent, one per peer per beat.",
		}),
		sendErrorsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vipd_heartbeat_send_errors_total",
			Help: "Heartbeats that could not be sent.",
		}),
		droppedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vipd_heartbeat_send_dropped_total",
			Help: "Heartbeats not sent because the socket buffer was full; sending never waits.",
		}),
		receivedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vipd_heartbeat_received_total",
			Help: "Datagrams received on the heartbeat socket, by result: accepted, unverified (authentic but not fresh), stale (older sequence number or run), auth (bad MAC or unknown key), nokey, malformed, cluster (another cluster), misrouted (for another node), unknown (not a peer).",
		}, []string{"result"}),
		silencesTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vipd_heartbeat_silences_total",
			Help: "Times a peer went silent (no heartbeat for the timeout) after being heard.",
		}, []string{"peer"}),
	}
	var err error
	if m.sentTotal, err = register(reg, m.sentTotal); err != nil {
		return nil, err
	}
	if m.sendErrorsTotal, err = register(reg, m.sendErrorsTotal); err != nil {
		return nil, err
	}
	if m.droppedTotal, err = register(reg, m.droppedTotal); err != nil {
		return nil, err
	}
	if m.receivedTotal, err = register(reg, m.receivedTotal); err != nil {
		return nil, err
	}
	if m.silencesTotal, err = register(reg, m.silencesTotal); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector of the same name that an
// earlier Monitor in this process registered, so counting goes on there.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("registering heartbeat metrics: %w", err)
}

func (m *metrics) sent(ok, failed, dropped uint64) {
	if m != nil {
		m.sentTotal.Add(float64(ok))
		m.sendErrorsTotal.Add(float64(failed))
		m.droppedTotal.Add(float64(dropped))
	}
}

func (m *metrics) received(result string) {
	if m != nil {
		m.receivedTotal.WithLabelValues(result).Inc()
	}
}

func (m *metrics) silence(peer string) {
	if m != nil {
		m.silencesTotal.WithLabelValues(peer).Inc()
	}
}
