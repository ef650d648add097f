// Package ublk is a small Go binding to the kernel's ublk driver
// (drivers/block/ublk_drv.c, Linux 6.0+; uapi include/uapi/linux/ublk_cmd.h):
// the numbers, the byte layouts of its structs and the mmap/pread offsets.
// It issues no command itself: every ublk command is an io_uring
// IORING_OP_URING_CMD, which the caller submits on its own ring (blockdev
// does it on the uio engine). The control commands (ADD_DEV, SET_PARAMS,
// START_DEV, STOP_DEV, DEL_DEV, ...) go to ControlPath on a ring set up with
// 128-byte SQEs (their 32-byte CtrlCmd does not fit a 64-byte SQE); the I/O
// commands (FETCH_REQ, COMMIT_AND_FETCH_REQ) go to the device's char node
// /dev/ublkcN, one per tag, and fit a normal SQE.
//
// A server, in the order the kernel requires:
//
//	ADD_DEV (DevInfo: queues, depth, largest I/O, features)  -> /dev/ublkcN
//	SET_PARAMS (Params: size, block size, limits, cache)
//	open /dev/ublkcN once; mmap each queue's IODesc array (read-only)
//	FETCH_REQ for every tag of every queue, from that queue's thread
//	START_DEV (blocks until every tag is fetched)              -> /dev/ublkbN
//	... a FETCH completes with 0: IODesc[tag] names the request; serve it,
//	    then COMMIT_AND_FETCH_REQ with the result re-arms the tag ...
//	STOP_DEV (the kernel completes every armed tag with ResAbort)
//	close the char node, DEL_DEV (waits until the device is freed)
//
// Data moves one of two ways. By default the kernel copies WRITE data into
// the tag's buffer (IOCmd.Addr) before the FETCH completes and READ data
// out of it when COMMIT arrives. With FeatUserCopy (Linux 6.5+) the buffer
// address is 0 and the server moves the bytes itself with pread(2)/pwrite(2)
// on /dev/ublkcN at UserCopyOffset(queue, tag): so a READ can be written
// straight from wherever the data lives.
//
// Structs are encoded with explicit little-endian offsets that
// layout_test.go checks against the C header.
package ublk

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the control device (misc, root only).
const ControlPath = "/dev/ublk-control"

// CharPath is the char node a server opens (once) for device id.
func CharPath(id int) string { return fmt.Sprintf("/dev/ublkc%d", id) }

// BlockPath is the block device of device id.
func BlockPath(id int) string { return fmt.Sprintf("/dev/ublkb%d", id) }

// BlockName is the disk name of device id in /sys/block.
func BlockName(id int) string { return fmt.Sprintf("ublkb%d", id) }

// Control command numbers (UBLK_CMD_*). Kernels before 6.3 only take them
// raw ("legacy opcodes"); later ones take them ioctl-encoded (CtrlOp), and
// raw only with CONFIG_BLKDEV_UBLK_LEGACY_OPCODES.
const (
	CmdGetQueueAffinity = 0x01
	CmdGetDevInfo       = 0x02
	CmdAddDev           = 0x04
	CmdDelDev           = 0x05
	CmdStartDev         = 0x06
	CmdStopDev          = 0x07
	CmdSetParams        = 0x08
	CmdGetParams        = 0x09
	CmdGetFeatures      = 0x13 // Linux 6.5; ioctl-encoded only
)

// I/O command numbers (UBLK_IO_*).
const (
	IOFetchReq          = 0x20
	IOCommitAndFetchReq = 0x21
	IONeedGetData       = 0x22
)

// Sizes of the structs (bytes).
const (
	CtrlCmdSize = 32
	DevInfoSize = 64
	IODescSize  = 24
	IOCmdSize   = 16
	ParamsSize  = 60 // len, types, basic, discard: all this package sets
	FeaturesLen = 8  // UBLK_FEATURES_LEN
)

func ioc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | 'u'<<8 | nr }

const (
	iocWrite = 1
	iocRead  = 2
)

// CtrlOp is the command op of control command nr: the raw number, or the
// _IOR/_IOWR('u', nr, struct ublksrv_ctrl_cmd) encoding.
func CtrlOp(nr uint32, encoded bool) uint32 {
	if !encoded {
		return nr
	}
	switch nr {
	case CmdGetQueueAffinity, CmdGetDevInfo, CmdGetParams, CmdGetFeatures:
		return ioc(iocRead, nr, CtrlCmdSize)
	}
	return ioc(iocRead|iocWrite, nr, CtrlCmdSize)
}

// IOOp is the command op of I/O command nr, raw or
// _IOWR('u', nr, struct ublksrv_io_cmd).
func IOOp(nr uint32, encoded bool) uint32 {
	if !encoded {
		return nr
	}
	return ioc(iocRead|iocWrite, nr, IOCmdSize)
}

// Feature flags (UBLK_F_*, DevInfo.Flags and CmdGetFeatures).
const (
	FeatSupportZeroCopy     = 1 << 0
	FeatURingCmdCompInTask  = 1 << 1
	FeatNeedGetData         = 1 << 2
	FeatUserRecovery        = 1 << 3
	FeatUserRecoveryReissue = 1 << 4
	FeatUnprivilegedDev     = 1 << 5
	FeatCmdIoctlEncode      = 1 << 6
	FeatUserCopy            = 1 << 7 // Linux 6.5
	FeatZoned               = 1 << 8
	FeatUserRecoveryFailIO  = 1 << 9
)

// Device states (DevInfo.State).
const (
	StateDead     = 0
	StateLive     = 1
	StateQuiesced = 2
	StateFailIO   = 3
)

// Operations (bits 0..7 of IODesc.OpFlags).
const (
	OpRead        = 0
	OpWrite       = 1
	OpFlush       = 2
	OpDiscard     = 3
	OpWriteSame   = 4
	OpWriteZeroes = 5
	OpMask        = 0xff
)

// Request flags (bits 8.. of IODesc.OpFlags).
const (
	FlagFailfastDev       = 1 << 8
	FlagFailfastTransport = 1 << 9
	FlagFailfastDriver    = 1 << 10
	FlagMeta              = 1 << 11
	FlagFUA               = 1 << 13
	FlagNoUnmap           = 1 << 15
	FlagSwap              = 1 << 16
)

// Basic parameter attributes (UBLK_ATTR_*).
const (
	AttrReadOnly      = 1 << 0
	AttrRotational    = 1 << 1
	AttrVolatileCache = 1 << 2
	AttrFUA           = 1 << 3
)

// Parameter types (UBLK_PARAM_TYPE_*).
const (
	ParamBasic   = 1 << 0
	ParamDiscard = 1 << 1
	ParamDevt    = 1 << 2 // read-only: SET_PARAMS refuses it
	ParamZoned   = 1 << 3
)

// Limits and offsets.
const (
	MaxQueueDepth = 4096
	MaxQueues     = 4096
	// ResOK and ResAbort are the results of a FETCH/COMMIT_AND_FETCH
	// completion: a request is in IODesc[tag], or the tag is no longer
	// served (STOP_DEV, the daemon dying): do not re-arm it.
	ResOK       = 0
	ResAbort    = -int32(unix.ENODEV)
	ioBufOffset = 0x80000000
	ioBufBits   = 25
	tagBits     = 16
	qidOff      = ioBufBits + tagBits
	// MaxIOBytes is the largest request user copy can address (32 MiB).
	MaxIOBytes = 1 << ioBufBits
	// NoID asks ADD_DEV for the first free device id.
	NoID = ^uint32(0)
)

// CtrlCmd is struct ublksrv_ctrl_cmd, the payload of every control command.
type CtrlCmd struct {
	DevID   uint32
	QueueID uint16 // 0xffff when the command has no queue
	Len     uint16 // bytes at Addr
	Addr    uint64 // user buffer of the command (DevInfo, Params, ...)
	Data    uint64 // START_DEV: the server's pid
}

// Marshal encodes c for the SQE's command area.
func (c *CtrlCmd) Marshal() []byte {
	b := make([]byte, CtrlCmdSize)
	le.PutUint32(b[0:], c.DevID)
	le.PutUint16(b[4:], c.QueueID)
	le.PutUint16(b[6:], c.Len)
	le.PutUint64(b[8:], c.Addr)
	le.PutUint64(b[16:], c.Data)
	return b
}

// DevInfo is struct ublksrv_ctrl_dev_info, ADD_DEV's in/out argument.
type DevInfo struct {
	NrHWQueues    uint16
	QueueDepth    uint16
	State         uint16
	MaxIOBufBytes uint32
	DevID         uint32
	SrvPid        int32
	Flags         uint64 // FeatX requested; the kernel returns what it grants
	SrvFlags      uint64
	OwnerUID      uint32
	OwnerGID      uint32
}

// Marshal encodes d into a DevInfoSize buffer.
func (d *DevInfo) Marshal() []byte {
	b := make([]byte, DevInfoSize)
	le.PutUint16(b[0:], d.NrHWQueues)
	le.PutUint16(b[2:], d.QueueDepth)
	le.PutUint16(b[4:], d.State)
	le.PutUint32(b[8:], d.MaxIOBufBytes)
	le.PutUint32(b[12:], d.DevID)
	le.PutUint32(b[16:], uint32(d.SrvPid))
	le.PutUint64(b[24:], d.Flags)
	le.PutUint64(b[32:], d.SrvFlags)
	le.PutUint32(b[40:], d.OwnerUID)
	le.PutUint32(b[44:], d.OwnerGID)
	return b
}

// UnmarshalDevInfo decodes a DevInfoSize buffer.
func UnmarshalDevInfo(b []byte) DevInfo {
	return DevInfo{
		NrHWQueues: le.Uint16(b[0:]), QueueDepth: le.Uint16(b[2:]), State: le.Uint16(b[4:]),
		MaxIOBufBytes: le.Uint32(b[8:]), DevID: le.Uint32(b[12:]), SrvPid: int32(le.Uint32(b[16:])),
		Flags: le.Uint64(b[24:]), SrvFlags: le.Uint64(b[32:]), OwnerUID: le.Uint32(b[40:]), OwnerGID: le.Uint32(b[44:]),
	}
}

// Params is struct ublk_params with its basic and discard parts
// (struct ublk_param_basic, struct ublk_param_discard).
type Params struct {
	Types uint32 // ParamBasic | ParamDiscard
	// basic
	Attrs            uint32
	LogicalBSShift   uint8
	PhysicalBSShift  uint8
	IOOptShift       uint8
	IOMinShift       uint8
	MaxSectors       uint32 // at most DevInfo.MaxIOBufBytes >> 9
	ChunkSectors     uint32
	DevSectors       uint64
	VirtBoundaryMask uint64
	// discard (DISCARD and WRITE_ZEROES limits)
	DiscardAlignment      uint32
	DiscardGranularity    uint32 // must not be 0 with ParamDiscard
	MaxDiscardSectors     uint32
	MaxWriteZeroesSectors uint32
	MaxDiscardSegments    uint16 // 1 when MaxDiscardSectors > 0
}

// Marshal encodes p into a ParamsSize buffer, its len field set.
func (p *Params) Marshal() []byte {
	b := make([]byte, ParamsSize)
	le.PutUint32(b[0:], ParamsSize)
	le.PutUint32(b[4:], p.Types)
	le.PutUint32(b[8:], p.Attrs)
	b[12], b[13], b[14], b[15] = p.LogicalBSShift, p.PhysicalBSShift, p.IOOptShift, p.IOMinShift
	le.PutUint32(b[16:], p.MaxSectors)
	le.PutUint32(b[20:], p.ChunkSectors)
	le.PutUint64(b[24:], p.DevSectors)
	le.PutUint64(b[32:], p.VirtBoundaryMask)
	le.PutUint32(b[40:], p.DiscardAlignment)
	le.PutUint32(b[44:], p.DiscardGranularity)
	le.PutUint32(b[48:], p.MaxDiscardSectors)
	le.PutUint32(b[52:], p.MaxWriteZeroesSectors)
	le.PutUint16(b[56:], p.MaxDiscardSegments)
	return b
}

// IODesc is struct ublksrv_io_desc: the request the kernel put on a tag.
type IODesc struct {
	OpFlags     uint32 // op in bits 0..7, FlagX above
	NrSectors   uint32
	StartSector uint64
	Addr        uint64
}

// Op returns the operation.
func (d IODesc) Op() uint8 { return uint8(d.OpFlags & OpMask) }

// DescAt decodes tag's descriptor from a queue's mapped descriptor array.
func DescAt(descs []byte, tag int) IODesc {
	b := descs[tag*IODescSize:]
	return IODesc{OpFlags: le.Uint32(b[0:]), NrSectors: le.Uint32(b[4:]), StartSector: le.Uint64(b[8:]), Addr: le.Uint64(b[16:])}
}

// IOCmd is struct ublksrv_io_cmd, the payload of FETCH_REQ and
// COMMIT_AND_FETCH_REQ.
type IOCmd struct {
	QueueID uint16
	Tag     uint16
	Result  int32  // COMMIT: bytes done (READ/WRITE), 0, or -errno
	Addr    uint64 // the tag's buffer; 0 with FeatUserCopy
}

// MarshalTo encodes c into b (IOCmdSize bytes).
func (c *IOCmd) MarshalTo(b []byte) {
	le.PutUint16(b[0:], c.QueueID)
	le.PutUint16(b[2:], c.Tag)
	le.PutUint32(b[4:], uint32(c.Result))
	le.PutUint64(b[8:], c.Addr)
}

// DescOffset is the mmap offset of queue q's descriptor array on
// /dev/ublkcN; DescSize its length for a queue of depth tags (the kernel
// refuses any other length).
func DescOffset(q int) int64 { return int64(q) * int64(DescSize(MaxQueueDepth)) }

// DescSize is depth descriptors rounded up to whole pages.
func DescSize(depth int) int {
	ps := unix.Getpagesize()
	return (depth*IODescSize + ps - 1) / ps * ps
}

// UserCopyOffset is the pread/pwrite offset on /dev/ublkcN of byte off of
// the request on (queue q, tag) (FeatUserCopy).
func UserCopyOffset(q, tag int, off int64) int64 {
	return ioBufOffset + int64(q)<<qidOff + int64(tag)<<ioBufBits + off
}

// Addr is the user address of b's first byte, for CtrlCmd.Addr and
// IOCmd.Addr. The caller keeps b alive (runtime.KeepAlive) until the
// kernel is done with it.
func Addr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

var le = binary.LittleEndian
