package blockdev

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

// File is a Backend on a regular file or a block device whose I/O goes
// through the serving queue's engine loop (it is an AsyncBackend): reads
// and writes are engine ops straight into and out of the per-tag buffers,
// with O_DIRECT where the file system allows it for the device's block
// size (the buffers are page aligned), FUA writes carry RWF_DSYNC and
// FLUSH is an fdatasync op. DISCARD punches a hole and WRITE_ZEROES
// zeroes a range with fallocate, inline.
type File struct {
	f      *os.File
	fd     int
	size   int64
	direct bool
	zeroes []byte
}

// FileOptions configure OpenFile.
type FileOptions struct {
	// Size: 0 uses the file's size (or the block device's). A regular file
	// that is smaller (or missing) is created and extended to Size.
	Size int64
	// BlockSize is the device's logical block size; O_DIRECT is used only
	// if the file system's direct I/O alignment divides it. Default 4096.
	BlockSize int
	// ReadOnly opens the file read-only.
	ReadOnly bool
	// NoDirect never uses O_DIRECT (go through the page cache).
	NoDirect bool
}

// OpenFile opens (or creates) path as a File backend.
func OpenFile(path string, o FileOptions) (*File, error) {
	if o.BlockSize == 0 {
		o.BlockSize = 4096
	}
	flags := os.O_RDWR
	if o.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("blockdev: file backend: %w", err)
	}
	b := &File{f: f, fd: int(f.Fd())}
	var st unix.Stat_t
	if err := unix.Fstat(b.fd, &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("blockdev: file backend: stat %s: %w", path, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		b.size = st.Size
		if o.Size > b.size {
			if o.ReadOnly {
				f.Close()
				return nil, fmt.Errorf("blockdev: file backend: %s is %d bytes, less than the size %d (read-only: not extended)", path, st.Size, o.Size)
			}
			if err := f.Truncate(o.Size); err != nil {
				f.Close()
				return nil, fmt.Errorf("blockdev: file backend: extend %s to %d bytes: %w", path, o.Size, err)
			}
			b.size = o.Size
		}
	case unix.S_IFBLK:
		var sz uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(b.fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&sz))); e != 0 {
			f.Close()
			return nil, fmt.Errorf("blockdev: file backend: size of %s: %w", path, e)
		}
		b.size = int64(sz)
		if o.Size > b.size {
			f.Close()
			return nil, fmt.Errorf("blockdev: file backend: %s is %d bytes, less than the size %d", path, b.size, o.Size)
		}
	default:
		f.Close()
		return nil, fmt.Errorf("blockdev: file backend: %s is neither a regular file nor a block device", path)
	}
	if o.Size > 0 {
		b.size = o.Size
	}
	if b.size <= 0 {
		f.Close()
		return nil, fmt.Errorf("blockdev: file backend: %s is empty; give a size", path)
	}
	if !o.NoDirect && directOK(b.fd, o.BlockSize) {
		if fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", b.fd), flags|unix.O_DIRECT|unix.O_CLOEXEC, 0); err == nil {
			nf := os.NewFile(uintptr(fd), path)
			f.Close()
			b.f, b.fd, b.direct = nf, fd, true
		}
	}
	return b, nil
}

// directOK reports whether O_DIRECT I/O on fd works at the block size bs
// with page-aligned buffers.
func directOK(fd, bs int) bool {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx); err == nil && stx.Mask&unix.STATX_DIOALIGN != 0 {
		return stx.Dio_offset_align != 0 && int(stx.Dio_offset_align) <= bs && bs%int(stx.Dio_offset_align) == 0 &&
			stx.Dio_mem_align <= 4096
	}
	// Older kernels: trust O_DIRECT where the open succeeds and the file
	// system block size is no larger than the device's.
	var sf unix.Statfs_t
	return unix.Fstatfs(fd, &sf) == nil && sf.Bsize > 0 && int(sf.Bsize) <= bs
}

// Direct reports whether the file is open with O_DIRECT.
func (b *File) Direct() bool { return b.direct }

// Size returns the backend size.
func (b *File) Size() int64 { return b.size }

// Close closes the file.
func (b *File) Close() error { return b.f.Close() }

// ReadAt reads synchronously (not used by the server; for tools and tests).
// With O_DIRECT, p and off must be aligned.
func (b *File) ReadAt(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(b.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			clear(p)
			return nil
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteAt writes synchronously (not used by the server).
func (b *File) WriteAt(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(b.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush is fdatasync.
func (b *File) Flush() error { return unix.Fdatasync(b.fd) }

// Discard punches a hole (falling back to writing zeroes).
func (b *File) Discard(off, n int64) error {
	err := unix.Fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return b.writeZeroes(off, n)
	}
	return err
}

// WriteZeroes zeroes the range with fallocate (falling back to writing
// zeroes).
func (b *File) WriteZeroes(off, n int64) error {
	err := unix.Fallocate(b.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = unix.Fallocate(b.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		return b.writeZeroes(off, n)
	}
	return err
}

func (b *File) writeZeroes(off, n int64) error {
	if b.zeroes == nil {
		z, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return err
		}
		b.zeroes = z
	}
	for n > 0 {
		m := min(n, int64(len(b.zeroes)))
		if err := b.WriteAt(b.zeroes[:m], off); err != nil {
			return err
		}
		off, n = off+m, n-m
	}
	return nil
}

// Start runs r through the engine: reads and writes go straight between the
// file and the request's (page-aligned) tag buffer.
func (b *File) Start(h uio.Handle, r *Request) {
	switch r.Op {
	case OpRead:
		b.rw(h, r, uio.OpRead, 0, 0)
	case OpWrite:
		var fl uint32
		if r.Flags&FlagFUA != 0 {
			fl = unix.RWF_DSYNC
		}
		if r.Flags&FlagPreflush != 0 {
			b.sync(h, r, func() { b.rw(h, r, uio.OpWrite, fl, 0) })
			return
		}
		b.rw(h, r, uio.OpWrite, fl, 0)
	case OpFlush:
		b.sync(h, r, func() { r.Complete(nil) })
	case OpDiscard:
		r.Complete(b.Discard(r.Offset, int64(r.Len)))
	case OpWriteZeroes:
		r.Complete(b.WriteZeroes(r.Offset, int64(r.Len)))
	default:
		r.Complete(unix.EINVAL)
	}
}

// sync submits an fdatasync op and runs then on success.
func (b *File) sync(h uio.Handle, r *Request, then func()) {
	_, err := h.Start(uio.Op{Kind: uio.OpFdatasync, Fd: b.fd, Done: func(h uio.Handle, res uio.Result) {
		if res.Res == -int32(unix.EINVAL) { // no async fsync for this file: do it inline
			res.Res = errnoOf(unix.Fdatasync(b.fd))
		}
		if res.Res < 0 {
			r.Complete(res.Err())
			return
		}
		then()
	}})
	if err != nil {
		r.Complete(err)
	}
}

// rw moves r.Buf[done:] with one engine op, continuing after short
// transfers; a read at end of file reads zeroes.
func (b *File) rw(h uio.Handle, r *Request, kind uio.OpKind, flags uint32, done int) {
	_, err := h.Start(uio.Op{Kind: kind, Fd: b.fd, Buf: r.Buf[done:], Offset: r.Offset + int64(done), Flags: flags,
		Done: func(h uio.Handle, res uio.Result) {
			switch {
			case res.Res < 0:
				r.Complete(res.Err())
			case res.Res == 0 && kind == uio.OpRead:
				clear(r.Buf[done:])
				r.Complete(nil)
			case res.Res == 0:
				r.Complete(unix.EIO)
			case done+int(res.Res) < len(r.Buf):
				b.rw(h, r, kind, flags, done+int(res.Res))
			default:
				r.Complete(nil)
			}
		}})
	if err != nil {
		r.Complete(err)
	}
}
