package blockdev

import (
	"errors"
	"fmt"
	"sync"

	"github.com/userland-io/uio"
	"github.com/userland-io/uio/blockdev/nbd"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

const (
	nbdRecvBuf    = 256 << 10 // batch of small replies per receive
	nbdDirectRecv = 32 << 10  // READ data at least this large is received in place
	nbdMaxIov     = 1024      // IOV_MAX
)

// nbdConn is one NBD connection in the transmission phase. Apart from
// bind and close, everything runs on the goroutine of the loop it is bound
// to.
type nbdConn struct {
	d   *NBD
	id  int
	fd  int
	log *zap.Logger

	mu sync.Mutex
	l  *uio.Loop // nil until the first request (and after a clean unbind)
	// h is l's Handle, set by the first request that runs on l (before
	// any op of c starts) and used on l only.
	h      uio.Handle
	closed bool

	broken  error
	next    uint64 // next handle
	pending map[uint64]*nbdCmd

	out      [][]byte // queued, not yet sent
	sending  bool
	iov      [][]byte
	queued   uint64 // bytes ever queued
	sent     uint64 // bytes ever sent
	inFlight int    // ops of this connection in the kernel

	receiving bool
	direct    bool // the receive in flight fills cur.buf in place
	rbuf      []byte
	rpos      int
	rend      int
	cur       *nbdCmd // READ whose data is being received
	curGot    int
}

// nbdCmd is one NBD command in flight.
type nbdCmd struct {
	hdr  [nbd.RequestSize]byte
	cmd  uint16
	buf  []byte
	end  uint64 // stream position just past its request
	done func(error)
}

func newNBDConn(d *NBD, id, fd int) *nbdConn {
	return &nbdConn{d: d, id: id, fd: fd, log: d.log.With(zap.Int("conn", id)), pending: map[uint64]*nbdCmd{}}
}

// bind returns the loop driving c, binding it to l (or, for l == nil, the
// backend's own loop) if it has none yet. nil once the backend is closed.
func (c *nbdConn) bind(l *uio.Loop, d *NBD) *uio.Loop {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	if c.l != nil {
		defer c.mu.Unlock()
		return c.l
	}
	c.mu.Unlock()
	if l == nil {
		if l = d.ownLoop(); l == nil {
			return nil
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.l == nil && !c.closed {
		c.l = l
	}
	return c.l
}

// runSteps runs the commands one after the other; the first failure ends
// the operation.
func (c *nbdConn) runSteps(steps []nbdStep, done func(error)) {
	s := steps[0]
	c.send(s, func(err error) {
		if err != nil || len(steps) == 1 {
			done(err)
			return
		}
		c.runSteps(steps[1:], done)
	})
}

// send queues one command and makes sure the send and the receive run.
func (c *nbdConn) send(s nbdStep, done func(error)) {
	if c.broken != nil {
		done(fmt.Errorf("%w (%v): %w", errNBDBroken, c.broken, unix.EIO))
		return
	}
	h := c.next
	c.next++
	m := &nbdCmd{cmd: s.cmd, done: done}
	nbd.PutRequest(m.hdr[:], s.flags, s.cmd, h, s.off, s.n)
	c.out = append(c.out, m.hdr[:])
	c.queued += nbd.RequestSize
	switch s.cmd {
	case nbd.CmdWrite:
		if len(s.buf) > 0 {
			c.out = append(c.out, s.buf)
			c.queued += uint64(len(s.buf))
		}
	case nbd.CmdRead:
		m.buf = s.buf
	}
	m.end = c.queued
	c.pending[h] = m
	c.kickSend()
	c.armRecv()
}

func (c *nbdConn) l0() *uio.Loop {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.l
}

// kickSend sends everything queued in one gathered sendmsg, unless one is
// in flight already (what queues meanwhile goes in the next).
func (c *nbdConn) kickSend() {
	if c.sending || len(c.out) == 0 || c.broken != nil {
		return
	}
	c.iov = append(c.iov[:0], c.out[:min(len(c.out), nbdMaxIov)]...)
	_, err := c.h.Start(uio.Op{Kind: uio.OpSendmsg, Fd: c.fd, Iovecs: c.iov, Flags: unix.MSG_NOSIGNAL, Done: c.onSent})
	if err != nil {
		c.fail(fmt.Errorf("sendmsg: %w", err))
		return
	}
	c.sending = true
	c.inFlight++
}

func (c *nbdConn) onSent(h uio.Handle, r uio.Result) {
	c.sending = false
	c.inFlight--
	clear(c.iov)
	switch {
	case c.broken != nil:
		return
	case r.Res == -int32(unix.ECANCELED):
		c.fail(errors.New("the loop closed while requests were being sent"))
		return
	case r.Res < 0:
		c.fail(fmt.Errorf("sendmsg: %w", r.Err()))
		return
	case r.Res == 0:
		c.fail(errors.New("sendmsg sent nothing"))
		return
	}
	n := int(r.Res)
	c.sent += uint64(n)
	k := 0
	for k < len(c.out) && n >= len(c.out[k]) {
		n -= len(c.out[k])
		k++
	}
	if k < len(c.out) {
		c.out[k] = c.out[k][n:]
	}
	rest := copy(c.out, c.out[k:])
	clear(c.out[rest:])
	c.out = c.out[:rest]
	c.kickSend()
}

// armRecv keeps the one receive of the connection in flight: into the
// READ's own buffer when a large part of its data is still to come, else
// into the reply buffer.
func (c *nbdConn) armRecv() {
	if c.receiving || c.broken != nil {
		return
	}
	var buf []byte
	c.direct = c.cur != nil && c.rpos == c.rend && len(c.cur.buf)-c.curGot >= nbdDirectRecv
	if c.direct {
		buf = c.cur.buf[c.curGot:]
	} else {
		if c.rbuf == nil {
			c.rbuf = make([]byte, nbdRecvBuf)
		}
		if c.rpos == c.rend {
			c.rpos, c.rend = 0, 0
		} else if len(c.rbuf)-c.rend < nbdDirectRecv {
			c.rend = copy(c.rbuf, c.rbuf[c.rpos:c.rend])
			c.rpos = 0
		}
		buf = c.rbuf[c.rend:]
	}
	_, err := c.h.Start(uio.Op{Kind: uio.OpRecv, Fd: c.fd, Buf: buf, Done: c.onRecv})
	if err != nil {
		c.fail(fmt.Errorf("recv: %w", err))
		return
	}
	c.receiving = true
	c.inFlight++
}

func (c *nbdConn) onRecv(h uio.Handle, r uio.Result) {
	c.receiving = false
	c.inFlight--
	switch {
	case c.broken != nil:
		return
	case r.Res == -int32(unix.ECANCELED):
		// The loop is closing. A connection with nothing outstanding is
		// intact (nothing was received) and may serve a later loop.
		if len(c.pending) == 0 && len(c.out) == 0 && c.cur == nil && !c.sending {
			c.mu.Lock()
			c.l = nil
			c.mu.Unlock()
			return
		}
		c.fail(errors.New("the loop closed with requests in flight"))
		return
	case r.Res < 0:
		c.fail(fmt.Errorf("recv: %w", r.Err()))
		return
	case r.Res == 0:
		c.fail(errors.New("the server closed the connection"))
		return
	}
	n := int(r.Res)
	if c.direct {
		c.curGot += n // received in place
	} else {
		c.rend += n
	}
	if err := c.parse(); err != nil {
		c.fail(err)
		return
	}
	c.armRecv()
}

// parse consumes the buffered replies, completing their commands.
func (c *nbdConn) parse() error {
	for c.broken == nil {
		if m := c.cur; m != nil {
			k := copy(m.buf[c.curGot:], c.rbuf[c.rpos:c.rend])
			c.rpos += k
			c.curGot += k
			if c.curGot < len(m.buf) {
				return nil
			}
			c.cur = nil
			m.done(nil)
			continue
		}
		if c.rend-c.rpos < nbd.SimpleReplySize {
			return nil
		}
		errval, h, err := nbd.ParseSimpleReply(c.rbuf[c.rpos:c.rend])
		if err != nil {
			return err
		}
		m, ok := c.pending[h]
		if !ok {
			return fmt.Errorf("%w: reply for handle %#x, which is not in flight", nbd.ErrProtocol, h)
		}
		if m.end > c.sent {
			return fmt.Errorf("%w: reply for handle %#x before its request was sent", nbd.ErrProtocol, h)
		}
		c.rpos += nbd.SimpleReplySize
		delete(c.pending, h)
		if errval == 0 && m.cmd == nbd.CmdRead && len(m.buf) > 0 {
			c.cur, c.curGot = m, 0
			continue
		}
		if errval != 0 {
			c.log.Debug("blockdev: NBD server failed a command", zap.Uint16("cmd", m.cmd), zap.Uint32("error", errval))
			m.done(fmt.Errorf("blockdev: NBD server error %d: %w", errval, nbd.Errno(errval)))
			continue
		}
		m.done(nil)
	}
	return nil
}

// fail breaks the connection: every command in flight, and every later
// one, fails with EIO. The socket is shut down so the ops still in the
// kernel end at once.
func (c *nbdConn) fail(why error) {
	if c.broken != nil {
		return
	}
	c.broken = why
	c.log.Error("blockdev: NBD connection broken; its requests fail with EIO", zap.Error(why), zap.Int("in_flight", len(c.pending)+btoi(c.cur != nil)))
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	err := fmt.Errorf("%w (%v): %w", errNBDBroken, why, unix.EIO)
	pending := c.pending
	c.pending = map[uint64]*nbdCmd{}
	if c.cur != nil { // a READ whose data was still coming
		pending[^uint64(0)] = c.cur
		c.cur = nil
	}
	clear(c.out)
	c.out = c.out[:0]
	for _, m := range pending {
		m.done(err)
	}
}

// close sends NBD_CMD_DISC on an intact idle connection and closes it. The
// loop it was bound to has closed (or never ran), so no op is in flight.
func (c *nbdConn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	live := c.l != nil
	c.mu.Unlock()
	if c.broken == nil && !live && len(c.pending) == 0 {
		var b [nbd.RequestSize]byte
		nbd.PutRequest(b[:], 0, nbd.CmdDisc, c.next, 0, 0)
		unix.Write(c.fd, b[:]) // a soft disconnect; best effort
	}
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	if !live {
		unix.Close(c.fd)
	}
	// A connection still bound to a running loop keeps its fd open until
	// the process ends: its ops may still name it.
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
