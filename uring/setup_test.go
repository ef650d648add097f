package uring

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestFlagSetsAreSetupCandidates keeps eachRing honest: the tests that run
// on every flag set cover exactly the sets New tries, in order.
func TestFlagSetsAreSetupCandidates(t *testing.T) {
	if len(flagSets) != len(setupCandidates) {
		t.Fatalf("flagSets has %d entries, setupCandidates %d", len(flagSets), len(setupCandidates))
	}
	for i, fs := range flagSets {
		if fs.flags != setupCandidates[i] {
			t.Errorf("flagSets[%d] (%s) = %s, setupCandidates[%d] = %s",
				i, fs.name, SetupFlagsString(fs.flags), i, SetupFlagsString(setupCandidates[i]))
		}
	}
}

// TestSetupEachCandidate: every set New may pick sets up on this kernel,
// keeps its flags, and carries a NOP through SQ and CQ across several laps
// of the rings.
func TestSetupEachCandidate(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		want := setupCandidates[0]
		for _, fs := range flagSets {
			if strings.HasSuffix(t.Name(), "/"+fs.name) {
				want = fs.flags
			}
		}
		if r.SetupFlags()&want != want {
			t.Fatalf("SetupFlags=%s, want %s", SetupFlagsString(r.SetupFlags()), SetupFlagsString(want))
		}
		if r.SQESize() != 64 || r.CQESize() != 16 {
			t.Fatalf("SQESize=%d CQESize=%d", r.SQESize(), r.CQESize())
		}
		if r.Fd() < 0 || r.SQEntries() != 64 || r.CQEntries() != 128 {
			t.Fatalf("fd=%d sq=%d cq=%d", r.Fd(), r.SQEntries(), r.CQEntries())
		}
		nopLaps(t, r, 3)
	})
}

// nopLaps pushes laps*CQEntries NOPs through r in SQ-sized batches, checking
// that every CQE comes back with its own user data, in order.
func nopLaps(t *testing.T, r *Ring, laps int) {
	t.Helper()
	total := laps * int(r.CQEntries())
	next, seen := 0, 0
	out := make([]CQE, 16)
	for seen < total {
		for next < total && r.SQSpace() > 0 && next-seen < int(r.CQEntries()) {
			sqe(t, r, uint64(next)).PrepNop()
			next++
		}
		submit(t, r)
		for _, c := range reap(t, r, min(next-seen, len(out)), 5e9) {
			if c.UserData != uint64(seen) || c.Res != 0 {
				t.Fatalf("CQE %d: %+v", seen, c)
			}
			seen++
		}
	}
	if r.Overflow() {
		t.Fatal("CQ overflowed")
	}
}

// TestNewFallsBack: a set the kernel refuses (EINVAL) moves New to the next
// one; the refused flags really go to the kernel.
func TestNewFallsBack(t *testing.T) {
	runtime.LockOSThread()
	for _, tc := range []struct {
		name       string
		candidates []uint32
		want       uint32
	}{
		{"unknown flag", []uint32{1 << 31, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN},
			IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN},
		{"DEFER_TASKRUN alone", []uint32{IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG},
			IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG},
		{"to plain", []uint32{1 << 31, IORING_SETUP_DEFER_TASKRUN, 0}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tried []uint32
			r, err := newFirst(16, tc.candidates, func(n, f uint32) (*Ring, error) {
				tried = append(tried, f)
				return NewWithFlags(n, f)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if r.SetupFlags() != tc.want || len(tried) != len(tc.candidates) {
				t.Fatalf("SetupFlags=%s after trying %v, want %s", SetupFlagsString(r.SetupFlags()), tried, SetupFlagsString(tc.want))
			}
			nopLaps(t, r, 1)
		})
	}
	t.Run("all refused", func(t *testing.T) {
		_, err := newFirst(16, []uint32{1 << 31, IORING_SETUP_DEFER_TASKRUN}, NewWithFlags)
		if !isErrno(err, unix.EINVAL) || !strings.Contains(err.Error(), "io_uring_setup(entries=16, flags=DEFER_TASKRUN): EINVAL") {
			t.Fatalf("err=%v, want the last refusal", err)
		}
	})
	t.Run("other errors stop", func(t *testing.T) {
		calls := 0
		_, err := newFirst(16, setupCandidates, func(n, f uint32) (*Ring, error) {
			calls++
			return nil, sysErr(unix.EPERM, "io_uring_setup(entries=%d, flags=%s)", n, SetupFlagsString(f))
		})
		if calls != 1 || !isErrno(err, unix.EPERM) {
			t.Fatalf("calls=%d err=%v", calls, err)
		}
	})
}

func TestSetupErrors(t *testing.T) {
	runtime.LockOSThread()
	_, err := NewWithFlags(4096, IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN|1<<30)
	var se *SysError
	if !errors.As(err, &se) || se.Errno != unix.EINVAL ||
		err.Error() != "io_uring_setup(entries=4096, flags=SINGLE_ISSUER|DEFER_TASKRUN|0x40000000): EINVAL (invalid argument)" {
		t.Fatalf("err=%v", err)
	}
	// More entries than IORING_MAX_ENTRIES without CLAMP.
	if _, err := NewWithFlags(1<<20, 0); !isErrno(err, unix.EINVAL) || !strings.Contains(err.Error(), "entries=1048576, flags=0)") {
		t.Fatalf("err=%v", err)
	}
	// With CLAMP the kernel caps it instead.
	r, err := NewWithFlags(1<<20, IORING_SETUP_CLAMP)
	if err != nil {
		t.Fatal(err)
	}
	if r.SQEntries() != 32768 {
		t.Errorf("clamped SQEntries=%d", r.SQEntries())
	}
	r.Close()
	for _, f := range []uint32{IORING_SETUP_NO_MMAP, IORING_SETUP_NO_SQARRAY, IORING_SETUP_REGISTERED_FD_ONLY | IORING_SETUP_NO_MMAP} {
		if _, err := NewWithFlags(8, f); !isErrno(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), SetupFlagsString(f)) {
			t.Errorf("flags %s: err=%v, want EOPNOTSUPP naming them", SetupFlagsString(f), err)
		}
	}
}

func TestSetupFlagsString(t *testing.T) {
	for f, want := range map[uint32]string{
		0: "0",
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN:  "SINGLE_ISSUER|DEFER_TASKRUN",
		IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG:    "COOP_TASKRUN|TASKRUN_FLAG",
		IORING_SETUP_IOPOLL | IORING_SETUP_NO_SQARRAY | 1<<31:    "IOPOLL|NO_SQARRAY|0x80000000",
		IORING_SETUP_SQE128 | IORING_SETUP_CQE32 | 1<<17 | 1<<20: "SQE128|CQE32|0x120000",
	} {
		if got := SetupFlagsString(f); got != want {
			t.Errorf("SetupFlagsString(%#x)=%q, want %q", f, got, want)
		}
	}
	e := &SysError{Call: "io_uring_enter(fd=3)", Errno: 4095}
	if !strings.HasPrefix(e.Error(), "io_uring_enter(fd=3): errno 4095") || !errors.Is(e, unix.Errno(4095)) {
		t.Errorf("%v", e)
	}
}

// TestProbe: IORING_REGISTER_PROBE on this kernel (6.18) knows every opcode
// this package defines, and the answer is self-consistent.
func TestProbe(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		if !r.OpSupported(IORING_OP_NOP) || r.ProbeErr() != nil { // probes, once
			t.Fatalf("NOP not supported: probe err %v", r.ProbeErr())
		}
		// Every opcode up to the kernel's last; and the oldest kernel
		// supported (6.1) has them up to SENDMSG_ZC (6.7 added
		// READ_MULTISHOT, 6.18 has more).
		p := r.probe
		for op := IORING_OP_NOP; op <= p.lastOp; op++ {
			if !r.OpSupported(op) {
				t.Errorf("op %d not supported (probe err %v)", op, r.ProbeErr())
			}
		}
		if p.lastOp < IORING_OP_SENDMSG_ZC || int(p.opsLen) != int(p.lastOp)+1 {
			t.Fatalf("last_op=%d ops_len=%d", p.lastOp, p.opsLen)
		}
		for i := 0; i < int(p.opsLen); i++ {
			if p.ops[i].op != uint8(i) {
				t.Fatalf("ops[%d].op=%d", i, p.ops[i].op)
			}
		}
		if r.OpSupported(p.lastOp+1) || r.OpSupported(255) {
			t.Error("an opcode past last_op reported supported")
		}
	})
	r := newRing(t, 8, 0)
	r.Close()
	if r.OpSupported(IORING_OP_NOP) || r.ProbeErr() != nil {
		t.Errorf("probe on a closed ring: supported, err %v", r.ProbeErr())
	}
}

// TestBigEntries: an SQE128|CQE32 ring (what ublk's URING_CMD needs) indexes
// its arrays with 128- and 32-byte strides and zeroes whole SQE slots.
func TestBigEntries(t *testing.T) {
	for _, extra := range []uint32{0, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN} {
		for _, f := range []uint32{IORING_SETUP_SQE128, IORING_SETUP_CQE32, IORING_SETUP_SQE128 | IORING_SETUP_CQE32} {
			f |= extra
			t.Run(SetupFlagsString(f), func(t *testing.T) {
				r := newRing(t, 8, f)
				wantSQE, wantCQE := 64, 16
				if f&IORING_SETUP_SQE128 != 0 {
					wantSQE = 128
				}
				if f&IORING_SETUP_CQE32 != 0 {
					wantCQE = 32
				}
				if r.SQESize() != wantSQE || r.CQESize() != wantCQE {
					t.Fatalf("SQESize=%d CQESize=%d", r.SQESize(), r.CQESize())
				}
				// Dirty every slot, whole size, then check GetSQE clears it.
				for i := uint32(0); i < r.SQEntries(); i++ {
					b := unsafe.Slice((*byte)(r.sqeAt(i)), r.SQESize())
					for j := range b {
						b[j] = 0xa5
					}
				}
				a, b := r.GetSQE(), r.GetSQE()
				if d := uintptr(unsafe.Pointer(b)) - uintptr(unsafe.Pointer(a)); d != uintptr(wantSQE) {
					t.Fatalf("SQE stride %d", d)
				}
				for _, s := range []*SQE{a, b} {
					for j, v := range unsafe.Slice((*byte)(unsafe.Pointer(s)), wantSQE) {
						if v != 0 {
							t.Fatalf("GetSQE left byte %d = %#x", j, v)
						}
					}
				}
				a.PrepNop()
				a.SetData(0)
				b.PrepNop()
				b.SetData(1)
				submit(t, r)
				reap(t, r, 2, 5e9)
				nopLaps(t, r, 3) // indices 0.. again, across laps of both rings
			})
		}
	}
}

// TestRingClose: Close unmaps every ring mapping and closes the fd; afterwards
// the Ring fails cleanly instead of touching unmapped memory.
func TestRingClose(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		addrs := []uintptr{
			uintptr(unsafe.Pointer(r.sq.head)), uintptr(unsafe.Pointer(r.cq.tail)),
			uintptr(r.sq.sqes), uintptr(r.cq.cqes),
		}
		for _, a := range addrs {
			if !mapped(t, a) {
				t.Fatalf("%#x is not in an io_uring mapping", a)
			}
		}
		sqe(t, r, 1).PrepNop() // staged, never submitted
		fd := r.Fd()
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if mapped(t, a) {
				t.Errorf("%#x still mapped after Close", a)
			}
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("ring fd %d still open after Close: %v", fd, err)
		}
		if err := r.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if r.GetSQE() != nil || r.SQReady() != 0 || r.SQSpace() != 0 || r.CQReady() != 0 ||
			r.PeekCQEs(make([]CQE, 4)) != 0 || r.Overflow() {
			t.Error("closed ring reports entries")
		}
		if _, err := r.Submit(); !isErrno(err, unix.EBADF) {
			t.Errorf("Submit after Close: %v", err)
		}
		if _, err := r.SubmitAndWait(1, 0); !isErrno(err, unix.EBADF) {
			t.Errorf("SubmitAndWait after Close: %v", err)
		}
		if err := r.RegisterEventFd(0); !isErrno(err, unix.EBADF) {
			t.Errorf("RegisterEventFd after Close: %v", err)
		}
	})
}

// mapped reports whether addr lies in an io_uring mapping of this process.
func mapped(t *testing.T, addr uintptr) bool {
	t.Helper()
	for _, m := range ioUringMaps(t) {
		if addr >= m.start && addr < m.end {
			return true
		}
	}
	return false
}

type mapping struct{ start, end uintptr }

// ioUringMaps lists the io_uring mappings in /proc/self/maps.
func ioUringMaps(t *testing.T) []mapping {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "io_uring") {
			continue
		}
		var m mapping
		if _, err := fmt.Sscanf(line, "%x-%x", &m.start, &m.end); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}
