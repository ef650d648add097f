package uring

// The resource-table ABI shared by registered buffers and registered files
// (include/uapi/linux/io_uring.h): tables registered with the "2" opcodes
// can be sparse and are changed slot by slot with the update opcodes.

// io_uring_register opcodes of the resource tables.
const (
	IORING_REGISTER_FILES2         uint32 = 13 // 5.13
	IORING_REGISTER_FILES_UPDATE2  uint32 = 14 // 5.13
	IORING_REGISTER_BUFFERS2       uint32 = 15 // 5.13
	IORING_REGISTER_BUFFERS_UPDATE uint32 = 16 // 5.13
)

// IORING_RSRC_REGISTER_SPARSE (io_uring_rsrc_register.flags, 5.19)
// registers a table of empty slots without passing an array.
const IORING_RSRC_REGISTER_SPARSE uint32 = 1 << 0

// rsrcRegister is struct io_uring_rsrc_register (32 bytes); its size is
// the nr_args of IORING_REGISTER_BUFFERS2 and IORING_REGISTER_FILES2.
type rsrcRegister struct {
	Nr    uint32 // slots
	Flags uint32 // "resv" before 5.19: must then be 0
	Resv2 uint64
	Data  uint64 // struct iovec * (buffers) or __s32 * (files)
	Tags  uint64 // __u64 *, optional
}

// rsrcUpdate2 is struct io_uring_rsrc_update2 (32 bytes); its size is the
// nr_args of IORING_REGISTER_BUFFERS_UPDATE and IORING_REGISTER_FILES_UPDATE2.
type rsrcUpdate2 struct {
	Offset uint32
	Resv   uint32
	Data   uint64
	Tags   uint64
	Nr     uint32
	Resv2  uint32
}
