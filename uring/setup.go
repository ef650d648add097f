//go:build !giouring

package uring

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The default ring setup: io_uring_setup(2) and three mmaps on
// golang.org/x/sys/unix, as liburing's io_uring_queue_init_params does.
// (Build with -tags giouring for the setup through giouring instead; see
// setup_giouring.go.)

// region is one MAP_SHARED mapping of the ring fd.
type region struct {
	p unsafe.Pointer
	n uintptr
}

// ringMem holds the mappings of a ring. With IORING_FEAT_SINGLE_MMAP (5.4+)
// the SQ and CQ rings share one mapping and cqRing is empty.
type ringMem struct {
	sqRing, cqRing, sqes region
}

// setupSizesCQ: this ring setup honours NewSized's CQ size.
const setupSizesCQ = true

func openRing(entries, cqEntries, flags uint32) (*Ring, error) {
	return openRingMapped(entries, cqEntries, flags, false)
}

// openRingMapped sets up a ring; separateCQ maps the CQ ring on its own
// even when the kernel offers IORING_FEAT_SINGLE_MMAP, which is what kernels
// before 5.4 require (tests use it to run that path on a new kernel).
func openRingMapped(entries, cqEntries, flags uint32, separateCQ bool) (*Ring, error) {
	p := new(params)
	p.flags = flags
	if cqEntries > 0 {
		p.flags |= IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP
		p.cqEntries = cqEntries
	}
	fd, err := ioUringSetup(entries, p)
	if err != nil {
		return nil, err
	}
	r := &Ring{fd: fd, flags: p.flags, features: p.features, efd: -1}
	r.sqeSize, r.cqeSize = entrySizes(p.flags)
	if err := r.mapRings(p, separateCQ); err != nil {
		r.mem.release(fd)
		return nil, err
	}
	if err := r.checkRing(); err != nil {
		r.mem.release(fd)
		return nil, err
	}
	// Identity SQ array: slot i is always submitted as index i, so flush
	// only has to move the tail.
	array := unsafe.Slice((*uint32)(unsafe.Add(r.mem.sqRing.p, p.sqOff.array)), r.sq.entries)
	for i := range array {
		array[i] = uint32(i)
	}
	return r, nil
}

func (r *Ring) mapRings(p *params, separateCQ bool) error {
	sqLen := uintptr(p.sqOff.array) + uintptr(p.sqEntries)*unsafe.Sizeof(uint32(0))
	cqLen := uintptr(p.cqOff.cqes) + uintptr(p.cqEntries)*r.cqeSize
	single := p.features&IORING_FEAT_SINGLE_MMAP != 0 && !separateCQ
	if single {
		sqLen = max(sqLen, cqLen)
	}
	var err error
	if r.mem.sqRing, err = mapRegion(r.fd, offSQRing, "IORING_OFF_SQ_RING", sqLen); err != nil {
		return err
	}
	cqBase := r.mem.sqRing.p
	if !single {
		if r.mem.cqRing, err = mapRegion(r.fd, offCQRing, "IORING_OFF_CQ_RING", cqLen); err != nil {
			return err
		}
		cqBase = r.mem.cqRing.p
	}
	if r.mem.sqes, err = mapRegion(r.fd, offSQEs, "IORING_OFF_SQES", uintptr(p.sqEntries)*r.sqeSize); err != nil {
		return err
	}

	sqBase := r.mem.sqRing.p
	at := func(base unsafe.Pointer, off uint32) *uint32 { return (*uint32)(unsafe.Add(base, off)) }
	r.sq = sqRing{
		head:    at(sqBase, p.sqOff.head),
		tail:    at(sqBase, p.sqOff.tail),
		flags:   at(sqBase, p.sqOff.flags),
		dropped: at(sqBase, p.sqOff.dropped),
		mask:    *at(sqBase, p.sqOff.ringMask),
		entries: *at(sqBase, p.sqOff.ringEntries),
		sqes:    r.mem.sqes.p,
	}
	r.cq = cqRing{
		head:     at(cqBase, p.cqOff.head),
		tail:     at(cqBase, p.cqOff.tail),
		flags:    at(cqBase, p.cqOff.flags),
		overflow: at(cqBase, p.cqOff.overflow),
		mask:     *at(cqBase, p.cqOff.ringMask),
		entries:  *at(cqBase, p.cqOff.ringEntries),
		cqes:     unsafe.Add(cqBase, p.cqOff.cqes),
	}
	if r.sq.entries != p.sqEntries || r.cq.entries != p.cqEntries {
		return errors.New("uring: ring entries in the mapping differ from io_uring_setup's answer")
	}
	return nil
}

func mapRegion(fd int, off int64, name string, n uintptr) (region, error) {
	p, err := unix.MmapPtr(fd, off, nil, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return region{}, sysErr(errnoOf(err), "mmap(fd=%d, %s, len=%d)", fd, name, n)
	}
	return region{p, n}, nil
}

// release unmaps every mapping that exists and closes fd.
func (m *ringMem) release(fd int) error {
	var first error
	for _, rg := range []*region{&m.sqes, &m.cqRing, &m.sqRing} {
		if rg.p == nil {
			continue
		}
		if err := unix.MunmapPtr(rg.p, rg.n); err != nil && first == nil {
			first = sysErr(errnoOf(err), "munmap(%#x, len=%d)", uintptr(rg.p), rg.n)
		}
		*rg = region{}
	}
	if err := unix.Close(fd); err != nil && first == nil {
		first = sysErr(errnoOf(err), "close(io_uring fd=%d)", fd)
	}
	return first
}
