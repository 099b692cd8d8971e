package agent

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/pprof"
)

// serveDebug exposes Go's profiler on addr until ctx ends (--debug-addr),
// for profiling an agent where it runs: the benchmarks take CPU and heap
// profiles from it.
func serveDebug(ctx context.Context, addr string, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serveHTTP(ctx, "--debug-addr", addr, "profiler", mux, log)
}
