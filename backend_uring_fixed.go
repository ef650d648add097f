package uio

import (
	"errors"
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio/uring"
)

// uringFixed is the io_uring backend's registered-buffer table, shared by
// RegisterBuffers' set and the buffers added one at a time (AddFixedBuffer).
// On a kernel with IORING_REGISTER_BUFFERS2 (5.13) the ring gets a sparse
// table the first time either is used, and each change is one
// IORING_REGISTER_BUFFERS_UPDATE of the slots it concerns, so neither user
// disturbs the other. Before 5.13 neither works (NotSupportedError): the
// only registration there quiesces the ring, which never happens for a
// loop.
type uringFixed struct {
	mode  uint8 // fixedUnknown until first used
	slots []fixedSlot
	// The slots RegisterBuffers' set holds: [userOff, userOff+userN).
	userOff, userN int
	gen            uint32 // last generation handed out

	ops uint64  // reads and writes sent as READ_FIXED/WRITE_FIXED
	pub counter // ops, published at each Flush and Wait
}

type fixedSlot struct {
	gen uint32 // 0: free
}

const (
	fixedUnknown = iota
	fixedSparse  // a sparse table, updated slot by slot
	fixedWhole   // before 5.13: whole sets only
)

// The sparse table has the kernel's maximum of slots (16384), so that
// RegisterBuffers takes as many buffers as it always did. Measured on 6.18,
// such a table costs the kernel about 150 KiB per ring and 200 µs to set
// up (1024 slots: 16 KiB, 20 µs); a loop pays it only once something is
// registered, next to the pinned memory itself.

// errFixedWhole: a kernel before 5.13 has only whole sets of registered
// buffers, which RegisterBuffers owns.
var errFixedWhole = &NotSupportedError{Backend: BackendUring, Feature: "IORING_REGISTER_BUFFERS2 (Linux 5.13), for registered buffers added one at a time"}

// errFixedQuiesce: before 5.13 the only way to register buffers waits for
// the ring to have nothing in flight.
var errFixedQuiesce = &NotSupportedError{Backend: BackendUring, Feature: "IORING_REGISTER_BUFFERS2 (Linux 5.13): the older IORING_REGISTER_BUFFERS waits for every op in flight, and a loop always has its doorbell's read in flight"}

// fixedNoTable lets tests make the kernel refuse sparse tables, as one
// before 5.13 does.
var fixedNoTable bool

// table sets the sparse table up on first use.
func (b *uringBackend) table() error {
	f := &b.fixed
	if f.mode != fixedUnknown {
		return nil
	}
	n := uring.MaxRegisteredBuffers
	var err error = unix.EINVAL
	if !fixedNoTable {
		err = b.ring.RegisterBufferTable(n)
		b.other.Add(1)
	}
	switch {
	case err == nil:
		f.mode = fixedSparse
		f.slots = make([]fixedSlot, n)
	case errors.Is(err, unix.EINVAL):
		b.log.Debug("uio: no sparse registered-buffer table (before Linux 5.13): RegisterBuffers replaces the whole set, AddFixedBuffer is not supported")
		f.mode = fixedWhole
	default:
		return err
	}
	return nil
}

// registerBuffers replaces RegisterBuffers' set: its old slots are emptied,
// then bufs go into a free run of slots.
func (b *uringBackend) registerBuffers(bufs [][]byte) error {
	f := &b.fixed
	if f.mode == fixedUnknown && len(bufs) == 0 {
		return nil
	}
	if err := b.table(); err != nil {
		return err
	}
	if f.mode == fixedWhole {
		// The older IORING_REGISTER_BUFFERS quiesces the ring on those
		// kernels: it waits for every op in flight to complete, and a
		// loop always has one (its doorbell's read), so it would never
		// return. Refused instead; dropping nothing is nothing to do.
		if len(bufs) == 0 {
			return nil
		}
		return errFixedQuiesce
	}
	for i, buf := range bufs {
		if len(buf) == 0 {
			return fmt.Errorf("buffer %d is empty: %w", i, unix.EINVAL)
		}
	}
	if room := f.free() + f.userN; len(bufs) > room {
		// Refused before the old set is touched.
		return fmt.Errorf("%d buffers do not fit in the %d slots of the loop's registered-buffer table that others do not hold: %w",
			len(bufs), room, unix.ENOSPC)
	}
	if f.userN > 0 {
		err := b.ring.UpdateBuffers(f.userOff, make([][]byte, f.userN))
		b.other.Add(1)
		if err != nil {
			return err // the kernel refused to empty slots: nothing changed
		}
		for i := range f.userN {
			f.slots[f.userOff+i] = fixedSlot{}
		}
		f.userN = 0
	}
	if len(bufs) == 0 {
		return nil
	}
	off, ok := f.freeRun(len(bufs))
	if !ok {
		// Enough slots, but not in one run (AddFixedBuffer's are
		// scattered between them): the old set is gone already.
		return fmt.Errorf("%d buffers: no run of that many free slots in the loop's registered-buffer table: %w", len(bufs), unix.ENOSPC)
	}
	err := b.ring.UpdateBuffers(off, bufs)
	b.other.Add(1)
	if err != nil {
		// Take back the slots the kernel filled before the one it refused.
		if err2 := b.ring.UpdateBuffers(off, make([][]byte, len(bufs))); err2 != nil {
			b.log.Error("uio: emptying registered-buffer slots after a failed update", zap.Error(err2))
		}
		b.other.Add(1)
		return err
	}
	for i := range bufs {
		f.slots[off+i] = fixedSlot{gen: f.next()}
	}
	f.userOff, f.userN = off, len(bufs)
	return nil
}

// addFixed puts buf into a free slot of the table.
func (b *uringBackend) addFixed(buf []byte) (uint16, uint32, error) {
	if err := b.table(); err != nil {
		return 0, 0, err
	}
	f := &b.fixed
	if f.mode == fixedWhole {
		return 0, 0, errFixedWhole
	}
	if len(buf) == 0 {
		return 0, 0, fmt.Errorf("empty buffer: %w", unix.EINVAL)
	}
	off, ok := f.freeRun(1)
	if !ok {
		return 0, 0, fmt.Errorf("the loop's registered-buffer table is full (%d slots): %w", len(f.slots), unix.ENOSPC)
	}
	err := b.ring.UpdateBuffers(off, [][]byte{buf})
	b.other.Add(1)
	if err != nil {
		return 0, 0, err
	}
	g := f.next()
	f.slots[off] = fixedSlot{gen: g}
	return uint16(off), g, nil
}

// removeFixed empties the slot addFixed filled, if it still holds that
// buffer.
func (b *uringBackend) removeFixed(slot uint16, gen uint32) error {
	f := &b.fixed
	i := int(slot)
	if gen == 0 || i >= len(f.slots) || f.slots[i].gen != gen || (i >= f.userOff && i < f.userOff+f.userN) {
		return errFixedGone
	}
	err := b.ring.UpdateBuffers(i, [][]byte{nil})
	b.other.Add(1)
	if err != nil {
		return err
	}
	f.slots[i] = fixedSlot{}
	return nil
}

// fixedOp counts an op sent as READ_FIXED or WRITE_FIXED.
func (f *uringFixed) fixedOp() { f.ops++ }

func (f *uringFixed) publish() {
	f.pub.publish(f.ops)
}

func (f *uringFixed) next() uint32 {
	f.gen++
	if f.gen == 0 {
		f.gen = 1
	}
	return f.gen
}

// freeRun finds n consecutive free slots, first fit.
func (f *uringFixed) freeRun(n int) (int, bool) {
	run := 0
	for i, s := range f.slots {
		if s.gen != 0 {
			run = 0
			continue
		}
		if run++; run == n {
			return i - n + 1, true
		}
	}
	return 0, false
}

func (f *uringFixed) free() int {
	n := 0
	for _, s := range f.slots {
		if s.gen == 0 {
			n++
		}
	}
	return n
}
