package uio

import (
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// BufferPool is a set of equal-size receive buffers owned by one loop. A
// recv that names a pool (Op.Pool, Op.Buf nil) holds no buffer while it
// waits: it gets one only when data has arrived, so a connection that is
// not moving bytes costs no buffer memory. The Result then names the buffer
// (Result.BufferID); it belongs to the caller until Put gives it back, which
// is typically when the send of those bytes has completed.
//
// On io_uring (5.19+) the pool is a provided buffer ring: the kernel picks
// the buffer itself when the data arrives (IOSQE_BUFFER_SELECT). On AIO, and
// on older io_uring kernels, the engine does the same: the recv is tried
// with a buffer taken just for the attempt, and if the socket has nothing,
// the buffer goes back and the engine polls for readiness before taking one
// again. Either way, when every buffer is out the recv waits in the engine
// for a Put, in order, and other ops go on.
//
// Buffers are allocated as they are first needed, in chunks, up to the
// pool's maximum, and reused most-recently-freed first, so the memory a pool
// touches follows the data in flight, not the number of connections. A pool
// and its buffers are used on its loop's goroutine only (Dones, Posted
// functions, timers), like a Handle; NewBufferPool may be called from any
// goroutine.
type BufferPool struct {
	l      *Loop
	size   int
	max    int
	chunks [][]byte // perChunk buffers each, allocated on demand
	per    int      // buffers per chunk
	n      int      // buffers allocated
	free   []uint16 // most recently freed last
	out    int      // buffers with the caller (not free, not in the kernel's ring)

	// The kernel's buffer ring (io_uring): set up on first use, on the
	// loop's thread; ringTried records the attempt, so a kernel without
	// provided buffer rings falls back to the engine's selection once.
	ring       poolRing
	ringTried  bool
	ringTarget int      // free buffers kept in the kernel's ring (see poolRingBytes)
	ringOrder  []uint16 // the buffers in the kernel's ring, in the order it takes them
	// bundle lists the buffers of the completion being delivered (see
	// Bundle); valid while its Done runs.
	bundle   []int
	bundleOp OpID

	waiters []OpID // recvs waiting for a buffer, in order
}

// poolRing is the kernel side of a pool: io_uring's provided buffer ring.
type poolRing interface {
	Add(buf []byte, bid uint16)
	Advance()
	Group() uint16
	Close() error
}

const (
	// poolChunk is the most buffers allocated at once, and
	// poolChunkBytes the most bytes (large buffers come one at a time).
	poolChunk      = 64
	poolChunkBytes = 1 << 20
	// A pool keeps poolRingBytes of free buffers in the kernel's ring,
	// and from poolRingMin to poolRingMax buffers whatever their size. The
	// kernel takes them in ring order, so every one of them gets touched
	// over time: a small target keeps the pool's memory near the data in
	// flight. A round with more recvs completing than the ring holds has
	// the rest fail with ENOBUFS inside the engine; they wait for buffers
	// and go out again in the next round. Bundles take several buffers per
	// completion, so small buffers get more of them (1 MiB: 64 of 16 KiB,
	// the 32 of 64 KiB that every pool had before).
	poolRingBytes = 1 << 20
	poolRingMin   = 32
	poolRingMax   = 256
	// MaxPoolBuffers is the most buffers a pool can have (io_uring buffer
	// ids are 16 bits).
	MaxPoolBuffers = 1 << 15
)

// ResultBuffer is set in Result.Flags when the op received into a pool
// buffer; the buffer's id is Flags >> 16 (the layout of io_uring's CQE
// flags, IORING_CQE_F_BUFFER, which AIO results imitate).
const ResultBuffer uint32 = 1 << 0

// NewBufferPool creates a pool of up to count buffers of size bytes each.
// No memory is allocated until recvs need it.
func (l *Loop) NewBufferPool(size, count int) (*BufferPool, error) {
	if size <= 0 || size > maxRW {
		return nil, fmt.Errorf("uio: NewBufferPool: buffer size %d out of range (1..%d)", size, maxRW)
	}
	if count <= 0 || count > MaxPoolBuffers {
		return nil, fmt.Errorf("uio: NewBufferPool: %d buffers, want 1..%d", count, MaxPoolBuffers)
	}
	target := poolRingMin
	for target < poolRingMax && target*size < poolRingBytes {
		target *= 2 // the kernel's ring has a power of two slots
	}
	return &BufferPool{l: l, size: size, max: count, per: max(1, min(poolChunk, poolChunkBytes/size)), ringTarget: target}, nil
}

// Size returns the size of each buffer.
func (p *BufferPool) Size() int { return p.size }

// Bytes returns buffer id, all Size bytes of it (slice it to the Result's
// Res). It stays valid until the buffer is Put back.
func (p *BufferPool) Bytes(id int) []byte {
	c := p.chunks[id/p.per]
	off := (id % p.per) * p.size
	return c[off : off+p.size : off+p.size]
}

// Put gives buffer id back to the pool. It belongs to the loop's
// goroutine, like Handle: called off it while the loop sleeps or after it
// exited, it returns ErrNotOnLoop and the buffer stays out (a call that
// races a running round is not caught). An id the pool never gave out is
// an error too.
func (p *BufferPool) Put(id int) error {
	if err := p.l.onLoop(); err != nil {
		return err
	}
	if id < 0 || id >= p.n {
		return fmt.Errorf("uio: BufferPool.Put(%d): the pool has given out buffers 0 to %d only", id, p.n-1)
	}
	p.out--
	p.release(uint16(id))
	return nil
}

// Stats of a pool: buffers allocated, and buffers with the caller (given
// out by a recv and not yet Put back).
func (p *BufferPool) Stats() (allocated, out int) { return p.n, p.out }

// release puts a buffer back on the free list and lets the first waiting
// recv, if any, go out again.
func (p *BufferPool) release(bid uint16) {
	p.free = append(p.free, bid)
	for len(p.waiters) > 0 {
		id := p.waiters[0]
		p.waiters = p.waiters[1:]
		if s := p.l.lookup(id); s != nil && s.state == slotPoolWait {
			p.l.requeue(s, id)
			return
		}
	}
}

// take returns a free buffer, allocating a chunk when none is free and the
// pool may still grow.
func (p *BufferPool) take() (uint16, bool) {
	if n := len(p.free); n > 0 {
		bid := p.free[n-1]
		p.free = p.free[:n-1]
		return bid, true
	}
	if p.n == p.max {
		return 0, false
	}
	k := min(p.per, p.max-p.n)
	p.chunks = append(p.chunks, make([]byte, k*p.size))
	first := p.n
	p.n += k
	for i := first + k - 1; i > first; i-- {
		p.free = append(p.free, uint16(i))
	}
	return uint16(first), true
}

// wait parks a recv until a buffer comes back.
func (p *BufferPool) wait(id OpID, s *slot) {
	s.state = slotPoolWait
	p.waiters = append(p.waiters, id)
}

// refill keeps ringTarget free buffers in the kernel's ring.
func (p *BufferPool) refill() {
	if p.ring == nil || len(p.ringOrder) >= p.ringTarget {
		return
	}
	added := false
	for len(p.ringOrder) < p.ringTarget {
		bid, ok := p.take()
		if !ok {
			break
		}
		p.ring.Add(p.Bytes(int(bid)), bid)
		p.ringOrder = append(p.ringOrder, bid)
		added = true
	}
	if added {
		p.ring.Advance()
	}
}

// setup gives the pool its kernel ring, if the backend has one; on the
// loop's thread, at the pool's first recv.
func (p *BufferPool) setup() {
	if p.ringTried {
		return
	}
	p.ringTried = true
	r, err := p.l.b.newPoolRing(len(p.l.pools), p.ringTarget)
	if err != nil {
		if err != errNotNative {
			p.l.log.Debug("uio: no provided buffer ring; the engine selects buffers", zap.Error(err))
		}
		return
	}
	p.ring = r
	p.l.pools = append(p.l.pools, p)
	// Filled now, not at the next round's refill: the recv that set the
	// ring up goes to the kernel this round, and data that came before
	// that refill would find the ring empty (ENOBUFS, and a re-arm).
	p.refill()
}

// errNotNative: the backend has no kernel-side form of a feature, and the
// engine provides it.
var errNotNative = fmt.Errorf("uio: not native to this backend: %w", unix.EOPNOTSUPP)

// BufferID returns the pool buffer a recv with Op.Pool received into, and
// whether it did (a recv of 0 bytes or an error returns its buffer to the
// pool by itself).
func (r Result) BufferID() (int, bool) {
	if r.Flags&ResultBuffer == 0 || r.Res <= 0 {
		return 0, false
	}
	return int(r.Flags >> 16), true
}

// completed settles the buffer of a finished pool recv and returns the
// Result's flags: ResultBuffer and the buffer id when the caller gets the
// buffer (Res > 0), none when it went back to the pool.
func (p *BufferPool) completed(id OpID, s *slot, res int32, flags uint32) uint32 {
	p.bundle = p.bundle[:0]
	var bid uint16
	has := false
	switch {
	case s.poolBuf != 0:
		bid, has = uint16(s.poolBuf-1), true
		s.poolBuf = 0
		p.bundle = append(p.bundle, int(bid))
	case p.ring != nil && flags&ResultBuffer != 0:
		bid, has = uint16(flags>>16), true
		// The kernel takes ring buffers in the order they were added: a
		// bundle is the next n of them, all full but the last.
		n := 1
		if int(res) > p.size {
			n = (int(res) + p.size - 1) / p.size
		}
		n = min(n, len(p.ringOrder))
		if n == 0 || p.ringOrder[0] != bid {
			p.l.log.DPanic("uio: provided buffer ring out of step with the kernel")
		}
		for _, b := range p.ringOrder[:n] {
			p.bundle = append(p.bundle, int(b))
		}
		p.ringOrder = p.ringOrder[:copy(p.ringOrder, p.ringOrder[n:])]
	}
	flags &^= ResultBuffer | 0xffff<<16
	if !has {
		return flags
	}
	if res <= 0 {
		for _, b := range p.bundle {
			p.release(uint16(b))
		}
		p.bundle = p.bundle[:0]
		return flags
	}
	p.out += len(p.bundle)
	p.bundleOp = id
	return flags | ResultBuffer | uint32(bid)<<16
}

// Bundle lists the pool buffers a recv's Result received into, in order:
// one, or several for an Op.Bundle recv (each full but the last; the Res
// bytes span them). Each must be given back with Put. Call it from the
// recv's Done; the slice is reused after it returns.
func (p *BufferPool) Bundle(r Result) []int {
	id, ok := r.BufferID()
	if !ok {
		return nil
	}
	if r.ID == p.bundleOp && len(p.bundle) > 0 && p.bundle[0] == id {
		return p.bundle
	}
	return []int{id}
}

// poolRetry sends a recv that found the kernel's ring empty out again in
// the next round (when the ring is refilled), or parks it until a buffer
// comes back. The ring may hold buffers again already: a round's refill
// can come between the recv's SQE and its ENOBUFS (a new pool's first recv
// goes out before the pool's first refill), and a recv parked then would
// wait for a Put of buffers nobody holds.
func (l *Loop) poolRetry(p *BufferPool, id OpID, s *slot) {
	if len(p.free) > 0 || p.n < p.max || len(p.ringOrder) > 0 {
		l.requeue(s, id)
		return
	}
	p.wait(id, s)
}
