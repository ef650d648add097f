package uring

import (
	"fmt"
	"runtime"
	"sort"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Registered (fixed) buffers: IORING_REGISTER_BUFFERS pins the pages of a
// set of buffers once, and READ_FIXED/WRITE_FIXED then name a buffer by
// index instead of having the kernel pin and unpin the pages of every op
// (which is what O_DIRECT I/O pays per op otherwise).

// fixedRegion is one registered buffer, as addresses.
type fixedRegion struct {
	start, end uintptr
	idx        uint16
}

// RegisterBuffers registers bufs (at most 16384, none empty) as the ring's
// fixed buffers, replacing none: a ring has one set at a time (call
// UnregisterBuffers first to change it). The memory must stay alive and
// unmoved while registered.
func (r *Ring) RegisterBuffers(bufs [][]byte) error {
	if r.closed {
		return errClosed
	}
	if len(bufs) == 0 || len(bufs) > 1<<14 {
		return fmt.Errorf("uring: RegisterBuffers(%d buffers): want 1..16384: %w", len(bufs), unix.EINVAL)
	}
	iov := make([]unix.Iovec, len(bufs))
	regions := make([]fixedRegion, len(bufs))
	for i, b := range bufs {
		if len(b) == 0 {
			return fmt.Errorf("uring: RegisterBuffers: buffer %d is empty: %w", i, unix.EINVAL)
		}
		iov[i].Base = &b[0]
		iov[i].SetLen(len(b))
		start := uintptr(unsafe.Pointer(&b[0]))
		regions[i] = fixedRegion{start: start, end: start + uintptr(len(b)), idx: uint16(i)}
	}
	_, errno := ioUringRegister(r.fd, IORING_REGISTER_BUFFERS, unsafe.Pointer(&iov[0]), uint32(len(iov)))
	runtime.KeepAlive(bufs)
	if errno != 0 {
		return sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_BUFFERS, nr=%d)", r.fd, len(iov))
	}
	sort.Slice(regions, func(i, j int) bool { return regions[i].start < regions[j].start })
	r.fixed = regions
	return nil
}

// UnregisterBuffers drops the ring's fixed buffers. No op may be using them.
func (r *Ring) UnregisterBuffers() error {
	if r.closed || r.fixed == nil {
		return nil
	}
	_, errno := ioUringRegister(r.fd, IORING_UNREGISTER_BUFFERS, nil, 0)
	r.fixed = nil
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
