package uio

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Do runs op from a goroutine other than the loop's and waits for its
// completion. Ops from many goroutines batch into the same rounds.
//
// When ctx ends first, the op is cancelled and Do still waits for its one
// completion, so the op's buffers are free again when Do returns: the
// result is then -ECANCELED with ctx's error, or the op's real result if it
// finished first or cannot be stopped (a file read in flight on AIO).
//
// A file op (read, write, readv or writev at an offset; fsync, fdatasync,
// fallocate, ftruncate) whose caller is the only goroutine in Do runs as
// one plain syscall on the caller's goroutine, unless Config.NoDirect is
// set: with nothing to batch it with, handing it to the loop's thread and
// back would add two thread wake-ups to the syscall it needs anyway. Stats
// counts such ops in Direct. Once started, such an op runs to completion
// whatever ctx does (as a file read in flight on AIO does); a read or write
// at an offset on something that is not seekable goes through the loop,
// and an op with a Timeout always does.
func (l *Loop) Do(ctx context.Context, op Op) (Result, error) {
	if err := op.validate(); err != nil {
		return Result{}, err
	}
	if op.Pool != nil {
		return Result{}, errPoolDo
	}
	if op.Multishot {
		return Result{}, errMultishotDo
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if l.closed.Load() {
		return Result{}, ErrClosed
	}
	alone := l.doing.Add(1) == 1
	defer l.doing.Add(-1)
	if alone && l.direct && op.direct() {
		if r := l.runDirect(&op); r.Res != -int32(unix.ESPIPE) {
			return r, nil
		}
		// Not a seekable file after all (a pipe, a socket): the loop
		// knows how to wait for those.
	}
	if err := l.waiting(); err != nil {
		return Result{}, err
	}
	w := doWaiters.Get().(*doWaiter)
	w.l = l
	w.op = op
	w.op.Done = w.doneFn
	if err := l.Post(w.submitFn); err != nil {
		w.release()
		return Result{}, err
	}
	var out doOutcome
	select {
	case out = <-w.ch:
		w.release()
	case <-ctx.Done():
		// The cancel is posted behind the submit, so it finds the op. The
		// waiter is not reused: the posted cancel reads it later.
		_ = l.Post(w.cancelFn)
		out = <-w.ch
		if out.err == nil && out.r.Res == -int32(unix.ECANCELED) {
			out.err = ctx.Err()
		}
	}
	return out.r, out.err
}

// doWaiter carries one Do to the loop and its result back, with its
// functions bound once so that a Do allocates nothing.
// errPoolDo: a pool buffer is given back on the loop's goroutine, which a
// Do caller is not on.
var errPoolDo = errors.New("uio: Do of a recv with a BufferPool: its buffer is given back with Put on the loop's goroutine; Start it from there (Handle.Start)")

// errMultishotDo: Do waits for one completion; a multishot op has many.
var errMultishotDo = errors.New("uio: Do of a multishot op: it completes many times; Start it from the loop's goroutine (Handle.Start)")

type doWaiter struct {
	l        *Loop
	op       Op
	id       OpID // loop goroutine only
	out      doOutcome
	ch       chan doOutcome
	submitFn func(Handle)
	cancelFn func(Handle)
	doneFn   func(Handle, Result)
}

type doOutcome struct {
	r   Result
	err error
}

var doWaiters = sync.Pool{New: func() any {
	w := &doWaiter{ch: make(chan doOutcome, 1)}
	w.submitFn = func(Handle) {
		id, err := w.l.startOp(w.op)
		if err != nil {
			w.id = 0
			w.ch <- doOutcome{r: Result{Kind: w.op.Kind}, err: err}
			return
		}
		w.id = id
	}
	w.cancelFn = func(Handle) { w.l.cancel(w.id) }
	// The wake waits for the end of the round (Loop.endRound), after the
	// round's counters are published.
	w.doneFn = func(_ Handle, r Result) {
		w.out = doOutcome{r: r}
		w.l.doWakes = append(w.l.doWakes, w)
	}
	return w
}}

func (w *doWaiter) release() {
	w.l, w.op, w.out, w.id = nil, Op{}, doOutcome{}, 0
	doWaiters.Put(w)
}

// direct reports whether Do may run the op as a plain syscall on the
// caller's goroutine: an op on a file that the kernel runs in the caller's
// stead, which can take as long as the storage takes but never waits for a
// peer. Reads and writes must name an offset: at the file position (-1)
// they may be on a pipe or a socket, which can wait forever. An openat can
// block on a FIFO; a deadline needs the loop's timer.
func (op *Op) direct() bool {
	if op.Timeout > 0 {
		return false
	}
	switch op.Kind {
	case OpRead, OpWrite, OpReadv, OpWritev:
		return op.Offset >= 0
	case OpFsync, OpFdatasync, OpFallocate, OpFtruncate:
		return true
	}
	return false
}

// runDirect makes op's one syscall on the calling goroutine.
func (l *Loop) runDirect(op *Op) Result {
	var n int
	var err error
	for {
		n, err = directSyscall(op)
		if err != unix.EINTR {
			break
		}
	}
	l.stats.direct.Add(1)
	r := Result{Kind: op.Kind, Res: int32(n)}
	if err != nil {
		r.Res = errnoRes(err)
	}
	return r
}

func directSyscall(op *Op) (int, error) {
	switch op.Kind {
	case OpRead:
		buf := clampRW(op.Buf)
		if op.Flags != 0 {
			return unix.Preadv2(op.Fd, [][]byte{buf}, op.Offset, int(op.Flags))
		}
		if op.Offset < 0 {
			return unix.Read(op.Fd, buf)
		}
		return unix.Pread(op.Fd, buf, op.Offset)
	case OpWrite:
		buf := clampRW(op.Buf)
		if op.Flags != 0 {
			return unix.Pwritev2(op.Fd, [][]byte{buf}, op.Offset, int(op.Flags))
		}
		if op.Offset < 0 {
			return unix.Write(op.Fd, buf)
		}
		return unix.Pwrite(op.Fd, buf, op.Offset)
	case OpReadv:
		if op.Flags != 0 || op.Offset < 0 {
			return unix.Preadv2(op.Fd, op.Iovecs, op.Offset, int(op.Flags))
		}
		return unix.Preadv(op.Fd, op.Iovecs, op.Offset)
	case OpWritev:
		if op.Flags != 0 || op.Offset < 0 {
			return unix.Pwritev2(op.Fd, op.Iovecs, op.Offset, int(op.Flags))
		}
		return unix.Pwritev(op.Fd, op.Iovecs, op.Offset)
	case OpFsync:
		return 0, unix.Fsync(op.Fd)
	case OpFdatasync:
		return 0, unix.Fdatasync(op.Fd)
	case OpOpenat:
		return unix.Openat(op.Fd, op.Path, int(op.Flags), op.Mode)
	case OpFallocate:
		return 0, unix.Fallocate(op.Fd, op.Mode, op.Offset, int64(op.Len))
	case OpFtruncate:
		return 0, unix.Ftruncate(op.Fd, op.Offset)
	}
	return 0, unix.EOPNOTSUPP
}

// runBlocking is runDirect's syscall for an op the loop hands to a
// goroutine of its own because its backend has no asynchronous form of it
// (openat, fallocate and ftruncate on AIO; ftruncate on io_uring before
// Linux 6.9): it blocks, so it must not run on the loop's thread.
func runBlocking(op *Op) int32 {
	for {
		n, err := directSyscall(op)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return errnoRes(err)
		}
		return int32(n)
	}
}

// maxRW is the kernel's MAX_RW_COUNT (INT_MAX rounded down to a page): no
// read or write moves more in one call, and io_uring's length field is 32
// bits wide. Longer buffers are cut to it, so a read or write of more is a
// short one, as a plain pread(2) would be, never a silently empty one.
const maxRW = 0x7ffff000

func clampRW(b []byte) []byte {
	if len(b) > maxRW {
		return b[:maxRW]
	}
	return b
}

// loopHooks lets tests stop the loop and its posters at chosen points, to
// replay races deterministically. Nil outside tests.
type loopHooks struct {
	sleepEdge  func() // the loop has set sleeping and not yet looked at the posted queue
	beforeWake func() // a poster won the doorbell and is about to ring it
	shutdown   func() // the loop refuses new posts and is about to close its backend
	// beforeAccept: an AIO accept's POLL fired and its accept4 is next
	beforeAccept func()
	// uringRefused: "auto" finds io_uring unusable with this error, as an
	// old kernel would make it
	uringRefused error
	// filesRefused: the registered file table's creation fails with this
	// error, as a kernel before 5.13 would make it
	filesRefused error
	// engineChains: the engine keeps every chain, even where the kernel
	// could link it (to measure one against the other)
	engineChains bool
	// kernelResult rewrites an op's kernel result before the loop looks
	// at it, as a kernel that cancels ops on its own would (Linux 6.1)
	kernelResult func(k OpKind, res int32) int32
}

var testHooks atomic.Pointer[loopHooks]
