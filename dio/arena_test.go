package dio

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
	"unsafe"

	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

// The buddy allocator hands out aligned, disjoint blocks until it is full
// and merges them back into one block.
func TestArenaBlocks(t *testing.T) {
	mem, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	a := makeArena(mem)
	r := rand.New(rand.NewPCG(3, 4))
	type block struct{ off, size uintptr }
	for round := 0; round < 20; round++ {
		var got [][]byte
		total := 0
		for {
			n := 1 + r.IntN(200<<10)
			b, ok := a.get(n)
			if !ok {
				if total+(1<<sizeClass(n)) <= len(mem)/2 {
					t.Fatalf("round %d: no block for %d bytes with %d of %d used", round, n, total, len(mem))
				}
				break
			}
			if len(b) != n || cap(b) != 1<<sizeClass(n) {
				t.Fatalf("get(%d): len %d cap %d", n, len(b), cap(b))
			}
			off := uintptr(unsafe.Pointer(&b[0])) - a.base
			if off%uintptr(cap(b)) != 0 {
				t.Fatalf("block of %d at offset %d: not aligned to its size", cap(b), off)
			}
			b[0], b[len(b)-1] = 1, 1 // inside the mapping
			got = append(got, b)
			total += cap(b)
		}
		bl := make([]block, len(got))
		for i, b := range got {
			bl[i] = block{uintptr(unsafe.Pointer(&b[0])) - a.base, uintptr(cap(b))}
		}
		sort.Slice(bl, func(i, j int) bool { return bl[i].off < bl[j].off })
		for i := 1; i < len(bl); i++ {
			if bl[i-1].off+bl[i-1].size > bl[i].off {
				t.Fatalf("blocks overlap: %+v %+v", bl[i-1], bl[i])
			}
		}
		r.Shuffle(len(got), func(i, j int) { got[i], got[j] = got[j], got[i] })
		for _, b := range got {
			a.put(b)
		}
		if a.used != 0 || a.head[a.order] != 0 || a.next[0] != -1 {
			t.Fatalf("round %d: after giving everything back: used %d, whole block %d (next %d)", round, a.used, a.head[a.order], a.next[0])
		}
		for k := minClass; k < a.order; k++ {
			if a.head[k] >= 0 {
				t.Fatalf("round %d: free blocks of order %d left unmerged", round, k)
			}
		}
		for i, k := range a.freeOrd[1:] {
			if k != -1 {
				t.Fatalf("round %d: block %d still marked free (order %d)", round, i+1, k)
			}
		}
	}
	if _, ok := a.get(2 << 20); ok {
		t.Fatal("a block bigger than the arena")
	}
}

// arenaLoop is a fresh loop whose Do calls all go through the rounds, so
// that every read and write is an io_uring op (or an AIO one).
func arenaLoop(t *testing.T, backend string) *uio.Loop {
	t.Helper()
	l, err := uio.NewLoop(uio.Config{Backend: backend, NoDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func inArena(a *arena, b []byte) bool {
	return a != nil && arenaOwning(b) == a
}

// Direct I/O through a File on io_uring goes out as fixed ops from the
// loop's arena and reads back what was written; on AIO nothing changes.
func TestArenaFixedOps(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			l := arenaLoop(t, backend)
			f, err := Open(l, filepath.Join(ext4Dir(t), "f"), os.O_RDWR|os.O_CREATE, 0o644, &Options{ChunkSize: 64 << 10})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if !f.Direct() {
				t.Skip("no direct I/O here")
			}
			uring := backend == uio.BackendUring
			if (f.arena != nil) != uring {
				t.Fatalf("arena %v on %s", f.arena != nil, backend)
			}
			if uring && !inArena(f.arena, f.cbuf) {
				t.Fatal("the append chunk is not in the arena")
			}
			before := l.Stats()
			want := make([]byte, 300<<10)
			r := rand.New(rand.NewPCG(5, 6))
			for i := range want {
				want[i] = byte(r.Uint32())
			}
			// Appends: chunk writes (Submit) and Sync's tail write.
			for p := want[:200<<10]; len(p) > 0; p = p[min(len(p), 7000):] {
				if _, err := f.Append(p[:min(len(p), 7000)]); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			// Read-modify-write outside the chunk, and unaligned reads.
			if _, err := f.WriteAt(want[200<<10:], 200<<10); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(want[1000:5000], 1000); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want)+1)[1:] // not aligned: read through a dio buffer
			if n, err := f.ReadAt(got, 0); n != len(want) || err != nil {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("read back different bytes")
			}
			d := l.Stats().Sub(before)
			if uring && d.FixedBufferOps == 0 {
				t.Fatalf("no fixed ops on io_uring: %+v", d)
			}
			if uring && d.FixedBufferOps < d.Completions-d.FixedBufferOps {
				// Only Sync's fdatasync(s) are not reads or writes.
				t.Errorf("%d fixed ops of %d completions", d.FixedBufferOps, d.Completions)
			}
			if !uring && d.FixedBufferOps != 0 {
				t.Fatalf("%d fixed ops on AIO", d.FixedBufferOps)
			}
			t.Logf("%s: %d completions, %d fixed", backend, d.Completions, d.FixedBufferOps)
		})
	}
}

// A user's RegisterBuffers set and dio's arena share the loop's table:
// replacing the set leaves the arena registered, and the arena leaves the
// set alone.
func TestArenaBesideUserBuffers(t *testing.T) {
	l := arenaLoop(t, uio.BackendUring)
	user := make([]byte, 64<<10)
	if err := l.RegisterBuffers([][]byte{user}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(ext4Dir(t), "f")
	f, err := Open(l, path, os.O_RDWR|os.O_CREATE, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Direct() || f.arena == nil {
		t.Skipf("direct %v, arena %v", f.Direct(), f.arena != nil)
	}
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	userOp := func() uint64 {
		t.Helper()
		before := l.Stats().FixedBufferOps
		copy(user, "user data")
		r, err := l.Do(t.Context(), uio.Op{Kind: uio.OpWrite, Fd: fd, Buf: user[:4096], Offset: 1 << 20})
		if err != nil || r.Res != 4096 {
			t.Fatalf("user write = %+v, %v", r, err)
		}
		return l.Stats().FixedBufferOps - before
	}
	dioOp := func() uint64 {
		t.Helper()
		before := l.Stats().FixedBufferOps
		if _, err := f.Append([]byte("dio data")); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil { // the tail write: from the chunk
			t.Fatal(err)
		}
		return l.Stats().FixedBufferOps - before
	}
	if n := userOp(); n != 1 {
		t.Fatalf("user's write with the arena registered: %d fixed ops, want 1", n)
	}
	if n := dioOp(); n == 0 {
		t.Fatal("dio's ops with a user set registered: none fixed")
	}
	if err := l.RegisterBuffers(nil); err != nil {
		t.Fatal(err)
	}
	if n := userOp(); n != 0 {
		t.Fatalf("user's write after dropping the set: %d fixed ops, want 0", n)
	}
	if n := dioOp(); n == 0 {
		t.Fatal("dio's ops after the user dropped the set: none fixed")
	}
	if err := l.RegisterBuffers([][]byte{user}); err != nil {
		t.Fatal(err)
	}
	if n := userOp(); n != 1 {
		t.Fatalf("user's write after registering again: %d fixed ops, want 1", n)
	}
}

// A loop that closes before its files leaves their buffers usable until
// they are closed; then the arena is unmapped and forgotten.
func TestArenaOutlivesLoop(t *testing.T) {
	l, err := uio.NewLoop(uio.Config{Backend: uio.BackendUring, NoDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(l, filepath.Join(ext4Dir(t), "f"), os.O_RDWR|os.O_CREATE, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := f.arena
	if a == nil {
		f.Close()
		l.Close()
		t.Skip("no arena (no direct I/O here?)")
	}
	l.Close()
	// The arena is retired but still mapped: the chunk is in it.
	if _, err := f.Append(bytes.Repeat([]byte("x"), 5000)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		arenasMu.Lock()
		_, known := arenaOf[l]
		arenasMu.Unlock()
		p := mapped.Load()
		stillMapped := false
		for _, x := range *p {
			stillMapped = stillMapped || x == a
		}
		if !known && !stillMapped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("closed loop's arena: known %v, mapped %v (used %d)", known, stillMapped, a.used)
		}
		time.Sleep(time.Millisecond)
	}
}

// When the arena has no room, buffers come from the pool and the I/O is
// the same; the arena size is taken when a loop first gets a file.
func TestArenaFull(t *testing.T) {
	SetArenaSize(16 << 10)
	defer SetArenaSize(defaultArenaSize)
	l := arenaLoop(t, uio.BackendUring)
	f, err := Open(l, filepath.Join(ext4Dir(t), "f"), os.O_RDWR|os.O_CREATE, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.arena == nil {
		t.Skip("no arena (no direct I/O here?)")
	}
	if len(f.arena.mem) != 16<<10 {
		t.Fatalf("arena of %d bytes, want 16 KiB", len(f.arena.mem))
	}
	if inArena(f.arena, f.cbuf) {
		t.Fatal("a 256 KiB chunk in a 16 KiB arena")
	}
	f, err = Open(l, filepath.Join(ext4Dir(t), "g"), os.O_RDWR|os.O_CREATE, 0o644, &Options{ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := bytes.Repeat([]byte("0123456789"), 3000)
	if _, err := f.WriteAt(p, 0); err != nil { // 32 KiB: from the pool
		t.Fatal(err)
	}
	got := make([]byte, len(p)+1)[1:]
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("ReadAt: %v, equal %v", err, bytes.Equal(got, p))
	}
	before := l.Stats().FixedBufferOps
	if _, err := f.ReadAt(got[:100], 5); err != nil || !bytes.Equal(got[:100], p[5:105]) { // 4 KiB: from the arena
		t.Fatalf("small ReadAt: %v", err)
	}
	if n := l.Stats().FixedBufferOps - before; n != 1 {
		t.Fatalf("a read that fits the arena: %d fixed ops, want 1", n)
	}
	for _, n := range []int{-1, 0, 1, 5000, 3 << 30} {
		SetArenaSize(n)
		want := map[int]int64{-1: 0, 0: 0, 1: 4096, 5000: 8192, 3 << 30: 1 << 30}[n]
		if got := arenaSize.Load(); got != want {
			t.Errorf("SetArenaSize(%d): %d, want %d", n, got, want)
		}
	}
}

// Arenas off: files on io_uring use the pool, as on AIO.
func TestArenaOff(t *testing.T) {
	SetArenaSize(0)
	defer SetArenaSize(defaultArenaSize)
	l := arenaLoop(t, uio.BackendUring)
	f, err := Open(l, filepath.Join(ext4Dir(t), "f"), os.O_RDWR|os.O_CREATE, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.arena != nil {
		t.Fatal("an arena with SetArenaSize(0)")
	}
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if n := l.Stats().FixedBufferOps; n != 0 {
		t.Fatalf("%d fixed ops without an arena", n)
	}
}

// Without CAP_IPC_LOCK an arena takes at most a quarter of RLIMIT_MEMLOCK
// (a power of two), or nothing below 4 KiB.
func TestArenaMemlock(t *testing.T) {
	const inf = unix.RLIM_INFINITY
	for _, c := range []struct {
		size    int
		ipcLock bool
		memlock uint64
		want    int
	}{
		{4 << 20, true, 8 << 20, 4 << 20},
		{4 << 20, false, inf, 4 << 20},
		{4 << 20, false, 8 << 20, 2 << 20},
		{4 << 20, false, 64 << 20, 4 << 20},
		{4 << 20, false, 12 << 20, 2 << 20},
		{4 << 20, false, 64 << 10, 16 << 10},
		{4 << 20, false, 8 << 10, 0},
	} {
		if got := capArena(c.size, c.ipcLock, c.memlock); got != c.want {
			t.Errorf("capArena(%d, ipcLock %v, memlock %d) = %d, want %d", c.size, c.ipcLock, c.memlock, got, c.want)
		}
	}
	if got := lockableSize(4 << 20); got == 0 {
		t.Errorf("lockableSize here = 0")
	}
}
