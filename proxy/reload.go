package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Reread parses the command line the config came from again, and with it
// the config file: what SIGHUP reloads.
func (c Config) Reread() (Config, error) {
	args := c.args
	if args == nil {
		args = []string{"-config", c.ConfigFile}
	}
	return ParseArgs(args, io.Discard)
}

// Reload switches the running server to cfg's mappings, keyed by listen
// address: a listener whose address stays keeps its sockets (nothing is
// dropped, the accept queue included) and takes the new upstream-side
// options for its next connections; a new address is bound and starts
// accepting; a listener that is gone stops accepting, its sockets are
// closed (within listenerCloseTimeout) and its ports free when Reload
// returns, unless systemd or a hand-over passed them in and holds them
// too, and its connections run to their end. Connections already open
// always keep the route they started with. Everything new is bound before
// anything changes, so an error (a bad config, an address in use) leaves
// the running config as it was. Options other than the mappings need a
// restart: Reload names those that changed in its log line and keeps the
// running values. A listener keeps the name (metrics label) it started
// with; renaming a mapping on the same address takes effect at the next
// restart.
func (s *Server) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.closed {
		return errors.New("reload: the server is stopping")
	}
	s.mapsMu.Lock()
	current := map[string]*mapState{}
	var live []*mapState
	for _, ms := range s.maps {
		if !ms.removed.Load() {
			current[ms.m.BindAddr()] = ms
			live = append(live, ms)
		} else if ms.active() > 0 {
			live = append(live, ms) // still draining: keep its counters
		}
	}
	s.mapsMu.Unlock()

	kept := map[*mapState]Mapping{}
	var added []*mapState
	undo := func() {
		s.fdsMu.Lock() // a hand-over may have seen them in s.maps
		defer s.fdsMu.Unlock()
		for _, ms := range added {
			for fd := range ms.openFds {
				unix.Close(*fd)
				*fd = -1
			}
			if ms.unixListen {
				os.Remove(ms.m.BindUnix)
			}
		}
	}
	for _, m := range cfg.Mappings {
		if ms, ok := current[m.BindAddr()]; ok {
			if _, dup := kept[ms]; !dup {
				kept[ms] = m
				continue
			}
		}
		ms := s.newMapState(m)
		s.mapsMu.Lock()
		err := s.listen(ms)
		if err == nil {
			// Visible to the overlap check of the next new mapping; not
			// accepting until the commit below.
			s.maps = append(s.maps, ms)
		}
		s.mapsMu.Unlock()
		if err != nil {
			s.mapsMu.Lock()
			s.maps = without(s.maps, added)
			s.mapsMu.Unlock()
			undo()
			return fmt.Errorf("reload: %w", err)
		}
		added = append(added, ms)
	}

	// Commit: nothing below can fail.
	var removed []*mapState
	for _, ms := range current {
		if _, ok := kept[ms]; !ok {
			removed = append(removed, ms)
		}
	}
	changed := 0
	for ms, m := range kept {
		old := ms.cur.Load()
		if reflect.DeepEqual(old.m, m) {
			continue
		}
		rt := s.newRoute(ms.label, m)
		ms.cur.Store(rt)
		close(old.stop)
		rt.pool.startChecks(m.Health, rt.stop, &s.checkWG)
		changed++
	}
	for _, ms := range added {
		rt := ms.cur.Load()
		rt.pool.startChecks(rt.m.Health, rt.stop, &s.checkWG)
	}
	for _, ms := range removed {
		ms.removed.Store(true)
		close(ms.cur.Load().stop)
	}
	s.mapsMu.Lock()
	// Drop listeners removed earlier whose connections have all ended, in
	// a new slice: a Snapshot may still range over the old one.
	keep := make([]*mapState, 0, len(s.maps))
	for _, ms := range s.maps {
		if !ms.removed.Load() || ms.active() > 0 || contains(removed, ms) {
			keep = append(keep, ms)
		}
	}
	s.maps = keep
	s.mapsMu.Unlock()
	s.onLoops(func(w *worker) {
		for _, ms := range added {
			for _, a := range w.addAcceptors(ms) {
				if s.started {
					a.arm()
				}
			}
		}
		for _, ms := range removed {
			w.stopAcceptors(ms)
		}
	})
	for _, ms := range removed {
		if ms.unixListen {
			os.Remove(ms.m.BindUnix)
		}
	}
	// A removed listener's socket closes on its loop once its armed accept
	// is cancelled. Waiting for that lets the next Reload bind the address
	// again, and a client that connects after Reload returns be refused
	// (unless the socket was passed in and its giver still listens).
	if open := s.waitClosed(removed, listenerCloseTimeout); open > 0 {
		s.log.Warn("removed listeners still open after the reload", zap.Int("sockets", open), zap.Duration("waited", listenerCloseTimeout))
	} else {
		waitUnbound(removed, unbindTimeout)
	}

	var restart []string
	a, b := s.cfg, cfg
	a.Mappings, b.Mappings, a.args, b.args, a.lookup, b.lookup = nil, nil, nil, nil, nil, nil
	av, bv := reflect.ValueOf(a), reflect.ValueOf(b)
	for i := 0; i < av.NumField(); i++ {
		if f := av.Type().Field(i); f.IsExported() && !reflect.DeepEqual(av.Field(i).Interface(), bv.Field(i).Interface()) {
			restart = append(restart, f.Name)
		}
	}
	fields := []zap.Field{zap.Int("kept", len(kept)), zap.Int("changed", changed), zap.Int("added", len(added)), zap.Int("removed", len(removed))}
	if len(restart) > 0 {
		fields = append(fields, zap.String("need_restart", strings.Join(restart, ",")))
	}
	s.log.Info("reloaded", fields...)
	for _, ms := range added {
		s.log.Info("forwarding", zap.Strings("listen", addrStrings(ms.addrs)), zap.String("target", ms.m.Target()))
	}
	for _, ms := range removed {
		s.log.Info("stopped listening; open connections drain", zap.String("mapping", ms.label), zap.Uint64("open", ms.active()))
	}
	return nil
}

// listenerCloseTimeout bounds Reload's wait for the sockets of the
// listeners it removed to close (a cancel takes a loop round).
const listenerCloseTimeout = 2 * time.Second

// waitClosed waits up to timeout for every listening socket of mss to be
// closed, and returns how many are still open.
func (s *Server) waitClosed(mss []*mapState, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		open := 0
		s.fdsMu.Lock()
		for _, ms := range mss {
			for range ms.openFds {
				open++
			}
		}
		s.fdsMu.Unlock()
		if open == 0 || time.Now().After(deadline) {
			return open
		}
		time.Sleep(time.Millisecond)
	}
}

// unbindTimeout bounds the wait for the kernel to release the ports of
// closed listeners. The last reference to a socket whose poll or accept
// was cancelled may be dropped by the kernel a moment after close(2)
// (measured here: about 1 ms); until then a plain bind of its port fails.
const unbindTimeout = 200 * time.Millisecond

// waitUnbound waits up to timeout until every TCP address of mss can be
// bound again. An address still taken after that (another process bound
// it meanwhile) is left for the next bind to report. Sockets passed in
// (systemd, a hand-over) are skipped: their giver may keep them open.
func waitUnbound(mss []*mapState, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for _, ms := range mss {
		if ms.passedIn {
			continue
		}
		for _, a := range ms.addrs {
			ta, ok := a.(*net.TCPAddr)
			if !ok {
				continue
			}
			ip := ta.AddrPort().Addr()
			for bindProbe(ip, ta.Port) != nil && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// active is the number of open connections accepted by ms.
func (ms *mapState) active() uint64 {
	var opened, closed uint64
	for i := range ms.ctr {
		closed += ms.ctr[i].closed.load()
		opened += ms.ctr[i].opened.load()
	}
	if opened > closed {
		return opened - closed
	}
	return 0
}

func addrStrings(addrs []net.Addr) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}

func without(all, drop []*mapState) []*mapState {
	var out []*mapState
	for _, ms := range all {
		if !contains(drop, ms) {
			out = append(out, ms)
		}
	}
	return out
}

func contains(list []*mapState, ms *mapState) bool {
	for _, x := range list {
		if x == ms {
			return true
		}
	}
	return false
}
