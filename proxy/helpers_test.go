package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

var backends = []string{"aio", "uring"}

// forEachBackend runs fn as a subtest per backend, each checked for fd and
// goroutine leaks.
func forEachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			checkLeaks(t)
			fn(t, b)
		})
	}
}

// checkLeaks records the open fds and goroutines now and, when the test
// and all its cleanups are done, fails if there are more.
func checkLeaks(t *testing.T) {
	t.Helper()
	fds0, gs0 := countFds(t), runtime.NumGoroutine()
	t.Cleanup(func() {
		var fds, gs int
		for end := time.Now().Add(5 * time.Second); ; {
			fds, gs = countFds(t), runtime.NumGoroutine()
			if (fds <= fds0 && gs <= gs0) || time.Now().After(end) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if fds > fds0 {
			t.Errorf("fd leak: %d open fds before, %d after: %s", fds0, fds, listFds())
		}
		if gs > gs0 {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Errorf("goroutine leak: %d before, %d after\n%s", gs0, gs, buf[:n])
		}
	})
}

func listFds() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+"="+l)
	}
	return strings.Join(out, " ")
}

func countFds(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// testServer is a test target server; handle runs on its own goroutine per
// connection and must return when the connection ends.
type testServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startUpstream(t *testing.T, handle func(c *net.TCPConn)) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &testServer{ln: ln, conns: map[net.Conn]struct{}{}}
	u.serve(handle)
	t.Cleanup(u.close)
	return u
}

// serve accepts on u.ln until it is closed, running handle per connection.
func (u *testServer) serve(handle func(c *net.TCPConn)) {
	ln := u.ln
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns[c] = struct{}{}
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				handle(c.(*net.TCPConn))
				c.Close()
				u.mu.Lock()
				delete(u.conns, c)
				u.mu.Unlock()
			}()
		}
	}()
}

func (u *testServer) addr() string { return u.ln.Addr().String() }

func (u *testServer) close() {
	u.ln.Close()
	u.mu.Lock()
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// echoHandler echoes with a plain buffer: io.Copy between TCP conns would
// splice through a pooled pipe that the leak check counts.
func echoHandler(c *net.TCPConn) { echoWith(c, make([]byte, 32<<10)) }

// echoWith echoes what c sends, buf at a time, until it ends.
func echoWith(c net.Conn, buf []byte) {
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// testProxy is a Server under test plus the warnings it logged.
type testProxy struct {
	*Server
	addr string
	logs *observer.ObservedLogs
}

// startProxy starts a proxy for one mapping 127.0.0.1:0 -> target with the
// given extra flags, and shuts it down when the test ends.
func startProxy(t *testing.T, backend, target string, flags ...string) *testProxy {
	t.Helper()
	args := append([]string{"-backend", backend, "-loops", "2", "-log-level", "warn"}, flags...)
	args = append(args, "127.0.0.1:0:"+target)
	var stderr bytes.Buffer
	cfg, err := ParseArgs(args, &stderr)
	if err != nil {
		t.Fatalf("ParseArgs(%q): %v\n%s", args, err, stderr.String())
	}
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := New(cfg, zap.New(core))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(0) })
	return &testProxy{Server: s, addr: s.Addrs(0)[0].String(), logs: logs}
}

func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip writes msg and reads it back (through an echo upstream).
func roundTrip(c net.Conn, msg []byte, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs from what was sent")
	}
	return nil
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}
