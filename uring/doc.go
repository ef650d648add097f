// Package uring is uio's thin io_uring binding on golang.org/x/sys/unix raw
// syscalls: ring setup (io_uring_setup and the three mmaps), submission,
// waiting, completion reaping, io_uring_register (eventfd, opcode probe,
// registered buffers: whole sets or a sparse table updated slot by slot;
// registered files; provided buffer rings) and every SQE encoding are done
// here, with no cgo and no linker flags.
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
// # Ring memory
//
// io_uring_setup returns an fd and the offsets of every ring field. New maps
// the SQ ring (IORING_OFF_SQ_RING), the CQ ring (IORING_OFF_CQ_RING, or the
// same mapping when the kernel reports IORING_FEAT_SINGLE_MMAP, 5.4+) and
// the SQE array (IORING_OFF_SQES), all MAP_SHARED; Close unmaps them and
// closes the fd. The SQ array maps index i to slot i once at setup. Indices
// are shared with the kernel under the usual protocol: the SQ tail and CQ
// head we write are published with a store-release (sync/atomic), the SQ
// head and CQ tail the kernel writes are read with a load-acquire, so an SQE
// is complete before the kernel can see it and a CQE is read before its slot
// is handed back. Entry sizes are properties of the ring (SQESize: 64, or
// 128 with IORING_SETUP_SQE128; CQESize: 16, or 32 with IORING_SETUP_CQE32),
// so NewWithFlags accepts those flags and indexes the arrays accordingly.
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
// kernel's io_uring.h semantics. (Helpers that set only the fields their op
// needs, as liburing's and giouring's prepare functions do, rely on a zeroed
// slot; giouring's also store wrong addresses for timeouts, connect and
// sendto, which is why none of them is used even in the giouring build.)
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
// Syscall failures are *SysError values naming the call and its
// arguments, e.g. "io_uring_setup(entries=4096,
// flags=SINGLE_ISSUER|DEFER_TASKRUN): EINVAL (invalid argument)" or
// "io_uring_enter(fd=5, to_submit=3, min=0, flags=0x1): EBADF (bad file
// descriptor)"; they unwrap to the unix.Errno, so errors.Is(err,
// unix.EINVAL) works. Per-operation failures are not Go errors: they arrive
// as a negative CQE.Res (CQE.Err).
//
// One -ECANCELED comes from the kernel itself. A request io_uring hands to
// its io-wq worker threads (every fsync and splice, a read or write the file
// cannot do without blocking) waits for a worker; io-wq belongs to the
// submitting thread, and the first request of a kind starts its first
// worker. Linux 6.1 fails to create that thread while the submitting thread
// has a signal pending, which Go's preemption and garbage collector send,
// and after three tries completes the waiting work with -ECANCELED before
// it ran (measured under qemu: 0.6-0.9% of first fsyncs on fresh threads
// with the collector busy; none on 6.12). Such a request may be submitted
// again; package uio does so for the kinds where that is the same request.
//
// # Building
//
// The default build needs nothing beyond the Go toolchain. Building with
// -tags giouring sets the ring up (io_uring_setup, mmaps, munmap) through
// github.com/pawelgaczynski/giouring instead, the library the project started
// on; everything after setup is the same code. That build needs
// -ldflags=-checklinkname=0 on Go 1.23+, because giouring pull-links
// syscall.munmap, and it reads giouring's unexported ring fields through
// mirror structs (layout_giouring.go) verified at init against the pinned
// version.
package uring
