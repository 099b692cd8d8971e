package lab

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// APIServerURL is the address agents in the lab use for the API server.
func (l *Lab) APIServerURL() string {
	return "https://" + net.JoinHostPort(APIIPv4, strconv.Itoa(APIPort))
}

// ServeAPI starts a TCP proxy in the api namespace on 198.51.100.2:6443 and
// [2001:db8:100::2]:6443 that forwards every connection to target (e.g. the
// host loopback address of a kube-apiserver), dialled from the namespace of
// the process running the lab.
func (l *Lab) ServeAPI(target string) error {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return fmt.Errorf("API proxy target %q: %w", target, err)
	}
	l.api.opMu.Lock()
	l.api.target = target
	l.api.opMu.Unlock()
	return l.StartAPI()
}

// StopAPI closes the proxy's listeners and resets every proxied connection:
// to agents the API server is gone (connection refused or reset) until
// StartAPI.
func (l *Lab) StopAPI() { l.api.stop(false) }

// StartAPI resumes the proxy stopped by StopAPI; it does nothing if the
// proxy is running.
func (l *Lab) StartAPI() error { return l.api.start() }

type apiProxy struct {
	ns   string
	logf func(string, ...any)

	opMu   sync.Mutex // serialises start and stop
	target string
	closed bool
	wg     sync.WaitGroup // accept loops and connection handlers

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[net.Conn]struct{}
}

func (p *apiProxy) start() error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	if p.closed {
		return errors.New("lab is closed")
	}
	if p.target == "" {
		return errors.New("API proxy has no target: call ServeAPI first")
	}
	p.mu.Lock()
	running := len(p.listeners) > 0
	p.mu.Unlock()
	if running {
		return nil
	}
	var lns []net.Listener
	err := InNetns(p.ns, func() error {
		for _, a := range []struct{ network, addr string }{
			{"tcp4", net.JoinHostPort(APIIPv4, strconv.Itoa(APIPort))},
			{"tcp6", net.JoinHostPort(APIIPv6, strconv.Itoa(APIPort))},
		} {
			ln, err := net.Listen(a.network, a.addr)
			if err != nil {
				return fmt.Errorf("API proxy listening on %s: %w", a.addr, err)
			}
			lns = append(lns, ln)
		}
		return nil
	})
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return err
	}
	p.mu.Lock()
	p.listeners = lns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for _, ln := range lns {
		p.wg.Add(1)
		go p.accept(ln, p.target)
	}
	return nil
}

// stop closes listeners and connections and waits for every goroutine of
// the proxy; final makes it refuse to start again.
func (p *apiProxy) stop(final bool) {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	if final {
		p.closed = true
	}
	p.mu.Lock()
	lns, conns := p.listeners, p.conns
	p.listeners, p.conns = nil, nil
	p.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for c := range conns {
		reset(c)
	}
	p.wg.Wait()
}

func (p *apiProxy) accept(ln net.Listener, target string) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond) // temporary, e.g. out of file descriptors
			continue
		}
		// Register under the lock, so stop either sees the connection or it
		// is refused here.
		if !p.add(c, ln) {
			reset(c)
			continue
		}
		p.wg.Add(1)
		go p.forward(c, target)
	}
}

// add registers c, accepted on ln, if ln is still one of the current
// listeners (a stop and start may have replaced it).
func (p *apiProxy) add(c net.Conn, ln net.Listener) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cur := range p.listeners {
		if cur == ln {
			p.conns[c] = struct{}{}
			return true
		}
	}
	return false
}

func (p *apiProxy) remove(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

func (p *apiProxy) forward(c net.Conn, target string) {
	defer p.wg.Done()
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		p.logf("api proxy: dialling %s: %v", target, err)
		reset(c)
		p.remove(c)
		return
	}
	// If stop ran while dialling, c is already reset and must not be joined.
	p.mu.Lock()
	_, live := p.conns[c]
	if live {
		p.conns[up] = struct{}{}
	}
	p.mu.Unlock()
	if !live {
		up.Close()
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	// Either side ending ends both; the API server's clients reconnect.
	reset(c)
	up.Close()
	<-done
	p.remove(c, up)
}

// reset closes c with an RST rather than a FIN, as a vanished server would.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
