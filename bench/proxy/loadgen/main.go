// Command loadgen drives a TCP proxy (or an echo server directly) for a fixed
// time and prints one JSON line with the result. It is the one load
// generator bench/proxy/run.sh uses for every proxy, so all of them are
// measured the same way.
//
//	loadgen -mode echo -addr 127.0.0.1:9000 -conns 64 -duration 5s
//	loadgen -mode bulk -addr 127.0.0.1:9000 -conns 8 -duration 5s
//	loadgen -mode connect -addr 127.0.0.1:9000 -conns 8 -duration 5s
//	loadgen -mode idle -addr 127.0.0.1:9000 -idle 4000 -conns 16 -duration 5s -rss-pids 1234
//
// Modes:
//
//	echo     each connection sends -size bytes and waits for the -size byte
//	         echo, again and again; requests/s and p50/p99 round-trip latency.
//	bulk     each connection writes -chunk sized blocks as fast as it can; with
//	         -echo (the default) the bytes coming back are counted, else the
//	         bytes written (for a discarding upstream); MB/s (10^6 bytes).
//	connect  each worker connects, does one -size byte round trip and closes;
//	         connections/s and p50/p99 of the whole exchange.
//	idle     after -warmup short connections, opens -idle connections with
//	         one -size byte echo each and keeps them open and silent while
//	         -conns connections echo as in echo mode; reports how many idle
//	         connections were served (opening stops at the first that fails),
//	         the active requests/s and p50/p99, and with -rss-pids the
//	         resident memory those processes gained per idle connection.
//
// Every run ends by itself: the duration bounds the work and every socket
// operation has a deadline (-op-timeout, and never past the end of the run).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"
)

type options struct {
	mode      string
	addr      string
	conns     int
	duration  time.Duration
	size      int
	chunk     int
	echo      bool
	opTimeout time.Duration
	label     string
	idle      int    // idle mode: connections kept open and silent
	warmup    int    // idle mode: short connections before the baseline
	sources   string // source addresses to spread connections over
	rssPids   string // idle mode: processes whose RSS is measured
}

// result is the JSON line; fields that a mode does not measure are omitted.
type result struct {
	Mode       string  `json:"mode"`
	Label      string  `json:"label,omitempty"`
	Addr       string  `json:"addr"`
	Conns      int     `json:"conns"`
	Seconds    float64 `json:"seconds"`
	Requests   uint64  `json:"requests,omitempty"`
	RPS        float64 `json:"rps,omitempty"`
	Connects   uint64  `json:"connects,omitempty"`
	CPS        float64 `json:"cps,omitempty"`
	P50us      float64 `json:"p50_us,omitempty"`
	P99us      float64 `json:"p99_us,omitempty"`
	Bytes      uint64  `json:"bytes,omitempty"`
	MBps       float64 `json:"mb_per_s,omitempty"`
	Errors     uint64  `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	DialFailed int     `json:"dial_failed,omitempty"`
	// idle mode
	Idle       int     `json:"idle,omitempty"`
	IdleServed int     `json:"idle_served"`
	IdleError  string  `json:"idle_error,omitempty"`
	RSSBefore  int64   `json:"rss_before,omitempty"`
	RSSAfter   int64   `json:"rss_after,omitempty"`
	RSSPerIdle float64 `json:"rss_per_idle_b,omitempty"`
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "echo", "echo, bulk, connect or idle")
	flag.StringVar(&o.addr, "addr", "127.0.0.1:9000", "address to connect to (the proxy or the echo server)")
	flag.IntVar(&o.conns, "conns", 1, "connections (echo), streams (bulk) or concurrent workers (connect)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "how long to generate load")
	flag.IntVar(&o.size, "size", 64, "request and response size in bytes (echo, connect)")
	flag.IntVar(&o.chunk, "chunk", 64<<10, "write size in bytes (bulk)")
	flag.BoolVar(&o.echo, "echo", true, "bulk: the upstream echoes, count bytes read back (false: count bytes written)")
	flag.DurationVar(&o.opTimeout, "op-timeout", 5*time.Second, "deadline for any single dial, read or write")
	flag.StringVar(&o.label, "label", "", "free text copied into the JSON line (e.g. the proxy name)")
	flag.IntVar(&o.idle, "idle", 0, "idle: connections opened (one echo each) and kept open and silent")
	flag.IntVar(&o.warmup, "warmup", 256, "idle: short connections (connect, echo, close) before the RSS baseline")
	flag.StringVar(&o.sources, "sources", "", "comma-separated source addresses the connections spread over (echo, idle; default: the kernel's choice)")
	flag.StringVar(&o.rssPids, "rss-pids", "", "idle: comma-separated pids whose resident memory (smaps_rollup Rss, with their descendants') is measured")
	flag.Parse()
	if err := o.check(); err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		flag.Usage()
		os.Exit(2)
	}
	// Ctrl-C ends the run early but still prints what was measured.
	stop := make(chan struct{})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	go func() { <-sig; close(stop) }()

	var r result
	switch o.mode {
	case "echo":
		r = runEcho(o, stop)
	case "bulk":
		r = runBulk(o, stop)
	case "connect":
		r = runConnect(o, stop)
	case "idle":
		r = runIdle(o, stop)
	}
	r.Mode, r.Label, r.Addr, r.Conns = o.mode, o.label, o.addr, o.conns
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
	if r.Requests == 0 && r.Connects == 0 && r.Bytes == 0 {
		os.Exit(1) // nothing got through: let scripts notice
	}
}

func (o options) check() error {
	switch {
	case o.mode != "echo" && o.mode != "bulk" && o.mode != "connect" && o.mode != "idle":
		return fmt.Errorf("-mode %q: want echo, bulk, connect or idle", o.mode)
	case o.idle < 0 || o.warmup < 0:
		return fmt.Errorf("-idle %d, -warmup %d: must not be negative", o.idle, o.warmup)
	case o.conns < 1:
		return fmt.Errorf("-conns %d: want at least 1", o.conns)
	case o.duration <= 0:
		return fmt.Errorf("-duration %v: want more than 0", o.duration)
	case o.size < 1:
		return fmt.Errorf("-size %d: want at least 1", o.size)
	case o.chunk < 1:
		return fmt.Errorf("-chunk %d: want at least 1", o.chunk)
	case o.opTimeout <= 0:
		return fmt.Errorf("-op-timeout %v: want more than 0", o.opTimeout)
	}
	return nil
}

// errorCounter keeps the count and the first error, which usually explains
// the rest.
type errorCounter struct {
	n     atomic.Uint64
	once  sync.Once
	first string
}

func (e *errorCounter) add(err error) {
	e.n.Add(1)
	e.once.Do(func() { e.first = err.Error() })
}

// opDeadline bounds one socket operation by both the per-op timeout and the
// end of the run, so nothing outlives -duration by more than -op-timeout.
func opDeadline(o options, end time.Time) time.Time {
	d := time.Now().Add(o.opTimeout)
	if end.Before(d) {
		return end
	}
	return d
}

// expired tells an error caused by reaching the end of the run (not a
// failure) from a real one.
func expired(err error, end time.Time) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(end)
}

// dialAll opens n connections before the clock starts, so connection setup
// does not count against the echo or bulk numbers.
func dialAll(o options, errs *errorCounter, dial func() (net.Conn, error)) []net.Conn {
	conns := make([]net.Conn, o.conns)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := dial()
			if err != nil {
				errs.add(err)
				return
			}
			conns[i] = c
		}(i)
	}
	wg.Wait()
	live := conns[:0]
	for _, c := range conns {
		if c != nil {
			live = append(live, c)
		}
	}
	return live
}

// watchStop closes every connection when the run is interrupted, so blocked
// reads return at once.
func watchStop(stop <-chan struct{}, done <-chan struct{}, conns []net.Conn) {
	select {
	case <-stop:
		for _, c := range conns {
			c.Close()
		}
	case <-done:
	}
}

func plainDial(o options) func() (net.Conn, error) {
	return func() (net.Conn, error) { return net.DialTimeout("tcp", o.addr, o.opTimeout) }
}

func runEcho(o options, stop <-chan struct{}) result {
	d, err := newDialer(o.sources)
	if err != nil {
		return result{Errors: 1, FirstError: err.Error()}
	}
	return runEchoWith(o, stop, func() (net.Conn, error) { return d.dial(o.addr, time.Now().Add(o.opTimeout)) })
}

// runEchoWith is the echo mode with dial making the connections.
func runEchoWith(o options, stop <-chan struct{}, dial func() (net.Conn, error)) result {
	var errs errorCounter
	conns := dialAll(o, &errs, dial)
	r := result{DialFailed: o.conns - len(conns)}
	hists := make([]latencyHistogram, len(conns))
	done := make(chan struct{})
	go watchStop(stop, done, conns)
	start := time.Now()
	end := start.Add(o.duration)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func(c net.Conn, h *latencyHistogram) {
			defer wg.Done()
			defer c.Close()
			req := make([]byte, o.size)
			resp := make([]byte, o.size)
			for time.Now().Before(end) {
				t0 := time.Now()
				c.SetDeadline(opDeadline(o, end))
				if _, err := c.Write(req); err != nil {
					if !expired(err, end) {
						errs.add(fmt.Errorf("write: %w", err))
					}
					return
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					if !expired(err, end) {
						errs.add(fmt.Errorf("read echo: %w", err))
					}
					return
				}
				h.record(time.Since(t0))
			}
		}(c, &hists[i])
	}
	wg.Wait()
	close(done)
	elapsed := time.Since(start).Seconds()
	var all latencyHistogram
	for i := range hists {
		all.merge(&hists[i])
	}
	r.Seconds = elapsed
	r.Requests = all.total
	r.RPS = float64(all.total) / elapsed
	r.P50us = micros(all.quantile(0.50))
	r.P99us = micros(all.quantile(0.99))
	r.Errors, r.FirstError = errs.n.Load(), errs.first
	return r
}

func runBulk(o options, stop <-chan struct{}) result {
	var errs errorCounter
	conns := dialAll(o, &errs, plainDial(o))
	r := result{DialFailed: o.conns - len(conns)}
	done := make(chan struct{})
	go watchStop(stop, done, conns)
	var counted atomic.Uint64
	start := time.Now()
	end := start.Add(o.duration)
	var wg sync.WaitGroup
	for _, c := range conns {
		// One deadline for the whole run: a bulk write may legitimately
		// block while the peer drains, but never past the end.
		c.SetDeadline(end)
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			defer c.Close()
			var readerDone chan struct{}
			if o.echo {
				readerDone = make(chan struct{})
				go func() {
					defer close(readerDone)
					buf := make([]byte, 256<<10)
					for {
						n, err := c.Read(buf)
						counted.Add(uint64(n))
						if err != nil {
							if !expired(err, end) && !errors.Is(err, net.ErrClosed) {
								errs.add(fmt.Errorf("read: %w", err))
							}
							return
						}
					}
				}()
			}
			chunk := make([]byte, o.chunk)
			for time.Now().Before(end) {
				n, err := c.Write(chunk)
				if !o.echo {
					counted.Add(uint64(n))
				}
				if err != nil {
					if !expired(err, end) && !errors.Is(err, net.ErrClosed) {
						errs.add(fmt.Errorf("write: %w", err))
					}
					break
				}
			}
			if readerDone != nil {
				<-readerDone
			}
		}(c)
	}
	wg.Wait()
	close(done)
	r.Seconds = time.Since(start).Seconds()
	r.Bytes = counted.Load()
	r.MBps = float64(r.Bytes) / 1e6 / r.Seconds
	r.Errors, r.FirstError = errs.n.Load(), errs.first
	return r
}

func runConnect(o options, stop <-chan struct{}) result {
	var errs errorCounter
	hists := make([]latencyHistogram, o.conns)
	start := time.Now()
	end := start.Add(o.duration)
	var wg sync.WaitGroup
	for i := range hists {
		wg.Add(1)
		go func(h *latencyHistogram) {
			defer wg.Done()
			req := make([]byte, o.size)
			resp := make([]byte, o.size)
			for time.Now().Before(end) {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				d := net.Dialer{Deadline: opDeadline(o, end)}
				c, err := d.Dial("tcp", o.addr)
				if err != nil {
					if !expired(err, end) && !time.Now().After(end) {
						errs.add(fmt.Errorf("dial: %w", err))
						time.Sleep(time.Millisecond) // a refusing peer must not turn this into a spin loop
					}
					continue
				}
				c.SetDeadline(opDeadline(o, end))
				_, err = c.Write(req)
				if err == nil {
					_, err = io.ReadFull(c, resp)
				}
				c.Close()
				if err != nil {
					if !expired(err, end) {
						errs.add(fmt.Errorf("round trip: %w", err))
					}
					continue
				}
				h.record(time.Since(t0))
			}
		}(&hists[i])
	}
	wg.Wait()
	var all latencyHistogram
	for i := range hists {
		all.merge(&hists[i])
	}
	r := result{Seconds: time.Since(start).Seconds()}
	r.Connects = all.total
	r.CPS = float64(all.total) / r.Seconds
	r.P50us = micros(all.quantile(0.50))
	r.P99us = micros(all.quantile(0.99))
	r.Errors, r.FirstError = errs.n.Load(), errs.first
	return r
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
