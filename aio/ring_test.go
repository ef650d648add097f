//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// 10,000 inline datagram ops in batches of 37 on a small ring: head
// wraps past nr many times, every event is reaped in userspace (often in
// two pieces) and no io_getevents is ever made.
func TestRingWrap(t *testing.T) {
	c := newContext(t, 16)
	nr := int(c.Nr())
	a, b := socketPair(t, unix.SOCK_DGRAM, true)
	const total, batch = 10000, 37
	cbs := make([]Iocb, batch)
	ptrs := make([]*Iocb, batch)
	wbufs := make([][8]byte, batch)
	rbufs := make([][8]byte, batch)
	evs := make([]Event, 64)
	var seq uint64
	rounds := 0
	ops := 0
	for ops < total {
		k := min(batch, (total-ops)/2) // total is even
		for _, write := range []bool{true, false} {
			for i := 0; i < k; i++ {
				if write {
					binary.LittleEndian.PutUint64(wbufs[i][:], seq+uint64(i))
					cbs[i].PrepPwrite(a, wbufs[i][:], 0)
				} else {
					rbufs[i] = [8]byte{}
					cbs[i].PrepPread(b, rbufs[i][:], 0)
				}
				cbs[i].Data = seq + uint64(i)
				ptrs[i] = &cbs[i]
			}
			submitAll(t, c, ptrs[:k]...)
			got := 0
			for got < k {
				n := c.Reap(evs[:k-got])
				if n == 0 {
					t.Fatalf("socket op not completed inline (%d of %d)", got, k)
				}
				for _, ev := range evs[:n] {
					checkRes(t, ev, seq+uint64(got), 8)
					got++
				}
			}
			ops += k
			rounds++
		}
		for i := 0; i < k; i++ {
			if v := binary.LittleEndian.Uint64(rbufs[i][:]); v != seq+uint64(i) {
				t.Fatalf("datagram %d carried %d", seq+uint64(i), v)
			}
		}
		seq += uint64(k)
	}
	got := c.Counters()
	if got.GetEvents != 0 || got.ReapedUser != uint64(ops) || got.Submits != uint64(rounds) {
		t.Fatalf("Counters = %+v, want %d submits, %d reaped, 0 io_getevents", got, rounds, ops)
	}
	t.Logf("nr=%d, %d ops, head wrapped %d times", nr, ops, ops/nr)
}

// A full ring is backpressure: Submit returns a short count (or 0 for
// EAGAIN) with no error, and the rest go in once the ring is reaped.
func TestBackpressure(t *testing.T) {
	c := newContext(t, 16)
	fd, _ := tempFile(t, 0)
	total := int(c.Nr()) + 100
	cbs := make([]Iocb, total)
	ptrs := make([]*Iocb, total)
	bufs := make([][8]byte, total)
	for i := range cbs {
		binary.LittleEndian.PutUint64(bufs[i][:], uint64(i))
		cbs[i].PrepPwrite(fd, bufs[i][:], int64(8*i))
		cbs[i].Data = uint64(i)
		ptrs[i] = &cbs[i]
	}
	n, err := c.Submit(ptrs)
	if err != nil || n == 0 || n >= total {
		t.Fatalf("Submit(%d) on nr=%d = %d, %v; want a short count", total, c.Nr(), n, err)
	}
	t.Logf("nr=%d: first Submit accepted %d of %d", c.Nr(), n, total)
	if m, err := c.Submit(ptrs[n:]); m != 0 || err != nil {
		t.Fatalf("Submit on a full ring = %d, %v; want 0, nil", m, err)
	}
	seen := make([]int, total)
	evs := make([]Event, 64)
	submitted := n
	for reaped := 0; reaped < total; {
		k := c.Reap(evs)
		if k == 0 && submitted == reaped {
			t.Fatalf("stalled at %d/%d submitted, %d reaped", submitted, total, reaped)
		}
		for _, ev := range evs[:k] {
			if ev.Res != 8 {
				t.Fatalf("event %+v", ev)
			}
			seen[ev.Data]++
		}
		reaped += k
		if submitted < total {
			m, err := c.Submit(ptrs[submitted:])
			if err != nil {
				t.Fatal(err)
			}
			submitted += m
		}
	}
	for i, s := range seen {
		if s != 1 {
			t.Fatalf("op %d completed %d times", i, s)
		}
	}
	expectNoEvent(t, c, 10*time.Millisecond)
	data := make([]byte, 8*total)
	if _, err := unix.Pread(fd, data, 0); err != nil {
		t.Fatal(err)
	}
	for i := range total {
		if v := binary.LittleEndian.Uint64(data[8*i:]); v != uint64(i) {
			t.Fatalf("file slot %d holds %d", i, v)
		}
	}
}

func TestSubmitErrors(t *testing.T) {
	c := newContext(t, 8)
	a, _ := socketPair(t, unix.SOCK_DGRAM, true)
	good := new(Iocb)
	good.PrepPwrite(a, []byte("ok"), 0)
	bad := new(Iocb)
	bad.PrepPwrite(-1, []byte("ok"), 0)

	n, err := c.Submit([]*Iocb{bad, good})
	if n != 0 || !errors.Is(err, unix.EBADF) {
		t.Fatalf("bad fd first: %d, %v; want 0, EBADF", n, err)
	}
	if !strings.Contains(err.Error(), "io_submit") || !strings.Contains(err.Error(), "fd=-1") {
		t.Fatalf("error does not name the call and iocb: %v", err)
	}
	t.Log(err)

	// A bad iocb after a good one shows up as a short count, then as the error.
	n, err = c.Submit([]*Iocb{good, bad})
	if n != 1 || err != nil {
		t.Fatalf("bad fd second: %d, %v; want 1, nil", n, err)
	}
	if n, err = c.Submit([]*Iocb{bad}); n != 0 || !errors.Is(err, unix.EBADF) {
		t.Fatalf("resubmitted bad iocb: %d, %v", n, err)
	}

	noop := new(Iocb)
	noop.Opcode = IOCB_CMD_NOOP
	noop.Fd = uint32(a)
	if n, err = c.Submit([]*Iocb{noop}); n != 0 || !errors.Is(err, unix.EINVAL) ||
		!strings.Contains(err.Error(), "IOCB_CMD_NOOP") {
		t.Fatalf("NOOP: %d, %v; want 0, EINVAL", n, err)
	}
	reserved := new(Iocb)
	reserved.PrepPwrite(a, []byte("ok"), 0)
	reserved.Reserved2 = 1
	if n, err = c.Submit([]*Iocb{reserved}); n != 0 || !errors.Is(err, unix.EINVAL) {
		t.Fatalf("reserved2 != 0: %d, %v; want 0, EINVAL", n, err)
	}
	wide := new(Iocb)
	wide.PrepPoll(a, 1<<16|unix.POLLIN)
	if n, err = c.Submit([]*Iocb{wide}); n != 0 || !errors.Is(err, unix.EINVAL) {
		t.Fatalf("poll mask > 16 bits: %d, %v; want 0, EINVAL", n, err)
	}
	if got := c.Reap(make([]Event, 4)); got != 1 {
		t.Fatalf("reaped %d, want only the one good op", got)
	}
	if got := c.Counters().Submits; got != 6 {
		t.Fatalf("Counters().Submits = %d, want 6", got)
	}
}

// Counters may be read from another goroutine while the owner works
// (meaningful under -race).
func TestCountersConcurrentRead(t *testing.T) {
	c := newContext(t, 64)
	a, _ := socketPair(t, unix.SOCK_DGRAM, true)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var last Counters
		for {
			select {
			case <-stop:
				return
			default:
			}
			cur := c.Counters()
			if cur.Submits < last.Submits || cur.ReapedUser < last.ReapedUser {
				t.Error("counters went backwards")
				return
			}
			last = cur
		}
	}()
	cb := new(Iocb)
	evs := make([]Event, 1)
	for i := range 2000 {
		cb.PrepPread(a, nil, 0)
		cb.Data = uint64(i)
		submitAll(t, c, cb)
		c.Reap(evs)
	}
	close(stop)
	wg.Wait()
	if got := c.Counters(); got.Submits != 2000 || got.ReapedUser != 2000 || got.GetEvents != 0 {
		t.Fatalf("Counters = %+v", got)
	}
}
