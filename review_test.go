package uio

// Tests for defects found in review: each one fails on the code before its
// fix.

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func setHooks(t *testing.T, h *loopHooks) {
	t.Helper()
	testHooks.Store(h)
	t.Cleanup(func() { testHooks.Store(nil) })
}

// A Post that won the doorbell while the loop was going to sleep must not
// ring it after the loop has shut down and closed it: the eventfd's number
// may belong to another file by then. The hooks replay the interleaving:
// the loop looks at its queue after the poster decided to wake it, runs
// Close's function, and shuts down while the poster is still on its way to
// the doorbell.
func TestPostNeverWakesAClosedDoorbell(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			l, err := NewLoop(Config{Backend: name})
			if err != nil {
				t.Fatal(err)
			}
			mustDo(t, l, Op{Kind: OpTimeout})
			var (
				armed   = make(chan struct{}) // the loop's next sleep stops at the edge
				armWake = make(chan struct{}) // the next doorbell stops before ringing
				atEdge  = make(chan struct{})
				casDone = make(chan struct{})
				once1   sync.Once
				once2   sync.Once
				pipes   [][2]int
			)
			setHooks(t, &loopHooks{
				sleepEdge: func() {
					select {
					case <-armed:
					default:
						return
					}
					once1.Do(func() {
						close(atEdge)
						select {
						case <-casDone:
						case <-time.After(2 * time.Second):
						}
					})
				},
				beforeWake: func() {
					select {
					case <-armWake:
					default:
						return
					}
					once2.Do(func() {
						close(casDone)
						select {
						case <-l.Done():
							// Take the lowest free fd numbers, the
							// doorbell's among them.
							for range 4 {
								var p [2]int
								if unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK) == nil {
									pipes = append(pipes, p)
								}
							}
						case <-time.After(300 * time.Millisecond):
						}
					})
				},
			})
			close(armed)
			// Wake the loop so that it goes to sleep again through the edge.
			if err := l.Post(func(h Handle) {}); err != nil {
				t.Fatal(err)
			}
			<-atEdge
			close(armWake)
			closeErr := l.Close()
			<-l.Done()
			for _, p := range pipes {
				var b [8]byte
				n, _ := unix.Read(p[0], b[:])
				unix.Close(p[0])
				unix.Close(p[1])
				if n > 0 {
					t.Errorf("a wake wrote %d bytes into a pipe that reused the closed doorbell's fd", n)
				}
			}
			if closeErr != nil {
				t.Errorf("Close: %v (the wake hit a closed doorbell)", closeErr)
			}
		})
	}
}

// Close called twice at once: both calls return only after the loop has
// exited.
func TestConcurrentCloseWaitsForLoop(t *testing.T) {
	for _, name := range backends {
		t.Run(name, func(t *testing.T) {
			l, err := NewLoop(Config{Backend: name})
			if err != nil {
				t.Fatal(err)
			}
			inShutdown := make(chan struct{})
			setHooks(t, &loopHooks{shutdown: func() {
				close(inShutdown)
				time.Sleep(50 * time.Millisecond) // the backend closes slowly
			}})
			first := make(chan error, 1)
			go func() { first <- l.Close() }()
			<-inShutdown
			if err := l.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			select {
			case <-l.Done():
			default:
				t.Fatal("second Close returned before the loop exited")
			}
			if err := <-first; err != nil {
				t.Fatalf("first Close: %v", err)
			}
		})
	}
}

// An AIO accept whose accept4 finds the connection gone (another loop or
// process took it) puts its POLL back. When that happens in a round's reap
// (the connection was already waiting, so the POLL completed inside
// io_submit), the POLL must still go to the kernel before the loop sleeps,
// or the loop never accepts again. The hook steals the connection at the
// right moment.
func TestAIOAcceptAfterLostRace(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lfd := int(f.Fd())
	if err := unix.SetNonblock(lfd, true); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	setHooks(t, &loopHooks{beforeAccept: func() {
		once.Do(func() {
			if nfd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC); err == nil {
				unix.Close(nfd)
			}
		})
	}})
	l, err := NewLoop(Config{Backend: BackendAIO})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	accepted := make(chan int32, 1)
	l.Post(func(h Handle) {
		h.Start(Op{Kind: OpAccept, Fd: lfd, Done: func(h Handle, r Result) {
			if r.Res >= 0 {
				unix.Close(int(r.Res))
			}
			accepted <- r.Res
		}})
	})
	time.Sleep(50 * time.Millisecond) // the stolen connection is gone; the loop sleeps
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	select {
	case fd := <-accepted:
		if fd < 0 {
			t.Fatalf("accept: %v", unix.Errno(-fd))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second connection was never accepted: the loop sleeps with its accept POLL staged")
	}
}

// Recv and send pass their MSG_* flags on both backends.
func TestRecvSendFlags(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		if _, err := unix.Write(b, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		r := mustDo(t, l, Op{Kind: OpRecv, Fd: a, Buf: buf, Flags: unix.MSG_PEEK})
		if r.Res != 5 || string(buf[:5]) != "hello" {
			t.Fatalf("MSG_PEEK recv = %d %q", r.Res, buf[:max(r.Res, 0)])
		}
		r = mustDo(t, l, Op{Kind: OpRecv, Fd: a, Buf: buf})
		if r.Res != 5 || string(buf[:5]) != "hello" {
			t.Fatalf("recv after MSG_PEEK = %d %q; the peeked bytes must still be there", r.Res, buf[:max(r.Res, 0)])
		}

		// MSG_WAITALL: 10 bytes arriving in two writes make one result.
		go func() {
			unix.Write(b, []byte("01234"))
			time.Sleep(30 * time.Millisecond)
			unix.Write(b, []byte("56789"))
		}()
		all := make([]byte, 10)
		r = mustDo(t, l, Op{Kind: OpRecv, Fd: a, Buf: all, Flags: unix.MSG_WAITALL})
		if r.Res != 10 || string(all) != "0123456789" {
			t.Fatalf("MSG_WAITALL recv = %d %q, want all 10 bytes", r.Res, all[:max(r.Res, 0)])
		}

		// MSG_MORE and MSG_DONTWAIT are accepted on send; the bytes arrive.
		r = mustDo(t, l, Op{Kind: OpSend, Fd: a, Buf: []byte("abc"), Flags: unix.MSG_MORE})
		if r.Res != 3 {
			t.Fatalf("MSG_MORE send = %d %v", r.Res, r.Err())
		}
		got := make([]byte, 3)
		if n, err := unix.Read(b, got); n != 3 || err != nil || string(got) != "abc" {
			t.Fatalf("peer read %d %q %v", n, got, err)
		}

		// MSG_DONTWAIT with nothing to read: EAGAIN, not a wait.
		r = mustDo(t, l, Op{Kind: OpRecv, Fd: a, Buf: buf, Flags: unix.MSG_DONTWAIT | unix.MSG_PEEK})
		if !errors.Is(r.Err(), unix.EAGAIN) {
			t.Fatalf("MSG_DONTWAIT|MSG_PEEK recv on an empty socket = %d %v, want EAGAIN", r.Res, r.Err())
		}
	})
}

// A recv cancelled while the kernel is finding no data completes with
// -ECANCELED, never -EAGAIN. On AIO both recvs run inside one io_submit:
// the first one's Done cancels the second, whose EAGAIN is already in the
// ring.
func TestCancelledRecvNeverEAGAIN(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a1, b1 := socketpair(t)
		a2, _ := socketpair(t)
		unix.Write(b1, []byte("x"))
		res := make(chan int32, 1)
		l.Post(func(h Handle) {
			var second OpID
			h.Start(Op{Kind: OpRecv, Fd: a1, Buf: make([]byte, 4), Done: func(Handle, Result) { h.Cancel(second) }})
			second, _ = h.Start(Op{Kind: OpRecv, Fd: a2, Buf: make([]byte, 4), Done: func(h Handle, r Result) { res <- r.Res }})
		})
		select {
		case r := <-res:
			if r != -int32(unix.ECANCELED) {
				t.Fatalf("cancelled recv completed with %d (%v), want -ECANCELED", r, unix.Errno(-r))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("cancelled recv never completed")
		}
	})
}

// A read into a buffer of 4 GiB or more reads the file, as pread would; on
// io_uring a length cut to 32 bits made it a 0-byte read that looks like EOF.
func TestReadIntoHugeBuffer(t *testing.T) {
	if testing.Short() {
		t.Skip("maps a 4 GiB buffer")
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("some bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// An anonymous mapping: untouched pages cost nothing.
	huge, err := unix.Mmap(-1, 0, 4<<30, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Skipf("cannot map 4 GiB: %v", err)
	}
	defer unix.Munmap(huge)
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		r := mustDo(t, l, Op{Kind: OpRead, Fd: int(f.Fd()), Buf: huge, Offset: 0})
		if r.Res != 10 {
			t.Fatalf("read into a 4 GiB buffer = %d %v, want 10", r.Res, r.Err())
		}
	})
}

// A Post from a Done that a sleeping loop's Wait delivered does not ring
// the doorbell: the loop is running by then.
func TestPostFromDoneAfterWaitRingsNoDoorbell(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		ran := make(chan struct{})
		l.Post(func(h Handle) {
			// A poll, not a recv: a recv may be a syscall of its own,
			// counted in Other, where AIO takes no RWF_NOWAIT on sockets.
			h.Start(Op{Kind: OpPoll, Fd: a, Events: unix.POLLIN, Done: func(Handle, Result) {
				l.Post(func(h Handle) { close(ran) })
			}})
		})
		time.Sleep(50 * time.Millisecond) // the loop sleeps on the poll
		before := l.Stats()
		unix.Write(b, []byte("x"))
		<-ran
		time.Sleep(10 * time.Millisecond)
		d := l.Stats().Sub(before)
		if d.Other != 0 {
			t.Fatalf("%d other syscalls (doorbell writes) for a Post made by a Done on a running loop, want 0", d.Other)
		}
	})
}

// AIO: engine ops never take the ring slots kept for the doorbell; the ops
// beyond the first context's room go to a context added for them.
func TestAIOCapacityKeepsDoorbellSlots(t *testing.T) {
	b, err := newAIOBackend(8, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a, _ := socketpair(t)
	ops := make([]Op, 12)
	for i := range ops {
		ops[i] = Op{Kind: OpPoll, Fd: a, Events: unix.POLLIN}
		if err := b.Prepare(makeOpID(uint32(i), 0), &ops[i]); err != nil {
			t.Fatalf("Prepare %d: %v", i, err)
		}
		if i == 3 {
			b.Flush() // some in the kernel, some staged
		}
	}
	b.Flush()
	if len(b.ctxs) != 2 || b.ctxs[0].ops != 8 || b.ctxs[1].ops != 4 {
		t.Fatalf("12 polls on a backend of depth 8: %d contexts, ops %d in the first", len(b.ctxs), b.ctxs[0].ops)
	}
}

// Do ends its op when its context does, and still waits for the op's one
// completion.
func TestDoContext(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, _ := socketpair(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		r, err := l.Do(ctx, Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 8)})
		if !errors.Is(err, context.DeadlineExceeded) || r.Res != -int32(unix.ECANCELED) {
			t.Fatalf("Do with an expiring context = %d, %v; want -ECANCELED and the deadline", r.Res, err)
		}
		done, cancel2 := context.WithCancel(context.Background())
		cancel2()
		if _, err := l.Do(done, Op{Kind: OpTimeout}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Do with a done context = %v", err)
		}
		// The loop carries on.
		if r := mustDo(t, l, Op{Kind: OpTimeout}); !errors.Is(r.Err(), unix.ETIME) {
			t.Fatal(r.Err())
		}
	})
}

// A lone Do of a file op runs as one syscall on the caller's goroutine;
// with NoDirect, or beside other Do calls, it goes through the loop.
func TestDoDirect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	for _, noDirect := range []bool{false, true} {
		forEachBackend(t, Config{NoDirect: noDirect}, func(t *testing.T, l *Loop) {
			before := l.Stats()
			buf := []byte("0123456789")
			for i := range 20 {
				if r := mustDo(t, l, Op{Kind: OpWrite, Fd: fd, Buf: buf, Offset: int64(i * 10)}); r.Res != 10 {
					t.Fatalf("write = %d %v", r.Res, r.Err())
				}
			}
			got := make([]byte, 10)
			if r := mustDo(t, l, Op{Kind: OpRead, Fd: fd, Buf: got, Offset: 190}); r.Res != 10 || string(got) != string(buf) {
				t.Fatalf("read = %d %q", r.Res, got)
			}
			if r := mustDo(t, l, Op{Kind: OpFdatasync, Fd: fd}); r.Res != 0 {
				t.Fatalf("fdatasync = %v", r.Err())
			}
			d := l.Stats().Sub(before)
			wantDirect := uint64(22)
			if noDirect {
				wantDirect = 0
			}
			if d.Direct != wantDirect {
				t.Fatalf("NoDirect=%v: %d direct ops, want %d (%v)", noDirect, d.Direct, wantDirect, d)
			}
			// Errors come back as results, as from the kernel's ring.
			if r := mustDo(t, l, Op{Kind: OpRead, Fd: 1 << 20, Buf: got}); !errors.Is(r.Err(), unix.EBADF) {
				t.Fatalf("read of a bad fd = %d %v, want EBADF", r.Res, r.Err())
			}
		})
	}
}

// Config.CPUs pins a loop's thread; a Group spreads its loops over them.
func TestPinnedLoops(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU")
	}
	affinity := func(l *Loop) []int {
		ch := make(chan []int, 1)
		l.Post(func(h Handle) {
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(0, &set); err != nil {
				t.Error(err)
			}
			var cpus []int
			for c := range 1024 {
				if set.IsSet(c) {
					cpus = append(cpus, c)
				}
			}
			ch <- cpus
		})
		return <-ch
	}
	g, err := NewGroup(2, Config{Backend: BackendAIO, CPUs: []int{1, 0}})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for i, want := range []int{1, 0} {
		if got := affinity(g.Loops()[i]); len(got) != 1 || got[0] != want {
			t.Errorf("loop %d runs on CPUs %v, want [%d]", i, got, want)
		}
	}
	if _, err := NewLoop(Config{CPUs: []int{5000}}); err == nil || !strings.Contains(err.Error(), "CPU 5000") {
		t.Errorf("CPU 5000: %v", err)
	}
	if _, err := NewLoop(Config{CPUs: []int{1000}}); err == nil || !strings.Contains(err.Error(), "sched_setaffinity") {
		t.Errorf("CPU 1000 on a %d-CPU machine: %v", runtime.NumCPU(), err)
	}
}

// A field the op's kind does not read is refused, naming it.
func TestStrayFieldsRefused(t *testing.T) {
	l, err := NewLoop(Config{Backend: BackendAIO})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct {
		op   Op
		want string
	}{
		{Op{Kind: OpRecv, Fd: 3, Buf: make([]byte, 1), Offset: 10}, "Offset set, but recv uses only Buf, Flags"},
		{Op{Kind: OpReadv, Fd: 3, Buf: make([]byte, 1)}, "Buf set, but readv uses only Iovecs, Offset, Flags"},
		{Op{Kind: OpAccept, Fd: 3, Addr: &unix.SockaddrInet4{}}, "Addr set, but accept reads no field besides Fd, Timeout and Done"},
		{Op{Kind: OpSendmsg, Fd: 3, Buf: []byte{1}, Iovecs: [][]byte{{1}}}, "both Buf and Iovecs"},
	} {
		if _, err := l.Do(context.Background(), c.op); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to say %q", c.op.Kind, err, c.want)
		}
	}
}

// Found in review: a lone Do of a read at an offset on a pipe must not
// fail with the pread's ESPIPE; the loop serves it. A read at the file
// position (a pipe that may stay empty) never runs on the caller's
// goroutine, so its context still ends it.
func TestDirectDoOnPipe(t *testing.T) {
	t.Run("RecvSendOnPipe", TestRecvSendOnPipe)
}

// OpRecv and OpSend work on pipes, as documented: io_uring's RECV and SEND
// refuse them (ENOTSOCK), so the engine moves the bytes with READ and
// WRITE instead; AIO's iocbs are reads and writes anyway.
func TestRecvSendOnPipe(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		unix.Write(p[1], []byte("hello"))
		buf := make([]byte, 8)
		if r := mustDo(t, l, Op{Kind: OpRead, Fd: p[0], Buf: buf, Offset: 0}); r.Res != 5 {
			t.Fatalf("read of a pipe at offset 0 = %d %v, want 5 bytes", r.Res, r.Err())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		r, err := l.Do(ctx, Op{Kind: OpRead, Fd: p[0], Buf: buf, Offset: -1})
		switch {
		case l.Backend() == BackendAIO && r.Res == -int32(unix.EINVAL):
			// AIO refuses reads at the file position (offset -1) on
			// files without one, such as pipes: at once, not a wait.
		case !errors.Is(err, context.DeadlineExceeded):
			t.Fatalf("read of an empty pipe with a 50 ms context = %d %v", r.Res, err)
		}
	})
}

// Found in review: cancelling the head of a chain that finishes anyway
// still ends the chain; an empty DoLinked returns.
func TestChainEndsOnCancelledHead(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got := make(chan int32, 2)
		l.Post(func(h Handle) {
			ids, _ := h.StartLinked(
				Op{Kind: OpFtruncate, Fd: int(f.Fd()), Offset: 10, Done: func(h Handle, r Result) { got <- r.Res }},
				Op{Kind: OpFsync, Fd: int(f.Fd()), Done: func(h Handle, r Result) { got <- r.Res }})
			h.Cancel(ids[0])
		})
		<-got // the head: cancelled, or done if it could not be stopped
		if r := <-got; r != -int32(unix.ECANCELED) {
			t.Fatalf("the op after a cancelled head = %d, want -ECANCELED", r)
		}
		if res, err := l.DoLinked(context.Background()); res != nil || err != nil {
			t.Fatalf("empty DoLinked = %v %v", res, err)
		}
	})
}

// On a kernel whose AIO takes no RWF_NOWAIT on sockets (Linux 6.1 refuses
// it: every socket iocb then completed with -EOPNOTSUPP, found by running
// these tests on Debian's 6.1 under qemu), a recv or send is one
// nonblocking recvfrom or sendmsg per attempt. The socket tests again, on
// that path; a pipe still goes as an iocb.
func TestAIOSocketsWithoutNowait(t *testing.T) {
	testNoSocketNowait = true
	t.Cleanup(func() { testNoSocketNowait = false })
	l, err := NewLoop(Config{Backend: BackendAIO})
	if err != nil {
		t.Fatal(err)
	}
	if l.b.(*aioBackend).sockNowait {
		t.Fatal("the probe found RWF_NOWAIT on sockets though the test turned it off")
	}
	l.Close()
	for name, f := range map[string]func(*testing.T){
		"RecvWaitsForData": TestRecvWaitsForData, "SendWaitsForRoom": TestSendWaitsForRoom,
		"AcceptConnectClose": TestAcceptConnectClose, "RecvSendFlags": TestRecvSendFlags,
		"PoolRecv": TestPoolRecv, "MultishotRecv": TestMultishotRecv,
		"IdleOpsDoNotFillTheLoop": TestIdleOpsDoNotFillTheLoop, "CancelledRecvNeverEAGAIN": TestCancelledRecvNeverEAGAIN,
		"RoundsDoNotAllocate": TestRoundsDoNotAllocate, "PostFromDoneAfterWaitRingsNoDoorbell": TestPostFromDoneAfterWaitRingsNoDoorbell,
	} {
		t.Run(name, f)
	}
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		unix.Write(p[1], []byte("pipe"))
		buf := make([]byte, 8)
		if r := mustDo(t, l, Op{Kind: OpRecv, Fd: p[0], Buf: buf}); r.Res != 4 || string(buf[:4]) != "pipe" {
			t.Fatalf("recv from a pipe = %d %q", r.Res, buf[:max(r.Res, 0)])
		}
		if r := mustDo(t, l, Op{Kind: OpSend, Fd: p[1], Buf: []byte("back")}); r.Res != 4 {
			t.Fatalf("send to a pipe = %d (%v)", r.Res, r.Err())
		}
	})
}
