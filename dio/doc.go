// Package dio ("direct I/O files") puts files on a uio.Loop: reads,
// writes, appends and syncs become ops of the loop, so the I/O of many
// goroutines goes to the kernel in one io_submit or io_uring_enter per
// round, on either backend. Files are opened with O_DIRECT, which is what
// makes Linux AIO truly asynchronous and keeps write-ahead logs and table
// files out of the page cache; where O_DIRECT is not possible the same API
// runs buffered.
//
//	l, _ := uio.NewLoop(uio.Config{Backend: "auto"})
//	f, _ := dio.Open(l, "wal", os.O_RDWR|os.O_CREATE, 0o644, nil)
//	f.Append(record)   // buffered; full chunks are written asynchronously
//	f.Sync()           // durable
//	f.ReadAt(p, off)   // any offset, any length
//
// # Alignment
//
// O_DIRECT transfers must start at, and be a whole number of, the file
// system's direct I/O alignment, and their memory must be aligned too. The
// alignment is asked from the kernel with statx(STATX_DIOALIGN) (Linux
// 6.1+); where the file system does not answer, the logical block size of
// the underlying block device is used, else the file system's block size.
// Options.Align can raise it. Every buffer dio hands the kernel comes from
// an anonymous mmap (page aligned, outside the Go heap), pooled by size.
//
// # Registered buffers
//
// On io_uring, the first direct File opened on a loop maps an arena for
// that loop (4 MiB by default, SetArenaSize) and registers it with the
// loop's ring once (uio.Loop.AddFixedBuffer, Linux 5.13+). The buffers of
// that loop's files (append chunks, read widening, read-modify-write) are
// cut from it, power-of-two blocks from 4 KiB, so their reads and writes go
// out as READ_FIXED/WRITE_FIXED (uio.Stats.FixedBufferOps) and the kernel
// does not pin and unpin their pages per op. A read-only file's append
// chunk, which is never written, stays out of the arena. When the arena
// has no block free, and on AIO, buffers come from the pool as before; the
// arena sits beside the loop's other registered buffers (a user's
// RegisterBuffers set is not disturbed). Its pages are pinned for the
// loop's life. Without CAP_IPC_LOCK the kernel counts them against
// RLIMIT_MEMLOCK, summed over all of the user's processes (8 MiB by
// default on Debian), so an arena then takes at most a quarter of that
// limit; where the kernel refuses it anyway the loop's files simply use the
// pool (the reason is logged at Info). The arena is unmapped when the loop
// is done and the last File using it is closed.
//
// Sizes: a File holds one append chunk (256 KiB) plus up to MaxInflight (8)
// chunks being written, and each ReadAt or WriteAt that needs a buffer of
// dio's holds one for its I/O (4 KiB for a widened 4 KiB read). Measured
// in BenchmarkArena, the most a benchmark's files held at once was 260 KiB
// for 4 KiB reads by one goroutine, 384 KiB by 32, 1.25 MiB for four
// files doing 64 KiB writes and 512 KiB for one 64 KiB append-and-Sync
// writer: 4 MiB serves a few busy files per loop, and costs 4 MiB of pinned
// memory (about 160 µs to register). Reads into a caller's aligned buffer
// go straight into it (no copy); that memory is the caller's and is not
// registered. What registration saves is the kernel's pin and unpin of the
// pages per op: measured with the uring package's BenchmarkFixedDirect
// (batches of 32 O_DIRECT ops on one thread, no engine) on ext4 on zram,
// 15-25% of a 4 KiB read or write and 20-40% of a 64 KiB one. Through a
// loop it is a small share of an op, and a plain pread or pwrite (Do's
// direct path) never uses it: on the project's shared 2-core test machine
// dio with and without the arena are within noise of each other
// (BenchmarkArena; figures in dio/BENCH.md).
//
// ReadAt widens a read to the aligned blocks around it, reads them into
// such a buffer and copies out the requested bytes (head and tail
// trimmed); when p, off and len(p) are already aligned the kernel reads
// straight into p. WriteAt outside the append chunk is a read-modify-write
// of the blocks it touches.
//
// # Appends and the tail block
//
// Append copies into an aligned chunk (Options.ChunkSize, 256 KiB by
// default). When a chunk is full its write is submitted and Append returns
// without waiting; at most Options.MaxInflight chunk writes are in flight.
// A file that was synced since its previous chunk filled (a log synced
// after every record or few) writes the full chunk from Append instead,
// before it returns: the next Sync would wait for that write anyway, and
// made through uio.Loop.Do by a lone caller it is one plain pwrite on the
// caller's goroutine, with no hand-off to the loop's thread and back.
// Sync writes what the chunk holds: the whole blocks, and the partial last
// block padded with zeros to the alignment. The partial block stays in
// memory: the next Sync, or the chunk's write, writes that block again with
// the bytes appended since (the tail rewrite). Reads of bytes still in the
// chunk, or in a chunk write in flight, see them; Size is the logical size.
//
// # The padding stays on disk until Close
//
// The zero padding of the tail block goes past the logical end of the
// file, and by default it stays there: while a File is open, the file on
// disk may be up to one alignment block longer than Size (what fstat or
// another reader of the path sees), the bytes past Size being zeros. Close
// cuts the file to its logical size. Cutting it at every Sync instead
// (ftruncate into the middle of the tail block) makes ext4 read that block
// back to zero its tail, and makes every later tail write extend the file,
// which ext4 then completes synchronously inside io_submit; measured, it
// halved synced appends per second (examples/pebble/BENCH.md).
// Options.ExactSizeOnSync restores it for callers that need the size on
// disk exact after every Sync.
//
// # At most one trip to the loop per Sync
//
// When no other Sync's fdatasync is running, Sync waits for the chunk
// writes in flight, then makes the tail write and the fdatasync as two
// uio.Loop.Do calls from the caller's goroutine: a lone caller's Do is one plain syscall on its own goroutine,
// so such a Sync costs a pwrite and an fdatasync and no thread hand-off.
// Otherwise Sync posts one function to the loop. It submits the tail write; when the
// tail write and the chunk writes that were in flight when Sync was called
// have all landed, the last completion submits the fdatasync on the loop,
// and only the fdatasync's completion wakes the caller. Appends by other
// goroutines wait for the tail write (its buffer is the kernel's until
// then), not for the fdatasync. With ExactSizeOnSync, when padding has to
// be cut, Sync waits for the writes, ftruncates and then fdatasyncs: two
// trips.
//
// # What Sync guarantees
//
// When Sync returns nil, every byte written or appended through the File
// before Sync was called is on stable storage, at its place, and the file
// is at least that long (fdatasync persists the size too); with
// ExactSizeOnSync its size is exactly the logical size. Concurrent Syncs
// share an fdatasync: one that finds its data covered by a finished one
// returns at once. A failed fdatasync is sticky (the page cache and the
// disk may disagree after it), and so is a failed chunk write, in flight
// or made by Append: every later Append, WriteAt or Sync returns it.
//
// After a crash the file holds every synced byte. Beyond the last synced
// byte it may hold bytes appended later (chunk writes that landed) and up
// to one block of zero padding, which Close would have cut off: formats
// that read a log until the first invalid record (Pebble's WAL and
// MANIFEST, for two) handle that. Opening such a file again takes the
// padding as part of the file.
//
// # Fallback
//
// Where open refuses O_DIRECT with EINVAL (tmpfs before Linux 6.6, some
// FUSE and network file systems), the file is opened without it, a notice
// is logged (Options.Logger, zap), and the alignment is 1: no padding, no
// read widening, same API. The same happens when statx reports that the
// file cannot do direct I/O. Options.Buffered asks for buffered I/O from
// the start. Direct reports which mode a File is in. Note that buffered
// writes on the AIO backend run synchronously inside io_submit.
//
// # Concurrency
//
// A File is safe for concurrent use. Appends and writes are serialized by
// a mutex; reads copy what is in memory under it and do their disk I/O
// outside it, so many ReadAt calls are in flight at once and share the
// loop's rounds. Goroutines wait for their ops with a pooled waiter (a
// cheaper uio.Loop.Do). Close must not race with other calls on the File;
// it writes what is buffered and cuts the file to its logical size, but
// does not fdatasync.
package dio
