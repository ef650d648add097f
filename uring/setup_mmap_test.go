//go:build !giouring

package uring

import (
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestMmapLayout checks the three mappings of the default setup against
// /proc/self/maps and the ring fields against the mappings, once with the
// single SQ+CQ mapping this kernel offers and once with a separate CQ ring
// mapping (the pre-5.4 path).
func TestMmapLayout(t *testing.T) {
	page := uintptr(unix.Getpagesize())
	for _, separate := range []bool{false, true} {
		for _, flags := range []uint32{0, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SQE128 | IORING_SETUP_CQE32} {
			name := SetupFlagsString(flags)
			if separate {
				name += "/separate"
			}
			t.Run(name, func(t *testing.T) {
				runtime.LockOSThread()
				r, err := openRingMapped(64, 0, flags, separate)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				if r.Features()&IORING_FEAT_SINGLE_MMAP == 0 {
					t.Fatal("kernel lacks IORING_FEAT_SINGLE_MMAP")
				}
				m := r.mem
				if separate != (m.cqRing.p != nil) {
					t.Fatalf("separate=%v but cq mapping %v", separate, m.cqRing.p)
				}
				cqReg := m.sqRing
				if separate {
					cqReg = m.cqRing
				}
				maps := ioUringMaps(t)
				for _, rg := range []region{m.sqRing, m.cqRing, m.sqes} {
					if rg.p == nil {
						continue
					}
					found := false
					for _, mp := range maps {
						if mp.start == uintptr(rg.p) && mp.end-mp.start == (rg.n+page-1)&^(page-1) {
							found = true
						}
					}
					if !found {
						t.Errorf("region %#x+%d not in /proc/self/maps: %x", uintptr(rg.p), rg.n, maps)
					}
				}
				in := func(what string, p unsafe.Pointer, size uintptr, rg region) {
					if uintptr(p) < uintptr(rg.p) || uintptr(p)+size > uintptr(rg.p)+rg.n {
						t.Errorf("%s at %#x+%d outside %#x+%d", what, uintptr(p), size, uintptr(rg.p), rg.n)
					}
				}
				for what, p := range map[string]*uint32{"sq head": r.sq.head, "sq tail": r.sq.tail,
					"sq flags": r.sq.flags, "sq dropped": r.sq.dropped} {
					in(what, unsafe.Pointer(p), 4, m.sqRing)
				}
				for what, p := range map[string]*uint32{"cq head": r.cq.head, "cq tail": r.cq.tail,
					"cq flags": r.cq.flags, "cq overflow": r.cq.overflow} {
					in(what, unsafe.Pointer(p), 4, cqReg)
				}
				in("cqes", r.cq.cqes, uintptr(r.CQEntries())*uintptr(r.CQESize()), cqReg)
				if r.sq.sqes != m.sqes.p || m.sqes.n != uintptr(r.SQEntries())*uintptr(r.SQESize()) {
					t.Errorf("sqes %#x+%d, entries %d of %d bytes", uintptr(m.sqes.p), m.sqes.n, r.SQEntries(), r.SQESize())
				}
				nopLaps(t, r, 2)
			})
		}
	}
}
