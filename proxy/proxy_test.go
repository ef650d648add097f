package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// randStream writes n pseudo-random bytes from seed to w in random-sized
// chunks and returns their sha256.
func randStream(w io.Writer, seed uint64, n int) ([32]byte, error) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for n > 0 {
		k := min(n, 1+r.IntN(len(buf)))
		for i := 0; i < k; i += 8 {
			v := r.Uint64()
			for j := 0; j < 8 && i+j < k; j++ {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		h.Write(buf[:k])
		if _, err := w.Write(buf[:k]); err != nil {
			return [32]byte{}, err
		}
		n -= k
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

func hashAll(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, n, err
}

type streamResult struct {
	got  [32]byte
	n    int64
	sent [32]byte
	err  error
}

// testForward sends an independent random stream each way over every
// connection, half-closing when done, and compares checksums both ways.
func testForward(t *testing.T, backend string, conns, size int, flags ...string) {
	results := make(chan streamResult, conns)
	// The upstream reads the client's stream and, at the same time, sends
	// its own, seeded by the first 8 bytes the client sends.
	up := startUpstream(t, func(c *net.TCPConn) {
		var seedBuf [8]byte
		if _, err := io.ReadFull(c, seedBuf[:]); err != nil {
			results <- streamResult{err: fmt.Errorf("upstream: reading seed: %w", err)}
			return
		}
		seed := uint64(seedBuf[0]) | uint64(seedBuf[1])<<8 | uint64(seedBuf[2])<<16 | uint64(seedBuf[3])<<24
		var wg sync.WaitGroup
		var res streamResult
		wg.Add(1)
		go func() {
			defer wg.Done()
			res.sent, res.err = randStream(c, seed+1000003, size)
			c.CloseWrite()
		}()
		var err error
		res.got, res.n, err = hashAll(c)
		wg.Wait()
		if res.err == nil {
			res.err = err
		}
		results <- res
	})
	p := startProxy(t, backend, up.addr(), flags...)
	var wg sync.WaitGroup
	errc := make(chan error, conns)
	clientSent := make([][32]byte, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			seed := uint64(i + 1)
			var seedBuf [8]byte
			for j := range 4 {
				seedBuf[j] = byte(seed >> (8 * j))
			}
			var werr error
			var wwg sync.WaitGroup
			wwg.Add(1)
			go func() {
				defer wwg.Done()
				if _, werr = c.Write(seedBuf[:]); werr == nil {
					clientSent[i], werr = randStream(c, seed, size)
				}
				c.(*net.TCPConn).CloseWrite()
			}()
			got, n, err := hashAll(c)
			wwg.Wait()
			if err == nil {
				err = werr
			}
			if err != nil {
				errc <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			// What the upstream sent for this seed.
			var want [32]byte
			want, _ = randStream(io.Discard, seed+1000003, size)
			if n != int64(size) || got != want {
				errc <- fmt.Errorf("conn %d: downstream got %d bytes (want %d), checksum match %v", i, n, size, got == want)
			}
		}(i)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	// Upstream side: every stream arrived whole.
	sentSet := map[[32]byte]bool{}
	for _, s := range clientSent {
		sentSet[s] = true
	}
	for i := 0; i < conns; i++ {
		select {
		case r := <-results:
			if r.err != nil {
				t.Error(r.err)
			} else if r.n != int64(size) || !sentSet[r.got] {
				t.Errorf("upstream got %d bytes (want %d) with a checksum no client sent", r.n, size)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d upstream streams finished", i, conns)
		}
	}
	waitFor(t, 5*time.Second, "all connections closed", func() bool { return p.ActiveConns() == 0 })
	snap := p.Snapshot()
	if want := uint64(conns) * uint64(size+8); snap.Mappings[0].BytesUp != want || snap.Mappings[0].BytesDown != uint64(conns)*uint64(size) {
		t.Errorf("byte counters up/down = %d/%d, want %d/%d", snap.Mappings[0].BytesUp, snap.Mappings[0].BytesDown, want, conns*size)
	}
}

func TestForward(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		t.Run("1conn", func(t *testing.T) { testForward(t, b, 1, 16<<20) })
		t.Run("500conns", func(t *testing.T) { testForward(t, b, 500, 64<<10+123, "-buffer", "4k") })
		// Both backends: the splices are made inline (before, AIO fell
		// back to buffers).
		t.Run("splice", func(t *testing.T) { testForward(t, b, 50, 1<<20+7, "-splice") })
	})
}

func TestHalfClose(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, func(c *net.TCPConn) {
			got, _ := io.ReadAll(c) // until the client's FIN comes through
			time.Sleep(50 * time.Millisecond)
			c.Write([]byte("after your FIN I heard: " + string(got)))
		})
		p := startProxy(t, b, up.addr())
		c := dial(t, p.addr)
		c.Write([]byte("hello"))
		c.CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "after your FIN I heard: hello" {
			t.Fatalf("read %q, %v", got, err)
		}
		waitFor(t, 2*time.Second, "connection closed", func() bool { return p.ActiveConns() == 0 })
	})
}

func TestReset(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		t.Run("upstream resets", func(t *testing.T) {
			up := startUpstream(t, func(c *net.TCPConn) {
				buf := make([]byte, 5)
				io.ReadFull(c, buf)
				c.SetLinger(0) // close sends RST
			})
			p := startProxy(t, b, up.addr())
			c := dial(t, p.addr)
			c.Write([]byte("hello"))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadAll(c)
			if !isReset(err) {
				t.Fatalf("client read after upstream reset: %v, want connection reset", err)
			}
			waitFor(t, 2*time.Second, "connection closed", func() bool { return p.ActiveConns() == 0 })
			if p.Snapshot().Mappings[0].Resets != 1 {
				t.Errorf("resets = %d, want 1", p.Snapshot().Mappings[0].Resets)
			}
		})
		t.Run("client resets", func(t *testing.T) {
			upErr := make(chan error, 1)
			up := startUpstream(t, func(c *net.TCPConn) {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := io.Copy(io.Discard, c)
				upErr <- err
			})
			p := startProxy(t, b, up.addr())
			c := dial(t, p.addr)
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 2*time.Second, "upstream connected", func() bool { return p.Snapshot().Mappings[0].BytesUp == 5 })
			c.SetLinger(0)
			c.Close()
			if err := <-upErr; !isReset(err) {
				t.Fatalf("upstream read after client reset: %v, want connection reset", err)
			}
		})
	})
}

func TestUpstreamRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := ln.Addr().String()
		ln.Close()
		p := startProxy(t, b, dead)
		start := time.Now()
		// The reset may come before the dialer has seen its handshake end.
		if c, err := net.DialTimeout("tcp", p.addr, 5*time.Second); err == nil {
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, err := c.Read(make([]byte, 1))
			if n != 0 || !isReset(err) {
				t.Fatalf("read = %d, %v; want the client reset", n, err)
			}
		} else if !isReset(err) {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("client closed after %v, want promptly", d)
		}
		waitFor(t, time.Second, "warning", func() bool { return p.logs.FilterMessage("upstream unavailable, closing client").Len() == 1 })
		e := p.logs.FilterMessage("upstream unavailable, closing client").All()[0]
		if !strings.Contains(fmt.Sprint(e.ContextMap()["error"]), "connection refused") {
			t.Errorf("warning does not say refused: %v", e.ContextMap())
		}
	})
}

func TestConnectTimeout(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		// A listener that never accepts, with its queue full: further SYNs
		// are dropped and connects hang.
		var fill []net.Conn
		defer func() {
			for _, c := range fill {
				c.Close()
			}
		}()
		// The Go listener's backlog is somaxconn; use a raw one instead.
		raw := rawListener(t, 0)
		for i := 0; i < 4; i++ {
			c, err := net.DialTimeout("tcp", raw, 200*time.Millisecond)
			if err != nil {
				break
			}
			fill = append(fill, c)
		}
		p := startProxy(t, b, raw, "-connect-timeout", "300ms")
		c := dial(t, p.addr)
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		d := time.Since(start)
		if n != 0 || !isReset(err) {
			t.Fatalf("read = %d, %v; want a reset (never a FIN that looks like an empty answer)", n, err)
		}
		if d < 250*time.Millisecond || d > 2*time.Second {
			t.Errorf("client closed after %v, want about the 300ms connect timeout", d)
		}
		waitFor(t, time.Second, "warning", func() bool { return p.logs.FilterMessage("upstream unavailable, closing client").Len() == 1 })
	})
}

func rawListener(t *testing.T, backlog int) string {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// TestIdleTimeout: an idle connection is reset on both sides (a FIN would
// make a cut-short stream look complete); a busy one is left alone.
func TestIdleTimeout(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		upErr := make(chan error, 2)
		up := startUpstream(t, func(c *net.TCPConn) {
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if err != nil {
					upErr <- err
					return
				}
				c.Write(buf[:n])
			}
		})
		p := startProxy(t, b, up.addr(), "-idle-timeout", "300ms")
		idle, busy := dial(t, p.addr), dial(t, p.addr)
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			for time.Since(start) < 900*time.Millisecond {
				if err := roundTrip(busy, []byte("ping"), 2*time.Second); err != nil {
					done <- err
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			done <- nil
		}()
		idle.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := idle.Read(make([]byte, 1)); n != 0 || !isReset(err) {
			t.Fatalf("idle conn read = %d, %v; want a reset", n, err)
		}
		select {
		case err := <-upErr:
			if !isReset(err) {
				t.Errorf("upstream side of the idle conn: %v, want a reset", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("upstream side of the idle conn still open")
		}
		if d := time.Since(start); d < 250*time.Millisecond || d > 1500*time.Millisecond {
			t.Errorf("idle conn closed after %v, want about 300ms", d)
		}
		if err := <-done; err != nil {
			t.Fatalf("busy conn: %v", err)
		}
	})
}

func TestMaxConns(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		p := startProxy(t, b, up.addr(), "-max-conns", "2")
		c1, c2 := dial(t, p.addr), dial(t, p.addr)
		for _, c := range []net.Conn{c1, c2} {
			if err := roundTrip(c, []byte("x"), 2*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		c3 := dial(t, p.addr) // queued in the backlog, not accepted
		if err := roundTrip(c3, []byte("y"), 300*time.Millisecond); err == nil {
			t.Fatal("third connection served beyond -max-conns 2")
		}
		c1.Close()
		// c3's "y" is still in flight: read it now.
		c3.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c3, buf); err != nil || buf[0] != 'y' {
			t.Fatalf("third connection after one closed: %q, %v", buf, err)
		}
	})
}

func TestDrain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		p := startProxy(t, b, up.addr())
		c := dial(t, p.addr)
		if err := roundTrip(c, []byte("before"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		forced := make(chan int, 1)
		start := time.Now()
		go func() { forced <- p.Shutdown(5 * time.Second) }()
		waitFor(t, 2*time.Second, "listener closed", func() bool {
			x, err := net.DialTimeout("tcp", p.addr, time.Second)
			if err == nil {
				x.Close()
			}
			return err != nil
		})
		if err := roundTrip(c, []byte("during drain"), 2*time.Second); err != nil {
			t.Fatalf("open connection during drain: %v", err)
		}
		c.Close()
		if n := <-forced; n != 0 {
			t.Errorf("Shutdown closed %d connections, want 0 (the one open finished)", n)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("Shutdown took %v after the last connection closed", d)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		forEachBackend(t, func(t *testing.T, b string) {
			upErr := make(chan error, 1)
			up := startUpstream(t, func(c *net.TCPConn) {
				buf := make([]byte, 1)
				c.Read(buf)
				c.Write(buf)
				_, err := c.Read(buf)
				upErr <- err
			})
			p := startProxy(t, b, up.addr())
			c := dial(t, p.addr)
			if err := roundTrip(c, []byte("x"), 2*time.Second); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if n := p.Shutdown(300 * time.Millisecond); n != 1 {
				t.Errorf("Shutdown closed %d connections, want 1", n)
			}
			if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
				t.Errorf("Shutdown took %v, want about the 300ms drain timeout", d)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !isReset(err) {
				t.Errorf("client read after forced close: %v, want a reset", err)
			}
			select {
			case err := <-upErr:
				if !isReset(err) {
					t.Errorf("upstream read after forced close: %v, want a reset", err)
				}
			case <-time.After(2 * time.Second):
				t.Error("upstream side still open after the forced close")
			}
		})
	})
}

func TestMetrics(t *testing.T) {
	checkLeaks(t)
	up := startUpstream(t, echoHandler)
	p := startProxy(t, "aio", up.addr())
	m, err := p.serveMetrics("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	c := dial(t, p.addr)
	if err := roundTrip(c, []byte("12345"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + m.addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	label := fmt.Sprintf("mapping=%q", p.maps[0].label)
	upLabel := label + fmt.Sprintf(",upstream=%q", up.addr())
	for _, want := range []string{
		"uioproxy_connections_total{" + label + "} 1",
		"uioproxy_connections_active{" + label + "} 1",
		`uioproxy_bytes_total{direction="upstream",` + label + `} 5`,
		`uioproxy_bytes_total{direction="downstream",` + label + `} 5`,
		`uioproxy_errors_total{kind="connect",` + label + `} 0`,
		"uioproxy_upstream_up{" + upLabel + "} 1",
		"uioproxy_upstream_connections_active{" + upLabel + "} 1",
		"uioproxy_upstream_connects_total{" + upLabel + "} 1",
		`uioproxy_upstream_health_checks_total{` + label + `,result="ok",upstream=` + fmt.Sprintf("%q", up.addr()) + `} 0`,
		`uioproxy_syscalls_total{backend="aio",kind="io_submit"}`,
		"process_open_fds ",
		"go_goroutines ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if line != "" && !strings.HasPrefix(line, "#") && len(strings.Fields(line)) != 2 {
			t.Errorf("malformed metrics line %q", line)
		}
	}
}

// TestSlowReaders: 1,000 clients that do not read while the upstream
// pushes data at them. The proxy holds at most two buffers per
// connection, so its memory stays flat however much the upstream writes.
func TestSlowReaders(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	// 4k: one small buffer per chunk. 64k: on io_uring 6.17+ a recv
	// bundles 16 KiB pool buffers up to 64 KiB, and a paused direction's
	// recvs end at that limit.
	for _, bc := range []struct {
		flag    string
		size, n int
	}{{"4k", 4 << 10, 1000}, {"64k", 64 << 10, 300}} {
		t.Run(bc.flag, func(t *testing.T) { slowReaders(t, bc.flag, bc.size, bc.n) })
	}
}

func slowReaders(t *testing.T, buffer string, size, n int) {
	forEachBackend(t, func(t *testing.T, b string) {
		if v, err := strconv.Atoi(os.Getenv("SLOW_N")); err == nil {
			n = v
		}
		stop := make(chan struct{})
		up := startUpstream(t, func(c *net.TCPConn) {
			chunk := make([]byte, 16<<10)
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
		// SLOW_FLAGS adds flags by hand (a later -buffer wins), to compare.
		p := startProxy(t, b, up.addr(), append([]string{"-buffer", buffer}, strings.Fields(os.Getenv("SLOW_FLAGS"))...)...)
		conns := make([]*net.TCPConn, n)
		for i := range conns {
			conns[i] = dial(t, p.addr)
			conns[i].SetReadBuffer(4 << 10)
		}
		waitFor(t, 10*time.Second, "all connected", func() bool {
			return p.Snapshot().Mappings[0].BytesDown > 0 && p.ActiveConns() == n
		})
		// Every connection's socket buffers fill and the proxy stalls on
		// them; then memory must stay put however long the upstream pushes.
		heap := func() uint64 {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return ms.HeapInuse
		}
		// Slow readers: 4 KiB every 20 ms each, far below what the
		// upstream offers, so every direction keeps stalling on a full
		// socket while data keeps moving.
		var rwg sync.WaitGroup
		var clientRead atomic.Int64
		for _, c := range conns {
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				buf := make([]byte, 4<<10)
				for {
					select {
					case <-stop:
						return
					default:
					}
					c.SetReadDeadline(time.Now().Add(time.Second))
					k, err := c.Read(buf)
					clientRead.Add(int64(k))
					if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			}()
		}
		time.Sleep(500 * time.Millisecond)
		h0, r0 := heap(), clientRead.Load()
		time.Sleep(2 * time.Second)
		h1, r1 := heap(), clientRead.Load()
		close(stop)
		rwg.Wait()
		t.Logf("heap in use %.1f MiB -> %.1f MiB while %d slow readers read %.1f MiB (the proxy forwarded %.1f MiB in all)",
			float64(h0)/(1<<20), float64(h1)/(1<<20), n, float64(r1-r0)/(1<<20), float64(p.Snapshot().Mappings[0].BytesDown)/(1<<20))
		if r1-r0 < int64(n)*16<<10 {
			t.Errorf("the slow readers read only %d bytes in 2s", r1-r0)
		}
		if h1 > h0+8<<20 {
			t.Errorf("heap grew from %d to %d bytes with slow readers", h0, h1)
		}
		if bound := uint64(n) * 2 * uint64(size); h0 > 3*bound+64<<20 {
			t.Errorf("heap %d bytes for %d connections with %s buffers", h0, n, buffer)
		}
	})
}

// On io_uring 6.17+ a recv bundles 16 KiB pool buffers up to -buffer: a
// bulk stream through the proxy arrives intact and in chunks larger than
// one pool buffer (sent with one sendmsg each), and the pool's buffers are
// the small ones. Elsewhere the pool's buffers are -buffer, one per chunk.
func TestBundledForwarding(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		p := startProxy(t, b, up.addr(), "-buffer", "256k")
		bundles := p.ws[0].bundleCap > 0
		if l := p.ws[0].loop; l.CapsBundles() != bundles || bundles && (p.ws[0].pool.Size() != bundleBuffer || p.ws[0].bundleCap != 256<<10) {
			t.Fatalf("loop caps bundles %v; worker bundles up to %d in %d-byte buffers", l.CapsBundles(), p.ws[0].bundleCap, p.ws[0].pool.Size())
		}
		if !bundles && p.ws[0].pool.Size() != 256<<10 {
			t.Fatalf("no bundles, but pool buffers of %d bytes, want -buffer's 256 KiB", p.ws[0].pool.Size())
		}
		if off := startProxy(t, b, up.addr(), "-buffer", "256k", "-bundles=false"); off.ws[0].bundleCap != 0 || off.ws[0].pool.Size() != 256<<10 {
			t.Fatalf("-bundles=false: bundles up to %d in %d-byte buffers, want none in 256 KiB ones", off.ws[0].bundleCap, off.ws[0].pool.Size())
		}
		c := dial(t, p.addr)
		const total = 16 << 20
		want := make([]byte, total)
		for i := range want {
			want[i] = byte(i * 7 / 3)
		}
		errc := make(chan error, 1)
		go func() {
			for off := 0; off < total; off += 256 << 10 {
				if _, err := c.Write(want[off : off+256<<10]); err != nil {
					errc <- err
					return
				}
			}
			errc <- c.CloseWrite()
		}()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("echo of %d bytes came back as %d, or changed", total, len(got))
		}
		m := p.Snapshot().Mappings[0]
		perChunk := float64(m.BytesUp+m.BytesDown) / float64(m.MsgsUp+m.MsgsDown)
		t.Logf("%s: bundles %v, %.0f bytes per forwarded chunk", b, bundles, perChunk)
		if bundles && perChunk <= bundleBuffer {
			t.Errorf("bundles on, but %.0f bytes per chunk: no more than one %d-byte buffer each", perChunk, bundleBuffer)
		}
	})
}

// poolBuffersOut counts the pool buffers the proxy's loops have handed out
// and not had back, read on each loop.
func poolBuffersOut(s *Server) int {
	var mu sync.Mutex
	n := 0
	s.onLoops(func(w *worker) {
		_, out := w.pool.Stats()
		if w.plain != nil {
			_, o := w.plain.Stats()
			out += o
		}
		mu.Lock()
		n += out
		mu.Unlock()
	})
	return n
}

// TestBuffersBackOnAbort: connections that end while they hold pool
// buffers (chunks read from the client, waiting for an upstream that does
// not read) give every one back, whichever way they end: the upstream
// resets, -idle-timeout fires, or the client resets (the connection then
// lives on until the upstream reads what came before the reset, see
// TestClientResetAfterData). With the default -buffer, io_uring 6.17+
// holds bundles of several buffers.
func TestBuffersBackOnAbort(t *testing.T) {
	const conns = 8
	forEachBackend(t, func(t *testing.T, b string) {
		for _, tc := range []struct {
			name  string
			flags []string
		}{{"upstream reset", nil}, {"idle timeout", []string{"-idle-timeout", "2s"}}, {"client reset", nil}} {
			t.Run(tc.name, func(t *testing.T) {
				release := make(chan struct{})
				var once sync.Once
				releaseUp := func() { once.Do(func() { close(release) }) }
				up := startUpstream(t, func(c *net.TCPConn) {
					<-release // until then it does not read: the proxy's sends to it stall
					switch tc.name {
					case "upstream reset":
						c.SetLinger(0)
					case "client reset":
						io.Copy(io.Discard, c) // what the client sent, then its reset
					}
				})
				t.Cleanup(releaseUp) // before up's own cleanup, which waits for its handlers
				p := startProxy(t, b, up.addr(), tc.flags...)
				var clients []*net.TCPConn
				for range conns {
					c := dial(t, p.addr)
					clients = append(clients, c)
					t.Cleanup(func() { c.Close() })
					go func() {
						buf := make([]byte, 64<<10)
						c.SetWriteDeadline(time.Now().Add(10 * time.Second))
						for {
							if _, err := c.Write(buf); err != nil {
								return
							}
						}
					}()
				}
				// Held: each connection's send to the upstream is stuck
				// with its chunk, and what arrived before the pause waits
				// behind it.
				held := 0
				waitFor(t, 5*time.Second, "buffers held by stalled connections", func() bool {
					held = poolBuffersOut(p.Server)
					return held >= conns
				})
				t.Logf("%d pool buffers held by %d stalled connections", held, conns)
				switch tc.name {
				case "upstream reset":
					releaseUp()
				case "client reset":
					for _, c := range clients {
						c.SetLinger(0)
						c.Close()
					}
					time.Sleep(100 * time.Millisecond)
					releaseUp()
				}
				waitFor(t, 5*time.Second, "all connections closed", func() bool { return p.ActiveConns() == 0 })
				if out := poolBuffersOut(p.Server); out != 0 {
					t.Errorf("%d pool buffers still out after every connection ended, want 0", out)
				}
			})
		}
	})
}
