// Package diofs implements Pebble's vfs.FS on dio: every file Pebble
// creates or opens (WAL, sstables, MANIFEST, OPTIONS) is a dio.File on one
// uio.Loop, opened with O_DIRECT, so WAL appends are chunked and written
// asynchronously, WAL syncs are one engine round trip, and the reads of all
// of Pebble's goroutines share the loop's batched submissions. Directory
// operations, locks and listings are vfs.Default's.
//
// This is the design of the storage-engine write-up this project was seeded
// with (io_uring under Pebble's WAL and SST files with O_DIRECT), on both
// uio backends. It is a separate module so that the main module does not
// depend on Pebble:
//
//	cd examples/pebble && go test -v .
package diofs

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/cockroachdb/pebble/vfs"
	"github.com/userland-io/uio"
	"github.com/userland-io/uio/dio"
)

// FS is a vfs.FS whose files are dio.Files on one loop.
type FS struct {
	vfs.FS // vfs.Default: directories, locks, renames, listings
	l      *uio.Loop
	opts   *dio.Options
}

// New returns an FS doing file I/O on l. opts may be nil.
func New(l *uio.Loop, opts *dio.Options) *FS {
	return &FS{FS: vfs.Default, l: l, opts: opts}
}

var _ vfs.FS = (*FS)(nil)

func (fsys *FS) open(name string, flag int, opts []vfs.OpenOption) (vfs.File, error) {
	f, err := dio.Open(fsys.l, name, flag, 0o644, fsys.opts)
	if err != nil {
		return nil, err
	}
	file := &File{f: f, name: name}
	for _, o := range opts {
		o.Apply(file)
	}
	return file, nil
}

// Create makes a new file, removing any old one first (a new inode).
func (fsys *FS) Create(name string) (vfs.File, error) {
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return fsys.open(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, nil)
}

// Open opens name for reading.
func (fsys *FS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	return fsys.open(name, os.O_RDONLY, opts)
}

// OpenReadWrite opens name for reading and writing, creating it if needed.
func (fsys *FS) OpenReadWrite(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	return fsys.open(name, os.O_RDWR|os.O_CREATE, opts)
}

// ReuseForWrite does not reuse: Pebble would overwrite the old WAL from
// offset 0, which on O_DIRECT is a read-modify-write per unaligned write.
// The old file is removed and a new one created, which the vfs.FS
// contract allows.
func (fsys *FS) ReuseForWrite(oldname, newname string) (vfs.File, error) {
	if err := os.Remove(oldname); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return fsys.Create(newname)
}

// File adapts a dio.File to vfs.File: Write appends, Read keeps a
// position, every kind of sync is File.Sync.
type File struct {
	f    *dio.File
	name string
	rpos int64
}

var _ vfs.File = (*File)(nil)

func (f *File) Close() error                            { return f.f.Close() }
func (f *File) ReadAt(p []byte, off int64) (int, error) { return f.f.ReadAt(p, off) }
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	return f.f.WriteAt(p, off)
}
func (f *File) Write(p []byte) (int, error) { return f.f.Append(p) }

func (f *File) Read(p []byte) (int, error) {
	n, err := f.f.ReadAt(p, f.rpos)
	f.rpos += int64(n)
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

// Preallocate does nothing: O_DIRECT writes allocate as they go.
func (f *File) Preallocate(offset, length int64) error { return nil }

func (f *File) Sync() error     { return f.f.Sync() }
func (f *File) SyncData() error { return f.f.Sync() }

// SyncTo syncs everything: dio has no cheaper partial sync.
func (f *File) SyncTo(length int64) (fullSync bool, err error) {
	return true, f.f.Sync()
}

// Prefetch does nothing: O_DIRECT reads bypass the page cache.
func (f *File) Prefetch(offset, length int64) error { return nil }
func (f *File) Fd() uintptr                         { return uintptr(f.f.Fd()) }

// Stat reports the file's logical size: while the file is open, the file
// on disk may be up to one block longer (the zero padding of the tail
// block, which dio keeps between Syncs and cuts off on Close).
func (f *File) Stat() (os.FileInfo, error) {
	fi, err := os.Stat(f.name)
	if err != nil {
		return nil, err
	}
	return fileInfo{fi, f.f.Size()}, nil
}

type fileInfo struct {
	fs.FileInfo
	size int64
}

func (fi fileInfo) Size() int64        { return fi.size }
func (fi fileInfo) ModTime() time.Time { return fi.FileInfo.ModTime() }
