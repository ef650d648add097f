package uio

import (
	"context"
	"fmt"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Chains (Handle.StartLinked, DoLinked) run one of two ways, under the same
// rules: an op starts when the one before it completed in full; a negative
// result or a short transfer ends the chain, the rest completing with
// -ECANCELED; Dones run once each, in chain order; cancelling an op cancels
// it and the rest; an op's Timeout counts from its start and ends it with
// -ETIME.
//
// Kernel-linked (io_uring, backend.canLink): the chain's ops go out as one
// run of SQEs with IOSQE_IO_LINK, in one io_uring_enter, and a Timeout is an
// IORING_OP_LINK_TIMEOUT right after its op (linked itself when the chain
// goes on, or the kernel would end the chain at it). The kernel then keeps
// the rules itself, checked on 6.1 and 6.12 sources and by the tests in
// uring/link_test.go on the running kernel:
//
//   - A failed request fails the link: io_disarm_next -> io_fail_links
//     completes the rest with -ECANCELED in task work queued after the
//     failed request's CQE, so in chain order.
//   - A read or write whose result differs from the length in its SQE fails
//     the link (rw.c __io_complete_rw_common: res != req->cqe.res, cqe.res
//     set to the iov_iter count at issue): the engine's short rule. A recv
//     or send does not unless MSG_WAITALL (net.c: ret < min_ret, min_ret 0
//     without it), so stream ops are not linked (their EAGAIN retry by
//     poll is the engine's too); splice fails on ret != len, stricter than
//     the engine, so it is not linked either.
//   - LINK_TIMEOUT arms when its request is issued (REQ_F_ARM_LTIMEOUT); on
//     firing it cancels the request (-ECANCELED, or -EINTR from an io-wq
//     worker) and completes -ETIME (-ENOENT when the request was completing
//     or running in a worker); else it completes -ECANCELED. Its CQE and its
//     request's come in either order: the backend pairs them and gives the
//     request -ETIME when the deadline had passed. (A request that
//     completes in full as its deadline fires keeps its result and the
//     kernel goes on with the chain; an engine-kept chain would end there.
//     Either is a cancel that came too late.)
//   - IORING_OP_ASYNC_CANCEL finds no linked request that has not been
//     issued (-ENOENT: it looks in io-wq, polls, timeouts), and a request
//     is issued by task work after its predecessor's CQE is posted (so even
//     a cancel sent on seeing that CQE may miss it on a DEFER_TASKRUN ring).
//     The engine marks the op and the ops after it; the backend sends the
//     cancel once the predecessor's CQE is in, and again on -ENOENT, until
//     the op's own CQE arrives. An op that completes at once when issued
//     (a cached read) keeps its result, as with any cancel that comes late.
//   - The kernel issues a chain cut short by the end of a submission as a
//     shorter chain (io_submit_state_end), so a chain is staged whole or
//     not at all (PrepareLinked checks the SQ's room first; the loop
//     flushes and stages it next), and one longer than the SQ is not
//     linked.
//
// The completions may still reach the loop out of order (an op held for its
// LINK_TIMEOUT's CQE, the next op's CQE in first): an op whose predecessor's
// Done has not run waits in slotHeld.
//
// Engine-kept (AIO, which has no links; and on io_uring chains with an op
// of a kind canLink refuses): only the head is started; each other op waits
// in slotLinked and advanceChain starts it, or ends it, from its
// predecessor's finish, so each op costs a round of its own. Deadlines are
// the loop's timers.

// startLinked is Handle.StartLinked.
func (l *Loop) startLinked(ops ...Op) ([]OpID, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	for i := range ops {
		if err := ops[i].validate(); err != nil {
			return nil, fmt.Errorf("uio: linked op %d of %d: %w", i+1, len(ops), err)
		}
		if ops[i].Kind == OpTimeout {
			return nil, fmt.Errorf("uio: linked op %d of %d: a timeout cannot be linked; give the op a Timeout", i+1, len(ops))
		}
		if ops[i].Multishot {
			return nil, fmt.Errorf("uio: linked op %d of %d: a multishot op cannot be linked (it has no single end for the next to wait on)", i+1, len(ops))
		}
	}
	if l.closing {
		return nil, ErrClosed
	}
	ids := make([]OpID, len(ops))
	kernel := l.b.canLink(ops)
	if h := testHooks.Load(); h != nil && h.engineChains {
		kernel = false
	}
	var prev *slot
	for i, op := range ops {
		id, s := l.newSlot(op)
		s.kchain = kernel
		ids[i] = id
		if prev == nil {
			l.start(id, s)
		} else {
			s.state = slotLinked
			prev.next = id
		}
		prev = s
	}
	return ids, nil
}

// chainHolds reports whether an op's result lets the op linked after it
// start: it succeeded, and a transfer moved every byte it asked for.
func chainHolds(op *Op, res int32) bool {
	if res < 0 {
		return false
	}
	switch op.Kind {
	case OpRead, OpWrite, OpRecv, OpSend:
		return int(res) == len(clampRW(op.Buf))
	case OpReadv, OpWritev:
		n := 0
		for _, b := range op.Iovecs {
			n += len(b)
		}
		return int(res) == n
	}
	return true
}

// advanceChain starts the op that waited for its predecessor, or ends it
// and the rest of its chain with -ECANCELED when the predecessor broke it.
func (l *Loop) advanceChain(id OpID, ok bool) {
	s := l.lookup(id)
	if s == nil || s.state != slotLinked {
		return
	}
	if ok && !l.closing && !s.cancel {
		l.start(id, s)
		return
	}
	l.finish(id, s, -int32(unix.ECANCELED), 0)
}

// prepareChain stages a kernel-linked chain from its head: the head and
// every member still waiting behind it go to the backend as one run of
// linked SQEs. A member cancelled before that ends the run: it and the
// members after it are ended by advanceChain when the run's last op is.
func (l *Loop) prepareChain(id OpID, s *slot) error {
	ids, ops := append(l.linkIDs[:0], id), append(l.linkOps[:0], &s.op)
	for t := s; t.next != 0; {
		n := l.lookup(t.next)
		if n == nil || n.state != slotLinked || n.cancel {
			break
		}
		ids, ops = append(ids, t.next), append(ops, &n.op)
		t = n
	}
	err := l.b.PrepareLinked(ids, ops)
	if err == nil {
		for i, mid := range ids {
			m := l.slots.at(mid.index())
			m.state, m.klink, m.behind = slotKernel, i < len(ids)-1, i > 0
		}
		l.inflight += len(ids)
	}
	clear(ops) // no references to the ops' buffers beyond their slots
	l.linkIDs, l.linkOps = ids[:0], ops[:0]
	return err
}

// predecessorDone runs after the Done of the op before id in a
// kernel-linked chain: id's own Done may run now, if its completion is in.
func (l *Loop) predecessorDone(id OpID) {
	s := l.lookup(id)
	if s == nil {
		return
	}
	s.behind = false
	if s.state == slotHeld {
		l.finish(id, s, s.heldRes, s.heldFlags)
	}
}

// cancelLinked cancels the ops linked after s in the kernel, which the
// kernel starts on its own once s completes: cancelling an op of a chain
// cancels the rest even if that op completes in full anyway. The backend
// sends each cancel when its op has started (see backend_uring_link.go).
func (l *Loop) cancelLinked(s *slot) {
	for s.klink {
		id := s.next
		if s = l.lookup(id); s == nil {
			return
		}
		if !s.cancel {
			s.cancel = true
			if s.state == slotKernel {
				if err := l.b.Cancel(id); err != nil {
					l.log.Debug("uio: cancel", zap.Uint64("op", uint64(id)), zap.Error(err))
				}
			}
		}
	}
}

// DoLinked is Do for a chain (see Handle.StartLinked): it waits for every op of
// it and returns their results in order. When ctx ends, the chain is
// cancelled. A lone caller's chain of file ops runs as plain syscalls on
// the caller's goroutine, one after the other, under the same rules.
func (l *Loop) DoLinked(ctx context.Context, ops ...Op) ([]Result, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	for i := range ops {
		if err := ops[i].validate(); err != nil {
			return nil, fmt.Errorf("uio: linked op %d of %d: %w", i+1, len(ops), err)
		}
		if ops[i].Pool != nil {
			return nil, fmt.Errorf("uio: linked op %d of %d: %w", i+1, len(ops), errPoolDo)
		}
		if ops[i].Multishot {
			return nil, fmt.Errorf("uio: linked op %d of %d: %w", i+1, len(ops), errMultishotDo)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.closed.Load() {
		return nil, ErrClosed
	}
	res := make([]Result, len(ops))
	alone := l.doing.Add(1) == 1
	defer l.doing.Add(-1)
	if alone && l.direct && allDirect(ops) {
		broken := false
		var err error
		for i := range ops {
			if !broken && ctx.Err() != nil {
				broken, err = true, ctx.Err()
			}
			if broken {
				res[i] = Result{Kind: ops[i].Kind, Res: -int32(unix.ECANCELED)}
				continue
			}
			res[i] = l.runDirect(&ops[i])
			broken = !chainHolds(&ops[i], res[i].Res)
		}
		return res, err
	}
	if err := l.waiting(); err != nil {
		return nil, err
	}
	left := len(ops)
	done := make(chan struct{})
	chain := make([]Op, len(ops))
	for i := range ops {
		i := i
		chain[i] = ops[i]
		chain[i].Done = func(_ Handle, r Result) {
			res[i] = r
			if left--; left == 0 {
				close(done)
			}
		}
	}
	var ids []OpID
	errc := make(chan error, 1)
	if err := l.Post(func(Handle) {
		var err error
		ids, err = l.startLinked(chain...)
		errc <- err
	}); err != nil {
		return nil, err
	}
	if err := <-errc; err != nil {
		return nil, err
	}
	select {
	case <-done:
		return res, nil
	case <-ctx.Done():
		// Whatever of the chain is left: the done ops' IDs name nothing now.
		_ = l.Post(func(Handle) {
			for _, id := range ids {
				l.cancel(id)
			}
		})
		<-done
		return res, ctx.Err()
	}
}

// allDirect: a chain runs on the caller's goroutine only if every op of it
// would (a not-seekable one's ESPIPE would break the chain, not reroute it,
// so only ops that name no file position, or do at an offset, qualify).
func allDirect(ops []Op) bool {
	for i := range ops {
		if !ops[i].direct() {
			return false
		}
	}
	return true
}
