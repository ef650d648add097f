package uio

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var backends = []string{BackendAIO, BackendUring}

// forEachBackend runs f as a subtest on a fresh loop of each backend.
func forEachBackend(t *testing.T, cfg Config, f func(t *testing.T, l *Loop)) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			c := cfg
			c.Backend = name
			l, err := NewLoop(c)
			if err != nil {
				t.Fatalf("NewLoop(%s): %v", name, err)
			}
			t.Cleanup(func() {
				if err := l.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			if got := l.Backend(); got != name {
				t.Fatalf("backend = %q, want %q", got, name)
			}
			f(t, l)
		})
	}
}

func mustDo(t *testing.T, l *Loop, op Op) Result {
	t.Helper()
	r, err := l.Do(context.Background(), op)
	if err != nil {
		t.Fatalf("Do(%s): %v", op.Kind, err)
	}
	return r
}

func socketpair(t testing.TB) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

func TestFileOps(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fd := int(f.Fd())
		data := []byte("hello, uio engine")
		if r := mustDo(t, l, Op{Kind: OpWrite, Fd: fd, Buf: data, Offset: 100}); r.Res != int32(len(data)) {
			t.Fatalf("write = %d, want %d", r.Res, len(data))
		}
		got := make([]byte, len(data))
		if r := mustDo(t, l, Op{Kind: OpRead, Fd: fd, Buf: got, Offset: 100}); r.Res != int32(len(data)) || !bytes.Equal(got, data) {
			t.Fatalf("read = %d %q, want %q", r.Res, got, data)
		}
		a, b := []byte("vec"), []byte("tored")
		if r := mustDo(t, l, Op{Kind: OpWritev, Fd: fd, Iovecs: [][]byte{a, b}, Offset: 0}); r.Res != 8 {
			t.Fatalf("writev = %d, want 8", r.Res)
		}
		x, y := make([]byte, 5), make([]byte, 3)
		if r := mustDo(t, l, Op{Kind: OpReadv, Fd: fd, Iovecs: [][]byte{x, y}, Offset: 0}); r.Res != 8 || string(x)+string(y) != "vectored" {
			t.Fatalf("readv = %d %q%q", r.Res, x, y)
		}
		for _, k := range []OpKind{OpFsync, OpFdatasync} {
			if r := mustDo(t, l, Op{Kind: k, Fd: fd}); r.Res != 0 {
				t.Fatalf("%s = %d", k, r.Res)
			}
		}
		// A bad fd is the op's error, not the loop's.
		if r := mustDo(t, l, Op{Kind: OpRead, Fd: 1 << 20, Buf: got}); !errors.Is(r.Err(), unix.EBADF) {
			t.Fatalf("read on bad fd = %v, want EBADF", r.Err())
		}
	})
}

func TestRecvWaitsForData(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		buf := make([]byte, 64)
		got := make(chan Result, 1)
		l.Post(func(h Handle) {
			h.Start(Op{Kind: OpRecv, Fd: b, Buf: buf, Done: func(h Handle, r Result) { got <- r }})
		})
		select {
		case r := <-got:
			t.Fatalf("recv completed with no data: %d", r.Res)
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := unix.Write(a, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.Res != 4 || string(buf[:4]) != "ping" {
			t.Fatalf("recv = %d %q", r.Res, buf[:max(r.Res, 0)])
		}
		// End of stream is a 0-byte recv.
		unix.Shutdown(a, unix.SHUT_WR)
		if r := mustDo(t, l, Op{Kind: OpRecv, Fd: b, Buf: buf}); r.Res != 0 {
			t.Fatalf("recv at EOF = %d, want 0", r.Res)
		}
	})
}

func TestSendWaitsForRoom(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		chunk := make([]byte, 64<<10)
		// Fill the socket until the kernel says EAGAIN.
		for {
			if _, err := unix.Write(a, chunk); err == unix.EAGAIN {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
		got := make(chan Result, 1)
		l.Post(func(h Handle) {
			h.Start(Op{Kind: OpSend, Fd: a, Buf: []byte("late"), Done: func(h Handle, r Result) { got <- r }})
		})
		select {
		case r := <-got:
			t.Fatalf("send completed on a full socket: %d", r.Res)
		case <-time.After(50 * time.Millisecond):
		}
		drain := make([]byte, 1<<20)
		for {
			if _, err := unix.Read(b, drain); err != nil {
				break
			}
		}
		if r := <-got; r.Res != 4 {
			t.Fatalf("send = %d, want 4", r.Res)
		}
	})
}

func TestPollAndCancel(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		// A poll that fires.
		got := make(chan Result, 2)
		l.Post(func(h Handle) {
			h.Start(Op{Kind: OpPoll, Fd: b, Events: unix.POLLIN, Done: func(h Handle, r Result) { got <- r }})
		})
		time.Sleep(10 * time.Millisecond)
		unix.Write(a, []byte("x"))
		if r := <-got; r.Res&unix.POLLIN == 0 || r.Res&^int32(unix.POLLIN|unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			t.Fatalf("poll = %#x, want POLLIN and no unasked bits", r.Res)
		}
		// A poll that is cancelled completes exactly once, with ECANCELED.
		c, d := socketpair(t)
		_ = c
		idc := make(chan OpID, 1)
		l.Post(func(h Handle) {
			id, _ := h.Start(Op{Kind: OpPoll, Fd: d, Events: unix.POLLIN, Done: func(h Handle, r Result) { got <- r }})
			idc <- id
		})
		id := <-idc
		time.Sleep(10 * time.Millisecond) // let it reach the kernel
		l.Post(func(h Handle) { h.Cancel(id) })
		if r := <-got; !errors.Is(r.Err(), unix.ECANCELED) || r.ID != id {
			t.Fatalf("cancelled poll = %v (id %x), want ECANCELED (id %x)", r.Err(), r.ID, id)
		}
		select {
		case r := <-got:
			t.Fatalf("second completion for a cancelled poll: %+v", r)
		case <-time.After(50 * time.Millisecond):
		}
		// Cancelling again, or an ID that is done, does nothing.
		l.Post(func(h Handle) { h.Cancel(id); h.Cancel(id) })
	})
}

func TestCancelBeforeFlush(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		_, b := socketpair(t)
		got := make(chan Result, 1)
		l.Post(func(h Handle) {
			id, _ := h.Start(Op{Kind: OpRecv, Fd: b, Buf: make([]byte, 8), Done: func(h Handle, r Result) { got <- r }})
			h.Cancel(id)
		})
		if r := <-got; !errors.Is(r.Err(), unix.ECANCELED) {
			t.Fatalf("got %v, want ECANCELED", r.Err())
		}
	})
}

func TestTimeoutOp(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		start := time.Now()
		r := mustDo(t, l, Op{Kind: OpTimeout, Timeout: 30 * time.Millisecond})
		if el := time.Since(start); !errors.Is(r.Err(), unix.ETIME) || el < 30*time.Millisecond {
			t.Fatalf("timeout = %v after %v", r.Err(), el)
		}
		got := make(chan Result, 1)
		l.Post(func(h Handle) {
			id, _ := h.Start(Op{Kind: OpTimeout, Timeout: time.Hour, Done: func(h Handle, r Result) { got <- r }})
			h.Cancel(id)
		})
		if r := <-got; !errors.Is(r.Err(), unix.ECANCELED) {
			t.Fatalf("cancelled timeout = %v", r.Err())
		}
	})
}

func TestAcceptConnectClose(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(lfd)
		if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		unix.Listen(lfd, 16)
		sa, _ := unix.Getsockname(lfd)
		accepted := make(chan Result, 1)
		l.Post(func(h Handle) {
			h.Start(Op{Kind: OpAccept, Fd: lfd, Done: func(h Handle, r Result) { accepted <- r }})
		})
		cfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if r := mustDo(t, l, Op{Kind: OpConnect, Fd: cfd, Addr: sa}); r.Res != 0 {
			t.Fatalf("connect = %v", r.Err())
		}
		ar := <-accepted
		if ar.Res < 0 {
			t.Fatalf("accept = %v", ar.Err())
		}
		sfd := int(ar.Res)
		if r := mustDo(t, l, Op{Kind: OpSend, Fd: cfd, Buf: []byte("hi")}); r.Res != 2 {
			t.Fatalf("send = %d", r.Res)
		}
		buf := make([]byte, 8)
		if r := mustDo(t, l, Op{Kind: OpRecv, Fd: sfd, Buf: buf}); r.Res != 2 {
			t.Fatalf("recv = %d", r.Res)
		}
		for _, fd := range []int{sfd, cfd} {
			if r := mustDo(t, l, Op{Kind: OpClose, Fd: fd}); r.Res != 0 {
				t.Fatalf("close = %v", r.Err())
			}
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
				t.Fatalf("fd %d still open after OpClose", fd)
			}
		}
		// Connection refused comes back as the op's error.
		dead, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		defer unix.Close(dead)
		port := freePort(t)
		if r := mustDo(t, l, Op{Kind: OpConnect, Fd: dead, Addr: &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}}); !errors.Is(r.Err(), unix.ECONNREFUSED) {
			t.Fatalf("connect to a closed port = %v, want ECONNREFUSED", r.Err())
		}
	})
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// A ring far smaller than the work: everything still completes, in order
// per fd, and nothing is reported as an error.
func TestBackpressure(t *testing.T) {
	forEachBackend(t, Config{Depth: 8}, func(t *testing.T, l *Loop) {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		const n = 2000
		var wg sync.WaitGroup
		wg.Add(n)
		var mu sync.Mutex
		var bad []Result
		l.Post(func(h Handle) {
			for i := 0; i < n; i++ {
				buf := []byte{byte(i)}
				h.Start(Op{Kind: OpWrite, Fd: int(f.Fd()), Buf: buf, Offset: int64(i), Done: func(h Handle, r Result) {
					if r.Res != 1 {
						mu.Lock()
						bad = append(bad, r)
						mu.Unlock()
					}
					wg.Done()
				}})
			}
		})
		wg.Wait()
		if len(bad) > 0 {
			t.Fatalf("%d writes failed, first: %v", len(bad), bad[0].Err())
		}
		data, _ := os.ReadFile(f.Name())
		for i := 0; i < n; i++ {
			if data[i] != byte(i) {
				t.Fatalf("byte %d = %d", i, data[i])
			}
		}
		// Counters are published at the end of each round; a Do returns
		// after its round's publish, so after it Stats counts every write.
		mustDo(t, l, Op{Kind: OpTimeout})
		if st := l.Stats(); st.Completions < n {
			t.Fatalf("completions = %d", st.Completions)
		}
	})
}

// Ops posted by many goroutines share rounds: fewer flushes than ops.
// (NoDirect: otherwise a Do that finds itself alone runs on its caller's
// goroutine, and on two cores these short writes seldom overlap.)
func TestDoFromManyGoroutines(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		before := l.Stats()
		var wg sync.WaitGroup
		const workers, each = 16, 200
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 16)
				for i := 0; i < each; i++ {
					r, err := l.Do(context.Background(), Op{Kind: OpWrite, Fd: int(f.Fd()), Buf: buf, Offset: int64(w*each+i) * 16})
					if err != nil || r.Res != 16 {
						t.Errorf("write: %v %v", err, r.Err())
						return
					}
				}
			}()
		}
		wg.Wait()
		d := l.Stats().Sub(before)
		if d.Completions != workers*each {
			t.Fatalf("completions = %d, want %d", d.Completions, workers*each)
		}
		t.Logf("%d ops in %d flushes (%s)", d.FlushedOps, d.Flushes, d)
	})
}

func TestCloseCancelsInFlight(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			l, err := NewLoop(Config{Backend: name})
			if err != nil {
				t.Fatal(err)
			}
			const n = 50
			results := make(chan Result, n+1)
			var fds []int
			for i := 0; i < n; i++ {
				_, b := socketpair(t)
				fds = append(fds, b)
			}
			l.Post(func(h Handle) {
				for _, fd := range fds {
					h.Start(Op{Kind: OpRecv, Fd: fd, Buf: make([]byte, 8), Done: func(h Handle, r Result) { results <- r }})
				}
			})
			time.Sleep(20 * time.Millisecond)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				select {
				case r := <-results:
					if !errors.Is(r.Err(), unix.ECANCELED) {
						t.Fatalf("op %d ended with %v, want ECANCELED", i, r.Err())
					}
				default:
					t.Fatalf("only %d of %d ops completed at Close", i, n)
				}
			}
			if _, err := l.Do(context.Background(), Op{Kind: OpTimeout}); !errors.Is(err, ErrClosed) {
				t.Fatalf("Do after Close = %v, want ErrClosed", err)
			}
			if err := l.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
}

func TestInvalidOps(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		for _, op := range []Op{
			{},
			{Kind: opKindEnd},
			{Kind: OpRead, Fd: -1},
			{Kind: OpConnect, Fd: 3},
			{Kind: OpPoll, Fd: 3},
			{Kind: OpPoll, Fd: 3, Events: 1 << 20},
			{Kind: OpSplice, Fd: 3, FdOut: -1, Len: 1},
			{Kind: OpTimeout, Timeout: -1},
		} {
			if _, err := l.Do(context.Background(), op); err == nil {
				t.Errorf("Do(%+v) accepted an invalid op", op)
			}
		}
	})
	if _, err := NewLoop(Config{Backend: "epoll"}); err == nil {
		t.Fatal("NewLoop accepted an unknown backend")
	}
}

func TestSpliceSupport(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		unix.Write(a, []byte("spliced"))
		r := mustDo(t, l, Op{Kind: OpSplice, Fd: b, Offset: -1, FdOut: p[1], OffsetOut: -1, Len: 64})
		if l.Backend() == BackendAIO {
			if !errors.Is(r.Err(), unix.EOPNOTSUPP) {
				t.Fatalf("aio splice = %v, want EOPNOTSUPP", r.Err())
			}
			return
		}
		if r.Res != 7 {
			t.Fatalf("splice = %v %d", r.Err(), r.Res)
		}
		out := make([]byte, 16)
		n, _ := unix.Read(p[0], out)
		if string(out[:n]) != "spliced" {
			t.Fatalf("pipe holds %q", out[:n])
		}
	})
}

// A nonblocking splice (SPLICE_F_NONBLOCK) is one splice(2) on the loop's
// thread, on both backends: no io-wq worker on io_uring, and AIO, which
// has no splice, gets one. Not ready is -EAGAIN, for a poll and a retry;
// data and end of stream come through, both ways round a pipe.
func TestSpliceNonblocking(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		c, d := socketpair(t)
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		in := Op{Kind: OpSplice, Fd: b, Offset: -1, FdOut: p[1], OffsetOut: -1, Len: 64, Flags: unix.SPLICE_F_NONBLOCK}
		out := Op{Kind: OpSplice, Fd: p[0], Offset: -1, FdOut: c, OffsetOut: -1, Len: 64, Flags: unix.SPLICE_F_NONBLOCK}
		inline0 := l.stats.syscalls.Load()
		if r := mustDo(t, l, in); r.Res != -int32(unix.EAGAIN) {
			t.Fatalf("splice from an empty socket = %d (%v), want -EAGAIN", r.Res, r.Err())
		}
		unix.Write(a, []byte("spliced"))
		if r := mustDo(t, l, Op{Kind: OpPoll, Fd: b, Events: unix.POLLIN}); r.Res&unix.POLLIN == 0 {
			t.Fatalf("poll = %#x", r.Res)
		}
		if r := mustDo(t, l, in); r.Res != 7 {
			t.Fatalf("splice socket -> pipe = %d (%v), want 7", r.Res, r.Err())
		}
		if r := mustDo(t, l, out); r.Res != 7 {
			t.Fatalf("splice pipe -> socket = %d (%v), want 7", r.Res, r.Err())
		}
		buf := make([]byte, 16)
		if n, _ := unix.Read(d, buf); string(buf[:max(n, 0)]) != "spliced" {
			t.Fatalf("the far socket got %q", buf[:max(n, 0)])
		}
		unix.Shutdown(a, unix.SHUT_WR)
		if r := mustDo(t, l, in); r.Res != 0 {
			t.Fatalf("splice at end of stream = %d (%v), want 0", r.Res, r.Err())
		}
		// The loop's own syscalls: the 4 splices, and the gettid of each
		// of the 5 Dos (Loop.waiting); a splice sent to the ring, or to
		// AIO's EOPNOTSUPP, is not among them.
		if got := l.stats.syscalls.Load() - inline0; got != 4+5 {
			t.Errorf("%d syscalls of the loop's own, want 4 splices + 5 gettids", got)
		}
	})
}

func TestAutoBackend(t *testing.T) {
	l, err := NewLoop(Config{Backend: BackendAuto})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Backend() != BackendUring && l.Backend() != BackendAIO {
		t.Fatalf("auto chose %q", l.Backend())
	}
}

func TestGroup(t *testing.T) {
	g, err := NewGroup(3, Config{Backend: BackendAIO})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	seen := map[*Loop]bool{}
	for i := 0; i < 6; i++ {
		seen[g.Next()] = true
	}
	if len(seen) != 3 || len(g.Loops()) != 3 {
		t.Fatalf("Next visited %d loops", len(seen))
	}
	for _, l := range g.Loops() {
		if r := mustDo(t, l, Op{Kind: OpTimeout}); !errors.Is(r.Err(), unix.ETIME) {
			t.Fatal(r.Err())
		}
	}
	if c := g.Stats().Completions; c != 3 {
		t.Fatalf("group completions = %d, want 3", c)
	}
}

// Do racing with Close always returns: with a result, or ErrClosed.
func TestDoRacingClose(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			for iter := 0; iter < 20; iter++ {
				l, err := NewLoop(Config{Backend: name})
				if err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				for g := 0; g < 8; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							_, err := l.Do(context.Background(), Op{Kind: OpTimeout})
							if errors.Is(err, ErrClosed) {
								return
							}
						}
					}()
				}
				time.Sleep(time.Millisecond)
				l.Close()
				finished := make(chan struct{})
				go func() { wg.Wait(); close(finished) }()
				select {
				case <-finished:
				case <-time.After(10 * time.Second):
					t.Fatal("Do still blocked 10 s after Close")
				}
			}
		})
	}
}

// A cancelled op queued behind a full backend completes at once; it does
// not wait for the ops ahead of it to make room.
func TestCancelBehindFullBackend(t *testing.T) {
	forEachBackend(t, Config{Depth: 8}, func(t *testing.T, l *Loop) {
		const n = 20 // far more recvs than the backend takes; none has data
		results := make(chan Result, n)
		ids := make(chan OpID, 1)
		l.Post(func(h Handle) {
			var last OpID
			for i := 0; i < n; i++ {
				_, b := socketpair(t)
				last, _ = h.Start(Op{Kind: OpRecv, Fd: b, Buf: make([]byte, 8), Done: func(h Handle, r Result) { results <- r }})
			}
			ids <- last
		})
		last := <-ids
		time.Sleep(20 * time.Millisecond) // the first ops are in the kernel, the rest queued
		l.Post(func(h Handle) { h.Cancel(last) })
		select {
		case r := <-results:
			if r.ID != last || !errors.Is(r.Err(), unix.ECANCELED) {
				t.Fatalf("first completion: op %x %v, want the cancelled op %x with ECANCELED", r.ID, r.Err(), last)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a cancelled op behind a full backend did not complete")
		}
	})
}

// On io_uring, an op posted to an idle loop goes out in the io_uring_enter
// the loop then sleeps in: the wake-up enter plus that one, not a third
// for a separate flush.
func TestUringFlushRidesInWait(t *testing.T) {
	l, err := NewLoop(Config{Backend: BackendUring})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 512)
	const n = 300
	before := l.Stats()
	for i := 0; i < n; i++ {
		if r := mustDo(t, l, Op{Kind: OpWrite, Fd: int(f.Fd()), Buf: buf, Offset: int64(i) * 512}); r.Res != 512 {
			t.Fatalf("write = %d %v", r.Res, r.Err())
		}
	}
	d := l.Stats().Sub(before)
	perOp := float64(d.Enters) / n
	t.Logf("%d sequential Do on an idle uring loop: %.2f io_uring_enter per op", n, perOp)
	if perOp > 2.5 {
		t.Fatalf("%.2f enters per op, want about 2 (wake + submit-and-wait)", perOp)
	}
}

// A round allocates nothing: thousands of rounds of one send and one recv
// cost no more heap allocations than setting the workload up.
func TestRoundsDoNotAllocate(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		const rounds = 3000
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		runSocketWorkload(t, l, 1, rounds)
		runtime.ReadMemStats(&after)
		if allocs := after.Mallocs - before.Mallocs; allocs > rounds/4 {
			t.Fatalf("%d allocations for %d rounds, want only the workload's setup", allocs, rounds)
		}
	})
}

// An invalid op behind a valid one in the same round: io_submit takes the
// first and stops at the second without saying why; both must complete.
func TestBadOpBehindGoodOneInARound(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		results := make(chan Result, 2)
		done := func(h Handle, r Result) { results <- r }
		l.Post(func(h Handle) {
			h.Start(Op{Kind: OpWrite, Fd: int(f.Fd()), Buf: []byte("ok"), Done: done})
			h.Start(Op{Kind: OpRead, Fd: 1 << 20, Buf: make([]byte, 8), Done: done})
		})
		var got []Result
		for len(got) < 2 {
			select {
			case r := <-results:
				got = append(got, r)
			case <-time.After(3 * time.Second):
				t.Fatalf("only %d of 2 ops completed: %+v", len(got), got)
			}
		}
		for _, r := range got { // completion order is not promised
			if (r.Kind == OpWrite && r.Res != 2) || (r.Kind == OpRead && !errors.Is(r.Err(), unix.EBADF)) {
				t.Fatalf("completions %+v, want the write's 2 bytes and EBADF for the read", got)
			}
		}
	})
}
