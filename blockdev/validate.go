package blockdev

import "golang.org/x/sys/unix"

// geometry is what a request is checked against.
type geometry struct {
	size      int64 // device bytes
	blockSize int64 // logical block size
	maxIO     int   // largest request
	readOnly  bool
	discard   bool // DISCARD supported
	zeroes    bool // WRITE_ZEROES supported
	flush     bool // FLUSH expected (write cache)
}

// check validates a fetched request. It returns 0 or the errno the request
// must complete with, and why (for the log).
func (g *geometry) check(op Op, off uint64, n uint32) (unix.Errno, string) {
	switch op {
	case OpFlush:
		if n != 0 {
			return unix.EINVAL, "flush with a length"
		}
		return 0, ""
	case OpRead, OpWrite, OpDiscard, OpWriteZeroes:
	default:
		return unix.EINVAL, "unknown operation"
	}
	if op == OpWrite || op == OpDiscard || op == OpWriteZeroes {
		if g.readOnly {
			return unix.EIO, "write to a read-only device"
		}
	}
	if op == OpDiscard && !g.discard || op == OpWriteZeroes && !g.zeroes {
		return unix.EOPNOTSUPP, "operation not supported by the backend"
	}
	if n == 0 {
		return unix.EINVAL, "zero length"
	}
	if uint64(off)%uint64(g.blockSize) != 0 || uint64(n)%uint64(g.blockSize) != 0 {
		return unix.EINVAL, "not aligned to the block size"
	}
	if (op == OpRead || op == OpWrite) && int64(n) > int64(g.maxIO) {
		return unix.EIO, "longer than the largest request"
	}
	if off >= uint64(g.size) || uint64(n) > uint64(g.size)-off {
		return unix.EIO, "beyond the end of the device"
	}
	return 0, ""
}
