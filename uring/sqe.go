package uring

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SQE is one submission queue entry (struct io_uring_sqe, 64 bytes) living
// in the mmapped SQ ring. Get one with Ring.GetSQE, call exactly one Prep*
// method, optionally SetData/SetFlags (before or after Prep*), then Submit.
//
// Every Prep* method rewrites all fields of the entry except UserData and
// Flags, following the kernel's io_uring.h field semantics directly.
//
// Field names follow the kernel's; where io_uring.h has a union, the field
// is named after its most common member and the comment lists the others.
// On an IORING_SETUP_SQE128 ring each entry is 128 bytes: this struct is its
// first 64, and the command area (cmd[], from Addr3 on) runs 64 bytes
// further (see Ring.SQESize).
//
// Addresses placed in an SQE (buffers, iovec arrays, timespecs, sockaddrs)
// are plain integers to the Go runtime: the caller must keep that memory
// alive and unmodified until the operation's CQE has been reaped.
type SQE struct {
	OpCode uint8  // IORING_OP_*
	Flags  uint8  // IOSQE_*
	IoPrio uint16 // ioprio; accept/recv/send flags for some ops
	Fd     int32
	Off    uint64 // off | addr2 | {cmd_op, __pad1}
	Addr   uint64 // addr | splice_off_in | {level, optname}
	Len    uint32
	// OpcodeFlags is the per-opcode flags union: rw_flags, fsync_flags,
	// poll32_events, msg_flags, timeout_flags, accept_flags, cancel_flags,
	// splice_flags, uring_cmd_flags, ...
	OpcodeFlags uint32
	UserData    uint64
	BufIG       uint16 // buf_index | buf_group
	Personality uint16
	SpliceFdIn  int32  // splice_fd_in | file_index | optlen | {addr_len, __pad3}
	Addr3       uint64 // addr3 | optval | cmd[0:8]
	Pad2        uint64 // __pad2[0] | cmd[8:16]
}

// SetData sets the user_data value echoed in the CQE.
func (s *SQE) SetData(ud uint64) { s.UserData = ud }

// SetFlags sets the IOSQE_* flags.
func (s *SQE) SetFlags(f uint8) { s.Flags = f }

// reset clears every field but UserData and Flags and fills the common ones.
func (s *SQE) reset(op uint8, fd int, addr uint64, length uint32, off uint64) {
	*s = SQE{
		OpCode:   op,
		Flags:    s.Flags,
		Fd:       int32(fd),
		Off:      off,
		Addr:     addr,
		Len:      length,
		UserData: s.UserData,
	}
}

// escapeSink and escapeNever make every address handed to a Prep* method
// escape to the heap in the compiler's (flow-insensitive) escape analysis,
// at no run-time cost. Without it a caller's local buffer could live on the
// goroutine stack, which the runtime may move (copy on growth) while the
// kernel still holds the old address. Heap objects never move.
var (
	escapeNever bool
	escapeSink  unsafe.Pointer
)

func addr(p unsafe.Pointer) uint64 {
	if escapeNever {
		escapeSink = p
	}
	return uint64(uintptr(p))
}

func bufAddr(b []byte) uint64 { return addr(unsafe.Pointer(unsafe.SliceData(b))) }

func iovAddr(v []unix.Iovec) uint64 { return addr(unsafe.Pointer(unsafe.SliceData(v))) }

// offset converts a file offset; -1 becomes (u64)-1, which the kernel reads
// as "use and advance the current file position" (or "no offset" for splice).
func offset(off int64) uint64 { return uint64(off) }

// PrepNop prepares IORING_OP_NOP.
func (s *SQE) PrepNop() { s.reset(IORING_OP_NOP, -1, 0, 0, 0) }

// PrepPollAdd prepares a one-shot IORING_OP_POLL_ADD for the poll mask
// (unix.POLLIN, ...). Res is the returned revents mask.
func (s *SQE) PrepPollAdd(fd int, mask uint32) {
	s.reset(IORING_OP_POLL_ADD, fd, 0, 0, 0)
	s.OpcodeFlags = mask // poll32_events (little-endian layout)
}

// PrepPollMultishot prepares a multishot IORING_OP_POLL_ADD: one CQE per
// readiness event, each with IORING_CQE_F_MORE while the poll stays armed.
func (s *SQE) PrepPollMultishot(fd int, mask uint32) {
	s.reset(IORING_OP_POLL_ADD, fd, 0, IORING_POLL_ADD_MULTI, 0)
	s.OpcodeFlags = mask
}

// PrepPollRemove prepares IORING_OP_POLL_REMOVE of the poll whose user_data
// is targetUserData. The poll completes with -ECANCELED, the remove with 0
// (or -ENOENT if no such poll is armed).
func (s *SQE) PrepPollRemove(targetUserData uint64) {
	s.reset(IORING_OP_POLL_REMOVE, -1, targetUserData, 0, 0)
}

// PrepRecv prepares IORING_OP_RECV into buf with recv(2) msg flags.
func (s *SQE) PrepRecv(fd int, buf []byte, msgFlags int) {
	s.reset(IORING_OP_RECV, fd, bufAddr(buf), uint32(len(buf)), 0)
	s.OpcodeFlags = uint32(msgFlags)
}

// PrepSend prepares IORING_OP_SEND of buf with send(2) msg flags (add
// unix.MSG_NOSIGNAL to avoid SIGPIPE on a dead peer).
func (s *SQE) PrepSend(fd int, buf []byte, msgFlags int) {
	s.reset(IORING_OP_SEND, fd, bufAddr(buf), uint32(len(buf)), 0)
	s.OpcodeFlags = uint32(msgFlags)
}

// PrepRead prepares IORING_OP_READ into buf at off (-1: current position).
func (s *SQE) PrepRead(fd int, buf []byte, off int64) {
	s.reset(IORING_OP_READ, fd, bufAddr(buf), uint32(len(buf)), offset(off))
}

// PrepWrite prepares IORING_OP_WRITE of buf at off (-1: current position).
func (s *SQE) PrepWrite(fd int, buf []byte, off int64) {
	s.reset(IORING_OP_WRITE, fd, bufAddr(buf), uint32(len(buf)), offset(off))
}

// PrepReadv prepares IORING_OP_READV. Both the iovec array and the buffers
// it points to must stay alive until completion.
func (s *SQE) PrepReadv(fd int, iovs []unix.Iovec, off int64) {
	s.reset(IORING_OP_READV, fd, iovAddr(iovs), uint32(len(iovs)), offset(off))
}

// PrepWritev prepares IORING_OP_WRITEV. Both the iovec array and the buffers
// it points to must stay alive until completion.
func (s *SQE) PrepWritev(fd int, iovs []unix.Iovec, off int64) {
	s.reset(IORING_OP_WRITEV, fd, iovAddr(iovs), uint32(len(iovs)), offset(off))
}

// PrepSplice prepares IORING_OP_SPLICE of n bytes from fdIn to fdOut. Use
// offset -1 for pipes and sockets. One of the two fds must be a pipe.
func (s *SQE) PrepSplice(fdIn int, offIn int64, fdOut int, offOut int64, n uint32, spliceFlags uint32) {
	s.reset(IORING_OP_SPLICE, fdOut, offset(offIn), n, offset(offOut)) // addr = splice_off_in
	s.SpliceFdIn = int32(fdIn)
	s.OpcodeFlags = spliceFlags
}

// PrepFsync prepares IORING_OP_FSYNC of the whole file; fsyncFlags may be
// IORING_FSYNC_DATASYNC (fdatasync semantics).
func (s *SQE) PrepFsync(fd int, fsyncFlags uint32) {
	s.reset(IORING_OP_FSYNC, fd, 0, 0, 0)
	s.OpcodeFlags = fsyncFlags
}

// PrepAccept prepares IORING_OP_ACCEPT with accept4(2) flags
// (unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC) and no peer address. Res is the new
// fd.
func (s *SQE) PrepAccept(fd int, flags int) {
	s.reset(IORING_OP_ACCEPT, fd, 0, 0, 0)
	s.OpcodeFlags = uint32(flags)
}

// PrepConnect prepares IORING_OP_CONNECT to sa, which must stay alive and
// unmodified until the CQE arrives.
func (s *SQE) PrepConnect(fd int, sa *Sockaddr) {
	s.reset(IORING_OP_CONNECT, fd, addr(unsafe.Pointer(&sa.raw)), 0, uint64(sa.n)) // addr2 = addrlen
}

// PrepClose prepares IORING_OP_CLOSE of fd.
func (s *SQE) PrepClose(fd int) { s.reset(IORING_OP_CLOSE, fd, 0, 0, 0) }

// PrepTimeout prepares IORING_OP_TIMEOUT. It completes with -ETIME when ts
// elapses, or with 0 once count other completions were posted (count 0: pure
// timer). flags are IORING_TIMEOUT_*. ts must stay alive until completion.
func (s *SQE) PrepTimeout(ts *unix.Timespec, count uint32, flags uint32) {
	s.reset(IORING_OP_TIMEOUT, -1, addr(unsafe.Pointer(ts)), 1, uint64(count))
	s.OpcodeFlags = flags
}

// PrepLinkTimeout prepares IORING_OP_LINK_TIMEOUT (5.5): a deadline for
// the SQE right before it, which must carry IOSQE_IO_LINK. The clock starts
// when that request is issued, not at submit. If it passes first, the
// kernel cancels the request (which completes with -ECANCELED, or -EINTR
// if it was running in an io-wq worker) and this entry completes with
// -ETIME, or -ENOENT when the request was completing or could only be
// interrupted (6.1 and 6.12; -EALREADY on some kernels); if the request
// completes first, this entry completes with -ECANCELED. Give it
// IOSQE_IO_LINK itself when more requests are linked after the pair. flags
// are IORING_TIMEOUT_* (0: ts is relative). ts must stay alive until this
// entry's CQE.
func (s *SQE) PrepLinkTimeout(ts *unix.Timespec, flags uint32) {
	s.reset(IORING_OP_LINK_TIMEOUT, -1, addr(unsafe.Pointer(ts)), 1, 0)
	s.OpcodeFlags = flags
}

// PrepCancel prepares IORING_OP_ASYNC_CANCEL of the request whose user_data
// is targetUserData (flags IORING_ASYNC_CANCEL_*; 0 cancels the first match).
// The target completes with -ECANCELED (or its real result if it won the
// race); the cancel completes with 0, -ENOENT or -EALREADY.
func (s *SQE) PrepCancel(targetUserData uint64, flags uint32) {
	s.reset(IORING_OP_ASYNC_CANCEL, -1, targetUserData, 0, 0)
	s.OpcodeFlags = flags
}

// PrepCancelFd prepares IORING_OP_ASYNC_CANCEL of requests on fd
// (IORING_ASYNC_CANCEL_FD is added to flags; add IORING_ASYNC_CANCEL_ALL to
// cancel all of them).
func (s *SQE) PrepCancelFd(fd int, flags uint32) {
	s.reset(IORING_OP_ASYNC_CANCEL, fd, 0, 0, 0)
	s.OpcodeFlags = flags | IORING_ASYNC_CANCEL_FD
}

// PrepShutdown prepares IORING_OP_SHUTDOWN (how: unix.SHUT_RD/WR/RDWR).
func (s *SQE) PrepShutdown(fd int, how int) {
	s.reset(IORING_OP_SHUTDOWN, fd, 0, uint32(how), 0)
}

// Sockaddr is a raw socket address in C layout for PrepConnect. The caller
// keeps it alive (and does not Set it again) until the CONNECT completes.
type Sockaddr struct {
	raw unix.RawSockaddrAny
	n   uint32
}

// Len returns the address length passed to the kernel (0 if unset).
func (s *Sockaddr) Len() uint32 { return s.n }

// Set encodes sa (*unix.SockaddrInet4, *unix.SockaddrInet6 or
// *unix.SockaddrUnix). Other types return an error wrapping EAFNOSUPPORT.
func (s *Sockaddr) Set(sa unix.Sockaddr) error {
	s.raw = unix.RawSockaddrAny{}
	s.n = 0
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		if a.Port < 0 || a.Port > 0xffff {
			return fmt.Errorf("uring: Sockaddr.Set: port %d: %w", a.Port, unix.EINVAL)
		}
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(&s.raw))
		p.Family = unix.AF_INET
		putPort(&p.Port, a.Port)
		p.Addr = a.Addr
		s.n = unix.SizeofSockaddrInet4
	case *unix.SockaddrInet6:
		if a.Port < 0 || a.Port > 0xffff {
			return fmt.Errorf("uring: Sockaddr.Set: port %d: %w", a.Port, unix.EINVAL)
		}
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(&s.raw))
		p.Family = unix.AF_INET6
		putPort(&p.Port, a.Port)
		p.Scope_id = a.ZoneId
		p.Addr = a.Addr
		s.n = unix.SizeofSockaddrInet6
	case *unix.SockaddrUnix:
		p := (*unix.RawSockaddrUnix)(unsafe.Pointer(&s.raw))
		name := a.Name
		if len(name) == 0 || len(name) >= len(p.Path) {
			return fmt.Errorf("uring: Sockaddr.Set: unix socket path of %d bytes: %w", len(name), unix.EINVAL)
		}
		p.Family = unix.AF_UNIX
		for i := 0; i < len(name); i++ {
			p.Path[i] = int8(name[i])
		}
		// Pathname sockets count the terminating NUL; abstract sockets
		// ('@' or a leading NUL) are exactly 2+len(name) bytes.
		n := uint32(2 + len(name))
		if name[0] == '@' || name[0] == 0 {
			p.Path[0] = 0
		} else {
			n++
		}
		s.n = n
	default:
		return fmt.Errorf("uring: Sockaddr.Set: unsupported address type %T: %w", sa, unix.EAFNOSUPPORT)
	}
	return nil
}

// putPort stores port in network byte order.
func putPort(dst *uint16, port int) {
	b := (*[2]byte)(unsafe.Pointer(dst))
	b[0] = byte(port >> 8)
	b[1] = byte(port)
}
