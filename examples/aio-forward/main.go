// Command aio-forward is the two-iocb forwarding loop: bytes read from one
// TCP connection are written to another, and each round is ONE io_submit
// carrying two iocbs, the write of what the previous round read (0 bytes
// the first time) followed by the next read, on the same buffer. Both
// sockets are blocking, so the kernel runs the two iocbs in order inside
// io_submit, and both completions are already in the ring when it returns:
// they are reaped from the shared ring in userspace, without io_getevents.
// One syscall per round instead of read+write.
//
// By default it runs a self-contained demo: a source on 127.0.0.1 sends
// -n bytes, a sink counts and checks them, and the forwarder sits between
// them. With -src and -dst it connects to real endpoints instead.
//
//	go run ./examples/aio-forward [-n 8388608] [-buf 65536]
//	go run ./examples/aio-forward -src host:port -dst host:port
//
// Watch the syscalls (expect io_submit calls and no io_getevents):
//
//	go build -o /tmp/aio-forward ./examples/aio-forward
//	strace -f -c -e trace=io_submit,io_getevents /tmp/aio-forward
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"

	"github.com/userland-io/uio/aio"
	"golang.org/x/sys/unix"
)

func main() {
	n := flag.Int64("n", 8<<20, "bytes the demo source sends")
	bufSize := flag.Int("buf", 64<<10, "buffer size: bytes per read")
	src := flag.String("src", "", "read from this address (default: a local demo source)")
	dst := flag.String("dst", "", "write to this address (default: a local demo sink)")
	flag.Parse()
	if err := run(*src, *dst, *n, *bufSize); err != nil {
		fmt.Fprintln(os.Stderr, "aio-forward:", err)
		os.Exit(1)
	}
}

func pattern(i int64) byte { return byte(i*7 + i>>10) }

func run(src, dst string, n int64, bufSize int) error {
	var sinkDone chan int64
	if src == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		src = ln.Addr().String()
		go func() { // the source: n bytes, then EOF
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			b := make([]byte, 32<<10)
			for off := int64(0); off < n; {
				k := min(int64(len(b)), n-off)
				for i := range k {
					b[i] = pattern(off + i)
				}
				if _, err := c.Write(b[:k]); err != nil {
					return
				}
				off += k
			}
		}()
	}
	if dst == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		dst = ln.Addr().String()
		sinkDone = make(chan int64, 1)
		go func() { // the sink: count and check until EOF
			c, err := ln.Accept()
			if err != nil {
				sinkDone <- -1
				return
			}
			defer c.Close()
			b := make([]byte, 32<<10)
			var off int64
			for {
				k, err := c.Read(b)
				for i := range k {
					if b[i] != pattern(off+int64(i)) {
						sinkDone <- -1
						return
					}
				}
				off += int64(k)
				if err != nil {
					if err != io.EOF {
						off = -1
					}
					sinkDone <- off
					return
				}
			}
		}()
	}
	sd1, err := dial(src)
	if err != nil {
		return err
	}
	defer unix.Close(sd1)
	sd2, err := dial(dst)
	if err != nil {
		return err
	}

	ctx, err := aio.Setup(8)
	if err != nil {
		return err
	}
	defer ctx.Destroy()
	if !ctx.UserspaceReap() {
		fmt.Println("note: the ring header did not validate; reaping through io_getevents")
	}

	// One buffer for both iocbs: the write of the previous round's data
	// runs before the read that overwrites it.
	buf, err := unix.Mmap(-1, 0, bufSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	cbs := []*aio.Iocb{new(aio.Iocb), new(aio.Iocb)}
	events := make([]aio.Event, 2)
	var total int64
	rounds, fromRing := 0, 0
	pending := 0 // bytes read last round, written this round
	for {
		cbs[0].PrepPwrite(sd2, buf[:pending], 0)
		cbs[0].Data = 0
		cbs[1].PrepPread(sd1, buf, 0)
		cbs[1].Data = 1
		if k, err := ctx.Submit(cbs); err != nil || k != 2 {
			return fmt.Errorf("io_submit: %d of 2, %v", k, err)
		}
		rounds++
		got := 0
		for got < 2 {
			k := ctx.Reap(events[got:])
			if k == 0 { // not expected with blocking sockets
				if k, err = ctx.GetEvents(1, events[got:], -1); err != nil {
					return err
				}
			} else {
				fromRing += k
			}
			got += k
		}
		read := int64(-1)
		for _, ev := range events {
			switch {
			case ev.Res < 0:
				return fmt.Errorf("iocb %d: %w", ev.Data, unix.Errno(-ev.Res))
			case ev.Data == 0 && ev.Res != int64(pending):
				return fmt.Errorf("short write: %d of %d", ev.Res, pending)
			case ev.Data == 1:
				read = ev.Res
			}
		}
		total += int64(pending)
		if read == 0 {
			break
		}
		pending = int(read)
	}
	unix.Close(sd2) // EOF for the sink
	c := ctx.Counters()
	fmt.Printf("forwarded %d bytes in %d rounds\n", total, rounds)
	fmt.Printf("io_submit=%d io_getevents=%d reaped_from_ring=%d\n", c.Submits, c.GetEvents, fromRing)
	if sinkDone != nil {
		if got := <-sinkDone; got != n {
			return fmt.Errorf("sink received %d bytes intact, want %d", got, n)
		}
		fmt.Printf("sink received all %d bytes intact\n", n)
	}
	return nil
}

// dial makes a blocking TCP connection with raw syscalls: the forwarder's
// io_submit must block on it, which a Go net.Conn (nonblocking) would not.
func dial(addr string) (int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		tcp, err2 := net.ResolveTCPAddr("tcp", addr)
		if err2 != nil {
			return -1, errors.Join(err, err2)
		}
		ap = tcp.AddrPort()
	}
	ip := ap.Addr().Unmap()
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ip.Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ip.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", addr, err)
	}
	return fd, nil
}
