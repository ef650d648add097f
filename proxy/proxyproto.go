package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt) puts the client's
// address in front of the stream, so a server behind a proxy can see it.
// Version 1 is one text line of at most 107 bytes; version 2 a binary
// header: a 12-byte signature, version and command, family, a length, the
// addresses, and optional TLVs (which uioproxy skips).

var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

const (
	proxyV1MaxLen = 107
	proxyV2HdrLen = 16
	proxyV2MaxLen = proxyV2HdrLen + 65535 // the length field is 16 bits
)

// errHeaderIncomplete says parseProxyHeader needs more bytes.
var errHeaderIncomplete = errors.New("PROXY header incomplete")

// parseProxyHeader parses a PROXY protocol header (v1 or v2) at the start
// of b. It returns the header's length and the source and destination it
// carries; these are zero for v1 UNKNOWN, v2 LOCAL and families other than
// TCP over IPv4/IPv6, in which case the connection's own addresses stand.
// It returns errHeaderIncomplete while b could still become a valid
// header, and otherwise an error saying what is wrong. It never reads
// beyond the header: the bytes after it are the client's stream.
func parseProxyHeader(b []byte) (n int, src, dst netip.AddrPort, err error) {
	switch {
	case len(b) == 0:
		return 0, src, dst, errHeaderIncomplete
	case b[0] == '\r':
		k := min(len(b), len(proxyV2Sig))
		if !bytes.Equal(b[:k], proxyV2Sig[:k]) {
			return 0, src, dst, errors.New("not a PROXY protocol header (bad v2 signature)")
		}
		return parseProxyV2(b)
	case b[0] == 'P':
		k := min(len(b), 6)
		if string(b[:k]) != "PROXY "[:k] {
			return 0, src, dst, errors.New(`not a PROXY protocol header (want "PROXY " or the v2 signature)`)
		}
		return parseProxyV1(b)
	}
	return 0, src, dst, fmt.Errorf("not a PROXY protocol header (first byte %#02x)", b[0])
}

func parseProxyV1(b []byte) (n int, src, dst netip.AddrPort, err error) {
	end := bytes.Index(b[:min(len(b), proxyV1MaxLen)], []byte("\r\n"))
	if end < 0 {
		if len(b) >= proxyV1MaxLen {
			return 0, src, dst, fmt.Errorf("PROXY v1 header without CRLF in its first %d bytes", proxyV1MaxLen)
		}
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			return 0, src, dst, errors.New("PROXY v1 header ends in a bare LF, want CRLF")
		}
		return 0, src, dst, errHeaderIncomplete
	}
	line := string(b[:end])
	n = end + 2
	f := strings.Split(line, " ")
	if len(f) >= 2 && f[1] == "UNKNOWN" {
		return n, src, dst, nil // the rest of the line is to be ignored
	}
	if len(f) != 6 {
		return 0, src, dst, fmt.Errorf("PROXY v1 header %q: want PROXY TCP4|TCP6 src dst sport dport", line)
	}
	var want6 bool
	switch f[1] {
	case "TCP4":
	case "TCP6":
		want6 = true
	default:
		return 0, src, dst, fmt.Errorf("PROXY v1 header: protocol %q, want TCP4, TCP6 or UNKNOWN", f[1])
	}
	ips := [2]netip.Addr{}
	for i, s := range f[2:4] {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Zone() != "" || ip.Is6() != want6 {
			return 0, src, dst, fmt.Errorf("PROXY v1 header: %q is not an %s address", s, f[1][:3]+map[bool]string{false: "v4", true: "v6"}[want6])
		}
		ips[i] = ip
	}
	var ports [2]uint16
	for i, s := range f[4:6] {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil || s == "" || (len(s) > 1 && s[0] == '0') {
			return 0, src, dst, fmt.Errorf("PROXY v1 header: port %q is not a number 0..65535", s)
		}
		ports[i] = uint16(p)
	}
	return n, netip.AddrPortFrom(ips[0], ports[0]), netip.AddrPortFrom(ips[1], ports[1]), nil
}

func parseProxyV2(b []byte) (n int, src, dst netip.AddrPort, err error) {
	if len(b) < proxyV2HdrLen {
		return 0, src, dst, errHeaderIncomplete
	}
	verCmd, fam := b[12], b[13]
	if verCmd>>4 != 2 {
		return 0, src, dst, fmt.Errorf("PROXY v2 header: version %d, want 2", verCmd>>4)
	}
	cmd := verCmd & 0xf
	if cmd > 1 {
		return 0, src, dst, fmt.Errorf("PROXY v2 header: command %d, want LOCAL (0) or PROXY (1)", cmd)
	}
	length := int(binary.BigEndian.Uint16(b[14:16]))
	n = proxyV2HdrLen + length
	if len(b) < n {
		return 0, src, dst, errHeaderIncomplete
	}
	body := b[proxyV2HdrLen:n]
	if cmd == 0 {
		return n, src, dst, nil // LOCAL: the balancer's own connection (a health check)
	}
	switch fam {
	case 0x11: // TCP over IPv4
		if len(body) < 12 {
			return 0, src, dst, fmt.Errorf("PROXY v2 header: %d address bytes for TCP4, want at least 12", len(body))
		}
		s := netip.AddrFrom4([4]byte(body[0:4]))
		d := netip.AddrFrom4([4]byte(body[4:8]))
		return n, netip.AddrPortFrom(s, binary.BigEndian.Uint16(body[8:10])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(body[10:12])), nil
	case 0x21: // TCP over IPv6
		if len(body) < 36 {
			return 0, src, dst, fmt.Errorf("PROXY v2 header: %d address bytes for TCP6, want at least 36", len(body))
		}
		s := netip.AddrFrom16([16]byte(body[0:16])).Unmap()
		d := netip.AddrFrom16([16]byte(body[16:32])).Unmap()
		return n, netip.AddrPortFrom(s, binary.BigEndian.Uint16(body[32:34])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(body[34:36])), nil
	case 0x00, 0x12, 0x22, 0x31, 0x32: // UNSPEC, UDP, Unix: keep the connection's addresses
		return n, src, dst, nil
	}
	return 0, src, dst, fmt.Errorf("PROXY v2 header: unknown address family/protocol %#02x", fam)
}

// proxyHeader builds the header a mapping with SendProxy sends to its
// upstream: the client's address and the one it connected to. Addresses
// that are not both IPv4 or both IPv6 (a Unix listener) go as v1 UNKNOWN
// or v2 UNSPEC, which tell the server to use the connection's own.
func proxyHeader(version string, src, dst netip.AddrPort) []byte {
	ok := src.IsValid() && dst.IsValid() && src.Addr().Is4() == dst.Addr().Is4()
	if version == "v1" {
		if !ok {
			return []byte("PROXY UNKNOWN\r\n")
		}
		proto := "TCP4"
		if src.Addr().Is6() {
			proto = "TCP6"
		}
		return fmt.Appendf(nil, "PROXY %s %s %s %d %d\r\n", proto, src.Addr(), dst.Addr(), src.Port(), dst.Port())
	}
	h := append([]byte(nil), proxyV2Sig...)
	h = append(h, 0x21) // version 2, PROXY
	switch {
	case !ok:
		return append(h, 0x00, 0, 0)
	case src.Addr().Is4():
		h = append(h, 0x11, 0, 12)
		s, d := src.Addr().As4(), dst.Addr().As4()
		h = append(append(h, s[:]...), d[:]...)
	default:
		h = append(h, 0x21, 0, 36)
		s, d := src.Addr().As16(), dst.Addr().As16()
		h = append(append(h, s[:]...), d[:]...)
	}
	h = binary.BigEndian.AppendUint16(h, src.Port())
	return binary.BigEndian.AppendUint16(h, dst.Port())
}
