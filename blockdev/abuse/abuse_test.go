package abuse

import (
	"testing"
	"unsafe"
)

// TestSizes pins the ABI sizes independently of cgo (runs with CGO_ENABLED=0 too).
func TestSizes(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"DevConfig", unsafe.Sizeof(DevConfig{}), 80},
		{"DevRemove", unsafe.Sizeof(DevRemove{}), 16},
		{"QueueSetup", unsafe.Sizeof(QueueSetup{}), 40},
		{"Request", unsafe.Sizeof(Request{}), 40},
		{"Completion", unsafe.Sizeof(Completion{}), 24},
		{"Batch", unsafe.Sizeof(Batch{}), 48},
	} {
		if c.got != c.want {
			t.Errorf("%s: size %d, want %d", c.name, c.got, c.want)
		}
	}
	if IoctlCtlAdd != 0xc050b901 {
		t.Errorf("ABUSE_CTL_ADD = %#x", IoctlCtlAdd)
	}
}
