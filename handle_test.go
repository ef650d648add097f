package uio

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitAsleep waits until the loop sleeps in the kernel.
func waitAsleep(t *testing.T, l *Loop) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !l.sleeping.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the loop did not go to sleep within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func mustPanicNotOnLoop(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if err, ok := r.(error); !ok || !errors.Is(err, ErrNotOnLoop) {
			t.Errorf("%s off the loop: recovered %v, want a panic with ErrNotOnLoop", what, r)
		}
	}()
	f()
}

// A Handle kept by the loop's code and used from another goroutine is an
// error, not a data race on the loop's state, whenever the loop sleeps;
// so are a BufferPool's Put and a Timer's Stop. Before the Handle, these
// were Loop methods any goroutine could call.
func TestHandleOffLoop(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, _ := socketpair(t)
		pool, err := l.NewBufferPool(64, 4)
		if err != nil {
			t.Fatal(err)
		}
		var kept Handle
		var timer *Timer
		var recvID OpID
		recvDone := make(chan Result, 1)
		if err := runOnLoop(l, func(h Handle) error {
			kept = h
			timer = h.AfterFunc(time.Hour, func(Handle) { t.Error("the hour-long timer fired") })
			recvID, err = h.Start(Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 8), Done: func(_ Handle, r Result) { recvDone <- r }})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if kept.Loop() != l {
			t.Fatalf("Handle.Loop() = %p, want the loop %p", kept.Loop(), l)
		}
		waitAsleep(t, l)
		if _, err := kept.Start(Op{Kind: OpTimeout, Timeout: time.Millisecond}); !errors.Is(err, ErrNotOnLoop) {
			t.Errorf("Start off the loop = %v, want ErrNotOnLoop", err)
		}
		if _, err := kept.StartLinked(Op{Kind: OpTimeout, Timeout: time.Millisecond}); !errors.Is(err, ErrNotOnLoop) {
			t.Errorf("StartLinked off the loop = %v, want ErrNotOnLoop", err)
		}
		if err := kept.Cancel(recvID); !errors.Is(err, ErrNotOnLoop) {
			t.Errorf("Cancel off the loop = %v, want ErrNotOnLoop", err)
		}
		mustPanicNotOnLoop(t, "AfterFunc", func() { kept.AfterFunc(time.Hour, func(Handle) {}) })
		mustPanicNotOnLoop(t, "Timer.Stop", func() { timer.Stop() })
		if err := pool.Put(0); !errors.Is(err, ErrNotOnLoop) {
			t.Errorf("BufferPool.Put off the loop = %v, want ErrNotOnLoop", err)
		}
		// None of it reached the loop: the recv is still waiting and the
		// timer still armed; from the loop both work.
		select {
		case r := <-recvDone:
			t.Fatalf("the recv completed (%d) though its cancel was refused", r.Res)
		default:
		}
		if err := runOnLoop(l, func(h Handle) error {
			if !timer.Stop() {
				t.Error("Timer.Stop on the loop: the timer was not pending")
			}
			if err := pool.Put(99); err == nil {
				t.Error("Put of a buffer the pool never gave out: no error")
			}
			return h.Cancel(recvID)
		}); err != nil {
			t.Fatal(err)
		}
		if r := <-recvDone; r.Res != -int32(unix.ECANCELED) {
			t.Errorf("cancelled recv = %d, want -ECANCELED", r.Res)
		}
		if _, err := (Handle{}).Start(Op{Kind: OpTimeout}); !errors.Is(err, ErrNotOnLoop) {
			t.Errorf("the zero Handle's Start = %v, want ErrNotOnLoop", err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := kept.Start(Op{Kind: OpTimeout}); !errors.Is(err, ErrNotOnLoop) {
			t.Errorf("Start after the loop exited = %v, want ErrNotOnLoop", err)
		}
	})
}

// Every callback the loop runs gets its Handle: a Done, a Posted function
// and a timer can each start the next op.
func TestHandleInEveryCallback(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		if err := l.Post(nil); err == nil {
			t.Error("Post(nil) succeeded; the loop would call a nil function")
		}
		got := make(chan string, 1)
		err := l.Post(func(h Handle) {
			h.AfterFunc(time.Millisecond, func(h Handle) {
				_, err := h.Start(Op{Kind: OpTimeout, Timeout: time.Millisecond, Done: func(h Handle, r Result) {
					if h.Loop() != l || r.Res != -int32(unix.ETIME) {
						got <- "the timeout's Done got another loop or a wrong result"
						return
					}
					if err := l.Post(func(h Handle) { got <- "ok" }); err != nil {
						got <- err.Error()
					}
				}})
				if err != nil {
					got <- err.Error()
				}
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-got:
			if s != "ok" {
				t.Fatal(s)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the chain Post -> AfterFunc -> Start -> Done -> Post did not finish in 5 s")
		}
	})
}

// A call that waits for the loop, made from the loop's own code, fails
// with ErrWaitOnLoop instead of waiting for itself forever.
func TestWaitingCallsFromTheLoop(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		a, _ := socketpair(t)
		errs := make(chan map[string]error, 1)
		l.Post(func(h Handle) {
			m := map[string]error{}
			_, m["Do"] = l.Do(context.Background(), Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 1)})
			_, m["DoLinked"] = l.DoLinked(context.Background(), Op{Kind: OpFsync, Fd: a})
			m["RegisterFile"] = l.RegisterFile(a)
			m["UnregisterFile"] = l.UnregisterFile(a)
			m["RegisterBuffers"] = l.RegisterBuffers(nil)
			m["Close"] = l.Close()
			errs <- m
		})
		select {
		case m := <-errs:
			for name, err := range m {
				if !errors.Is(err, ErrWaitOnLoop) {
					t.Errorf("%s from the loop = %v, want ErrWaitOnLoop", name, err)
				}
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a waiting call made from the loop hung")
		}
		// The loop still runs and closes normally.
		mustDo(t, l, Op{Kind: OpTimeout, Timeout: time.Millisecond})
	})
}
