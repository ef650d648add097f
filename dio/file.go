package dio

import (
	"errors"
	"io"
	"os"
	"sync"

	"github.com/userland-io/uio"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Options tune a File. The zero value (or a nil *Options) is the default.
type Options struct {
	// Logger receives the notice that O_DIRECT was refused and the file
	// falls back to buffered I/O. Default: no logging.
	Logger *zap.Logger
	// ChunkSize is the size of the append buffer: when that many bytes
	// are buffered, their write is submitted without waiting (or, on a
	// file synced since its last full chunk, made before Append returns:
	// see the package documentation). Rounded up to the alignment.
	// Default 256 KiB.
	ChunkSize int
	// MaxInflight bounds the chunk writes in flight at once; Append waits
	// for the oldest beyond it. Default 8.
	MaxInflight int
	// Buffered disables O_DIRECT: the page cache is used, alignment is 1.
	Buffered bool
	// Align overrides the detected alignment (offsets and lengths of
	// direct I/O). It must be a power of two and a multiple of what the
	// file system requires. 0: detect. Ignored when the file is buffered
	// (Buffered, or direct I/O refused), where nothing needs aligning.
	Align int
	// ExactSizeOnSync makes every Sync leave the file on disk exactly at
	// its logical size: after writing the zero-padded tail block, Sync
	// cuts the padding off with ftruncate before the fdatasync (a second
	// trip to the loop, and on ext4 a read-modify-write of the tail block
	// plus synchronous tail writes afterwards). By default the padding
	// (less than one alignment block of zeros) stays on disk while the
	// File is open and Close removes it. Irrelevant when buffered.
	ExactSizeOnSync bool
}

const (
	defaultChunk    = 256 << 10
	defaultInflight = 8
)

// File is a file on a uio.Loop, opened with O_DIRECT where the file system
// allows it. It is safe for concurrent use. See the package documentation.
type File struct {
	l      *uio.Loop
	fd     int
	path   string
	direct bool
	exact  bool  // Options.ExactSizeOnSync
	bs     int64 // offset and length alignment (1 when buffered)
	mem    int   // memory alignment of direct I/O
	log    *zap.Logger
	arena  *arena // the loop's registered memory for direct I/O buffers (arena.go), or nil
	ronly  bool   // opened O_RDONLY: no arena memory for the append chunk

	mu       sync.Mutex
	closed   bool
	size     int64  // logical size
	diskSize int64  // size of the file on disk, padding included
	cbuf     []byte // append chunk: file bytes [cbase, cbase+clen)
	cbase    int64  // aligned
	clen     int
	cflushed int  // aligned prefix of the chunk that is on disk unchanged
	dirty    bool // the chunk holds bytes the disk does not have
	ccap     int
	readers  sync.WaitGroup // ReadAt calls doing I/O outside mu
	modSeq   uint64         // counts changes (Append, WriteAt)
	// syncs counts Sync calls; syncsAtRotate is syncs when the last chunk
	// filled. They differ when the file was synced since: see rotate.
	syncs, syncsAtRotate uint64

	// imu guards the chunk writes in flight. It is taken by their Done on
	// the loop goroutine, so nobody holds it while waiting on the loop.
	imu     sync.Mutex
	icond   sync.Cond
	flights []*flight
	maxFly  int
	flyErr  error // first failed chunk write; sticky
	// smu guards the fdatasync state; taken after mu, never before it.
	smu     sync.Mutex
	scond   sync.Cond
	syncing bool   // an fdatasync is running (or being prepared by its owner)
	settled uint64 // modSeq whose bytes are all written (and, ExactSizeOnSync, the size right)
	durable uint64 // modSeq covered by a finished fdatasync
	syncErr error  // a failed fdatasync; sticky
}

// flight is one asynchronous chunk write.
type flight struct {
	off  int64
	buf  []byte     // the whole pooled buffer
	data []byte     // what remains to be written, at off
	reqs []*syncReq // Syncs waiting for this write (under imu)
}

// openHook lets tests make open refuse O_DIRECT.
var openHook func(path string, flag int) error

// Open opens path on loop l, like os.OpenFile. O_DIRECT is added unless
// opts.Buffered; where the file system refuses it (EINVAL), the file is
// opened buffered and a notice is logged. O_APPEND is ignored: use Append.
// opts may be nil.
func Open(l *uio.Loop, path string, flag int, perm os.FileMode, opts *Options) (*File, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	flag = flag&^unix.O_APPEND | unix.O_CLOEXEC
	mode := uint32(perm.Perm())
	direct := !o.Buffered
	fd, err := -1, error(nil)
	if direct {
		if openHook != nil {
			err = openHook(path, flag|unix.O_DIRECT)
		}
		if err == nil {
			fd, err = unix.Open(path, flag|unix.O_DIRECT, mode)
		}
		if err == unix.EINVAL {
			log.Info("dio: O_DIRECT refused, falling back to buffered I/O",
				zap.String("path", path), zap.Error(err))
			direct = false
			// The refusal comes after the file was created: do not fail
			// the retry on O_EXCL.
			if flag&unix.O_CREAT != 0 {
				flag &^= unix.O_EXCL
			}
		}
	}
	if !direct {
		fd, err = unix.Open(path, flag, mode)
	}
	if err != nil {
		return nil, &Error{Op: "open", Path: path, Off: -1, Err: err}
	}
	f := &File{l: l, fd: fd, path: path, direct: direct, bs: 1, mem: 1, log: log, ronly: flag&unix.O_ACCMODE == unix.O_RDONLY}
	if err := f.init(o); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

func (f *File) init(o Options) error {
	if f.direct {
		bs, mem, ok := dioAlign(f.fd)
		if !ok {
			// The file system knows the file cannot do direct I/O.
			f.log.Info("dio: file system reports no direct I/O for this file, falling back to buffered I/O",
				zap.String("path", f.path))
			fl, err := unix.FcntlInt(uintptr(f.fd), unix.F_GETFL, 0)
			if err == nil {
				_, err = unix.FcntlInt(uintptr(f.fd), unix.F_SETFL, fl&^unix.O_DIRECT)
			}
			if err != nil {
				return &Error{Op: "open", Path: f.path, Off: -1, Err: err}
			}
			f.direct = false
		} else {
			f.bs, f.mem = int64(bs), mem
		}
	}
	f.exact = o.ExactSizeOnSync
	if o.Align > 0 && f.direct {
		if o.Align&(o.Align-1) != 0 || int64(o.Align)%f.bs != 0 {
			return &Error{Op: "open", Path: f.path, Off: -1, Err: errors.New("Options.Align must be a power of two and a multiple of the file system's alignment")}
		}
		f.bs = int64(o.Align)
	}
	chunk := o.ChunkSize
	if chunk <= 0 {
		chunk = defaultChunk
	}
	f.ccap = int(alignUp(int64(chunk), max(f.bs, 4096)))
	f.maxFly = o.MaxInflight
	if f.maxFly <= 0 {
		f.maxFly = defaultInflight
	}
	f.modSeq = 1 // the first Sync always syncs: the file may hold others' writes
	f.icond.L = &f.imu
	f.scond.L = &f.smu

	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return &Error{Op: "open", Path: f.path, Off: -1, Err: err}
	}
	f.size, f.diskSize = st.Size, st.Size
	var err error
	if f.cbuf, err = f.firstChunk(); err != nil {
		return &Error{Op: "open", Path: f.path, Off: -1, Err: err}
	}
	// The chunk starts at the last aligned offset and holds the partial
	// block there, which the next flush rewrites.
	f.cbase = f.alignDown(f.size)
	f.clen = int(f.size - f.cbase)
	if f.clen > 0 {
		if err := f.readFull(f.cbuf[:f.alignUp(int64(f.clen))], f.cbase); err != nil {
			pool.put(f.cbuf)
			return &Error{Op: "open", Path: f.path, Off: f.cbase, Len: f.clen, Err: err}
		}
	}
	return nil
}

// Direct reports whether the file is open with O_DIRECT.
func (f *File) Direct() bool { return f.direct }

// Align returns the alignment of offsets and lengths of the file's I/O
// (1 when buffered).
func (f *File) Align() int { return int(f.bs) }

// Name returns the path the file was opened with.
func (f *File) Name() string { return f.path }

// Fd returns the file descriptor. Do not do I/O on it behind the File's back.
func (f *File) Fd() int { return f.fd }

// Size returns the logical size of the file: every byte written or
// appended through f, durable or not.
func (f *File) Size() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size
}

func (f *File) alignDown(x int64) int64 { return x &^ (f.bs - 1) }
func (f *File) alignUp(x int64) int64   { return alignUp(x, f.bs) }

func alignUp(x, a int64) int64 { return (x + a - 1) &^ (a - 1) }

// rw does one read or write through the loop, retrying short transfers;
// a read that reaches end of file zero-fills the rest of buf.
func (f *File) rw(kind uio.OpKind, buf []byte, off int64) error {
	for len(buf) > 0 {
		res, err := do(f.l, uio.Op{Kind: kind, Fd: f.fd, Buf: buf, Offset: off})
		if err != nil {
			return err
		}
		if res < 0 {
			return unix.Errno(-res)
		}
		n := int(res)
		if n == 0 {
			if kind == uio.OpRead {
				clear(buf)
				return nil
			}
			return io.ErrShortWrite
		}
		buf, off = buf[n:], off+int64(n)
		if len(buf) > 0 && f.direct && (int64(n)%f.bs != 0) {
			if kind == uio.OpRead { // end of file in the middle of a block
				clear(buf)
				return nil
			}
			return io.ErrShortWrite
		}
	}
	return nil
}

func (f *File) readFull(buf []byte, off int64) error  { return f.rw(uio.OpRead, buf, off) }
func (f *File) writeFull(buf []byte, off int64) error { return f.rw(uio.OpWrite, buf, off) }

// ReadAt reads len(p) bytes at off, like os.File.ReadAt: fewer only at end
// of file, with io.EOF. It sees every byte written through f, synced or
// not. Direct reads are widened to the alignment and trimmed; when p, off
// and len(p) are all aligned, the kernel reads straight into p.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &Error{Op: "readat", Path: f.path, Off: off, Len: len(p), Err: unix.EINVAL}
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return 0, &Error{Op: "readat", Path: f.path, Off: off, Len: len(p), Err: os.ErrClosed}
	}
	if len(p) == 0 {
		f.mu.Unlock()
		return 0, nil
	}
	if off >= f.size {
		f.mu.Unlock()
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), f.size-off))
	end := off + int64(n)
	// Bytes from cbase on are authoritative in memory.
	if end > f.cbase {
		from := max(off, f.cbase)
		copy(p[from-off:n], f.cbuf[from-f.cbase:end-f.cbase])
	}
	diskEnd := min(end, f.cbase)
	if off >= diskEnd {
		f.mu.Unlock()
		return n, eofIf(n < len(p))
	}
	// The rest is on disk once the chunk writes covering it have landed.
	f.waitFlights(off, diskEnd)
	f.readers.Add(1)
	f.mu.Unlock()
	defer f.readers.Done()

	dst := p[:diskEnd-off]
	if err := f.readDisk(dst, off); err != nil {
		return 0, &Error{Op: "readat", Path: f.path, Off: off, Len: len(dst), Err: err}
	}
	return n, eofIf(n < len(p))
}

func eofIf(b bool) error {
	if b {
		return io.EOF
	}
	return nil
}

// readDisk fills dst with the file's bytes at off, all below cbase.
func (f *File) readDisk(dst []byte, off int64) error {
	end := off + int64(len(dst))
	if !f.direct || (off%f.bs == 0 && end%f.bs == 0 && aligned(dst, f.mem)) {
		return f.readFull(dst, off)
	}
	a0, a1 := f.alignDown(off), f.alignUp(end)
	b, err := f.buf(int(a1 - a0))
	if err != nil {
		return err
	}
	defer pool.put(b)
	if err := f.readFull(b, a0); err != nil {
		return err
	}
	copy(dst, b[off-a0:])
	return nil
}

// waitFlights waits until no chunk write in flight overlaps [off, end).
func (f *File) waitFlights(off, end int64) {
	f.imu.Lock()
	for f.overlaps(off, end) {
		f.icond.Wait()
	}
	f.imu.Unlock()
}

func (f *File) overlaps(off, end int64) bool {
	for _, fl := range f.flights {
		if fl.off < end && off < fl.off+int64(len(fl.data)) {
			return true
		}
	}
	return false
}

// waitAllFlights waits for every chunk write in flight and returns the
// first error any of them had.
func (f *File) waitAllFlights() error {
	f.imu.Lock()
	defer f.imu.Unlock()
	for len(f.flights) > 0 {
		f.icond.Wait()
	}
	return f.flyErr
}

// Append adds p at the end of the file. It copies p into the append chunk
// and returns; a full chunk's write is submitted without waiting, or made
// before Append returns on a file synced since its last full chunk (see
// rotate). The data is visible to ReadAt at once and durable after Sync.
func (f *File) Append(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.writable("append", f.size, len(p)); err != nil {
		return 0, err
	}
	start := f.size
	if len(p) > 0 {
		f.modSeq++
	}
	n := 0
	for n < len(p) {
		k := copy(f.cbuf[f.clen:], p[n:])
		f.dirty = true
		f.clen += k
		n += k
		f.size += int64(k)
		if f.clen == f.ccap {
			if err := f.rotate(); err != nil {
				return n, f.wrap("append", start, len(p), err)
			}
		}
	}
	return n, nil
}

// Write is Append, for io.Writer.
func (f *File) Write(p []byte) (int, error) { return f.Append(p) }

func (f *File) writable(op string, off int64, n int) error {
	if f.closed {
		return &Error{Op: op, Path: f.path, Off: off, Len: n, Err: os.ErrClosed}
	}
	f.imu.Lock()
	err := f.flyErr
	f.imu.Unlock()
	if err != nil {
		return f.wrap(op, off, n, err)
	}
	return nil
}

// wrap names op, path and offset in err, unless err already is an *Error
// naming the I/O that failed.
func (f *File) wrap(op string, off int64, n int, err error) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Op: op, Path: f.path, Off: off, Len: n, Err: err}
}

// rotate submits the full chunk's unflushed part and starts a new chunk.
// Called with mu held.
//
// On a file synced since the chunk before filled, the write is made here
// instead, through Do from the caller's goroutine (one plain pwrite when
// it is alone in Do): such a file syncs more often than it fills chunks,
// so the next Sync would wait for this write anyway, and waiting for it
// on the loop costs two thread hand-offs (the post that wakes the loop,
// the completion that wakes the Sync) that the syscall alone does not.
// A file appended in bulk between syncs keeps its chunk writes in flight
// behind its appends.
func (f *File) rotate() error {
	inline := f.syncs != f.syncsAtRotate
	f.syncsAtRotate = f.syncs
	if inline {
		return f.writeChunk()
	}
	nb, err := f.buf(f.ccap)
	if err != nil {
		return err
	}
	fl := &flight{off: f.cbase + int64(f.cflushed), buf: f.cbuf, data: f.cbuf[f.cflushed:f.ccap]}
	f.imu.Lock()
	for len(f.flights) >= f.maxFly {
		f.icond.Wait()
	}
	f.flights = append(f.flights, fl)
	f.imu.Unlock()
	f.diskSize = max(f.diskSize, f.cbase+int64(f.ccap))
	f.cbuf, f.cbase, f.clen, f.cflushed, f.dirty = nb, f.cbase+int64(f.ccap), 0, 0, false
	if err := f.l.Post(func(h uio.Handle) { f.submitFlight(h, fl) }); err != nil {
		f.landed(fl, err, uio.Handle{})
	}
	return nil
}

// writeChunk writes the full chunk's unflushed part and starts the next
// chunk in the same buffer. A failure is sticky, as that of a chunk write
// in flight. Called with mu held.
func (f *File) writeChunk() error {
	off := f.cbase + int64(f.cflushed)
	if err := f.writeFull(f.cbuf[f.cflushed:f.ccap], off); err != nil {
		err = &Error{Op: "append", Path: f.path, Off: off, Len: f.ccap - f.cflushed, Err: err}
		f.imu.Lock()
		if f.flyErr == nil {
			f.flyErr = err
		}
		f.imu.Unlock()
		return err
	}
	f.diskSize = max(f.diskSize, f.cbase+int64(f.ccap))
	f.cbase, f.clen, f.cflushed, f.dirty = f.cbase+int64(f.ccap), 0, 0, false
	return nil
}

// submitFlight runs on the loop goroutine.
func (f *File) submitFlight(h uio.Handle, fl *flight) {
	_, err := h.Start(uio.Op{Kind: uio.OpWrite, Fd: f.fd, Buf: fl.data, Offset: fl.off, Done: func(h uio.Handle, r uio.Result) {
		switch n := int(r.Res); {
		case r.Res < 0:
			f.landed(fl, &Error{Op: "append", Path: f.path, Off: fl.off, Len: len(fl.data), Err: resErr(r.Res)}, h)
		case n == len(fl.data):
			f.landed(fl, nil, h)
		case n == 0 || (f.direct && int64(n)%f.bs != 0):
			f.landed(fl, &Error{Op: "append", Path: f.path, Off: fl.off, Len: len(fl.data), Err: io.ErrShortWrite}, h)
		default: // short: write the rest
			fl.off += int64(n)
			fl.data = fl.data[n:]
			f.submitFlight(h, fl)
		}
	}})
	if err != nil {
		f.landed(fl, err, h)
	}
}

// landed retires a chunk write and tells the Syncs waiting for it. Any
// goroutine, the loop's included (with its Handle; elsewhere the zero
// Handle).
func (f *File) landed(fl *flight, err error, h uio.Handle) {
	f.imu.Lock()
	for i, x := range f.flights {
		if x == fl {
			f.flights = append(f.flights[:i], f.flights[i+1:]...)
			break
		}
	}
	if err != nil && f.flyErr == nil {
		f.flyErr = err
	}
	reqs := fl.reqs
	fl.reqs = nil
	f.icond.Broadcast()
	f.imu.Unlock()
	pool.put(fl.buf)
	for _, r := range reqs {
		r.release(h)
	}
}

// flushTail writes the chunk's unflushed bytes, the partial last block
// padded with zeros, and waits for it. Called with mu held.
func (f *File) flushTail() error {
	if !f.dirty || f.clen <= f.cflushed {
		return nil
	}
	end := int(f.alignUp(int64(f.clen)))
	clear(f.cbuf[f.clen:end])
	off := f.cbase + int64(f.cflushed)
	if err := f.writeFull(f.cbuf[f.cflushed:end], off); err != nil {
		return &Error{Op: "write", Path: f.path, Off: off, Len: end - f.cflushed, Err: err}
	}
	f.diskSize = max(f.diskSize, f.cbase+int64(end))
	// Full blocks are done; a partial last block is rewritten when it
	// grows.
	f.cflushed = int(f.alignDown(int64(f.clen)))
	f.dirty = false
	return nil
}

// WriteAt writes p at off, like os.File.WriteAt, growing the file if
// needed (a gap reads as zeros). A write that falls inside the append
// chunk only updates memory, like Append; any other write is a
// read-modify-write of the aligned blocks it touches, done before WriteAt
// returns (durable after Sync).
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, &Error{Op: "writeat", Path: f.path, Off: off, Len: len(p), Err: unix.EINVAL}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.writable("writeat", off, len(p)); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	f.modSeq++
	end := off + int64(len(p))
	if off >= f.cbase && end <= f.cbase+int64(f.ccap) {
		// Inside the chunk: memory only.
		lo, hi := int(off-f.cbase), int(end-f.cbase)
		if lo > f.clen {
			clear(f.cbuf[f.clen:lo])
		}
		copy(f.cbuf[lo:], p)
		f.dirty = true
		f.cflushed = min(f.cflushed, int(f.alignDown(int64(lo))))
		f.clen = max(f.clen, hi)
		f.size = f.cbase + int64(f.clen)
		if f.clen == f.ccap {
			if err := f.rotate(); err != nil {
				return len(p), &Error{Op: "writeat", Path: f.path, Off: off, Len: len(p), Err: err}
			}
		}
		return len(p), nil
	}
	if err := f.writeAtDisk(p, off); err != nil {
		return 0, f.wrap("writeat", off, len(p), err)
	}
	return len(p), nil
}

// writeAtDisk is the read-modify-write path of WriteAt. Called with mu.
func (f *File) writeAtDisk(p []byte, off int64) error {
	end := off + int64(len(p))
	touchesChunk := end > f.cbase
	if touchesChunk {
		// Make the disk authoritative for everything below size.
		if err := f.flushTail(); err != nil {
			return err
		}
		if err := f.waitAllFlights(); err != nil {
			return err
		}
	} else {
		f.waitFlights(f.alignDown(off), f.alignUp(end))
	}
	a0, a1 := f.alignDown(off), f.alignUp(end)
	b, err := f.buf(int(a1 - a0))
	if err != nil {
		return err
	}
	defer pool.put(b)
	bs := int(f.bs)
	if off > a0 { // partial first block: its current bytes
		if err := f.readBlock(b[:bs], a0); err != nil {
			return err
		}
	}
	if end < a1 && (a1-a0 > f.bs || off == a0) { // partial last block
		if err := f.readBlock(b[len(b)-bs:], a1-f.bs); err != nil {
			return err
		}
	}
	copy(b[off-a0:], p)
	newSize := max(f.size, end)
	if newSize < a1 {
		clear(b[newSize-a0:]) // beyond the end of file: zeros
	}
	if err := f.writeFull(b, a0); err != nil {
		return err
	}
	f.diskSize = max(f.diskSize, a1)
	switch {
	case !touchesChunk:
	case newSize == f.size:
		// Inside the old size: the chunk's copy must follow.
		lo := max(off, f.cbase)
		copy(f.cbuf[lo-f.cbase:f.clen], p[lo-off:])
	default:
		// Grown: the chunk restarts at the new last block, whose bytes
		// are in b.
		f.cbase = f.alignDown(newSize)
		f.clen = int(newSize - f.cbase)
		copy(f.cbuf, b[f.cbase-a0:newSize-a0])
		f.cflushed = 0
	}
	f.size = newSize
	return nil
}

// readBlock reads the aligned block at off as the file holds it now (disk
// authoritative for it): zeros at and beyond the logical size.
func (f *File) readBlock(b []byte, off int64) error {
	if off >= f.size {
		clear(b)
		return nil
	}
	if err := f.readFull(b, off); err != nil {
		return err
	}
	if end := off + int64(len(b)); end > f.size {
		clear(b[f.size-off:])
	}
	return nil
}

// Close writes what is buffered (without fdatasync: call Sync first for
// durability), sets the file's size to its logical size, waits for reads
// in progress and closes the descriptor.
func (f *File) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return &Error{Op: "close", Path: f.path, Off: -1, Err: os.ErrClosed}
	}
	err := f.settle()
	f.closed = true
	f.mu.Unlock()
	f.readers.Wait()
	// A Sync that released mu before Close may still be in its
	// fdatasync: the fd must not close (and its number be reused) under it.
	f.smu.Lock()
	for f.syncing {
		f.scond.Wait()
	}
	f.smu.Unlock()
	if err2 := f.waitAllFlights(); err == nil && err2 != nil {
		err = f.wrap("close", -1, 0, err2)
	}
	if err2 := unix.Close(f.fd); err == nil && err2 != nil {
		err = &Error{Op: "close", Path: f.path, Off: -1, Err: err2}
	}
	f.mu.Lock()
	pool.put(f.cbuf)
	f.cbuf = nil
	f.mu.Unlock()
	return err
}
