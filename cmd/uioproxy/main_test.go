package main

import (
	"os"
	"path/filepath"
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
