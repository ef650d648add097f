package uring

import (
	"fmt"
	"runtime"
	"sort"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Registered (fixed) buffers: the kernel pins the pages of a registered
// buffer once, and READ_FIXED/WRITE_FIXED then name it by index instead of
// having the kernel pin and unpin the pages of every op (which is what
// O_DIRECT I/O pays per op otherwise).
//
// A ring has one table of them at a time, set up one of two ways:
//   - RegisterBuffers (IORING_REGISTER_BUFFERS, 5.1) registers a whole set
//     at once; changing it means UnregisterBuffers and registering anew.
//   - RegisterBufferTable (IORING_REGISTER_BUFFERS2, 5.13) registers a
//     table of empty slots, which UpdateBuffers
//     (IORING_REGISTER_BUFFERS_UPDATE, 5.13) fills and empties one range at
//     a time, while ops run: the kernel keeps a replaced buffer pinned until
//     the ops that use it have completed.
//
// The Ring mirrors the table, so that FixedBuffer finds the slot a buffer
// lies in without a syscall.

// Kernel limits (io_uring/rsrc.c): IORING_MAX_REG_BUFFERS slots, and no
// registered buffer larger than 1 GiB.
const (
	MaxRegisteredBuffers = 1 << 14
	MaxRegisteredBuffer  = 1 << 30
)

// fixedRegion is one registered buffer, as addresses.
type fixedRegion struct {
	start, end uintptr
	idx        uint16
}

// sparseFlagRefused makes RegisterBufferTable skip
// IORING_RSRC_REGISTER_SPARSE, as a kernel before 5.19 refuses it (tests).
var sparseFlagRefused bool

// RegisterBuffers registers bufs (at most 16384, none empty or over 1 GiB)
// as the ring's fixed buffers, replacing none: a ring has one set at a time
// (call UnregisterBuffers first to change it). The memory must stay alive
// and unmoved while registered.
func (r *Ring) RegisterBuffers(bufs [][]byte) error {
	if r.closed {
		return errClosed
	}
	if len(bufs) == 0 || len(bufs) > MaxRegisteredBuffers {
		return fmt.Errorf("uring: RegisterBuffers(%d buffers): want 1..%d: %w", len(bufs), MaxRegisteredBuffers, unix.EINVAL)
	}
	for i, b := range bufs {
		if err := checkFixed(b, false); err != nil {
			return fmt.Errorf("uring: RegisterBuffers: buffer %d: %w", i, err)
		}
	}
	iov := fixedIovecs(bufs)
	_, errno := ioUringRegister(r.fd, IORING_REGISTER_BUFFERS, unsafe.Pointer(&iov[0]), uint32(len(iov)))
	runtime.KeepAlive(bufs)
	if errno != 0 {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_BUFFERS, nr=%d)", r.fd, len(iov))
	}
	r.table = nil
	r.fixed = r.fixed[:0]
	for i, b := range bufs {
		r.fixed = append(r.fixed, regionOf(b, uint16(i)))
	}
	sortRegions(r.fixed)
	return nil
}

// RegisterBufferTable registers a table of n (1..16384) empty
// registered-buffer slots, for UpdateBuffers to fill: with
// IORING_RSRC_REGISTER_SPARSE (Linux 5.19), else as n empty iovecs
// (5.13). A kernel without IORING_REGISTER_BUFFERS2 (before 5.13) answers
// EINVAL. The ring must have no registered buffers.
func (r *Ring) RegisterBufferTable(n int) error {
	if r.closed {
		return errClosed
	}
	if n <= 0 || n > MaxRegisteredBuffers {
		return fmt.Errorf("uring: RegisterBufferTable(%d): want 1..%d slots: %w", n, MaxRegisteredBuffers, unix.EINVAL)
	}
	reg := &rsrcRegister{Nr: uint32(n), Flags: IORING_RSRC_REGISTER_SPARSE}
	var errno unix.Errno = unix.EINVAL
	if !sparseFlagRefused {
		_, errno = ioUringRegister(r.fd, IORING_REGISTER_BUFFERS2, unsafe.Pointer(reg), uint32(unsafe.Sizeof(*reg)))
	}
	if errno == unix.EINVAL {
		// Before 5.19 the flags field is reserved: pass the empty slots.
		iov := make([]unix.Iovec, n)
		*reg = rsrcRegister{Nr: uint32(n), Data: uint64(uintptr(unsafe.Pointer(&iov[0])))}
		_, errno = ioUringRegister(r.fd, IORING_REGISTER_BUFFERS2, unsafe.Pointer(reg), uint32(unsafe.Sizeof(*reg)))
		runtime.KeepAlive(iov)
	}
	if errno != 0 {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_BUFFERS2, nr=%d, sparse)", r.fd, n)
	}
	r.table = make([]fixedRegion, n)
	r.fixed = r.fixed[:0]
	return nil
}

// BufferTableSize is the number of slots RegisterBufferTable made (0: no
// table).
func (r *Ring) BufferTableSize() int { return len(r.table) }

// UpdateBuffers puts bufs into the table's slots off, off+1, ...; an empty
// (nil) entry empties its slot. A slot's old buffer stays pinned until the
// ops already submitted with it complete, so the table may change while
// ops run; an op submitted after the change finds the new contents. The
// memory of a buffer must stay alive and unmoved while it is in the table.
// On error the slots before the one that failed are updated (and mirrored).
func (r *Ring) UpdateBuffers(off int, bufs [][]byte) error {
	if r.closed {
		return errClosed
	}
	if len(r.table) == 0 {
		return fmt.Errorf("uring: UpdateBuffers: no buffer table (RegisterBufferTable): %w", unix.ENXIO)
	}
	if off < 0 || len(bufs) == 0 || off+len(bufs) > len(r.table) {
		return fmt.Errorf("uring: UpdateBuffers(off=%d, %d buffers): outside the table of %d slots: %w", off, len(bufs), len(r.table), unix.EINVAL)
	}
	for i, b := range bufs {
		if err := checkFixed(b, true); err != nil {
			return fmt.Errorf("uring: UpdateBuffers: buffer %d: %w", i, err)
		}
	}
	iov := fixedIovecs(bufs)
	done := 0
	var err error
	for done < len(bufs) {
		up := &rsrcUpdate2{Offset: uint32(off + done), Data: uint64(uintptr(unsafe.Pointer(&iov[done]))), Nr: uint32(len(bufs) - done)}
		n, errno := ioUringRegister(r.fd, IORING_REGISTER_BUFFERS_UPDATE, unsafe.Pointer(up), uint32(unsafe.Sizeof(*up)))
		if errno == 0 && n == 0 {
			errno = unix.EIO // cannot happen: the kernel fails or does at least one
		}
		if errno != 0 {
			err = sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_BUFFERS_UPDATE, offset=%d, nr=%d)", r.fd, off+done, len(bufs)-done)
			break
		}
		// A partial update is reported as the count done; the next try
		// returns the errno of the slot that failed.
		done += n
	}
	runtime.KeepAlive(bufs)
	runtime.KeepAlive(iov)
	for i, b := range bufs[:done] {
		r.table[off+i] = fixedRegion{}
		if len(b) > 0 {
			r.table[off+i] = regionOf(b, uint16(off+i))
		}
	}
	r.fixed = r.fixed[:0]
	for _, reg := range r.table {
		if reg.end != 0 {
			r.fixed = append(r.fixed, reg)
		}
	}
	sortRegions(r.fixed)
	return err
}

// UnregisterBuffers drops the ring's fixed buffers, or its buffer table.
// No op may be using them on kernels before 5.13 (later ones keep them
// pinned until such ops complete).
func (r *Ring) UnregisterBuffers() error {
	if r.closed || (r.fixed == nil && r.table == nil) {
		return nil
	}
	_, errno := ioUringRegister(r.fd, IORING_UNREGISTER_BUFFERS, nil, 0)
	r.fixed, r.table = nil, nil
	if errno != 0 {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_UNREGISTER_BUFFERS)", r.fd)
	}
	return nil
}

// FixedBuffer reports which registered buffer b lies in entirely, if any.
func (r *Ring) FixedBuffer(b []byte) (uint16, bool) {
	if len(r.fixed) == 0 || len(b) == 0 {
		return 0, false
	}
	start := uintptr(unsafe.Pointer(&b[0]))
	end := start + uintptr(len(b))
	i := sort.Search(len(r.fixed), func(i int) bool { return r.fixed[i].end > start })
	if i < len(r.fixed) && r.fixed[i].start <= start && end <= r.fixed[i].end {
		return r.fixed[i].idx, true
	}
	return 0, false
}

// checkFixed checks what the kernel would refuse with a bare EFAULT.
func checkFixed(b []byte, emptyOK bool) error {
	switch {
	case len(b) == 0 && !emptyOK:
		return fmt.Errorf("empty: %w", unix.EINVAL)
	case len(b) > MaxRegisteredBuffer:
		return fmt.Errorf("%d bytes, more than the kernel's 1 GiB: %w", len(b), unix.EINVAL)
	}
	return nil
}

func fixedIovecs(bufs [][]byte) []unix.Iovec {
	iov := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		if len(b) > 0 {
			iov[i].Base = &b[0]
			iov[i].SetLen(len(b))
		}
	}
	return iov
}

func regionOf(b []byte, idx uint16) fixedRegion {
	start := uintptr(unsafe.Pointer(&b[0]))
	return fixedRegion{start: start, end: start + uintptr(len(b)), idx: idx}
}

func sortRegions(rs []fixedRegion) {
	sort.Slice(rs, func(i, j int) bool { return rs[i].start < rs[j].start })
}

// PrepReadFixed prepares IORING_OP_READ_FIXED into buf, which must lie in
// registered buffer idx (see FixedBuffer).
func (s *SQE) PrepReadFixed(fd int, buf []byte, off int64, idx uint16) {
	s.reset(IORING_OP_READ_FIXED, fd, bufAddr(buf), uint32(len(buf)), offset(off))
	s.BufIG = idx
}

// PrepWriteFixed prepares IORING_OP_WRITE_FIXED from buf, which must lie in
// registered buffer idx.
func (s *SQE) PrepWriteFixed(fd int, buf []byte, off int64, idx uint16) {
	s.reset(IORING_OP_WRITE_FIXED, fd, bufAddr(buf), uint32(len(buf)), offset(off))
	s.BufIG = idx
}
