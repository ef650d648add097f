//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring header constants (fs/aio.c, struct aio_ring).
const (
	ringMagic        = 0xa10a10a1
	ringHeaderLength = 32
)

// ringHeader is the start of struct aio_ring in the shared mapping.
// Userspace writes head only; id is read by the kernel on every call.
type ringHeader struct {
	id               uint32
	nr               uint32
	head             uint32
	tail             uint32
	magic            uint32
	compatFeatures   uint32
	incompatFeatures uint32
	headerLength     uint32
}

var _ [ringHeaderLength]byte = [unsafe.Sizeof(ringHeader{})]byte{}

// ErrDestroyed is returned (wrapped) by calls on a destroyed Context.
var ErrDestroyed = errors.New("aio context destroyed")

// Context is one kernel AIO context and its mmapped completion ring.
// It is meant for one goroutine at a time; Counters is safe from any.
type Context struct {
	id     uintptr     // aio_context_t, the user address of the ring
	ring   *ringHeader // nil after Destroy
	events []Event     // the ring slots; nil when userspace reaping is off
	nr     uint32

	rawSubmit bool

	submits       atomic.Uint64
	getevents     atomic.Uint64
	cancels       atomic.Uint64
	reapedUser    atomic.Uint64
	reapedSyscall atomic.Uint64
}

// Setup creates a context with room for at least maxEvents in-flight
// operations (io_setup). The kernel rounds the ring up; see Nr. The
// request counts against /proc/sys/fs/aio-max-nr (EAGAIN when exceeded).
//
// If the ring header does not carry the expected magic, incompat
// features and header length, the Context still works but reaps through
// io_getevents (UserspaceReap reports false).
func Setup(maxEvents int) (*Context, error) {
	var id uintptr
	_, _, errno := unix.Syscall(unix.SYS_IO_SETUP, uintptr(maxEvents), uintptr(unsafe.Pointer(&id)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_setup(nr_events=%d): %w", maxEvents, errno)
	}
	c := &Context{id: id}

	// The aio_context_t is the address of a kernel-made mapping outside
	// the Go heap. Reinterpreting the integer's bits as a pointer (rather
	// than unsafe.Pointer(id), which go vet flags) is sound: the memory
	// is not managed by the GC and stays mapped until io_destroy.
	base := *(*unsafe.Pointer)(unsafe.Pointer(&c.id))
	c.ring = (*ringHeader)(base)
	c.nr = c.ring.nr
	if c.ring.magic == ringMagic && c.ring.incompatFeatures == 0 &&
		c.ring.headerLength == ringHeaderLength && c.nr > 0 {
		c.events = unsafe.Slice((*Event)(unsafe.Add(base, ringHeaderLength)), c.nr)
	}
	return c, nil
}

// Destroy tears the context down (io_destroy). The kernel waits for all
// in-flight operations first; their events are discarded. Calling
// Destroy again is a no-op.
func (c *Context) Destroy() error {
	if c.ring == nil {
		return nil
	}
	id := c.id
	// The ring is unmapped by the kernel: drop every reference first.
	c.ring, c.events, c.id = nil, nil, 0
	_, _, errno := unix.Syscall(unix.SYS_IO_DESTROY, id, 0, 0)
	if errno != 0 {
		return fmt.Errorf("io_destroy(ctx=%#x): %w", id, errno)
	}
	return nil
}

// ID returns the aio_context_t (0 after Destroy).
func (c *Context) ID() uintptr { return c.id }

// Nr returns the ring capacity in events as set by the kernel (larger
// than the depth requested from Setup). Fewer than Nr()-1 operations can
// be in flight at once, because free slots are kept in per-CPU batches.
func (c *Context) Nr() uint32 { return c.nr }

// UserspaceReap reports whether Reap and Ready read the ring directly.
func (c *Context) UserspaceReap() bool { return c.events != nil }

// SetNonblockingSubmit makes Submit use RawSyscall instead of Syscall,
// saving the scheduler hand-off. Only enable it when no submitted
// operation can block inside io_submit: every socket and pipe must be
// O_NONBLOCK or use RWF_NOWAIT. A blocking io_submit under RawSyscall
// hides the thread from the Go scheduler and can stall the GC.
func (c *Context) SetNonblockingSubmit(on bool) { c.rawSubmit = on }

// Counters are exact counts of the AIO system calls a Context made and
// of the events it returned, split by reaping path.
type Counters struct {
	Submits       uint64 // io_submit calls
	GetEvents     uint64 // io_getevents calls (GetEvents and Reap fallback)
	Cancels       uint64 // io_cancel calls
	ReapedUser    uint64 // events copied from the ring without a syscall
	ReapedSyscall uint64 // events returned by io_getevents
}

// Counters returns a snapshot; it may be called from any goroutine.
func (c *Context) Counters() Counters {
	return Counters{
		Submits:       c.submits.Load(),
		GetEvents:     c.getevents.Load(),
		Cancels:       c.cancels.Load(),
		ReapedUser:    c.reapedUser.Load(),
		ReapedSyscall: c.reapedSyscall.Load(),
	}
}

// bump adds n to a counter that only the owning goroutine writes: a
// load plus a store, no locked read-modify-write, and still race-free
// for concurrent readers.
func bump(v *atomic.Uint64, n uint64) { v.Store(v.Load() + n) }
