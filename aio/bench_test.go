//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const reapBatch = 64

// benchReap submits reapBatch inline completions per iteration (PREAD on
// an empty nonblocking socket completes with -EAGAIN inside io_submit)
// and reaps them, timing the reap part separately.
func benchReap(b *testing.B, fallback bool) {
	c := newContext(b, 256)
	if fallback {
		c.events = nil
	}
	_, s := socketPair(b, unix.SOCK_STREAM, true)
	cbs := make([]Iocb, reapBatch)
	ptrs := make([]*Iocb, reapBatch)
	for i := range cbs {
		cbs[i].PrepPread(s, nil, 0)
		ptrs[i] = &cbs[i]
	}
	evs := make([]Event, reapBatch)
	var reapTime time.Duration
	b.ResetTimer()
	for b.Loop() {
		if n, err := c.Submit(ptrs); n != reapBatch || err != nil {
			b.Fatalf("Submit = %d, %v", n, err)
		}
		start := time.Now()
		if n := c.Reap(evs); n != reapBatch {
			b.Fatalf("Reap = %d", n)
		}
		reapTime += time.Since(start)
	}
	b.ReportMetric(float64(reapTime.Nanoseconds())/float64(b.N)/reapBatch, "ns/event-reap")
	cnt := c.Counters()
	b.ReportMetric(float64(cnt.GetEvents)/float64(b.N), "getevents/op")
}

func BenchmarkReapUser(b *testing.B)      { benchReap(b, false) }
func BenchmarkReapGetevents(b *testing.B) { benchReap(b, true) }

// One op is one 64-byte send; the peer is drained after every batch.
func benchSubmit(b *testing.B, batch int, raw bool) {
	c := newContext(b, 256)
	c.SetNonblockingSubmit(raw)
	a, s := socketPair(b, unix.SOCK_STREAM, true)
	msg := make([]byte, 64)
	cbs := make([]Iocb, batch)
	ptrs := make([]*Iocb, batch)
	for i := range cbs {
		cbs[i].PrepPwrite(a, msg, 0)
		cbs[i].RWFlags |= RWF_NOSIGNAL
		ptrs[i] = &cbs[i]
	}
	evs := make([]Event, batch)
	sink := make([]byte, 64*1024)
	b.ResetTimer()
	for done := 0; done < b.N; {
		k := min(batch, b.N-done)
		if n, err := c.Submit(ptrs[:k]); n != k || err != nil {
			b.Fatalf("Submit = %d, %v", n, err)
		}
		for got := 0; got < k; {
			n := c.Reap(evs[got:k])
			if n == 0 {
				b.Fatal("socket write not completed inline")
			}
			got += n
		}
		for want := 64 * k; want > 0; {
			n, err := unix.Read(s, sink)
			if err != nil {
				b.Fatal(err)
			}
			want -= n
		}
		done += k
	}
}

func BenchmarkSubmitBatch(b *testing.B) {
	for _, batch := range []int{1, 8, 64, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchSubmit(b, batch, false) })
	}
}

func BenchmarkSubmitBatchRaw(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { benchSubmit(b, batch, true) })
	}
}

// Baseline: one write(2) per 64-byte send, draining every 64 sends.
func BenchmarkWriteSyscall(b *testing.B) {
	a, s := socketPair(b, unix.SOCK_STREAM, true)
	msg := make([]byte, 64)
	sink := make([]byte, 64*1024)
	pending := 0
	for b.Loop() {
		if _, err := unix.Write(a, msg); err != nil {
			b.Fatal(err)
		}
		if pending++; pending == 64 {
			for want := 64 * pending; want > 0; {
				n, err := unix.Read(s, sink)
				if err != nil {
					b.Fatal(err)
				}
				want -= n
			}
			pending = 0
		}
	}
}
