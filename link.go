package uio

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

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
	var prev *slot
	for i, op := range ops {
		id, s := l.newSlot(op)
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
