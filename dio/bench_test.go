package dio

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// The benchmarks compare a File on each backend with os.File opened with
// O_DIRECT and with plain buffered os.File, on ext4:
//
//   - WAL: append 138 B (Pebble's WAL record for a 16-byte key and a
//     100-byte value: an unaligned tail, padded by every Sync), 4 KiB or
//     64 KiB, then make it durable (File.Sync; fdatasync for os.File),
//     one goroutine. The -exact kinds are dio with
//     Options.ExactSizeOnSync (ftruncate back to the logical size in
//     every Sync, which only the 138 B case needs). os.File O_DIRECT
//     cannot write 138 B records.
//   - RandRead: 4 KiB reads at random aligned offsets of a 256 MiB file,
//     1 or 32 goroutines; the page cache is dropped for the file first.
//
//	go test -run '^$' -bench . -benchtime=2000x -count=3 ./dio

// A benchFile is what the benchmarks drive.
type benchFile interface {
	append(p []byte) error
	sync() error
	readAt(p []byte, off int64) error
	close() error
}

type dioBench struct{ f *File }

func (d dioBench) append(p []byte) error { _, err := d.f.Append(p); return err }
func (d dioBench) sync() error           { return d.f.Sync() }
func (d dioBench) close() error          { return d.f.Close() }
func (d dioBench) readAt(p []byte, off int64) error {
	_, err := d.f.ReadAt(p, off)
	return err
}

type osBench struct {
	f   *os.File
	off int64
}

func (o *osBench) append(p []byte) error {
	_, err := o.f.WriteAt(p, o.off)
	o.off += int64(len(p))
	return err
}
func (o *osBench) sync() error  { return unix.Fdatasync(int(o.f.Fd())) }
func (o *osBench) close() error { return o.f.Close() }
func (o *osBench) readAt(p []byte, off int64) error {
	_, err := o.f.ReadAt(p, off)
	return err
}

var benchKinds = []string{"dio-aio", "dio-uring", "os-direct", "os-buffered"}

var walKinds = []string{"dio-aio", "dio-uring", "dio-aio-exact", "dio-uring-exact", "os-direct", "os-buffered"}

func openBench(b *testing.B, kind, path string, flag int) benchFile {
	b.Helper()
	switch kind {
	case "dio-aio", "dio-uring", "dio-aio-exact", "dio-uring-exact":
		backend, exact := strings.CutSuffix(kind[4:], "-exact")
		f, err := Open(loopFor(b, backend), path, flag, 0o644, &Options{ExactSizeOnSync: exact})
		if err != nil {
			b.Fatal(err)
		}
		if !f.Direct() {
			b.Fatal("not direct")
		}
		return dioBench{f}
	case "os-direct":
		f, err := os.OpenFile(path, flag|unix.O_DIRECT, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		return &osBench{f: f}
	default:
		f, err := os.OpenFile(path, flag, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		return &osBench{f: f}
	}
}

func alignedBuf(b *testing.B, n int) []byte {
	p, err := pool.get(n)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pool.put(p) })
	return p
}

func BenchmarkWAL(b *testing.B) {
	for _, size := range []int{138, 4 << 10, 64 << 10} {
		name := fmt.Sprintf("%dk", size>>10)
		if size%1024 != 0 {
			name = fmt.Sprintf("%dB", size)
		}
		for _, kind := range walKinds {
			if kind == "os-direct" && size%4096 != 0 {
				continue // O_DIRECT refuses unaligned writes
			}
			b.Run(name+"/"+kind, func(b *testing.B) {
				path := filepath.Join(ext4Dir(b), "wal")
				f := openBench(b, kind, path, os.O_RDWR|os.O_CREATE|os.O_TRUNC)
				p := alignedBuf(b, size)
				for i := range p {
					p[i] = byte(i)
				}
				b.SetBytes(int64(size))
				b.ResetTimer()
				for range b.N {
					if err := f.append(p); err != nil {
						b.Fatal(err)
					}
					if err := f.sync(); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "syncs/s")
				if err := f.close(); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

const readFileSize = 256 << 20

var (
	readFileOnce sync.Once
	readFilePath string
)

// readFile makes the 256 MiB file the read benchmarks share.
func readFile(b *testing.B) string {
	readFileOnce.Do(func() {
		d, err := os.MkdirTemp("/var/tmp", "dio-bench-")
		if err != nil {
			b.Fatal(err)
		}
		readFilePath = filepath.Join(d, "data")
		f, err := os.Create(readFilePath)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		r := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < readFileSize; i += len(buf) {
			for k := range buf {
				buf[k] = byte(r.Uint32())
			}
			if _, err := f.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	})
	if readFilePath == "" {
		b.Fatal("no read file")
	}
	return readFilePath
}

func BenchmarkRandRead(b *testing.B) {
	for _, g := range []int{1, 32} {
		for _, kind := range benchKinds {
			b.Run(fmt.Sprintf("g%d/%s", g, kind), func(b *testing.B) {
				path := readFile(b)
				f := openBench(b, kind, path, os.O_RDONLY)
				defer f.close()
				if fd, err := unix.Open(path, unix.O_RDONLY, 0); err == nil {
					unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
					unix.Close(fd)
				}
				bufs := make([][]byte, g)
				for i := range bufs {
					bufs[i] = alignedBuf(b, 4096)
				}
				var next atomic.Int64
				var wg sync.WaitGroup
				errc := make(chan error, g)
				b.SetBytes(4096)
				b.ResetTimer()
				for i := range g {
					wg.Add(1)
					go func() {
						defer wg.Done()
						r := rand.New(rand.NewPCG(uint64(i), 7))
						for next.Add(1) <= int64(b.N) {
							off := int64(r.IntN(readFileSize/4096)) * 4096
							if err := f.readAt(bufs[i], off); err != nil {
								errc <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				close(errc)
				for err := range errc {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
			})
		}
	}
}
