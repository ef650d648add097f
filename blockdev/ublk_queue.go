package blockdev

import (
	"errors"
	"fmt"
	"sync"

	"github.com/userland-io/uio"
	"github.com/userland-io/uio/blockdev/ublk"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// uqueue serves one ublk hardware queue on its own io_uring loop: every tag
// always has one URING_CMD in the kernel (FETCH_REQ at start, then
// COMMIT_AND_FETCH_REQ carrying the previous request's result), except
// while the backend works on the tag's request. The commands a round's
// completions produce are staged together, so the loop hands them to the
// kernel in one io_uring_enter. Everything but close runs on the loop's
// goroutine, which is locked to the thread that issued the FETCHes (ublk
// requires it).
type uqueue struct {
	s        *Server
	id       int
	l        *uio.Loop
	h        uio.Handle // l's, set by fetchAll; the queue runs only on l
	log      *zap.Logger
	fd       int    // /dev/ublkcN, shared by the queues
	descs    []byte // the kernel's IODesc array (read-only mapping)
	bufs     []byte // depth * maxIO
	maxIO    int
	userCopy bool
	fetchOp  uint32
	commitOp uint32
	reqs     []Request
	cmds     [][ublk.IOCmdSize]byte
	doneFns  []func(uio.Handle, uio.Result)

	armed    int // tags with a command in the kernel
	inflight int // requests the server holds (backend working)
	dead     bool
	stopOnce sync.Once
	stopped  chan struct{}

	st Stats
}

func newUqueue(s *Server, id int) (*uqueue, error) {
	u := s.u
	depth := int(s.cfg.QueueDepth)
	maxIO := int(s.cfg.MaxIOBytes)
	descs, err := unix.Mmap(u.cdev, ublk.DescOffset(id), ublk.DescSize(depth), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("blockdev: mmap the descriptors of ublk queue %d (%d bytes at %d): %w", id, ublk.DescSize(depth), ublk.DescOffset(id), err)
	}
	bufs, err := unix.Mmap(-1, 0, depth*maxIO, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		unix.Munmap(descs)
		return nil, fmt.Errorf("blockdev: buffers of ublk queue %d (%d bytes): %w", id, depth*maxIO, err)
	}
	l, err := uio.NewLoop(uio.Config{Backend: uio.BackendUring, Depth: max(depth+16, 64), Logger: s.log})
	if err != nil {
		unix.Munmap(descs)
		unix.Munmap(bufs)
		return nil, err
	}
	q := &uqueue{
		s: s, id: id, l: l, log: s.log.With(zap.Int("queue", id)),
		fd: u.cdev, descs: descs, bufs: bufs, maxIO: maxIO, userCopy: u.userCopy(),
		fetchOp:  ublk.IOOp(ublk.IOFetchReq, u.encoded),
		commitOp: ublk.IOOp(ublk.IOCommitAndFetchReq, u.encoded),
		reqs:     make([]Request, depth),
		cmds:     make([][ublk.IOCmdSize]byte, depth),
		doneFns:  make([]func(uio.Handle, uio.Result), depth),
		stopped:  make(chan struct{}),
	}
	for t := range q.reqs {
		q.reqs[t] = Request{uq: q, tag: uint16(t), Queue: id}
		q.doneFns[t] = func(h uio.Handle, r uio.Result) { q.onCmd(t, r) }
	}
	if err := l.Post(q.fetchAll); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

func (q *uqueue) buf(tag int) []byte { return q.bufs[tag*q.maxIO : (tag+1)*q.maxIO] }

func (q *uqueue) fetchAll(h uio.Handle) {
	q.h = h
	for t := range q.reqs {
		q.arm(t, q.fetchOp, 0)
	}
}

// arm gives tag back to the kernel: FETCH_REQ, or COMMIT_AND_FETCH_REQ
// with the result of the tag's last request.
func (q *uqueue) arm(tag int, op uint32, result int32) {
	c := ublk.IOCmd{QueueID: uint16(q.id), Tag: uint16(tag), Result: result}
	if !q.userCopy {
		c.Addr = ublk.Addr(q.buf(tag))
	}
	c.MarshalTo(q.cmds[tag][:])
	if _, err := q.h.Start(uio.Op{Kind: uio.OpUringCmd, Fd: q.fd, CmdOp: op, Cmd: q.cmds[tag][:], Done: q.doneFns[tag]}); err != nil {
		if !errors.Is(err, uio.ErrClosed) {
			q.log.Error("blockdev: cannot arm a ublk tag; the queue stops", zap.Int("tag", tag), zap.Error(err))
			q.dead = true
		}
		q.checkStopped()
		return
	}
	q.armed++
	q.st.Calls++
}

func (q *uqueue) onCmd(tag int, r uio.Result) {
	q.armed--
	switch {
	case r.Res == ublk.ResOK:
		q.st.Requests++
		q.dispatch(tag)
	case r.Res == ublk.ResAbort || r.Res == -int32(unix.ECANCELED):
		// The device is stopping (STOP_DEV, or deleted by someone else):
		// the tag is not re-armed.
	default:
		// The kernel refused the command: a protocol error, not an I/O
		// error. The device cannot be served right any more.
		if !q.dead {
			q.log.Error("blockdev: ublk refused a command; the queue stops (the device is removed)", zap.Int("tag", tag), zap.Error(r.Err()))
		}
		q.dead = true
	}
	q.checkStopped()
}

// checkStopped reports the queue stopped once the kernel holds no command
// and the backend no request of it, after the first abort or error.
func (q *uqueue) checkStopped() {
	if q.armed == 0 && q.inflight == 0 {
		q.stopOnce.Do(func() {
			close(q.stopped)
			select {
			case q.s.anyStop <- struct{}{}:
			default:
			}
		})
	} else if q.dead {
		select {
		case q.s.anyStop <- struct{}{}:
		default:
		}
	}
}

// dispatch checks the request the kernel put on tag and hands it to the
// backend.
func (q *uqueue) dispatch(tag int) {
	d := ublk.DescAt(q.descs, tag)
	r := &q.reqs[tag]
	if r.active {
		q.log.Error("blockdev: kernel reused a busy ublk tag", zap.Int("tag", tag))
	}
	op, flags := ublkOp(d.OpFlags)
	n := uint64(d.NrSectors) << 9
	*r = Request{Op: op, Flags: flags, Offset: int64(d.StartSector << 9), Len: int(n), Queue: q.id, uq: q, tag: uint16(tag), active: true}
	errno, why := unix.Errno(0), ""
	switch {
	case r.Op == OpFlush:
		// A flush request's sector is whatever the block layer left
		// there: it has no range.
		r.Offset = 0
		errno, why = q.s.geo.check(r.Op, 0, uint32(min(n, 1)))
	case n > 1<<32-1 || d.StartSector > 1<<54:
		errno, why = unix.EIO, "beyond the end of the device"
	default:
		errno, why = q.s.geo.check(r.Op, d.StartSector<<9, uint32(n))
	}
	if errno != 0 {
		q.st.Bad++
		q.log.Warn("blockdev: bad request", zap.Stringer("req", r), zap.Uint32("op_flags", d.OpFlags), zap.String("why", why), zap.Error(errno))
		r.Complete(errno)
		return
	}
	if r.Op == OpRead || r.Op == OpWrite {
		r.Buf = q.buf(tag)[:r.Len]
	}
	if r.Op == OpWrite && q.userCopy {
		// USER_COPY: the WRITE data is fetched from the request itself.
		if got, err := unix.Pread(q.fd, r.Buf, ublk.UserCopyOffset(q.id, tag, 0)); err != nil || got != r.Len {
			q.log.Error("blockdev: ublk user copy of WRITE data failed", zap.Stringer("req", r), zap.Int("got", got), zap.Error(err))
			r.Complete(unix.EIO)
			return
		}
	}
	if q.s.async != nil {
		r.async = true
		q.inflight++
		q.s.async.Start(q.h, r)
		return
	}
	serveSync(q.s.be, q.s.mapper, &q.s.geo, r)
}

// ublkOp maps a descriptor's op and flags to the server's (the ABUSE
// numbering). ublk never sends PREFLUSH: the block layer turns it into a
// separate FLUSH for a device with a volatile cache.
func ublkOp(opFlags uint32) (Op, uint32) {
	var op Op
	switch opFlags & ublk.OpMask {
	case ublk.OpRead:
		op = OpRead
	case ublk.OpWrite:
		op = OpWrite
	case ublk.OpFlush:
		op = OpFlush
	case ublk.OpDiscard:
		op = OpDiscard
	case ublk.OpWriteZeroes:
		op = OpWriteZeroes
	default:
		op = Op(0xff) // refused by geometry.check
	}
	var f uint32
	if opFlags&ublk.FlagFUA != 0 {
		f |= FlagFUA
	}
	if opFlags&ublk.FlagNoUnmap != 0 {
		f |= FlagNoUnmap
	}
	return op, f
}

// finish completes r: READ data goes to the request (by pwrite with
// USER_COPY, else through the tag's buffer), and COMMIT_AND_FETCH_REQ
// carries the result and re-arms the tag.
func (q *uqueue) finish(r *Request, res int32, keep []byte) {
	if !r.active {
		q.log.Error("blockdev: request completed twice", zap.Stringer("req", r))
		return
	}
	r.active = false
	if r.async {
		r.async = false
		q.inflight--
	}
	tag := int(r.tag)
	if res == 0 && r.Op == OpRead {
		src := r.Buf
		if keep != nil {
			src = keep
		}
		if q.userCopy {
			if got, err := unix.Pwrite(q.fd, src, ublk.UserCopyOffset(q.id, tag, 0)); err != nil || got != len(src) {
				q.log.Error("blockdev: ublk user copy of READ data failed", zap.Stringer("req", r), zap.Int("got", got), zap.Error(err))
				res = -int32(unix.EIO)
			}
		} else if keep != nil {
			copy(r.Buf, keep)
		}
	}
	if res == 0 && (r.Op == OpRead || r.Op == OpWrite) {
		res = int32(r.Len) // READ/WRITE complete with the bytes done
	}
	if res < 0 {
		q.log.Debug("blockdev: request failed", zap.Stringer("req", r), zap.Error(unix.Errno(-res)))
	}
	q.arm(tag, q.commitOp, res)
	q.checkStoppedIfIdle()
}

func (q *uqueue) checkStoppedIfIdle() {
	if q.armed == 0 && q.inflight == 0 {
		q.checkStopped()
	}
}

// close ends the loop (no command may be armed any more) and unmaps.
func (q *uqueue) close() {
	q.l.Close()
	unix.Munmap(q.descs)
	unix.Munmap(q.bufs)
}
