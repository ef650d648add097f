package uring

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BufRing is a provided buffer ring (IORING_REGISTER_PBUF_RING, Linux
// 5.19): a ring of buffer descriptors the kernel takes from when an SQE with
// IOSQE_BUFFER_SELECT and buf_group = the ring's group id needs a buffer.
// The CQE then carries IORING_CQE_F_BUFFER and the buffer's id (Flags >>
// IORING_CQE_BUFFER_SHIFT); the buffer belongs to the program again until it
// is added back. A recv armed this way holds no buffer while it waits: the
// kernel picks one only when data has arrived.
//
// The descriptor ring is page-aligned anonymous memory this package maps;
// the buffers are the caller's and must stay alive and unmoved while they
// are in the ring (Go heap memory does not move). Like the Ring, a BufRing
// is used from the ring's own thread only.
type BufRing struct {
	r       *Ring
	mem     []byte // the mapping: entries x struct io_uring_buf
	entries uint32
	mask    uint32
	bgid    uint16
	tail    uint16 // next slot to fill; published by Advance
	added   uint16 // filled since the last Advance
}

// ioUringBuf is struct io_uring_buf. In slot 0, resv is the ring's tail.
type ioUringBuf struct {
	addr uint64
	len  uint32
	bid  uint16
	resv uint16
}

// ioUringBufReg is struct io_uring_buf_reg.
type ioUringBufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid        uint16
	flags       uint16
	resv        [3]uint64
}

// SetupBufRing maps a descriptor ring of entries slots (a power of two, at
// most 32768) and registers it as buffer group bgid. EINVAL from the kernel
// (before 5.19) means there are no provided buffer rings.
func (r *Ring) SetupBufRing(entries uint32, bgid uint16) (*BufRing, error) {
	if r.closed {
		return nil, errClosed
	}
	if entries == 0 || entries&(entries-1) != 0 || entries > 1<<15 {
		return nil, fmt.Errorf("uring: SetupBufRing(entries=%d): want a power of two up to 32768: %w", entries, unix.EINVAL)
	}
	size := int(entries) * int(unsafe.Sizeof(ioUringBuf{}))
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANONYMOUS|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("uring: SetupBufRing: mmap(%d bytes): %w", size, err)
	}
	reg := ioUringBufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))), ringEntries: entries, bgid: bgid}
	_, errno := ioUringRegister(r.fd, IORING_REGISTER_PBUF_RING, unsafe.Pointer(&reg), 1)
	runtime.KeepAlive(r)
	if errno != 0 {
		unix.Munmap(mem)
		return nil, sysErr(errno, "io_uring_register(fd=%d, IORING_REGISTER_PBUF_RING, entries=%d, bgid=%d)", r.fd, entries, bgid)
	}
	return &BufRing{r: r, mem: mem, entries: entries, mask: entries - 1, bgid: bgid}, nil
}

// Group returns the ring's buffer group id (the SQE's buf_group).
func (b *BufRing) Group() uint16 { return b.bgid }

// Entries returns the number of descriptor slots.
func (b *BufRing) Entries() uint32 { return b.entries }

func (b *BufRing) slot(i uint16) *ioUringBuf {
	return (*ioUringBuf)(unsafe.Add(unsafe.Pointer(&b.mem[0]), uintptr(uint32(i)&b.mask)*unsafe.Sizeof(ioUringBuf{})))
}

// Add fills the next free slot with buf under id bid; the kernel sees it
// after Advance. The caller keeps count: no more than Entries buffers may be
// in the ring at once.
func (b *BufRing) Add(buf []byte, bid uint16) {
	s := b.slot(b.tail + b.added)
	s.addr = bufAddr(buf)
	s.len = uint32(len(buf))
	s.bid = bid
	b.added++
}

// Advance publishes the buffers added since the last Advance (a
// store-release of the ring's tail, after the plain stores that filled the
// slots).
func (b *BufRing) Advance() {
	if b.added == 0 {
		return
	}
	b.tail += b.added
	b.added = 0
	atomic.StoreUint32(b.tailWord(), uint32(b.tail)<<16|uint32(b.slot(0).bid))
}

// tailWord is the 32-bit word that holds slot 0's bid (low half) and the
// ring's tail (high half, the kernel's __u16 tail overlaying resv): a
// 16-bit atomic store does not exist in sync/atomic, so the tail goes out
// together with the bid beside it, which only this thread writes. (Little
// endian, as every architecture this package builds for.)
func (b *BufRing) tailWord() *uint32 {
	return (*uint32)(unsafe.Add(unsafe.Pointer(&b.mem[0]), 12))
}

// Close unregisters the group and unmaps the descriptor ring. The kernel
// must hold no pending op that selects from it.
func (b *BufRing) Close() error {
	if b.mem == nil {
		return nil
	}
	reg := ioUringBufReg{bgid: b.bgid}
	var err error
	if !b.r.closed {
		if _, errno := ioUringRegister(b.r.fd, IORING_UNREGISTER_PBUF_RING, unsafe.Pointer(&reg), 1); errno != 0 {
			err = sysErr(errno, "io_uring_register(fd=%d, IORING_UNREGISTER_PBUF_RING, bgid=%d)", b.r.fd, b.bgid)
		}
	}
	unix.Munmap(b.mem)
	b.mem = nil
	return err
}

// BufferID returns the provided buffer a CQE used, if it used one.
func (c CQE) BufferID() (uint16, bool) {
	if c.Flags&IORING_CQE_F_BUFFER == 0 {
		return 0, false
	}
	return uint16(c.Flags >> IORING_CQE_BUFFER_SHIFT), true
}

// SelectBuffer makes the SQE take its buffer from group bgid
// (IOSQE_BUFFER_SELECT); call it after the Prep* method, which must have
// been given a nil buffer and the length to receive at most.
func (s *SQE) SelectBuffer(bgid uint16) {
	s.Flags |= IOSQE_BUFFER_SELECT
	s.BufIG = bgid
}
