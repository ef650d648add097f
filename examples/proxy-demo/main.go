// Command proxy-demo is the README's main job: it starts a local echo
// server, runs uioproxy in front of it on each engine backend, drives
// 64-byte request/response traffic over many connections for a few seconds,
// and prints messages per second and the proxy's syscalls per forwarded
// message (from the engine's own counters, which the proxy's strace test
// checks against strace).
//
//	go run ./examples/proxy-demo -conns 64 -duration 3s
//
// To watch the batching yourself: run `uioproxy 9000:127.0.0.1:9001` with an
// echo server on 9001, then `strace -f -c -p $(pidof uioproxy)` under load.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/userland-io/uio/proxy"
)

func main() {
	conns := flag.Int("conns", 64, "client connections, each with one request in flight")
	duration := flag.Duration("duration", 3*time.Second, "traffic per backend")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole demo to this file")
	flag.Parse()
	if *conns < 1 || *conns > 4096 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "proxy-demo: -conns must be 1..4096 and -duration positive")
		os.Exit(2)
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fail(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	upstream, err := startEcho()
	if err != nil {
		fail(err)
	}
	defer upstream.Close()
	fmt.Printf("echo upstream on %s; %d connections, 64-byte request/response, %v per backend\n\n",
		upstream.Addr(), *conns, *duration)
	fmt.Printf("%-8s %14s %22s %16s\n", "backend", "round trips/s", "syscalls/fwd message", "io_submit/enter")
	for _, backend := range []string{"aio", "uring"} {
		if err := run(backend, upstream.Addr().String(), *conns, *duration); err != nil {
			fail(fmt.Errorf("%s: %w", backend, err))
		}
	}
	fmt.Println("\nA forwarded message is one chunk the proxy read from one side and wrote to the other;")
	fmt.Println("an epoll proxy needs at least 2 syscalls for each (read + write), plus the epoll_wait.")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "proxy-demo:", err)
	os.Exit(1)
}

func startEcho() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln, nil
}

func run(backend, upstream string, conns int, d time.Duration) error {
	cfg, err := proxy.ParseArgs([]string{"-backend", backend, "-loops", "1", "-log-level", "error",
		"127.0.0.1:0:" + upstream}, io.Discard)
	if err != nil {
		return err
	}
	s, err := proxy.New(cfg, nil)
	if err != nil {
		return err
	}
	s.Start()
	defer s.Shutdown(time.Second)
	addr := s.Addrs(0)[0].String()

	var trips atomic.Uint64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	before := s.Snapshot()
	end := time.Now().Add(d)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := client(addr, end, &trips); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	after := s.Snapshot()
	msgs := after.Messages() - before.Messages()
	sys := after.TotalSyscalls() - before.TotalSyscalls()
	eng := after.Engine.Sub(before.Engine)
	if msgs == 0 {
		return errors.New("no message was forwarded")
	}
	fmt.Printf("%-8s %14.0f %22.3f %16d\n", backend, float64(trips.Load())/d.Seconds(),
		float64(sys)/float64(msgs), eng.Submits+eng.Enters)
	return nil
}

// client sends 64-byte requests and waits for each echo until end.
func client(addr string, end time.Time, trips *atomic.Uint64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(end.Add(5 * time.Second))
	req, resp := make([]byte, 64), make([]byte, 64)
	for time.Now().Before(end) {
		if _, err := c.Write(req); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return err
		}
		trips.Add(1)
	}
	return nil
}
