package blockdev

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/userland-io/uio"
	"github.com/userland-io/uio/blockdev/nbd"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// NBD is a Backend whose blocks live in a remote NBD export: an NBD client
// on the engine (an AsyncBackend). It holds one TCP connection per hardware
// queue, each bound to the loop of the queue it serves on that queue's
// first request, so one loop carries both the kernel's block requests and
// the network I/O for them. Per connection one gathered sendmsg carries
// every request header and WRITE payload queued since the last one went
// out, and a single receive is always in flight; replies are matched to
// requests by handle in any order. READ data larger than 32 KiB is
// received straight into the request's buffer, smaller replies are read in
// batches through a 256 KiB buffer.
//
// FLUSH, FUA, DISCARD (NBD_CMD_TRIM) and WRITE_ZEROES are offered only when
// the server's transmission flags offer them (see Supports); a FUA write to
// a server without NBD_FLAG_SEND_FUA is a write followed by a FLUSH.
//
// A connection that breaks (the server closes it or dies, or sends bytes
// that break the protocol: a wrong magic, an unknown handle, a reply
// before its request was sent) fails every request in flight on it, and
// every later one, with EIO; it is not reconnected.
type NBD struct {
	addr  string
	exp   nbd.Export
	conns []*nbdConn
	log   *zap.Logger

	mu     sync.Mutex
	own    *uio.Loop // the loop of the synchronous methods, made on first use
	closed bool
}

// NBDOptions configure DialNBD.
type NBDOptions struct {
	// Export is the export name ("" is the server's default export).
	Export string
	// Conns is the number of connections: one per hardware queue of the
	// device it will serve (Config.Queues). Default 1. More than one needs
	// a server that offers NBD_FLAG_CAN_MULTI_CONN (or a read-only export).
	Conns int
	// Timeout bounds the connect and handshake of each connection
	// (default 10 s).
	Timeout time.Duration
	// Logger receives broken connections; default none.
	Logger *zap.Logger
}

// ParseNBDTarget splits host:port[/export] (IPv6 hosts in brackets; the
// port defaults to 10809) into the dial address and the export name.
func ParseNBDTarget(s string) (addr, export string, err error) {
	addr = s
	if i := strings.IndexByte(s, '/'); i >= 0 {
		addr, export = s[:i], s[i+1:]
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// No port: the default one.
		if h, _, err2 := net.SplitHostPort(addr + ":" + nbd.DefaultPort); err2 == nil && h != "" {
			return net.JoinHostPort(h, nbd.DefaultPort), export, nil
		}
		return "", "", fmt.Errorf("blockdev: NBD target %q: want host:port[/export]: %w", s, err)
	}
	if host == "" || port == "" {
		return "", "", fmt.Errorf("blockdev: NBD target %q: want host:port[/export]", s)
	}
	return addr, export, nil
}

// DialNBD connects to the NBD server at addr (host:port), negotiates the
// export on o.Conns connections and returns the backend. The handshake is
// synchronous; everything after it runs on the queues' loops.
func DialNBD(addr string, o NBDOptions) (*NBD, error) {
	if o.Conns == 0 {
		o.Conns = 1
	}
	if o.Conns < 0 || o.Conns > 64 {
		return nil, fmt.Errorf("blockdev: %d NBD connections: want 1..64", o.Conns)
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	d := &NBD{addr: addr, log: o.Logger.With(zap.String("nbd", addr), zap.String("export", o.Export))}
	for i := 0; i < o.Conns; i++ {
		fd, exp, err := dialNBD(addr, o.Export, o.Timeout)
		if err != nil {
			d.Close()
			return nil, err
		}
		d.conns = append(d.conns, newNBDConn(d, i, fd))
		if i == 0 {
			d.exp = exp
			if o.Conns > 1 && exp.Flags&nbd.FlagCanMultiConn == 0 && exp.Flags&nbd.FlagReadOnly == 0 {
				d.Close()
				return nil, fmt.Errorf("blockdev: NBD server %s does not offer NBD_FLAG_CAN_MULTI_CONN for export %q: "+
					"writes on %d connections would not be consistent; use one connection (one queue)", addr, o.Export, o.Conns)
			}
		} else if exp.Size != d.exp.Size || exp.Flags != d.exp.Flags {
			d.Close()
			return nil, fmt.Errorf("blockdev: NBD server %s: connection %d sees export %q as %d bytes, flags %#x; the first saw %d bytes, flags %#x",
				addr, i, o.Export, exp.Size, exp.Flags, d.exp.Size, d.exp.Flags)
		}
	}
	return d, nil
}

// dialNBD connects and negotiates on a Go socket, then takes a duplicate
// of its fd (nonblocking) for the engine.
func dialNBD(addr, export string, timeout time.Duration) (int, nbd.Export, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return -1, nbd.Export{}, fmt.Errorf("blockdev: NBD server: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	exp, err := nbd.Negotiate(c, export)
	if err != nil {
		return -1, nbd.Export{}, fmt.Errorf("blockdev: NBD server %s: %w", addr, err)
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, nbd.Export{}, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, nbd.Export{}, err
	}
	if derr != nil {
		return -1, nbd.Export{}, fmt.Errorf("blockdev: NBD: dup the socket: %w", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, nbd.Export{}, fmt.Errorf("blockdev: NBD: nonblocking socket: %w", err)
	}
	return fd, exp, nil
}

// Export returns what the handshake learnt about the export.
func (d *NBD) Export() nbd.Export { return d.exp }

// Size is the export's size in bytes.
func (d *NBD) Size() int64 { return int64(d.exp.Size) }

// ReadOnly reports whether the server exports read-only.
func (d *NBD) ReadOnly() bool { return d.exp.Flags&nbd.FlagReadOnly != 0 }

// MaxIO is the largest READ or WRITE the server accepts (Config.MaxIO
// must not exceed it).
func (d *NBD) MaxIO() int { return int(min(d.exp.MaxPayload(), math.MaxInt32)) }

// MinBlock is the server's minimum block size (1 when it states none):
// Config.BlockSize must be a multiple of it.
func (d *NBD) MinBlock() int { return int(max(d.exp.MinBlock, 1)) }

// Supports reports which optional operations the server offers: FLUSH
// (NBD_FLAG_SEND_FLUSH: then serve with Config.WriteCache), DISCARD
// (NBD_FLAG_SEND_TRIM) and WRITE_ZEROES (NBD_FLAG_SEND_WRITE_ZEROES).
func (d *NBD) Supports(op Op) bool {
	f := d.exp.Flags
	switch op {
	case OpRead:
		return true
	case OpWrite:
		return f&nbd.FlagReadOnly == 0
	case OpFlush:
		return f&nbd.FlagSendFlush != 0
	case OpDiscard:
		return f&nbd.FlagSendTrim != 0 && f&nbd.FlagReadOnly == 0
	case OpWriteZeroes:
		return f&nbd.FlagSendWriteZeroes != 0 && f&nbd.FlagReadOnly == 0
	}
	return false
}

// Start sends r on the connection of r.Queue.
func (d *NBD) Start(h uio.Handle, r *Request) {
	d.startOn(h, r.Queue, r.Op, r.Flags, r.Offset, r.Len, r.Buf, r.Complete)
}

// startOn runs one block operation on connection q's loop. done is called
// on h's loop (the zero Handle, from the synchronous methods: on any
// goroutine).
func (d *NBD) startOn(h uio.Handle, q int, op Op, flags uint32, off int64, n int, buf []byte, done func(error)) {
	if len(d.conns) == 0 {
		done(unix.EIO)
		return
	}
	c := d.conns[q%len(d.conns)]
	steps, err := d.plan(op, flags, off, n, buf)
	if err != nil || len(steps) == 0 {
		done(err)
		return
	}
	l := h.Loop()
	bound := c.bind(l, d)
	if bound == nil {
		done(fmt.Errorf("blockdev: NBD backend closed: %w", unix.EIO))
		return
	}
	if bound == l {
		c.h = h
		c.runSteps(steps, done)
		return
	}
	// Another loop drives this connection (more queues than
	// connections, or the synchronous methods): hop there and back.
	back := done
	if l != nil {
		back = func(err error) {
			if l.Post(func(h uio.Handle) { done(err) }) != nil {
				done(err) // l is closing: its server drops the result
			}
		}
	}
	if bound.Post(func(h uio.Handle) { c.h = h; c.runSteps(steps, back) }) != nil {
		done(fmt.Errorf("blockdev: NBD connection's loop is closed: %w", unix.EIO))
	}
}

// nbdStep is one NBD command of a block operation.
type nbdStep struct {
	cmd, flags uint16
	off        uint64
	n          uint32
	buf        []byte
}

// plan turns a block operation into the NBD commands that carry it.
func (d *NBD) plan(op Op, flags uint32, off int64, n int, buf []byte) ([]nbdStep, error) {
	if off < 0 || n < 0 || int64(n) > math.MaxUint32 || off > d.Size() || int64(n) > d.Size()-off {
		return nil, fmt.Errorf("blockdev: NBD %s of %d bytes at %d: outside the %d-byte export: %w", op, n, off, d.Size(), unix.EINVAL)
	}
	flush := nbdStep{cmd: nbd.CmdFlush}
	switch op {
	case OpRead, OpWrite:
		if len(buf) != n {
			return nil, fmt.Errorf("blockdev: NBD %s: buffer of %d bytes for %d: %w", op, len(buf), n, unix.EINVAL)
		}
		if n > d.MaxIO() {
			return nil, fmt.Errorf("blockdev: NBD %s of %d bytes: the server takes at most %d: %w", op, n, d.MaxIO(), unix.EINVAL)
		}
		if op == OpRead {
			return []nbdStep{{cmd: nbd.CmdRead, off: uint64(off), n: uint32(n), buf: buf}}, nil
		}
		if !d.Supports(OpWrite) {
			return nil, fmt.Errorf("blockdev: NBD export is read-only: %w", unix.EROFS)
		}
		w := nbdStep{cmd: nbd.CmdWrite, off: uint64(off), n: uint32(n), buf: buf}
		var steps []nbdStep
		canFlush := d.Supports(OpFlush)
		if flags&FlagPreflush != 0 && canFlush {
			steps = append(steps, flush)
		}
		post := false
		if flags&FlagFUA != 0 {
			if d.exp.Flags&nbd.FlagSendFUA != 0 {
				w.flags |= nbd.CmdFlagFUA
			} else {
				post = canFlush
			}
		}
		steps = append(steps, w)
		if post {
			steps = append(steps, flush)
		}
		return steps, nil
	case OpFlush:
		if !d.Supports(OpFlush) {
			return nil, nil // no cache on the server: nothing to do
		}
		return []nbdStep{flush}, nil
	case OpDiscard, OpWriteZeroes:
		if !d.Supports(op) {
			return nil, fmt.Errorf("blockdev: NBD server does not offer %s: %w", op, unix.EOPNOTSUPP)
		}
		if n == 0 {
			return nil, nil
		}
		s := nbdStep{cmd: nbd.CmdTrim, off: uint64(off), n: uint32(n)}
		if op == OpWriteZeroes {
			s.cmd = nbd.CmdWriteZeroes
			if flags&FlagNoUnmap != 0 {
				s.flags |= nbd.CmdFlagNoHole
			}
		}
		return []nbdStep{s}, nil
	}
	return nil, fmt.Errorf("blockdev: NBD: operation %s: %w", op, unix.EINVAL)
}

// sync runs one operation from a goroutine outside the loops and waits.
func (d *NBD) sync(op Op, flags uint32, off int64, n int, buf []byte) error {
	ch := make(chan error, 1)
	d.startOn(uio.Handle{}, 0, op, flags, off, n, buf, func(err error) { ch <- err })
	return <-ch
}

// ReadAt reads synchronously (the server uses Start; for tools and tests).
func (d *NBD) ReadAt(p []byte, off int64) error { return d.sync(OpRead, 0, off, len(p), p) }

// WriteAt writes synchronously.
func (d *NBD) WriteAt(p []byte, off int64) error { return d.sync(OpWrite, 0, off, len(p), p) }

// Flush sends NBD_CMD_FLUSH (nothing when the server offers no flush).
func (d *NBD) Flush() error { return d.sync(OpFlush, 0, 0, 0, nil) }

// Discard sends NBD_CMD_TRIM (EOPNOTSUPP when the server does not offer it).
func (d *NBD) Discard(off, n int64) error {
	if n > math.MaxUint32 {
		return fmt.Errorf("blockdev: NBD discard of %d bytes: at most 4 GiB: %w", n, unix.EINVAL)
	}
	return d.sync(OpDiscard, 0, off, int(n), nil)
}

// WriteZeroes sends NBD_CMD_WRITE_ZEROES (EOPNOTSUPP when not offered).
func (d *NBD) WriteZeroes(off, n int64) error {
	if n > math.MaxUint32 {
		return fmt.Errorf("blockdev: NBD write-zeroes of %d bytes: at most 4 GiB: %w", n, unix.EINVAL)
	}
	return d.sync(OpWriteZeroes, 0, off, int(n), nil)
}

// ownLoop returns the loop of the synchronous methods.
func (d *NBD) ownLoop() *uio.Loop {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	if d.own == nil {
		l, err := uio.NewLoop(uio.Config{Logger: d.log})
		if err != nil {
			d.log.Error("blockdev: NBD: no loop for synchronous I/O", zap.Error(err))
			return nil
		}
		d.own = l
	}
	return d.own
}

// Close ends the connections: a clean NBD_CMD_DISC where the connection
// still works, then close. Call it after the server using the backend has
// stopped (its loops are closed).
func (d *NBD) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	own := d.own
	d.mu.Unlock()
	if own != nil {
		own.Close()
	}
	for _, c := range d.conns {
		c.close()
	}
	return nil
}

// errNBDBroken is what requests on a broken connection fail with.
var errNBDBroken = errors.New("blockdev: NBD connection broken")
