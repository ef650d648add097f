package dio

import (
	"context"

	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

// do runs op on l and returns its kernel result (a count or -errno). Do
// batches it with other goroutines' ops, or runs it as a plain syscall on
// this goroutine when nobody else is waiting.
func do(l *uio.Loop, op uio.Op) (int32, error) {
	r, err := l.Do(context.Background(), op)
	if err != nil {
		return 0, err
	}
	if r.Res == -int32(unix.ECANCELED) {
		return r.Res, uio.ErrClosed
	}
	return r.Res, nil
}

// resErr is the error in an op's result. dio cancels nothing itself, so an
// op of ours that ends cancelled was cancelled by its loop closing: that is
// uio.ErrClosed, not ECANCELED.
func resErr(res int32) error {
	switch {
	case res >= 0:
		return nil
	case res == -int32(unix.ECANCELED):
		return uio.ErrClosed
	}
	return unix.Errno(-res)
}
