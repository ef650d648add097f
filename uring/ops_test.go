package uring

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPollAddOneShot(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		pr, pw := pipe(t)
		sqe(t, r, 1).PrepPollAdd(pr, unix.POLLIN)
		submit(t, r)
		noMoreCQEs(t, r, 10*time.Millisecond)
		mustWrite(t, pw, []byte("a"))
		c := reapOne(t, r)
		if c.UserData != 1 || c.Res&unix.POLLIN == 0 || c.Flags&IORING_CQE_F_MORE != 0 {
			t.Fatalf("%+v", c)
		}
		mustWrite(t, pw, []byte("b")) // one-shot: no second CQE
		noMoreCQEs(t, r, 10*time.Millisecond)
	})
}

func TestPollMultishotAndRemove(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		pr, pw := pipe(t)
		sqe(t, r, 7).PrepPollMultishot(pr, unix.POLLIN)
		submit(t, r)
		for i := 0; i < 3; i++ {
			mustWrite(t, pw, []byte("x"))
			c := reapOne(t, r)
			if c.UserData != 7 || c.Res&unix.POLLIN == 0 || c.Flags&IORING_CQE_F_MORE == 0 {
				t.Fatalf("shot %d: %+v", i, c)
			}
		}
		sqe(t, r, 8).PrepPollRemove(7)
		submit(t, r)
		m := byData(t, reap(t, r, 2, time.Second))
		wantRes(t, m.get(t, 7), -int32(unix.ECANCELED))
		if m.get(t, 7).Flags&IORING_CQE_F_MORE != 0 {
			t.Fatal("final multishot CQE still has F_MORE")
		}
		wantRes(t, m.get(t, 8), 0)
		// Removing a poll that is gone: -ENOENT.
		sqe(t, r, 9).PrepPollRemove(7)
		submit(t, r)
		wantRes(t, reapOne(t, r), -int32(unix.ENOENT))
	})
}

func TestPollRemoveOneShot(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		pr, _ := pipe(t)
		sqe(t, r, 1).PrepPollAdd(pr, unix.POLLIN)
		submit(t, r)
		sqe(t, r, 2).PrepPollRemove(1)
		submit(t, r)
		m := byData(t, reap(t, r, 2, time.Second))
		wantRes(t, m.get(t, 1), -int32(unix.ECANCELED))
		wantRes(t, m.get(t, 2), 0)
	})
}

func sendRecv(t *testing.T, r *Ring, a, b int) {
	t.Helper()
	msg := []byte("hello over io_uring")
	buf := make([]byte, 64)
	sqe(t, r, 2).PrepRecv(b, buf, 0) // armed before data exists
	submit(t, r)
	sqe(t, r, 1).PrepSend(a, msg, unix.MSG_NOSIGNAL)
	submit(t, r)
	m := byData(t, reap(t, r, 2, 2*time.Second))
	wantRes(t, m.get(t, 1), int32(len(msg)))
	wantRes(t, m.get(t, 2), int32(len(msg)))
	if !bytes.Equal(buf[:len(msg)], msg) {
		t.Fatalf("got %q", buf[:len(msg)])
	}
	// Data already queued: RECV completes inline; MSG_PEEK flag is honoured.
	mustWrite(t, a, []byte("peek"))
	sqe(t, r, 3).PrepRecv(b, buf, unix.MSG_PEEK)
	sqe(t, r, 4).PrepRecv(b, buf[8:], 0)
	submit(t, r)
	got := byData(t, reap(t, r, 2, 2*time.Second))
	wantRes(t, got.get(t, 4), 4)
	if string(buf[:4]) != "peek" || string(buf[8:12]) != "peek" {
		t.Fatalf("peek/recv: %q %q", buf[:4], buf[8:12])
	}
	runtime.KeepAlive(msg)
	runtime.KeepAlive(buf)
}

func TestRecvSendSocketpair(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		a, b := socketpair(t, unix.SOCK_STREAM)
		sendRecv(t, r, a, b)
	})
}

// tcpListener returns a listening socket on loopback and its address.
func tcpListener(t *testing.T, family int) (int, unix.Sockaddr) {
	t.Helper()
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("socket(%d): %v", family, err)
	}
	closeLater(t, fd)
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if family == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Skipf("bind %v: %v", sa, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, bound
}

// acceptConnect ACCEPTs and CONNECTs in one Submit; returns (client, server).
func acceptConnect(t *testing.T, r *Ring, lfd int, family int, addr unix.Sockaddr) (int, int) {
	t.Helper()
	cfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeLater(t, cfd)
	sa := new(Sockaddr)
	if err := sa.Set(addr); err != nil {
		t.Fatal(err)
	}
	sqe(t, r, 1).PrepAccept(lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
	sqe(t, r, 2).PrepConnect(cfd, sa)
	if n := submit(t, r); n != 2 {
		t.Fatalf("Submit=%d", n)
	}
	m := byData(t, reap(t, r, 2, 2*time.Second))
	wantRes(t, m.get(t, 2), 0)
	if m.get(t, 1).Res < 0 {
		t.Fatalf("accept: %v", m.get(t, 1).Err())
	}
	sfd := int(m.get(t, 1).Res)
	closeLater(t, sfd)
	fl, err := unix.FcntlInt(uintptr(sfd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Fatalf("accept4 flags not applied to fd %d (%v): %#x %v", sfd, addr, fl, err)
	}
	runtime.KeepAlive(sa)
	return cfd, sfd
}

func TestAcceptConnectTCP4(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		lfd, addr := tcpListener(t, unix.AF_INET)
		c, s := acceptConnect(t, r, lfd, unix.AF_INET, addr)
		peer, err := unix.Getpeername(c)
		if err != nil || peer.(*unix.SockaddrInet4).Port != addr.(*unix.SockaddrInet4).Port {
			t.Fatalf("peer %v %v", peer, err)
		}
		sendRecv(t, r, c, s) // RECV/SEND over TCP loopback
		sendRecv(t, r, s, c)
	})
}

func TestAcceptConnectTCP6(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		lfd, addr := tcpListener(t, unix.AF_INET6)
		c, s := acceptConnect(t, r, lfd, unix.AF_INET6, addr)
		sendRecv(t, r, c, s)
	})
}

func TestConnectUnix(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		for _, name := range []string{t.TempDir() + "/sock", "@uio-uring-test-" + t.Name()} {
			lfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			closeLater(t, lfd)
			if err := unix.Bind(lfd, &unix.SockaddrUnix{Name: name}); err != nil {
				t.Fatal(err)
			}
			unix.Listen(lfd, 4)
			c, s := acceptConnect(t, r, lfd, unix.AF_UNIX, &unix.SockaddrUnix{Name: name})
			sendRecv(t, r, c, s)
		}
	})
}

func TestConnectRefused(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		lfd, addr := tcpListener(t, unix.AF_INET)
		unix.Close(lfd) // port now closed
		cfd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		closeLater(t, cfd)
		sa := new(Sockaddr)
		sa.Set(addr)
		sqe(t, r, 1).PrepConnect(cfd, sa)
		submit(t, r)
		wantRes(t, reapOne(t, r), -int32(unix.ECONNREFUSED))
	})
}

func TestSockaddrSet(t *testing.T) {
	var sa Sockaddr
	if err := sa.Set(&unix.SockaddrInet4{Port: 0x1234, Addr: [4]byte{10, 0, 0, 1}}); err != nil || sa.Len() != 16 {
		t.Fatal(err, sa.Len())
	}
	raw := (*[16]byte)(unsafePtr2(&sa))
	if raw[0] != unix.AF_INET || raw[2] != 0x12 || raw[3] != 0x34 || raw[4] != 10 || raw[7] != 1 {
		t.Fatalf("raw % x", raw[:8])
	}
	if err := sa.Set(&unix.SockaddrInet6{Port: 80, ZoneId: 3}); err != nil || sa.Len() != 28 {
		t.Fatal(err, sa.Len())
	}
	if err := sa.Set(&unix.SockaddrUnix{Name: "/x"}); err != nil || sa.Len() != 2+2+1 {
		t.Fatal(err, sa.Len())
	}
	if err := sa.Set(&unix.SockaddrUnix{Name: "@x"}); err != nil || sa.Len() != 2+2 {
		t.Fatal(err, sa.Len())
	}
	if err := sa.Set(&unix.SockaddrNetlink{}); !isErrno(err, unix.EAFNOSUPPORT) {
		t.Fatal(err)
	}
	if err := sa.Set(&unix.SockaddrUnix{Name: string(make([]byte, 200))}); !isErrno(err, unix.EINVAL) {
		t.Fatal(err)
	}
}

func TestReadWriteFile(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		fd := tempFile(t)
		sqe(t, r, 1).PrepWrite(fd, []byte("hello world"), 0)
		submit(t, r)
		wantRes(t, reapOne(t, r), 11)
		sqe(t, r, 2).PrepWrite(fd, []byte("WORLD"), 6)
		submit(t, r)
		wantRes(t, reapOne(t, r), 5)
		buf := make([]byte, 32)
		sqe(t, r, 3).PrepRead(fd, buf, 0)
		submit(t, r)
		wantRes(t, reapOne(t, r), 11)
		if string(buf[:11]) != "hello WORLD" {
			t.Fatalf("%q", buf[:11])
		}
		// off -1: current file position, advanced by each op.
		fd2 := tempFile(t)
		for i := 0; i < 2; i++ {
			sqe(t, r, 4).PrepWrite(fd2, []byte("abc"), -1)
			submit(t, r)
			wantRes(t, reapOne(t, r), 3)
		}
		unix.Seek(fd2, 1, 0)
		sqe(t, r, 5).PrepRead(fd2, buf, -1)
		submit(t, r)
		wantRes(t, reapOne(t, r), 5)
		if string(buf[:5]) != "bcabc" {
			t.Fatalf("%q", buf[:5])
		}
		runtime.KeepAlive(buf)
	})
}

func TestReadWritePipe(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		pr, pw := pipe(t)
		buf := make([]byte, 16)
		sqe(t, r, 1).PrepRead(pr, buf, -1) // waits for data
		submit(t, r)
		sqe(t, r, 2).PrepWrite(pw, []byte("pipe!"), -1)
		submit(t, r)
		m := byData(t, reap(t, r, 2, 2*time.Second))
		wantRes(t, m.get(t, 1), 5)
		wantRes(t, m.get(t, 2), 5)
		if string(buf[:5]) != "pipe!" {
			t.Fatalf("%q", buf[:5])
		}
		runtime.KeepAlive(buf)
	})
}

func TestReadvWritev(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		fd := tempFile(t)
		pr, pw := pipe(t)
		for _, c := range []struct {
			name   string
			rd, wr int
			off    int64
		}{{"file", fd, fd, 0}, {"pipe", pr, pw, -1}} {
			w1, w2 := []byte("foo"), []byte("barbaz")
			wiov := make([]unix.Iovec, 2)
			wiov[0].Base, wiov[1].Base = &w1[0], &w2[0]
			wiov[0].SetLen(len(w1))
			wiov[1].SetLen(len(w2))
			sqe(t, r, 1).PrepWritev(c.wr, wiov, c.off)
			submit(t, r)
			wantRes(t, reapOne(t, r), 9)
			r1, r2 := make([]byte, 4), make([]byte, 8)
			riov := make([]unix.Iovec, 2)
			riov[0].Base, riov[1].Base = &r1[0], &r2[0]
			riov[0].SetLen(len(r1))
			riov[1].SetLen(len(r2))
			sqe(t, r, 2).PrepReadv(c.rd, riov, c.off)
			submit(t, r)
			wantRes(t, reapOne(t, r), 9)
			if string(r1) != "foob" || string(r2[:5]) != "arbaz" {
				t.Fatalf("%s: %q %q", c.name, r1, r2)
			}
			runtime.KeepAlive(wiov)
			runtime.KeepAlive(riov)
		}
	})
}

func TestSplice(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		srcA, srcB := socketpair(t, unix.SOCK_STREAM)
		dstA, dstB := socketpair(t, unix.SOCK_STREAM)
		pr, pw := pipe(t)
		msg := []byte("spliced through a pipe")
		mustWrite(t, srcA, msg)
		n := uint32(len(msg))
		s := sqe(t, r, 1)
		s.PrepSplice(srcB, -1, pw, -1, n, 0) // socket -> pipe
		s.SetFlags(IOSQE_IO_LINK)
		sqe(t, r, 2).PrepSplice(pr, -1, dstA, -1, n, 0) // pipe -> socket
		if k := submit(t, r); k != 2 {
			t.Fatalf("Submit=%d", k)
		}
		m := byData(t, reap(t, r, 2, 2*time.Second))
		wantRes(t, m.get(t, 1), int32(n))
		wantRes(t, m.get(t, 2), int32(n))
		if got := mustRead(t, dstB, 64); !bytes.Equal(got, msg) {
			t.Fatalf("%q", got)
		}
	})
}

func TestFsync(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		fd := tempFile(t)
		mustWrite(t, fd, []byte("durable"))
		sqe(t, r, 1).PrepFsync(fd, 0)
		sqe(t, r, 2).PrepFsync(fd, IORING_FSYNC_DATASYNC)
		submit(t, r)
		m := byData(t, reap(t, r, 2, 5*time.Second))
		wantRes(t, m.get(t, 1), 0)
		wantRes(t, m.get(t, 2), 0)
		sqe(t, r, 3).PrepFsync(fd, 0xff) // unknown fsync flag
		submit(t, r)
		wantRes(t, reapOne(t, r), -int32(unix.EINVAL))
	})
}

func TestClose(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(p[1])
		sqe(t, r, 1).PrepClose(p[0])
		submit(t, r)
		wantRes(t, reapOne(t, r), 0)
		if _, err := unix.FcntlInt(uintptr(p[0]), unix.F_GETFD, 0); err != unix.EBADF {
			t.Fatalf("fd still open: F_GETFD err=%v", err)
		}
		sqe(t, r, 2).PrepClose(p[0])
		submit(t, r)
		wantRes(t, reapOne(t, r), -int32(unix.EBADF))
	})
}

func TestTimeout(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		ts := &unix.Timespec{Nsec: int64(20 * time.Millisecond)}
		sqe(t, r, 1).PrepTimeout(ts, 0, 0)
		start := time.Now()
		submit(t, r)
		c := reapOne(t, r)
		el := time.Since(start)
		wantRes(t, c, -int32(unix.ETIME))
		if el < 19*time.Millisecond || el > 80*time.Millisecond {
			t.Fatalf("20ms timeout fired after %v", el)
		}
		t.Logf("20ms timeout fired after %v", el)
		runtime.KeepAlive(ts)
	})
}

func TestTimeoutCount(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		ts := &unix.Timespec{Sec: 10}
		sqe(t, r, 1).PrepTimeout(ts, 2, 0)
		submit(t, r)
		noMoreCQEs(t, r, 5*time.Millisecond)
		sqe(t, r, 2).PrepNop()
		sqe(t, r, 3).PrepNop()
		submit(t, r)
		start := time.Now()
		m := byData(t, reap(t, r, 3, 2*time.Second))
		wantRes(t, m.get(t, 1), 0) // count reached, not -ETIME
		if time.Since(start) > time.Second {
			t.Fatal("count-based timeout waited for the timer")
		}
		// Absolute timeout on CLOCK_MONOTONIC in the past fires immediately.
		var now unix.Timespec
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &now)
		sqe(t, r, 4).PrepTimeout(&now, 0, IORING_TIMEOUT_ABS)
		submit(t, r)
		wantRes(t, reapOne(t, r), -int32(unix.ETIME))
		runtime.KeepAlive(ts)
	})
}

func TestCancelRecv(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		_, b := socketpair(t, unix.SOCK_STREAM)
		buf := make([]byte, 64)
		sqe(t, r, 100).PrepRecv(b, buf, 0)
		submit(t, r)
		noMoreCQEs(t, r, 5*time.Millisecond)
		sqe(t, r, 200).PrepCancel(100, 0)
		submit(t, r)
		m := byData(t, reap(t, r, 2, 2*time.Second))
		wantRes(t, m.get(t, 100), -int32(unix.ECANCELED))
		wantRes(t, m.get(t, 200), 0)
		noMoreCQEs(t, r, 10*time.Millisecond) // exactly one CQE each
		sqe(t, r, 300).PrepCancel(100, 0)
		submit(t, r)
		wantRes(t, reapOne(t, r), -int32(unix.ENOENT))

		// Cancel by fd, all matches.
		sqe(t, r, 101).PrepRecv(b, buf, 0)
		sqe(t, r, 102).PrepPollAdd(b, unix.POLLIN)
		submit(t, r)
		sqe(t, r, 201).PrepCancelFd(b, IORING_ASYNC_CANCEL_ALL)
		submit(t, r)
		m = byData(t, reap(t, r, 3, 2*time.Second))
		wantRes(t, m.get(t, 101), -int32(unix.ECANCELED))
		wantRes(t, m.get(t, 102), -int32(unix.ECANCELED))
		wantRes(t, m.get(t, 201), 2)
		runtime.KeepAlive(buf)
	})
}

func TestShutdown(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		a, b := socketpair(t, unix.SOCK_STREAM)
		buf := make([]byte, 8)
		sqe(t, r, 1).PrepRecv(b, buf, 0)
		submit(t, r)
		sqe(t, r, 2).PrepShutdown(a, unix.SHUT_WR)
		submit(t, r)
		m := byData(t, reap(t, r, 2, 2*time.Second))
		wantRes(t, m.get(t, 2), 0)
		wantRes(t, m.get(t, 1), 0) // EOF
		if _, err := unix.Write(a, []byte("x")); err != unix.EPIPE {
			t.Fatalf("write after SHUT_WR: %v", err)
		}
		runtime.KeepAlive(buf)
	})
}

func TestNop(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		s := sqe(t, r, 5)
		s.PrepNop()
		s.SetFlags(IOSQE_CQE_SKIP_SUCCESS)
		sqe(t, r, 6).PrepNop()
		submit(t, r)
		c := reapOne(t, r)
		if c.UserData != 6 {
			t.Fatalf("%+v", c)
		}
		noMoreCQEs(t, r, 5*time.Millisecond)
	})
}
