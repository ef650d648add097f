package uring

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Msghdr is a struct msghdr for PrepSendmsg and PrepRecvmsg, with room for
// the peer's address. Like every buffer handed to the kernel it must stay
// alive and unmodified until the op's CQE arrives.
type Msghdr struct {
	hdr  unix.Msghdr
	name Sockaddr
}

// Set fills the header: the data buffers iov, the ancillary (control) data
// or room for it, and, for a send, the destination to (nil: the connected
// peer). For a receive, pass wantFrom to have the sender's address stored.
func (m *Msghdr) Set(iov []unix.Iovec, control []byte, to unix.Sockaddr, wantFrom bool) error {
	m.hdr = unix.Msghdr{}
	m.name = Sockaddr{}
	if to != nil {
		if err := m.name.Set(to); err != nil {
			return err
		}
		m.hdr.Name = (*byte)(unsafe.Pointer(&m.name.raw))
		m.hdr.Namelen = m.name.n
	} else if wantFrom {
		m.hdr.Name = (*byte)(unsafe.Pointer(&m.name.raw))
		m.hdr.Namelen = uint32(unsafe.Sizeof(m.name.raw))
	}
	if len(iov) > 0 {
		m.hdr.Iov = &iov[0]
		m.hdr.SetIovlen(len(iov))
	}
	if len(control) > 0 {
		m.hdr.Control = &control[0]
		m.hdr.SetControllen(len(control))
	}
	return nil
}

// ControlLen is how much ancillary data a receive stored.
func (m *Msghdr) ControlLen() int { return int(m.hdr.Controllen) }

// Flags are the msg_flags a receive reported (MSG_TRUNC, MSG_CTRUNC, ...).
func (m *Msghdr) Flags() int { return int(m.hdr.Flags) }

// From decodes the sender's address a receive stored: nil when there was
// none (a connected stream socket), an error for a family it cannot decode.
func (m *Msghdr) From() (unix.Sockaddr, error) {
	if m.hdr.Name == nil || m.hdr.Namelen == 0 {
		return nil, nil
	}
	return decodeSockaddr(&m.name.raw, m.hdr.Namelen)
}

func decodeSockaddr(raw *unix.RawSockaddrAny, n uint32) (unix.Sockaddr, error) {
	switch raw.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(raw))
		sa := &unix.SockaddrInet4{Addr: p.Addr}
		sa.Port = int(binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:]))
		return sa, nil
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(raw))
		sa := &unix.SockaddrInet6{Addr: p.Addr, ZoneId: p.Scope_id}
		sa.Port = int(binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:]))
		return sa, nil
	case unix.AF_UNIX:
		p := (*unix.RawSockaddrUnix)(unsafe.Pointer(raw))
		l := int(n) - 2 // the path after sun_family
		if l <= 0 {
			return &unix.SockaddrUnix{}, nil // unnamed
		}
		b := make([]byte, 0, l)
		for i := 0; i < l && i < len(p.Path); i++ {
			if p.Path[i] == 0 && i > 0 {
				break
			}
			b = append(b, byte(p.Path[i]))
		}
		if len(b) > 0 && b[0] == 0 {
			b[0] = '@' // abstract, as x/sys spells it
		}
		return &unix.SockaddrUnix{Name: string(b)}, nil
	}
	return nil, fmt.Errorf("uring: address family %d: %w", raw.Addr.Family, unix.EAFNOSUPPORT)
}

// PrepSendmsg prepares IORING_OP_SENDMSG (Linux 5.3) of m with msg flags.
func (s *SQE) PrepSendmsg(fd int, m *Msghdr, msgFlags int) {
	s.reset(IORING_OP_SENDMSG, fd, addr(unsafe.Pointer(&m.hdr)), 1, 0)
	s.OpcodeFlags = uint32(msgFlags)
}

// PrepRecvmsg prepares IORING_OP_RECVMSG (Linux 5.3) into m with msg flags.
func (s *SQE) PrepRecvmsg(fd int, m *Msghdr, msgFlags int) {
	s.reset(IORING_OP_RECVMSG, fd, addr(unsafe.Pointer(&m.hdr)), 1, 0)
	s.OpcodeFlags = uint32(msgFlags)
}

// PrepOpenat prepares IORING_OP_OPENAT (Linux 5.6): path must end in a NUL
// byte; flags are open(2) flags. Res is the new fd.
func (s *SQE) PrepOpenat(dirfd int, path []byte, flags int, mode uint32) {
	s.reset(IORING_OP_OPENAT, dirfd, bufAddr(path), mode, 0)
	s.OpcodeFlags = uint32(flags)
}

// PrepFallocate prepares IORING_OP_FALLOCATE (Linux 5.6): fallocate(2) of
// length bytes at off with mode (FALLOC_FL_*).
func (s *SQE) PrepFallocate(fd int, mode uint32, off, length int64) {
	s.reset(IORING_OP_FALLOCATE, fd, uint64(length), mode, offset(off))
}

// PrepFtruncate prepares IORING_OP_FTRUNCATE (Linux 6.9) to length bytes.
func (s *SQE) PrepFtruncate(fd int, length int64) {
	s.reset(IORING_OP_FTRUNCATE, fd, 0, 0, offset(length))
}

// cmdOffset is where an SQE's command area starts (sqe->cmd): 16 bytes in
// a 64-byte SQE, 80 in a 128-byte one (IORING_SETUP_SQE128).
const cmdOffset = 48

// PrepUringCmd prepares IORING_OP_URING_CMD (Linux 5.19) of command cmdOp
// on fd, a driver's own command (ublk's FETCH_REQ, ...). Its payload goes in
// with SetCmd, after this call.
func (s *SQE) PrepUringCmd(fd int, cmdOp uint32) {
	s.reset(IORING_OP_URING_CMD, fd, 0, 0, uint64(cmdOp))
}

// CmdSize is the room for a URING_CMD payload in this ring's SQEs.
func (r *Ring) CmdSize() int { return int(r.sqeSize) - cmdOffset }

// SetCmd copies a URING_CMD payload into sqe's command area (the rest of
// the area stays zero). It fails with EINVAL when cmd is larger than
// CmdSize: a ublk control command needs a ring set up with SQE128.
func (r *Ring) SetCmd(sqe *SQE, cmd []byte) error {
	if len(cmd) > r.CmdSize() {
		return fmt.Errorf("uring: URING_CMD payload of %d bytes, room for %d (IORING_SETUP_SQE128 gives 80): %w", len(cmd), r.CmdSize(), unix.EINVAL)
	}
	area := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(sqe), cmdOffset)), r.CmdSize())
	copy(area, cmd)
	return nil
}
