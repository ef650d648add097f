package blockdev

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/userland-io/uio/blockdev/abuse"
	"github.com/userland-io/uio/blockdev/nbd"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// startNBDKit runs nbdkit's memory plugin (plus args: filters and their
// parameters) on a loopback port and returns its address and process.
// Without nbdkit the test skips, unless UIO_REQUIRE_NBDKIT=1 (make test).
func startNBDKit(t *testing.T, size string, args ...string) (string, *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath("nbdkit")
	if err != nil {
		if os.Getenv("UIO_REQUIRE_NBDKIT") == "1" {
			t.Fatalf("nbdkit not found (apt-get install nbdkit): %v", err)
		}
		t.Skipf("nbdkit not found (apt-get install nbdkit; UIO_REQUIRE_NBDKIT=1 makes this a failure): %v", err)
	}
	for try := 0; try < 5; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		pidfile := filepath.Join(t.TempDir(), "nbdkit.pid")
		a := []string{"-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", strconv.Itoa(port), "-P", pidfile}
		var params []string // after the plugin: its and the filters' parameters
		for _, x := range args {
			if strings.HasPrefix(x, "-") {
				a = append(a, x)
			} else {
				params = append(params, x)
			}
		}
		a = append(append(a, "memory", "size="+size), params...)
		cmd := exec.Command(bin, a...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(pidfile); err == nil {
				t.Cleanup(func() { cmd.Process.Kill(); <-exited })
				return fmt.Sprintf("127.0.0.1:%d", port), cmd
			}
			select {
			case <-exited:
				deadline = time.Time{} // port taken? try another
			case <-time.After(20 * time.Millisecond):
			}
		}
		cmd.Process.Kill()
		<-exited
	}
	t.Fatal("nbdkit did not start")
	return "", nil
}

func dialTest(t *testing.T, addr string, o NBDOptions) *NBD {
	t.Helper()
	o.Logger = zaptest.NewLogger(t)
	d, err := DialNBD(addr, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestNBDAgainstNBDKit serves a queue (fake kernel side, real engine loop)
// from nbdkit's memory plugin: random writes and reads of random sizes at
// random offsets, all queued at once (more than the queue depth), checked
// against a model of the disk; then FUA writes, flush, trim and
// write-zeroes as the server offers them; on both engines.
func TestNBDAgainstNBDKit(t *testing.T) {
	const size, depth, maxIO = 16 << 20, 32, 256 << 10
	addr, _ := startNBDKit(t, "16M")
	for _, engine := range []string{"aio", "uring"} {
		t.Run(engine, func(t *testing.T) {
			d := dialTest(t, addr, NBDOptions{})
			if d.Size() != size || !d.Supports(OpFlush) || !d.Supports(OpDiscard) || !d.Supports(OpWriteZeroes) {
				t.Fatalf("export %+v: want 16 MiB with flush, trim and write-zeroes", d.Export())
			}
			_, k := testServer(t, d, engine, depth, maxIO, false)
			model := make([]byte, size)
			// Start from what the server holds (the other subtest wrote).
			if err := d.ReadAt(model, 0); err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewSource(int64(len(engine))))
			for round := 0; round < 4; round++ {
				type io struct {
					fr   *fakeReq
					want []byte
				}
				var ios []io
				// Writes to distinct blocks in one batch (overlapping
				// concurrent writes have no defined result), then reads.
				used := map[int64]bool{}
				for i := 0; i < 200; i++ {
					n := int64(512 << rng.Intn(10))
					off := rng.Int63n(size/n) * n
					if used[off>>18] || used[(off+n-1)>>18] {
						continue
					}
					used[off>>18], used[(off+n-1)>>18] = true, true
					p := make([]byte, n)
					rng.Read(p)
					op := uint32(abuse.OpWrite)
					if i%5 == 0 {
						op |= abuse.FlagFUA
					}
					copy(model[off:], p)
					ios = append(ios, io{fr: k.submit(op, uint64(off), uint32(n), p)})
				}
				for _, x := range ios {
					if r := wait(t, x.fr); r != 0 {
						t.Fatalf("write %+v: %d", x.fr.r, r)
					}
				}
				ios = ios[:0]
				for i := 0; i < 300; i++ {
					n := int64(512 << rng.Intn(10))
					off := rng.Int63n(size/512-n/512+1) * 512
					ios = append(ios, io{fr: k.submit(abuse.OpRead, uint64(off), uint32(n), nil), want: model[off : off+n]})
				}
				for _, x := range ios {
					if r := wait(t, x.fr); r != 0 {
						t.Fatalf("read %+v: %d", x.fr.r, r)
					}
					if !bytes.Equal(x.fr.data, x.want) {
						t.Fatalf("round %d: read %d+%d differs from the model", round, x.fr.r.Offset, x.fr.r.Len)
					}
				}
			}
			if r := wait(t, k.submit(abuse.OpFlush, 0, 0, nil)); r != 0 {
				t.Fatalf("flush: %d", r)
			}
			// Trim and write-zeroes: nbdkit's memory plugin reads both back
			// as zeroes.
			if r := wait(t, k.submit(abuse.OpDiscard, 1<<20, 1<<20, nil)); r != 0 {
				t.Fatalf("discard: %d", r)
			}
			clear(model[1<<20 : 2<<20])
			if r := wait(t, k.submit(abuse.OpWriteZeroes|abuse.FlagNoUnmap, 5<<20, 64<<10, nil)); r != 0 {
				t.Fatalf("write zeroes: %d", r)
			}
			clear(model[5<<20 : 5<<20+64<<10])
			got := make([]byte, size)
			if err := d.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, model) {
				t.Fatal("the export differs from the model after trim and write-zeroes")
			}
		})
	}
}

// TestNBDSyncAndMultiConn uses the Backend methods directly (they bind
// connection 0 to the backend's own loop), dials two connections (nbdkit
// offers multi-conn), then serves queue 0 from another loop: its requests
// hop to connection 0's loop and their completions back.
func TestNBDSyncAndMultiConn(t *testing.T) {
	addr, _ := startNBDKit(t, "4M")
	d := dialTest(t, addr, NBDOptions{Conns: 2})
	p := bytes.Repeat([]byte("uio-nbd!"), 8192)
	if err := d.WriteAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back: %v, equal %v", err, bytes.Equal(got, p))
	}
	if err := d.Discard(4096, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.ReadAt(got[:4096], 4096); err != nil || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatalf("read after discard: %v", err)
	}
	if err := d.ReadAt(got[:4096], 4<<20); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("read past the end: %v, want EINVAL", err)
	}
	// Queue 0's loop is not connection 0's: the hop there and back.
	_, k0 := testServer(t, d, "auto", 16, 64<<10, false)
	w := k0.submit(abuse.OpWrite, 0, 4096, bytes.Repeat([]byte{7}, 4096))
	if r := wait(t, w); r != 0 {
		t.Fatalf("write on queue 0: %d", r)
	}
}

// TestNBDServerKilled: killing nbdkit while requests are in flight (each
// read held 2 s by the delay filter) fails them with EIO at once, and
// every later request too; nothing hangs.
func TestNBDServerKilled(t *testing.T) {
	addr, cmd := startNBDKit(t, "8M", "--filter=delay", "rdelay=2")
	d := dialTest(t, addr, NBDOptions{})
	_, k := testServer(t, d, "auto", 32, 64<<10, false)
	var frs []*fakeReq
	for i := 0; i < 32; i++ {
		frs = append(frs, k.submit(abuse.OpRead, uint64(i)*65536, 65536, nil))
	}
	time.Sleep(300 * time.Millisecond) // all sent, none answered
	start := time.Now()
	cmd.Process.Signal(syscall.SIGKILL)
	for _, fr := range frs {
		if r := wait(t, fr); r != -int32(unix.EIO) {
			t.Fatalf("read in flight when nbdkit died: %d, want -EIO", r)
		}
	}
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Fatalf("in-flight requests failed only after %v (the delay was 2 s: they waited for it)", el)
	}
	if r := wait(t, k.submit(abuse.OpWrite, 0, 4096, make([]byte, 4096))); r != -int32(unix.EIO) {
		t.Fatalf("write after the connection broke: %d, want -EIO", r)
	}
}

// fakeNBD is an NBD server that negotiates flags for a 1 MiB export, then
// answers the first request with reply(request), then closes the
// connection if hangUp, else keeps it open.
func fakeNBD(t *testing.T, flags uint16, hangUp bool, reply func(req []byte) []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], nbd.Magic)
		c.Write(b[:])
		binary.BigEndian.PutUint64(b[:], nbd.OptMagic)
		c.Write(b[:])
		c.Write([]byte{0, nbd.FlagFixedNewstyle | nbd.FlagNoZeroes})
		io.ReadFull(c, b[:4]) // client flags
		var oh [16]byte
		io.ReadFull(c, oh[:])
		io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(oh[12:])))
		rep := func(typ uint32, p []byte) {
			h := make([]byte, 20)
			binary.BigEndian.PutUint64(h, nbd.OptReplyMagic)
			binary.BigEndian.PutUint32(h[8:], nbd.OptGo)
			binary.BigEndian.PutUint32(h[12:], typ)
			binary.BigEndian.PutUint32(h[16:], uint32(len(p)))
			c.Write(append(h, p...))
		}
		info := make([]byte, 12)
		binary.BigEndian.PutUint64(info[2:], 1<<20)
		binary.BigEndian.PutUint16(info[10:], flags|nbd.FlagHasFlags)
		rep(nbd.RepInfo, info)
		rep(nbd.RepAck, nil)
		req := make([]byte, nbd.RequestSize)
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		c.Write(reply(req))
		if hangUp {
			return
		}
		io.Copy(io.Discard, c) // until the client gives up
	}()
	return ln.Addr().String()
}

func simpleReply(errval uint32, handle uint64, data []byte) []byte {
	b := make([]byte, 16, 16+len(data))
	binary.BigEndian.PutUint32(b, nbd.SimpleReplyMagic)
	binary.BigEndian.PutUint32(b[4:], errval)
	binary.BigEndian.PutUint64(b[8:], handle)
	return append(b, data...)
}

// TestNBDBadServer: replies that break the protocol fail the request with
// EIO promptly (no panic, no hang); server errors map to errnos.
func TestNBDBadServer(t *testing.T) {
	handle := func(req []byte) uint64 { return binary.BigEndian.Uint64(req[8:]) }
	cases := []struct {
		name  string
		reply func(req []byte) []byte
		want  unix.Errno
	}{
		{"good", func(r []byte) []byte { return simpleReply(0, handle(r), make([]byte, 4096)) }, 0},
		{"wrong magic", func(r []byte) []byte { b := simpleReply(0, handle(r), make([]byte, 4096)); b[0] ^= 1; return b }, unix.EIO},
		{"unknown handle", func(r []byte) []byte { return simpleReply(0, handle(r)+99, make([]byte, 4096)) }, unix.EIO},
		{"structured reply", func(r []byte) []byte {
			b := simpleReply(0, handle(r), nil)
			binary.BigEndian.PutUint32(b, nbd.StructuredReplyMagic)
			return b
		}, unix.EIO},
		{"short header then close", func(r []byte) []byte { return simpleReply(0, handle(r), nil)[:10] }, unix.EIO},
		{"short data then close", func(r []byte) []byte { return simpleReply(0, handle(r), make([]byte, 100)) }, unix.EIO},
		{"server EIO", func(r []byte) []byte { return simpleReply(5, handle(r), nil) }, unix.EIO},
		{"server ENOSPC", func(r []byte) []byte { return simpleReply(28, handle(r), nil) }, unix.ENOSPC},
		{"odd server error", func(r []byte) []byte { return simpleReply(0x7777, handle(r), nil) }, unix.EIO},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeNBD(t, 0, strings.HasPrefix(tc.name, "short"), tc.reply)
			d := dialTest(t, addr, NBDOptions{})
			if d.Supports(OpDiscard) || d.Supports(OpFlush) || backendSupports(d, OpDiscard) {
				t.Fatal("flags without TRIM/FLUSH, yet Supports says yes")
			}
			if err := d.Discard(0, 4096); !errors.Is(err, unix.EOPNOTSUPP) {
				t.Fatalf("discard on a server without TRIM: %v", err)
			}
			done := make(chan error, 1)
			go func() { done <- d.ReadAt(make([]byte, 4096), 0) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(2 * time.Second):
				t.Fatal("no completion after 2 s")
			}
			if tc.want == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzNegotiate feeds arbitrary server bytes to the handshake: an error or
// an export, never a panic or an endless read.
func FuzzNegotiate(f *testing.F) {
	good := func(opt []byte) []byte {
		var b bytes.Buffer
		binary.Write(&b, binary.BigEndian, uint64(nbd.Magic))
		binary.Write(&b, binary.BigEndian, uint64(nbd.OptMagic))
		binary.Write(&b, binary.BigEndian, uint16(3))
		b.Write(opt)
		return b.Bytes()
	}
	rep := func(typ uint32, p []byte) []byte {
		var b bytes.Buffer
		binary.Write(&b, binary.BigEndian, uint64(nbd.OptReplyMagic))
		binary.Write(&b, binary.BigEndian, uint32(nbd.OptGo))
		binary.Write(&b, binary.BigEndian, typ)
		binary.Write(&b, binary.BigEndian, uint32(len(p)))
		b.Write(p)
		return b.Bytes()
	}
	info := []byte{0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x0d}
	bs := []byte{0, 3, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0x20, 0, 0}
	f.Add(good(append(append(rep(nbd.RepInfo, info), rep(nbd.RepInfo, bs)...), rep(nbd.RepAck, nil)...)))
	f.Add(good(rep(nbd.RepErrUnsup, nil)))
	f.Add(good(rep(nbd.RepErrUnknown, []byte("no such export"))))
	f.Add(good(rep(nbd.RepInfo, []byte{0, 0, 1})))
	f.Add(good(rep(nbd.RepInfo, []byte{0, 3, 0, 0, 0, 3, 0, 0, 16, 0, 0, 0x20, 0, 0})))
	f.Add(good(append(rep(nbd.RepInfo, info), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}...)))
	f.Add([]byte("NBDMAGIC\x00\x42\x02\x81\x86\x12\x53"))
	f.Add(good(rep(nbd.RepAck, nil)))
	f.Fuzz(func(t *testing.T, server []byte) {
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(server), io.Discard}
		e, err := nbd.Negotiate(rw, "x")
		if err == nil && (e.Size == 0 || e.Size > 1<<62) {
			t.Fatalf("export %+v accepted", e)
		}
	})
}

// FuzzReplyStream feeds arbitrary bytes to a connection's reply parser
// with three commands in flight: each completes at most once, and a
// protocol error is reported, never a panic.
func FuzzReplyStream(f *testing.F) {
	f.Add(simpleReply(0, 0, make([]byte, 512)))
	f.Add(append(simpleReply(0, 1, nil), simpleReply(5, 2, nil)...))
	f.Add(simpleReply(0, 7, nil))
	f.Add([]byte{0x66, 0x8e, 0x33, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, stream []byte) {
		c := newNBDConn(&NBD{log: zaptest.NewLogger(t).Named("fuzz")}, 0, -1)
		c.rbuf = make([]byte, len(stream))
		copy(c.rbuf, stream)
		c.rend = len(stream)
		calls := map[uint64]int{}
		for h, cmd := range []uint16{nbd.CmdRead, nbd.CmdWrite, nbd.CmdFlush} {
			m := &nbdCmd{cmd: cmd, done: func(error) { calls[uint64(h)]++ }}
			if cmd == nbd.CmdRead {
				m.buf = make([]byte, 512)
			}
			c.pending[uint64(h)] = m
		}
		c.sent = 1 << 40
		_ = c.parse()
		for h, n := range calls {
			if n > 1 {
				t.Fatalf("handle %d completed %d times", h, n)
			}
		}
	})
}
