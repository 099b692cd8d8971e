package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vipd/vipd/internal/config"
	"github.com/vipd/vipd/internal/election"
	"github.com/vipd/vipd/internal/services"
)

// health answers the kubelet's probes.
//
// Liveness (/healthz) is about this process only: the main loop, which
// holds, renews and removes the VIPs, has gone round recently. It never
// depends on the API server: a holder riding out an API outage is healthy,
// and a liveness probe must not restart it.
//
// Readiness (/readyz) is about being a useful member: the caches have
// synced and the node Lease was renewed within a Lease duration.
type health struct {
	el  *election.Elector
	svc *services.Controller // nil without Services
	// stall is how long the main loop may stay away before it counts as
	// stuck; fresh is how recent the node Lease renewal must be.
	stall, fresh time.Duration
	now          func() time.Time

	loopAt atomic.Int64 // unix nanoseconds of the main loop's last round
}

func newHealth(el *election.Elector, svc *services.Controller, loopEvery, leaseDuration time.Duration) *health {
	h := &health{el: el, svc: svc, stall: max(10*time.Second, 4*loopEvery), fresh: leaseDuration, now: time.Now}
	h.beat()
	return h
}

// beat records a round of the main loop.
func (h *health) beat() { h.loopAt.Store(h.now().UnixNano()) }

// live returns why the agent is not live, or "".
func (h *health) live() string {
	if since := h.now().Sub(time.Unix(0, h.loopAt.Load())); since > h.stall {
		return fmt.Sprintf("main loop stuck: last round %v ago (limit %v)", since.Round(time.Millisecond), h.stall)
	}
	return ""
}

// ready returns why the agent is not ready, or "".
func (h *health) ready() string {
	var why []string
	if p := h.live(); p != "" {
		why = append(why, p)
	}
	switch last := h.el.LastRenew(); {
	case last.IsZero():
		why = append(why, "node Lease not renewed yet (Lease cache not synced, or the API server not reached)")
	case h.now().Sub(last) > h.fresh:
		why = append(why, fmt.Sprintf("node Lease last renewed %v ago", h.now().Sub(last).Round(time.Millisecond)))
	}
	if h.svc != nil && !h.svc.Synced() {
		why = append(why, "Services not synced yet")
	}
	return strings.Join(why, "; ")
}

func (h *health) handler() http.Handler {
	mux := http.NewServeMux()
	answer := func(check func() string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if problem := check(); problem != "" {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, problem)
				return
			}
			fmt.Fprintln(w, "ok")
		}
	}
	mux.Handle("/healthz", answer(h.live))
	mux.Handle("/readyz", answer(h.ready))
	return mux
}

// serveHealth serves /healthz and /readyz on addr until ctx ends.
func serveHealth(ctx context.Context, addr string, h *health, log *slog.Logger) error {
	return serveHTTP(ctx, "health address", addr, "/healthz and /readyz", h.handler(), log)
}

// loopEvery is the longest the main loop waits between two rounds: the
// resync interval, shorter with a VIP lifetime, so the reconciler renews
// the VIPs it holds well before they expire.
func loopEvery(cfg config.Config) time.Duration {
	// At least every guardResync: the guard is refreshed only while the
	// loop shows it runs.
	every := min(resyncInterval, guardResync)
	if cfg.VIPLifetime > 0 {
		every = min(every, cfg.VIPLifetime/4)
	}
	return every
}
