package uio

import (
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// OpKind names what an Op asks the kernel to do.
type OpKind uint8

const (
	// OpRead reads len(Buf) bytes at Offset (pread). Offset -1 reads at the
	// file position where the backend allows it.
	OpRead OpKind = iota + 1
	// OpWrite writes Buf at Offset (pwrite).
	OpWrite
	// OpReadv reads into Iovecs at Offset (preadv).
	OpReadv
	// OpWritev writes Iovecs at Offset (pwritev).
	OpWritev
	// OpFsync flushes data and metadata (fsync).
	OpFsync
	// OpFdatasync flushes data (fdatasync).
	OpFdatasync
	// OpRecv reads from a stream socket or pipe into Buf. It completes when
	// data, end of stream or an error is there, never with EAGAIN: the
	// engine waits for readiness and retries by itself.
	OpRecv
	// OpSend writes Buf to a stream socket or pipe; short writes are
	// reported as they are. Like OpRecv it never completes with EAGAIN.
	OpSend
	// OpPoll waits once for Events (POLLIN, POLLOUT, ...) on Fd; the result
	// is the ready mask, limited to Events plus POLLERR|POLLHUP|POLLNVAL.
	OpPoll
	// OpAccept accepts a connection on the listening socket Fd; the result
	// is the new fd, created nonblocking and close-on-exec.
	OpAccept
	// OpConnect connects the nonblocking socket Fd to Addr; the result is 0
	// or -errno.
	OpConnect
	// OpClose closes Fd. Close an fd only after every other op on it has
	// completed: the kernel may otherwise act on a reused fd number.
	OpClose
	// OpSplice moves up to Len bytes from Fd (at Offset, -1 for pipes and
	// sockets) to FdOut (at OffsetOut); one side must be a pipe. With
	// SPLICE_F_NONBLOCK in Flags, on both backends, it is one splice(2) on
	// the loop's thread when the round stages it, which completes at once:
	// -EAGAIN when a side is not ready (wait with OpPoll, then splice again;
	// both fds must be nonblocking, O_NONBLOCK, for the socket side not to
	// block). That is how a proxy should splice: io_uring runs a SPLICE SQE
	// in an io-wq worker thread, which costs more CPU per byte than copying
	// (measured: bench/proxy). Without SPLICE_F_NONBLOCK it is io_uring's
	// SPLICE, and on AIO -EOPNOTSUPP.
	OpSplice
	// OpTimeout completes after Timeout with -ETIME; the engine's own timer,
	// so it costs no syscall on either backend.
	OpTimeout
	// OpSendmsg sends Buf (or Iovecs) with sendmsg(2): to Msg.Addr (nil: the
	// connected peer), with ancillary data Msg.Oob. Flags are MSG_* flags.
	// Msg may be nil. Like OpSend it never completes with EAGAIN.
	OpSendmsg
	// OpRecvmsg receives into Buf (or Iovecs) with recvmsg(2); Msg, if
	// not nil, gets the sender's address, the ancillary data (into Msg.Oob)
	// and msg_flags. Like OpRecv it never completes with EAGAIN.
	OpRecvmsg
	// OpOpenat opens Path relative to the directory Fd (unix.AT_FDCWD: the
	// working directory) with open(2) flags Flags and Mode; the result is
	// the new fd. Pass unix.O_CLOEXEC yourself, as with openat(2).
	OpOpenat
	// OpFallocate is fallocate(2) of Len bytes at Offset with mode Mode
	// (FALLOC_FL_*; 0 allocates).
	OpFallocate
	// OpFtruncate is ftruncate(2) of Fd to Offset bytes.
	OpFtruncate
	// OpUringCmd is a driver's own command on Fd (IORING_OP_URING_CMD,
	// io_uring only, Linux 5.19): command CmdOp with payload Cmd, copied
	// into the SQE when the op is staged. Cmd holds up to 16 bytes, or 80
	// on a loop with Config.SQE128. On AIO it completes with -EOPNOTSUPP.
	// The engine keeps Cmd itself alive, but not memory whose address a
	// payload carries (ublk's buffer addresses): that memory must be on
	// the heap or mapped, never a goroutine's stack, which moves.
	OpUringCmd
	opKindEnd
)

var opKindNames = [...]string{
	OpRead: "read", OpWrite: "write", OpReadv: "readv", OpWritev: "writev",
	OpFsync: "fsync", OpFdatasync: "fdatasync", OpRecv: "recv", OpSend: "send",
	OpPoll: "poll", OpAccept: "accept", OpConnect: "connect", OpClose: "close",
	OpSplice: "splice", OpTimeout: "timeout", OpSendmsg: "sendmsg", OpRecvmsg: "recvmsg",
	OpOpenat: "openat", OpFallocate: "fallocate", OpFtruncate: "ftruncate", OpUringCmd: "uring_cmd",
}

func (k OpKind) String() string {
	if k > 0 && k < opKindEnd {
		return opKindNames[k]
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is one request to the kernel. Each kind reads Fd (but OpTimeout),
// Timeout, Done and the fields its documentation names; setting a field
// the kind does not read is an error, not silently ignored.
//
// The engine copies the Op when it is started; the memory its slices point to belongs to the kernel until the
// op's Done runs and must not be touched, reused or resized before then.
// The engine keeps a reference to it, so it stays reachable (and, the Go
// heap being non-moving, unmoved) for as long as the kernel may use it.
type Op struct {
	Kind   OpKind
	Fd     int
	Buf    []byte   // read/write/recv/send buffer
	Iovecs [][]byte // readv/writev buffers
	Offset int64    // file offset (read, write, readv, writev, splice input)

	// Flags are RWF_* flags for file reads and writes (RWF_NOWAIT,
	// RWF_DSYNC, ...), MSG_* flags for recv and send, SPLICE_F_* flags
	// for splice.
	Flags uint32
	// Events is the poll mask for OpPoll.
	Events uint32
	// Addr is the peer for OpConnect.
	Addr unix.Sockaddr
	// FdOut, OffsetOut and Len describe the output side of OpSplice; Len
	// is also OpFallocate's length and a Bundle recv's cap (see Bundle).
	FdOut     int
	OffsetOut int64
	Len       int
	// Timeout is the delay of OpTimeout.
	Timeout time.Duration
	// Msg is the message header of OpSendmsg and OpRecvmsg (may be nil).
	Msg *Msg
	// Path and Mode are the file and permission bits of OpOpenat; Mode is
	// also the FALLOC_FL_* mode of OpFallocate.
	Path string
	Mode uint32
	// CmdOp and Cmd are the command and payload of OpUringCmd.
	CmdOp uint32
	Cmd   []byte
	// Pool makes an OpRecv (with Buf nil and no Flags) receive into a
	// buffer of the pool, taken only when data has arrived; see
	// BufferPool. The pool must belong to the loop the op is submitted to.
	Pool *BufferPool
	// Multishot keeps a pool recv or an accept going: its Done runs once
	// per chunk of data or accepted socket, each Result with More() true,
	// until end of stream, an error or a cancel ends it with a last Result
	// (More() false). On io_uring it is one SQE the kernel keeps armed
	// (IORING_RECV_MULTISHOT, 6.0; IORING_ACCEPT_MULTISHOT, 5.19);
	// elsewhere the engine re-arms it. The bytes arrive in order; the
	// caller must keep up or Cancel it (each chunk holds a pool buffer
	// until Put).
	Multishot bool
	// Bundle lets a pool recv fill several pool buffers in one completion
	// (io_uring 6.10+, IORING_RECVSEND_BUNDLE): BufferPool.Bundle lists
	// them, in order, all full but the last. Elsewhere a completion still
	// has one buffer, which Bundle lists too. How many the kernel fills is
	// its own choice: Debian's 6.12 filled one per completion in our tests,
	// 6.18 as many as the queued bytes needed, up to the buffers the
	// engine keeps in the pool's ring.
	//
	// Len, on a Bundle recv, caps the bytes one completion takes (at least
	// the pool's buffer size; the kernel fills whole buffers up to it). A
	// multishot recv on io_uring 6.17+ keeps it in the kernel (the
	// per-shot cap, uring.ProbeRecvCap; Loop.CapsBundles reports it);
	// everywhere else such a recv fills one buffer per completion, within
	// the cap too. A caller that must bound what a connection holds, such
	// as a proxy facing slow readers, bundles with a cap or not at all.
	// On 6.18 a capped bundle on a unix stream socket can miss the end of
	// stream queued behind its data (measured; TCP did not): cap on TCP.
	Bundle bool
	// Limit ends a multishot pool recv once it has taken Limit bytes (at
	// least the pool's buffer size), in one completion or several, the
	// last with More() false and its data: a recv that can hold no more
	// than Limit however fast the data comes. io_uring 6.17+ counts in the
	// kernel (the multishot length limit, with Loop.CapsBundles);
	// elsewhere such a recv ends after its first completion, which is
	// within the limit too.
	Limit int

	// Done is called on the loop's goroutine with the op's one and only
	// completion (a multishot op's: with each), and the loop's Handle to
	// start further ops with. It must not block.
	Done func(Handle, Result)
}

// Msg is what OpSendmsg and OpRecvmsg carry besides their data. Like the
// data buffers it belongs to the engine until the op's Done runs.
type Msg struct {
	// Addr is the destination of a send (nil: the connected peer); a
	// receive sets it to the sender (nil when the socket reports none).
	Addr unix.Sockaddr
	// Oob is the ancillary data to send (unix.UnixRights, ...), or the
	// room for it on a receive; OobN is how much a receive got.
	Oob  []byte
	OobN int
	// Flags are the msg_flags a receive reported (MSG_TRUNC, MSG_CTRUNC).
	Flags int
}

// Result is the completion of an Op.
type Result struct {
	ID   OpID
	Kind OpKind
	// Res is the kernel's result: a byte count, a file descriptor, a poll
	// mask, or a negated errno.
	Res int32
	// Flags are the completion flags the backend reported (io_uring CQE
	// flags; 0 on AIO).
	Flags uint32
}

// ResultMore is set in Result.Flags when more completions of the same
// multishot op follow (io_uring's IORING_CQE_F_MORE).
const ResultMore uint32 = 1 << 1

// More reports whether more completions of this (multishot) op follow.
func (r Result) More() bool { return r.Flags&ResultMore != 0 }

// Err returns the error in Res, or nil when Res is not negative.
func (r Result) Err() error {
	if r.Res >= 0 {
		return nil
	}
	return unix.Errno(-r.Res)
}

// OpID identifies a submitted op: a slab index plus a generation, so an ID
// that outlives its op never names a newer op that reuses the slot. It is
// also the tag the kernel sees (aio_data, user_data).
type OpID uint64

func makeOpID(idx, gen uint32) OpID { return OpID(uint64(gen)<<32 | uint64(idx)) }
func (id OpID) index() uint32       { return uint32(id) }
func (id OpID) gen() uint32         { return uint32(id >> 32) }

// needsFd reports whether the op acts on Fd.
func (k OpKind) needsFd() bool { return k != OpTimeout && k != OpOpenat }

// opField is one of an Op's per-kind fields (Fd, Timeout and Done apply to
// every kind).
type opField uint16

const (
	fBuf opField = 1 << iota
	fIovecs
	fOffset
	fFlags
	fEvents
	fAddr
	fFdOut // FdOut and OffsetOut
	fLen
	fMsg
	fPath
	fMode
	fCmd // CmdOp and Cmd
	fLimit
	fieldCount = iota
)

var opFieldNames = [fieldCount]string{"Buf", "Iovecs", "Offset", "Flags", "Events", "Addr", "FdOut/OffsetOut", "Len", "Msg", "Path", "Mode", "CmdOp/Cmd", "Limit"}

// opFields are the fields each kind reads. A field set on an op whose kind
// does not read it is refused: it is always a mistake (a readv's buffers in
// Buf, a recv with an Offset), and silently ignoring it loses data.
var opFields = [opKindEnd]opField{
	OpRead: fBuf | fOffset | fFlags, OpWrite: fBuf | fOffset | fFlags,
	OpReadv: fIovecs | fOffset | fFlags, OpWritev: fIovecs | fOffset | fFlags,
	OpRecv: fBuf | fFlags | fLen | fLimit, OpSend: fBuf | fFlags,
	OpSendmsg: fBuf | fIovecs | fMsg | fFlags, OpRecvmsg: fBuf | fIovecs | fMsg | fFlags,
	OpPoll: fEvents, OpConnect: fAddr,
	OpSplice:    fOffset | fFdOut | fLen | fFlags,
	OpOpenat:    fPath | fFlags | fMode,
	OpFallocate: fOffset | fLen | fMode, OpFtruncate: fOffset,
	OpUringCmd: fCmd,
}

func (op *Op) fieldsSet() opField {
	var f opField
	set := func(b bool, bit opField) {
		if b {
			f |= bit
		}
	}
	set(op.Buf != nil, fBuf)
	set(op.Iovecs != nil, fIovecs)
	set(op.Offset != 0, fOffset)
	set(op.Flags != 0, fFlags)
	set(op.Events != 0, fEvents)
	set(op.Addr != nil, fAddr)
	set(op.FdOut != 0 || op.OffsetOut != 0, fFdOut)
	set(op.Len != 0, fLen)
	set(op.Msg != nil, fMsg)
	set(op.Path != "", fPath)
	set(op.Mode != 0, fMode)
	set(op.CmdOp != 0 || op.Cmd != nil, fCmd)
	set(op.Limit != 0, fLimit)
	return f
}

func (f opField) names() string {
	var names []string
	for i := range fieldCount {
		if f&(1<<i) != 0 {
			names = append(names, opFieldNames[i])
		}
	}
	return strings.Join(names, ", ")
}

func (op *Op) validate() error {
	if op.Kind == 0 || op.Kind >= opKindEnd {
		return fmt.Errorf("uio: invalid op kind %d", op.Kind)
	}
	if op.Kind.needsFd() && op.Fd < 0 {
		return fmt.Errorf("uio: %s: invalid fd %d", op.Kind, op.Fd)
	}
	if stray := op.fieldsSet() &^ opFields[op.Kind]; stray != 0 {
		if opFields[op.Kind] == 0 {
			return fmt.Errorf("uio: %s fd %d: %s set, but %s reads no field besides Fd, Timeout and Done",
				op.Kind, op.Fd, stray.names(), op.Kind)
		}
		return fmt.Errorf("uio: %s fd %d: %s set, but %s uses only %s (besides Fd, Timeout and Done)",
			op.Kind, op.Fd, stray.names(), op.Kind, opFields[op.Kind].names())
	}
	if op.Multishot && op.Kind != OpRecv && op.Kind != OpAccept {
		return fmt.Errorf("uio: %s fd %d: Multishot set, but only OpRecv (with a Pool) and OpAccept are multishot", op.Kind, op.Fd)
	}
	if op.Bundle && op.Kind != OpRecv {
		return fmt.Errorf("uio: %s fd %d: Bundle set, but only a pool OpRecv takes bundles", op.Kind, op.Fd)
	}
	if op.Pool != nil && op.Kind != OpRecv {
		return fmt.Errorf("uio: %s fd %d: Pool set, but only OpRecv receives into a pool", op.Kind, op.Fd)
	}
	if op.Kind == OpSendmsg || op.Kind == OpRecvmsg {
		if op.Buf != nil && op.Iovecs != nil {
			return fmt.Errorf("uio: %s fd %d: both Buf and Iovecs set; the data is one or the other", op.Kind, op.Fd)
		}
	}
	switch op.Kind {
	case OpConnect:
		if op.Addr == nil {
			return fmt.Errorf("uio: connect fd %d: no address", op.Fd)
		}
	case OpPoll:
		if op.Events == 0 || op.Events > 0xffff {
			return fmt.Errorf("uio: poll fd %d: events %#x must be a non-zero 16-bit mask", op.Fd, op.Events)
		}
	case OpSplice:
		if op.FdOut < 0 || op.Len <= 0 {
			return fmt.Errorf("uio: splice fd %d -> %d: invalid output fd or length %d", op.Fd, op.FdOut, op.Len)
		}
	case OpOpenat:
		if op.Fd < 0 && op.Fd != unix.AT_FDCWD {
			return fmt.Errorf("uio: openat %q: invalid directory fd %d", op.Path, op.Fd)
		}
		if op.Path == "" || strings.IndexByte(op.Path, 0) >= 0 {
			return fmt.Errorf("uio: openat %q: empty path or a NUL byte in it", op.Path)
		}
	case OpFallocate:
		if op.Offset < 0 || op.Len <= 0 {
			return fmt.Errorf("uio: fallocate fd %d: invalid range of %d bytes at %d", op.Fd, op.Len, op.Offset)
		}
	case OpUringCmd:
		if len(op.Cmd) > 80 {
			return fmt.Errorf("uio: uring_cmd fd %d: payload of %d bytes, at most 80", op.Fd, len(op.Cmd))
		}
	case OpRecv:
		if op.Bundle && op.Pool == nil {
			return fmt.Errorf("uio: recv fd %d: Bundle needs a Pool", op.Fd)
		}
		if op.Multishot && op.Pool == nil {
			return fmt.Errorf("uio: recv fd %d: Multishot needs a Pool (each chunk gets a buffer of its own)", op.Fd)
		}
		if op.Pool != nil && (op.Buf != nil || op.Flags != 0) {
			return fmt.Errorf("uio: recv fd %d: Pool set with Buf or Flags; a pool recv takes its buffer from the pool and no MSG_* flags", op.Fd)
		}
		if op.Limit != 0 && (!op.Multishot || op.Limit < op.Pool.Size() || op.Limit > maxRW) {
			if !op.Multishot {
				return fmt.Errorf("uio: recv fd %d: Limit %d set without Multishot; a one-shot recv takes one completion anyway", op.Fd, op.Limit)
			}
			return fmt.Errorf("uio: recv fd %d: Limit %d out of range (the pool's buffer size %d..%d)", op.Fd, op.Limit, op.Pool.Size(), maxRW)
		}
		if op.Len != 0 && (!op.Bundle || op.Len < op.Pool.Size() || op.Len > maxRW) {
			if !op.Bundle {
				return fmt.Errorf("uio: recv fd %d: Len %d set without Bundle; only a bundle recv takes a cap", op.Fd, op.Len)
			}
			return fmt.Errorf("uio: recv fd %d: bundle cap Len %d out of range (the pool's buffer size %d..%d)", op.Fd, op.Len, op.Pool.Size(), maxRW)
		}
	case OpFtruncate:
		if op.Offset < 0 {
			return fmt.Errorf("uio: ftruncate fd %d: negative length %d", op.Fd, op.Offset)
		}
	case OpTimeout:
		if op.Timeout < 0 {
			return fmt.Errorf("uio: timeout: negative duration %v", op.Timeout)
		}
	}
	return nil
}
