package uio

import (
	"errors"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// backend is one kernel submission/completion interface driven by a Loop.
// A Loop calls every method but Wake and Counters from its own locked OS
// thread; Wake and Counters may be called from any goroutine.
//
// The contract a Loop relies on:
//   - Prepare stages an op under id without a syscall. The *Op stays valid
//     and unmoved until id's completion has been delivered. errBackendFull
//     means "no room now", never a lost op.
//   - Flush hands every staged op to the kernel in one syscall. Ops the
//     kernel did not take (a full ring) stay staged for the next Flush; an
//     op the kernel rejects completes with its -errno through Reap.
//   - Reap delivers the completions that are ready without a syscall.
//   - Wait sleeps in the kernel until at least one completion is ready,
//     Wake is called, or timeout passes (timeout < 0: no limit), and
//     delivers what it reaped. A backend whose SubmitsOnWait is true also
//     hands the staged ops to the kernel in that same syscall, and the loop
//     then skips the Flush of a round that would otherwise only flush and
//     sleep; Wait reports how many ops it submitted.
//   - Cancel asks for id's op to end early. Exactly one completion for id
//     is still delivered: -ECANCELED, or the op's real result if it had
//     already finished or cannot be cancelled.
//   - Every id handed to Prepare is delivered exactly once.
type backend interface {
	Name() string
	// native reports whether the backend runs ops of kind k itself; the
	// loop hands the others to a goroutine (see runBlocking).
	native(k OpKind) bool
	Prepare(id OpID, op *Op) error
	// Staged is the number of prepared ops not yet taken by the kernel.
	Staged() int
	Flush() (accepted int, err error)
	Reap(deliver func(id OpID, res int32, flags uint32)) int
	Wait(timeout time.Duration, deliver func(id OpID, res int32, flags uint32)) (submitted, delivered int, err error)
	// SubmitsOnWait reports whether Wait submits staged ops in the syscall
	// it sleeps in (io_uring_enter can; io_getevents cannot).
	SubmitsOnWait() bool
	Cancel(id OpID) error
	// canLink reports whether the kernel can run ops as one chain of
	// linked requests with the engine's chain rules (see link.go); AIO has
	// no links and says no.
	canLink(ops []Op) bool
	// PrepareLinked stages a chain canLink accepted, all or nothing: the
	// ops go to the kernel in one Flush, and each starts when the one
	// before it completed in full. errSQFull: this round's SQ has no room
	// for the whole chain (the loop flushes and tries again).
	PrepareLinked(ids []OpID, ops []*Op) error
	// newPoolRing gives a BufferPool a kernel-side buffer ring (buffer
	// group index, room for entries buffers, a power of two), or
	// errNotNative when the engine must select buffers.
	newPoolRing(index, entries int) (poolRing, error)
	// capsBundles reports whether a multishot Bundle recv's Len caps each
	// completion (io_uring, Linux 6.17+); fixed when the backend opens.
	capsBundles() bool
	// registerBuffers makes bufs RegisterBuffers' set of registered
	// buffers (nil: none); addFixed and removeFixed add and remove single
	// ones beside it (fixedbuf.go). Reads and writes that lie in one use it.
	registerBuffers(bufs [][]byte) error
	// registerFile puts fd in the backend's registered file table (of
	// size slots, created at the first call); ops on fd then use it.
	// unregisterFile takes it out; the loop flushes first. See files.go.
	registerFile(fd, size int) error
	unregisterFile(fd int) error
	fileRegistered(fd int) bool
	addFixed(b []byte) (slot uint16, gen uint32, err error)
	removeFixed(slot uint16, gen uint32) error
	Wake() error
	Counters() backendCounters
	Close() error
}

// backendCounters are a backend's exact syscall counts and how its
// completions were reaped.
type backendCounters struct {
	Submits   uint64 // io_submit
	GetEvents uint64 // io_getevents
	Enters    uint64 // io_uring_enter
	Other     uint64 // every other syscall the backend made (io_cancel, eventfd writes, accept4, connect, close, ...)

	ReapedUser    uint64 // completions read from the ring in userspace
	ReapedSyscall uint64 // completions returned by io_getevents

	CQOverflows, DroppedCQEs uint64 // io_uring
	FixedFileOps             uint64 // io_uring: ops sent with a registered file
	FixedBufferOps           uint64 // io_uring READ_FIXED and WRITE_FIXED
	AIOContexts, AIOEvents   uint64 // AIO
}

// errBackendFull is returned by backend.Prepare when the backend has no room
// for another op this round.
var errBackendFull = errors.New("uio: backend full")

// errSQFull is returned by backend.Prepare when this round's submission
// queue is full but a Flush makes room (io_uring's SQ).
var errSQFull = errors.New("uio: submission queue full")

// Backend names accepted by Config.Backend.
const (
	BackendAuto  = "auto"
	BackendAIO   = "aio"
	BackendUring = "uring"
)

// internalTag marks the ids a backend uses for its own ops (the doorbell).
// Engine ids never have the top bit set: generations stay below 1<<31.
const internalTag = OpID(1) << 63

// counter is a statistic written by one goroutine and read by any: a load
// and a store rather than an atomic add, because there is a single writer.
// The store is still atomic (an XCHG on amd64), so counters are bumped per
// syscall or per round, never per op (see loopStats).
type counter struct{ v atomic.Uint64 }

func (c *counter) add(n uint64) { c.v.Store(c.v.Load() + n) }
func (c *counter) load() uint64 { return c.v.Load() }

// publish stores v for other goroutines to load, only when it changed:
// a loop-only count made visible once per round or flush.
func (c *counter) publish(v uint64) {
	if c.v.Load() != v {
		c.v.Store(v)
	}
}

// buildIovecs fills dst with iovecs for bufs and returns it.
func buildIovecs(dst []unix.Iovec, bufs [][]byte) []unix.Iovec {
	dst = dst[:0]
	for _, b := range bufs {
		var v unix.Iovec
		if len(b) > 0 {
			v.Base = &b[0]
			v.SetLen(len(b))
		}
		dst = append(dst, v)
	}
	return dst
}

// errnoRes turns an error into a negated errno for a Result.
func errnoRes(err error) int32 {
	var e unix.Errno
	if errors.As(err, &e) {
		return -int32(e)
	}
	return -int32(unix.EIO)
}

// pollMask limits a poll result to what was asked plus the conditions the
// kernel always reports: the AIO wake key carries bits nobody asked for.
func pollMask(res int32, events uint32) int32 {
	if res < 0 {
		return res
	}
	return res & int32(events|unix.POLLERR|unix.POLLHUP|unix.POLLNVAL)
}

// readyQueue holds completions a backend made itself, without the kernel's
// ring: ops that ran inline (close, a connect that finished at once) or that
// failed before reaching the kernel. They are delivered at the next Reap.
type readyQueue []readyCompletion

type readyCompletion struct {
	id  OpID
	res int32
}

func (q *readyQueue) add(id OpID, res int32) { *q = append(*q, readyCompletion{id, res}) }

// deliver hands every queued completion to fn; fn may queue more.
func (q *readyQueue) deliver(fn func(OpID, int32, uint32)) int {
	n := 0
	for ; n < len(*q); n++ {
		c := (*q)[n]
		fn(c.id, c.res, 0)
	}
	*q = (*q)[:0]
	return n
}

// chunked is a growable array whose elements never move, so their addresses
// can be handed to the kernel. Elements are addressed by an engine slot index.
type chunked[T any] struct{ chunks []*[chunkSize]T }

const chunkSize = 256

func (c *chunked[T]) at(i uint32) *T {
	for int(i/chunkSize) >= len(c.chunks) {
		c.chunks = append(c.chunks, new([chunkSize]T))
	}
	return &c.chunks[i/chunkSize][i%chunkSize]
}
