// Package proxy is uioproxy: an ssh -L style TCP forwarder whose socket
// I/O goes through the uio engine (Linux AIO or io_uring), batched across
// connections. Besides the server (New, Run) it holds the port mappings and
// the command-line configuration.
//
// # Forwarding model
//
// A Server runs a uio.Group: one event loop per -loops, each on its own
// locked OS thread with its own AIO context or io_uring. Every mapping gets
// one listening socket per loop (SO_REUSEPORT), so the kernel spreads new
// connections across the loops and an accepted connection lives on the
// loop that accepted it for its whole life: no locks on the data path.
//
// An accepted connection asks the mapping's router (route.go; the byte
// mover in conn.go sees only its small interface) for an upstream. A host
// name is looked up off the loop (net.DefaultResolver) and the answer kept
// for -dns-ttl; IP literals need no lookup. The addresses are ordered and
// raced as RFC 8305 (Happy Eyeballs) says: IPv6 and IPv4 interleaved, the
// next attempt started when the one before fails or has not answered
// within 250 ms, each attempt cut off after its equal share of what is
// left of -connect-timeout. The first to connect wins and the others are
// cancelled. When no address answers, passive health marks that upstream
// down for a back-off (1 s doubling to 30 s) and the next one is tried, up
// to three; then the client is reset and one warning is logged.
//
// A mapping from a config file may have several upstreams (TCP or Unix
// sockets), chosen round-robin, by least connections, or by a consistent
// hash of the client address (a ring of 160 points per upstream, so
// losing one moves only its clients). Active health checks connect to
// each upstream every interval; rise successes in a row bring one up,
// fall failures take it down; changes are logged and counted. With
// send-proxy the upstream first gets a PROXY protocol header (v1 or v2)
// with the client's address; with accept-proxy each client must start
// with one (from a front balancer, within -proxy-header-timeout) or be
// reset; a header is read into a buffer of -buffer bytes, at most the
// largest v2 header (65,551), so one longer than a smaller -buffer is
// refused. The bytes after the header are the first ones sent upstream.
//
// Once connected, each direction (client to upstream, upstream to client)
// keeps one multishot recv armed that takes a -buffer sized buffer from its
// loop's pool only when data has arrived (io_uring's provided buffer ring;
// on AIO the engine does the same), so a connection that moves no bytes
// holds no buffer. Each chunk is sent, the rest again after a short send,
// and its buffer goes back to the pool when the send completes. A chunk
// that arrives while a send is in flight waits, and the direction stops
// receiving (its recv is cancelled, so the data stays in the socket and TCP
// pushes back on the peer) until what it holds is sent; from then on it
// makes one recv per chunk, after the send of the one before, so a
// direction towards a slow reader holds at most two chunks.
//
// On io_uring 6.17+ (uio.Loop.CapsBundles), for a -buffer above 16 KiB and
// up to 256 KiB (the default), the pool's buffers are 16 KiB and a recv from a
// TCP socket is a bundle capped at -buffer: it fills as many of them as the
// data needs, and the chunk goes out in one sendmsg. A 64-byte message
// then holds 16 KiB while it moves, a bulk stream still moves -buffer per
// recv, and after a pause each recv ends once it has taken -buffer (its
// Limit). Directions from unix sockets (a second pool) and other kernels
// get one -buffer sized buffer per chunk (a capped bundle on a unix socket
// can miss the end of stream behind its data on 6.18). Bundling trades CPU
// for memory: at -buffer 256k, 300 slow readers held 95 MiB of heap with
// bundles and 190 MiB with -bundles=false (TestSlowReaders with
// SLOW_FLAGS), while 8 bulk streams cost 1.23 CPU s/GB without bundles
// against 1.51 with them (STREAMS=8 bench/proxy/bulk-cpu.sh; the copies
// into and out of 16 KiB buffers cost more per byte); -bundles=false suits a
// proxy of few, fast bulk streams. The default of
// 256 KiB is measured: a bulk stream costs 0.79x (AIO) to 0.93x (io_uring)
// the CPU per byte of 64 KiB (bench/proxy/bulk-cpu.sh), and a buffer's
// pages are touched only as far as data fills them. Every op is
// submitted from a completion callback, so the recvs and sends of all the
// connections of a loop that became ready in one round go to the kernel in
// the next round's single io_submit (AIO, where socket reads and writes run
// inside io_submit and complete in the ring without another syscall) or
// io_uring_enter. The callbacks are method values made once per connection
// and the buffers are reused, so forwarding allocates nothing per message.
//
// With -splice, each direction moves data through its own pipe instead:
// splice socket to pipe, then pipe to socket, with a one-shot poll whenever
// a side is not ready. The splices are nonblocking and the engine makes
// each one as a splice(2) on the loop's thread, on both backends (an
// io_uring SPLICE would run in an io-wq worker thread, at more CPU per
// byte than copying).
//
// A recv of 0 bytes (the peer's FIN) shuts the other socket down for writing
// and ends that direction; the other direction goes on until it ends too,
// and then both sockets are closed. That is the only way a connection ends
// with a FIN: every other end is a reset (SO_LINGER 0, then close), so a
// stream cut short never looks complete. When one side resets (ECONNRESET,
// EPIPE), the other side first gets every byte the proxy already handed
// to its socket (the proxy waits until TIOCOUTQ says the peer acknowledged
// them, giving up on a peer that takes nothing for 30 s or -idle-timeout),
// then the reset. That holds too for a side that resets while the proxy is
// not reading it (its peer stopped reading, so flow control paused this
// direction): each loop looks over its connections every second and
// watches, with a poll for the socket's error, a direction stuck on the
// same send since the look before; once the reset is seen, a peer that
// takes nothing for 30 s (or -idle-timeout) is reset too, where before the
// connection waited for it for good. -idle-timeout resets both sides of a
// connection that
// moved no byte either way for that long (op completions, and for sends
// stalled on a slow reader the sockets' TCP_INFO byte counts); a
// connect failure resets the client. TCP keepalive is on for both sockets
// (-keepalive), so peers that vanish are found. -max-conns stops accepting
// while the limit is reached. Run raises the soft RLIMIT_NOFILE to the
// hard limit and logs how many connections it allows (two descriptors
// each, six with -splice); running out of file descriptors (EMFILE/ENFILE)
// pauses accepting with a growing back-off (100 ms to 1 s) instead of
// spinning, while the open connections go on being served, and is logged
// once, with the limit, per episode.
//
// Listening sockets may come from outside (systemd.go): systemd socket
// activation (LISTEN_FDS) or the uioproxy this one replaces (SIGUSR2 in
// Run execs the binary with every listening socket, waits for it to say
// it accepts, then drains). They are matched to mappings by the address
// they are bound to; Run tells systemd READY, RELOADING and STOPPING
// through $NOTIFY_SOCKET, and -user drops privileges after binding.
//
// Shutdown (SIGINT/SIGTERM in Run) stops accepting, lets open connections
// finish for up to -drain-timeout, then resets the rest; a second signal
// during the drain resets them at once. Logs go to stderr
// or to -log-file, which SIGHUP reopens by path (logrotate renames the
// file, then signals).
package proxy
