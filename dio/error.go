package dio

import (
	"fmt"
)

// Error records a failed file operation: what was done, on which file, at
// which offset. It wraps the cause (usually a unix.Errno), so errors.Is
// works.
type Error struct {
	Op   string // "open", "readat", "writeat", "append", "sync", "close", ...
	Path string
	Off  int64 // file offset of the failed I/O; -1 when not applicable
	Len  int   // length of the failed I/O; 0 when not applicable
	Err  error
}

func (e *Error) Error() string {
	if e.Off < 0 {
		return fmt.Sprintf("dio: %s %s: %v", e.Op, e.Path, e.Err)
	}
	return fmt.Sprintf("dio: %s %s at offset %d (%d bytes): %v", e.Op, e.Path, e.Off, e.Len, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }
