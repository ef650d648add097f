package uio

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// Handle is a Loop as the code the loop runs sees it. Only that code gets
// one: an op's Done, a function given to Post and a timer's function are
// called with it. What may run on the loop's goroutine alone (starting
// ops, cancelling them, timers) is on Handle and nowhere else, so code on
// another goroutine has no way to call it by mistake: it uses Post, Do or
// DoLinked, which hand their work to the loop.
//
// A Handle may be kept (a connection's state may hold the one its accept's
// Done got) and used again from code the same loop runs later. Used from any
// other goroutine it is a bug; the engine catches it while the loop sleeps
// in the kernel (from when it decides to sleep until a completion or a Post
// wakes it) and after it has exited, which is where a stray goroutine meets
// an idle loop: methods that return an error return ErrNotOnLoop, the
// others (AfterFunc, Timer.Stop) panic with it. A call that races a running
// round is not caught; the race detector sees it.
//
// The zero Handle belongs to no loop; its methods fail with ErrNotOnLoop.
type Handle struct{ l *Loop }

// ErrNotOnLoop is what a Handle (or a BufferPool's Put, or a Timer's Stop)
// used off its loop's goroutine reports.
var ErrNotOnLoop = errors.New("uio: loop-only call made off the loop's goroutine (from another goroutine, or after the loop exited); use Post or Do")

// Loop returns the loop the handle belongs to (nil for the zero Handle).
func (h Handle) Loop() *Loop { return h.l }

// Start stages op for this round's flush and returns its ID. It never
// blocks and never fails for a full ring: ops beyond what the backend can
// take at once wait in the engine. The op's Done runs once, on the loop,
// with its completion.
func (h Handle) Start(op Op) (OpID, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.l.startOp(op)
}

// StartLinked stages ops as a chain: each starts only after the one
// before it has completed in full, so a write and the fdatasync behind it,
// or a send and the recv of its answer, need one call. An op that fails
// (a negative result) or moves fewer bytes than it asked for (a read,
// write, recv or send that came up short) breaks the chain: the ops after
// it complete with -ECANCELED, each Done still running once, in order.
// Cancelling an op of the chain cancels it and, so, the rest; an op
// cancelled before it started completes, with -ECANCELED, once the op
// before it has, so that the Dones stay in order. Each op's Timeout, if
// set, counts from when that op starts.
//
// On io_uring a chain whose ops the kernel can link with these rules
// (reads, writes, readv, writev, fsync, fdatasync, poll, close, openat,
// fallocate, ftruncate; at most the SQ's size in SQEs) goes to the kernel
// in one submission, as linked SQEs, each deadline an IORING_OP_LINK_TIMEOUT
// after its op. A cancelled op of such a chain that has not started yet
// cannot be held back: the kernel starts it when the op before it
// completes, and the engine's cancel reaches it then, so one that finishes
// at once (a write to the page cache) may keep its real result, as Cancel
// allows. To stop a chain for certain, cancel the op that is running (a
// DoLinked whose context ends cancels every op of its chain, that one
// included). Other chains, and every chain on AIO, are kept by
// the engine: an op goes to the kernel in the round after the one before it
// completed. See link.go for the rule and why.
func (h Handle) StartLinked(ops ...Op) ([]OpID, error) {
	if err := h.check(); err != nil {
		return nil, err
	}
	return h.l.startLinked(ops...)
}

// Cancel asks for the op to end early. Its Done still runs exactly once:
// with -ECANCELED, or with its real result if it finished first or cannot
// be stopped (an AIO file read in flight). Cancelling an ID that has
// already completed does nothing and is no error.
func (h Handle) Cancel(id OpID) error {
	if err := h.check(); err != nil {
		return err
	}
	h.l.cancel(id)
	return nil
}

// AfterFunc runs fn on the loop once d has passed, with the loop's Handle.
// The loop sleeps in the kernel no longer than its nearest timer, so
// timers cost no syscall of their own. Off the loop it panics with
// ErrNotOnLoop.
func (h Handle) AfterFunc(d time.Duration, fn func(Handle)) *Timer {
	if err := h.check(); err != nil {
		panic(err)
	}
	return h.l.addTimer(d, nil, fn)
}

// check reports a Handle used where it cannot be the loop's own code: the
// loop is asleep in the kernel (no Done, Posted function or timer runs
// then) or gone. The load is a plain move on amd64 and arm64.
func (h Handle) check() error {
	if h.l == nil {
		return ErrNotOnLoop
	}
	return h.l.onLoop()
}

// onLoop reports ErrNotOnLoop when the loop cannot be running its own
// code: it sleeps, or it has exited.
func (l *Loop) onLoop() error {
	if l.sleeping.Load() || l.exited.Load() {
		return ErrNotOnLoop
	}
	return nil
}

// ErrWaitOnLoop is what a call that waits for the loop (Do or DoLinked
// going through the loop's rounds, Close, RegisterFile, UnregisterFile,
// RegisterBuffers, AddFixedBuffer, RemoveFixedBuffer) returns when the
// loop's own code makes it: the loop would wait for itself, forever. From
// there, start ops with the Handle.
var ErrWaitOnLoop = errors.New("uio: a call that waits for the loop made from the loop's own goroutine (a Done, a Posted function, a timer), where it would wait forever; use the Handle")

// waiting reports ErrWaitOnLoop when the caller is the loop's own
// goroutine: the loop's goroutine is locked to its thread, and no other
// goroutine runs there, so the thread id tells. One gettid, on paths that
// hand work to the loop's thread and back anyway (tens of microseconds);
// counted in Stats.Other.
func (l *Loop) waiting() error {
	l.stats.syscalls.Add(1)
	if unix.Gettid() == l.tid {
		return ErrWaitOnLoop
	}
	return nil
}
