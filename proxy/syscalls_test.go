package proxy

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Syscall test parameters: >= 100,000 request/response round trips of 64
// bytes over 64 connections, the shape of bench/proxy's "echo x64" cell.
const (
	sysConns    = 64
	sysRequests = 1600 // per connection: 102,400 in all
	sysMsgSize  = 64
	// Ceiling on every syscall of the proxy process (Go runtime included)
	// per round trip (a request forwarded up and its response down).
	maxSyscallsPerRoundTrip = 0.5
)

// TestSyscalls runs the proxy alone in a child process under strace -f -c,
// drives 64 echo connections through it from this process, stops it with
// SIGTERM and checks strace's count: total syscalls of the proxy process
// per round trip, and that the engine's own counters (from the proxy's
// final log line) agree with strace's for io_submit, io_getevents and
// io_uring_enter. make syscalls runs it with -v to print the tables.
func TestSyscalls(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed (apt-get install strace); the syscall counts cannot be verified")
	}
	for _, b := range backends {
		t.Run(b, func(t *testing.T) { testSyscalls(t, strace, b) })
	}
}

func testSyscalls(t *testing.T, strace, backend string) {
	up := startUpstream(t, echoHandler)
	out := filepath.Join(t.TempDir(), "strace.txt")
	ch := startChild(t, []string{strace, "-f", "-c", "-o", out}, nil,
		"-backend", backend, "-loops", "1", "127.0.0.1:0:"+up.addr())
	// The proxy is strace's child.
	pid := 0
	waitFor(t, 5*time.Second, "the traced proxy", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", ch.cmd.Process.Pid, ch.cmd.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid, _ = strconv.Atoi(f[0])
		}
		return pid > 0
	})

	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, sysConns)
	for i := 0; i < sysConns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", ch.addr, 5*time.Second)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			msg := make([]byte, sysMsgSize)
			for j := 0; j < sysRequests; j++ {
				msg[0], msg[1] = byte(i), byte(j)
				if err := roundTrip(c, msg, 10*time.Second); err != nil {
					errc <- fmt.Errorf("conn %d request %d: %w", i, j, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	// Let the proxy see the closes, then stop it.
	time.Sleep(200 * time.Millisecond)
	if code := ch.stop(t, pid); code != 0 {
		t.Fatalf("proxy (under strace) exit code %d:\n%s", code, ch.output())
	}
	table, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	calls, total := parseStraceC(t, string(table))
	stopped := ch.logged("uioproxy stopped")
	if len(stopped) != 1 {
		t.Fatalf("no final stats line from the proxy:\n%s", ch.output())
	}
	own := stopped[0]
	roundTrips := float64(sysConns * sysRequests)
	perRT := float64(total) / roundTrips
	chunks := num(own["messages"])
	t.Logf("%s backend, 1 loop: %d round trips of %d bytes over %d connections in %v (under strace)",
		backend, sysConns*sysRequests, sysMsgSize, sysConns, elapsed.Round(time.Millisecond))
	t.Logf("strace: %d syscalls in all = %.3f per round trip, %.3f per forwarded message (%d chunks); io_submit %d (%.3f/rt), io_getevents %d, io_uring_enter %d",
		total, perRT, float64(total)/chunks, int(chunks), calls["io_submit"], float64(calls["io_submit"])/roundTrips,
		calls["io_getevents"], calls["io_uring_enter"])
	if testing.Verbose() {
		t.Logf("strace -f -c table:\n%s", table)
	}
	if chunks < 2*roundTrips {
		t.Errorf("proxy forwarded %v chunks, want at least %v (a request and a response per round trip)", chunks, 2*roundTrips)
	}
	if perRT > maxSyscallsPerRoundTrip {
		t.Errorf("%.3f syscalls per round trip, want <= %.2f", perRT, maxSyscallsPerRoundTrip)
	}
	// Every connection ends cleanly: the client's FIN is passed on with
	// one shutdown, and the upstream's, which ends both directions, with
	// the close alone.
	if got := calls["shutdown"]; got != sysConns {
		t.Errorf("%d shutdown calls for %d cleanly closed connections, want one each", got, sysConns)
	}
	// Per connection, eof's TCP_INFO check and at most one more: AIO's
	// accept once cost a getsockopt(SO_PROTOCOL) (unix.Accept4 decoding
	// the peer address) and its connect a getsockopt(SO_ERROR), 257 here.
	if got := calls["getsockopt"]; got > 2*sysConns+8 {
		t.Errorf("%d getsockopt calls for %d connections, want at most 2 each", got, sysConns)
	}
	// The engine's counters must agree with strace.
	for _, k := range []struct{ sys, field string }{
		{"io_submit", "io_submit"}, {"io_getevents", "io_getevents"}, {"io_uring_enter", "io_uring_enter"},
	} {
		got, want := num(own[k.field]), float64(calls[k.sys])
		t.Logf("%s: proxy counted %v, strace %v", k.sys, got, want)
		if math.Abs(got-want) > 0.05*want+2 {
			t.Errorf("%s: the proxy counted %v, strace %v: more than 5%% apart", k.sys, got, want)
		}
	}
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

// parseStraceC reads strace -c's table: calls per syscall and the total.
func parseStraceC(t *testing.T, table string) (map[string]int, int) {
	calls := map[string]int{}
	total := -1
	sc := bufio.NewScanner(strings.NewReader(table))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 || strings.HasPrefix(f[0], "%") || strings.HasPrefix(f[0], "-") {
			continue
		}
		n, err := strconv.Atoi(f[3])
		if err != nil {
			continue
		}
		if name := f[len(f)-1]; name == "total" {
			total = n
		} else {
			calls[name] = n
		}
	}
	if total < 0 {
		t.Fatalf("no total in strace's table:\n%s", table)
	}
	return calls, total
}
