package ublk

import "testing"

// TestOps checks the ioctl-style encodings against the values the uapi
// header's _IOR/_IOWR macros give (x86-64).
func TestOps(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"UBLK_U_CMD_ADD_DEV", CtrlOp(CmdAddDev, true), 0xc0207504},
		{"UBLK_U_CMD_GET_DEV_INFO", CtrlOp(CmdGetDevInfo, true), 0x80207502},
		{"UBLK_U_CMD_GET_FEATURES", CtrlOp(CmdGetFeatures, true), 0x80207513},
		{"UBLK_U_CMD_DEL_DEV", CtrlOp(CmdDelDev, true), 0xc0207505},
		{"UBLK_U_IO_FETCH_REQ", IOOp(IOFetchReq, true), 0xc0107520},
		{"UBLK_U_IO_COMMIT_AND_FETCH_REQ", IOOp(IOCommitAndFetchReq, true), 0xc0107521},
		{"UBLK_CMD_START_DEV (legacy)", CtrlOp(CmdStartDev, false), 0x06},
		{"UBLK_IO_FETCH_REQ (legacy)", IOOp(IOFetchReq, false), 0x20},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestLayout(t *testing.T) {
	d := DevInfo{NrHWQueues: 2, QueueDepth: 128, MaxIOBufBytes: 1 << 20, DevID: NoID, Flags: FeatUserCopy}
	b := d.Marshal()
	if len(b) != DevInfoSize || UnmarshalDevInfo(b) != d {
		t.Fatalf("DevInfo round trip: %+v", UnmarshalDevInfo(b))
	}
	if b[0] != 2 || b[2] != 128 || le.Uint32(b[8:]) != 1<<20 || le.Uint32(b[12:]) != NoID || b[24] != 1<<7 {
		t.Errorf("DevInfo bytes %x", b)
	}
	c := CtrlCmd{DevID: 3, QueueID: 0xffff, Len: 64, Addr: 0x1122, Data: 77}
	cb := c.Marshal()
	if len(cb) != CtrlCmdSize || le.Uint16(cb[4:]) != 0xffff || le.Uint16(cb[6:]) != 64 || le.Uint64(cb[8:]) != 0x1122 || le.Uint64(cb[16:]) != 77 {
		t.Errorf("CtrlCmd bytes %x", cb)
	}
	p := Params{Types: ParamBasic, LogicalBSShift: 12, DevSectors: 1 << 20, MaxDiscardSegments: 1}
	pb := p.Marshal()
	if le.Uint32(pb[0:]) != ParamsSize || pb[12] != 12 || le.Uint64(pb[24:]) != 1<<20 || le.Uint16(pb[56:]) != 1 {
		t.Errorf("Params bytes %x", pb)
	}
	var ib [IOCmdSize]byte
	(&IOCmd{QueueID: 1, Tag: 5, Result: -5, Addr: 9}).MarshalTo(ib[:])
	if le.Uint16(ib[0:]) != 1 || le.Uint16(ib[2:]) != 5 || int32(le.Uint32(ib[4:])) != -5 || le.Uint64(ib[8:]) != 9 {
		t.Errorf("IOCmd bytes %x", ib)
	}
	desc := make([]byte, 2*IODescSize)
	le.PutUint32(desc[IODescSize:], OpWrite|FlagFUA)
	le.PutUint32(desc[IODescSize+4:], 8)
	le.PutUint64(desc[IODescSize+8:], 16)
	if got := DescAt(desc, 1); got.Op() != OpWrite || got.OpFlags&FlagFUA == 0 || got.NrSectors != 8 || got.StartSector != 16 {
		t.Errorf("DescAt %+v", got)
	}
	if DescSize(128) != 4096 || DescOffset(1) != 4096*24 {
		t.Errorf("DescSize(128) %d DescOffset(1) %d", DescSize(128), DescOffset(1))
	}
	if UserCopyOffset(1, 2, 4096) != 0x80000000+1<<41+2<<25+4096 {
		t.Errorf("UserCopyOffset %#x", UserCopyOffset(1, 2, 4096))
	}
}
