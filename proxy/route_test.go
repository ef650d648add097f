package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// startProxyMapping runs a proxy for one mapping built in code, listening
// on 127.0.0.1:0.
func startProxyMapping(t *testing.T, backend string, m Mapping, flags ...string) *testProxy {
	t.Helper()
	args := append([]string{"-backend", backend, "-loops", "2", "-log-level", "warn"}, flags...)
	args = append(args, "127.0.0.1:0:127.0.0.1:1")
	cfg := mustParse(t, args...)
	if m.BindHost == "" && m.BindUnix == "" {
		m.BindHost = "127.0.0.1"
	}
	cfg.Mappings = []Mapping{m}
	core, logs := observer.New(zapcore.InfoLevel)
	s, err := New(cfg, zap.New(core))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(0) })
	return &testProxy{Server: s, addr: s.Addrs(0)[0].String(), logs: logs}
}

func targets(t *testing.T, ups ...*testServer) []Target {
	var out []Target
	for _, u := range ups {
		tg, err := ParseTarget(u.addr())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tg)
	}
	return out
}

func tagCounts(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := 0; i < n; i++ {
		c, tag := dialTag(t, addr)
		c.Close()
		got[tag]++
	}
	return got
}

func TestBalanceRoundRobin(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		ups := []*testServer{startUpstream(t, taggedHandler("a")), startUpstream(t, taggedHandler("b")), startUpstream(t, taggedHandler("c"))}
		p := startProxyMapping(t, b, Mapping{Upstreams: targets(t, ups...)})
		if got := tagCounts(t, p.addr, 30); got["a"] != 10 || got["b"] != 10 || got["c"] != 10 {
			t.Errorf("30 connections over 3 upstreams: %v, want 10 each", got)
		}
	})
}

func TestBalanceLeastConn(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		ups := []*testServer{startUpstream(t, taggedHandler("a")), startUpstream(t, taggedHandler("b"))}
		p := startProxyMapping(t, b, Mapping{Upstreams: targets(t, ups...), Balance: BalanceLeastConn})
		// Hold three connections open: they spread 2/1 or 1/2; then every
		// new one goes to the less loaded upstream while the others stay.
		held := map[string]int{}
		for i := 0; i < 3; i++ {
			_, tag := dialTag(t, p.addr)
			held[tag]++
		}
		less := "a"
		if held["b"] < held["a"] {
			less = "b"
		}
		c, tag := dialTag(t, p.addr)
		defer c.Close()
		if tag != less {
			t.Errorf("with %v open, a new connection went to %q, want the least loaded %q", held, tag, less)
		}
	})
}

// TestBalanceSourceHash: one client address always reaches the same
// upstream, and when one upstream is lost only its clients move.
func TestBalanceSourceHash(t *testing.T) {
	var ts []Target
	for i := 0; i < 4; i++ {
		ts = append(ts, Target{Host: fmt.Sprintf("10.0.0.%d", i+1), Port: 80})
	}
	p := newPool("m", ts, BalanceSourceHash, newDNSCache(0, nil), zap.NewNop())
	before := map[netip.Addr]*upstream{}
	count := map[*upstream]int{}
	for i := 0; i < 4000; i++ {
		client := netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)})
		u := p.pick(client, nil)
		if again := p.pick(client, nil); again != u {
			t.Fatalf("client %v: %s then %s", client, u.label, again.label)
		}
		before[client] = u
		count[u]++
	}
	for u, n := range count {
		if n < 600 || n > 1400 {
			t.Errorf("upstream %s got %d of 4000 clients, want about 1000", u.label, n)
		}
	}
	lost := p.ups[1]
	lost.healthy.Store(false)
	moved := 0
	for client, u := range before {
		now := p.pick(client, nil)
		switch {
		case u == lost && now == lost:
			t.Fatalf("client %v still sent to the lost upstream", client)
		case u != lost && now != u:
			moved++
		}
	}
	if moved > 0 {
		t.Errorf("%d clients of healthy upstreams moved when one upstream was lost, want 0", moved)
	}
}

// TestPassiveHealth: a refused upstream is marked down and the connection
// is retried on another; later connections skip it during the back-off.
func TestPassiveHealth(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := ln.Addr().String()
		ln.Close()
		good := startUpstream(t, taggedHandler("g"))
		deadT, _ := ParseTarget(dead)
		p := startProxyMapping(t, b, Mapping{Upstreams: append([]Target{deadT}, targets(t, good)...)})
		if got := tagCounts(t, p.addr, 6); got["g"] != 6 {
			t.Errorf("6 connections with one upstream refusing: %v, want all on the good one", got)
		}
		if n := p.logs.FilterMessage("upstream down: connect failed").Len(); n != 1 {
			t.Errorf("%d 'upstream down' warnings, want 1 (then skipped during the back-off)", n)
		}
		rt := p.maps[0].cur.Load()
		if f := rt.pool.ups[0].connectFails.Load(); f != 1 {
			t.Errorf("dead upstream: %d connect failures counted, want 1", f)
		}
		if n := p.Snapshot().Mappings[0].ConnectErrors; n != 0 {
			t.Errorf("%d clients failed, want 0 (the retry succeeded)", n)
		}
	})
}

// TestRetriesBounded: with every upstream refusing, a connection tries at
// most maxConnTries of them, then the client is reset.
func TestRetriesBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		var ts []Target
		for i := 0; i < 5; i++ {
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			tg, _ := ParseTarget(ln.Addr().String())
			ln.Close()
			ts = append(ts, tg)
		}
		p := startProxyMapping(t, b, Mapping{Upstreams: ts})
		if c, err := net.DialTimeout("tcp", p.addr, 2*time.Second); err == nil {
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !isReset(err) {
				t.Errorf("client: %v, want a reset", err)
			}
			c.Close()
		}
		waitFor(t, 2*time.Second, "warning", func() bool { return p.logs.FilterMessage("upstream unavailable, closing client").Len() == 1 })
		tried := 0
		for _, u := range p.maps[0].cur.Load().pool.ups {
			tried += int(u.connectFails.Load())
		}
		if tried != maxConnTries {
			t.Errorf("%d upstreams tried, want %d", tried, maxConnTries)
		}
	})
}

// TestActiveHealth: checks take a dead upstream down after fall failures
// and bring it back after rise successes; both changes are logged.
func TestActiveHealth(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		a := startUpstream(t, taggedHandler("a"))
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		baddr := ln.Addr().String()
		ln.Close() // b is down
		bt, _ := ParseTarget(baddr)
		p := startProxyMapping(t, b, Mapping{Upstreams: append(targets(t, a), bt),
			Health: HealthCheck{Interval: 50 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 2, Fall: 2}})
		waitFor(t, 3*time.Second, "b marked down", func() bool { return p.logs.FilterMessage("upstream down: health check failed").Len() == 1 })
		if got := tagCounts(t, p.addr, 4); got["a"] != 4 {
			t.Errorf("with b down: %v, want all on a", got)
		}
		ln2, err := net.Listen("tcp", baddr)
		if err != nil {
			t.Skipf("cannot listen on %s again: %v", baddr, err)
		}
		up := &testServer{ln: ln2, conns: map[net.Conn]struct{}{}}
		up.serve(taggedHandler("b"))
		t.Cleanup(up.close)
		waitFor(t, 3*time.Second, "b back up", func() bool { return p.logs.FilterMessage("upstream up: health check passed").Len() == 1 })
		if got := tagCounts(t, p.addr, 4); got["b"] == 0 {
			t.Errorf("with b up again: %v, want some on b", got)
		}
		u := p.maps[0].cur.Load().pool.ups[1]
		if u.checksFailed.Load() < 2 || u.checksOK.Load() < 2 || u.stateChanges.Load() != 2 {
			t.Errorf("b: %d checks failed, %d ok, %d state changes; want >=2, >=2, 2", u.checksFailed.Load(), u.checksOK.Load(), u.stateChanges.Load())
		}
	})
}

// proxyHeaderUpstream parses the PROXY header each connection starts with
// and reports it, then echoes.
func proxyHeaderUpstream(t *testing.T, got chan<- string) *testServer {
	return startUpstream(t, func(c *net.TCPConn) {
		buf := make([]byte, 0, 256)
		tmp := make([]byte, 256)
		for {
			n, err := c.Read(tmp)
			buf = append(buf, tmp[:n]...)
			hn, src, dst, perr := parseProxyHeader(buf)
			if perr == nil {
				got <- fmt.Sprintf("%d %s %s %q", hn, src, dst, buf[hn:])
				c.Write(buf[hn:])
				echoHandler(c)
				return
			}
			if perr != errHeaderIncomplete || err != nil {
				got <- "error: " + perr.Error()
				return
			}
		}
	})
}

func TestSendProxy(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		for _, v := range []string{"v1", "v2"} {
			t.Run(v, func(t *testing.T) {
				got := make(chan string, 1)
				up := proxyHeaderUpstream(t, got)
				p := startProxyMapping(t, b, Mapping{Upstreams: targets(t, up), SendProxy: v})
				c := dial(t, p.addr)
				if err := roundTrip(c, []byte("hello"), 2*time.Second); err != nil {
					t.Fatal(err)
				}
				h := <-got
				want := fmt.Sprintf(" %s %s ", c.LocalAddr(), c.RemoteAddr())
				if !strings.Contains(h, want) {
					t.Errorf("upstream saw %s, want the client %s", h, want)
				}
			})
		}
	})
}

func TestAcceptProxy(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		got := make(chan string, 4)
		up := proxyHeaderUpstream(t, got)
		p := startProxyMapping(t, b, Mapping{Upstreams: targets(t, up), SendProxy: "v1", AcceptProxy: true}, "-proxy-header-timeout", "300ms")
		v2 := proxyHeader("v2", netip.MustParseAddrPort("[2001:db8::7]:4242"), netip.MustParseAddrPort("[2001:db8::1]:443"))
		for _, tt := range []struct {
			name      string
			hdr       []byte
			want, dst string
		}{
			{"v1", []byte("PROXY TCP4 192.0.2.7 198.51.100.1 4242 443\r\n"), "192.0.2.7:4242", "198.51.100.1:443"},
			{"v2", v2, "[2001:db8::7]:4242", "[2001:db8::1]:443"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				c := dial(t, p.addr)
				// The header and the first bytes in one write, then in pieces.
				c.Write(tt.hdr[:5])
				time.Sleep(20 * time.Millisecond)
				c.Write(append(append([]byte{}, tt.hdr[5:]...), "data"...))
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				echo := make([]byte, 4)
				if _, err := io.ReadFull(c, echo); err != nil || string(echo) != "data" {
					t.Fatalf("echo %q, %v", echo, err)
				}
				if h := <-got; !strings.Contains(h, " "+tt.want+" ") || !strings.Contains(h, tt.dst) {
					t.Errorf("upstream saw %s, want the front balancer's client %s passed on", h, tt.want)
				}
			})
		}
		t.Run("bad header", func(t *testing.T) {
			c := dial(t, p.addr)
			c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !isReset(err) {
				t.Errorf("client with a bad header: %v, want a reset", err)
			}
			waitFor(t, time.Second, "warning", func() bool { return p.logs.FilterMessage("bad PROXY header, resetting client").Len() == 1 })
		})
		t.Run("timeout", func(t *testing.T) {
			c := dial(t, p.addr)
			c.Write([]byte("PROXY TCP4 "))
			start := time.Now()
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !isReset(err) {
				t.Errorf("client without a full header: %v, want a reset", err)
			}
			if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
				t.Errorf("reset after %v, want about the 300ms -proxy-header-timeout", d)
			}
		})
		if n := p.Snapshot().Mappings[0].BadHeaders; n != 2 {
			t.Errorf("BadHeaders = %d, want 2", n)
		}
	})
}

// paddedV2Header is a v2 header for src and dst (IPv4) padded with a NOOP
// TLV to length bytes after its 16-byte start.
func paddedV2Header(src, dst netip.AddrPort, length int) []byte {
	h := proxyHeader("v2", src, dst)
	pad := length - (len(h) - proxyV2HdrLen) - 3
	h = append(h, 0x04, byte(pad>>8), byte(pad)) // PP2_TYPE_NOOP
	h = append(h, make([]byte, pad)...)
	binary.BigEndian.PutUint16(h[14:16], uint16(length))
	return h
}

// TestAcceptProxyHeaderSize: the header buffer holds the largest v2 header
// the protocol allows (length 65,535) under the default -buffer, and a
// smaller -buffer refuses a longer header with an error that says so.
func TestAcceptProxyHeaderSize(t *testing.T) {
	src, dst := netip.MustParseAddrPort("192.0.2.9:5151"), netip.MustParseAddrPort("198.51.100.1:443")
	forEachBackend(t, func(t *testing.T, b string) {
		got := make(chan string, 4)
		up := proxyHeaderUpstream(t, got)
		t.Run("largest", func(t *testing.T) {
			p := startProxyMapping(t, b, Mapping{Upstreams: targets(t, up), SendProxy: "v1", AcceptProxy: true})
			hdr := paddedV2Header(src, dst, 65535)
			if len(hdr) != proxyV2MaxLen {
				t.Fatalf("test header is %d bytes, want %d", len(hdr), proxyV2MaxLen)
			}
			c := dial(t, p.addr)
			go c.Write(append(hdr, "data"...))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			echo := make([]byte, 4)
			if _, err := io.ReadFull(c, echo); err != nil || string(echo) != "data" {
				t.Fatalf("echo %q, %v", echo, err)
			}
			if h := <-got; !strings.Contains(h, " 192.0.2.9:5151 ") {
				t.Errorf("upstream saw %s, want the front balancer's client passed on", h)
			}
		})
		t.Run("longer than -buffer", func(t *testing.T) {
			p := startProxyMapping(t, b, Mapping{Upstreams: targets(t, up), SendProxy: "v1", AcceptProxy: true}, "-buffer", "4k")
			c := dial(t, p.addr)
			go c.Write(paddedV2Header(src, dst, 5000))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !isReset(err) {
				t.Errorf("client with a 5,016-byte header: %v, want a reset", err)
			}
			waitFor(t, 2*time.Second, "warning", func() bool { return p.logs.FilterMessage("bad PROXY header, resetting client").Len() == 1 })
			e := p.logs.FilterMessage("bad PROXY header, resetting client").All()[0]
			if msg, _ := e.ContextMap()["error"].(string); !strings.Contains(msg, "longer than the 4096-byte buffer") {
				t.Errorf("logged error %q, want it to name the 4096-byte buffer", msg)
			}
		})
	})
}

func TestParseProxyHeader(t *testing.T) {
	v2local := append(append([]byte{}, proxyV2Sig...), 0x20, 0x00, 0, 0)
	for _, tt := range []struct {
		in       string
		n        int
		src, err string
	}{
		{"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nrest", 32, "1.2.3.4:1", ""},
		{"PROXY TCP6 ::1 ::2 1 65535\r\n", 28, "[::1]:1", ""},
		{"PROXY UNKNOWN whatever\r\n", 24, "invalid AddrPort", ""},
		{"PROXY TCP4 1.2.3.4", 0, "", "incomplete"},
		{"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", 0, "", "is not an TCPv4 address"},
		{"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", 0, "", "port"},
		{"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", 0, "", "port"},
		{"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 0, "", "bare LF"},
		{"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 0, "", "protocol"},
		{"PROXY " + strings.Repeat("x", 120), 0, "", "without CRLF"},
		{"GET / HTTP/1.1\r\n", 0, "", "not a PROXY protocol header"},
		{"\r\n\r\n\x00\r\nQUIX\n", 0, "", "bad v2 signature"},
		{string(v2local), 16, "invalid AddrPort", ""},
		{string(append(append([]byte{}, proxyV2Sig...), 0x31, 0x11, 0, 12)), 0, "", "version 3"},
		{string(append(append([]byte{}, proxyV2Sig...), 0x21, 0x11, 0, 4, 1, 2, 3, 4)), 0, "", "want at least 12"},
		{string(append(append([]byte{}, proxyV2Sig...), 0x21, 0x11, 0, 12, 1, 2)), 0, "", "incomplete"},
	} {
		n, src, _, err := parseProxyHeader([]byte(tt.in))
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("parse %q: err %v, want %q", tt.in, err, tt.err)
		case tt.err == "" && (err != nil || n != tt.n || src.String() != tt.src):
			t.Errorf("parse %q = %d %s %v, want %d %s", tt.in, n, src, err, tt.n, tt.src)
		}
	}
	// What proxyHeader writes, parseProxyHeader reads back.
	for _, v := range []string{"v1", "v2"} {
		for _, pair := range [][2]string{{"192.0.2.1:1", "198.51.100.2:65535"}, {"[2001:db8::1]:80", "[::1]:8080"}} {
			src, dst := netip.MustParseAddrPort(pair[0]), netip.MustParseAddrPort(pair[1])
			h := proxyHeader(v, src, dst)
			n, s, d, err := parseProxyHeader(append(h, "tail"...))
			if err != nil || n != len(h) || s != src || d != dst {
				t.Errorf("%s round trip of %v -> %v: %d/%d %v %v %v", v, src, dst, n, len(h), s, d, err)
			}
		}
	}
}

// FuzzParseProxyHeader: no input panics, a parsed header never claims
// more bytes than it was given, and a complete header stays complete
// whatever follows it.
func FuzzParseProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"))
	f.Add([]byte("PROXY TCP6 ::1 ::2 1 2\r\nxx"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(proxyHeader("v2", netip.MustParseAddrPort("1.2.3.4:5"), netip.MustParseAddrPort("5.6.7.8:9")))
	f.Add(proxyHeader("v2", netip.MustParseAddrPort("[::1]:5"), netip.MustParseAddrPort("[::2]:9")))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, src, dst, err := parseProxyHeader(b)
		if err != nil {
			if n != 0 || src.IsValid() || dst.IsValid() {
				t.Fatalf("error %v with n=%d src=%v dst=%v", err, n, src, dst)
			}
			if err == errHeaderIncomplete && len(b) >= proxyV2HdrLen+65535 {
				t.Fatalf("incomplete after %d bytes", len(b))
			}
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("n=%d for %d bytes", n, len(b))
		}
		n2, src2, dst2, err2 := parseProxyHeader(append(append([]byte{}, b[:n]...), "trailing"...))
		if err2 != nil || n2 != n || src2 != src || dst2 != dst {
			t.Fatalf("the same header with bytes after it: %d %v %v %v, was %d %v %v", n2, src2, dst2, err2, n, src, dst)
		}
	})
}

// TestUnixSockets: a Unix listener forwarding to TCP, and a TCP listener
// forwarding to a Unix upstream (ssh -L's socket forms).
func TestUnixSockets(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		dir := t.TempDir()
		tcpUp := startUpstream(t, echoHandler)
		sock := filepath.Join(dir, "in.sock")
		os.WriteFile(sock, nil, 0o644) // not a socket: must not be replaced
		m, _ := ParseMapping(sock + ":" + tcpUp.addr())
		cfg := mustParse(t, "-backend", b, "-loops", "2", "-log-level", "warn", "127.0.0.1:0:127.0.0.1:1")
		cfg.Mappings = []Mapping{m}
		if s, err := New(cfg, nil); err == nil {
			s.Shutdown(0)
			t.Fatal("a regular file at the socket path was replaced")
		}
		os.Remove(sock)
		p := startProxyMapping(t, b, m)
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := roundTrip(c, []byte("via unix listener"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		c.Close()
		waitFor(t, 2*time.Second, "closed", func() bool { return p.ActiveConns() == 0 })

		upSock := filepath.Join(dir, "up.sock")
		uln, err := net.Listen("unix", upSock)
		if err != nil {
			t.Fatal(err)
		}
		defer uln.Close()
		go func() {
			for {
				c, err := uln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					r := bufio.NewReader(c)
					line, _ := r.ReadString('\n')
					c.Write([]byte("unix upstream got " + line))
				}()
			}
		}()
		m2, _ := ParseMapping("127.0.0.1:0:" + upSock)
		p2 := startProxyMapping(t, b, m2)
		c2 := dial(t, p2.addr)
		c2.Write([]byte("hi\n"))
		c2.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, _ := io.ReadAll(c2)
		if string(got) != "unix upstream got hi\n" {
			t.Errorf("through a Unix upstream: %q", got)
		}
	})
}
