package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio"
)

type connState uint8

const (
	stConnecting connState = iota // resolving the target or connecting to it
	stOpen                        // forwarding
	stClosing                     // waiting for the ops in flight to complete
	stClosed                      // the sockets are being (or have been) closed
)

// The two directions of a connection.
const (
	dirUp   = 0 // client -> upstream
	dirDown = 1 // upstream -> client
)

// conn is one proxied connection. It lives on the loop that accepted it and
// is only touched there.
type conn struct {
	w   *worker
	ms  *mapState
	ctr *mapCounters

	cfd, ufd int // client and upstream sockets; -1 once closed
	state    connState
	ops      int // ops in flight on the sockets (connect, recv, send, poll, splice)
	d        [2]direction

	// Connecting.
	addrs        []netip.Addr
	next         int
	lastErr      error
	resolving    bool
	connectID    uio.OpID
	connectTimer *uio.Timer
	retryTimer   *uio.Timer    // out of descriptors for the upstream socket
	retryDelay   time.Duration // its back-off
	retryFn      func()
	timedOut     bool
	connectDone  func(uio.Result)

	// Idle timeout.
	idleOn    bool
	last      time.Duration // monotonic time of the last traffic
	idleTimer *uio.Timer
	idleFn    func()

	closes    int // OpClose in flight
	closeDone func(uio.Result)
}

// direction moves one way: recv from src into buf, send buf to dst (or,
// with splice, src -> pipe -> dst). At most one op is in flight per
// direction, which is the whole of its flow control.
type direction struct {
	c        *conn
	idx      int
	src, dst int
	buf      []byte
	n, off   int // bytes in buf, bytes of them sent
	done     bool
	busy     bool
	id       uio.OpID

	recvDone, sendDone func(uio.Result)

	// Splice.
	pipe          [2]int // read end, write end
	inPipe        int    // bytes in the pipe not yet spliced out
	pollOut       bool   // the poll in flight waits for dst, not src
	pollDone      func(uio.Result)
	spliceInDone  func(uio.Result)
	spliceOutDone func(uio.Result)
}

var epoch = time.Now()

func monotime() time.Duration { return time.Since(epoch) }

// newConn takes over an accepted socket (and the -max-conns slot that was
// reserved for it) and starts connecting to the mapping's target.
func (w *worker) newConn(ms *mapState, fd int) {
	c := &conn{w: w, ms: ms, ctr: &w.ctr[ms.idx], cfd: fd, ufd: -1}
	c.d[dirUp].pipe, c.d[dirDown].pipe = [2]int{-1, -1}, [2]int{-1, -1}
	c.connectDone = c.onConnect
	c.closeDone = c.onClose
	w.conns[c] = struct{}{}
	c.ctr.opened.add(1)
	setNoDelay(fd)
	w.syscalls.add(1)
	if t := w.s.cfg.ConnectTimeout; t > 0 {
		c.connectTimer = w.loop.AfterFunc(t, c.onConnectTimeout)
	}
	if ms.upAddrs != nil {
		c.addrs = ms.upAddrs
		c.connectNext()
		return
	}
	c.resolving = true
	go c.resolve()
}

// resolve looks the target up off the loop and hands the answer back to it.
func (c *conn) resolve() {
	ctx := c.w.s.ctx
	if t := c.w.s.cfg.ConnectTimeout; t > 0 {
		var cancel func()
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", c.ms.m.Host)
	c.w.loop.Post(func() { c.resolved(ips, err) })
}

func (c *conn) resolved(ips []netip.Addr, err error) {
	c.resolving = false
	if c.state != stConnecting {
		return // timed out or shut down meanwhile; already closed
	}
	if err != nil {
		c.lastErr = fmt.Errorf("resolving %s: %w", c.ms.m.Host, err)
		c.failConnect()
		return
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	c.addrs = ips
	c.connectNext()
}

// connectNext tries the next address of the target.
func (c *conn) connectNext() {
	w := c.w
	for c.next < len(c.addrs) {
		ip := c.addrs[c.next]
		c.next++
		family := unix.AF_INET
		if ip.Is6() {
			family = unix.AF_INET6
		}
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		w.syscalls.add(1)
		if err != nil {
			c.lastErr = fmt.Errorf("socket for %s: %w", ip, err)
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				// Out of descriptors: keep the client waiting (as if still
				// in the backlog) and try again after a back-off, within
				// -connect-timeout. Accepts meanwhile fail with EMFILE and
				// back off too.
				c.next--
				c.retryDelay = min(max(c.retryDelay*2, minAcceptBackoff), maxAcceptBackoff)
				w.s.warnFds(c.ms, err, c.retryDelay)
				if c.retryFn == nil {
					c.retryFn = c.retryConnect
				}
				c.retryTimer = w.loop.AfterFunc(c.retryDelay, c.retryFn)
				return
			}
			continue
		}
		setNoDelay(fd)
		w.syscalls.add(1)
		id, err := w.loop.Submit(uio.Op{Kind: uio.OpConnect, Fd: fd, Addr: sockaddr(ip, c.ms.m.HostPort), Done: c.connectDone})
		if err != nil {
			unix.Close(fd)
			w.syscalls.add(1)
			c.lastErr = err
			break
		}
		c.ufd, c.connectID = fd, id
		c.ops++
		return
	}
	c.failConnect()
}

func (c *conn) retryConnect() {
	c.retryTimer = nil
	if c.state == stConnecting {
		c.connectNext()
	}
}

func (c *conn) onConnect(r uio.Result) {
	c.ops--
	if r.Res == 0 && c.state == stConnecting {
		c.established()
		return
	}
	unix.Close(c.ufd)
	c.w.syscalls.add(1)
	c.ufd = -1
	switch {
	case c.state != stConnecting:
		c.maybeClose()
	case c.timedOut:
		c.failConnect()
	default:
		c.lastErr = fmt.Errorf("%s: %w", netip.AddrPortFrom(c.addrs[c.next-1], uint16(c.ms.m.HostPort)), r.Err())
		c.connectNext()
	}
}

func (c *conn) onConnectTimeout() {
	c.connectTimer = nil
	if c.state != stConnecting {
		return
	}
	c.timedOut = true
	c.lastErr = fmt.Errorf("no connection within -connect-timeout %v", c.w.s.cfg.ConnectTimeout)
	if c.ops > 0 {
		c.w.loop.Cancel(c.connectID) // onConnect sees timedOut
		return
	}
	c.failConnect() // still resolving
}

// failConnect gives up on the target: one warning, and the client closed.
func (c *conn) failConnect() {
	c.ctr.connectErrors.add(1)
	client := "?"
	if sa, err := unix.Getpeername(c.cfd); err == nil {
		client = sockaddrString(sa)
	}
	c.w.s.log.Warn("upstream unavailable, closing client",
		zap.String("mapping", c.ms.label), zap.String("target", c.ms.m.Target()),
		zap.String("client", client), zap.Error(c.lastErr))
	c.stopTimers()
	c.state = stClosing
	c.maybeClose()
}

// established starts forwarding both ways.
func (c *conn) established() {
	c.stopTimers()
	c.state = stOpen
	s := c.w.s
	c.d[dirUp] = direction{c: c, idx: dirUp, src: c.cfd, dst: c.ufd, pipe: [2]int{-1, -1}}
	c.d[dirDown] = direction{c: c, idx: dirDown, src: c.ufd, dst: c.cfd, pipe: [2]int{-1, -1}}
	for i := range c.d {
		d := &c.d[i]
		if s.splice {
			if err := d.openPipe(s.cfg.BufferSize); err != nil {
				s.log.Warn("splice: no pipe, closing connection", zap.String("mapping", c.ms.label), zap.Error(err))
				c.abort(-1)
				return
			}
			d.pollDone, d.spliceInDone, d.spliceOutDone = d.onPoll, d.onSpliceIn, d.onSpliceOut
		} else {
			d.buf = c.w.getBuf()
			d.recvDone, d.sendDone = d.onRecv, d.onSend
		}
	}
	if t := s.cfg.IdleTimeout; t > 0 {
		c.idleOn = true
		c.last = monotime()
		c.idleFn = c.idleCheck
		c.idleTimer = c.w.loop.AfterFunc(t, c.idleFn)
	}
	for i := range c.d {
		if c.state == stOpen {
			c.d[i].start()
		}
	}
}

func (c *conn) stopTimers() {
	if c.connectTimer != nil {
		c.connectTimer.Stop()
		c.connectTimer = nil
	}
	if c.idleTimer != nil {
		c.idleTimer.Stop()
		c.idleTimer = nil
	}
	if c.retryTimer != nil {
		c.retryTimer.Stop()
		c.retryTimer = nil
	}
}

func (c *conn) idleCheck() {
	c.idleTimer = nil
	if c.state != stOpen {
		return
	}
	idle := c.w.s.cfg.IdleTimeout
	if el := monotime() - c.last; el < idle {
		c.idleTimer = c.w.loop.AfterFunc(idle-el, c.idleFn)
		return
	}
	c.ctr.idleClosed.add(1)
	c.w.s.log.Debug("idle timeout, closing connection", zap.String("mapping", c.ms.label), zap.Duration("idle", idle))
	c.abort(-1)
}

// fail ends the connection after an error on one side: the other side
// (rst) gets a reset, so that a broken stream never looks like a complete
// one.
func (c *conn) fail(err error, rst int) {
	if errors.Is(err, unix.ECANCELED) {
		c.abort(-1)
		return
	}
	c.ctr.resets.add(1)
	c.w.s.log.Debug("connection reset", zap.String("mapping", c.ms.label), zap.Error(err))
	c.abort(rst)
}

// abort closes the connection now: it cancels the ops in flight and closes
// both sockets once they have completed. rst >= 0 is a socket to reset
// (SO_LINGER 0) rather than close with a FIN.
func (c *conn) abort(rst int) {
	if c.state >= stClosing {
		return
	}
	connecting := c.state == stConnecting
	c.state = stClosing
	c.stopTimers()
	if rst >= 0 {
		unix.SetsockoptLinger(rst, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		c.w.syscalls.add(1)
	}
	if connecting && c.ops > 0 {
		c.w.loop.Cancel(c.connectID)
	}
	for i := range c.d {
		if d := &c.d[i]; d.busy {
			c.w.loop.Cancel(d.id)
		}
	}
	c.maybeClose()
}

// maybeClose closes the sockets of a closing connection once no op is in
// flight on them.
func (c *conn) maybeClose() {
	if c.state != stClosing || c.ops > 0 {
		return
	}
	c.state = stClosed
	for _, fd := range [2]int{c.cfd, c.ufd} {
		if fd < 0 {
			continue
		}
		if _, err := c.w.loop.Submit(uio.Op{Kind: uio.OpClose, Fd: fd, Done: c.closeDone}); err != nil {
			unix.Close(fd) // the loop is stopping
			c.w.syscalls.add(1)
			continue
		}
		c.closes++
	}
	c.cfd, c.ufd = -1, -1
	for i := range c.d {
		for _, p := range c.d[i].pipe {
			if p >= 0 {
				unix.Close(p)
				c.w.syscalls.add(1)
			}
		}
		c.d[i].pipe = [2]int{-1, -1}
	}
	if c.closes == 0 {
		c.finish()
	}
}

func (c *conn) onClose(uio.Result) {
	c.closes--
	if c.closes == 0 {
		c.finish()
	}
}

func (c *conn) finish() {
	delete(c.w.conns, c)
	c.ctr.closed.add(1)
	for i := range c.d {
		c.w.putBuf(c.d[i].buf)
		c.d[i].buf = nil
	}
	c.w.s.release()
}

// --- buffered forwarding -------------------------------------------------

func (d *direction) start() {
	if d.pipe[0] >= 0 {
		d.spliceIn()
	} else {
		d.recv()
	}
}

func (d *direction) submit(op uio.Op) {
	c := d.c
	id, err := c.w.loop.Submit(op)
	if err != nil {
		c.abort(-1)
		return
	}
	d.id, d.busy = id, true
	c.ops++
}

func (d *direction) recv() {
	d.submit(uio.Op{Kind: uio.OpRecv, Fd: d.src, Buf: d.buf, Done: d.recvDone})
}

func (d *direction) send() {
	d.submit(uio.Op{Kind: uio.OpSend, Fd: d.dst, Buf: d.buf[d.off:d.n], Done: d.sendDone})
}

// completed does the bookkeeping every completion starts with, and reports
// whether the connection is still forwarding.
func (d *direction) completed() bool {
	d.busy = false
	c := d.c
	c.ops--
	if c.state != stOpen {
		c.maybeClose()
		return false
	}
	return true
}

// received counts n bytes read from src, one forwarded message, and marks
// the connection busy for -idle-timeout.
func (d *direction) received(n int32) {
	c := d.c
	c.ctr.bytes[d.idx].add(uint64(n))
	c.ctr.msgs[d.idx].add(1)
	if c.idleOn {
		c.last = monotime()
	}
}

func (d *direction) onRecv(r uio.Result) {
	if !d.completed() {
		return
	}
	c := d.c
	switch {
	case r.Res > 0:
		d.n, d.off = int(r.Res), 0
		d.received(r.Res)
		d.send()
	case r.Res == 0:
		d.eof()
	default:
		c.fail(r.Err(), d.dst)
	}
}

func (d *direction) onSend(r uio.Result) {
	if !d.completed() {
		return
	}
	if r.Res < 0 {
		d.c.fail(r.Err(), d.src)
		return
	}
	d.off += int(r.Res)
	if d.off < d.n {
		d.send() // short send: the rest
		return
	}
	d.recv()
}

// eof: src sent its FIN and everything before it has been forwarded; pass
// the FIN on. When both directions are done, close.
func (d *direction) eof() {
	c := d.c
	d.done = true
	unix.Shutdown(d.dst, unix.SHUT_WR)
	c.w.syscalls.add(1)
	if c.d[d.idx^1].done {
		c.stopTimers()
		c.state = stClosing
		c.maybeClose()
	}
}

// --- splice forwarding (io_uring) -------------------------------------------

const spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK

func (d *direction) openPipe(size int) error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return err
	}
	d.c.w.syscalls.add(1)
	d.pipe = p
	if size != 64<<10 {
		// Best effort: a pipe keeps its default size if the limit says no.
		unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, size)
		d.c.w.syscalls.add(1)
	}
	return nil
}

func (d *direction) spliceIn() {
	d.submit(uio.Op{Kind: uio.OpSplice, Fd: d.src, Offset: -1, FdOut: d.pipe[1], OffsetOut: -1,
		Len: d.c.w.s.cfg.BufferSize, Flags: spliceFlags, Done: d.spliceInDone})
}

func (d *direction) spliceOut() {
	d.submit(uio.Op{Kind: uio.OpSplice, Fd: d.pipe[0], Offset: -1, FdOut: d.dst, OffsetOut: -1,
		Len: d.inPipe, Flags: spliceFlags, Done: d.spliceOutDone})
}

func (d *direction) poll(fd int, events uint32, out bool) {
	d.pollOut = out
	d.submit(uio.Op{Kind: uio.OpPoll, Fd: fd, Events: events, Done: d.pollDone})
}

func (d *direction) onSpliceIn(r uio.Result) {
	if !d.completed() {
		return
	}
	c := d.c
	switch {
	case r.Res > 0:
		d.inPipe = int(r.Res)
		d.received(r.Res)
		d.spliceOut()
	case r.Res == 0:
		d.eof()
	case r.Res == -int32(unix.EAGAIN):
		d.poll(d.src, unix.POLLIN, false)
	default:
		c.fail(r.Err(), d.dst)
	}
}

func (d *direction) onSpliceOut(r uio.Result) {
	if !d.completed() {
		return
	}
	switch {
	case r.Res >= 0:
		d.inPipe -= int(r.Res)
		if d.inPipe > 0 {
			d.spliceOut()
		} else {
			d.spliceIn()
		}
	case r.Res == -int32(unix.EAGAIN):
		d.poll(d.dst, unix.POLLOUT, true)
	default:
		d.c.fail(r.Err(), d.src)
	}
}

func (d *direction) onPoll(r uio.Result) {
	if !d.completed() {
		return
	}
	if r.Res < 0 {
		d.c.fail(r.Err(), -1)
		return
	}
	// Ready, or an error/hangup that the splice itself will report.
	if d.pollOut {
		d.spliceOut()
	} else {
		d.spliceIn()
	}
}

// --- helpers ---------------------------------------------------------------

func setNoDelay(fd int) {
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprint(sa)
}
