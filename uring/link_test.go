package uring

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The kernel's rules for linked SQEs (IOSQE_IO_LINK) and LINK_TIMEOUT that
// the engine's kernel-linked chains rely on (see the root package's
// link.go), checked on every ring setup the engine may get.

func udOrder(cqes []CQE) []uint64 {
	out := make([]uint64, len(cqes))
	for i, c := range cqes {
		out[i] = c.UserData
	}
	return out
}

// A failed request severs its link: the rest complete with -ECANCELED,
// after it, in chain order.
func TestLinkBrokenByError(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		buf := make([]byte, 4)
		s := sqe(t, r, 1)
		s.PrepRead(1<<20, buf, 0) // EBADF
		s.Flags |= IOSQE_IO_LINK
		s = sqe(t, r, 2)
		s.PrepNop()
		s.Flags |= IOSQE_IO_LINK
		sqe(t, r, 3).PrepNop()
		submit(t, r)
		got := reap(t, r, 3, 2*time.Second)
		t.Logf("CQE order %v", udOrder(got))
		wantRes(t, got[0], -int32(unix.EBADF))
		wantRes(t, got[1], -int32(unix.ECANCELED))
		wantRes(t, got[2], -int32(unix.ECANCELED))
		if got[0].UserData != 1 || got[1].UserData != 2 || got[2].UserData != 3 {
			t.Fatalf("CQE order %v, want 1 2 3", udOrder(got))
		}
	})
}

// A read or write that moves fewer bytes than asked severs the link (the
// kernel compares the result with the length it was given); a short recv
// without MSG_WAITALL does not.
func TestLinkShortTransfer(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		fd := tempFile(t)
		mustWrite(t, fd, []byte("hello"))
		buf := make([]byte, 100)
		s := sqe(t, r, 1)
		s.PrepRead(fd, buf, 0)
		s.Flags |= IOSQE_IO_LINK
		sqe(t, r, 2).PrepNop()
		submit(t, r)
		got := reap(t, r, 2, 2*time.Second)
		t.Logf("short read: %+v", got)
		wantRes(t, got[0], 5)
		wantRes(t, got[1], -int32(unix.ECANCELED))

		// A short write: 128 KiB into a non-blocking pipe that holds 64.
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
		closeLater(t, p[0], p[1])
		big := make([]byte, 128<<10)
		s = sqe(t, r, 3)
		s.PrepWrite(p[1], big, -1)
		s.Flags |= IOSQE_IO_LINK
		sqe(t, r, 4).PrepNop()
		submit(t, r)
		got = reap(t, r, 2, 2*time.Second)
		t.Logf("short write: %+v", got)
		if got[0].Res <= 0 || int(got[0].Res) >= len(big) {
			t.Fatalf("write to a 64 KiB pipe = %d, want short", got[0].Res)
		}
		wantRes(t, got[1], -int32(unix.ECANCELED))

		// A recv that returns what is there (4 of 100 bytes) keeps its link.
		a, b := socketpair(t, unix.SOCK_STREAM)
		mustWrite(t, b, []byte("ping"))
		s = sqe(t, r, 5)
		s.PrepRecv(a, buf, 0)
		s.Flags |= IOSQE_IO_LINK
		sqe(t, r, 6).PrepNop()
		submit(t, r)
		got = reap(t, r, 2, 2*time.Second)
		t.Logf("short recv: %+v", got)
		wantRes(t, got[0], 4)
		wantRes(t, got[1], 0)
		runtime.KeepAlive(buf)
		runtime.KeepAlive(big)
	})
}

// LINK_TIMEOUT: when it passes, the request before it completes with
// -ECANCELED (polled: a pipe read) or -EINTR (running in an io-wq worker),
// the timeout with -ETIME (or -ENOENT/-EALREADY for an interrupted worker),
// and the requests linked after the timeout with -ECANCELED. The timeout's
// CQE comes first here, but the engine takes them in either order.
func TestLinkTimeoutFires(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		for _, async := range []bool{false, true} {
			pr, _ := pipe(t)
			buf := make([]byte, 4)
			s := sqe(t, r, 1)
			s.PrepRead(pr, buf, -1)
			s.Flags |= IOSQE_IO_LINK
			if async {
				s.Flags |= IOSQE_ASYNC // a blocking read in an io-wq worker
			}
			ts := unix.NsecToTimespec(int64(20 * time.Millisecond))
			s = sqe(t, r, 2)
			s.PrepLinkTimeout(&ts, 0)
			s.Flags |= IOSQE_IO_LINK
			sqe(t, r, 3).PrepNop()
			start := time.Now()
			submit(t, r)
			got := reap(t, r, 3, 2*time.Second)
			t.Logf("async=%v after %v: %+v", async, time.Since(start), got)
			m := byData(t, got)
			if async {
				if res := m.get(t, 1).Res; res != -int32(unix.EINTR) && res != -int32(unix.ECANCELED) {
					t.Fatalf("timed-out io-wq read = %d", res)
				}
				// 6.1's plain ring (measured under qemu) also answered
				// -ECANCELED here, the read ended early and the NOP's CQE
				// came before the timeout's: an io-wq read is what the
				// kernel cancels as it can.
				if res := m.get(t, 2).Res; res != -int32(unix.EALREADY) && res != -int32(unix.ENOENT) && res != -int32(unix.ETIME) && res != -int32(unix.ECANCELED) {
					t.Fatalf("link timeout of an io-wq read = %d", res)
				}
			} else {
				wantRes(t, m.get(t, 1), -int32(unix.ECANCELED))
				wantRes(t, m.get(t, 2), -int32(unix.ETIME))
				if got[2].UserData != 3 {
					t.Fatalf("the op after the timeout completed before it: %v", udOrder(got))
				}
			}
			wantRes(t, m.get(t, 3), -int32(unix.ECANCELED))
			runtime.KeepAlive(&ts)
			runtime.KeepAlive(buf)
		}
	})
}

// A request that completes before its LINK_TIMEOUT: the timeout completes
// with -ECANCELED, the chain goes on. The timeout of the middle request of
// a chain starts with that request, not at submit; a timeout without
// IOSQE_IO_LINK ends the chain.
func TestLinkTimeoutNotReached(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		pr, pw := pipe(t)
		buf := make([]byte, 4)
		ts := unix.NsecToTimespec(int64(300 * time.Millisecond))
		// 1: poll waits 200 ms for the pipe; 2: read with a 300 ms deadline,
		// which would have passed by then if it counted from submit.
		s := sqe(t, r, 1)
		s.PrepPollAdd(pr, unix.POLLIN)
		s.Flags |= IOSQE_IO_LINK
		s = sqe(t, r, 2)
		s.PrepRead(pr, buf, -1)
		s.Flags |= IOSQE_IO_LINK
		s = sqe(t, r, 3)
		s.PrepLinkTimeout(&ts, 0)
		s.Flags |= IOSQE_IO_LINK
		sqe(t, r, 4).PrepNop()
		submit(t, r)
		time.Sleep(200 * time.Millisecond)
		go func() {
			time.Sleep(200 * time.Millisecond)
			unix.Write(pw, []byte("late"))
		}()
		mustWrite(t, pw, []byte("data"))
		got := reap(t, r, 4, 2*time.Second)
		t.Logf("%+v", got)
		m := byData(t, got)
		wantRes(t, m.get(t, 1), unix.POLLIN)
		wantRes(t, m.get(t, 2), 4)
		wantRes(t, m.get(t, 3), -int32(unix.ECANCELED))
		wantRes(t, m.get(t, 4), 0)
		// The poll, the read, then the NOP after the chain; the
		// timeout's own CQE anywhere after the read (6.18 posts it
		// before the NOP's, 6.1 after).
		if o := udOrder(got); indexOf(o, 1) > indexOf(o, 2) || indexOf(o, 2) > indexOf(o, 4) || indexOf(o, 2) > indexOf(o, 3) {
			t.Fatalf("CQE order %v", o)
		}
		// Without IOSQE_IO_LINK on the timeout, the next SQE is not linked:
		// it runs at once although the read before the timeout waits.
		s = sqe(t, r, 5)
		s.PrepRead(pr, buf, -1)
		s.Flags |= IOSQE_IO_LINK
		s = sqe(t, r, 6)
		s.PrepLinkTimeout(&ts, 0)
		sqe(t, r, 7).PrepNop()
		submit(t, r)
		got = reap(t, r, 1, 2*time.Second)
		if got[0].UserData != 7 {
			t.Fatalf("first CQE %+v, want the NOP's", got)
		}
		reap(t, r, 2, 2*time.Second) // "late", then the timeout's -ECANCELED
		runtime.KeepAlive(&ts)
		runtime.KeepAlive(buf)
	})
}

// ASYNC_CANCEL does not find a linked request that has not started: it
// answers -ENOENT and the request starts when its predecessor completes.
// Once started (here: waiting on a pipe), it is found and cancelled, and
// the requests linked after it complete with -ECANCELED. On a
// DEFER_TASKRUN ring the successor is issued by task work that runs after
// the predecessor's CQE is posted, and an enter submits before it runs
// task work: a cancel sent on seeing that CQE can still answer -ENOENT,
// and the next one finds the request.
func TestLinkCancelNotStarted(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		// Nonblocking pipes: the kernel waits for them with a poll it
		// can cancel. A blocking pipe's read goes to an io-wq worker on
		// 6.1, whose pipes take no NOWAIT, and a running worker's read
		// answers a cancel with -EALREADY (measured under qemu).
		p1r, p1w := pipeNonblock(t)
		p2r, _ := pipeNonblock(t)
		b1, b2 := make([]byte, 4), make([]byte, 4)
		s := sqe(t, r, 1)
		s.PrepRead(p1r, b1, -1)
		s.Flags |= IOSQE_IO_LINK
		s = sqe(t, r, 2)
		s.PrepRead(p2r, b2, -1)
		s.Flags |= IOSQE_IO_LINK
		sqe(t, r, 3).PrepNop()
		sqe(t, r, 100).PrepCancel(2, 0)
		submit(t, r)
		c := reapOne(t, r)
		t.Logf("cancel of a request not started: %+v", c)
		if c.UserData != 100 {
			t.Fatalf("first CQE %+v, want the cancel's", c)
		}
		wantRes(t, c, -int32(unix.ENOENT))
		mustWrite(t, p1w, []byte("go!!"))
		wantRes(t, reapOne(t, r), 4) // 1; 2 now waits on the empty pipe
		sqe(t, r, 101).PrepCancel(2, 0)
		submit(t, r)
		c = reapOne(t, r)
		t.Logf("cancel on seeing the predecessor's CQE: %+v", c)
		var got []CQE
		switch {
		case c.UserData == 101 && c.Res == -int32(unix.ENOENT):
			// Not issued yet when the cancel ran: on DEFER_TASKRUN
			// rings here, and on every ring on 6.1 (measured).
			sqe(t, r, 102).PrepCancel(2, 0)
			submit(t, r)
			got = reap(t, r, 3, 2*time.Second)
			t.Logf("cancel again: %+v", got)
			wantRes(t, byData(t, got).get(t, 102), 0)
		case c.UserData == 101:
			wantRes(t, c, 0)
			got = append([]CQE{c}, reap(t, r, 2, 2*time.Second)...)
		default:
			t.Fatalf("CQE %+v, want the cancel's", c)
		}
		m := byData(t, got)
		wantRes(t, m.get(t, 2), -int32(unix.ECANCELED))
		wantRes(t, m.get(t, 3), -int32(unix.ECANCELED))
		runtime.KeepAlive(b1)
		runtime.KeepAlive(b2)
	})
}

func indexOf(s []uint64, v uint64) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return len(s)
}

func pipeNonblock(t testing.TB) (int, int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	closeLater(t, p[0], p[1])
	return p[0], p[1]
}
