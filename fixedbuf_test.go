package uio

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func mmapTest(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// fixedProbe writes buf to fd and reads it back through the loop and
// reports how many of the two went out as fixed ops.
func fixedProbe(t *testing.T, l *Loop, fd int, buf []byte) uint64 {
	t.Helper()
	before := l.Stats().FixedBufferOps
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	want := bytes.Clone(buf)
	if r := mustDo(t, l, Op{Kind: OpWrite, Fd: fd, Buf: buf, Offset: 0}); r.Res != int32(len(buf)) {
		t.Fatalf("write = %d", r.Res)
	}
	clear(buf)
	if r := mustDo(t, l, Op{Kind: OpRead, Fd: fd, Buf: buf, Offset: 0}); r.Res != int32(len(buf)) || !bytes.Equal(buf, want) {
		t.Fatalf("read = %d, data equal %v", r.Res, bytes.Equal(buf, want))
	}
	return l.Stats().FixedBufferOps - before
}

// Buffers added one at a time and RegisterBuffers' set share the loop's
// table without disturbing each other.
func TestFixedBuffersCompose(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fd := int(f.Fd())
		arena := mmapTest(t, 64<<10)
		fb, err := l.AddFixedBuffer(arena)
		if l.Backend() == BackendAIO {
			if !errors.Is(err, ErrNotSupported) {
				t.Fatalf("AddFixedBuffer on AIO = %v, want ErrNotSupported", err)
			}
			if err := l.RegisterBuffers([][]byte{arena}); err != nil {
				t.Fatal(err)
			}
			if n := fixedProbe(t, l, fd, arena[:4096]); n != 0 {
				t.Fatalf("%d fixed ops on AIO", n)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		user := mmapTest(t, 32<<10)
		if err := l.RegisterBuffers([][]byte{user[:16<<10], user[16<<10:]}); err != nil {
			t.Fatal(err)
		}
		if n := fixedProbe(t, l, fd, arena[8192:16384]); n != 2 {
			t.Fatalf("added buffer: %d fixed ops, want 2", n)
		}
		if n := fixedProbe(t, l, fd, user[16<<10:20<<10]); n != 2 {
			t.Fatalf("RegisterBuffers' set: %d fixed ops, want 2", n)
		}
		// Replacing the set leaves the added buffer alone.
		other := mmapTest(t, 8192)
		if err := l.RegisterBuffers([][]byte{other}); err != nil {
			t.Fatal(err)
		}
		if n := fixedProbe(t, l, fd, user[:4096]); n != 0 {
			t.Fatalf("replaced set: %d fixed ops, want 0", n)
		}
		if n := fixedProbe(t, l, fd, other[4096:]); n != 2 {
			t.Fatalf("new set: %d fixed ops, want 2", n)
		}
		fb2, err := l.AddFixedBuffer(user)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.RegisterBuffers(nil); err != nil {
			t.Fatal(err)
		}
		if n := fixedProbe(t, l, fd, other); n != 0 {
			t.Fatalf("set dropped: %d fixed ops, want 0", n)
		}
		if n := fixedProbe(t, l, fd, arena[:4096]); n != 2 {
			t.Fatalf("added buffer after the set was dropped: %d fixed ops, want 2", n)
		}
		if n := fixedProbe(t, l, fd, user[:4096]); n != 2 {
			t.Fatalf("second added buffer: %d fixed ops, want 2", n)
		}
		// Removing one leaves the other.
		if err := l.RemoveFixedBuffer(fb); err != nil {
			t.Fatal(err)
		}
		if n := fixedProbe(t, l, fd, arena[:4096]); n != 0 {
			t.Fatalf("removed buffer: %d fixed ops, want 0", n)
		}
		if n := fixedProbe(t, l, fd, user[:4096]); n != 2 {
			t.Fatalf("the buffer still added: %d fixed ops, want 2", n)
		}
		if err := l.RemoveFixedBuffer(fb); err == nil {
			t.Fatal("a second RemoveFixedBuffer succeeded")
		}
		if err := l.RemoveFixedBuffer(FixedBuffer{}); err == nil {
			t.Fatal("RemoveFixedBuffer of the zero FixedBuffer succeeded")
		}
		// The freed slot is reused; the old handle does not name the new buffer.
		fb3, err := l.AddFixedBuffer(arena)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.RemoveFixedBuffer(fb); err == nil {
			t.Fatal("a stale FixedBuffer removed its slot's new buffer")
		}
		for _, b := range []FixedBuffer{fb2, fb3} {
			if err := l.RemoveFixedBuffer(b); err != nil {
				t.Fatal(err)
			}
		}
		// A set too big for the table is refused and the old one stays.
		if err := l.RegisterBuffers([][]byte{other}); err != nil {
			t.Fatal(err)
		}
		keep, err := l.AddFixedBuffer(arena)
		if err != nil {
			t.Fatal(err)
		}
		tiny := make([]byte, 16384)
		huge := make([][]byte, 16384) // one more than the slots keep leaves
		for i := range huge {
			huge[i] = tiny[i : i+1]
		}
		if err := l.RegisterBuffers(huge); !errors.Is(err, unix.ENOSPC) {
			t.Fatalf("RegisterBuffers of 16384 beside an added buffer = %v, want ENOSPC", err)
		}
		if n := fixedProbe(t, l, fd, other[:4096]); n != 2 {
			t.Fatalf("the set after a refused replacement: %d fixed ops, want 2", n)
		}
		if err := l.RemoveFixedBuffer(keep); err != nil {
			t.Fatal(err)
		}
		if err := l.RegisterBuffers(nil); err != nil {
			t.Fatal(err)
		}
		// Bad input.
		if err := l.RegisterBuffers([][]byte{arena, {}}); !errors.Is(err, unix.EINVAL) {
			t.Fatalf("RegisterBuffers with an empty buffer = %v, want EINVAL", err)
		}
		if _, err := l.AddFixedBuffer(nil); !errors.Is(err, unix.EINVAL) {
			t.Fatalf("AddFixedBuffer(nil) = %v, want EINVAL", err)
		}
		l2, err := NewLoop(Config{Backend: BackendUring})
		if err != nil {
			t.Fatal(err)
		}
		defer l2.Close()
		fb4, err := l2.AddFixedBuffer(arena)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.RemoveFixedBuffer(fb4); err == nil {
			t.Fatal("a loop removed another loop's FixedBuffer")
		}
	})
}

// Before Linux 5.13 (no sparse tables) neither RegisterBuffers nor
// AddFixedBuffer registers anything: the only registration there waits for
// the ring to have no op in flight, which a loop never reaches (its
// doorbell's read is always in flight), so it would hang the loop. Both say
// it is not supported, and ops go out plain.
func TestFixedBuffersNoTable(t *testing.T) {
	fixedNoTable = true
	defer func() { fixedNoTable = false }()
	l, err := NewLoop(Config{Backend: BackendUring, NoDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.AddFixedBuffer(mmapTest(t, 4096)); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("AddFixedBuffer = %v, want ErrNotSupported", err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := mmapTest(t, 8192)
	if err := l.RegisterBuffers([][]byte{a}); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("RegisterBuffers = %v, want ErrNotSupported", err)
	}
	if n := fixedProbe(t, l, int(f.Fd()), a[:4096]); n != 0 {
		t.Fatalf("%d fixed ops without a table, want 0", n)
	}
	if err := l.RegisterBuffers(nil); err != nil {
		t.Fatalf("RegisterBuffers(nil) = %v, want nil (nothing to drop)", err)
	}
}
