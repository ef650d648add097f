//go:build cgo

package abuse

import (
	"reflect"
	"testing"

	"github.com/userland-io/uio/blockdev/abuse/internal/cabi"
)

// TestLayoutMatchesCHeader compares every mirrored struct, field by field
// (offset and size, in declaration order), with the C layout of
// kmod/include/uapi/linux/abuse.h as compiled by cgo.
func TestLayoutMatchesCHeader(t *testing.T) {
	goTypes := map[string]any{
		"dev_config":  DevConfig{},
		"dev_remove":  DevRemove{},
		"queue_setup": QueueSetup{},
		"request":     Request{},
		"completion":  Completion{},
		"batch":       Batch{},
		"copy":        Copy{},
	}
	cs := cabi.Structs()
	if len(cs) != len(goTypes) {
		t.Fatalf("C has %d structs, Go mirrors %d", len(cs), len(goTypes))
	}
	for name, v := range goTypes {
		c, ok := cs[name]
		if !ok {
			t.Errorf("struct abuse_%s: not in C header", name)
			continue
		}
		gt := reflect.TypeOf(v)
		if gt.Size() != c.Size {
			t.Errorf("struct abuse_%s: C size %d, Go %s size %d", name, c.Size, gt.Name(), gt.Size())
		}
		if gt.NumField() != len(c.Fields) {
			t.Errorf("struct abuse_%s: C has %d fields, Go %d", name, len(c.Fields), gt.NumField())
			continue
		}
		for i, cf := range c.Fields {
			gf := gt.Field(i)
			if gf.Offset != cf.Offset || gf.Type.Size() != cf.Size {
				t.Errorf("abuse_%s.%s (C off %d size %d) vs %s.%s (Go off %d size %d)",
					name, cf.Name, cf.Offset, cf.Size, gt.Name(), gf.Name, gf.Offset, gf.Type.Size())
			}
		}
	}
}

func TestIoctlNumbersMatchCHeader(t *testing.T) {
	goNums := map[string]uintptr{
		"ABUSE_CTL_ADD":            IoctlCtlAdd,
		"ABUSE_CTL_ATTACH":         IoctlCtlAttach,
		"ABUSE_CTL_REMOVE":         IoctlCtlRemove,
		"ABUSE_CTL_QUEUE_FD":       IoctlCtlQueueFd,
		"ABUSE_QUEUE_COMMIT_FETCH": IoctlQueueCommitFetch,
		"ABUSE_QUEUE_COPY":         IoctlQueueCopy,
	}
	for name, c := range cabi.Ioctls() {
		if g, ok := goNums[name]; !ok || g != c {
			t.Errorf("%s: C %#x, Go %#x (present %v)", name, c, g, ok)
		}
	}
}

func TestConstantsMatchCHeader(t *testing.T) {
	goConsts := map[string]int64{
		"ABUSE_PROTOCOL_VERSION":     ProtocolVersion,
		"ABUSE_MAX_DEVICES":          MaxDevices,
		"ABUSE_MAX_QUEUES":           MaxQueues,
		"ABUSE_MAX_DEPTH":            MaxDepth,
		"ABUSE_MIN_IO_BYTES":         MinIOBytes,
		"ABUSE_MAX_IO_BYTES":         MaxIOBytes,
		"ABUSE_DEF_IO_BYTES":         DefIOBytes,
		"ABUSE_DEF_DEPTH":            DefDepth,
		"ABUSE_MAX_BATCH":            MaxBatch,
		"ABUSE_MAX_RECONNECT_MS":     MaxReconnectMs,
		"ABUSE_DEF_IO_TIMEOUT_MS":    DefIOTimeoutMs,
		"ABUSE_MIN_IO_TIMEOUT_MS":    MinIOTimeoutMs,
		"ABUSE_MAX_IO_TIMEOUT_MS":    MaxIOTimeoutMs,
		"ABUSE_MAX_SIZE":             MaxSize,
		"ABUSE_MAX_WAIT_MS":          MaxWaitMs,
		"ABUSE_MAX_SPIN_US":          MaxSpinUs,
		"ABUSE_FEAT_USER_COPY":       FeatUserCopy,
		"ABUSE_FEAT_WAIT":            FeatWait,
		"ABUSE_FEAT_ALL":             FeatUserCopy | FeatWait,
		"ABUSE_QUEUE_F_USER_COPY":    QueueUserCopy,
		"ABUSE_BATCH_F_WAIT":         BatchWait,
		"ABUSE_DEV_F_READ_ONLY":      DevReadOnly,
		"ABUSE_DEV_F_WRITE_CACHE":    DevWriteCache,
		"ABUSE_DEV_F_FUA":            DevFUA,
		"ABUSE_DEV_F_TIMEOUT_DEAD":   DevTimeoutDead,
		"ABUSE_DEV_F_ALL":            DevReadOnly | DevWriteCache | DevFUA | DevTimeoutDead,
		"ABUSE_REMOVE_F_FORCE":       RemoveForce,
		"ABUSE_OP_READ":              OpRead,
		"ABUSE_OP_WRITE":             OpWrite,
		"ABUSE_OP_FLUSH":             OpFlush,
		"ABUSE_OP_DISCARD":           OpDiscard,
		"ABUSE_OP_WRITE_ZEROES":      OpWriteZeroes,
		"ABUSE_OP_MASK":              OpMask,
		"ABUSE_F_FUA":                FlagFUA,
		"ABUSE_F_PREFLUSH":           FlagPreflush,
		"ABUSE_F_NOUNMAP":            FlagNoUnmap,
		"ABUSE_F_SYNC":               FlagSync,
		"ABUSE_F_META":               FlagMeta,
		"ABUSE_F_PRIO":               FlagPrio,
		"ABUSE_F_RAHEAD":             FlagRahead,
		"ABUSE_F_BACKGROUND":         FlagBackground,
		"ABUSE_F_NOWAIT":             FlagNoWait,
		"ABUSE_F_IDLE":               FlagIdle,
		"ABUSE_F_FAILFAST_DEV":       FlagFailfastDev,
		"ABUSE_F_FAILFAST_TRANSPORT": FlagFailfastTransport,
		"ABUSE_F_FAILFAST_DRIVER":    FlagFailfastDriver,
	}
	cc := cabi.Constants()
	for name, c := range cc {
		if g, ok := goConsts[name]; !ok || g != c {
			t.Errorf("%s: C %d, Go %d (present %v)", name, c, g, ok)
		}
	}
	if len(cc) != len(goConsts) {
		t.Errorf("C lists %d constants, Go %d", len(cc), len(goConsts))
	}
}
