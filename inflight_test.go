package uio

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Ops that wait in the kernel for a long time (recvs on idle sockets) must
// not keep others out: with a depth of 8, 200 idle recvs are armed, and a
// recv on a socket that has data, submitted after them, still completes.
// Before the in-flight model changed, the 9th op waited behind the idle ones
// forever (about 2,048 idle connections stopped a proxy of depth 4096).
func TestIdleOpsDoNotFillTheLoop(t *testing.T) {
	forEachBackend(t, Config{Depth: 8}, func(t *testing.T, l *Loop) {
		const idle = 200
		peers := make([]int, idle)
		idleDone := make(chan Result, idle)
		err := runOnLoop(l, func(h Handle) error {
			for i := range peers {
				a, b := socketpair(t)
				peers[i] = b
				if _, err := h.Start(Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 64), Done: func(h Handle, r Result) { idleDone <- r }}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		a, b := socketpair(t)
		if _, err := unix.Write(b, []byte("ready")); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		buf := make([]byte, 16)
		r, err := l.Do(ctx, Op{Kind: OpRecv, Fd: a, Buf: buf})
		if err != nil || r.Res != 5 {
			t.Fatalf("recv with data behind %d idle recvs (depth 8) = %d, %v; want 5 bytes", idle, r.Res, err)
		}
		// Data for the idle ones now: every one completes, whichever
		// context (AIO) or overflow (io_uring) holds it.
		for _, p := range peers {
			unix.Write(p, []byte("x"))
		}
		for i := 0; i < idle; i++ {
			select {
			case r := <-idleDone:
				if r.Res != 1 {
					t.Fatalf("idle recv %d = %d, want 1", i, r.Res)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("only %d of %d idle recvs completed after their data came", i, idle)
			}
		}
		if s := l.Stats(); l.Backend() == BackendAIO && s.AIOContexts < 2 {
			t.Errorf("AIO loop of depth 8 carried %d ops with %d contexts", idle+1, s.AIOContexts)
		}
	})
}

// A completion in an added AIO context wakes a sleeping loop (it signals
// the doorbell's eventfd), and io_uring completions beyond the CQ are not
// lost (the kernel's overflow is flushed).
func TestCompletionsBeyondTheFirstRing(t *testing.T) {
	forEachBackend(t, Config{Depth: 8, MaxInFlight: 8}, func(t *testing.T, l *Loop) {
		const n = 300
		done := make(chan Result, n)
		a, b := socketpair(t)
		err := runOnLoop(l, func(h Handle) error {
			for i := 0; i < n; i++ {
				if _, err := h.Start(Op{Kind: OpPoll, Fd: a, Events: unix.POLLIN, Done: func(h Handle, r Result) { done <- r }}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // the loop is asleep in the first context
		unix.Write(b, []byte("x"))        // all n polls fire at once
		for i := 0; i < n; i++ {
			select {
			case r := <-done:
				if r.Res&unix.POLLIN == 0 {
					t.Fatalf("poll %d = %#x, want POLLIN", i, r.Res)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%d of %d polls completed; stats %v", i, n, l.Stats())
			}
		}
		s := l.Stats()
		switch l.Backend() {
		case BackendUring:
			if s.CQOverflows == 0 || s.DroppedCQEs != 0 {
				t.Errorf("%d completions on a CQ of %d entries: %d overflow flushes, %d dropped; want > 0 and 0", n, 16, s.CQOverflows, s.DroppedCQEs)
			}
		case BackendAIO:
			if s.AIOContexts < 2 {
				t.Errorf("%d polls at depth 8 in %d AIO contexts", n, s.AIOContexts)
			}
		}
	})
}

// runOnLoop runs fn on the loop's goroutine and returns its error.
func runOnLoop(l *Loop, fn func(Handle) error) error {
	errc := make(chan error, 1)
	if err := l.Post(func(h Handle) { errc <- fn(h) }); err != nil {
		return err
	}
	return <-errc
}

// A round that leaves the io_uring SQ exactly full, just after the
// doorbell fired (a Post), must not sleep without the doorbell's read in
// the kernel: its re-arm found no SQE free, and the loop slept with
// nothing to wake it, so the next Post was never run (a Do hung in CI with
// 200 idle recvs at depth 8). It submits the full SQ first.
func TestDoorbellRearmedOnFullSQ(t *testing.T) {
	l, err := NewLoop(Config{Backend: BackendUring, Depth: 8})
	if err != nil {
		t.Skip(err)
	}
	defer l.Close()
	for round := 0; round < 20; round++ {
		sq := int(l.b.(*uringBackend).ring.SQEntries())
		if err := runOnLoop(l, func(h Handle) error {
			for range sq { // fills the SQ: the doorbell just fired and is not in it
				a, _ := socketpair(t)
				if _, err := h.Start(Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 8)}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		mustWakeSleeping(t, l, fmt.Sprintf("round %d, a loop that slept with a full SQ", round))
	}
}

// The same when the doorbell's re-arm is what found the SQ full: the loop
// reaps the doorbell's completion right after a round that staged exactly
// as many ops as the SQ holds (the Post came while it staged them).
func TestDoorbellRearmAfterFullRound(t *testing.T) {
	l, err := NewLoop(Config{Backend: BackendUring, Depth: 8})
	if err != nil {
		t.Skip(err)
	}
	defer l.Close()
	sq := int(l.b.(*uringBackend).ring.SQEntries())
	for round := 0; round < 20; round++ {
		staged := make(chan struct{})
		release := make(chan struct{})
		if err := l.Post(func(h Handle) {
			for range 3 * sq { // ends with the SQ full, unflushed
				a, _ := socketpair(t)
				h.Start(Op{Kind: OpRecv, Fd: a, Buf: make([]byte, 8)})
			}
			close(staged)
			<-release // the loop stages them after this returns
		}); err != nil {
			t.Fatal(err)
		}
		<-staged
		// Ring the doorbell now: the loop is running, so the Post does
		// not, but the read armed since the last wake completes on this
		// write, and the loop reaps it after staging a full SQ.
		l.b.(*uringBackend).Wake()
		close(release)
		mustWakeSleeping(t, l, fmt.Sprintf("round %d, a loop that slept after a full round", round))
	}
}

// mustWakeSleeping lets the loop fall asleep, then wants a Post run within
// 5 s: the doorbell must be in the kernel to wake it.
func mustWakeSleeping(t *testing.T, l *Loop, what string) {
	t.Helper()
	time.Sleep(10 * time.Millisecond)
	ran := make(chan struct{})
	if err := l.Post(func(Handle) { close(ran) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: a Post never ran: no doorbell to wake it", what)
	}
}
