package uio

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The batched socket workload the syscall test measures: every round, each
// of pairs socketpairs gets one 64-byte send on one end and one recv on the
// other, all staged together, until each pair has done messages of each.
const (
	straceWorkloadPairs    = 64
	straceWorkloadMessages = 160 // per pair: 64*160 = 10,240 writes and as many reads
)

// runSocketWorkload drives the workload through l and returns when every op
// has completed.
func runSocketWorkload(t testing.TB, l *Loop, pairs, messages int) {
	type pair struct {
		a, b          int
		out, in       []byte
		left, pending int
	}
	ps := make([]*pair, pairs)
	for i := range ps {
		a, b := socketpair(t)
		ps[i] = &pair{a: a, b: b, out: make([]byte, 64), in: make([]byte, 64), left: messages}
	}
	done := make(chan error, 1)
	remaining := pairs
	var round func(h Handle, p *pair)
	fail := func(err error) {
		select {
		case done <- err:
		default:
		}
	}
	// Each pair's send and recv are staged in the same round; when both
	// are back the pair goes again, so all pairs move in lock step and
	// every flush carries 2*pairs ops.
	var onDone func(p *pair) func(Handle, Result)
	onDone = func(p *pair) func(Handle, Result) {
		return func(h Handle, r Result) {
			if r.Res != 64 {
				fail(fmt.Errorf("op %s = %d (%v), want 64", r.Kind, r.Res, r.Err()))
				return
			}
			p.pending--
			if p.pending > 0 {
				return
			}
			p.left--
			if p.left == 0 {
				remaining--
				if remaining == 0 {
					done <- nil
				}
				return
			}
			round(h, p)
		}
	}
	dones := make(map[*pair]func(Handle, Result), pairs)
	for _, p := range ps {
		dones[p] = onDone(p)
	}
	round = func(h Handle, p *pair) {
		p.pending = 2
		if _, err := h.Start(Op{Kind: OpSend, Fd: p.a, Buf: p.out, Done: dones[p]}); err != nil {
			fail(err)
		}
		if _, err := h.Start(Op{Kind: OpRecv, Fd: p.b, Buf: p.in, Done: dones[p]}); err != nil {
			fail(err)
		}
	}
	l.Post(func(h Handle) {
		for _, p := range ps {
			round(h, p)
		}
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("socket workload did not finish in 2 minutes")
	}
}

// TestStraceWorkloadChild is the process strace watches; it runs only when
// TestSyscallsMatchStrace starts it.
func TestStraceWorkloadChild(t *testing.T) {
	backend, out := os.Getenv("UIO_STRACE_CHILD"), os.Getenv("UIO_STRACE_STATS")
	if backend == "" {
		t.Skip("run by TestSyscallsMatchStrace")
	}
	l, err := NewLoop(Config{Backend: backend, Depth: 512})
	if err != nil {
		t.Fatal(err)
	}
	runSocketWorkload(t, l, straceWorkloadPairs, straceWorkloadMessages)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(l.Stats())
	if err := os.WriteFile(out, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSyscallsMatchStrace runs the workload under strace -f -c and checks
// that the engine's own syscall counters equal what the kernel saw, and
// that AIO batching keeps syscalls per op at or below 0.1.
func TestSyscallsMatchStrace(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		if os.Getenv("UIO_REQUIRE_STRACE") != "" {
			t.Fatal("strace not found; `make test` installs it (apt-get install strace)")
		}
		t.Skip("strace not installed; `make test` installs it")
	}
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			dir := t.TempDir()
			statsFile, traceFile := filepath.Join(dir, "stats.json"), filepath.Join(dir, "strace.txt")
			cmd := exec.Command(strace, "-f", "-c", "-o", traceFile, "--",
				os.Args[0], "-test.run=^TestStraceWorkloadChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "UIO_STRACE_CHILD="+backend, "UIO_STRACE_STATS="+statsFile)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("child under strace: %v\n%s", err, out)
			}
			var st Stats
			b, err := os.ReadFile(statsFile)
			if err != nil {
				t.Fatalf("child wrote no stats: %v", err)
			}
			if err := json.Unmarshal(b, &st); err != nil {
				t.Fatal(err)
			}
			calls, err := parseStraceSummary(traceFile)
			if err != nil {
				t.Fatal(err)
			}
			for name, ours := range map[string]uint64{
				"io_submit": st.Submits, "io_getevents": st.GetEvents, "io_uring_enter": st.Enters,
			} {
				if calls[name] != ours {
					t.Errorf("%s: strace counted %d, the engine %d", name, calls[name], ours)
				}
			}
			ops := uint64(2 * straceWorkloadPairs * straceWorkloadMessages)
			if st.Completions < ops {
				t.Fatalf("completions = %d, want >= %d", st.Completions, ops)
			}
			perOp := float64(st.Syscalls()) / float64(ops)
			t.Logf("%s: %d ops; strace: io_submit=%d io_getevents=%d io_uring_enter=%d; engine: %s; syscalls/op=%.4f",
				backend, ops, calls["io_submit"], calls["io_getevents"], calls["io_uring_enter"], st, perOp)
			if backend == BackendAIO && perOp > 0.1 {
				t.Errorf("aio: %.4f syscalls per op, want <= 0.1", perOp)
			}
		})
	}
}

// parseStraceSummary reads the table strace -c writes and returns the call
// count per syscall.
func parseStraceSummary(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	calls := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// % time  seconds  usecs/call  calls  [errors]  syscall
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || strings.HasPrefix(fields[0], "%") || strings.HasPrefix(fields[0], "-") {
			continue
		}
		n, err := strconv.ParseUint(fields[3], 10, 64)
		if err != nil {
			continue
		}
		calls[fields[len(fields)-1]] = n
	}
	if len(calls) == 0 {
		return nil, fmt.Errorf("no syscall table in %s", path)
	}
	return calls, sc.Err()
}
