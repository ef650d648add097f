package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio"
)

type connState uint8

const (
	stHeader     connState = iota // reading the client's PROXY protocol header
	stConnecting                  // choosing, resolving or connecting to an upstream
	stOpen                        // forwarding
	stClosing                     // waiting for the ops in flight (or a flush) to end
	stClosed                      // the sockets are being (or have been) closed
)

// endReason says how a connection ended, in the access log and metrics.
type endReason uint8

const (
	endNone          endReason = iota
	endFIN                     // both sides closed with a FIN: a complete stream
	endClientReset             // the client reset (or a send to it failed)
	endUpstreamReset           // the upstream reset (or a send to it failed)
	endIdle                    // -idle-timeout: both sides reset
	endDrain                   // open past -drain-timeout (or a second stop signal): both reset
	endConnectFailed           // no upstream could be reached: the client reset
	endBadHeader               // a malformed PROXY protocol header: the client reset
	endHeaderTimeout           // no PROXY protocol header in time: the client reset
	endError                   // a local error (no pipe, engine refused an op): both reset
)

var endReasonNames = [...]string{"", "fin", "client_reset", "upstream_reset", "idle_timeout", "drain",
	"connect_failed", "bad_proxy_header", "proxy_header_timeout", "error"}

func (r endReason) String() string { return endReasonNames[r] }

// Which sockets a close resets (SO_LINGER 0) rather than ends with a FIN.
const (
	rstClient   = 1 << 0
	rstUpstream = 1 << 1
	rstBoth     = rstClient | rstUpstream
)

// Happy Eyeballs (RFC 8305 section 5): the next address is tried when the
// one before has not answered after this long, or at once when it fails.
const connectionAttemptDelay = 250 * time.Millisecond

// After one side resets, the bytes already handed to the other side's
// socket are let out before that side is reset too; a peer that takes
// nothing for this long (or for -idle-timeout if shorter) is reset anyway.
var maxFlushStall = 30 * time.Second // a var for tests

// The two directions of a connection.
const (
	dirUp   = 0 // client -> upstream
	dirDown = 1 // upstream -> client
)

// conn is one proxied connection. It lives on the loop that accepted it and
// is only touched there.
type conn struct {
	w   *worker
	ms  *mapState // the listener that accepted it
	rt  *route    // the mapping and router as they were at accept (reload swaps ms.cur)
	ctr *mapCounters

	cfd, ufd    int // client and upstream sockets; -1 once closed
	state       connState
	ops         int // ops in flight on the sockets (connect, recv, send, poll, splice)
	d           [2]direction
	client      netip.AddrPort // the client (from the PROXY header if accepted)
	local       netip.AddrPort // what the client connected to, if a PROXY header said
	clientKnown bool           // client is filled in (clientAddr)
	started     time.Duration  // monotime at accept
	end         endReason
	rst         uint8     // rstClient, rstUpstream
	bytes       [2]uint64 // forwarded, per direction: the access log's
	upAddr      string    // the upstream address connected to

	// Choosing an upstream and connecting to it.
	up          *upstream
	upConnected bool // up counts this connection as active
	tried       []*upstream
	addrs       []netip.Addr // up's addresses in RFC 8305 order
	next        int          // the next of them to try
	attempts    []*attempt   // connects in flight
	lastErr     error
	resolving   bool
	deadline    time.Duration // monotime at which connecting to up gives up
	connectTmr  *uio.Timer
	raceTimer   *uio.Timer // starts the next attempt
	raceFn      func(uio.Handle)
	retryTimer  *uio.Timer    // out of descriptors for the upstream socket
	retryDelay  time.Duration // its back-off
	retryFn     func(uio.Handle)
	timedOut    bool
	connectTOFn func(uio.Handle)

	// Idle timeout.
	idleOn    bool
	last      time.Duration // monotonic time of the last traffic
	idleTimer *uio.Timer
	idleFn    func(uio.Handle)
	tcpBytes  uint64 // both sockets' bytes acked + received at the last check

	// Flush before reset: the surviving side's socket still holds bytes.
	flushFd    int
	flushQ     int
	flushSince time.Duration
	flushDelay time.Duration
	flushTimer *uio.Timer
	flushFn    func(uio.Handle)

	hdr *headerReader // AcceptProxy: the PROXY header being read

	closes    int // OpClose in flight
	closeDone func(uio.Handle, uio.Result)
}

// attempt is one connect in flight to one address of the upstream.
type attempt struct {
	c        *conn
	fd       int
	id       uio.OpID
	dest     string
	timer    *uio.Timer // its share of the connect deadline
	timedOut bool
	done     func(uio.Handle, uio.Result)
}

// direction moves one way: a multishot recv from src hands it chunks in
// pool buffers, sent to dst one at a time, in order (or, with splice, src
// -> pipe -> dst, one op at a time). Flow control: a chunk that arrives
// while a send is in flight waits, and the recv is cancelled (the data
// stays in src's socket, so TCP pushes back on the peer) until what the
// direction holds is sent; from then on the direction makes one recv per
// chunk, after the send of the one before. A request/response exchange
// never queues, so its recv stays armed for the connection's life.
type direction struct {
	c        *conn
	idx      int
	src, dst int
	// buf holds the bytes being forwarded: a pool buffer (pooled, bufID)
	// from the recv that got them until their send completes, or, before
	// the first recv, the PROXY-header buffer's leftover. Between sends
	// it is nil: an idle direction holds no buffer.
	buf    []byte
	pooled bool
	bufID  int
	// pool is where the recvs take buffers; bundleCap, when not 0, caps
	// a recv that bundles them; tcp: src is a TCP socket (set by setup).
	pool      *uio.BufferPool
	bundleCap int
	tcp       bool
	// rest are the pool buffers after bufID of a bundle (the bytes span
	// buf and them, each full but the last), sent with one sendmsg.
	rest   []int
	iov    [][]byte // the sendmsg's buffers, kept until its Done
	n, off int      // bytes in buf (and rest), bytes of them sent
	done   bool
	busy   bool // a send (or, with splice, any op) in flight: id
	id     uio.OpID

	// The multishot recv (buffered mode).
	recvArmed bool
	recvID    uio.OpID
	paused    bool    // we cancelled the recv: a chunk had to wait
	oneShot   bool    // it did once: one recv per chunk from then on
	eofSeen   bool    // src's end of stream, passed on once queue is sent
	srcErr    error   // src's error (a reset), passed on once queue is sent
	queue     []chunk // received chunks waiting for the send in flight

	recvDone, sendDone func(uio.Handle, uio.Result)

	// The watch on src while the direction is stuck on dst (watch.go):
	// stuckOn is the op it waited on at the sweep before (stuckSeen);
	// watched: a watch was made for the op in flight.
	// srcGone: the watch saw src reset; the direction still sends what
	// it holds and reads what src's socket still has (watch.go).
	stuckSeen, watched, watchArmed, srcGone bool
	stuckOn, watchID                        uio.OpID
	stuckAt                                 time.Duration // monotime of the sweep that noted stuckOn
	watchDone                               func(uio.Handle, uio.Result)

	// Splice.
	pipe          [2]int // read end, write end
	inPipe        int    // bytes in the pipe not yet spliced out
	pollOut       bool   // the poll in flight waits for dst, not src
	pollDone      func(uio.Handle, uio.Result)
	spliceInDone  func(uio.Handle, uio.Result)
	spliceOutDone func(uio.Handle, uio.Result)
}

// chunk is a received pool buffer, or a bundle of them (id, then rest),
// waiting to be sent.
type chunk struct {
	id, n int
	rest  []int
}

var epoch = time.Now()

func monotime() time.Duration { return time.Since(epoch) }

// newConn takes over an accepted socket (and the -max-conns slot that was
// reserved for it), reads the PROXY header if the mapping wants one, and
// starts connecting to an upstream.
func (w *worker) newConn(ms *mapState, fd int) {
	c := &conn{w: w, ms: ms, rt: ms.cur.Load(), ctr: &ms.ctr[w.idx], cfd: fd, ufd: -1, flushFd: -1, started: monotime()}
	c.d[dirUp].pipe, c.d[dirDown].pipe = [2]int{-1, -1}, [2]int{-1, -1}
	c.closeDone = c.onClose
	c.raceFn, c.connectTOFn = c.onRaceTimer, c.onConnectTimeout
	w.conns[c] = struct{}{}
	c.ctr.opened.add(1)
	if rt := c.rt; w.s.access != nil || rt.m.Balance == BalanceSourceHash || rt.m.SendProxy != "" {
		c.clientAddr() // needed anyway: now, before a reset makes it unknowable
	}
	// TCP_NODELAY and keepalive come from the listening socket: an
	// accepted socket inherits them (TestAcceptedSocketOptions).
	if c.rt.m.AcceptProxy {
		c.state = stHeader
		c.readHeader()
		return
	}
	c.state = stConnecting
	c.route()
}

// route picks the next upstream and starts connecting to it.
func (c *conn) route() {
	var client netip.Addr
	if c.rt.m.Balance == BalanceSourceHash {
		client = c.clientAddr().Addr()
	}
	u := c.rt.r.pick(client, c.tried)
	if u == nil {
		if len(c.tried) == 0 {
			c.lastErr = errors.New("no upstream available (all marked down)")
		}
		c.failConnect()
		return
	}
	c.up, c.tried = u, append(c.tried, u)
	c.addrs, c.next, c.timedOut = nil, 0, false
	if t := c.w.s.cfg.ConnectTimeout; t > 0 {
		c.deadline = monotime() + t
		c.connectTmr = c.w.h.AfterFunc(t, c.connectTOFn)
	}
	switch {
	case u.isUnix():
		c.launch()
	case u.ips != nil:
		c.addrs = u.ips
		c.launch()
	default:
		if ips, ok := u.cached(); ok {
			c.addrs = happyEyeballsOrder(ips)
			c.launch()
			return
		}
		c.resolving = true
		go c.resolve(u)
	}
}

// resolve looks u up off the loop and hands the answer back to it.
func (c *conn) resolve(u *upstream) {
	ctx := c.w.s.ctx
	if t := c.w.s.cfg.ConnectTimeout; t > 0 {
		var cancel func()
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	ips, err := u.resolve(ctx)
	c.w.loop.Post(func(h uio.Handle) { c.resolved(u, ips, err) })
}

func (c *conn) resolved(u *upstream, ips []netip.Addr, err error) {
	if c.state != stConnecting || c.up != u || !c.resolving {
		return // timed out or shut down meanwhile
	}
	c.resolving = false
	if err != nil {
		c.upstreamFailed(fmt.Errorf("resolving %s: %w", u.host, err))
		return
	}
	if len(ips) == 0 {
		c.upstreamFailed(fmt.Errorf("resolving %s: no addresses", u.host))
		return
	}
	c.addrs = happyEyeballsOrder(ips)
	c.launch()
}

func (c *conn) destCount() int {
	if c.up.isUnix() {
		return 1
	}
	return len(c.addrs)
}

// launch starts a connect to the next address of the upstream. Each gets
// an equal share of what is left of -connect-timeout; the next one starts
// when this one fails or after connectionAttemptDelay (RFC 8305), so an
// address that swallows SYNs does not hold the others up.
func (c *conn) launch() {
	w := c.w
	n := c.destCount()
	for c.state == stConnecting && c.next < n {
		i := c.next
		fd, sa, dest, err := c.openDest(i)
		if err != nil {
			c.lastErr = err
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				// Out of descriptors: keep the client waiting (as if still
				// in the backlog) and try again after a back-off, within
				// -connect-timeout. Accepts meanwhile fail with EMFILE and
				// back off too.
				if len(c.attempts) == 0 && c.retryTimer == nil {
					c.retryDelay = min(max(c.retryDelay*2, minAcceptBackoff), maxAcceptBackoff)
					w.s.warnFds(c.ms, err, c.retryDelay)
					if c.retryFn == nil {
						c.retryFn = c.retryConnect
					}
					c.retryTimer = w.h.AfterFunc(c.retryDelay, c.retryFn)
				}
				return
			}
			c.next++
			continue
		}
		c.next++
		a := &attempt{c: c, fd: fd, dest: dest}
		a.done = a.onConnect
		id, err := w.h.Start(uio.Op{Kind: uio.OpConnect, Fd: fd, Addr: sa, Done: a.done})
		if err != nil {
			unix.Close(fd)
			w.syscalls.add(1)
			c.lastErr = err
			break
		}
		a.id = id
		c.ops++
		c.attempts = append(c.attempts, a)
		if left := n - i; left > 1 && w.s.cfg.ConnectTimeout > 0 {
			share := max((c.deadline-monotime())/time.Duration(left), time.Millisecond)
			a.timer = w.h.AfterFunc(share, a.onShareTimeout)
		}
		if c.next < n {
			c.raceTimer = w.h.AfterFunc(connectionAttemptDelay, c.raceFn)
		}
		return
	}
	if c.state == stConnecting && len(c.attempts) == 0 && c.retryTimer == nil {
		c.upstreamFailed(c.lastErr)
	}
}

// openDest makes the socket for address i of the upstream.
func (c *conn) openDest(i int) (int, unix.Sockaddr, string, error) {
	u := c.up
	if u.isUnix() {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		c.w.syscalls.add(1)
		if err != nil {
			return -1, nil, u.label, fmt.Errorf("socket for %s: %w", u.label, err)
		}
		return fd, &unix.SockaddrUnix{Name: u.path}, u.label, nil
	}
	ip := c.addrs[i]
	dest := netip.AddrPortFrom(ip, uint16(u.port)).String()
	family := unix.AF_INET
	if ip.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	c.w.syscalls.add(1)
	if err != nil {
		return -1, nil, dest, fmt.Errorf("socket for %s: %w", dest, err)
	}
	setNoDelay(fd)
	c.w.syscalls.add(1 + uint64(setKeepalive(fd, c.w.s.cfg.Keepalive)))
	return fd, sockaddr(ip, u.port), dest, nil
}

func (c *conn) retryConnect(uio.Handle) {
	c.retryTimer = nil
	if c.state == stConnecting {
		c.launch()
	}
}

func (c *conn) onRaceTimer(uio.Handle) {
	c.raceTimer = nil
	if c.state == stConnecting && !c.timedOut {
		c.launch()
	}
}

func (a *attempt) onShareTimeout(uio.Handle) {
	a.timer = nil
	a.timedOut = true
	a.c.w.h.Cancel(a.id) // onConnect sees timedOut
}

func (a *attempt) onConnect(h uio.Handle, r uio.Result) {
	c := a.c
	c.ops--
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	for i, x := range c.attempts {
		if x == a {
			c.attempts = append(c.attempts[:i], c.attempts[i+1:]...)
			break
		}
	}
	if r.Res == 0 && c.state == stConnecting {
		c.ufd, c.upAddr = a.fd, a.dest
		for _, x := range c.attempts {
			c.w.h.Cancel(x.id) // the losers close their sockets
		}
		c.established()
		return
	}
	unix.Close(a.fd)
	c.w.syscalls.add(1)
	if c.state != stConnecting {
		c.maybeClose()
		return
	}
	if c.timedOut {
		if len(c.attempts) == 0 {
			c.upstreamFailed(c.lastErr)
		}
		return
	}
	err := r.Err()
	if a.timedOut {
		err = fmt.Errorf("no answer within its share of -connect-timeout %v", c.w.s.cfg.ConnectTimeout)
	}
	c.lastErr = fmt.Errorf("%s: %w", a.dest, err)
	if c.raceTimer != nil {
		c.raceTimer.Stop()
		c.raceTimer = nil
	}
	c.launch()
}

func (c *conn) onConnectTimeout(uio.Handle) {
	c.connectTmr = nil
	if c.state != stConnecting {
		return
	}
	c.timedOut = true
	c.lastErr = fmt.Errorf("no connection to %s within -connect-timeout %v", c.up.label, c.w.s.cfg.ConnectTimeout)
	c.stopConnectTimers()
	if len(c.attempts) > 0 {
		for _, a := range c.attempts {
			c.w.h.Cancel(a.id) // onConnect sees timedOut
		}
		return
	}
	c.resolving = false
	c.upstreamFailed(c.lastErr) // still resolving, or waiting for a descriptor
}

// upstreamFailed: no address of c.up answered. Passive health marks it
// down, and another upstream is tried while the bound allows.
func (c *conn) upstreamFailed(err error) {
	c.stopConnectTimers()
	if err == nil {
		err = errors.New("no address to connect to")
	}
	c.lastErr = err
	c.rt.r.failed(c.up, err)
	c.up = nil
	if len(c.tried) < c.rt.r.maxTries() && !c.w.s.stopping.Load() {
		c.route()
		return
	}
	c.failConnect()
}

// failConnect gives up: one warning, and the client reset, so that it
// cannot take the close for an empty but complete answer.
func (c *conn) failConnect() {
	c.ctr.connectErrors.add(1)
	c.w.s.log.Warn("upstream unavailable, closing client",
		zap.String("mapping", c.ms.label), zap.String("target", c.rt.m.Target()),
		zap.String("client", c.clientString()), zap.Error(c.lastErr))
	c.abort(endConnectFailed, rstClient)
}

// clientAddr is the client's address (the PROXY header's, if one was
// accepted), asked of the kernel only when something needs it.
func (c *conn) clientAddr() netip.AddrPort {
	if !c.clientKnown && c.cfd >= 0 {
		c.clientKnown = true
		if sa, err := unix.Getpeername(c.cfd); err == nil {
			c.client = sockaddrAddrPort(sa)
		}
		c.w.syscalls.add(1)
	}
	return c.client
}

func (c *conn) clientString() string {
	if a := c.clientAddr(); a.IsValid() {
		return a.String()
	}
	if c.ms.unixListen {
		return "unix:" + c.ms.m.BindUnix
	}
	return "?"
}

// established starts forwarding both ways.
func (c *conn) established() {
	c.stopTimers()
	c.state = stOpen
	c.rt.r.connected(c.up)
	c.upConnected = true
	s := c.w.s
	c.d[dirUp] = direction{c: c, idx: dirUp, src: c.cfd, dst: c.ufd, pipe: [2]int{-1, -1}, buf: c.d[dirUp].buf, n: c.d[dirUp].n}
	c.d[dirDown] = direction{c: c, idx: dirDown, src: c.ufd, dst: c.cfd, pipe: [2]int{-1, -1}}
	for i := range c.d {
		d := &c.d[i]
		d.setup()
		if s.splice && d.n == 0 {
			if err := d.openPipe(s.cfg.BufferSize); err != nil {
				s.log.Warn("splice: no pipe, closing connection", zap.String("mapping", c.ms.label), zap.Error(err))
				c.abort(endError, rstBoth)
				return
			}
			d.pollDone, d.spliceInDone, d.spliceOutDone = d.onPoll, d.onSpliceIn, d.onSpliceOut
		} else {
			d.recvDone, d.sendDone = d.onRecv, d.onSend
		}
	}
	if t := s.cfg.IdleTimeout; t > 0 {
		c.idleOn = true
		c.last = monotime()
		c.tcpBytes = c.kernelBytes()
		c.idleFn = c.idleCheck
		c.idleTimer = c.w.h.AfterFunc(t, c.idleFn)
	}
	// The PROXY header for the upstream, and whatever the client sent
	// after its own header, go out before anything else.
	up := &c.d[dirUp]
	if v := c.rt.m.SendProxy; v != "" {
		h := proxyHeader(v, c.clientAddr(), c.localAddr())
		if up.n > 0 {
			h = append(h, up.buf[:up.n]...)
		}
		if len(h) > len(up.buf) {
			up.buf = make([]byte, len(h)) // a v2 header beyond a small buffer: rare
		}
		up.n = copy(up.buf, h)
	}
	if up.n > 0 {
		up.off = 0
		up.send()
	} else if c.state == stOpen {
		up.dropBuf(c.w) // the PROXY-header buffer, if any: recvs use the pool
		up.start()
	}
	if c.state == stOpen {
		c.d[dirDown].start()
		c.w.startSweep()
	}
}

// localAddr is the address the client connected to, for the PROXY header.
func (c *conn) localAddr() netip.AddrPort {
	if c.local.IsValid() {
		return c.local
	}
	if sa, err := unix.Getsockname(c.cfd); err == nil {
		return sockaddrAddrPort(sa)
	}
	return netip.AddrPort{}
}

func (c *conn) stopConnectTimers() {
	for _, t := range []**uio.Timer{&c.connectTmr, &c.raceTimer, &c.retryTimer} {
		if *t != nil {
			(*t).Stop()
			*t = nil
		}
	}
}

func (c *conn) stopTimers() {
	c.stopConnectTimers()
	if c.idleTimer != nil {
		c.idleTimer.Stop()
		c.idleTimer = nil
	}
	if c.hdr != nil && c.hdr.timer != nil {
		c.hdr.timer.Stop()
		c.hdr.timer = nil
	}
}

func (c *conn) idleCheck(uio.Handle) {
	c.idleTimer = nil
	if c.state != stOpen {
		return
	}
	idle := c.w.s.cfg.IdleTimeout
	if el := monotime() - c.last; el < idle {
		c.idleTimer = c.w.h.AfterFunc(idle-el, c.idleFn)
		return
	}
	// No op completed for a whole period, but a send waiting for room in a
	// socket (a slow reader) completes only once half of a large send
	// buffer is free: ask the kernel whether bytes moved meanwhile.
	if b := c.kernelBytes(); b != c.tcpBytes {
		c.tcpBytes, c.last = b, monotime()
		c.idleTimer = c.w.h.AfterFunc(idle, c.idleFn)
		return
	}
	c.ctr.idleClosed.add(1)
	c.w.s.log.Debug("idle timeout, resetting connection", zap.String("mapping", c.ms.label), zap.Duration("idle", idle))
	c.abort(endIdle, rstBoth)
}

// kernelBytes sums what TCP says both sockets acknowledged and received;
// Unix sockets count 0 (their ops' completions are the only measure).
func (c *conn) kernelBytes() uint64 {
	var n uint64
	for _, fd := range [2]int{c.cfd, c.ufd} {
		ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		c.w.syscalls.add(1)
		if err == nil {
			n += ti.Bytes_acked + ti.Bytes_received
		}
	}
	return n
}

// fail ends the connection after an error on socket dead (-1: unknown).
// The other side first gets what the proxy already handed to its socket,
// then a reset too, so that a broken stream never looks like a complete
// one.
func (c *conn) fail(err error, dead int) { c.reset(err, dead, true) }

// reset is fail; without flush the other side is reset at once (it has
// taken nothing for flushStall already).
func (c *conn) reset(err error, dead int, flush bool) {
	c.ctr.resets.add(1)
	c.w.s.log.Debug("connection reset", zap.String("mapping", c.ms.label), zap.Error(err), zap.Bool("flush", flush))
	reason, other := endError, -1
	switch dead {
	case c.cfd:
		reason, other = endClientReset, c.ufd
	case c.ufd:
		reason, other = endUpstreamReset, c.cfd
	}
	if flush {
		c.flushFd = other
	}
	c.abort(reason, rstBoth)
}

// abort closes the connection now: it cancels the ops in flight and closes
// the sockets once they have completed, resetting those in rst. On a
// connection already closing it cuts a flush short (drain timeout).
func (c *conn) abort(reason endReason, rst uint8) {
	if c.state >= stClosing {
		if c.state == stClosing && c.flushFd >= 0 {
			c.flushFd = -1
			if c.flushTimer != nil {
				c.flushTimer.Stop()
				c.flushTimer = nil
			}
			c.maybeClose()
		}
		return
	}
	c.state = stClosing
	c.end = reason
	c.rst |= rst
	c.resolving = false
	c.stopTimers()
	for _, a := range c.attempts {
		c.w.h.Cancel(a.id)
	}
	if c.hdr != nil && c.hdr.busy {
		c.w.h.Cancel(c.hdr.id)
	}
	for i := range c.d {
		d := &c.d[i]
		if d.busy {
			c.w.h.Cancel(d.id)
		}
		if d.recvArmed {
			c.w.h.Cancel(d.recvID)
		}
		if d.watchArmed {
			c.w.h.Cancel(d.watchID)
		}
	}
	c.maybeClose()
}

// maybeClose closes the sockets of a closing connection once no op is in
// flight on them and the flush (if any) is over.
func (c *conn) maybeClose() {
	if c.state != stClosing || c.ops > 0 || c.flushTimer != nil {
		return
	}
	if c.flushFd >= 0 && c.flushing() {
		return
	}
	c.state = stClosed
	for i, fd := range [2]int{c.cfd, c.ufd} {
		if fd < 0 {
			continue
		}
		if c.rst&(1<<i) != 0 {
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			c.w.syscalls.add(1)
		}
		if _, err := c.w.h.Start(uio.Op{Kind: uio.OpClose, Fd: fd, Done: c.closeDone}); err != nil {
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

// flushing reports whether flushFd still has bytes its peer has not
// acknowledged, and if so checks again a little later. A peer that makes
// no progress for maxFlushStall (or -idle-timeout) is given up on.
func (c *conn) flushing() bool {
	q, err := unix.IoctlGetInt(c.flushFd, unix.TIOCOUTQ)
	c.w.syscalls.add(1)
	now := monotime()
	if err != nil || q == 0 {
		c.flushFd = -1
		return false
	}
	if c.flushSince == 0 || q < c.flushQ {
		c.flushSince, c.flushQ = now, q
	}
	if now-c.flushSince > c.flushStall() {
		c.flushFd = -1
		return false
	}
	c.flushDelay = min(max(2*c.flushDelay, time.Millisecond), 50*time.Millisecond)
	if c.flushFn == nil {
		c.flushFn = c.onFlushTimer
	}
	c.flushTimer = c.w.h.AfterFunc(c.flushDelay, c.flushFn)
	return true
}

// flushStall is how long a peer may take nothing while the proxy holds
// bytes for it after the other side reset.
func (c *conn) flushStall() time.Duration {
	if t := c.w.s.cfg.IdleTimeout; t > 0 {
		return min(maxFlushStall, t)
	}
	return maxFlushStall
}

func (c *conn) onFlushTimer(uio.Handle) {
	c.flushTimer = nil
	c.maybeClose()
}

func (c *conn) onClose(uio.Handle, uio.Result) {
	c.closes--
	if c.closes == 0 {
		c.finish()
	}
}

func (c *conn) finish() {
	delete(c.w.conns, c)
	c.ctr.closed.add(1)
	if c.upConnected {
		c.rt.r.released(c.up)
	}
	for i := range c.d {
		c.d[i].dropBuf(c.w)
	}
	c.w.s.logAccess(c)
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
	id, err := c.w.h.Start(op)
	if err != nil {
		c.abort(endError, rstBoth)
		return
	}
	d.id, d.busy = id, true
	c.ops++
}

func (d *direction) recv() {
	c := d.c
	op := uio.Op{Kind: uio.OpRecv, Fd: d.src, Pool: d.pool, Multishot: !d.oneShot, Done: d.recvDone}
	if bc := d.bundleCap; bc > 0 {
		// A bundle takes up to -buffer bytes in small pool buffers; after
		// a pause, the recv ends once it has taken that much (Limit),
		// which bounds what a direction to a slow reader holds as one
		// recv per chunk does without bundles.
		op.Bundle, op.Len, op.Multishot = true, bc, true
		if d.oneShot {
			op.Limit = bc
		}
	}
	id, err := c.w.h.Start(op)
	if err != nil {
		c.abort(endError, rstBoth)
		return
	}
	d.recvID, d.recvArmed, d.paused = id, true, false
	c.ops++
}

// dropBuf gives back every buffer the direction holds: the one being sent
// and the queued chunks. (d.c is not set before the connection is
// established; w always is.)
func (d *direction) dropBuf(w *worker) {
	d.putCurrent(w)
	for _, ch := range d.queue { // queued only once established: d.pool is set
		d.pool.Put(ch.id)
		for _, id := range ch.rest {
			d.pool.Put(id)
		}
	}
	d.queue = d.queue[:0]
}

// setup picks, once the connection is established, where the direction's
// recvs take buffers: bundles of the worker's small buffers from a TCP src
// on a loop that caps bundles, else one -buffer sized buffer per chunk. A
// unix src never bundles: on 6.18 a capped bundle on a unix socket can miss
// the end of stream queued behind its data (see uio.Op.Bundle).
func (d *direction) setup() {
	c, w := d.c, d.c.w
	d.tcp = !c.ms.unixListen
	if d.src == c.ufd {
		d.tcp = !c.up.isUnix()
	}
	d.pool, d.bundleCap = w.pool, 0
	switch {
	case w.bundleCap == 0:
	case d.tcp:
		d.bundleCap = w.bundleCap
	default:
		d.pool = w.plain
	}
}

// putCurrent gives back the buffer being sent: to the pool, or (the
// PROXY-header buffer's leftover) to the worker's spares.
func (d *direction) putCurrent(w *worker) {
	switch {
	case d.pooled:
		d.pool.Put(d.bufID)
		for _, id := range d.rest {
			d.pool.Put(id)
		}
	case d.buf != nil:
		w.putBuf(d.buf)
	}
	d.buf, d.pooled, d.rest = nil, false, d.rest[:0]
	clear(d.iov)
}

// sendChunk makes pool buffer id, holding n bytes, the one being sent;
// with rest, the bundle of id and rest.
func (d *direction) sendChunk(w *worker, id, n int, rest []int) {
	d.buf, d.pooled, d.bufID, d.n, d.off = d.pool.Bytes(id), true, id, n, 0
	d.rest = append(d.rest[:0], rest...)
	d.send()
}

func (d *direction) send() {
	if len(d.rest) == 0 {
		d.submit(uio.Op{Kind: uio.OpSend, Fd: d.dst, Buf: d.buf[d.off:d.n], Done: d.sendDone})
		return
	}
	// A bundle: its unsent bytes, buffer by buffer, in one sendmsg.
	pool := d.pool
	size := pool.Size()
	d.iov = d.iov[:0]
	for i := -1; i < len(d.rest); i++ {
		b := d.buf
		if i >= 0 {
			b = pool.Bytes(d.rest[i])
		}
		lo, hi := (i+1)*size, min((i+2)*size, d.n)
		if hi <= d.off {
			continue
		}
		d.iov = append(d.iov, b[max(d.off-lo, 0):hi-lo])
	}
	d.submit(uio.Op{Kind: uio.OpSendmsg, Fd: d.dst, Iovecs: d.iov, Done: d.sendDone})
}

// completed does the bookkeeping every completion starts with, and reports
// whether the connection is still forwarding.
func (d *direction) completed() bool {
	d.busy = false
	if d.watched {
		d.unwatch() // the op it was stuck on is done
	}
	return d.c.opEnded(stOpen)
}

// opEnded counts an op of the connection's as ended and reports whether
// the connection is still in state; if not, it may close now.
func (c *conn) opEnded(state connState) bool {
	c.ops--
	if c.state != state {
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
	c.bytes[d.idx] += uint64(n)
	if c.idleOn {
		c.last = monotime()
	}
}

// sent marks the connection busy for -idle-timeout: a peer taking bytes
// slowly (a slow download whose recvs wait on its sends) is not idle.
func (d *direction) sent() {
	if c := d.c; c.idleOn {
		c.last = monotime()
	}
}

// onRecv takes one completion of the multishot recv: a chunk (More), or
// its end (end of stream, an error, or our own cancel).
func (d *direction) onRecv(h uio.Handle, r uio.Result) {
	c := d.c
	id, has := r.BufferID()
	if !r.More() {
		d.recvArmed = false
		c.ops--
	}
	if c.state != stOpen {
		if has {
			for _, b := range d.pool.Bundle(r) { // id, and the rest of a bundle
				d.pool.Put(b)
			}
		}
		c.maybeClose()
		return
	}
	switch {
	case has:
		d.received(r.Res)
		ids := d.pool.Bundle(r)[1:] // id first, then the rest of a bundle
		if !d.busy {
			d.sendChunk(c.w, id, int(r.Res), ids)
			return
		}
		ch := chunk{id: id, n: int(r.Res)}
		if len(ids) > 0 {
			ch.rest = append([]int(nil), ids...) // Bundle's slice is reused
		}
		d.queue = append(d.queue, ch)
		if d.recvArmed && !d.paused {
			// dst takes bytes more slowly than src sends them: stop
			// reading until what we hold is sent (what arrives before
			// the cancel takes effect waits in the queue too), and from
			// now on receive one chunk per recv: a multishot recv takes
			// as many buffers as the socket has data for, which a
			// direction that streams would hold while dst is slow.
			d.paused, d.oneShot = true, true
			c.w.h.Cancel(d.recvID)
		}
	case r.More():
		// an empty chunk: nothing to do
	case r.Res == 0:
		d.eofSeen = true
		if !d.busy {
			d.eof()
		}
	case d.paused && r.Res == -int32(unix.ECANCELED):
		if !d.busy {
			d.recv() // the queue drained before the cancel came back
		}
	default:
		if d.busy {
			// What src sent before its error goes on first: the
			// chunks of this round may have their sends still staged
			// (a reset seen in the same reap as the data before it).
			d.srcErr = r.Err()
			return
		}
		c.fail(r.Err(), d.src)
	}
}

func (d *direction) onSend(h uio.Handle, r uio.Result) {
	if !d.completed() {
		return
	}
	if r.Res < 0 {
		d.c.fail(r.Err(), d.dst)
		return
	}
	if r.Res > 0 {
		d.sent()
	}
	d.off += int(r.Res)
	if d.off < d.n {
		d.send() // short send: the rest
		return
	}
	d.sendNext()
}

// sendNext gives the sent buffer back and moves on: the next queued chunk,
// the end of stream that came after them, or a recv armed again.
func (d *direction) sendNext() {
	w := d.c.w
	d.putCurrent(w)
	if len(d.queue) > 0 {
		ch := d.queue[0]
		d.queue = d.queue[:copy(d.queue, d.queue[1:])]
		d.sendChunk(w, ch.id, ch.n, ch.rest)
		return
	}
	if d.srcErr != nil {
		d.c.fail(d.srcErr, d.src)
		return
	}
	if d.eofSeen {
		d.eof()
		return
	}
	if !d.recvArmed {
		d.recv() // the first recv after a PROXY-header leftover, or after a pause
	}
}

// eof: a recv of 0 from src. That is its FIN, unless src was reset and
// the error was already taken by the other direction's send to it (the
// kernel reports a reset once). While we have not sent src our FIN, a FIN
// from it leaves the socket in CLOSE_WAIT, a reset in TCP_CLOSE; passing a
// FIN on after a reset would make a broken stream look complete. (Once we
// sent ours, TCP_CLOSE is the normal end, and nothing else takes src's
// error.) A real FIN, everything before it forwarded, is passed on; when
// both directions are done, close.
func (d *direction) eof() {
	c := d.c
	if d.tcp && !c.d[d.idx^1].done {
		ti, err := unix.GetsockoptTCPInfo(d.src, unix.IPPROTO_TCP, unix.TCP_INFO)
		c.w.syscalls.add(1)
		if err == nil && ti.State == tcpClose {
			c.fail(unix.ECONNRESET, d.src)
			return
		}
	}
	d.done = true
	if !c.d[d.idx^1].done {
		unix.Shutdown(d.dst, unix.SHUT_WR)
		c.w.syscalls.add(1)
		return
	}
	// Both ways are done: the close that follows (no op is in flight, the
	// last send has completed) sends dst its FIN, and dst has nothing
	// unread that would turn it into a reset (src's EOF came).
	c.stopTimers()
	c.state = stClosing
	c.end = endFIN
	c.maybeClose()
}

// --- splice forwarding ------------------------------------------------------

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

func (d *direction) onSpliceIn(h uio.Handle, r uio.Result) {
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
		c.fail(r.Err(), d.src)
	}
}

func (d *direction) onSpliceOut(h uio.Handle, r uio.Result) {
	if !d.completed() {
		return
	}
	switch {
	case r.Res >= 0:
		if r.Res > 0 {
			d.sent()
		}
		d.inPipe -= int(r.Res)
		if d.inPipe > 0 {
			d.spliceOut()
		} else {
			d.spliceIn()
		}
	case r.Res == -int32(unix.EAGAIN):
		d.poll(d.dst, unix.POLLOUT, true)
	default:
		d.c.fail(r.Err(), d.dst)
	}
}

func (d *direction) onPoll(h uio.Handle, r uio.Result) {
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

// setKeepalive turns TCP keepalive on with idle before the first probe,
// probes every idle/4 (at least 1s) and gives up after 4 unanswered ones,
// so a vanished peer is found within about 2*idle; idle 0 turns it off.
// It returns the number of syscalls made.
func setKeepalive(fd int, idle time.Duration) int {
	if idle <= 0 {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
		return 1
	}
	secs := max(int(idle/time.Second), 1)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs)
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, max(secs/4, 1))
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepaliveProbes)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	return 4
}

const keepaliveProbes = 4

// tcpClose is TCP_CLOSE in tcp_info.tcpi_state (include/net/tcp_states.h).
const tcpClose = 7

func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}
