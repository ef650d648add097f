// Command nbdserver is the NBD side of the blockdev benchmark: it serves
// the kernel's nbd.ko from the same sparse RAM backend uio-ramdisk uses
// (blockdev.RAM), over a unix socketpair configured with the NBD ioctls
// (NBD_SET_SOCK, NBD_SET_BLKSIZE, NBD_SET_SIZE_BLOCKS, NBD_SET_FLAGS,
// NBD_DO_IT): exactly what nbd-client does after the handshake, so no
// negotiation and no TCP are involved and the comparison is of the two
// kernel-userspace transports.
//
// The server is a tight single-connection loop: requests are read through
// a 256 KiB buffer, served inline, and replies are gathered and written
// when no more requests are buffered (READ data goes out straight from
// the RAM chunk with writev: no userspace copy, like ABUSE's named
// addresses).
//
// With -connect host:port[/export] it serves nothing itself: it does what
// nbd-client does for a TCP server (the fixed-newstyle handshake, then the
// same ioctls with the TCP socket), so nbd.ko can be measured against a
// server no one here wrote (nbdkit) next to ours.
//
//	nbdserver -dev /dev/nbd0 -size 256M [-ready FILE]
//	nbdserver -dev /dev/nbd0 -connect 127.0.0.1:10809 [-ready FILE]
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/userland-io/uio/blockdev"
	"github.com/userland-io/uio/blockdev/nbd"
	"golang.org/x/sys/unix"
)

// NBD ioctls (_IO(0xab, n)) and protocol constants (linux/nbd.h).
const (
	nbdSetSock        = 0xab00
	nbdSetBlksize     = 0xab01
	nbdDoIt           = 0xab03
	nbdClearSock      = 0xab04
	nbdSetSizeBlocks  = 0xab07
	nbdDisconnect     = 0xab08
	nbdSetFlags       = 0xab0a
	nbdFlagHasFlags   = 1 << 0
	nbdFlagSendFlush  = 1 << 2
	nbdFlagSendTrim   = 1 << 5
	nbdRequestMagic   = 0x25609513
	nbdReplyMagic     = 0x67446698
	nbdCmdRead        = 0
	nbdCmdWrite       = 1
	nbdCmdDisc        = 2
	nbdCmdFlush       = 3
	nbdCmdTrim        = 4
	nbdCmdWriteZeroes = 6
)

func ioctl(fd int, req, arg uintptr) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg); e != 0 {
		return e
	}
	return nil
}

func die(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "nbdserver: "+f+"\n", a...)
	os.Exit(2)
}

func main() {
	dev := flag.String("dev", "/dev/nbd0", "nbd device")
	sizeStr := flag.String("size", "256M", "device size")
	bs := flag.Int("bs", 4096, "block size")
	ready := flag.String("ready", "", "write the device path here when serving")
	connect := flag.String("connect", "", "attach nbd.ko to this NBD server (host:port[/export]) instead of serving RAM")
	flag.Parse()
	nfd, err := unix.Open(*dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		die("open %s: %v (is nbd.ko loaded?)", *dev, err)
	}
	var (
		size  int64
		flags uintptr = nbdFlagHasFlags | nbdFlagSendFlush | nbdFlagSendTrim
		sock  int
		ram   *blockdev.RAM
		srv   int = -1
	)
	if *connect != "" {
		addr, export, err := blockdev.ParseNBDTarget(*connect)
		if err != nil {
			die("-connect: %v", err)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			die("-connect: %v", err)
		}
		exp, err := nbd.Negotiate(c, export)
		if err != nil {
			die("-connect %s: %v", *connect, err)
		}
		f, err := c.(*net.TCPConn).File() // a blocking dup of the socket for the kernel
		if err != nil {
			die("-connect: %v", err)
		}
		c.Close()
		size, flags, sock = int64(exp.Size)/int64(*bs)*int64(*bs), uintptr(exp.Flags), int(f.Fd())
	} else {
		if size, err = blockdev.ParseSize(*sizeStr); err != nil {
			die("%v", err)
		}
		if ram, err = blockdev.NewRAM(size, 0); err != nil {
			die("%v", err)
		}
		sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			die("socketpair: %v", err)
		}
		sock, srv = sp[0], sp[1]
	}
	for _, c := range []struct {
		name     string
		req, arg uintptr
	}{
		{"NBD_SET_BLKSIZE", nbdSetBlksize, uintptr(*bs)},
		{"NBD_SET_SIZE_BLOCKS", nbdSetSizeBlocks, uintptr(size / int64(*bs))},
		{"NBD_SET_FLAGS", nbdSetFlags, flags},
		{"NBD_SET_SOCK", nbdSetSock, uintptr(sock)},
	} {
		if err := ioctl(nfd, c.req, c.arg); err != nil {
			die("%s on %s: %v", c.name, *dev, err)
		}
	}
	doit := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		doit <- ioctl(nfd, nbdDoIt, 0) // blocks until disconnect
	}()
	served := make(chan error, 1)
	if ram != nil {
		go func() { served <- serve(srv, ram) }()
	}
	fmt.Println(*dev)
	if *ready != "" {
		os.WriteFile(*ready+".tmp", []byte(*dev+"\n"), 0o644)
		os.Rename(*ready+".tmp", *ready)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
		ioctl(nfd, nbdDisconnect, 0)
		ioctl(nfd, nbdClearSock, 0)
		<-doit
	case err := <-served:
		fmt.Fprintf(os.Stderr, "nbdserver: connection ended: %v\n", err)
	case err := <-doit:
		fmt.Fprintf(os.Stderr, "nbdserver: NBD_DO_IT returned: %v\n", err)
	}
}

// serve runs the transmission phase on fd until NBD_CMD_DISC.
func serve(fd int, ram *blockdev.RAM) error {
	f := os.NewFile(uintptr(fd), "nbd-socket")
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	var hdr [28]byte
	out := make([]byte, 0, 64<<10) // gathered reply headers (and small read data)
	iov := make([][]byte, 0, 64)
	scratch := make([]byte, 32<<20)
	flush := func() error {
		if len(iov) == 0 && len(out) == 0 {
			return nil
		}
		if len(out) > 0 {
			iov = append(iov, out)
		}
		for len(iov) > 0 {
			n, err := unix.Writev(fd, iov)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			for n > 0 && len(iov) > 0 {
				if n >= len(iov[0]) {
					n -= len(iov[0])
					iov = iov[1:]
				} else {
					iov[0] = iov[0][n:]
					n = 0
				}
			}
		}
		iov, out = iov[:0], out[len(out):]
		if cap(out) < 4096 {
			out = make([]byte, 0, 64<<10)
		}
		return nil
	}
	reply := func(handle []byte, errno uint32) {
		var h [16]byte
		binary.BigEndian.PutUint32(h[0:], nbdReplyMagic)
		binary.BigEndian.PutUint32(h[4:], errno)
		copy(h[8:], handle)
		out = append(out, h[:]...)
	}
	for {
		if r.Buffered() < len(hdr) {
			if err := flush(); err != nil { // nothing more buffered: send the replies
				return err
			}
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(hdr[0:]) != nbdRequestMagic {
			return errors.New("bad request magic")
		}
		typ := binary.BigEndian.Uint16(hdr[6:])
		handle := hdr[8:16]
		off := int64(binary.BigEndian.Uint64(hdr[16:]))
		n := int(binary.BigEndian.Uint32(hdr[24:]))
		if off < 0 || int64(n) > ram.Size()-off || n > len(scratch) {
			if typ == nbdCmdWrite {
				if _, err := r.Discard(n); err != nil {
					return err
				}
			}
			reply(handle, uint32(unix.EIO))
			continue
		}
		switch typ {
		case nbdCmdRead:
			reply(handle, 0)
			if m := ram.Mapped(off, n); m != nil && n > 4096 {
				iov = append(iov, out, m) // big read straight from RAM
				out = out[len(out):]
			} else if m != nil {
				out = append(out, m...)
			} else {
				ram.ReadAt(scratch[:n], off)
				out = append(out, scratch[:n]...)
			}
			if len(iov) > 48 || len(out) > 1<<20 {
				if err := flush(); err != nil {
					return err
				}
			}
		case nbdCmdWrite:
			if _, err := io.ReadFull(r, scratch[:n]); err != nil {
				return err
			}
			ram.WriteAt(scratch[:n], off)
			reply(handle, 0)
		case nbdCmdFlush:
			reply(handle, 0)
		case nbdCmdTrim, nbdCmdWriteZeroes:
			ram.Discard(off, int64(n))
			reply(handle, 0)
		case nbdCmdDisc:
			flush()
			return nil
		default:
			reply(handle, uint32(unix.EINVAL))
		}
	}
}
