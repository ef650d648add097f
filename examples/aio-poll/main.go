// Command aio-poll waits for a socket to become readable with
// IOCB_CMD_POLL (Linux 4.18+) instead of epoll: no epoll_create, no
// epoll_ctl, just an iocb whose buffer field is the poll mask.
//
//	go run ./examples/aio-poll [-delay 1s]
//
// It makes a connected pair of TCP sockets on 127.0.0.1, submits a POLLIN
// poll on one end and, from another goroutine, writes to the other end
// after -delay. The timings it prints show that io_submit returns at once
// and the wait happens in io_getevents. Watch it with:
//
//	go build -o /tmp/aio-poll ./examples/aio-poll
//	strace -f -T -e trace=io_submit,io_getevents /tmp/aio-poll
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/userland-io/uio/aio"
	"golang.org/x/sys/unix"
)

func main() {
	delay := flag.Duration("delay", time.Second, "how long until the peer writes")
	flag.Parse()
	if err := run(*delay); err != nil {
		fmt.Fprintln(os.Stderr, "aio-poll:", err)
		os.Exit(1)
	}
}

func run(delay time.Duration) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer peer.Close()
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	f, err := c.(*net.TCPConn).File() // a dup of the fd
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())

	ctx, err := aio.Setup(8)
	if err != nil {
		return err
	}
	defer ctx.Destroy()

	cb := new(aio.Iocb)
	cb.PrepPoll(fd, unix.POLLIN)
	start := time.Now()
	if n, err := ctx.Submit([]*aio.Iocb{cb}); err != nil || n != 1 {
		return fmt.Errorf("io_submit: %d, %v", n, err)
	}
	tSubmit := time.Since(start)
	fmt.Printf("io_submit(IOCB_CMD_POLL, POLLIN) returned after %v\n", tSubmit.Round(time.Microsecond))

	go func() {
		time.Sleep(delay)
		peer.Write([]byte("ping"))
	}()

	ev := make([]aio.Event, 1)
	t1 := time.Now()
	if n, err := ctx.GetEvents(1, ev, -1); err != nil || n != 1 {
		return fmt.Errorf("io_getevents: %d, %v", n, err)
	}
	tWait := time.Since(t1)
	// The kernel may report bits that were not asked for: mask them.
	revents := ev[0].Res & (unix.POLLIN | unix.POLLERR | unix.POLLHUP)
	fmt.Printf("io_getevents returned after %v: revents=%#x (POLLIN=%v)\n",
		tWait.Round(time.Millisecond), revents, revents&unix.POLLIN != 0)
	if tSubmit > delay/2 || tWait < delay/2 {
		return fmt.Errorf("expected the wait in io_getevents, not io_submit (submit %v, wait %v)", tSubmit, tWait)
	}
	fmt.Println("ok: io_submit did not wait; io_getevents did")
	return nil
}
