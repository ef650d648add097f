package proxy

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Every proxied connection holds two sockets (client and upstream); with
// -splice on io_uring each direction also holds a pipe (two more each).
const (
	fdsPerConn       = 2
	fdsPerSpliceConn = fdsPerConn + 4
)

// fdReserve is what the descriptor budget keeps aside for everything that
// is not a connection: DNS lookups, health-check connects, metrics
// scrapes, a log file reopened by SIGHUP, the hand-over's exec.
const fdReserve = 16

// nofile is the descriptor limit as Run found and left it.
type nofile struct {
	cur, max uint64
	from     uint64 // the soft limit before raising it; == cur if unchanged
	err      error  // raising failed (the limit stays at cur)
}

// raiseNofile raises the soft RLIMIT_NOFILE to the hard limit. The Go
// runtime (1.19 and later) already raises it at start, but only to the
// hard limit minus one (so it can tell a prlimit from outside), and it
// puts the original soft limit back in every process it execs, the
// SIGUSR2 hand-over's new uioproxy among them. Setting it here gives the
// whole hard limit, says so in the log, and lets a process started by
// this one inherit it.
func raiseNofile() nofile {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return nofile{err: fmt.Errorf("getrlimit(RLIMIT_NOFILE): %w", err)}
	}
	n := nofile{cur: lim.Cur, max: lim.Max, from: lim.Cur}
	if lim.Cur >= lim.Max {
		return n
	}
	want := unix.Rlimit{Cur: lim.Max, Max: lim.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err != nil {
		n.err = fmt.Errorf("setrlimit(RLIMIT_NOFILE, cur=%d max=%d): %w", want.Cur, want.Max, err)
		return n
	}
	n.cur = lim.Max
	return n
}

// openFds counts the descriptors this process has open.
func openFds() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	return len(ents) - 1, nil // less the one ReadDir itself had open
}

// connsAllowed is how many proxied connections fit in limit descriptors
// when inUse are open already.
func connsAllowed(limit uint64, inUse, perConn int) int {
	used := uint64(inUse + fdReserve)
	if limit <= used {
		return 0
	}
	return int(min(limit-used, 1<<40) / uint64(perConn))
}

// logNofile logs the descriptor limit and the number of connections it
// allows, once the listeners, loops and metrics listener hold theirs and
// before any connection is accepted; a -max-conns above that
// number is warned about, since the connections beyond it would wait for
// descriptors instead of a -max-conns slot.
func (s *Server) logNofile(n nofile) {
	if n.err != nil {
		s.log.Warn("could not raise the open file limit", zap.Error(n.err), zap.Uint64("nofile", n.cur), zap.Uint64("nofile_hard", n.max))
		if n.cur == 0 {
			return
		}
	}
	perConn := fdsPerConn
	if s.splice {
		perConn = fdsPerSpliceConn
	}
	inUse, err := openFds()
	if err != nil {
		s.log.Warn("cannot count open descriptors", zap.Error(err), zap.Uint64("nofile", n.cur))
		return
	}
	allowed := connsAllowed(n.cur, inUse, perConn)
	fields := []zap.Field{zap.Uint64("nofile", n.cur), zap.Int("fds_open", inUse), zap.Int("fds_per_connection", perConn),
		zap.Int("connections_allowed", allowed)}
	if n.from != n.cur {
		fields = append(fields, zap.Uint64("raised_from", n.from))
	}
	if n.max != n.cur {
		fields = append(fields, zap.Uint64("nofile_hard", n.max))
	}
	s.log.Info("file descriptor limit (RLIMIT_NOFILE)", fields...)
	if s.cfg.MaxConns > allowed {
		s.log.Warn("-max-conns is above what the descriptor limit allows; raise LimitNOFILE (ulimit -n) or beyond it accepts wait for descriptors",
			zap.Int("max_conns", s.cfg.MaxConns), zap.Int("connections_allowed", allowed), zap.Uint64("nofile", n.cur))
	}
}

// fdEpisodeGap ends an episode of running out of descriptors: one that has
// not been hit for this long is over, and the next is logged again. It is
// well above maxAcceptBackoff, so a starved acceptor, retrying at least
// once a second, keeps one episode going however long it lasts.
const fdEpisodeGap = 10 * time.Second

// warnFds logs running out of descriptors (or socket memory) once per
// episode, not per failed accept or connect: what ran out and its limit,
// and how many connections are open (they go on being served).
func (s *Server) warnFds(ms *mapState, err error, backoff time.Duration) {
	now := time.Now().UnixNano()
	if last := s.lastFdHit.Swap(now); last != 0 && now-last < int64(fdEpisodeGap) {
		return
	}
	fields := []zap.Field{zap.String("mapping", ms.label), zap.Error(err), zap.Int64("connections_open", s.slots.Load()),
		zap.Duration("retry_every", backoff)}
	msg := "out of file descriptors, backing off"
	switch {
	case errors.Is(err, unix.EMFILE):
		var lim unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
			fields = append(fields, zap.String("limit", "RLIMIT_NOFILE"), zap.Uint64("nofile", lim.Cur))
		}
	case errors.Is(err, unix.ENFILE):
		fields = append(fields, zap.String("limit", "fs.file-max"))
		if b, rerr := os.ReadFile("/proc/sys/fs/file-max"); rerr == nil {
			if v, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); perr == nil {
				fields = append(fields, zap.Uint64("file_max", v))
			}
		}
	default: // ENOBUFS, ENOMEM
		msg = "out of kernel memory for sockets, backing off"
	}
	s.log.Warn(msg, fields...)
}
