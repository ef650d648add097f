// Package uring is uio's thin io_uring binding: ring setup and the mmapped
// rings come from github.com/pawelgaczynski/giouring; submission, waiting,
// completion reaping and every SQE encoding are done here.
//
// # The model
//
// An io_uring is two ring buffers shared with the kernel. The submission
// queue (SQ) holds 64-byte SQEs, each describing one operation; the
// completion queue (CQ, twice the SQ size) receives one 16-byte CQE per
// finished operation (several for multishot ops), carrying the SQE's
// user_data, a result (bytes, fd, revents, or -errno) and IORING_CQE_F_*
// flags. A typical loop round is:
//
//	for each op:  s := r.GetSQE(); s.PrepRecv(fd, buf, 0); s.SetData(id)
//	r.Submit()                 // or r.SubmitAndWait(1, timeout) when idle
//	n := r.PeekCQEs(cqes[:])   // no syscall
//	handle cqes[:n]
//
// Preparing SQEs costs no syscalls. Submit and SubmitAndWait each make
// exactly ONE io_uring_enter, however many SQEs are pending: that is the
// batching. PeekCQEs copies ready CQEs and advances the CQ head once per
// batch, again without a syscall. Enters counts the syscalls so tests and
// benchmarks can verify the "one enter per round" claim.
//
// # Setup flags, chosen by probing
//
// New tries IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN (6.1+)
// first: completions are processed only when our thread enters the kernel,
// which batches them and avoids interrupting the loop. If the kernel rejects
// it with EINVAL, New tries IORING_SETUP_COOP_TASKRUN|IORING_SETUP_TASKRUN_FLAG
// (5.19+), then no flags. SetupFlags says which one won; NewWithFlags takes
// an exact set for tests. OpSupported asks the kernel (IORING_REGISTER_PROBE)
// whether an opcode exists.
//
// On a DEFER_TASKRUN ring a completion that happened asynchronously (data
// arrived for a RECV, a timer fired) is NOT visible in the CQ until the
// submitter thread enters with IORING_ENTER_GETEVENTS. Submit therefore
// always enters with GETEVENTS on such a ring, even with nothing to submit.
// On a plain ring with nothing prepared Submit makes no syscall at all; on a
// TASKRUN_FLAG ring (including NewWithFlags(SINGLE_ISSUER|DEFER_TASKRUN|
// TASKRUN_FLAG)) it enters only when the kernel raised IORING_SQ_TASKRUN.
//
// # Thread affinity
//
// SINGLE_ISSUER binds the ring to the OS thread that created it; submitting
// from any other thread fails with EEXIST, and DEFER_TASKRUN work only runs
// on that thread. Go goroutines migrate between threads, so: call
// runtime.LockOSThread, then New, and use the Ring only from that goroutine.
// A Ring is not safe for concurrent use (the single exception is Enters). To
// wake a loop blocked in SubmitAndWait from elsewhere, keep a POLL_ADD armed
// on an eventfd and write to it, or register an eventfd (RegisterEventFd)
// and park on it in the netpoller.
//
// # Why every SQE is zeroed
//
// SQ slots are reused. An SQE field that one opcode ignores is often
// meaningful to another: a POLL_ADD mask lives in the same word as a READ's
// rw_flags, so a stale POLLIN (1) becomes RWF_HIPRI and the READ fails with
// EINVAL. The kernel also rejects many ops whose unused fields are not zero.
// GetSQE therefore hands out a fully zeroed entry, and every Prep* method
// rewrites the whole entry (keeping only UserData and Flags) following the
// kernel's io_uring.h semantics. We deliberately bypass giouring's Prepare*
// helpers: prepareRW leaves rw_flags/addr3 stale, PrepareTimeout stores the
// address of the *pointer*, PrepareLinkTimeout stores a stack address,
// PrepareConnect takes a Go interface, PrepareSendto/PrepareSendZC pass a
// slice header. RegisterFiles* and RegisterEventFd pass 64-bit ints where the
// kernel reads s32; RegisterEventFd is done here with an int32.
//
// # Buffer lifetime
//
// An SQE holds plain addresses. The kernel reads or writes that memory at
// some later time, possibly long after Submit returned, while the Go garbage
// collector cannot see the reference. The caller must keep every buffer,
// iovec array, unix.Timespec and Sockaddr alive and unmodified until the
// operation's CQE has been reaped (or, for multishot ops, until a CQE without
// IORING_CQE_F_MORE). Use heap memory that stays referenced (for example
// from a per-operation slot table) or off-heap memory (mmap); never the
// address of a stack variable that can move or die. No Go pointer is ever
// stored in an SQE by this package except the caller-owned addresses passed
// to Prep*; user_data should be an index, not a pointer. Closing the Ring
// cancels outstanding operations; their memory must stay valid until Close
// returns.
//
// # Errors
//
// Syscall failures are wrapped with the call and its arguments, e.g.
// "io_uring_enter(fd=5, to_submit=3, min=0, flags=0x1): bad file descriptor",
// around a unix.Errno, so errors.Is(err, unix.EINVAL) works. Per-operation
// failures are not Go errors: they arrive as a negative CQE.Res (CQE.Err).
//
// # Building
//
// giouring pull-links syscall.munmap, which Go 1.23+ rejects at link time;
// build and test with GOFLAGS=-ldflags=-checklinkname=0. The mirror of
// giouring's unexported ring fields (layout.go) is verified at init against
// the pinned version.
package uring
