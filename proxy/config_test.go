package proxy

import (
	"bytes"
	"errors"
	"flag"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseArgsDefaults(t *testing.T) {
	var stderr bytes.Buffer
	cfg, err := ParseArgs([]string{"8080:127.0.0.1:80"}, &stderr)
	if err != nil {
		t.Fatalf("ParseArgs: %v\nstderr: %s", err, stderr.String())
	}
	want := Config{
		Mappings:       []Mapping{mp("localhost", 8080, "127.0.0.1", 80)},
		Backend:        "auto",
		Loops:          runtime.NumCPU(),
		ConnectTimeout: 10 * time.Second,
		DrainTimeout:   30 * time.Second,
		BufferSize:     256 << 10,
		LogLevel:       "info",
		LogFormat:      "console",
		AccessLog:      true,
		Keepalive:      60 * time.Second,
		DNSTTL:         10 * time.Second,

		ProxyHeaderTimeout: 5 * time.Second,
	}
	cfg.args = nil
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("ParseArgs defaults = %+v\nwant %+v", cfg, want)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr on success: %q", stderr.String())
	}
}

func TestParseArgsAllFlags(t *testing.T) {
	args := []string{
		"-backend", "uring", "-loops=3", "-connect-timeout", "2s", "-idle-timeout", "5m",
		"-max-conns", "1000", "-buffer", "1MiB", "-splice", "-log-level", "debug",
		"-log-format", "json", "-stats", "10s", "-metrics", "127.0.0.1:9100", "-drain-timeout", "0",
		"*:8080:backend:80",
		"-buffer", "256k", // flags after a mapping still count; the last one wins
		"[::1]:8443:[2001:db8::1]:443",
	}
	cfg, err := ParseArgs(args, new(bytes.Buffer))
	if err != nil {
		t.Fatalf("ParseArgs: %v", err)
	}
	want := Config{
		Mappings:       []Mapping{mp("", 8080, "backend", 80), mp("::1", 8443, "2001:db8::1", 443)},
		Backend:        "uring",
		Loops:          3,
		ConnectTimeout: 2 * time.Second,
		IdleTimeout:    5 * time.Minute,
		DrainTimeout:   0,
		MaxConns:       1000,
		BufferSize:     256 << 10,
		Splice:         true,
		LogLevel:       "debug",
		LogFormat:      "json",
		StatsInterval:  10 * time.Second,
		MetricsAddr:    "127.0.0.1:9100",
		AccessLog:      true,
		Keepalive:      60 * time.Second,
		DNSTTL:         10 * time.Second,

		ProxyHeaderTimeout: 5 * time.Second,
	}
	cfg.args = nil
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("ParseArgs = %+v\nwant %+v", cfg, want)
	}
}

func TestParseArgsDoubleDash(t *testing.T) {
	// After "--" nothing is a flag, so a mapping-looking "-x" is a mapping
	// error rather than an unknown flag.
	_, err := ParseArgs([]string{"-loops", "1", "--", "80:h:80", "-x"}, new(bytes.Buffer))
	if err == nil || !strings.Contains(err.Error(), `mapping "-x"`) {
		t.Errorf("ParseArgs with -- = %v, want an error about mapping \"-x\"", err)
	}
}

func TestParseArgsHelp(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		var stderr bytes.Buffer
		_, err := ParseArgs([]string{arg}, &stderr)
		if !errors.Is(err, flag.ErrHelp) || ExitCode(err) != 0 {
			t.Errorf("ParseArgs(%s) = %v (exit %d), want flag.ErrHelp (exit 0)", arg, err, ExitCode(err))
		}
		for _, want := range []string{UsageLine, "Examples:", "-backend", "-buffer SIZE", "-drain-timeout", "[::1]:8080:[2001:db8::1]:80"} {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("%s output lacks %q:\n%s", arg, want, stderr.String())
			}
		}
	}
	var usage bytes.Buffer
	Usage(&usage)
	if !strings.Contains(usage.String(), "Examples:") {
		t.Errorf("Usage() lacks examples:\n%s", usage.String())
	}
}

// Every mistake must come back as an error naming the flag (or mapping) and
// the value, exit status 2, and the usage line on stderr.
func TestParseArgsRejects(t *testing.T) {
	const m = "8080:h:80"
	tests := []struct {
		args   []string
		wantIn []string
	}{
		{nil, []string{"no mappings given", "[bind:]port:host:hostport"}},
		{[]string{"-loops", "2"}, []string{"no mappings given"}},
		{[]string{"-bakend", "aio", m}, []string{"flag provided but not defined: -bakend"}},
		{[]string{"-backend", "epoll", m}, []string{`-backend "epoll"`, "auto, aio, uring"}},
		{[]string{"-loops", "0", m}, []string{"-loops 0", "at least 1"}},
		{[]string{"-loops", "-3", m}, []string{"-loops -3"}},
		{[]string{"-loops", "many", m}, []string{`invalid value "many" for flag -loops`}},
		{[]string{"-buffer", "1k", m}, []string{"-buffer 1k (1024 bytes)", "4k..64M"}},
		{[]string{"-buffer", "128M", m}, []string{"-buffer 128M", "4k..64M"}},
		{[]string{"-buffer", "4000", m}, []string{"-buffer 4000 (4000 bytes)"}},
		{[]string{"-buffer", "64x", m}, []string{`invalid value "64x" for flag -buffer`, `unknown suffix "x"`}},
		{[]string{"-buffer", "", m}, []string{`invalid value "" for flag -buffer`}},
		{[]string{"-buffer", "99999999999999999999k", m}, []string{"too large"}},
		{[]string{"-log-level", "verbose", m}, []string{`-log-level "verbose"`, "debug, info, warn, error"}},
		{[]string{"-log-format", "text", m}, []string{`-log-format "text"`, "console, json"}},
		{[]string{"-connect-timeout", "-1s", m}, []string{"-connect-timeout -1s: must not be negative"}},
		{[]string{"-idle-timeout", "-5m", m}, []string{"-idle-timeout -5m0s"}},
		{[]string{"-drain-timeout", "-1ms", m}, []string{"-drain-timeout -1ms"}},
		{[]string{"-stats", "-10s", m}, []string{"-stats -10s"}},
		{[]string{"-stats", "10", m}, []string{`invalid value "10" for flag -stats`}},
		{[]string{"-max-conns", "-1", m}, []string{"-max-conns -1"}},
		{[]string{"-metrics", "9100", m}, []string{`-metrics "9100": want host:port`}},
		{[]string{"-metrics", "localhost:http", m}, []string{`-metrics "localhost:http": port "http"`}},
		{[]string{"8080:host"}, []string{`mapping "8080:host"`, "want [bind:]port:host:hostport"}},
		{[]string{m, "9090:h:0", "x:h:80"}, []string{`mapping "9090:h:0": target port`, `mapping "x:h:80": listen port`}},
		{[]string{m, "localhost:8080:other:81"}, []string{"both listen on localhost:8080"}},
		{[]string{"-loops", "0", "-backend", "x"}, []string{"-loops 0", `-backend "x"`, "no mappings given"}},
		{[]string{"-loops", "0", "8080:host"}, []string{"-loops 0", `mapping "8080:host"`}},
	}
	for _, tt := range tests {
		var stderr bytes.Buffer
		_, err := ParseArgs(tt.args, &stderr)
		if err == nil {
			t.Errorf("ParseArgs(%q) succeeded, want an error containing %q", tt.args, tt.wantIn)
			continue
		}
		if ExitCode(err) != 2 {
			t.Errorf("ParseArgs(%q): ExitCode = %d, want 2", tt.args, ExitCode(err))
		}
		for _, w := range tt.wantIn {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ParseArgs(%q) error = %q, want it to contain %q", tt.args, err, w)
			}
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("ParseArgs(%q) stderr lacks %q:\n%s", tt.args, w, stderr.String())
			}
		}
		if !strings.Contains(stderr.String(), UsageLine) {
			t.Errorf("ParseArgs(%q) stderr lacks the usage line:\n%s", tt.args, stderr.String())
		}
	}
}

func TestParseArgsBadMappingIsNotMissing(t *testing.T) {
	_, err := ParseArgs([]string{"8080:host"}, new(bytes.Buffer))
	if err == nil || strings.Contains(err.Error(), "no mappings given") {
		t.Errorf("ParseArgs with only a bad mapping = %v; want the mapping error alone, not \"no mappings given\"", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{
		"4096": 4096, "4k": 4096, "4K": 4096, "64kb": 64 << 10, "64KiB": 64 << 10,
		"1M": 1 << 20, "1m": 1 << 20, "1MB": 1 << 20, "1MiB": 1 << 20, "2G": 2 << 30, "0": 0, "512b": 512,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "k", "-1k", "1.5M", "1 M", "1T", "1kk", "0x10"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
	for n, want := range map[int]string{4096: "4k", 1 << 20: "1M", 3 << 30: "3G", 4000: "4000", 0: "0"} {
		if got := byteSize(n); got != want {
			t.Errorf("byteSize(%d) = %q, want %q", n, got, want)
		}
	}
}
