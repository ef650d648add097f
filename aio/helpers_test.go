//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func newContext(tb testing.TB, depth int) *Context {
	tb.Helper()
	c, err := Setup(depth)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Destroy(); err != nil {
			tb.Error(err)
		}
	})
	return c
}

func closeOnCleanup(tb testing.TB, fds ...int) {
	tb.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
}

// socketPair returns an AF_UNIX pair of type typ (SOCK_STREAM, SOCK_DGRAM),
// optionally O_NONBLOCK.
func socketPair(tb testing.TB, typ int, nonblock bool) (int, int) {
	tb.Helper()
	if nonblock {
		typ |= unix.SOCK_NONBLOCK
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	closeOnCleanup(tb, fds[0], fds[1])
	return fds[0], fds[1]
}

func tempFile(tb testing.TB, flags int) (int, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "data")
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|flags, 0o600)
	if err != nil {
		tb.Fatalf("open %s: %v", path, err)
	}
	closeOnCleanup(tb, fd)
	return fd, path
}

// waitEvents collects exactly n events, reaping first and sleeping in
// GetEvents only when the ring is empty.
func waitEvents(tb testing.TB, c *Context, n int, timeout time.Duration) []Event {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	evs := make([]Event, n)
	got := 0
	for got < n {
		if k := c.Reap(evs[got:]); k > 0 {
			got += k
			continue
		}
		left := time.Until(deadline)
		if left <= 0 {
			tb.Fatalf("got %d of %d events before timeout", got, n)
		}
		k, err := c.GetEvents(1, evs[got:], left)
		if err != nil {
			tb.Fatal(err)
		}
		got += k
	}
	return evs
}

// expectNoEvent fails if any event shows up within d.
func expectNoEvent(tb testing.TB, c *Context, d time.Duration) {
	tb.Helper()
	var ev [4]Event
	n, err := c.GetEvents(1, ev[:], d)
	if err != nil {
		tb.Fatal(err)
	}
	if n != 0 {
		tb.Fatalf("unexpected events: %+v", ev[:n])
	}
}

func submitAll(tb testing.TB, c *Context, cbs ...*Iocb) {
	tb.Helper()
	n, err := c.Submit(cbs)
	if err != nil || n != len(cbs) {
		tb.Fatalf("Submit(%d iocbs) = %d, %v", len(cbs), n, err)
	}
}

func checkRes(tb testing.TB, ev Event, data uint64, res int64) {
	tb.Helper()
	if ev.Data != data || ev.Res != res || ev.Res2 != 0 {
		tb.Fatalf("event %+v, want data=%d res=%d", ev, data, res)
	}
}

func addr(cb *Iocb) uint64 { return uint64(uintptr(unsafe.Pointer(cb))) }

func errRes(e unix.Errno) int64 { return -int64(e) }
