// Package nbd is the client side of the NBD protocol (the NetworkBlockDevice
// project's doc/proto.md): the fixed-newstyle handshake, request headers
// and simple replies. It does no I/O of its own beyond the handshake, which
// runs on any io.ReadWriter; blockdev's NBD backend drives the transmission
// phase on the uio engine with these encoders and the reply parser.
//
// Structured replies are not negotiated, so every reply is a simple reply:
// a 16-byte header, followed for a successful READ by the data.
package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// Handshake magics.
const (
	Magic         = 0x4e42444d41474943 // "NBDMAGIC"
	OptMagic      = 0x49484156454f5054 // "IHAVEOPT": newstyle
	OldstyleMagic = 0x00420281861253   // oldstyle (not supported)
	OptReplyMagic = 0x3e889045565a9
)

// Handshake flags (server) and client flags.
const (
	FlagFixedNewstyle  = 1 << 0
	FlagNoZeroes       = 1 << 1
	FlagCFixedNewstyle = 1 << 0
	FlagCNoZeroes      = 1 << 1
)

// Options and option replies.
const (
	OptExportName = 1
	OptAbort      = 2
	OptGo         = 7

	RepAck  = 1
	RepInfo = 3
	RepErr  = 1 << 31 // bit set in every error reply type

	RepErrUnsup         = RepErr | 1
	RepErrPolicy        = RepErr | 2
	RepErrInvalid       = RepErr | 3
	RepErrPlatform      = RepErr | 4
	RepErrTLSReqd       = RepErr | 5
	RepErrUnknown       = RepErr | 6
	RepErrShutdown      = RepErr | 7
	RepErrBlockSizeReqd = RepErr | 8
	RepErrTooBig        = RepErr | 9

	InfoExport    = 0
	InfoBlockSize = 3
)

// Transmission flags (Export.Flags).
const (
	FlagHasFlags        = 1 << 0
	FlagReadOnly        = 1 << 1
	FlagSendFlush       = 1 << 2
	FlagSendFUA         = 1 << 3
	FlagRotational      = 1 << 4
	FlagSendTrim        = 1 << 5
	FlagSendWriteZeroes = 1 << 6
	FlagCanMultiConn    = 1 << 8
)

// Commands and command flags.
const (
	CmdRead        = 0
	CmdWrite       = 1
	CmdDisc        = 2
	CmdFlush       = 3
	CmdTrim        = 4
	CmdWriteZeroes = 6

	CmdFlagFUA    = 1 << 0
	CmdFlagNoHole = 1 << 1
)

// Transmission framing.
const (
	RequestMagic           = 0x25609513
	SimpleReplyMagic       = 0x67446698
	StructuredReplyMagic   = 0x668e33ef
	RequestSize            = 28
	SimpleReplySize        = 16
	DefaultPort            = "10809"
	DefaultMaxPayload      = 32 << 20 // what a client may send when the server states no limit
	maxOptReply            = 64 << 10 // larger option replies are refused (a hostile server)
	maxExportName          = 4096
	exportNameReplyPadding = 124
)

// Export is what the handshake learnt about the export.
type Export struct {
	Name  string
	Size  uint64
	Flags uint16 // transmission flags (FlagHasFlags, ...)
	// Block size constraints (NBD_INFO_BLOCK_SIZE); zero when the server
	// sent none.
	MinBlock, PrefBlock, MaxBlock uint32
	// ViaExportName: the server did not know NBD_OPT_GO and the export
	// was chosen with NBD_OPT_EXPORT_NAME.
	ViaExportName bool
}

// ErrProtocol is wrapped by every error about bytes the server sent that
// break the protocol.
var ErrProtocol = errors.New("nbd: protocol violation by the server")

func protoErr(f string, a ...any) error {
	return fmt.Errorf("%w: "+f, append([]any{ErrProtocol}, a...)...)
}

// Negotiate runs the fixed-newstyle handshake on rw and selects export
// with NBD_OPT_GO (asking for the block size constraints), falling back to
// NBD_OPT_EXPORT_NAME when the server does not know NBD_OPT_GO. On
// success the connection is in the transmission phase.
func Negotiate(rw io.ReadWriter, export string) (Export, error) {
	if len(export) > maxExportName {
		return Export{}, fmt.Errorf("nbd: export name of %d bytes: at most %d", len(export), maxExportName)
	}
	var hdr [18]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return Export{}, fmt.Errorf("nbd: reading the server's greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(hdr[0:]); m != Magic {
		return Export{}, protoErr("greeting magic %#x, want NBDMAGIC (is this an NBD server?)", m)
	}
	switch m := binary.BigEndian.Uint64(hdr[8:]); m {
	case OptMagic:
	case OldstyleMagic:
		return Export{}, errors.New("nbd: the server speaks the oldstyle protocol; only newstyle is supported")
	default:
		return Export{}, protoErr("greeting magic %#x, want IHAVEOPT", m)
	}
	hflags := binary.BigEndian.Uint16(hdr[16:])
	var cflags uint32
	if hflags&FlagFixedNewstyle != 0 {
		cflags |= FlagCFixedNewstyle
	}
	if hflags&FlagNoZeroes != 0 {
		cflags |= FlagCNoZeroes
	}
	if err := binary.Write(rw, binary.BigEndian, cflags); err != nil {
		return Export{}, fmt.Errorf("nbd: sending the client flags: %w", err)
	}
	if hflags&FlagFixedNewstyle != 0 {
		e, err := optGo(rw, export)
		if !errors.Is(err, errGoUnsupported) {
			return e, err
		}
	}
	return exportName(rw, export, cflags&FlagCNoZeroes != 0)
}

var errGoUnsupported = errors.New("nbd: NBD_OPT_GO unsupported")

func sendOpt(w io.Writer, opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(b[0:], OptMagic)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("nbd: sending option %d: %w", opt, err)
	}
	return nil
}

func optGo(rw io.ReadWriter, export string) (Export, error) {
	data := make([]byte, 4+len(export)+2+2)
	binary.BigEndian.PutUint32(data[0:], uint32(len(export)))
	copy(data[4:], export)
	binary.BigEndian.PutUint16(data[4+len(export):], 1) // one info request
	binary.BigEndian.PutUint16(data[6+len(export):], InfoBlockSize)
	if err := sendOpt(rw, OptGo, data); err != nil {
		return Export{}, err
	}
	e := Export{Name: export}
	haveExport := false
	for {
		typ, payload, err := readOptReply(rw, OptGo)
		if err != nil {
			return Export{}, err
		}
		switch {
		case typ == RepAck:
			if !haveExport {
				return Export{}, protoErr("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return e, e.check()
		case typ == RepInfo:
			if len(payload) < 2 {
				return Export{}, protoErr("NBD_REP_INFO of %d bytes", len(payload))
			}
			switch binary.BigEndian.Uint16(payload) {
			case InfoExport:
				if len(payload) != 12 {
					return Export{}, protoErr("NBD_INFO_EXPORT of %d bytes, want 12", len(payload))
				}
				e.Size = binary.BigEndian.Uint64(payload[2:])
				e.Flags = binary.BigEndian.Uint16(payload[10:])
				haveExport = true
			case InfoBlockSize:
				if len(payload) != 14 {
					return Export{}, protoErr("NBD_INFO_BLOCK_SIZE of %d bytes, want 14", len(payload))
				}
				e.MinBlock = binary.BigEndian.Uint32(payload[2:])
				e.PrefBlock = binary.BigEndian.Uint32(payload[6:])
				e.MaxBlock = binary.BigEndian.Uint32(payload[10:])
			}
		case typ == RepErrUnsup:
			return Export{}, errGoUnsupported
		case typ&RepErr != 0:
			return Export{}, fmt.Errorf("nbd: the server refused export %q: %s%s", export, repErrName(typ), quoteMsg(payload))
		default:
			// Unknown non-error replies may be ignored (proto.md).
		}
	}
}

func quoteMsg(p []byte) string {
	if len(p) == 0 {
		return ""
	}
	return fmt.Sprintf(": %q", p)
}

func repErrName(t uint32) string {
	switch t {
	case RepErrUnsup:
		return "NBD_REP_ERR_UNSUP"
	case RepErrPolicy:
		return "NBD_REP_ERR_POLICY"
	case RepErrInvalid:
		return "NBD_REP_ERR_INVALID"
	case RepErrPlatform:
		return "NBD_REP_ERR_PLATFORM"
	case RepErrTLSReqd:
		return "NBD_REP_ERR_TLS_REQD (TLS is not supported)"
	case RepErrUnknown:
		return "NBD_REP_ERR_UNKNOWN (no such export)"
	case RepErrShutdown:
		return "NBD_REP_ERR_SHUTDOWN"
	case RepErrBlockSizeReqd:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case RepErrTooBig:
		return "NBD_REP_ERR_TOO_BIG"
	}
	return fmt.Sprintf("error reply %#x", t)
}

// readOptReply reads one option reply to opt: its type and payload.
func readOptReply(r io.Reader, opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading the reply to option %d: %w", opt, err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != OptReplyMagic {
		return 0, nil, protoErr("option reply magic %#x, want %#x", m, uint64(OptReplyMagic))
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return 0, nil, protoErr("reply to option %d while option %d is pending", o, opt)
	}
	typ := binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptReply {
		return 0, nil, protoErr("option reply of %d bytes (at most %d accepted)", n, maxOptReply)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, fmt.Errorf("nbd: reading the %d-byte reply to option %d: %w", n, opt, err)
	}
	return typ, p, nil
}

// exportName selects the export with NBD_OPT_EXPORT_NAME, which the server
// answers with the export's size and flags (or by closing the connection).
func exportName(rw io.ReadWriter, export string, noZeroes bool) (Export, error) {
	if err := sendOpt(rw, OptExportName, []byte(export)); err != nil {
		return Export{}, err
	}
	n := 10
	if !noZeroes {
		n += exportNameReplyPadding
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(rw, b); err != nil {
		return Export{}, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME %q: the server sent no export (no such export?): %w", export, err)
	}
	e := Export{Name: export, Size: binary.BigEndian.Uint64(b), Flags: binary.BigEndian.Uint16(b[8:]), ViaExportName: true}
	return e, e.check()
}

// check refuses exports this client cannot serve.
func (e *Export) check() error {
	if e.Flags&FlagHasFlags == 0 {
		e.Flags = 0 // no flag is meaningful without HAS_FLAGS
	}
	if e.Size == 0 || e.Size > 1<<62 {
		return protoErr("export %q of %d bytes (want 1 byte to 4 EiB)", e.Name, e.Size)
	}
	if e.MinBlock != 0 || e.PrefBlock != 0 || e.MaxBlock != 0 {
		pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
		if !pow2(e.MinBlock) || e.MinBlock > 64<<10 || !pow2(e.PrefBlock) || e.PrefBlock < e.MinBlock ||
			e.MaxBlock < e.PrefBlock || e.MaxBlock%e.MinBlock != 0 {
			return protoErr("export %q: block sizes min %d, preferred %d, max %d break the protocol's rules",
				e.Name, e.MinBlock, e.PrefBlock, e.MaxBlock)
		}
	}
	return nil
}

// MaxPayload is the largest READ or WRITE the server accepts.
func (e Export) MaxPayload() uint32 {
	if e.MaxBlock != 0 {
		return e.MaxBlock
	}
	return DefaultMaxPayload
}

// PutRequest encodes a request header into b (RequestSize bytes).
func PutRequest(b []byte, flags, typ uint16, handle, offset uint64, length uint32) {
	_ = b[RequestSize-1]
	binary.BigEndian.PutUint32(b[0:], RequestMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint64(b[16:], offset)
	binary.BigEndian.PutUint32(b[24:], length)
}

// ParseSimpleReply decodes a reply header (SimpleReplySize bytes): the
// server's error value (0: success) and the request's handle. A
// structured reply (never negotiated) or any other magic is ErrProtocol.
func ParseSimpleReply(b []byte) (errval uint32, handle uint64, err error) {
	if len(b) < SimpleReplySize {
		return 0, 0, protoErr("reply header of %d bytes, want %d", len(b), SimpleReplySize)
	}
	switch m := binary.BigEndian.Uint32(b); m {
	case SimpleReplyMagic:
	case StructuredReplyMagic:
		return 0, 0, protoErr("structured reply, which was not negotiated")
	default:
		return 0, 0, protoErr("reply magic %#x, want %#x", m, uint32(SimpleReplyMagic))
	}
	return binary.BigEndian.Uint32(b[4:]), binary.BigEndian.Uint64(b[8:]), nil
}

// Errno maps a reply's error value to the errno a block request completes
// with: the values the kernel's block layer tells apart (ENOSPC,
// EOPNOTSUPP) pass, every other error is EIO.
func Errno(errval uint32) unix.Errno {
	switch unix.Errno(errval) {
	case 0:
		return 0
	case unix.ENOSPC, unix.EOPNOTSUPP:
		return unix.Errno(errval)
	}
	return unix.EIO
}
