package uring

import (
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel ABI of io_uring_setup(2) and io_uring_register(2) as in
// include/uapi/linux/io_uring.h. golang.org/x/sys/unix has the syscall
// numbers but none of these structs.

// sqringOffsets is struct io_sqring_offsets: where each SQ ring field lives
// inside the mapping at IORING_OFF_SQ_RING.
type sqringOffsets struct {
	head        uint32
	tail        uint32
	ringMask    uint32
	ringEntries uint32
	flags       uint32
	dropped     uint32
	array       uint32
	resv1       uint32
	userAddr    uint64 // IORING_SETUP_NO_MMAP only
}

// cqringOffsets is struct io_cqring_offsets: where each CQ ring field lives
// inside the mapping at IORING_OFF_CQ_RING (the SQ ring's mapping with
// IORING_FEAT_SINGLE_MMAP).
type cqringOffsets struct {
	head        uint32
	tail        uint32
	ringMask    uint32
	ringEntries uint32
	overflow    uint32
	cqes        uint32
	flags       uint32
	resv1       uint32
	userAddr    uint64
}

// params is struct io_uring_params (120 bytes). The caller fills flags (and
// cq_entries with IORING_SETUP_CQSIZE); the kernel fills the rest.
type params struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32
	features     uint32
	wqFd         uint32
	resv         [3]uint32
	sqOff        sqringOffsets
	cqOff        cqringOffsets
}

// probeOp is struct io_uring_probe_op.
type probeOp struct {
	op    uint8
	resv  uint8
	flags uint16 // IO_URING_OP_SUPPORTED
	resv2 uint32
}

// probe is struct io_uring_probe with room for every possible opcode (the
// kernel fills at most IORING_OP_LAST entries).
type probe struct {
	lastOp uint8 // highest opcode the kernel knows
	opsLen uint8 // entries filled in ops
	resv   uint16
	resv2  [3]uint32
	ops    [256]probeOp
}

const ioUringOpSupported = 1 // IO_URING_OP_SUPPORTED

// mmap offsets of the three regions (IORING_OFF_*).
const (
	offSQRing int64 = 0
	offCQRing int64 = 0x8000000
	offSQEs   int64 = 0x10000000
)

// Compile-time size checks against the kernel ABI.
var (
	_ [120 - unsafe.Sizeof(params{})]struct{}
	_ [unsafe.Sizeof(params{}) - 120]struct{}
	_ [64 - unsafe.Sizeof(SQE{})]struct{}
	_ [unsafe.Sizeof(SQE{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(cqe{})]struct{}
	_ [unsafe.Sizeof(cqe{}) - 16]struct{}
	_ [16 + 256*8 - unsafe.Sizeof(probe{})]struct{}
)

// cqe is the first 16 bytes of struct io_uring_cqe as the kernel writes it.
// On an IORING_SETUP_CQE32 ring each entry is followed by 16 more bytes
// (big_cqe[2]).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// SysError is a failed io_uring (or mmap) syscall with the arguments it was
// called with. It unwraps to the unix.Errno, so errors.Is(err, unix.EINVAL)
// works.
type SysError struct {
	Call  string // e.g. "io_uring_setup(entries=4096, flags=SINGLE_ISSUER|DEFER_TASKRUN)"
	Errno unix.Errno
}

func (e *SysError) Error() string {
	name := unix.ErrnoName(e.Errno)
	if name == "" {
		return fmt.Sprintf("%s: errno %d (%s)", e.Call, int(e.Errno), e.Errno.Error())
	}
	return fmt.Sprintf("%s: %s (%s)", e.Call, name, e.Errno.Error())
}

func (e *SysError) Unwrap() error { return e.Errno }

func sysErr(errno unix.Errno, format string, args ...any) error {
	return &SysError{Call: fmt.Sprintf(format, args...), Errno: errno}
}

// errnoOf extracts the errno of an x/sys/unix call's error.
func errnoOf(err error) unix.Errno {
	if e, ok := err.(unix.Errno); ok {
		return e
	}
	return unix.EIO
}

var setupFlagNames = [...]string{
	"IOPOLL", "SQPOLL", "SQ_AFF", "CQSIZE", "CLAMP", "ATTACH_WQ", "R_DISABLED",
	"SUBMIT_ALL", "COOP_TASKRUN", "TASKRUN_FLAG", "SQE128", "CQE32",
	"SINGLE_ISSUER", "DEFER_TASKRUN", "NO_MMAP", "REGISTERED_FD_ONLY", "NO_SQARRAY",
}

// SetupFlagsString renders IORING_SETUP_* bits the way errors show them:
// "SINGLE_ISSUER|DEFER_TASKRUN", "0" for none, unknown bits in hex.
func SetupFlagsString(flags uint32) string {
	if flags == 0 {
		return "0"
	}
	var parts []string
	for i, name := range setupFlagNames {
		if flags&(1<<i) != 0 {
			parts = append(parts, name)
			flags &^= 1 << i
		}
	}
	if flags != 0 {
		parts = append(parts, fmt.Sprintf("%#x", flags))
	}
	return strings.Join(parts, "|")
}

// ioUringSetup is io_uring_setup(2). p must be heap memory the kernel may
// write for the duration of the call.
func ioUringSetup(entries uint32, p *params) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return -1, sysErr(errno, "io_uring_setup(entries=%d, flags=%s)", entries, SetupFlagsString(p.flags))
	}
	return int(fd), nil
}

// ioUringRegister is io_uring_register(2); callers wrap the errno with the
// arguments that matter. It can block (some opcodes quiesce the ring), so it
// goes through Syscall6, not RawSyscall6.
func ioUringRegister(fd int, opcode uint32, arg unsafe.Pointer, nrArgs uint32) (int, unix.Errno) {
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(fd), uintptr(opcode), uintptr(arg), uintptr(nrArgs), 0, 0)
	return int(n), errno
}
