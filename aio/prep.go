//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The Prep helpers zero the whole iocb (Data included), then fill it.
// Set Data, RWFlags, SetResfd and SetIoprio afterwards.
//
// The address of buf (or of the iovec buffers) is stored as an integer:
// the caller must keep the memory alive and unmoved until the completion
// is reaped. An empty buf is valid and yields Buf=0, Nbytes=0.

func (cb *Iocb) prepRW(op uint16, fd int, p unsafe.Pointer, n int, off int64) {
	*cb = Iocb{
		Opcode: op,
		Fd:     uint32(fd),
		Buf:    uint64(uintptr(p)),
		Nbytes: uint64(n),
		Offset: off,
	}
}

func bytesPtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

func iovecPtr(iovs []unix.Iovec) unsafe.Pointer {
	if len(iovs) == 0 {
		return nil
	}
	return unsafe.Pointer(&iovs[0])
}

// PrepPread prepares IOCB_CMD_PREAD of len(buf) bytes at off.
func (cb *Iocb) PrepPread(fd int, buf []byte, off int64) {
	cb.prepRW(IOCB_CMD_PREAD, fd, bytesPtr(buf), len(buf), off)
}

// PrepPwrite prepares IOCB_CMD_PWRITE of len(buf) bytes at off.
func (cb *Iocb) PrepPwrite(fd int, buf []byte, off int64) {
	cb.prepRW(IOCB_CMD_PWRITE, fd, bytesPtr(buf), len(buf), off)
}

// PrepPreadv prepares IOCB_CMD_PREADV. The iovec array is copied by the
// kernel during io_submit; the buffers it points to must outlive the op.
func (cb *Iocb) PrepPreadv(fd int, iovs []unix.Iovec, off int64) {
	cb.prepRW(IOCB_CMD_PREADV, fd, iovecPtr(iovs), len(iovs), off)
}

// PrepPwritev prepares IOCB_CMD_PWRITEV. See PrepPreadv.
func (cb *Iocb) PrepPwritev(fd int, iovs []unix.Iovec, off int64) {
	cb.prepRW(IOCB_CMD_PWRITEV, fd, iovecPtr(iovs), len(iovs), off)
}

// PrepFsync prepares IOCB_CMD_FSYNC (runs on a kernel workqueue).
func (cb *Iocb) PrepFsync(fd int) {
	cb.prepRW(IOCB_CMD_FSYNC, fd, nil, 0, 0)
}

// PrepFdsync prepares IOCB_CMD_FDSYNC (runs on a kernel workqueue).
func (cb *Iocb) PrepFdsync(fd int) {
	cb.prepRW(IOCB_CMD_FDSYNC, fd, nil, 0, 0)
}

// PrepPoll prepares a one-shot IOCB_CMD_POLL for the poll mask events
// (unix.POLLIN, ...). The mask travels in Buf and must fit in 16 bits;
// the kernel rejects a wider mask with EINVAL at submit time.
func (cb *Iocb) PrepPoll(fd int, events uint32) {
	*cb = Iocb{
		Opcode: IOCB_CMD_POLL,
		Fd:     uint32(fd),
		Buf:    uint64(events),
	}
}

// SetResfd makes the kernel add 1 to the eventfd counter per completion.
func (cb *Iocb) SetResfd(eventfd int) {
	cb.Flags |= IOCB_FLAG_RESFD
	cb.Resfd = uint32(eventfd)
}

// SetIoprio sets the I/O priority of a read or write (see IoprioValue).
func (cb *Iocb) SetIoprio(prio uint16) {
	cb.Flags |= IOCB_FLAG_IOPRIO
	cb.Reqprio = int16(prio)
}
