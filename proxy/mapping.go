package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultBindHost is the listen host of a mapping written without a bind
// part ("8080:host:80"). Like ssh -L without GatewayPorts, a forward is only
// reachable from this machine unless the user asks for more.
const DefaultBindHost = "localhost"

// mappingSyntax is the shape every mapping error points the user back to.
const mappingSyntax = "[bind:]port:host:hostport"

// Mapping is one forward: accept on BindHost:BindPort, connect to
// Host:HostPort.
//
// BindHost is "" for all interfaces (written "*" or left empty before the
// first colon, as in "*:8080:host:80" or ":8080:host:80"), DefaultBindHost
// when the bind part is omitted, otherwise a host name or an IP literal
// (IPv6 without brackets). BindPort 0 asks the kernel for an ephemeral port;
// HostPort is always 1..65535. Host is resolved when a connection is made,
// not when the mapping is parsed, so a name that moves is followed.
type Mapping struct {
	BindHost string
	BindPort int
	Host     string
	HostPort int
	BindUnix string // listen on this Unix socket instead of BindHost:BindPort
	HostUnix string // forward to this Unix socket instead of Host:HostPort

	// The rest comes from a config file (or code); the ssh -L form sets
	// none of it.
	Name        string      // the label in logs and metrics; default String()
	Upstreams   []Target    // when set, the targets instead of Host:HostPort
	Balance     string      // one of Balances; "" = round-robin
	Health      HealthCheck // active checks; zero = none
	SendProxy   string      // "", "v1" or "v2": PROXY header sent to the upstream
	AcceptProxy bool        // read a PROXY header (v1 or v2) from each client first
}

// Target is one upstream: Host:Port over TCP, or the Unix socket Unix.
type Target struct {
	Host string
	Port int
	Unix string
}

func (t Target) String() string {
	if t.Unix != "" {
		return "unix:" + t.Unix
	}
	return net.JoinHostPort(t.Host, strconv.Itoa(t.Port))
}

// Targets are the upstreams of m: Upstreams, or the one Host:HostPort.
func (m Mapping) Targets() []Target {
	if len(m.Upstreams) > 0 {
		return m.Upstreams
	}
	if m.HostUnix != "" {
		return []Target{{Unix: m.HostUnix}}
	}
	return []Target{{Host: m.Host, Port: m.HostPort}}
}

// Label is m's name in logs and metrics.
func (m Mapping) Label() string {
	if m.Name != "" {
		return m.Name
	}
	return m.String()
}

// MappingError says which mapping was rejected and why.
type MappingError struct {
	Input  string // the mapping as given
	Reason string // what was wrong, naming the offending part
}

func (e *MappingError) Error() string {
	return fmt.Sprintf("mapping %q: %s", e.Input, e.Reason)
}

// ParseMapping parses an ssh -L style forward: "port:host:hostport" or
// "bind:port:host:hostport". IPv6 literals go in brackets
// ("[::1]:8080:[2001:db8::1]:80"), a bind of "*" or "" means all
// interfaces, and an omitted bind means DefaultBindHost. Ports are decimal;
// the bind port may be 0 (ephemeral), the target port may not.
func ParseMapping(s string) (Mapping, error) {
	fail := func(format string, args ...any) (Mapping, error) {
		return Mapping{}, &MappingError{Input: s, Reason: fmt.Sprintf(format, args...)}
	}
	if s == "" {
		return fail("empty, want %s", mappingSyntax)
	}
	// ssh -L's Unix socket forms: local_socket:host:hostport,
	// [bind:]port:remote_socket and local_socket:remote_socket. A socket
	// is a path starting with '/'; it ends at the next ':'.
	var m Mapping
	rest := s
	if isUnixPath(rest) {
		path, after, ok := strings.Cut(rest, ":")
		if !ok || after == "" {
			return fail("local socket %q without a target, want %s:host:hostport or %s:/remote.sock", path, path, path)
		}
		m.BindUnix, rest = path, after
	}
	unixTarget := func(p string) (Mapping, error) {
		if strings.Contains(p, ":") {
			return fail("remote socket %q: a ':' in a socket path is not supported", p)
		}
		m.HostUnix = p
		return m, nil
	}
	if m.BindUnix != "" {
		if isUnixPath(rest) {
			return unixTarget(rest)
		}
		t, err := ParseTarget(rest)
		if err != nil {
			return fail("target %q after the local socket: %v", rest, err)
		}
		m.Host, m.HostPort = t.Host, t.Port
		return m, nil
	}
	if i := strings.Index(rest, ":/"); i >= 0 {
		if err := parseListen(rest[:i], &m); err != nil {
			return fail("listen part %q: %v", rest[:i], err)
		}
		return unixTarget(rest[i+1:])
	}
	parts, err := splitMapping(s)
	if err != nil {
		return fail("%v", err)
	}
	var bind, bindPort, host, hostPort mappingPart
	switch len(parts) {
	case 3:
		bindPort, host, hostPort = parts[0], parts[1], parts[2]
		m.BindHost = DefaultBindHost
	case 4:
		bind, bindPort, host, hostPort = parts[0], parts[1], parts[2], parts[3]
		switch {
		case !bind.bracketed && (bind.text == "" || bind.text == "*"):
			m.BindHost = ""
		default:
			if m.BindHost, err = checkHost(bind); err != nil {
				return fail("bind address %s", err)
			}
		}
	default:
		if len(parts) > 4 {
			return fail("too many colon-separated parts, want %s (IPv6 literals need brackets: [2001:db8::1])", mappingSyntax)
		}
		return fail("%d colon-separated parts, want %s", len(parts), mappingSyntax)
	}
	if m.BindPort, err = checkPort(bindPort, 0); err != nil {
		return fail("listen port %s", err)
	}
	if m.Host, err = checkHost(host); err != nil {
		return fail("target host %s", err)
	}
	if m.HostPort, err = checkPort(hostPort, 1); err != nil {
		return fail("target port %s", err)
	}
	return m, nil
}

// String renders m so that ParseMapping(m.String()) == m: the bind part is
// always written (so DefaultBindHost survives), all interfaces as "*", and
// IPv6 literals in brackets.
func (m Mapping) String() string {
	if m.BindUnix != "" || m.HostUnix != "" {
		l := m.BindUnix
		if l == "" {
			l = m.bindPart() + ":" + strconv.Itoa(m.BindPort)
		}
		t := m.HostUnix
		if t == "" {
			t = bracketIfIPv6(m.Host) + ":" + strconv.Itoa(m.HostPort)
		}
		return l + ":" + t
	}
	return m.bindPart() + ":" + strconv.Itoa(m.BindPort) + ":" + bracketIfIPv6(m.Host) + ":" + strconv.Itoa(m.HostPort)
}

func (m Mapping) bindPart() string {
	bind := "*"
	if m.BindHost != "" {
		bind = bracketIfIPv6(m.BindHost)
	}
	return bind
}

// isUnixPath says whether s names a Unix socket: an absolute path.
func isUnixPath(s string) bool { return strings.HasPrefix(s, "/") }

// BindAddr is the listen address as "host:port"; all interfaces come out as
// ":port", which net.Listen takes for the unspecified address.
func (m Mapping) BindAddr() string {
	if m.BindUnix != "" {
		return m.BindUnix
	}
	return net.JoinHostPort(m.BindHost, strconv.Itoa(m.BindPort))
}

// Target is the upstream address as "host:port", still unresolved; with
// several upstreams, their names joined by commas.
func (m Mapping) Target() string {
	ts := m.Targets()
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return strings.Join(s, ",")
}

func bracketIfIPv6(host string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

// mappingPart is one colon-separated field; bracketed remembers "[...]" so
// only bracketed fields may hold an IPv6 literal.
type mappingPart struct {
	text      string
	bracketed bool
}

func (p mappingPart) quoted() string {
	if p.bracketed {
		return strconv.Quote("[" + p.text + "]")
	}
	return strconv.Quote(p.text)
}

// splitMapping splits on colons outside brackets. A bracket must open a
// field and close it, so "a[b]" and "[::1]x" are rejected here rather than
// producing a field nobody can name.
func splitMapping(s string) ([]mappingPart, error) {
	var parts []mappingPart
	for i := 0; ; {
		var p mappingPart
		if i < len(s) && s[i] == '[' {
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("unclosed '[' at offset %d", i)
			}
			p = mappingPart{text: s[i+1 : i+end], bracketed: true}
			i += end + 1
			if i < len(s) && s[i] != ':' {
				return nil, fmt.Errorf("%q after ']' at offset %d, want ':'", s[i], i)
			}
		} else {
			end := strings.IndexByte(s[i:], ':')
			if end < 0 {
				end = len(s) - i
			}
			p = mappingPart{text: s[i : i+end]}
			if j := strings.IndexAny(p.text, "[]"); j >= 0 {
				return nil, fmt.Errorf("%q at offset %d: brackets must enclose a whole IPv6 address", p.text[j], i+j)
			}
			i += end
		}
		parts = append(parts, p)
		if i >= len(s) {
			return parts, nil
		}
		i++ // the ':' separator
		if len(parts) > 4 {
			// Already too many; do not build a huge slice for junk.
			return parts, nil
		}
		if i == len(s) {
			// A trailing colon leaves an empty last field.
			return append(parts, mappingPart{}), nil
		}
	}
}

// checkPort parses a decimal port in min..65535.
func checkPort(p mappingPart, min int) (int, error) {
	if p.bracketed {
		return 0, fmt.Errorf("%s: a port cannot be bracketed", p.quoted())
	}
	if p.text == "" {
		return 0, fmt.Errorf("is empty, want a number %d..65535", min)
	}
	if len(p.text) > 5 || strings.Trim(p.text, "0123456789") != "" {
		return 0, fmt.Errorf("%s is not a number %d..65535", p.quoted(), min)
	}
	n, _ := strconv.Atoi(p.text) // at most 5 digits: cannot fail
	if n < min || n > 65535 {
		return 0, fmt.Errorf("%s is out of range %d..65535", p.quoted(), min)
	}
	return n, nil
}

// checkHost accepts a host name, an IPv4 literal, or a bracketed IPv6
// literal (optionally with a zone, "[fe80::1%eth0]"), and returns it
// without brackets.
func checkHost(p mappingPart) (string, error) {
	if p.bracketed {
		addr, zone, _ := strings.Cut(p.text, "%")
		ip, err := netip.ParseAddr(addr)
		if err != nil || !ip.Is6() {
			return "", fmt.Errorf("%s is not an IPv6 literal (brackets are only for IPv6)", p.quoted())
		}
		if strings.Contains(p.text, "%") && (zone == "" || !isHostNameChars(zone)) {
			return "", fmt.Errorf("%s has a bad zone %q", p.quoted(), zone)
		}
		return p.text, nil
	}
	if p.text == "" {
		return "", fmt.Errorf("is empty")
	}
	if !isHostNameChars(p.text) || p.text[0] == '-' || p.text[0] == '.' {
		return "", fmt.Errorf("%s is not a host name or IPv4 address", p.quoted())
	}
	if len(p.text) > 253 {
		return "", fmt.Errorf("%s is longer than 253 characters", p.quoted())
	}
	return p.text, nil
}

// isHostNameChars allows letters, digits, '-', '.', and '_' (seen in real
// internal names even though DNS forbids it in host names).
func isHostNameChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		default:
			return false
		}
	}
	return true
}
