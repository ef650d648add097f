package proxy

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Config is everything uioproxy is told on its command line.
type Config struct {
	Mappings       []Mapping
	Backend        string // "auto", "aio" or "uring"
	Loops          int    // event loops, each with its own submission/completion engine
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration // 0: connections never time out for idleness
	DrainTimeout   time.Duration // how long open connections may finish after a stop signal
	MaxConns       int           // 0: no limit beyond file descriptors
	BufferSize     int           // bytes per receive buffer (pool buffers, held only while bytes move)
	Splice         bool
	NoBundles      bool          // -bundles=false: one -buffer sized pool buffer per chunk, even where recvs could bundle
	LogLevel       string        // "debug", "info", "warn" or "error"
	LogFormat      string        // "console" or "json"
	LogFile        string        // append logs here instead of stderr; SIGHUP reopens it
	AccessLog      bool          // one info line per connection when it ends
	StatsInterval  time.Duration // 0: no periodic stats line
	MetricsAddr    string        // "": no metrics listener
	Keepalive      time.Duration // TCP keepalive idle time on both sockets; 0: off
	DNSTTL         time.Duration // how long a lookup of an upstream's name is used; 0: every connection
	// ProxyHeaderTimeout bounds the wait for the PROXY header of mappings
	// that accept one.
	ProxyHeaderTimeout time.Duration

	ConfigFile string // -config: mappings and options from this YAML file; SIGHUP reloads it
	Check      bool   // -check: validate the configuration and exit

	User string // -user: switch to this user after binding

	args           []string         // the command line, read again on reload
	inherited      map[string][]int // listening sockets passed in (systemd, hand-over)
	systemdSockets bool             // inherited came from systemd (which owns their files)
	lookup         lookupFunc       // tests: a fake resolver
}

// Buffer size bounds: below 4 KiB every message costs several submissions;
// above 64 MiB a few thousand connections exhaust memory.
const (
	MinBufferSize = 4 << 10
	MaxBufferSize = 64 << 20
)

// Backends are the accepted -backend values.
var Backends = []string{"auto", "aio", "uring"}

// LogLevels and LogFormats are the accepted -log-level and -log-format values.
var (
	LogLevels  = []string{"debug", "info", "warn", "error"}
	LogFormats = []string{"console", "json"}
)

// UsageLine is printed after every command-line mistake.
const UsageLine = "usage: uioproxy [flags] [bind:]port:host:hostport ... | uioproxy -config FILE [-check]"

// UsageHead and UsageExamples frame the flag list that -help prints.
const UsageHead = UsageLine + `

Forwards TCP connections like ssh -L, batching socket I/O through Linux AIO
or io_uring. Each mapping listens on bind:port and connects every accepted
connection to host:hostport.

Mappings:
  port:host:hostport         listen on localhost:port (the default bind, as ssh -L)
  bind:port:host:hostport    listen on bind:port; bind "*" or "" = all interfaces
  [::1]:8080:[2001:db8::1]:80  IPv6 literals go in brackets
  /path/in.sock:host:hostport  listen on a Unix socket
  [bind:]port:/path/up.sock    forward to a Unix socket
  Listen port 0 picks a free port. Host names are resolved at connect time
  (cached for -dns-ttl) and their addresses raced as RFC 8305 says.
  -config FILE (YAML) holds mappings with several upstreams, balancing,
  health checks and the PROXY protocol; see the README.

Signals: SIGINT/SIGTERM drain and stop (twice: at once); SIGHUP reloads
-config and reopens -log-file; SIGUSR2 hands the listening sockets to a
new uioproxy process and drains this one.

Flags (may come before, between or after mappings; "--" ends them):
`

const UsageExamples = `
Sizes take k, M or G suffixes, all powers of 1024 (64k, 1M, 1MiB, 65536).
Durations are Go durations (500ms, 10s, 2m); 0 turns a timeout off.

Examples:
  uioproxy 8080:127.0.0.1:80
      forward localhost:8080 to port 80 of this machine
  uioproxy -backend uring -loops 4 '*:443:backend.internal:8443'
      all interfaces, io_uring, four event loops
  uioproxy -buffer 64k -splice 5432:db1:5432 6379:cache:6379
      two forwards in one process, at most 64 KiB per recv, splice(2) for the bodies
  uioproxy -log-format json -metrics 127.0.0.1:9100 -stats 10s [::1]:8080:[2001:db8::1]:80
  uioproxy -check -config /etc/uioproxy/uioproxy.yaml
      check a config file: exit 0, or 2 with file:line: what is wrong
`

// ExitCode is the process exit status for an error from ParseArgs: 0 for a
// help request, 2 for any command-line mistake (the flag package's
// convention), so cmd/uioproxy need not inspect the error.
func ExitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	default:
		return 2
	}
}

// ParseArgs parses the command line (without the program name). Flags and
// mappings may be interleaved. On -h/-help it writes the full usage to
// stderr and returns flag.ErrHelp; on any mistake it writes the error and
// UsageLine to stderr and returns that error, which names the flag or
// mapping and the offending value. The caller only has to exit with
// ExitCode(err).
func ParseArgs(args []string, stderr io.Writer) (Config, error) {
	cfg, fs := newFlagSet()
	var mappingArgs []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				writeUsage(stderr, fs)
				return Config{}, err
			}
			return Config{}, usageError(stderr, err)
		}
		left := fs.Args()
		if len(left) == 0 {
			break
		}
		consumed := len(rest) - len(left)
		if consumed > 0 && rest[consumed-1] == "--" {
			mappingArgs = append(mappingArgs, left...)
			break
		}
		// flag stops at the first non-flag: take it as a mapping and go on
		// parsing, so "uioproxy 80:h:80 -loops 2" works as people expect.
		mappingArgs = append(mappingArgs, left[0])
		rest = left[1:]
	}
	// Report bad mappings and bad flags together, so one run shows every
	// mistake; "no mappings given" would only confuse after a bad mapping.
	mappingErr := cfg.parseMappings(mappingArgs)
	if cfg.ConfigFile != "" {
		inCLI := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { inCLI[f.Name] = true })
		if err := loadConfigFile(cfg.ConfigFile, cfg, fs, inCLI); err != nil {
			// A file's mistakes carry file:line; the usage line would only
			// distract from them.
			fmt.Fprintf(stderr, "uioproxy: %v\n", strings.ReplaceAll(err.Error(), "\n", "\nuioproxy: "))
			return Config{}, err
		}
	} else if cfg.Check {
		return Config{}, usageError(stderr, errors.New("-check needs -config FILE"))
	}
	if err := errors.Join(mappingErr, cfg.validate(mappingErr == nil)); err != nil {
		return Config{}, usageError(stderr, err)
	}
	cfg.args = append([]string(nil), args...)
	return *cfg, nil
}

// Validate checks the values ParseArgs cannot check one flag at a time; it
// is exported so a Config built in code gets the same checks.
func (c *Config) Validate() error { return c.validate(true) }

func (c *Config) validate(requireMappings bool) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !oneOf(c.Backend, Backends) {
		bad("-backend %q: want one of %s", c.Backend, strings.Join(Backends, ", "))
	}
	if c.Loops < 1 {
		bad("-loops %d: want at least 1", c.Loops)
	}
	for _, d := range []struct {
		flag  string
		value time.Duration
	}{
		{"-connect-timeout", c.ConnectTimeout},
		{"-idle-timeout", c.IdleTimeout},
		{"-drain-timeout", c.DrainTimeout},
		{"-stats", c.StatsInterval},
		{"-keepalive", c.Keepalive},
		{"-dns-ttl", c.DNSTTL},
		{"-proxy-header-timeout", c.ProxyHeaderTimeout},
	} {
		if d.value < 0 {
			bad("%s %v: must not be negative", d.flag, d.value)
		}
	}
	if c.MaxConns < 0 {
		bad("-max-conns %d: must not be negative (0 = no limit)", c.MaxConns)
	}
	if c.BufferSize < MinBufferSize || c.BufferSize > MaxBufferSize {
		bad("-buffer %s (%d bytes): want %s..%s", byteSize(c.BufferSize), c.BufferSize, byteSize(MinBufferSize), byteSize(MaxBufferSize))
	}
	if !oneOf(c.LogLevel, LogLevels) {
		bad("-log-level %q: want one of %s", c.LogLevel, strings.Join(LogLevels, ", "))
	}
	if !oneOf(c.LogFormat, LogFormats) {
		bad("-log-format %q: want one of %s", c.LogFormat, strings.Join(LogFormats, ", "))
	}
	if c.MetricsAddr != "" {
		if err := checkListenAddr(c.MetricsAddr); err != nil {
			bad("-metrics %q: %v", c.MetricsAddr, err)
		}
	}
	if requireMappings && len(c.Mappings) == 0 {
		bad("no mappings given: want at least one %s (or -config FILE)", mappingSyntax)
	}
	for _, m := range c.Mappings {
		if m.Balance != "" && !oneOf(m.Balance, Balances) {
			bad("mapping %s: balance %q: want one of %s", m.Label(), m.Balance, strings.Join(Balances, ", "))
		}
		if m.SendProxy != "" && m.SendProxy != "v1" && m.SendProxy != "v2" {
			bad("mapping %s: send-proxy %q: want v1 or v2", m.Label(), m.SendProxy)
		}
		if h := m.Health; h.Interval < 0 || (h.Interval > 0 && (h.Timeout <= 0 || h.Rise < 1 || h.Fall < 1)) {
			bad("mapping %s: health check %+v: want interval > 0 with timeout > 0, rise and fall >= 1", m.Label(), h)
		}
	}
	// Two mappings on one listen address would fail at bind time with a
	// less helpful "address already in use"; port 0 never collides.
	seen := map[string]Mapping{}
	for _, m := range c.Mappings {
		if m.BindPort == 0 {
			continue
		}
		if prev, dup := seen[m.BindAddr()]; dup {
			bad("mappings %q and %q both listen on %s", prev.String(), m.String(), m.BindAddr())
		}
		seen[m.BindAddr()] = m
	}
	return errors.Join(errs...)
}

func newFlagSet() (*Config, *flag.FlagSet) {
	cfg := &Config{BufferSize: 256 << 10}
	fs := flag.NewFlagSet("uioproxy", flag.ContinueOnError)
	// ParseArgs writes errors and usage itself, in one place and once.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&cfg.Backend, "backend", "auto", "I/O engine: auto (io_uring if the kernel allows it, else aio), aio or uring")
	fs.IntVar(&cfg.Loops, "loops", runtime.NumCPU(), "number of event loops (each with its own submission/completion engine)")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 10*time.Second, "give up on an upstream after this long (all its addresses together, each with its share); a pool then tries the next, up to three")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "reset a connection that moved no byte in either direction for this long (0 = never)")
	fs.IntVar(&cfg.MaxConns, "max-conns", 0, "stop accepting while this many connections are open (0 = no limit)")
	fs.Var((*byteSizeFlag)(&cfg.BufferSize), "buffer", fmt.Sprintf("receive buffer `SIZE` (%s..%s): the most one recv takes; a direction holds its buffer from the loop's pool only while its bytes are being forwarded (on io_uring 6.17+ a TCP recv bundles 16 KiB pool buffers up to SIZE, for SIZE up to 256k)", byteSize(MinBufferSize), byteSize(MaxBufferSize)))
	fs.Var((*notFlag)(&cfg.NoBundles), "bundles", "on io_uring 6.17+, receive TCP chunks as bundles of 16 KiB pool buffers up to -buffer (if 256k or less; -bundles=false: one -buffer sized buffer per chunk, as on other kernels, less CPU per byte for bulk streams but more memory held by slow readers)")
	fs.BoolVar(&cfg.Splice, "splice", false, "move data with splice(2) through a pipe per direction instead of user-space buffers: less CPU per byte for bulk streams, but two splice syscalls per chunk (small request/response traffic is cheaper without it) and two more fds per connection")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "least severe level logged: debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", "console", "log format: console or json")
	fs.BoolVar(&cfg.AccessLog, "access-log", true, "log one line per connection when it ends (info level): client, upstream, bytes each way, duration, how it ended")
	fs.StringVar(&cfg.LogFile, "log-file", "", "append logs to `PATH` instead of stderr; SIGHUP reopens it (for logrotate)")
	fs.DurationVar(&cfg.StatsInterval, "stats", 0, "log connection and byte counters every `INTERVAL` (0 = never)")
	fs.StringVar(&cfg.MetricsAddr, "metrics", "", "serve Prometheus metrics on `ADDR` (host:port; empty = off)")
	fs.StringVar(&cfg.User, "user", "", "after binding the listeners, switch to this `USER` (its uid, gid and groups); reloads then cannot bind privileged ports")
	fs.StringVar(&cfg.ConfigFile, "config", "", "read options and mappings from this YAML `FILE` (flags given here win); SIGHUP reloads it")
	fs.BoolVar(&cfg.Check, "check", false, "with -config: check the configuration, print what is wrong (file:line) and exit 0 if valid, 2 if not")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGINT/SIGTERM stop accepting and let open connections finish for this long; then reset them (a second signal: at once)")
	fs.DurationVar(&cfg.Keepalive, "keepalive", 60*time.Second, "TCP keepalive on client and upstream sockets: first probe after this much silence, a dead peer found within about twice it (0 = off)")
	fs.DurationVar(&cfg.DNSTTL, "dns-ttl", 10*time.Second, "reuse a lookup of an upstream host name for this long (0 = look up for every connection)")
	fs.DurationVar(&cfg.ProxyHeaderTimeout, "proxy-header-timeout", 5*time.Second, "mappings accepting the PROXY protocol reset a client whose header has not arrived by then")
	return cfg, fs
}

func (c *Config) parseMappings(args []string) error {
	var errs []error
	for _, a := range args {
		m, err := ParseMapping(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c.Mappings = append(c.Mappings, m)
	}
	return errors.Join(errs...)
}

// Usage writes the full -help text to w.
func Usage(w io.Writer) {
	_, fs := newFlagSet()
	writeUsage(w, fs)
}

func writeUsage(w io.Writer, fs *flag.FlagSet) {
	io.WriteString(w, UsageHead)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	io.WriteString(w, UsageExamples)
}

// usageError reports err the way command-line tools do: what was wrong,
// then the usage line, then where to find more.
func usageError(stderr io.Writer, err error) error {
	fmt.Fprintf(stderr, "uioproxy: %v\n%s\nRun 'uioproxy -help' for flags and examples.\n",
		strings.ReplaceAll(err.Error(), "\n", "\nuioproxy: "), UsageLine)
	return err
}

func oneOf(s string, allowed []string) bool {
	for _, a := range allowed {
		if s == a {
			return true
		}
	}
	return false
}

// checkListenAddr wants host:port with a numeric port; the host may be empty
// (all interfaces).
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port: %v", err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number 0..65535", port)
	}
	return nil
}

// byteSizeFlag is an int flag that takes k/M/G suffixes.
type byteSizeFlag int

func (b *byteSizeFlag) String() string { return byteSize(int(*b)) }

func (b *byteSizeFlag) Set(s string) error {
	n, err := ParseSize(s)
	if err != nil {
		return err
	}
	*b = byteSizeFlag(n)
	return nil
}

// sizeUnits maps every accepted suffix (lower-cased) to its multiplier. All
// are powers of 1024, as in nginx and HAProxy, so "1MB" and "1MiB" agree.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
}

// ParseSize parses a byte count such as "65536", "64k", "1M" or "1MiB".
func ParseSize(s string) (int, error) {
	digits := len(s) - len(strings.TrimLeft(s, "0123456789"))
	if digits == 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional k, M or G suffix", s)
	}
	unit, ok := sizeUnits[strings.ToLower(s[digits:])]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown suffix %q, want k, M or G (powers of 1024)", s, s[digits:])
	}
	n, err := strconv.ParseInt(s[:digits], 10, 64)
	const maxSize = 1 << 40 // far above any sane buffer; keeps n*unit from overflowing
	if err != nil || n > maxSize/unit {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return int(n * unit), nil
}

// byteSize renders n with the largest suffix that divides it exactly.
func byteSize(n int) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return strconv.Itoa(n>>30) + "G"
	case n != 0 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "M"
	case n != 0 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "k"
	default:
		return strconv.Itoa(n)
	}
}

// notFlag is a boolean flag that sets the negation of its variable: -bundles
// (default true) for Config.NoBundles, whose zero value is the default.
type notFlag bool

func (f *notFlag) IsBoolFlag() bool { return true }
func (f *notFlag) String() string   { return strconv.FormatBool(f == nil || !bool(*f)) }
func (f *notFlag) Set(v string) error {
	on, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("want true or false, not %q", v)
	}
	*f = notFlag(!on)
	return nil
}
