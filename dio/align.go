package dio

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dioAlign returns the offset/length alignment and the memory alignment
// direct I/O on fd needs. ok is false when the file system says the file
// cannot do direct I/O at all.
//
// statx(STATX_DIOALIGN) (Linux 6.1+) is asked first. Where the file system
// does not answer it, the logical block size of the underlying block
// device is used (/sys/dev/block/MAJ:MIN), then the file system block size
// from fstatfs, which is never too small.
func dioAlign(fd int) (bs, mem int, ok bool) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx); err == nil &&
		stx.Mask&unix.STATX_DIOALIGN != 0 {
		if stx.Dio_offset_align == 0 {
			return 0, 0, false
		}
		return int(max(stx.Dio_offset_align, 1)), int(max(stx.Dio_mem_align, 1)), true
	}
	mem = os.Getpagesize()
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil {
		if n := blockDevLBS(unix.Major(st.Dev), unix.Minor(st.Dev)); n > 0 {
			return n, mem, true
		}
	}
	var sf unix.Statfs_t
	if unix.Fstatfs(fd, &sf) == nil && sf.Bsize > 0 && sf.Bsize&(sf.Bsize-1) == 0 {
		return int(sf.Bsize), mem, true
	}
	return 4096, mem, true
}

// blockDevLBS reads the logical block size of a block device or of the
// disk a partition belongs to; 0 when unknown (tmpfs, overlay, ...).
func blockDevLBS(maj, min uint32) int {
	dir := fmt.Sprintf("/sys/dev/block/%d:%d", maj, min)
	for _, p := range []string{dir + "/queue/logical_block_size", dir + "/../queue/logical_block_size"} {
		if b, err := os.ReadFile(p); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 && n&(n-1) == 0 {
				return n
			}
		}
	}
	return 0
}

// aligned reports whether b starts at a multiple of a.
func aligned(b []byte, a int) bool {
	return len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%uintptr(a) == 0
}
