package blockdev

import (
	"fmt"
	"sync"
	"testing"
	"unsafe"

	"github.com/userland-io/uio/blockdev/abuse"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// fakeKQ plays the kernel side of one queue for the serve loop: requests
// queued by the test become "fetched" by COMMIT_FETCH, the queue fd is an
// eventfd that is readable while requests wait, and completions are
// checked like the module does (tag in flight, seq matching) and delivered
// with READ data copied from the address the server named.
type fakeKQ struct {
	mu       sync.Mutex
	efd      int
	maxIO    int
	buf      []byte
	seq      uint64
	free     []uint16
	waiting  []*fakeReq
	inflight map[uint16]*fakeReq
	out      []abuse.Request
	calls    int
	maxDone  int // largest batch of completions in one call
	closed   bool
	userCopy bool // USER_COPY: no tag buffers, data only where named
	copies   int  // Copy calls
	waits    int  // CommitFetchWait calls that waited
}

type fakeReq struct {
	r    abuse.Request
	data []byte // WRITE data in; READ data out
	res  chan int32
}

func newFakeKQ(t *testing.T, depth, maxIO int) *fakeKQ {
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	k := &fakeKQ{efd: efd, maxIO: maxIO, buf: make([]byte, depth*maxIO), inflight: map[uint16]*fakeReq{},
		out: make([]abuse.Request, depth)}
	for i := depth - 1; i >= 0; i-- {
		k.free = append(k.free, uint16(i))
	}
	return k
}

// submit queues a request; the result arrives on the returned channel.
func (k *fakeKQ) submit(op uint32, off uint64, n uint32, data []byte) *fakeReq {
	fr := &fakeReq{r: abuse.Request{Offset: off, Len: n, OpFlags: op}, data: data, res: make(chan int32, 1)}
	k.mu.Lock()
	k.waiting = append(k.waiting, fr)
	k.mu.Unlock()
	var one = uint64(1)
	unix.Write(k.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
	return fr
}

func (k *fakeKQ) Fd() int { return k.efd }
func (k *fakeKQ) Buffer(tag uint16) []byte {
	if k.userCopy {
		return nil
	}
	return k.buf[int(tag)*k.maxIO : (int(tag)+1)*k.maxIO]
}
func (k *fakeKQ) Close() error {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	return unix.Close(k.efd)
}

func (k *fakeKQ) UserCopy() bool { return k.userCopy }

func addrSlice(addr uint64, n uint32) []byte {
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&addr))), n)
}

// Copy is ABUSE_QUEUE_COPY: a WRITE's data out, a READ's data in.
func (k *fakeKQ) Copy(seq uint64, tag uint16, off int, p []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.copies++
	fr, ok := k.inflight[tag]
	switch {
	case !k.userCopy:
		return unix.EINVAL
	case !ok || fr.r.Seq != seq:
		return fmt.Errorf("fake: copy for tag %d seq %d not in flight: %w", tag, seq, unix.ENOENT)
	case off < 0 || off+len(p) > int(fr.r.Len):
		return unix.EINVAL
	case fr.r.OpFlags&0xff == abuse.OpWrite:
		copy(p, fr.data[off:])
	case fr.r.OpFlags&0xff == abuse.OpRead:
		if fr.data == nil {
			fr.data = make([]byte, fr.r.Len)
		}
		copy(fr.data[off:], p)
	default:
		return unix.EINVAL
	}
	return nil
}

// CommitFetchWait is CommitFetch that, with waitMs > 0, waits that long
// for a request when none is there.
func (k *fakeKQ) CommitFetchWait(done []abuse.Completion, waitMs, spinUs int) ([]abuse.Request, error) {
	reqs, err := k.CommitFetch(done)
	if err != nil || len(reqs) > 0 || waitMs <= 0 {
		return reqs, err
	}
	k.mu.Lock()
	k.waits++
	k.mu.Unlock()
	pfd := []unix.PollFd{{Fd: int32(k.efd), Events: unix.POLLIN}}
	unix.Poll(pfd, waitMs)
	return k.CommitFetch(nil)
}

func (k *fakeKQ) CommitFetch(done []abuse.Completion) ([]abuse.Request, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls++
	k.maxDone = max(k.maxDone, len(done))
	for _, c := range done {
		fr, ok := k.inflight[c.Tag]
		if !ok || fr.r.Seq != c.Seq {
			return nil, fmt.Errorf("fake: completion for tag %d seq %d not in flight: %w", c.Tag, c.Seq, unix.ENOENT)
		}
		delete(k.inflight, c.Tag)
		k.free = append(k.free, c.Tag)
		op := fr.r.OpFlags & 0xff
		if c.Addr != 0 && op != abuse.OpRead && !(k.userCopy && op == abuse.OpWrite) {
			return nil, fmt.Errorf("fake: address in a completion of op %d: %w", op, unix.EINVAL)
		}
		switch {
		case c.Result != 0:
		case k.userCopy && c.Addr != 0 && op == abuse.OpWrite:
			copy(addrSlice(c.Addr, fr.r.Len), fr.data)
		case k.userCopy && c.Addr != 0:
			fr.data = append([]byte(nil), addrSlice(c.Addr, fr.r.Len)...)
		case !k.userCopy && op == abuse.OpRead:
			src := k.Buffer(c.Tag)[:fr.r.Len]
			if c.Addr != 0 {
				src = addrSlice(c.Addr, fr.r.Len)
			}
			fr.data = append([]byte(nil), src...)
		}
		fr.res <- c.Result
	}
	n := 0
	for len(k.waiting) > 0 && len(k.free) > 0 {
		fr := k.waiting[0]
		k.waiting = k.waiting[1:]
		tag := k.free[len(k.free)-1]
		k.free = k.free[:len(k.free)-1]
		k.seq++
		fr.r.Seq, fr.r.Tag = k.seq, tag
		if fr.r.OpFlags&0xff == abuse.OpWrite && !k.userCopy {
			copy(k.Buffer(tag), fr.data)
		}
		k.inflight[tag] = fr
		k.out[n] = fr.r
		n++
	}
	// Like blk-mq, a request is only visible (the fd readable) once it has
	// a tag.
	var v [8]byte
	unix.Read(k.efd, v[:])
	if len(k.waiting) > 0 && len(k.free) > 0 {
		one := uint64(1)
		unix.Write(k.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
	}
	return k.out[:n], nil
}

// testServer runs one queue of a server on a fake kernel queue.
func testServer(t *testing.T, be Backend, engine string, depth, maxIO int, readOnly bool) (*Server, *fakeKQ) {
	t.Helper()
	return testServerMode(t, be, engine, depth, maxIO, readOnly, false, 0)
}

// testServerMode is testServer on a USER_COPY fake queue (userCopy) and
// with COMMIT_FETCH waits of waitMs (0: none).
func testServerMode(t *testing.T, be Backend, engine string, depth, maxIO int, readOnly, userCopy bool, waitMs int) (*Server, *fakeKQ) {
	t.Helper()
	s := &Server{
		cfg:        abuse.DevConfig{QueueDepth: uint32(depth), MaxIOBytes: uint32(maxIO), NrHWQueues: 1},
		be:         be,
		log:        zaptest.NewLogger(t),
		engine:     engine,
		anyStop:    make(chan struct{}, 1),
		done:       make(chan struct{}),
		detachedCh: make(chan struct{}),
		geo:        geometry{size: be.Size(), blockSize: 512, maxIO: maxIO, readOnly: readOnly, flush: true},
	}
	s.geo.discard = backendSupports(be, OpDiscard)
	s.geo.zeroes = backendSupports(be, OpWriteZeroes)
	s.async, _ = be.(AsyncBackend)
	s.mapper, _ = be.(Mapper)
	s.wmapper, _ = be.(WriteMapper)
	s.fetchWaitMs = waitMs
	k := newFakeKQ(t, depth, maxIO)
	k.userCopy = userCopy
	q, err := newQueue(s, k, 0)
	if err != nil {
		t.Skipf("engine %s: %v", engine, err)
	}
	s.queues = []*queue{q}
	t.Cleanup(func() { s.stopQueues() })
	return s, k
}
