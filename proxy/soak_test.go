package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The soak test: many connections of checksummed random streams in both
// directions through a proxy process (-config, reloaded by SIGHUP every
// few seconds), while the upstreams inject faults at random. Every stream
// must arrive byte-exact or end in a reset the other side sees: a stream
// that ends with a FIN must be complete. At the end the proxy's own
// metrics must show its descriptors and goroutines back where they
// started and its heap flat. UIOPROXY_SOAK sets the duration per backend
// (make soak: 10m); make test runs the default.
const soakEnv = "UIOPROXY_SOAK"

// Connection plans, chosen by the client and sent in the stream header so
// both ends know what to expect.
const (
	planNormal      = iota // both streams whole
	planUpReset            // the upstream resets halfway through its stream
	planStall              // the upstream pauses its stream for a while
	planSlowRead           // the upstream reads the client's stream slowly
	planEarlyClose         // the upstream sends everything and half-closes before reading
	planClientReset        // the client resets halfway through its stream
	numPlans
)

var planNames = [numPlans]string{"normal", "upstream-reset", "stall", "slow-read", "early-half-close", "client-reset"}

// soakHeader: seed, upload size, download size, plan.
const soakHeaderLen = 17

func streamSum(seed uint64, n int) [32]byte {
	s, _ := randStream(io.Discard, seed, n)
	return s
}

// writeStream writes the first n bytes of seed's stream, pausing once
// after pauseAt bytes for pause, and stopping after stopAt bytes (for a
// reset) when stopAt >= 0.
func writeStream(w io.Writer, seed uint64, n, pauseAt int, pause time.Duration, stopAt int) error {
	pr, pw := io.Pipe()
	go func() {
		randStream(pw, seed, n)
		pw.Close()
	}()
	defer pr.Close()
	buf := make([]byte, 16<<10)
	sent := 0
	for sent < n {
		k := len(buf)
		if stopAt >= 0 {
			k = min(k, stopAt-sent)
			if k == 0 {
				return nil
			}
		}
		k, _ = io.ReadFull(pr, buf[:min(k, n-sent)])
		if _, err := w.Write(buf[:k]); err != nil {
			return err
		}
		if sent < pauseAt && sent+k >= pauseAt && pause > 0 {
			time.Sleep(pause)
		}
		sent += k
	}
	return nil
}

type soakStats struct {
	conns, exact, resetSeen [numPlans]atomic.Int64
	failures                atomic.Int64
	mu                      sync.Mutex
	errs                    []string
}

func (s *soakStats) fail(format string, args ...any) {
	s.failures.Add(1)
	s.mu.Lock()
	if len(s.errs) < 20 {
		s.errs = append(s.errs, fmt.Sprintf(format, args...))
	}
	s.mu.Unlock()
}

func soakUpstream(st *soakStats) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		var h [soakHeaderLen]byte
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return // a client reset before its header: nothing to check
		}
		seed := binary.LittleEndian.Uint64(h[0:])
		up := int(binary.LittleEndian.Uint32(h[8:]))
		down := int(binary.LittleEndian.Uint32(h[12:]))
		plan := int(h[16])
		// A write that meets a reset takes the error; the next read then
		// returns EOF (Linux reports a reset once). Such an EOF is a reset.
		var werr error
		readUpload := func(wait <-chan struct{}) {
			var r io.Reader = c
			if plan == planSlowRead {
				r = &slowReader{r: c}
			}
			got, n, err := hashAll(r)
			<-wait
			if err == nil && isReset(werr) {
				err = werr
			}
			if err == nil && (n != int64(up) || got != streamSum(seed, up)) {
				st.fail("plan %s: upstream got %d of %d bytes, then a FIN (checksum match %v): truncated silently",
					planNames[plan], n, up, got == streamSum(seed, up))
			}
			if plan == planClientReset && err == nil {
				st.fail("plan client-reset: the upstream saw a FIN, not the client's reset")
			}
		}
		switch plan {
		case planEarlyClose:
			if werr = writeStream(c, seed+1, down, 0, 0, -1); werr == nil {
				c.CloseWrite()
			}
			done := make(chan struct{})
			close(done)
			readUpload(done)
		case planUpReset:
			go writeStream(c, seed+1, down, 0, 0, down/2)
			time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
			c.SetLinger(0)
			return // the handler's Close resets
		default:
			done := make(chan struct{})
			go func() {
				defer close(done)
				pause := time.Duration(0)
				if plan == planStall {
					pause = time.Duration(200+rand.IntN(300)) * time.Millisecond
				}
				if werr = writeStream(c, seed+1, down, down/2, pause, -1); werr == nil {
					c.CloseWrite()
				}
			}()
			readUpload(done)
		}
	}
}

// slowReader reads at most 2 KiB at a time, with a pause between reads.
type slowReader struct{ r io.Reader }

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(200 * time.Microsecond)
	return s.r.Read(p[:min(len(p), 2<<10)])
}

func soakClient(addr string, rng *rand.Rand, st *soakStats) {
	seed := rng.Uint64()
	up, down := rng.IntN(256<<10), rng.IntN(256<<10)
	plan := rng.IntN(numPlans)
	st.conns[plan].Add(1)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		st.fail("dial: %v", err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	var h [soakHeaderLen]byte
	binary.LittleEndian.PutUint64(h[0:], seed)
	binary.LittleEndian.PutUint32(h[8:], uint32(up))
	binary.LittleEndian.PutUint32(h[12:], uint32(down))
	h[16] = byte(plan)
	tc := c.(*net.TCPConn)
	if _, err := c.Write(h[:]); err != nil {
		st.fail("plan %s: writing the header: %v", planNames[plan], err)
		return
	}
	if plan == planClientReset {
		writeStream(c, seed, up, 0, 0, up/2)
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
		tc.SetLinger(0)
		return
	}
	var werr error
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		if werr = writeStream(c, seed, up, 0, 0, -1); werr == nil {
			tc.CloseWrite()
		}
	}()
	got, n, err := hashAll(c)
	<-wdone
	if err == nil && isReset(werr) {
		err = werr // see soakUpstream: the write took the reset
	}
	switch {
	case err == nil && (n != int64(down) || got != streamSum(seed+1, down)):
		st.fail("plan %s: client got %d of %d bytes, then a FIN: truncated silently", planNames[plan], n, down)
	case err == nil && plan == planUpReset:
		st.fail("plan upstream-reset: the client got a FIN, not the reset")
	case err == nil:
		st.exact[plan].Add(1)
	case isReset(err) || isReset(werr):
		st.resetSeen[plan].Add(1)
		if plan != planUpReset {
			st.fail("plan %s: reset (%v / %v): only faults may reset", planNames[plan], err, werr)
		}
	default:
		st.fail("plan %s: client read: %v (write: %v)", planNames[plan], err, werr)
	}
}

// scrape reads the proxy's metrics into name{labels} -> value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	d := 25 * time.Second
	if v := os.Getenv(soakEnv); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s=%q: %v", soakEnv, v, err)
		}
	}
	forEachBackend(t, func(t *testing.T, b string) { soak(t, b, d) })
}

func soak(t *testing.T, backend string, d time.Duration) {
	st := &soakStats{}
	ups := []*testServer{startUpstream(t, soakUpstream(st)), startUpstream(t, soakUpstream(st))}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refusing := ln.Addr().String() // nothing listens: every connect is refused
	ln.Close()
	port, port2, mport := freePort(t), freePort(t), freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	config := func(gen int) string {
		balance := []string{"round-robin", "least-conn"}[gen%2]
		s := fmt.Sprintf("idle-timeout: 10s\nmetrics: 127.0.0.1:%d\nmappings:\n  - name: soak\n    listen: %q\n    balance: %s\n    upstreams: [%q, %q, %q]\n",
			mport, addr, balance, ups[gen%2].addr(), refusing, ups[(gen+1)%2].addr())
		if gen%2 == 1 {
			s += fmt.Sprintf("  - \"127.0.0.1:%d:%s\"\n", port2, ups[0].addr())
		}
		return s
	}
	file := writeFile(t, "soak.yaml", config(0))
	ch := startChild(t, nil, nil, "-backend", backend, "-loops", "2", "-access-log=false", "-config", file)
	maddr := fmt.Sprintf("127.0.0.1:%d", mport)
	waitFor(t, 5*time.Second, "metrics", func() bool {
		c, err := net.Dial("tcp", maddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	base := scrape(t, maddr)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
			for {
				select {
				case <-stop:
					return
				default:
				}
				soakClient(addr, rng, st)
			}
		}(i)
	}
	start := time.Now()
	reloads := 0
	var mid map[string]float64
	for time.Since(start) < d {
		time.Sleep(min(3*time.Second, d-time.Since(start)))
		if mid == nil && time.Since(start) > d/3 {
			mid = scrape(t, maddr)
		}
		reloads++
		os.WriteFile(file, []byte(config(reloads)), 0o644)
		syscall.Kill(ch.cmd.Process.Pid, syscall.SIGHUP)
		waitFor(t, 5*time.Second, "reload", func() bool { return len(ch.logged("reloaded")) == reloads })
	}
	late := scrape(t, maddr)
	close(stop)
	wg.Wait()
	if reloads%2 == 1 { // back to the first config: its listeners only
		reloads++
		os.WriteFile(file, []byte(config(reloads)), 0o644)
		syscall.Kill(ch.cmd.Process.Pid, syscall.SIGHUP)
		waitFor(t, 5*time.Second, "reload", func() bool { return len(ch.logged("reloaded")) == reloads })
	}
	var end map[string]float64
	waitFor(t, 10*time.Second, "connections closed, fds and goroutines back", func() bool {
		end = scrape(t, maddr)
		return end[`uioproxy_connections_active{mapping="soak"}`] == 0 &&
			end["process_open_fds"] <= base["process_open_fds"] && end["go_goroutines"] <= base["go_goroutines"]
	})

	var total, exact, resets int64
	for p := 0; p < numPlans; p++ {
		total += st.conns[p].Load()
		exact += st.exact[p].Load()
		resets += st.resetSeen[p].Load()
		t.Logf("plan %-16s %6d connections, %6d byte-exact, %5d reset", planNames[p], st.conns[p].Load(), st.exact[p].Load(), st.resetSeen[p].Load())
	}
	mib := func(m map[string]float64, k string) float64 { return m[k] / (1 << 20) }
	t.Logf("%s: %d connections in %v with %d reloads; proxy heap in use %.1f MiB at 1/3, %.1f MiB at the end of the load; RSS %.1f MiB; fds %v -> %v, goroutines %v -> %v",
		backend, total, d, reloads, mib(mid, "go_memstats_heap_inuse_bytes"), mib(late, "go_memstats_heap_inuse_bytes"),
		mib(late, "process_resident_memory_bytes"), base["process_open_fds"], end["process_open_fds"], base["go_goroutines"], end["go_goroutines"])
	for _, e := range st.errs {
		t.Error(e)
	}
	if n := st.failures.Load(); n > 0 {
		t.Errorf("%d failures in %d connections", n, total)
	}
	if total < 100 || st.exact[planNormal].Load() == 0 || st.resetSeen[planUpReset].Load() == 0 {
		t.Errorf("too little happened: %d connections", total)
	}
	if late["go_memstats_heap_inuse_bytes"] > mid["go_memstats_heap_inuse_bytes"]+16<<20 {
		t.Errorf("proxy heap grew from %.1f to %.1f MiB under the same load", mib(mid, "go_memstats_heap_inuse_bytes"), mib(late, "go_memstats_heap_inuse_bytes"))
	}
	if code := ch.stop(t, ch.cmd.Process.Pid); code != 0 {
		t.Errorf("exit %d", code)
	}
}
