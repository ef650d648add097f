package uio

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// UDP through sendmsg/recvmsg: the destination goes out, the sender's
// address comes back.
func TestSendmsgRecvmsgUDP(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		udp := func() (int, *unix.SockaddrInet4) {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fd) })
			if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				t.Fatal(err)
			}
			sa, _ := unix.Getsockname(fd)
			return fd, sa.(*unix.SockaddrInet4)
		}
		a, aAddr := udp()
		b, bAddr := udp()
		r := mustDo(t, l, Op{Kind: OpSendmsg, Fd: a, Iovecs: [][]byte{[]byte("hello "), []byte("udp")}, Msg: &Msg{Addr: bAddr}})
		if r.Res != 9 {
			t.Fatalf("sendmsg = %d %v", r.Res, r.Err())
		}
		var m Msg
		buf := make([]byte, 64)
		r = mustDo(t, l, Op{Kind: OpRecvmsg, Fd: b, Buf: buf, Msg: &m})
		if r.Res != 9 || string(buf[:9]) != "hello udp" {
			t.Fatalf("recvmsg = %d %q %v", r.Res, buf[:max(r.Res, 0)], r.Err())
		}
		from, ok := m.Addr.(*unix.SockaddrInet4)
		if !ok || from.Port != aAddr.Port || from.Addr != aAddr.Addr {
			t.Fatalf("recvmsg sender = %#v, want 127.0.0.1:%d", m.Addr, aAddr.Port)
		}
		// A datagram longer than the buffer: MSG_TRUNC in Flags.
		mustDo(t, l, Op{Kind: OpSendmsg, Fd: a, Buf: bytes.Repeat([]byte{1}, 100), Msg: &Msg{Addr: bAddr}})
		r = mustDo(t, l, Op{Kind: OpRecvmsg, Fd: b, Buf: make([]byte, 10), Msg: &m})
		if r.Res != 10 || m.Flags&unix.MSG_TRUNC == 0 {
			t.Fatalf("short recvmsg = %d, flags %#x; want 10 and MSG_TRUNC", r.Res, m.Flags)
		}
	})
}

// Ancillary data: an fd passed with SCM_RIGHTS arrives.
func TestSendmsgRecvmsgRights(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		a, b := socketpair(t)
		f, err := os.CreateTemp(t.TempDir(), "passed")
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("via SCM_RIGHTS")
		f.Close()
		ffd, err := unix.Open(f.Name(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(ffd)
		r := mustDo(t, l, Op{Kind: OpSendmsg, Fd: a, Buf: []byte("x"), Msg: &Msg{Oob: unix.UnixRights(ffd)}})
		if r.Res != 1 {
			t.Fatalf("sendmsg = %d %v", r.Res, r.Err())
		}
		m := Msg{Oob: make([]byte, unix.CmsgSpace(4))}
		r = mustDo(t, l, Op{Kind: OpRecvmsg, Fd: b, Buf: make([]byte, 4), Msg: &m})
		if r.Res != 1 || m.OobN == 0 {
			t.Fatalf("recvmsg = %d, %d bytes of ancillary data", r.Res, m.OobN)
		}
		cmsgs, err := unix.ParseSocketControlMessage(m.Oob[:m.OobN])
		if err != nil || len(cmsgs) != 1 {
			t.Fatalf("control messages: %v %v", cmsgs, err)
		}
		fds, err := unix.ParseUnixRights(&cmsgs[0])
		if err != nil || len(fds) != 1 {
			t.Fatalf("rights: %v %v", fds, err)
		}
		defer unix.Close(fds[0])
		got := make([]byte, 32)
		n, _ := unix.Pread(fds[0], got, 0)
		if string(got[:n]) != "via SCM_RIGHTS" {
			t.Fatalf("passed fd reads %q", got[:n])
		}
	})
}

// openat, fallocate and ftruncate through the loop (NoDirect, so that Do
// does not run them itself): native on io_uring, on a goroutine of the
// engine's on AIO.
func TestFileMetadataOps(t *testing.T) {
	dir := t.TempDir()
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		path := filepath.Join(dir, l.Backend())
		before := l.Stats()
		r := mustDo(t, l, Op{Kind: OpOpenat, Fd: unix.AT_FDCWD, Path: path, Flags: unix.O_RDWR | unix.O_CREAT | unix.O_CLOEXEC, Mode: 0o600})
		if r.Res < 0 {
			t.Fatalf("openat = %v", r.Err())
		}
		fd := int(r.Res)
		defer unix.Close(fd)
		if r := mustDo(t, l, Op{Kind: OpFallocate, Fd: fd, Offset: 0, Len: 1 << 20}); r.Res != 0 {
			t.Fatalf("fallocate = %v", r.Err())
		}
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		if st.Size != 1<<20 || st.Mode&0o777 != 0o600 {
			t.Fatalf("after fallocate: size %d mode %o", st.Size, st.Mode&0o777)
		}
		if r := mustDo(t, l, Op{Kind: OpFtruncate, Fd: fd, Offset: 1000}); r.Res != 0 {
			t.Fatalf("ftruncate = %v", r.Err())
		}
		unix.Fstat(fd, &st)
		if st.Size != 1000 {
			t.Fatalf("after ftruncate: size %d", st.Size)
		}
		if r := mustDo(t, l, Op{Kind: OpOpenat, Fd: unix.AT_FDCWD, Path: filepath.Join(dir, "missing", "x"), Flags: unix.O_RDONLY}); !errors.Is(r.Err(), unix.ENOENT) {
			t.Fatalf("openat of a missing file = %d %v", r.Res, r.Err())
		}
		d := l.Stats().Sub(before)
		if l.Backend() == BackendAIO && d.Offloaded != 4 {
			t.Errorf("AIO: %d offloaded ops, want 4", d.Offloaded)
		}
		if d.Completions != 4 {
			t.Errorf("%d completions, want 4", d.Completions)
		}
		for _, bad := range []Op{
			{Kind: OpOpenat, Fd: -5, Path: "x"},
			{Kind: OpOpenat, Fd: unix.AT_FDCWD, Path: ""},
			{Kind: OpOpenat, Fd: unix.AT_FDCWD, Path: "a\x00b"},
			{Kind: OpFallocate, Fd: fd, Len: 0},
			{Kind: OpFtruncate, Fd: fd, Offset: -1},
		} {
			if _, err := l.Do(t.Context(), bad); err == nil {
				t.Errorf("%s %+v accepted", bad.Kind, bad)
			}
		}
	})
}

// OpUringCmd on a socket (SOCKET_URING_OP_SIOCINQ, Linux 6.7): the bytes
// queued for reading. A payload beyond the SQE's command area fails
// cleanly; SQE128 makes room for 80 bytes. AIO has no such op.
func TestUringCmd(t *testing.T) {
	const siocinq = 0 // SOCKET_URING_OP_SIOCINQ
	udpPair := func(t *testing.T) (int, int) {
		var fds [2]int
		for i := range fds {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fd) })
			unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
			fds[i] = fd
		}
		sa, _ := unix.Getsockname(fds[1])
		if err := unix.Sendto(fds[0], []byte("7 bytes"), 0, sa); err != nil {
			t.Fatal(err)
		}
		return fds[0], fds[1]
	}
	for _, sqe128 := range []bool{false, true} {
		l, err := NewLoop(Config{Backend: BackendUring, SQE128: sqe128})
		if err != nil {
			t.Fatal(err)
		}
		_, rx := udpPair(t)
		r := mustDo(t, l, Op{Kind: OpUringCmd, Fd: rx, CmdOp: siocinq})
		if errors.Is(r.Err(), unix.EOPNOTSUPP) || errors.Is(r.Err(), unix.EINVAL) && !sqe128 {
			l.Close()
			t.Skipf("kernel without socket URING_CMD: %v", r.Err())
		}
		if r.Res != 7 {
			t.Fatalf("SQE128=%v: SIOCINQ = %d %v, want 7", sqe128, r.Res, r.Err())
		}
		r = mustDo(t, l, Op{Kind: OpUringCmd, Fd: rx, CmdOp: siocinq, Cmd: make([]byte, 50)})
		if sqe128 && r.Res != 7 {
			t.Errorf("SQE128: 50-byte payload: %d %v", r.Res, r.Err())
		}
		if !sqe128 && !errors.Is(r.Err(), unix.EINVAL) {
			t.Errorf("64-byte SQEs: 50-byte payload = %d %v, want EINVAL", r.Res, r.Err())
		}
		l.Close()
	}
	l, err := NewLoop(Config{Backend: BackendAIO})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, rx := udpPair(t)
	if r := mustDo(t, l, Op{Kind: OpUringCmd, Fd: rx, CmdOp: siocinq}); !errors.Is(r.Err(), unix.EOPNOTSUPP) {
		t.Fatalf("AIO uring_cmd = %d %v, want EOPNOTSUPP", r.Res, r.Err())
	}
}

// A multishot accept hands over every connection, each Result with More,
// and a cancel ends it. On io_uring it is one armed SQE.
func TestMultishotAccept(t *testing.T) {
	forEachBackend(t, Config{}, func(t *testing.T, l *Loop) {
		lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(lfd)
		unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		unix.Listen(lfd, 64)
		sa, _ := unix.Getsockname(lfd)
		out := make(chan Result, 16)
		var id OpID
		if err := runOnLoop(l, func(h Handle) error {
			id, err = h.Start(Op{Kind: OpAccept, Fd: lfd, Multishot: true, Done: func(h Handle, r Result) { out <- r }})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		var before Stats
		for i := 0; i < 5; i++ {
			if i == 1 {
				before = l.Stats()
			}
			c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(c)
			if err := unix.Connect(c, sa); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-out:
				if r.Res < 0 || !r.More() {
					t.Fatalf("accept %d = %+v, want an fd with More", i, r)
				}
				unix.Close(int(r.Res))
			case <-time.After(5 * time.Second):
				t.Fatalf("accept %d: nothing", i)
			}
		}
		if d := l.Stats().Sub(before); l.Backend() == BackendUring && d.OpsStarted != 0 {
			t.Errorf("io_uring multishot accept: %d ops submitted for 4 connections, want 0", d.OpsStarted)
		}
		runOnLoop(l, func(h Handle) error { h.Cancel(id); return nil })
		select {
		case r := <-out:
			if r.More() || r.Res != -int32(unix.ECANCELED) {
				t.Fatalf("cancelled multishot accept = %+v", r)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("cancelled multishot accept never ended")
		}
	})
}

// Reads and writes in registered buffers go out as READ_FIXED/WRITE_FIXED
// on io_uring and read back what was written; others go as before.
func TestRegisteredBuffers(t *testing.T) {
	forEachBackend(t, Config{NoDirect: true}, func(t *testing.T, l *Loop) {
		f, err := os.Create(filepath.Join(t.TempDir(), "f"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		arena := make([]byte, 64<<10)
		if err := l.RegisterBuffers([][]byte{arena[:32<<10], arena[32<<10:]}); err != nil {
			t.Fatal(err)
		}
		fd := int(f.Fd())
		w := arena[100:4196]
		for i := range w {
			w[i] = byte(i)
		}
		if r := mustDo(t, l, Op{Kind: OpWrite, Fd: fd, Buf: w, Offset: 4096}); r.Res != int32(len(w)) {
			t.Fatalf("write from a registered buffer = %d", r.Res)
		}
		got := arena[40<<10 : 40<<10+len(w)]
		if r := mustDo(t, l, Op{Kind: OpRead, Fd: fd, Buf: got, Offset: 4096}); r.Res != int32(len(w)) || !bytes.Equal(got, arena[100:4196]) {
			t.Fatalf("read into a registered buffer = %d, data equal %v", r.Res, bytes.Equal(got, arena[100:4196]))
		}
		across := arena[30<<10 : 34<<10] // spans both buffers: an ordinary read
		if r := mustDo(t, l, Op{Kind: OpRead, Fd: fd, Buf: across, Offset: 4096}); r.Res != int32(len(across)) {
			t.Fatalf("read across two registered buffers = %d", r.Res)
		}
		plain := make([]byte, 16)
		if r := mustDo(t, l, Op{Kind: OpRead, Fd: fd, Buf: plain, Offset: 4096}); r.Res != 16 || plain[1] != 1 {
			t.Fatalf("read into an unregistered buffer = %d", r.Res)
		}
		want := uint64(0)
		if l.Backend() == BackendUring {
			want = 2
		}
		if n := l.Stats().FixedBufferOps; n != want {
			t.Errorf("Stats.FixedBufferOps = %d, want %d", n, want)
		}
		if err := l.RegisterBuffers(nil); err != nil {
			t.Fatalf("unregistering: %v", err)
		}
	})
}
