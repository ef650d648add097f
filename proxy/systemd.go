package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Listening sockets can come from outside instead of being bound here:
// from systemd socket activation (LISTEN_FDS, LISTEN_PID, sd_listen_fds(3))
// or from the uioproxy this one replaces (SIGUSR2: inheritFdsEnv). They
// start at fd 3 and are matched to mappings by the address they are bound
// to; a mapping no inherited socket matches is bound as usual.
const (
	inheritFdsEnv = "UIOPROXY_INHERIT_FDS" // sockets handed over by the old process
	readyFdEnv    = "UIOPROXY_READY_FD"    // the pipe that tells the old process we run
	firstListenFd = 3
)

// inheritedListeners takes the sockets passed in (and unsets the
// variables that passed them, so no child of ours sees them), keyed by
// listenKey.
// It also says whether they came from systemd.
func inheritedListeners(log interface{ Warn(string, ...zap.Field) }) (map[string][]int, bool, error) {
	n, systemd := 0, false
	if v := os.Getenv(inheritFdsEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return nil, false, fmt.Errorf("%s=%q: want a count", inheritFdsEnv, v)
		}
		os.Unsetenv(inheritFdsEnv)
	} else if v := os.Getenv("LISTEN_FDS"); v != "" {
		pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID"))
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDNAMES")
		if pid != os.Getpid() {
			return nil, false, nil // meant for another process
		}
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return nil, false, fmt.Errorf("LISTEN_FDS=%q: want a count", v)
		}
		systemd = true
	}
	out := map[string][]int{}
	for fd := firstListenFd; fd < firstListenFd+n; fd++ {
		unix.CloseOnExec(fd)
		key, err := listenKey(fd)
		if err != nil {
			log.Warn("inherited descriptor is not a listening stream socket; closed", zap.Int("fd", fd), zap.Error(err))
			unix.Close(fd)
			continue
		}
		// Several loops may accept on one inherited socket: a blocking one
		// would block a loop whose accept another loop won.
		if err := unix.SetNonblock(fd, true); err != nil {
			return nil, false, fmt.Errorf("inherited socket %s: %w", key, err)
		}
		out[key] = append(out[key], fd)
	}
	return out, systemd, nil
}

// listenKey names the address a listening socket is bound to, the way
// bindKey names a mapping's: ip:port or the Unix socket path.
func listenKey(fd int) (string, error) {
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		return "", errors.New("not listening")
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrUnix:
		return sa.Name, nil
	case *unix.SockaddrInet4, *unix.SockaddrInet6:
		return sockaddrAddrPort(sa).String(), nil
	}
	return "", fmt.Errorf("address family of %v", sa)
}

func bindKey(ip netip.Addr, port int) string {
	return netip.AddrPortFrom(ip, uint16(port)).String()
}

// takeInherited returns the inherited sockets for key, one per loop (the
// same socket dup'd when fewer were passed), or nil.
func (s *Server) takeInherited(key string) ([]int, error) {
	fds := s.inherited[key]
	if len(fds) == 0 {
		return nil, nil
	}
	delete(s.inherited, key)
	// Accepted sockets inherit TCP_NODELAY from their listener, so it is
	// set here once rather than on every connection (the unit's NoDelay=
	// may not say so; a Unix socket refuses it, which does no harm).
	for _, fd := range fds {
		setNoDelay(fd)
	}
	for len(fds) < s.cfg.Loops {
		fd, err := unix.FcntlInt(uintptr(fds[len(fds)%len(fds)]), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("dup of inherited socket %s: %w", key, err)
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// --- sd_notify -----------------------------------------------------------------

// notify sends state to systemd's notification socket (sd_notify(3)) if
// the service has one; errors are ignored, as sd_notify's callers do.
func notify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}

// notifyReloading is RELOADING=1 with the MONOTONIC_USEC systemd 253+
// wants for Type=notify-reload.
func notifyReloading() {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", ts.Nano()/1000))
}

// --- hand-over (SIGUSR2) ----------------------------------------------------------

// handOverTimeout bounds how long the old process waits for the new one
// to say it runs.
const handOverTimeout = 30 * time.Second

// dupListeners duplicates the listening sockets of every mapping not
// removed, as files named by their mapping. An acceptor closing meanwhile
// (a Shutdown, a Reload) either finds its socket duplicated already or is
// left out.
func (s *Server) dupListeners() ([]*os.File, error) {
	var files []*os.File
	s.mapsMu.Lock()
	defer s.mapsMu.Unlock()
	s.fdsMu.Lock()
	defer s.fdsMu.Unlock()
	for _, ms := range s.maps {
		if ms.removed.Load() {
			continue
		}
		for fd := range ms.openFds {
			d, err := unix.FcntlInt(uintptr(*fd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				for _, f := range files {
					f.Close()
				}
				return nil, fmt.Errorf("dup of listening socket %d of %s: %w", *fd, ms.label, err)
			}
			files = append(files, os.NewFile(uintptr(d), ms.label))
		}
	}
	return files, nil
}

// handOver starts a new uioproxy (this binary, as found by its argv[0],
// so an upgraded file is what runs) with the same arguments, passing it
// every listening socket. It returns once the new process says it
// accepts, or with an error (the new process died, or was not ready in
// time), in which case this process just goes on.
func (s *Server) handOver() (pid int, err error) {
	files, err := s.dupListeners()
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		return 0, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	exe, err := exec.LookPath(os.Args[0])
	if err != nil {
		w.Close()
		return 0, fmt.Errorf("finding %s: %w", os.Args[0], err)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", inheritFdsEnv, len(files)), fmt.Sprintf("%s=%d", readyFdEnv, firstListenFd+len(files)))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = append(files, w)
	err = cmd.Start()
	w.Close()
	if err != nil {
		return 0, fmt.Errorf("starting %s: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		if err == nil && strings.TrimSpace(line) == "ready" {
			ready <- nil
			return
		}
		ready <- errors.New("it closed the ready pipe without saying ready")
	}()
	select {
	case err := <-ready:
		if err != nil {
			cmd.Process.Kill()
			return 0, fmt.Errorf("new process %d: %w", cmd.Process.Pid, err)
		}
	case err := <-exited:
		return 0, fmt.Errorf("new process %d exited before it was ready: %v", cmd.Process.Pid, err)
	case <-time.After(handOverTimeout):
		cmd.Process.Kill()
		return 0, fmt.Errorf("new process %d not ready within %v", cmd.Process.Pid, handOverTimeout)
	}
	s.handedOver.Store(true)
	return cmd.Process.Pid, nil
}

// signalReady tells the process that started us (a hand-over) and
// systemd that we accept connections.
func signalReady() {
	if v := os.Getenv(readyFdEnv); v != "" {
		os.Unsetenv(readyFdEnv)
		if fd, err := strconv.Atoi(v); err == nil {
			f := os.NewFile(uintptr(fd), "ready")
			f.Write([]byte("ready\n"))
			f.Close()
		}
	}
	notify(fmt.Sprintf("READY=1\nMAINPID=%d", os.Getpid()))
}

// --- privileges ------------------------------------------------------------------

// dropPrivileges switches the whole process (every thread: Go's setuid
// does all of them) to name's uid, gid and groups. Sockets, rings and
// the log file opened before stay open.
func dropPrivileges(name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("-user %s: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	var groups []int
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.Atoi(g); err == nil {
				groups = append(groups, n)
			}
		}
	}
	if len(groups) == 0 {
		groups = []int{gid}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("-user %s: setgroups: %w", name, err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("-user %s: setgid(%d): %w", name, gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("-user %s: setuid(%d): %w", name, uid, err)
	}
	return nil
}
