// Package uio is a batched asynchronous I/O engine for Linux: one
// submission/completion loop with two kernel backends, Linux AIO (package
// aio) and io_uring (package uring).
//
// # Rounds
//
// A Loop runs on its own goroutine, locked to one OS thread. Its life is a
// sequence of rounds:
//
//  1. run the functions other goroutines Posted, and the timers that are due;
//  2. hand every op staged since the last round to the backend;
//  3. flush them to the kernel in ONE syscall (io_submit or io_uring_enter);
//  4. reap the completions that are ready straight from the ring shared
//     with the kernel, without a syscall;
//  5. run each completed op's Done, which may stage more ops for the next
//     round.
//
// Only when a round finds nothing to do does the loop sleep in the kernel
// (io_getevents, or io_uring_enter with GETEVENTS), until a completion, a
// Post or the next timer. So the syscalls a loop makes grow with the number
// of rounds, not the number of ops: a busy loop carrying many connections
// moves hundreds of reads and writes per syscall. Stats counts every syscall
// by kind, so that claim can be checked (the tests check it against strace).
//
// # Starting ops: Handle, Post, Do
//
// The code the loop runs (an op's Done, a function given to Post, a timer)
// is called with a Handle, and only a Handle starts ops (Start,
// StartLinked), cancels them and sets timers (AfterFunc): no locks, no
// syscall, the op goes out with the round's flush. Code on any other
// goroutine has no Handle; it calls Post to run a function on the loop,
// or Do to run one op and wait for it. A doorbell (an eventfd the backend
// keeps a read or poll armed on) wakes a sleeping loop, and costs nothing
// while the loop is busy. Ops from many goroutines posted in the same
// round go to the kernel in the same syscall. A Handle kept and used from
// another goroutine is caught while the loop sleeps (until a Post wakes
// it) or after it exited (ErrNotOnLoop); the other way round, a call that
// waits for the loop (Do through the rounds, DoLinked, Close, the
// registrations) made from the loop's own code fails with ErrWaitOnLoop
// rather than wait for itself. "Submit" is kept for what it is in the kernel's and
// liburing's words: the syscall that hands ops over.
//
// Do takes a context: when it ends, the op is cancelled, and Do returns
// once the op's one completion is in. A Do of a file op (read, write,
// readv, writev, fsync, fdatasync) whose caller is the only goroutine in Do
// has nothing to batch with; handing it to the loop's thread and back would
// cost two thread wake-ups on top of the syscall, so Do makes that one
// syscall on the caller's goroutine instead (Stats.Direct counts them;
// Config.NoDirect turns it off). As soon as two callers overlap, their ops
// go through the loop's rounds again.
//
// # Ownership
//
// An op's buffers belong to the kernel from Start until its Done runs: do
// not read, write, resize or reuse them in between. The engine holds a
// reference to them for that time, so the garbage collector neither frees
// nor (the Go heap being non-moving) moves them. The kernel is never given a
// Go pointer to identify an op: the tag it carries (aio_data, user_data) is
// an OpID, a slab index plus a generation, so a late or duplicate
// completion can never be mistaken for a newer op in the same slot.
//
// Close an fd only after every op on it has completed (OpClose is an op
// like any other): the kernel would otherwise act on whatever file next
// gets that fd number.
//
// # Completion, cancellation, backpressure
//
// Every submitted op completes exactly once: its Done runs once, on the
// loop's goroutine, with the kernel's result (a count, an fd, a poll mask,
// or a negated errno). Cancel does not change that: the Done still runs
// once, with -ECANCELED or with the op's real result if it finished first or
// cannot be stopped (AIO can cancel only polls; a file read in flight
// finishes). Stream ops (OpRecv, OpSend, OpAccept) never complete with
// EAGAIN: the engine waits for readiness with a poll and retries. Nor does
// an op outside a kernel-linked chain complete with an -ECANCELED nobody
// asked for when running it again is the same op (a read or a
// non-appending write at an offset, fsync, fdatasync, fallocate,
// ftruncate, openat, splice): Linux 6.1's io_uring cancels such ops before
// they run when io-wq cannot start a worker thread, and the engine
// resubmits them, up to 8 times (Stats.Resubmitted). A chain the kernel
// cut so ends as cut (see link.go).
//
// Nothing bounds the ops in flight but the kernel's memory: an op that
// waits a long time (the recv of an idle connection, a poll) never keeps
// another op out. Config.Depth sizes one round's submissions (the io_uring
// SQ; a round with more ops makes one more io_uring_enter per Depth ops).
// The io_uring CQ is sized for the ops in flight (Config.MaxInFlight, or 64
// x Depth, at most 65536), and completions beyond it, which the kernel holds
// (NODROP), are moved into it by an extra enter (Stats.CQOverflows). An AIO
// ring holds a completion per op in flight, so the loop adds AIO contexts as
// its ops outgrow the ones it has (Stats.AIOContexts): the first is slept
// on, the others signal its doorbell eventfd (IOCB_FLAG_RESFD), and every
// round reaps all of their rings in userspace. AIO contexts count against
// the system-wide fs.aio-max-nr; when it leaves no room, NewLoop (given
// Config.MaxInFlight) or the first context that cannot be added logs the
// figures and the sysctl to raise, and ops wait in the engine, in order,
// until completions make room: backpressure, not an error.
//
// # Buffer pools
//
// A recv with Op.Pool instead of Op.Buf takes a buffer of a BufferPool only
// when data has arrived, and its Result names it (Result.BufferID,
// BufferPool.Bytes); the caller gives it back with Put once it is done with
// the bytes. Idle connections then hold no buffer: on io_uring (5.19+) the
// pool is a provided buffer ring the kernel selects from; on AIO the engine
// tries the recv with a buffer taken for that attempt, returns it if the
// socket had nothing, and polls before trying again. A recv that finds every
// buffer out waits in the engine for a Put.
//
// A pool recv with Op.Multishot runs until end of stream, an error or a
// cancel, its Done called once per chunk (Result.More): on io_uring 6.0+ one
// RECV the kernel keeps armed, so a chunk costs no SQE; elsewhere the engine
// re-arms it. With Op.Bundle a completion may fill several buffers
// (BufferPool.Bundle lists them), up to the cap Op.Len; Op.Limit ends a
// multishot recv once it has taken that many bytes. On io_uring 6.17+ the
// kernel keeps both (Loop.CapsBundles); elsewhere a capped bundle fills one
// buffer per completion and a limited recv ends after its first, so what a
// recv can hold is bounded the same way on every kernel.
//
// # Registered buffers and files
//
// RegisterBuffers pins a set of buffers once; an io_uring read or write
// inside one goes out as READ_FIXED/WRITE_FIXED. RegisterFile puts an fd in
// io_uring's registered file table (Config.Files slots, created at the
// first registration): every op on that fd then names its slot
// (IOSQE_FIXED_FILE), so the kernel takes the file from the table instead
// of looking the fd up and counting a reference on the file for each op.
// Callers keep using the fd number; Stats.FixedFileOps counts the ops sent
// that way. The table holds its own reference to the file, so an fd must
// be unregistered before it is closed with close(2), or the file stays
// open and a new file that reuses the number is not the one ops reach; an
// OpClose of a registered fd unregisters it itself. AIO has neither: the
// calls succeed and change nothing.
//
// # Chains and deadlines
//
// Handle.StartLinked (and DoLinked from other goroutines) runs ops one
// after the other: each starts when the one before it has completed in
// full, and an op that fails or comes up short cancels the rest, whose
// Dones still run, in order. Any op may carry a deadline, Op.Timeout: when it passes, the
// op is cancelled and completes with -ETIME. Deadlines live in the loop's
// timer heap, like AfterFunc, so they cost no syscall until one fires.
//
// On io_uring a chain of ops the kernel links with the same rules (file
// reads, writes, syncs, polls, close, openat, fallocate, ftruncate) goes to
// the kernel in one io_uring_enter as SQEs with IOSQE_IO_LINK, and a linked
// op's deadline is an IORING_OP_LINK_TIMEOUT, armed by the kernel when the
// op starts: a write and the fdatasync behind it cost one submission, not
// one round each. Chains with a stream op (a short recv or send does not
// break a kernel link, and the engine retries their EAGAIN), a splice, a
// uring_cmd, an op the engine offloads, or more SQEs than the SQ holds, and
// every chain on AIO (which has no links), are kept by the engine, one round
// per op. The rules are the same either way.
//
// # Ops a backend cannot run asynchronously
//
// AIO has no asynchronous openat, fallocate or ftruncate (io_uring before
// 6.9 has no ftruncate). The loop runs such an op as one blocking syscall on
// a goroutine of its own and completes it on the loop like any other; it
// cannot be cancelled, and Stats counts it in Offloaded. The loop's thread
// never blocks on it.
//
// # Backends
//
// Config.Backend chooses "aio", "uring" or "auto" (io_uring where the kernel
// allows it, else AIO). A backend is usable only when the kernel has every
// opcode and feature the engine relies on: for io_uring the opcodes it
// encodes (probed with IORING_REGISTER_PROBE) and IORING_FEAT_EXT_ARG
// (5.11: a wait with a timeout in one io_uring_enter), for AIO
// IOCB_CMD_POLL (4.18). "auto" logs why it fell back; a backend asked for by
// name fails with a *NotSupportedError that names the missing feature and
// matches ErrNotSupported. On AIO, socket reads and writes run inside io_submit
// and their completions are in the ring when it returns, so a round of
// socket I/O costs one syscall in all; polls (IOCB_CMD_POLL) replace epoll;
// accept, connect and close, which AIO lacks, run inline after a poll. On
// io_uring every op has its own opcode and the ring is set up with
// SINGLE_ISSUER and DEFER_TASKRUN where the kernel has them.
//
// A Group runs one Loop per core and hands out loops in turn.
package uio
