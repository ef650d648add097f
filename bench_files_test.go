package uio

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkFixedFileReads is cached 4 KiB reads on io_uring with the file's
// fd plain or registered (RegisterFile), side by side: inflight=1 is one
// read at a time through the loop's rounds, resubmitted from its Done (the
// kernel's per-op cost shows most), inflight=64 keeps 64 in flight, and
// do=loop is one goroutine's Do through the loop (NoDirect), where the
// hand-off between threads dominates.
func BenchmarkFixedFileReads(b *testing.B) {
	for _, run := range []string{"inflight=1", "inflight=64", "do=loop"} {
		for _, mode := range []string{"plain", "registered"} {
			b.Run(run+"/fd="+mode, func(b *testing.B) {
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
				start := func() { before = l.Stats(); b.ResetTimer() }
				b.ReportAllocs()
				if run == "do=loop" {
					benchDoReads(b, l, fd, start)
				} else {
					var depth int
					fmt.Sscanf(run, "inflight=%d", &depth)
					benchLoopReads(b, l, fd, depth, start)
				}
				b.StopTimer()
				d := l.Stats().Sub(before)
				b.ReportMetric(float64(d.FixedFileOps)/float64(b.N), "fixed/read")
				b.ReportMetric(float64(d.Syscalls())/float64(b.N), "syscalls/read")
			})
		}
	}
}

func benchDoReads(b *testing.B, l *Loop, fd int, start func()) {
	buf := make([]byte, 4096)
	ctx := context.Background()
	for range 1000 {
		l.Do(ctx, Op{Kind: OpRead, Fd: fd, Buf: buf})
	}
	start()
	for i := range b.N {
		if r, err := l.Do(ctx, Op{Kind: OpRead, Fd: fd, Buf: buf, Offset: int64(i%256) * 4096}); err != nil || r.Res != 4096 {
			b.Fatal(r.Res, err)
		}
	}
}

// benchLoopReads keeps depth reads in flight from the loop's goroutine
// until b.N have completed.
func benchLoopReads(b *testing.B, l *Loop, fd, depth int, start func()) {
	depth = min(depth, b.N)
	issued, completed := 0, 0
	done := make(chan error, 1)
	dones := make([]func(Result), depth)
	bufs := make([][]byte, depth)
	next := func(i int) {
		off := int64(issued%256) * 4096
		issued++
		if _, err := l.Submit(Op{Kind: OpRead, Fd: fd, Buf: bufs[i], Offset: off, Done: dones[i]}); err != nil {
			done <- err
		}
	}
	for i := range dones {
		bufs[i] = make([]byte, 4096)
		dones[i] = func(r Result) {
			completed++
			if r.Res != 4096 {
				done <- fmt.Errorf("read = %d (%v)", r.Res, r.Err())
				return
			}
			if issued < b.N {
				next(i)
			} else if completed == b.N {
				done <- nil
			}
		}
	}
	for range 1000 { // past the loop's start and the first page faults
		l.Do(context.Background(), Op{Kind: OpRead, Fd: fd, Buf: bufs[0]})
	}
	start()
	if err := l.Post(func() {
		for i := range depth {
			next(i)
		}
	}); err != nil {
		b.Fatal(err)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
