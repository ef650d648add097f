package main

// Checks for the failure modes of a racing, stuck or buggy server: ADD,
// ATTACH and REMOVE racing each other, a stopped server (I/O timeout), the
// write-cache reconnect rule and device ownership.

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/userland-io/uio/blockdev/abuse"
	"golang.org/x/sys/unix"
)

// outcomes counts the results of each operation by errno name.
type outcomes struct {
	mu sync.Mutex
	m  map[string]int
}

func (o *outcomes) add(op string, err error) {
	k := op + ":ok"
	if err != nil {
		var e unix.Errno
		if !errors.As(err, &e) {
			k = op + ":" + err.Error()
		} else {
			k = op + ":" + unix.ErrnoName(e)
		}
	}
	o.mu.Lock()
	if o.m == nil {
		o.m = map[string]int{}
	}
	o.m[k]++
	o.mu.Unlock()
}

func (o *outcomes) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	keys := make([]string, 0, len(o.m))
	for k := range o.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, o.m[k])
	}
	return b.String()
}

// race creates device -id n times while other sessions keep removing and
// attaching to it: the creating session itself tries to remove it from a
// second thread while ADD is still running (it must stay invisible until
// live), another session removes it with the last token it saw, a third
// attaches with that token and lets go, in whatever order they meet. Every
// result must be success or one of the errors the protocol names for
// these races (ENOENT: not visible yet or gone, EEXIST, EBUSY, EPERM: a
// stale token); the kernel log is checked by the caller.
func race(args []string) {
	fs := flag.NewFlagSet("race", flag.ExitOnError)
	n := fs.Int("n", 2000, "devices to create")
	id := fs.Int("id", 40, "device index to fight over")
	fs.Parse(args)
	const name = "add-attach-remove-race"
	var (
		token    atomic.Uint64
		stop     atomic.Bool
		res      outcomes
		selfWins atomic.Int64 // the creator's own REMOVE returned before its ADD did
		wg       sync.WaitGroup
		bad      atomic.Value
	)
	allowed := func(op string, err error) {
		res.add(op, err)
		if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EEXIST) ||
			errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EPERM) {
			return
		}
		bad.CompareAndSwap(nil, fmt.Sprintf("%s: %v", op, err))
		stop.Store(true)
	}
	t0 := time.Now()
	wg.Add(2)
	go func() { // another session: REMOVE with the last token seen
		defer wg.Done()
		c, err := abuse.Open()
		if err != nil {
			fail(name, "%v", err)
		}
		defer c.Close()
		for !stop.Load() {
			allowed("remove", c.RemoveToken(*id, token.Load(), 0))
		}
	}()
	go func() { // another session: ATTACH with the last token, then let go
		defer wg.Done()
		for !stop.Load() {
			c, err := abuse.Open()
			if err != nil {
				fail(name, "%v", err)
			}
			_, err = c.Attach(*id, token.Load())
			allowed("attach", err)
			c.Close()
		}
	}()
	created := 0
	for created < *n && !stop.Load() {
		c, err := abuse.Open()
		if err != nil {
			fail(name, "%v", err)
		}
		cfg := abuse.DevConfig{Size: 1 << 20, LogicalBlockSize: 4096, NrHWQueues: 1, QueueDepth: 4,
			DevID: int32(*id), ReconnectMs: uint32(created%2) * 60000}
		var addDone atomic.Bool
		selfDone := make(chan struct{})
		go func() { // the creating session's own REMOVE, during its ADD
			defer close(selfDone)
			for !addDone.Load() {
				err := c.RemoveToken(*id, 0, 0)
				allowed("self-remove", err)
				if err == nil {
					if !addDone.Load() {
						selfWins.Add(1)
					}
					return
				}
			}
		}()
		err = c.Create(&cfg)
		addDone.Store(true)
		<-selfDone
		allowed("add", err)
		if err == nil {
			created++
			token.Store(cfg.Token)
		}
		c.Close()
	}
	stop.Store(true)
	wg.Wait()
	if b := bad.Load(); b != nil {
		fail(name, "unexpected result %v; so far:%s", b, res.String())
	}
	// Leave nothing behind (the device may be held for a reconnect).
	c, _ := abuse.Open()
	if err := c.RemoveToken(*id, token.Load(), 0); err != nil && !errors.Is(err, unix.ENOENT) {
		fail(name, "final remove: %v", err)
	}
	c.Close()
	if _, err := os.Stat(fmt.Sprintf("/sys/block/abuse%d", *id)); err == nil {
		fail(name, "abuse%d still present", *id)
	}
	res.mu.Lock()
	selfOK := res.m["self-remove:ok"]
	res.mu.Unlock()
	pass(name, "%d devices created in %.1fs; the creating session's concurrent REMOVE won %d times (%d before its ADD had returned, i.e. once live); results:%s",
		created, time.Since(t0).Seconds(), selfOK, selfWins.Load(), res.String())
}

// dstate lists the tasks (threads of every process, this one included) in
// uninterruptible sleep (state D).
func dstate() []string {
	var out []string
	tasks, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/stat")
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i > 0 && i+2 < len(s) && s[i+2] == 'D' {
			out = append(out, s[:i+1])
		}
	}
	return out
}

// stoptest runs O_DIRECT I/O on dev, SIGSTOPs the server in the middle of
// it and checks that every I/O fails with EIO after the device's I/O
// timeout (not before half of it, not after it plus a margin), that no task
// is left in D state, and then what the device does after SIGCONT: with
// -fatal the server was treated as dead (I/O fails at once), otherwise the
// server carries on serving.
func stoptest(args []string) {
	fs := flag.NewFlagSet("stoptest", flag.ExitOnError)
	dev := fs.String("dev", "/dev/abuse0", "device")
	pid := fs.Int("pid", 0, "server pid")
	timeout := fs.Duration("timeout", 3*time.Second, "the device's I/O timeout")
	margin := fs.Duration("margin", 3*time.Second, "allowed lateness of the EIO")
	fatal := fs.Bool("fatal", false, "the device was created with -io-timeout-fatal")
	fs.Parse(args)
	name := "sigstop-server-io-timeout"
	if *fatal {
		name += "-fatal"
	}
	fd, err := unix.Open(*dev, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(name, "open %s: %v", *dev, err)
	}
	defer unix.Close(fd)
	const workers = 4
	var stopped atomic.Bool
	res := ioWorkers(fd, devSize(fd), workers, 4, func() bool { return !stopped.Load() })
	time.Sleep(700 * time.Millisecond)
	t0 := time.Now()
	if err := unix.Kill(*pid, unix.SIGSTOP); err != nil {
		fail(name, "stop %d: %v", *pid, err)
	}
	stopped.Store(true)
	defer unix.Kill(*pid, unix.SIGCONT)
	var first, worst time.Duration
	total := 0
	limit := time.After(*timeout + *margin + 5*time.Second)
	for i := 0; i < workers; i++ {
		select {
		case r := <-res:
			total += r.ok
			if !errors.Is(r.err, unix.EIO) {
				fail(name, "worker error %v, want EIO", r.err)
			}
			d := r.at.Sub(t0)
			worst = max(worst, d)
			if first == 0 || d < first {
				first = d
			}
		case <-limit:
			fail(name, "I/O still hanging %v after SIGSTOP (%d of %d workers returned); D state: %v",
				*timeout+*margin+5*time.Second, i, workers, dstate())
		}
	}
	if total == 0 {
		fail(name, "no I/O succeeded before the stop")
	}
	if worst > *timeout+*margin {
		fail(name, "EIO took %v after SIGSTOP (timeout %v + margin %v)", worst, *timeout, *margin)
	}
	if first < *timeout/2 {
		fail(name, "EIO after only %v: not the %v timeout", first, *timeout)
	}
	var d []string
	for i := 0; i < 3; i++ { // a task in D in every sample is stuck
		now := dstate()
		if i == 0 {
			d = now
		} else {
			d = intersect(d, now)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if len(d) > 0 {
		fail(name, "tasks in D state %v after the timeout: %v", time.Since(t0).Round(time.Millisecond), d)
	}
	// A new request while the server is still stopped.
	buf := alignedBuf(4096)
	t1 := time.Now()
	_, err = unix.Pread(fd, buf, 0)
	newLat := time.Since(t1)
	if !errors.Is(err, unix.EIO) {
		fail(name, "read with the server stopped: %v, want EIO", err)
	}
	if *fatal && newLat > time.Second {
		fail(name, "server treated as dead, yet a new read took %v to fail", newLat)
	}
	if !*fatal && newLat < *timeout/2 {
		fail(name, "new read failed after %v, before the timeout %v", newLat, *timeout)
	}
	unix.Kill(*pid, unix.SIGCONT)
	after := "server gone after SIGCONT"
	if !*fatal {
		// The server's late completions are accepted and ignored; it serves on.
		time.Sleep(200 * time.Millisecond)
		if _, err := unix.Pread(fd, buf, 0); err != nil {
			fail(name, "read after SIGCONT: %v, want success", err)
		}
		after = "server serves again after SIGCONT"
	}
	pass(name, "%d I/Os ok before SIGSTOP; %d workers got EIO %v..%v after it (timeout %v); no task in D; new read EIO in %v; %s",
		total, workers, first.Round(time.Millisecond), worst.Round(time.Millisecond), *timeout,
		newLat.Round(time.Millisecond), after)
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		for _, y := range b {
			if x == y {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

// inproc is a server in this process: one queue served by a goroutine.
type inproc struct {
	ctl  *abuse.Ctl
	cfg  abuse.DevConfig
	q    *abuse.Queue
	wg   sync.WaitGroup
	disk *ramdisk
}

func startInproc(name string, cfg *abuse.DevConfig, attach bool, token uint64, disk *ramdisk) *inproc {
	s := &inproc{disk: disk}
	var err error
	if s.ctl, err = abuse.Open(); err != nil {
		fail(name, "%v", err)
	}
	if attach {
		if s.cfg, err = s.ctl.Attach(int(cfg.DevID), token); err != nil {
			fail(name, "%v", err)
		}
	} else {
		if err = s.ctl.Create(cfg); err != nil {
			fail(name, "%v", err)
		}
		s.cfg = *cfg
	}
	if s.disk == nil {
		s.disk = &ramdisk{data: make([]byte, s.cfg.Size)}
	}
	if s.q, err = s.ctl.OpenQueue(0); err != nil {
		fail(name, "%v", err)
	}
	s.wg.Add(1)
	go s.disk.serveQueue(s.q, &s.wg)
	return s
}

// die ends the server as a crash would: the session first (which wakes the
// queue goroutine out of poll), then the queue fd.
func (s *inproc) die() {
	s.ctl.Close()
	s.wg.Wait()
	s.q.Close()
}

func devPath(id int32) string { return fmt.Sprintf("/dev/abuse%d", id) }

// ioHeld starts f and reports whether it is still running after d.
func ioHeld(f func() error, d time.Duration) (chan error, bool) {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	select {
	case err := <-ch:
		ch <- err
		return ch, false
	case <-time.After(d):
		return ch, true
	}
}

// wcrule checks the write-cache reconnect rule: a write-cache server that
// dies after acknowledging writes no FLUSH covered takes the device with
// it (I/O fails at once, ATTACH gets ENOTRECOVERABLE), so no FLUSH served
// by a successor can call those writes durable; one that dies with its
// writes flushed can be replaced within the reconnect window.
func wcrule() {
	const name = "write-cache-reconnect-rule"
	buf := alignedBuf(4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	mk := func() abuse.DevConfig {
		return abuse.DevConfig{Size: 8 << 20, LogicalBlockSize: 4096, NrHWQueues: 1, QueueDepth: 8,
			Flags: abuse.DevWriteCache | abuse.DevFUA, ReconnectMs: 20000, DevID: -1}
	}

	// 1. Unflushed acknowledged write, then the server dies.
	cfg := mk()
	s := startInproc(name, &cfg, false, 0, nil)
	fd, err := unix.Open(devPath(cfg.DevID), unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(name, "open: %v", err)
	}
	if _, err := unix.Pwrite(fd, buf, 0); err != nil {
		fail(name, "write: %v", err)
	}
	s.die()
	ch, held := ioHeld(func() error { _, err := unix.Pread(fd, buf, 0); return err }, 2*time.Second)
	if held {
		fail(name, "dirty loss: I/O held for a reconnect; a new server's FLUSH would hide the lost write")
	}
	if err := <-ch; !errors.Is(err, unix.EIO) {
		fail(name, "dirty loss: read %v, want EIO", err)
	}
	fsyncErr := unix.Fsync(fd)
	c, _ := abuse.Open()
	_, aerr := c.Attach(int(cfg.DevID), cfg.Token)
	if !errors.Is(aerr, unix.ENOTRECOVERABLE) {
		fail(name, "dirty loss: attach %v, want ENOTRECOVERABLE", aerr)
	}
	unix.Close(fd)
	if err := c.RemoveToken(int(cfg.DevID), cfg.Token, 0); err != nil {
		fail(name, "remove: %v", err)
	}
	c.Close()
	if fsyncErr == nil {
		fail(name, "dirty loss: fsync succeeded")
	}

	// 2. The same write, flushed (fsync: a FLUSH the server completed).
	cfg = mk()
	s = startInproc(name, &cfg, false, 0, nil)
	fd, err = unix.Open(devPath(cfg.DevID), unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(name, "open: %v", err)
	}
	if _, err := unix.Pwrite(fd, buf, 0); err != nil {
		fail(name, "write: %v", err)
	}
	if err := unix.Fsync(fd); err != nil {
		fail(name, "fsync: %v", err)
	}
	disk := s.disk // the "persistent" store survives its server
	s.die()
	rbuf := alignedBuf(4096)
	ch, held = ioHeld(func() error { _, err := unix.Pread(fd, rbuf, 0); return err }, time.Second)
	if !held {
		fail(name, "clean loss: I/O not held for the reconnect window (%v)", <-ch)
	}
	s = startInproc(name, &cfg, true, cfg.Token, disk)
	if err := <-ch; err != nil {
		fail(name, "clean loss: held read after reconnect: %v", err)
	}
	if rbuf[4095] != buf[4095] || rbuf[1] != buf[1] {
		fail(name, "clean loss: data differs after reconnect")
	}
	if err := unix.Fsync(fd); err != nil {
		fail(name, "clean loss: fsync on the new server: %v", err)
	}
	unix.Close(fd)
	if err := s.ctl.Remove(int(cfg.DevID)); err != nil {
		fail(name, "remove: %v", err)
	}
	s.die()
	pass(name, "unflushed write + server death: I/O EIO at once, fsync %v, attach ENOTRECOVERABLE; flushed write + death: I/O held, reconnect serves it, fsync ok",
		fsyncErr)
}

// owner checks that a device belongs to the session that created it and
// to whoever holds its token: other sessions get EPERM.
func owner() {
	const name = "device-ownership"
	a, err := abuse.Open()
	if err != nil {
		fail(name, "%v", err)
	}
	cfg := abuse.DevConfig{Size: 4 << 20, LogicalBlockSize: 4096, NrHWQueues: 1, QueueDepth: 4,
		ReconnectMs: 30000, DevID: -1}
	if err := a.Create(&cfg); err != nil {
		fail(name, "create: %v", err)
	}
	id := int(cfg.DevID)
	if cfg.Token == 0 {
		fail(name, "ADD returned no token")
	}
	b, _ := abuse.Open()
	c, _ := abuse.Open()
	defer c.Close()
	want := func(what string, err, want error) {
		if !errors.Is(err, want) && !(want == nil && err == nil) {
			fail(name, "%s: %v, want %v", what, err, want)
		}
	}
	want("remove of a served device, no token", b.RemoveToken(id, 0, 0), unix.EPERM)
	want("forced remove, wrong token", b.RemoveToken(id, cfg.Token+1, abuse.RemoveForce), unix.EPERM)
	_, err = b.Attach(id, 0)
	want("attach, no token", err, unix.EPERM)
	_, err = b.Attach(id, cfg.Token)
	want("attach to a served device", err, unix.EBUSY)
	a.Close() // the server is gone; its I/O is held for a reconnect
	want("remove of a held device, no token", b.RemoveToken(id, 0, 0), unix.EPERM)
	_, err = c.Attach(id, cfg.Token^0x5a5a)
	want("attach, wrong token", err, unix.EPERM)
	_, err = b.Attach(id, cfg.Token)
	want("attach with the token", err, nil)
	want("remove by another session while b serves, no token", c.RemoveToken(id, 0, 0), unix.EPERM)
	b.Close()
	want("remove with the token", c.RemoveToken(id, cfg.Token, 0), nil)
	pass(name, "abuse%d: without its token other sessions get EPERM for REMOVE and ATTACH; the token attaches and removes", id)
}

// userfaultfd, for holding the kernel inside a data copy at a chosen moment.
const (
	uffdAPI            = 0xaa
	uffdioAPI          = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)
	uffdioRegister     = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)
	uffdioCopy         = 0xc028aa03 // _IOWR(0xAA, 0x03, struct uffdio_copy)
	uffdRegMissing     = 1
	uffdEventPagefault = 0x12
)

type uffd struct{ fd int }

// newUffd registers mem (page aligned, not yet touched) for missing-page
// faults: the first access to each page, also from the kernel's
// copy_to_user, waits until resolve.
func newUffd(mem []byte) (*uffd, error) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC, 0, 0)
	if e != 0 {
		return nil, fmt.Errorf("userfaultfd: %w", e)
	}
	api := [3]uint64{uffdAPI, 0, 0}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uffdioAPI, uintptr(unsafe.Pointer(&api))); e != 0 {
		unix.Close(int(fd))
		return nil, fmt.Errorf("UFFDIO_API: %w", e)
	}
	reg := [4]uint64{uint64(uintptr(unsafe.Pointer(&mem[0]))), uint64(len(mem)), uffdRegMissing, 0}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uffdioRegister, uintptr(unsafe.Pointer(&reg))); e != 0 {
		unix.Close(int(fd))
		return nil, fmt.Errorf("UFFDIO_REGISTER: %w", e)
	}
	return &uffd{fd: int(fd)}, nil
}

// wait returns the address of the next missing-page fault.
func (u *uffd) wait(timeout time.Duration) (uint64, error) {
	pfd := []unix.PollFd{{Fd: int32(u.fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, int(timeout.Milliseconds())); err != nil || n == 0 {
		return 0, fmt.Errorf("no page fault within %v (%v)", timeout, err)
	}
	var msg [32]byte
	if _, err := unix.Read(u.fd, msg[:]); err != nil {
		return 0, err
	}
	if msg[0] != uffdEventPagefault {
		return 0, fmt.Errorf("uffd event %#x", msg[0])
	}
	return *(*uint64)(unsafe.Pointer(&msg[16])), nil
}

// resolve maps a page of src at the faulting address.
func (u *uffd) resolve(addr uint64, src []byte) error {
	cp := [5]uint64{addr &^ 4095, uint64(uintptr(unsafe.Pointer(&src[0]))), 4096, 0, 0}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(u.fd), uffdioCopy, uintptr(unsafe.Pointer(&cp))); e != 0 {
		return fmt.Errorf("UFFDIO_COPY: %w", e)
	}
	return nil
}

func (u *uffd) close() { unix.Close(u.fd) }

// tagBuffers is the whole per-tag buffer area of q.
func tagBuffers(q *abuse.Queue, cfg abuse.DevConfig) []byte {
	return unsafe.Slice(&q.Buffer(0)[0], int(cfg.QueueDepth)*int(cfg.MaxIOBytes))
}

// faults checks the two paths where a request's data copy goes wrong in a
// fetch:
//
//   - requeue-wakeup: the server generation ends while a fetch copies a
//     WRITE into the old server's buffer (held there with userfaultfd); the
//     new server is already asleep in poll when the old fetch puts the
//     request back. It must be woken and serve the write at once, long
//     before the I/O timeout would fail it.
//   - fetch-write-fault: a WRITE whose tag buffer the server made
//     unwritable fails with EIO, and the queue goes on serving (the
//     request is not put back to fault again on every fetch).
//
// and then stuckCopy and addReplyFault.
func faults() {
	name := "requeue-wakeup"
	data := alignedBuf(4096)
	for i := range data {
		data[i] = byte(i * 7)
	}
	cfg := abuse.DevConfig{Size: 8 << 20, LogicalBlockSize: 4096, NrHWQueues: 1, QueueDepth: 4,
		ReconnectMs: 20000, IOTimeoutMs: 10000, DevID: -1}
	a, err := abuse.Open()
	if err != nil {
		fail(name, "%v", err)
	}
	if err := a.Create(&cfg); err != nil {
		fail(name, "create: %v", err)
	}
	qa, err := a.OpenQueue(0)
	if err != nil {
		fail(name, "queue: %v", err)
	}
	u, err := newUffd(tagBuffers(qa, cfg))
	if err != nil {
		fail(name, "%v", err)
	}
	fd, err := unix.Open(devPath(cfg.DevID), unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(name, "open: %v", err)
	}
	t0 := time.Now()
	wdone := make(chan error, 1)
	go func() { _, err := unix.Pwrite(fd, data, 4096); wdone <- err }()
	fetched := make(chan error, 1)
	go func() { // the old server's fetch: stuck in the WRITE copy
		for {
			if ok, err := qa.Wait(5000); err != nil || !ok {
				fetched <- fmt.Errorf("old server: no request (%v)", err)
				return
			}
			reqs, err := qa.CommitFetch(nil)
			if err != nil || len(reqs) > 0 {
				fetched <- err
				return
			}
		}
	}()
	addr, err := u.wait(5 * time.Second)
	if err != nil {
		fail(name, "the WRITE copy did not fault: %v", err)
	}
	a.Close() // the server generation ends while the copy is held
	b := startInproc(name, &cfg, true, cfg.Token, nil)
	time.Sleep(300 * time.Millisecond) // b's queue goroutine is asleep in poll
	if err := u.resolve(addr, alignedBuf(4096)); err != nil {
		fail(name, "%v", err)
	}
	if err := <-fetched; !errors.Is(err, unix.ENOTCONN) {
		fail(name, "old server's fetch: %v, want ENOTCONN", err)
	}
	select {
	case err := <-wdone:
		if err != nil {
			fail(name, "write: %v (after %v)", err, time.Since(t0).Round(time.Millisecond))
		}
	case <-time.After(5 * time.Second):
		fail(name, "the write put back by the old server's fetch was not served in 5s (lost wakeup)")
	}
	wdur := time.Since(t0)
	rbuf := alignedBuf(4096)
	if _, err := unix.Pread(fd, rbuf, 4096); err != nil || rbuf[100] != data[100] || rbuf[4095] != data[4095] {
		fail(name, "read back: %v", err)
	}
	u.close()
	qa.Close()
	pass(name, "write held in the old server's fetch copy, generation ended, new server asleep: served %v after submission (I/O timeout %d ms)",
		wdur.Round(time.Millisecond), cfg.IOTimeoutMs)

	name = "fetch-write-fault"
	q := b.q
	bufs := tagBuffers(q, b.cfg)
	if err := unix.Mprotect(bufs, unix.PROT_READ); err != nil {
		fail(name, "mprotect: %v", err)
	}
	t1 := time.Now()
	_, werr := unix.Pwrite(fd, data, 0)
	wlat := time.Since(t1)
	_, rerr := unix.Pread(fd, rbuf, 4096)
	if err := unix.Mprotect(bufs, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		fail(name, "mprotect: %v", err)
	}
	if !errors.Is(werr, unix.EIO) || wlat > 2*time.Second {
		fail(name, "write into an unwritable tag buffer: %v after %v, want EIO at once", werr, wlat)
	}
	if rerr != nil || rbuf[100] != data[100] {
		fail(name, "read after the faulting write: %v (queue wedged?)", rerr)
	}
	if _, err := unix.Pwrite(fd, data, 0); err != nil {
		fail(name, "write after restoring the buffer: %v", err)
	}
	unix.Close(fd)
	if err := b.ctl.Remove(int(cfg.DevID)); err != nil {
		fail(name, "remove: %v", err)
	}
	b.die()
	pass(name, "WRITE with an unwritable tag buffer: EIO in %v; the queue serves on (read ok, write ok once writable)",
		wlat.Round(time.Millisecond))

	stuckCopy()
	addReplyFault()
}

// stuckCopy: the server completes a READ from memory whose page fault
// never resolves (userfaultfd, unanswered). The reader must get EIO after
// the I/O timeout, no task may stay in D state, and a forced removal must
// return, all while the server's thread still sits in the fault.
func stuckCopy() {
	const name = "stuck-read-copy"
	cfg := abuse.DevConfig{Size: 8 << 20, LogicalBlockSize: 4096, NrHWQueues: 1, QueueDepth: 4,
		IOTimeoutMs: 3000, DevID: -1}
	ctl, err := abuse.Open()
	if err != nil {
		fail(name, "%v", err)
	}
	if err := ctl.Create(&cfg); err != nil {
		fail(name, "create: %v", err)
	}
	q, err := ctl.OpenQueue(0)
	if err != nil {
		fail(name, "queue: %v", err)
	}
	src, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		fail(name, "mmap: %v", err)
	}
	u, err := newUffd(src)
	if err != nil {
		fail(name, "%v", err)
	}
	fd, err := unix.Open(devPath(cfg.DevID), unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(name, "open: %v", err)
	}
	served := make(chan error, 1)
	go func() { // the server: complete the READ from the never-resolved page
		if ok, err := q.Wait(5000); err != nil || !ok {
			served <- fmt.Errorf("no request (%v)", err)
			return
		}
		reqs, err := q.CommitFetch(nil)
		if err != nil || len(reqs) != 1 {
			served <- fmt.Errorf("fetch: %d requests, %v", len(reqs), err)
			return
		}
		_, err = q.CommitFetch([]abuse.Completion{reqs[0].CompleteFrom(uintptr(unsafe.Pointer(&src[0])))})
		served <- err
	}()
	t0 := time.Now()
	rdone := make(chan error, 1)
	go func() { _, err := unix.Pread(fd, alignedBuf(4096), 0); rdone <- err }()
	addr, err := u.wait(5 * time.Second)
	if err != nil {
		fail(name, "the READ copy did not fault: %v", err)
	}
	var rerr error
	select {
	case rerr = <-rdone:
	case <-time.After(10 * time.Second):
		fail(name, "read still hanging 10s after the server's copy got stuck (io timeout 3s); D state: %v", dstate())
	}
	rlat := time.Since(t0)
	if !errors.Is(rerr, unix.EIO) || rlat < 1500*time.Millisecond {
		fail(name, "read: %v after %v, want EIO after the 3s timeout", rerr, rlat)
	}
	if d := dstate(); len(d) > 0 {
		time.Sleep(500 * time.Millisecond)
		if d = intersect(d, dstate()); len(d) > 0 {
			fail(name, "tasks in D state: %v", d)
		}
	}
	t1 := time.Now()
	rmdone := make(chan error, 1)
	go func() {
		c, _ := abuse.Open()
		defer c.Close()
		rmdone <- c.RemoveToken(int(cfg.DevID), cfg.Token, abuse.RemoveForce)
	}()
	select {
	case err := <-rmdone:
		if err != nil {
			fail(name, "forced remove: %v", err)
		}
	case <-time.After(10 * time.Second):
		fail(name, "forced remove hangs while the server's copy is stuck")
	}
	rmlat := time.Since(t1)
	if err := u.resolve(addr, alignedBuf(4096)); err != nil {
		fail(name, "%v", err)
	}
	serr := <-served
	unix.Close(fd)
	u.close()
	q.Close()
	ctl.Close()
	pass(name, "server stuck in a fault in its READ completion: read EIO after %v (timeout 3s), no task in D, forced remove in %v; the server's call then returned %v",
		rlat.Round(time.Millisecond), rmlat.Round(time.Millisecond), serr)
}

// addReplyFault: an ADD whose config the kernel can read but not write back
// (a read-only page) must fail with EFAULT and leave no device behind, and
// the session must be free to create another.
func addReplyFault() {
	const name = "add-reply-fault"
	const id = 41
	page, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		fail(name, "mmap: %v", err)
	}
	cfg := (*abuse.DevConfig)(unsafe.Pointer(&page[0]))
	*cfg = abuse.DevConfig{Version: abuse.ProtocolVersion, Size: 4 << 20, LogicalBlockSize: 4096,
		NrHWQueues: 1, QueueDepth: 4, DevID: id}
	if err := unix.Mprotect(page, unix.PROT_READ); err != nil {
		fail(name, "mprotect: %v", err)
	}
	c, err := abuse.Open()
	if err != nil {
		fail(name, "%v", err)
	}
	defer c.Close()
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(c.Fd()), abuse.IoctlCtlAdd, uintptr(unsafe.Pointer(cfg)))
	if e != unix.EFAULT {
		fail(name, "ADD with a read-only reply buffer: %v, want EFAULT", e)
	}
	if _, err := os.Stat(fmt.Sprintf("/sys/block/abuse%d", id)); err == nil {
		fail(name, "abuse%d left behind by the failed ADD", id)
	}
	good := abuse.DevConfig{Size: 4 << 20, LogicalBlockSize: 4096, NrHWQueues: 1, QueueDepth: 4, DevID: id}
	if err := c.Create(&good); err != nil {
		fail(name, "ADD again on the same session and index: %v", err)
	}
	if err := c.Remove(id); err != nil {
		fail(name, "remove: %v", err)
	}
	pass(name, "ADD whose reply cannot be written: EFAULT, no abuse%d left, the session and index are free again", id)
}
