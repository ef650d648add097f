package blockdev

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a byte count with an optional binary suffix: 4096, 64k,
// 512M, 1G, 2T (K/M/G/T/P, case-insensitive, an optional "iB" or "B").
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(strings.ToLower(t), "b"), "i")
	shift := 0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			shift = 10
		case 'm':
			shift = 20
		case 'g':
			shift = 30
		case 't':
			shift = 40
		case 'p':
			shift = 50
		}
		if shift > 0 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 63)
	if err != nil || t == "" {
		return 0, fmt.Errorf("size %q: want a number with an optional K/M/G/T/P suffix", s)
	}
	if shift > 0 && v > (1<<63-1)>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(v << shift), nil
}
