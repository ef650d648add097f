package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The subprocess tests re-execute this test binary as the proxy alone: with
// UIOPROXY_TEST_ARGS set, TestMain runs what cmd/uioproxy's main runs
// (ParseArgs, then Run until SIGINT/SIGTERM) and exits, so the child process
// holds nothing but the proxy (the load and the upstream stay in the parent,
// or for the scale tests the upstream in a child of its own, echoChildMain).
const (
	childArgsEnv      = "UIOPROXY_TEST_ARGS"            // the proxy's arguments, separated by \x1f
	childNofileEnv    = "UIOPROXY_TEST_NOFILE"          // RLIMIT_NOFILE for the child
	childSoftNofile   = "UIOPROXY_TEST_SOFT_NOFILE"     // only the soft RLIMIT_NOFILE for the child
	childListenPidEnv = "UIOPROXY_TEST_LISTEN_PID_SELF" // set LISTEN_PID to the child's pid
)

func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv(childArgsEnv); ok {
		os.Exit(childMain(strings.Split(args, "\x1f")))
	}
	if os.Getenv(echoChildEnv) != "" {
		os.Exit(echoChildMain())
	}
	os.Exit(m.Run())
}

func childMain(args []string) int {
	if os.Getenv(childListenPidEnv) != "" {
		// systemd sets LISTEN_PID after fork; a test can only ask us to.
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	if v := os.Getenv(childNofileEnv); v != "" {
		n, _ := strconv.ParseUint(v, 10, 64)
		lim := unix.Rlimit{Cur: n, Max: n}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			fmt.Fprintln(os.Stderr, "child: setrlimit:", err)
			return 1
		}
	}
	if v := os.Getenv(childSoftNofile); v != "" {
		var lim unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
		lim.Cur, _ = strconv.ParseUint(v, 10, 64)
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			fmt.Fprintln(os.Stderr, "child: setrlimit:", err)
			return 1
		}
	}
	cfg, err := ParseArgs(args, os.Stderr)
	if err != nil {
		return ExitCode(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "uioproxy:", err)
		return 1
	}
	return 0
}

// child is a proxy process started by a test.
type child struct {
	cmd   *exec.Cmd
	addr  string // where mapping 0 listens
	mu    sync.Mutex
	lines []map[string]any // its JSON log lines
	raw   []string
	done  chan struct{}
}

// startChild runs the proxy (optionally under a wrapper command such as
// strace) with JSON logs and waits until it listens.
func startChild(t *testing.T, wrapper []string, env []string, args ...string) *child {
	t.Helper()
	return startChildFiles(t, wrapper, nil, env, args...)
}

// startChildFiles is startChild passing files as fds 3, 4, ...
func startChildFiles(t *testing.T, wrapper []string, files []*os.File, env []string, args ...string) *child {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args = append([]string{"-log-format", "json", "-log-level", "info"}, args...)
	argv := append(append([]string{}, wrapper...), self)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), childArgsEnv+"="+strings.Join(args, "\x1f")), env...)
	cmd.ExtraFiles = files
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	listening := make(chan string, 1)
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			line := sc.Text()
			c.mu.Lock()
			c.raw = append(c.raw, line)
			if json.Unmarshal([]byte(line), &m) == nil {
				c.lines = append(c.lines, m)
				if m["msg"] == "forwarding" {
					if l, ok := m["listen"].([]any); ok && len(l) > 0 {
						select { // only the first counts; reloads log more
						case listening <- fmt.Sprint(l[0]):
						default:
						}
					}
				}
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	select {
	case c.addr = <-listening:
	case <-c.done:
		t.Fatalf("proxy exited before listening:\n%s", c.output())
	case <-time.After(10 * time.Second):
		t.Fatalf("proxy did not start listening in 10s:\n%s", c.output())
	}
	return c
}

func (c *child) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.raw, "\n")
}

// logged returns the JSON log lines with message msg.
func (c *child) logged(msg string) []map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []map[string]any
	for _, l := range c.lines {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// stop sends SIGTERM to pid (the proxy, which may be a grandchild under a
// wrapper) and waits for the command to exit; it returns the exit code.
func (c *child) stop(t *testing.T, pid int) int {
	t.Helper()
	syscall.Kill(pid, syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- c.cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		c.cmd.Process.Kill()
		<-exited
		t.Fatalf("proxy did not exit 20s after SIGTERM:\n%s", c.output())
	}
	<-c.done
	return c.cmd.ProcessState.ExitCode()
}

// cpuTicks is utime+stime of pid in clock ticks.
func cpuTicks(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return u + st
}

// TestEMFILE runs the proxy with a low descriptor limit: accepts fail with
// EMFILE while the limit is reached, the proxy backs off (no busy loop, one
// warning naming the limit for the whole episode), keeps serving the
// connections it has, and resumes when descriptors free up.
func TestEMFILE(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		ch := startChild(t, nil, []string{childNofileEnv + "=24"}, "-backend", b, "-loops", "1", "127.0.0.1:0:"+up.addr())
		pid := ch.cmd.Process.Pid
		start := time.Now()
		const n = 30
		conns := make([]io.ReadWriteCloser, n)
		served := make([]bool, n)
		closedByProxy := 0
		for i := range conns {
			c := dial(t, ch.addr)
			conns[i] = c
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
		}
		buf := make([]byte, 4)
		readEcho := func(i int, deadline time.Time) (bool, error) {
			c := conns[i].(interface {
				SetReadDeadline(time.Time) error
				Read([]byte) (int, error)
			})
			c.SetReadDeadline(deadline)
			_, err := io.ReadFull(conns[i], buf)
			return err == nil && string(buf) == "ping", err
		}
		nServed := 0
		first := time.Now().Add(500 * time.Millisecond)
		for i := range conns {
			ok, err := readEcho(i, first)
			served[i] = ok
			if ok {
				nServed++
			} else if err == io.EOF || isReset(err) {
				closedByProxy++ // accepted, but no fd left for the upstream socket
				served[i] = true
			}
		}
		if nServed == 0 || nServed == n {
			t.Fatalf("%d of %d connections served under a 24-fd limit; want some but not all", nServed, n)
		}
		// Starved: it must wait, not spin.
		c0 := cpuTicks(pid)
		time.Sleep(1500 * time.Millisecond)
		if d := cpuTicks(pid) - c0; d > 30 {
			t.Errorf("proxy used %d CPU ticks in 1.5s while out of descriptors: busy loop", d)
		}
		for i := range conns {
			if served[i] {
				conns[i].Close()
			}
		}
		later := time.Now().Add(5 * time.Second)
		for i := range conns {
			if served[i] {
				continue
			}
			if ok, err := readEcho(i, later); !ok {
				t.Errorf("connection %d not served after descriptors freed: %v", i, err)
			}
			conns[i].Close()
		}
		warnLines := ch.logged("out of file descriptors, backing off")
		warns := len(warnLines)
		el := time.Since(start)
		t.Logf("%d served at first, %d closed for lack of an upstream fd, %d warnings in %v", nServed, closedByProxy, warns, el.Round(time.Millisecond))
		if warns != 1 {
			t.Errorf("%d out-of-descriptors warnings in %v of one episode, want exactly one", warns, el)
		} else if w := warnLines[0]; w["limit"] != "RLIMIT_NOFILE" || w["nofile"] != 24.0 {
			t.Errorf("the warning does not name the limit (want limit RLIMIT_NOFILE, nofile 24): %v", w)
		}
		if lines := ch.logged("file descriptor limit (RLIMIT_NOFILE)"); len(lines) != 1 || lines[0]["nofile"] != 24.0 {
			t.Errorf("startup lines about the descriptor limit: %v, want one with nofile 24", lines)
		} else if n := lines[0]["connections_allowed"].(float64); n < 0 || n > 4 {
			t.Errorf("the startup line allows %v connections in 24 descriptors; want 0..4", n)
		}
		if closedByProxy > 0 {
			t.Errorf("%d clients closed for lack of descriptors; they should wait", closedByProxy)
		}
		if code := ch.stop(t, pid); code != 0 {
			t.Errorf("exit code %d after SIGTERM, want 0:\n%s", code, ch.output())
		}
	})
}

// TestRaiseNofile: a proxy started with a soft RLIMIT_NOFILE below the hard
// limit raises it to the hard limit itself (the Go runtime alone stops one
// short) and logs the limit and the connections it allows.
func TestRaiseNofile(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < 2048 {
		t.Skipf("hard RLIMIT_NOFILE is %d; want at least 2048 for this test", lim.Max)
	}
	up := startUpstream(t, echoHandler)
	ch := startChild(t, nil, []string{childSoftNofile + "=1024"}, "-backend", "aio", "-loops", "1", "127.0.0.1:0:"+up.addr())
	pid := ch.cmd.Process.Pid
	waitFor(t, 5*time.Second, "the descriptor limit line", func() bool { return len(ch.logged("file descriptor limit (RLIMIT_NOFILE)")) > 0 })
	l := ch.logged("file descriptor limit (RLIMIT_NOFILE)")[0]
	if l["nofile"] != float64(lim.Max) || l["raised_from"] != 1024.0 {
		t.Errorf("logged %v; want nofile %d raised_from 1024", l, lim.Max)
	}
	open, per := l["fds_open"].(float64), l["fds_per_connection"].(float64)
	if want := (float64(lim.Max) - open - fdReserve) / per; l["connections_allowed"] != float64(int(want)) || per != fdsPerConn {
		t.Errorf("logged %v; want %d connections allowed at %d fds each", l, int(want), fdsPerConn)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			found = true
			if f := strings.Fields(line); len(f) < 5 || f[3] != strconv.FormatUint(lim.Max, 10) || f[4] != f[3] {
				t.Errorf("proxy's /proc/%d/limits: %q; want soft = hard = %d", pid, line, lim.Max)
			}
		}
	}
	if !found {
		t.Errorf("no Max open files line in /proc/%d/limits:\n%s", pid, b)
	}
	if code := ch.stop(t, pid); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0:\n%s", code, ch.output())
	}
}
