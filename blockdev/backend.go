package blockdev

import (
	"errors"
	"fmt"

	"github.com/userland-io/uio"
	"github.com/userland-io/uio/blockdev/abuse"
	"golang.org/x/sys/unix"
)

// Backend stores a device's data. Its methods are called on a queue's loop
// goroutine, possibly on several queues (threads) at once, with ranges the
// server has checked: inside [0, Size()), multiples of the block size, at
// most the device's largest request. They should not block for long: a
// backend that waits for a disk or the network should implement
// AsyncBackend.
//
// An error that wraps a unix.Errno completes the request with that errno;
// any other error with EIO.
type Backend interface {
	// Size is the device size in bytes.
	Size() int64
	// ReadAt fills p with the data at off.
	ReadAt(p []byte, off int64) error
	// WriteAt stores p at off.
	WriteAt(p []byte, off int64) error
	// Flush makes every completed write durable (only called when the
	// device was created with Config.WriteCache).
	Flush() error
}

// Discarder is a Backend that supports DISCARD (the range need not be
// kept; reads of it may return anything, usually zeroes).
type Discarder interface {
	Discard(off, n int64) error
}

// ZeroWriter is a Backend that supports WRITE_ZEROES.
type ZeroWriter interface {
	WriteZeroes(off, n int64) error
}

// Supporter is a Backend whose optional operations are known only at run
// time (an NBD export offers TRIM or not): where it implements Discarder
// or ZeroWriter, the server offers DISCARD or WRITE_ZEROES to the kernel
// only if Supports says so too.
type Supporter interface {
	Supports(op Op) bool
}

// backendSupports reports whether the server offers op (DISCARD or
// WRITE_ZEROES) for be.
func backendSupports(be Backend, op Op) bool {
	var ok bool
	switch op {
	case OpDiscard:
		_, ok = be.(Discarder)
	case OpWriteZeroes:
		_, ok = be.(ZeroWriter)
	}
	if s, is := be.(Supporter); ok && is {
		ok = s.Supports(op)
	}
	return ok
}

// Mapper is a Backend whose data lives in this process's memory. Mapped
// returns the n bytes at off when they are one contiguous piece of memory
// that stays valid (is not unmapped or reused) while the server holds the
// returned slice, or nil. A READ is then completed with that address and
// the kernel copies the data straight out of it: no copy in userspace.
type Mapper interface {
	Mapped(off int64, n int) []byte
}

// WriteMapper is a Backend whose data lives in this process's memory and
// can be written there directly. MappedForWrite returns the memory that
// holds the n bytes at off (allocating it if need be) when it is one
// contiguous piece that stays valid while the server holds the slice, or
// nil. On ABUSE USER_COPY queues a WRITE is then completed with that
// address: the kernel stores the data straight into it before the request
// completes, so the data is copied once and is in place when the write is
// acknowledged. Writes that need a FLUSH or FUA on a write-cache device
// are not served this way.
type WriteMapper interface {
	MappedForWrite(off int64, n int) []byte
}

// AsyncBackend is a Backend that does its I/O through the engine. The
// server calls Start instead of the Backend methods for every request;
// the synchronous methods remain for other users (tests, tools).
type AsyncBackend interface {
	Backend
	// Start begins r on the loop of the queue serving r, on that loop's
	// goroutine (h is its Handle), and returns without waiting.
	// r.Complete (or r.CompleteFrom) must then be called exactly once, on
	// the same loop: typically from the Done of the last engine op, or
	// inline.
	Start(h uio.Handle, r *Request)
}

// Op is a block operation (ABUSE_OP_*).
type Op uint8

// Operations.
const (
	OpRead        Op = abuse.OpRead
	OpWrite       Op = abuse.OpWrite
	OpFlush       Op = abuse.OpFlush
	OpDiscard     Op = abuse.OpDiscard
	OpWriteZeroes Op = abuse.OpWriteZeroes
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpFlush:
		return "flush"
	case OpDiscard:
		return "discard"
	case OpWriteZeroes:
		return "write-zeroes"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Request flags, as the block layer passed them (Request.Flags).
const (
	FlagFUA      = abuse.FlagFUA      // the write must be durable when completed
	FlagPreflush = abuse.FlagPreflush // flush before this request
	FlagNoUnmap  = abuse.FlagNoUnmap  // WRITE_ZEROES: keep the blocks allocated
)

// Request is one block request handed to a backend. The server owns it:
// it is valid from the backend call until it is completed, and reused for
// a later request on the same tag after that.
type Request struct {
	Op     Op
	Flags  uint32 // FlagFUA, ...
	Offset int64  // bytes
	Len    int    // bytes; 0 for FLUSH
	// Buf is the tag's buffer, Len bytes long: for a WRITE it holds the
	// data; a READ may fill it (then complete with Complete(nil)). It is
	// page aligned, so it suits O_DIRECT. nil for FLUSH, DISCARD and
	// WRITE_ZEROES. (On an ABUSE USER_COPY queue, which only synchronous
	// backends get, it is the queue's scratch buffer, used for requests
	// that Mapper/WriteMapper do not map.)
	Buf   []byte
	Queue int // hardware queue index

	q      *queue  // ABUSE
	uq     *uqueue // ublk
	seq    uint64
	tag    uint16
	active bool // fetched, not yet completed
	async  bool // handed to AsyncBackend.Start
}

// Complete finishes r with err (nil for success). Loop goroutine only;
// once per request (later calls are ignored and logged).
func (r *Request) Complete(err error) {
	r.finish(errnoOf(err), 0, nil)
}

// CompleteFrom finishes a READ successfully with its data at p (len(p) must
// be r.Len): the kernel copies from p, which must stay valid until the
// server's next COMMIT_FETCH (the server keeps p referenced until then).
func (r *Request) CompleteFrom(p []byte) {
	if r.Op != OpRead || len(p) != r.Len {
		r.finish(-int32(unix.EIO), 0, nil)
		return
	}
	if len(p) == 0 {
		r.finish(0, 0, nil)
		return
	}
	r.finish(0, addrOf(p), p)
}

func (r *Request) String() string {
	return fmt.Sprintf("%s %d+%d q%d tag %d seq %d", r.Op, r.Offset, r.Len, r.Queue, r.tag, r.seq)
}

// errnoOf maps an error to the negated errno a completion carries.
func errnoOf(err error) int32 {
	if err == nil {
		return 0
	}
	var e unix.Errno
	if errors.As(err, &e) && e > 0 && e < 4096 {
		return -int32(e)
	}
	return -int32(unix.EIO)
}
