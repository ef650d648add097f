// Command aio-read reads a file with Linux AIO the way the classic C
// example does: io_setup, ONE IOCB_CMD_PREAD iocb handed to io_submit,
// io_getevents for its completion, and it prints the byte count.
//
//	go run ./examples/aio-read [-size 4096] [file]   # default /etc/passwd
//
// Watch the syscalls:
//
//	go build -o /tmp/aio-read ./examples/aio-read
//	strace -e trace=io_setup,io_submit,io_getevents,io_destroy /tmp/aio-read
//
// On a regular file opened without O_DIRECT the read is done inside
// io_submit (it is the slow call), and io_getevents returns at once: Linux
// AIO is only asynchronous for O_DIRECT files. -direct opens the file with
// O_DIRECT (the buffer is then a page-aligned mmap, the size a multiple of
// 4096) to see the difference.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/userland-io/uio/aio"
	"golang.org/x/sys/unix"
)

func main() {
	size := flag.Int("size", 4096, "bytes to read (the buffer size)")
	direct := flag.Bool("direct", false, "open with O_DIRECT")
	flag.Parse()
	path := "/etc/passwd"
	if flag.NArg() > 0 {
		path = flag.Arg(0)
	}
	if err := run(path, *size, *direct); err != nil {
		fmt.Fprintln(os.Stderr, "aio-read:", err)
		os.Exit(1)
	}
}

func run(path string, size int, direct bool) error {
	flags := unix.O_RDONLY | unix.O_CLOEXEC
	if direct {
		flags |= unix.O_DIRECT
		size = (size + 4095) &^ 4095
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)

	ctx, err := aio.Setup(128)
	if err != nil {
		return err
	}
	defer ctx.Destroy()

	// The kernel writes into buf after io_submit returned (for O_DIRECT):
	// memory outside the Go heap is the simple way to keep it put.
	buf, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)

	cb := new(aio.Iocb)
	cb.PrepPread(fd, buf, 0)
	cb.Data = 42
	t0 := time.Now()
	if n, err := ctx.Submit([]*aio.Iocb{cb}); err != nil || n != 1 {
		return fmt.Errorf("io_submit: %d, %v", n, err)
	}
	tSubmit := time.Since(t0)
	ev := make([]aio.Event, 1)
	t1 := time.Now()
	if n, err := ctx.GetEvents(1, ev, -1); err != nil || n != 1 {
		return fmt.Errorf("io_getevents: %d, %v", n, err)
	}
	tWait := time.Since(t1)
	if ev[0].Res < 0 {
		return fmt.Errorf("read %s: %w", path, unix.Errno(-ev[0].Res))
	}
	fmt.Printf("read %d bytes from %s\n", ev[0].Res, path)
	fmt.Printf("io_submit took %v, io_getevents %v (data=%d)\n", tSubmit, tWait, ev[0].Data)
	c := ctx.Counters()
	fmt.Printf("syscalls: io_submit=%d io_getevents=%d\n", c.Submits, c.GetEvents)
	return nil
}
