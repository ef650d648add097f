package dio

import (
	"math/bits"
	"sync"

	"golang.org/x/sys/unix"
)

// Buffers handed to the kernel for O_DIRECT come from anonymous mmaps, not
// the Go heap: they are page aligned (which satisfies every DIO memory
// alignment up to the page size), never moved, and invisible to the GC.
// They are kept in per-size-class free lists; buffers larger than
// maxPooled are mapped and unmapped per use.

const (
	minClass   = 12 // 4 KiB
	maxClass   = 22 // 4 MiB
	maxPooled  = 1 << maxClass
	keepPerCls = 64 // buffers kept per class; extra ones are unmapped
)

type bufPool struct {
	mu   sync.Mutex
	free [maxClass + 1][][]byte
}

var pool bufPool

func sizeClass(n int) int {
	if n <= 1<<minClass {
		return minClass
	}
	return bits.Len(uint(n - 1))
}

// get returns a page-aligned buffer of exactly n bytes (n > 0). Its
// contents are undefined.
func (p *bufPool) get(n int) ([]byte, error) {
	c := sizeClass(n)
	if c <= maxClass {
		p.mu.Lock()
		if k := len(p.free[c]); k > 0 {
			b := p.free[c][k-1]
			p.free[c][k-1] = nil
			p.free[c] = p.free[c][:k-1]
			p.mu.Unlock()
			return b[:n], nil
		}
		p.mu.Unlock()
		b, err := unix.Mmap(-1, 0, 1<<c, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, err
		}
		return b[:n], nil
	}
	size := (n + 4095) &^ 4095
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	return b[:n], nil
}

// put returns a buffer obtained from get, or from File.buf (which may have
// cut it from an arena). The caller must not use it again.
func (p *bufPool) put(b []byte) {
	if b == nil {
		return
	}
	if a := arenaOwning(b); a != nil {
		a.put(b)
		return
	}
	b = b[:cap(b)]
	c := sizeClass(len(b))
	if c <= maxClass && len(b) == 1<<c {
		p.mu.Lock()
		if len(p.free[c]) < keepPerCls {
			p.free[c] = append(p.free[c], b)
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
	_ = unix.Munmap(b)
}
