//go:build giouring

package uring

import (
	"fmt"
	"reflect"
	"unsafe"

	"github.com/pawelgaczynski/giouring"
)

// giouring keeps the mmapped ring pointers (head, tail, mask, flags, ...) in
// unexported fields and offers no flush-without-enter, no single-enter
// submit+wait and no batch copy of CQEs. We need exactly those, so we read
// the pointers giouring set up through mirror structs with the identical
// layout. The layout is pinned by the go.mod version and verified at init
// (field names, offsets and types via reflect); if it ever differs, New
// refuses to run instead of corrupting memory.

type sqMirror struct {
	head        *uint32
	tail        *uint32
	ringMask    *uint32
	ringEntries *uint32
	flags       *uint32
	dropped     *uint32
	array       *uint32
	sqes        *giouring.SubmissionQueueEntry

	ringSize uint
	ringPtr  unsafe.Pointer

	sqeHead uint32
	sqeTail uint32

	pad [2]uint32
}

type cqMirror struct {
	head        *uint32
	tail        *uint32
	ringMask    *uint32
	ringEntries *uint32
	flags       *uint32
	overflow    *uint32
	cqes        *giouring.CompletionQueueEvent

	ringSize uint
	ringPtr  unsafe.Pointer

	pad [2]uint32
}

type ringMirror struct {
	sqRing      *sqMirror
	cqRing      *cqMirror
	flags       uint32
	ringFd      int
	features    uint32
	enterRingFd int
	intFlags    uint8
	pad         [3]uint8
	pad2        uint32
}

// layoutErr is non-nil when the giouring structs do not match the mirrors.
var layoutErr = checkLayouts()

func checkLayouts() error {
	pairs := []struct{ theirs, ours reflect.Type }{
		{reflect.TypeOf(giouring.Ring{}), reflect.TypeOf(ringMirror{})},
		{reflect.TypeOf(giouring.SubmissionQueue{}), reflect.TypeOf(sqMirror{})},
		{reflect.TypeOf(giouring.CompletionQueue{}), reflect.TypeOf(cqMirror{})},
	}
	for _, p := range pairs {
		if err := sameLayout(p.theirs, p.ours); err != nil {
			return err
		}
	}
	if unsafe.Sizeof(giouring.SubmissionQueueEntry{}) != 64 {
		return fmt.Errorf("uring: giouring SubmissionQueueEntry is %d bytes, want 64",
			unsafe.Sizeof(giouring.SubmissionQueueEntry{}))
	}
	if unsafe.Sizeof(giouring.CompletionQueueEvent{}) != 16 {
		return fmt.Errorf("uring: giouring CompletionQueueEvent is %d bytes, want 16",
			unsafe.Sizeof(giouring.CompletionQueueEvent{}))
	}
	return nil
}

func sameLayout(theirs, ours reflect.Type) error {
	bad := func(why string) error {
		return fmt.Errorf("uring: giouring.%s layout changed (%s); this package supports giouring v0.0.0-20230826085535-69588b89acb9 only", theirs.Name(), why)
	}
	if theirs.Size() != ours.Size() || theirs.NumField() != ours.NumField() {
		return bad("size or field count")
	}
	for i := 0; i < theirs.NumField(); i++ {
		a, b := theirs.Field(i), ours.Field(i)
		if a.Name != b.Name || a.Offset != b.Offset || a.Type.Size() != b.Type.Size() || a.Type.Kind() != b.Type.Kind() {
			return bad("field " + a.Name)
		}
	}
	return nil
}
