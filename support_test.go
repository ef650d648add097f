package uio

import (
	"errors"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/userland-io/uio/uring"
)

func TestUringMissing(t *testing.T) {
	all := func(uint8) bool { return true }
	allBut := func(op uint8) func(uint8) bool { return func(o uint8) bool { return o != op } }
	good := uring.IORING_FEAT_EXT_ARG | uring.IORING_FEAT_NODROP
	cases := []struct {
		name     string
		features uint32
		ops      func(uint8) bool
		probeErr error
		want     string
	}{
		{"everything", good, all, nil, ""},
		{"5.10: no EXT_ARG", uring.IORING_FEAT_NODROP, all, nil, "IORING_FEAT_EXT_ARG (Linux 5.11)"},
		{"no recv", good, allBut(uring.IORING_OP_RECV), nil, "IORING_OP_RECV (Linux 5.6)"},
		{"no probe", good, func(uint8) bool { return false }, unix.EINVAL, "IORING_REGISTER_PROBE (Linux 5.6)"},
		{"no splice is fine", good, allBut(uring.IORING_OP_SPLICE), nil, ""},
	}
	for _, c := range cases {
		got, _ := uringMissing(c.features, c.ops, c.probeErr)
		if got != c.want {
			t.Errorf("%s: missing %q, want %q", c.name, got, c.want)
		}
	}
}

// A backend asked for by name that cannot run fails with an error that
// names the feature and matches ErrNotSupported; "auto" falls back to AIO
// and logs why.
func TestAutoFallsBackWithReason(t *testing.T) {
	refused := &NotSupportedError{Backend: BackendUring, Feature: "IORING_FEAT_EXT_ARG (Linux 5.11)"}
	if !errors.Is(refused, ErrNotSupported) {
		t.Fatal("NotSupportedError does not match ErrNotSupported")
	}
	if want := "uio: uring backend not supported by this kernel: needs IORING_FEAT_EXT_ARG (Linux 5.11)"; refused.Error() != want {
		t.Fatalf("error text %q, want %q", refused.Error(), want)
	}
	setHooks(t, &loopHooks{uringRefused: refused})
	core, logs := observer.New(zap.InfoLevel)
	l, err := NewLoop(Config{Backend: BackendAuto, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Backend() != BackendAIO {
		t.Fatalf("auto chose %s with io_uring refused", l.Backend())
	}
	found := false
	for _, e := range logs.All() {
		if strings.Contains(e.Message, "io_uring unusable") && strings.Contains(e.ContextMap()["error"].(string), "EXT_ARG") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no log line says why io_uring was not used: %v", logs.All())
	}
}

// io_setup beyond fs.aio-max-nr fails with the sysctl to raise and by how
// much, not a bare EAGAIN.
func TestAIOSetupNamesAioMaxNr(t *testing.T) {
	limit, err := readProcInt("/proc/sys/fs/aio-max-nr")
	if err != nil {
		t.Skip(err)
	}
	_, err = NewLoop(Config{Backend: BackendAIO, Depth: limit + 1})
	if err == nil {
		t.Fatalf("a loop of depth %d, over fs.aio-max-nr=%d, was created", limit+1, limit)
	}
	for _, want := range []string{"fs.aio-max-nr=", "sysctl -w fs.aio-max-nr="} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !errors.Is(err, unix.EAGAIN) {
		t.Errorf("error %v does not wrap EAGAIN", err)
	}
	t.Log(err)
}
