//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reap copies up to len(out) ready events into out and returns how many.
// It never blocks. With userspace reaping it makes no system call: plain
// load of head (only we write it), acquire load of tail, copy (in two
// pieces across the wrap at Nr), release store of head so the kernel
// cannot reuse a slot before it was read. Otherwise it calls
// io_getevents(min_nr=0) with a zero timeout.
//
// Single consumer: do not run Reap while another thread is inside
// io_getevents on the same Context.
func (c *Context) Reap(out []Event) int {
	if len(out) == 0 || c.ring == nil {
		return 0
	}
	if c.events == nil {
		n, _ := c.getEvents(0, out, 0)
		return n
	}
	r := c.ring
	nr := c.nr
	head := r.head
	tail := atomic.LoadUint32(&r.tail)
	if head >= nr { // the kernel clamps the same way
		head %= nr
	}
	if head == tail {
		return 0
	}
	avail := tail - head
	if tail < head {
		avail = nr - head + tail
	}
	n := min(uint32(len(out)), avail)
	first := min(n, nr-head)
	copy(out[:first], c.events[head:head+first])
	copy(out[first:n], c.events[:n-first])
	head += n
	if head >= nr {
		head -= nr
	}
	atomic.StoreUint32(&r.head, head)
	bump(&c.reapedUser, uint64(n))
	return int(n)
}

// Ready reports whether the ring holds unreaped events, without a system
// call. It is always false when UserspaceReap is false (use GetEvents
// then) and after Destroy.
func (c *Context) Ready() bool {
	if c.events == nil {
		return false
	}
	return atomic.LoadUint32(&c.ring.head) != atomic.LoadUint32(&c.ring.tail)
}

// GetEvents waits with one io_getevents call until at least minNr events
// are ready or timeout passes, and copies up to len(out) of them.
// timeout < 0 waits forever; timeout == 0 does not block. An interrupted
// wait (EINTR) returns (0, nil).
func (c *Context) GetEvents(minNr int, out []Event, timeout time.Duration) (int, error) {
	if c.ring == nil {
		return 0, fmt.Errorf("io_getevents(min_nr=%d, nr=%d): %w", minNr, len(out), ErrDestroyed)
	}
	return c.getEvents(minNr, out, timeout)
}

func (c *Context) getEvents(minNr int, out []Event, timeout time.Duration) (int, error) {
	var outp unsafe.Pointer
	if len(out) > 0 {
		outp = unsafe.Pointer(&out[0])
	}
	var ts unix.Timespec
	var tsp unsafe.Pointer
	if timeout >= 0 {
		ts = unix.NsecToTimespec(timeout.Nanoseconds())
		tsp = unsafe.Pointer(&ts)
	}
	bump(&c.getevents, 1)
	var r uintptr
	var errno unix.Errno
	if timeout == 0 {
		r, _, errno = unix.RawSyscall6(unix.SYS_IO_GETEVENTS, c.id, uintptr(minNr), uintptr(len(out)), uintptr(outp), uintptr(tsp), 0)
	} else {
		r, _, errno = unix.Syscall6(unix.SYS_IO_GETEVENTS, c.id, uintptr(minNr), uintptr(len(out)), uintptr(outp), uintptr(tsp), 0)
	}
	if errno != 0 {
		if errno == unix.EINTR {
			return 0, nil
		}
		return 0, fmt.Errorf("io_getevents(ctx=%#x, min_nr=%d, nr=%d, timeout=%v): %w", c.id, minNr, len(out), timeout, errno)
	}
	bump(&c.reapedSyscall, uint64(r))
	return int(r), nil
}
