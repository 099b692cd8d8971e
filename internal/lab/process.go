package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxKeptLog bounds the output a Process keeps in memory for Log.
const maxKeptLog = 1 << 20

// Process is a program started on a node with Node.Start.
type Process struct {
	Node    string
	cmd     *exec.Cmd
	logPath string
	out     *logSink
	done    chan struct{}
	err     error // valid once done is closed
}

// Start runs bin with args inside the node's namespace. env is added to this
// process's environment (later entries win). Output (stdout and stderr) goes
// to a log file in the lab's directory, is kept for Log, and is passed line by
// line to Options.Logf prefixed with the node name. The process is killed
// when ctx is done, when the process running the lab dies, or by Lab.Close.
func (n *Node) Start(ctx context.Context, bin string, args []string, env []string) (*Process, error) {
	// ip netns exec execs bin, so the pid is bin's.
	return n.start(ctx, []string{"ip", "netns", "exec", n.Netns}, bin, args, env)
}

// StartHostMounts is Start for programs that must see the host's mounts:
// only the network namespace is the node's. (ip netns exec also gives the
// program a mount namespace of its own with a fresh /sys, which has no
// cgroup mounts: a container runtime or kubelet cannot work there.)
func (n *Node) StartHostMounts(ctx context.Context, bin string, args []string, env []string) (*Process, error) {
	// nsenter execs bin, so the pid is bin's.
	return n.start(ctx, []string{"nsenter", "--net=/run/netns/" + n.Netns, "--"}, bin, args, env)
}

// start runs bin with args through enter, a command that enters the
// node's namespace and then execs bin.
func (n *Node) start(ctx context.Context, enter []string, bin string, args []string, env []string) (*Process, error) {
	l := n.lab
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab is closed")
	}
	l.logSeq++
	logPath := filepath.Join(l.dir, fmt.Sprintf("%s-%s-%d.log", n.Name, filepath.Base(bin), l.logSeq))
	l.mu.Unlock()

	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating log for %s on %s: %w", bin, n.Name, err)
	}
	p := &Process{
		Node:    n.Name,
		logPath: logPath,
		out:     &logSink{file: f, prefix: n.Name, logf: l.logf},
		done:    make(chan struct{}),
	}
	argv := append(append(append([]string{}, enter...), bin), args...)
	p.cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	p.cmd.Env = append(harnessFree(os.Environ()), env...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	// No agent outlives a test binary that is killed before it can clean up.
	// (The kernel sends it when the forking thread exits; Go keeps threads
	// unless a goroutine exits while locked to one.)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// A child of the program that keeps the output pipe open must not hold
	// up Wait once the program has exited.
	p.cmd.WaitDelay = time.Second
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s on %s: %w", bin, n.Name, err)
	}
	l.mu.Lock()
	closed := l.closed
	if !closed {
		l.procs = append(l.procs, p)
	}
	l.mu.Unlock()
	go func() {
		p.err = p.cmd.Wait()
		p.out.flush()
		f.Close()
		close(p.done)
	}()
	if closed {
		_ = p.Kill()
		return nil, errors.New("lab is closed")
	}
	l.logf("%s: started %s (pid %d), log %s", n.Name, bin, p.cmd.Process.Pid, logPath)
	return p, nil
}

// Pid is the process id of the started binary.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signalling %s on %s: %w", sig, p.Node, err)
	}
	return nil
}

// Kill sends SIGKILL and waits until the process has exited. Killing an
// exited process is not an error.
func (p *Process) Kill() error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing process on %s: %w", p.Node, err)
	}
	<-p.done
	return nil
}

// Wait waits until the process exits and returns how it ended (nil for exit
// status 0), or ctx's error if ctx ends first.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// LogPath is the file holding the process's output.
func (p *Process) LogPath() string { return p.logPath }

// Log returns the process's output so far (at least its last MiB).
func (p *Process) Log() string { return p.out.String() }

// logSink writes process output to a file, keeps its tail in memory and
// passes complete lines to logf.
type logSink struct {
	file   *os.File
	prefix string
	logf   func(string, ...any)

	mu      sync.Mutex
	kept    []byte
	partial []byte // an unfinished line for logf
}

func (s *logSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kept = append(s.kept, b...)
	// Trim only once twice the limit is kept, so trimming stays cheap.
	if len(s.kept) > 2*maxKeptLog {
		s.kept = append(s.kept[:0], s.kept[len(s.kept)-maxKeptLog:]...)
	}
	s.partial = append(s.partial, b...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		s.logf("%s: %s", s.prefix, s.partial[:i])
		s.partial = s.partial[i+1:]
	}
	return s.file.Write(b)
}

func (s *logSink) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.partial) > 0 {
		s.logf("%s: %s", s.prefix, s.partial)
		s.partial = nil
	}
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.kept)
}

// harnessFree drops from environ the variables that steer the tests
// themselves (VIPD_BENCH_*, VIPD_SOAK_*, VIPD_KUBE_ASSETS): an agent would
// warn about each as a setting it does not know. What a node's process is
// to see is passed to Start.
func harnessFree(environ []string) []string {
	return slices.DeleteFunc(slices.Clone(environ), func(kv string) bool {
		return strings.HasPrefix(kv, "VIPD_BENCH_") || strings.HasPrefix(kv, "VIPD_SOAK_") ||
			strings.HasPrefix(kv, "VIPD_KUBE_ASSETS=")
	})
}
