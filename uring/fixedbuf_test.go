package uring

import (
	"bytes"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func mmapT(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// A sparse table is filled and emptied slot by slot; READ_FIXED and
// WRITE_FIXED work on what is in it, and the mirror follows the kernel.
func TestBufferTable(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		name := "sparse"
		if legacy {
			name = "empty-iovecs" // the 5.13-5.18 way
		}
		t.Run(name, func(t *testing.T) {
			sparseFlagRefused = legacy
			defer func() { sparseFlagRefused = false }()
			r := newRing(t, 8, 0)
			if err := r.UpdateBuffers(0, [][]byte{make([]byte, 1)}); !isErrno(err, unix.ENXIO) {
				t.Fatalf("UpdateBuffers without a table = %v, want ENXIO", err)
			}
			if err := r.RegisterBufferTable(16); err != nil {
				t.Fatal(err)
			}
			if err := r.RegisterBufferTable(16); !isErrno(err, unix.EBUSY) {
				t.Fatalf("a second table = %v, want EBUSY", err)
			}
			if r.BufferTableSize() != 16 {
				t.Fatalf("BufferTableSize = %d", r.BufferTableSize())
			}
			a, b := mmapT(t, 8192), mmapT(t, 4096)
			if err := r.UpdateBuffers(3, [][]byte{a, nil, b}); err != nil {
				t.Fatal(err)
			}
			if idx, ok := r.FixedBuffer(a[4096:]); !ok || idx != 3 {
				t.Fatalf("FixedBuffer(a) = %d %v", idx, ok)
			}
			if idx, ok := r.FixedBuffer(b[:10]); !ok || idx != 5 {
				t.Fatalf("FixedBuffer(b) = %d %v", idx, ok)
			}
			fd := tempFile(t)
			copy(a, "fixed write")
			sqe(t, r, 1).PrepWriteFixed(fd, a[:4096], 0, 3)
			submit(t, r)
			wantRes(t, reapOne(t, r), 4096)
			sqe(t, r, 2).PrepReadFixed(fd, b, 0, 5)
			submit(t, r)
			wantRes(t, reapOne(t, r), 4096)
			if !bytes.Equal(b[:11], []byte("fixed write")) {
				t.Fatalf("read back %q", b[:11])
			}
			// Emptied: the mirror forgets it and the kernel refuses it.
			if err := r.UpdateBuffers(3, [][]byte{nil}); err != nil {
				t.Fatal(err)
			}
			if _, ok := r.FixedBuffer(a); ok {
				t.Fatal("emptied slot still mirrored")
			}
			sqe(t, r, 3).PrepReadFixed(fd, a[:4096], 0, 3)
			submit(t, r)
			if c := reapOne(t, r); c.Res >= 0 {
				t.Fatalf("READ_FIXED on an empty slot = %d, want an error", c.Res)
			}
			if err := r.UpdateBuffers(15, [][]byte{a, b}); !isErrno(err, unix.EINVAL) {
				t.Fatalf("update past the table = %v, want EINVAL", err)
			}
			runtime.KeepAlive(a)
			if err := r.UnregisterBuffers(); err != nil {
				t.Fatal(err)
			}
			if _, ok := r.FixedBuffer(b); ok || r.BufferTableSize() != 0 {
				t.Fatal("table still mirrored after UnregisterBuffers")
			}
		})
	}
}

// An update that fails part way updates (and mirrors) the slots before the
// bad buffer and reports the kernel's error for it.
func TestUpdateBuffersPartial(t *testing.T) {
	r := newRing(t, 8, 0)
	if err := r.RegisterBufferTable(4); err != nil {
		t.Fatal(err)
	}
	good := mmapT(t, 4096)
	bad, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	unix.Munmap(bad) // the kernel cannot pin it; Go never touches it
	err = r.UpdateBuffers(0, [][]byte{good, bad})
	if !isErrno(err, unix.EFAULT) {
		t.Fatalf("update with an unmapped buffer = %v, want EFAULT", err)
	}
	if idx, ok := r.FixedBuffer(good); !ok || idx != 0 {
		t.Fatalf("the good buffer before the bad one: FixedBuffer = %d %v", idx, ok)
	}
	if _, ok := r.FixedBuffer(bad); ok {
		t.Fatal("the bad buffer is mirrored")
	}
	// A slice header only: checked before the kernel or Go touch it.
	if err := r.UpdateBuffers(1, [][]byte{unsafe.Slice(&good[0], MaxRegisteredBuffer+1)}); !isErrno(err, unix.EINVAL) {
		t.Fatalf("a buffer over 1 GiB = %v, want EINVAL", err)
	}
}
