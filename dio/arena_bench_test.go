package dio

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

// BenchmarkArena compares dio on io_uring with the loop's registered arena
// (buffers go out as READ_FIXED/WRITE_FIXED) and without it (SetArenaSize
// 0: the same buffers, mmapped but unregistered), on ext4:
//
//   - read4k: ReadAt of 4 KiB at random aligned offsets of the 256 MiB
//     file, into a caller's buffer that is not page aligned, so dio reads
//     into a buffer of its own and copies (the arena's case); "user" reads
//     into a page-aligned caller buffer, which the kernel fills directly
//     and the arena cannot help (for reference).
//   - write64k: WriteAt of 64 KiB at random aligned offsets of a 64 MiB
//     file (written in full first, so these are overwrites), one file per
//     goroutine.
//   - wal64k: Append of 64 KiB then Sync, one goroutine: the chunk writes
//     and Sync's tail writes come from the append chunks.
//
// arena-KiB is the most arena memory the files held at once.
//
// g is the number of goroutines. The loops have Config.NoDirect: a Do
// whose caller is alone in Do otherwise runs as a plain pread or pwrite on
// the caller's goroutine, no ring op at all, and with 32 goroutines on two
// CPUs whether they fall into that mode or queue on the loop decides a run
// by far more than registration does (2.5 against 6 µs per read, measured
// on zram).
//
// The device's latency varies from run to run much more than pinning
// costs, so DIO_ARENA_ROUNDS=n repeats the whole table n times in one run
// (the repeats are named #01, #02, ...): compare medians across rounds.
// DIO_BENCH_DIR puts the files on another file system than the ext4 of
// /tmp or /var/tmp (for example ext4 on a loop device over tmpfs, where
// pinning is a bigger share of the op).
//
//	DIO_ARENA_ROUNDS=5 go test -run '^$' -bench Arena -benchtime=2000x ./dio
func BenchmarkArena(b *testing.B) {
	rounds, _ := strconv.Atoi(os.Getenv("DIO_ARENA_ROUNDS"))
	for round := range max(rounds, 1) {
		benchArenaRound(b, round%2 == 1)
	}
}

// benchArenaRound runs the table once, each case with and without the
// arena; noArenaFirst swaps the two, so that order effects cancel out
// over the rounds.
func benchArenaRound(b *testing.B, noArenaFirst bool) {
	for _, c := range []struct {
		name string
		g    int
		kind benchOp
		user bool
	}{
		{"read4k/g1", 1, opRead, false},
		{"read4k/g32", 32, opRead, false},
		{"read4k-user/g32", 32, opRead, true},
		{"write64k/g1", 1, opWrite, false},
		{"write64k/g4", 4, opWrite, false},
		{"wal64k/g1", 1, opWAL, false},
	} {
		for _, arena := range []bool{!noArenaFirst, noArenaFirst} {
			kind := "arena"
			if !arena {
				kind = "noarena"
			}
			b.Run(c.name+"/"+kind, func(b *testing.B) {
				benchArena(b, c.g, c.kind, c.user, arena)
			})
		}
	}
}

type benchOp int

const (
	opRead benchOp = iota
	opWrite
	opWAL
)

func benchArena(b *testing.B, g int, kind benchOp, user, withArena bool) {
	if !withArena {
		SetArenaSize(0)
		defer SetArenaSize(defaultArenaSize)
	}
	l, err := uio.NewLoop(uio.Config{Backend: uio.BackendUring, Depth: 256, NoDirect: true})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	size, n := int64(readFileSize), 4096
	files := make([]*File, g)
	switch kind {
	case opWAL:
		n = 64 << 10
		f, err := Open(l, filepath.Join(arenaBenchTmp(b), "wal"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644, nil)
		if err != nil {
			b.Fatal(err)
		}
		files[0] = f
	case opWrite:
		size, n = 64<<20, 64<<10
		for i := range files {
			files[i] = openArenaBench(b, l, arenaBenchFile(b, fmt.Sprint("w", i), size))
		}
	default:
		path := readFile(b)
		if os.Getenv("DIO_BENCH_DIR") != "" {
			path = arenaBenchFile(b, "r", size)
		}
		f := openArenaBench(b, l, path)
		for i := range files {
			files[i] = f
		}
		if fd, err := unix.Open(path, unix.O_RDONLY, 0); err == nil {
			unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
			unix.Close(fd)
		}
	}
	if (files[0].arena != nil) != withArena {
		b.Fatalf("arena %v, want %v", files[0].arena != nil, withArena)
	}
	bufs := make([][]byte, g)
	for i := range bufs {
		if user {
			bufs[i] = alignedBuf(b, n)
		} else {
			bufs[i] = make([]byte, n+1)[1:]
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, g)
	before := l.Stats()
	b.SetBytes(int64(n))
	b.ResetTimer()
	for i := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 9))
			f, p := files[i], bufs[i]
			for next.Add(1) <= int64(b.N) {
				off := int64(r.IntN(int(size)/n)) * int64(n)
				var err error
				switch kind {
				case opWAL:
					if _, err = f.Append(p); err == nil {
						err = f.Sync()
					}
				case opWrite:
					_, err = f.WriteAt(p, off)
				default:
					_, err = f.ReadAt(p, off)
				}
				if err != nil {
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
	d := l.Stats().Sub(before)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(float64(d.FixedBufferOps)/float64(b.N), "fixed/op")
	b.ReportMetric(float64(d.Direct)/float64(b.N), "direct/op")
	b.ReportMetric(float64(d.Syscalls())/float64(b.N), "syscalls/op")
	if a := files[0].arena; a != nil {
		a.mu.Lock()
		b.ReportMetric(float64(a.peak>>10), "arena-KiB")
		a.mu.Unlock()
	}
	for i, f := range files {
		if i == 0 || f != files[0] {
			f.Close()
		}
	}
}

func openArenaBench(b *testing.B, l *uio.Loop, path string) *File {
	f, err := Open(l, path, os.O_RDWR, 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	if !f.Direct() {
		b.Skip("no direct I/O here")
	}
	return f
}

// benchCleanups run when the test binary ends (TestMain).
var benchCleanups []func()

var (
	arenaBenchMu    sync.Mutex
	arenaBenchDir   string
	arenaBenchFiles = map[string]bool{}
)

// arenaBenchTmp returns a fresh directory in DIO_BENCH_DIR, or on ext4.
func arenaBenchTmp(b *testing.B) string {
	if base := os.Getenv("DIO_BENCH_DIR"); base != "" {
		d, err := os.MkdirTemp(base, "dio-arena-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	return ext4Dir(b)
}

// arenaBenchFile returns the path of a file of size bytes, all written (no
// holes or unwritten extents to convert during the benchmark), made once
// per process in DIO_BENCH_DIR or /var/tmp.
func arenaBenchFile(b *testing.B, name string, size int64) string {
	arenaBenchMu.Lock()
	defer arenaBenchMu.Unlock()
	if arenaBenchDir == "" {
		base := os.Getenv("DIO_BENCH_DIR")
		if base == "" {
			base = "/var/tmp" // as readFile
		}
		d, err := os.MkdirTemp(base, "dio-arena-bench-")
		if err != nil {
			b.Fatal(err)
		}
		arenaBenchDir = d
		benchCleanups = append(benchCleanups, func() { os.RemoveAll(d) })
	}
	path := filepath.Join(arenaBenchDir, name)
	if !arenaBenchFiles[path] {
		writeFull(b, path, size)
		arenaBenchFiles[path] = true
	}
	return path
}

// writeFull makes path a file of size bytes, all written.
func writeFull(b *testing.B, path string, size int64) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBufGetPut is the user-space cost of a dio buffer: the arena's
// buddy blocks next to the pool's free lists, for one get and put.
func BenchmarkBufGetPut(b *testing.B) {
	mem, err := unix.Mmap(-1, 0, defaultArenaSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Munmap(mem)
	a := makeArena(mem)
	for _, n := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dk/arena", n>>10), func(b *testing.B) {
			held, _ := a.get(n) // a split arena, as in use
			for range b.N {
				p, ok := a.get(n)
				if !ok {
					b.Fatal("arena full")
				}
				a.put(p)
			}
			a.put(held)
		})
		b.Run(fmt.Sprintf("%dk/pool", n>>10), func(b *testing.B) {
			for range b.N {
				p, err := pool.get(n)
				if err != nil {
					b.Fatal(err)
				}
				pool.put(p)
			}
		})
	}
}
