package dio

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkWALPaired is BenchmarkWAL with its variants taking turns record
// by record, each on a file of its own in one directory: dio on both
// backends, os.File O_DIRECT (aligned records only) and buffered os.File
// with fdatasync. The disk's flush latency here drifts by 2-5x between
// runs a second apart, more than the differences being measured; turns of
// one record put every variant under the same drift. Each variant's
// syncs/s is its records over the time its own appends and syncs took;
// x-buffered is that over buffered os.File's, measured alongside.
//
//	go test -run '^$' -bench WALPaired -benchtime=2000x ./dio
func BenchmarkWALPaired(b *testing.B) {
	for _, size := range []int{138, 4 << 10, 64 << 10} {
		name := fmt.Sprintf("%dk", size>>10)
		if size%1024 != 0 {
			name = fmt.Sprintf("%dB", size)
		}
		b.Run(name, func(b *testing.B) {
			kinds := []string{"dio-aio", "dio-uring", "os-direct", "os-buffered"}
			if size%4096 != 0 {
				kinds = []string{"dio-aio", "dio-uring", "os-buffered"} // O_DIRECT refuses unaligned writes
			}
			dir := ext4Dir(b)
			files := make([]benchFile, len(kinds))
			for i, kind := range kinds {
				files[i] = openBench(b, kind, filepath.Join(dir, kind), os.O_RDWR|os.O_CREATE|os.O_TRUNC)
			}
			p := alignedBuf(b, size)
			for i := range p {
				p[i] = byte(i)
			}
			spent := make([]time.Duration, len(kinds))
			b.ResetTimer()
			for n := range b.N {
				for k := range files {
					i := (n + k) % len(files) // who goes first rotates too
					t0 := time.Now()
					if err := files[i].append(p); err != nil {
						b.Fatal(err)
					}
					if err := files[i].sync(); err != nil {
						b.Fatal(err)
					}
					spent[i] += time.Since(t0)
				}
			}
			b.StopTimer()
			buffered := float64(b.N) / spent[len(kinds)-1].Seconds()
			for i, kind := range kinds {
				rate := float64(b.N) / spent[i].Seconds()
				b.ReportMetric(rate, kind+"-syncs/s")
				if i < len(kinds)-1 {
					b.ReportMetric(rate/buffered, kind+"-x-buffered")
				}
			}
			for i, f := range files {
				if err := f.close(); err != nil {
					b.Fatalf("%s: %v", kinds[i], err)
				}
			}
		})
	}
}
