package uring

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestNewPicksDeferTaskrun(t *testing.T) {
	runtime.LockOSThread()
	r, err := New(32)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want := IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
	if r.SetupFlags() != want {
		t.Fatalf("SetupFlags=%#x, want %#x", r.SetupFlags(), want)
	}
	if r.SQEntries() != 32 || r.CQEntries() != 64 {
		t.Fatalf("entries sq=%d cq=%d", r.SQEntries(), r.CQEntries())
	}
	if r.Features()&IORING_FEAT_EXT_ARG == 0 {
		t.Fatal("kernel lacks EXT_ARG")
	}
}

func TestNewWithFlags(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		s := sqe(t, r, 42)
		s.PrepNop()
		if n := submit(t, r); n != 1 {
			t.Fatalf("Submit=%d", n)
		}
		c := reapOne(t, r)
		if c.UserData != 42 || c.Res != 0 {
			t.Fatalf("%+v", c)
		}
	})
}

func TestNewBadFlags(t *testing.T) {
	runtime.LockOSThread()
	// DEFER_TASKRUN without SINGLE_ISSUER is rejected by the kernel.
	_, err := NewWithFlags(8, IORING_SETUP_DEFER_TASKRUN)
	if !isErrno(err, unix.EINVAL) {
		t.Fatalf("err=%v, want wrapped EINVAL", err)
	}
	if !strings.Contains(err.Error(), "io_uring_setup(entries=8, flags=DEFER_TASKRUN): EINVAL (invalid argument)") {
		t.Fatalf("error lacks call context: %v", err)
	}
	_, err = NewWithFlags(8, 1<<31)
	if !isErrno(err, unix.EINVAL) {
		t.Fatalf("unknown flag: err=%v, want EINVAL", err)
	}
}

// TestStaleSQE: a slot that held another op's fields must not poison the
// next op prepared in it. prepareNoReset fills only the fields a READ needs
// (as liburing-style helpers such as giouring's PrepareRead do), so using it
// on a GetSQE'd slot proves GetSQE zeroes; our PrepRead must also work on a
// deliberately dirtied slot.
func TestStaleSQE(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		pr, pw := pipe(t)
		dirty := func() {
			for i := uint32(0); i < r.SQEntries(); i++ {
				e := (*SQE)(r.sqeAt(i))
				e.OpcodeFlags = unix.POLLIN // reads as RWF_HIPRI for a READ
				e.Addr3 = 0xdeadbeef
				e.SpliceFdIn = 77
				e.BufIG = 5
				e.Personality = 9
				e.IoPrio = 3
			}
		}
		buf := make([]byte, 16)

		// Realistic: a POLL_ADD left its mask in the slot.
		s := sqe(t, r, 1)
		s.PrepPollAdd(pr, unix.POLLIN)
		mustWrite(t, pw, []byte("x"))
		submit(t, r)
		wantRes(t, reapOne(t, r), unix.POLLIN)
		unix.Read(pr, buf)

		for round := 0; round < 2*int(r.SQEntries()); round++ {
			dirty()
			mustWrite(t, pw, []byte("abc"))
			s := sqe(t, r, 2)
			if s.OpcodeFlags != 0 || s.Addr3 != 0 || s.SpliceFdIn != 0 || s.IoPrio != 0 {
				t.Errorf("GetSQE returned a dirty slot: %+v", *s)
			}
			if round%2 == 0 {
				s.OpCode, s.Fd, s.Addr, s.Len, s.Off = IORING_OP_READ, int32(pr), uint64(uintptr(unsafePtr(buf))), uint32(len(buf)), ^uint64(0)
			} else {
				// Dirty after GetSQE: PrepRead itself must reset the slot.
				s.OpcodeFlags, s.Addr3, s.SpliceFdIn, s.IoPrio = 1, 0xdead, 5, 3
				s.PrepRead(pr, buf, -1)
			}
			submit(t, r)
			c := reapOne(t, r)
			if c.Res != 3 || string(buf[:3]) != "abc" {
				t.Fatalf("round %d: READ res=%d (%v) buf=%q", round, c.Res, c.Err(), buf[:3])
			}
		}
		runtime.KeepAlive(buf)
	})
}

func TestEntersCounting(t *testing.T) {
	r := newRing(t, 16, 0)
	const N = 10
	for i := 0; i < N; i++ {
		for j := 0; j < 3; j++ {
			sqe(t, r, uint64(j)).PrepNop()
		}
		if n := submit(t, r); n != 3 {
			t.Fatalf("Submit=%d", n)
		}
		reap(t, r, 3, time.Second) // NOPs complete inline: no extra enter
	}
	if got := r.Enters(); got != N {
		t.Fatalf("Enters=%d after %d Submits, want %d", got, N, N)
	}
	for i := 0; i < 5; i++ {
		if n := submit(t, r); n != 0 {
			t.Fatal(n)
		}
	}
	if got := r.Enters(); got != N {
		t.Fatalf("empty Submit on a plain ring entered: Enters=%d", got)
	}
	r.SubmitAndWait(0, 0)
	if got := r.Enters(); got != N+1 {
		t.Fatalf("SubmitAndWait must make exactly one enter: Enters=%d", got)
	}

	// DEFER_TASKRUN: an empty Submit still enters (GETEVENTS runs task work).
	d := newRing(t, 16, IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN)
	submit(t, d)
	if d.Enters() != 1 {
		t.Fatalf("defer ring: Enters=%d", d.Enters())
	}
}

// TestEntersStrace checks Enters against the kernel's own count, via
// strace -f -c on a child process running TestEntersStraceHelper.
func TestEntersStrace(t *testing.T) {
	if os.Getenv("UIO_URING_STRACE_CHILD") != "" {
		t.Skip("child")
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace not installed")
	}
	out := t.TempDir() + "/strace.out"
	cmd := exec.Command(strace, "-f", "-c", "-e", "trace=io_uring_enter", "-o", out,
		os.Args[0], "-test.run=^TestEntersStraceHelper$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "UIO_URING_STRACE_CHILD=1")
	stdout, err := cmd.CombinedOutput()
	if err != nil {
		t.Skipf("strace run failed (ptrace not permitted?): %v\n%s", err, stdout)
	}
	var enters int
	for _, l := range strings.Split(string(stdout), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "ENTERS="); ok {
			enters, _ = strconv.Atoi(v)
		}
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	calls := -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && fields[len(fields)-1] == "io_uring_enter" {
			calls, _ = strconv.Atoi(fields[3])
		}
	}
	if enters == 0 || calls != enters {
		t.Fatalf("strace counted %d io_uring_enter calls, Enters()=%d\n%s", calls, enters, stdout)
	}
	t.Logf("strace: %d io_uring_enter == Enters()", calls)
}

func TestEntersStraceHelper(t *testing.T) {
	if os.Getenv("UIO_URING_STRACE_CHILD") == "" {
		t.Skip("only run under TestEntersStrace")
	}
	// Not newRing: its io-wq warm-up enters a ring of its own, which
	// strace would count and r.Enters() not. NOPs need no io-wq.
	runtime.LockOSThread()
	r, err := NewWithFlags(64, IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := 0; i < 25; i++ {
		for j := 0; j < 8; j++ {
			sqe(t, r, uint64(j)).PrepNop()
		}
		submit(t, r)
		reap(t, r, 8, time.Second)
	}
	r.SubmitAndWait(1, 5*time.Millisecond)
	fmt.Printf("ENTERS=%d\n", r.Enters())
}

func TestSubmitAndWaitTimeout(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		start := time.Now()
		n, err := r.SubmitAndWait(1, 50*time.Millisecond)
		el := time.Since(start)
		if err != nil || n != 0 {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if el < 45*time.Millisecond || el > 200*time.Millisecond {
			t.Fatalf("waited %v for a 50ms timeout", el)
		}
		if r.CQReady() != 0 {
			t.Fatal("CQEs appeared")
		}
		if r.Enters() != 1 {
			t.Fatalf("Enters=%d", r.Enters())
		}
	})
}

func TestSubmitAndWaitEventfdWake(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		closeLater(t, efd)
		sqe(t, r, 9).PrepPollAdd(efd, unix.POLLIN)
		go func() {
			time.Sleep(30 * time.Millisecond)
			unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}()
		start := time.Now()
		n, err := r.SubmitAndWait(1, 5*time.Second)
		el := time.Since(start)
		if err != nil || n != 1 {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if el < 25*time.Millisecond || el > time.Second {
			t.Fatalf("woke after %v", el)
		}
		var out [4]CQE
		if k := r.PeekCQEs(out[:]); k != 1 || out[0].UserData != 9 || out[0].Res&unix.POLLIN == 0 {
			t.Fatalf("k=%d %+v", k, out[0])
		}
		if r.Enters() != 1 {
			t.Fatalf("Enters=%d, want 1", r.Enters())
		}
	})
}

func TestSQFull(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		n := r.SQEntries()
		for i := uint32(0); i < n; i++ {
			sqe(t, r, uint64(i)).PrepNop()
		}
		if r.SQReady() != n || r.SQSpace() != 0 {
			t.Fatalf("SQReady=%d SQSpace=%d", r.SQReady(), r.SQSpace())
		}
		if s := r.GetSQE(); s != nil {
			t.Fatal("GetSQE returned an SQE on a full SQ")
		}
		if got := submit(t, r); got != int(n) {
			t.Fatalf("Submit=%d, want %d", got, n)
		}
		if r.SQReady() != 0 {
			t.Fatalf("SQReady=%d after Submit", r.SQReady())
		}
		if s := r.GetSQE(); s == nil {
			t.Fatal("GetSQE nil after Submit")
		} else {
			s.PrepNop()
		}
		submit(t, r)
		reap(t, r, int(n)+1, time.Second)
	})
}

func TestRegisterEventFd(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		closeLater(t, efd)
		if err := r.RegisterEventFd(efd); err != nil {
			t.Fatal(err)
		}
		sqe(t, r, 1).PrepNop()
		submit(t, r)
		var b [8]byte
		if _, err := unix.Read(efd, b[:]); err != nil {
			t.Fatalf("eventfd not signalled: %v", err)
		}
		reapOne(t, r)
		if err := r.UnregisterEventFd(); err != nil {
			t.Fatal(err)
		}
		if err := r.RegisterEventFd(-1); !isErrno(err, unix.EBADF) {
			t.Fatalf("bad eventfd: %v", err)
		}
	})
}

func TestOpSupported(t *testing.T) {
	r := newRing(t, 8, 0)
	for _, op := range []uint8{IORING_OP_NOP, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SPLICE,
		IORING_OP_SHUTDOWN, IORING_OP_ASYNC_CANCEL, IORING_OP_TIMEOUT, IORING_OP_URING_CMD, IORING_OP_SENDMSG_ZC} { // all in 6.1
		if !r.OpSupported(op) {
			t.Errorf("op %d not supported (probe err %v)", op, r.ProbeErr())
		}
	}
	if r.OpSupported(250) {
		t.Error("op 250 reported supported")
	}
}

func TestOverflow(t *testing.T) {
	eachRing(t, func(t *testing.T, r *Ring) {
		cq := int(r.CQEntries())
		total := 0
		for total < cq+8 {
			for r.SQSpace() > 0 {
				sqe(t, r, uint64(total)).PrepNop()
				total++
			}
			submit(t, r)
		}
		if !r.Overflow() {
			t.Fatalf("no overflow after %d NOPs into a %d-entry CQ", total, cq)
		}
		got := reap(t, r, total, 2*time.Second) // GETEVENTS enters flush the backlog
		if len(got) != total {
			t.Fatal(len(got))
		}
	})
}

func TestSubmitErrorWrapped(t *testing.T) {
	r := newRing(t, 8, 0)
	sqe(t, r, 1).PrepNop()
	fd := r.fd
	r.fd = -1 // simulate a broken ring fd
	_, err := r.Submit()
	r.fd = fd
	if !isErrno(err, unix.EBADF) || !strings.Contains(err.Error(), "io_uring_enter(fd=-1, to_submit=1, min=0, flags=0x0)") {
		t.Fatalf("err=%v", err)
	}
	submit(t, r)
	reapOne(t, r)
}

// TestTaskrunFlagHint: on rings with TASKRUN_FLAG (also combined with
// DEFER_TASKRUN) an empty Submit enters only when the kernel raised
// IORING_SQ_TASKRUN, and that is enough to see an async completion.
func TestTaskrunFlagHint(t *testing.T) {
	for _, flags := range []uint32{
		IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
	} {
		t.Run(fmt.Sprintf("%#x", flags), func(t *testing.T) {
			r := newRing(t, 8, flags)
			a, b := socketpair(t, unix.SOCK_STREAM)
			buf := make([]byte, 8)
			sqe(t, r, 1).PrepRecv(b, buf, 0)
			submit(t, r)
			e := r.Enters()
			submit(t, r) // nothing pending, no task work: no syscall
			if r.Enters() != e {
				t.Fatalf("idle Submit entered")
			}
			mustWrite(t, a, []byte("hi"))
			var out [2]CQE
			deadline := time.Now().Add(2 * time.Second)
			for r.PeekCQEs(out[:]) == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("completion never became visible via Submit (sq flags %#x)", *r.sq.flags)
				}
				submit(t, r)
				time.Sleep(time.Millisecond)
			}
			wantRes(t, out[0], 2)
			runtime.KeepAlive(buf)
		})
	}
}

// NewSized gives the CQ the size asked for (rounded up to a power of two)
// and clamps what is beyond the kernel's maximum.
func TestNewSizedCQ(t *testing.T) {
	if !setupSizesCQ {
		t.Skip("the giouring ring setup takes no CQ size")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for _, tc := range []struct{ sq, cq, want uint32 }{{8, 0, 16}, {8, 1000, 1024}, {8, 1 << 20, 65536}} {
		r, err := NewSized(tc.sq, tc.cq, 0)
		if err != nil {
			t.Fatalf("NewSized(%d, %d): %v", tc.sq, tc.cq, err)
		}
		if got := r.CQEntries(); got != tc.want && !(tc.cq == 0 && got == 2*r.SQEntries()) {
			t.Errorf("NewSized(%d, %d): CQ of %d entries, want %d", tc.sq, tc.cq, got, tc.want)
		}
		r.Close()
	}
}
