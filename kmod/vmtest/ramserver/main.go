// Command ramserver is the VM test fixture for abuse.ko: a RAM-disk server
// on blockdev/abuse (one goroutine per hardware queue, each blocking in
// poll(2) on its queue fd), plus the small helpers the guest test script
// needs. It is not the real daemon.
//
//	ramserver serve [-size N] [-lbs 512|4096] [-queues N] [-depth N] [-id N] [-reconnect-ms MS] [-attach N] [-token-file F] [-ready FILE]
//	ramserver remove -id N [-token-file F] [-force]
//	ramserver race [-n N] [-id N]
//	ramserver stoptest -pid PID -dev /dev/abuseN -timeout D [-fatal]
//	ramserver wcrule
//	ramserver owner
//	ramserver faults
//	ramserver usercopy
//	ramserver rwcheck -dev /dev/abuseN
//	ramserver killtest -pid PID -dev /dev/abuseN
//	ramserver nonroot
//	ramserver fuzz [-n N]
//	ramserver verify -dev /dev/abuseN [-qd 32] [-bytes N] [-engine aio|uring]
//
// Every check prints "KMODLAB: PASS|FAIL <name> ..." and exits non-zero on
// failure.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/userland-io/uio/blockdev/abuse"
	"golang.org/x/sys/unix"
)

func pass(name, f string, a ...any) { fmt.Printf("KMODLAB: PASS %s %s\n", name, fmt.Sprintf(f, a...)) }
func fail(name, f string, a ...any) {
	fmt.Printf("KMODLAB: FAIL %s %s\n", name, fmt.Sprintf(f, a...))
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ramserver serve|remove|rwcheck|killtest|nonroot|fuzz|verify [flags]")
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "serve":
		serve(args)
	case "remove":
		remove(args)
	case "rwcheck":
		rwcheck(args)
	case "killtest":
		killtest(args)
	case "nonroot":
		nonroot()
	case "fuzz":
		fuzz(args)
	case "verify":
		verify(args)
	case "race":
		race(args)
	case "stoptest":
		stoptest(args)
	case "wcrule":
		wcrule()
	case "owner":
		owner()
	case "faults":
		faults()
	case "usercopy":
		usercopy()
	default:
		fmt.Fprintln(os.Stderr, "unknown command", cmd)
		os.Exit(2)
	}
}

// ------------------------------------------------------------------ serve

type ramdisk struct {
	data []byte
}

func (d *ramdisk) serveQueue(q *abuse.Queue, wg *sync.WaitGroup) {
	defer wg.Done()
	var done []abuse.Completion
	faults := 0
	for {
		reqs, err := q.CommitFetch(done)
		done = done[:0]
		if errors.Is(err, unix.EFAULT) {
			// A WRITE could not be copied into its tag buffer: the
			// kernel failed it; the requests before it are ours.
			if faults++; faults == 1 || faults == 1000 {
				fmt.Fprintf(os.Stderr, "ramserver: queue %d: %v (%d times)\n", q.ID(), err, faults)
			}
		} else if err != nil {
			fmt.Fprintf(os.Stderr, "ramserver: queue %d: %v\n", q.ID(), err)
			return
		}
		if len(reqs) == 0 {
			if _, err := q.Wait(-1); err != nil {
				fmt.Fprintf(os.Stderr, "ramserver: queue %d: wait: %v\n", q.ID(), err)
				return
			}
			continue
		}
		for i := range reqs {
			done = append(done, d.handle(q, &reqs[i]))
		}
	}
}

func (d *ramdisk) handle(q *abuse.Queue, r *abuse.Request) abuse.Completion {
	if r.Op() == abuse.OpFlush {
		return r.Complete(0) // RAM has no volatile cache
	}
	end := r.Offset + uint64(r.Len)
	if end > uint64(len(d.data)) || end < r.Offset {
		return r.Complete(-int32(syscall.EIO))
	}
	switch r.Op() {
	case abuse.OpRead:
		if r.Len == 0 {
			return r.Complete(0)
		}
		// The kernel copies straight from the RAM disk: one copy.
		return r.CompleteFrom(uintptr(unsafe.Pointer(&d.data[r.Offset])))
	case abuse.OpWrite:
		copy(d.data[r.Offset:end], q.Buffer(r.Tag)[:r.Len])
	case abuse.OpDiscard, abuse.OpWriteZeroes:
		clear(d.data[r.Offset:end])
	default:
		return r.Complete(-int32(syscall.EOPNOTSUPP))
	}
	return r.Complete(0)
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	size := fs.Uint64("size", 64<<20, "device size in bytes")
	lbs := fs.Uint("lbs", 4096, "logical block size")
	queues := fs.Uint("queues", 2, "hardware queues")
	depth := fs.Uint("depth", 32, "queue depth")
	id := fs.Int("id", -1, "device index (-1 = any)")
	reconnect := fs.Uint("reconnect-ms", 0, "hold I/O this long after server loss")
	ready := fs.String("ready", "", "write the device path here when serving")
	attach := fs.Int("attach", -1, "serve existing device N (after its server died) instead of creating one")
	tokenFile := fs.String("token-file", "", "write the device's token here (with -attach: read it)")
	fs.Parse(args)

	ctl, err := abuse.Open()
	if err != nil {
		fail("serve", "%v", err)
	}
	cfg := abuse.DevConfig{
		Size:                  *size,
		LogicalBlockSize:      uint32(*lbs),
		NrHWQueues:            uint32(*queues),
		QueueDepth:            uint32(*depth),
		MaxDiscardSectors:     8 << 20 >> 9,
		MaxWriteZeroesSectors: 8 << 20 >> 9,
		Flags:                 abuse.DevWriteCache | abuse.DevFUA,
		ReconnectMs:           uint32(*reconnect),
		DevID:                 int32(*id),
	}
	if *attach >= 0 {
		if cfg, err = ctl.Attach(*attach, readToken(*tokenFile)); err != nil {
			fail("serve", "%v", err)
		}
	} else if err := ctl.Create(&cfg); err != nil {
		fail("serve", "%v", err)
	} else if *tokenFile != "" {
		os.WriteFile(*tokenFile, []byte(strconv.FormatUint(cfg.Token, 16)+"\n"), 0o600)
	}
	d := &ramdisk{data: make([]byte, cfg.Size)}
	var wg sync.WaitGroup
	qs := make([]*abuse.Queue, cfg.NrHWQueues)
	for i := range qs {
		if qs[i], err = ctl.OpenQueue(i); err != nil {
			fail("serve", "%v", err)
		}
	}
	for _, q := range qs {
		wg.Add(1)
		go d.serveQueue(q, &wg)
	}
	path := fmt.Sprintf("/dev/abuse%d", cfg.DevID)
	fmt.Printf("ramserver: serving %s: %d bytes, lbs %d, %d queues x %d, max io %d\n",
		path, cfg.Size, cfg.LogicalBlockSize, cfg.NrHWQueues, cfg.QueueDepth, cfg.MaxIOBytes)
	if *ready != "" {
		os.WriteFile(*ready+".tmp", []byte(path+"\n"), 0o644)
		os.Rename(*ready+".tmp", *ready)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	// Orderly shutdown: remove the device while still serving, then close.
	var rerr error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if rerr = ctl.Remove(int(cfg.DevID)); rerr == nil || !errors.Is(rerr, unix.EBUSY) {
			break
		}
	}
	for _, q := range qs {
		q.Close()
	}
	ctl.Close()
	wg.Wait()
	if rerr != nil {
		fmt.Fprintf(os.Stderr, "ramserver: %v\n", rerr)
		os.Exit(1)
	}
	fmt.Printf("ramserver: %s removed\n", path)
}

func remove(args []string) {
	fs := flag.NewFlagSet("remove", flag.ExitOnError)
	id := fs.Int("id", 0, "device index")
	tokenFile := fs.String("token-file", "", "the device's token (written by its creator)")
	force := fs.Bool("force", false, "remove even while open or mounted")
	fs.Parse(args)
	ctl, err := abuse.Open()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer ctl.Close()
	var flags uint32
	if *force {
		flags = abuse.RemoveForce
	}
	if err := ctl.RemoveToken(*id, readToken(*tokenFile), flags); err != nil {
		fmt.Fprintln(os.Stderr, err)
		var errno unix.Errno
		if errors.As(err, &errno) {
			os.Exit(int(errno)) // EPERM 1, EBUSY 16
		}
		os.Exit(100)
	}
}

// readToken reads a token file (hex); "" is no token.
func readToken(path string) uint64 {
	if path == "" {
		return 0
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fail("token", "%v", err)
	}
	t, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	if err != nil {
		fail("token", "%s: %v", path, err)
	}
	return t
}

// ---------------------------------------------------------------- checks

func alignedBuf(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	return b
}

func devSize(fd int) int64 {
	var sz uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&sz))); e != 0 {
		return -1
	}
	return int64(sz)
}

// rwcheck writes random data over the whole device with O_DIRECT, in
// mixed request sizes, reads it back and compares.
func rwcheck(args []string) {
	fs := flag.NewFlagSet("rwcheck", flag.ExitOnError)
	dev := fs.String("dev", "/dev/abuse0", "device")
	fs.Parse(args)
	const name = "rwcheck"
	fd, err := unix.Open(*dev, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(name, "open %s: %v", *dev, err)
	}
	defer unix.Close(fd)
	size := devSize(fd)
	if size <= 0 {
		fail(name, "size of %s: %d", *dev, size)
	}
	want := make([]byte, size)
	rand.New(rand.NewSource(time.Now().UnixNano())).Read(want)
	buf := alignedBuf(4 << 20)
	sizes := []int64{4096, 8192, 65536, 1 << 20, 4 << 20, 12288}
	t0 := time.Now()
	for off, i := int64(0), 0; off < size; i++ {
		n := min(sizes[i%len(sizes)], size-off)
		copy(buf, want[off:off+n])
		if w, err := unix.Pwrite(fd, buf[:n], off); err != nil || int64(w) != n {
			fail(name, "pwrite %d@%d: %d %v", n, off, w, err)
		}
		off += n
	}
	if err := unix.Fsync(fd); err != nil {
		fail(name, "fsync: %v", err)
	}
	for off, i := int64(0), 1; off < size; i++ {
		n := min(sizes[i%len(sizes)], size-off)
		if r, err := unix.Pread(fd, buf[:n], off); err != nil || int64(r) != n {
			fail(name, "pread %d@%d: %d %v", n, off, r, err)
		}
		if !bytes.Equal(buf[:n], want[off:off+n]) {
			fail(name, "data mismatch at %d+%d", off, n)
		}
		off += n
	}
	pass(name, "%s: %d MiB written+verified with O_DIRECT in %.2fs", *dev, size>>20, time.Since(t0).Seconds())
}

// killtest runs O_DIRECT I/O on dev, SIGKILLs the server pid in the middle
// of it, and checks that every I/O fails with EIO within 1 s.
func killtest(args []string) {
	fs := flag.NewFlagSet("killtest", flag.ExitOnError)
	dev := fs.String("dev", "/dev/abuse0", "device")
	pid := fs.Int("pid", 0, "server pid")
	fs.Parse(args)
	const name = "kill-server-during-io"
	fd, err := unix.Open(*dev, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(name, "open %s: %v", *dev, err)
	}
	defer unix.Close(fd)
	const workers = 6
	res := ioWorkers(fd, devSize(fd), workers, 6, nil)
	time.Sleep(700 * time.Millisecond)
	t0 := time.Now()
	if err := unix.Kill(*pid, unix.SIGKILL); err != nil {
		fail(name, "kill %d: %v", *pid, err)
	}
	var worst time.Duration
	total := 0
	timeout := time.After(5 * time.Second)
	for i := 0; i < workers; i++ {
		select {
		case r := <-res:
			total += r.ok
			if !errors.Is(r.err, unix.EIO) {
				fail(name, "worker error %v, want EIO", r.err)
			}
			worst = max(worst, r.at.Sub(t0))
		case <-timeout:
			fail(name, "I/O still hanging 5 s after SIGKILL (%d of %d workers returned)", i, workers)
		}
	}
	if total == 0 {
		fail(name, "no I/O succeeded before the kill")
	}
	if worst > time.Second {
		fail(name, "EIO took %v after SIGKILL (limit 1s)", worst)
	}
	// New I/O fails at once.
	buf := alignedBuf(4096)
	t1 := time.Now()
	if _, err := unix.Pread(fd, buf, 0); !errors.Is(err, unix.EIO) {
		fail(name, "new read after kill: %v, want EIO", err)
	}
	pass(name, "%d I/Os ok before SIGKILL; all %d workers got EIO within %v; new read EIO in %v",
		total, workers, worst.Round(time.Millisecond), time.Since(t1).Round(time.Microsecond))
}

// ioResult is how one I/O worker ended.
type ioResult struct {
	ok  int // I/Os that succeeded (while counting)
	err error
	at  time.Time
}

// ioWorkers starts n O_DIRECT workers on fd (even ones write, odd ones
// read) of random sizes from 4 KiB to 4 KiB << maxShift at random aligned
// offsets, until an I/O fails; each then sends its ioResult. counting, if
// not nil, says whether successful I/Os still count.
func ioWorkers(fd int, size int64, n, maxShift int, counting func() bool) <-chan ioResult {
	res := make(chan ioResult, n)
	for w := 0; w < n; w++ {
		go func(w int) {
			buf := alignedBuf(4096 << maxShift)
			rng := rand.New(rand.NewSource(int64(w)))
			r := ioResult{}
			var err error
			for {
				n := int64(4096 << rng.Intn(maxShift+1))
				off := rng.Int63n(size/n) * n
				if w%2 == 0 {
					_, err = unix.Pwrite(fd, buf[:n], off)
				} else {
					_, err = unix.Pread(fd, buf[:n], off)
				}
				if err != nil {
					r.err, r.at = err, time.Now()
					res <- r
					return
				}
				if counting == nil || counting() {
					r.ok++
				}
			}
		}(w)
	}
	return res
}

// nonroot drops to uid/gid 65534 and checks /dev/abctl is refused.
func nonroot() {
	const name = "abctl-nonroot-refused"
	if err := syscall.Setgroups(nil); err != nil {
		fail(name, "setgroups: %v", err)
	}
	if err := syscall.Setgid(65534); err != nil {
		fail(name, "setgid: %v", err)
	}
	if err := syscall.Setuid(65534); err != nil {
		fail(name, "setuid: %v", err)
	}
	_, err := unix.Open(abuse.CtlPath, unix.O_RDWR, 0)
	if err == nil {
		fail(name, "uid %d opened %s", os.Getuid(), abuse.CtlPath)
	}
	if !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
		fail(name, "open as uid 65534: %v, want EACCES/EPERM", err)
	}
	_, err2 := unix.Open(abuse.CtlPath, unix.O_RDONLY, 0)
	if err2 == nil {
		fail(name, "uid 65534 opened %s read-only", abuse.CtlPath)
	}
	pass(name, "uid 65534: O_RDWR %v, O_RDONLY %v", err, err2)
}
