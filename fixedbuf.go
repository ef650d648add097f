package uio

import (
	"errors"
	"fmt"
)

// Registered (fixed) buffers. The kernel pins a registered buffer's pages
// once; from then on a read or write (OpRead, OpWrite) whose Buf lies
// entirely inside one goes out as io_uring's READ_FIXED or WRITE_FIXED,
// which saves the kernel pinning and unpinning the pages on every op
// (O_DIRECT I/O pays that per op otherwise). Stats.FixedBufferOps counts
// them. Nothing else changes for the op: Buf is the caller's, as usual.
//
// A loop's buffers are one table in the kernel, shared by two kinds of
// user: RegisterBuffers' set (one per loop; each call replaces it) and
// buffers added one at a time with AddFixedBuffer (any number of users, for
// example one dio arena per loop beside an application's own set). On
// Linux 5.13+ the table is sparse and each change touches only its own
// slots, while ops run. Before 5.13 both fail with ErrNotSupported: the
// only registration there (IORING_REGISTER_BUFFERS) waits for the ring to
// have nothing in flight, which a loop never has.
// AIO has no registered buffers: RegisterBuffers succeeds and changes
// nothing, AddFixedBuffer fails with ErrNotSupported.

// FixedBuffer is one buffer AddFixedBuffer put in a loop's table.
type FixedBuffer struct {
	l    *Loop
	slot uint16
	gen  uint32 // 0: the zero FixedBuffer
}

var errFixedGone = errors.New("not in the loop's registered-buffer table (removed already, or added to another loop)")

// AddFixedBuffer registers b (at most 1 GiB) with the kernel next to the
// loop's other registered buffers, until RemoveFixedBuffer or Close. b's
// memory must stay alive and unmoved until then: memory from mmap, or kept
// reachable. Call it from any goroutine but the loop's (it waits for the
// loop, as Do does). On AIO, and on io_uring before Linux 5.13, the error
// matches ErrNotSupported. A table holds 16384 buffers, RegisterBuffers'
// included.
func (l *Loop) AddFixedBuffer(b []byte) (FixedBuffer, error) {
	var fb FixedBuffer
	err := l.waitOnLoop(func() error {
		slot, gen, err := l.b.addFixed(b)
		fb = FixedBuffer{l: l, slot: slot, gen: gen}
		return err
	})
	if err != nil {
		return FixedBuffer{}, fmt.Errorf("uio: AddFixedBuffer(%d bytes): %w", len(b), err)
	}
	return fb, nil
}

// RemoveFixedBuffer takes fb out of the loop's registered buffers. Ops
// already submitted with it finish with it (the kernel keeps its pages
// pinned until they complete; a kernel-linked chain's members after its
// head never use registered buffers, because the kernel would look them
// up only when it starts them); later ones go out as ordinary reads and
// writes, so b may be unmapped once RemoveFixedBuffer returns and the ops
// using it have completed.
func (l *Loop) RemoveFixedBuffer(fb FixedBuffer) error {
	if fb.l != l {
		return fmt.Errorf("uio: RemoveFixedBuffer: %w", errFixedGone)
	}
	if err := l.waitOnLoop(func() error { return l.b.removeFixed(fb.slot, fb.gen) }); err != nil {
		return fmt.Errorf("uio: RemoveFixedBuffer: %w", err)
	}
	return nil
}

// RegisterBuffers registers bufs with the kernel as the loop's set,
// replacing the set of the previous call (nil or empty: none) and leaving
// the buffers added with AddFixedBuffer alone. Each buffer must be
// non-empty and at most 1 GiB; the set takes at most the table's free
// slots (16384 less what AddFixedBuffer holds). The memory must stay
// alive; no op may be using the old set when it is replaced (its slots
// are reused). On AIO the call succeeds and changes nothing; before Linux
// 5.13 it fails with ErrNotSupported. Call it from any goroutine but
// the loop's (it waits for the loop, as Do does).
func (l *Loop) RegisterBuffers(bufs [][]byte) error {
	if err := l.waitOnLoop(func() error { return l.b.registerBuffers(bufs) }); err != nil {
		return fmt.Errorf("uio: RegisterBuffers(%d buffers): %w", len(bufs), err)
	}
	return nil
}

// waitOnLoop runs fn on the loop's goroutine and waits for it.
func (l *Loop) waitOnLoop(fn func() error) error {
	if err := l.waiting(); err != nil {
		return err
	}
	errc := make(chan error, 1)
	if err := l.Post(func(Handle) { errc <- fn() }); err != nil {
		return err
	}
	return <-errc
}
