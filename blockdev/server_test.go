package blockdev

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"testing"
	"time"

	"github.com/userland-io/uio/blockdev/abuse"
	"golang.org/x/sys/unix"
)

func wait(t *testing.T, fr *fakeReq) int32 {
	t.Helper()
	select {
	case r := <-fr.res:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("request %+v: no completion after 10 s", fr.r)
		return 0
	}
}

// backends returns fresh RAM and File backends of size bytes.
func backends(t *testing.T, size int64) map[string]Backend {
	ram, err := NewRAM(size, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(filepath.Join(t.TempDir(), "disk.img"), FileOptions{Size: size, BlockSize: 512})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return map[string]Backend{"ram": ram, "file": f}
}

// TestServeRoundTrip writes random data with many requests in flight, reads
// it back, and checks that completions were batched, on both engines and
// both backends.
func TestServeRoundTrip(t *testing.T) {
	const size, depth, maxIO = 8 << 20, 32, 256 << 10
	for _, engine := range []string{"aio", "uring"} {
		for name, be := range backends(t, size) {
			t.Run(engine+"/"+name, func(t *testing.T) {
				_, k := testServer(t, be, engine, depth, maxIO, false)
				want := make([]byte, size)
				rng := rand.New(rand.NewSource(1))
				rng.Read(want)
				// Writes of mixed sizes, all queued at once (more than depth).
				var frs []*fakeReq
				for off := 0; off < size; {
					n := min(512<<rng.Intn(10), maxIO, size-off)
					frs = append(frs, k.submit(abuse.OpWrite, uint64(off), uint32(n), want[off:off+n]))
					off += n
				}
				for _, fr := range frs {
					if r := wait(t, fr); r != 0 {
						t.Fatalf("write %+v: %d", fr.r, r)
					}
				}
				frs = frs[:0]
				for off := 0; off < size; {
					n := min(4096<<rng.Intn(7), maxIO, size-off)
					frs = append(frs, k.submit(abuse.OpRead, uint64(off), uint32(n), nil))
					off += n
				}
				for _, fr := range frs {
					if r := wait(t, fr); r != 0 {
						t.Fatalf("read %+v: %d", fr.r, r)
					}
					if !bytes.Equal(fr.data, want[fr.r.Offset:fr.r.Offset+uint64(fr.r.Len)]) {
						t.Fatalf("read %d+%d: data differs", fr.r.Offset, fr.r.Len)
					}
				}
				if fr := k.submit(abuse.OpFlush, 0, 0, nil); wait(t, fr) != 0 {
					t.Fatal("flush failed")
				}
				k.mu.Lock()
				t.Logf("%d requests in %d COMMIT_FETCH calls, largest completion batch %d", k.seq, k.calls, k.maxDone)
				if k.maxDone < 2 {
					t.Errorf("completions were never batched (largest batch %d)", k.maxDone)
				}
				k.mu.Unlock()
			})
		}
	}
}

// TestServeBadRequests: malformed requests complete with an errno, and the
// queue keeps serving.
func TestServeBadRequests(t *testing.T) {
	const size = 1 << 20
	for _, engine := range []string{"aio", "uring"} {
		for name, be := range backends(t, size) {
			t.Run(engine+"/"+name, func(t *testing.T) {
				_, k := testServer(t, be, engine, 8, 64<<10, false)
				for _, c := range []struct {
					op   uint32
					off  uint64
					n    uint32
					want unix.Errno
				}{
					{abuse.OpRead, size, 4096, unix.EIO},                  // at the end
					{abuse.OpRead, size - 4096, 8192, unix.EIO},           // across the end
					{abuse.OpWrite, 1 << 62, 4096, unix.EIO},              // far beyond
					{abuse.OpRead, 0, 128 << 10, unix.EIO},                // longer than max I/O
					{abuse.OpRead, 100, 512, unix.EINVAL},                 // misaligned offset
					{abuse.OpWrite, 0, 100, unix.EINVAL},                  // misaligned length
					{abuse.OpRead, 0, 0, unix.EINVAL},                     // empty
					{4, 0, 4096, unix.EINVAL},                             // unknown op
					{0xff, 0, 4096, unix.EINVAL},                          // unknown op
					{abuse.OpFlush, 0, 4096, unix.EINVAL},                 // flush with a length
					{abuse.OpDiscard, size - 512, 1024, unix.EIO},         // discard across the end
					{abuse.OpWrite | abuse.FlagFUA, 0, 4096, 0},           // fine
					{abuse.OpDiscard, 0, 8192, 0},                         // fine
					{abuse.OpWriteZeroes | abuse.FlagNoUnmap, 0, 4096, 0}, // fine
				} {
					fr := k.submit(c.op, c.off, c.n, make([]byte, c.n))
					if got := wait(t, fr); got != -int32(c.want) {
						t.Errorf("op %#x %d+%d: result %d, want %d (%v)", c.op, c.off, c.n, got, -int32(c.want), c.want)
					}
				}
			})
		}
	}
}

func TestServeReadOnly(t *testing.T) {
	ram, _ := NewRAM(1<<20, 0)
	_, k := testServer(t, ram, "auto", 4, 64<<10, true)
	if got := wait(t, k.submit(abuse.OpWrite, 0, 4096, make([]byte, 4096))); got != -int32(unix.EIO) {
		t.Errorf("write to read-only: %d, want -EIO", got)
	}
	if got := wait(t, k.submit(abuse.OpRead, 0, 4096, nil)); got != 0 {
		t.Errorf("read from read-only: %d", got)
	}
}

// TestServeMappedReads: RAM reads inside a chunk name the chunk (or the zero
// buffer); reads across chunks are copied into the tag buffer.
func TestServeMappedReads(t *testing.T) {
	ram, _ := NewRAM(1<<20, 64<<10)
	_, k := testServer(t, ram, "auto", 4, 128<<10, false)
	data := bytes.Repeat([]byte{0xab}, 4096)
	if wait(t, k.submit(abuse.OpWrite, 8192, 4096, data)) != 0 {
		t.Fatal("write")
	}
	fr := k.submit(abuse.OpRead, 8192, 4096, nil)
	if wait(t, fr) != 0 || !bytes.Equal(fr.data, data) {
		t.Fatal("mapped read")
	}
	fr = k.submit(abuse.OpRead, 256<<10, 4096, nil) // never written: zero buffer
	if wait(t, fr) != 0 || !bytes.Equal(fr.data, make([]byte, 4096)) {
		t.Fatal("zero read")
	}
	fr = k.submit(abuse.OpRead, 60<<10, 8192, nil) // across chunks 0 and 1
	if wait(t, fr) != 0 || !bytes.Equal(fr.data, make([]byte, 8192)) {
		t.Fatal("cross-chunk read")
	}
}

// TestServeUserCopy: on a USER_COPY queue with fetch waits, RAM writes and
// reads inside a chunk name the chunk (no Copy call), requests across
// chunks go through Copy, and the data reads back; the queue waits in
// COMMIT_FETCH when idle, then polls, and serves what comes after.
func TestServeUserCopy(t *testing.T) {
	const size, chunk, maxIO = 1 << 20, 64 << 10, 128 << 10
	for _, engine := range []string{"aio", "uring"} {
		t.Run(engine, func(t *testing.T) {
			ram, _ := NewRAM(size, chunk)
			_, k := testServerMode(t, ram, engine, 8, maxIO, false, true, 5)
			want := make([]byte, size)
			rand.New(rand.NewSource(2)).Read(want)
			type piece struct{ off, n int }
			pieces := []piece{{0, 4096}, {8192, 16384}, {chunk - 4096, 8192}, {3 * chunk, maxIO}, {5*chunk + 512, 4096}}
			var frs []*fakeReq
			for _, p := range pieces {
				frs = append(frs, k.submit(abuse.OpWrite, uint64(p.off), uint32(p.n), want[p.off:p.off+p.n]))
			}
			for _, fr := range frs {
				if r := wait(t, fr); r != 0 {
					t.Fatalf("write %+v: %d", fr.r, r)
				}
			}
			k.mu.Lock()
			if k.copies != 2 { // the two writes across chunk boundaries
				t.Errorf("%d Copy calls for writes, want 2 (the cross-chunk writes)", k.copies)
			}
			k.copies = 0
			k.mu.Unlock()
			time.Sleep(20 * time.Millisecond) // idle: the wait runs out, the queue polls
			frs = frs[:0]
			for _, p := range pieces {
				frs = append(frs, k.submit(abuse.OpRead, uint64(p.off), uint32(p.n), nil))
			}
			for _, fr := range frs {
				if r := wait(t, fr); r != 0 {
					t.Fatalf("read %+v: %d", fr.r, r)
				}
				if !bytes.Equal(fr.data, want[fr.r.Offset:fr.r.Offset+uint64(fr.r.Len)]) {
					t.Fatalf("read %d+%d: data differs", fr.r.Offset, fr.r.Len)
				}
			}
			fr := k.submit(abuse.OpRead, 7*chunk, 4096, nil) // never written
			if wait(t, fr) != 0 || !bytes.Equal(fr.data, make([]byte, 4096)) {
				t.Fatal("zero read")
			}
			k.mu.Lock()
			defer k.mu.Unlock()
			if k.copies != 2 {
				t.Errorf("%d Copy calls for reads, want 2 (the cross-chunk reads)", k.copies)
			}
			if k.waits == 0 {
				t.Error("COMMIT_FETCH never waited")
			}
		})
	}
}

func TestDeviceConfig(t *testing.T) {
	ram, _ := NewRAM(64<<20, 0)
	for _, c := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{Backend: ram, Index: -1}, true},
		{Config{Backend: ram, Size: 1 << 20, BlockSize: 512, Queues: 4, Depth: 64, MaxIO: 4096, Index: 3}, true},
		{Config{Backend: ram, Size: 1000, Index: -1}, false},
		{Config{Backend: ram, Size: 128 << 20, Index: -1}, false},
		{Config{Backend: ram, BlockSize: 1024, Index: -1}, false},
		{Config{Backend: ram, Queues: 65, Index: -1}, false},
		{Config{Backend: ram, Depth: 2000, Index: -1}, false},
		{Config{Backend: ram, MaxIO: 5000, Index: -1}, false},
		{Config{Backend: ram, Index: 5000}, false},
		{Config{Backend: ram, Attach: true, Index: -1}, false},
	} {
		dc, err := deviceConfig(&c.cfg)
		if (err == nil) != c.ok {
			t.Errorf("%+v: err %v, want ok=%v", c.cfg, err, c.ok)
		}
		if err == nil && !c.cfg.Attach && (dc.MaxDiscardSectors == 0 || dc.MaxWriteZeroesSectors == 0) {
			t.Errorf("RAM supports discard and write-zeroes: %+v", dc)
		}
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"4096": 4096, "64k": 64 << 10, "512M": 512 << 20, "1G": 1 << 30,
		"1GiB": 1 << 30, "2t": 2 << 40, "1gb": 1 << 30} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "G", "1X", "-1", "1.5G", "99999999999P"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) accepted", s)
		}
	}
}
