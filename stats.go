package uio

import (
	"fmt"
	"math/bits"
	"strings"
	"sync/atomic"
)

// BatchBuckets is the number of buckets in Stats.Batches. Bucket 0 counts
// flushes of 1 op and bucket i (1..8) flushes of 2^(i-1)+1 to 2^i ops
// (2, 3-4, 5-8, ..., 129-256); the last bucket counts larger ones.
const BatchBuckets = 10

// Stats is a snapshot of a loop's (or a group's) counters. Every counter
// only grows; subtract two snapshots to measure an interval.
type Stats struct {
	Backend string

	// Syscalls by kind, exactly as the kernel saw them.
	Submits   uint64 // io_submit (AIO)
	GetEvents uint64 // io_getevents (AIO)
	Enters    uint64 // io_uring_enter (io_uring)
	Other     uint64 // everything else the engine calls: io_cancel, eventfd writes, accept4, connect, close, ...
	// Direct counts the ops Do ran as one plain syscall on the caller's
	// goroutine (pread, pwrite, fdatasync, ...), each one syscall; they are
	// not in OpsStarted or Completions. See Config.NoDirect.
	Direct uint64
	// Offloaded counts the ops whose backend has no asynchronous form
	// (openat, fallocate, ftruncate on AIO), each one blocking syscall on a
	// goroutine of the engine's; they are in Completions too.
	Offloaded uint64

	Rounds        uint64
	OpsStarted    uint64 // ops accepted by Handle.Start (timeouts included)
	Completions   uint64 // Done calls
	ReapedUser    uint64 // kernel completions read from the ring without a syscall
	ReapedSyscall uint64 // kernel completions returned by io_getevents
	Flushes       uint64 // flushes that handed at least one op to the kernel
	FlushedOps    uint64 // ops handed to the kernel by those flushes

	// Batches is the histogram of ops per flush; see BatchBuckets.
	Batches [BatchBuckets]uint64

	// CQOverflows counts the times io_uring completions outgrew the CQ
	// and an extra io_uring_enter moved the kernel's overflow into it (the
	// CQ is sized for the ops in flight, so this stays 0 unless a loop
	// carries more than about 65,000 of them). DroppedCQEs counts
	// completions the kernel could not keep at all: each is an op that
	// never completes, and the loop logs it as an error.
	CQOverflows uint64
	DroppedCQEs uint64
	// FixedFileOps counts the ops io_uring was sent with a registered file
	// (RegisterFile) in place of their fd; a readiness poll the engine
	// makes for an op counts too.
	FixedFileOps uint64
	// AIOContexts is the number of AIO contexts the loop has set up (a
	// gauge, not summed by Sub): it starts with one and adds one each time
	// the ops in flight outgrow them; AIOEvents is their total capacity.
	AIOContexts uint64
	AIOEvents   uint64
	// FixedBufferOps counts the reads and writes that went out as
	// io_uring's READ_FIXED or WRITE_FIXED, their buffer lying in a
	// registered one (RegisterBuffers, AddFixedBuffer).
	FixedBufferOps uint64
	// Resubmitted counts the ops the kernel cancelled on its own before
	// they ran (Linux 6.1's io-wq, when it cannot start a worker thread)
	// and the engine ran again; the caller sees only the second run.
	Resubmitted uint64
}

// Syscalls is the total number of syscalls the engine made.
func (s Stats) Syscalls() uint64 {
	return s.Submits + s.GetEvents + s.Enters + s.Other + s.Direct + s.Offloaded
}

// PerOp is syscalls per completed op, direct ones included.
func (s Stats) PerOp() float64 {
	if s.Completions+s.Direct == 0 {
		return 0
	}
	return float64(s.Syscalls()) / float64(s.Completions+s.Direct)
}

// Sub returns the counters accumulated between old and s.
func (s Stats) Sub(old Stats) Stats {
	d := s
	d.Submits -= old.Submits
	d.GetEvents -= old.GetEvents
	d.Enters -= old.Enters
	d.Other -= old.Other
	d.Direct -= old.Direct
	d.Offloaded -= old.Offloaded
	d.Rounds -= old.Rounds
	d.OpsStarted -= old.OpsStarted
	d.Completions -= old.Completions
	d.ReapedUser -= old.ReapedUser
	d.ReapedSyscall -= old.ReapedSyscall
	d.Flushes -= old.Flushes
	d.FlushedOps -= old.FlushedOps
	d.CQOverflows -= old.CQOverflows
	d.DroppedCQEs -= old.DroppedCQEs
	d.FixedFileOps -= old.FixedFileOps
	d.FixedBufferOps -= old.FixedBufferOps
	d.Resubmitted -= old.Resubmitted
	for i := range d.Batches {
		d.Batches[i] -= old.Batches[i]
	}
	return d
}

func (s *Stats) add(o Stats) {
	if s.Backend == "" {
		s.Backend = o.Backend
	} else if o.Backend != s.Backend {
		s.Backend = "mixed"
	}
	s.Submits += o.Submits
	s.GetEvents += o.GetEvents
	s.Enters += o.Enters
	s.Other += o.Other
	s.Direct += o.Direct
	s.Offloaded += o.Offloaded
	s.Rounds += o.Rounds
	s.OpsStarted += o.OpsStarted
	s.Completions += o.Completions
	s.ReapedUser += o.ReapedUser
	s.ReapedSyscall += o.ReapedSyscall
	s.Flushes += o.Flushes
	s.FlushedOps += o.FlushedOps
	s.CQOverflows += o.CQOverflows
	s.DroppedCQEs += o.DroppedCQEs
	s.FixedFileOps += o.FixedFileOps
	s.AIOContexts += o.AIOContexts
	s.AIOEvents += o.AIOEvents
	s.FixedBufferOps += o.FixedBufferOps
	s.Resubmitted += o.Resubmitted
	for i := range s.Batches {
		s.Batches[i] += o.Batches[i]
	}
}

func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: syscalls=%d (submit=%d getevents=%d enter=%d other=%d direct=%d) ops=%d completions=%d per-op=%.4f reaped user/syscall=%d/%d rounds=%d",
		s.Backend, s.Syscalls(), s.Submits, s.GetEvents, s.Enters, s.Other, s.Direct, s.OpsStarted, s.Completions, s.PerOp(),
		s.ReapedUser, s.ReapedSyscall, s.Rounds)
	if s.Flushes > 0 {
		fmt.Fprintf(&b, " mean-batch=%.1f", float64(s.FlushedOps)/float64(s.Flushes))
	}
	if s.FixedBufferOps > 0 {
		fmt.Fprintf(&b, " fixed-buffer-ops=%d", s.FixedBufferOps)
	}
	if s.Resubmitted > 0 {
		fmt.Fprintf(&b, " resubmitted=%d", s.Resubmitted)
	}
	return b.String()
}

// loopStats are the loop's own counters; the backend keeps the syscall ones.
// The per-op counters are plain fields the loop bumps (cur) and publishes
// once per round (pub), so an op costs no atomic store: on amd64 an atomic
// store is an XCHG, which would be paid twice per op. The per-round and
// per-flush counters are stored atomically as they change.
type loopStats struct {
	backend     string
	rounds      counter
	flushes     counter
	flushedOps  counter
	batches     [BatchBuckets]counter
	direct      atomic.Uint64 // ops Do ran on the caller's goroutine (any goroutine adds)
	offloaded   atomic.Uint64 // ops run as a blocking syscall on a goroutine of the engine's
	syscalls    atomic.Uint64 // syscalls the loop makes itself (a nonblocking splice, Loop.waiting's gettid)
	rearms      uint64        // multishot ops the engine armed again (loop goroutine only; tests)
	resubmitted counter       // ops the kernel cancelled on its own, run again

	cur struct{ opsStarted, completions uint64 }
	pub struct{ opsStarted, completions counter }
}

// publish makes the round's per-op counts visible to Stats.
func (ls *loopStats) publish() {
	ls.pub.opsStarted.publish(ls.cur.opsStarted)
	ls.pub.completions.publish(ls.cur.completions)
}

func (ls *loopStats) batch(n int) {
	if n <= 0 {
		return
	}
	ls.flushes.add(1)
	ls.flushedOps.add(uint64(n))
	ls.batches[batchBucket(n)].add(1)
}

func batchBucket(n int) int {
	b := bits.Len(uint(n - 1)) // 1->0, 2->1, 3..4->2, 5..8->3, ... 129..256->8
	return min(b, BatchBuckets-1)
}

// Stats returns a snapshot of the loop's counters. Safe from any goroutine.
// The per-op counts are those at the end of the loop's last round: a Done
// that signals another goroutine runs before its round ends, so that
// goroutine may not see the op counted yet; a Do returns only after its
// round's counts are published.
func (l *Loop) Stats() Stats {
	ls := &l.stats
	s := Stats{
		Backend:     ls.backend,
		Rounds:      ls.rounds.load(),
		OpsStarted:  ls.pub.opsStarted.load(),
		Completions: ls.pub.completions.load(),
		Direct:      ls.direct.Load(),
		Offloaded:   ls.offloaded.Load(),
		Flushes:     ls.flushes.load(),
		FlushedOps:  ls.flushedOps.load(),
		Resubmitted: ls.resubmitted.load(),
	}
	for i := range s.Batches {
		s.Batches[i] = ls.batches[i].load()
	}
	c := l.b.Counters()
	s.Submits, s.GetEvents, s.Enters, s.Other = c.Submits, c.GetEvents, c.Enters, c.Other+ls.syscalls.Load()
	s.ReapedUser, s.ReapedSyscall = c.ReapedUser, c.ReapedSyscall
	s.CQOverflows, s.DroppedCQEs = c.CQOverflows, c.DroppedCQEs
	s.FixedFileOps = c.FixedFileOps
	s.AIOContexts, s.AIOEvents = c.AIOContexts, c.AIOEvents
	s.FixedBufferOps = c.FixedBufferOps
	return s
}
