// Command uiofio runs fio's random-read job through the uio engine, so that
// bench/fio/run.sh can put our IOPS next to fio's own libaio and io_uring
// engines. It keeps exactly -iodepth reads in flight on one Loop: every
// read's Done submits the next one at a new random, -bs aligned offset
// (math/rand/v2 PCG, owned by the loop goroutine), so the engine batches
// whatever completed in a round into that round's single io_submit or
// io_uring_enter. It prints one JSON line.
//
//	uiofio -backend aio|uring -file PATH [-size N] [-bs 4096] [-iodepth 32]
//	       [-runtime 10s] [-ramp 0s] [-direct=true] [-cpuprofile FILE] [-memprofile FILE]
//
// IOPS are counted between two points taken on the loop goroutine itself
// (after -ramp, and -runtime later), and the engine's Stats are
// differenced over the same interval, so syscalls/op covers exactly the
// measured reads. Buffers come from an anonymous mmap: page aligned, as
// O_DIRECT needs, and outside the Go heap.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/userland-io/uio"
)

// result is the JSON line uiofio prints.
type result struct {
	Backend     string  `json:"backend"`
	File        string  `json:"file"`
	Size        int64   `json:"size"`
	BS          int     `json:"bs"`
	IODepth     int     `json:"iodepth"`
	Direct      bool    `json:"direct"`
	Seconds     float64 `json:"seconds"`
	Ops         uint64  `json:"ops"`
	IOPS        float64 `json:"iops"`
	MiBps       float64 `json:"mib_s"`
	Errors      uint64  `json:"errors"`
	SyscallsOp  float64 `json:"syscalls_per_op"`
	SubmitsOp   float64 `json:"io_submit_per_op"`
	GetEventsOp float64 `json:"io_getevents_per_op"`
	EntersOp    float64 `json:"io_uring_enter_per_op"`
	OtherOp     float64 `json:"other_per_op"`
	Rounds      uint64  `json:"rounds"`
	OpsPerRound float64 `json:"ops_per_round"`
	MeanBatch   float64 `json:"mean_batch"`
	ReapedUser  uint64  `json:"reaped_user"`
	ReapedSys   uint64  `json:"reaped_syscall"`
	Batches     []int64 `json:"batch_hist"` // uio.Stats.Batches over the interval
	UserCPU     float64 `json:"usr_cpu"`    // percent of one CPU over the interval, like fio's usr_cpu
	SysCPU      float64 `json:"sys_cpu"`
	CtxSwitches int64   `json:"ctx"` // voluntary + involuntary, process wide, over the interval
	AllocsOp    float64 `json:"allocs_per_op"`
	GCs         uint32  `json:"gcs"`
}

var exitCode int

func main() {
	defer func() { os.Exit(exitCode) }()
	backend := flag.String("backend", "aio", "uio backend: aio or uring")
	file := flag.String("file", "", "file or block device to read (required); it must already hold -size bytes")
	sizeFlag := flag.String("size", "0", "bytes of the file to read from (suffixes k, m, g; 0 = the file's size)")
	bs := flag.Int("bs", 4096, "block size in bytes; offsets are multiples of it")
	iodepth := flag.Int("iodepth", 32, "reads kept in flight")
	runtimeFlag := flag.Duration("runtime", 10*time.Second, "measured time")
	ramp := flag.Duration("ramp", 0, "time to run before measuring (like fio's ramp_time)")
	direct := flag.Bool("direct", true, "open with O_DIRECT")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the measured interval to this file")
	memprofile := flag.String("memprofile", "", "write an allocation profile (every allocation sampled) to this file at exit")
	seed := flag.Uint64("seed", 0, "PRNG seed (0 = from the clock)")
	flag.Parse()
	if *memprofile != "" {
		runtime.MemProfileRate = 1
		defer func() {
			f, err := os.Create(*memprofile)
			if err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}

	if err := run(*backend, *file, *sizeFlag, *bs, *iodepth, *runtimeFlag, *ramp, *direct, *cpuprofile, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "uiofio:", err)
		exitCode = 1
	}
}

func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	mult := int64(1)
	s = strings.TrimSuffix(strings.TrimSuffix(s, "b"), "i")
	switch {
	case strings.HasSuffix(s, "k"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "m"):
		mult, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "g"):
		mult, s = 1<<30, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// mark is a point of the measurement, taken on the loop goroutine.
type mark struct {
	t     time.Time
	ops   uint64
	errs  uint64
	stats uio.Stats
	ru    unix.Rusage
	ms    runtime.MemStats
}

func run(backend, path, sizeStr string, bs, iodepth int, runFor, ramp time.Duration, direct bool, cpuprofile string, seed uint64) error {
	if path == "" {
		return errors.New("-file is required")
	}
	if bs <= 0 || iodepth <= 0 || runFor <= 0 || ramp < 0 {
		return errors.New("-bs, -iodepth and -runtime must be positive, -ramp not negative")
	}
	size, err := parseSize(sizeStr)
	if err != nil {
		return fmt.Errorf("-size: %w", err)
	}
	flags := unix.O_RDONLY | unix.O_CLOEXEC
	if direct {
		flags |= unix.O_DIRECT
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	avail := st.Size
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		var n uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n))); e != 0 {
			return fmt.Errorf("%s: BLKGETSIZE64: %w", path, e)
		}
		avail = int64(n)
	}
	if size > avail {
		return fmt.Errorf("-size %d is larger than %s (%d bytes)", size, path, avail)
	}
	if size == 0 {
		size = avail
	}
	blocks := uint64(size) / uint64(bs)
	if blocks == 0 {
		return fmt.Errorf("%s: %d bytes hold no %d-byte block", path, size, bs)
	}

	// One anonymous mapping for all buffers: page aligned, not Go heap.
	mem, err := unix.Mmap(-1, 0, bs*iodepth, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("mmap %d bytes: %w", bs*iodepth, err)
	}
	defer unix.Munmap(mem)

	l, err := uio.NewLoop(uio.Config{Backend: backend, Depth: iodepth})
	if err != nil {
		return fmt.Errorf("uio.NewLoop(%s): %w", backend, err)
	}
	defer l.Close()

	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	// Loop goroutine state: only Done callbacks and Posted functions touch it.
	var (
		rng      = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		ops      uint64
		errs     uint64
		firstErr int32
		stopping bool
		inflight int
	)
	drained := make(chan struct{})
	// One reader per in-flight slot, with its buffer and its Done made once:
	// the hot path allocates nothing.
	type reader struct {
		buf  []byte
		done func(uio.Handle, uio.Result)
	}
	var submit func(h uio.Handle, rd *reader)
	submit = func(h uio.Handle, rd *reader) {
		off := int64(rng.Uint64N(blocks)) * int64(bs)
		if _, err := h.Start(uio.Op{Kind: uio.OpRead, Fd: fd, Buf: rd.buf, Offset: off, Done: rd.done}); err != nil {
			errs++
			if firstErr == 0 {
				firstErr = -int32(unix.EIO)
			}
			return
		}
		inflight++
	}
	readers := make([]*reader, iodepth)
	for i := range readers {
		rd := &reader{buf: mem[i*bs : (i+1)*bs]}
		rd.done = func(h uio.Handle, r uio.Result) {
			inflight--
			if r.Res == int32(bs) {
				ops++
			} else {
				errs++
				if firstErr == 0 {
					firstErr = r.Res
					if firstErr == 0 {
						firstErr = -1 // a short read at EOF
					}
				}
			}
			if stopping {
				if inflight == 0 {
					close(drained)
				}
				return
			}
			submit(h, rd)
		}
		readers[i] = rd
	}

	// snapshot takes a mark on the loop goroutine, between two rounds'
	// completions, and hands it over.
	snapshot := func(extra func()) (mark, error) {
		ch := make(chan mark, 1)
		err := l.Post(func(h uio.Handle) {
			var m mark
			m.t = time.Now()
			m.ops, m.errs = ops, errs
			m.stats = l.Stats()
			unix.Getrusage(unix.RUSAGE_SELF, &m.ru)
			runtime.ReadMemStats(&m.ms) // stops the world, twice per run
			if extra != nil {
				extra()
			}
			ch <- m
		})
		if err != nil {
			return mark{}, err
		}
		return <-ch, nil
	}

	if err := l.Post(func(h uio.Handle) {
		for _, rd := range readers {
			submit(h, rd)
		}
	}); err != nil {
		return err
	}
	if ramp > 0 {
		time.Sleep(ramp)
	}

	var prof *os.File
	if cpuprofile != "" {
		prof, err = os.Create(cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(prof); err != nil {
			return err
		}
	}
	m0, err := snapshot(nil)
	if err != nil {
		return err
	}
	time.Sleep(runFor - time.Since(m0.t))
	m1, err := snapshot(func() { stopping = true })
	if err != nil {
		return err
	}
	if prof != nil {
		pprof.StopCPUProfile()
		prof.Close()
	}
	select {
	case <-drained:
	case <-time.After(30 * time.Second):
		return errors.New("in-flight reads did not drain within 30 s")
	}

	secs := m1.t.Sub(m0.t).Seconds()
	n := m1.ops - m0.ops
	d := m1.stats.Sub(m0.stats)
	per := func(v uint64) float64 {
		if n == 0 {
			return 0
		}
		return float64(v) / float64(n)
	}
	tv := func(t unix.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	res := result{
		Backend:     l.Backend(),
		File:        path,
		Size:        size,
		BS:          bs,
		IODepth:     iodepth,
		Direct:      direct,
		Seconds:     secs,
		Ops:         n,
		IOPS:        float64(n) / secs,
		MiBps:       float64(n) * float64(bs) / secs / (1 << 20),
		Errors:      m1.errs - m0.errs,
		SyscallsOp:  per(d.Syscalls()),
		SubmitsOp:   per(d.Submits),
		GetEventsOp: per(d.GetEvents),
		EntersOp:    per(d.Enters),
		OtherOp:     per(d.Other),
		Rounds:      d.Rounds,
		ReapedUser:  d.ReapedUser,
		ReapedSys:   d.ReapedSyscall,
		UserCPU:     100 * (tv(m1.ru.Utime) - tv(m0.ru.Utime)) / secs,
		SysCPU:      100 * (tv(m1.ru.Stime) - tv(m0.ru.Stime)) / secs,
		CtxSwitches: (m1.ru.Nvcsw + m1.ru.Nivcsw) - (m0.ru.Nvcsw + m0.ru.Nivcsw),
		AllocsOp:    per(m1.ms.Mallocs - m0.ms.Mallocs),
		GCs:         m1.ms.NumGC - m0.ms.NumGC,
	}
	if d.Rounds > 0 {
		res.OpsPerRound = float64(n) / float64(d.Rounds)
	}
	if d.Flushes > 0 {
		res.MeanBatch = float64(d.FlushedOps) / float64(d.Flushes)
	}
	for _, b := range d.Batches {
		res.Batches = append(res.Batches, int64(b))
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	runtime.KeepAlive(mem)
	if firstErr != 0 {
		return fmt.Errorf("%d reads failed or came up short; first result %d (%v)", res.Errors, firstErr, uio.Result{Res: firstErr}.Err())
	}
	return nil
}
