package blockdev

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"testing"
)

// model checks a backend against a flat byte slice under random writes,
// reads, discards and write-zeroes.
func model(t *testing.T, b Backend, size int64) {
	t.Helper()
	want := make([]byte, size)
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 2000; i++ {
		off := rng.Int63n(size/512) * 512
		n := min(int64(512*(1+rng.Intn(600))), size-off)
		switch rng.Intn(5) {
		case 0, 1:
			p := make([]byte, n)
			rng.Read(p)
			if err := b.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(want[off:], p)
		case 2:
			if err := b.(Discarder).Discard(off, n); err != nil {
				t.Fatal(err)
			}
			clear(want[off : off+n])
		case 3:
			if err := b.(ZeroWriter).WriteZeroes(off, n); err != nil {
				t.Fatal(err)
			}
			clear(want[off : off+n])
		}
		p := make([]byte, n)
		if err := b.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, want[off:off+n]) {
			t.Fatalf("step %d: read %d+%d differs", i, off, n)
		}
	}
	all := make([]byte, size)
	if err := b.ReadAt(all, 0); err != nil || !bytes.Equal(all, want) {
		t.Fatalf("final contents differ (%v)", err)
	}
}

func TestRAMModel(t *testing.T) {
	r, err := NewRAM(4<<20+4096, 64<<10) // not a chunk multiple
	if err != nil {
		t.Fatal(err)
	}
	model(t, r, r.Size())
}

func TestFileModel(t *testing.T) {
	f, err := OpenFile(filepath.Join(t.TempDir(), "d"), FileOptions{Size: 4 << 20, BlockSize: 512, NoDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	model(t, f, f.Size())
}

func TestRAMSparse(t *testing.T) {
	r, err := NewRAM(1<<30, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if r.Allocated() != 0 {
		t.Fatalf("fresh RAM disk has %d bytes allocated", r.Allocated())
	}
	p := make([]byte, 8192)
	if err := r.ReadAt(p, 500<<20); err != nil || !bytes.Equal(p, make([]byte, 8192)) {
		t.Fatal("unwritten read is not zero")
	}
	if r.Allocated() != 0 {
		t.Fatal("a read allocated memory")
	}
	if m := r.Mapped(500<<20, 4096); m == nil || !bytes.Equal(m, make([]byte, 4096)) {
		t.Fatal("unwritten Mapped is not the zero buffer")
	}
	p[0] = 1
	r.WriteAt(p, (1<<20)-4096) // across chunks 0 and 1
	if r.Allocated() != 2<<20 {
		t.Fatalf("allocated %d after a write across two chunks, want 2 MiB", r.Allocated())
	}
	if r.Mapped((1<<20)-4096, 8192) != nil {
		t.Fatal("Mapped across chunks")
	}
	if m := r.Mapped((1<<20)-4096, 4096); m == nil || m[0] != 1 || cap(m) != 4096 {
		t.Fatal("Mapped of a written block")
	}
	r.Discard(1<<20, 1<<20) // frees chunk 1
	if r.Allocated() != 1<<20 {
		t.Fatalf("allocated %d after discarding a chunk, want 1 MiB", r.Allocated())
	}
	r.Discard(0, 4096) // partial: keeps chunk 0
	if r.Allocated() != 1<<20 {
		t.Fatal("partial discard freed a chunk")
	}
	for _, c := range [][2]int64{{-1, 1}, {1 << 30, 1}, {1<<30 - 1, 2}} {
		if r.ReadAt(make([]byte, c[1]), c[0]) == nil || r.WriteAt(make([]byte, c[1]), c[0]) == nil {
			t.Errorf("range %v accepted", c)
		}
	}
	// MappedForWrite: the chunk, allocated; nil across chunks or off the end
	if m := r.MappedForWrite(600<<20+4096, 4096); m == nil || cap(m) != 4096 || r.Allocated() != 2<<20 {
		t.Fatalf("MappedForWrite of an unwritten block: %d bytes, allocated %d", len(m), r.Allocated())
	} else {
		m[0] = 7
		if r.ReadAt(p[:4096], 600<<20+4096); p[0] != 7 {
			t.Fatal("a write through MappedForWrite does not read back")
		}
	}
	if r.MappedForWrite((2<<20)-4096, 8192) != nil || r.MappedForWrite(1<<30-4096, 8192) != nil || r.MappedForWrite(0, 0) != nil {
		t.Fatal("MappedForWrite across chunks, off the end or empty")
	}
	if _, err := NewRAM(1<<20, 3000); err == nil {
		t.Error("chunk 3000 accepted")
	}
	if _, err := NewRAM(1<<50, 0); err == nil {
		t.Error("1 PiB accepted")
	}
}

func TestFileSize(t *testing.T) {
	dir := t.TempDir()
	f, err := OpenFile(filepath.Join(dir, "a"), FileOptions{Size: 1 << 20})
	if err != nil || f.Size() != 1<<20 {
		t.Fatalf("create: %v size %d", err, f.Size())
	}
	f.Close()
	f, err = OpenFile(filepath.Join(dir, "a"), FileOptions{})
	if err != nil || f.Size() != 1<<20 {
		t.Fatalf("reopen: %v", err)
	}
	f.Close()
	if _, err := OpenFile(filepath.Join(dir, "b"), FileOptions{}); err == nil {
		t.Error("empty file without a size accepted")
	}
	if _, err := OpenFile(dir, FileOptions{Size: 4096}); err == nil {
		t.Error("a directory accepted")
	}
}
