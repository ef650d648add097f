package uio

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio/uring"
)

// uringBackend drives one io_uring. Every op has a native opcode; a round
// is one io_uring_enter that submits the round's SQEs and, on a
// DEFER_TASKRUN ring, runs the completions' task work so the CQEs are in the
// ring when the loop reaps right after it.
type uringBackend struct {
	ring *uring.Ring
	// dropped is the CQ overflow counter last seen: CQEs the kernel lost.
	dropped uint32

	slots chunked[uringSlot]
	ready readyQueue
	cqes  []uring.CQE

	// The doorbell: a READ on a blocking eventfd stays in flight; Wake's
	// write completes it, which ends an io_uring_enter sleep.
	wakeFd    int
	wakeBuf   [8]byte
	wakeArmed bool

	cancels []uringCancel // cancellations that found the SQ full; staged next round

	hasOp [opKindEnd]bool // kinds whose opcode the kernel has (native)

	reaped       counter
	overflows    counter       // Reaps that flushed completions the CQ had no room for
	droppedTotal atomic.Uint64 // CQEs the kernel dropped (it could not hold the overflow)
	log          *zap.Logger
	bufRings     []*uring.BufRing // BufferPools' provided buffer rings
	noMultishot  bool             // the kernel refused IORING_RECV_MULTISHOT (before 6.0)
	// recvCap: the kernel caps each completion of a multishot recv at its
	// length (6.17+, uring.ProbeRecvCap), and has bundles (6.10+).
	recvCap bool
	fixed   uringFixed // registered buffers (backend_uring_fixed.go)
	// the kernel refused IORING_ACCEPT_MULTISHOT (before 5.19)
	noMultishotAccept bool
	files             fileTable // registered files (RegisterFile)

	other atomic.Uint64
}

// uringSlot is what the kernel reads while a slot's op runs, besides the
// op's own buffers. The rarely used parts are allocated the first time a
// slot needs them (and kept for its next ops): a slot per op in flight is
// memory per idle connection.
type uringSlot struct {
	op   *Op
	sa   *uring.Sockaddr // CONNECT reads it when the op runs
	iov  []unix.Iovec
	msg  *uring.Msghdr // SENDMSG and RECVMSG
	path []byte        // OPENAT's NUL-terminated path
	// asRW is the op that goes as READ/WRITE at the file position rather
	// than RECV/SEND: a recv or send on a pipe, which the kernel's RECV
	// and SEND refuse (ENOTSOCK). Keyed by ID, so the next op of the slot
	// starts as what it is; with internalTag set, which no op's ID has, so
	// the zero value names no op (ID 0 is an op's).
	asRW OpID
	link *uringLinked // the op is a member of a linked chain (PrepareLinked)
}

// uringMaxCQ is IORING_MAX_CQ_ENTRIES (2 * IORING_MAX_ENTRIES).
const uringMaxCQ = 65536

const (
	uringWakeTag   = internalTag | 1
	uringCancelTag = internalTag | 2
)

func newUringBackend(depth, maxInFlight int, sqe128 bool, log *zap.Logger) (*uringBackend, error) {
	if depth < 8 {
		depth = 8
	}
	var extra uint32
	if sqe128 {
		extra = uring.IORING_SETUP_SQE128
	}
	// The SQ bounds one round's submissions; the CQ must hold a
	// completion for every op in flight, and most of those may be waiting
	// for a long time (an idle socket's recv). So the CQ is sized for the
	// ops in flight, not for a round: 64 times the SQ, at most the
	// kernel's maximum (65536 entries, 1 MiB). Beyond it the kernel holds
	// the overflow (NODROP, checked below), which Reap flushes.
	cq := 64 * depth
	if maxInFlight > 0 {
		cq = depth + maxInFlight
	}
	cq = min(cq, uringMaxCQ)
	ring, err := uring.NewSized(uint32(depth), uint32(cq), extra)
	if errors.Is(err, unix.ENOMEM) {
		ring, err = uring.NewWithExtra(uint32(depth), extra) // memlock-accounted kernels (before 5.12)
	}
	if err != nil {
		if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
			// No io_uring at all, or turned off (kernel.io_uring_disabled,
			// a seccomp filter).
			return nil, &NotSupportedError{Backend: BackendUring, Feature: "io_uring_setup (Linux 5.1, allowed by kernel.io_uring_disabled and seccomp)", Err: err}
		}
		return nil, err
	}
	if err := checkUring(ring); err != nil {
		ring.Close()
		return nil, err
	}
	b := &uringBackend{ring: ring, cqes: make([]uring.CQE, 256), log: log}
	for k := OpKind(1); k < opKindEnd; k++ {
		b.hasOp[k] = true
	}
	for k, op := range map[OpKind]uint8{OpOpenat: uring.IORING_OP_OPENAT, OpFallocate: uring.IORING_OP_FALLOCATE, OpFtruncate: uring.IORING_OP_FTRUNCATE,
		OpSendmsg: uring.IORING_OP_SENDMSG, OpRecvmsg: uring.IORING_OP_RECVMSG, OpUringCmd: uring.IORING_OP_URING_CMD} {
		b.hasOp[k] = ring.OpSupported(op)
	}
	if ring.Features()&uring.IORING_FEAT_RECVSEND_BUNDLE != 0 {
		// Nothing is in flight yet, as the probe needs.
		b.recvCap, err = ring.ProbeRecvCap()
		if err != nil {
			log.Debug("uio: io_uring: probe of multishot recv caps failed; bundles with a cap take one buffer per completion", zap.Error(err))
		}
	}
	b.wakeFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC)
	b.other.Add(1)
	if err != nil {
		ring.Close()
		return nil, fmt.Errorf("uio: io_uring doorbell: eventfd: %w", err)
	}
	b.armDoorbell()
	return b, nil
}

func (b *uringBackend) armDoorbell() {
	sqe := b.ring.GetSQE()
	if sqe == nil {
		return // retried before the next sleep
	}
	sqe.PrepRead(b.wakeFd, b.wakeBuf[:], 0)
	sqe.SetData(uint64(uringWakeTag))
	b.wakeArmed = true
}

func (b *uringBackend) Name() string { return BackendUring }

// native: every kind the kernel has an opcode for (FTRUNCATE came in 6.9).
func (b *uringBackend) native(k OpKind) bool { return b.hasOp[k] }
func (b *uringBackend) Staged() int          { return int(b.ring.SQReady()) }

// Prepare fills an SQE for op. It fails (errSQFull) only when this round's
// SQ is full; the loop then flushes and goes on. Nothing bounds the
// ops in the kernel: the CQ is sized for them, and overflow is flushed.
func (b *uringBackend) Prepare(id OpID, op *Op) error { return b.prepare(id, op, true) }

// prepare is Prepare; slots says whether the SQE may name registered files
// and buffers, which a linked chain's member after its head must not (see
// PrepareLinked).
func (b *uringBackend) prepare(id OpID, op *Op, slots bool) error {
	if b.ring.SQSpace() == 0 {
		return errSQFull
	}
	s := b.slots.at(id.index())
	s.op = op
	if op.Kind == OpConnect {
		if s.sa == nil {
			s.sa = new(uring.Sockaddr)
		}
		if err := s.sa.Set(op.Addr); err != nil {
			b.ready.add(id, -int32(unix.EAFNOSUPPORT))
			return nil
		}
	}
	switch op.Kind {
	case OpReadv, OpWritev:
		s.iov = buildIovecs(s.iov, op.Iovecs)
	case OpSendmsg, OpRecvmsg:
		s.iov = buildIovecs(s.iov, msgBufs(op))
		var oob []byte
		var to unix.Sockaddr
		if op.Msg != nil {
			oob = op.Msg.Oob
			if op.Kind == OpSendmsg {
				to = op.Msg.Addr
			}
		}
		if s.msg == nil {
			s.msg = new(uring.Msghdr)
		}
		if err := s.msg.Set(s.iov, oob, to, op.Kind == OpRecvmsg && op.Msg != nil); err != nil {
			b.ready.add(id, errnoRes(err))
			return nil
		}
	case OpOpenat:
		s.path = append(append(s.path[:0], op.Path...), 0)
	}
	sqe := b.ring.GetSQE()
	if sqe == nil {
		return errSQFull
	}
	switch op.Kind {
	case OpRead:
		if idx, ok := b.ring.FixedBuffer(op.Buf); ok && slots {
			sqe.PrepReadFixed(op.Fd, clampRW(op.Buf), op.Offset, idx)
			b.fixed.fixedOp()
		} else {
			sqe.PrepRead(op.Fd, clampRW(op.Buf), op.Offset)
		}
		sqe.OpcodeFlags = op.Flags
	case OpWrite:
		if idx, ok := b.ring.FixedBuffer(op.Buf); ok && slots {
			sqe.PrepWriteFixed(op.Fd, clampRW(op.Buf), op.Offset, idx)
			b.fixed.fixedOp()
		} else {
			sqe.PrepWrite(op.Fd, clampRW(op.Buf), op.Offset)
		}
		sqe.OpcodeFlags = op.Flags
	case OpReadv:
		sqe.PrepReadv(op.Fd, s.iov, op.Offset)
		sqe.OpcodeFlags = op.Flags
	case OpWritev:
		sqe.PrepWritev(op.Fd, s.iov, op.Offset)
		sqe.OpcodeFlags = op.Flags
	case OpFsync:
		sqe.PrepFsync(op.Fd, 0)
	case OpFdatasync:
		sqe.PrepFsync(op.Fd, uring.IORING_FSYNC_DATASYNC)
	case OpRecv:
		if s.asRW == id|internalTag {
			sqe.PrepRead(op.Fd, clampRW(op.Buf), -1)
			break
		}
		if p := op.Pool; p != nil && p.ring != nil {
			// The kernel picks a buffer of the pool's ring when data
			// has arrived; none is held while the recv waits.
			sqe.PrepRecv(op.Fd, nil, 0)
			sqe.Len = uint32(p.size)
			sqe.SelectBuffer(p.ring.Group())
			// The kernel counts a Limit (6.17+) only for a bundle: it caps
			// the bytes a bundle selects, while a plain shot fills a whole
			// buffer. Any other Limit recv goes one-shot: one completion
			// of one buffer is within it.
			bundles := op.Bundle && b.ring.Features()&uring.IORING_FEAT_RECVSEND_BUNDLE != 0
			multishot := op.Multishot && !b.noMultishot && (op.Limit == 0 || b.recvCap && bundles)
			if multishot {
				// Len 0: each shot fills one ring buffer (p.size).
				// Debian's 6.12 refused a multishot RECV with a length
				// (EINVAL: the engine then re-armed every chunk;
				// measured under qemu), and 6.18 reads it as a cap.
				sqe.IoPrio |= uring.IORING_RECV_MULTISHOT
				sqe.Len = 0
				if op.Limit > 0 {
					// optlen: the total (6.17); what is left of it when
					// the engine re-arms (Loop.shot counts it down).
					sqe.SpliceFdIn = int32(op.Limit)
				}
			}
			switch {
			case !bundles:
			case op.Limit > 0 && !multishot:
				// The one-shot stand-in for a Limit: one buffer.
			case op.Len == 0:
				// As many ring buffers as the data needs (a one-shot
				// bundle's length is no reliable cap: on 6.18 one of
				// 8 KiB took 36 KiB).
				sqe.IoPrio |= uring.IORING_RECVSEND_BUNDLE
				sqe.Len = 0
			case multishot && b.recvCap:
				// 6.17+: each completion takes whole buffers up to Len.
				sqe.IoPrio |= uring.IORING_RECVSEND_BUNDLE
				sqe.Len = uint32(op.Len)
			default:
				// No cap the kernel keeps: one buffer per completion,
				// which is within it (Len >= the buffer size).
			}
			break
		}
		sqe.PrepRecv(op.Fd, clampRW(op.Buf), int(op.Flags))
	case OpSend:
		if s.asRW == id|internalTag {
			sqe.PrepWrite(op.Fd, clampRW(op.Buf), -1)
			break
		}
		sqe.PrepSend(op.Fd, clampRW(op.Buf), int(op.Flags)|unix.MSG_NOSIGNAL)
	case OpPoll:
		sqe.PrepPollAdd(op.Fd, op.Events)
	case OpAccept:
		sqe.PrepAccept(op.Fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if op.Multishot && !b.noMultishotAccept {
			sqe.IoPrio |= uring.IORING_ACCEPT_MULTISHOT
		}
	case OpConnect:
		sqe.PrepConnect(op.Fd, s.sa)
	case OpClose:
		sqe.PrepClose(op.Fd)
	case OpSendmsg:
		sqe.PrepSendmsg(op.Fd, s.msg, int(op.Flags)|unix.MSG_NOSIGNAL)
	case OpRecvmsg:
		sqe.PrepRecvmsg(op.Fd, s.msg, int(op.Flags))
	case OpOpenat:
		sqe.PrepOpenat(op.Fd, s.path, int(op.Flags), op.Mode)
	case OpFallocate:
		sqe.PrepFallocate(op.Fd, op.Mode, op.Offset, int64(op.Len))
	case OpFtruncate:
		sqe.PrepFtruncate(op.Fd, op.Offset)
	case OpUringCmd:
		sqe.PrepUringCmd(op.Fd, op.CmdOp)
		if err := b.ring.SetCmd(sqe, op.Cmd); err != nil {
			// The SQE is taken: send it as a NOP and fail the op.
			sqe.PrepNop()
			sqe.SetData(uint64(uringCancelTag))
			b.ready.add(id, -int32(unix.EINVAL))
			return nil
		}
	case OpSplice:
		sqe.PrepSplice(op.Fd, op.Offset, op.FdOut, op.OffsetOut, uint32(min(op.Len, maxRW)), op.Flags)
	default:
		// Handle.Start lets no other kind through; a NOP keeps the slot
		// accounted for and completes the op with EOPNOTSUPP.
		sqe.PrepNop()
		b.ready.add(id, -int32(unix.EOPNOTSUPP))
		sqe.SetData(uint64(uringCancelTag))
		return nil
	}
	if slots {
		b.useFixedFile(sqe, op)
	}
	sqe.SetData(uint64(id))
	return nil
}

func (b *uringBackend) stageCancels() {
	for len(b.cancels) > 0 {
		sqe := b.ring.GetSQE()
		if sqe == nil {
			return
		}
		sqe.PrepCancel(uint64(b.cancels[0].target), 0)
		sqe.SetData(uint64(b.cancels[0].tag))
		b.cancels = b.cancels[1:]
	}
}

// Flush submits the round's SQEs with one io_uring_enter.
func (b *uringBackend) Flush() (int, error) {
	if !b.wakeArmed {
		b.armDoorbell()
	}
	b.stageCancels()
	b.fixed.publish()
	return b.ring.Submit()
}

func (b *uringBackend) Reap(deliver func(OpID, int32, uint32)) int {
	b.files.publish()
	n := b.ready.deliver(deliver)
	for {
		got := b.ring.PeekCQEs(b.cqes)
		for i := range b.cqes[:got] {
			n += b.complete(&b.cqes[i], deliver)
		}
		b.reaped.add(uint64(got))
		if got == len(b.cqes) {
			continue
		}
		if !b.ring.OverflowPending() {
			break
		}
		// More completions than the CQ holds: the kernel keeps the rest
		// until an enter with GETEVENTS, which Submit makes when the
		// overflow flag is up. The CQ is empty now, so they fit.
		b.overflows.add(1)
		if _, err := b.ring.Submit(); err != nil {
			break
		}
	}
	if d := b.ring.Dropped(); d != b.dropped {
		// Each is an op that will never complete: nothing can be done
		// for it, but it must not go unseen.
		b.log.Error("uio: io_uring dropped completions (CQ overflow the kernel could not hold)",
			zap.Uint32("dropped", d-b.dropped), zap.Uint32("cq_entries", b.ring.CQEntries()))
		b.dropped = d
		b.droppedTotal.Store(uint64(d))
	}
	return n
}

func (b *uringBackend) complete(c *uring.CQE, deliver func(OpID, int32, uint32)) int {
	id := OpID(c.UserData)
	if id&internalTag != 0 {
		if id == uringWakeTag {
			b.wakeArmed = false
			b.armDoorbell()
			return 0
		}
		return b.completeLinkTag(c, deliver)
	}
	res := c.Res
	s := b.slots.at(id.index())
	if res == -int32(unix.EINVAL) && s.op.Multishot && s.op.Limit == 0 && !b.noMultishot && s.op.Pool != nil && s.op.Pool.ring != nil {
		// A kernel before 6.0 refuses IORING_RECV_MULTISHOT: from now on
		// the engine re-arms each recv, and this one goes again at once
		// (EAGAIN sends it through a readiness poll).
		b.noMultishot = true
		res = -int32(unix.EAGAIN)
	}
	if res == -int32(unix.EINVAL) && s.op.Kind == OpAccept && s.op.Multishot && !b.noMultishotAccept {
		b.noMultishotAccept = true // before 5.19: the engine re-arms instead
		res = -int32(unix.EAGAIN)
	}
	if res == -int32(unix.ENOTSOCK) && (s.op.Kind == OpRecv || s.op.Kind == OpSend) && s.op.Flags == 0 && s.op.Pool == nil && s.asRW != id|internalTag {
		// A pipe: the same bytes move with READ/WRITE at the file
		// position. EAGAIN sends the op through a readiness poll and
		// back here, where Prepare encodes it so.
		s.asRW = id | internalTag
		res = -int32(unix.EAGAIN)
	}
	switch {
	case s.op.Kind == OpPoll:
		res = pollMask(res, s.op.Events)
	case s.op.Kind == OpRecvmsg && s.op.Msg != nil && res >= 0:
		m := s.op.Msg
		m.OobN, m.Flags = s.msg.ControlLen(), s.msg.Flags()
		m.Addr, _ = s.msg.From()
	}
	if s.link != nil && s.link.active && s.link.id == id {
		return b.completeLinked(s, id, res, c.Flags, deliver)
	}
	deliver(id, res, c.Flags)
	return 1
}

// Wait submits whatever is staged and sleeps, in one io_uring_enter.
func (b *uringBackend) Wait(timeout time.Duration, deliver func(OpID, int32, uint32)) (int, int, error) {
	if len(b.ready) > 0 {
		return 0, b.ready.deliver(deliver), nil
	}
	if !b.wakeArmed {
		b.armDoorbell()
	}
	b.stageCancels()
	b.fixed.publish()
	submitted := 0
	for !b.wakeArmed || len(b.cancels) > 0 {
		// The SQ is full (a round staged exactly as many ops as it
		// holds): the doorbell's read found no SQE, and a sleep without
		// it would never see a Post (a Do hung so under -race in CI).
		// Hand the SQ over first, then stage what did not fit.
		k, err := b.ring.Submit()
		submitted += k
		if err != nil {
			return submitted, 0, err
		}
		if !b.wakeArmed {
			b.armDoorbell()
		}
		b.stageCancels()
		if k == 0 {
			break // nothing taken: the kernel's CQ is the limit; completions are due
		}
	}
	n, err := b.ring.SubmitAndWait(1, timeout)
	n += submitted
	if err != nil {
		return n, 0, err
	}
	return n, b.Reap(deliver), nil
}

func (b *uringBackend) SubmitsOnWait() bool { return true }

func (b *uringBackend) capsBundles() bool { return b.recvCap }

// newPoolRing registers a provided buffer ring (5.19+) for a BufferPool:
// the pool keeps its ring target of buffers in it, so that many slots
// suffice.
func (b *uringBackend) newPoolRing(index, entries int) (poolRing, error) {
	br, err := b.ring.SetupBufRing(uint32(entries), uint16(index))
	b.other.Add(1)
	if err != nil {
		return nil, err
	}
	b.bufRings = append(b.bufRings, br)
	return br, nil
}

// Cancel stages an ASYNC_CANCEL for id. The SQEs of a round are issued in
// order, so a cancel staged behind its target in the same round still finds
// it. The cancel's own CQE is the backend's; the target's is the op's one
// completion.
func (b *uringBackend) Cancel(id OpID) error {
	if b.cancelLinked(id) {
		return nil
	}
	b.cancels = append(b.cancels, uringCancel{target: id, tag: uringCancelTag})
	b.stageCancels()
	return nil
}

func (b *uringBackend) Wake() error {
	var one = [8]byte{1}
	_, err := unix.Write(b.wakeFd, one[:])
	b.other.Add(1)
	return err
}

func (b *uringBackend) Counters() backendCounters {
	return backendCounters{
		Enters:      b.ring.Enters(),
		Other:       b.other.Load(),
		ReapedUser:  b.reaped.load(),
		CQOverflows: b.overflows.load(),
		DroppedCQEs: b.droppedTotal.Load(),

		FixedFileOps:   b.files.pub.load(),
		FixedBufferOps: b.fixed.pub.load(),
	}
}

func (b *uringBackend) Close() error {
	for _, br := range b.bufRings {
		br.Close()
	}
	err := b.ring.Close()
	unix.Close(b.wakeFd)
	return err
}
