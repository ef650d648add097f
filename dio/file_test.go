package dio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/userland-io/uio"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

var backends = []string{uio.BackendAIO, uio.BackendUring}

// Loops are shared by the tests (and the fuzz target) of a process.
var (
	loopsMu sync.Mutex
	loops   = map[string]*uio.Loop{}
)

func loopFor(t testing.TB, backend string) *uio.Loop {
	t.Helper()
	loopsMu.Lock()
	defer loopsMu.Unlock()
	if l := loops[backend]; l != nil {
		return l
	}
	l, err := uio.NewLoop(uio.Config{Backend: backend, Depth: 256})
	if err != nil {
		t.Fatalf("NewLoop(%s): %v", backend, err)
	}
	loops[backend] = l
	return l
}

func TestMain(m *testing.M) {
	if os.Getenv(crashEnv) != "" {
		crashChild()
		return
	}
	code := m.Run()
	if readFilePath != "" {
		os.RemoveAll(filepath.Dir(readFilePath))
	}
	for _, fn := range benchCleanups {
		fn()
	}
	for _, l := range loops {
		l.Close()
	}
	os.Exit(code)
}

const ext4Magic = 0xEF53

// ext4Dir returns a fresh directory on ext4: t.TempDir() when it is on
// ext4, else one under /var/tmp.
func ext4Dir(t testing.TB) string {
	d := t.TempDir()
	var sf unix.Statfs_t
	if unix.Statfs(d, &sf) == nil && sf.Type == ext4Magic {
		return d
	}
	d, err := os.MkdirTemp("/var/tmp", "dio-test-")
	if err != nil {
		t.Skip("no ext4 directory:", err)
	}
	if unix.Statfs(d, &sf) != nil || sf.Type != ext4Magic {
		os.RemoveAll(d)
		t.Skip("neither the temp dir nor /var/tmp is on ext4")
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func shmDir(t testing.TB) string {
	d, err := os.MkdirTemp("/dev/shm", "dio-test-")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// A mode is a place and a way to open files.
type mode struct {
	name    string
	dir     func(testing.TB) string
	opts    Options
	refuse  bool // make open refuse O_DIRECT (EINVAL), as old tmpfs does
	wantDir bool // expect Direct()
}

var modes = []mode{
	{name: "ext4", dir: ext4Dir, wantDir: true},
	{name: "ext4-align4k", dir: ext4Dir, opts: Options{Align: 4096}, wantDir: true},
	{name: "ext4-exact", dir: ext4Dir, opts: Options{ExactSizeOnSync: true}, wantDir: true},
	{name: "ext4-refused", dir: ext4Dir, refuse: true},
	{name: "tmpfs", dir: shmDir, wantDir: true}, // 6.6+ tmpfs takes O_DIRECT
	{name: "tmpfs-buffered", dir: shmDir, opts: Options{Buffered: true}},
}

func refuseDirect(path string, flag int) error {
	if flag&unix.O_DIRECT != 0 {
		return unix.EINVAL
	}
	return nil
}

func (m mode) open(t testing.TB, l *uio.Loop, path string, flag int, opts Options) *File {
	t.Helper()
	if m.refuse {
		openHook = refuseDirect
		defer func() { openHook = nil }()
	}
	f, err := Open(l, path, flag, 0o644, &opts)
	if err != nil {
		t.Fatal(err)
	}
	if f.Direct() != m.wantDir {
		t.Fatalf("%s: Direct() = %v, want %v", m.name, f.Direct(), m.wantDir)
	}
	return f
}

// opStream decodes a sequence of file operations from bytes (random ones
// or a fuzzer's).
type opStream struct {
	b []byte
}

func (s *opStream) next(n int) int {
	if n <= 0 {
		return 0
	}
	var v uint32
	for i := 0; i < 3 && len(s.b) > 0; i++ {
		v = v<<8 | uint32(s.b[0])
		s.b = s.b[1:]
	}
	return int(v % uint32(n))
}

// harness runs operations on a File and an os.File oracle side by side.
type harness struct {
	t      testing.TB
	m      mode
	l      *uio.Loop
	opts   Options
	path   string
	f      *File
	oracle *os.File
	data   []byte // scratch
	seq    byte
}

func newHarness(t testing.TB, m mode, l *uio.Loop, opts Options) *harness {
	dir := m.dir(t)
	h := &harness{t: t, m: m, l: l, opts: opts, path: filepath.Join(dir, "f")}
	var err error
	h.oracle, err = os.Create(filepath.Join(t.TempDir(), "oracle"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.oracle.Close() })
	h.f = m.open(t, l, h.path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, opts)
	t.Cleanup(func() {
		if h.f != nil {
			h.f.Close()
		}
	})
	return h
}

func (h *harness) payload(n int) []byte {
	if cap(h.data) < n {
		h.data = make([]byte, n)
	}
	p := h.data[:n]
	h.seq++
	for i := range p {
		p[i] = h.seq + byte(i*7) + 1 // never all zero
	}
	return p
}

func (h *harness) oracleSize() int64 {
	st, err := h.oracle.Stat()
	if err != nil {
		h.t.Fatal(err)
	}
	return st.Size()
}

// step runs one operation chosen from s. It returns false at the end.
func (h *harness) step(s *opStream) bool {
	t := h.t
	if len(s.b) == 0 {
		return false
	}
	size := h.oracleSize()
	if got := h.f.Size(); got != size {
		t.Fatalf("Size = %d, oracle %d", got, size)
	}
	// Odd offsets and lengths around block and chunk boundaries.
	length := func() int {
		switch s.next(4) {
		case 0:
			return s.next(16)
		case 1:
			return s.next(5000)
		case 2:
			return 512*(1+s.next(16)) + s.next(3) - 1
		default:
			return s.next(40000)
		}
	}
	offset := func() int64 {
		switch s.next(3) {
		case 0:
			return int64(s.next(int(size) + 1))
		case 1:
			return max(0, size-int64(s.next(9000)))
		default:
			return size + int64(s.next(6000))
		}
	}
	switch op := s.next(10); op {
	case 0, 1, 2: // Append
		p := h.payload(length())
		n, err := h.f.Append(p)
		if err != nil || n != len(p) {
			t.Fatalf("Append(%d) = %d, %v", len(p), n, err)
		}
		if _, err := h.oracle.WriteAt(p, size); err != nil {
			t.Fatal(err)
		}
	case 3, 4: // WriteAt
		p, off := h.payload(length()), offset()
		n, err := h.f.WriteAt(p, off)
		if err != nil || n != len(p) {
			t.Fatalf("WriteAt(%d, %d) = %d, %v", len(p), off, n, err)
		}
		if _, err := h.oracle.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	case 5, 6: // ReadAt
		n0, off := length(), offset()
		h.checkRead(off, n0)
	case 7, 8: // Sync, then the file on disk must hold the oracle
		if err := h.f.Sync(); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		h.checkSynced()
	default: // Close and reopen: the file on disk must be exactly the oracle
		if err := h.f.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		h.f = nil
		h.checkDisk()
		h.f = h.m.open(t, h.l, h.path, os.O_RDWR, h.opts)
	}
	return true
}

func (h *harness) checkRead(off int64, n int) {
	t := h.t
	want := make([]byte, n)
	wn, werr := h.oracle.ReadAt(want, off)
	// An aligned buffer sometimes, for the zero-copy path.
	var got []byte
	if n%4096 == 0 && n > 0 {
		b, _ := pool.get(n)
		defer pool.put(b)
		got = b
	} else {
		got = make([]byte, n)
	}
	gn, gerr := h.f.ReadAt(got, off)
	if gn != wn || (werr == io.EOF) != (gerr == io.EOF) || (gerr != nil && gerr != io.EOF) {
		t.Fatalf("ReadAt(%d, %d) = %d, %v; oracle %d, %v", n, off, gn, gerr, wn, werr)
	}
	if !bytes.Equal(got[:gn], want[:wn]) {
		t.Fatalf("ReadAt(%d, %d): data differs at %d", n, off, firstDiff(got[:gn], want[:wn]))
	}
}

// checkDisk checks that the file on disk is exactly the oracle (after
// Close, or after Sync with ExactSizeOnSync).
func (h *harness) checkDisk() {
	got, want := h.readBoth()
	if !bytes.Equal(got, want) {
		h.t.Fatalf("on disk: %d bytes, oracle %d; first difference at %d", len(got), len(want), firstDiff(got, want))
	}
}

// checkSynced checks the file on disk after a Sync: the oracle's bytes up
// to the logical size, then at most the zero padding of the last block
// (none with ExactSizeOnSync).
func (h *harness) checkSynced() {
	if h.opts.ExactSizeOnSync {
		h.checkDisk()
		return
	}
	got, want := h.readBoth()
	if len(got) < len(want) || !bytes.Equal(got[:len(want)], want) {
		h.t.Fatalf("on disk after Sync: %d bytes, oracle %d; first difference at %d", len(got), len(want), firstDiff(got, want))
	}
	if limit := alignUp(int64(len(want)), int64(h.f.Align())); int64(len(got)) > limit {
		h.t.Fatalf("on disk after Sync: %d bytes, more than the logical size %d rounded up to the alignment %d", len(got), len(want), h.f.Align())
	}
	for i, c := range got[len(want):] {
		if c != 0 {
			h.t.Fatalf("on disk after Sync: padding byte at %d (logical size %d) is %#x, want 0", len(want)+i, len(want), c)
		}
	}
}

func (h *harness) readBoth() (got, want []byte) {
	t := h.t
	got, err := os.ReadFile(h.path)
	if err != nil {
		t.Fatal(err)
	}
	want, err = os.ReadFile(h.oracle.Name())
	if err != nil {
		t.Fatal(err)
	}
	return got, want
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func forEachModeBackend(t *testing.T, fn func(t *testing.T, m mode, l *uio.Loop)) {
	for _, m := range modes {
		for _, b := range backends {
			t.Run(m.name+"/"+b, func(t *testing.T) { fn(t, m, loopFor(t, b)) })
		}
	}
}

func TestRandomOps(t *testing.T) {
	steps := 600
	if testing.Short() {
		steps = 150
	}
	forEachModeBackend(t, func(t *testing.T, m mode, l *uio.Loop) {
		for seed := range uint64(3) {
			r := rand.New(rand.NewPCG(seed, 42))
			buf := make([]byte, steps*12)
			for i := range buf {
				buf[i] = byte(r.Uint32())
			}
			// Small chunks so that chunk writes happen all the time.
			opts := m.opts
			opts.ChunkSize, opts.MaxInflight = 8192<<seed, 2
			h := newHarness(t, m, l, opts)
			s := &opStream{b: buf}
			for i := 0; i < steps && h.step(s); i++ {
			}
			if err := h.f.Sync(); err != nil {
				t.Fatal(err)
			}
			h.checkSynced()
			if err := h.f.Close(); err != nil {
				t.Fatal(err)
			}
			h.f = nil
			h.checkDisk()
		}
	})
}

func FuzzFileOps(f *testing.F) {
	f.Add([]byte{0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
	f.Add(bytes.Repeat([]byte{3, 1, 200, 7, 0, 9}, 20))
	f.Add(bytes.Repeat([]byte{0, 3, 3, 3, 5, 1, 2, 8, 250, 4}, 30))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 4000 {
			b = b[:4000]
		}
		m := modes[int(b0(b))%len(modes)]
		l := loopFor(t, backends[int(b0(b)>>4)%len(backends)])
		opts := m.opts
		opts.ChunkSize, opts.MaxInflight = 4096, 1
		h := newHarness(t, m, l, opts)
		s := &opStream{b: b}
		for h.step(s) {
		}
		if err := h.f.Sync(); err != nil {
			t.Fatal(err)
		}
		h.checkSynced()
		if err := h.f.Close(); err != nil {
			t.Fatal(err)
		}
		h.f = nil
		h.checkDisk()
	})
}

func b0(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// Many goroutines append and read one file at once; everything must land.
func TestConcurrent(t *testing.T) {
	forEachModeBackend(t, func(t *testing.T, m mode, l *uio.Loop) {
		path := filepath.Join(m.dir(t), "c")
		opts := m.opts
		opts.ChunkSize = 16384
		f := m.open(t, l, path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, opts)
		const G, N, R = 8, 200, 37 // goroutines, records each, record size
		var wg sync.WaitGroup
		errc := make(chan error, G)
		for g := range G {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rec := make([]byte, R)
				got := make([]byte, R)
				for i := range N {
					for k := range rec {
						rec[k] = byte(g + 1)
					}
					if _, err := f.Append(rec); err != nil {
						errc <- err
						return
					}
					if i%50 == 49 {
						if err := f.Sync(); err != nil {
							errc <- err
							return
						}
					}
					// Every record of R bytes is one goroutine's.
					off := int64(rand.IntN(int(f.Size()/R))) * R
					if _, err := f.ReadAt(got, off); err != nil {
						errc <- err
						return
					}
					if got[0] == 0 || !bytes.Equal(got, bytes.Repeat(got[:1], R)) {
						errc <- fmt.Errorf("record at %d torn: %v", off, got)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != G*N*R {
			t.Fatalf("size %d, want %d", len(b), G*N*R)
		}
		count := map[byte]int{}
		for i := 0; i < len(b); i += R {
			count[b[i]]++
		}
		for g := range G {
			if count[byte(g+1)] != N {
				t.Fatalf("goroutine %d: %d records, want %d", g, count[byte(g+1)], N)
			}
		}
	})
}

func TestFallbackLogged(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	openHook = refuseDirect
	defer func() { openHook = nil }()
	path := filepath.Join(ext4Dir(t), "x")
	f, err := Open(loopFor(t, uio.BackendAIO), path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644, &Options{Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Direct() || f.Align() != 1 {
		t.Fatalf("Direct=%v Align=%d after a refused O_DIRECT", f.Direct(), f.Align())
	}
	if logs.FilterMessageSnippet("O_DIRECT refused").Len() != 1 {
		t.Fatalf("no fallback notice logged: %v", logs.All())
	}
}

func TestAlignment(t *testing.T) {
	path := filepath.Join(ext4Dir(t), "a")
	f, err := Open(loopFor(t, uio.BackendAIO), path, os.O_RDWR|os.O_CREATE, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Direct() || f.Align() < 512 || f.Align()&(f.Align()-1) != 0 {
		t.Fatalf("ext4: Direct=%v Align=%d", f.Direct(), f.Align())
	}
	t.Logf("ext4 alignment %d", f.Align())
}

func TestErrors(t *testing.T) {
	l := loopFor(t, uio.BackendUring)
	_, err := Open(l, "/nonexistent/dir/f", os.O_RDONLY, 0, nil)
	var e *Error
	if !errors.As(err, &e) || e.Op != "open" || !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Open: %v", err)
	}
	path := filepath.Join(ext4Dir(t), "ro")
	if err := os.WriteFile(path, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(l, path, os.O_RDONLY, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 1<<20); !errors.Is(err, unix.EBADF) || !errors.As(err, &e) || e.Off != 1<<20 {
		t.Fatalf("WriteAt on a read-only file: %v", err)
	}
	b := make([]byte, 10)
	if n, err := f.ReadAt(b, 2); n != 3 || err != io.EOF || string(b[:3]) != "llo" {
		t.Fatalf("ReadAt = %d, %v, %q", n, err, b[:n])
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(b, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("ReadAt after Close: %v", err)
	}
}

// After a Sync the file on disk keeps the zero padding of its tail block
// (its size is the logical size rounded up to the alignment) and Close
// cuts it; with ExactSizeOnSync the size on disk is exact after every
// Sync. Either way a Sync is one tail write and one fdatasync, and by
// default it costs one trip to the loop: at most one doorbell.
func TestSyncPadding(t *testing.T) {
	for _, b := range backends {
		for _, exact := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/exact=%v", b, exact), func(t *testing.T) {
				// A loop of its own, so that its counters are this test's.
				l, err := uio.NewLoop(uio.Config{Backend: b})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				path := filepath.Join(ext4Dir(t), "p")
				f, err := Open(l, path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644, &Options{ExactSizeOnSync: exact})
				if err != nil {
					t.Fatal(err)
				}
				if !f.Direct() {
					t.Skip("not direct")
				}
				bs := int64(f.Align())
				rec := bytes.Repeat([]byte{7}, 100)
				var size int64
				const n = 60
				st0 := l.Stats()
				for range n {
					if _, err := f.Append(rec); err != nil {
						t.Fatal(err)
					}
					size += int64(len(rec))
					if err := f.Sync(); err != nil {
						t.Fatal(err)
					}
					fi, err := os.Stat(path)
					if err != nil {
						t.Fatal(err)
					}
					want := alignUp(size, bs)
					if exact {
						want = size
					}
					if fi.Size() != want || f.Size() != size {
						t.Fatalf("after Sync at %d: size on disk %d, want %d; Size() = %d", size, fi.Size(), want, f.Size())
					}
				}
				d := l.Stats().Sub(st0)
				want, what := uint64(2*n), "write, fdatasync"
				if exact {
					want, what = 3*n, "write, ftruncate, fdatasync"
				}
				if ops := d.OpsStarted + d.Direct; ops != want {
					t.Errorf("%d ops for %d Syncs, want %d (%s each)", ops, n, want, what)
				}
				if !exact && d.Other > n {
					t.Errorf("%d doorbells (and other syscalls) for %d Syncs, want at most 1 each", d.Other, n)
				}
				t.Logf("%d Syncs: %+v", n, d)
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				if fi, err := os.Stat(path); err != nil || fi.Size() != size {
					t.Fatalf("after Close: %v, %v; want size %d", fi, err, size)
				}
			})
		}
	}
}

// A File whose loop has closed reports uio.ErrClosed, not the ECANCELED of
// the ops the closing loop cancelled or refused.
func TestClosedLoopIsErrClosed(t *testing.T) {
	for _, b := range []string{uio.BackendAIO, uio.BackendUring} {
		t.Run(b, func(t *testing.T) {
			l, err := uio.NewLoop(uio.Config{Backend: b, NoDirect: true})
			if err != nil {
				t.Fatal(err)
			}
			f, err := Open(l, filepath.Join(t.TempDir(), "f"), os.O_RDWR|os.O_CREATE, 0o644, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Append([]byte("x")); err != nil {
				t.Fatal(err)
			}
			l.Close()
			if err := f.Sync(); !errors.Is(err, uio.ErrClosed) {
				t.Errorf("Sync on a closed loop: %v, want uio.ErrClosed", err)
			}
			f.Close()
		})
	}
}

// Options.Align applies to direct I/O only: a buffered file gets no
// padding from it.
func TestAlignIgnoredWhenBuffered(t *testing.T) {
	l, err := uio.NewLoop(uio.Config{Backend: uio.BackendAIO})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	path := filepath.Join(t.TempDir(), "f")
	f, err := Open(l, path, os.O_RDWR|os.O_CREATE, 0o644, &Options{Buffered: true, Align: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Append([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if f.Align() != 1 {
		t.Errorf("buffered file's Align() = %d, want 1", f.Align())
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != 5 {
		t.Fatalf("buffered file with Align 4096 is %d bytes on disk after Sync, want 5 (%v)", fi.Size(), err)
	}
	f.Close()
}
