package proxy

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseMappingAccepts(t *testing.T) {
	tests := []struct {
		in         string
		want       Mapping
		bind, dest string
	}{
		{"8080:example.com:80", mp("localhost", 8080, "example.com", 80), "localhost:8080", "example.com:80"},
		{"127.0.0.1:8080:10.0.0.1:80", mp("127.0.0.1", 8080, "10.0.0.1", 80), "127.0.0.1:8080", "10.0.0.1:80"},
		{"*:8080:backend:443", mp("", 8080, "backend", 443), ":8080", "backend:443"},
		{":8080:backend:443", mp("", 8080, "backend", 443), ":8080", "backend:443"},
		{"[::1]:8080:[2001:db8::1]:80", mp("::1", 8080, "2001:db8::1", 80), "[::1]:8080", "[2001:db8::1]:80"},
		{"8080:[::1]:80", mp("localhost", 8080, "::1", 80), "localhost:8080", "[::1]:80"},
		{"[fe80::1%eth0]:1:[fe80::2%lo]:65535", mp("fe80::1%eth0", 1, "fe80::2%lo", 65535), "[fe80::1%eth0]:1", "[fe80::2%lo]:65535"},
		{"0:db_1.internal:5432", mp("localhost", 0, "db_1.internal", 5432), "localhost:0", "db_1.internal:5432"},
		{"00080:h:0443", mp("localhost", 80, "h", 443), "localhost:80", "h:443"},
	}
	for _, tt := range tests {
		got, err := ParseMapping(tt.in)
		if err != nil {
			t.Errorf("ParseMapping(%q): %v", tt.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseMapping(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		if got.BindAddr() != tt.bind || got.Target() != tt.dest {
			t.Errorf("ParseMapping(%q): BindAddr %q Target %q, want %q %q", tt.in, got.BindAddr(), got.Target(), tt.bind, tt.dest)
		}
		again, err := ParseMapping(got.String())
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Errorf("round trip of %q via %q = %+v, %v", tt.in, got.String(), again, err)
		}
	}
}

func TestMappingString(t *testing.T) {
	for _, tt := range []struct {
		m    Mapping
		want string
	}{
		{mp("localhost", 8080, "example.com", 80), "localhost:8080:example.com:80"},
		{mp("", 8080, "h", 80), "*:8080:h:80"},
		{mp("::1", 0, "2001:db8::1", 80), "[::1]:0:[2001:db8::1]:80"},
	} {
		m, want := tt.m, tt.want
		if got := m.String(); got != want {
			t.Errorf("%+v.String() = %q, want %q", m, got, want)
		}
	}
}

// Each rejected mapping must name the input and say what was wrong; wantIn
// is a piece of the message that pins down which part was blamed.
func TestParseMappingRejects(t *testing.T) {
	tests := []struct{ in, wantIn string }{
		{"", "want [bind:]port:host:hostport"},
		{"8080", "1 colon-separated parts, want [bind:]port:host:hostport"},
		{"8080:host", "2 colon-separated parts, want [bind:]port:host:hostport"},
		{"a:1:b:2:c", "too many colon-separated parts"},
		{"::1:8080:host:80", "too many colon-separated parts"},
		{"8080:2001:db8::1:80", "IPv6 literals need brackets"},
		{"x:host:80", `listen port "x" is not a number 0..65535`},
		{"65536:host:80", `listen port "65536" is out of range`},
		{"-1:host:80", `listen port "-1" is not a number`},
		{"+80:host:80", `listen port "+80" is not a number`},
		{"123456:host:80", `listen port "123456" is not a number`},
		{":host:80", "listen port is empty"},
		{"8080:host:0", `target port "0" is out of range 1..65535`},
		{"8080:host:http", `target port "http" is not a number 1..65535`},
		{"8080:host:", "target port is empty"},
		{"8080::80", "target host is empty"},
		{"8080:ho st:80", `target host "ho st" is not a host name`},
		{"8080:-host:80", `target host "-host" is not a host name`},
		{"8080:*:80", `target host "*" is not a host name`},
		{"bad/bind:8080:host:80", `bind address "bad/bind" is not a host name`},
		{"8080:[127.0.0.1]:80", `target host "[127.0.0.1]" is not an IPv6 literal`},
		{"8080:[::1:80", "unclosed '['"},
		{"8080:[::1]x:80", `'x' after ']'`},
		{"8080:a[::1]:80", "brackets must enclose a whole IPv6 address"},
		{"8080:host]:80", "brackets must enclose"},
		{"[::1]:[80]:h:80", `listen port "[80]": a port cannot be bracketed`},
		{"8080:[fe80::1%]:80", "bad zone"},
		{"8080:" + strings.Repeat("a", 254) + ":80", "longer than 253"},
	}
	for _, tt := range tests {
		m, err := ParseMapping(tt.in)
		if err == nil {
			t.Errorf("ParseMapping(%q) = %+v, want an error containing %q", tt.in, m, tt.wantIn)
			continue
		}
		var me *MappingError
		if !errors.As(err, &me) || me.Input != tt.in {
			t.Errorf("ParseMapping(%q): error %v is not a *MappingError for this input", tt.in, err)
		}
		if !strings.HasPrefix(err.Error(), "mapping ") || !strings.Contains(err.Error(), tt.wantIn) {
			t.Errorf("ParseMapping(%q) error = %q, want it to contain %q", tt.in, err, tt.wantIn)
		}
	}
}

func FuzzParseMapping(f *testing.F) {
	for _, seed := range []string{
		"8080:example.com:80",
		"127.0.0.1:8080:10.0.0.1:80",
		"*:0:h:1",
		":8080:h:80",
		"[::1]:8080:[2001:db8::1]:80",
		"[fe80::1%eth0]:1:[::ffff:1.2.3.4]:65535",
		"8080:[::1:80",
		"8080:host",
		"a:b:c:d:e:f",
		"[]:[]:[]:[]",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		m, err := ParseMapping(in)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "mapping ") {
				t.Fatalf("ParseMapping(%q) error %q does not name the mapping", in, err)
			}
			return
		}
		if m.BindPort < 0 || m.BindPort > 65535 || m.HostPort < 1 || m.HostPort > 65535 || m.Host == "" {
			t.Fatalf("ParseMapping(%q) accepted out-of-range %+v", in, m)
		}
		again, err := ParseMapping(m.String())
		if err != nil {
			t.Fatalf("ParseMapping(%q) = %+v, but its String %q is rejected: %v", in, m, m.String(), err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("ParseMapping(%q) = %+v, round trip via %q = %+v", in, m, m.String(), again)
		}
	})
}

// mp is a Mapping of an ssh -L forward.
func mp(bindHost string, bindPort int, host string, hostPort int) Mapping {
	return Mapping{BindHost: bindHost, BindPort: bindPort, Host: host, HostPort: hostPort}
}
