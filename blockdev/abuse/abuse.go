// Package abuse is a small synchronous Go binding to the abuse.ko kernel
// module ("A Block device in USErspace", protocol version 1).
//
// The kernel side lives in kmod/ of this repository; its only ABI is the
// uapi header kmod/include/uapi/linux/abuse.h, described in kmod/PROTOCOL.md.
// The structs below mirror that header byte for byte (layout_test.go checks
// this against the C header with cgo).
//
// A server:
//
//	ctl, _ := abuse.Open()                   // /dev/abctl, root only
//	cfg := abuse.DevConfig{Size: 64 << 20, LogicalBlockSize: 4096, NrHWQueues: 2}
//	_ = ctl.Create(&cfg)                     // /dev/abuse<cfg.DevID> appears
//	q, _ := ctl.OpenQueue(0)                 // one per hardware queue
//	var done []abuse.Completion
//	for {
//		q.Wait(-1)                       // poll(2) for EPOLLIN on q.Fd()
//		reqs, _ := q.CommitFetch(done)   // complete the last batch, fetch the next
//		done = done[:0]
//		for _, r := range reqs { ...; done = append(done, r.Complete(0)) }
//	}
//
// WRITE data is in q.Buffer(tag) (the kernel copied it there before
// CommitFetch returned). READ data is copied by the kernel from the address
// in the completion, or from q.Buffer(tag) when that address is 0.
//
// Optional features (DevConfig.Features, reported by modules that have
// them): a USER_COPY queue (OpenUserCopyQueue) has no per-tag buffers; the
// server names where each request's data lives (a WRITE completion's
// address is where the kernel stores the data before it completes the
// request; Queue.Copy moves part of a request's data at any time), so a
// RAM disk's data is copied once. WAIT (CommitFetchWait) lets one ioctl
// commit a batch and then wait for the next request, instead of returning
// empty and needing a poll.
//
// Closing (or losing, e.g. by dying) the control fd or any queue fd ends
// service: the kernel fails I/O with EIO, or holds it for
// DevConfig.ReconnectMs milliseconds so that a new server can Attach.
package abuse

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ProtocolVersion is ABUSE_PROTOCOL_VERSION.
const ProtocolVersion = 1

// CtlPath is the control device.
const CtlPath = "/dev/abctl"

// Limits (ABUSE_MAX_*, ABUSE_DEF_*).
const (
	MaxDevices     = 1024
	MaxQueues      = 64
	MaxDepth       = 1024
	MinIOBytes     = 4096
	MaxIOBytes     = 8 << 20
	DefIOBytes     = 1 << 20
	DefDepth       = 128
	MaxBatch       = 1024
	MaxReconnectMs = 3600000
	DefIOTimeoutMs = 30000
	MinIOTimeoutMs = 1000
	MaxIOTimeoutMs = 3600000
	MaxSize        = 1 << 60
	MaxWaitMs      = 1000
	MaxSpinUs      = 1000
)

// Module features (ABUSE_FEAT_*), in DevConfig.Features after Create or
// Attach; a module without any reports 0.
const (
	FeatUserCopy = 1 << 0 // QueueUserCopy and IoctlQueueCopy
	FeatWait     = 1 << 1 // BatchWait
)

// QueueUserCopy (ABUSE_QUEUE_F_USER_COPY) is the QueueSetup flag of a
// queue without per-tag buffers: the kernel copies data only where the
// server names an address.
const QueueUserCopy = 1 << 0

// BatchWait (ABUSE_BATCH_F_WAIT) is the Batch flag that makes a
// COMMIT_FETCH that found nothing wait (up to Batch.WaitMs) for a request.
const BatchWait = 1 << 0

// Device flags (ABUSE_DEV_F_*).
const (
	DevReadOnly    = 1 << 0
	DevWriteCache  = 1 << 1
	DevFUA         = 1 << 2
	DevTimeoutDead = 1 << 3 // an I/O timeout ends the server, as if it had died
)

// RemoveForce (ABUSE_REMOVE_F_FORCE) removes a device even while it is open
// or mounted: its I/O fails from then on.
const RemoveForce = 1 << 0

// Operations (ABUSE_OP_*), bits 0..7 of Request.OpFlags.
const (
	OpRead        = 0
	OpWrite       = 1
	OpFlush       = 2
	OpDiscard     = 3
	OpWriteZeroes = 5
	OpMask        = 0xff
)

// Request flags (ABUSE_F_*), bits 8..31 of Request.OpFlags.
const (
	FlagFUA               = 1 << 8
	FlagPreflush          = 1 << 9
	FlagNoUnmap           = 1 << 10
	FlagSync              = 1 << 11
	FlagMeta              = 1 << 12
	FlagPrio              = 1 << 13
	FlagRahead            = 1 << 14
	FlagBackground        = 1 << 15
	FlagNoWait            = 1 << 16
	FlagIdle              = 1 << 17
	FlagFailfastDev       = 1 << 18
	FlagFailfastTransport = 1 << 19
	FlagFailfastDriver    = 1 << 20
)

// DevConfig mirrors struct abuse_dev_config (80 bytes).
type DevConfig struct {
	Version               uint32
	Flags                 uint32
	Size                  uint64
	LogicalBlockSize      uint32
	NrHWQueues            uint32
	QueueDepth            uint32
	MaxIOBytes            uint32
	MaxDiscardSectors     uint32
	MaxWriteZeroesSectors uint32
	ReconnectMs           uint32
	DevID                 int32
	IOTimeoutMs           uint32 // 0: DefIOTimeoutMs
	Features              uint32 // out: Feat* of the module (in: 0)
	Token                 uint64 // out of Create, into Attach and Remove
	Reserved              [2]uint64
}

// DevRemove mirrors struct abuse_dev_remove (16 bytes).
type DevRemove struct {
	DevID uint32
	Flags uint32
	Token uint64
}

// QueueSetup mirrors struct abuse_queue_setup (40 bytes).
type QueueSetup struct {
	DevID     uint32
	QueueID   uint16
	Flags     uint16
	BufAddr   uint64
	BufLen    uint64
	Fd        int32
	Reserved0 uint32
	Reserved  uint64
}

// Request mirrors struct abuse_request (40 bytes).
type Request struct {
	Seq      uint64
	Offset   uint64
	Len      uint32
	OpFlags  uint32
	Tag      uint16
	QueueID  uint16
	Reserved uint32
	Addr     uint64
}

// Completion mirrors struct abuse_completion (24 bytes).
type Completion struct {
	Seq    uint64
	Tag    uint16
	Flags  uint16
	Result int32
	Addr   uint64
}

// Batch mirrors struct abuse_batch (48 bytes).
type Batch struct {
	Completions   uint64
	Requests      uint64
	NrCompletions uint32
	MaxRequests   uint32
	NrCompleted   uint32
	NrRequests    uint32
	Flags         uint32 // BatchWait
	WaitMs        uint32 // BatchWait: 1..MaxWaitMs
	SpinUs        uint32 // BatchWait: poll this long before sleeping
	Reserved      uint32
}

// Copy mirrors struct abuse_copy (32 bytes).
type Copy struct {
	Seq      uint64
	Tag      uint16
	Flags    uint16
	Len      uint32
	Offset   uint32
	Reserved uint32
	Addr     uint64
}

const iocMagic = 0xb9

func iowr(nr, size uintptr) uintptr {
	const read, write = 2, 1
	return (read|write)<<30 | size<<16 | iocMagic<<8 | nr
}

// Ioctl request numbers (ABUSE_CTL_*, ABUSE_QUEUE_COMMIT_FETCH).
var (
	IoctlCtlAdd           = iowr(0x01, unsafe.Sizeof(DevConfig{}))
	IoctlCtlAttach        = iowr(0x02, unsafe.Sizeof(DevConfig{}))
	IoctlCtlRemove        = iowr(0x03, unsafe.Sizeof(DevRemove{}))
	IoctlCtlQueueFd       = iowr(0x04, unsafe.Sizeof(QueueSetup{}))
	IoctlQueueCommitFetch = iowr(0x10, unsafe.Sizeof(Batch{}))
	IoctlQueueCopy        = iowr(0x11, unsafe.Sizeof(Copy{}))
)

// Op returns the operation code of r.
func (r *Request) Op() uint32 { return r.OpFlags & OpMask }

// Complete returns the completion for r with result 0 or -errno. For a
// successful READ the kernel copies the data from the queue's per-tag
// buffer; use CompleteFrom to name another address.
func (r *Request) Complete(result int32) Completion {
	return Completion{Seq: r.Seq, Tag: r.Tag, Result: result}
}

// CompleteFrom is Complete for a READ whose r.Len bytes are at addr (which
// must stay valid until the next CommitFetch returns). On a USER_COPY
// queue it also completes a WRITE: the kernel stores its r.Len bytes at
// addr, then ends the request.
func (r *Request) CompleteFrom(addr uintptr) Completion {
	return Completion{Seq: r.Seq, Tag: r.Tag, Addr: uint64(addr)}
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// Ctl is an open /dev/abctl: a server session. A session owns at most one
// device (created with Create or re-attached with Attach).
type Ctl struct {
	fd  int
	cfg DevConfig // the attached device, valid when attached
	att bool
}

// Open opens /dev/abctl (needs CAP_SYS_ADMIN).
func Open() (*Ctl, error) {
	fd, err := unix.Open(CtlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("abuse: open %s: %w", CtlPath, err)
	}
	return &Ctl{fd: fd}, nil
}

// Fd returns the control fd.
func (c *Ctl) Fd() int { return c.fd }

// Close closes the session; a device it serves loses its server.
func (c *Ctl) Close() error { return unix.Close(c.fd) }

// Config returns the configuration of the attached device.
func (c *Ctl) Config() DevConfig { return c.cfg }

// Create creates a device and makes this session its server. Zero fields
// take the kernel defaults; on success cfg holds the effective values (the
// queue count and depth as blk-mq applied them), cfg.DevID the index N of
// /dev/abuseN and cfg.Token the device's ownership token. Set cfg.DevID =
// -1 for "any".
func (c *Ctl) Create(cfg *DevConfig) error {
	cfg.Version = ProtocolVersion
	if _, err := ioctl(c.fd, IoctlCtlAdd, unsafe.Pointer(cfg)); err != nil {
		return fmt.Errorf("abuse: create: %w", err)
	}
	c.cfg, c.att = *cfg, true
	return nil
}

// Attach makes this session the server of existing device id whose
// previous server is gone (see DevConfig.ReconnectMs). token is the one
// Create returned (EPERM otherwise); ENOTRECOVERABLE means a server with a
// write cache died holding unflushed writes, so the device cannot be
// served again.
func (c *Ctl) Attach(id int, token uint64) (DevConfig, error) {
	cfg := DevConfig{Version: ProtocolVersion, DevID: int32(id), Token: token}
	if _, err := ioctl(c.fd, IoctlCtlAttach, unsafe.Pointer(&cfg)); err != nil {
		return cfg, fmt.Errorf("abuse: attach %d: %w", id, err)
	}
	c.cfg, c.att = cfg, true
	return cfg, nil
}

// Remove removes device id. The session serving it may, and so may anyone
// for a device whose server is gone and that holds no I/O for a reconnect;
// others need the token (RemoveToken), else EPERM. It fails with EBUSY
// while the block device is open or mounted.
func (c *Ctl) Remove(id int) error {
	var token uint64
	if c.att && int(c.cfg.DevID) == id {
		token = c.cfg.Token
	}
	return c.RemoveToken(id, token, 0)
}

// RemoveToken removes device id with its ownership token (0: none) and
// flags (RemoveForce: even while open or mounted, failing its I/O).
func (c *Ctl) RemoveToken(id int, token uint64, flags uint32) error {
	rm := DevRemove{DevID: uint32(id), Flags: flags, Token: token}
	if _, err := ioctl(c.fd, IoctlCtlRemove, unsafe.Pointer(&rm)); err != nil {
		return fmt.Errorf("abuse: remove %d: %w", id, err)
	}
	return nil
}

// Features returns the module's optional features (Feat*) as the attached
// device's configuration reports them.
func (c *Ctl) Features() uint32 { return c.cfg.Features }

// Queue is the server end of one hardware queue.
type Queue struct {
	fd       int
	id       int
	maxIO    int
	buf      []byte // queue_depth * max_io_bytes per-tag buffers (mmap); nil with userCopy
	userCopy bool
	reqs     []Request
}

// OpenQueue registers per-tag buffers for hardware queue qid of the
// attached device and returns its queue fd.
func (c *Ctl) OpenQueue(qid int) (*Queue, error) {
	if !c.att {
		return nil, errors.New("abuse: no device attached")
	}
	maxIO := int(c.cfg.MaxIOBytes)
	n := int(c.cfg.QueueDepth) * maxIO
	buf, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("abuse: queue buffers: %w", err)
	}
	qs := QueueSetup{
		DevID:   uint32(c.cfg.DevID),
		QueueID: uint16(qid),
		BufAddr: uint64(uintptr(unsafe.Pointer(&buf[0]))),
		BufLen:  uint64(n),
	}
	fd, err := ioctl(c.fd, IoctlCtlQueueFd, unsafe.Pointer(&qs))
	if err != nil {
		unix.Munmap(buf)
		return nil, fmt.Errorf("abuse: queue %d: %w", qid, err)
	}
	return &Queue{fd: fd, id: qid, maxIO: maxIO, buf: buf,
		reqs: make([]Request, min(int(c.cfg.QueueDepth), MaxBatch))}, nil
}

// OpenUserCopyQueue returns the queue fd of hardware queue qid as a
// USER_COPY queue: no per-tag buffers; WRITE requests arrive without data
// (Request.Addr is 0) and the kernel copies a request's data only to or
// from addresses the server names (CompleteFrom, Copy). The module must
// list FeatUserCopy.
func (c *Ctl) OpenUserCopyQueue(qid int) (*Queue, error) {
	if !c.att {
		return nil, errors.New("abuse: no device attached")
	}
	if c.cfg.Features&FeatUserCopy == 0 {
		return nil, fmt.Errorf("abuse: queue %d: the module has no USER_COPY (features %#x): %w", qid, c.cfg.Features, unix.EOPNOTSUPP)
	}
	qs := QueueSetup{DevID: uint32(c.cfg.DevID), QueueID: uint16(qid), Flags: QueueUserCopy}
	fd, err := ioctl(c.fd, IoctlCtlQueueFd, unsafe.Pointer(&qs))
	if err != nil {
		return nil, fmt.Errorf("abuse: user-copy queue %d: %w", qid, err)
	}
	return &Queue{fd: fd, id: qid, maxIO: int(c.cfg.MaxIOBytes), userCopy: true,
		reqs: make([]Request, min(int(c.cfg.QueueDepth), MaxBatch))}, nil
}

// UserCopy reports whether q is a USER_COPY queue.
func (q *Queue) UserCopy() bool { return q.userCopy }

// Fd returns the queue fd: it polls EPOLLIN while requests wait, and
// EPOLLERR|EPOLLHUP once it no longer serves the device.
func (q *Queue) Fd() int { return q.fd }

// ID returns the hardware queue index.
func (q *Queue) ID() int { return q.id }

// Buffer returns the per-tag buffer of tag (max_io_bytes long); nil on a
// USER_COPY queue.
func (q *Queue) Buffer(tag uint16) []byte {
	if q.buf == nil {
		return nil
	}
	off := int(tag) * q.maxIO
	return q.buf[off : off+q.maxIO : off+q.maxIO]
}

// Wait blocks in poll(2) until the queue is readable, timeoutMs elapses
// (-1: forever) or the queue is dead (returns unix.EPIPE).
func (q *Queue) Wait(timeoutMs int) (ready bool, err error) {
	pfd := []unix.PollFd{{Fd: int32(q.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, timeoutMs)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, nil
		}
		if pfd[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
			return false, unix.EPIPE
		}
		return pfd[0].Revents&unix.POLLIN != 0, nil
	}
}

// CommitFetch completes done and fetches the next batch of requests in one
// ioctl. The returned slice is reused by the next call. If the kernel
// rejects a completion, the error says so and the completions before it
// were applied.
func (q *Queue) CommitFetch(done []Completion) ([]Request, error) {
	return q.CommitFetchWait(done, 0, 0)
}

// CommitFetchWait is CommitFetch that, when no request is waiting after
// the completions, waits for one: it polls for up to spinUs microseconds,
// then sleeps for up to waitMs milliseconds (1..MaxWaitMs; 0 means do not
// wait, as CommitFetch). It returns no requests if none came in that time
// or a signal interrupted the wait. The module must list FeatWait.
func (q *Queue) CommitFetchWait(done []Completion, waitMs, spinUs int) ([]Request, error) {
	b := Batch{
		NrCompletions: uint32(len(done)),
		MaxRequests:   uint32(len(q.reqs)),
		Requests:      uint64(uintptr(unsafe.Pointer(&q.reqs[0]))),
	}
	if waitMs > 0 {
		b.Flags, b.WaitMs, b.SpinUs = BatchWait, uint32(waitMs), uint32(spinUs)
	}
	if len(done) > 0 {
		b.Completions = uint64(uintptr(unsafe.Pointer(&done[0])))
	}
	_, err := ioctl(q.fd, IoctlQueueCommitFetch, unsafe.Pointer(&b))
	runtime.KeepAlive(done)
	reqs := q.reqs[:b.NrRequests]
	if err != nil {
		return reqs, fmt.Errorf("abuse: commit/fetch (%d of %d completed): %w", b.NrCompleted, len(done), err)
	}
	return reqs, nil
}

// Copy moves len(p) bytes at off of the in-flight request (seq, tag)'s
// data on a USER_COPY queue: a WRITE's data into p, or p into a READ's
// data. The request stays in flight; complete it as usual.
func (q *Queue) Copy(seq uint64, tag uint16, off int, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	a := Copy{Seq: seq, Tag: tag, Len: uint32(len(p)), Offset: uint32(off), Addr: uint64(uintptr(unsafe.Pointer(&p[0])))}
	_, err := ioctl(q.fd, IoctlQueueCopy, unsafe.Pointer(&a))
	runtime.KeepAlive(p)
	if err != nil {
		return fmt.Errorf("abuse: copy tag %d seq %d, %d bytes at %d: %w", tag, seq, len(p), off, err)
	}
	return nil
}

// Close closes the queue fd (which ends service of the device) and unmaps
// the buffers.
func (q *Queue) Close() error {
	err := unix.Close(q.fd)
	if q.buf != nil {
		unix.Munmap(q.buf)
	}
	return err
}
