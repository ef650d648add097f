package uring

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/pawelgaczynski/giouring"
	"golang.org/x/sys/unix"
)

// CQE is a completion copied out of the CQ ring by PeekCQEs.
type CQE struct {
	UserData uint64 // the value given to SQE.SetData
	Res      int32  // result: >= 0 on success, -errno on failure
	Flags    uint32 // IORING_CQE_F_*
}

// Err returns nil for Res >= 0, otherwise the negated errno as unix.Errno.
func (c CQE) Err() error {
	if c.Res >= 0 {
		return nil
	}
	return unix.Errno(-c.Res)
}

// getEventsArg is struct io_uring_getevents_arg (IORING_ENTER_EXT_ARG).
type getEventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	minWaitUs uint32 // "pad" before 6.12; min_wait_usec since
	ts        uint64
}

// Ring is one io_uring instance. It is NOT safe for concurrent use: every
// method except Enters must be called from the OS thread that called New
// (see the package documentation).
type Ring struct {
	g  *giouring.Ring
	sq *sqMirror
	cq *cqMirror

	fd       int
	flags    uint32
	features uint32
	cqShift  uint32
	cqes     []giouring.CompletionQueueEvent // the mmapped CQE array
	sqes     []giouring.SubmissionQueueEntry // the mmapped SQE array

	enters atomic.Uint64

	probed   bool
	probe    *giouring.Probe
	probeErr error

	// Kept in the (heap-allocated, never moving) Ring so the addresses
	// handed to io_uring_enter stay valid for the whole syscall.
	arg getEventsArg
	ts  unix.Timespec
	efd int32

	closed bool
}

// setupCandidates is the probing order used by New.
var setupCandidates = []uint32{
	IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
	IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
	0,
}

// New sets up a ring with entries SQ entries (the kernel rounds up to a
// power of two; the CQ gets twice as many). It must be called on a
// goroutine locked to its OS thread (runtime.LockOSThread), and the ring
// must then be used only from that thread.
//
// It tries, in order, SINGLE_ISSUER|DEFER_TASKRUN (6.1+),
// COOP_TASKRUN|TASKRUN_FLAG (5.19+) and no flags, moving to the next set only
// when the kernel answers EINVAL. SetupFlags reports the set that was chosen.
func New(entries uint32) (*Ring, error) {
	var err error
	for _, f := range setupCandidates {
		var r *Ring
		r, err = NewWithFlags(entries, f)
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return nil, err
		}
	}
	return nil, err
}

// NewWithFlags sets up a ring with exactly the given IORING_SETUP_* flags,
// without any fallback.
func NewWithFlags(entries uint32, flags uint32) (*Ring, error) {
	if layoutErr != nil {
		return nil, layoutErr
	}
	g := giouring.NewRing()
	if err := g.QueueInit(entries, flags); err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			err = unix.Errno(errno)
		}
		return nil, fmt.Errorf("io_uring_setup(entries=%d, flags=%#x): %w", entries, flags, err)
	}
	m := (*ringMirror)(unsafe.Pointer(g))
	r := &Ring{
		g:        g,
		sq:       m.sqRing,
		cq:       m.cqRing,
		fd:       g.RingFd(),
		flags:    m.flags,
		features: m.features,
		efd:      -1,
	}
	if m.ringFd != r.fd || m.flags&flags != flags || r.sq.ringEntries == nil ||
		r.cq.ringEntries == nil || *r.sq.ringEntries < 1 || r.sq.sqeTail != 0 {
		g.QueueExit()
		return nil, fmt.Errorf("uring: giouring ring state does not match the expected layout")
	}
	if r.flags&IORING_SETUP_CQE32 != 0 {
		r.cqShift = 1
	}
	sqeN := int(*r.sq.ringEntries)
	if r.flags&IORING_SETUP_SQE128 != 0 {
		sqeN *= 2
	}
	r.sqes = unsafe.Slice(r.sq.sqes, sqeN)
	r.cqes = unsafe.Slice(r.cq.cqes, int(*r.cq.ringEntries)<<r.cqShift)
	return r, nil
}

// SetupFlags returns the IORING_SETUP_* flags the ring was created with.
func (r *Ring) SetupFlags() uint32 { return r.flags }

// Features returns the IORING_FEAT_* bits the kernel reported at setup.
func (r *Ring) Features() uint32 { return r.features }

// Fd returns the ring's file descriptor.
func (r *Ring) Fd() int { return r.fd }

// SQEntries returns the SQ size (a power of two).
func (r *Ring) SQEntries() uint32 { return *r.sq.ringEntries }

// CQEntries returns the CQ size.
func (r *Ring) CQEntries() uint32 { return *r.cq.ringEntries }

// OpSupported reports whether the kernel supports opcode op, using
// IORING_REGISTER_PROBE once and caching the answer. It returns false if
// probing itself fails (see ProbeErr).
func (r *Ring) OpSupported(op uint8) bool {
	if !r.probed {
		r.probed = true
		p := &giouring.Probe{}
		_, err := r.g.RegisterProbe(p, len(p.Ops))
		if err != nil {
			r.probeErr = fmt.Errorf("io_uring_register(fd=%d, IORING_REGISTER_PROBE, nr=%d): %w", r.fd, len(p.Ops), err)
		} else {
			r.probe = p
		}
	}
	if r.probe == nil || op > r.probe.LastOp || int(op) >= int(r.probe.OpsLen) {
		return false
	}
	return r.probe.Ops[op].Op == op && r.probe.Ops[op].Flags&1 != 0
}

// ProbeErr returns the error of the probe OpSupported ran, if any.
func (r *Ring) ProbeErr() error { return r.probeErr }

// GetSQE returns the next free SQE, fully zeroed, or nil when the SQ is full
// (Submit, then retry). The SQE belongs to the SQ ring; prepare it right away
// and do not keep the pointer after the next Submit/SubmitAndWait.
func (r *Ring) GetSQE() *SQE {
	e := r.g.GetSQE()
	if e == nil {
		return nil
	}
	s := (*SQE)(e)
	*s = SQE{}
	return s
}

// SQReady returns the number of SQEs prepared but not yet consumed by the
// kernel.
func (r *Ring) SQReady() uint32 {
	return r.sq.sqeTail - atomic.LoadUint32(r.sq.head)
}

// SQSpace returns how many more SQEs GetSQE can hand out before Submit.
func (r *Ring) SQSpace() uint32 { return *r.sq.ringEntries - r.SQReady() }

// flush publishes all prepared SQEs to the kernel (store-release of the SQ
// tail) and returns how many are waiting for the kernel to consume them.
func (r *Ring) flush() uint32 {
	sq := r.sq
	if sq.sqeHead != sq.sqeTail {
		sq.sqeHead = sq.sqeTail
		atomic.StoreUint32(sq.tail, sq.sqeTail)
	}
	return sq.sqeTail - atomic.LoadUint32(sq.head)
}

// needsGetEvents reports whether an enter must carry IORING_ENTER_GETEVENTS
// to run deferred task work or flush an overflowed CQ.
func (r *Ring) needsGetEvents() bool {
	if r.flags&IORING_SETUP_IOPOLL != 0 {
		return true
	}
	sqf := atomic.LoadUint32(r.sq.flags)
	if r.flags&IORING_SETUP_DEFER_TASKRUN != 0 && r.flags&IORING_SETUP_TASKRUN_FLAG == 0 {
		// No IORING_SQ_TASKRUN hint on this ring: completions only become
		// visible through a GETEVENTS enter, so always ask.
		return true
	}
	return sqf&(IORING_SQ_TASKRUN|IORING_SQ_CQ_OVERFLOW) != 0
}

func (r *Ring) enter(toSubmit, minComplete, flags uint32, arg unsafe.Pointer, argSz uintptr, blocking bool) (int, error) {
	r.enters.Store(r.enters.Load() + 1) // single writer
	var n uintptr
	var errno syscall.Errno
	if blocking {
		n, _, errno = unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit),
			uintptr(minComplete), uintptr(flags), uintptr(arg), argSz)
	} else {
		n, _, errno = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(toSubmit),
			uintptr(minComplete), uintptr(flags), uintptr(arg), argSz)
	}
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func (r *Ring) enterErr(toSubmit, minComplete, flags uint32, err error) error {
	return fmt.Errorf("io_uring_enter(fd=%d, to_submit=%d, min=%d, flags=%#x): %w",
		r.fd, toSubmit, minComplete, flags, err)
}

// Submit hands every prepared SQE to the kernel with exactly one
// io_uring_enter(to_submit=n, min_complete=0) and returns how many the kernel
// consumed. The enter carries IORING_ENTER_GETEVENTS when the ring needs it
// to make completions visible (always on DEFER_TASKRUN rings; on TASKRUN_FLAG
// rings when IORING_SQ_TASKRUN is raised; on any ring with an overflowed CQ).
//
// If nothing is prepared and no task work is needed, Submit makes no syscall
// and returns (0, nil). EINTR, EAGAIN and EBUSY are reported as (0, nil):
// the SQEs stay published and the next round submits them.
//
// Submit never waits, so it uses RawSyscall (no scheduler hand-off). Inline
// work (e.g. buffered file writes issued from the enter) still runs on this
// thread; use SubmitAndWait when you mean to block.
func (r *Ring) Submit() (int, error) {
	n := r.flush()
	var flags uint32
	if r.needsGetEvents() {
		flags |= IORING_ENTER_GETEVENTS
	}
	if r.flags&IORING_SETUP_SQPOLL != 0 {
		// The SQ thread consumes the SQ; enter only to wake it.
		if n > 0 && atomic.LoadUint32(r.sq.flags)&IORING_SQ_NEED_WAKEUP != 0 {
			flags |= IORING_ENTER_SQ_WAKEUP
		}
		if flags == 0 {
			return int(n), nil
		}
	} else if n == 0 && flags == 0 {
		return 0, nil
	}
	got, err := r.enter(n, 0, flags, nil, 0, false)
	if err != nil {
		if retryable(err) {
			return 0, nil
		}
		return 0, r.enterErr(n, 0, flags, err)
	}
	return got, nil
}

func retryable(err error) bool {
	return err == unix.EINTR || err == unix.EAGAIN || err == unix.EBUSY
}

// SubmitAndWait makes exactly one io_uring_enter that submits whatever is
// prepared and waits until at least waitNr CQEs are ready or timeout has
// passed. timeout < 0 waits without a time limit; timeout >= 0 uses
// IORING_ENTER_EXT_ARG with a timespec (kernel 5.11+). It returns how many
// SQEs the kernel consumed. ETIME and EINTR (and EAGAIN/EBUSY, as in Submit)
// return a nil error: look at CQReady/PeekCQEs for what actually arrived.
//
// It blocks in the kernel, so it goes through syscall.Syscall6 and the Go
// scheduler hands this thread's P to other goroutines meanwhile.
func (r *Ring) SubmitAndWait(waitNr uint32, timeout time.Duration) (int, error) {
	n := r.flush()
	flags := IORING_ENTER_GETEVENTS
	var arg unsafe.Pointer
	var argSz uintptr
	if timeout >= 0 {
		if r.features&IORING_FEAT_EXT_ARG == 0 {
			return 0, r.enterErr(n, waitNr, flags|IORING_ENTER_EXT_ARG, unix.EOPNOTSUPP)
		}
		r.ts = unix.NsecToTimespec(int64(timeout))
		r.arg = getEventsArg{ts: uint64(uintptr(unsafe.Pointer(&r.ts)))}
		flags |= IORING_ENTER_EXT_ARG
		arg, argSz = unsafe.Pointer(&r.arg), unsafe.Sizeof(r.arg)
	}
	if r.flags&IORING_SETUP_SQPOLL != 0 && n > 0 &&
		atomic.LoadUint32(r.sq.flags)&IORING_SQ_NEED_WAKEUP != 0 {
		flags |= IORING_ENTER_SQ_WAKEUP
	}
	got, err := r.enter(n, waitNr, flags, arg, argSz, true)
	runtime.KeepAlive(r)
	if err != nil {
		if err == unix.ETIME || retryable(err) {
			return 0, nil
		}
		return 0, r.enterErr(n, waitNr, flags, err)
	}
	return got, nil
}

// CQReady returns the number of CQEs ready to be read by PeekCQEs.
func (r *Ring) CQReady() uint32 {
	return atomic.LoadUint32(r.cq.tail) - *r.cq.head
}

// PeekCQEs copies up to len(out) ready CQEs into out, then advances the CQ
// head once (store-release) so the kernel may reuse those slots. It makes no
// syscall and returns the number copied. On a DEFER_TASKRUN ring completions
// appear only after an enter with GETEVENTS (Submit or SubmitAndWait).
func (r *Ring) PeekCQEs(out []CQE) int {
	head := *r.cq.head // we are the only writer of head
	ready := atomic.LoadUint32(r.cq.tail) - head
	n := uint32(len(out))
	if ready < n {
		n = ready
	}
	if n == 0 {
		return 0
	}
	mask := *r.cq.ringMask
	for i := uint32(0); i < n; i++ {
		c := &r.cqes[((head+i)&mask)<<r.cqShift]
		out[i] = CQE{UserData: c.UserData, Res: c.Res, Flags: c.Flags}
	}
	atomic.StoreUint32(r.cq.head, head+n)
	return int(n)
}

// Overflow reports whether completions overflowed the CQ: the kernel is
// holding back CQEs (IORING_SQ_CQ_OVERFLOW; the next GETEVENTS enter flushes
// them) or has dropped some (the CQ overflow counter is non-zero).
func (r *Ring) Overflow() bool {
	return atomic.LoadUint32(r.sq.flags)&IORING_SQ_CQ_OVERFLOW != 0 ||
		atomic.LoadUint32(r.cq.overflow) != 0
}

// RegisterEventFd makes the kernel signal eventfd fd whenever CQEs are
// posted. On a DEFER_TASKRUN ring the CQEs still need a GETEVENTS enter to
// become visible after the eventfd fires.
func (r *Ring) RegisterEventFd(fd int) error {
	r.efd = int32(fd) // the kernel reads an s32
	_, errno := r.g.Register(r.fd, IORING_REGISTER_EVENTFD, unsafe.Pointer(&r.efd), 1)
	runtime.KeepAlive(r)
	if errno != 0 {
		return fmt.Errorf("io_uring_register(fd=%d, IORING_REGISTER_EVENTFD, eventfd=%d): %w", r.fd, fd, unix.Errno(errno))
	}
	return nil
}

// UnregisterEventFd removes the eventfd registered by RegisterEventFd.
func (r *Ring) UnregisterEventFd() error {
	_, errno := r.g.Register(r.fd, IORING_UNREGISTER_EVENTFD, nil, 0)
	if errno != 0 {
		return fmt.Errorf("io_uring_register(fd=%d, IORING_UNREGISTER_EVENTFD): %w", r.fd, unix.Errno(errno))
	}
	return nil
}

// Enters returns the exact number of io_uring_enter syscalls this Ring has
// made. It is safe to call from any goroutine.
func (r *Ring) Enters() uint64 { return r.enters.Load() }

// Close unmaps the rings and closes the ring fd. The kernel cancels
// outstanding requests; buffers they referenced must stay alive until Close
// returns. Close is idempotent.
func (r *Ring) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.g.QueueExit()
	r.cqes, r.sqes = nil, nil
	return nil
}
