package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand"
	"time"

	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

// verify is a verifying random workload at a fixed queue depth: O_DIRECT
// reads and writes of mixed sizes (4 KiB .. 1 MiB) through the uio engine,
// QD ops in flight at all times, until -bytes have moved. Every 4 KiB block
// written carries its block number, a generation and a pseudo-random body
// derived from both; every read checks each block it covers against the
// last generation written there (blocks never written are not checked).
// Concurrent ops never overlap.
func verify(args []string) {
	fs := flag.NewFlagSet("verify", flag.ExitOnError)
	dev := fs.String("dev", "/dev/abuse0", "device")
	qd := fs.Int("qd", 32, "ops in flight")
	total := fs.Int64("bytes", 256<<20, "bytes to move (reads + writes)")
	engine := fs.String("engine", "auto", "uio backend of the workload: aio, uring, auto")
	name := fs.String("name", "verify", "check name")
	seed := fs.Int64("seed", time.Now().UnixNano(), "random seed")
	fs.Parse(args)

	fd, err := unix.Open(*dev, unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		fail(*name, "open %s: %v", *dev, err)
	}
	defer unix.Close(fd)
	size := devSize(fd)
	const bsz = 4096
	nblk := int(size / bsz)
	if nblk < 1024 {
		fail(*name, "%s: %d bytes is too small", *dev, size)
	}
	l, err := uio.NewLoop(uio.Config{Backend: *engine, Depth: *qd + 8})
	if err != nil {
		fail(*name, "loop: %v", err)
	}
	defer l.Close()

	gen := make([]uint32, nblk) // 0: never written by us
	busy := make([]bool, nblk)
	rng := rand.New(rand.NewSource(*seed))
	sizes := []int{1, 1, 1, 1, 2, 4, 8, 16, 32, 64, 256} // in blocks
	var (
		moved, rbytes, wbytes int64
		reads, writes, syncs  int
		checked, errs         int
		inflight              int
		firstErr              string
		maxInflight           int
	)
	finished := make(chan struct{})
	t0 := time.Now()

	fill := func(p []byte, b int, g uint32) {
		binary.LittleEndian.PutUint64(p, uint64(b))
		binary.LittleEndian.PutUint32(p[8:], g)
		binary.LittleEndian.PutUint32(p[12:], 0x55494f21)
		x := uint64(b)<<32 | uint64(g) | 1
		for i := 16; i < bsz; i += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(p[i:], x)
		}
	}
	want := make([]byte, bsz)
	check := func(p []byte, b int) {
		g := gen[b]
		if g == 0 {
			return
		}
		checked++
		fill(want, b, g)
		if string(p) != string(want) {
			errs++
			if firstErr == "" {
				firstErr = fmt.Sprintf("block %d (offset %d): want gen %d, found block %d gen %d magic %#x",
					b, int64(b)*bsz, g, binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint32(p[8:]),
					binary.LittleEndian.Uint32(p[12:]))
			}
		}
	}

	bufs := make([][]byte, *qd)
	for i := range bufs {
		bufs[i] = alignedBuf(256 * bsz)
	}
	var next func(h uio.Handle, slot int)
	next = func(h uio.Handle, slot int) {
		if moved >= *total {
			if inflight == 0 {
				close(finished)
			}
			return
		}
		if (reads+writes)%97 == 96 {
			syncs++
			reads++ // count toward the op sequence only
			inflight++
			h.Start(uio.Op{Kind: uio.OpFdatasync, Fd: fd, Done: func(h uio.Handle, r uio.Result) {
				inflight--
				if r.Res < 0 {
					errs++
					if firstErr == "" {
						firstErr = fmt.Sprintf("fdatasync: %v", r.Err())
					}
				}
				next(h, slot)
			}})
			return
		}
		// A free extent: a few tries, else a single block.
		var b, n int
		for try := 0; ; try++ {
			n = sizes[rng.Intn(len(sizes))]
			if try > 8 {
				n = 1
			}
			b = rng.Intn(nblk - n + 1)
			free := true
			for k := b; k < b+n; k++ {
				if busy[k] {
					free = false
					break
				}
			}
			if free {
				break
			}
		}
		for k := b; k < b+n; k++ {
			busy[k] = true
		}
		buf := bufs[slot][:n*bsz]
		write := rng.Intn(2) == 0
		kind := uio.OpRead
		var g uint32
		if write {
			kind = uio.OpWrite
			g = uint32(writes + 1)
			for k := 0; k < n; k++ {
				fill(buf[k*bsz:(k+1)*bsz], b+k, g)
			}
			writes++
		} else {
			reads++
		}
		inflight++
		maxInflight = max(maxInflight, inflight)
		moved += int64(len(buf))
		_, err := h.Start(uio.Op{Kind: kind, Fd: fd, Buf: buf, Offset: int64(b) * bsz, Done: func(h uio.Handle, r uio.Result) {
			inflight--
			if int(r.Res) != len(buf) {
				errs++
				if firstErr == "" {
					firstErr = fmt.Sprintf("%s %d@%d: result %d (%v)", kind, len(buf), int64(b)*bsz, r.Res, r.Err())
				}
			} else if write {
				wbytes += int64(len(buf))
				for k := b; k < b+n; k++ {
					gen[k] = g
				}
			} else {
				rbytes += int64(len(buf))
				for k := 0; k < n; k++ {
					check(buf[k*bsz:(k+1)*bsz], b+k)
				}
			}
			for k := b; k < b+n; k++ {
				busy[k] = false
			}
			next(h, slot)
		}})
		if err != nil {
			fail(*name, "submit: %v", err)
		}
	}
	l.Post(func(h uio.Handle) {
		for i := 0; i < *qd; i++ {
			next(h, i)
		}
	})
	select {
	case <-finished:
	case <-time.After(15 * time.Minute):
		fail(*name, "timed out")
	}
	// Final pass: read every written block back once (QD 1, synchronous).
	rb := alignedBuf(256 * bsz)
	var final int
	done := make(chan struct{})
	l.Post(func(h uio.Handle) {
		var step func(h uio.Handle, b int)
		step = func(h uio.Handle, b int) {
			for b < nblk && gen[b] == 0 {
				b++
			}
			if b >= nblk {
				close(done)
				return
			}
			n := min(256, nblk-b)
			h.Start(uio.Op{Kind: uio.OpRead, Fd: fd, Buf: rb[:n*bsz], Offset: int64(b) * bsz, Done: func(h uio.Handle, r uio.Result) {
				if int(r.Res) != n*bsz {
					errs++
					if firstErr == "" {
						firstErr = fmt.Sprintf("final read %d@%d: %d", n*bsz, int64(b)*bsz, r.Res)
					}
				} else {
					for k := 0; k < n; k++ {
						if gen[b+k] != 0 {
							final++
							check(rb[k*bsz:(k+1)*bsz], b+k)
						}
					}
				}
				step(h, b+n)
			}})
		}
		step(h, 0)
	})
	<-done
	el := time.Since(t0)
	if errs > 0 {
		fail(*name, "%d errors; first: %s", errs, firstErr)
	}
	pass(*name, "%s engine=%s qd=%d (max in flight %d): %d MiB moved (%d MiB read in %d reads, %d MiB written in %d writes, %d fdatasyncs), %d blocks checked (+%d in a final pass), 0 errors, %.1fs, seed %d",
		*dev, l.Backend(), *qd, maxInflight, (rbytes+wbytes)>>20, rbytes>>20, reads-syncs, wbytes>>20, writes, syncs,
		checked-final, final, el.Seconds(), *seed)
}
