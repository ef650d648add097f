package proxy

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// The config file (-config FILE) is YAML. Its top-level keys are the
// long flags without the dash ("connect-timeout: 5s", "buffer: 256k"),
// parsed exactly as the flags are; a flag given on the command line wins
// over the file. "mappings" lists the forwards, each either an ssh -L
// string or a map of the per-mapping options. Every error names the file
// and line. See ConfigFileExample.

// ConfigFileExample is a commented config file; the README shows it and
// the tests check that it loads.
const ConfigFileExample = `# uioproxy config: the long flags without the dash, plus mappings.
connect-timeout: 5s
idle-timeout: 10m
drain-timeout: 30s
access-log: true
metrics: 127.0.0.1:9100

mappings:
  # The ssh -L form, as on the command line.
  - "8080:127.0.0.1:80"

  # A pool of upstreams with active health checks.
  - name: web
    listen: "*:8443"               # [bind:]port, or a Unix socket path
    upstreams:
      - 10.0.0.1:8443
      - backend.internal:8443      # resolved at connect time, cached for dns-ttl
      - unix:/run/app/app.sock
    balance: least-conn            # round-robin (default), least-conn, source-hash
    health-check:
      interval: 2s                 # a TCP connect every 2s
      timeout: 1s
      rise: 2                      # 2 good checks bring a down upstream up
      fall: 3                      # 3 failed checks take it down
    send-proxy: v2                 # PROXY protocol header to the upstreams: v1 or v2
    accept-proxy: false            # read a PROXY header from a front balancer first
`

// mappingKeys are the keys a mapping map may have.
var mappingKeys = []string{"name", "listen", "forward", "upstream", "upstreams", "balance", "health-check", "send-proxy", "accept-proxy"}

// ConfigError is one mistake in a config file.
type ConfigError struct {
	File string
	Line int // 0: the file as a whole
	Msg  string
}

func (e *ConfigError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// loadConfigFile reads path into cfg through fs (the flag set that
// parsed the command line): options whose flag the command line set
// (inCLI) are left alone. The file's mappings come before the command
// line's.
func loadConfigFile(path string, cfg *Config, fs *flag.FlagSet, inCLI map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-config: %w", err)
	}
	ms, err := parseConfigFile(path, data, fs, inCLI)
	if err != nil {
		return err
	}
	cfg.Mappings = append(ms, cfg.Mappings...)
	return nil
}

// parseConfigFile parses data (the file named path) into fs's flags and
// returns its mappings. All mistakes are reported together.
func parseConfigFile(path string, data []byte, fs *flag.FlagSet, inCLI map[string]bool) ([]Mapping, error) {
	var errs []error
	bad := func(n *yaml.Node, format string, args ...any) {
		line := 0
		if n != nil {
			line = n.Line
		}
		errs = append(errs, &ConfigError{File: path, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &ConfigError{File: path, Line: yamlErrLine(err), Msg: yamlErrMsg(err)}
	}
	if len(doc.Content) == 0 {
		return nil, &ConfigError{File: path, Msg: "empty, want options and mappings"}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &ConfigError{File: path, Line: root.Line, Msg: "want a map of options at the top"}
	}
	var mappings []Mapping
	mappingLines := map[string]int{}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if prev, dup := seen[k.Value]; dup {
			bad(k, "%q given twice (first on line %d)", k.Value, prev)
			continue
		}
		seen[k.Value] = k.Line
		switch k.Value {
		case "mappings":
			if v.Kind != yaml.SequenceNode {
				bad(v, "mappings: want a list")
				continue
			}
			for _, mn := range v.Content {
				m, ok := parseMappingNode(mn, bad)
				if !ok {
					continue
				}
				key := m.BindAddr()
				if prev, dup := mappingLines[key]; dup && m.BindPort != 0 {
					bad(mn, "mapping %q listens on %s like the mapping on line %d", m.Label(), key, prev)
					continue
				}
				mappingLines[key] = mn.Line
				mappings = append(mappings, m)
			}
		case "config", "check":
			bad(k, "%q is a command-line flag only", k.Value)
		default:
			f := fs.Lookup(k.Value)
			if f == nil {
				bad(k, "unknown option %q", k.Value)
				continue
			}
			if v.Kind != yaml.ScalarNode {
				bad(v, "%s: want a single value", k.Value)
				continue
			}
			if inCLI[k.Value] {
				continue // the command line wins
			}
			if err := fs.Set(k.Value, v.Value); err != nil {
				bad(v, "%s %q: %v", k.Value, v.Value, err)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return mappings, nil
}

func parseMappingNode(n *yaml.Node, bad func(*yaml.Node, string, ...any)) (Mapping, bool) {
	if n.Kind == yaml.ScalarNode {
		m, err := ParseMapping(n.Value)
		if err != nil {
			bad(n, "%v", err)
			return Mapping{}, false
		}
		return m, true
	}
	if n.Kind != yaml.MappingNode {
		bad(n, "a mapping is an ssh -L string or a map of %s", strings.Join(mappingKeys, ", "))
		return Mapping{}, false
	}
	var m Mapping
	ok := true
	fail := func(at *yaml.Node, format string, args ...any) {
		bad(at, format, args...)
		ok = false
	}
	keys := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !slices.Contains(mappingKeys, k.Value) {
			fail(k, "unknown mapping option %q, want one of %s", k.Value, strings.Join(mappingKeys, ", "))
			continue
		}
		if _, dup := keys[k.Value]; dup {
			fail(k, "%q given twice in one mapping", k.Value)
			continue
		}
		keys[k.Value] = v
	}
	scalar := func(key string) (string, *yaml.Node, bool) {
		v := keys[key]
		if v == nil {
			return "", nil, false
		}
		if v.Kind != yaml.ScalarNode {
			fail(v, "%s: want a single value", key)
			return "", v, false
		}
		return v.Value, v, true
	}
	if fw, v, has := scalar("forward"); has {
		fm, err := ParseMapping(fw)
		if err != nil {
			fail(v, "forward: %v", err)
		} else {
			m = fm
		}
		for _, k := range []string{"listen", "upstream", "upstreams"} {
			if keys[k] != nil {
				fail(keys[k], "%s: not with forward (which says both ends)", k)
			}
		}
	} else {
		l, v, has := scalar("listen")
		if !has {
			if v == nil {
				fail(n, "mapping without listen (or forward)")
			}
		} else if err := parseListen(l, &m); err != nil {
			fail(v, "listen %q: %v", l, err)
		}
		var targets []*yaml.Node
		if u := keys["upstream"]; u != nil {
			targets = append(targets, u)
		}
		if us := keys["upstreams"]; us != nil {
			if us.Kind != yaml.SequenceNode || len(us.Content) == 0 {
				fail(us, "upstreams: want a list of host:port or unix:/path")
			} else {
				targets = append(targets, us.Content...)
			}
		}
		if len(targets) == 0 && keys["upstreams"] == nil {
			fail(n, "mapping without upstream or upstreams")
		}
		for _, tn := range targets {
			if tn.Kind != yaml.ScalarNode {
				fail(tn, "upstream: want host:port or unix:/path")
				continue
			}
			t, err := ParseTarget(tn.Value)
			if err != nil {
				fail(tn, "upstream %q: %v", tn.Value, err)
				continue
			}
			m.Upstreams = append(m.Upstreams, t)
		}
		if len(m.Upstreams) == 1 && m.Upstreams[0].Unix == "" {
			m.Host, m.HostPort = m.Upstreams[0].Host, m.Upstreams[0].Port
		}
	}
	if s, _, has := scalar("name"); has {
		m.Name = s
	}
	if s, v, has := scalar("balance"); has {
		if !slices.Contains(Balances, s) {
			fail(v, "balance %q: want one of %s", s, strings.Join(Balances, ", "))
		}
		m.Balance = s
	}
	if s, v, has := scalar("send-proxy"); has {
		if s != "v1" && s != "v2" {
			fail(v, "send-proxy %q: want v1 or v2", s)
		}
		m.SendProxy = s
	}
	if s, v, has := scalar("accept-proxy"); has {
		b, err := strconv.ParseBool(s)
		if err != nil {
			fail(v, "accept-proxy %q: want true or false", s)
		}
		m.AcceptProxy = b
	}
	if hc := keys["health-check"]; hc != nil {
		if h, good := parseHealthNode(hc, fail); good {
			m.Health = h
		}
	}
	return m, ok
}

func parseHealthNode(n *yaml.Node, fail func(*yaml.Node, string, ...any)) (HealthCheck, bool) {
	h := HealthCheck{Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	if n.Kind != yaml.MappingNode {
		fail(n, "health-check: want a map of interval, timeout, rise, fall")
		return h, false
	}
	ok := true
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "interval", "timeout":
			d, err := time.ParseDuration(v.Value)
			if err != nil || d <= 0 || v.Kind != yaml.ScalarNode {
				fail(v, "health-check %s %q: want a positive duration (2s, 500ms)", k.Value, v.Value)
				ok = false
				continue
			}
			if k.Value == "interval" {
				h.Interval = d
			} else {
				h.Timeout = d
			}
		case "rise", "fall":
			x, err := strconv.Atoi(v.Value)
			if err != nil || x < 1 || x > 1000 || v.Kind != yaml.ScalarNode {
				fail(v, "health-check %s %q: want a count 1..1000", k.Value, v.Value)
				ok = false
				continue
			}
			if k.Value == "rise" {
				h.Rise = x
			} else {
				h.Fall = x
			}
		default:
			fail(k, "unknown health-check option %q, want interval, timeout, rise or fall", k.Value)
			ok = false
		}
	}
	return h, ok
}

// parseListen parses a config file's listen: "port", "bind:port" (bind
// "*" for all interfaces, IPv6 in brackets) or a Unix socket path.
func parseListen(s string, m *Mapping) error {
	if isUnixPath(s) {
		m.BindHost, m.BindPort, m.BindUnix = "", 0, s
		return nil
	}
	parts, err := splitMapping(s)
	if err != nil {
		return err
	}
	var port mappingPart
	switch len(parts) {
	case 1:
		m.BindHost, port = DefaultBindHost, parts[0]
	case 2:
		port = parts[1]
		if b := parts[0]; !b.bracketed && (b.text == "" || b.text == "*") {
			m.BindHost = ""
		} else if m.BindHost, err = checkHost(b); err != nil {
			return fmt.Errorf("bind address %v", err)
		}
	default:
		return errors.New("want [bind:]port or a Unix socket path (IPv6 in brackets)")
	}
	if m.BindPort, err = checkPort(port, 0); err != nil {
		return fmt.Errorf("port %v", err)
	}
	return nil
}

// ParseTarget parses an upstream: "host:port" (IPv6 in brackets),
// "unix:/path" or a path starting with '/'.
func ParseTarget(s string) (Target, error) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		if p == "" {
			return Target{}, errors.New("empty Unix socket path")
		}
		return Target{Unix: p}, nil
	}
	if isUnixPath(s) {
		return Target{Unix: s}, nil
	}
	parts, err := splitMapping(s)
	if err != nil {
		return Target{}, err
	}
	if len(parts) != 2 {
		return Target{}, errors.New("want host:port, unix:/path or /path (IPv6 in brackets)")
	}
	var t Target
	if t.Host, err = checkHost(parts[0]); err != nil {
		return Target{}, fmt.Errorf("host %v", err)
	}
	if t.Port, err = checkPort(parts[1], 1); err != nil {
		return Target{}, fmt.Errorf("port %v", err)
	}
	return t, nil
}

// yaml.v3 errors read "yaml: line N: msg".
func yamlErrLine(err error) int {
	s := err.Error()
	if _, rest, ok := strings.Cut(s, "line "); ok {
		if i := strings.IndexByte(rest, ':'); i > 0 {
			if n, err := strconv.Atoi(rest[:i]); err == nil {
				return n
			}
		}
	}
	return 0
}

func yamlErrMsg(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	if _, rest, ok := strings.Cut(s, "line "); ok {
		if i := strings.Index(rest, ": "); i > 0 {
			return "YAML: " + rest[i+2:]
		}
	}
	return "YAML: " + s
}
