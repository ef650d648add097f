// Command batching shows what the uio engine's batching buys: it moves
// 64-byte messages across many socketpairs, first with one write(2) and one
// read(2) per message, then through a uio loop on each backend, where every
// round's sends and receives go to the kernel in one syscall. It prints
// messages per second and syscalls per message, the latter from the
// engine's own counters.
//
//	go run ./examples/batching -pairs 64 -duration 2s
//	strace -f -c -e trace=io_submit,io_getevents,io_uring_enter go run ./examples/batching
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/userland-io/uio"
)

func main() {
	pairs := flag.Int("pairs", 64, "socketpairs moving messages at once (the batch)")
	duration := flag.Duration("duration", 2*time.Second, "how long each run lasts")
	flag.Parse()
	if *pairs < 1 || *pairs > 4096 || *duration <= 0 {
		fmt.Fprintln(os.Stderr, "batching: -pairs must be 1..4096 and -duration positive")
		os.Exit(2)
	}
	fmt.Printf("%d socketpairs, 64-byte messages, %v per run\n\n", *pairs, *duration)
	fmt.Printf("%-22s %14s %18s\n", "", "messages/s", "syscalls/message")
	msgs, err := plain(*pairs, *duration)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%-22s %14.0f %18.3f\n", "write(2)+read(2)", float64(msgs)/duration.Seconds(), 2.0)
	for _, backend := range []string{uio.BackendAIO, uio.BackendUring} {
		msgs, st, err := engine(backend, *pairs, *duration)
		if err != nil {
			fail(fmt.Errorf("%s: %w", backend, err))
		}
		fmt.Printf("%-22s %14.0f %18.4f\n", "uio loop, "+backend, float64(msgs)/duration.Seconds(),
			float64(st.Syscalls())/float64(msgs))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "batching:", err)
	os.Exit(1)
}

func socketpairs(n int) ([][2]int, func(), error) {
	ps := make([][2]int, 0, n)
	closeAll := func() {
		for _, p := range ps {
			unix.Close(p[0])
			unix.Close(p[1])
		}
	}
	for i := 0; i < n; i++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("socketpair: %w", err)
		}
		ps = append(ps, [2]int{fds[0], fds[1]})
	}
	return ps, closeAll, nil
}

func plain(n int, d time.Duration) (int, error) {
	ps, closeAll, err := socketpairs(n)
	if err != nil {
		return 0, err
	}
	defer closeAll()
	buf := make([]byte, 64)
	msgs := 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		for _, p := range ps {
			if _, err := unix.Write(p[0], buf); err != nil {
				return 0, err
			}
			if _, err := unix.Read(p[1], buf); err != nil {
				return 0, err
			}
		}
		msgs += len(ps)
	}
	return msgs, nil
}

// engine runs the same traffic through a loop: each pair's send and recv
// are submitted together, and when both are back the pair goes again.
func engine(backend string, n int, d time.Duration) (int, uio.Stats, error) {
	ps, closeAll, err := socketpairs(n)
	if err != nil {
		return 0, uio.Stats{}, err
	}
	defer closeAll()
	l, err := uio.NewLoop(uio.Config{Backend: backend, Depth: 2*n + 16})
	if err != nil {
		return 0, uio.Stats{}, err
	}
	type pair struct {
		a, b    int
		out, in []byte
		pending int
		done    func(uio.Handle, uio.Result)
	}
	var (
		msgs     int
		stopping bool
		active   = n
		finished = make(chan error, 1)
		end      = time.Now().Add(d)
	)
	var start func(h uio.Handle, p *pair)
	start = func(h uio.Handle, p *pair) {
		p.pending = 2
		h.Start(uio.Op{Kind: uio.OpSend, Fd: p.a, Buf: p.out, Done: p.done})
		h.Start(uio.Op{Kind: uio.OpRecv, Fd: p.b, Buf: p.in, Done: p.done})
	}
	for i := range ps {
		p := &pair{a: ps[i][0], b: ps[i][1], out: make([]byte, 64), in: make([]byte, 64)}
		p.done = func(h uio.Handle, r uio.Result) {
			if r.Res != 64 {
				select {
				case finished <- fmt.Errorf("%s returned %d (%v)", r.Kind, r.Res, r.Err()):
				default:
				}
				return
			}
			if p.pending--; p.pending > 0 {
				return
			}
			msgs++
			if stopping {
				if active--; active == 0 {
					finished <- nil
				}
				return
			}
			start(h, p)
		}
		l.Post(func(h uio.Handle) { start(h, p) })
	}
	before := l.Stats()
	stop := time.AfterFunc(time.Until(end), func() { l.Post(func(h uio.Handle) { stopping = true }) })
	defer stop.Stop()
	err = <-finished
	st := l.Stats().Sub(before)
	l.Close()
	return msgs, st, err
}
