package uio

import (
	"errors"
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio/uring"
)

// Registered files. RegisterFile puts an fd in the kernel's table of
// registered files (io_uring's fixed files); from then on every op on that
// fd goes out naming its slot (IOSQE_FIXED_FILE) instead of the fd, so the
// kernel takes the file from the table rather than looking the fd up and
// taking and dropping a reference on the file for each op (an io_uring op
// may outlive the syscall that submitted it, so it always holds one). The
// caller goes on using the fd number: the engine maps it to the slot.
//
// What it saves is small next to an op's own cost. Measured on Linux 6.18
// (2 shared cores; BenchmarkFixedFileReads and BenchmarkFixedFileSockets,
// the process's CPU time per op, paired medians of 10 and 20 interleaved
// rounds): cached reads with 64 in flight took 6-11% less CPU registered
// (4 KiB and 64-byte reads alike); one read at a time, a Do through the
// loop, and send/recv pairs on sockets showed no difference beyond the
// noise (paired medians 0.90-1.05, plain/registered).
//
// The table is created at the first RegisterFile with Config.Files slots
// (IORING_REGISTER_FILES2, Linux 5.13; older kernels get an error wrapping
// ErrNotSupported and the fds work unregistered). Slots are reused as fds
// are unregistered. On AIO nothing is registered: the calls succeed and
// change nothing.

// DefaultFiles is the size of a loop's registered file table when
// Config.Files is 0.
const DefaultFiles = 1024

// MaxFiles is the largest registered file table (the kernel's
// IORING_MAX_FIXED_FILES since Linux 5.15; it also caps a table at
// RLIMIT_NOFILE).
const MaxFiles = 1 << 20

// ErrFileTableFull is matched (errors.Is) by the error RegisterFile returns
// when every slot of the loop's registered file table is taken. The fd
// works as before, unregistered.
var ErrFileTableFull = errors.New("uio: registered file table full")

// tableFullError is ErrFileTableFull with the table's size.
type tableFullError struct{ size uint32 }

func (e tableFullError) Error() string {
	return fmt.Sprintf("registered file table full: all %d slots are in use (Config.Files); the fd goes on unregistered", e.size)
}

func (e tableFullError) Is(target error) bool { return target == ErrFileTableFull }

// checkFiles validates Config.Files and applies its default.
func (cfg *Config) checkFiles() error {
	if cfg.Files < 0 || cfg.Files > MaxFiles {
		return fmt.Errorf("uio: Config.Files %d: want 0 (default %d) to %d slots", cfg.Files, DefaultFiles, MaxFiles)
	}
	if cfg.Files == 0 {
		cfg.Files = DefaultFiles
	}
	return nil
}

// RegisterFile registers fd with the loop's backend (see Config.Files):
// on io_uring every op on fd from then on uses the registered file. It
// does nothing for an fd that is already registered, and on AIO. When the
// table is full it returns an error matching ErrFileTableFull and fd works
// as before.
//
// The table holds its own reference to the file. Before closing fd with
// close(2) (os.File.Close, unix.Close), call UnregisterFile: a closed fd
// still registered keeps its file open (a socket sends no FIN), and ops on
// a new file that reuses the fd number would act on the old file. An
// OpClose of a registered fd unregisters it itself.
//
// Only ops that go through the loop use the table: a Do that runs as a
// plain syscall on its caller's goroutine (see Config.NoDirect), and an op
// offloaded to a blocking syscall, use the fd itself.
//
// Call it from any goroutine but the loop's (it waits for the loop, as Do
// does; from the loop's own code it returns ErrWaitOnLoop, and that code
// has Handle.RegisterFile).
func (l *Loop) RegisterFile(fd int) error {
	return l.waitOnLoop(func() error { return l.registerFile(fd) })
}

// UnregisterFile takes fd out of the loop's registered file table: ops on
// it go out plain again. Ops already in the kernel keep the file they
// took; ops submitted before it are handed to the kernel first, so they
// still find it (a kernel-linked chain's members after its head name
// their fds plainly: the kernel would look a slot up only when it starts
// them, when it may hold another file). The table's own reference to the file goes when the
// kernel lets it: at once on 6.18, but on 6.1 (measured) only once the ops
// that were in flight when the slot was emptied have completed, so a
// socket closed with a plain close(2) may show its peer end of stream
// only later. It does nothing for an fd that is not registered, and on
// AIO. Call it from any goroutine but the loop's (there it returns
// ErrWaitOnLoop; the loop's own code has Handle.UnregisterFile).
func (l *Loop) UnregisterFile(fd int) error {
	return l.waitOnLoop(func() error { return l.unregisterFile(fd) })
}

// RegisterFile is Loop.RegisterFile for the loop's own code (a proxy
// registering the socket its accept's Done got), which Loop.RegisterFile
// would deadlock: it waits for the loop.
func (h Handle) RegisterFile(fd int) error {
	if err := h.check(); err != nil {
		return err
	}
	return h.l.registerFile(fd)
}

// UnregisterFile is Loop.UnregisterFile for the loop's own code.
func (h Handle) UnregisterFile(fd int) error {
	if err := h.check(); err != nil {
		return err
	}
	return h.l.unregisterFile(fd)
}

// registerFile is RegisterFile on the loop's goroutine.
func (l *Loop) registerFile(fd int) error {
	if fd < 0 {
		return fmt.Errorf("uio: RegisterFile(fd %d): invalid fd", fd)
	}
	if err := l.b.registerFile(fd, l.files); err != nil {
		return fmt.Errorf("uio: RegisterFile(fd %d): %w", fd, err)
	}
	return nil
}

// unregisterFile is UnregisterFile on the loop's goroutine.
func (l *Loop) unregisterFile(fd int) error {
	if !l.b.fileRegistered(fd) {
		return nil
	}
	// SQEs staged this round may name fd's slot: the kernel takes their
	// file when it is handed them, so they go now, while the slot still
	// holds it.
	l.flush()
	if err := l.b.unregisterFile(fd); err != nil {
		return fmt.Errorf("uio: UnregisterFile(fd %d): %w", fd, err)
	}
	return nil
}

// closeFixed unregisters the fd an OpClose is about to close: IORING_OP_CLOSE
// of a registered file would close only its slot (and refuses
// IOSQE_FIXED_FILE), and a plain close would leave the table's reference.
func (l *Loop) closeFixed(fd int) {
	if err := l.unregisterFile(fd); err != nil {
		l.log.Error("uio: close of a registered fd", zap.Int("fd", fd), zap.Error(err))
	}
}

// fileTable is the io_uring backend's map from fds to slots of the
// kernel's registered file table.
type fileTable struct {
	size   uint32   // slots in the kernel's table; 0 until the first registration creates it
	slotOf []uint32 // by fd: 1 + its slot; 0: not registered
	n      int      // fds registered
	used   uint32   // slots 0..used-1 have been handed out at least once
	free   []uint32 // emptied slots, reused last freed first
	// limbo holds slots emptied while SQEs naming them were still staged
	// (the kernel did not take a whole flush): they are reused only once
	// the SQ is empty, so no staged op can meet another file in its slot.
	limbo []uint32
	// unsupported: the kernel has no IORING_REGISTER_FILES2; every
	// RegisterFile fails with it at once.
	unsupported error
	one         [1]int32 // UpdateFiles' argument

	ops uint64  // ops sent with a fixed file
	pub counter // ops, as of the last flush (Stats.FixedFileOps)
}

func (t *fileTable) lookup(fd int) (uint32, bool) {
	if fd < 0 || fd >= len(t.slotOf) || t.slotOf[fd] == 0 {
		return 0, false
	}
	return t.slotOf[fd] - 1, true
}

// take hands out a free slot.
func (t *fileTable) take(sqEmpty bool) (uint32, bool) {
	if sqEmpty && len(t.limbo) > 0 {
		t.free = append(t.free, t.limbo...)
		t.limbo = t.limbo[:0]
	}
	if n := len(t.free); n > 0 {
		slot := t.free[n-1]
		t.free = t.free[:n-1]
		return slot, true
	}
	if t.used < t.size {
		t.used++
		return t.used - 1, true
	}
	return 0, false
}

// publish makes the count of fixed-file ops visible to Stats; called once
// per flush, not per op.
func (t *fileTable) publish() {
	t.pub.publish(t.ops)
}

func (b *uringBackend) fileRegistered(fd int) bool {
	_, ok := b.files.lookup(fd)
	return ok
}

// registerFile puts fd in a free slot of the table, creating the table of
// size slots first if there is none yet.
func (b *uringBackend) registerFile(fd, size int) error {
	t := &b.files
	if _, ok := t.lookup(fd); ok {
		return nil
	}
	if t.size == 0 {
		if t.unsupported != nil {
			return t.unsupported
		}
		err := b.ring.RegisterFilesSparse(uint32(size))
		if h := testHooks.Load(); h != nil && h.filesRefused != nil {
			err = h.filesRefused
		}
		b.other.Add(1)
		switch {
		case errors.Is(err, unix.EINVAL):
			// Before 5.13. The older IORING_REGISTER_FILES would wait
			// for every op in flight, the doorbell's read included:
			// forever.
			t.unsupported = fmt.Errorf("registered files need IORING_REGISTER_FILES2 (Linux 5.13): %w (%w)", ErrNotSupported, err)
			return t.unsupported
		case errors.Is(err, unix.EMFILE):
			return fmt.Errorf("a table of %d slots (Config.Files) is more than RLIMIT_NOFILE or the kernel allows: %w", size, err)
		case err != nil:
			return fmt.Errorf("a table of %d slots (Config.Files): %w", size, err)
		}
		t.size = uint32(size)
	}
	slot, ok := t.take(b.ring.SQReady() == 0)
	if !ok {
		return tableFullError{t.size}
	}
	t.one[0] = int32(fd)
	_, err := b.ring.UpdateFiles(slot, t.one[:])
	b.other.Add(1)
	if err != nil {
		t.free = append(t.free, slot) // still empty: the update failed
		return err                    // EBADF for an fd that is not open
	}
	if fd >= len(t.slotOf) {
		t.slotOf = append(t.slotOf, make([]uint32, fd+1-len(t.slotOf))...)
	}
	t.slotOf[fd] = slot + 1
	t.n++
	return nil
}

// unregisterFile empties fd's slot. The loop has handed the staged SQEs to
// the kernel first.
func (b *uringBackend) unregisterFile(fd int) error {
	t := &b.files
	slot, ok := t.lookup(fd)
	if !ok {
		return nil
	}
	// From here on fd means the fd, whatever the kernel says below: the
	// number may be closed and reused as soon as this returns.
	t.slotOf[fd] = 0
	t.n--
	t.one[0] = -1
	_, err := b.ring.UpdateFiles(slot, t.one[:])
	b.other.Add(1)
	switch {
	case err != nil:
		// The slot may still hold the file: it is never handed out again.
		return err
	case b.ring.SQReady() > 0:
		t.limbo = append(t.limbo, slot)
	default:
		t.free = append(t.free, slot)
	}
	return nil
}

// useFixedFile makes a prepared SQE name the registered slots of the op's
// fds instead of the fds.
func (b *uringBackend) useFixedFile(sqe *uring.SQE, op *Op) {
	t := &b.files
	if t.n == 0 {
		return
	}
	switch op.Kind {
	case OpOpenat, OpClose:
		// Openat's Fd is a directory, which the kernel takes as an fd
		// only; a close of a registered fd was unregistered first
		// (closeFixed), and CLOSE refuses IOSQE_FIXED_FILE.
		return
	case OpSplice:
		// The SQE's fd is the output; the input has a flag of its own.
		in, inOK := t.lookup(op.Fd)
		out, outOK := t.lookup(op.FdOut)
		if inOK {
			sqe.SetFixedFileIn(in)
		}
		if outOK {
			sqe.SetFixedFile(out)
		}
		if inOK || outOK {
			t.ops++
		}
		return
	}
	if slot, ok := t.lookup(op.Fd); ok {
		sqe.SetFixedFile(slot)
		t.ops++
	}
}

// AIO has no registered files: every op looks its fd up.
func (b *aioBackend) registerFile(fd, size int) error { return nil }
func (b *aioBackend) unregisterFile(fd int) error     { return nil }
func (b *aioBackend) fileRegistered(fd int) bool      { return false }
