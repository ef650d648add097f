//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Opcodes for Iocb.Opcode (aio_lio_opcode), from include/uapi/linux/aio_abi.h.
const (
	IOCB_CMD_PREAD   = 0
	IOCB_CMD_PWRITE  = 1
	IOCB_CMD_FSYNC   = 2
	IOCB_CMD_FDSYNC  = 3
	IOCB_CMD_POLL    = 5 // Linux 4.18+
	IOCB_CMD_NOOP    = 6 // defined by the ABI, rejected by io_submit with EINVAL
	IOCB_CMD_PREADV  = 7
	IOCB_CMD_PWRITEV = 8
)

// Flags for Iocb.Flags (aio_flags).
const (
	IOCB_FLAG_RESFD  = 1 << 0 // signal the eventfd in Iocb.Resfd on completion
	IOCB_FLAG_IOPRIO = 1 << 1 // Iocb.Reqprio holds an ioprio value (4.18+)
)

// Per-operation flags for Iocb.RWFlags (aio_rw_flags), same values as the
// kernel's RWF_* (and x/sys/unix, which declares them as untyped ints).
const (
	RWF_HIPRI    uint32 = unix.RWF_HIPRI // ignored by AIO: the kernel clears IOCB_HIPRI
	RWF_DSYNC    uint32 = unix.RWF_DSYNC
	RWF_SYNC     uint32 = unix.RWF_SYNC
	RWF_NOWAIT   uint32 = unix.RWF_NOWAIT   // fail with -EAGAIN instead of blocking
	RWF_APPEND   uint32 = unix.RWF_APPEND   // write at end of file, ignore Offset
	RWF_NOSIGNAL uint32 = unix.RWF_NOSIGNAL // no SIGPIPE on a broken socket/pipe (0x100)
)

// I/O priority classes for IoprioValue.
const (
	IOPRIO_CLASS_RT   = 1 // needs CAP_SYS_ADMIN or CAP_SYS_NICE
	IOPRIO_CLASS_BE   = 2
	IOPRIO_CLASS_IDLE = 3

	ioprioClassShift = 13
)

// IoprioValue builds an ioprio value (class<<13 | data) for SetIoprio.
func IoprioValue(class, data int) uint16 {
	return uint16(class<<ioprioClassShift | data)
}

// Iocb is struct iocb, the 64-byte little-endian layout.
type Iocb struct {
	Data      uint64 // aio_data: opaque, returned in Event.Data
	Key       uint32 // aio_key: the kernel writes 0 here during io_submit
	RWFlags   uint32 // aio_rw_flags: RWF_*
	Opcode    uint16 // aio_lio_opcode: IOCB_CMD_*
	Reqprio   int16  // aio_reqprio: ioprio, used with IOCB_FLAG_IOPRIO
	Fd        uint32 // aio_fildes
	Buf       uint64 // aio_buf: buffer address, iovec array address, or poll mask
	Nbytes    uint64 // aio_nbytes: byte count or iovec count
	Offset    int64  // aio_offset
	Reserved2 uint64 // aio_reserved2: must be 0
	Flags     uint32 // aio_flags: IOCB_FLAG_*
	Resfd     uint32 // aio_resfd: eventfd for IOCB_FLAG_RESFD
}

// Event is struct io_event (32 bytes).
type Event struct {
	Data uint64 // aio_data of the completed iocb
	Obj  uint64 // user address of the completed iocb
	Res  int64  // result: byte count, -errno, or revents for POLL
	Res2 int64  // secondary result, 0 on current kernels
}

// Err returns the error carried by Res, or nil when Res >= 0 (as
// uring.CQE.Err and uio.Result.Err do).
func (e *Event) Err() error {
	if e.Res >= 0 {
		return nil
	}
	return unix.Errno(-e.Res)
}

const (
	iocbSize  = 64
	eventSize = 32
)

// Compile-time layout checks against include/uapi/linux/aio_abi.h.
var (
	_ [iocbSize]byte  = [unsafe.Sizeof(Iocb{})]byte{}
	_ [eventSize]byte = [unsafe.Sizeof(Event{})]byte{}

	_ [0]byte  = [unsafe.Offsetof(Iocb{}.Data)]byte{}
	_ [8]byte  = [unsafe.Offsetof(Iocb{}.Key)]byte{}
	_ [12]byte = [unsafe.Offsetof(Iocb{}.RWFlags)]byte{}
	_ [16]byte = [unsafe.Offsetof(Iocb{}.Opcode)]byte{}
	_ [18]byte = [unsafe.Offsetof(Iocb{}.Reqprio)]byte{}
	_ [20]byte = [unsafe.Offsetof(Iocb{}.Fd)]byte{}
	_ [24]byte = [unsafe.Offsetof(Iocb{}.Buf)]byte{}
	_ [32]byte = [unsafe.Offsetof(Iocb{}.Nbytes)]byte{}
	_ [40]byte = [unsafe.Offsetof(Iocb{}.Offset)]byte{}
	_ [48]byte = [unsafe.Offsetof(Iocb{}.Reserved2)]byte{}
	_ [56]byte = [unsafe.Offsetof(Iocb{}.Flags)]byte{}
	_ [60]byte = [unsafe.Offsetof(Iocb{}.Resfd)]byte{}

	_ [0]byte  = [unsafe.Offsetof(Event{}.Data)]byte{}
	_ [8]byte  = [unsafe.Offsetof(Event{}.Obj)]byte{}
	_ [16]byte = [unsafe.Offsetof(Event{}.Res)]byte{}
	_ [24]byte = [unsafe.Offsetof(Event{}.Res2)]byte{}
)

// OpcodeName returns the kernel name of an IOCB_CMD_* opcode.
func OpcodeName(op uint16) string {
	switch op {
	case IOCB_CMD_PREAD:
		return "IOCB_CMD_PREAD"
	case IOCB_CMD_PWRITE:
		return "IOCB_CMD_PWRITE"
	case IOCB_CMD_FSYNC:
		return "IOCB_CMD_FSYNC"
	case IOCB_CMD_FDSYNC:
		return "IOCB_CMD_FDSYNC"
	case IOCB_CMD_POLL:
		return "IOCB_CMD_POLL"
	case IOCB_CMD_NOOP:
		return "IOCB_CMD_NOOP"
	case IOCB_CMD_PREADV:
		return "IOCB_CMD_PREADV"
	case IOCB_CMD_PWRITEV:
		return "IOCB_CMD_PWRITEV"
	}
	return "IOCB_CMD_(" + strconv.Itoa(int(op)) + ")"
}
