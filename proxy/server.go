package proxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio"
)

// engineDepth sizes one round's submissions per loop (the io_uring SQ, the
// first AIO context). It does not bound the ops in flight: idle
// connections' recvs wait in the kernel without holding anything else up.
const engineDepth = 4096

// opsInFlight is what a loop may have in flight when the process carries
// as many connections as its descriptor limit allows: one recv or send per
// socket, and as many again for the other direction's send, connects and
// closes. It sizes io_uring's CQ and makes AIO say at start when
// fs.aio-max-nr is too low for it.
func opsInFlight(loops int) int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return 0
	}
	return int(min(rl.Cur, 1<<20)) * 2 / max(loops, 1)
}

// poolBuffers is the most receive buffers a loop's pool hands out: a
// direction holds two chunks at most (one being sent, one queued), of one
// buffer each, or with bundles of up to -buffer / 16 KiB each, and buffers
// are allocated as they are first needed. With bundles that caps a loop's
// bytes in flight at 512 MiB; beyond it recvs wait for buffers to come back.
const poolBuffers = uio.MaxPoolBuffers

// bundleBuffer is the pool's buffer size on a loop whose recvs bundle
// (uio.Loop.CapsBundles): a recv still takes up to -buffer bytes, in
// several of them, while a small message holds one. Bundles are used for a
// -buffer up to bundleMax: the kernel's ring holds 1 MiB of them (see
// uio.BufferPool), which a larger bundle would take alone.
const (
	bundleBuffer = 16 << 10
	bundleMax    = 256 << 10
)

// poolShape returns the pool buffer size and the bundle cap (0: none) for a
// loop and -buffer.
func poolShape(l *uio.Loop, buffer int, bundles bool) (size, bundleCap int) {
	if bundles && l.CapsBundles() && buffer > bundleBuffer && buffer <= bundleMax {
		return bundleBuffer, buffer
	}
	return buffer, 0
}

// Server is a running uioproxy: its loops, listeners and connections.
// New opens everything, Start begins accepting, Shutdown drains and stops.
type Server struct {
	cfg    Config
	log    *zap.Logger
	access *zap.Logger // nil: no access log
	group  *uio.Group
	ws     []*worker
	maps   []*mapState
	splice bool // -splice: forward through a pipe per direction
	dns    *dnsCache

	// Active health checks: one goroutine per upstream that has them.
	checkWG sync.WaitGroup

	inherited  map[string][]int // listening sockets passed in, by listenKey, not yet matched
	handedOver atomic.Bool      // SIGUSR2 passed the listeners on: do not unlink Unix sockets

	mapsMu sync.Mutex // guards maps against Reload (the loops never read it)
	// fdsMu guards the entries of every mapState's fds between an acceptor
	// closing its socket on a loop and a hand-over duplicating them: with
	// the close and the -1 under one lock, a dup never meets an fd number
	// that was closed and handed out again.
	fdsMu    sync.Mutex
	reloadMu sync.Mutex // one Reload at a time; Start and Shutdown set started and closed under it

	stopping atomic.Bool
	ctx      context.Context // cancelled by Shutdown: ends pending lookups
	cancel   context.CancelFunc

	// -max-conns: slots counts open connections; loops holding an accepted
	// connection or an acceptor that found no slot wait in waiting.
	slots   atomic.Int64
	mu      sync.Mutex
	waiting []*worker

	// When the process last ran out of descriptors (UnixNano): warnFds
	// logs once per episode.
	lastFdHit atomic.Int64

	started, closed bool
}

// mapState is one listener (a mapping's listen address) and the route its
// connections take. A reload that keeps the listen address keeps the
// mapState and its sockets and swaps the route.
type mapState struct {
	m     Mapping    // as first configured: the listen side
	label string     // m.Label(), the metrics label
	addrs []net.Addr // one per bound address (port resolved)
	fds   [][]int    // fds[addr][j], accepted on by loop j%Loops (systemd may pass more than one per loop); -1 once closed (under Server.fdsMu)

	cur     atomic.Pointer[route]
	ctr     []mapCounters // per loop; written only by that loop
	removed atomic.Bool   // a reload dropped it: no more accepts, connections drain

	unixListen bool // listening on a Unix socket (accepted on loop 0 only)
	inherited  bool // its sockets came from systemd, which owns a Unix socket's file
	// passedIn: some of its sockets came from the process that started
	// this one (systemd, or a hand-over), which may hold them still, so
	// closing ours need not free the port.
	passedIn bool
}

// openFds yields each of ms's listening sockets still open, as its fds
// entry: the one record of whether a listener is open (the caller holds
// Server.fdsMu, or ms is not published yet).
func (ms *mapState) openFds(yield func(fd *int) bool) {
	for _, fds := range ms.fds {
		for i := range fds {
			if fds[i] >= 0 && !yield(&fds[i]) {
				return
			}
		}
	}
}

// route is what a connection follows: the mapping's upstream-side options
// and the router choosing among its upstreams.
type route struct {
	m    Mapping
	r    router
	pool *pool         // r, for the metrics and health checks
	stop chan struct{} // ends its active health checks
}

// New validates cfg, starts the loops and binds every mapping's listening
// sockets. Nothing is accepted until Start. log may be nil.
func New(cfg Config, log *zap.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = zap.NewNop()
	}
	g, err := uio.NewGroup(cfg.Loops, uio.Config{Backend: cfg.Backend, Depth: engineDepth, MaxInFlight: opsInFlight(cfg.Loops), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("-backend %s: %w", cfg.Backend, err)
	}
	s := &Server{cfg: cfg, log: log, group: g, inherited: cfg.inherited}
	s.dns = newDNSCache(cfg.DNSTTL, cfg.lookup)
	if cfg.AccessLog && log.Core().Enabled(zapcore.InfoLevel) {
		s.access = log.Named("access") // info lines: -log-level warn turns them off
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.splice = cfg.Splice // nonblocking splices run inline on both backends
	for _, m := range cfg.Mappings {
		ms := s.newMapState(m)
		if err := s.listen(ms); err != nil { // closes its own partial fds
			s.closeListeners()
			g.Close()
			return nil, err
		}
		s.maps = append(s.maps, ms)
	}
	for key, fds := range s.inherited {
		log.Warn("inherited listening socket matches no mapping; closed", zap.String("addr", key))
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	s.inherited = nil
	for i, l := range g.Loops() {
		size, bundleCap := poolShape(l, cfg.BufferSize, !cfg.NoBundles)
		pool, err := l.NewBufferPool(size, poolBuffers)
		if err != nil {
			s.closeListeners()
			g.Close()
			return nil, err
		}
		w := &worker{s: s, idx: i, loop: l, conns: map[*conn]struct{}{}, pool: pool, bundleCap: bundleCap}
		if bundleCap > 0 {
			if w.plain, err = l.NewBufferPool(cfg.BufferSize, poolBuffers); err != nil {
				s.closeListeners()
				g.Close()
				return nil, err
			}
		}
		for _, ms := range s.maps {
			w.addAcceptors(ms)
		}
		w.resumeFn = w.resume
		s.ws = append(s.ws, w)
	}
	return s, nil
}

func (s *Server) newMapState(m Mapping) *mapState {
	ms := &mapState{m: m, label: m.Label(), ctr: make([]mapCounters, s.cfg.Loops), unixListen: m.BindUnix != ""}
	ms.cur.Store(s.newRoute(ms.label, m))
	return ms
}

func (s *Server) newRoute(label string, m Mapping) *route {
	p := newPool(label, m.Targets(), m.Balance, s.dns, s.log)
	return &route{m: m, r: p, pool: p, stop: make(chan struct{})}
}

// Backend names the engine backend the loops run on.
func (s *Server) Backend() string { return s.group.Loops()[0].Backend() }

// Addrs returns the addresses mapping i listens on (with the port the
// kernel chose for port 0).
func (s *Server) Addrs(i int) []net.Addr {
	s.mapsMu.Lock()
	defer s.mapsMu.Unlock()
	return s.maps[i].addrs
}

// Start begins accepting on every listener.
func (s *Server) Start() {
	s.reloadMu.Lock() // against a Reload or Shutdown running meanwhile
	defer s.reloadMu.Unlock()
	if s.started {
		return
	}
	s.started = true
	for _, ms := range s.maps {
		rt := ms.cur.Load()
		rt.pool.startChecks(rt.m.Health, rt.stop, &s.checkWG)
	}
	for _, w := range s.ws {
		w.loop.Post(w.start)
	}
}

// ActiveConns is the number of open connections (connecting ones included).
func (s *Server) ActiveConns() int {
	n := 0
	for _, c := range s.Snapshot().Mappings {
		n += int(c.Active)
	}
	return n
}

// Shutdown stops accepting and closes the listeners, waits up to drain for
// the open connections to finish by themselves, closes those left, and then
// stops the loops. It returns how many connections it had to close.
func (s *Server) Shutdown(drain time.Duration) int { return s.shutdown(drain, nil) }

// shutdown is Shutdown whose drain also ends when abort is closed.
func (s *Server) shutdown(drain time.Duration, abort <-chan struct{}) int {
	// Under reloadMu: a Reload running meanwhile finishes first, and one
	// that comes later sees closed.
	s.reloadMu.Lock()
	if s.closed {
		s.reloadMu.Unlock()
		return 0
	}
	s.closed = true
	s.stopping.Store(true)
	started := s.started
	s.reloadMu.Unlock()
	s.mu.Lock()
	s.waiting = nil
	s.mu.Unlock()
	if !started {
		s.closeListeners()
	} else {
		s.onLoops(func(w *worker) { w.stopAccepting() })
	}
	deadline := time.NewTimer(drain)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
drain:
	for s.ActiveConns() > 0 {
		select {
		case <-deadline.C:
			break drain
		case <-abort:
			break drain
		case <-tick.C:
		}
	}
	forced := 0
	if s.ActiveConns() > 0 {
		var mu sync.Mutex
		s.onLoops(func(w *worker) {
			n := w.closeAll()
			mu.Lock()
			forced += n
			mu.Unlock()
		})
		// Closing takes a round or two (cancels, then the closes).
		for end := time.Now().Add(5 * time.Second); s.ActiveConns() > 0 && time.Now().Before(end); {
			time.Sleep(time.Millisecond)
		}
	}
	// Listeners whose accept was cancelled close in that op's callback.
	s.mapsMu.Lock()
	maps := s.maps
	s.mapsMu.Unlock()
	s.waitClosed(maps, 5*time.Second)
	s.cancel()
	s.mapsMu.Lock()
	for _, ms := range s.maps {
		if !ms.removed.Load() {
			close(ms.cur.Load().stop)
			if ms.unixListen && !ms.inherited && !s.handedOver.Load() {
				os.Remove(ms.m.BindUnix)
			}
		}
	}
	s.mapsMu.Unlock()
	s.checkWG.Wait()
	s.group.Close()
	// Whatever is still open (a loop that was wedged) goes now.
	s.closeListeners()
	return forced
}

// onLoops runs fn on every loop and waits for all of them.
func (s *Server) onLoops(fn func(w *worker)) {
	var wg sync.WaitGroup
	for _, w := range s.ws {
		wg.Add(1)
		if err := w.loop.Post(func(h uio.Handle) { fn(w); wg.Done() }); err != nil {
			wg.Done()
		}
	}
	wg.Wait()
}

// closeListeners closes listening fds nobody else will: before Start, or
// after the loops are gone.
func (s *Server) closeListeners() {
	s.fdsMu.Lock()
	defer s.fdsMu.Unlock()
	for _, ms := range s.maps {
		for fd := range ms.openFds {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// tryReserve takes a connection slot, unless -max-conns are open.
func (s *Server) tryReserve() bool {
	max := int64(s.cfg.MaxConns)
	if max == 0 {
		s.slots.Add(1)
		return true
	}
	for {
		v := s.slots.Load()
		if v >= max {
			return false
		}
		if s.slots.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// wait registers w to be resumed when a slot frees. It returns false when
// one is free already (the caller retries instead of waiting).
func (s *Server) wait(w *worker) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slots.Load() < int64(s.cfg.MaxConns) || s.stopping.Load() {
		return false
	}
	if !w.waiting {
		w.waiting = true
		s.waiting = append(s.waiting, w)
	}
	return true
}

// release gives a slot back and resumes the loops waiting for one.
func (s *Server) release() {
	s.slots.Add(-1)
	if s.cfg.MaxConns == 0 {
		return
	}
	s.mu.Lock()
	ws := s.waiting
	s.waiting = nil
	for _, w := range ws {
		w.waiting = false
	}
	s.mu.Unlock()
	for _, w := range ws {
		w.loop.Post(w.resumeFn)
	}
}

// Run is uioproxy: it raises the soft RLIMIT_NOFILE to the hard limit,
// starts a Server for cfg, logs where it listens and how many connections
// the descriptor limit allows, and serves until ctx is cancelled (main
// cancels it on SIGINT/SIGTERM); then it drains for cfg.DrainTimeout and
// returns nil. Logs go to stderr or, with cfg.LogFile, to that file, which
// SIGHUP reopens. With
// cfg.StatsInterval it logs a stats line that often; with cfg.MetricsAddr it
// serves Prometheus metrics.
func Run(ctx context.Context, cfg Config) error {
	var out zapcore.WriteSyncer = os.Stderr
	var file *LogFile
	if cfg.LogFile != "" {
		f, err := OpenLogFile(cfg.LogFile)
		if err != nil {
			return err
		}
		defer f.Close()
		out, file = f, f
	}
	log, err := NewLogger(cfg.LogLevel, cfg.LogFormat, out)
	if err != nil {
		return err
	}
	defer log.Sync()
	return runWith(ctx, cfg, log, file)
}

// reloadFile is SIGHUP's reload: the command line and config file read
// again, and Reload; a config with mistakes is refused and logged, and the
// running one stays.
func (s *Server) reloadFile(cfg Config) {
	if cfg.ConfigFile == "" {
		return
	}
	notifyReloading()
	defer notify("READY=1")
	next, err := cfg.Reread()
	if err == nil {
		err = s.Reload(next)
	}
	if err != nil {
		s.log.Error("reload refused; the running configuration stays", zap.String("config", cfg.ConfigFile), zap.Error(err))
	}
}

// RunWithLogger is Run with the caller's logger; SIGHUP reloads -config
// but reopens nothing, since the caller owns the logger's output.
func RunWithLogger(ctx context.Context, cfg Config, log *zap.Logger) error {
	return runWith(ctx, cfg, log, nil)
}

func runWith(ctx context.Context, cfg Config, log *zap.Logger, logFile *LogFile) error {
	limit := raiseNofile()
	inherited, fromSystemd, err := inheritedListeners(log)
	if err != nil {
		return err
	}
	cfg.inherited, cfg.systemdSockets = inherited, fromSystemd
	s, err := New(cfg, log)
	if err != nil {
		return err
	}
	if cfg.User != "" {
		if err := dropPrivileges(cfg.User); err != nil {
			s.Shutdown(0)
			return err
		}
		log.Info("dropped privileges", zap.String("user", cfg.User), zap.Int("uid", os.Getuid()), zap.Int("gid", os.Getgid()))
	}
	var metricsSrv *metricsServer
	if cfg.MetricsAddr != "" {
		if metricsSrv, err = s.serveMetrics(cfg.MetricsAddr); err != nil {
			s.Shutdown(0)
			return err
		}
	}
	// SIGHUP and SIGUSR2 are handled before anyone can know we listen:
	// their default action would kill the process.
	stopHup := watchHUP(log, logFile, func() { s.reloadFile(cfg) })
	defer stopHup()
	ctx, handedOver := context.WithCancel(ctx)
	defer handedOver()
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	go func() {
		for {
			select {
			case <-usr2:
				log.Info("SIGUSR2: starting a new process to hand the listening sockets to")
				pid, err := s.handOver()
				if err != nil {
					log.Error("hand-over failed; still serving", zap.Error(err))
					continue
				}
				log.Info("listening sockets handed over; draining", zap.Int("new_pid", pid))
				handedOver()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	s.logNofile(limit) // before Start: counts the descriptors held without connections
	s.Start()
	s.mapsMu.Lock() // a SIGHUP may be reloading already
	maps := s.maps
	s.mapsMu.Unlock()
	for _, ms := range maps {
		log.Info("forwarding", zap.Strings("listen", addrStrings(ms.addrs)), zap.String("target", ms.m.Target()))
	}
	log.Info("uioproxy started", zap.String("backend", s.Backend()), zap.Int("loops", cfg.Loops),
		zap.Bool("splice", s.splice), zap.Int("buffer", cfg.BufferSize), zap.Int("pool_buffer", s.ws[0].pool.Size()),
		zap.Bool("bundles", s.ws[0].bundleCap > 0), zap.Int("pid", os.Getpid()))
	signalReady()
	var stopStats func()
	if cfg.StatsInterval > 0 {
		stopStats = s.logStatsEvery(cfg.StatsInterval)
	}
	<-ctx.Done()
	if !s.handedOver.Load() {
		notify("STOPPING=1")
	}
	active := s.ActiveConns()
	log.Info("stopping: no new connections; draining", zap.Int("open", active), zap.Duration("drain_timeout", cfg.DrainTimeout))
	if stopStats != nil {
		stopStats()
	}
	// A second SIGINT/SIGTERM during the drain means now.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	abort, drained := make(chan struct{}), make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			log.Warn("second stop signal: resetting open connections now", zap.String("signal", sig.String()))
			close(abort)
		case <-drained:
		}
	}()
	forced := s.shutdown(cfg.DrainTimeout, abort)
	close(drained)
	signal.Stop(sigs)
	if forced > 0 {
		log.Warn("drain over: reset open connections", zap.Int("reset", forced))
	}
	if metricsSrv != nil {
		metricsSrv.close()
	}
	snap := s.Snapshot()
	e := snap.Engine
	log.Info("uioproxy stopped",
		zap.Uint64("connections", snap.Conns()), zap.Uint64("messages", snap.Messages()),
		zap.Uint64("bytes", snap.Bytes()),
		zap.String("backend", e.Backend), zap.Uint64("io_submit", e.Submits), zap.Uint64("io_getevents", e.GetEvents),
		zap.Uint64("io_uring_enter", e.Enters), zap.Uint64("engine_other", e.Other),
		zap.Uint64("proxy_syscalls", snap.Syscalls), zap.Uint64("rounds", e.Rounds),
		zap.Uint64("ops", e.OpsStarted))
	return nil
}
