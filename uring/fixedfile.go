package uring

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Registered (fixed) files: a table of files the ring holds a reference
// to, registered once. An SQE with IOSQE_FIXED_FILE names a slot of the
// table in its fd field, so the kernel takes the file from the table
// instead of looking the fd up (fdget/fdput, and the reference counting of
// a file shared between threads) for every op.
//
// The table holds its own reference: closing an fd that is in the table
// does not close the file (a socket stays open, no FIN is sent) until the
// slot is emptied, and a new file that gets the same fd number is a
// different file from the table's. Empty the slot (UpdateFiles with -1)
// before closing the fd, or close the slot itself (PrepCloseFixed).

// maxFixedFiles is the kernel's IORING_MAX_FIXED_FILES (1 << 20 since 5.15,
// 1 << 15 before; a table larger than the kernel allows, or than
// RLIMIT_NOFILE, fails with EMFILE).
const maxFixedFiles = 1 << 20

// filesUpdate is struct io_uring_files_update (IORING_REGISTER_FILES_UPDATE).
type filesUpdate struct {
	offset uint32
	resv   uint32
	fds    uint64 // __s32 fds[nr_args]
}

var (
	_ [16 - unsafe.Sizeof(filesUpdate{})]struct{}
	_ [unsafe.Sizeof(filesUpdate{}) - 16]struct{}
)

// RegisterFiles registers fds as the ring's file table: slot i holds
// fds[i], or nothing for -1. A ring has one table at a time (UnregisterFiles
// first to replace it). The files are the table's from then on: the fds
// may be closed without affecting it.
//
// It is IORING_REGISTER_FILES2 (Linux 5.13), which, unlike the older
// IORING_REGISTER_FILES, never waits for the ops in flight: on 5.x
// kernels (5.13 included; later ones dropped it) that one quiesced the
// ring, blocking until every op in flight had completed, which for a loop
// with a recv armed on an idle socket is never. A kernel before 5.13
// answers EINVAL.
func (r *Ring) RegisterFiles(fds []int32) error {
	if r.closed {
		return errClosed
	}
	if len(fds) == 0 || len(fds) > maxFixedFiles {
		return fmt.Errorf("uring: RegisterFiles(%d fds): want 1..%d: %w", len(fds), maxFixedFiles, unix.EINVAL)
	}
	if r.files != 0 {
		return fmt.Errorf("uring: RegisterFiles(%d fds): the ring has a table of %d slots; UnregisterFiles first: %w", len(fds), r.files, unix.EBUSY)
	}
	reg := &rsrcRegister{Nr: uint32(len(fds)), Data: addr(unsafe.Pointer(&fds[0]))}
	_, errno := ioUringRegister(r.fd, IORING_REGISTER_FILES2, unsafe.Pointer(reg), uint32(unsafe.Sizeof(*reg)))
	runtime.KeepAlive(fds)
	if errno != 0 {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_FILES2, nr=%d)", r.fd, len(fds))
	}
	r.files = uint32(len(fds))
	return nil
}

// RegisterFilesSparse registers a file table of n empty slots, to be
// filled with UpdateFiles: IORING_RSRC_REGISTER_SPARSE (Linux 5.19), or on
// 5.13-5.18, which refuse that flag with EINVAL, an array of n -1 entries.
// Neither waits for the ops in flight.
func (r *Ring) RegisterFilesSparse(n uint32) error {
	if r.closed {
		return errClosed
	}
	if n == 0 || n > maxFixedFiles {
		return fmt.Errorf("uring: RegisterFilesSparse(%d): want 1..%d slots: %w", n, maxFixedFiles, unix.EINVAL)
	}
	if r.files != 0 {
		return fmt.Errorf("uring: RegisterFilesSparse(%d): the ring has a table of %d slots; UnregisterFiles first: %w", n, r.files, unix.EBUSY)
	}
	reg := &rsrcRegister{Nr: n, Flags: IORING_RSRC_REGISTER_SPARSE}
	_, errno := ioUringRegister(r.fd, IORING_REGISTER_FILES2, unsafe.Pointer(reg), uint32(unsafe.Sizeof(*reg)))
	if errno == 0 {
		r.files = n
		return nil
	}
	if errno != unix.EINVAL {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_FILES2, nr=%d, flags=IORING_RSRC_REGISTER_SPARSE)", r.fd, n)
	}
	empty := make([]int32, n)
	for i := range empty {
		empty[i] = -1
	}
	return r.RegisterFiles(empty)
}

// UpdateFiles replaces the table's slots off, off+1, ... with fds: a file,
// -1 to empty the slot, or IORING_REGISTER_FILES_SKIP to leave it
// (IORING_REGISTER_FILES_UPDATE, Linux 5.5). It does not wait for the ops
// in flight: an op that already took a slot's file keeps it until it
// completes. It returns how many slots it updated; fewer than len(fds)
// means the next one failed (update that one alone to learn why).
func (r *Ring) UpdateFiles(off uint32, fds []int32) (int, error) {
	if r.closed {
		return 0, errClosed
	}
	if r.files == 0 {
		return 0, fmt.Errorf("uring: UpdateFiles(off=%d, %d fds): no file table registered: %w", off, len(fds), unix.ENXIO)
	}
	if len(fds) == 0 || uint64(off)+uint64(len(fds)) > uint64(r.files) {
		return 0, fmt.Errorf("uring: UpdateFiles(off=%d, %d fds): outside the table's %d slots: %w", off, len(fds), r.files, unix.EINVAL)
	}
	up := &filesUpdate{offset: off, fds: addr(unsafe.Pointer(&fds[0]))}
	n, errno := ioUringRegister(r.fd, IORING_REGISTER_FILES_UPDATE, unsafe.Pointer(up), uint32(len(fds)))
	runtime.KeepAlive(fds)
	if errno != 0 {
		if len(fds) == 1 {
			return 0, sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_FILES_UPDATE, off=%d, fd=%d)", r.fd, off, fds[0])
		}
		return 0, sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_FILES_UPDATE, off=%d, nr=%d)", r.fd, off, len(fds))
	}
	return n, nil
}

// UnregisterFiles drops the ring's file table (IORING_UNREGISTER_FILES);
// ops in flight keep the files they took.
func (r *Ring) UnregisterFiles() error {
	if r.closed || r.files == 0 {
		return nil
	}
	_, errno := ioUringRegister(r.fd, IORING_UNREGISTER_FILES, nil, 0)
	if errno != 0 {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_UNREGISTER_FILES)", r.fd)
	}
	r.files = 0
	return nil
}

// Files returns the number of slots of the registered file table (0: none).
func (r *Ring) Files() uint32 { return r.files }

// SetFixedFile makes the prepared SQE act on slot idx of the file table
// instead of an fd (IOSQE_FIXED_FILE). Call it after the Prep* method,
// which sets the fd field. Ops that act on a file take a slot; those that
// do not (OPENAT's directory, CLOSE, ASYNC_CANCEL by user data, TIMEOUT)
// refuse the flag. For SPLICE it names the output; see SetFixedFileIn.
func (s *SQE) SetFixedFile(idx uint32) {
	s.Fd = int32(idx)
	s.Flags |= IOSQE_FIXED_FILE
}

// SetFixedFileIn makes a prepared SPLICE read from slot idx of the file
// table (SPLICE_F_FD_IN_FIXED) instead of its input fd.
func (s *SQE) SetFixedFileIn(idx uint32) {
	s.SpliceFdIn = int32(idx)
	s.OpcodeFlags |= SPLICE_F_FD_IN_FIXED
}

// PrepCloseFixed prepares IORING_OP_CLOSE of slot idx of the file table
// (Linux 5.15): the slot is emptied and the table's reference dropped, as
// UpdateFiles with -1 does, but in SQE order. No fd is closed: the fd the
// file was registered from is the caller's to close.
func (s *SQE) PrepCloseFixed(idx uint32) {
	s.reset(IORING_OP_CLOSE, 0, 0, 0, 0)
	s.SpliceFdIn = int32(idx + 1) // file_index: slot + 1, 0 meaning none
}
