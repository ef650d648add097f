// Command uio-ramdisk serves a userspace block device from RAM or from a
// file, on the uio engine, over ABUSE (/dev/abuseN, kernel module
// kmod/abuse.ko) or the kernel's ublk (/dev/ublkbN, ublk_drv):
//
//	uio-ramdisk -size 1G                       # sparse RAM disk
//	uio-ramdisk -file /var/tmp/disk.img -size 4G
//	uio-ramdisk -driver ublk -size 1G          # on a stock kernel: modprobe ublk_drv
//	uio-ramdisk -nbd 127.0.0.1:10809/disk      # the blocks of a remote NBD export
//
// -nbd host:port[/export] makes the device an NBD client of that export:
// one TCP connection per queue, driven by the queue's own engine loop. The
// size (default), read-only, FLUSH/FUA, DISCARD and WRITE_ZEROES come from
// the server; if the connection breaks, the device's I/O fails with EIO.
//
// -driver auto (the default) uses ABUSE when /dev/abctl exists, else ublk.
// Every other flag means the same on both, except -attach and
// -reconnect-ms, which only ABUSE has (a ublk device ends with its server).
//
// It prints the device path on stdout once the device exists and serves
// until SIGINT or SIGTERM, then removes the device (waiting up to -remove-wait
// while it is mounted or open; a second signal detaches without removing).
// A request the daemon has not finished after -io-timeout fails with EIO
// (with -io-timeout-fatal the kernel treats the daemon as dead instead), so
// a stopped or stuck daemon never leaves the device's users hanging.
//
// -token-file keeps the device's ownership token: a daemon restarted with
// -attach and the same file takes over the device (within -reconnect-ms);
// without the token the kernel refuses other sessions with EPERM.
//
// Exit status: 0 after a clean removal, 1 on a failure while serving, 2 for
// a usage or setup error (bad flag, module not loaded, device busy).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/userland-io/uio/blockdev"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

func main() {
	sizeStr := flag.String("size", "", "device size, e.g. 1G, 512M (required for RAM; default for -file: the file's size)")
	bs := flag.Int("bs", 4096, "logical block size: 512 or 4096")
	queues := flag.Int("queues", 1, "hardware queues, each served by its own engine loop (thread)")
	depth := flag.Int("depth", 128, "requests in flight per queue (1..1024)")
	maxIOStr := flag.String("max-io", "1M", "largest request (4K..8M)")
	readOnly := flag.Bool("ro", false, "read-only device")
	file := flag.String("file", "", "serve this file (or block device) instead of RAM; created/extended to -size")
	nbdTarget := flag.String("nbd", "", "serve a remote NBD export instead of RAM: host:port[/export] (port default 10809); one connection per queue")
	noDirect := flag.Bool("no-direct", false, "with -file: never use O_DIRECT")
	chunkStr := flag.String("chunk", "1M", "RAM allocation unit (power of two, 4K..64M)")
	engine := flag.String("backend", "auto", "engine backend: aio, uring or auto (ublk needs uring)")
	driver := flag.String("driver", "auto", "kernel interface: abuse (abuse.ko), ublk (ublk_drv) or auto (abuse when /dev/abctl exists, else ublk)")
	ublkCopy := flag.String("ublk-copy", "auto", "ublk data path: auto (USER_COPY where the kernel has it, 6.5+) or buffers (per-tag buffers the kernel copies through)")
	abuseCopy := flag.String("abuse-copy", "auto", "ABUSE data path: auto (RAM backend: USER_COPY queues where the module has them, each byte copied once, between the bio and the RAM) or buffers (per-tag buffers the kernel copies WRITE data into; what -file and -nbd always use)")
	fetchWait := flag.Duration("fetch-wait", 10*time.Millisecond, "ABUSE: how long a queue's fetch waits in the kernel for the next request before it polls (RAM backend; 0: never wait; at most 1s)")
	fetchSpin := flag.Duration("fetch-spin", 0, "ABUSE: how long that wait busy-polls before it sleeps (at most 1ms; saves a wakeup per request, costs a busy CPU)")
	index := flag.Int("index", -1, "create /dev/abuseN (/dev/ublkbN) with this N (-1: first free)")
	attach := flag.Bool("attach", false, "serve the existing device -index (its previous server is gone) instead of creating one (abuse only)")
	reconnect := flag.Int("reconnect-ms", 0, "hold the device's I/O this long for a new server if this one dies (abuse only)")
	ioTimeout := flag.Duration("io-timeout", 30*time.Second, "fail a request with EIO when this daemon has not finished it in this time (1s..1h; abuse only)")
	timeoutFatal := flag.Bool("io-timeout-fatal", false, "an I/O timeout ends this daemon's service of the device (as if it had died) instead of failing only that request (abuse only)")
	tokenFile := flag.String("token-file", "", "write the device's ownership token here (mode 0600); with -attach, read it from here (abuse only)")
	ready := flag.String("ready", "", "also write the device path to this file once it exists")
	removeWait := flag.Duration("remove-wait", 5*time.Second, "on SIGINT/SIGTERM, keep retrying removal of a busy device this long")
	level := flag.String("log", "info", "log level: debug, info, warn, error")
	flag.Parse()
	if flag.NArg() > 0 {
		usage("unexpected arguments %q", flag.Args())
	}

	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		usage("-log %q: want debug, info, warn or error", *level)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Encoding = "console"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Sampling = nil
	log, err := zc.Build()
	if err != nil {
		usage("logger: %v", err)
	}
	defer log.Sync()

	var size int64
	if *sizeStr != "" {
		if size, err = blockdev.ParseSize(*sizeStr); err != nil || size <= 0 {
			usage("-size %q: want a positive size such as 1G or 512M", *sizeStr)
		}
		if size%int64(*bs) != 0 {
			usage("-size %d is not a multiple of the block size %d", size, *bs)
		}
	} else if *file == "" && *nbdTarget == "" && !*attach {
		usage("-size is required (e.g. -size 1G)")
	}
	maxIO, err := blockdev.ParseSize(*maxIOStr)
	if err != nil {
		usage("-max-io: %v", err)
	}
	chunk, err := blockdev.ParseSize(*chunkStr)
	if err != nil {
		usage("-chunk: %v", err)
	}

	if *ioTimeout < time.Second || *ioTimeout > time.Hour {
		usage("-io-timeout %v: want 1s..1h", *ioTimeout)
	}
	var token uint64
	if *attach {
		if *tokenFile == "" {
			usage("-attach needs -token-file (the file the creating daemon wrote)")
		}
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			usage("-token-file: %v", err)
		}
		if token, err = strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64); err != nil {
			usage("-token-file %s: not a token: %v", *tokenFile, err)
		}
	}

	var be blockdev.Backend
	writeCache := false
	if *file != "" && *nbdTarget != "" {
		usage("-file and -nbd exclude each other")
	}
	if *nbdTarget != "" {
		addr, export, err := blockdev.ParseNBDTarget(*nbdTarget)
		if err != nil {
			usage("-nbd: %v", err)
		}
		d, err := blockdev.DialNBD(addr, blockdev.NBDOptions{Export: export, Conns: *queues, Logger: log})
		if err != nil {
			usage("-nbd: %v", err)
		}
		defer d.Close()
		if size == 0 {
			size = d.Size() / int64(*bs) * int64(*bs)
			if size != d.Size() {
				log.Warn("NBD export size is not a multiple of the block size; the tail is not used", zap.Int64("export_size", d.Size()), zap.Int64("size", size))
			}
		}
		if size > d.Size() {
			usage("-size %d exceeds the NBD export's %d bytes", size, d.Size())
		}
		if maxIO > int64(d.MaxIO()) {
			usage("-max-io %d exceeds the NBD server's largest request, %d bytes", maxIO, d.MaxIO())
		}
		if *bs%d.MinBlock() != 0 {
			usage("-bs %d is not a multiple of the NBD server's minimum block size %d", *bs, d.MinBlock())
		}
		*readOnly = *readOnly || d.ReadOnly()
		writeCache = d.Supports(blockdev.OpFlush)
		log.Info("NBD backend", zap.String("addr", addr), zap.String("export", export), zap.Int64("size", d.Size()),
			zap.Bool("read_only", d.ReadOnly()), zap.Bool("flush", writeCache), zap.Bool("trim", d.Supports(blockdev.OpDiscard)),
			zap.Bool("write_zeroes", d.Supports(blockdev.OpWriteZeroes)), zap.Int("connections", *queues))
		be = d
	} else if *file != "" {
		f, err := blockdev.OpenFile(*file, blockdev.FileOptions{Size: size, BlockSize: *bs, ReadOnly: *readOnly, NoDirect: *noDirect})
		if err != nil {
			usage("%v", err)
		}
		defer f.Close()
		log.Info("file backend", zap.String("path", *file), zap.Int64("size", f.Size()), zap.Bool("o_direct", f.Direct()))
		be, writeCache = f, true
	} else {
		if *attach && size == 0 {
			usage("-attach with the RAM backend needs -size (the device's size)")
		}
		r, err := blockdev.NewRAM(size, chunk)
		if err != nil {
			usage("%v", err)
		}
		be = r
	}

	// the flag's 0 is "never"; the library's 0 is its default
	fetchWaitCfg := *fetchWait
	if fetchWaitCfg == 0 {
		fetchWaitCfg = -1
	}
	srv, err := blockdev.Serve(blockdev.Config{
		Backend: be, Size: size, BlockSize: *bs, Queues: *queues, Depth: *depth, MaxIO: int(maxIO),
		ReadOnly: *readOnly, WriteCache: writeCache, Index: *index, Attach: *attach,
		ReconnectMs: *reconnect, IOTimeout: *ioTimeout, TimeoutEndsServer: *timeoutFatal,
		Token: token, Engine: *engine, Driver: *driver, UblkCopy: *ublkCopy, Logger: log,
		AbuseCopy: *abuseCopy, FetchWait: fetchWaitCfg, FetchSpin: *fetchSpin,
	})
	if err != nil {
		switch {
		case errors.Is(err, blockdev.ErrNoModule):
			usage("%v\n%s", err, noModuleHelp)
		case errors.Is(err, blockdev.ErrNoUblk) && *driver == "auto":
			usage("%v\nor serve over ABUSE instead: %s", err, noModuleHelp)
		case errors.Is(err, blockdev.ErrNoUblk):
			usage("%v", err)
		case *attach && errors.Is(err, unix.EPERM):
			usage("%v (the token in %s is not this device's)", err, *tokenFile)
		case errors.Is(err, unix.ENOTRECOVERABLE):
			usage("%v: its previous server died holding unflushed writes; the data is lost, remove the device", err)
		case errors.Is(err, unix.EEXIST), errors.Is(err, unix.EBUSY):
			usage("device busy: %v", err)
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			usage("%v (needs root: CAP_SYS_ADMIN)", err)
		default:
			usage("%v", err)
		}
	}
	if *tokenFile != "" && !*attach {
		if err := writeToken(*tokenFile, srv.Token()); err != nil {
			srv.Close(0)
			usage("-token-file: %v", err)
		}
	}
	fmt.Println(srv.Path())
	if *ready != "" {
		if err := os.WriteFile(*ready+".tmp", []byte(srv.Path()+"\n"), 0o644); err == nil {
			os.Rename(*ready+".tmp", *ready)
		}
	}

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	for {
		select {
		case s := <-sig:
			log.Info("signal: removing the device", zap.Stringer("signal", s), zap.String("path", srv.Path()))
			err := srv.Close(*removeWait)
			if err == nil {
				return
			}
			if !errors.Is(err, unix.EBUSY) {
				log.Error("remove failed; detaching", zap.Error(err))
				srv.Detach()
				os.Exit(1)
			}
			log.Warn("device still in use: unmount/close it, or signal again to detach without removing", zap.Error(err))
			select {
			case <-sig:
				if srv.Close(0) == nil {
					return
				}
				log.Warn("detaching without removing: the device's I/O now fails", zap.String("path", srv.Path()))
				srv.Detach()
				os.Exit(1)
			case <-srv.Done():
			}
		case <-srv.Done():
		}
		// Every queue stopped: the device was removed (or taken over)
		// by someone else, or serving failed.
		srv.Detach()
		if _, err := os.Stat("/sys/block/" + srv.Name()); err == nil {
			log.Error("stopped serving; the device remains", zap.String("path", srv.Path()))
			os.Exit(1)
		}
		log.Info("device removed by someone else", zap.String("path", srv.Path()))
		return
	}
}

// noModuleHelp says how to get abuse.ko loaded.
const noModuleHelp = `the abuse kernel module is not loaded. Load it with:
    sudo modprobe abuse               # if it is installed (DKMS)
or install it for every kernel with DKMS (see the README, "Block devices"):
    sudo cp -r kmod /usr/src/abuse-1.1 && sudo dkms install abuse/1.1 && sudo modprobe abuse
or, from a source tree built with make -C kmod:
    sudo insmod kmod/abuse.ko`

func writeToken(path string, token uint64) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(token, 16)+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func usage(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "uio-ramdisk: "+f+"\n", a...)
	os.Exit(2)
}
