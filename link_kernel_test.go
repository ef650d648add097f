package uio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Chains the kernel links (io_uring) and the ones the engine keeps (AIO,
// and io_uring chains of kinds the kernel cannot link the engine's way)
// follow the same rules; these tests run on both and check, on io_uring,
// that the chain really went to the kernel in one submission.

func tempFd(t *testing.T, name string) int {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func testPipe(t *testing.T) (r, w int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0], p[1]
}

// startChain starts ops as a chain from the loop and returns their IDs and
// a channel that gets their results in the order their Dones ran.
func startChain(t *testing.T, l *Loop, ops ...Op) ([]OpID, <-chan Result) {
	t.Helper()
	out := make(chan Result, len(ops))
	for i := range ops {
		ops[i].Done = func(_ Handle, r Result) { out <- r }
	}
	idc := make(chan []OpID, 1)
	if err := l.Post(func(h Handle) {
		ids, err := h.StartLinked(ops...)
		if err != nil {
			t.Error(err)
		}
		idc <- ids
	}); err != nil {
		t.Fatal(err)
	}
	return <-idc, out
}

// results collects n results in Done order.
func results(t *testing.T, ch <-chan Result, n int) []Result {
	t.Helper()
	var rs []Result
	for len(rs) < n {
		select {
		case r := <-ch:
			rs = append(rs, r)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d Dones ran: %+v", len(rs), n, rs)
		}
	}
	return rs
}

func wantInOrder(t *testing.T, ids []OpID, rs []Result) {
	t.Helper()
	for i := range rs {
		if rs[i].ID != ids[i] {
			t.Fatalf("Done %d was op %d's (%s): Dones out of chain order: %+v", i, rs[i].ID, rs[i].Kind, rs)
		}
	}
}

// oneSubmit reports whether a three-op chain went to the kernel in one
// io_uring_enter: one that submitted three SQEs or more, and at most one
// other, of the doorbell's re-armed read (which can land either side).
func oneSubmit(d Stats) bool {
	big := uint64(0)
	for _, n := range d.Batches[2:] { // flushes of 3 SQEs or more
		big += n
	}
	return big == 1 && d.Flushes <= 2
}

// On io_uring a write+fdatasync+read chain goes to the kernel as one run
// of linked SQEs: one submitting io_uring_enter for the three ops, not one
// per op after the one before it completed.
func TestKernelLinkedChainOneSubmit(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		fd := tempFd(t, "f")
		got := make([]byte, 5)
		mustDo(t, l, Op{Kind: OpFsync, Fd: fd}) // the loop's first round is behind it
		before := l.Stats()
		res, err := l.DoLinked(context.Background(),
			Op{Kind: OpWrite, Fd: fd, Buf: []byte("hello"), Offset: 0},
			Op{Kind: OpFdatasync, Fd: fd},
			Op{Kind: OpRead, Fd: fd, Buf: got, Offset: 0})
		runOnLoop(l, func(Handle) error { return nil }) // the last enter counted (see TestEngineChainOneSubmitPerOp)
		d := l.Stats().Sub(before)
		if err != nil || res[0].Res != 5 || res[1].Res != 0 || res[2].Res != 5 || string(got) != "hello" {
			t.Fatalf("chain %+v %v, read back %q", res, err, got)
		}
		t.Logf("%s: %d enters, %d submits, %d flushes of %d ops %v", l.Backend(), d.Enters, d.Submits, d.Flushes, d.FlushedOps, d.Batches)
		if l.Backend() == BackendUring && !oneSubmit(d) {
			t.Fatalf("the chain took %d submitting enters (%d SQEs, by size %v), want its 3 ops in 1", d.Flushes, d.FlushedOps, d.Batches)
		}
		if l.Backend() == BackendAIO && d.Flushes < 3 {
			t.Fatalf("AIO chain in %d io_submits, want one per op", d.Flushes)
		}
	})
}

// A short read breaks a chain: the ops after it complete with -ECANCELED
// (nothing written), every Done once, in chain order.
func TestLinkedShortReadBreaks(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		fd := tempFd(t, "f")
		if _, err := unix.Pwrite(fd, []byte("hello"), 0); err != nil {
			t.Fatal(err)
		}
		mustDo(t, l, Op{Kind: OpFsync, Fd: fd})
		before := l.Stats()
		ids, ch := startChain(t, l,
			Op{Kind: OpRead, Fd: fd, Buf: make([]byte, 100), Offset: 0},
			Op{Kind: OpFdatasync, Fd: fd},
			Op{Kind: OpWrite, Fd: fd, Buf: []byte("X"), Offset: 0})
		rs := results(t, ch, 3)
		wantInOrder(t, ids, rs)
		if rs[0].Res != 5 || !errors.Is(rs[1].Err(), unix.ECANCELED) || !errors.Is(rs[2].Err(), unix.ECANCELED) {
			t.Fatalf("short read chain: %+v", rs)
		}
		b := make([]byte, 5)
		if _, err := unix.Pread(fd, b, 0); err != nil || string(b) != "hello" {
			t.Fatalf("file after the broken chain: %q %v", b, err)
		}
		// A Done may run inside the Wait that submitted the chain, before
		// that Wait's flush is counted: a Post runs after it.
		runOnLoop(l, func(Handle) error { return nil })
		if d := l.Stats().Sub(before); l.Backend() == BackendUring && !oneSubmit(d) {
			t.Fatalf("io_uring chain in %d submissions (by size %v), want 1 (kernel-linked)", d.Flushes, d.Batches)
		}
	})
}

// A linked op whose Timeout passes completes with -ETIME and the rest of
// the chain with -ECANCELED; a deadline counts from when its op starts.
func TestLinkedTimeout(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		fd := tempFd(t, "f")
		pr, pw := testPipe(t)
		// Head: a poll of an empty pipe with a 30 ms deadline.
		start := time.Now()
		ids, ch := startChain(t, l,
			Op{Kind: OpPoll, Fd: pr, Events: unix.POLLIN, Timeout: 30 * time.Millisecond},
			Op{Kind: OpWrite, Fd: fd, Buf: []byte("never"), Offset: 0})
		rs := results(t, ch, 2)
		wantInOrder(t, ids, rs)
		if !errors.Is(rs[0].Err(), unix.ETIME) || !errors.Is(rs[1].Err(), unix.ECANCELED) {
			t.Fatalf("timed-out head: %v, then %v; want ETIME, ECANCELED", rs[0].Err(), rs[1].Err())
		}
		if el := time.Since(start); el < 30*time.Millisecond {
			t.Fatalf("deadline hit after %v", el)
		}
		// In the middle, and with the last op's deadline too.
		ids, ch = startChain(t, l,
			Op{Kind: OpWrite, Fd: fd, Buf: []byte("ab"), Offset: 0},
			Op{Kind: OpPoll, Fd: pr, Events: unix.POLLIN, Timeout: 20 * time.Millisecond},
			Op{Kind: OpFsync, Fd: fd, Timeout: time.Second})
		rs = results(t, ch, 3)
		wantInOrder(t, ids, rs)
		if rs[0].Res != 2 || !errors.Is(rs[1].Err(), unix.ETIME) || !errors.Is(rs[2].Err(), unix.ECANCELED) {
			t.Fatalf("timed-out middle: %+v", rs)
		}
		// A poll waits 150 ms for data; the one after it has a 60 ms
		// deadline that starts with it, so it finds the data.
		ids, ch = startChain(t, l,
			Op{Kind: OpPoll, Fd: pr, Events: unix.POLLIN},
			Op{Kind: OpPoll, Fd: pr, Events: unix.POLLIN, Timeout: 60 * time.Millisecond},
			Op{Kind: OpFsync, Fd: fd, Timeout: time.Second})
		time.Sleep(150 * time.Millisecond)
		unix.Write(pw, []byte("data"))
		rs = results(t, ch, 3)
		wantInOrder(t, ids, rs)
		if rs[0].Res&unix.POLLIN == 0 || rs[1].Res&unix.POLLIN == 0 || rs[2].Res != 0 {
			t.Fatalf("deadline counted from the op's start: %+v", rs)
		}
	})
}

// Cancelling a middle op that has not started yet (its predecessor polls
// a pipe) ends it and the rest with -ECANCELED once the predecessor
// completes; the predecessor keeps its real result. On io_uring the
// kernel cannot find a linked request before it starts, so the engine
// sends the cancel when it does.
func TestLinkedCancelNotStarted(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		fd := tempFd(t, "f")
		p1r, p1w := testPipe(t)
		p2r, _ := testPipe(t)
		ids, ch := startChain(t, l,
			Op{Kind: OpPoll, Fd: p1r, Events: unix.POLLIN},
			Op{Kind: OpPoll, Fd: p2r, Events: unix.POLLIN},
			Op{Kind: OpWrite, Fd: fd, Buf: []byte("never"), Offset: 0})
		// Cancel from a later round, when the chain is in the kernel.
		time.Sleep(20 * time.Millisecond)
		l.Post(func(h Handle) {
			if err := h.Cancel(ids[1]); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(20 * time.Millisecond)
		unix.Write(p1w, []byte("head"))
		rs := results(t, ch, 3)
		byID := map[OpID]Result{}
		for _, r := range rs {
			byID[r.ID] = r
		}
		if byID[ids[0]].Res&unix.POLLIN == 0 || !errors.Is(byID[ids[1]].Err(), unix.ECANCELED) || !errors.Is(byID[ids[2]].Err(), unix.ECANCELED) {
			t.Fatalf("chain with its middle op cancelled: %+v", rs)
		}
		wantInOrder(t, ids, rs)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Size != 0 {
			t.Fatalf("the write after the cancelled op ran: size %d %v", st.Size, err)
		}
	})
}

// Chains the kernel cannot run the engine's way are kept by the engine on
// io_uring too: a chain longer than the SQ, stream ops. A chain staged
// when the SQ has too little room left waits for the flush and goes whole.
func TestLinkedFallbacksAndFullSQ(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true, Depth: 8}, func(t *testing.T, l *Loop) {
		fd := tempFd(t, "f")
		ops := make([]Op, 12) // more than the 8-entry SQ
		for i := range ops {
			ops[i] = Op{Kind: OpWrite, Fd: fd, Buf: []byte{'a' + byte(i)}, Offset: int64(i)}
		}
		res, err := l.DoLinked(context.Background(), ops...)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if r.Res != 1 {
				t.Fatalf("op %d of a 12-op chain: %+v", i, r)
			}
		}
		a, b := socketpair(t)
		res, err = l.DoLinked(context.Background(),
			Op{Kind: OpSend, Fd: b, Buf: []byte("ping")},
			Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 8)}, // short: breaks the chain
			Op{Kind: OpFsync, Fd: fd})
		if err != nil || res[0].Res != 4 || res[1].Res != 4 || !errors.Is(res[2].Err(), unix.ECANCELED) {
			t.Fatalf("stream chain: %+v %v", res, err)
		}
		// Six single ops, then a three-op chain with two deadlines (five
		// SQEs) in the same round: the SQ has two left, so the six go out
		// first and the chain whole after them.
		ch := make(chan Result, 9)
		var ids []OpID
		done := make(chan struct{})
		l.Post(func(h Handle) {
			for i := 0; i < 6; i++ {
				h.Start(Op{Kind: OpWrite, Fd: fd, Buf: []byte("s"), Offset: int64(20 + i), Done: func(_ Handle, r Result) { ch <- r }})
			}
			ids, _ = h.StartLinked(
				Op{Kind: OpWrite, Fd: fd, Buf: []byte("chain"), Offset: 30, Timeout: time.Second, Done: func(_ Handle, r Result) { ch <- r }},
				Op{Kind: OpFdatasync, Fd: fd, Timeout: time.Second, Done: func(_ Handle, r Result) { ch <- r }},
				Op{Kind: OpRead, Fd: fd, Buf: make([]byte, 5), Offset: 30, Done: func(_ Handle, r Result) { ch <- r }})
			close(done)
		})
		<-done
		rs := results(t, ch, 9)
		var chain []Result
		for _, r := range rs {
			if r.Res < 0 {
				t.Fatalf("%+v", rs)
			}
			for _, id := range ids {
				if r.ID == id {
					chain = append(chain, r)
				}
			}
		}
		wantInOrder(t, ids, chain)
		if chain[0].Res != 5 || chain[1].Res != 0 || chain[2].Res != 5 {
			t.Fatalf("chain behind a nearly full SQ: %+v", chain)
		}
	})
}

// BenchmarkDoLinkedSync is goroutines each appending 4 KiB records to a
// file of its own with DoLinked(write, fdatasync) through the loop
// (NoDirect): chain=kernel sends each chain as linked SQEs in one
// submission (io_uring), chain=engine starts the fdatasync in the round
// after the write completed (the AIO way, forced on io_uring for the
// comparison). ns/op and syscalls/op are per chain.
func BenchmarkDoLinkedSync(b *testing.B) {
	for _, g := range []int{1, 4, 16} {
		for _, chain := range []string{"engine", "kernel"} {
			b.Run(fmt.Sprintf("goroutines=%d/chain=%s", g, chain), func(b *testing.B) {
				if chain == "engine" {
					testHooks.Store(&loopHooks{engineChains: true})
					defer testHooks.Store(nil)
				}
				l, err := NewLoop(Config{Backend: BackendUring, NoDirect: true})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				dir := b.TempDir()
				fds := make([]int, g)
				for w := range fds {
					f, err := os.Create(filepath.Join(dir, fmt.Sprint(w)))
					if err != nil {
						b.Fatal(err)
					}
					defer f.Close()
					fds[w] = int(f.Fd())
				}
				per := max(b.N/g, 1)
				before := l.Stats()
				var wg sync.WaitGroup
				b.ResetTimer()
				for w := range g {
					wg.Add(1)
					go func() {
						defer wg.Done()
						rec := make([]byte, 4096)
						for i := range per {
							res, err := l.DoLinked(context.Background(),
								Op{Kind: OpWrite, Fd: fds[w], Buf: rec, Offset: int64(i%1024) * 4096},
								Op{Kind: OpFdatasync, Fd: fds[w]})
							if err != nil || res[0].Res != 4096 || res[1].Res != 0 {
								b.Error(res, err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				d := l.Stats().Sub(before)
				n := float64(per * g)
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/chain")
				b.ReportMetric(float64(d.Syscalls())/n, "syscalls/chain")
				b.ReportMetric(float64(d.Rounds)/n, "rounds/chain")
			})
		}
	}
}

// The same chain kept by the engine on io_uring takes a submission per op:
// what TestKernelLinkedChainOneSubmit measures would fail without links.
func TestEngineChainOneSubmitPerOp(t *testing.T) {
	setHooks(t, &loopHooks{engineChains: true})
	l, err := NewLoop(Config{Backend: BackendUring, NoDirect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fd := tempFd(t, "f")
	mustDo(t, l, Op{Kind: OpFsync, Fd: fd})
	before := l.Stats()
	res, err := l.DoLinked(context.Background(),
		Op{Kind: OpWrite, Fd: fd, Buf: []byte("hello"), Offset: 0},
		Op{Kind: OpFdatasync, Fd: fd},
		Op{Kind: OpRead, Fd: fd, Buf: make([]byte, 5), Offset: 0})
	if err != nil || res[2].Res != 5 {
		t.Fatalf("%+v %v", res, err)
	}
	// The last op's Done closes DoLinked's channel before the loop has
	// counted the enter that submitted it (a sleeping Wait counts it when
	// it returns): a Post runs only after that. Its doorbell may add a
	// flush, never two, so a linked chain still shows fewer than 3.
	runOnLoop(l, func(Handle) error { return nil })
	d := l.Stats().Sub(before)
	if oneSubmit(d) || d.Flushes < 3 {
		t.Fatalf("engine-kept chain: %d flushes by size %v, want one per op", d.Flushes, d.Batches)
	}
}

// Close with a chain in the kernel ends it: every Done runs, in order.
func TestLinkedChainClose(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			l, err := NewLoop(Config{Backend: backend, NoDirect: true})
			if err != nil {
				t.Fatal(err)
			}
			fd := tempFd(t, "f")
			pr, _ := testPipe(t)
			ids, ch := startChain(t, l,
				Op{Kind: OpPoll, Fd: pr, Events: unix.POLLIN, Timeout: time.Hour},
				Op{Kind: OpWrite, Fd: fd, Buf: []byte("never"), Offset: 0},
				Op{Kind: OpFsync, Fd: fd})
			time.Sleep(10 * time.Millisecond)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			rs := results(t, ch, 3)
			wantInOrder(t, ids, rs)
			for _, r := range rs {
				if !errors.Is(r.Err(), unix.ECANCELED) {
					t.Fatalf("after Close: %+v", rs)
				}
			}
		})
	}
}

// A kernel-linked chain's member after its head names its fd and buffer
// plainly, not by registered slot: the kernel looks a slot up when it
// issues the member, after the op before it, and by then the slot may
// hold another file (here: UnregisterFile of b and RegisterFile of c while
// the head waits) or a removed buffer. Found in review: the write landed in
// c, or failed with EFAULT.
func TestLinkedMemberUsesNoSlot(t *testing.T) {
	l := uringLoop(t, Config{NoDirect: true})
	r, w := testPipe(t)
	b, c := openWith(t, ""), openWith(t, "")
	defer unix.Close(b)
	defer unix.Close(c)
	if err := l.RegisterFile(b); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	copy(mem, "X")
	fb, err := l.AddFixedBuffer(mem)
	if err != nil {
		t.Fatal(err)
	}
	ids, out := startChain(t, l,
		Op{Kind: OpRead, Fd: r, Buf: make([]byte, 1), Offset: -1},
		Op{Kind: OpWrite, Fd: b, Buf: mem[:1], Offset: 0})
	time.Sleep(50 * time.Millisecond) // the chain is in the kernel, its read waiting
	if err := l.UnregisterFile(b); err != nil {
		t.Fatal(err)
	}
	if err := l.RegisterFile(c); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveFixedBuffer(fb); err != nil {
		t.Fatal(err)
	}
	unix.Write(w, []byte("y"))
	rs := results(t, out, 2)
	wantInOrder(t, ids, rs)
	got := func(fd int) string {
		buf := make([]byte, 8)
		n, _ := unix.Pread(fd, buf, 0)
		return string(buf[:max(n, 0)])
	}
	if rs[1].Res != 1 || got(b) != "X" || got(c) != "" {
		t.Fatalf("member write = %d (%v); b holds %q, c %q; want 1, \"X\", \"\"", rs[1].Res, rs[1].Err(), got(b), got(c))
	}
}
