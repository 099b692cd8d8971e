package guard

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const agentEnv = "VIPD_GUARD_TEST_AGENT"

// TestAgentProcess is no test of its own: TestKilledAgent runs the test
// binary with agentEnv set as a stand-in for vipd, which guards the VIPs
// and refreshes them every 50ms until it is killed.
func TestAgentProcess(t *testing.T) {
	if os.Getenv(agentEnv) == "" {
		return
	}
	g, err := New(Options{})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	vips := []netip.Addr{vip4, vip6}
	if err := g.Set(vips, vips); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	// Bounded, should the test that started it die first.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if err := g.Refresh(); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	os.Exit(2)
}

// TestKilledAgent kills a process that guards and refreshes the VIPs with
// SIGKILL, and measures from B how long A goes on answering: the
// requirement is silence within 0.3s, without help from address lifetimes
// (the VIPs here have none). A restarted agent then finds only its own
// VIPs in force. The process has CAP_NET_ADMIN only.
func TestKilledAgent(t *testing.T) {
	p := newPair(t)
	arpA, ndpA := newARPAsker(t, p.b, "b0"), newNDPAsker(t, p.b, "b0")
	for round := range 3 {
		startAgent(t, p.a, func(kill func() time.Time) {
			expect(t, arpA, vip4, true, "while the agent runs")
			expect(t, ndpA, vip6, true, "while the agent runs")
			// Killed anywhere in its refresh cycle, as a real crash would be.
			time.Sleep(rand.N(100 * time.Millisecond))
			killed := kill()
			// Both families at once: their answers end together.
			var silent [2]time.Duration
			errs := make(chan error, 2)
			for i, c := range []struct {
				a   asker
				vip netip.Addr
			}{{arpA, vip4}, {ndpA, vip6}} {
				go func() {
					var err error
					silent[i], _, err = firstSilence(c.a, c.vip, killed)
					errs <- err
				}()
			}
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("round %d: silent %v (IPv4) and %v (IPv6) after SIGKILL",
				round+1, silent[0].Round(time.Millisecond), silent[1].Round(time.Millisecond))
			if limit := DefaultAnswerTimeout + 100*time.Millisecond; max(silent[0], silent[1]) > limit {
				t.Errorf("answering for %v after SIGKILL, want silence within %v", max(silent[0], silent[1]), limit)
			}
		})
	}

	// The restarted agent guards only what it holds now.
	rs := p.ruleset()
	checkElems(t, rs, "arp guarded", "198.51.100.100")
	checkElems(t, rs, "arp alive")
	g := p.guard(Options{})
	set(t, g, []netip.Addr{other4}, nil)
	rs = p.ruleset()
	checkElems(t, rs, "arp guarded", "198.51.100.101")
	checkElems(t, rs, "ip6 guarded")
	expect(t, arpA, vip4, true, "once the restarted agent no longer guards it")
}

// startAgent runs TestAgentProcess in namespace ns, waits until it guards
// the VIPs, and calls f with a function that SIGKILLs it and returns when.
func startAgent(t *testing.T, ns string, f func(kill func() time.Time)) {
	t.Helper()
	// `ip netns exec` and setpriv exec the command: the process started
	// is the agent, with CAP_NET_ADMIN as its only capability, as vipd's
	// manifests give it (no CAP_SYS_ADMIN, so no setns).
	cmd := exec.Command("ip", "netns", "exec", ns, "setpriv", "--bounding-set", "-all,+net_admin",
		os.Args[0], "-test.run=^TestAgentProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), agentEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	ready := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			if line := s.Text(); line == "ready" || strings.HasPrefix(line, "error:") {
				select {
				case ready <- line:
				default:
				}
			}
		}
		exited <- cmd.Wait()
	}()
	select {
	case line := <-ready:
		if line != "ready" {
			t.Fatalf("agent process: %s", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent process not ready after 10s")
	}
	f(func() time.Time {
		at := time.Now()
		if err := cmd.Process.Kill(); err != nil {
			t.Fatalf("killing the agent process: %v", err)
		}
		return at
	})
}
