package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vipd/vipd/internal/lab"
)

// Profiles of the agents during BenchmarkServices, for finding where their
// CPU and memory go: with VIPD_BENCH_PROFILE=<dir>, every agent serves Go's
// profiler (--debug-addr) on its node's loopback, and the benchmark writes
// into <dir>/<sub-benchmark>/ CPU profiles of each agent while the
// Services are created and placed (place-<node>-<i>.pprof, 10 s each), a
// CPU profile of each over the steady window (steady-<node>-0.pprof), a
// heap profile after it (heap-<node>.pprof, with heapstats-<node>.txt and
// smaps-<node>.txt) and one before the Services are created
// (heap-before-place-<node>.pprof: what placing allocated is the
// difference, `go tool pprof -sample_index=alloc_space -diff_base
// heap-before-place-n1.pprof heap-n1.pprof`, which includes the steady
// window), a CPU profile of each
// survivor while the lost node's VIPs are re-homed (rehome-<node>-0.pprof,
// 3 s), with CPU profiles of the API server over the first 10 s of
// placing and the re-home (apiserver-place.pprof, apiserver-rehome.pprof)
// and its metrics before and after the re-home (apiserver-before-rehome.txt,
// apiserver-after-rehome.txt);
// the agents' logs are kept in <dir>/<sub-benchmark>/logs. pprof merges the pieces:
// `go tool pprof -top <dir>/.../place-n1-*.pprof`.

// debugAddr is where the agents serve the profiler when profiling.
const debugAddr = "127.0.0.1:6060"

// benchProfiler takes the profiles; nil when profiling is off.
type benchProfiler struct {
	tb  testing.TB
	dir string

	wg   sync.WaitGroup
	stop chan struct{}
}

// profileChunk is the length of one CPU profile of a series.
const profileChunk = 10 * time.Second

func newBenchProfiler(tb testing.TB, name string) *benchProfiler {
	root := os.Getenv("VIPD_BENCH_PROFILE")
	if root == "" {
		return nil
	}
	dir := filepath.Join(root, filepath.FromSlash(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("writing agent profiles to %s", dir)
	return &benchProfiler{tb: tb, dir: dir}
}

// logDir is where the agents' logs are kept: beside the profiles, or
// without profiling under VIPD_BENCH_LOGS=<dir> (<dir>/<sub-benchmark>,
// to read what the agents decided in a run the profiler did not slow
// down), or nowhere ("").
func (p *benchProfiler) logDir(tb testing.TB, name string) string {
	var dir string
	switch root := os.Getenv("VIPD_BENCH_LOGS"); {
	case p != nil:
		dir = filepath.Join(p.dir, "logs")
	case root != "":
		dir = filepath.Join(root, filepath.FromSlash(name))
		tb.Logf("keeping the agents' logs in %s", dir)
	default:
		return ""
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// args are the agents' extra flags.
func (p *benchProfiler) args() []string {
	if p == nil {
		return nil
	}
	return []string{"--debug-addr", debugAddr}
}

// cpu profiles every node's agent in the background, in pieces of d
// written to <what>-<node>-<i>.pprof, until wait is called; once if once.
func (p *benchProfiler) cpu(what string, nodes []*lab.Node, d time.Duration, once bool) {
	if p == nil {
		return
	}
	if p.stop == nil {
		p.stop = make(chan struct{})
	}
	stop := p.stop
	secs := max(1, int(d/time.Second))
	for _, n := range nodes {
		p.wg.Go(func() {
			for i := 0; ; i++ {
				p.fetch(n, "/debug/pprof/profile?seconds="+strconv.Itoa(secs), fmt.Sprintf("%s-%s-%d", what, n.Name, i), d)
				select {
				case <-stop:
					return
				default:
				}
				if once {
					return
				}
			}
		})
	}
}

// apiServer profiles the API server's CPU for d in the background, into
// apiserver-<what>.pprof.
func (p *benchProfiler) apiServer(what string, d time.Duration) {
	if p == nil {
		return
	}
	uri := "/debug/pprof/profile?seconds=" + strconv.Itoa(max(1, int(d/time.Second)))
	p.wg.Go(func() { p.fromAPIServer(uri, "apiserver-"+what+".pprof", d+30*time.Second) })
}

// apiMetrics writes the API server's metrics (request latencies, the
// waits of its priority and fairness queues) to apiserver-<what>.txt.
func (p *benchProfiler) apiMetrics(what string) {
	if p == nil {
		return
	}
	p.fromAPIServer("/metrics", "apiserver-"+what+".txt", 30*time.Second)
}

// fromAPIServer writes what the API server answers at uri, asked with the
// admin's credentials (which may read /debug/pprof and /metrics), to file
// in the profiles' directory.
func (p *benchProfiler) fromAPIServer(uri, file string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	b, err := pkg.admin.CoreV1().RESTClient().Get().RequestURI(uri).DoRaw(ctx)
	if err == nil {
		err = os.WriteFile(filepath.Join(p.dir, file), b, 0o644)
	}
	if err != nil {
		p.tb.Logf("%s from the API server: %v", uri, err)
	}
}

// heap writes a heap profile of every node's agent, after a GC, with the
// runtime's memory statistics (heapstats-<node>.txt) and the kernel's
// account of its resident memory (smaps-<node>.txt: code and read-only
// data of the binary apart from the heap).
func (p *benchProfiler) heap(nodes []*lab.Node, procs map[string]*lab.Process) {
	if p == nil {
		return
	}
	for _, n := range nodes {
		if pr := procs[n.Name]; pr != nil {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pr.Pid())); err == nil {
				_ = os.WriteFile(filepath.Join(p.dir, "smaps-"+n.Name+".txt"), b, 0o644)
			}
		}
		p.fetch(n, "/debug/pprof/heap?gc=1", "heap-"+n.Name, 0)
		p.fetch(n, "/debug/pprof/heap?debug=1", "heapstats-"+n.Name, 0)
	}
}

// heapBefore writes a heap profile of every node's agent (its
// allocations so far) as heap-<label>-<node>.pprof.
func (p *benchProfiler) heapBefore(label string, nodes []*lab.Node) {
	if p == nil {
		return
	}
	for _, n := range nodes {
		p.fetch(n, "/debug/pprof/heap", "heap-"+label+"-"+n.Name, 0)
	}
}

// wait ends the series of CPU profiles and waits for those in flight.
func (p *benchProfiler) wait() {
	if p == nil || p.stop == nil {
		return
	}
	close(p.stop)
	p.stop = nil
	p.wg.Wait()
}

func (p *benchProfiler) fetch(n *lab.Node, path, file string, d time.Duration) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := lab.InNetns(n.Netns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}, Timeout: d + 30*time.Second}
	resp, err := client.Get("http://" + debugAddr + path)
	if err != nil {
		p.tb.Logf("profile %s: %v", file, err)
		return
	}
	defer resp.Body.Close()
	name := file + ".pprof"
	if strings.Contains(path, "debug=1") {
		name = file + ".txt"
	}
	f, err := os.Create(filepath.Join(p.dir, name))
	if err != nil {
		p.tb.Logf("profile %s: %v", file, err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		p.tb.Logf("profile %s: %v", file, err)
	}
}
