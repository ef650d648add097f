// Package examples_test builds every example and runs it with a timeout,
// checking what it prints.
package examples_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// build compiles ./<name> into a temp dir (GOFLAGS, with the linkname
// flag, comes from the environment).
func build(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	out, err := exec.Command("go", "build", "-o", bin, "./"+name).CombinedOutput()
	if err != nil {
		t.Fatalf("go build ./%s: %v\n%s", name, err, out)
	}
	return bin
}

func runExample(t *testing.T, name string, args ...string) string {
	t.Helper()
	bin := build(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	t.Logf("%s %v:\n%s", name, args, out)
	return string(out)
}

func mustMatch(t *testing.T, out, re string) []string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("output does not match %q:\n%s", re, out)
	}
	return m
}

func TestAIORead(t *testing.T) {
	out := runExample(t, "aio-read")
	mustMatch(t, out, `read [1-9][0-9]* bytes from /etc/passwd`)
	mustMatch(t, out, `io_submit=1 io_getevents=1`)
	// A file of known size, with O_DIRECT.
	out = runExample(t, "aio-read", "-direct", "-size", "65536", "examples_test.go")
	st := mustMatch(t, out, `read ([0-9]+) bytes`)
	if st[1] == "0" {
		t.Fatal("read 0 bytes")
	}
}

func TestAIOPoll(t *testing.T) {
	out := runExample(t, "aio-poll", "-delay", "300ms")
	mustMatch(t, out, `ok: io_submit did not wait; io_getevents did`)
	mustMatch(t, out, `POLLIN=true`)
}

func TestAIOForward(t *testing.T) {
	out := runExample(t, "aio-forward", "-n", "3000001", "-buf", "16384")
	m := mustMatch(t, out, `io_submit=([0-9]+) io_getevents=([0-9]+)`)
	if m[2] != "0" {
		t.Errorf("io_getevents was called %s times; completions should all come from the ring", m[2])
	}
	mustMatch(t, out, `forwarded 3000001 bytes`)
	mustMatch(t, out, `sink received all 3000001 bytes intact`)
}

func TestEcho(t *testing.T) {
	bin := build(t, "echo")
	for _, backend := range []string{"aio", "uring"} {
		t.Run(backend, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "-addr", "127.0.0.1:0", "-backend", backend)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer cmd.Process.Kill()
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			m := mustMatch(t, line, `listening on (\S+) backend (\S+)`)
			if m[2] != backend {
				t.Fatalf("backend %s, want %s", m[2], backend)
			}
			// A few clients at once, each with several messages, one big.
			errc := make(chan error, 4)
			for c := range 4 {
				go func() { errc <- echoClient(m[1], c) }()
			}
			for range 4 {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func echoClient(addr string, id int) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	for i, n := range []int{1, 100, 70000, 5} {
		msg := bytes.Repeat([]byte(fmt.Sprintf("%d.%d|", id, i)), n/4+1)[:n]
		go conn.Write(msg)
		got := make([]byte, n)
		if _, err := io.ReadFull(conn, got); err != nil {
			return fmt.Errorf("client %d msg %d: %w", id, i, err)
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("client %d msg %d: echo differs", id, i)
		}
	}
	return nil
}

func TestProxyDemo(t *testing.T) {
	out := runExample(t, "proxy-demo", "-conns", "8", "-duration", "300ms")
	for _, backend := range []string{"aio", "uring"} {
		if !regexp.MustCompile(`(?m)^` + backend + `\s+[1-9][0-9]*\s+[0-9.]+\s+[1-9][0-9]*$`).MatchString(out) {
			t.Fatalf("no %s row with traffic in:\n%s", backend, out)
		}
	}
}
