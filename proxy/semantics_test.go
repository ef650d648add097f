package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// startProxyWith is startProxy with the Config edited before New.
func startProxyWith(t *testing.T, backend, target string, edit func(*Config), flags ...string) *testProxy {
	t.Helper()
	args := append([]string{"-backend", backend, "-loops", "2", "-log-level", "warn"}, flags...)
	args = append(args, "127.0.0.1:0:"+target)
	var stderr bytes.Buffer
	cfg, err := ParseArgs(args, &stderr)
	if err != nil {
		t.Fatalf("ParseArgs(%q): %v\n%s", args, err, stderr.String())
	}
	if edit != nil {
		edit(&cfg)
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

// TestIdleTimeoutCountsSends: a slow download whose recvs wait on sends
// to a slow reader is busy, not idle. With a 1 MiB buffer the proxy recvs
// from the upstream only every few seconds here; only its sends move.
func TestIdleTimeoutCountsSends(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		stop := make(chan struct{})
		up := startUpstream(t, func(c *net.TCPConn) {
			chunk := make([]byte, 64<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				if _, err := c.Write(chunk); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
					return
				}
			}
		})
		defer close(stop)
		// 1 MiB sends to a reader taking 200 KB/s complete every ~5 s, far
		// beyond the idle timeout; 1 s (not less) so that a test process
		// starved of CPU for a moment on a loaded machine does not look
		// idle itself.
		p := startProxy(t, b, up.addr(), "-idle-timeout", "1s", "-buffer", "1M")
		c := dial(t, p.addr)
		c.SetReadBuffer(4 << 10)
		buf := make([]byte, 4<<10)
		read := 0
		for start := time.Now(); time.Since(start) < 3*time.Second; {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			read += n
			if err != nil {
				t.Fatalf("slow download cut after %v and %d bytes: %v", time.Since(start).Round(time.Millisecond), read, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("read %d bytes slowly for 3s under -idle-timeout 1s", read)
	})
}

// TestUpstreamResetAfterData: the upstream sends 1 MiB and resets; the
// client, reading late, gets every byte and then the reset.
func TestUpstreamResetAfterData(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		const size = 1 << 20
		sent := make(chan [32]byte, 1)
		setup := make(chan error, 1)
		up := startUpstream(t, func(c *net.TCPConn) {
			sum, err := randStream(c, 7, size)
			if err != nil {
				setup <- err
				return
			}
			sent <- sum
			// Reset only once the proxy's kernel has every byte, so that
			// what the client misses can only be the proxy's doing.
			raw, _ := c.SyscallConn()
			for end := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				var q int
				raw.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.TIOCOUTQ) })
				if q == 0 {
					break
				}
				if time.Now().After(end) {
					setup <- fmt.Errorf("upstream: %d bytes still unacknowledged after 5s", q)
					return
				}
			}
			setup <- nil
			c.SetLinger(0)
		})
		p := startProxy(t, b, up.addr())
		c := dial(t, p.addr)
		c.SetReadBuffer(64 << 10)
		if err := <-setup; err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the reset has reached the proxy
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, n, err := hashAll(c)
		if !isReset(err) {
			t.Errorf("client read ended with %v, want a reset", err)
		}
		if want := <-sent; n != size || got != want {
			t.Errorf("client got %d of %d bytes before the reset (checksum match %v)", n, size, got == want)
		}
		waitFor(t, 2*time.Second, "connection closed", func() bool { return p.ActiveConns() == 0 })
	})
}

// TestClientResetAfterData: the mirror case, the upstream gets all of
// the client's bytes and then the reset.
func TestClientResetAfterData(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		const size = 1 << 20
		res := make(chan streamResult, 1)
		start := make(chan struct{})
		up := startUpstream(t, func(c *net.TCPConn) {
			<-start // read late
			var r streamResult
			r.got, r.n, r.err = hashAll(c)
			res <- r
		})
		p := startProxy(t, b, up.addr())
		c := dial(t, p.addr)
		want, err := randStream(c, 9, size)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := c.SyscallConn()
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			var q int
			raw.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.TIOCOUTQ) })
			if q == 0 {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("client: %d bytes still unacknowledged after 5s", q)
			}
		}
		c.SetLinger(0)
		c.Close()
		time.Sleep(100 * time.Millisecond)
		close(start)
		r := <-res
		if !isReset(r.err) {
			t.Errorf("upstream read ended with %v, want a reset", r.err)
		}
		if r.n != size || r.got != want {
			t.Errorf("upstream got %d of %d bytes before the reset (checksum match %v)", r.n, size, r.got == want)
		}
	})
}

// connSockets returns the client and upstream socket of every open conn.
func connSockets(s *Server) [][2]int {
	var mu sync.Mutex
	var out [][2]int
	s.onLoops(func(w *worker) {
		for c := range w.conns {
			mu.Lock()
			out = append(out, [2]int{c.cfd, c.ufd})
			mu.Unlock()
		}
	})
	return out
}

func TestKeepalive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		for _, tt := range []struct {
			flag      string
			on, idle  int
			wantIntvl int
		}{{"60s", 1, 60, 15}, {"8s", 1, 8, 2}, {"0", 0, 0, 0}} {
			t.Run(tt.flag, func(t *testing.T) {
				up := startUpstream(t, echoHandler)
				p := startProxy(t, b, up.addr(), "-keepalive", tt.flag)
				c := dial(t, p.addr)
				if err := roundTrip(c, []byte("x"), 2*time.Second); err != nil {
					t.Fatal(err)
				}
				socks := connSockets(p.Server)
				if len(socks) != 1 {
					t.Fatalf("%d conns", len(socks))
				}
				for i, fd := range socks[0] {
					side := [2]string{"client", "upstream"}[i]
					on, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
					if on != tt.on {
						t.Errorf("%s socket SO_KEEPALIVE = %d, want %d", side, on, tt.on)
					}
					if tt.on == 0 {
						continue
					}
					idle, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
					intvl, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
					cnt, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
					if idle != tt.idle || intvl != tt.wantIntvl || cnt != keepaliveProbes {
						t.Errorf("%s socket keepalive idle/intvl/cnt = %d/%d/%d, want %d/%d/%d", side, idle, intvl, cnt, tt.idle, tt.wantIntvl, keepaliveProbes)
					}
				}
			})
		}
	})
}

func TestHappyEyeballsOrder(t *testing.T) {
	a := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, x := range s {
			out = append(out, netip.MustParseAddr(x))
		}
		return out
	}
	for _, tt := range []struct{ in, want []netip.Addr }{
		{a("10.0.0.1", "10.0.0.2", "::1", "::2", "::3"), a("::1", "10.0.0.1", "::2", "10.0.0.2", "::3")},
		{a("::1", "10.0.0.1"), a("::1", "10.0.0.1")},
		{a("10.0.0.1", "10.0.0.2"), a("10.0.0.1", "10.0.0.2")},
	} {
		if got := happyEyeballsOrder(tt.in); fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("happyEyeballsOrder(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// blackholeListener listens on ip with a full accept queue, so that
// further connects to it hang; it returns the port.
func blackholeListener(t *testing.T, ip netip.Addr, port int) int {
	t.Helper()
	family := unix.AF_INET
	if ip.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, sockaddr(ip, port)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	port = int(sockaddrAddrPort(sa).Port())
	addr := net.JoinHostPort(ip.String(), fmt.Sprint(port))
	for i := 0; i < 4; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return port
}

// TestHappyEyeballs: a name with an IPv6 address that swallows SYNs and a
// working IPv4 one. Tried in turn within one connect timeout, the first
// would take all of it; raced (RFC 8305), the IPv4 attempt starts 250ms
// later and wins.
func TestHappyEyeballs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		port := blackholeListener(t, netip.MustParseAddr("::1"), 0)
		ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Skipf("port %d taken on 127.0.0.1: %v", port, err)
		}
		up := &testServer{ln: ln, conns: map[net.Conn]struct{}{}}
		up.serve(echoHandler)
		t.Cleanup(up.close)
		lookup := func(ctx context.Context, host string) ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("::1"), netip.MustParseAddr("127.0.0.1")}, nil
		}
		p := startProxyWith(t, b, fmt.Sprintf("dual.test:%d", port), func(c *Config) { c.lookup = lookup }, "-connect-timeout", "3s")
		start := time.Now()
		c := dial(t, p.addr)
		if err := roundTrip(c, []byte("hello"), 5*time.Second); err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
			t.Errorf("connected after %v, want about the 250ms attempt delay", d)
		}
	})
}

// TestConnectShares: three IPv4 addresses that swallow SYNs, then one that
// works, tried in turn as a fallback would: each gets its share of the
// connect timeout, so the good one is reached before the timeout.
func TestConnectShares(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		port := up.ln.Addr().(*net.TCPAddr).Port
		var ips []netip.Addr
		for _, s := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
			ip := netip.MustParseAddr(s)
			blackholeListener(t, ip, port)
			ips = append(ips, ip)
		}
		ips = append(ips, netip.MustParseAddr("127.0.0.1"))
		var lookups atomic.Int32
		lookup := func(ctx context.Context, host string) ([]netip.Addr, error) {
			lookups.Add(1)
			return ips, nil
		}
		p := startProxyWith(t, b, fmt.Sprintf("many.test:%d", port), func(c *Config) { c.lookup = lookup }, "-connect-timeout", "2s")
		for i := 0; i < 3; i++ {
			c := dial(t, p.addr)
			if err := roundTrip(c, []byte("hello"), 5*time.Second); err != nil {
				t.Fatalf("round trip %d: %v", i, err)
			}
			c.Close()
		}
		if n := lookups.Load(); n != 1 {
			t.Errorf("%d lookups for 3 connections within -dns-ttl, want 1", n)
		}
	})
}

func TestDNSCache(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	d := newDNSCache(50*time.Millisecond, func(ctx context.Context, host string) ([]netip.Addr, error) {
		calls.Add(1)
		<-release
		if host == "bad.test" {
			return nil, errors.New("no such host")
		}
		return []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.1")}, nil
	})
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ips, err := d.resolve(context.Background(), "a.test")
			if err != nil || len(ips) != 1 || !ips[0].Is4() {
				t.Errorf("resolve = %v, %v; want 10.0.0.1 unmapped", ips, err)
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("5 concurrent resolves made %d lookups, want 1", n)
	}
	if _, ok := d.cached("a.test"); !ok {
		t.Error("fresh answer not cached")
	}
	time.Sleep(60 * time.Millisecond)
	if _, ok := d.cached("a.test"); ok {
		t.Error("answer still cached after its ttl")
	}
	for i := 0; i < 2; i++ {
		if _, err := d.resolve(context.Background(), "bad.test"); err == nil {
			t.Error("a failed lookup came back as success")
		}
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d lookups after two failing ones, want 3 (failures are not cached)", n)
	}
}

// TestOverlappingBinds: mappings whose listen addresses overlap after
// resolution are refused, the error naming both.
func TestOverlappingBinds(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	for _, pair := range [][2]string{
		{"127.0.0.1:%d:h:1", "localhost:%d:h:2"},
		{"*:%d:h:1", "127.0.0.1:%d:h:2"},
		{"127.0.0.1:%d:h:1", "*:%d:h:2"},
	} {
		a, b := fmt.Sprintf(pair[0], port), fmt.Sprintf(pair[1], port)
		cfg, err := ParseArgs([]string{"-backend", "aio", "-loops", "2", a, b}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(cfg, nil)
		if err == nil {
			s.Shutdown(0)
			t.Errorf("%s and %s both accepted", a, b)
			continue
		}
		ma, _ := ParseMapping(a)
		mb, _ := ParseMapping(b)
		if !strings.Contains(err.Error(), ma.String()) || !strings.Contains(err.Error(), mb.String()) {
			t.Errorf("error for %s and %s does not name both: %v", a, b, err)
		}
	}
}

// TestSecondSignal: SIGTERM starts the drain; a second one ends it at
// once, resetting what is still open.
func TestSecondSignal(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		ch := startChild(t, nil, nil, "-backend", b, "-loops", "1", "-drain-timeout", "30s", "127.0.0.1:0:"+up.addr())
		c := dial(t, ch.addr)
		if err := roundTrip(c, []byte("x"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		pid := ch.cmd.Process.Pid
		syscall.Kill(pid, syscall.SIGTERM)
		waitFor(t, 5*time.Second, "draining", func() bool { return len(ch.logged("stopping: no new connections; draining")) == 1 })
		time.Sleep(100 * time.Millisecond)
		if err := roundTrip(c, []byte("y"), 2*time.Second); err != nil {
			t.Fatalf("open connection during drain: %v", err)
		}
		start := time.Now()
		if code := ch.stop(t, pid); code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("second SIGTERM: exit took %v, want at once", d)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !isReset(err) {
			t.Errorf("client after the second signal: %v, want a reset", err)
		}
		if len(ch.logged("second stop signal: resetting open connections now")) != 1 {
			t.Errorf("no log line for the second signal:\n%s", ch.output())
		}
	})
}

// TestAccessLog: one line per connection with both ends, the bytes each
// way, the duration and how it ended, in the console and JSON formats.
func TestAccessLog(t *testing.T) {
	checkLeaks(t)
	up := startUpstream(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Write([]byte("0123456789"))
	})
	p := startProxy(t, "aio", up.addr())
	c := dial(t, p.addr)
	c.Write([]byte("hello"))
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.ReadAll(c)
	waitFor(t, 2*time.Second, "access log", func() bool { return p.logs.FilterMessage("connection").Len() == 1 })
	e := p.logs.FilterMessage("connection").All()[0]
	f := e.ContextMap()
	if e.LoggerName != "access" || f["client"] != c.LocalAddr().String() || f["upstream"] != up.addr() || f["upstream_addr"] != up.addr() ||
		f["bytes_up"] != uint64(5) || f["bytes_down"] != uint64(10) || f["end"] != "fin" || f["mapping"] != p.maps[0].label {
		t.Errorf("access log line: logger %q %v", e.LoggerName, f)
	}
	if d, ok := f["duration"].(time.Duration); !ok || d <= 0 || d > 2*time.Second {
		t.Errorf("duration %v", f["duration"])
	}

	// The same line from the JSON encoder, as operators parse it.
	var out bytes.Buffer
	log, err := NewLogger("info", "json", zapcore.AddSync(&out))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{access: log.Named("access")}
	ms := &mapState{label: "m", m: Mapping{BindHost: "h"}}
	s.logAccess(&conn{ms: ms, cfd: -1, client: netip.MustParseAddrPort("192.0.2.1:5"), clientKnown: true, end: endUpstreamReset, bytes: [2]uint64{1, 2}})
	for _, w := range []string{`"logger":"uioproxy.access"`, `"msg":"connection"`, `"client":"192.0.2.1:5"`, `"bytes_up":1`, `"bytes_down":2`, `"end":"upstream_reset"`} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("JSON access log lacks %s: %s", w, out.String())
		}
	}
}

// TestResetReportedOnce pins down the kernel behaviour direction.eof
// relies on: once a send has taken a reset's error, a recv on the socket
// returns 0 as if the peer had sent a FIN, and only tcpi_state tells the
// two apart: CLOSE after the reset, CLOSE_WAIT after a FIN.
func TestResetReportedOnce(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, reset := range []bool{true, false} {
		c := dial(t, ln.Addr().String())
		peer, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if reset {
			peer.(*net.TCPConn).SetLinger(0)
			peer.Close()
		} else {
			peer.(*net.TCPConn).CloseWrite()
			defer peer.Close()
		}
		time.Sleep(50 * time.Millisecond)
		raw, _ := c.SyscallConn()
		raw.Control(func(fd uintptr) {
			if reset {
				_, err := unix.Write(int(fd), []byte("x"))
				if !errors.Is(err, unix.ECONNRESET) && !errors.Is(err, unix.EPIPE) {
					t.Errorf("send after the reset: %v", err)
				}
			}
			n, err := unix.Read(int(fd), make([]byte, 1))
			ti, _ := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			switch {
			case n != 0 || err != nil:
				t.Errorf("reset=%v: recv = %d, %v; want 0 (the error was taken)", reset, n, err)
			case reset && ti.State != tcpClose:
				t.Errorf("after a reset tcpi_state = %d, want TCP_CLOSE (%d)", ti.State, tcpClose)
			case !reset && ti.State == tcpClose:
				t.Errorf("after a FIN tcpi_state = TCP_CLOSE, want CLOSE_WAIT")
			}
		})
	}
}

// TestResetWhileOtherSideStalls: one side stops reading, so the proxy
// stops reading the other (flow control), and that other side then resets.
// The proxy sees the reset anyway (watch.go), within a few seconds, while
// the stalled side still reads nothing. A stalled side that reads again
// gets every byte the proxy took, then the reset, as without the watch;
// one that never reads is reset with the other once it has taken nothing
// for the flush stall (30 s, here 1 s), where before the connection stayed
// open for good (-idle-timeout is off by default). A FIN in place of the
// reset is no error (on io_uring the watch fires on it too): the stalled
// side gets every byte, then the end of stream.
func TestResetWhileOtherSideStalls(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		for _, splice := range []bool{false, true} {
			for _, end := range []stallEnd{clientResets, upstreamResets, clientResetsForGood, clientHalfCloses} {
				name := [...]string{"client resets", "upstream resets", "client resets, upstream never reads", "client half-closes"}[end]
				var flags []string
				if splice {
					name, flags = name+", splice", []string{"-splice"}
				}
				t.Run(name, func(t *testing.T) { testResetWhileStalled(t, b, end, flags) })
			}
		}
	})
}

type stallEnd int

const (
	clientResets stallEnd = iota
	upstreamResets
	clientResetsForGood // the upstream never reads again
	clientHalfCloses
)

func testResetWhileStalled(t *testing.T, b string, end stallEnd, flags []string) {
	if end == clientResetsForGood {
		// Put back after the proxy's own cleanup (cleanups run last
		// first): its loops read it.
		d := maxFlushStall
		t.Cleanup(func() { maxFlushStall = d })
		maxFlushStall = time.Second
	}
	release := make(chan struct{})
	var once sync.Once
	releaseReader := func() { once.Do(func() { close(release) }) }
	type readEnd struct {
		n   int64
		bad int64 // offset of the first byte off the pattern, -1: none
		err error
	}
	res := make(chan readEnd, 1)
	// read waits for release, then reads to the end, checking the pattern.
	read := func(c net.Conn) {
		<-release
		r := readEnd{bad: -1}
		buf := make([]byte, 64<<10)
		for {
			k, err := c.Read(buf)
			for i := range buf[:k] {
				if r.bad < 0 && buf[i] != byte((r.n+int64(i))%251) {
					r.bad = r.n + int64(i)
				}
			}
			r.n += int64(k)
			if err != nil {
				r.err = err
				break
			}
		}
		res <- r
	}
	// fill writes the pattern until the writes stall, then resets (or
	// half-closes).
	fill := func(c *net.TCPConn) int64 {
		buf := make([]byte, 64<<10)
		var n int64
		for {
			for i := range buf {
				buf[i] = byte((n + int64(i)) % 251)
			}
			c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
			k, err := c.Write(buf)
			n += int64(k)
			if err != nil {
				break // stalled: everything between us and the reader is full
			}
		}
		if end == clientHalfCloses {
			c.CloseWrite()
			return n
		}
		c.SetLinger(0)
		c.Close()
		return n
	}
	written := make(chan int64, 1)
	up := startUpstream(t, func(c *net.TCPConn) {
		if end == upstreamResets {
			written <- fill(c)
		} else {
			read(c)
		}
	})
	t.Cleanup(releaseReader) // before up's own cleanup, which waits for its handlers
	p := startProxy(t, b, up.addr(), flags...)
	c := dial(t, p.addr)
	if end == upstreamResets {
		go read(c)
	} else {
		written <- fill(c)
	}
	n := <-written
	switch end {
	case clientHalfCloses:
		time.Sleep(2*watchEvery + 500*time.Millisecond) // two looks: a watch made and fired
		if r := p.Snapshot().Mappings[0].Resets; r != 0 || srcGoneSeen(p.Server) {
			t.Fatalf("a half-close while the upstream stalls counted %d resets (srcGone %v)", r, srcGoneSeen(p.Server))
		}
	case clientResetsForGood:
		waitFor(t, 8*time.Second, "the proxy to reset a connection whose client reset and whose upstream reads nothing", func() bool {
			return p.ActiveConns() == 0
		})
	default:
		waitFor(t, 5*time.Second, "the proxy to see the reset while the other side reads nothing", func() bool {
			return srcGoneSeen(p.Server)
		})
	}
	releaseReader()
	r := <-res
	t.Logf("%d bytes written before the end, %d read after it (%v)", n, r.n, r.err)
	m := p.Snapshot().Mappings[0]
	took := int64(m.BytesUp) // what the proxy read from the side that wrote
	if end == upstreamResets {
		took = int64(m.BytesDown)
	}
	switch {
	case r.bad >= 0 || r.n > n:
		t.Errorf("read %d bytes of %d written, first wrong byte at %d", r.n, n, r.bad)
	case end == clientHalfCloses && (r.n != n || r.err != io.EOF):
		t.Errorf("after a half-close the upstream read %d of %d bytes, then %v; want all, then EOF", r.n, n, r.err)
	case end != clientHalfCloses && !isReset(r.err):
		t.Errorf("the stalled side's read ended with %v, want a reset", r.err)
	case (end == clientResets || end == upstreamResets) && r.n != took:
		t.Errorf("the stalled side read %d bytes, the proxy had taken %d: it must get every one before the reset", r.n, took)
	}
	if end == clientHalfCloses {
		c.Close() // the upstream's FIN came back to it; now the client's end
	}
	waitFor(t, 5*time.Second, "connection closed", func() bool { return p.ActiveConns() == 0 })
	if want := uint64(1); end != clientHalfCloses && m.Resets != want {
		t.Errorf("resets = %d, want %d", m.Resets, want)
	}
}

// srcGoneSeen reports whether a direction of an open connection has seen
// its src reset through the watch.
func srcGoneSeen(s *Server) bool {
	var mu sync.Mutex
	seen := false
	s.onLoops(func(w *worker) {
		for c := range w.conns {
			if c.d[dirUp].srcGone || c.d[dirDown].srcGone {
				mu.Lock()
				seen = true
				mu.Unlock()
			}
		}
	})
	return seen
}
