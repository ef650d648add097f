package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio"
)

const listenBacklog = 4096

// Accept back-off when the process is out of descriptors (or memory).
const (
	minAcceptBackoff = 100 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// worker is the per-loop state. Everything in it but the counters is
// touched only on its loop's goroutine.
type worker struct {
	s         *Server
	idx       int
	loop      *uio.Loop
	h         uio.Handle // the loop's, set by start: the worker runs only on it
	acceptors []*acceptor
	conns     map[*conn]struct{}
	freeBufs  [][]byte        // PROXY-header buffers of closed connections, for the next ones
	pool      *uio.BufferPool // receive buffers, taken only while bytes move
	// bundleCap, when not 0, is -buffer on a loop whose recvs bundle small
	// pool buffers up to it (io_uring 6.17+; uio.Loop.CapsBundles); plain
	// is then the -buffer sized pool of unix-socket directions (a pool
	// allocates nothing until a recv needs a buffer).
	bundleCap int
	plain     *uio.BufferPool
	parked    []parkedConn // accepted beyond -max-conns, waiting for a slot
	waiting   bool         // registered in Server.waiting; guarded by Server.mu
	resumeFn  func(uio.Handle)
	// The look for directions stuck on a slow dst (watch.go), armed while
	// the worker has connections.
	sweepTimer *uio.Timer
	sweepFn    func(uio.Handle)

	syscalls counter // syscalls the proxy makes itself (socket, setsockopt, shutdown, ...)
}

// addAcceptors makes this loop's acceptors for ms's sockets; they are
// armed by start, or at once once the loop runs (a reload).
func (w *worker) addAcceptors(ms *mapState) []*acceptor {
	var added []*acceptor
	for a := range ms.addrs {
		// Only this loop's entries: another loop's acceptor may be
		// closing (writing -1 into) its own meanwhile.
		for j := w.idx; j < len(ms.fds[a]); j += w.s.cfg.Loops {
			if fd := ms.fds[a][j]; fd >= 0 {
				ac := &acceptor{w: w, ms: ms, fd: fd, addr: a, slot: j}
				ac.done = ac.onAccept
				added = append(added, ac)
			}
		}
	}
	w.acceptors = append(w.acceptors, added...)
	return added
}

func (w *worker) start(h uio.Handle) {
	w.h = h
	for _, a := range w.acceptors {
		a.arm()
	}
}

type parkedConn struct {
	ms *mapState
	fd int
}

// resume runs when a -max-conns slot has freed: parked connections first,
// then the acceptors that stopped.
func (w *worker) resume(uio.Handle) {
	s := w.s
	for len(w.parked) > 0 && !s.stopping.Load() {
		if !s.tryReserve() {
			if s.wait(w) {
				return
			}
			continue
		}
		p := w.parked[0]
		w.parked = w.parked[1:]
		w.newConn(p.ms, p.fd)
	}
	for _, a := range w.acceptors {
		if a.paused {
			a.paused = false
			a.arm()
		}
	}
}

func (w *worker) stopAccepting() {
	for _, p := range w.parked {
		unix.Close(p.fd)
		w.syscalls.add(1)
	}
	w.parked = nil
	for _, a := range w.acceptors {
		if a.armed {
			w.h.Cancel(a.id) // its Done closes the listener
		} else {
			a.close()
		}
	}
}

// stopAcceptors stops this loop's accepting on ms's sockets.
func (w *worker) stopAcceptors(ms *mapState) {
	keep := w.acceptors[:0]
	for _, a := range w.acceptors {
		if a.ms != ms {
			keep = append(keep, a)
			continue
		}
		if a.armed {
			w.h.Cancel(a.id) // its Done closes the listener
		} else {
			a.close()
		}
	}
	w.acceptors = keep
}

// closeAll closes every connection of the loop and returns how many.
func (w *worker) closeAll() int {
	n := 0
	for c := range w.conns {
		if c.state < stClosing || c.flushFd >= 0 {
			n++
		}
		c.abort(endDrain, rstBoth)
	}
	return n
}

func (w *worker) getBuf() []byte {
	if n := len(w.freeBufs); n > 0 {
		b := w.freeBufs[n-1]
		w.freeBufs[n-1] = nil
		w.freeBufs = w.freeBufs[:n-1]
		return b
	}
	return make([]byte, w.headerBufSize())
}

// headerBufSize is the size of a PROXY-header buffer: -buffer, at most
// the largest v2 header (16 bytes and up to 65,535 of addresses and TLVs;
// rarely more than a few hundred are sent), so a connection of a large
// -buffer does not allocate all of it before its header is read; bytes
// behind the header beyond it wait in the socket for the pool recvs. A
// smaller -buffer bounds the header too: a longer one is refused.
func (w *worker) headerBufSize() int { return min(w.s.cfg.BufferSize, proxyV2MaxLen) }

func (w *worker) putBuf(b []byte) {
	if len(b) == w.headerBufSize() && len(w.freeBufs) < 64 {
		w.freeBufs = append(w.freeBufs, b)
	}
}

// acceptor keeps one accept armed on one listening socket of its loop.
type acceptor struct {
	w       *worker
	ms      *mapState
	fd      int
	addr    int // fd is ms.fds[addr][slot]
	slot    int
	id      uio.OpID
	armed   bool
	paused  bool // -max-conns reached
	closed  bool
	backoff time.Duration
	timer   *uio.Timer

	done func(uio.Handle, uio.Result)
}

func (a *acceptor) arm() {
	if a.closed || a.armed || a.paused || a.timer != nil {
		return
	}
	s := a.w.s
	if s.stopping.Load() || a.ms.removed.Load() {
		a.close()
		return
	}
	if s.cfg.MaxConns > 0 && s.slots.Load() >= int64(s.cfg.MaxConns) && s.wait(a.w) {
		a.paused = true // Worker.resume re-arms it
		return
	}
	id, err := a.w.h.Start(uio.Op{Kind: uio.OpAccept, Fd: a.fd, Done: a.done})
	if err != nil {
		return
	}
	a.id, a.armed = id, true
}

func (a *acceptor) retry(uio.Handle) {
	a.timer = nil
	a.arm()
}

func (a *acceptor) onAccept(h uio.Handle, r uio.Result) {
	a.armed = false
	s := a.w.s
	if r.Res >= 0 {
		fd := int(r.Res)
		a.backoff = 0
		if a.closed {
			unix.Close(fd)
			a.w.syscalls.add(1)
			return
		}
		if s.stopping.Load() {
			// Accepted just as the stop came: the kernel already told the
			// client it is connected, so serve it and let the drain end it
			// rather than drop it (a hand-over would lose it otherwise).
			s.slots.Add(1)
			a.w.newConn(a.ms, fd)
			a.close()
			return
		}
		if !s.tryReserve() {
			// Another loop took the last slot first: hold the connection
			// (as the backlog would) and stop accepting here.
			a.w.parked = append(a.w.parked, parkedConn{a.ms, fd})
			if a.ms.removed.Load() {
				// Dropped by a reload whose cancel this accept beat: it
				// is no longer among the acceptors resume re-arms.
				a.close()
				return
			}
			a.paused = true
			if !s.wait(a.w) {
				a.w.resume(a.w.h)
			}
			return
		}
		a.w.newConn(a.ms, fd)
		if a.ms.removed.Load() {
			a.close() // a reload dropped the listener while this accept was in flight
			return
		}
		a.arm()
		return
	}
	err := r.Err()
	switch {
	case errors.Is(err, unix.ECANCELED):
		a.close()
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE), errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
		a.backoff = min(max(a.backoff*2, minAcceptBackoff), maxAcceptBackoff)
		a.ms.ctr[a.w.idx].acceptErrors.add(1)
		s.warnFds(a.ms, err, a.backoff)
		a.timer = a.w.h.AfterFunc(a.backoff, a.retry)
	case errors.Is(err, unix.ECONNABORTED), errors.Is(err, unix.EPERM), errors.Is(err, unix.EPROTO), errors.Is(err, unix.EINTR):
		// The connection died in the queue, or a firewall said no: next.
		a.ms.ctr[a.w.idx].acceptErrors.add(1)
		a.arm()
	default:
		a.backoff = min(max(a.backoff*2, minAcceptBackoff), maxAcceptBackoff)
		a.ms.ctr[a.w.idx].acceptErrors.add(1)
		s.log.Error("accept failed", zap.String("mapping", a.ms.label), zap.Error(err), zap.Duration("retry_in", a.backoff))
		a.timer = a.w.h.AfterFunc(a.backoff, a.retry)
	}
}

// close closes the listening socket; only when no accept is armed on it.
func (a *acceptor) close() {
	if a.closed {
		return
	}
	a.closed = true
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	s := a.w.s
	s.fdsMu.Lock()
	unix.Close(a.fd)
	// Only its own entry: the other loops close theirs at the same time.
	a.ms.fds[a.addr][a.slot] = -1
	s.fdsMu.Unlock()
	a.w.syscalls.add(1)
}

// listen binds ms's listening sockets: for every address the bind host
// stands for, one SO_REUSEPORT socket per loop, all on the same port. On
// error it closes what it opened.
func (s *Server) listen(ms *mapState) (err error) {
	m := ms.m
	defer func() {
		if err != nil {
			for _, fds := range ms.fds {
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
			ms.fds, ms.addrs = nil, nil
			err = fmt.Errorf("mapping %s: %w", m, err)
		}
	}()
	if m.BindUnix != "" {
		for _, other := range s.maps {
			if other.m.BindUnix == m.BindUnix && !other.removed.Load() {
				return fmt.Errorf("mappings %q and %q both listen on %s", other.label, ms.label, m.BindUnix)
			}
		}
		fds, err := s.takeInherited(m.BindUnix)
		if err != nil {
			return err
		}
		if fds != nil {
			ms.inherited, ms.passedIn = s.cfg.systemdSockets, true
		} else {
			fd, err := listenUnix(m.BindUnix)
			if err != nil {
				return err
			}
			fds = []int{fd} // one socket, accepted on by loop 0 (no SO_REUSEPORT for Unix sockets)
		}
		ms.fds = [][]int{fds}
		ms.addrs = []net.Addr{&net.UnixAddr{Name: m.BindUnix, Net: "unix"}}
		return nil
	}
	ips, err := bindAddrs(m.BindHost)
	if err != nil {
		return err
	}
	port := m.BindPort
	var skipped []string
	for _, ip := range ips {
		if other := s.boundBy(ip, port); other != nil {
			return fmt.Errorf("mappings %q and %q both listen on %s", other.label, ms.label, net.JoinHostPort(ip.String(), fmt.Sprint(port)))
		}
		if fds, err := s.takeInherited(bindKey(ip, port)); err != nil {
			return err
		} else if fds != nil {
			ms.inherited, ms.passedIn = s.cfg.systemdSockets, true
			ms.fds = append(ms.fds, fds)
			ms.addrs = append(ms.addrs, &net.TCPAddr{IP: ip.AsSlice(), Port: port, Zone: ip.Zone()})
			continue
		}
		fds, p, err := listenGroup(ip, port, len(s.group.Loops()), s.cfg.Keepalive)
		if err != nil {
			// "localhost" on a machine without IPv6 still has a usable ::1
			// entry in /etc/hosts: skip what cannot be bound if something can.
			if len(ips) > 1 && (errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.EAFNOSUPPORT)) {
				skipped = append(skipped, fmt.Sprintf("%s (%v)", ip, err))
				continue
			}
			return fmt.Errorf("listen on %s: %w", net.JoinHostPort(ip.String(), fmt.Sprint(port)), err)
		}
		port = p // port 0: every further address takes the same port
		ms.fds = append(ms.fds, fds)
		ms.addrs = append(ms.addrs, &net.TCPAddr{IP: ip.AsSlice(), Port: p, Zone: ip.Zone()})
	}
	if len(ms.fds) == 0 {
		return fmt.Errorf("no address of %q could be bound: %s", m.BindHost, strings.Join(skipped, "; "))
	}
	if len(skipped) > 0 {
		s.log.Debug("skipped listen addresses", zap.String("mapping", ms.label), zap.Strings("skipped", skipped))
	}
	return nil
}

// listenUnix listens on the Unix socket path. A socket file nobody
// listens on any more (a crashed run) is replaced; one in use is an error.
func listenUnix(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket for %s: %w", path, err)
	}
	sa := &unix.SockaddrUnix{Name: path}
	err = unix.Bind(fd, sa)
	if errors.Is(err, unix.EADDRINUSE) {
		if c, derr := net.DialTimeout("unix", path, time.Second); derr == nil {
			c.Close()
		} else if errors.Is(derr, unix.ECONNREFUSED) {
			if st, serr := os.Lstat(path); serr == nil && st.Mode()&os.ModeSocket != 0 {
				os.Remove(path)
				err = unix.Bind(fd, sa)
			}
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen on %s: %w", path, err)
	}
	return fd, nil
}

// boundBy returns the mapping already listening where ip:port would: the
// same address, or a wildcard of the same family (the IPv6 wildcard is
// dual stack and takes IPv4 too). SO_REUSEPORT would let the second bind
// succeed and silently split the connections between the two.
func (s *Server) boundBy(ip netip.Addr, port int) *mapState {
	if port == 0 {
		return nil
	}
	for _, ms := range s.maps {
		if ms.removed.Load() {
			continue
		}
		for _, a := range ms.addrs {
			ta, ok := a.(*net.TCPAddr)
			if !ok || ta.Port != port {
				continue
			}
			other, _ := netip.AddrFromSlice(ta.IP)
			other = other.Unmap()
			switch {
			case other == ip,
				other == netip.IPv6Unspecified() || ip == netip.IPv6Unspecified(),
				other == netip.IPv4Unspecified() && ip.Is4(),
				ip == netip.IPv4Unspecified() && other.Is4():
				return ms
			}
		}
	}
	return nil
}

// bindAddrs turns a mapping's bind host into the addresses to listen on:
// the IPv6 wildcard (dual stack) for all interfaces, the literal itself, or
// every address the name resolves to.
func bindAddrs(host string) ([]netip.Addr, error) {
	if host == "" {
		if fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
			unix.Close(fd)
			return []netip.Addr{netip.IPv6Unspecified()}, nil
		}
		return []netip.Addr{netip.IPv4Unspecified()}, nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolving bind host: %w", err)
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	return ips, nil
}

// listenGroup opens n listening sockets on ip:port sharing the port with
// SO_REUSEPORT, and returns them and the port.
func listenGroup(ip netip.Addr, port, n int, keepalive time.Duration) (fds []int, boundPort int, err error) {
	defer func() {
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			fds = nil
		}
	}()
	if port != 0 && n > 1 {
		// SO_REUSEPORT would let us join another process's group on this
		// port and silently split its traffic; a plain bind first makes a
		// port in use fail as it should.
		if err := bindProbe(ip, port); err != nil {
			return nil, 0, err
		}
	}
	for i := 0; i < n; i++ {
		fd, err := listenSocket(ip, port, n > 1, keepalive)
		if err != nil {
			return fds, 0, err
		}
		fds = append(fds, fd)
		if port == 0 {
			sa, err := unix.Getsockname(fd)
			if err != nil {
				return fds, 0, err
			}
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				port = sa.Port
			case *unix.SockaddrInet6:
				port = sa.Port
			}
		}
	}
	return fds, port, nil
}

// listenSocket opens one listening socket. TCP_NODELAY and the keepalive
// set here are inherited by every accepted socket, so connections need no
// setsockopt of their own.
func listenSocket(ip netip.Addr, port int, reusePort bool, keepalive time.Duration) (int, error) {
	fd, err := boundSocket(ip, port, reusePort, keepalive)
	if err != nil {
		return -1, err
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// bindProbe reports whether ip:port can be bound without SO_REUSEPORT,
// with a socket that never listens (so no client is accepted and reset).
func bindProbe(ip netip.Addr, port int) error {
	fd, err := boundSocket(ip, port, false, 0)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

// boundSocket opens a TCP socket with the listening options and binds it.
func boundSocket(ip netip.Addr, port int, reusePort bool, keepalive time.Duration) (int, error) {
	family := unix.AF_INET
	if ip.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail(err)
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail(err)
		}
	}
	if family == unix.AF_INET6 {
		// The wildcard takes IPv4 too (dual stack); a specific address
		// only its own family.
		v6only := 1
		if ip.IsUnspecified() {
			v6only = 0
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			return fail(err)
		}
	}
	setKeepalive(fd, keepalive)
	setNoDelay(fd) // accepted sockets inherit it: no setsockopt per connection
	if err := unix.Bind(fd, sockaddr(ip, port)); err != nil {
		return fail(err)
	}
	return fd, nil
}

// sockaddr converts ip:port for the kernel.
func sockaddr(ip netip.Addr, port int) unix.Sockaddr {
	if ip.Is4() || ip.Is4In6() {
		return &unix.SockaddrInet4{Addr: ip.Unmap().As4(), Port: port}
	}
	sa := &unix.SockaddrInet6{Addr: ip.As16(), Port: port}
	if z := ip.Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	return sa
}
