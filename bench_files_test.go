package uio

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkFixedFileReads is cached reads on io_uring with the file's fd
// plain or registered (RegisterFile), side by side: inflight=1 is one read
// at a time through the loop's rounds, resubmitted from its Done;
// inflight=64 keeps 64 in flight, so a round's io_uring_enter carries many
// and the kernel's per-op cost is most of the time (more so for 64-byte
// reads, which copy little); do=loop is one goroutine's Do through the
// loop (NoDirect), where the hand-off between threads dominates. The
// cpu-ns/read metric is the process's CPU time per read, steadier than the
// wall clock on a shared machine.
func BenchmarkFixedFileReads(b *testing.B) {
	for _, run := range []struct {
		name        string
		depth, size int // depth 0: Do
	}{
		{"inflight=1/size=4096", 1, 4096},
		{"inflight=64/size=4096", 64, 4096},
		{"inflight=64/size=64", 64, 64},
		{"do=loop/size=4096", 0, 4096},
	} {
		for _, mode := range []string{"plain", "registered"} {
			b.Run(run.name+"/fd="+mode, func(b *testing.B) {
				fd := benchFile(b)
				l, err := NewLoop(Config{Backend: BackendUring, NoDirect: true})
				if err != nil {
					b.Skip(err)
				}
				defer l.Close()
				if mode == "registered" {
					if err := l.RegisterFile(fd); err != nil {
						b.Fatal(err)
					}
				}
				var before Stats
				var cpu0 time.Duration
				start := func() { before, cpu0 = l.Stats(), processCPU(); b.ResetTimer() }
				b.ReportAllocs()
				if run.depth == 0 {
					benchDoReads(b, l, fd, run.size, start)
				} else {
					benchLoopReads(b, l, fd, run.depth, run.size, start)
				}
				b.StopTimer()
				cpu := processCPU() - cpu0
				d := l.Stats().Sub(before)
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/read")
				b.ReportMetric(float64(d.FixedFileOps)/float64(b.N), "fixed/read")
				b.ReportMetric(float64(d.Syscalls())/float64(b.N), "syscalls/read")
			})
		}
	}
}

func benchDoReads(b *testing.B, l *Loop, fd, size int, start func()) {
	buf := make([]byte, size)
	ctx := context.Background()
	for range 1000 { // past the loop's start and the first page faults
		l.Do(ctx, Op{Kind: OpRead, Fd: fd, Buf: buf})
	}
	start()
	for i := range b.N {
		if r, err := l.Do(ctx, Op{Kind: OpRead, Fd: fd, Buf: buf, Offset: int64(i%256) * 4096}); err != nil || r.Res != int32(size) {
			b.Fatal(r.Res, err)
		}
	}
}

// benchLoopReads keeps depth reads of size bytes in flight from the loop's
// goroutine until b.N have completed.
func benchLoopReads(b *testing.B, l *Loop, fd, depth, size int, start func()) {
	depth = min(depth, b.N)
	issued, completed := 0, 0
	done := make(chan error, 1)
	dones := make([]func(Handle, Result), depth)
	bufs := make([][]byte, depth)
	next := func(h Handle, i int) {
		off := int64(issued%256) * 4096
		issued++
		if _, err := h.Start(Op{Kind: OpRead, Fd: fd, Buf: bufs[i], Offset: off, Done: dones[i]}); err != nil {
			done <- err
		}
	}
	for i := range dones {
		bufs[i] = make([]byte, size)
		dones[i] = func(h Handle, r Result) {
			completed++
			if r.Res != int32(size) {
				done <- fmt.Errorf("read = %d (%v)", r.Res, r.Err())
				return
			}
			if issued < b.N {
				next(h, i)
			} else if completed == b.N {
				done <- nil
			}
		}
	}
	for range 1000 {
		l.Do(context.Background(), Op{Kind: OpRead, Fd: fd, Buf: bufs[0]})
	}
	start()
	if err := l.Post(func(h Handle) {
		for i := range depth {
			next(h, i)
		}
	}); err != nil {
		b.Fatal(err)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// processCPU is the user and system time of the whole process so far.
func processCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFixedFileSockets is a proxy's pattern on io_uring with the
// sockets plain or registered, side by side: 32 socketpairs, each moving
// 64-byte messages with a send on one end and a recv on the other, both
// resubmitted when the recv completes. ns/op is per message (a send and
// a recv).
func BenchmarkFixedFileSockets(b *testing.B) {
	const pairs = 32
	for _, mode := range []string{"plain", "registered"} {
		b.Run("fd="+mode, func(b *testing.B) {
			l, err := NewLoop(Config{Backend: BackendUring})
			if err != nil {
				b.Skip(err)
			}
			defer l.Close()
			var ends [pairs][2]int
			for i := range ends {
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				ends[i] = [2]int{fds[0], fds[1]}
				defer unix.Close(fds[0])
				defer unix.Close(fds[1])
				if mode == "registered" {
					for _, fd := range fds {
						if err := l.RegisterFile(fd); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			msg := make([]byte, 64)
			bufs := make([][]byte, pairs)
			recvDone := make([]func(Handle, Result), pairs)
			done := make(chan error, 1)
			issued, completed := 0, 0
			var exchange func(h Handle, i int)
			exchange = func(h Handle, i int) {
				issued++
				if _, err := h.Start(Op{Kind: OpRecv, Fd: ends[i][1], Buf: bufs[i], Done: recvDone[i]}); err != nil {
					done <- err
					return
				}
				if _, err := h.Start(Op{Kind: OpSend, Fd: ends[i][0], Buf: msg}); err != nil {
					done <- err
				}
			}
			for i := range recvDone {
				bufs[i] = make([]byte, 64)
				recvDone[i] = func(h Handle, r Result) {
					completed++
					if r.Res != 64 {
						done <- fmt.Errorf("recv = %d (%v)", r.Res, r.Err())
						return
					}
					if issued < b.N {
						exchange(h, i)
					} else if completed == b.N {
						done <- nil
					}
				}
			}
			before, cpu0 := l.Stats(), processCPU()
			b.ReportAllocs()
			b.ResetTimer()
			if err := l.Post(func(h Handle) {
				for i := range min(pairs, b.N) {
					exchange(h, i)
				}
			}); err != nil {
				b.Fatal(err)
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			cpu := processCPU() - cpu0
			d := l.Stats().Sub(before)
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/msg")
			b.ReportMetric(float64(d.FixedFileOps)/float64(b.N), "fixed/msg")
			b.ReportMetric(float64(d.Syscalls())/float64(b.N), "syscalls/msg")
		})
	}
}
