package uring

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A recv with IOSQE_BUFFER_SELECT gets its buffer from the provided ring
// only when data arrives, names it in the CQE, and fails with ENOBUFS when
// the ring is empty.
func TestBufRingRecv(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		br, err := r.SetupBufRing(4, 7)
		if err != nil {
			t.Fatalf("SetupBufRing: %v", err)
		}
		defer br.Close()
		bufs := [][]byte{make([]byte, 16), make([]byte, 16)}
		br.Add(bufs[0], 10)
		br.Add(bufs[1], 11)
		br.Advance()
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		for i, msg := range []string{"first", "second"} {
			s := sqe(t, r, uint64(i+1))
			s.PrepRecv(fds[0], nil, 0)
			s.Len = 16
			s.SelectBuffer(br.Group())
			submit(t, r)
			unix.Write(fds[1], []byte(msg))
			c := reap(t, r, 1, 2*time.Second)[0]
			bid, ok := c.BufferID()
			if c.Res != int32(len(msg)) || !ok || bid != uint16(10+i) || string(bufs[i][:c.Res]) != msg {
				t.Fatalf("recv %d: res %d, buffer %d (%v); want %d bytes %q in buffer %d", i, c.Res, bid, ok, len(msg), msg, 10+i)
			}
		}
		unix.Write(fds[1], []byte("x"))
		s := sqe(t, r, 3)
		s.PrepRecv(fds[0], nil, 0)
		s.Len = 16
		s.SelectBuffer(br.Group())
		submit(t, r)
		if c := reap(t, r, 1, 2*time.Second)[0]; c.Res != -int32(unix.ENOBUFS) {
			t.Fatalf("recv with an empty buffer ring = %d, want -ENOBUFS", c.Res)
		}
		// Given back, the buffer is taken again.
		br.Add(bufs[0], 10)
		br.Advance()
		s = sqe(t, r, 4)
		s.PrepRecv(fds[0], nil, 0)
		s.Len = 16
		s.SelectBuffer(br.Group())
		submit(t, r)
		if c := reap(t, r, 1, 2*time.Second)[0]; c.Res != 1 || bufs[0][0] != 'x' {
			t.Fatalf("recv after the buffer came back = %d %q", c.Res, bufs[0][:1])
		}
	})
}

func TestBufRingBadEntries(t *testing.T) {
	r := newRing(t, 8, 0)
	for _, n := range []uint32{0, 3, 1 << 16} {
		if _, err := r.SetupBufRing(n, 1); err == nil {
			t.Errorf("SetupBufRing(%d) succeeded", n)
		}
	}
}
