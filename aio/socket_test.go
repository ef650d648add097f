//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"encoding/binary"
	"errors"
	"os"
	"os/signal"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Socket reads and writes run inside io_submit: the events are in the
// ring when Submit returns, and Reap collects them with no syscall.
func TestSocketInline(t *testing.T) {
	c := newContext(t, 8)
	a, b := socketPair(t, unix.SOCK_STREAM, true)
	msg := []byte("ping")
	buf := make([]byte, 16)
	var w, r Iocb
	w.PrepPwrite(a, msg, 0)
	w.Data = 1
	r.PrepPread(b, buf, 0)
	r.Data = 2
	submitAll(t, c, &w, &r)
	if !c.Ready() {
		t.Fatal("Ready() false right after Submit of socket ops")
	}
	var evs [4]Event
	if n := c.Reap(evs[:]); n != 2 {
		t.Fatalf("Reap = %d, want 2", n)
	}
	checkRes(t, evs[0], 1, 4)
	checkRes(t, evs[1], 2, 4)
	if string(buf[:4]) != "ping" {
		t.Fatalf("read %q", buf[:4])
	}
	if c.Ready() {
		t.Fatal("Ready() after reaping everything")
	}
	if got := c.Counters(); got != (Counters{Submits: 1, ReapedUser: 2}) {
		t.Fatalf("Counters = %+v", got)
	}
}

func TestSocketReadEmptyEAGAIN(t *testing.T) {
	c := newContext(t, 8)
	_, b := socketPair(t, unix.SOCK_STREAM, true)
	buf := make([]byte, 16)
	var r Iocb
	r.PrepPread(b, buf, 0)
	r.Data = 5
	submitAll(t, c, &r)
	var evs [1]Event
	if c.Reap(evs[:]) != 1 {
		t.Fatal("no inline completion")
	}
	checkRes(t, evs[0], 5, errRes(unix.EAGAIN))
}

func TestSocketNowaitOnBlocking(t *testing.T) {
	c := newContext(t, 8)
	_, b := socketPair(t, unix.SOCK_STREAM, false)
	buf := make([]byte, 16)
	var r Iocb
	r.PrepPread(b, buf, 0)
	r.RWFlags |= RWF_NOWAIT
	r.Data = 6
	start := time.Now()
	// would block forever without RWF_NOWAIT
	if n, err := c.Submit([]*Iocb{&r}); n == 0 && errors.Is(err, unix.EOPNOTSUPP) {
		// Linux 6.1 refuses RWF_NOWAIT on sockets (6.12 takes it); the
		// engine probes for it and falls back to nonblocking syscalls.
		t.Skipf("this kernel takes no RWF_NOWAIT on a socket: %v", err)
	} else if n != 1 || err != nil {
		t.Fatalf("Submit(1 iocb) = %d, %v", n, err)
	}
	var evs [1]Event
	if c.Reap(evs[:]) != 1 {
		t.Fatal("no inline completion")
	}
	checkRes(t, evs[0], 6, errRes(unix.EAGAIN))
	t.Logf("RWF_NOWAIT read on blocking socket: %v", time.Since(start))
}

func TestSocketEPIPE(t *testing.T) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGPIPE)
	defer signal.Stop(sigs)

	for _, tc := range []struct {
		name     string
		flags    uint32
		sigpipes int
	}{
		{"RWF_NOSIGNAL", RWF_NOSIGNAL, 0},
		{"default", 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newContext(t, 8)
			a, b := socketPair(t, unix.SOCK_STREAM, true)
			unix.Close(b)
			var w Iocb
			w.PrepPwrite(a, []byte("x"), 0)
			w.RWFlags |= tc.flags
			w.Data = 9
			if n, err := c.Submit([]*Iocb{&w}); n == 0 && errors.Is(err, unix.EOPNOTSUPP) && tc.flags != 0 {
				// Linux 6.15 added RWF_NOSIGNAL; io_submit refuses an
				// unknown RWF flag (the engine probes for it).
				t.Skipf("this kernel has no %s: %v", tc.name, err)
			} else if n != 1 || err != nil {
				t.Fatalf("Submit(1 iocb) = %d, %v", n, err)
			}
			var evs [1]Event
			if c.Reap(evs[:]) != 1 {
				t.Fatal("no inline completion")
			}
			checkRes(t, evs[0], 9, errRes(unix.EPIPE))
			got := 0
			timeout := time.After(100 * time.Millisecond)
		wait:
			for {
				select {
				case <-sigs:
					got++
				case <-timeout:
					break wait
				}
			}
			if got != tc.sigpipes {
				t.Fatalf("%d SIGPIPE, want %d", got, tc.sigpipes)
			}
		})
	}
}

func TestResfd(t *testing.T) {
	c := newContext(t, 8)
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, efd)
	a, _ := socketPair(t, unix.SOCK_STREAM, true)
	const n = 5
	msg := []byte("resfd")
	cbs := make([]*Iocb, n)
	for i := range cbs {
		cbs[i] = new(Iocb)
		cbs[i].PrepPwrite(a, msg, 0)
		cbs[i].SetResfd(efd)
		cbs[i].Data = uint64(i)
	}
	submitAll(t, c, cbs...)
	var cnt [8]byte
	if _, err := unix.Read(efd, cnt[:]); err != nil {
		t.Fatal(err)
	}
	if v := binary.NativeEndian.Uint64(cnt[:]); v != n {
		t.Fatalf("eventfd counter = %d, want %d", v, n)
	}
	evs := waitEvents(t, c, n, time.Second)
	for i, ev := range evs {
		checkRes(t, ev, uint64(i), int64(len(msg)))
	}
}

// With the ring header considered invalid, Reap must fall back to
// io_getevents(min_nr=0, timeout=0) and count it.
func TestReapFallback(t *testing.T) {
	c := newContext(t, 8)
	c.events = nil // as if the header had not validated
	a, _ := socketPair(t, unix.SOCK_DGRAM, true)
	cbs := make([]*Iocb, 3)
	for i := range cbs {
		cbs[i] = new(Iocb)
		cbs[i].PrepPwrite(a, []byte{byte(i)}, 0)
		cbs[i].Data = uint64(i)
	}
	submitAll(t, c, cbs...)
	if c.Ready() {
		t.Fatal("Ready() must be false without userspace reaping")
	}
	evs := make([]Event, 8)
	if n := c.Reap(evs); n != 3 {
		t.Fatalf("Reap = %d, want 3", n)
	}
	if n := c.Reap(evs); n != 0 {
		t.Fatalf("second Reap = %d", n)
	}
	if got := c.Counters(); got != (Counters{Submits: 1, GetEvents: 2, ReapedSyscall: 3}) {
		t.Fatalf("Counters = %+v", got)
	}
}
