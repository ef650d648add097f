//go:build giouring

package uring

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/pawelgaczynski/giouring"
	"golang.org/x/sys/unix"
)

// The alternative ring setup, selected with -tags giouring: io_uring_setup,
// the mmaps and munmap come from github.com/pawelgaczynski/giouring, the
// library the project was first specified with. Everything after setup
// (SQEs, submit, wait, reap, register, probe) is the same code as in the
// default build. giouring pull-links syscall.munmap, so this build needs
// -ldflags=-checklinkname=0 on Go 1.23 and later.

// ringMem is the giouring ring that owns the mappings.
type ringMem struct {
	g *giouring.Ring
}

// setupSizesCQ: giouring's setup cannot be given a CQ size.
const setupSizesCQ = false

func openRing(entries, cqEntries, flags uint32) (*Ring, error) {
	if layoutErr != nil {
		return nil, layoutErr
	}
	// giouring's Params keeps its fields unexported, so a CQ size cannot
	// be passed through it: the ring gets the default CQ (twice the SQ),
	// and overflow beyond it is held by the kernel (IORING_FEAT_NODROP).
	_ = cqEntries
	g := giouring.NewRing()
	if err := g.QueueInit(entries, flags); err != nil {
		errno := unix.EIO
		var e syscall.Errno
		if errors.As(err, &e) {
			errno = e
		}
		return nil, sysErr(errno, "io_uring_setup(entries=%d, flags=%s)", entries, SetupFlagsString(flags))
	}
	m := (*ringMirror)(unsafe.Pointer(g))
	sq, cq := m.sqRing, m.cqRing
	r := &Ring{
		fd:       g.RingFd(),
		flags:    m.flags,
		features: m.features,
		efd:      -1,
		mem:      ringMem{g: g},
	}
	r.sqeSize, r.cqeSize = entrySizes(r.flags)
	if m.ringFd != r.fd || m.flags&flags != flags || sq.ringEntries == nil || cq.ringEntries == nil ||
		sq.sqeTail != 0 || sq.sqes == nil || cq.cqes == nil {
		g.QueueExit()
		return nil, fmt.Errorf("uring: giouring ring state does not match the expected layout")
	}
	r.sq = sqRing{
		head:    sq.head,
		tail:    sq.tail,
		flags:   sq.flags,
		dropped: sq.dropped,
		mask:    *sq.ringMask,
		entries: *sq.ringEntries,
		sqes:    unsafe.Pointer(sq.sqes),
	}
	r.cq = cqRing{
		head:     cq.head,
		tail:     cq.tail,
		flags:    cq.flags,
		overflow: cq.overflow,
		mask:     *cq.ringMask,
		entries:  *cq.ringEntries,
		cqes:     unsafe.Pointer(cq.cqes),
	}
	if err := r.checkRing(); err != nil {
		g.QueueExit()
		return nil, err
	}
	return r, nil
}

// release unmaps the rings and closes fd (giouring's QueueExit does both and
// reports nothing).
func (m *ringMem) release(int) error {
	if m.g != nil {
		m.g.QueueExit()
		m.g = nil
	}
	return nil
}
