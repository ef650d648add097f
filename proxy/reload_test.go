package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// taggedHandler writes tag, then echoes: the client learns which upstream
// it reached.
func taggedHandler(tag string) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		if _, err := c.Write([]byte(tag)); err != nil {
			return
		}
		echoHandler(c)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// dialTag connects to addr and reads the upstream's one-byte tag.
func dialTag(t *testing.T, addr string) (*net.TCPConn, string) {
	t.Helper()
	c := dial(t, addr)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("%s: reading the upstream's tag: %v", addr, err)
	}
	c.SetReadDeadline(time.Time{})
	return c, string(b)
}

// expectTag connects, checks which upstream answered, and hangs up.
func expectTag(t *testing.T, addr, want string) {
	t.Helper()
	c, tag := dialTag(t, addr)
	c.Close()
	if tag != want {
		t.Errorf("%s reached upstream %q, want %q", addr, tag, want)
	}
}

func mustParse(t *testing.T, args ...string) Config {
	t.Helper()
	var stderr bytes.Buffer
	cfg, err := ParseArgs(args, &stderr)
	if err != nil {
		t.Fatalf("ParseArgs(%q): %v\n%s", args, err, stderr.String())
	}
	return cfg
}

func TestReload(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up1 := startUpstream(t, taggedHandler("1"))
		up2 := startUpstream(t, taggedHandler("2"))
		p1, p2, p3 := freePort(t), freePort(t), freePort(t)
		m := func(port int, up *testServer) string { return fmt.Sprintf("127.0.0.1:%d:%s", port, up.addr()) }
		base := []string{"-backend", b, "-loops", "2", "-log-level", "warn"}
		s, err := New(mustParse(t, append(base, m(p1, up1), m(p2, up1))...), nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(func() { s.Shutdown(0) })
		a1, a2, a3 := fmt.Sprintf("127.0.0.1:%d", p1), fmt.Sprintf("127.0.0.1:%d", p2), fmt.Sprintf("127.0.0.1:%d", p3)
		c1, tag := dialTag(t, a1)
		c2, _ := dialTag(t, a2)
		if tag != "1" {
			t.Fatalf("before reload: tag %q", tag)
		}

		// p1 kept with a new upstream, p2 removed, p3 added.
		if err := s.Reload(mustParse(t, append(base, m(p1, up2), m(p3, up1))...)); err != nil {
			t.Fatalf("Reload: %v", err)
		}
		// Reload returns with the removed port closed and free, checked at
		// once: the loops close the socket after its accept's cancel, and
		// the kernel frees the port a moment after that close.
		if x, err := net.DialTimeout("tcp", a2, time.Second); err == nil {
			x.Close()
			t.Errorf("removed listener %s still accepts after Reload returned", a2)
		}
		if ln, err := net.Listen("tcp", a2); err != nil {
			t.Errorf("port of the removed listener after Reload returned: %v", err)
		} else {
			ln.Close()
		}
		for _, c := range []*net.TCPConn{c1, c2} {
			if err := roundTrip(c, []byte("still here"), 2*time.Second); err != nil {
				t.Fatalf("connection open across the reload: %v", err)
			}
		}
		expectTag(t, a1, "2")
		expectTag(t, a3, "1")
		if err := roundTrip(c2, []byte("draining"), 2*time.Second); err != nil {
			t.Fatalf("connection of the removed listener: %v", err)
		}

		// Refused: a listen address in use elsewhere. Nothing changes.
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		bad := mustParse(t, append(base, m(p1, up1), busy.Addr().String()+":"+up1.addr())...)
		if err := s.Reload(bad); err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("Reload onto a used address: %v, want address already in use", err)
		}
		expectTag(t, a1, "2")
		expectTag(t, a3, "1")
		if err := s.Reload(Config{}); err == nil {
			t.Error("Reload of an invalid Config accepted")
		}
		c1.Close()
		c2.Close()
		waitFor(t, 2*time.Second, "connections closed", func() bool { return s.ActiveConns() == 0 })
	})
}

// TestSIGHUPReload: the process rereads its -config on SIGHUP; a file
// with a mistake is refused and the running config stays.
func TestSIGHUPReload(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up1 := startUpstream(t, taggedHandler("1"))
		up2 := startUpstream(t, taggedHandler("2"))
		p1, p2 := freePort(t), freePort(t)
		file := writeFile(t, "uioproxy.yaml", fmt.Sprintf("mappings:\n  - \"127.0.0.1:%d:%s\"\n", p1, up1.addr()))
		ch := startChild(t, nil, nil, "-backend", b, "-loops", "1", "-config", file)
		c1, tag := dialTag(t, ch.addr)
		if tag != "1" {
			t.Fatalf("tag %q", tag)
		}
		os.WriteFile(file, []byte(fmt.Sprintf("mappings:\n  - \"127.0.0.1:%d:%s\"\n  - name: second\n    listen: \"127.0.0.1:%d\"\n    upstream: %q\n", p1, up2.addr(), p2, up2.addr())), 0o644)
		pid := ch.cmd.Process.Pid
		syscall.Kill(pid, syscall.SIGHUP)
		waitFor(t, 5*time.Second, "reloaded", func() bool { return len(ch.logged("reloaded")) == 1 })
		expectTag(t, fmt.Sprintf("127.0.0.1:%d", p2), "2")
		if err := roundTrip(c1, []byte("x"), 2*time.Second); err != nil {
			t.Fatalf("connection across the reload: %v", err)
		}
		os.WriteFile(file, []byte("mappings:\n  - listen: nope\n"), 0o644)
		syscall.Kill(pid, syscall.SIGHUP)
		waitFor(t, 5*time.Second, "reload refused", func() bool { return len(ch.logged("reload refused; the running configuration stays")) == 1 })
		if e := fmt.Sprint(ch.logged("reload refused; the running configuration stays")[0]["error"]); !strings.Contains(e, file+":2:") {
			t.Errorf("refusal does not say file:line: %s", e)
		}
		expectTag(t, fmt.Sprintf("127.0.0.1:%d", p2), "2")
		c1.Close()
		if code := ch.stop(t, pid); code != 0 {
			t.Errorf("exit %d:\n%s", code, ch.output())
		}
	})
}

// TestStopWhileReloading: a Shutdown that overlaps Reloads, hand-over dups
// of the listening sockets and Snapshots is clean under -race (the loops
// close their acceptors while the others read the same state), every call
// after it is refused or harmless, and no listening socket stays open.
// The Reloads add and remove one address over and over: each must be able
// to bind what the one before it closed.
func TestStopWhileReloading(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		p1, p2 := freePort(t), freePort(t)
		m := func(port int) string { return fmt.Sprintf("127.0.0.1:%d:%s", port, up.addr()) }
		base := []string{"-backend", b, "-loops", "2", "-log-level", "error"}
		one, both := mustParse(t, append(base, m(p1))...), mustParse(t, append(base, m(p1), m(p2))...)
		s, err := New(one, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		var stop atomic.Bool
		var wg sync.WaitGroup
		var reloads, dups atomic.Int64
		errs := make(chan error, 3)
		wg.Add(3)
		go func() { // p2 added and removed, over and over
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				cfg := one
				if i%2 == 0 {
					cfg = both
				}
				err := s.Reload(cfg)
				if err != nil && !strings.Contains(err.Error(), "stopping") {
					errs <- fmt.Errorf("Reload: %w", err)
					return
				}
				if err == nil {
					reloads.Add(1)
				}
			}
		}()
		go func() { // what SIGUSR2 does first
			defer wg.Done()
			for !stop.Load() {
				files, err := s.dupListeners()
				if err != nil {
					errs <- err
					return
				}
				for _, f := range files {
					f.Close()
				}
				dups.Add(1)
			}
		}()
		go func() {
			defer wg.Done()
			for !stop.Load() {
				s.Snapshot()
			}
		}()
		time.Sleep(100 * time.Millisecond)
		s.Shutdown(0)
		time.Sleep(20 * time.Millisecond) // the callers meet the stopped server too
		stop.Store(true)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		t.Logf("%d reloads, %d dups before and during the shutdown", reloads.Load(), dups.Load())
		if err := s.Reload(both); err == nil || !strings.Contains(err.Error(), "stopping") {
			t.Errorf("Reload after Shutdown: %v, want the server is stopping", err)
		}
		if files, err := s.dupListeners(); err != nil || len(files) != 0 {
			t.Errorf("after Shutdown: %d listening sockets still to hand over (%v), want 0", len(files), err)
			for _, f := range files {
				f.Close()
			}
		}
		for _, p := range []int{p1, p2} {
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), time.Second); err == nil {
				c.Close()
				t.Errorf("port %d still accepts after Shutdown", p)
			}
		}
	})
}
