//go:build linux && (amd64 || arm64 || loong64 || mips64le || ppc64le || riscv64)

package aio

import (
	"errors"
	"os"
	"testing"
	"unsafe"
)

func TestLayout(t *testing.T) {
	var cb Iocb
	var ev Event
	if s := unsafe.Sizeof(cb); s != 64 {
		t.Errorf("sizeof(Iocb) = %d, want 64", s)
	}
	if s := unsafe.Sizeof(ev); s != 32 {
		t.Errorf("sizeof(Event) = %d, want 32", s)
	}
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"aio_data", unsafe.Offsetof(cb.Data), 0},
		{"aio_key", unsafe.Offsetof(cb.Key), 8},
		{"aio_rw_flags", unsafe.Offsetof(cb.RWFlags), 12},
		{"aio_lio_opcode", unsafe.Offsetof(cb.Opcode), 16},
		{"aio_reqprio", unsafe.Offsetof(cb.Reqprio), 18},
		{"aio_fildes", unsafe.Offsetof(cb.Fd), 20},
		{"aio_buf", unsafe.Offsetof(cb.Buf), 24},
		{"aio_nbytes", unsafe.Offsetof(cb.Nbytes), 32},
		{"aio_offset", unsafe.Offsetof(cb.Offset), 40},
		{"aio_reserved2", unsafe.Offsetof(cb.Reserved2), 48},
		{"aio_flags", unsafe.Offsetof(cb.Flags), 56},
		{"aio_resfd", unsafe.Offsetof(cb.Resfd), 60},
		{"io_event.data", unsafe.Offsetof(ev.Data), 0},
		{"io_event.obj", unsafe.Offsetof(ev.Obj), 8},
		{"io_event.res", unsafe.Offsetof(ev.Res), 16},
		{"io_event.res2", unsafe.Offsetof(ev.Res2), 24},
	} {
		if f.got != f.want {
			t.Errorf("offset of %s = %d, want %d", f.name, f.got, f.want)
		}
	}
}

func TestPrepZeroes(t *testing.T) {
	cb := Iocb{Data: 1, Key: 2, RWFlags: 3, Opcode: 4, Reqprio: 5, Fd: 6, Buf: 7,
		Nbytes: 8, Offset: 9, Reserved2: 10, Flags: 11, Resfd: 12}
	cb.PrepPwrite(3, nil, 0)
	if cb != (Iocb{Opcode: IOCB_CMD_PWRITE, Fd: 3}) {
		t.Fatalf("PrepPwrite(empty) left %+v", cb)
	}
	cb.PrepPwrite(3, make([]byte, 0, 16), 5)
	if cb.Buf != 0 || cb.Nbytes != 0 || cb.Offset != 5 {
		t.Fatalf("empty non-nil buf: %+v", cb)
	}
	cb.Data = 99
	cb.PrepPoll(4, 0x1)
	if cb != (Iocb{Opcode: IOCB_CMD_POLL, Fd: 4, Buf: 1}) {
		t.Fatalf("PrepPoll left %+v", cb)
	}
	cb.SetResfd(7)
	cb.SetIoprio(IoprioValue(IOPRIO_CLASS_BE, 4))
	if cb.Flags != IOCB_FLAG_RESFD|IOCB_FLAG_IOPRIO || cb.Resfd != 7 || cb.Reqprio != 2<<13|4 {
		t.Fatalf("SetResfd/SetIoprio: %+v", cb)
	}
	if v := IoprioValue(IOPRIO_CLASS_IDLE, 7); v != 0x6007 {
		t.Fatalf("IoprioValue = %#x", v)
	}
}

func TestSetupRing(t *testing.T) {
	c, err := Setup(128)
	if err != nil {
		t.Fatal(err)
	}
	if !c.UserspaceReap() {
		t.Fatal("ring header did not validate")
	}
	// nr = (pages*PAGE_SIZE - 32)/32 with pages covering 2*max(128, 4*ncpu)+2 events.
	if c.Nr() < 2*128+2 || (c.Nr()+1)*32%uint32(os.Getpagesize()) != 0 {
		t.Fatalf("Nr() = %d: not a whole number of pages", c.Nr())
	}
	t.Logf("Setup(128): ctx=%#x nr=%d", c.ID(), c.Nr())
	if c.Ready() {
		t.Fatal("fresh ring is Ready")
	}
	if err := c.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := c.Destroy(); err != nil {
		t.Fatalf("second Destroy: %v", err)
	}
	var cb Iocb
	cb.PrepFsync(0)
	if _, err := c.Submit([]*Iocb{&cb}); !errors.Is(err, ErrDestroyed) {
		t.Fatalf("Submit after Destroy: %v", err)
	}
	if c.Reap(make([]Event, 4)) != 0 || c.Ready() {
		t.Fatal("Reap/Ready after Destroy")
	}
	if _, err := Setup(-1); err == nil {
		t.Fatal("Setup(-1) succeeded")
	} else {
		t.Log(err)
	}
}
