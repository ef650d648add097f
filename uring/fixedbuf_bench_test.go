package uring

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkFixedDirect measures what registered buffers save the kernel
// per op, without the engine: batches of 32 O_DIRECT reads or writes at
// random aligned offsets of a 64 MiB file, one io_uring_enter per batch,
// as READ/WRITE (the kernel pins and unpins the buffer's pages every op)
// and as READ_FIXED/WRITE_FIXED (pinned once, at registration), side by
// side (in the order plain, fixed, fixed, plain). The device dominates unless it is fast: URING_BENCH_DIR names a
// directory on the file system to use (default /var/tmp; ext4 on zram or
// a RAM-backed loop device shows the kernel's share).
//
//	URING_BENCH_DIR=/mnt/zram go test -run '^$' -bench FixedDirect -count=5 ./uring
func BenchmarkFixedDirect(b *testing.B) {
	const batch, fileSize = 32, 64 << 20
	dir := os.Getenv("URING_BENCH_DIR")
	if dir == "" {
		dir = "/var/tmp"
	}
	d, err := os.MkdirTemp(dir, "uring-fixed-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(d)
	path := filepath.Join(d, "data")
	if err := os.WriteFile(path, make([]byte, fileSize), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{4 << 10, 64 << 10} {
		for _, write := range []bool{false, true} {
			// ABBA: the second pair runs in the other order, so what one
			// case leaves behind (the host's cache of the disk, for
			// one) favours neither.
			for _, fixed := range []bool{false, true, true, false} {
				name := fmt.Sprintf("%s%dk/", map[bool]string{false: "read", true: "write"}[write], size>>10)
				name += map[bool]string{false: "plain", true: "fixed"}[fixed]
				b.Run(name, func(b *testing.B) {
					fd, err := unix.Open(path, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
					if err != nil {
						b.Skip("no O_DIRECT here:", err)
					}
					defer unix.Close(fd)
					r := newRing(b, 64, 0)
					mem, err := unix.Mmap(-1, 0, batch*size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
					if err != nil {
						b.Fatal(err)
					}
					defer unix.Munmap(mem)
					if fixed {
						if err := r.RegisterBufferTable(1); err != nil {
							b.Fatal(err)
						}
						if err := r.UpdateBuffers(0, [][]byte{mem}); err != nil {
							b.Fatal(err)
						}
					}
					// Each case reads its own offsets: the host may cache
					// what the guest's disk read before.
					rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(size)))
					cqes := make([]CQE, batch)
					b.SetBytes(int64(size))
					b.ResetTimer()
					for done := 0; done < b.N; done += batch {
						for j := range batch {
							buf := mem[j*size : (j+1)*size]
							off := int64(rnd.IntN(fileSize/size) * size)
							s := r.GetSQE()
							switch {
							case write && fixed:
								s.PrepWriteFixed(fd, buf, off, 0)
							case write:
								s.PrepWrite(fd, buf, off)
							case fixed:
								s.PrepReadFixed(fd, buf, off, 0)
							default:
								s.PrepRead(fd, buf, off)
							}
						}
						if _, err := r.SubmitAndWait(batch, 10*time.Second); err != nil {
							b.Fatal(err)
						}
						for got := 0; got < batch; {
							k := r.PeekCQEs(cqes)
							for _, c := range cqes[:k] {
								if c.Res != int32(size) {
									b.Fatalf("res %d, want %d", c.Res, size)
								}
							}
							got += k
							if got < batch && k == 0 {
								r.SubmitAndWait(1, time.Second)
							}
						}
					}
					b.StopTimer()
				})
			}
		}
	}
}
