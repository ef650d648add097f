package uio

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"go.uber.org/zap"

	"github.com/userland-io/uio/uring"
)

// ErrNotSupported is matched (errors.Is) by the error NewLoop returns when
// the backend asked for by name cannot run on this kernel; the error is a
// *NotSupportedError naming what is missing.
var ErrNotSupported = errors.New("not supported by this kernel")

// NotSupportedError says which kernel feature a backend lacks.
type NotSupportedError struct {
	Backend string // BackendAIO or BackendUring
	// Feature names what is missing, with the Linux version that brought
	// it: "IORING_OP_RECV (Linux 5.6)".
	Feature string
	Err     error // the error that showed it, if any
}

func (e *NotSupportedError) Error() string {
	s := fmt.Sprintf("uio: %s backend not supported by this kernel: needs %s", e.Backend, e.Feature)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *NotSupportedError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrNotSupported}
	}
	return []error{ErrNotSupported, e.Err}
}

// uringNeeds are the opcodes the io_uring backend encodes, with the kernel
// that brought each. Splice is not among them: without it only OpSplice
// fails (EOPNOTSUPP), per op.
var uringNeeds = []struct {
	op      uint8
	name    string
	version string
}{
	{uring.IORING_OP_READV, "IORING_OP_READV", "5.1"},
	{uring.IORING_OP_WRITEV, "IORING_OP_WRITEV", "5.1"},
	{uring.IORING_OP_FSYNC, "IORING_OP_FSYNC", "5.1"},
	{uring.IORING_OP_POLL_ADD, "IORING_OP_POLL_ADD", "5.1"},
	{uring.IORING_OP_ACCEPT, "IORING_OP_ACCEPT", "5.5"},
	{uring.IORING_OP_ASYNC_CANCEL, "IORING_OP_ASYNC_CANCEL", "5.5"},
	{uring.IORING_OP_CONNECT, "IORING_OP_CONNECT", "5.5"},
	{uring.IORING_OP_CLOSE, "IORING_OP_CLOSE", "5.6"},
	{uring.IORING_OP_READ, "IORING_OP_READ", "5.6"},
	{uring.IORING_OP_WRITE, "IORING_OP_WRITE", "5.6"},
	{uring.IORING_OP_SEND, "IORING_OP_SEND", "5.6"},
	{uring.IORING_OP_RECV, "IORING_OP_RECV", "5.6"},
}

// uringMissing returns what a ring lacks for the backend, or "". The probe
// itself (IORING_REGISTER_PROBE) came in 5.6; the wait with a timeout in
// one io_uring_enter (IORING_FEAT_EXT_ARG) in 5.11, and without it a
// pending timer would make the loop spin.
func uringMissing(features uint32, opSupported func(uint8) bool, probeErr error) (string, error) {
	if features&uring.IORING_FEAT_EXT_ARG == 0 {
		return "IORING_FEAT_EXT_ARG (Linux 5.11)", nil
	}
	if features&uring.IORING_FEAT_NODROP == 0 {
		return "IORING_FEAT_NODROP (Linux 5.5)", nil
	}
	if probeErr != nil {
		return "IORING_REGISTER_PROBE (Linux 5.6)", probeErr
	}
	var missing []string
	for _, n := range uringNeeds {
		if !opSupported(n.op) {
			missing = append(missing, fmt.Sprintf("%s (Linux %s)", n.name, n.version))
		}
	}
	return strings.Join(missing, ", "), nil
}

// checkUring fails with a *NotSupportedError when ring cannot serve the
// backend.
func checkUring(ring *uring.Ring) error {
	if what, err := uringMissing(ring.Features(), ring.OpSupported, ring.ProbeErr()); what != "" {
		return &NotSupportedError{Backend: BackendUring, Feature: what, Err: err}
	}
	return nil
}

// chooseBackend opens the named backend; "auto" prefers io_uring and falls
// back to AIO with the reason logged.
func chooseBackend(cfg Config, log *zap.Logger) (backend, error) {
	depth := cfg.Depth
	switch name := cfg.Backend; name {
	case BackendAIO:
		return newAIOBackend(depth, cfg.MaxInFlight, log)
	case BackendUring:
		return newUringBackend(depth, cfg.MaxInFlight, cfg.SQE128, log)
	case BackendAuto, "":
		var b backend
		var err error
		if h := testHooks.Load(); h != nil && h.uringRefused != nil {
			err = h.uringRefused
		} else {
			b, err = newUringBackend(depth, cfg.MaxInFlight, cfg.SQE128, log)
		}
		if err == nil {
			return b, nil
		}
		b2, err2 := newAIOBackend(depth, cfg.MaxInFlight, log)
		if err2 != nil {
			return nil, fmt.Errorf("uio: no usable backend: io_uring: %v; aio: %w", err, err2)
		}
		log.Info("uio: io_uring unusable, running on AIO", zap.Error(err))
		return b2, nil
	default:
		return nil, fmt.Errorf("uio: unknown backend %q (want %q, %q or %q)", name, BackendAuto, BackendAIO, BackendUring)
	}
}

// aioSetupError explains a failed io_setup: a kernel without AIO, or the
// system-wide fs.aio-max-nr reached, with the figures to raise it by.
func aioSetupError(err error, events int) error {
	switch {
	case errors.Is(err, unix.ENOSYS):
		return &NotSupportedError{Backend: BackendAIO, Feature: "io_setup (a kernel built with CONFIG_AIO)", Err: err}
	case errors.Is(err, unix.EAGAIN):
		limit, lerr := readProcInt("/proc/sys/fs/aio-max-nr")
		used, uerr := readProcInt("/proc/sys/fs/aio-nr")
		if lerr != nil || uerr != nil {
			return fmt.Errorf("%w: the system-wide limit fs.aio-max-nr is reached (sysctl fs.aio-max-nr)", err)
		}
		// fs.aio-nr counts what each io_setup asked for (measured on
		// 6.18: 10, 1000 and 4096 events raise it by exactly that).
		return fmt.Errorf("%w: no room under the system-wide limit fs.aio-max-nr=%d (%d in use; this loop asks for %d events); "+
			"raise it, for example: sysctl -w fs.aio-max-nr=%d (or run fewer loops, or a smaller depth)",
			err, limit, used, events, max(used+events+limit/2, 2*limit))
	}
	return err
}

func readProcInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
