package uio

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio/aio"
)

// aioBackend drives a Linux AIO context. Socket reads and writes run inside
// io_submit (they are tried with RWF_NOWAIT, so they never block the loop),
// which puts their completion in the ring before io_submit returns; the
// round then reaps it without a syscall. Readiness is IOCB_CMD_POLL, and the
// ops AIO lacks (accept, connect, close) run inline with one syscall each,
// after a POLL has said they will not block.
type aioBackend struct {
	// ctxs are the loop's AIO contexts. An AIO ring holds a completion for
	// every op in flight, so its size bounds them; the first context is
	// Depth events and the loop adds one (as large as all before it) when
	// the ops in flight outgrow them, so that waiting ops (polls of idle
	// sockets) never keep others out. Only the first context is slept on
	// (io_getevents); iocbs in the others carry IOCB_FLAG_RESFD with the
	// doorbell's eventfd, so their completions wake that sleep like a Post,
	// and every Reap reads all the rings in userspace.
	ctxs []*aioCtx
	cur  int // the context this round's new ops go to, while it has room
	// growErr is set once adding a context failed (fs.aio-max-nr): ops
	// then wait in the engine for room, and the loop logged why, once.
	growErr error
	log     *zap.Logger

	slots  chunked[aioSlot]
	ready  readyQueue
	events []aio.Event
	// published is ctxs' contexts for Counters (any goroutine).
	published atomic.Pointer[[]*aio.Context]

	nosignal uint32 // RWF_NOSIGNAL where the kernel has it (6.15+)
	// sockNowait: the kernel takes RWF_NOWAIT on a socket's PREAD/PWRITE
	// (6.12 does; 6.1 refuses it with EOPNOTSUPP, measured under qemu).
	// Without it a recv or send is one nonblocking recvfrom/sendmsg on the
	// loop's thread per attempt instead of an iocb inside io_submit.
	sockNowait bool
	// blockingPipeLogged: pipeNow has said once why a blocking pipe fails.
	blockingPipeLogged bool

	// The doorbell: a POLL on a nonblocking eventfd stays armed, so Wake's
	// write ends an io_getevents sleep. When it fires, a PREAD that drains
	// the counter and a new POLL go out in the next round's io_submit.
	wakeFd   int
	wakePoll aio.Iocb
	wakeRead aio.Iocb
	wakeBuf  [8]byte
	// wakeArmed is false while the doorbell POLL is not in the kernel;
	// Wait flushes it first so a sleep can always be woken.
	wakeArmed bool

	other atomic.Uint64 // syscalls outside the aio binding; Wake runs on other goroutines
}

type aioSlotKind uint8

const (
	aioRW          aioSlotKind = iota // the iocb is the op itself
	aioPoll                           // OpPoll
	aioAcceptPoll                     // POLLIN on a listener, then accept4
	aioConnectPoll                    // POLLOUT after EINPROGRESS, then SO_ERROR
	aioRecvPoll                       // POLLIN, then recvfrom with the op's MSG_* flags
	aioSendPoll                       // POLLOUT, then sendmsg with the op's MSG_* flags
)

// A PREAD or PWRITE iocb cannot carry MSG_* flags. Recvs and sends that
// have any the engine does not handle itself (MSG_PEEK, MSG_WAITALL,
// MSG_MORE, MSG_OOB, ...) wait for readiness with a POLL and then make the
// socket call inline with their flags, as accept does.
const (
	aioRecvOwnFlags = unix.MSG_DONTWAIT
	aioSendOwnFlags = unix.MSG_DONTWAIT | unix.MSG_NOSIGNAL
)

// aioCtx is one AIO context and the iocbs staged for it.
type aioCtx struct {
	ctx      *aio.Context
	capacity int // engine ops (staged or in the kernel) at most; the doorbell's slots come on top in ctxs[0]
	ops      int // engine ops staged or in the kernel
	staged   []*aio.Iocb
	resfd    bool // its iocbs signal the doorbell eventfd (every context but the first)
}

type aioSlot struct {
	cb        aio.Iocb // stays at this address: io_cancel matches on it
	op        *Op
	ctx       uint8 // index of its context in aioBackend.ctxs
	kind      aioSlotKind
	staged    bool
	cancelled bool
	moved     int // bytes an inline MSG_WAITALL recv has read so far
	iov       []unix.Iovec
}

// aioFullRetry bounds a sleep while the kernel refuses staged iocbs.
const aioFullRetry = time.Millisecond

const (
	aioWakePollTag = internalTag | 1
	aioWakeReadTag = internalTag | 2
	aioReserved    = 2 // ring slots kept for the doorbell
)

// aioMaxContexts bounds the contexts of one loop: with each as large as
// all before it, 16 hold 2^15 times the first.
const aioMaxContexts = 16

func newAIOBackend(depth, maxInFlight int, log *zap.Logger) (*aioBackend, error) {
	if depth < 8 {
		depth = 8
	}
	if log == nil {
		log = zap.NewNop()
	}
	ctx, err := aio.Setup(depth + aioReserved)
	if err != nil {
		return nil, aioSetupError(err, depth+aioReserved)
	}
	b := &aioBackend{ctxs: []*aioCtx{{ctx: ctx, capacity: depth}}, events: make([]aio.Event, 256), log: log}
	b.wakeFd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	b.other.Add(1)
	if err != nil {
		ctx.Destroy()
		return nil, fmt.Errorf("uio: aio doorbell: eventfd: %w", err)
	}
	b.probeSockets()
	// The doorbell is the first POLL: a kernel without IOCB_CMD_POLL
	// refuses it here, not in the middle of the first round.
	b.armDoorbell(false)
	c0 := b.ctxs[0]
	if _, err := c0.ctx.Submit(c0.staged); err != nil {
		b.Close()
		if errors.Is(err, unix.EINVAL) {
			return nil, &NotSupportedError{Backend: BackendAIO, Feature: "IOCB_CMD_POLL (Linux 4.18)", Err: err}
		}
		return nil, fmt.Errorf("uio: aio doorbell: %w", err)
	}
	c0.staged = c0.staged[:0]
	b.wakeArmed = true
	b.publish()
	if maxInFlight > depth {
		if msg := aioRoomFor(maxInFlight - depth); msg != "" {
			log.Warn("uio: aio: "+msg, zap.Int("ops_in_flight_expected", maxInFlight))
		}
	}
	return b, nil
}

// aioRoomFor says, when fs.aio-max-nr leaves no room for n more events
// system-wide, what the figures are and which sysctl raises it; "" when
// there is room (or the figures cannot be read).
func aioRoomFor(n int) string {
	limit, lerr := readProcInt("/proc/sys/fs/aio-max-nr")
	used, uerr := readProcInt("/proc/sys/fs/aio-nr")
	if lerr != nil || uerr != nil || used+n <= limit {
		return ""
	}
	return fmt.Sprintf("fs.aio-max-nr=%d leaves room for %d more AIO events system-wide (%d in use), "+
		"but this loop may need %d more to carry the ops it is expected to have in flight; "+
		"past that its ops wait in the engine. Raise it: sysctl -w fs.aio-max-nr=%d (or run fewer loops)",
		limit, max(limit-used, 0), used, n, used+n+limit/2)
}

// room returns the context a new op goes to, adding one if all are full;
// nil when none has room and none can be added.
func (b *aioBackend) room() *aioCtx {
	if c := b.ctxs[b.cur]; c.ops < c.capacity {
		return c
	}
	// Ops of one round in as few contexts as possible: each context with
	// staged iocbs costs an io_submit.
	for i, c := range b.ctxs {
		if c.ops < c.capacity {
			b.cur = i
			return c
		}
	}
	if b.growErr != nil || len(b.ctxs) == aioMaxContexts {
		return nil
	}
	total := 0
	for _, c := range b.ctxs {
		total += c.capacity
	}
	ctx, err := aio.Setup(total)
	b.other.Add(1)
	if err != nil {
		b.growErr = aioSetupError(err, total)
		b.log.Error("uio: aio: cannot add a context for more ops in flight; ops wait in the engine until some complete",
			zap.Int("in_flight", total), zap.Error(b.growErr))
		return nil
	}
	b.ctxs = append(b.ctxs, &aioCtx{ctx: ctx, capacity: total, resfd: true})
	b.cur = len(b.ctxs) - 1
	b.publish()
	b.log.Debug("uio: aio: context added", zap.Int("contexts", len(b.ctxs)), zap.Int("events", total))
	return b.ctxs[b.cur]
}

func (b *aioBackend) publish() {
	l := make([]*aio.Context, len(b.ctxs))
	for i, c := range b.ctxs {
		l[i] = c.ctx
	}
	b.published.Store(&l)
}

// probeSockets finds out what the kernel takes on a socket's iocbs:
// RWF_NOWAIT (a PREAD of an empty socket must complete with -EAGAIN inside
// io_submit), then RWF_NOSIGNAL on a write. Without RWF_NOSIGNAL a write to
// a reset peer raises SIGPIPE, which Go ignores for non-stdio fds but still
// delivers, at the cost of a signal.
func (b *aioBackend) probeSockets() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	b.other.Add(1)
	if err != nil {
		return
	}
	defer func() { unix.Close(fds[0]); unix.Close(fds[1]); b.other.Add(2) }()
	var buf [1]byte
	var cb aio.Iocb
	cb.PrepPread(fds[0], buf[:], 0)
	cb.RWFlags = aio.RWF_NOWAIT
	if res, ok := b.probe(&cb); !ok || res != -int64(unix.EAGAIN) || testNoSocketNowait {
		b.log.Info("uio: this kernel's AIO takes no RWF_NOWAIT on sockets; socket reads and writes are a nonblocking syscall each",
			zap.Int64("probe_res", res), zap.Bool("submitted", ok))
		return
	}
	b.sockNowait = true
	cb = aio.Iocb{}
	cb.PrepPwrite(fds[0], buf[:], 0)
	cb.RWFlags = aio.RWF_NOWAIT | aio.RWF_NOSIGNAL
	if res, ok := b.probe(&cb); ok && res == 1 {
		b.nosignal = aio.RWF_NOSIGNAL
	}
}

// testNoSocketNowait makes probeSockets find no RWF_NOWAIT on sockets, so
// that tests on a kernel that has it run the path of one that has not.
var testNoSocketNowait bool

// probe runs one iocb on the first context and returns its result; false
// when io_submit refused it.
func (b *aioBackend) probe(cb *aio.Iocb) (int64, bool) {
	cb.Data = uint64(internalTag | 3)
	ctx := b.ctxs[0].ctx
	if n, err := ctx.Submit([]*aio.Iocb{cb}); n != 1 || err != nil {
		return 0, false
	}
	ev := make([]aio.Event, 1)
	for got := 0; got == 0; {
		got = ctx.Reap(ev)
		if got == 0 {
			got, _ = ctx.GetEvents(1, ev, time.Second)
		}
	}
	return ev[0].Res, true
}

// socketNow makes a recv's or send's attempt as a nonblocking recvfrom or
// sendmsg, for kernels whose AIO takes no RWF_NOWAIT on sockets: -EAGAIN
// sends the engine to wait for readiness, as the iocb's would. A pipe
// (ENOTSOCK) goes to pipeNow.
func (b *aioBackend) socketNow(op *Op) int32 {
	var n int
	var err error
	buf := clampRW(op.Buf)
	if op.Kind == OpRecv {
		n, err = aio.Recv(op.Fd, buf, int(op.Flags)|unix.MSG_DONTWAIT)
	} else {
		n, err = aio.Send(op.Fd, buf, int(op.Flags)|unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	}
	b.other.Add(1)
	if err == unix.ENOTSOCK {
		return b.pipeNow(op, buf)
	}
	if err != nil {
		return errnoRes(err)
	}
	return int32(n)
}

// pipeNow is socketNow for a pipe (or another stream that is not a
// socket), which such a kernel takes no RWF_NOWAIT on either (6.1:
// EOPNOTSUPP, measured under qemu). A read or write is nonblocking only on
// a nonblocking fd (O_NONBLOCK, as os.Pipe and pipe2(O_NONBLOCK) make
// them); a blocking one would stall the loop, so its op fails with
// -EOPNOTSUPP and the reason is logged, once.
func (b *aioBackend) pipeNow(op *Op, buf []byte) int32 {
	fl, err := unix.FcntlInt(uintptr(op.Fd), unix.F_GETFL, 0)
	b.other.Add(1)
	if err != nil {
		return errnoRes(err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		if !b.blockingPipeLogged {
			b.blockingPipeLogged = true
			b.log.Warn("uio: a recv or send on a blocking pipe fails with EOPNOTSUPP: this kernel's AIO cannot make it nonblocking (no RWF_NOWAIT); open the pipe with O_NONBLOCK",
				zap.Int("fd", op.Fd), zap.Stringer("op", op.Kind))
		}
		return -int32(unix.EOPNOTSUPP)
	}
	var n int
	if op.Kind == OpRecv {
		n, err = unix.Read(op.Fd, buf)
	} else {
		n, err = unix.Write(op.Fd, buf)
	}
	b.other.Add(1)
	if err != nil {
		return errnoRes(err)
	}
	return int32(n)
}

func (b *aioBackend) armDoorbell(drain bool) {
	c0 := b.ctxs[0]
	if drain {
		b.wakeRead.PrepPread(b.wakeFd, b.wakeBuf[:], 0)
		b.wakeRead.Data = uint64(aioWakeReadTag)
		c0.staged = append(c0.staged, &b.wakeRead)
	}
	b.wakePoll.PrepPoll(b.wakeFd, unix.POLLIN)
	b.wakePoll.Data = uint64(aioWakePollTag)
	c0.staged = append(c0.staged, &b.wakePoll)
}

func (b *aioBackend) Name() string { return BackendAIO }

// native: AIO has no asynchronous open, fallocate or ftruncate.
func (b *aioBackend) native(k OpKind) bool {
	return k != OpOpenat && k != OpFallocate && k != OpFtruncate
}
func (b *aioBackend) Staged() int {
	n := 0
	for _, c := range b.ctxs {
		n += len(c.staged)
	}
	return n
}

func (b *aioBackend) Prepare(id OpID, op *Op) error {
	c := b.room()
	if c == nil {
		return errBackendFull
	}
	s := b.slots.at(id.index())
	s.op, s.kind, s.cancelled, s.staged, s.moved = op, aioRW, false, false, 0
	s.ctx = uint8(b.cur)
	cb := &s.cb
	switch op.Kind {
	case OpRead:
		cb.PrepPread(op.Fd, op.Buf, op.Offset)
		cb.RWFlags = op.Flags
	case OpWrite:
		cb.PrepPwrite(op.Fd, op.Buf, op.Offset)
		cb.RWFlags = op.Flags
	case OpReadv:
		s.iov = buildIovecs(s.iov, op.Iovecs)
		cb.PrepPreadv(op.Fd, s.iov, op.Offset)
		cb.RWFlags = op.Flags
	case OpWritev:
		s.iov = buildIovecs(s.iov, op.Iovecs)
		cb.PrepPwritev(op.Fd, s.iov, op.Offset)
		cb.RWFlags = op.Flags
	case OpFsync:
		cb.PrepFsync(op.Fd)
	case OpFdatasync:
		cb.PrepFdsync(op.Fd)
	case OpRecv:
		if op.Flags&^aioRecvOwnFlags != 0 {
			return b.callAfterPoll(id, s, aioRecvPoll, unix.POLLIN)
		}
		if !b.sockNowait {
			b.ready.add(id, b.socketNow(op))
			return nil
		}
		// RWF_NOWAIT: a blocking socket must not stall the loop inside
		// io_submit; -EAGAIN sends the engine to wait for POLLIN.
		cb.PrepPread(op.Fd, op.Buf, 0)
		cb.RWFlags = aio.RWF_NOWAIT
	case OpSend:
		if op.Flags&^aioSendOwnFlags != 0 {
			return b.callAfterPoll(id, s, aioSendPoll, unix.POLLOUT)
		}
		if !b.sockNowait {
			b.ready.add(id, b.socketNow(op))
			return nil
		}
		cb.PrepPwrite(op.Fd, op.Buf, 0)
		cb.RWFlags = aio.RWF_NOWAIT | b.nosignal
	case OpRecvmsg:
		// No iocb carries a msghdr.
		return b.callAfterPoll(id, s, aioRecvPoll, unix.POLLIN)
	case OpSendmsg:
		return b.callAfterPoll(id, s, aioSendPoll, unix.POLLOUT)
	case OpPoll:
		s.kind = aioPoll
		cb.PrepPoll(op.Fd, op.Events)
	case OpAccept:
		// POLL first: it completes inside io_submit when a connection is
		// already waiting, so an accept costs one accept4 and no failed one.
		s.kind = aioAcceptPoll
		cb.PrepPoll(op.Fd, unix.POLLIN)
	case OpConnect:
		err := unix.Connect(op.Fd, op.Addr)
		b.other.Add(1)
		if err != unix.EINPROGRESS {
			b.ready.add(id, errRes(err))
			return nil
		}
		s.kind = aioConnectPoll
		cb.PrepPoll(op.Fd, unix.POLLOUT)
	case OpClose:
		err := unix.Close(op.Fd)
		b.other.Add(1)
		b.ready.add(id, errRes(err))
		return nil
	default:
		b.ready.add(id, -int32(unix.EOPNOTSUPP))
		return nil
	}
	cb.Data = uint64(id)
	c.ops++
	b.stage(s)
	return nil
}

// callAfterPoll stages a POLL for events, after which the op's socket call
// runs inline (flaggedIO); with MSG_DONTWAIT, where no waiting is asked
// for, the call runs now.
func (b *aioBackend) callAfterPoll(id OpID, s *aioSlot, kind aioSlotKind, events uint32) error {
	s.kind = kind
	if s.op.Flags&unix.MSG_DONTWAIT != 0 {
		res, _ := b.flaggedIO(s)
		b.ready.add(id, res)
		return nil
	}
	s.cb.PrepPoll(s.op.Fd, events)
	s.cb.Data = uint64(id)
	b.ctxs[s.ctx].ops++
	b.stage(s)
	return nil
}

// stage queues the slot's iocb for its context's next io_submit.
func (b *aioBackend) stage(s *aioSlot) {
	s.staged = true
	c := b.ctxs[s.ctx]
	if c.resfd {
		s.cb.SetResfd(b.wakeFd)
	}
	c.staged = append(c.staged, &s.cb)
}

// release gives the slot's room in its context back: its op completed.
func (b *aioBackend) release(s *aioSlot) { b.ctxs[s.ctx].ops-- }

func errRes(err error) int32 {
	if err == nil {
		return 0
	}
	return errnoRes(err)
}

// Flush submits every staged iocb, in one io_submit unless the kernel
// takes only part of them. A short count is ambiguous: the ring is full, or
// the next iocb is invalid (io_submit stops at the first bad iocb and, when
// it has taken some, does not say why). So Flush asks again at once: the
// kernel then takes more, answers EAGAIN (full: the rest stay staged until
// completions make room), or names the error, which completes that one op
// and lets the rest go on. A round whose ops are all valid and fit makes
// exactly one io_submit.
//
// With more than one context, each with staged iocbs gets its own
// io_submit (new ops stick to one context while it has room, so a round
// usually touches one).
func (b *aioBackend) Flush() (int, error) {
	total := 0
	for _, c := range b.ctxs {
		total += b.flushCtx(c)
	}
	return total, nil
}

func (b *aioBackend) flushCtx(c *aioCtx) int {
	total := 0
	for len(c.staged) > 0 {
		n, err := c.ctx.Submit(c.staged)
		for _, cb := range c.staged[:n] {
			b.submitted(cb)
		}
		total += n
		rest := c.staged[n:]
		if err != nil {
			b.reject(rest[0], err)
			rest = rest[1:]
		}
		c.staged = append(c.staged[:0], rest...)
		if n == 0 && err == nil {
			break // EAGAIN: full
		}
		if err == nil && len(c.staged) == 0 {
			break
		}
	}
	return total
}

func (b *aioBackend) submitted(cb *aio.Iocb) {
	id := OpID(cb.Data)
	if id&internalTag != 0 {
		if id == aioWakePollTag {
			b.wakeArmed = true
		}
		return
	}
	b.slots.at(id.index()).staged = false
}

func (b *aioBackend) reject(cb *aio.Iocb, err error) {
	id := OpID(cb.Data)
	if id&internalTag != 0 {
		// The doorbell cannot be refused unless the eventfd is gone;
		// nothing can be done about it but to stop relying on it.
		return
	}
	s := b.slots.at(id.index())
	s.staged = false
	b.release(s)
	b.ready.add(id, errnoRes(err))
}

func (b *aioBackend) Reap(deliver func(OpID, int32, uint32)) int {
	n := b.ready.deliver(deliver)
	for _, c := range b.ctxs {
		n += b.reapCtx(c, deliver)
	}
	return n
}

func (b *aioBackend) reapCtx(c *aioCtx, deliver func(OpID, int32, uint32)) int {
	n := 0
	for {
		got := c.ctx.Reap(b.events)
		for _, ev := range b.events[:got] {
			n += b.complete(ev, deliver)
		}
		if got < len(b.events) {
			return n
		}
	}
}

// complete turns one ring event into a delivery, or into the next step of
// an op that takes two (accept, connect). It returns the deliveries made.
func (b *aioBackend) complete(ev aio.Event, deliver func(OpID, int32, uint32)) int {
	id, res := OpID(ev.Data), int32(ev.Res)
	switch id {
	case aioWakePollTag:
		b.wakeArmed = false
		b.armDoorbell(true)
		return 0
	case aioWakeReadTag:
		return 0
	}
	s := b.slots.at(id.index())
	if s.cancelled && res == 0 && s.kind != aioRW {
		// io_cancel of a POLL completes it with res 0.
		b.release(s)
		deliver(id, -int32(unix.ECANCELED), 0)
		return 1
	}
	switch s.kind {
	case aioPoll:
		res = pollMask(res, s.op.Events)
	case aioAcceptPoll:
		if res >= 0 {
			if h := testHooks.Load(); h != nil && h.beforeAccept != nil {
				h.beforeAccept()
			}
			nfd, err := accept4(s.op.Fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			b.other.Add(1)
			if err == unix.EAGAIN && !s.cancelled {
				// Another loop took the connection: wait again.
				b.stage(s)
				return 0
			}
			res = int32(nfd)
			if err != nil {
				res = errnoRes(err)
			}
		}
	case aioConnectPoll:
		if res >= 0 && res&(unix.POLLERR|unix.POLLHUP) == 0 {
			res = 0 // writable and no error: connected, nothing to ask
		} else if res >= 0 {
			// A failed connect polls POLLERR|POLLHUP; SO_ERROR says why.
			soerr, err := unix.GetsockoptInt(s.op.Fd, unix.SOL_SOCKET, unix.SO_ERROR)
			b.other.Add(1)
			switch {
			case err != nil:
				res = errnoRes(err)
			default:
				res = -int32(soerr)
			}
		}
	case aioRecvPoll, aioSendPoll:
		if res >= 0 {
			var again bool
			if res, again = b.flaggedIO(s); again {
				b.stage(s)
				return 0
			}
		}
	}
	b.release(s)
	deliver(id, res, 0)
	return 1
}

// flaggedIO makes the inline recvfrom or sendmsg of a recv or send with
// MSG_* flags once its POLL has fired. It reports the op's result, or again
// when the op must wait for readiness once more: the data went to another
// reader, or a MSG_WAITALL recv has not filled its buffer yet.
func (b *aioBackend) flaggedIO(s *aioSlot) (res int32, again bool) {
	op := s.op
	var n int
	var err error
	switch op.Kind {
	case OpRecvmsg:
		n, err = recvmsg(op)
	case OpSendmsg:
		n, err = sendmsg(op)
	case OpRecv:
		n, _, err = unix.Recvfrom(op.Fd, op.Buf[s.moved:], int(op.Flags&^unix.MSG_WAITALL)|unix.MSG_DONTWAIT)
	default:
		n, err = unix.SendmsgN(op.Fd, op.Buf, nil, nil, int(op.Flags)|unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	}
	b.other.Add(1)
	if n > 0 {
		s.moved += n
	}
	waitAll := op.Kind == OpRecv && op.Flags&unix.MSG_WAITALL != 0
	switch {
	case err == unix.EAGAIN && op.Flags&unix.MSG_DONTWAIT == 0 && !s.cancelled:
		return 0, true
	case err == nil && waitAll && n > 0 && s.moved < len(op.Buf) && !s.cancelled:
		return 0, true
	case s.moved > 0:
		return int32(s.moved), false // what arrived before an error or end of stream
	case err != nil:
		return errnoRes(err), false
	}
	return 0, false
}

func (b *aioBackend) Wait(timeout time.Duration, deliver func(OpID, int32, uint32)) (int, int, error) {
	if len(b.ready) > 0 {
		return 0, b.ready.deliver(deliver), nil
	}
	submitted := 0
	if b.Staged() > 0 {
		// Iocbs staged after the round's flush: the doorbell's re-arm
		// after it fired, an accept's POLL again after another loop took
		// the connection. Nothing could wake this sleep for them unless
		// they go out first.
		n, err := b.Flush()
		if err != nil {
			return n, 0, err
		}
		submitted = n
		if len(b.ready) > 0 { // the flush failed an op: deliver, don't sleep
			return submitted, b.ready.deliver(deliver), nil
		}
		if b.Staged() > 0 && (timeout < 0 || timeout > aioFullRetry) {
			// The kernel refused them (EAGAIN: its ring is full, or
			// its free slots sit in other CPUs' caches). Completions
			// make room, and wake this sleep; but if none comes, try
			// again soon rather than never.
			timeout = aioFullRetry
		}
	}
	if len(b.ctxs) > 1 {
		// A completion in another context signals the doorbell eventfd;
		// one that came before the doorbell's drain (flushed just now, or
		// in the round's Flush) was counted away with it, so look at
		// their rings once more before sleeping.
		n := 0
		for _, c := range b.ctxs[1:] {
			n += b.reapCtx(c, deliver)
		}
		if n > 0 {
			return submitted, n, nil
		}
	}
	got, err := b.ctxs[0].ctx.GetEvents(1, b.events, timeout)
	if err != nil {
		return submitted, 0, err
	}
	n := 0
	for _, ev := range b.events[:got] {
		n += b.complete(ev, deliver)
	}
	return submitted, n, nil
}

func (b *aioBackend) SubmitsOnWait() bool { return false }

// canLink: AIO has no linked iocbs (io_submit runs each on its own, in no
// set order), so the engine keeps every chain itself.
func (b *aioBackend) canLink([]Op) bool { return false }

func (b *aioBackend) PrepareLinked([]OpID, []*Op) error {
	return errors.New("uio: aio: no linked submissions") // canLink said no
}

// registerBuffers: AIO has no registered buffers (every op pins its pages).
func (b *aioBackend) registerBuffers([][]byte) error { return nil }

var errFixedAIO = &NotSupportedError{Backend: BackendAIO, Feature: "registered buffers (an io_uring feature)"}

func (b *aioBackend) addFixed([]byte) (uint16, uint32, error) { return 0, 0, errFixedAIO }
func (b *aioBackend) removeFixed(uint16, uint32) error        { return errFixedGone }

// newPoolRing: AIO has no provided buffers; the engine selects them.
func (b *aioBackend) newPoolRing(int, int) (poolRing, error) { return nil, errNotNative }

// capsBundles: AIO has no bundles; a Bundle recv fills one buffer.
func (b *aioBackend) capsBundles() bool { return false }

func (b *aioBackend) Cancel(id OpID) error {
	s := b.slots.at(id.index())
	if s.cancelled {
		return nil
	}
	s.cancelled = true
	if s.staged {
		// Not in the kernel yet: take it out of the next io_submit.
		c := b.ctxs[s.ctx]
		for i, cb := range c.staged {
			if cb == &s.cb {
				c.staged = append(c.staged[:i], c.staged[i+1:]...)
				break
			}
		}
		s.staged = false
		b.release(s)
		b.ready.add(id, -int32(unix.ECANCELED))
		return nil
	}
	if s.kind == aioRW {
		// AIO cancels only POLL. A socket op already ran inside io_submit;
		// a file op finishes with its real result.
		return nil
	}
	return b.ctxs[s.ctx].ctx.Cancel(&s.cb)
}

func (b *aioBackend) Wake() error {
	var one = [8]byte{1}
	_, err := unix.Write(b.wakeFd, one[:])
	b.other.Add(1)
	if err == unix.EAGAIN { // the counter is saturated: a wake is pending anyway
		err = nil
	}
	return err
}

func (b *aioBackend) Counters() backendCounters {
	bc := backendCounters{Other: b.other.Load()}
	for _, x := range b.contexts() {
		c := x.Counters()
		bc.Submits += c.Submits
		bc.GetEvents += c.GetEvents
		bc.Other += c.Cancels
		bc.ReapedUser += c.ReapedUser
		bc.ReapedSyscall += c.ReapedSyscall
		bc.AIOContexts++
		bc.AIOEvents += uint64(x.Nr())
	}
	return bc
}

// contexts returns the live contexts for Counters, which runs on any
// goroutine while the loop may be adding one: the list is published with
// an atomic pointer for it.
func (b *aioBackend) contexts() []*aio.Context {
	if p := b.published.Load(); p != nil {
		return *p
	}
	return nil
}

func (b *aioBackend) Close() error {
	var err error
	for _, c := range b.ctxs {
		if e := c.ctx.Destroy(); e != nil && err == nil {
			err = e
		}
	}
	unix.Close(b.wakeFd)
	return err
}

// msgBufs is an op's data as sendmsg/recvmsg buffers: Iovecs, or Buf.
func msgBufs(op *Op) [][]byte {
	if op.Iovecs != nil {
		return op.Iovecs
	}
	return [][]byte{op.Buf}
}

func recvmsg(op *Op) (int, error) {
	var oob []byte
	if op.Msg != nil {
		oob = op.Msg.Oob
	}
	n, oobn, flags, from, err := unix.RecvmsgBuffers(op.Fd, msgBufs(op), oob, int(op.Flags)|unix.MSG_DONTWAIT)
	if err == nil && op.Msg != nil {
		op.Msg.Addr, op.Msg.OobN, op.Msg.Flags = from, oobn, flags
	}
	return n, err
}

func sendmsg(op *Op) (int, error) {
	var oob []byte
	var to unix.Sockaddr
	if op.Msg != nil {
		oob, to = op.Msg.Oob, op.Msg.Addr
	}
	return unix.SendmsgBuffers(op.Fd, msgBufs(op), oob, to, int(op.Flags)|unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
}

// accept4 is accept4(2) without the peer's address, which nobody here
// reads: unix.Accept4 decodes it, and for an AF_INET or AF_INET6 socket
// that costs a getsockopt(SO_PROTOCOL) on the listener per connection.
func accept4(fd, flags int) (int, error) {
	nfd, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, uintptr(flags), 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(nfd), nil
}
