// Command echo is a TCP echo server on the uio engine: accept, recv and
// send are ops on one loop, every connection's ops of a round go to the
// kernel in one syscall, and no goroutine per connection is needed.
//
//	go run ./examples/echo [-addr 127.0.0.1:7007] [-backend aio|uring|auto]
//
// It prints "listening on ADDR backend NAME" and serves until killed.
// Watch it batch (one io_submit or io_uring_enter per round, however many
// clients) with:
//
//	go build -o /tmp/echo ./examples/echo
//	strace -f -e trace=io_submit,io_getevents,io_uring_enter /tmp/echo -backend aio
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"

	"github.com/userland-io/uio"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7007", "listen address")
	backend := flag.String("backend", "auto", "aio, uring or auto")
	flag.Parse()
	l, err := uio.NewLoop(uio.Config{Backend: *backend})
	if err != nil {
		fatal(err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fatal(err)
	}
	lf, err := ln.(*net.TCPListener).File() // a dup of the listening fd
	if err != nil {
		fatal(err)
	}
	lfd := int(lf.Fd())
	fmt.Printf("listening on %s backend %s\n", ln.Addr(), l.Backend())

	var accept func(h uio.Handle)
	accept = func(h uio.Handle) {
		h.Start(uio.Op{Kind: uio.OpAccept, Fd: lfd, Done: func(h uio.Handle, r uio.Result) {
			if r.Res >= 0 {
				serve(h, int(r.Res), make([]byte, 16<<10))
			}
			accept(h)
		}})
	}
	l.Post(accept)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	<-sig
	l.Close()
}

// serve echoes one connection: recv, send it all back, again.
func serve(h uio.Handle, fd int, buf []byte) {
	h.Start(uio.Op{Kind: uio.OpRecv, Fd: fd, Buf: buf, Done: func(h uio.Handle, r uio.Result) {
		if r.Res <= 0 { // end of stream or error
			h.Start(uio.Op{Kind: uio.OpClose, Fd: fd})
			return
		}
		send(h, fd, buf, buf[:r.Res])
	}})
}

func send(h uio.Handle, fd int, buf, p []byte) {
	h.Start(uio.Op{Kind: uio.OpSend, Fd: fd, Buf: p, Done: func(h uio.Handle, r uio.Result) {
		switch {
		case r.Res < 0:
			h.Start(uio.Op{Kind: uio.OpClose, Fd: fd})
		case int(r.Res) < len(p):
			send(h, fd, buf, p[r.Res:])
		default:
			serve(h, fd, buf)
		}
	}})
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "echo:", err)
	os.Exit(1)
}
