package uio

import (
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio/uring"
)

// Chains as linked SQEs (see link.go for the rules the engine keeps and
// the kernel facts they rest on).
//
// A chain's ops go to the kernel as one run of SQEs, each but the last with
// IOSQE_IO_LINK; an op with a Timeout is followed by an IORING_OP_LINK_TIMEOUT
// SQE, itself linked when the chain goes on. Two things the kernel does not
// do the engine's way are mended here:
//
//   - An op and its LINK_TIMEOUT complete separately, in either order (the
//     timeout first when it fired). The op's CQE is held until the
//     timeout's is in, and an op the timeout ended gets -ETIME.
//   - IORING_OP_ASYNC_CANCEL does not find a linked request that has not
//     started (-ENOENT), and on a DEFER_TASKRUN ring a request starts in
//     task work that runs after its predecessor's CQE is visible. So a
//     member to cancel is asked for once its predecessor's CQE is in, and
//     again while the kernel answers -ENOENT, until its own CQE arrives.

// uringLinked is what the backend keeps for a member of a linked chain.
type uringLinked struct {
	id     OpID
	active bool // the slot's op is this member, not yet delivered
	next   OpID // the member linked after it
	last   bool // no member after it
	// started: the kernel has issued it or will on its own (it is the
	// chain's head, or its predecessor's CQE is in).
	started bool
	cancel  bool // the engine asked to cancel it
	chases  int  // cancels sent for it

	timeout unix.Timespec // its LINK_TIMEOUT's, read by the kernel
	ltOut   bool          // the LINK_TIMEOUT's CQE has not come yet
	ltFired bool          // it came and says the deadline passed
	held    bool          // the op's CQE is in, kept for the LINK_TIMEOUT's
	res     int32
	flags   uint32
}

// uringCancel is an ASYNC_CANCEL to stage: its target and its own tag.
type uringCancel struct{ target, tag OpID }

// Tags of a chain's internal SQEs: the member's slot index, under a bit of
// its own. Engine ids never have internalTag; uringWakeTag and
// uringCancelTag have neither bit.
const (
	uringLinkTimeoutTag = internalTag | 1<<62
	uringChaseTag       = internalTag | 1<<61
	uringTagIndex       = 1<<32 - 1
)

// uringMaxChases bounds the cancels sent for one member that the kernel
// keeps not finding (one or two are the rule): past it, the member ends as
// the kernel runs it.
const uringMaxChases = 16

// canLink: the ops' kinds have the engine's chain semantics as linked
// requests, and the chain fits the SQ, so that one enter submits it whole
// (the kernel issues a chain cut short by the end of a submit as a shorter
// chain).
func (b *uringBackend) canLink(ops []Op) bool {
	n := 0
	for i := range ops {
		if !b.linkable(&ops[i]) {
			return false
		}
		n++
		if ops[i].Timeout > 0 {
			n++
		}
	}
	return n <= int(b.ring.SQEntries())
}

// linkable reports whether a linked request of op's kind breaks its chain
// exactly when the engine's rule does (a negative result, or a transfer
// short of its length) and completes with no retry by the engine.
//
//   - Read, write, readv, writev: the kernel fails the link when the result
//     differs from the length the SQE asked for (io_uring/rw.c, the
//     res != req->cqe.res test), which is the engine's "short" rule.
//   - fsync, fdatasync, poll, close, openat, fallocate, ftruncate: no short
//     form; they fail the link on a negative result only.
//   - Not recv, send, recvmsg, sendmsg: the kernel keeps the link after a
//     short transfer unless MSG_WAITALL (io_uring/net.c checks ret <
//     min_ret, and min_ret is 0 without it), and the engine retries their
//     EAGAIN through a poll, which a linked request cannot do. Not accept
//     (EAGAIN retried too), connect, splice (the kernel's short rule and
//     the engine's differ), uring_cmd (the driver decides), pool or
//     multishot ops, nor kinds the kernel lacks (the engine offloads them),
//     nor the close of a registered file (see Loop.RegisterFile).
func (b *uringBackend) linkable(op *Op) bool {
	if op.Pool != nil || op.Multishot || !b.hasOp[op.Kind] {
		return false
	}
	switch op.Kind {
	case OpClose:
		// A registered fd's close must leave the file table first, on
		// the loop, when the close starts (Loop.closeFixed): linked, it
		// would start in the kernel, with the table still holding it.
		return !b.fileRegistered(op.Fd)
	case OpRead, OpWrite, OpReadv, OpWritev, OpFsync, OpFdatasync,
		OpPoll, OpOpenat, OpFallocate, OpFtruncate:
		return true
	}
	return false
}

// PrepareLinked fills the chain's SQEs in one go, or none of them.
func (b *uringBackend) PrepareLinked(ids []OpID, ops []*Op) error {
	need := 0
	for _, op := range ops {
		need++
		if op.Timeout > 0 {
			need++
		}
	}
	if int(b.ring.SQSpace()) < need {
		return errSQFull
	}
	for i, op := range ops {
		last := i == len(ops)-1
		before := b.ring.SQReady()
		// The kernel looks a registered file or buffer up when it issues
		// a request, and it issues a member only once the one before it
		// has completed: by then the slot may hold another file (an
		// UnregisterFile and a RegisterFile in between) or nothing. So
		// only the head, issued at submit, uses the tables.
		if err := b.prepare(ids[i], op, i == 0); err != nil {
			return err // cannot happen: the space is there
		}
		sqe := b.ring.LastSQE()
		if sqe == nil || b.ring.SQReady() != before+1 || sqe.UserData != uint64(ids[i]) {
			// canLink lets no kind through that Prepare completes
			// without an SQE of its own.
			b.log.Error("uio: io_uring: linked op took no SQE of its own", zap.Stringer("kind", op.Kind))
			continue
		}
		s := b.slots.at(ids[i].index())
		if s.link == nil {
			s.link = new(uringLinked)
		}
		lk := s.link
		*lk = uringLinked{id: ids[i], active: true, started: i == 0, last: last}
		if !last {
			lk.next = ids[i+1]
		}
		if !last || op.Timeout > 0 {
			sqe.Flags |= uring.IOSQE_IO_LINK
		}
		if op.Timeout > 0 {
			lk.timeout = unix.NsecToTimespec(int64(op.Timeout))
			lk.ltOut = true
			t := b.ring.GetSQE()
			t.PrepLinkTimeout(&lk.timeout, 0)
			t.SetData(uint64(uringLinkTimeoutTag | OpID(ids[i].index())))
			if !last {
				// The chain goes on after the op: the timeout carries
				// the link to the next op.
				t.Flags |= uring.IOSQE_IO_LINK
			}
		}
	}
	return nil
}

// completeLinked takes a member's own CQE: the member after it has now
// started (a cancel asked for it can go out), and the CQE waits for the
// member's LINK_TIMEOUT, if that is still out.
func (b *uringBackend) completeLinked(s *uringSlot, id OpID, res int32, flags uint32, deliver func(OpID, int32, uint32)) int {
	lk := s.link
	if next := b.member(lk.next); !lk.last && next != nil {
		next.started = true
		if next.cancel {
			b.chase(next)
		}
	}
	if lk.ltOut {
		lk.held, lk.res, lk.flags = true, res, flags
		return 0
	}
	b.deliverLinked(lk, res, flags, deliver)
	return 1
}

func (b *uringBackend) deliverLinked(lk *uringLinked, res int32, flags uint32, deliver func(OpID, int32, uint32)) {
	if lk.ltFired && res < 0 && !lk.cancel {
		// Ended by its deadline: -ECANCELED, or -EINTR from an io-wq
		// worker; a Timeout's result is -ETIME on every path.
		res = -int32(unix.ETIME)
	}
	id := lk.id
	lk.active, lk.held = false, false
	deliver(id, res, flags)
}

// completeLinkTag takes the CQE of a LINK_TIMEOUT or of a chase cancel.
func (b *uringBackend) completeLinkTag(c *uring.CQE, deliver func(OpID, int32, uint32)) int {
	tag := OpID(c.UserData)
	lk := b.slots.at(uint32(tag & uringTagIndex)).link
	if lk == nil || !lk.active {
		return 0
	}
	switch tag &^ uringTagIndex {
	case uringLinkTimeoutTag:
		if !lk.ltOut {
			return 0
		}
		// It fired unless it says -ECANCELED (the op completed first, or
		// never started): -ETIME, it cancelled the op; -ENOENT, it found
		// the op completing, or running in an io-wq worker, which it
		// interrupts (io_try_cancel in 6.1 and 6.12 goes on from the
		// worker's -EALREADY and ends with -ENOENT); -EALREADY on kernels
		// that stop there. As with the engine's own deadlines, an op
		// whose deadline has passed and that fails gets -ETIME.
		lk.ltOut = false
		lk.ltFired = c.Res == -int32(unix.ETIME) || c.Res == -int32(unix.ENOENT) || c.Res == -int32(unix.EALREADY)
		if lk.held {
			b.deliverLinked(lk, lk.res, lk.flags, deliver)
			return 1
		}
	case uringChaseTag:
		if c.Res == -int32(unix.ENOENT) && lk.cancel && lk.started && !lk.held {
			// Started, but not issued yet (task work still to run):
			// ask again.
			b.chase(lk)
		}
	}
	return 0
}

// member returns the chain state of id's op, if it is a chain member.
func (b *uringBackend) member(id OpID) *uringLinked {
	lk := b.slots.at(id.index()).link
	if lk == nil || !lk.active || lk.id != id {
		return nil
	}
	return lk
}

// cancelLinked is Cancel for a chain member: sent now if it has started,
// else once its predecessor's CQE shows it has. It reports false for an op
// that is no chain member.
func (b *uringBackend) cancelLinked(id OpID) bool {
	lk := b.member(id)
	if lk == nil {
		return false
	}
	lk.cancel = true
	if lk.started && !lk.held {
		b.chase(lk)
	}
	return true
}

func (b *uringBackend) chase(lk *uringLinked) {
	if lk.chases >= uringMaxChases {
		b.log.Debug("uio: io_uring: linked op never found by its cancels", zap.Uint64("op", uint64(lk.id)))
		return
	}
	lk.chases++
	b.cancels = append(b.cancels, uringCancel{target: lk.id, tag: uringChaseTag | OpID(lk.id.index())})
	b.stageCancels()
}
