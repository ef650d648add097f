package uio

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// benchFile is a 1 MiB file in the page cache.
func benchFile(b *testing.B) int {
	path := filepath.Join(b.TempDir(), "f")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// BenchmarkDoRead is one goroutine's Do of a cached 4 KiB read: by default
// a lone caller's op runs as one pread on its goroutine (mode=direct);
// mode=loop hands every op to the loop's thread and back (NoDirect). Next
// to BenchmarkPlainPread, it is the engine's cost for synchronous callers.
func BenchmarkDoRead(b *testing.B) {
	for _, backend := range backends {
		for _, noDirect := range []bool{false, true} {
			mode := "direct"
			if noDirect {
				mode = "loop"
			}
			b.Run(fmt.Sprintf("backend=%s/mode=%s", backend, mode), func(b *testing.B) {
				fd := benchFile(b)
				l, err := NewLoop(Config{Backend: backend, NoDirect: noDirect})
				if err != nil {
					b.Fatal(err)
				}
				// Close runs after the timer stops: an AIO loop's Close
				// waits in io_destroy for two RCU grace periods (30-70 ms
				// here), which would add 15-30 ns to every read of a 1 s
				// run and hundreds to a short one.
				defer l.Close()
				buf := make([]byte, 4096)
				ctx := context.Background()
				for range 1000 { // past the loop's start and the first page faults
					l.Do(ctx, Op{Kind: OpRead, Fd: fd, Buf: buf, Offset: 0})
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					r, err := l.Do(ctx, Op{Kind: OpRead, Fd: fd, Buf: buf, Offset: int64(i%256) * 4096})
					if err != nil || r.Res != 4096 {
						b.Fatal(r.Res, err)
					}
				}
				b.StopTimer()
			})
		}
	}
}

// BenchmarkPlainPread is BenchmarkDoRead's baseline: pread(2), no engine.
func BenchmarkPlainPread(b *testing.B) {
	fd := benchFile(b)
	buf := make([]byte, 4096)
	for range 1000 {
		unix.Pread(fd, buf, 0)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if n, err := unix.Pread(fd, buf, int64(i%256)*4096); n != 4096 || err != nil {
			b.Fatal(n, err)
		}
	}
}

// BenchmarkDoParallel is many goroutines each doing Do of cached 4 KiB
// reads on one loop: their ops share rounds. ns/op is per read.
func BenchmarkDoParallel(b *testing.B) {
	for _, backend := range backends {
		for _, g := range []int{4, 32} {
			b.Run(fmt.Sprintf("backend=%s/goroutines=%d", backend, g), func(b *testing.B) {
				fd := benchFile(b)
				l, err := NewLoop(Config{Backend: backend})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				before := l.Stats()
				per := max(b.N/g, 1)
				var wg sync.WaitGroup
				b.ResetTimer()
				for w := range g {
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, 4096)
						for i := range per {
							r, err := l.Do(context.Background(), Op{Kind: OpRead, Fd: fd, Buf: buf, Offset: int64((w*per+i)%256) * 4096})
							if err != nil || r.Res != 4096 {
								b.Error(r.Res, err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				d := l.Stats().Sub(before)
				n := float64(per * g)
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/read")
				b.ReportMetric(float64(d.Syscalls())/n, "syscalls/read")
				b.ReportMetric(float64(d.Direct)/n, "direct/read")
			})
		}
	}
}
