//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Submit hands cbs to the kernel with exactly one io_submit call (none
// when cbs is empty) and returns how many were accepted.
//
//   - (len(cbs), nil): all accepted.
//   - (n, nil) with n < len(cbs): the ring is full (a short count, or
//     EAGAIN/EINTR with nothing accepted). Reap, then submit cbs[n:] again.
//   - (0, err): cbs[0] was refused (EBADF, EINVAL, EFAULT, ...). err wraps
//     the unix.Errno and names the iocb. Fail cbs[0], continue with cbs[1:].
//
// The kernel stops at the first iocb it refuses, so an error can only
// concern cbs[0]; a bad iocb further on shows up as a short count first.
// Operations on sockets usually complete inside this call.
func (c *Context) Submit(cbs []*Iocb) (int, error) {
	if len(cbs) == 0 {
		return 0, nil
	}
	if c.ring == nil {
		return 0, fmt.Errorf("io_submit(nr=%d): %w", len(cbs), ErrDestroyed)
	}
	bump(&c.submits, 1)
	var r uintptr
	var errno unix.Errno
	if c.rawSubmit {
		r, _, errno = unix.RawSyscall(unix.SYS_IO_SUBMIT, c.id, uintptr(len(cbs)), uintptr(unsafe.Pointer(&cbs[0])))
	} else {
		r, _, errno = unix.Syscall(unix.SYS_IO_SUBMIT, c.id, uintptr(len(cbs)), uintptr(unsafe.Pointer(&cbs[0])))
	}
	switch errno {
	case 0:
		return int(r), nil
	case unix.EAGAIN, unix.EINTR:
		return 0, nil
	}
	cb := cbs[0]
	if cb == nil {
		return 0, fmt.Errorf("io_submit(ctx=%#x, nr=%d): iocb[0]=nil: %w", c.id, len(cbs), errno)
	}
	return 0, fmt.Errorf("io_submit(ctx=%#x, nr=%d): iocb[0] (fd=%d, opcode=%s): %w",
		c.id, len(cbs), int32(cb.Fd), OpcodeName(cb.Opcode), errno)
}

// Cancel asks the kernel to cancel cb (io_cancel), which must be the
// same pointer that was submitted: the kernel matches the iocb by its
// address. On success (the kernel's EINPROGRESS) it returns nil and the
// completion still arrives in the ring, once, with Res 0. Reads, writes
// and iocbs that already completed cannot be cancelled: the returned
// error wraps EINVAL.
func (c *Context) Cancel(cb *Iocb) error {
	if c.ring == nil {
		return fmt.Errorf("io_cancel: %w", ErrDestroyed)
	}
	bump(&c.cancels, 1)
	var res Event // ignored by current kernels, but must be writable
	_, _, errno := unix.RawSyscall(unix.SYS_IO_CANCEL, c.id, uintptr(unsafe.Pointer(cb)), uintptr(unsafe.Pointer(&res)))
	switch errno {
	case 0, unix.EINPROGRESS:
		return nil
	}
	return fmt.Errorf("io_cancel(ctx=%#x, iocb=%p (fd=%d, opcode=%s)): %w",
		c.id, cb, int32(cb.Fd), OpcodeName(cb.Opcode), errno)
}
