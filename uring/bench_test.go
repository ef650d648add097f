package uring

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkSendBatch: each op is one batch of 64-byte SENDs on a nonblocking
// AF_UNIX stream socketpair, flushed with ONE Submit; the peer is drained
// with read(2) every round (not part of the io_uring cost, but included in
// ns/op). ns/send = ns/op / batch.
func BenchmarkSendBatch(b *testing.B) {
	for _, batch := range []int{1, 8, 64, 256} {
		for _, fs := range flagSets {
			b.Run(fmt.Sprintf("batch=%d/%s", batch, fs.name), func(b *testing.B) {
				r := newRing(b, 256, fs.flags)
				fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					b.Fatal(err)
				}
				closeLater(b, fds[0], fds[1])
				msg := make([]byte, 64)
				sink := make([]byte, 1<<16)
				cqes := make([]CQE, 256)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for j := 0; j < batch; j++ {
						s := r.GetSQE()
						s.PrepSend(fds[0], msg, unix.MSG_NOSIGNAL)
						s.SetData(uint64(j))
					}
					if n, err := r.Submit(); err != nil || n != batch {
						b.Fatalf("Submit=%d %v", n, err)
					}
					for got := 0; got < batch; {
						k := r.PeekCQEs(cqes)
						for _, c := range cqes[:k] {
							if c.Res != 64 {
								b.Fatalf("send res=%d", c.Res)
							}
						}
						got += k
						if got < batch && k == 0 {
							r.SubmitAndWait(1, time.Second)
						}
					}
					for {
						n, err := unix.Read(fds[1], sink)
						if err != nil || n < len(sink) {
							break
						}
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/send")
				b.ReportMetric(float64(r.Enters())/float64(b.N), "enters/op")
				runtime.KeepAlive(msg)
			})
		}
	}
}

// BenchmarkSendSyscall is the baseline: one write(2) per 64-byte message.
func BenchmarkSendSyscall(b *testing.B) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	closeLater(b, fds[0], fds[1])
	msg := make([]byte, 64)
	sink := make([]byte, 1<<16)
	for i := 0; i < b.N; i++ {
		if _, err := unix.Write(fds[0], msg); err != nil {
			b.Fatal(err)
		}
		if i%256 == 255 {
			for {
				n, err := unix.Read(fds[1], sink)
				if err != nil || n < len(sink) {
					break
				}
			}
		}
	}
}
