package uio

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Config configures a Loop.
type Config struct {
	// Backend is "auto" (io_uring where usable, else AIO), "aio" or "uring".
	Backend string
	// Depth sizes one round's submissions: the io_uring SQ, and the first
	// AIO context. It does not bound the ops in flight: ops that wait in
	// the kernel for a long time (an idle socket's recv or poll) must never
	// keep other ops out. On io_uring the CQ is sized for the ops in flight
	// (64 x Depth, at most 65536) and overflow beyond it is flushed; on AIO
	// the loop adds contexts as the ops in flight outgrow the ones it has,
	// until fs.aio-max-nr says no (logged with the figures, once; ops then
	// wait in the engine). Default 1024.
	Depth int
	// MaxInFlight is how many ops the loop may have in flight at most, as
	// far as its user knows (a proxy: two per connection it can carry).
	// 0: unknown. On io_uring it sizes the CQ (Depth + MaxInFlight, at
	// most 65536; default 64 x Depth); on AIO, NewLoop warns at once when
	// fs.aio-max-nr leaves no room for that many, naming the sysctl.
	MaxInFlight int
	// Logger receives the loop's rare events (backend chosen, submit
	// errors). Default: no logging.
	Logger *zap.Logger
	// NoDirect makes every Do go through the loop's rounds. By default a
	// Do of a file op (read, write, readv, writev, fsync, fdatasync) whose
	// caller is the only one waiting in Do runs as the one plain syscall
	// on the caller's goroutine: with nobody to batch with, handing it to
	// the loop and back would only add two thread wake-ups.
	NoDirect bool
	// CPUs pins the loop's thread to these CPUs (sched_setaffinity); empty:
	// wherever the scheduler puts it. In a Group, loop i is pinned to
	// CPUs[i%len(CPUs)] alone, so Config{CPUs: []int{0, 1, 2, 3}} gives
	// four loops one CPU each.
	CPUs []int
	// SQE128 sets the io_uring up with 128-byte SQEs, so that an
	// OpUringCmd carries up to 80 bytes (ublk's control commands need
	// that). Ignored by AIO.
	SQE128 bool
	// Files is the size of the io_uring registered file table (see
	// RegisterFile), created at the first RegisterFile: at most that many
	// fds registered at once. 0: DefaultFiles (1024); at most MaxFiles, and
	// the kernel also caps it at RLIMIT_NOFILE. Ignored by AIO.
	Files int
}

// ErrClosed is returned for ops submitted to a loop that is closing.
var ErrClosed = errors.New("uio: loop closed")

// Loop is one submission/completion loop on its own locked OS thread. See
// the package documentation for the model.
type Loop struct {
	b   backend
	log *zap.Logger
	// deliverFn is l.deliver made once: a method value built per call
	// would be a heap allocation per round.
	deliverFn func(OpID, int32, uint32)
	// waitDeliverFn is deliverFn for completions reaped by a sleeping
	// Wait: it marks the loop awake before the first Done runs, so a Post
	// from a Done does not ring the doorbell of a loop that is running.
	waitDeliverFn func(OpID, int32, uint32)
	submitsOnWait bool
	direct        bool // !Config.NoDirect
	files         int  // Config.Files, the registered file table's size

	slots    chunked[slot]
	free     []uint32 // free slot indices
	nslots   uint32
	pending  []uint32 // ops waiting for room in the backend, in order
	inflight int      // ops handed to the backend
	timers   timerHeap
	closing  bool
	later    []func() // loop-internal work for the next round
	// offloading counts ops running as blocking syscalls (offload)
	offloading int
	// pools with a kernel buffer ring, refilled every round
	pools []*BufferPool
	// a kernel-linked chain being staged (prepareChain), kept for reuse
	linkIDs []OpID
	linkOps []*Op

	// Posting from other goroutines: a mutex-guarded queue, and a doorbell
	// rung only when the loop is (about to be) asleep.
	mu       sync.Mutex
	posted   []posted
	spare    []posted
	shut     bool // under mu: the loop has run its last posted function
	sleeping atomic.Bool
	closed   atomic.Bool // Close has been called
	tid      int         // the loop's thread (gettid), set before NewLoop returns
	exited   atomic.Bool // the loop has run its last code (see Handle)
	done     chan struct{}

	lastYield time.Time // the last runtime.Gosched (see yieldEvery)

	doing   atomic.Int32 // goroutines inside Do
	doWakes []*doWaiter  // Do calls completed this round, woken at its end

	stats loopStats
}

// posted is a function queued for the loop: a user's (Post), which gets the
// Handle, or the engine's own (postInternal).
type posted struct {
	user   func(Handle)
	engine func()
}

type slotState uint8

const (
	slotFree      slotState = iota
	slotPending             // queued in the engine, not yet in the backend
	slotKernel              // handed to the backend
	slotTimer               // an OpTimeout waiting in the timer heap
	slotOffloaded           // running as a blocking syscall on a goroutine of its own
	slotLinked              // waiting in a chain for the op before it (StartLinked)
	slotHeld                // completed in a kernel-linked chain, its Done waiting for the op before it
	slotPoolWait            // a pool recv waiting for a buffer to come back (BufferPool)
)

type slot struct {
	op    Op
	gen   uint32
	state slotState
	// polling: the backend is running a readiness poll for this op (after
	// the op itself found nothing to do); the op is retried when it fires.
	polling bool
	cancel  bool
	pollOp  *Op // allocated at the slot's first poll, kept for its next ones
	timer   *Timer
	// next is the op that waits for this one in a chain (StartLinked).
	next OpID
	// kchain: the op is a member of a chain the kernel links (link.go):
	// it is staged with the op before it and its Timeout is a
	// LINK_TIMEOUT. klink: next went to the kernel linked to this op.
	// behind: its predecessor's Done has not run, so its own waits
	// (slotHeld, with heldRes and heldFlags) to keep Dones in order.
	kchain, klink, behind bool
	heldRes               int32
	heldFlags             uint32
	// deadline cancels the op when its Op.Timeout passes; timedOut turns
	// that cancellation's -ECANCELED into -ETIME.
	deadline *Timer
	timedOut bool
	// poolBuf is 1 + the pool buffer the engine gave this recv for its
	// attempt (pools without a kernel ring); 0: none.
	poolBuf uint32
	// kernelCancels counts the times the kernel ended this op with
	// -ECANCELED nobody asked for, and the engine ran it again
	// (rerunsAfterKernelCancel).
	kernelCancels uint8
}

// NewLoop starts a loop on a new goroutine locked to its OS thread and
// returns once the backend is open on that thread.
func NewLoop(cfg Config) (*Loop, error) {
	if cfg.Depth <= 0 {
		cfg.Depth = 1024
	}
	if err := cfg.checkFiles(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	l := &Loop{log: log, done: make(chan struct{}), direct: !cfg.NoDirect, files: cfg.Files}
	errc := make(chan error, 1)
	go func() {
		// A SINGLE_ISSUER ring belongs to the thread that created it, and
		// the loop never gives its thread back.
		runtime.LockOSThread()
		l.tid = unix.Gettid()
		if err := pinThread(cfg.CPUs); err != nil {
			errc <- err
			close(l.done)
			return
		}
		b, err := chooseBackend(cfg, log)
		if err != nil {
			errc <- err
			close(l.done)
			return
		}
		l.b = b
		l.deliverFn = l.deliver
		l.waitDeliverFn = func(id OpID, res int32, flags uint32) {
			if l.sleeping.Load() {
				l.sleeping.Store(false)
			}
			l.deliver(id, res, flags)
		}
		l.submitsOnWait = b.SubmitsOnWait()
		l.stats.backend = b.Name()
		errc <- nil
		l.run()
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	log.Debug("uio loop started", zap.String("backend", l.b.Name()), zap.Int("depth", cfg.Depth))
	return l, nil
}

// Backend returns the name of the backend the loop runs on.
func (l *Loop) Backend() string { return l.stats.backend }

// CapsBundles reports whether a multishot Bundle recv with a cap (Op.Len)
// fills several pool buffers per completion on this loop: io_uring on
// Linux 6.17+, found by uring.ProbeRecvCap when the loop started.
// Elsewhere such a recv fills one buffer per completion, so a caller may
// pick large buffers there and small ones here.
func (l *Loop) CapsBundles() bool { return l.b.capsBundles() }

// startOp is Handle.Start.
func (l *Loop) startOp(op Op) (OpID, error) {
	if err := op.validate(); err != nil {
		return 0, err
	}
	if l.closing {
		return 0, ErrClosed
	}
	if op.Pool != nil && op.Pool.l != l {
		return 0, fmt.Errorf("uio: recv fd %d: the BufferPool belongs to another loop", op.Fd)
	}
	id, s := l.newSlot(op)
	if op.Kind == OpTimeout {
		s.state = slotTimer
		s.timer = l.addTimer(op.Timeout, func() {
			s.timer = nil
			l.finish(id, s, -int32(unix.ETIME), 0)
		}, nil)
		return id, nil
	}
	l.start(id, s)
	return id, nil
}

// newSlot takes a slot for op.
func (l *Loop) newSlot(op Op) (OpID, *slot) {
	idx := l.alloc()
	s := l.slots.at(idx)
	s.op = op
	l.stats.cur.opsStarted++
	return makeOpID(idx, s.gen), s
}

// start queues an op for the backend and arms its deadline, if it has one.
func (l *Loop) start(id OpID, s *slot) {
	s.state = slotPending
	l.pending = append(l.pending, id.index())
	if d := s.op.Timeout; d > 0 && !s.kchain { // a kernel chain's is a LINK_TIMEOUT
		s.deadline = l.addTimer(d, func() {
			s.deadline = nil
			if !s.cancel { // a cancel asked for before the deadline stays a cancel
				s.timedOut = true
			}
			l.cancel(id)
		}, nil)
	}
}

func (l *Loop) alloc() uint32 {
	if n := len(l.free); n > 0 {
		idx := l.free[n-1]
		l.free = l.free[:n-1]
		return idx
	}
	idx := l.nslots
	l.nslots++
	return idx
}

// cancel is Handle.Cancel.
func (l *Loop) cancel(id OpID) {
	s := l.lookup(id)
	if s == nil || s.cancel {
		return
	}
	s.cancel = true
	switch s.state {
	case slotPending:
		// Still ours: the next stage completes it, and it never reaches
		// the kernel.
	case slotTimer:
		s.timer.Stop()
		s.timer = nil
		l.finishLater(id, -int32(unix.ECANCELED))
	case slotLinked:
		// It ends with -ECANCELED when the op before it does
		// (advanceChain), so that the chain's Dones stay in order.
	case slotPoolWait:
		l.finishLater(id, -int32(unix.ECANCELED))
	case slotKernel:
		if err := l.b.Cancel(id); err != nil {
			l.log.Debug("uio: cancel", zap.Uint64("op", uint64(id)), zap.Error(err))
		}
		l.cancelLinked(s)
	case slotHeld:
		l.cancelLinked(s)
	}
}

func (l *Loop) lookup(id OpID) *slot {
	if id&internalTag != 0 || id.index() >= l.nslots {
		return nil
	}
	s := l.slots.at(id.index())
	if s.gen != id.gen() || s.state == slotFree {
		return nil
	}
	return s
}

// finishLater completes an op in this round's dispatch rather than inside
// the caller, so a Done never runs re-entrantly inside Start or Cancel.
func (l *Loop) finishLater(id OpID, res int32) {
	l.later = append(l.later, func() {
		if s := l.lookup(id); s != nil {
			l.finish(id, s, res, 0)
		}
	})
}

func (l *Loop) runLater() {
	for len(l.later) > 0 { // a Done may add more
		fns := l.later
		l.later = nil
		for _, fn := range fns {
			fn()
		}
	}
}

// finish frees the op's slot and runs its Done: the op's one completion.
func (l *Loop) finish(id OpID, s *slot, res int32, flags uint32) {
	if s.deadline != nil {
		s.deadline.Stop()
		s.deadline = nil
	}
	if s.timedOut && res < 0 {
		res = -int32(unix.ETIME) // however the cancellation came back (ECANCELED, EINTR)
	}
	// A chain holds only if this op was neither cancelled nor timed out:
	// an op that finished anyway (a file read in flight on AIO, an
	// offloaded syscall) still ends the chain it was asked to end.
	next, ok := s.next, chainHolds(&s.op, res) && !s.cancel && !s.timedOut
	klink := s.klink
	if p := s.op.Pool; p != nil {
		flags = p.completed(id, s, res, flags)
	}
	done, kind := s.op.Done, s.op.Kind
	s.op = Op{} // drop the buffers: the kernel is done with them
	if s.pollOp != nil {
		*s.pollOp = Op{}
	}
	s.state, s.polling, s.cancel, s.timedOut, s.next, s.poolBuf = slotFree, false, false, false, 0, 0
	s.kchain, s.klink, s.behind, s.kernelCancels = false, false, false, 0
	s.gen = (s.gen + 1) & (1<<31 - 1)
	l.free = append(l.free, id.index())
	l.stats.cur.completions++
	if done != nil {
		done(Handle{l}, Result{ID: id, Kind: kind, Res: res, Flags: flags})
	}
	switch {
	case klink:
		l.predecessorDone(next)
	case next != 0:
		l.advanceChain(next, ok)
	}
}

// deliver is the backends' completion callback.
func (l *Loop) deliver(id OpID, res int32, flags uint32) {
	s := l.lookup(id)
	if s == nil || s.state != slotKernel {
		l.log.Warn("uio: completion for an unknown op", zap.Uint64("op", uint64(id)), zap.Int32("res", res))
		return
	}
	l.inflight--
	if h := testHooks.Load(); h != nil && h.kernelResult != nil {
		res = h.kernelResult(s.op.Kind, res)
	}
	if s.kchain {
		// Linkable kinds are never polled, pooled or retried: the
		// result is final, and the kernel has already run or cancelled
		// the rest of the chain by it.
		if s.behind {
			s.state, s.heldRes, s.heldFlags = slotHeld, res, flags
			return
		}
		l.finish(id, s, res, flags)
		return
	}
	if s.polling {
		s.polling = false
		if s.cancel || res < 0 {
			if s.cancel {
				res = -int32(unix.ECANCELED)
			}
			l.finish(id, s, res, flags)
			return
		}
		l.requeue(s, id) // ready now: run the op itself again
		return
	}
	if res == -int32(unix.ECANCELED) && !s.cancel && !s.timedOut && l.rerunsAfterKernelCancel(&s.op) {
		if s.kernelCancels < maxKernelCancels {
			// Nobody asked for this end: the kernel cancelled the op
			// before it ran, and running it again is the op the caller
			// asked for. Linux 6.1's io-wq does that to the work queued
			// for a worker it could not start: creating the thread fails
			// while the submitting thread has a signal pending (Go's
			// preemption signals, measured under qemu: 0.6-0.9% of the
			// first punted ops of a thread under GC), and after three
			// tries it cancels what was waiting. 6.12 does not.
			s.kernelCancels++
			l.stats.resubmitted.add(1)
			l.requeue(s, id)
			return
		}
		l.log.Warn("uio: the kernel cancelled an op on its own, again and again; giving up",
			zap.Stringer("op", s.op.Kind), zap.Int("runs", int(s.kernelCancels)+1))
	}
	if p := s.op.Pool; p != nil {
		if res == -int32(unix.ENOBUFS) && p.ring != nil {
			if s.cancel {
				// Out of buffers after the caller asked for an end:
				// that is the end it asked for.
				l.finish(id, s, -int32(unix.ECANCELED), flags)
				return
			}
			// The kernel's ring ran dry this round: go again once the
			// ring is refilled, or wait for a buffer to come back.
			l.poolRetry(p, id, s)
			return
		}
		if res == -int32(unix.EAGAIN) && s.poolBuf != 0 && !s.cancel {
			// Nothing to read: the buffer goes back while the engine
			// waits for readiness (below), so an idle socket holds none.
			p.release(uint16(s.poolBuf - 1))
			s.poolBuf, s.op.Buf = 0, nil
		}
	}
	if res == -int32(unix.EAGAIN) && retriesOnEAGAIN(&s.op) {
		if s.cancel {
			// Cancelled while the kernel found nothing to do: the
			// caller asked for an end, and EAGAIN is never a result.
			l.finish(id, s, -int32(unix.ECANCELED), flags)
			return
		}
		// Nothing to read, no room to write, no connection yet: wait for
		// readiness, then try again. The caller never sees EAGAIN.
		events := uint32(unix.POLLIN)
		if s.op.Kind == OpSend || s.op.Kind == OpSendmsg {
			events = unix.POLLOUT
		}
		l.pollFirst(s, events)
		l.requeue(s, id)
		return
	}
	if s.op.Multishot && (res > 0 || flags&ResultMore != 0) {
		if s.op.Limit > 0 && flags&ResultMore == 0 {
			// The kernel counted to the limit, or it cannot and this
			// was the one completion: the end, with its data.
			l.finish(id, s, res, flags)
			return
		}
		l.shot(id, s, res, flags)
		return
	}
	l.finish(id, s, res, flags)
}

// shot delivers one completion of a multishot op that goes on: the kernel
// still has it armed (io_uring's CQE_F_MORE), or the engine arms it again
// (AIO, and io_uring when the kernel ended it for its own reasons, such as
// a full CQ), so that for the caller it ends only at end of stream, an
// error or a cancel.
func (l *Loop) shot(id OpID, s *slot, res int32, flags uint32) {
	armed := flags&ResultMore != 0
	if s.op.Limit > 0 && res > 0 {
		// What is left of the limit, for a re-arm (after ENOBUFS, say)
		// to send the kernel: the op copy is the engine's. Never 0,
		// which would mean none; the kernel ends the recv at 0 itself.
		s.op.Limit = max(s.op.Limit-int(res), 1)
	}
	if p := s.op.Pool; p != nil {
		flags = p.completed(id, s, res, flags)
	}
	if armed {
		l.inflight++ // still the kernel's
	}
	if done := s.op.Done; done != nil {
		done(Handle{l}, Result{ID: id, Kind: s.op.Kind, Res: res, Flags: flags | ResultMore})
	}
	if armed {
		return // a cancel from the Done reaches the kernel, which ends it
	}
	if s.cancel {
		l.finish(id, s, -int32(unix.ECANCELED), 0)
		return
	}
	l.stats.rearms++
	if s.op.Kind == OpRecv {
		// Armed again by the engine: right after a chunk the socket is
		// most likely empty (a request waits for its answer), so wait
		// for readiness first rather than try a recv that finds
		// nothing; a poll of a ready socket completes at once.
		l.pollFirst(s, unix.POLLIN)
	}
	l.requeue(s, id)
}

// pollFirst makes the op's next trip to the backend a readiness poll; the
// op itself runs once it fires.
func (l *Loop) pollFirst(s *slot, events uint32) {
	s.polling = true
	if s.pollOp == nil {
		s.pollOp = new(Op)
	}
	*s.pollOp = Op{Kind: OpPoll, Fd: s.op.Fd, Events: events}
}

func retriesOnEAGAIN(op *Op) bool {
	switch op.Kind {
	case OpRecv, OpSend, OpRecvmsg, OpSendmsg:
		return op.Flags&unix.MSG_DONTWAIT == 0
	case OpAccept:
		return true
	}
	return false
}

// maxKernelCancels bounds the runs of an op the kernel keeps cancelling
// on its own: a retry is for a passing failure, not a loop.
const maxKernelCancels = 8

// rerunsAfterKernelCancel reports whether op, ended with an -ECANCELED the
// engine did not ask for, may simply run again: the kinds io_uring hands
// to its io-wq workers, where that end comes from, and that are the same
// op when repeated. io_uring may have done part of a read or write inline
// before the punt, so one at the file position is not (the position
// moved), nor is an appending write (RWF_APPEND, or an O_APPEND file: the
// part would be appended twice); nor is a close, a connect or a uring_cmd.
// The rerun names op's fd again, as the caller still holds it open (Close
// an fd only after its ops completed).
func (l *Loop) rerunsAfterKernelCancel(op *Op) bool {
	switch op.Kind {
	case OpRead, OpReadv:
		return op.Offset >= 0
	case OpWrite, OpWritev:
		if op.Offset < 0 || op.Flags&unix.RWF_APPEND != 0 {
			return false
		}
		fl, err := unix.FcntlInt(uintptr(op.Fd), unix.F_GETFL, 0) // this path is rare
		l.stats.syscalls.Add(1)
		return err == nil && fl&unix.O_APPEND == 0
	case OpFsync, OpFdatasync, OpFallocate, OpFtruncate, OpOpenat, OpSplice:
		return true
	}
	return false
}

func (l *Loop) requeue(s *slot, id OpID) {
	s.state = slotPending
	l.pending = append(l.pending, id.index())
}

// stage hands pending ops to the backend, in order, until it is full, and
// completes the cancelled ones wherever they stand in the queue, so a
// cancel never waits for room in the kernel.
func (l *Loop) stage() {
	for _, p := range l.pools {
		p.refill()
	}
	kept, full := 0, false
	for i := 0; i < len(l.pending); i++ { // a Done may append to l.pending
		idx := l.pending[i]
		s := l.slots.at(idx)
		id := makeOpID(idx, s.gen)
		if s.cancel {
			l.finish(id, s, -int32(unix.ECANCELED), 0)
			continue
		}
		if p := s.op.Pool; p != nil && !s.polling {
			if p.setup(); p.ring == nil && s.poolBuf == 0 {
				// The engine selects: a buffer for this attempt, or wait.
				bid, ok := p.take()
				if !ok {
					p.wait(id, s)
					continue
				}
				s.poolBuf, s.op.Buf = uint32(bid)+1, p.Bytes(int(bid))
			}
		}
		if s.op.Kind == OpSplice && s.op.Flags&unix.SPLICE_F_NONBLOCK != 0 && !s.polling {
			// Inline: one nonblocking syscall, no io-wq worker (see
			// OpSplice). It completes here, like a cancelled op.
			l.finish(id, s, l.spliceNow(&s.op), 0)
			continue
		}
		if !s.polling && !l.b.native(s.op.Kind) {
			if l.offloading < maxOffloaded {
				l.offload(id, s)
				continue
			}
			// As many blocking syscalls as the loop allows are out:
			// this one waits here, like an op facing a full ring.
			l.pending[kept] = idx
			kept++
			continue
		}
		if !full {
			op := &s.op
			if s.polling {
				op = s.pollOp
			} else if op.Kind == OpClose {
				l.closeFixed(op.Fd)
			}
			err := l.prepare(id, s, op)
			if err == errSQFull {
				// More ops this round than the io_uring SQ holds:
				// hand these to the kernel now and go on.
				l.flush()
				err = l.prepare(id, s, op)
			}
			if err == nil {
				continue
			}
			full = true // errBackendFull: the rest wait for room
		}
		l.pending[kept] = idx
		kept++
	}
	l.pending = l.pending[:kept]
}

// prepare hands an op (and, for the head of a kernel-linked chain, the
// rest of the chain) to the backend.
func (l *Loop) prepare(id OpID, s *slot, op *Op) error {
	if s.kchain {
		return l.prepareChain(id, s)
	}
	if err := l.b.Prepare(id, op); err != nil {
		return err
	}
	s.state = slotKernel
	l.inflight++
	return nil
}

// yieldEvery is how often the loop passes through the Go scheduler.
const yieldEvery = 5 * time.Millisecond

// maxOffloaded bounds the blocking syscalls a loop has out at once (each
// holds an OS thread); more wait in the engine's queue.
const maxOffloaded = 16

// offload runs an op its backend has no asynchronous form of as one
// blocking syscall on a goroutine of its own, and completes it on the loop.
// It counts as in flight, so the loop does not shut down under it (Close
// waits for it); it cannot be cancelled.
func (l *Loop) offload(id OpID, s *slot) {
	s.state = slotOffloaded
	l.inflight++
	l.offloading++
	op := s.op // the goroutine reads its own copy, never the slot
	go func() {
		res := runBlocking(&op)
		l.stats.offloaded.Add(1)
		l.postInternal(func() {
			l.inflight--
			l.offloading--
			if s := l.lookup(id); s != nil && s.state == slotOffloaded {
				l.finish(id, s, res, 0)
			}
		})
	}()
}

// postInternal is Post for the engine's own completions: it never fails,
// because the loop does not shut down while they are outstanding.
func (l *Loop) postInternal(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.posted = append(l.posted, posted{engine: fn})
	if l.sleeping.Load() && l.sleeping.CompareAndSwap(true, false) {
		if err := l.b.Wake(); err != nil {
			l.log.Error("uio: doorbell", zap.Error(err))
		}
	}
}

// Post runs fn on the loop's goroutine at the start of a coming round,
// with the loop's Handle: the way for any other goroutine to start ops,
// cancel them or set timers. It may be called from any goroutine, the
// loop's included; it fails with ErrClosed once the loop has shut down.
func (l *Loop) Post(fn func(Handle)) error {
	if fn == nil {
		return errors.New("uio: Post(nil)")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.shut {
		return ErrClosed
	}
	l.posted = append(l.posted, posted{user: fn})
	// Ring the doorbell only when the loop sleeps or is about to: it sets
	// sleeping before its last look at the queue, so either it sees fn or
	// we see sleeping. A busy loop costs posters no syscall. The wake
	// happens under mu because shutdown sets shut under mu before the
	// backend closes the doorbell: a wake can never land in a closed
	// eventfd, or in whatever file reused its number.
	if l.sleeping.Load() && l.sleeping.CompareAndSwap(true, false) {
		if h := testHooks.Load(); h != nil && h.beforeWake != nil {
			h.beforeWake()
		}
		// fn is queued: report success, or the caller would treat fn as
		// never run (and reuse what it uses) while the loop runs it.
		if err := l.b.Wake(); err != nil {
			l.log.Error("uio: doorbell", zap.Error(err))
		}
	}
	return nil
}

func (l *Loop) runPosted() {
	l.mu.Lock()
	fns := l.posted
	l.posted = l.spare[:0]
	l.mu.Unlock()
	for i, p := range fns {
		if p.user != nil {
			p.user(Handle{l})
		} else {
			p.engine()
		}
		fns[i] = posted{}
	}
	l.spare = fns
}

func (l *Loop) hasPosted() bool {
	l.mu.Lock()
	n := len(l.posted)
	l.mu.Unlock()
	return n > 0
}

// run is the loop: one round per iteration.
//
//	post -> timers -> stage -> flush (1 syscall) -> reap (0 syscalls) -> dispatch
//
// and a sleep in the kernel when the round left nothing for another round
// to stage. On io_uring the flush of a round that goes to sleep rides in the
// sleeping io_uring_enter, so such a round costs one syscall, not two.
func (l *Loop) run() {
	defer close(l.done)
	for {
		l.stats.rounds.add(1)
		l.runPosted()
		now := time.Now()
		l.timers.fire(now)
		if now.Sub(l.lastYield) >= yieldEvery {
			// A goroutine that never passes through the Go scheduler
			// looks stuck to sysmon after 10 ms: from then on it takes
			// the loop's P at every blocking wait and, having found
			// work, polls every 20 us instead of sleeping (measured:
			// 5% of a busy proxy's CPU in sysmon's nanosleeps). One
			// pass through the scheduler every few ms keeps it asleep.
			l.lastYield = now
			runtime.Gosched()
		}
		l.runLater()
		l.stage()
		waiting := len(l.pending) // found the backend full; only completions make room
		if !l.submitsOnWait {
			l.flush()
		}
		reaped := l.b.Reap(l.deliverFn)
		l.runLater()
		if l.closing && l.inflight == 0 && len(l.pending) == 0 && len(l.later) == 0 && !l.hasPosted() {
			l.endRound()
			l.shutdown()
			return
		}
		// Another round first when there is new work to stage: a post, an
		// op a Done submitted or requeued, a deferred completion, or room
		// that completions just made for ops that found the backend full.
		// Whatever is staged goes out now rather than wait for that round.
		if l.hasPosted() || len(l.pending) > waiting || len(l.later) > 0 || (waiting > 0 && reaped > 0) {
			l.flush()
			l.endRound()
			continue
		}
		l.endRound()
		// Nothing to do until a completion, a Post or the next timer.
		l.sleeping.Store(true)
		if h := testHooks.Load(); h != nil && h.sleepEdge != nil {
			h.sleepEdge()
		}
		if l.hasPosted() {
			l.sleeping.Store(false)
			l.flush()
			continue
		}
		timeout := time.Duration(-1)
		if when, ok := l.timers.next(); ok {
			timeout = max(time.Until(when), 0)
		}
		n, _, err := l.b.Wait(timeout, l.waitDeliverFn)
		l.stats.batch(n)
		if err != nil {
			l.log.Error("uio: wait", zap.String("backend", l.b.Name()), zap.Error(err))
		}
		l.sleeping.Store(false)
		l.endRound()
	}
}

// endRound publishes the round's counters, then wakes the Do calls whose
// ops completed in it, so that a Stats read after Do returns counts that op.
func (l *Loop) endRound() {
	l.stats.publish()
	for i, w := range l.doWakes {
		w.ch <- w.out
		l.doWakes[i] = nil
	}
	l.doWakes = l.doWakes[:0]
}

// flush hands the staged ops to the kernel, if there are any.
func (l *Loop) flush() {
	if l.b.Staged() == 0 {
		return
	}
	n, err := l.b.Flush()
	l.stats.batch(n)
	if err != nil {
		l.log.Error("uio: flush", zap.String("backend", l.b.Name()), zap.Error(err))
	}
}

// Close stops the loop: new submissions fail with ErrClosed, every op in
// flight is cancelled and its Done runs (offloaded ops, which cannot be
// cancelled, are waited for), then the backend is closed. It waits for the
// loop to exit, however many goroutines call it at once. From the loop's
// own code it returns ErrWaitOnLoop.
func (l *Loop) Close() error {
	if err := l.waiting(); err != nil {
		return err
	}
	if l.closed.Swap(true) {
		<-l.done
		return nil
	}
	err := l.Post(func(Handle) {
		l.closing = true
		for _, idx := range l.pending {
			l.slots.at(idx).cancel = true
		}
		for i := uint32(0); i < l.nslots; i++ {
			s := l.slots.at(i)
			if s.state == slotKernel || s.state == slotTimer || s.state == slotLinked || s.state == slotPoolWait {
				l.cancel(makeOpID(i, s.gen))
			}
		}
		l.timers.clear() // AfterFunc callbacks that have not run never will
	})
	if err != nil && !errors.Is(err, ErrClosed) {
		return err
	}
	<-l.done
	return nil
}

func (l *Loop) shutdown() {
	// Run what was posted up to now (their Submits get ErrClosed); Post
	// refuses anything later, so no Do is left waiting.
	l.mu.Lock()
	l.shut = true
	l.mu.Unlock()
	if h := testHooks.Load(); h != nil && h.shutdown != nil {
		h.shutdown()
	}
	l.runPosted()
	l.exited.Store(true)
	if err := l.b.Close(); err != nil {
		l.log.Warn("uio: closing backend", zap.Error(err))
	}
}

// Done is closed when the loop has exited.
func (l *Loop) Done() <-chan struct{} { return l.done }

func (l *Loop) String() string {
	return fmt.Sprintf("uio.Loop(%s)", l.Backend())
}

// pinThread binds the calling (locked) thread to cpus.
func pinThread(cpus []int) error {
	if len(cpus) == 0 {
		return nil
	}
	var set unix.CPUSet
	for _, c := range cpus {
		if c < 0 || c >= 1024 {
			return fmt.Errorf("uio: Config.CPUs: CPU %d out of range", c)
		}
		set.Set(c)
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("uio: sched_setaffinity(CPUs %v): %w", cpus, err)
	}
	return nil
}

// spliceNow is a nonblocking OpSplice's one splice(2), on the loop's
// thread; counted in Stats.Other.
func (l *Loop) spliceNow(op *Op) int32 {
	var off, offOut *int64
	if op.Offset >= 0 {
		o := op.Offset
		off = &o
	}
	if op.OffsetOut >= 0 {
		o := op.OffsetOut
		offOut = &o
	}
	l.stats.syscalls.Add(1)
	for {
		n, err := unix.Splice(op.Fd, off, op.FdOut, offOut, min(op.Len, maxRW), int(op.Flags))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return errnoRes(err)
		}
		return int32(n)
	}
}
