package blockdev

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/userland-io/uio/blockdev/abuse"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Config describes the device to create (or attach to) and how to serve it.
type Config struct {
	// Backend holds the data. Required.
	Backend Backend
	// Size is the device size in bytes; 0 means Backend.Size(). It must be
	// a multiple of BlockSize and at most Backend.Size().
	Size int64
	// BlockSize is the logical block size, 512 or 4096 (default 4096).
	BlockSize int
	// Queues is the number of hardware queues, each served by its own
	// engine loop (thread); 1..64, default 1.
	Queues int
	// Depth is the number of requests in flight per queue, 1..1024,
	// default 128.
	Depth int
	// MaxIO is the largest request in bytes, a page multiple from 4 KiB to
	// 8 MiB (default 1 MiB). Each queue maps Depth*MaxIO bytes of buffers.
	MaxIO int
	// ReadOnly makes the device read-only.
	ReadOnly bool
	// WriteCache tells the kernel the backend has a volatile cache: FLUSH
	// and FUA requests are then sent and passed to Backend.Flush (or an
	// AsyncBackend). Leave it off for backends whose writes are durable
	// (or never are, like RAM).
	WriteCache bool
	// Index is the N of /dev/abuseN to create; -1 for the first free one.
	// With Attach it names the existing device to serve.
	Index int
	// Attach serves the existing device Index, whose previous server is
	// gone, instead of creating one (see ReconnectMs). Its geometry comes
	// from the kernel; Size, BlockSize, Queues, Depth, MaxIO are ignored.
	Attach bool
	// Token is the ownership token of the device to Attach to (what
	// Server.Token returned to its creator); without it the kernel refuses
	// with EPERM.
	Token uint64
	// ReconnectMs: when the server goes away, the kernel holds the device's
	// I/O this long for a new server to Attach (0: fail it at once).
	ReconnectMs int
	// IOTimeout bounds how long the kernel waits for this server to finish
	// a request (1 s..1 h, rounded down to milliseconds; 0: the kernel's
	// default of 30 s). A request past it fails with EIO; with
	// TimeoutEndsServer the server is treated as dead instead.
	IOTimeout time.Duration
	// TimeoutEndsServer: an I/O timeout ends this server's service of the
	// device, as if it had died (see ReconnectMs).
	TimeoutEndsServer bool
	// Engine is the uio backend of the queue loops: "aio", "uring" or
	// "auto" (default). ublk needs "uring" (or "auto" where io_uring works).
	Engine string
	// Driver is the kernel interface: "abuse" (kmod/abuse.ko, /dev/abuseN),
	// "ublk" (the kernel's ublk_drv, /dev/ublkbN) or "auto" (default):
	// ABUSE when /dev/abctl exists, else ublk.
	Driver string
	// UblkCopy is how ublk moves data: "auto" (default: USER_COPY where
	// the kernel has it, 6.5+) or "buffers" (the kernel copies through
	// per-tag buffers, as before 6.5). ABUSE ignores it.
	UblkCopy string
	// AbuseCopy is how ABUSE moves data: "auto" (default: USER_COPY
	// queues where the module has them and the backend is synchronous and
	// implements WriteMapper, like RAM: its data is then copied once,
	// straight between the bio and its memory, for writes as for reads) or
	// "buffers" (the kernel copies WRITE data into per-tag buffers at
	// fetch time, as modules without USER_COPY do, and as other backends
	// always get). ublk ignores it.
	AbuseCopy string
	// FetchWait is how long an ABUSE queue's COMMIT_FETCH waits in the
	// kernel for the next request before the queue goes back to polling
	// (modules with FeatWait, synchronous backends only): at low queue
	// depth each request then costs one ioctl. 0 means 10 ms; negative
	// means never wait. At most 1 s.
	FetchWait time.Duration
	// FetchSpin is how long that wait polls before it sleeps (0: it
	// sleeps at once; at most 1 ms). Polling saves a wakeup per request
	// at the cost of a busy CPU.
	FetchSpin time.Duration
	// Logger receives attach/detach events and bad requests; default none.
	Logger *zap.Logger
}

// ErrNoModule means /dev/abctl is missing: the kernel module is not loaded.
var ErrNoModule = errors.New("blockdev: " + abuse.CtlPath + " missing: the abuse module is not loaded (modprobe abuse)")

// Server serves one device. Create it with Serve.
type Server struct {
	ctl     *abuse.Ctl // ABUSE; nil on ublk
	u       *ublkDev   // ublk; nil on ABUSE
	uqueues []*uqueue
	cfg     abuse.DevConfig
	geo     geometry
	be      Backend
	async   AsyncBackend
	mapper  Mapper
	wmapper WriteMapper
	// ABUSE: USER_COPY queues, and COMMIT_FETCH waits (ms, µs; 0: none)
	userCopy                 bool
	fetchWaitMs, fetchSpinUs int
	log                      *zap.Logger
	engine                   string
	queues                   []*queue
	anyStop                  chan struct{} // a queue stopped (buffered, one per queue)
	done                     chan struct{}

	mu         sync.Mutex
	detachedCh chan struct{} // closed when detach has finished
	detached   bool
	removed    bool
	stats      Stats
}

// Serve creates the device described by cfg (or attaches to it) and starts
// serving its queues. The device exists when Serve returns; its path is
// Path().
func Serve(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, errors.New("blockdev: no backend")
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	dc, err := deviceConfig(&cfg)
	if err != nil {
		return nil, err
	}
	drv, err := chooseDriver(cfg.Driver)
	if err != nil {
		return nil, err
	}
	if drv == DriverUblk {
		return serveUblk(cfg, dc, log)
	}
	ctl, err := abuse.Open()
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("%w (%v)", ErrNoModule, err)
		}
		return nil, err
	}
	if cfg.Attach {
		dc, err = ctl.Attach(cfg.Index, cfg.Token)
		if err == nil && int64(dc.Size) > cfg.Backend.Size() {
			err = fmt.Errorf("blockdev: device %d is %d bytes, the backend only %d", cfg.Index, dc.Size, cfg.Backend.Size())
		}
	} else {
		err = ctl.Create(&dc)
		if errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("%w: /dev/abuse%d already exists", err, cfg.Index)
		}
	}
	if err != nil {
		ctl.Close()
		return nil, err
	}
	s := newServer(cfg, dc, log.With(zap.String("dev", fmt.Sprintf("abuse%d", dc.DevID))), cfg.Engine)
	s.ctl = ctl
	if s.engine == "" {
		s.engine = "auto"
	}
	// USER_COPY pays off where the backend can name where WRITE data
	// belongs; for others it would add an ioctl per request
	s.userCopy = cfg.AbuseCopy != "buffers" && dc.Features&abuse.FeatUserCopy != 0 && s.async == nil && s.wmapper != nil
	if dc.Features&abuse.FeatWait != 0 && cfg.FetchWait >= 0 {
		s.fetchWaitMs = int(cfg.FetchWait.Milliseconds())
		if cfg.FetchWait == 0 {
			s.fetchWaitMs = 10
		}
		s.fetchSpinUs = int(cfg.FetchSpin.Microseconds())
	}
	for i := 0; i < int(dc.NrHWQueues); i++ {
		q, err := s.startQueue(i)
		if err != nil {
			s.stopQueues()
			if !cfg.Attach {
				ctl.Remove(int(dc.DevID))
			}
			ctl.Close()
			return nil, err
		}
		s.queues = append(s.queues, q)
	}
	go func() {
		// One queue stopping means the server is done (the kernel ends
		// the whole server generation at once): stop the others too.
		<-s.anyStop
		s.detach()
		close(s.done)
	}()
	verb := "created"
	if cfg.Attach {
		verb = "attached"
	}
	s.log.Info("blockdev: "+verb, zap.String("path", s.Path()), zap.Uint64("size", dc.Size),
		zap.Uint32("block_size", dc.LogicalBlockSize), zap.Uint32("queues", dc.NrHWQueues),
		zap.Uint32("depth", dc.QueueDepth), zap.Uint32("max_io", dc.MaxIOBytes),
		zap.Uint32("io_timeout_ms", dc.IOTimeoutMs), zap.Bool("timeout_ends_server", dc.Flags&abuse.DevTimeoutDead != 0),
		zap.Bool("read_only", s.geo.readOnly), zap.String("engine", s.queues[0].l.Backend()),
		zap.Bool("async_backend", s.async != nil), zap.Bool("mapped_reads", s.mapper != nil),
		zap.Bool("user_copy", s.userCopy), zap.Bool("mapped_writes", s.userCopy && s.wmapper != nil),
		zap.Int("fetch_wait_ms", s.fetchWaitMs), zap.Int("fetch_spin_us", s.fetchSpinUs))
	return s, nil
}

// deviceConfig checks cfg and turns it into the kernel's device config.
func deviceConfig(cfg *Config) (abuse.DevConfig, error) {
	if cfg.Attach {
		if cfg.Index < 0 {
			return abuse.DevConfig{}, fmt.Errorf("blockdev: attach needs a device index, got %d", cfg.Index)
		}
		return abuse.DevConfig{}, nil
	}
	bs := cfg.BlockSize
	if bs == 0 {
		bs = 4096
	}
	if bs != 512 && bs != 4096 {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: block size %d: want 512 or 4096", bs)
	}
	size := cfg.Size
	if size == 0 {
		size = cfg.Backend.Size()
	}
	if size <= 0 || size%int64(bs) != 0 || size > abuse.MaxSize {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: size %d: want a positive multiple of the block size %d (at most 2^60)", size, bs)
	}
	if size > cfg.Backend.Size() {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: size %d exceeds the backend's %d bytes", size, cfg.Backend.Size())
	}
	if cfg.Queues < 0 || cfg.Queues > abuse.MaxQueues {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: %d queues: want 1..%d", cfg.Queues, abuse.MaxQueues)
	}
	if cfg.Depth < 0 || cfg.Depth > abuse.MaxDepth {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: depth %d: want 1..%d", cfg.Depth, abuse.MaxDepth)
	}
	if cfg.MaxIO != 0 && (cfg.MaxIO < abuse.MinIOBytes || cfg.MaxIO > abuse.MaxIOBytes || cfg.MaxIO%4096 != 0) {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: max I/O %d: want a multiple of 4 KiB from 4 KiB to 8 MiB", cfg.MaxIO)
	}
	if cfg.Index < -1 || cfg.Index >= abuse.MaxDevices {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: device index %d: want -1 or 0..%d", cfg.Index, abuse.MaxDevices-1)
	}
	if cfg.ReconnectMs < 0 || cfg.ReconnectMs > abuse.MaxReconnectMs {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: reconnect window %d ms: want 0..%d", cfg.ReconnectMs, abuse.MaxReconnectMs)
	}
	switch cfg.AbuseCopy {
	case "", "auto", "buffers":
	default:
		return abuse.DevConfig{}, fmt.Errorf("blockdev: ABUSE copy mode %q: want auto or buffers", cfg.AbuseCopy)
	}
	if cfg.FetchWait > time.Duration(abuse.MaxWaitMs)*time.Millisecond || (cfg.FetchWait > 0 && cfg.FetchWait < time.Millisecond) {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: fetch wait %v: want 1ms..%dms (0: 10ms, negative: none)", cfg.FetchWait, abuse.MaxWaitMs)
	}
	if cfg.FetchSpin < 0 || cfg.FetchSpin > time.Duration(abuse.MaxSpinUs)*time.Microsecond {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: fetch spin %v: want 0..%dµs", cfg.FetchSpin, abuse.MaxSpinUs)
	}
	timeoutMs := cfg.IOTimeout.Milliseconds()
	if cfg.IOTimeout != 0 && (timeoutMs < abuse.MinIOTimeoutMs || timeoutMs > abuse.MaxIOTimeoutMs) {
		return abuse.DevConfig{}, fmt.Errorf("blockdev: I/O timeout %v: want 1s..1h (0: the kernel's default %ds)", cfg.IOTimeout, abuse.DefIOTimeoutMs/1000)
	}
	dc := abuse.DevConfig{
		Size:             uint64(size),
		LogicalBlockSize: uint32(bs),
		NrHWQueues:       uint32(cfg.Queues),
		QueueDepth:       uint32(cfg.Depth),
		MaxIOBytes:       uint32(cfg.MaxIO),
		ReconnectMs:      uint32(cfg.ReconnectMs),
		IOTimeoutMs:      uint32(timeoutMs),
		DevID:            int32(cfg.Index),
	}
	if cfg.TimeoutEndsServer {
		dc.Flags |= abuse.DevTimeoutDead
	}
	if cfg.ReadOnly {
		dc.Flags |= abuse.DevReadOnly
	}
	if cfg.WriteCache {
		dc.Flags |= abuse.DevWriteCache | abuse.DevFUA
	}
	const maxSectors = 1 << 22 // 2 GiB per DISCARD/WRITE_ZEROES
	if backendSupports(cfg.Backend, OpDiscard) {
		dc.MaxDiscardSectors = maxSectors
	}
	if backendSupports(cfg.Backend, OpWriteZeroes) {
		dc.MaxWriteZeroesSectors = maxSectors
	}
	return dc, nil
}

// Path returns the device node, /dev/abuseN or /dev/ublkbN.
func (s *Server) Path() string { return "/dev/" + s.Name() }

// Name returns the disk's name in /sys/block: abuseN or ublkbN.
func (s *Server) Name() string {
	if s.u != nil {
		return fmt.Sprintf("ublkb%d", s.cfg.DevID)
	}
	return fmt.Sprintf("abuse%d", s.cfg.DevID)
}

// Driver returns the kernel interface serving the device: "abuse" or "ublk".
func (s *Server) Driver() string {
	if s.u != nil {
		return DriverUblk
	}
	return DriverAbuse
}

// Index returns N of /dev/abuseN (/dev/ublkbN).
func (s *Server) Index() int { return int(s.cfg.DevID) }

// Token returns the device's ownership token: a new server needs it to
// Attach (Config.Token), and another session to remove the device.
func (s *Server) Token() uint64 { return s.cfg.Token }

// DeviceConfig returns the effective device configuration.
func (s *Server) DeviceConfig() abuse.DevConfig { return s.cfg }

// Done is closed when every queue has stopped serving: the device was
// removed (by Close or anyone else), another server took over, or Detach.
func (s *Server) Done() <-chan struct{} { return s.done }

// Close removes the device and stops serving. Removal is refused while the
// device is open or mounted: Close retries for up to wait, then returns an
// error wrapping EBUSY and keeps serving (call Detach to stop anyway).
func (s *Server) Close(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var err error
	for {
		s.mu.Lock()
		if s.detached || s.removed {
			s.mu.Unlock()
			break
		}
		if s.u != nil {
			// ublk deletes a disk under a mounted file system; refuse
			// that like ABUSE does.
			if s.ublkBusy() {
				err = unix.EBUSY
			} else {
				s.removed = true // detach stops and deletes it
			}
		} else {
			err = s.ctl.Remove(int(s.cfg.DevID))
		}
		if err == nil {
			s.removed = true
		}
		s.mu.Unlock()
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s is open or mounted", err, s.Path())
		}
		return err
	}
	s.log.Info("blockdev: removed", zap.String("path", s.Path()))
	return s.Detach()
}

// Detach stops serving without removing the device: the kernel fails its
// I/O, or holds it for a new server if it was created with ReconnectMs.
// On ublk a device cannot outlive its server: Detach deletes it even when
// it is mounted (STOP_DEV then DEL_DEV; the file system sees EIO). Requests the backend is still working on are finished (their results
// are dropped) before Detach returns.
func (s *Server) Detach() error {
	err := s.detach()
	<-s.done
	return err
}

func (s *Server) detach() error {
	s.mu.Lock()
	if s.detached {
		s.mu.Unlock()
		<-s.detachedCh
		return nil
	}
	s.detached = true
	s.mu.Unlock()
	var st Stats
	var err error
	if s.u != nil {
		st, err = s.detachUblk()
	} else {
		st = s.stopQueues()
		err = s.ctl.Close()
	}
	s.mu.Lock()
	s.stats = st
	s.mu.Unlock()
	close(s.detachedCh)
	s.log.Info("blockdev: detached", zap.String("path", s.Path()), zap.Int64("requests", st.Requests),
		zap.Int64("commit_fetch_calls", st.Calls), zap.Int64("polls", st.Polls), zap.Int64("bad_requests", st.Bad))
	return err
}

// Stats returns the counters of a server that has stopped (zero before).
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Stats counts a server's work.
type Stats struct {
	Requests int64 // requests fetched
	Calls    int64 // COMMIT_FETCH ioctls
	Polls    int64 // poll ops that fired
	Bad      int64 // requests refused by validation
}

func (s *Server) stopQueues() Stats {
	var st Stats
	for _, q := range s.queues {
		q.stop()
		st.Requests += q.st.Requests
		st.Calls += q.st.Calls
		st.Polls += q.st.Polls
		st.Bad += q.st.Bad
	}
	return st
}

// kqueue is the kernel side of a queue (abuse.Queue; a fake in tests).
type kqueue interface {
	Fd() int
	Buffer(tag uint16) []byte
	CommitFetchWait(done []abuse.Completion, waitMs, spinUs int) ([]abuse.Request, error)
	UserCopy() bool
	Copy(seq uint64, tag uint16, off int, p []byte) error
	Close() error
}

func (s *Server) startQueue(i int) (*queue, error) {
	open := s.ctl.OpenQueue
	if s.userCopy {
		open = s.ctl.OpenUserCopyQueue
	}
	kq, err := open(i)
	if err != nil {
		return nil, err
	}
	q, err := newQueue(s, kq, i)
	if err != nil {
		kq.Close()
		return nil, err
	}
	return q, nil
}

// newServer is the Server both drivers start from: the device as created
// (dc), the backend and its optional interfaces, and the geometry requests
// are checked against.
func newServer(cfg Config, dc abuse.DevConfig, log *zap.Logger, engine string) *Server {
	s := &Server{
		cfg:        dc,
		be:         cfg.Backend,
		log:        log,
		engine:     engine,
		done:       make(chan struct{}),
		anyStop:    make(chan struct{}, dc.NrHWQueues),
		detachedCh: make(chan struct{}),
		geo: geometry{
			size:      int64(dc.Size),
			blockSize: int64(dc.LogicalBlockSize),
			maxIO:     int(dc.MaxIOBytes),
			readOnly:  dc.Flags&abuse.DevReadOnly != 0,
			flush:     dc.Flags&abuse.DevWriteCache != 0,
			discard:   backendSupports(cfg.Backend, OpDiscard),
			zeroes:    backendSupports(cfg.Backend, OpWriteZeroes),
		},
	}
	s.async, _ = cfg.Backend.(AsyncBackend)
	s.mapper, _ = cfg.Backend.(Mapper)
	s.wmapper, _ = cfg.Backend.(WriteMapper)
	return s
}
