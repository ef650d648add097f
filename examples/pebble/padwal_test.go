package diofs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"
	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

// padWAL is a test-only prototype of a dio change, used by BenchmarkFillseq
// with FILLSEQ_EXTRA=1 to measure it without editing dio: an O_DIRECT
// append-only file whose Sync writes the padded tail block and fdatasyncs,
// chained on the loop in one round trip, and does NOT ftruncate the
// padding away. The file's size on disk is the logical size rounded up to
// the block until Close fixes it; Pebble's WAL reader stops at the zeroed
// chunk. What dio.File.Sync did instead (ftruncate to a mid-block size
// every time, still done with dio.Options.ExactSizeOnSync) makes ext4
// read the tail block into the page cache to zero it, dirty the inode,
// and write that page back on the next fdatasync. dio now keeps the
// padding by default, as this prototype does.
//
// Only what Pebble does to a WAL it writes is supported: Write, Sync*,
// Stat, Close. A full chunk is written synchronously (a prototype).
type padWAL struct {
	l       *uio.Loop // nil: plain syscalls on the caller's goroutine
	fd      int
	name    string
	buf     []byte // file bytes [base, base+n), page aligned
	base    int64
	n       int
	flushed int // aligned prefix of buf already on disk
	size    int64
	err     error
}

const padBlock = 4096
const padChunk = 256 << 10

func openPadWAL(l *uio.Loop, name string) (*padWAL, error) {
	if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	fd, err := unix.Open(name, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC|unix.O_DIRECT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	buf, err := unix.Mmap(-1, 0, padChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &padWAL{l: l, fd: fd, name: name, buf: buf}, nil
}

// writeSync writes b at off and, if sync, fdatasyncs: one loop round trip
// (the fdatasync is submitted from the write's Done), or two syscalls.
func (w *padWAL) writeSync(b []byte, off int64, sync bool) error {
	if w.l == nil {
		if _, err := unix.Pwrite(w.fd, b, off); err != nil {
			return err
		}
		if sync {
			return unix.Fdatasync(w.fd)
		}
		return nil
	}
	ch := make(chan int32, 1)
	err := w.l.Post(func(h uio.Handle) {
		_, err := h.Start(uio.Op{Kind: uio.OpWrite, Fd: w.fd, Buf: b, Offset: off, Done: func(h uio.Handle, r uio.Result) {
			if int(r.Res) != len(b) {
				ch <- min(r.Res, -int32(unix.EIO))
				return
			}
			if !sync {
				ch <- 0
				return
			}
			if _, err := h.Start(uio.Op{Kind: uio.OpFdatasync, Fd: w.fd, Done: func(h uio.Handle, r uio.Result) { ch <- r.Res }}); err != nil {
				ch <- -int32(unix.ECANCELED)
			}
		}})
		if err != nil {
			ch <- -int32(unix.ECANCELED)
		}
	})
	if err != nil {
		return err
	}
	if r := <-ch; r < 0 {
		return unix.Errno(-r)
	}
	return nil
}

func (w *padWAL) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for n < len(p) {
		k := copy(w.buf[w.n:], p[n:])
		w.n, w.size, n = w.n+k, w.size+int64(k), n+k
		if w.n == len(w.buf) {
			if w.err = w.writeSync(w.buf[w.flushed:], w.base+int64(w.flushed), false); w.err != nil {
				return n, w.err
			}
			w.base, w.n, w.flushed = w.base+int64(len(w.buf)), 0, 0
		}
	}
	return n, nil
}

func (w *padWAL) flush(sync bool) error {
	if w.err != nil {
		return w.err
	}
	end := (w.n + padBlock - 1) &^ (padBlock - 1)
	if end > w.flushed {
		clear(w.buf[w.n:end])
		w.err = w.writeSync(w.buf[w.flushed:end], w.base+int64(w.flushed), sync)
		w.flushed = w.n &^ (padBlock - 1)
	} else if sync {
		w.err = w.writeSyncOnly()
	}
	return w.err
}

func (w *padWAL) writeSyncOnly() error {
	if w.l == nil {
		return unix.Fdatasync(w.fd)
	}
	r, err := w.l.Do(context.Background(), uio.Op{Kind: uio.OpFdatasync, Fd: w.fd})
	if err == nil && r.Res < 0 {
		err = unix.Errno(-r.Res)
	}
	return err
}

func (w *padWAL) Sync() error                       { return w.flush(true) }
func (w *padWAL) SyncData() error                   { return w.flush(true) }
func (w *padWAL) SyncTo(int64) (bool, error)        { return true, w.flush(true) }
func (w *padWAL) Preallocate(off, n int64) error    { return nil }
func (w *padWAL) Prefetch(off, n int64) error       { return nil }
func (w *padWAL) Fd() uintptr                       { return uintptr(w.fd) }
func (w *padWAL) Read([]byte) (int, error)          { return 0, errors.ErrUnsupported }
func (w *padWAL) ReadAt([]byte, int64) (int, error) { return 0, errors.ErrUnsupported }
func (w *padWAL) WriteAt([]byte, int64) (int, error) {
	return 0, errors.ErrUnsupported
}

func (w *padWAL) Stat() (os.FileInfo, error) {
	fi, err := os.Stat(w.name)
	if err != nil {
		return nil, err
	}
	return fileInfo{fi, w.size}, nil
}

func (w *padWAL) Close() error {
	err := w.flush(false)
	if err == nil {
		err = unix.Ftruncate(w.fd, w.size)
	}
	if err2 := unix.Close(w.fd); err == nil {
		err = err2
	}
	unix.Munmap(w.buf)
	return err
}

// padWALFS is FS with the WAL files (*.log) written by padWAL.
type padWALFS struct {
	*FS
	l *uio.Loop // for padWAL; nil: plain syscalls
}

func (p padWALFS) Create(name string) (vfs.File, error) {
	if strings.HasSuffix(name, ".log") {
		return openPadWAL(p.l, name)
	}
	return p.FS.Create(name)
}

func (p padWALFS) ReuseForWrite(oldname, newname string) (vfs.File, error) {
	if err := os.Remove(oldname); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return p.Create(newname)
}

// TestPadWALRecovery checks the premise of padWAL, and of dio keeping the
// padding between Syncs: a WAL (and MANIFEST) left with zero padding past
// the last record (a crash before Close) replays cleanly. The DB directory
// is copied while the DB is open, after synced writes. It runs with the
// padWAL prototype and with plain dio files (this package's FS).
func TestPadWALRecovery(t *testing.T) {
	l, err := uio.NewLoop(uio.Config{Backend: uio.BackendAIO})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, v := range []struct {
		name  string
		fs    vfs.FS
		block int // the WAL's size is a multiple of it while open
	}{
		{"padwal", padWALFS{FS: New(l, nil), l: l}, padBlock},
		{"dio", New(l, nil), 512},
	} {
		t.Run(v.name, func(t *testing.T) { testPadRecovery(t, v.fs, v.block) })
	}
}

func testPadRecovery(t *testing.T, fsys vfs.FS, block int) {
	dir, crashed := t.TempDir(), t.TempDir()
	db, err := pebble.Open(dir, &pebble.Options{FS: fsys})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	val := bytes.Repeat([]byte("v"), 100)
	for i := range n {
		if err := db.Set(fmt.Appendf(nil, "%016d", i), val, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(e.Name(), ".log") && (len(b)%block != 0 || len(b) == 0) {
			t.Fatalf("%s: %d bytes, want the padded size", e.Name(), len(b))
		}
		if err := os.WriteFile(filepath.Join(crashed, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = pebble.Open(crashed, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, i := range []int{0, n / 2, n - 1} {
		v, c, err := db.Get(fmt.Appendf(nil, "%016d", i))
		if err != nil || !bytes.Equal(v, val) {
			t.Fatalf("key %d after replay: %v", i, err)
		}
		c.Close()
	}
}
