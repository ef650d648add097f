package proxy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// notifySocket listens where a service's sd_notify messages go.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := c.ReadFromUnix(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { c.Close() })
	return path, msgs
}

func waitMsg(t *testing.T, msgs <-chan string, want string) string {
	t.Helper()
	for end := time.After(5 * time.Second); ; {
		select {
		case m := <-msgs:
			if strings.Contains(m, want) {
				return m
			}
		case <-end:
			t.Fatalf("no sd_notify message with %q", want)
		}
	}
}

// TestSocketActivation: listening sockets from systemd (LISTEN_FDS) are
// used instead of bound, TCP and Unix; READY and STOPPING are notified.
func TestSocketActivation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		tln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(t.TempDir(), "act.sock")
		uln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		uln.SetUnlinkOnClose(false)
		tf, _ := tln.File()
		uf, _ := uln.File()
		tln.Close()
		uln.Close()
		notifyPath, msgs := notifySocket(t)
		port := strings.TrimPrefix(fmt.Sprint(tln.Addr()), "127.0.0.1:")
		// -loops 2: binding 127.0.0.1:port itself would fail with the
		// address in use, so serving proves the inherited socket is used.
		ch := startChildFiles(t, nil, []*os.File{tf, uf},
			[]string{"LISTEN_FDS=2", childListenPidEnv + "=1", "NOTIFY_SOCKET=" + notifyPath},
			"-backend", b, "-loops", "2", "127.0.0.1:"+port+":"+up.addr(), sock+":"+up.addr())
		tf.Close()
		uf.Close()
		if m := waitMsg(t, msgs, "READY=1"); !strings.Contains(m, "MAINPID="+strconv.Itoa(ch.cmd.Process.Pid)) {
			t.Errorf("READY without our MAINPID: %q", m)
		}
		for _, nw := range [][2]string{{"tcp", "127.0.0.1:" + port}, {"unix", sock}} {
			c, err := net.DialTimeout(nw[0], nw[1], 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := roundTrip(c, []byte("activated"), 2*time.Second); err != nil {
				t.Errorf("%s via the inherited socket: %v", nw[1], err)
			}
			c.Close()
		}
		if code := ch.stop(t, ch.cmd.Process.Pid); code != 0 {
			t.Errorf("exit %d:\n%s", code, ch.output())
		}
		waitMsg(t, msgs, "STOPPING=1")
		if _, err := os.Stat(sock); err != nil {
			t.Errorf("the Unix socket systemd made was removed: %v", err)
		}
	})
}

// TestHandOver: SIGUSR2 starts a new process with the listening sockets;
// the old one drains its connections and exits, and a client dialing all
// the while never finds the port closed or a connection dropped.
func TestHandOver(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b string) {
		up := startUpstream(t, echoHandler)
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		sock := filepath.Join(t.TempDir(), "ho.sock")
		ch := startChild(t, nil, nil, "-backend", b, "-loops", "2", "-drain-timeout", "10s", addr+":"+up.addr(), sock+":"+up.addr())
		held := dial(t, addr)
		if err := roundTrip(held, []byte("old"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		var stop atomic.Bool
		var dials, fails atomic.Int64
		var errMu sync.Mutex
		var firstErr error
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					c, err := net.DialTimeout("tcp", addr, 2*time.Second)
					if err == nil {
						err = roundTrip(c, []byte("during hand-over"), 2*time.Second)
						c.Close()
					}
					dials.Add(1)
					if err != nil {
						fails.Add(1)
						errMu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						errMu.Unlock()
					}
				}
			}()
		}
		time.Sleep(100 * time.Millisecond)
		syscall.Kill(ch.cmd.Process.Pid, syscall.SIGUSR2)
		waitFor(t, 10*time.Second, "hand-over", func() bool { return len(ch.logged("listening sockets handed over; draining")) == 1 })
		newPid := int(num(ch.logged("listening sockets handed over; draining")[0]["new_pid"]))
		t.Cleanup(func() {
			syscall.Kill(newPid, syscall.SIGKILL)
		})
		if err := roundTrip(held, []byte("still old"), 2*time.Second); err != nil {
			t.Errorf("connection of the old process during its drain: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
		held.Close()
		// Not cmd.Wait yet: it would close the stderr pipe the new process
		// shares, and the new process would die of SIGPIPE on its next log
		// line. A zombie has exited.
		oldPid := ch.cmd.Process.Pid
		waitFor(t, 10*time.Second, "old process exited after its last connection", func() bool {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", oldPid))
			return err != nil || strings.Contains(string(st), ") Z ")
		})
		time.Sleep(200 * time.Millisecond)
		stop.Store(true)
		wg.Wait()
		t.Logf("%d connections during the hand-over, %d failed", dials.Load(), fails.Load())
		if fails.Load() > 0 {
			t.Errorf("%d of %d connections failed across the hand-over; first: %v", fails.Load(), dials.Load(), firstErr)
		}
		// The Unix listener went over too, and the old process left its
		// file alone; the new one removes it when it stops.
		uc, err := net.DialTimeout("unix", sock, 2*time.Second)
		if err != nil {
			t.Fatalf("Unix listener after the hand-over: %v", err)
		}
		if err := roundTrip(uc, []byte("unix"), 2*time.Second); err != nil {
			t.Errorf("Unix listener after the hand-over: %v", err)
		}
		uc.Close()
		syscall.Kill(newPid, syscall.SIGTERM)
		waitFor(t, 10*time.Second, "new process gone", func() bool { return syscall.Kill(newPid, 0) != nil })
		if _, err := os.Stat(sock); !os.IsNotExist(err) {
			t.Errorf("socket file after the new process stopped: %v, want it removed", err)
		}
		if err := ch.cmd.Wait(); err != nil {
			t.Errorf("old process: %v", err)
		}
	})
}

// TestUser: -user drops the whole process to that user after binding.
func TestUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	checkLeaks(t)
	up := startUpstream(t, echoHandler)
	ch := startChild(t, nil, nil, "-backend", "aio", "-loops", "2", "-user", "nobody", "127.0.0.1:0:"+up.addr())
	waitFor(t, 5*time.Second, "dropped", func() bool { return len(ch.logged("dropped privileges")) == 1 })
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", ch.cmd.Process.Pid))
	for _, l := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(l, "Uid:") || strings.HasPrefix(l, "Gid:") {
			if f := strings.Fields(l); len(f) != 5 || f[1] != "65534" || f[2] != "65534" || f[3] != "65534" || f[4] != "65534" {
				t.Errorf("after -user nobody: %s", l)
			}
		}
	}
	// Every thread, the engine's locked loop threads included.
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", ch.cmd.Process.Pid))
	for _, task := range tasks {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", ch.cmd.Process.Pid, task.Name()))
		if !strings.Contains(string(st), "Uid:\t65534\t65534\t65534\t65534") {
			t.Errorf("thread %s still has another uid", task.Name())
		}
	}
	c := dial(t, ch.addr)
	if err := roundTrip(c, []byte("as nobody"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if code := ch.stop(t, ch.cmd.Process.Pid); code != 0 {
		t.Errorf("exit %d:\n%s", code, ch.output())
	}
}
