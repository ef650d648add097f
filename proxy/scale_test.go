package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The scale tests: thousands of idle connections through one loop of a
// proxy process. Each side of them lives in its own process, so that no
// process needs more descriptors than the hard RLIMIT_NOFILE (20,000 on
// the test machine): the clients in the test process, the proxy (two
// descriptors per connection) in a child running childMain, and the echo
// upstream in another child running echoChildMain.

const echoChildEnv = "UIOPROXY_TEST_ECHO" // run as the echo upstream

// echoChildMain is the echo upstream process: it listens on 127.0.0.1:0,
// prints "listening ADDR" on stdout and echoes on every connection until
// its stdin closes (the test ended, or died).
func echoChildMain() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo child:", err)
		return 1
	}
	fmt.Printf("listening %s\n", ln.Addr())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			fmt.Fprintln(os.Stderr, "echo child: accept:", err)
			return 1
		}
		go func() {
			defer c.Close()
			echoWith(c, make([]byte, 2<<10)) // small: thousands of these wait in Read
		}()
	}
}

// startEchoChild starts the echo upstream process and returns its address.
func startEchoChild(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), echoChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		addr <- strings.TrimPrefix(strings.TrimSpace(line), "listening ")
		io.Copy(io.Discard, stdout)
	}()
	select {
	case a := <-addr:
		if a == "" {
			t.Fatalf("echo child did not start: %s", stderr.String())
		}
		return a
	case <-time.After(10 * time.Second):
		t.Fatalf("echo child did not say where it listens in 10s: %s", stderr.String())
	}
	return ""
}

// procFds counts the descriptors process pid has open.
func procFds(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("counting the proxy's descriptors: %v", err)
	}
	return len(ents)
}

// procRSS is the resident set size of process pid in bytes
// (/proc/PID/smaps_rollup's Rss: every mapping, anonymous and file).
func procRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatalf("reading the proxy's RSS: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Rss:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("smaps_rollup line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no Rss line in /proc/%d/smaps_rollup:\n%s", pid, b)
	return 0
}

// clientSources are the source addresses the clients spread over, so that
// tens of thousands of client ports (over the tests and their TIME_WAITs)
// never run one address's ephemeral range dry.
var clientSources = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"}

// dialFrom connects to addr from source address src; the port is chosen
// at connect time (IP_BIND_ADDRESS_NO_PORT), by the whole 4-tuple.
func dialFrom(src, addr string, timeout time.Duration) (*net.TCPConn, error) {
	d := net.Dialer{
		Timeout:   timeout,
		LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)},
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}); err != nil {
				return err
			}
			return serr
		},
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// echoMsg is connection i's 64-byte message: its number, so an echo that
// came back on the wrong connection shows.
func echoMsg(i, round int) []byte {
	return []byte(fmt.Sprintf("conn %08d round %04d %040d", i, round, i)[:64])
}

// idleSet is n connections through the proxy, each of which did echoes.
type idleSet struct {
	conns []*net.TCPConn
}

func (s *idleSet) close() {
	for _, c := range s.conns {
		if c != nil {
			c.Close()
		}
	}
}

// openIdle opens n connections to addr with workers dialers in parallel,
// each doing one 64-byte echo, every dial and echo bounded by opTimeout.
// It stops at the first failure and reports how many were served by then.
func openIdle(addr string, n, workers int, opTimeout time.Duration) (*idleSet, int, error) {
	s := &idleSet{conns: make([]*net.TCPConn, n)}
	var next, served atomic.Int64
	var once sync.Once
	var firstErr error
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := dialFrom(clientSources[i%len(clientSources)], addr, opTimeout)
				if err == nil {
					s.conns[i] = c
					err = roundTrip(c, echoMsg(i, 0), opTimeout)
				}
				if err != nil {
					once.Do(func() {
						firstErr = fmt.Errorf("connection %d (of %d): %w", i+1, n, err)
						cancel()
					})
					return
				}
				served.Add(1)
			}
		}()
	}
	wg.Wait()
	return s, int(served.Load()), firstErr
}

// echoAll does one more echo on every connection of s, workers at a time.
func (s *idleSet) echoAll(round, workers int, opTimeout time.Duration) (int, error) {
	var next, served atomic.Int64
	var once sync.Once
	var failed atomic.Bool
	var firstErr error
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(s.conns) {
					return
				}
				if err := roundTrip(s.conns[i], echoMsg(i, round), opTimeout); err != nil {
					once.Do(func() { firstErr = fmt.Errorf("idle connection %d: %w", i+1, err) })
					failed.Store(true)
					return
				}
				served.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(served.Load()), firstErr
}

// startScaleProxy starts the proxy process with one loop on backend in
// front of the echo child, with metrics on; it returns the proxy and its
// metrics address.
func startScaleProxy(t *testing.T, backend string) (*child, string) {
	t.Helper()
	up := startEchoChild(t)
	maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ch := startChild(t, nil, nil, "-backend", backend, "-loops", "1", "-access-log=false", "-metrics", maddr, "127.0.0.1:0:"+up)
	waitFor(t, 5*time.Second, "the metrics listener", func() bool {
		c, err := net.Dial("tcp", maddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return ch, maddr
}

// activeConns sums uioproxy_connections_active over the mappings.
func activeConns(metrics map[string]float64) float64 {
	n := 0.0
	for k, v := range metrics {
		if strings.HasPrefix(k, "uioproxy_connections_active{") {
			n += v
		}
	}
	return n
}

// warmUp runs n short connections (connect, echo, close) so that the
// proxy's pools, free lists and runtime reach their steady state before a
// baseline is taken, and waits until the proxy counts none open.
func warmUp(t *testing.T, addr, maddr string, n int) {
	t.Helper()
	set, served, err := openIdle(addr, n, 16, 10*time.Second)
	set.close()
	if err != nil {
		t.Fatalf("warm-up: %d of %d served: %v", served, n, err)
	}
	waitFor(t, 10*time.Second, "the warm-up connections to close", func() bool {
		return activeConns(scrape(t, maddr)) == 0
	})
}

const (
	scaleConns   = 9000 // with 2 fds each, what a 20,000-fd limit carries with room to spare
	scaleWorkers = 64
	scaleOpWait  = 10 * time.Second // per dial or echo: an idle loop answers in milliseconds
)

// TestManyIdleConns: 9,000 concurrent connections through one loop, each
// with an echo; while they stay open, 16 active connections echo and
// fresh connections come and go, then every idle one echoes again; all
// must succeed. After they close, the proxy's descriptors (counted in
// /proc/PID/fd) and goroutines (its go_goroutines metric) are back at
// the baseline. Every wait is bounded: a proxy that stops serving fails
// the test with how many connections it served, and never hangs it.
func TestManyIdleConns(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < scaleConns+1000 {
		t.Fatalf("RLIMIT_NOFILE soft limit %d: the clients of %d connections need more", lim.Cur, scaleConns)
	}
	forEachBackend(t, func(t *testing.T, backend string) {
		start := time.Now()
		ch, maddr := startScaleProxy(t, backend)
		pid := ch.cmd.Process.Pid
		warmUp(t, ch.addr, maddr, 64)
		baseFds := procFds(t, pid)
		base := scrape(t, maddr)
		baseGs := base["go_goroutines"]

		set, served, err := openIdle(ch.addr, scaleConns, scaleWorkers, scaleOpWait)
		defer set.close()
		if err != nil {
			t.Fatalf("%s: the proxy stopped serving after %d of %d connections (%v in): %v",
				backend, served, scaleConns, time.Since(start).Round(time.Millisecond), err)
		}
		opened := time.Since(start)
		if got := activeConns(scrape(t, maddr)); got != scaleConns {
			t.Errorf("proxy counts %v open connections, want %d", got, scaleConns)
		}
		if fds := procFds(t, pid); fds < 2*scaleConns {
			t.Errorf("proxy holds %d descriptors with %d connections open, want at least %d", fds, scaleConns, 2*scaleConns)
		}

		// Active traffic and fresh connections while the idle ones stay.
		const active, rounds, freshWorkers, freshEach = 16, 200, 8, 25
		var wg sync.WaitGroup
		errs := make(chan error, active+freshWorkers)
		var activeRTs, freshOK atomic.Int64
		for a := 0; a < active; a++ {
			wg.Add(1)
			go func(a int) {
				defer wg.Done()
				c, err := dialFrom(clientSources[a%len(clientSources)], ch.addr, scaleOpWait)
				if err != nil {
					errs <- fmt.Errorf("active connection %d: %w", a, err)
					return
				}
				defer c.Close()
				for r := 0; r < rounds; r++ {
					if err := roundTrip(c, echoMsg(scaleConns+a, r), scaleOpWait); err != nil {
						errs <- fmt.Errorf("active connection %d, round trip %d: %w", a, r, err)
						return
					}
					activeRTs.Add(1)
				}
			}(a)
		}
		for f := 0; f < freshWorkers; f++ {
			wg.Add(1)
			go func(f int) {
				defer wg.Done()
				for k := 0; k < freshEach; k++ {
					c, err := dialFrom(clientSources[(f+k)%len(clientSources)], ch.addr, scaleOpWait)
					if err == nil {
						err = roundTrip(c, echoMsg(k, f), scaleOpWait)
						c.Close()
					}
					if err != nil {
						errs <- fmt.Errorf("fresh connection %d of worker %d: %w", k, f, err)
						return
					}
					freshOK.Add(1)
				}
			}(f)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("%s with %d idle connections open: %v", backend, scaleConns, err)
		}
		if n, err := set.echoAll(1, scaleWorkers, scaleOpWait); err != nil {
			t.Errorf("%s: second echo on the idle connections: %d of %d served: %v", backend, n, scaleConns, err)
		}
		busy := time.Since(start) - opened

		set.close()
		var fds int
		var end map[string]float64
		waitFor(t, 30*time.Second, "the proxy's connections, descriptors and goroutines back to the baseline", func() bool {
			fds = procFds(t, pid)
			end = scrape(t, maddr)
			return activeConns(end) == 0 && fds <= baseFds && end["go_goroutines"] <= baseGs
		})
		t.Logf("%s: %d connections opened and echoed in %v; %d active round trips and %d fresh connections, then %d echoes again, in %v; fds %d -> %d, goroutines %v -> %v; %v in all",
			backend, scaleConns, opened.Round(time.Millisecond), activeRTs.Load(), freshOK.Load(), scaleConns, busy.Round(time.Millisecond),
			baseFds, fds, baseGs, end["go_goroutines"], time.Since(start).Round(time.Millisecond))
		if code := ch.stop(t, pid); code != 0 {
			t.Errorf("exit %d after SIGTERM", code)
		}
	})
}

// Idle-connection memory: rssConns connections that each did one 64-byte
// echo may cost the proxy process at most maxIdleConnRSS of resident
// memory each. HAProxy measured 3.3 KiB per idle connection on the test
// machine (bench/proxy's idle cells), nginx 9.6 KiB; a proxy that keeps
// a receive buffer per direction of a silent connection (a 64 KiB -buffer
// once touched) cannot pass.
const (
	rssConns       = 1500
	maxIdleConnRSS = 4 << 10
)

// TestIdleConnRSS measures the proxy process's RSS (smaps_rollup) after a
// warm-up, then with rssConns idle connections open, and bounds the
// difference per connection.
func TestIdleConnRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if raceEnabled {
		t.Skip("the race detector's shadow memory inflates RSS; the bound is checked by the run without -race")
	}
	forEachBackend(t, func(t *testing.T, backend string) {
		start := time.Now()
		ch, maddr := startScaleProxy(t, backend)
		pid := ch.cmd.Process.Pid
		warmUp(t, ch.addr, maddr, 256)
		time.Sleep(500 * time.Millisecond)
		rss0 := procRSS(t, pid)
		heap0 := scrape(t, maddr)["go_memstats_heap_inuse_bytes"]

		set, served, err := openIdle(ch.addr, rssConns, 16, scaleOpWait)
		defer set.close()
		if err != nil {
			t.Fatalf("%s: %d of %d connections served: %v", backend, served, rssConns, err)
		}
		time.Sleep(time.Second) // nothing moves: let the runtime settle
		rss1 := procRSS(t, pid)
		heap1 := scrape(t, maddr)["go_memstats_heap_inuse_bytes"]
		per := float64(rss1-rss0) / rssConns
		t.Logf("%s: RSS %.1f MiB after warm-up, %.1f MiB with %d idle connections: %.0f B (%.2f KiB) per connection; Go heap in use %.0f B per connection; %v",
			backend, float64(rss0)/(1<<20), float64(rss1)/(1<<20), rssConns, per, per/1024, (heap1-heap0)/rssConns, time.Since(start).Round(time.Millisecond))
		if per > maxIdleConnRSS {
			t.Errorf("%s: %.2f KiB of proxy RSS per idle connection, want at most %.2f KiB (HAProxy: 3.3 KiB)", backend, per/1024, float64(maxIdleConnRSS)/1024)
		}
		set.close()
		waitFor(t, 15*time.Second, "the connections to close", func() bool {
			return activeConns(scrape(t, maddr)) == 0
		})
		if code := ch.stop(t, pid); code != 0 {
			t.Errorf("exit %d after SIGTERM", code)
		}
	})
}
