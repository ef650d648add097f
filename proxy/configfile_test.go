package proxy

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFileExample(t *testing.T) {
	p := writeFile(t, "uioproxy.yaml", ConfigFileExample)
	var stderr bytes.Buffer
	cfg, err := ParseArgs([]string{"-config", p, "-connect-timeout", "7s"}, &stderr)
	if err != nil {
		t.Fatalf("example config: %v\n%s", err, stderr.String())
	}
	if cfg.ConnectTimeout != 7*time.Second {
		t.Errorf("connect-timeout %v: the command line's 7s should win over the file's 5s", cfg.ConnectTimeout)
	}
	if cfg.IdleTimeout != 10*time.Minute || cfg.MetricsAddr != "127.0.0.1:9100" {
		t.Errorf("file options not applied: idle %v metrics %q", cfg.IdleTimeout, cfg.MetricsAddr)
	}
	if len(cfg.Mappings) != 2 {
		t.Fatalf("%d mappings, want 2", len(cfg.Mappings))
	}
	web := cfg.Mappings[1]
	want := Mapping{
		BindHost: "", BindPort: 8443, Name: "web",
		Upstreams: []Target{{Host: "10.0.0.1", Port: 8443}, {Host: "backend.internal", Port: 8443}, {Unix: "/run/app/app.sock"}},
		Balance:   BalanceLeastConn,
		Health:    HealthCheck{Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3},
		SendProxy: "v2",
	}
	if !reflect.DeepEqual(web, want) {
		t.Errorf("web mapping = %+v\nwant %+v", web, want)
	}
	if m := cfg.Mappings[0]; m.BindHost != "localhost" || m.BindPort != 8080 || m.Host != "127.0.0.1" || m.HostPort != 80 {
		t.Errorf("ssh -L form in the file = %+v", m)
	}
}

// TestConfigFileErrors: every mistake is reported with file and line and
// what is wrong, all of them in one go.
func TestConfigFileErrors(t *testing.T) {
	for _, tt := range []struct {
		name, file string
		want       []string
	}{
		{"yaml", "mappings:\n  - a\n - b\n", []string{":2: YAML: did not find expected key"}},
		{"unknown option", "conect-timeout: 5s\nmappings: [\"1:h:2\"]\n", []string{`:1: unknown option "conect-timeout"`}},
		{"bad duration", "mappings: [\"1:h:2\"]\nidle-timeout: soon\n", []string{`:2: idle-timeout "soon"`}},
		{"bad ssh form", "mappings:\n  - \"1:h\"\n", []string{`:2: mapping "1:h"`}},
		{"several", "mappings:\n  - listen: 8080\n    upstream: \"h:0\"\n  - listen: \"x:y:z\"\n    upstreams: [\"a:1\"]\n    balance: random\n    health-check: {interval: -1s, rise: 0}\n",
			[]string{`:3: upstream "h:0"`, `:4: listen "x:y:z"`, `:6: balance "random"`, `:7: health-check interval`, `:7: health-check rise`}},
		{"unknown mapping key", "mappings:\n  - listen: 1\n    upstream: \"h:1\"\n    upstrem: \"h:2\"\n", []string{`:4: unknown mapping option "upstrem"`}},
		{"duplicate listen", "mappings:\n  - \"1:h:2\"\n  - listen: 1\n    upstream: \"h:3\"\n", []string{`:3: mapping "localhost:1:h:3" listens on localhost:1 like the mapping on line 2`}},
		{"no upstream", "mappings:\n  - listen: 1\n", []string{":2: mapping without upstream"}},
		{"flag only", "config: x\nmappings: [\"1:h:2\"]\n", []string{`:1: "config" is a command-line flag only`}},
		{"no mappings", "loops: 1\n", []string{"no mappings given"}},
		{"bad proxy", "mappings:\n  - listen: 1\n    upstream: \"h:1\"\n    send-proxy: v3\n    accept-proxy: maybe\n", []string{`:4: send-proxy "v3"`, `:5: accept-proxy "maybe"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, "c.yaml", tt.file)
			var stderr bytes.Buffer
			_, err := ParseArgs([]string{"-config", p}, &stderr)
			if err == nil || ExitCode(err) != 2 {
				t.Fatalf("accepted (err %v)", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
			if strings.Contains(tt.want[0], ":") && !strings.Contains(stderr.String(), p+":") {
				t.Errorf("stderr does not name the file %s:\n%s", p, stderr.String())
			}
		})
	}
}

func TestParseMappingUnix(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Mapping
	}{
		{"/run/a.sock:127.0.0.1:80", Mapping{BindUnix: "/run/a.sock", Host: "127.0.0.1", HostPort: 80}},
		{"8080:/run/b.sock", Mapping{BindHost: "localhost", BindPort: 8080, HostUnix: "/run/b.sock"}},
		{"*:8080:/run/b.sock", Mapping{BindPort: 8080, HostUnix: "/run/b.sock"}},
		{"/run/a.sock:/run/b.sock", Mapping{BindUnix: "/run/a.sock", HostUnix: "/run/b.sock"}},
	} {
		got, err := ParseMapping(tt.in)
		if err != nil {
			t.Errorf("ParseMapping(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseMapping(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if again, err := ParseMapping(got.String()); err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("round trip of %q via %q = %+v, %v", tt.in, got.String(), again, err)
		}
	}
	for _, in := range []string{"/run/a.sock", "/run/a.sock:", "/run/a.sock:h", "8080:/a:b"} {
		if m, err := ParseMapping(in); err == nil {
			t.Errorf("ParseMapping(%q) = %+v, want an error", in, m)
		}
	}
}

// FuzzConfigFile: no input makes the config parser panic or hang, and
// what it accepts validates.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte(ConfigFileExample))
	f.Add([]byte("mappings:\n  - \"1:h:2\"\n"))
	f.Add([]byte("mappings:\n  - listen: /a.sock\n    upstreams: [\"unix:/b\", \"[::1]:80\"]\n    health-check: {interval: 1s}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, fs := newFlagSet()
		ms, err := parseConfigFile("f.yaml", data, fs, nil)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		cfg.Mappings = ms
		cfg.Validate() // may reject (no mappings, bad flags); must not panic
		for _, m := range ms {
			if len(m.Targets()) == 0 {
				t.Fatalf("accepted a mapping without targets: %+v", m)
			}
		}
	})
}
