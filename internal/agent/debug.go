package agent

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"runtime"
)

// debugMemProfileRate samples one allocation per this many bytes while the
// profiler is served: Go's default (512 KiB) is too coarse to tell where an
// agent's few megabytes go.
const debugMemProfileRate = 16 << 10

// serveDebug exposes Go's profiler on addr until ctx ends (--debug-addr),
// for profiling an agent where it runs: the benchmarks take CPU and heap
// profiles from it. It makes heap profiles finer-grained; call it before
// the caches fill.
func serveDebug(ctx context.Context, addr string, log *slog.Logger) error {
	runtime.MemProfileRate = debugMemProfileRate
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serveHTTP(ctx, "--debug-addr", addr, "profiler", mux, log)
}
