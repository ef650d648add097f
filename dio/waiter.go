package dio

import (
	"sync"

	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

// waiter submits one op from a goroutine other than the loop's and waits
// for it: what uio.Loop.Do does, minus the per-call channel and closures.
// Waiters are pooled; ops from many goroutines posted in the same round
// still go to the kernel in one syscall.
type waiter struct {
	l      *uio.Loop
	op     uio.Op
	ch     chan uio.Result
	submit func() // w.post, bound once
}

var waiters = sync.Pool{New: func() any {
	w := &waiter{ch: make(chan uio.Result, 1)}
	w.submit = w.post
	w.op.Done = w.done
	return w
}}

func (w *waiter) done(r uio.Result) { w.ch <- r }

func (w *waiter) post() {
	if _, err := w.l.Submit(w.op); err != nil {
		w.ch <- uio.Result{Kind: w.op.Kind, Res: -int32(unix.ECANCELED)}
	}
}

// do runs op on l and returns its kernel result (a count or -errno).
func do(l *uio.Loop, op uio.Op) (int32, error) {
	w := waiters.Get().(*waiter)
	w.l = l
	done := w.op.Done
	w.op = op
	w.op.Done = done
	if err := l.Post(w.submit); err != nil {
		w.op, w.l = uio.Op{Done: done}, nil
		waiters.Put(w)
		return 0, err
	}
	r := <-w.ch
	w.op, w.l = uio.Op{Done: done}, nil
	waiters.Put(w)
	return r.Res, nil
}
