package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheck: -check -config exits 0 for a valid file and 2 for a bad one,
// like haproxy -c and nginx -t.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("mappings:\n  - \"127.0.0.1:0:127.0.0.1:80\"\n"), 0o644)
	os.WriteFile(bad, []byte("mappings:\n  - listen: \"127.0.0.1:0\"\n    upstream: \"nohost\"\n"), 0o644)
	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"-check", "-config", good}, 0},
		{[]string{"-check", "-config", bad}, 2},
		{[]string{"-check", "-config", filepath.Join(dir, "missing.yaml")}, 2},
		{[]string{"-check"}, 2},
	} {
		if got := run(tt.args); got != tt.want {
			t.Errorf("uioproxy %q: exit %d, want %d", tt.args, got, tt.want)
		}
	}
}

// TestSystemdUnits: the units in dist/ pass systemd-analyze verify (when
// systemd is installed), with ExecStart pointing at a built binary.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "uioproxy")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, name := range []string{"uioproxy.service", "uioproxy.socket"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "dist", name))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name), []byte(strings.ReplaceAll(string(b), "/usr/local/bin/uioproxy", bin)), 0o644)
	}
	out, err := exec.Command(analyze, "verify", filepath.Join(dir, "uioproxy.service"), filepath.Join(dir, "uioproxy.socket")).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
