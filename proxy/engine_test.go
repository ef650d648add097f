package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/userland-io/uio"
)

// TestEngineSendAfterFullBuffer is a minimal check of the engine beneath the
// proxy: an OpSend on a TCP socket whose send buffer is full must complete
// once the peer reads (the engine waits for POLLOUT and retries).
func TestEngineSendAfterFullBuffer(t *testing.T) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			l, err := uio.NewLoop(uio.Config{Backend: b})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			defer ln.Close()
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			port := ln.Addr().(*net.TCPAddr).Port
			if r, _ := l.Do(context.Background(), uio.Op{Kind: uio.OpConnect, Fd: fd, Addr: &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}}); r.Res != 0 {
				t.Fatalf("connect: %v", r.Err())
			}
			peer, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			// Fill the socket until a plain write says EAGAIN.
			chunk := make([]byte, 64<<10)
			filled := 0
			for {
				n, err := unix.Write(fd, chunk)
				if err == unix.EAGAIN {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				filled += n
			}
			done := make(chan uio.Result, 1)
			l.Post(func(h uio.Handle) {
				h.Start(uio.Op{Kind: uio.OpSend, Fd: fd, Buf: chunk[:4096], Done: func(h uio.Handle, r uio.Result) { done <- r }})
			})
			time.Sleep(50 * time.Millisecond)
			// Drain slowly, as a slow reader does.
			buf := make([]byte, 4096)
			deadline := time.Now().Add(5 * time.Second)
			read := 0
			for time.Now().Before(deadline) {
				select {
				case r := <-done:
					if r.Res != 4096 {
						t.Fatalf("send = %d (%v), want 4096", r.Res, r.Err())
					}
					t.Logf("send completed after the peer read %d of %d bytes", read, filled)
					return
				default:
				}
				peer.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
				n, _ := peer.Read(buf)
				read += n
				time.Sleep(5 * time.Millisecond)
			}
			t.Fatalf("send still pending after the peer read %d of the %d bytes in the send buffer", read, filled)
		})
	}
}
