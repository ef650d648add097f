package proxy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// logrotate's way: rename the file, send SIGHUP; later lines must land in
// a new file under the old name, earlier ones stay in the renamed one.
func TestLogFileReopenedOnSIGHUP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "uioproxy.log")
	f, err := OpenLogFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, err := NewLogger("info", "json", f)
	if err != nil {
		t.Fatal(err)
	}
	stop := watchHUP(log, f, func() {})
	defer stop()
	log.Info("before rotation")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), "log file reopened") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reopened log file at %s after SIGHUP", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
	log.Info("after rotation")
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + ".1")
	if !strings.Contains(string(cur), "after rotation") || strings.Contains(string(cur), "before rotation") {
		t.Fatalf("new file holds:\n%s", cur)
	}
	if !strings.Contains(string(old), "before rotation") || strings.Contains(string(old), "after rotation") {
		t.Fatalf("rotated file holds:\n%s", old)
	}
}

func TestLogFileBadPath(t *testing.T) {
	cfg, err := ParseArgs([]string{"-log-file", "/nonexistent/dir/uioproxy.log", "127.0.0.1:0:127.0.0.1:1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "-log-file") {
		t.Fatalf("Run with an unwritable -log-file = %v, want an error naming -log-file", err)
	}
}
