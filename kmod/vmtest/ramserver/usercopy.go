package main

import (
	"bytes"
	"errors"
	"time"
	"unsafe"

	"github.com/userland-io/uio/blockdev/abuse"
	"golang.org/x/sys/unix"
)

// usercopy checks the optional features of the protocol on a real device:
//
//   - a USER_COPY queue: WRITE requests arrive without data; ABUSE_QUEUE_COPY
//     moves part of a request's data (refusing a wrong seq, a range past the
//     request, memory the server may not use, with the request still in
//     flight afterwards); a WRITE completion's address is where the kernel
//     stores the data before the write returns; a READ completes from
//     copied data or from a named address;
//   - ABUSE_BATCH_F_WAIT: an idle wait returns empty after wait_ms, a
//     request arriving during the wait ends it at once, a forced removal
//     ends it with ENOTCONN, and malformed wait arguments are EINVAL.
func usercopy() {
	const name = "user-copy-wait"
	cfg := abuse.DevConfig{Size: 8 << 20, LogicalBlockSize: 4096, NrHWQueues: 1, QueueDepth: 4,
		IOTimeoutMs: 10000, DevID: -1}
	ctl, err := abuse.Open()
	if err != nil {
		fail(name, "%v", err)
	}
	if err := ctl.Create(&cfg); err != nil {
		fail(name, "create: %v", err)
	}
	if cfg.Features&(abuse.FeatUserCopy|abuse.FeatWait) != abuse.FeatUserCopy|abuse.FeatWait {
		fail(name, "module features %#x: want USER_COPY and WAIT", cfg.Features)
	}
	bad := abuse.QueueSetup{DevID: uint32(cfg.DevID), Flags: abuse.QueueUserCopy, BufAddr: 1 << 20, BufLen: 4 << 20}
	if _, err := rawIoctl(ctl.Fd(), abuse.IoctlCtlQueueFd, unsafe.Pointer(&bad)); !errors.Is(err, unix.EINVAL) {
		fail(name, "USER_COPY queue with tag buffers: %v, want EINVAL", err)
	}
	q, err := ctl.OpenUserCopyQueue(0)
	if err != nil {
		fail(name, "user-copy queue: %v", err)
	}
	fd, err := unix.Open(devPath(cfg.DevID), unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(name, "open: %v", err)
	}
	disk := alignedBuf(int(cfg.Size))
	a := alignedBuf(8192)
	for i := range a {
		a[i] = byte(i*13 + 1)
	}
	fetchOne := func(what string) abuse.Request {
		reqs, err := q.CommitFetchWait(nil, 1000, 0)
		if err != nil || len(reqs) != 1 {
			fail(name, "%s: fetched %d requests, %v", what, len(reqs), err)
		}
		return reqs[0]
	}
	io := func(f func() error) chan error {
		ch := make(chan error, 1)
		go func() { ch <- f() }()
		return ch
	}
	done := func(what string, ch chan error) {
		select {
		case err := <-ch:
			if err != nil {
				fail(name, "%s: %v", what, err)
			}
		case <-time.After(5 * time.Second):
			fail(name, "%s: still running after 5s", what)
		}
	}

	// WRITE: no data at fetch; Copy's checks; the data lands where the
	// completion says.
	wch := io(func() error { _, err := unix.Pwrite(fd, a, 4096); return err })
	r := fetchOne("write")
	if r.Op() != abuse.OpWrite || r.Addr != 0 || r.Len != 8192 {
		fail(name, "write request %+v: want a WRITE of 8192 bytes without an address", r)
	}
	part := alignedBuf(4096)
	if err := q.Copy(r.Seq+1, r.Tag, 0, part); !errors.Is(err, unix.ENOENT) {
		fail(name, "copy with a wrong seq: %v, want ENOENT", err)
	}
	if err := q.Copy(r.Seq, r.Tag, 4097, part); !errors.Is(err, unix.EINVAL) {
		fail(name, "copy past the request: %v, want EINVAL", err)
	}
	noAccess, err := unix.Mmap(-1, 0, 4096, unix.PROT_NONE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		fail(name, "mmap: %v", err)
	}
	if err := q.Copy(r.Seq, r.Tag, 0, noAccess); !errors.Is(err, unix.EFAULT) {
		fail(name, "copy into PROT_NONE memory: %v, want EFAULT", err)
	}
	if err := q.Copy(r.Seq, r.Tag, 4096, part); err != nil || !bytes.Equal(part, a[4096:]) {
		fail(name, "copy of the write's second half (after the EFAULT: still in flight?): %v", err)
	}
	if _, err := q.CommitFetch([]abuse.Completion{r.CompleteFrom(uintptr(unsafe.Pointer(&disk[4096])))}); err != nil {
		fail(name, "complete the write into the disk: %v", err)
	}
	done("write", wch)
	if !bytes.Equal(disk[4096:4096+8192], a) {
		fail(name, "the write's data is not where its completion named")
	}

	// READ from copied data, then from a named address.
	c := alignedBuf(8192)
	for i := range c {
		c[i] = byte(i*7 + 3)
	}
	got := alignedBuf(8192)
	rch := io(func() error { _, err := unix.Pread(fd, got, 4096); return err })
	r = fetchOne("read")
	if err := q.Copy(r.Seq, r.Tag, 0, c); err != nil {
		fail(name, "copy into the read: %v", err)
	}
	if _, err := q.CommitFetch([]abuse.Completion{r.Complete(0)}); err != nil {
		fail(name, "complete the read: %v", err)
	}
	done("read", rch)
	if !bytes.Equal(got, c) {
		fail(name, "the read does not return the copied data")
	}
	rch = io(func() error { _, err := unix.Pread(fd, got, 4096); return err })
	r = fetchOne("read 2")
	if _, err := q.CommitFetch([]abuse.Completion{r.CompleteFrom(uintptr(unsafe.Pointer(&disk[4096])))}); err != nil {
		fail(name, "complete the read from the disk: %v", err)
	}
	done("read 2", rch)
	if !bytes.Equal(got, a) {
		fail(name, "the read does not return the named memory")
	}

	// WAIT: idle, woken by a request, malformed arguments.
	t0 := time.Now()
	if reqs, err := q.CommitFetchWait(nil, 200, 0); err != nil || len(reqs) != 0 {
		fail(name, "idle wait: %d requests, %v", len(reqs), err)
	}
	idle := time.Since(t0)
	if idle < 150*time.Millisecond || idle > 2*time.Second {
		fail(name, "idle wait of 200 ms took %v", idle)
	}
	var wake time.Duration
	rch = io(func() error {
		time.Sleep(100 * time.Millisecond)
		t0 = time.Now()
		_, err := unix.Pread(fd, got[:4096], 0)
		return err
	})
	r = fetchOne("woken wait")
	wake = time.Since(t0)
	if _, err := q.CommitFetch([]abuse.Completion{r.CompleteFrom(uintptr(unsafe.Pointer(&disk[0])))}); err != nil {
		fail(name, "complete: %v", err)
	}
	done("read 3", rch)
	if wake > 500*time.Millisecond {
		fail(name, "a request during a 1 s wait was fetched only after %v", wake)
	}
	for _, b := range []abuse.Batch{
		{Flags: abuse.BatchWait, WaitMs: 0, MaxRequests: 1},
		{Flags: abuse.BatchWait, WaitMs: abuse.MaxWaitMs + 1, MaxRequests: 1},
		{Flags: abuse.BatchWait, WaitMs: 5, SpinUs: abuse.MaxSpinUs + 1, MaxRequests: 1},
		{Flags: abuse.BatchWait, WaitMs: 5, MaxRequests: 0},
		{WaitMs: 5, MaxRequests: 1},
		{Flags: 2, MaxRequests: 1},
	} {
		b := b
		if _, err := rawIoctl(q.Fd(), abuse.IoctlQueueCommitFetch, unsafe.Pointer(&b)); !errors.Is(err, unix.EINVAL) {
			fail(name, "batch %+v: %v, want EINVAL", b, err)
		}
	}
	unix.Close(fd)
	wch = io(func() error {
		reqs, err := q.CommitFetchWait(nil, 1000, 0)
		if !errors.Is(err, unix.ENOTCONN) {
			return errors.New("wait during a forced removal: " + errString(err) + ", want ENOTCONN")
		}
		_ = reqs
		return nil
	})
	time.Sleep(100 * time.Millisecond)
	t1 := time.Now()
	c2, err := abuse.Open()
	if err != nil {
		fail(name, "%v", err)
	}
	if err := c2.RemoveToken(int(cfg.DevID), cfg.Token, abuse.RemoveForce); err != nil {
		fail(name, "forced remove: %v", err)
	}
	done("wait ended by removal", wch)
	rmWake := time.Since(t1)
	c2.Close()
	q.Close()
	ctl.Close()
	pass(name, "write data placed by its completion, copies checked (ENOENT/EINVAL/EFAULT, request kept), reads from copy and address; idle wait %v, woken after %v, removal ended a wait in %v",
		idle.Round(time.Millisecond), wake.Round(time.Millisecond), rmWake.Round(time.Millisecond))
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}

func rawIoctl(fd int, req uintptr, arg unsafe.Pointer) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}
