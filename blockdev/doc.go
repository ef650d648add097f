// Package blockdev serves userspace block devices (/dev/abuseN, kernel
// module kmod/abuse.ko) from a Backend, on the uio engine.
//
// # Serve model
//
// A device has one or more hardware queues. Serve gives each queue its own
// uio.Loop (one OS thread) and runs the queue entirely on that loop's
// goroutine, as a small state machine:
//
//  1. Wait: an OpPoll on the queue fd (IOCB_CMD_POLL on AIO, POLL_ADD on
//     io_uring) is the only thing the queue waits on; it fires when requests
//     are waiting (POLLIN) or the queue no longer serves the device
//     (POLLERR|POLLHUP: removed, replaced, dead).
//  2. Pump: one ABUSE_QUEUE_COMMIT_FETCH ioctl completes every request
//     finished since the last call and fetches every waiting request. Each
//     request is checked (op, range, alignment, size; a bad one completes
//     with -EINVAL or -EIO, never a panic) and handed to the Backend.
//  3. A synchronous backend (RAM) answers inline; its completions go into the
//     next COMMIT_FETCH at once, so a busy queue does one ioctl per batch.
//     An AsyncBackend (File) starts engine ops and returns; their Done
//     completes the request, and the first completion of a round schedules
//     one pump for the next round, which commits all of that round's
//     completions together and fetches what arrived meanwhile.
//
// Many requests are in flight at once on each queue (up to the queue depth);
// completion order is free.
//
// Data moves at most once in the kernel: WRITE data is already in the tag's
// buffer (Request.Buf) when the backend sees it; a READ either fills
// Request.Buf or, for a backend that implements Mapper (RAM), completes with
// the address of its own memory, and the kernel copies straight from there
// into the bio pages. Unallocated RAM reads name a shared zero buffer.
//
// # Lifetime
//
// Server.Close removes the device (the kernel then fails whatever is still
// queued) and stops the queues; Server.Detach stops serving without removing
// it (a device created with ReconnectMs > 0 then holds its I/O for a new
// server, which takes over with Config.Attach and the device's ownership
// token, Server.Token). If the process dies, the kernel ends the server at
// once and the device's I/O fails with EIO; if it stops or hangs, each
// request fails after Config.IOTimeout.
package blockdev
