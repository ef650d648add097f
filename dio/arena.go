package dio

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/userland-io/uio"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// An arena is memory registered once with one loop's io_uring
// (uio.Loop.AddFixedBuffer), from which the direct-I/O buffers of that
// loop's files are cut: their reads and writes then go out as READ_FIXED
// and WRITE_FIXED, and the kernel does not pin and unpin their pages per
// op. Blocks are powers of two from 4 KiB to the arena's size (the size
// classes of the pool), split and merged as buddies. When the arena has no
// block of the size asked, the buffer comes from the pool as before.
//
// An arena lives as long as its loop: it is made on the first direct Open
// on an io_uring loop and unmapped once the loop is done and every buffer
// cut from it has been given back (a File's buffers outlive the loop when
// the File is closed after it).
type arena struct {
	mem   []byte
	base  uintptr
	order int // len(mem) == 1<<order

	mu sync.Mutex
	// The free blocks of each order are a doubly linked list through
	// next and prev, which are indexed by block number (offset >>
	// minClass), as is freeOrd: the order of the free block starting
	// there, or -1. So taking a block, and finding and unlinking its
	// buddy, cost O(1).
	head       [maxArenaOrder + 1]int32 // -1: none free
	next, prev []int32
	freeOrd    []int8
	used       int  // blocks handed out
	held       int  // bytes handed out
	peak       int  // most bytes ever handed out at once
	dead       bool // the loop is done
}

const maxArenaOrder = 30 // 1 GiB, the kernel's limit for one registered buffer

var arenaSize atomic.Int64

func init() { arenaSize.Store(defaultArenaSize) }

// defaultArenaSize is the registered arena of each io_uring loop: 4 MiB
// holds 16 append chunks of the default 256 KiB, or 1024 4 KiB reads in
// flight. See the package documentation for the measurements.
const defaultArenaSize = 4 << 20

// SetArenaSize sets the size of the registered arena that dio gives each
// io_uring loop it opens a direct file on from now on, rounded up to a
// power of two (4 KiB to 1 GiB); 0 or less turns arenas off for new loops.
// The default is 4 MiB. The arena's pages are pinned in memory; for a
// process without CAP_IPC_LOCK they count against RLIMIT_MEMLOCK and the
// arena takes at most a quarter of it. Where the kernel refuses them, the
// loop's files use unregistered buffers.
func SetArenaSize(n int) {
	switch {
	case n <= 0:
		n = 0
	case n > 1<<maxArenaOrder:
		n = 1 << maxArenaOrder
	default:
		n = 1 << max(minClass, bits.Len(uint(n-1)))
	}
	arenaSize.Store(int64(n))
}

// The arenas by loop, and the mapped ones by address for put, read
// without a lock (a copy is published on change).
var (
	arenasMu sync.Mutex
	arenaOf  = map[*uio.Loop]*loopArena{}
	mapped   atomic.Pointer[[]*arena]
)

// loopArena is one loop's arena, made once; a is nil when the loop has
// none (AIO, arenas off, or registration refused).
type loopArena struct {
	once sync.Once
	a    *arena
}

// arenaFor returns l's arena, making it on the first call for l.
// Registering waits for l's goroutine; other loops' files do not wait for
// it.
func arenaFor(l *uio.Loop, log *zap.Logger) *arena {
	arenasMu.Lock()
	la, ok := arenaOf[l]
	if !ok {
		la = new(loopArena)
		arenaOf[l] = la
		// Forget l when it is done (at once if it is already).
		go func() {
			<-l.Done()
			arenasMu.Lock()
			delete(arenaOf, l)
			arenasMu.Unlock()
			la.once.Do(func() {}) // a late first Open makes no arena
			if la.a != nil {
				la.a.retire()
			}
		}()
	}
	arenasMu.Unlock()
	la.once.Do(func() { la.a = newArena(l, int(arenaSize.Load()), log) })
	return la.a
}

func newArena(l *uio.Loop, size int, log *zap.Logger) *arena {
	if size == 0 || l.Backend() != uio.BackendUring {
		return nil
	}
	if size = lockableSize(size); size == 0 {
		log.Info("dio: no registered arena for the loop: RLIMIT_MEMLOCK too small")
		return nil
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		log.Info("dio: no registered arena for the loop: mmap", zap.Int("size", size), zap.Error(err))
		return nil
	}
	if _, err := l.AddFixedBuffer(mem); err != nil {
		unix.Munmap(mem)
		log.Info("dio: no registered arena for the loop, buffers are not registered", zap.Int("size", size), zap.Error(err))
		return nil
	}
	a := makeArena(mem)
	arenasMu.Lock()
	setMapped(func(as []*arena) []*arena { return append(as, a) })
	arenasMu.Unlock()
	return a
}

// lockableSize caps an arena to a quarter of RLIMIT_MEMLOCK when the
// process lacks CAP_IPC_LOCK: the kernel then counts registered pages
// against that limit, for all of the user's processes together (Debian's
// default is 8 MiB), and dio should leave room for the application's own
// registrations. The cap is per loop: four loops' arenas can take the
// whole limit, and then a later registration (the application's, or a
// fifth loop's arena, which then goes without) fails with ENOMEM; give
// such a process CAP_IPC_LOCK, a larger RLIMIT_MEMLOCK or SetArenaSize.
func lockableSize(size int) int {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	ipcLock := unix.Capget(&hdr, &data[0]) == nil && data[0].Effective&(1<<unix.CAP_IPC_LOCK) != 0
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		rl.Cur = unix.RLIM_INFINITY
	}
	return capArena(size, ipcLock, rl.Cur)
}

func capArena(size int, ipcLock bool, memlock uint64) int {
	if ipcLock || memlock == unix.RLIM_INFINITY {
		return size
	}
	quarter := min(memlock/4, uint64(size))
	if quarter < 1<<minClass {
		return 0
	}
	return 1 << (bits.Len64(quarter) - 1)
}

// makeArena makes an arena of mem (a power of two long, page aligned),
// all of it one free block.
func makeArena(mem []byte) *arena {
	a := &arena{mem: mem, base: uintptr(unsafe.Pointer(&mem[0])), order: bits.Len(uint(len(mem))) - 1}
	n := len(mem) >> minClass
	a.next, a.prev, a.freeOrd = make([]int32, n), make([]int32, n), make([]int8, n)
	for i := range a.head {
		a.head[i] = -1
	}
	for i := range a.freeOrd {
		a.freeOrd[i] = -1
	}
	a.push(a.order, 0)
	return a
}

func (a *arena) push(k int, i int32) {
	a.freeOrd[i], a.prev[i], a.next[i] = int8(k), -1, a.head[k]
	if a.head[k] >= 0 {
		a.prev[a.head[k]] = i
	}
	a.head[k] = i
}

func (a *arena) unlink(k int, i int32) {
	p, n := a.prev[i], a.next[i]
	if p >= 0 {
		a.next[p] = n
	} else {
		a.head[k] = n
	}
	if n >= 0 {
		a.prev[n] = p
	}
	a.freeOrd[i] = -1
}

// buf returns a direct-I/O buffer of n bytes for f: from its loop's arena
// where there is room, else from the pool. pool.put takes either back.
func (f *File) buf(n int) ([]byte, error) {
	if f.arena != nil {
		if b, ok := f.arena.get(n); ok {
			return b, nil
		}
	}
	return pool.get(n)
}

// firstChunk finds the file's arena and returns its first append chunk:
// from the arena unless the file is read-only (a read-only file's chunk is
// never written, and Pebble keeps hundreds of tables open).
func (f *File) firstChunk() ([]byte, error) {
	if f.direct {
		f.arena = arenaFor(f.l, f.log)
	}
	if f.ronly {
		return pool.get(f.ccap)
	}
	return f.buf(f.ccap)
}

// setMapped publishes a changed copy of the mapped arenas. Called with
// arenasMu held.
func setMapped(change func([]*arena) []*arena) {
	var as []*arena
	if p := mapped.Load(); p != nil {
		as = append(as, *p...)
	}
	as = change(as)
	mapped.Store(&as)
}

// arenaOwning returns the arena b was cut from, if any.
func arenaOwning(b []byte) *arena {
	p := mapped.Load()
	if p == nil || len(b) == 0 {
		return nil
	}
	addr := uintptr(unsafe.Pointer(&b[0]))
	for _, a := range *p {
		if addr-a.base < uintptr(len(a.mem)) {
			return a
		}
	}
	return nil
}

// get cuts a block for n bytes (n > 0) and returns its first n bytes (cap:
// the block), or false when the arena has no block that big free.
func (a *arena) get(n int) ([]byte, bool) {
	c := sizeClass(n)
	if c > a.order {
		return nil, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dead {
		return nil, false
	}
	k := c
	for k <= a.order && a.head[k] < 0 {
		k++
	}
	if k > a.order {
		return nil, false
	}
	i := a.head[k]
	a.unlink(k, i)
	for k > c { // split: keep the lower half, free the upper
		k--
		a.push(k, i+1<<(k-minClass))
	}
	off := uintptr(i) << minClass
	a.used++
	a.held += 1 << c
	a.peak = max(a.peak, a.held)
	return a.mem[off : off+uintptr(n) : off+1<<c], true
}

// put gives back a block from get, merging it with its free buddies.
func (a *arena) put(b []byte) {
	i := int32((uintptr(unsafe.Pointer(&b[0])) - a.base) >> minClass)
	c := bits.Len(uint(cap(b))) - 1
	a.mu.Lock()
	a.held -= 1 << c
	for c < a.order {
		buddy := i ^ 1<<(c-minClass)
		if int(a.freeOrd[buddy]) != c {
			break
		}
		a.unlink(c, buddy)
		i &^= 1 << (c - minClass)
		c++
	}
	a.push(c, i)
	a.used--
	unmap := a.dead && a.used == 0
	a.mu.Unlock()
	if unmap {
		a.unmap()
	}
}

// retire marks the arena's loop done: it hands out nothing more and is
// unmapped when its last block comes back.
func (a *arena) retire() {
	a.mu.Lock()
	a.dead = true
	unmap := a.used == 0
	a.mu.Unlock()
	if unmap {
		a.unmap()
	}
}

// unmap drops the arena (its loop is done, so its ring no longer has it).
// It leaves the lookup first, so that put cannot match memory mapped later
// at the same addresses.
func (a *arena) unmap() {
	arenasMu.Lock()
	setMapped(func(as []*arena) []*arena {
		for i, x := range as {
			if x == a {
				return append(as[:i], as[i+1:]...)
			}
		}
		return as
	})
	arenasMu.Unlock()
	_ = unix.Munmap(a.mem)
}
