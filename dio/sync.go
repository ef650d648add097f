package dio

import (
	"io"
	"sync"
	"sync/atomic"

	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

// Sync makes every byte written or appended before it durable. When no
// other Sync's fdatasync is running, it waits for the chunk writes in
// flight and then makes two Do calls from the caller's goroutine, the tail
// write and the fdatasync (see syncInline). Otherwise, or with
// ExactSizeOnSync, it is one trip to the loop: it posts one function that submits the unflushed rest
// of the append chunk (the partial last block padded with zeros); when
// that write and every chunk write in flight at the time of the call have
// landed, the loop submits the fdatasync from the last completion, and
// only the fdatasync's completion wakes the caller. The padding stays on
// disk (the file may be up to one alignment block longer than Size) until
// the next tail write overwrites it or Close cuts it off; with
// Options.ExactSizeOnSync it is cut with ftruncate before the fdatasync,
// a second trip. Appends from other goroutines resume as soon as the tail
// write has landed, while the fdatasync runs. Syncs that find their data
// already covered by a finished (or running) fdatasync share it. A failed
// fdatasync is sticky: every later Sync returns its error.
func (f *File) Sync() error {
	f.mu.Lock()
	if err := f.writable("sync", -1, 0); err != nil {
		f.mu.Unlock()
		return err
	}
	f.syncs++
	m := f.modSeq
	f.smu.Lock()
	err, done := f.syncErr, f.durable >= m
	owner := !done && err == nil && !f.syncing
	if owner {
		f.syncing = true
	}
	f.smu.Unlock()
	if err != nil || done {
		f.mu.Unlock()
		return err
	}

	if owner && !f.exact {
		// The chunk writes in flight land first (their completions wake
		// us), then the tail write and the fdatasync go from here.
		if err := f.waitAllFlights(); err != nil {
			f.mu.Unlock()
			f.finishSync(0, nil)
			return f.wrap("sync", -1, 0, err)
		}
		return f.syncInline(m)
	}

	r := syncReqs.Get().(*syncReq)
	r.f, r.m = f, m
	hasWrite := f.dirty && f.clen > f.cflushed
	if hasWrite {
		end := int(f.alignUp(int64(f.clen)))
		clear(f.cbuf[f.clen:end])
		r.off = f.cbase + int64(f.cflushed)
		r.buf = f.cbuf[f.cflushed:end]
		r.woff, r.wlen = r.off, len(r.buf)
		r.wend = f.cbase + int64(end)
		r.flushed = int(f.alignDown(int64(f.clen)))
	}
	// With ExactSizeOnSync and padding on disk after the write, the caller
	// keeps mu until it has cut the padding off, and fdatasyncs after.
	trunc := f.exact && max(f.diskSize, r.wend) > f.size
	// The chunk's bytes belong to the kernel until the tail write lands:
	// mu is held until then, and released by the write's completion.
	loopUnlocks := hasWrite && !trunc
	r.unlock = loopUnlocks
	r.fsync = owner && !trunc
	r.settle = !trunc
	r.pending.Store(1) // the posted function
	if hasWrite {
		r.pending.Add(1)
	}
	f.imu.Lock()
	for _, fl := range f.flights {
		fl.reqs = append(fl.reqs, r)
	}
	r.pending.Add(int32(len(f.flights)))
	f.imu.Unlock()
	if err := f.l.Post(r.runFn); err != nil {
		r.werr = f.wrap("sync", -1, 0, err)
		if hasWrite {
			r.pending.Add(-1)
		}
		loopUnlocks = false
		r.release(uio.Handle{})
	}
	if !loopUnlocks && !trunc {
		f.mu.Unlock()
	}
	<-r.ch
	werr, serr, synced := r.werr, r.serr, r.synced
	r.reset()
	syncReqs.Put(r)

	if trunc { // mu is still held
		if werr == nil && f.diskSize != f.size {
			if err := f.ftruncate(f.size); err != nil {
				werr = &Error{Op: "ftruncate", Path: f.path, Off: f.size, Err: err}
			} else {
				f.diskSize = f.size
			}
		}
		if werr == nil {
			f.smu.Lock()
			f.settled = max(f.settled, m)
			f.smu.Unlock()
		}
		f.mu.Unlock()
	}
	switch {
	case werr != nil:
		if owner {
			f.finishSync(0, nil)
		}
		return werr
	case synced:
		return f.finishSync(m, serr)
	case owner:
		return f.finishSync(m, f.fdatasync())
	}
	return f.groupSync(m)
}

// syncInline is Sync once no chunk write is in flight, when no other
// fdatasync runs: the tail write and the fdatasync as two Do calls, in
// order, from the caller's goroutine. Alone in Do, each is one plain
// syscall there (no trip to the loop's thread at all); beside other
// callers they batch through the loop like any Do. Called with mu, as the
// owner of the next fdatasync; releases mu once the tail write has landed,
// so appends resume while the fdatasync runs.
func (f *File) syncInline(m uint64) error {
	if f.dirty && f.clen > f.cflushed {
		end := int(f.alignUp(int64(f.clen)))
		clear(f.cbuf[f.clen:end])
		off := f.cbase + int64(f.cflushed)
		if err := f.writeFull(f.cbuf[f.cflushed:end], off); err != nil {
			f.mu.Unlock()
			f.finishSync(0, nil)
			return &Error{Op: "write", Path: f.path, Off: off, Len: end - f.cflushed, Err: err}
		}
		// Full blocks are done; a partial last block is rewritten when
		// it grows. Its padding stays on disk.
		f.diskSize = max(f.diskSize, f.cbase+int64(end))
		f.cflushed, f.dirty = int(f.alignDown(int64(f.clen))), false
	}
	f.smu.Lock()
	f.settled = max(f.settled, m)
	f.smu.Unlock()
	f.mu.Unlock()
	return f.finishSync(m, f.fdatasync())
}

// syncReq is one Sync's trip to the loop. Its count of pending events
// (the posted function, the tail write, each chunk write it waits for)
// reaches zero exactly once; whoever brings it there submits the
// fdatasync (on the loop) or wakes the caller. Pooled.
type syncReq struct {
	f       *File
	m       uint64 // modSeq covered
	buf     []byte // tail write: what remains to be written, at off
	off     int64
	woff    int64 // the whole tail write, for errors
	wlen    int
	wend    int64 // end of the tail write (diskSize after it)
	flushed int   // cflushed after it
	unlock  bool  // the tail write's completion releases f.mu
	fsync   bool  // submit the fdatasync when everything has landed
	settle  bool  // mark m settled when everything has landed
	pending atomic.Int32

	// Results, written before the wake-up on ch.
	werr   error
	serr   error
	synced bool

	ch    chan struct{}
	runFn func(uio.Handle)
	wdone func(uio.Handle, uio.Result)
	sdone func(uio.Handle, uio.Result)
}

var syncReqs = sync.Pool{New: func() any {
	r := &syncReq{ch: make(chan struct{}, 1)}
	r.runFn, r.wdone, r.sdone = r.run, r.onWrite, r.onSync
	return r
}}

func (r *syncReq) reset() {
	r.f, r.buf = nil, nil
	r.m, r.off, r.woff, r.wlen, r.wend, r.flushed = 0, 0, 0, 0, 0, 0
	r.unlock, r.fsync, r.settle = false, false, false
	r.werr, r.serr, r.synced = nil, nil, false
}

// run is the posted function, on the loop.
func (r *syncReq) run(h uio.Handle) {
	if r.wlen > 0 {
		r.submitWrite(h)
	}
	r.release(h)
}

func (r *syncReq) submitWrite(h uio.Handle) {
	if _, err := h.Start(uio.Op{Kind: uio.OpWrite, Fd: r.f.fd, Buf: r.buf, Offset: r.off, Done: r.wdone}); err != nil {
		r.writeDone(h, err)
	}
}

func (r *syncReq) onWrite(h uio.Handle, res uio.Result) {
	f := r.f
	switch n := int(res.Res); {
	case res.Res < 0:
		r.writeDone(h, resErr(res.Res))
	case n == len(r.buf):
		r.writeDone(h, nil)
	case n == 0 || (f.direct && int64(n)%f.bs != 0):
		r.writeDone(h, io.ErrShortWrite)
	default: // short: write the rest
		r.buf, r.off = r.buf[n:], r.off+int64(n)
		r.submitWrite(h)
	}
}

// writeDone ends the tail write, on the loop. The caller of Sync holds mu
// (or has handed it over) and is waiting, so the chunk state is ours.
func (r *syncReq) writeDone(h uio.Handle, err error) {
	f := r.f
	if err != nil {
		r.werr = &Error{Op: "write", Path: f.path, Off: r.woff, Len: r.wlen, Err: err}
	} else {
		// Full blocks are done; a partial last block is rewritten when it
		// grows. Its padding stays on disk.
		f.diskSize = max(f.diskSize, r.wend)
		f.cflushed, f.dirty = r.flushed, false
	}
	if r.unlock {
		f.mu.Unlock()
	}
	r.release(h)
}

// release counts one pending event down; the last one submits the
// fdatasync (on the loop: h is its Handle; elsewhere the zero Handle) or
// wakes the caller.
func (r *syncReq) release(h uio.Handle) {
	if r.pending.Add(-1) != 0 {
		return
	}
	f := r.f
	if r.werr == nil {
		f.imu.Lock()
		err := f.flyErr
		f.imu.Unlock()
		if err != nil {
			r.werr = f.wrap("sync", -1, 0, err)
		}
	}
	if r.werr == nil && r.settle {
		f.smu.Lock()
		f.settled = max(f.settled, r.m)
		f.smu.Unlock()
	}
	if r.werr == nil && r.fsync && h.Loop() != nil {
		if _, err := h.Start(uio.Op{Kind: uio.OpFdatasync, Fd: f.fd, Done: r.sdone}); err == nil {
			return
		}
		// The loop is closing: the caller's own fdatasync reports it.
	}
	r.ch <- struct{}{}
}

func (r *syncReq) onSync(h uio.Handle, res uio.Result) {
	r.synced = true
	if res.Res < 0 {
		r.serr = resErr(res.Res)
	}
	r.ch <- struct{}{}
}

// settle puts every byte below size on disk and cuts the file to its
// logical size (Close). Called with mu.
func (f *File) settle() error {
	if err := f.flushTail(); err != nil {
		return err
	}
	if err := f.waitAllFlights(); err != nil {
		return f.wrap("sync", -1, 0, err)
	}
	if f.diskSize != f.size {
		if err := f.ftruncate(f.size); err != nil {
			return &Error{Op: "ftruncate", Path: f.path, Off: f.size, Err: err}
		}
		f.diskSize = f.size
	}
	f.smu.Lock()
	f.settled = max(f.settled, f.modSeq)
	f.smu.Unlock()
	return nil
}

// ftruncate cuts the file to size through the loop (a plain syscall on
// this goroutine when it is the only one in Do).
func (f *File) ftruncate(size int64) error {
	res, err := do(f.l, uio.Op{Kind: uio.OpFtruncate, Fd: f.fd, Offset: size})
	if err == nil && res < 0 {
		err = unix.Errno(-res)
	}
	return err
}

func (f *File) fdatasync() error {
	res, err := do(f.l, uio.Op{Kind: uio.OpFdatasync, Fd: f.fd})
	if err == nil && res < 0 {
		err = unix.Errno(-res)
	}
	return err
}

// finishSync ends the fdatasync the caller owned: on success everything
// settled up to target is durable. It returns the sticky error.
func (f *File) finishSync(target uint64, err error) error {
	f.smu.Lock()
	defer f.smu.Unlock()
	f.syncing = false
	if err != nil {
		if f.syncErr == nil {
			f.syncErr = &Error{Op: "fdatasync", Path: f.path, Off: -1, Err: err}
		}
	} else {
		f.durable = max(f.durable, target)
	}
	f.scond.Broadcast()
	return f.syncErr
}

// groupSync returns once modification m is durable: covered by an
// fdatasync that started after it was settled, someone else's or ours.
func (f *File) groupSync(m uint64) error {
	f.smu.Lock()
	for {
		if f.syncErr != nil || f.durable >= m {
			err := f.syncErr
			f.smu.Unlock()
			return err
		}
		if !f.syncing {
			break
		}
		f.scond.Wait()
	}
	f.syncing = true
	target := f.settled
	f.smu.Unlock()
	return f.finishSync(target, f.fdatasync())
}
