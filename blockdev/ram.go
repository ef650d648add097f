package blockdev

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// RAM is a sparse in-memory Backend: memory is allocated in chunks on the
// first write to them; reads of a chunk never written return zeroes from a
// shared zero buffer. DISCARD and WRITE_ZEROES free whole chunks and clear
// partial ones. It implements Mapper and WriteMapper, so requests inside
// one chunk are copied by the kernel straight between the bio and the
// chunk (READs of unwritten chunks from the zero buffer).
//
// It is safe for concurrent use by several queues; as on any disk, the
// result of overlapping concurrent writes is unspecified.
type RAM struct {
	size      int64
	shift     uint // log2 chunk size
	chunk     int64
	dir       []atomic.Pointer[ramLeaf]
	zero      []byte
	allocated atomic.Int64
}

const (
	ramLeafBits = 12
	ramLeafN    = 1 << ramLeafBits
	// RAMMaxSize bounds the RAM backend (the size of its chunk table).
	RAMMaxSize = 1 << 46
	// DefaultChunk is the RAM backend's allocation unit.
	DefaultChunk = 1 << 20
)

type ramLeaf [ramLeafN]atomic.Pointer[byte]

// NewRAM returns a RAM backend of size bytes allocated in chunks of chunk
// bytes (a power of two from 4 KiB to 64 MiB; 0 means DefaultChunk).
func NewRAM(size, chunk int64) (*RAM, error) {
	if chunk == 0 {
		chunk = DefaultChunk
	}
	if chunk < 4096 || chunk > 64<<20 || chunk&(chunk-1) != 0 {
		return nil, fmt.Errorf("blockdev: RAM chunk size %d: want a power of two from 4 KiB to 64 MiB", chunk)
	}
	if size <= 0 || size > RAMMaxSize {
		return nil, fmt.Errorf("blockdev: RAM size %d: want 1 byte to %d TiB", size, RAMMaxSize>>40)
	}
	var shift uint
	for int64(1)<<shift < chunk {
		shift++
	}
	nchunks := (size + chunk - 1) >> shift
	return &RAM{
		size:  size,
		shift: shift,
		chunk: chunk,
		dir:   make([]atomic.Pointer[ramLeaf], (nchunks+ramLeafN-1)/ramLeafN),
		zero:  make([]byte, chunk),
	}, nil
}

// Size returns the size in bytes.
func (d *RAM) Size() int64 { return d.size }

// Allocated returns the bytes of memory allocated for written chunks.
func (d *RAM) Allocated() int64 { return d.allocated.Load() }

// slot returns the pointer cell of chunk ci, creating its leaf if create.
func (d *RAM) slot(ci int64, create bool) *atomic.Pointer[byte] {
	lp := &d.dir[ci>>ramLeafBits]
	leaf := lp.Load()
	if leaf == nil {
		if !create {
			return nil
		}
		leaf = new(ramLeaf)
		if !lp.CompareAndSwap(nil, leaf) {
			leaf = lp.Load()
		}
	}
	return &leaf[ci&(ramLeafN-1)]
}

// chunkAt returns chunk ci, or nil if it was never written.
func (d *RAM) chunkAt(ci int64) []byte {
	s := d.slot(ci, false)
	if s == nil {
		return nil
	}
	if p := s.Load(); p != nil {
		return unsafe.Slice(p, d.chunk)
	}
	return nil
}

func (d *RAM) chunkAlloc(ci int64) []byte {
	s := d.slot(ci, true)
	if p := s.Load(); p != nil {
		return unsafe.Slice(p, d.chunk)
	}
	b := make([]byte, d.chunk)
	if s.CompareAndSwap(nil, &b[0]) {
		d.allocated.Add(d.chunk)
		return b
	}
	return unsafe.Slice(s.Load(), d.chunk)
}

func (d *RAM) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > d.size || n > d.size-off {
		return fmt.Errorf("blockdev: RAM range %d+%d outside the %d-byte device", off, n, d.size)
	}
	return nil
}

// each calls fn for every piece of [off, off+n) that lies in one chunk.
func (d *RAM) each(off, n int64, fn func(ci, coff, pos, m int64)) {
	for pos := int64(0); pos < n; {
		ci := (off + pos) >> d.shift
		coff := (off + pos) & (d.chunk - 1)
		m := min(d.chunk-coff, n-pos)
		fn(ci, coff, pos, m)
		pos += m
	}
}

// ReadAt copies the data at off into p (zeroes where never written).
func (d *RAM) ReadAt(p []byte, off int64) error {
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	d.each(off, int64(len(p)), func(ci, coff, pos, m int64) {
		if c := d.chunkAt(ci); c != nil {
			copy(p[pos:pos+m], c[coff:coff+m])
		} else {
			clear(p[pos : pos+m])
		}
	})
	return nil
}

// WriteAt stores p at off, allocating chunks as needed.
func (d *RAM) WriteAt(p []byte, off int64) error {
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	d.each(off, int64(len(p)), func(ci, coff, pos, m int64) {
		copy(d.chunkAlloc(ci)[coff:coff+m], p[pos:pos+m])
	})
	return nil
}

// Flush does nothing: RAM has no volatile cache to write back.
func (d *RAM) Flush() error { return nil }

// Discard zeroes the range, freeing the chunks it covers entirely. A READ
// completion that still names a freed chunk keeps it alive (the server
// holds the slice until the kernel has copied it).
func (d *RAM) Discard(off, n int64) error {
	if err := d.checkRange(off, n); err != nil {
		return err
	}
	d.each(off, n, func(ci, coff, pos, m int64) {
		if m == d.chunk {
			if s := d.slot(ci, false); s != nil && s.Swap(nil) != nil {
				d.allocated.Add(-d.chunk)
			}
		} else if c := d.chunkAt(ci); c != nil {
			clear(c[coff : coff+m])
		}
	})
	return nil
}

// WriteZeroes is Discard: both leave zeroes.
func (d *RAM) WriteZeroes(off, n int64) error { return d.Discard(off, n) }

// MappedForWrite returns the memory that stores [off, off+n) when it lies
// in one chunk, allocating the chunk.
func (d *RAM) MappedForWrite(off int64, n int) []byte {
	ci, coff, ok := d.inOneChunk(off, n)
	if !ok {
		return nil
	}
	return d.chunkAlloc(ci)[coff : coff+int64(n) : coff+int64(n)]
}

// inOneChunk returns the chunk holding [off, off+n) and the range's offset
// in it, if the range is non-empty, on the device and inside one chunk.
func (d *RAM) inOneChunk(off int64, n int) (ci, coff int64, ok bool) {
	if n <= 0 || d.checkRange(off, int64(n)) != nil {
		return 0, 0, false
	}
	coff = off & (d.chunk - 1)
	return off >> d.shift, coff, coff+int64(n) <= d.chunk
}

// Mapped returns the memory holding [off, off+n) when it lies in one chunk:
// the chunk itself, or the shared zero buffer if it was never written.
func (d *RAM) Mapped(off int64, n int) []byte {
	ci, coff, ok := d.inOneChunk(off, n)
	if !ok {
		return nil
	}
	if c := d.chunkAt(ci); c != nil {
		return c[coff : coff+int64(n) : coff+int64(n)]
	}
	return d.zero[:n:n]
}
