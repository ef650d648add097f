package diofs

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
	"github.com/userland-io/uio"
	"github.com/userland-io/uio/dio"
	"golang.org/x/sys/unix"
)

// BenchmarkFillseq is db_bench's fillseq with sync=true on Pebble: a fresh
// DB, b.N keys written in ascending order ("%016d", 16 bytes) with 100-byte
// values, one key per write, every write committed with pebble.Sync (the
// WAL is written and fdatasync'ed before Set returns). Nothing else runs:
// it measures the latency of one synced WAL append, which is what a
// single-writer synced workload sees.
//
// The sub-benchmarks differ only in Options.FS: Pebble's vfs.Default
// (buffered writes + fdatasync, WAL preallocated with fallocate) and this
// package's FS on each uio backend. Run it bounded, on a real disk (ext4,
// not tmpfs):
//
//	go test -run '^$' -bench Fillseq -benchtime=3000x -count=5 .
//
// FILLSEQ_EXTRA=1 adds the variants used to analyse the gap (see BENCH.md).
func BenchmarkFillseq(b *testing.B) {
	variants := []fsVariant{
		{name: "default", fs: func(*testing.B) (vfs.FS, *uio.Loop) { return vfs.Default, nil }},
		{name: "dio-aio", fs: dioFS(uio.BackendAIO, nil)},
		{name: "dio-uring", fs: dioFS(uio.BackendUring, nil)},
	}
	if os.Getenv("FILLSEQ_EXTRA") != "" {
		variants = append(variants,
			// The WAL opened without O_DIRECT (still on the loop): no
			// padding and no tail rewrite.
			fsVariant{name: "dio-aio-walbuffered", fs: dioWALBuffered(uio.BackendAIO)},
			// dio's Sync before the padding was kept: ftruncate back to
			// the logical size at every Sync, then fdatasync.
			fsVariant{name: "dio-aio-exactsize", fs: dioFS(uio.BackendAIO, &dio.Options{ExactSizeOnSync: true})},
			fsVariant{name: "dio-uring-exactsize", fs: dioFS(uio.BackendUring, &dio.Options{ExactSizeOnSync: true})},
			fsVariant{name: "dio-uring-walbuffered", fs: dioWALBuffered(uio.BackendUring)},
			// The WAL written by padWAL (padwal_test.go): O_DIRECT, the
			// padding kept between Syncs, write+fdatasync chained on the
			// loop; -nolloop does the same two syscalls inline.
			fsVariant{name: "padwal-aio", fs: padWALVariant(uio.BackendAIO)},
			fsVariant{name: "padwal-uring", fs: padWALVariant(uio.BackendUring)},
			fsVariant{name: "padwal-noloop", fs: padWALVariant("")},
		)
	}
	for _, v := range variants {
		b.Run("vfs="+v.name, func(b *testing.B) { runFillseq(b, v) })
	}
}

type fsVariant struct {
	name string
	fs   func(b *testing.B) (vfs.FS, *uio.Loop)
}

func newLoop(b *testing.B, backend string) *uio.Loop {
	l, err := uio.NewLoop(uio.Config{Backend: backend})
	if err != nil {
		b.Skipf("backend %s: %v", backend, err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

func dioFS(backend string, opts *dio.Options) func(*testing.B) (vfs.FS, *uio.Loop) {
	return func(b *testing.B) (vfs.FS, *uio.Loop) {
		l := newLoop(b, backend)
		return New(l, opts), l
	}
}

// walBufferedFS is FS with the WAL files (*.log) opened buffered.
type walBufferedFS struct {
	*FS
	wal *FS
}

func (w walBufferedFS) pick(name string) *FS {
	if strings.HasSuffix(name, ".log") {
		return w.wal
	}
	return w.FS
}
func (w walBufferedFS) Create(name string) (vfs.File, error) { return w.pick(name).Create(name) }
func (w walBufferedFS) ReuseForWrite(oldname, newname string) (vfs.File, error) {
	return w.pick(newname).ReuseForWrite(oldname, newname)
}
func (w walBufferedFS) OpenReadWrite(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	return w.pick(name).OpenReadWrite(name, opts...)
}

func dioWALBuffered(backend string) func(*testing.B) (vfs.FS, *uio.Loop) {
	return func(b *testing.B) (vfs.FS, *uio.Loop) {
		l := newLoop(b, backend)
		return walBufferedFS{FS: New(l, nil), wal: New(l, &dio.Options{Buffered: true})}, l
	}
}

func padWALVariant(backend string) func(*testing.B) (vfs.FS, *uio.Loop) {
	return func(b *testing.B) (vfs.FS, *uio.Loop) {
		l := newLoop(b, uio.BackendAIO)
		if backend == "" {
			return padWALFS{FS: New(l, nil)}, l
		}
		if backend != uio.BackendAIO {
			l = newLoop(b, backend)
		}
		return padWALFS{FS: New(l, nil), l: l}, l
	}
}

// countingFS counts the syncs Pebble asks of its files.
type countingFS struct {
	vfs.FS
	syncs *atomic.Int64
}

type countingFile struct {
	vfs.File
	syncs *atomic.Int64
}

func (c countingFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return countingFile{f, c.syncs}, nil
}
func (c countingFS) Create(name string) (vfs.File, error) { return c.wrap(c.FS.Create(name)) }
func (c countingFS) ReuseForWrite(o, n string) (vfs.File, error) {
	return c.wrap(c.FS.ReuseForWrite(o, n))
}
func (c countingFS) OpenReadWrite(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	return c.wrap(c.FS.OpenReadWrite(name, opts...))
}
func (c countingFile) Sync() error     { c.syncs.Add(1); return c.File.Sync() }
func (c countingFile) SyncData() error { c.syncs.Add(1); return c.File.SyncData() }
func (c countingFile) SyncTo(n int64) (bool, error) {
	c.syncs.Add(1)
	return c.File.SyncTo(n)
}

func runFillseq(b *testing.B, v fsVariant) {
	dir := b.TempDir()
	var sf unix.Statfs_t
	if err := unix.Statfs(dir, &sf); err != nil {
		b.Fatal(err)
	}
	if sf.Type == unix.TMPFS_MAGIC {
		b.Fatalf("%s is tmpfs: set TMPDIR to a directory on a disk (e.g. /var/tmp)", dir)
	}
	fsys, l := v.fs(b)
	var syncs atomic.Int64
	db, err := pebble.Open(dir, &pebble.Options{FS: countingFS{fsys, &syncs}})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			b.Fatal(err)
		}
	}()

	rng := rand.New(rand.NewPCG(1, 2))
	val := make([]byte, 100)
	for i := range val {
		val[i] = byte(' ' + rng.IntN(95))
	}
	key := make([]byte, 0, 16)
	lat := make([]time.Duration, b.N)
	var st0 uio.Stats
	if l != nil {
		st0 = l.Stats()
	}
	syncs0 := syncs.Load()

	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		key = fmt.Appendf(key[:0], "%016d", i)
		t := time.Now()
		if err := db.Set(key, val, pebble.Sync); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t)
	}
	elapsed := time.Since(start)
	b.StopTimer()

	n := float64(b.N)
	b.ReportMetric(n/elapsed.Seconds(), "writes/s")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[b.N/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(lat[b.N*99/100].Microseconds()), "p99-us")
	b.ReportMetric(float64(syncs.Load()-syncs0)/n, "syncs/write")
	if l != nil {
		st := l.Stats().Sub(st0)
		b.ReportMetric(float64(st.Completions)/n, "engine-ops/write")
		b.ReportMetric(float64(st.Syscalls())/n, "engine-syscalls/write")
	}
}

// BenchmarkWALSyncPattern replays, with plain syscalls on one goroutine
// (no Pebble, no loop), the kernel work one synced fillseq write costs
// under each WAL strategy: append a 138-byte record (Pebble's WAL record
// for a 16-byte key and a 100-byte value) and make it durable. It
// separates what ext4 charges for the O_DIRECT tail handling from what
// the engine adds.
//
//	buffered        pwrite(138 B) + fdatasync (vfs.Default, no fallocate)
//	buffered-falloc same, file fallocate'd with KEEP_SIZE (vfs.Default's WAL)
//	direct-truncate O_DIRECT pwrite of the padded tail block + ftruncate back
//	                to the logical size + fdatasync (dio's Sync with
//	                ExactSizeOnSync; before 2026-11-21 always)
//	direct-keeppad  same without the ftruncate: the padding stays until Close
//	direct-falloc-keeppad  keeppad, file fallocate'd with KEEP_SIZE
//	direct-recycled keeppad into a file already written and synced (a
//	                recycled WAL): an overwrite, no allocation, no size change
func BenchmarkWALSyncPattern(b *testing.B) {
	const rec = 138
	const prealloc = 64 << 20
	type pattern struct {
		name                           string
		direct, falloc, trunc, recycle bool
	}
	for _, p := range []pattern{
		{name: "buffered"},
		{name: "buffered-falloc", falloc: true},
		{name: "direct-truncate", direct: true, trunc: true},
		{name: "direct-keeppad", direct: true},
		{name: "direct-falloc-keeppad", direct: true, falloc: true},
		{name: "direct-recycled", direct: true, recycle: true},
	} {
		b.Run(p.name, func(b *testing.B) {
			path := b.TempDir() + "/wal"
			flag := unix.O_RDWR | unix.O_CREAT | unix.O_CLOEXEC
			if p.direct {
				flag |= unix.O_DIRECT
			}
			fd, err := unix.Open(path, flag, 0o644)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			if p.falloc {
				if err := unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 0, prealloc); err != nil {
					b.Fatal(err)
				}
			}
			blk, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Munmap(blk)
			if p.recycle {
				for off := int64(0); off < prealloc; off += int64(len(blk)) {
					if _, err := unix.Pwrite(fd, blk, off); err != nil {
						b.Fatal(err)
					}
				}
				if err := unix.Fsync(fd); err != nil {
					b.Fatal(err)
				}
			}
			record := make([]byte, rec)
			for i := range record {
				record[i] = byte(i)
			}
			const bs = 4096
			var size int64
			b.ResetTimer()
			for range b.N {
				if p.direct {
					base := size &^ (bs - 1)
					n := int(size - base)
					copy(blk[n:], record)
					end := (n + rec + bs - 1) &^ (bs - 1)
					clear(blk[n+rec : end])
					if _, err := unix.Pwrite(fd, blk[:end], base); err != nil {
						b.Fatal(err)
					}
					size += rec
					if nb := size &^ (bs - 1); nb != base { // the tail moved to a new block
						copy(blk, blk[nb-base:end])
					}
					if p.trunc && size%bs != 0 {
						if err := unix.Ftruncate(fd, size); err != nil {
							b.Fatal(err)
						}
					}
				} else {
					if _, err := unix.Pwrite(fd, record, size); err != nil {
						b.Fatal(err)
					}
					size += rec
				}
				if err := unix.Fdatasync(fd); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
		})
	}
}
