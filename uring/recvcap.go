package uring

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// ProbeRecvCap reports whether the kernel reads a multishot RECV's length
// as a cap on each completion (Linux 6.17, "allow multishot receive
// per-invocation cap"): with IORING_RECVSEND_BUNDLE as well, a completion
// then fills at most len bytes' worth of whole ring buffers. Before 6.17 a
// multishot RECV with a length is refused with EINVAL, so this is what the
// probe asks: one RECV with IORING_RECV_MULTISHOT and a length, on fd -1.
// The length is checked when the SQE is prepared, the file only when it is
// issued, so a kernel that caps answers EBADF and one that does not,
// EINVAL.
//
// One kernel fault to know (measured on 6.18): a capped bundle on a unix
// stream socket can miss the end of stream queued behind its data, the
// multishot staying armed with nothing more to report (125 of 300 tries);
// on TCP it did not (0 of 300). Use the cap on TCP sockets.
//
// It submits one SQE and waits for its CQE, so call it only on a ring
// with nothing else in flight (right after New), from the ring's thread.
func (r *Ring) ProbeRecvCap() (bool, error) {
	const probeData = ^uint64(0) - 1
	s := r.GetSQE()
	if s == nil {
		return false, fmt.Errorf("uring: ProbeRecvCap: no free SQE")
	}
	s.PrepRecv(-1, nil, 0)
	s.Len = 4096
	s.IoPrio |= IORING_RECV_MULTISHOT
	s.SelectBuffer(0xffff)
	s.SetData(probeData)
	if _, err := r.SubmitAndWait(1, time.Second); err != nil {
		return false, fmt.Errorf("uring: ProbeRecvCap: %w", err)
	}
	var c [1]CQE
	if r.PeekCQEs(c[:]) != 1 || c[0].UserData != probeData {
		return false, fmt.Errorf("uring: ProbeRecvCap: no completion for the probe within 1s")
	}
	switch c[0].Res {
	case -int32(unix.EBADF):
		return true, nil
	case -int32(unix.EINVAL):
		return false, nil
	}
	return false, fmt.Errorf("uring: ProbeRecvCap: probe RECV on fd -1 ended with %d, want -EBADF or -EINVAL", c[0].Res)
}
