package main

import (
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"sort"
	"time"
	"unsafe"

	"github.com/userland-io/uio/blockdev/abuse"
	"golang.org/x/sys/unix"
)

// fuzz throws random bytes at every ioctl of /dev/abctl and of a queue fd
// (and at random ioctl numbers). Only errors are acceptable, except for
// an ADD that happens to be valid, which is undone at once.
func fuzz(args []string) {
	fs := flag.NewFlagSet("fuzz", flag.ExitOnError)
	n := fs.Int("n", 5000, "iterations per target")
	seed := fs.Int64("seed", time.Now().UnixNano(), "random seed")
	fs.Parse(args)
	const name = "ioctl-fuzz"
	rng := rand.New(rand.NewSource(*seed))
	errs := map[string]int{}
	ok := 0
	created := 0

	// Memory the kernel may legitimately read or write: random bytes.
	arena := alignedBuf(1 << 20)
	ptr := func(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
	randPtr := func() uintptr {
		switch rng.Intn(6) {
		case 0:
			return 0
		case 1:
			return uintptr(rng.Uint64())
		case 2:
			return 0xffff888000000000 + uintptr(rng.Intn(1<<30)) // kernel direct map
		case 3:
			return ptr(arena) + 1<<20 - uintptr(rng.Intn(64)) // runs off the end
		default:
			return ptr(arena) + uintptr(rng.Intn(1<<19))
		}
	}
	call := func(fd int, req, arg uintptr) error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		if e != 0 {
			errs[e.Error()]++
			return e
		}
		ok++
		return nil
	}
	ctlReqs := []uintptr{abuse.IoctlCtlAdd, abuse.IoctlCtlAttach, abuse.IoctlCtlRemove,
		abuse.IoctlCtlQueueFd, abuse.IoctlQueueCommitFetch, abuse.IoctlQueueCopy}
	randReq := func() uintptr {
		switch rng.Intn(4) {
		case 0: // our magic, random nr, size and direction
			return uintptr(rng.Intn(4))<<30 | uintptr(rng.Intn(1<<14))<<16 | 0xb9<<8 | uintptr(rng.Intn(256))
		case 1: // a real request number with a wrong size
			return ctlReqs[rng.Intn(len(ctlReqs))] ^ uintptr(1+rng.Intn(127))<<16
		default:
			return uintptr(rng.Uint32())
		}
	}

	ctl, err := abuse.Open()
	if err != nil {
		fail(name, "%v", err)
	}
	// An ADD that passes validation attaches the session: undo it.
	undoAdd := func() {
		cfg := *(*abuse.DevConfig)(unsafe.Pointer(&arena[0]))
		created++
		ctl.Close()
		c2, err := abuse.Open()
		if err != nil {
			fail(name, "reopen: %v", err)
		}
		if err := c2.RemoveToken(int(cfg.DevID), cfg.Token, 0); err != nil {
			fail(name, "remove fuzz-created abuse%d: %v", cfg.DevID, err)
		}
		ctl = c2
	}

	// 1. Random bytes into every control ioctl, and random ioctl numbers.
	for i := 0; i < *n; i++ {
		rng.Read(arena[:4096])
		var req uintptr
		if i%4 == 3 {
			req = randReq()
		} else {
			req = ctlReqs[rng.Intn(len(ctlReqs))]
		}
		arg := ptr(arena)
		if rng.Intn(8) == 0 {
			arg = randPtr()
		}
		if call(ctl.Fd(), req, arg) == nil {
			if req == abuse.IoctlCtlAdd && arg == ptr(arena) {
				undoAdd()
				continue
			}
			if req == abuse.IoctlCtlQueueFd {
				// cannot happen without an attached device
				fail(name, "QUEUE_FD succeeded on an unattached session")
			}
		}
	}

	// 2. A valid config with one random mutation, into ADD.
	for i := 0; i < *n; i++ {
		cfg := abuse.DevConfig{Version: abuse.ProtocolVersion, Size: 16 << 20, LogicalBlockSize: 4096,
			NrHWQueues: 1, QueueDepth: 4, DevID: -1}
		b := (*[80]byte)(unsafe.Pointer(&cfg))
		for k := 0; k <= rng.Intn(3); k++ {
			b[rng.Intn(80)] ^= byte(1 << rng.Intn(8))
		}
		copy(arena, b[:])
		if call(ctl.Fd(), abuse.IoctlCtlAdd, ptr(arena)) == nil {
			undoAdd()
		}
	}

	// 3. A real device with a queue fd: random batches (random pointers,
	// random completions for tags that are not in flight).
	cfg := abuse.DevConfig{Size: 16 << 20, LogicalBlockSize: 512, NrHWQueues: 2, QueueDepth: 8, DevID: -1}
	if err := ctl.Create(&cfg); err != nil {
		fail(name, "create: %v", err)
	}
	q, err := ctl.OpenQueue(1)
	if err != nil {
		fail(name, "queue: %v", err)
	}
	if _, err := ctl.OpenQueue(1); !errors.Is(err, unix.EBUSY) {
		fail(name, "second queue fd for queue 1: %v, want EBUSY", err)
	}
	// queue 0 without per-tag buffers (USER_COPY): random ABUSE_QUEUE_COPY
	// arguments for requests that are not in flight
	uq, err := ctl.OpenUserCopyQueue(0)
	if err != nil {
		fail(name, "user-copy queue: %v", err)
	}
	for i := 0; i < *n; i++ {
		rng.Read(arena[:1<<16])
		b := (*abuse.Batch)(unsafe.Pointer(&arena[0]))
		if rng.Intn(2) == 0 { // plausible batch, random completions
			*b = abuse.Batch{Completions: uint64(ptr(arena) + 4096), Requests: uint64(ptr(arena) + 65536),
				NrCompletions: uint32(rng.Intn(16)), MaxRequests: uint32(rng.Intn(16))}
			if rng.Intn(4) == 0 {
				b.Completions = uint64(randPtr())
			}
			if rng.Intn(4) == 0 { // a wait, in range or not
				b.Flags, b.WaitMs, b.SpinUs = abuse.BatchWait, uint32(rng.Intn(4)), uint32(rng.Intn(3)*600)
			}
		}
		req := abuse.IoctlQueueCommitFetch
		if i%5 == 4 {
			req = randReq()
		}
		if call(q.Fd(), req, ptr(arena)) == nil && req == abuse.IoctlQueueCommitFetch {
			if b.NrCompleted != 0 || b.NrRequests != 0 {
				fail(name, "commit/fetch on an idle queue returned %d/%d", b.NrCompleted, b.NrRequests)
			}
		}
		// random copies on both queues (no request is in flight)
		rng.Read(arena[:64])
		c := (*abuse.Copy)(unsafe.Pointer(&arena[0]))
		if rng.Intn(2) == 0 {
			*c = abuse.Copy{Seq: uint64(rng.Intn(4)), Tag: uint16(rng.Intn(10)), Len: uint32(rng.Intn(8192)),
				Offset: uint32(rng.Intn(4096)), Addr: uint64(randPtr())}
		}
		cq := uq
		if rng.Intn(3) == 0 {
			cq = q
		}
		if call(cq.Fd(), abuse.IoctlQueueCopy, ptr(arena)) == nil {
			fail(name, "ABUSE_QUEUE_COPY succeeded with no request in flight: %+v", *c)
		}
		// and the control ioctls on the attached session
		rng.Read(arena[:4096])
		cr := ctlReqs[rng.Intn(len(ctlReqs))]
		if call(ctl.Fd(), cr, ptr(arena)) == nil && cr == abuse.IoctlCtlRemove {
			fail(name, "random REMOVE succeeded")
		}
	}
	q.Close()
	uq.Close()
	ctl.Close()
	c2, err := abuse.Open()
	if err != nil {
		fail(name, "reopen: %v", err)
	}
	if err := c2.Remove(int(cfg.DevID)); err != nil {
		fail(name, "remove abuse%d: %v", cfg.DevID, err)
	}
	c2.Close()

	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	summary := ""
	for _, k := range keys {
		summary += fmt.Sprintf(" %q=%d", k, errs[k])
	}
	pass(name, "seed %d, %d ioctls: %d accepted (harmless: idle fetches/valid ADDs %d undone), errors:%s",
		*seed, 4*(*n)+2*(*n), ok, created, summary)
}
