package uring

import (
	"bytes"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFixedFiles: a slot filled from an fd is read through IOSQE_FIXED_FILE,
// keeps working after the fd itself is closed (the table holds the file),
// and reads EBADF once emptied.
func TestFixedFiles(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		if err := r.RegisterFilesSparse(8); err != nil {
			t.Fatalf("RegisterFilesSparse(8): %v", err)
		}
		if r.Files() != 8 {
			t.Fatalf("Files() = %d, want 8", r.Files())
		}
		// Not tempFile: this fd is closed by the test, and a cleanup
		// closing its number again could close someone else's file.
		fd, err := unix.Open(t.TempDir()+"/f", unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		want := []byte("registered file contents")
		mustWrite(t, fd, want)
		if n, err := r.UpdateFiles(3, []int32{int32(fd)}); err != nil || n != 1 {
			t.Fatalf("UpdateFiles(3, fd %d) = %d, %v", fd, n, err)
		}
		read := func(ud uint64) (CQE, []byte) {
			t.Helper()
			buf := make([]byte, 64)
			s := sqe(t, r, ud)
			s.PrepRead(-1, buf, 0) // the fd field is overwritten with the slot
			s.SetFixedFile(3)
			submit(t, r)
			c := reapOne(t, r)
			if c.Res > 0 {
				buf = buf[:c.Res]
			}
			return c, buf
		}
		if c, got := read(1); c.Res != int32(len(want)) || !bytes.Equal(got, want) {
			t.Fatalf("fixed read: res %d (%v), %q; want %q", c.Res, c.Err(), got, want)
		}
		// The table has its own reference: with the fd closed, slot 3 is
		// still the file.
		unix.Close(fd)
		if c, got := read(2); c.Res != int32(len(want)) || !bytes.Equal(got, want) {
			t.Fatalf("fixed read after close(fd): res %d (%v), %q; want %q", c.Res, c.Err(), got, want)
		}
		if n, err := r.UpdateFiles(3, []int32{-1}); err != nil || n != 1 {
			t.Fatalf("UpdateFiles(3, -1) = %d, %v", n, err)
		}
		if c, _ := read(3); c.Res != -int32(unix.EBADF) {
			t.Fatalf("read of an emptied slot: res %d (%v), want EBADF", c.Res, c.Err())
		}
		if err := r.UnregisterFiles(); err != nil {
			t.Fatalf("UnregisterFiles: %v", err)
		}
		if r.Files() != 0 {
			t.Fatalf("Files() after UnregisterFiles = %d", r.Files())
		}
	})
}

// TestFixedFilesErrors: bad arguments fail with the errno the kernel would
// give, naming the call, and a table with its fds in it works.
func TestFixedFilesErrors(t *testing.T) {
	r := newRing(t, 8, 0)
	if _, err := r.UpdateFiles(0, []int32{-1}); !isErrno(err, unix.ENXIO) {
		t.Fatalf("UpdateFiles with no table: %v, want ENXIO", err)
	}
	if err := r.RegisterFilesSparse(0); !isErrno(err, unix.EINVAL) {
		t.Fatalf("RegisterFilesSparse(0): %v, want EINVAL", err)
	}
	if err := r.RegisterFiles(nil); !isErrno(err, unix.EINVAL) {
		t.Fatalf("RegisterFiles(nil): %v, want EINVAL", err)
	}
	// The kernel refuses an io_uring in a file table (a reference cycle).
	if err := r.RegisterFiles([]int32{int32(r.fd)}); !isErrno(err, unix.EBADF) {
		t.Fatalf("RegisterFiles(the ring's own fd): %v, want EBADF", err)
	}
	if err := r.RegisterFiles([]int32{1 << 30}); !isErrno(err, unix.EBADF) {
		t.Fatalf("RegisterFiles(no such fd): %v, want EBADF", err)
	}
	// The fallback of RegisterFilesSparse before 5.19: empty slots as -1.
	a, b := socketpair(t, unix.SOCK_STREAM)
	if err := r.RegisterFiles([]int32{-1, int32(a), -1, int32(b)}); err != nil {
		t.Fatalf("RegisterFiles(-1, a, -1, b): %v", err)
	}
	if err := r.RegisterFilesSparse(4); !isErrno(err, unix.EBUSY) {
		t.Fatalf("second table: %v, want EBUSY", err)
	}
	if _, err := r.UpdateFiles(3, []int32{-1, -1}); !isErrno(err, unix.EINVAL) {
		t.Fatalf("UpdateFiles past the table: %v, want EINVAL", err)
	}
	if _, err := r.UpdateFiles(2, []int32{int32(r.fd)}); !isErrno(err, unix.EBADF) {
		t.Fatalf("UpdateFiles(the ring's own fd): %v, want EBADF", err)
	}
	// A send on slot 1 and a recv on slot 3: the socketpair's two ends.
	msg := []byte("through the table")
	s := sqe(t, r, 1)
	s.PrepSend(-1, msg, unix.MSG_NOSIGNAL)
	s.SetFixedFile(1)
	buf := make([]byte, 64)
	s = sqe(t, r, 2)
	s.PrepRecv(-1, buf, 0)
	s.SetFixedFile(3)
	submit(t, r)
	m := byData(t, reap(t, r, 2, 5*time.Second))
	wantRes(t, m.get(t, 1), int32(len(msg)))
	wantRes(t, m.get(t, 2), int32(len(msg)))
	if !bytes.Equal(buf[:len(msg)], msg) {
		t.Fatalf("recv through slot 3: %q, want %q", buf[:len(msg)], msg)
	}
	// CLOSE of a slot empties it and leaves the fd open.
	s = sqe(t, r, 3)
	s.PrepCloseFixed(1)
	submit(t, r)
	if c := reapOne(t, r); c.Res != 0 {
		if c.Res == -int32(unix.EINVAL) {
			t.Skip("IORING_OP_CLOSE of a slot needs Linux 5.15")
		}
		t.Fatalf("close of slot 1: res %d (%v)", c.Res, c.Err())
	}
	s = sqe(t, r, 4)
	s.PrepSend(-1, msg, unix.MSG_NOSIGNAL)
	s.SetFixedFile(1)
	submit(t, r)
	wantRes(t, reapOne(t, r), -int32(unix.EBADF))
	if n, err := unix.Write(a, msg); err != nil || n != len(msg) {
		t.Fatalf("write(a) after closing its slot: %d, %v (the fd must stay open)", n, err)
	}
}

// TestFixedFileSplice: SPLICE takes its input from a slot with
// SetFixedFileIn and its output from one with SetFixedFile.
func TestFixedFileSplice(t *testing.T) {
	r := newRing(t, 8, 0)
	if !r.OpSupported(IORING_OP_SPLICE) {
		t.Skip("no IORING_OP_SPLICE")
	}
	fd := tempFile(t)
	want := []byte("spliced from a fixed file")
	mustWrite(t, fd, want)
	pr, pw := pipe(t)
	if err := r.RegisterFiles([]int32{int32(fd), int32(pw)}); err != nil {
		t.Fatal(err)
	}
	s := sqe(t, r, 1)
	s.PrepSplice(-1, 0, -1, -1, uint32(len(want)), 0)
	s.SetFixedFileIn(0)
	s.SetFixedFile(1)
	submit(t, r)
	wantRes(t, reapOne(t, r), int32(len(want)))
	if got := mustRead(t, pr, 64); !bytes.Equal(got, want) {
		t.Fatalf("pipe got %q, want %q", got, want)
	}
}
