package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The idle mode: -idle connections opened, each with one -size byte echo
// so it reaches the upstream, then left open and silent while -conns
// active connections echo for -duration. Before that, -warmup short
// connections (connect, echo, close) bring the proxy to its steady state;
// with -rss-pids the resident memory of those processes and their
// descendants is read after the warm-up and again with the idle connections
// open, and the difference per idle connection reported.
//
// A proxy that stops serving must show as figures, not hang the run:
// opening stops at the first idle connection whose dial or echo fails
// (each bounded by -op-timeout), the count served so far is reported, and
// the active phase runs anyway (its echoes then time out: 0 req/s).

const idleOpeners = 64 // connections being opened at once

// dialer connects from the -sources addresses in turn (or the kernel's
// choice); the source port is picked at connect time by the whole
// 4-tuple (IP_BIND_ADDRESS_NO_PORT), so no address runs out of ports.
type dialer struct {
	sources []net.IP
	next    atomic.Uint64
}

func newDialer(sources string) (*dialer, error) {
	d := &dialer{}
	for _, s := range strings.Split(sources, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("-sources: %q is not an IP address", s)
		}
		d.sources = append(d.sources, ip)
	}
	return d, nil
}

func (d *dialer) dial(addr string, deadline time.Time) (net.Conn, error) {
	nd := net.Dialer{Deadline: deadline}
	if len(d.sources) > 0 {
		nd.LocalAddr = &net.TCPAddr{IP: d.sources[d.next.Add(1)%uint64(len(d.sources))]}
		nd.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				// IPPROTO_IP 0, IP_BIND_ADDRESS_NO_PORT 24 (linux/in.h)
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, 24, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return nd.Dial("tcp", addr)
}

// echoOnce does one request/echo exchange on c within the deadline.
func echoOnce(c net.Conn, req, resp []byte, deadline time.Time) error {
	c.SetDeadline(deadline)
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, resp); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if !bytes.Equal(req, resp) {
		return fmt.Errorf("echo differs from the request")
	}
	return nil
}

// rssOf sums the resident set (smaps_rollup Rss, bytes) of pids.
func rssOf(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if errors.Is(err, fs.ErrNotExist) || (err == nil && len(b) == 0) {
			continue // exited since it was listed (or a zombie)
		}
		if err != nil {
			return 0, err
		}
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Rss:" {
				kb, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/%d/smaps_rollup: %q: %w", pid, line, err)
				}
				total += kb << 10
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("/proc/%d/smaps_rollup has no Rss line", pid)
		}
	}
	return total, nil
}

func parsePids(s string) ([]int, error) {
	var pids []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("-rss-pids: %q is not a process id", f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// withDescendants is roots and every process below them now (a proxy's
// workers, which may have been forked after it started).
func withDescendants(roots []int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // state, ppid, ...
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			children[ppid] = append(children[ppid], pid)
		}
	}
	var out []int
	seen := map[int]bool{}
	for todo := append([]int(nil), roots...); len(todo) > 0; {
		p := todo[0]
		todo = todo[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, p)
		todo = append(todo, children[p]...)
	}
	return out
}

// openConns opens up to n connections, opening idleOpeners at a time, each
// with one echo; it stops at the first failure. It returns the connections
// that echoed and the first error.
func openConns(o options, d *dialer, n int, keep bool) ([]net.Conn, error) {
	var (
		mu       sync.Mutex
		conns    []net.Conn
		next     atomic.Int64
		failed   atomic.Bool
		once     sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	for w := 0; w < min(idleOpeners, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := make([]byte, o.size), make([]byte, o.size)
			for !failed.Load() && next.Add(1) <= int64(n) {
				c, err := d.dial(o.addr, time.Now().Add(o.opTimeout))
				if err == nil {
					if err = echoOnce(c, req, resp, time.Now().Add(o.opTimeout)); err != nil {
						c.Close()
					}
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					failed.Store(true)
					return
				}
				c.SetDeadline(time.Time{})
				if !keep {
					c.Close()
					continue
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return conns, firstErr
}

func runIdle(o options, stop <-chan struct{}) result {
	r := result{Idle: o.idle}
	d, err := newDialer(o.sources)
	if err != nil {
		r.Errors, r.FirstError = 1, err.Error()
		return r
	}
	pids, err := parsePids(o.rssPids)
	if err != nil {
		r.Errors, r.FirstError = 1, err.Error()
		return r
	}
	if o.warmup > 0 {
		if _, err := openConns(o, d, o.warmup, false); err != nil {
			r.Errors, r.FirstError = 1, "warm-up: "+err.Error()
			return r
		}
		time.Sleep(500 * time.Millisecond) // let the proxy close them all
	}
	var rss0 int64
	if len(pids) > 0 {
		if rss0, err = rssOf(withDescendants(pids)); err != nil {
			r.Errors, r.FirstError = 1, err.Error()
			return r
		}
	}
	idle, idleErr := openConns(o, d, o.idle, true)
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	r.IdleServed = len(idle)
	if idleErr != nil {
		r.IdleError = idleErr.Error()
	}
	if len(pids) > 0 && len(idle) > 0 {
		time.Sleep(time.Second) // nothing moves: let the proxy settle
		rss1, err := rssOf(withDescendants(pids))
		if err == nil {
			r.RSSBefore, r.RSSAfter = rss0, rss1
			r.RSSPerIdle = float64(rss1-rss0) / float64(len(idle))
		}
	}
	select {
	case <-stop:
		return r
	default:
	}
	// The active phase: the echo mode's loop, from -sources as well.
	act := runEchoWith(o, stop, func() (net.Conn, error) { return d.dial(o.addr, time.Now().Add(o.opTimeout)) })
	act.Idle, act.IdleServed, act.IdleError = r.Idle, r.IdleServed, r.IdleError
	act.RSSBefore, act.RSSAfter, act.RSSPerIdle = r.RSSBefore, r.RSSAfter, r.RSSPerIdle
	return act
}
