package uring

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

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

// sqRing points into the mmapped SQ ring. head, flags and dropped are
// written by the kernel, tail by us; mask and entries never change after
// setup, so they are read once.
type sqRing struct {
	head, tail, flags, dropped *uint32
	mask, entries              uint32
	sqes                       unsafe.Pointer // entries * Ring.sqeSize bytes

	// sqeTail counts SQEs handed out by GetSQE; sqeHead the ones published
	// by flush (the ring's tail). Both wrap freely, like the kernel's.
	sqeHead, sqeTail uint32
}

// cqRing points into the mmapped CQ ring. tail, flags and overflow are
// written by the kernel, head by us.
type cqRing struct {
	head, tail, flags, overflow *uint32
	mask, entries               uint32
	cqes                        unsafe.Pointer // entries * Ring.cqeSize bytes
}

// Ring is one io_uring instance. It is NOT safe for concurrent use: every
// method except Enters must be called from the OS thread that called New
// (see the package documentation).
type Ring struct {
	fd       int
	flags    uint32
	features uint32
	sqeSize  uintptr // 64, or 128 with IORING_SETUP_SQE128
	cqeSize  uintptr // 16, or 32 with IORING_SETUP_CQE32
	sq       sqRing
	cq       cqRing
	mem      ringMem // how the rings were set up and how to tear them down

	enters atomic.Uint64

	probed   bool
	probe    *probe
	probeErr error

	// Kept in the (heap-allocated, never moving) Ring so the addresses
	// handed to io_uring_enter stay valid for the whole syscall.
	arg getEventsArg
	ts  unix.Timespec
	efd int32

	closed bool

	fixed []fixedRegion // registered buffers, by start address
	files uint32        // slots in the registered file table; 0: none
	table []fixedRegion // RegisterBufferTable's slots (empty: end == 0); nil without a table
}

// errClosed is returned by methods called after Close.
var errClosed = fmt.Errorf("uring: ring is closed: %w", unix.EBADF)

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
// when the kernel answers EINVAL (how kernels refuse flags they do not know).
// SetupFlags reports the set that was chosen. Any other error (EPERM from
// kernel.io_uring_disabled, ENOMEM, EMFILE, ENOSYS) is returned at once.
func New(entries uint32) (*Ring, error) {
	return newFirst(entries, setupCandidates, NewWithFlags)
}

// NewWithExtra is New with extra IORING_SETUP_* flags added to every set
// it tries: IORING_SETUP_SQE128 for 128-byte SQEs (URING_CMD payloads of 80
// bytes, as ublk's control commands need), IORING_SETUP_CQE32.
func NewWithExtra(entries uint32, extra uint32) (*Ring, error) {
	return NewSized(entries, 0, extra)
}

// NewSized is NewWithExtra with a CQ of cqEntries entries
// (IORING_SETUP_CQSIZE|IORING_SETUP_CLAMP: the kernel rounds it up to a
// power of two, at least entries, and clamps it to its maximum, 65536 on
// 6.x); 0 keeps the default of twice the SQ. (The giouring ring setup,
// -tags giouring, cannot pass a CQ size and keeps the default.) A CQ sized for the ops in
// flight rather than for one round's submissions is what lets many ops wait
// in the kernel (idle sockets' recvs, polls) without overflowing it.
func NewSized(entries, cqEntries, extra uint32) (*Ring, error) {
	c := make([]uint32, len(setupCandidates))
	for i, f := range setupCandidates {
		c[i] = f | extra
	}
	return newFirst(entries, c, func(n, f uint32) (*Ring, error) {
		if f&unsupportedSetup != 0 {
			return NewWithFlags(n, f)
		}
		return openRing(n, cqEntries, f)
	})
}

func newFirst(entries uint32, candidates []uint32, open func(uint32, uint32) (*Ring, error)) (*Ring, error) {
	var err error
	for _, f := range candidates {
		var r *Ring
		r, err = open(entries, f)
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return nil, err
		}
	}
	return nil, err
}

// unsupportedSetup are IORING_SETUP_* flags that change the ring's memory
// layout or fd handling in ways this package does not implement.
const unsupportedSetup = IORING_SETUP_NO_MMAP | IORING_SETUP_REGISTERED_FD_ONLY | IORING_SETUP_NO_SQARRAY

// NewWithFlags sets up a ring with exactly the given IORING_SETUP_* flags,
// without any fallback. IORING_SETUP_SQE128 and IORING_SETUP_CQE32 give
// 128-byte SQEs and 32-byte CQEs (see SQESize, CQESize). NO_MMAP,
// REGISTERED_FD_ONLY and NO_SQARRAY are refused with EOPNOTSUPP.
func NewWithFlags(entries uint32, flags uint32) (*Ring, error) {
	if flags&unsupportedSetup != 0 {
		return nil, fmt.Errorf("uring: setup flags %s: not supported by this package: %w",
			SetupFlagsString(flags&unsupportedSetup), unix.EOPNOTSUPP)
	}
	return openRing(entries, 0, flags)
}

// entrySizes returns the SQE and CQE sizes a ring with these flags has.
func entrySizes(flags uint32) (sqeSize, cqeSize uintptr) {
	sqeSize, cqeSize = unsafe.Sizeof(SQE{}), unsafe.Sizeof(cqe{})
	if flags&IORING_SETUP_SQE128 != 0 {
		sqeSize *= 2
	}
	if flags&IORING_SETUP_CQE32 != 0 {
		cqeSize *= 2
	}
	return sqeSize, cqeSize
}

// checkRing verifies what the kernel (or giouring) set up before the ring is
// used: sizes that are powers of two with matching masks, and indices that
// start at zero.
func (r *Ring) checkRing() error {
	sq, cq := &r.sq, &r.cq
	if sq.entries == 0 || sq.entries&(sq.entries-1) != 0 || sq.mask != sq.entries-1 ||
		cq.entries == 0 || cq.entries&(cq.entries-1) != 0 || cq.mask != cq.entries-1 {
		return fmt.Errorf("uring: ring fd %d: inconsistent sizes (sq entries=%d mask=%#x, cq entries=%d mask=%#x)",
			r.fd, sq.entries, sq.mask, cq.entries, cq.mask)
	}
	if *sq.head != 0 || *sq.tail != 0 || *cq.head != 0 || *cq.tail != 0 {
		return fmt.Errorf("uring: ring fd %d: new ring has non-zero indices", r.fd)
	}
	return nil
}

// SetupFlags returns the IORING_SETUP_* flags the ring was created with.
func (r *Ring) SetupFlags() uint32 { return r.flags }

// Features returns the IORING_FEAT_* bits the kernel reported at setup.
func (r *Ring) Features() uint32 { return r.features }

// Fd returns the ring's file descriptor.
func (r *Ring) Fd() int { return r.fd }

// SQEntries returns the SQ size (a power of two).
func (r *Ring) SQEntries() uint32 { return r.sq.entries }

// CQEntries returns the CQ size.
func (r *Ring) CQEntries() uint32 { return r.cq.entries }

// SQESize returns the size of one SQE slot: 64 bytes, or 128 on an
// IORING_SETUP_SQE128 ring (the extra 64 bytes extend the URING_CMD command
// area).
func (r *Ring) SQESize() int { return int(r.sqeSize) }

// CQESize returns the size of one CQE slot: 16 bytes, or 32 on an
// IORING_SETUP_CQE32 ring.
func (r *Ring) CQESize() int { return int(r.cqeSize) }

// OpSupported reports whether the kernel supports opcode op, using
// IORING_REGISTER_PROBE once and caching the answer. It returns false if
// probing itself fails (see ProbeErr).
func (r *Ring) OpSupported(op uint8) bool {
	if !r.probed && !r.closed {
		r.probed = true
		p := new(probe)
		nr := uint32(len(p.ops))
		_, errno := ioUringRegister(r.fd, IORING_REGISTER_PROBE, unsafe.Pointer(p), nr)
		if errno != 0 {
			r.probeErr = sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_PROBE, nr_ops=%d)", r.fd, nr)
		} else {
			r.probe = p
		}
	}
	p := r.probe
	if p == nil || op > p.lastOp || int(op) >= int(p.opsLen) {
		return false
	}
	return p.ops[op].op == op && p.ops[op].flags&ioUringOpSupported != 0
}

// ProbeErr returns the error of the probe OpSupported ran, if any.
func (r *Ring) ProbeErr() error { return r.probeErr }

// GetSQE returns the next free SQE, fully zeroed (all SQESize bytes), or nil
// when the SQ is full (Submit, then retry) or the ring is closed. The SQE
// belongs to the SQ ring; prepare it right away and do not keep the pointer
// after the next Submit/SubmitAndWait.
func (r *Ring) GetSQE() *SQE {
	sq := &r.sq
	if r.closed || sq.sqeTail-atomic.LoadUint32(sq.head) >= sq.entries {
		return nil
	}
	p := r.sqeAt(sq.sqeTail)
	clear(unsafe.Slice((*byte)(p), r.sqeSize))
	sq.sqeTail++
	return (*SQE)(p)
}

// LastSQE returns the SQE GetSQE handed out last, while it is still
// unpublished (before the next Submit), or nil: a caller can add flags
// (IOSQE_IO_LINK) to an entry that a helper filled.
func (r *Ring) LastSQE() *SQE {
	if r.closed || r.sq.sqeTail == r.sq.sqeHead {
		return nil
	}
	return (*SQE)(r.sqeAt(r.sq.sqeTail - 1))
}

// sqeAt returns the slot SQ index i (free-running) maps to. The SQ array
// maps index i to slot i (set up at creation), so slot = i & mask.
func (r *Ring) sqeAt(i uint32) unsafe.Pointer {
	return unsafe.Add(r.sq.sqes, uintptr(i&r.sq.mask)*r.sqeSize)
}

// cqeAt returns CQ index i's entry (free-running index).
func (r *Ring) cqeAt(i uint32) *cqe {
	return (*cqe)(unsafe.Add(r.cq.cqes, uintptr(i&r.cq.mask)*r.cqeSize))
}

// SQReady returns the number of SQEs prepared but not yet consumed by the
// kernel.
func (r *Ring) SQReady() uint32 {
	if r.closed {
		return 0
	}
	return r.sq.sqeTail - atomic.LoadUint32(r.sq.head)
}

// SQSpace returns how many more SQEs GetSQE can hand out before Submit.
func (r *Ring) SQSpace() uint32 {
	if r.closed {
		return 0
	}
	return r.sq.entries - r.SQReady()
}

// flush publishes all prepared SQEs to the kernel (store-release of the SQ
// tail, after the plain stores that filled them) and returns how many are
// waiting for the kernel to consume them (load-acquire of the SQ head, which
// the kernel advances after it has read the entries).
func (r *Ring) flush() uint32 {
	sq := &r.sq
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
	return sysErr(errnoOf(err), "io_uring_enter(fd=%d, to_submit=%d, min=%d, flags=%#x)",
		r.fd, toSubmit, minComplete, flags)
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
	if r.closed {
		return 0, errClosed
	}
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
	if r.closed {
		return 0, errClosed
	}
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
	if r.closed {
		return 0
	}
	return atomic.LoadUint32(r.cq.tail) - *r.cq.head
}

// PeekCQEs copies up to len(out) ready CQEs into out, then advances the CQ
// head once (store-release) so the kernel may reuse those slots. It makes no
// syscall and returns the number copied. On a DEFER_TASKRUN ring completions
// appear only after an enter with GETEVENTS (Submit or SubmitAndWait).
func (r *Ring) PeekCQEs(out []CQE) int {
	if r.closed {
		return 0
	}
	head := *r.cq.head                           // we are the only writer of head
	ready := atomic.LoadUint32(r.cq.tail) - head // acquire: the CQEs up to tail are written
	n := uint32(len(out))
	if ready < n {
		n = ready
	}
	if n == 0 {
		return 0
	}
	for i := uint32(0); i < n; i++ {
		c := r.cqeAt(head + i)
		out[i] = CQE{UserData: c.userData, Res: c.res, Flags: c.flags}
	}
	atomic.StoreUint32(r.cq.head, head+n) // release: we are done reading them
	return int(n)
}

// Overflow reports whether completions overflowed the CQ: the kernel is
// holding back CQEs (IORING_SQ_CQ_OVERFLOW; the next GETEVENTS enter flushes
// them) or has dropped some (the CQ overflow counter is non-zero).
func (r *Ring) Overflow() bool {
	if r.closed {
		return false
	}
	return atomic.LoadUint32(r.sq.flags)&IORING_SQ_CQ_OVERFLOW != 0 ||
		atomic.LoadUint32(r.cq.overflow) != 0
}

// OverflowPending reports whether the kernel is holding CQEs that did not
// fit in the CQ (IORING_SQ_CQ_OVERFLOW, on IORING_FEAT_NODROP kernels):
// reap the CQ, then Submit (its enter carries GETEVENTS, which moves them
// into the CQ) and reap again.
func (r *Ring) OverflowPending() bool {
	if r.closed {
		return false
	}
	return atomic.LoadUint32(r.sq.flags)&IORING_SQ_CQ_OVERFLOW != 0
}

// Dropped returns the number of CQEs the kernel could not post at all (the
// CQ overflow counter; non-zero only without NODROP or when the kernel could
// not allocate an overflow entry).
func (r *Ring) Dropped() uint32 {
	if r.closed {
		return 0
	}
	return atomic.LoadUint32(r.cq.overflow)
}

// RegisterEventFd makes the kernel signal eventfd fd whenever CQEs are
// posted. On a DEFER_TASKRUN ring the CQEs still need a GETEVENTS enter to
// become visible after the eventfd fires.
func (r *Ring) RegisterEventFd(fd int) error {
	if r.closed {
		return errClosed
	}
	r.efd = int32(fd) // the kernel reads an s32
	_, errno := ioUringRegister(r.fd, IORING_REGISTER_EVENTFD, unsafe.Pointer(&r.efd), 1)
	runtime.KeepAlive(r)
	if errno != 0 {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_EVENTFD, eventfd=%d)", r.fd, fd)
	}
	return nil
}

// UnregisterEventFd removes the eventfd registered by RegisterEventFd.
func (r *Ring) UnregisterEventFd() error {
	if r.closed {
		return errClosed
	}
	_, errno := ioUringRegister(r.fd, IORING_UNREGISTER_EVENTFD, nil, 0)
	if errno != 0 {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_UNREGISTER_EVENTFD)", r.fd)
	}
	return nil
}

// Enters returns the exact number of io_uring_enter syscalls this Ring has
// made. It is safe to call from any goroutine.
func (r *Ring) Enters() uint64 { return r.enters.Load() }

// Close unmaps the rings and the SQE array and closes the ring fd. The
// kernel cancels outstanding requests; buffers they referenced must stay
// alive until Close returns. After Close, GetSQE returns nil, PeekCQEs 0 and
// Submit an error wrapping EBADF. Close is idempotent; it reports the first
// munmap or close failure.
func (r *Ring) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.mem.release(r.fd)
	r.sq, r.cq = sqRing{}, cqRing{}
	return err
}
