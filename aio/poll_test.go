//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pollTargets returns (watched fd, peer fd to write) for a socket and a pipe.
func pollTargets(t *testing.T) map[string][2]int {
	a, b := socketPair(t, unix.SOCK_STREAM, true)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, p[0], p[1])
	return map[string][2]int{"socket": {b, a}, "pipe": {p[0], p[1]}}
}

func TestPoll(t *testing.T) {
	for name, fds := range pollTargets(t) {
		t.Run(name, func(t *testing.T) {
			c := newContext(t, 8)
			cb := new(Iocb)
			cb.PrepPoll(fds[0], unix.POLLIN)
			cb.Data = 42
			submitAll(t, c, cb)
			if c.Ready() || c.Reap(make([]Event, 1)) != 0 {
				t.Fatal("POLL on an idle fd completed")
			}
			expectNoEvent(t, c, 20*time.Millisecond)
			if _, err := unix.Write(fds[1], []byte("x")); err != nil {
				t.Fatal(err)
			}
			ev := waitEvents(t, c, 1, 5*time.Second)[0]
			if ev.Data != 42 || ev.Obj != addr(cb) || ev.Res&unix.POLLIN == 0 {
				t.Fatalf("poll event %+v", ev)
			}
			t.Logf("revents for POLLIN request: %#x", ev.Res)
			expectNoEvent(t, c, 20*time.Millisecond) // one-shot
		})
	}
}

func TestPollAlreadyReady(t *testing.T) {
	for name, fds := range pollTargets(t) {
		t.Run(name, func(t *testing.T) {
			c := newContext(t, 8)
			if _, err := unix.Write(fds[1], []byte("x")); err != nil {
				t.Fatal(err)
			}
			cb := new(Iocb)
			cb.PrepPoll(fds[0], unix.POLLIN)
			cb.Data = 43
			submitAll(t, c, cb)
			if !c.Ready() {
				t.Fatal("POLL on a ready fd did not complete inside io_submit")
			}
			var evs [2]Event
			if n := c.Reap(evs[:]); n != 1 || evs[0].Data != 43 || evs[0].Res&unix.POLLIN == 0 {
				t.Fatalf("Reap = %d, %+v", n, evs[0])
			}
		})
	}
}

func TestPollCancel(t *testing.T) {
	c := newContext(t, 8)
	_, b := socketPair(t, unix.SOCK_STREAM, true)
	cb := new(Iocb)
	cb.PrepPoll(b, unix.POLLIN)
	cb.Data = 77
	submitAll(t, c, cb)
	if err := c.Cancel(cb); err != nil {
		t.Fatalf("Cancel(POLL) = %v", err)
	}
	ev := waitEvents(t, c, 1, 5*time.Second)[0]
	if ev.Data != 77 || ev.Obj != addr(cb) || ev.Res != 0 {
		t.Fatalf("cancel completion %+v, want res 0", ev)
	}
	expectNoEvent(t, c, 100*time.Millisecond)
	if err := c.Cancel(cb); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("second Cancel = %v, want EINVAL", err)
	}
	if got := c.Counters().Cancels; got != 2 {
		t.Fatalf("Counters().Cancels = %d", got)
	}
}

func TestCancelReadEINVAL(t *testing.T) {
	c := newContext(t, 8)
	fd, _ := tempFile(t, 0)
	buf := make([]byte, 4096)
	r := new(Iocb)
	r.PrepPread(fd, buf, 0)
	r.Data = 1
	submitAll(t, c, r)
	err := c.Cancel(r)
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("Cancel(PREAD) = %v, want EINVAL", err)
	}
	t.Log(err)
	checkRes(t, waitEvents(t, c, 1, 5*time.Second)[0], 1, 0)
}

func TestGetEventsTimeout(t *testing.T) {
	c := newContext(t, 8)
	// A signal (the Go runtime's preemption SIGURG, for one) ends the wait
	// early with EINTR, which GetEvents returns as (0, nil); so the
	// timeout must hold on one of a few tries, not on every one (CI saw
	// one return after 42 µs).
	var early []time.Duration
	for range 5 {
		start := time.Now()
		n, err := c.GetEvents(1, make([]Event, 4), 50*time.Millisecond)
		if err != nil || n != 0 {
			t.Fatalf("GetEvents = %d, %v", n, err)
		}
		d := time.Since(start)
		if d >= 45*time.Millisecond {
			break
		}
		early = append(early, d)
	}
	if len(early) == 5 {
		t.Fatalf("every wait returned before the 50ms timeout: after %v", early)
	}
	if n, err := c.GetEvents(0, make([]Event, 4), 0); err != nil || n != 0 {
		t.Fatalf("GetEvents(0, timeout 0) = %d, %v", n, err)
	}
	if _, err := c.GetEvents(5, make([]Event, 4), 0); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("GetEvents(minNr > len) = %v, want EINVAL", err)
	}
}

func TestGetEventsWakesOnPoll(t *testing.T) {
	c := newContext(t, 8)
	a, b := socketPair(t, unix.SOCK_STREAM, true)
	cb := new(Iocb)
	cb.PrepPoll(b, unix.POLLIN)
	cb.Data = 5
	submitAll(t, c, cb)
	go func() {
		time.Sleep(20 * time.Millisecond)
		unix.Write(a, []byte("wake"))
	}()
	var evs [4]Event
	n, err := c.GetEvents(1, evs[:], -1)
	if err != nil || n != 1 || evs[0].Data != 5 || evs[0].Res&unix.POLLIN == 0 {
		t.Fatalf("GetEvents = %d, %v, %+v", n, err, evs[0])
	}
	if got := c.Counters(); got.GetEvents != 1 || got.ReapedSyscall != 1 {
		t.Fatalf("Counters = %+v", got)
	}
}
