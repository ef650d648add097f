package blockdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/userland-io/uio"
	"github.com/userland-io/uio/blockdev/abuse"
	"github.com/userland-io/uio/blockdev/ublk"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Drivers (Config.Driver).
const (
	DriverAuto  = "auto"  // ABUSE when /dev/abctl exists, else ublk
	DriverAbuse = "abuse" // kmod/abuse.ko
	DriverUblk  = "ublk"  // the kernel's ublk_drv (Linux 6.0+)
)

// ErrNoUblk means /dev/ublk-control is missing: ublk_drv is not loaded (or
// the kernel has no CONFIG_BLK_DEV_UBLK).
var ErrNoUblk = errors.New("blockdev: " + ublk.ControlPath + " missing: load the ublk driver: modprobe ublk_drv (Linux 6.0+, CONFIG_BLK_DEV_UBLK)")

// chooseDriver resolves Config.Driver.
func chooseDriver(d string) (string, error) {
	switch d {
	case "", DriverAuto:
		if _, err := os.Stat(abuse.CtlPath); err == nil {
			return DriverAbuse, nil
		}
		return DriverUblk, nil
	case DriverAbuse, DriverUblk:
		return d, nil
	}
	return "", fmt.Errorf("blockdev: driver %q: want abuse, ublk or auto", d)
}

// ublkDev is the control side of a device served over ublk: a control
// loop with 128-byte SQEs on /dev/ublk-control, and the device's char node.
type ublkDev struct {
	ctlFd    int
	ctl      *uio.Loop
	cdev     int    // /dev/ublkcN, -1 until opened
	encoded  bool   // ioctl-encoded command ops (the kernel answered GET_FEATURES)
	features uint64 // what GET_FEATURES reported (0: kernel without it)
	info     ublk.DevInfo
	added    bool // ADD_DEV succeeded: DEL_DEV on teardown
	// arg is the memory a control command's Addr names. It lives in this
	// heap object: a buffer on a goroutine's stack could move (stack
	// growth or shrinking) while the kernel reads or writes it.
	arg []byte
	log *zap.Logger
}

func openUblk(log *zap.Logger) (*ublkDev, error) {
	fd, err := unix.Open(ublk.ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("%w (%v)", ErrNoUblk, err)
		}
		return nil, fmt.Errorf("blockdev: open %s: %w", ublk.ControlPath, err)
	}
	l, err := uio.NewLoop(uio.Config{Backend: uio.BackendUring, SQE128: true, Depth: 8, Logger: log})
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("blockdev: ublk needs io_uring with 128-byte SQEs (Linux 5.19): %w", err)
	}
	u := &ublkDev{ctlFd: fd, ctl: l, cdev: -1, arg: make([]byte, 256), log: log}
	// GET_FEATURES exists since 6.5 and only ioctl-encoded; a kernel that
	// refuses it gets the raw ("legacy") opcodes, which every ublk takes
	// unless built without CONFIG_BLKDEV_UBLK_LEGACY_OPCODES (then it has
	// GET_FEATURES).
	buf := make([]byte, ublk.FeaturesLen)
	u.encoded = true
	if err := u.cmd(ublk.CmdGetFeatures, ublk.CtrlCmd{DevID: ublk.NoID, QueueID: 0xffff}, buf); err == nil {
		u.features = binary.LittleEndian.Uint64(buf)
	} else {
		u.encoded = false
		log.Info("blockdev: ublk GET_FEATURES refused (a kernel before 6.5?); using the legacy command opcodes and per-tag buffers", zap.Error(err))
	}
	return u, nil
}

var ublkCmdNames = map[uint32]string{
	ublk.CmdAddDev: "ADD_DEV", ublk.CmdDelDev: "DEL_DEV", ublk.CmdStartDev: "START_DEV", ublk.CmdStopDev: "STOP_DEV",
	ublk.CmdSetParams: "SET_PARAMS", ublk.CmdGetParams: "GET_PARAMS", ublk.CmdGetDevInfo: "GET_DEV_INFO", ublk.CmdGetFeatures: "GET_FEATURES",
}

// cmd runs one control command. arg (nil for none) is copied into u.arg,
// which c.Addr and c.Len then name, and back after the command.
func (u *ublkDev) cmd(nr uint32, c ublk.CtrlCmd, arg []byte) error {
	if len(arg) > 0 {
		copy(u.arg, arg)
		c.Addr, c.Len = ublk.Addr(u.arg), uint16(len(arg))
	}
	op := uio.Op{Kind: uio.OpUringCmd, Fd: u.ctlFd, CmdOp: ublk.CtrlOp(nr, u.encoded), Cmd: c.Marshal()}
	r, err := u.ctl.Do(context.Background(), op)
	runtime.KeepAlive(u.arg)
	copy(arg, u.arg)
	if err == nil && r.Res < 0 {
		err = unix.Errno(-r.Res)
	}
	if err != nil {
		return fmt.Errorf("blockdev: ublk %s (dev %d): %w", ublkCmdNames[nr], int32(c.DevID), err)
	}
	return nil
}

// add creates the device (ADD_DEV) and sets its parameters (SET_PARAMS)
// from dc; dc gets the kernel's answer (id, queues, largest I/O).
func (u *ublkDev) add(dc *abuse.DevConfig, discard, zeroes, userCopy bool) error {
	id := ublk.NoID
	if dc.DevID >= 0 {
		id = uint32(dc.DevID)
	}
	depth, queues, maxIO := dc.QueueDepth, dc.NrHWQueues, dc.MaxIOBytes
	if depth == 0 {
		depth = abuse.DefDepth
	}
	if queues == 0 {
		queues = 1
	}
	if maxIO == 0 {
		maxIO = abuse.DefIOBytes
	}
	info := ublk.DevInfo{NrHWQueues: uint16(queues), QueueDepth: uint16(depth), MaxIOBufBytes: maxIO, DevID: id}
	// No recovery flags: when the server dies the kernel fails the
	// device's I/O with EIO and deletes the disk (see doc.go).
	if userCopy && u.features&ublk.FeatUserCopy != 0 {
		info.Flags |= ublk.FeatUserCopy
	}
	b := info.Marshal()
	err := u.cmd(ublk.CmdAddDev, ublk.CtrlCmd{DevID: id, QueueID: 0xffff}, b)
	if errors.Is(err, unix.EEXIST) && id != ublk.NoID && u.reclaim(id) {
		b = info.Marshal()
		err = u.cmd(ublk.CmdAddDev, ublk.CtrlCmd{DevID: id, QueueID: 0xffff}, b)
	}
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%w: ublk device %d already exists", err, int32(id))
		}
		return err
	}
	u.added = true
	u.info = ublk.UnmarshalDevInfo(b)
	if u.info.Flags&ublk.FeatUserCopy == 0 && info.Flags&ublk.FeatUserCopy != 0 {
		u.log.Info("blockdev: the kernel refused ublk USER_COPY; using per-tag buffers")
	}
	dc.DevID = int32(u.info.DevID)
	dc.NrHWQueues = uint32(u.info.NrHWQueues)
	dc.QueueDepth = uint32(u.info.QueueDepth)
	dc.MaxIOBytes = u.info.MaxIOBufBytes

	shift := uint8(9)
	if dc.LogicalBlockSize == 4096 {
		shift = 12
	}
	p := ublk.Params{
		Types:           ublk.ParamBasic,
		LogicalBSShift:  shift,
		PhysicalBSShift: 12,
		IOMinShift:      shift,
		IOOptShift:      12,
		MaxSectors:      dc.MaxIOBytes >> 9,
		DevSectors:      dc.Size >> 9,
	}
	if dc.Flags&abuse.DevReadOnly != 0 {
		p.Attrs |= ublk.AttrReadOnly
	}
	if dc.Flags&abuse.DevWriteCache != 0 {
		p.Attrs |= ublk.AttrVolatileCache | ublk.AttrFUA
	}
	if discard || zeroes {
		p.Types |= ublk.ParamDiscard
		p.DiscardGranularity = dc.LogicalBlockSize
		p.MaxDiscardSegments = 1
		if discard {
			p.MaxDiscardSectors = dc.MaxDiscardSectors
		}
		if zeroes {
			p.MaxWriteZeroesSectors = dc.MaxWriteZeroesSectors
		}
	}
	pb := p.Marshal()
	return u.cmd(ublk.CmdSetParams, ublk.CtrlCmd{DevID: u.info.DevID, QueueID: 0xffff}, pb)
}

// reclaim deletes device id if it is what a dead server leaves behind:
// the kernel stopped it (state DEAD, server pid -1) and nobody deleted it,
// so only its char node remains. A device being set up (pid 0) or served
// is left alone.
func (u *ublkDev) reclaim(id uint32) bool {
	b := make([]byte, ublk.DevInfoSize)
	if err := u.cmd(ublk.CmdGetDevInfo, ublk.CtrlCmd{DevID: id, QueueID: 0xffff}, b); err != nil {
		return false
	}
	if info := ublk.UnmarshalDevInfo(b); info.State != ublk.StateDead || info.SrvPid != -1 {
		return false
	}
	if err := u.cmd(ublk.CmdDelDev, ublk.CtrlCmd{DevID: id, QueueID: 0xffff}, nil); err != nil {
		u.log.Warn("blockdev: cannot delete the stopped ublk device left by a dead server", zap.Uint32("id", id), zap.Error(err))
		return false
	}
	u.log.Info("blockdev: deleted the stopped ublk device a dead server left", zap.Uint32("id", id))
	return true
}

// openChar opens /dev/ublkcN (the kernel allows one opener).
func (u *ublkDev) openChar() error {
	path := ublk.CharPath(int(u.info.DevID))
	var err error
	for i := 0; i < 100; i++ { // devtmpfs/udev may lag behind ADD_DEV
		u.cdev, err = unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if !errors.Is(err, unix.ENOENT) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		u.cdev = -1
		return fmt.Errorf("blockdev: open %s: %w", path, err)
	}
	return nil
}

// start makes the block device (START_DEV); every queue's tags must be
// fetched already, or this waits for them.
func (u *ublkDev) start() error {
	return u.cmd(ublk.CmdStartDev, ublk.CtrlCmd{DevID: u.info.DevID, QueueID: 0xffff, Data: uint64(os.Getpid())}, nil)
}

// stop deletes the block device (STOP_DEV): the kernel waits for the
// requests in flight, then completes every armed tag with ResAbort.
func (u *ublkDev) stop() error {
	err := u.cmd(ublk.CmdStopDev, ublk.CtrlCmd{DevID: u.info.DevID, QueueID: 0xffff}, nil)
	if errors.Is(err, unix.ENODEV) {
		return nil // already deleted by someone else
	}
	return err
}

// close closes the char node, deletes the device (DEL_DEV, which waits
// until the kernel has freed it) and closes the control loop.
func (u *ublkDev) close() error {
	if u.cdev >= 0 {
		unix.Close(u.cdev)
		u.cdev = -1
	}
	var err error
	if u.added {
		err = u.cmd(ublk.CmdDelDev, ublk.CtrlCmd{DevID: u.info.DevID, QueueID: 0xffff}, nil)
		if errors.Is(err, unix.ENODEV) {
			err = nil
		}
		u.added = false
	}
	u.ctl.Close()
	unix.Close(u.ctlFd)
	return err
}

func (u *ublkDev) userCopy() bool { return u.info.Flags&ublk.FeatUserCopy != 0 }

// serveUblk is Serve over ublk.
func serveUblk(cfg Config, dc abuse.DevConfig, log *zap.Logger) (*Server, error) {
	if cfg.Attach || cfg.ReconnectMs > 0 {
		return nil, errors.New("blockdev: ublk: attach and reconnect windows are not supported (the kernel ends a ublk device with its server; use -driver abuse)")
	}
	if cfg.Engine == uio.BackendAIO {
		return nil, errors.New("blockdev: ublk needs the io_uring engine (its commands are io_uring URING_CMDs): use engine uring or auto")
	}
	if dc.NrHWQueues > ublk.MaxQueues || dc.QueueDepth > ublk.MaxQueueDepth {
		return nil, fmt.Errorf("blockdev: ublk: %d queues of depth %d: too many", dc.NrHWQueues, dc.QueueDepth)
	}
	if cfg.UblkCopy != "" && cfg.UblkCopy != "auto" && cfg.UblkCopy != "buffers" {
		return nil, fmt.Errorf("blockdev: ublk copy mode %q: want auto or buffers", cfg.UblkCopy)
	}
	u, err := openUblk(log)
	if err != nil {
		return nil, err
	}
	discard := backendSupports(cfg.Backend, OpDiscard)
	zeroes := backendSupports(cfg.Backend, OpWriteZeroes)
	if err := u.add(&dc, discard, zeroes, cfg.UblkCopy != "buffers"); err != nil {
		u.close()
		return nil, err
	}
	s := newServer(cfg, dc, log.With(zap.String("dev", ublk.BlockName(int(dc.DevID)))), uio.BackendUring)
	s.u = u
	fail := func(err error) (*Server, error) {
		if len(s.uqueues) > 0 {
			u.stop() // aborts the fetched tags
		}
		s.stopUqueues()
		u.close()
		return nil, err
	}
	if err := u.openChar(); err != nil {
		return fail(err)
	}
	for i := 0; i < int(dc.NrHWQueues); i++ {
		q, err := newUqueue(s, i)
		if err != nil {
			return fail(err)
		}
		s.uqueues = append(s.uqueues, q)
	}
	if err := u.start(); err != nil {
		return fail(err)
	}
	go func() {
		<-s.anyStop
		s.detach()
		close(s.done)
	}()
	mode := "per-tag buffers"
	if u.userCopy() {
		mode = "user copy"
	}
	s.log.Info("blockdev: created", zap.String("driver", DriverUblk), zap.String("path", s.Path()), zap.Uint64("size", dc.Size),
		zap.Uint32("block_size", dc.LogicalBlockSize), zap.Uint32("queues", dc.NrHWQueues),
		zap.Uint32("depth", dc.QueueDepth), zap.Uint32("max_io", dc.MaxIOBytes), zap.Bool("read_only", s.geo.readOnly),
		zap.String("data", mode), zap.Bool("ioctl_encoded", u.encoded), zap.String("features", fmt.Sprintf("%#x", u.features)),
		zap.Bool("async_backend", s.async != nil), zap.Bool("mapped_reads", s.mapper != nil))
	return s, nil
}

// ublkBusy reports whether the block device is mounted or held open
// exclusively (what makes ABUSE refuse a removal with EBUSY; ublk itself
// would delete the disk under the file system).
func (s *Server) ublkBusy() bool {
	fd, err := unix.Open(s.Path(), unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return errors.Is(err, unix.EBUSY)
	}
	unix.Close(fd)
	return false
}

// detachUblk stops the device and tears everything down: STOP_DEV (the
// kernel drains the requests in flight, which the queues still serve, then
// aborts every armed tag), the queue loops, the char node, DEL_DEV.
func (s *Server) detachUblk() (Stats, error) {
	err := s.u.stop()
	st := s.stopUqueues()
	if e := s.u.close(); err == nil {
		err = e
	}
	return st, err
}

func (s *Server) stopUqueues() Stats {
	var st Stats
	for _, q := range s.uqueues {
		select {
		case <-q.stopped:
		case <-time.After(30 * time.Second):
			s.log.Error("blockdev: ublk queue still has armed tags 30 s after STOP_DEV; leaving its loop", zap.Int("queue", q.id))
			continue
		}
		q.close()
		st.Requests += q.st.Requests
		st.Calls += q.st.Calls
		st.Bad += q.st.Bad
	}
	return st
}
