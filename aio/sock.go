package aio

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Recv is recv(2): recvfrom with no source address. It is for the socket
// reads a kernel's AIO cannot take RWF_NOWAIT for (Linux 6.1 refuses it on
// sockets), which a caller then makes as nonblocking syscalls
// (MSG_DONTWAIT); unlike x/sys/unix.Recvfrom it allocates nothing, which
// matters at one call per read.
func Recv(fd int, p []byte, flags int) (int, error) { return sockIO(unix.SYS_RECVFROM, fd, p, flags) }

// Send is send(2): sendto with no destination, Recv's counterpart.
func Send(fd int, p []byte, flags int) (int, error) { return sockIO(unix.SYS_SENDTO, fd, p, flags) }

// sockIO is recvfrom or sendto with no address (the last two arguments 0).
func sockIO(trap uintptr, fd int, p []byte, flags int) (int, error) {
	var base unsafe.Pointer
	if len(p) > 0 {
		base = unsafe.Pointer(&p[0])
	}
	n, _, errno := unix.Syscall6(trap, uintptr(fd), uintptr(base), uintptr(len(p)), uintptr(flags), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
