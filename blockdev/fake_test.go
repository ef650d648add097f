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
	return k.buf[int(tag)*k.maxIO : (int(tag)+1)*k.maxIO]
}
func (k *fakeKQ) Close() error {
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	return unix.Close(k.efd)
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
		if c.Result == 0 && fr.r.OpFlags&0xff == abuse.OpRead {
			src := k.Buffer(c.Tag)[:fr.r.Len]
			if c.Addr != 0 {
				addr := c.Addr
				src = unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&addr))), fr.r.Len)
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
		if fr.r.OpFlags&0xff == abuse.OpWrite {
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
	k := newFakeKQ(t, depth, maxIO)
	q, err := newQueue(s, k, 0)
	if err != nil {
		t.Skipf("engine %s: %v", engine, err)
	}
	s.queues = []*queue{q}
	t.Cleanup(func() { s.stopQueues() })
	return s, k
}
