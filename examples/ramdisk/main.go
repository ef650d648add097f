// Command ramdisk is the smallest custom block device backend: a RAM disk
// that stores every byte XOR-scrambled, served as /dev/abuseN by package
// blockdev. A backend is four methods; everything else (the kernel
// protocol, queues, batching, request checks) is the library's.
//
//	sudo insmod kmod/abuse.ko && sudo go run ./examples/ramdisk -size 64M
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/userland-io/uio/blockdev"
)

// xorDisk keeps its data scrambled with a one-byte key.
type xorDisk struct {
	data []byte
	key  byte
}

func (d *xorDisk) Size() int64  { return int64(len(d.data)) }
func (d *xorDisk) Flush() error { return nil }

func (d *xorDisk) ReadAt(p []byte, off int64) error {
	for i, b := range d.data[off : off+int64(len(p))] {
		p[i] = b ^ d.key
	}
	return nil
}

func (d *xorDisk) WriteAt(p []byte, off int64) error {
	for i, b := range p {
		d.data[off+int64(i)] = b ^ d.key
	}
	return nil
}

func main() {
	size := flag.String("size", "64M", "device size")
	flag.Parse()
	n, err := blockdev.ParseSize(*size)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	srv, err := blockdev.Serve(blockdev.Config{Backend: &xorDisk{data: make([]byte, n), key: 0x5a}, Index: -1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(srv.Path())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
		if err := srv.Close(5 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			srv.Detach()
		}
	case <-srv.Done():
	}
}
