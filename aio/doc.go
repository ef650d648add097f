// Package aio is a thin binding to the Linux native asynchronous I/O
// interface (io_setup, io_submit, io_getevents, io_cancel, io_destroy),
// with userspace reaping of the completion ring. It knows nothing about
// any engine built on top of it.
//
// # Model
//
// A Context wraps one kernel AIO context. io_setup returns an
// aio_context_t that is, in fact, the user address of a shared mapping
// holding the completion ring: a 32-byte header (id, nr, head, tail,
// magic, compat and incompat features, header length) followed by nr
// 32-byte io_event slots. The capacity nr is chosen by the kernel and is
// larger than the depth you asked for; Nr reports the real value.
//
// Work is described by Iocb values (the 64-byte struct iocb). A Prep*
// helper zeroes an Iocb and fills it for one operation; the caller then
// sets Data, an opaque tag that comes back in Event.Data. Submit hands
// any number of iocbs to the kernel in ONE io_submit system call.
//
// Completions land in the ring. Reap copies them out in userspace, with
// no system call: it loads tail with acquire semantics, copies the
// events (in two pieces when they wrap at nr) and publishes the new head
// with a release store. It never writes anything but head; the kernel
// reads the ring's id word on every AIO system call. GetEvents
// (io_getevents) is only needed to sleep until something completes. If
// the ring header does not validate at Setup (magic 0xa10a10a1,
// incompat_features 0, header_length 32), UserspaceReap reports false
// and Reap falls back to io_getevents with a zero timeout.
//
// Reaping is single-consumer: a Context must be used by one goroutine at
// a time, and userspace reaping must never overlap with another thread
// sitting in io_getevents on the same context. Counters may be read
// from any goroutine.
//
// # What runs where
//
// PREAD and PWRITE on sockets run synchronously inside io_submit: the
// event is already in the ring when Submit returns, so Ready reports
// true and Reap collects it without sleeping. On an O_NONBLOCK socket
// with nothing to read the event carries -EAGAIN; with RWF_NOWAIT in
// Iocb.RWFlags a blocking socket behaves the same way. WITHOUT either,
// a read or write on a blocking socket blocks inside io_submit. Buffered
// regular-file I/O is also synchronous; O_DIRECT I/O may complete
// later; FSYNC and FDSYNC run on a kernel workqueue and always complete
// later. A PWRITE to a socket whose peer is gone fails with -EPIPE and,
// unless RWF_NOSIGNAL is set, also raises SIGPIPE.
//
// IOCB_CMD_POLL (PrepPoll) is a one-shot readiness wait, like
// EPOLLONESHOT: each completion consumes the iocb and a new wait needs a
// new submission. If the fd is already ready, it completes inside
// io_submit. Event.Res carries the revents, which can contain bits that
// were not requested, so mask it. The kernel always adds POLLERR and
// POLLHUP to the requested mask.
//
// # Cancellation
//
// Cancel (io_cancel) matches the iocb by its user address, so the iocb
// must stay at a fixed address between Submit and Cancel (heap memory or
// an mmapped arena, never a stack value that can move). Only POLL (and
// the rare drivers with a cancel callback) can be cancelled. A
// successful cancel returns nil, and the completion still arrives in the
// ring exactly once with Res 0. Cancelling a read, a write, or an iocb
// that already completed returns an error wrapping EINVAL.
//
// # Backpressure
//
// The kernel hands out ring slots in per-CPU batches, so fewer than
// Nr()-1 operations can be in flight at once. When the ring is full,
// io_submit accepts a prefix of the batch or none at all (EAGAIN).
// Submit reports both as (n, nil) with n < len(cbs): reap, then submit
// cbs[n:] again. Any other failure on the first iocb is returned as
// (0, err), with err wrapping the unix.Errno (use errors.Is); fail that
// iocb and continue with the rest. Operations are never lost.
//
// # Memory
//
// Iocb fields hold raw addresses, invisible to the garbage collector.
// Buffers passed to Prep* helpers must stay alive, unmoved and untouched
// until their completion is reaped (keep a reference; use runtime.Pinner
// or mmapped memory for pointers stored outside the Go heap). The iocb
// itself is only read during io_submit, except that io_cancel needs its
// address, and that the kernel writes 0 into Iocb.Key during io_submit,
// so iocbs must be writable. The iovec array of PREADV/PWRITEV is copied
// at submit time; only the buffers it points to must outlive the call.
//
// The package supports little-endian 64-bit Linux (amd64, arm64 and
// friends); big-endian targets order aio_key and aio_rw_flags the other
// way round and are rejected at compile time.
package aio
