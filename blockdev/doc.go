// Package blockdev serves userspace block devices from a Backend, on the
// uio engine, over either of two kernel interfaces (Config.Driver): ABUSE
// (/dev/abuseN, kernel module kmod/abuse.ko) or the kernel's own ublk
// (/dev/ublkbN, ublk_drv, Linux 6.0+; see "ublk" below). The Backend, the
// request checks and the flags mean the same on both.
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
//     Where the module has the WAIT feature, that COMMIT_FETCH also waits
//     in the kernel for the next request (Config.FetchWait, default 10 ms,
//     then back to the poll), so at queue depth 1 a request costs one ioctl
//     rather than a poll wakeup, a fetch and a commit.
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
// Where the module has USER_COPY queues (Config.AbuseCopy "auto", the
// default) and the backend is synchronous and implements WriteMapper
// (RAM), the queue has no per-tag buffers and a WRITE is completed with
// the address where the data belongs: the kernel copies it
// there from the bio before the write completes, so every byte is copied
// once, as in brd. Requests the backend cannot map (across RAM chunks)
// go through one scratch buffer per queue, with ABUSE_QUEUE_COPY moving
// the data between it and the request.
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
//
// # ublk
//
// Over ublk (package blockdev/ublk has the ABI) each queue's loop runs on
// io_uring and keeps one URING_CMD in the kernel per tag: FETCH_REQ at
// start, then COMMIT_AND_FETCH_REQ, which carries a request's result and
// waits for the tag's next request in one command. A round's completions
// stage their commands together: one io_uring_enter commits the batch.
// Control commands (ADD_DEV, SET_PARAMS, START_DEV, STOP_DEV, DEL_DEV) run
// on a separate loop with 128-byte SQEs. Where the kernel grants
// UBLK_F_USER_COPY (6.5+), WRITE data is read from /dev/ublkcN with
// pread(2) into the tag's buffer and READ data written with pwrite(2)
// straight from the backend's memory (Mapper) or the tag's buffer; older
// kernels copy through the per-tag buffers named in the commands.
//
// No ublk recovery flag is set (no UBLK_F_USER_RECOVERY*): when the
// server dies, the kernel cancels its commands, fails the device's I/O
// with EIO and deletes /dev/ublkbN; a new server creates a new device.
// ReconnectMs and Attach are therefore ABUSE-only. Close refuses (EBUSY)
// while the disk is mounted or held exclusively, as on ABUSE; Detach
// deletes it regardless.
//
// # NBD
//
// NBD (DialNBD) is a backend whose blocks live in a remote NBD export
// (package blockdev/nbd has the protocol). Each hardware queue has its own
// TCP connection, bound to that queue's loop on its first request: the
// loop that fetches the kernel's block requests also sends them to the
// server (one gathered sendmsg per batch) and receives the replies (one
// receive always in flight), with no other thread involved. Optional
// operations follow the server's transmission flags through Supporter:
// DISCARD only with NBD_FLAG_SEND_TRIM, WRITE_ZEROES only with
// NBD_FLAG_SEND_WRITE_ZEROES, FLUSH/FUA only with NBD_FLAG_SEND_FLUSH
// (then serve with Config.WriteCache). A connection that breaks fails its
// requests with EIO and is not reconnected.
package blockdev
