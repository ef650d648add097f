package uio

import (
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

var benchBatches = []int{1, 4, 16, 64, 256}

// BenchmarkLoopSocket measures one 64-byte message (a send on one end of a
// socketpair plus the recv on the other) through the loop, with batch
// pairs moving in lock step so every flush carries 2*batch ops. ns/op is
// per message; syscalls/msg comes from the engine's counters.
func BenchmarkLoopSocket(b *testing.B) {
	for _, backend := range backends {
		for _, batch := range benchBatches {
			b.Run(fmt.Sprintf("backend=%s/batch=%d", backend, batch), func(b *testing.B) {
				l, err := NewLoop(Config{Backend: backend, Depth: 1024})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				rounds := max(b.N/batch, 1)
				before := l.Stats()
				b.ResetTimer()
				runSocketWorkload(b, l, batch, rounds)
				b.StopTimer()
				d := l.Stats().Sub(before)
				msgs := float64(rounds * batch)
				b.ReportMetric(float64(d.Syscalls())/msgs, "syscalls/msg")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/msgs, "ns/msg")
			})
		}
	}
}

// BenchmarkPlainSyscalls is the baseline: the same messages with one
// write(2) and one read(2) each, no engine.
func BenchmarkPlainSyscalls(b *testing.B) {
	for _, batch := range benchBatches {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			type pair struct{ a, b int }
			ps := make([]pair, batch)
			for i := range ps {
				ps[i].a, ps[i].b = socketpair(b)
			}
			out, in := make([]byte, 64), make([]byte, 64)
			rounds := max(b.N/batch, 1)
			b.ResetTimer()
			for r := 0; r < rounds; r++ {
				for _, p := range ps {
					if n, err := unix.Write(p.a, out); n != 64 || err != nil {
						b.Fatal(n, err)
					}
					if n, err := unix.Read(p.b, in); n != 64 || err != nil {
						b.Fatal(n, err)
					}
				}
			}
			b.StopTimer()
			msgs := float64(rounds * batch)
			b.ReportMetric(2, "syscalls/msg")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/msgs, "ns/msg")
		})
	}
}
