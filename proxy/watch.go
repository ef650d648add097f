package proxy

import (
	"errors"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio"
)

// A direction whose dst takes bytes more slowly than src sends them stops
// reading src (flow control: see direction). Nothing then reads src, so
// nothing would see it reset: a client that gave up on an upstream that
// stopped reading kept both sockets until the upstream read again, or
// until -idle-timeout (off by default). An epoll proxy hears of the reset
// anyway, as epoll reports EPOLLERR for every registered socket; here it
// takes an op. So each worker looks over its connections every watchEvery,
// and a direction still waiting on the same op as at the look before gets
// a poll on src for its error (POLLERR, reported whatever a poll asks for),
// cancelled once the op completes.
//
// A reset seen so changes nothing while dst takes bytes: the direction
// still sends what it holds, and reads what src's socket had received
// before the reset, and then ends with the reset, as it would have without
// the watch. What it bounds is the wait: once src is gone, a dst that takes
// nothing for flushStall (30 s, or -idle-timeout if shorter) is reset with
// it, as after any reset. A direction that keeps moving never waits a
// second on one op, so bulk and request/response traffic pay only the look
// (a loop with connections wakes once a second for it); a connection stuck
// for a second pays one poll.

// watchEvery is how often a worker looks for directions stuck on dst: a
// reset of their src is seen one to two of these after it came.
const watchEvery = time.Second

// startSweep arms the worker's look at its connections, once: it re-arms
// itself while the worker has connections.
func (w *worker) startSweep() {
	if w.sweepTimer != nil {
		return
	}
	if w.sweepFn == nil {
		w.sweepFn = w.sweep
	}
	w.sweepTimer = w.h.AfterFunc(watchEvery, w.sweepFn)
}

func (w *worker) sweep(uio.Handle) {
	w.sweepTimer = nil
	now := monotime()
	for c := range w.conns {
		for i := range c.d {
			if c.state != stOpen { // a look may end the connection
				break
			}
			c.d[i].checkStuck(now)
		}
	}
	if len(w.conns) > 0 {
		w.startSweep()
	}
}

// stuck reports whether the direction waits on dst with src unread: a send
// in flight and no recv armed, or with splice a poll for dst's room.
func (d *direction) stuck() bool {
	if !d.busy || d.done || d.eofSeen {
		return false
	}
	if d.pipe[0] >= 0 {
		return d.pollOut
	}
	return !d.recvArmed
}

// checkStuck is the sweep's look at one direction. The first look that
// finds it stuck notes the op it waits on; the next, if it still waits on
// that op, watches src, or, src being gone, gives up on a dst that has
// taken nothing for flushStall. A watch that fired without an error (a
// FIN: on io_uring a poll reports RDHUP too) is not made again for the
// same op.
func (d *direction) checkStuck(now time.Duration) {
	if !d.stuck() {
		d.stuckSeen = false
		return
	}
	if !d.stuckSeen || d.stuckOn != d.id {
		d.stuckSeen, d.stuckOn, d.stuckAt = true, d.id, now
		return
	}
	c := d.c
	if d.srcGone || d.srcErr != nil {
		if now-d.stuckAt >= c.flushStall() {
			// dst has taken nothing for as long as a flush waits.
			c.reset(unix.ECONNRESET, d.src, false)
		}
		return
	}
	if d.watched {
		return
	}
	d.watched = true
	if d.watchDone == nil {
		d.watchDone = d.onWatch
	}
	id, err := c.w.h.Start(uio.Op{Kind: uio.OpPoll, Fd: d.src, Events: unix.POLLERR, Done: d.watchDone})
	if err != nil {
		if !errors.Is(err, uio.ErrClosed) {
			c.w.s.log.Warn("watch for a reset of a stalled connection's peer", zap.String("mapping", c.ms.label), zap.Error(err))
		}
		return
	}
	d.watchID, d.watchArmed = id, true
	c.ops++
}

// unwatch cancels the watch once the op it was made for completed; its
// completion comes back to onWatch.
func (d *direction) unwatch() {
	d.stuckSeen, d.watched = false, false
	if d.watchArmed {
		d.c.w.h.Cancel(d.watchID)
	}
}

// onWatch: src reported an error while the direction waited on dst.
func (d *direction) onWatch(h uio.Handle, r uio.Result) {
	c := d.c
	d.watchArmed = false
	if !c.opEnded(stOpen) {
		return
	}
	if r.Res <= 0 || r.Res&unix.POLLERR == 0 {
		return // cancelled, or no error (a hangup: src's FIN, read when the direction moves)
	}
	if d.tcp {
		// A reset leaves the socket in TCP_CLOSE (we have not closed
		// it); POLLERR alone may be its error queue. TCP_INFO, unlike
		// SO_ERROR, leaves the error for the recv that reads what the
		// socket still holds, so the stream still ends with the reset.
		ti, err := unix.GetsockoptTCPInfo(d.src, unix.IPPROTO_TCP, unix.TCP_INFO)
		c.w.syscalls.add(1)
		if err != nil || ti.State != tcpClose {
			return
		}
	}
	d.srcGone = true
	c.w.s.log.Debug("peer reset while the proxy was not reading it", zap.String("mapping", c.ms.label))
}
