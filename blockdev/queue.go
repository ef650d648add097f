package blockdev

import (
	"errors"
	"sync"
	"unsafe"

	"github.com/userland-io/uio"
	"github.com/userland-io/uio/blockdev/abuse"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// maxPumps bounds the COMMIT_FETCH calls of one pump; a queue that is still
// busy after that yields to the rest of the loop's round and continues in
// the next.
const maxPumps = 32

// queue serves one hardware queue on its own loop. Everything but stop runs
// on the loop's goroutine.
type queue struct {
	s    *Server
	id   int
	kq   kqueue
	l    *uio.Loop
	h    uio.Handle // l's, set by the first pump; the queue runs only on l
	log  *zap.Logger
	reqs []Request // by tag

	done []abuse.Completion // finished, not yet committed
	keep [][]byte           // memory named by completions in done

	// userCopy: the kernel queue has no per-tag buffers (abuse
	// USER_COPY); data moves where completions name it, or through
	// scratch with Copy. Only with a synchronous backend, which serves one
	// request at a time, so one scratch buffer of max_io bytes suffices.
	userCopy bool
	scratch  []byte
	// waitMs/spinUs > 0: COMMIT_FETCH waits in the kernel for the next
	// request (synchronous backends only: the loop has nothing else to do).
	waitMs, spinUs int

	polling    bool // a poll op is in the kernel
	pumpPosted bool // a pump is posted for the next round
	inPump     bool
	inflight   int  // async requests not yet completed
	dead       bool // the queue fd no longer serves the device
	stopping   bool
	stopOnce   sync.Once
	stopped    chan struct{}

	st Stats
}

func newQueue(s *Server, kq kqueue, id int) (*queue, error) {
	depth := int(s.cfg.QueueDepth)
	l, err := uio.NewLoop(uio.Config{Backend: s.engine, Depth: max(depth+16, 64), Logger: s.log})
	if err != nil {
		return nil, err
	}
	q := &queue{
		s: s, id: id, kq: kq, l: l,
		log:     s.log.With(zap.Int("queue", id)),
		reqs:    make([]Request, depth),
		done:    make([]abuse.Completion, 0, depth),
		stopped: make(chan struct{}),
	}
	for t := range q.reqs {
		q.reqs[t] = Request{q: q, tag: uint16(t), Queue: id}
	}
	if kq.UserCopy() {
		q.userCopy = true
		q.scratch = make([]byte, s.cfg.MaxIOBytes)
	}
	if s.async == nil {
		q.waitMs, q.spinUs = s.fetchWaitMs, s.fetchSpinUs
	}
	if err := l.Post(q.pump); err != nil {
		l.Close()
		return nil, err
	}
	return q, nil
}

// pump commits what is done and fetches what waits, until the kernel has
// nothing more or the backend is working asynchronously on all of it; then
// makes sure a poll is armed.
func (q *queue) pump(h uio.Handle) {
	q.h = h
	q.pumpPosted = false
	if q.dead || q.stopping {
		return
	}
	q.inPump = true
	for i := 0; ; i++ {
		if i == maxPumps {
			q.schedulePump()
			break
		}
		reqs, err := q.kq.CommitFetchWait(q.done, q.waitMs, q.spinUs)
		q.st.Calls++
		q.done = q.done[:0]
		clear(q.keep)
		q.keep = q.keep[:0]
		if err != nil {
			q.inPump = false
			q.fail(err)
			return
		}
		q.st.Requests += int64(len(reqs))
		for k := range reqs {
			q.dispatch(&reqs[k])
		}
		if q.waitMs > 0 && len(reqs) == 0 {
			break // waited, nothing came: the queue is idle
		}
		if q.waitMs == 0 && len(q.done) == 0 {
			break // nothing fetched, or all of it in the backend's hands
		}
	}
	q.inPump = false
	q.armPoll()
}

func (q *queue) schedulePump() {
	if q.pumpPosted || q.dead || q.stopping {
		return
	}
	q.pumpPosted = true
	if err := q.l.Post(q.pump); err != nil {
		q.pumpPosted = false
	}
}

func (q *queue) armPoll() {
	if q.polling || q.dead || q.stopping {
		return
	}
	_, err := q.h.Start(uio.Op{Kind: uio.OpPoll, Fd: q.kq.Fd(), Events: unix.POLLIN, Done: q.onPoll})
	if err != nil {
		if !errors.Is(err, uio.ErrClosed) {
			q.fail(err)
		}
		return
	}
	q.polling = true
}

func (q *queue) onPoll(h uio.Handle, r uio.Result) {
	q.polling = false
	q.st.Polls++
	switch {
	case r.Res == -int32(unix.ECANCELED) && q.stopping:
	case r.Res < 0:
		q.fail(r.Err())
	case uint32(r.Res)&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0:
		q.markDead("the queue no longer serves the device (removed, or another server took over)")
	default:
		q.pump(q.h)
	}
}

func (q *queue) fail(err error) {
	if errors.Is(err, unix.ENOTCONN) {
		q.markDead("the queue no longer serves the device (removed, or another server took over)")
		return
	}
	if q.stopping {
		return
	}
	q.log.Error("blockdev: queue failed; it stops serving (the device's I/O fails with EIO)", zap.Error(err))
	q.markDead(err.Error())
	// Closing the queue fd ends the server generation: the kernel fails the
	// device's I/O instead of letting it hang. Done on stop.
}

func (q *queue) markDead(why string) {
	if q.dead {
		return
	}
	q.dead = true
	q.log.Debug("blockdev: queue stopped", zap.String("why", why))
	q.markStopped()
}

// stop ends the queue from outside the loop: cancel the poll, let the
// backend's ops finish, close the loop and then the queue fd.
func (q *queue) stop() {
	q.l.Post(func(h uio.Handle) { q.stopping = true })
	q.l.Close() // cancels the poll; waits for every op's Done
	q.kq.Close()
	q.markStopped()
}

func (q *queue) markStopped() {
	q.stopOnce.Do(func() {
		close(q.stopped)
		select {
		case q.s.anyStop <- struct{}{}:
		default:
		}
	})
}

// dispatch checks one fetched request and hands it to the backend.
func (q *queue) dispatch(kr *abuse.Request) {
	if int(kr.Tag) >= len(q.reqs) {
		// The kernel never sends this; a completion for it would be refused.
		q.log.Error("blockdev: request with an out-of-range tag", zap.Uint16("tag", kr.Tag))
		return
	}
	r := &q.reqs[kr.Tag]
	if r.active {
		q.log.Error("blockdev: kernel reused a busy tag", zap.Uint16("tag", kr.Tag))
	}
	*r = Request{
		Op: Op(kr.Op()), Flags: kr.OpFlags &^ abuse.OpMask, Offset: int64(kr.Offset), Len: int(kr.Len),
		Queue: q.id, q: q, seq: kr.Seq, tag: kr.Tag, active: true,
	}
	if errno, why := q.s.geo.check(r.Op, kr.Offset, kr.Len); errno != 0 {
		q.st.Bad++
		q.log.Warn("blockdev: bad request", zap.Stringer("req", r), zap.String("why", why), zap.Error(errno))
		r.Complete(errno)
		return
	}
	if q.userCopy {
		q.serveUserCopy(r)
		return
	}
	if r.Op == OpRead || r.Op == OpWrite {
		r.Buf = q.kq.Buffer(kr.Tag)[:r.Len]
	}
	if q.s.async != nil {
		r.async = true
		q.inflight++
		q.s.async.Start(q.h, r)
		return
	}
	serveSync(q.s.be, q.s.mapper, &q.s.geo, r)
}

// serveUserCopy serves r on a USER_COPY queue (synchronous backend). Data
// the backend holds in one piece of memory moves once: a READ completes
// with its address, a WRITE with the address where it belongs (the kernel
// stores the data there before it ends the request). Anything else goes
// through the queue's scratch buffer: a WRITE's data is copied out of the
// request first, a READ's is copied in when it completes (finish).
func (q *queue) serveUserCopy(r *Request) {
	s := q.s
	if r.Op != OpRead && r.Op != OpWrite {
		serveSync(s.be, s.mapper, &s.geo, r)
		return
	}
	if r.Op == OpWrite && s.wmapper != nil && !(s.geo.flush && r.Flags&(FlagFUA|FlagPreflush) != 0) {
		if p := s.wmapper.MappedForWrite(r.Offset, r.Len); p != nil {
			r.finish(0, addrOf(p), p)
			return
		}
	}
	r.Buf = q.scratch[:r.Len]
	if r.Op == OpWrite {
		if err := q.kq.Copy(r.seq, r.tag, 0, r.Buf); err != nil {
			q.log.Error("blockdev: copying WRITE data out of the request failed", zap.Stringer("req", r), zap.Error(err))
			r.Complete(unix.EIO)
			return
		}
	}
	serveSync(s.be, s.mapper, &s.geo, r)
}

// serveSync runs r on a synchronous backend and completes it.
func serveSync(be Backend, m Mapper, g *geometry, r *Request) {
	var err error
	switch r.Op {
	case OpRead:
		if m != nil {
			if p := m.Mapped(r.Offset, r.Len); p != nil {
				r.CompleteFrom(p)
				return
			}
		}
		err = be.ReadAt(r.Buf, r.Offset)
	case OpWrite:
		if r.Flags&FlagPreflush != 0 && g.flush {
			err = be.Flush()
		}
		if err == nil {
			err = be.WriteAt(r.Buf, r.Offset)
		}
		if err == nil && r.Flags&FlagFUA != 0 && g.flush {
			err = be.Flush()
		}
	case OpFlush:
		err = be.Flush()
	case OpDiscard:
		err = be.(Discarder).Discard(r.Offset, int64(r.Len))
	case OpWriteZeroes:
		err = be.(ZeroWriter).WriteZeroes(r.Offset, int64(r.Len))
	default:
		err = unix.EINVAL
	}
	r.Complete(err)
}

// finish records r's completion; the next COMMIT_FETCH delivers it.
func (r *Request) finish(res int32, addr uint64, keep []byte) {
	if r.uq != nil {
		r.uq.finish(r, res, keep)
		return
	}
	q := r.q
	if q == nil {
		return
	}
	if !r.active {
		q.log.Error("blockdev: request completed twice", zap.Stringer("req", r))
		return
	}
	r.active = false
	if r.async {
		q.inflight--
	}
	if q.dead || q.stopping {
		return // nobody to tell: the kernel has failed or requeued it
	}
	if q.userCopy && res == 0 && r.Op == OpRead && addr == 0 && r.Len > 0 {
		// the data is in r.Buf (scratch): into the request before it
		// completes
		if err := q.kq.Copy(r.seq, r.tag, 0, r.Buf); err != nil {
			q.log.Error("blockdev: copying READ data into the request failed", zap.Stringer("req", r), zap.Error(err))
			res = -int32(unix.EIO)
		}
	}
	if res != 0 {
		q.log.Debug("blockdev: request failed", zap.Stringer("req", r), zap.Error(unix.Errno(-res)))
	}
	q.done = append(q.done, abuse.Completion{Seq: r.seq, Tag: r.tag, Result: res, Addr: addr})
	if keep != nil {
		q.keep = append(q.keep, keep)
	}
	if !q.inPump {
		q.schedulePump()
	}
}

func addrOf(p []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&p[0]))) }
