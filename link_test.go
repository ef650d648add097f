package uio

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestStartLinked(t *testing.T) {
	dir := t.TempDir()
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		f, err := os.Create(filepath.Join(dir, l.Backend()))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fd := int(f.Fd())
		ctx := context.Background()

		// write, fdatasync, read back: in order, all succeed.
		got := make([]byte, 5)
		res, err := l.DoLinked(ctx,
			Op{Kind: OpWrite, Fd: fd, Buf: []byte("hello"), Offset: 0},
			Op{Kind: OpFdatasync, Fd: fd},
			Op{Kind: OpRead, Fd: fd, Buf: got, Offset: 0})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Res != 5 || res[1].Res != 0 || res[2].Res != 5 || string(got) != "hello" {
			t.Fatalf("chain results %+v, read %q", res, got)
		}

		// A failing op breaks the chain: the rest are cancelled, in order.
		var order []OpKind
		results := make(chan []Result, 1)
		var rs []Result
		l.Post(func(h Handle) {
			done := func(h Handle, r Result) {
				order = append(order, r.Kind)
				rs = append(rs, r)
				if len(rs) == 3 {
					results <- rs
				}
			}
			_, err := h.StartLinked(
				Op{Kind: OpRead, Fd: 1 << 20, Buf: make([]byte, 4), Done: done}, // EBADF
				Op{Kind: OpFsync, Fd: fd, Done: done},
				Op{Kind: OpWrite, Fd: fd, Buf: []byte("x"), Done: done})
			if err != nil {
				t.Error(err)
			}
		})
		rs2 := <-results
		if !errors.Is(rs2[0].Err(), unix.EBADF) || !errors.Is(rs2[1].Err(), unix.ECANCELED) || !errors.Is(rs2[2].Err(), unix.ECANCELED) {
			t.Fatalf("broken chain: %v %v %v", rs2[0].Err(), rs2[1].Err(), rs2[2].Err())
		}
		if order[0] != OpRead || order[1] != OpFsync || order[2] != OpWrite {
			t.Fatalf("completion order %v", order)
		}

		// A short read breaks it too.
		res, err = l.DoLinked(ctx,
			Op{Kind: OpRead, Fd: fd, Buf: make([]byte, 100), Offset: 0},
			Op{Kind: OpFsync, Fd: fd})
		if err != nil || res[0].Res != 5 || !errors.Is(res[1].Err(), unix.ECANCELED) {
			t.Fatalf("short read chain: %+v %v", res, err)
		}

		// A timeout cannot be linked.
		if _, err := l.DoLinked(ctx, Op{Kind: OpTimeout}, Op{Kind: OpFsync, Fd: fd}); err == nil {
			t.Fatal("a linked OpTimeout was accepted")
		}
	})
}

// DoLinked of file ops by a lone caller runs them as plain syscalls, with
// the same chain rules.
func TestDoLinkedDirect(t *testing.T) {
	l, err := NewLoop(Config{Backend: BackendAIO})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	before := l.Stats()
	res, err := l.DoLinked(context.Background(),
		Op{Kind: OpWrite, Fd: int(f.Fd()), Buf: []byte("abc"), Offset: 0},
		Op{Kind: OpRead, Fd: 1 << 20, Buf: make([]byte, 1)},
		Op{Kind: OpFdatasync, Fd: int(f.Fd())})
	if err != nil || res[0].Res != 3 || !errors.Is(res[1].Err(), unix.EBADF) || !errors.Is(res[2].Err(), unix.ECANCELED) {
		t.Fatalf("%+v %v", res, err)
	}
	if d := l.Stats().Sub(before); d.Direct != 2 || d.Completions != 0 {
		t.Fatalf("%d direct ops, %d through the loop; want 2 and 0", d.Direct, d.Completions)
	}
}

// Op.Timeout on an op that would wait forever ends it with -ETIME; an op
// that completes in time is unaffected.
func TestOpDeadline(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		start := time.Now()
		r := mustDo(t, l, Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 8), Timeout: 30 * time.Millisecond})
		if !errors.Is(r.Err(), unix.ETIME) {
			t.Fatalf("recv with a 30 ms deadline on a silent socket = %d %v, want ETIME", r.Res, r.Err())
		}
		if el := time.Since(start); el < 30*time.Millisecond {
			t.Fatalf("deadline hit after %v", el)
		}
		unix.Write(b, []byte("data"))
		r = mustDo(t, l, Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 8), Timeout: time.Second})
		if r.Res != 4 {
			t.Fatalf("recv with data and a deadline = %d %v", r.Res, r.Err())
		}
		// In a chain, each op's deadline counts from its own start: the
		// recv waits for the send's data, then times out on silence.
		res, err := l.DoLinked(context.Background(),
			Op{Kind: OpSend, Fd: b, Buf: []byte("ping")},
			Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 4), Timeout: time.Second},
			Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 4), Timeout: 20 * time.Millisecond})
		if err != nil || res[0].Res != 4 || res[1].Res != 4 || !errors.Is(res[2].Err(), unix.ETIME) {
			t.Fatalf("chain with deadlines: %+v %v", res, err)
		}
	})
}
