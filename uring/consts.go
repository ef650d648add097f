package uring

// Constants mirror include/uapi/linux/io_uring.h. Only the values this
// package (and the engine built on it) uses are listed; the numbers are
// kernel ABI and never change once released.

// Opcodes (enum io_uring_op).
const (
	IORING_OP_NOP              uint8 = 0
	IORING_OP_READV            uint8 = 1
	IORING_OP_WRITEV           uint8 = 2
	IORING_OP_FSYNC            uint8 = 3
	IORING_OP_READ_FIXED       uint8 = 4
	IORING_OP_WRITE_FIXED      uint8 = 5
	IORING_OP_POLL_ADD         uint8 = 6
	IORING_OP_POLL_REMOVE      uint8 = 7
	IORING_OP_SYNC_FILE_RANGE  uint8 = 8
	IORING_OP_SENDMSG          uint8 = 9
	IORING_OP_RECVMSG          uint8 = 10
	IORING_OP_TIMEOUT          uint8 = 11
	IORING_OP_TIMEOUT_REMOVE   uint8 = 12
	IORING_OP_ACCEPT           uint8 = 13
	IORING_OP_ASYNC_CANCEL     uint8 = 14
	IORING_OP_LINK_TIMEOUT     uint8 = 15
	IORING_OP_CONNECT          uint8 = 16
	IORING_OP_FALLOCATE        uint8 = 17
	IORING_OP_OPENAT           uint8 = 18
	IORING_OP_CLOSE            uint8 = 19
	IORING_OP_FILES_UPDATE     uint8 = 20
	IORING_OP_STATX            uint8 = 21
	IORING_OP_READ             uint8 = 22
	IORING_OP_WRITE            uint8 = 23
	IORING_OP_FADVISE          uint8 = 24
	IORING_OP_MADVISE          uint8 = 25
	IORING_OP_SEND             uint8 = 26
	IORING_OP_RECV             uint8 = 27
	IORING_OP_OPENAT2          uint8 = 28
	IORING_OP_EPOLL_CTL        uint8 = 29
	IORING_OP_SPLICE           uint8 = 30
	IORING_OP_PROVIDE_BUFFERS  uint8 = 31
	IORING_OP_REMOVE_BUFFERS   uint8 = 32
	IORING_OP_TEE              uint8 = 33
	IORING_OP_SHUTDOWN         uint8 = 34
	IORING_OP_RENAMEAT         uint8 = 35
	IORING_OP_UNLINKAT         uint8 = 36
	IORING_OP_MKDIRAT          uint8 = 37
	IORING_OP_SYMLINKAT        uint8 = 38
	IORING_OP_LINKAT           uint8 = 39
	IORING_OP_MSG_RING         uint8 = 40
	IORING_OP_FSETXATTR        uint8 = 41
	IORING_OP_SETXATTR         uint8 = 42
	IORING_OP_FGETXATTR        uint8 = 43
	IORING_OP_GETXATTR         uint8 = 44
	IORING_OP_SOCKET           uint8 = 45
	IORING_OP_URING_CMD        uint8 = 46
	IORING_OP_SEND_ZC          uint8 = 47
	IORING_OP_SENDMSG_ZC       uint8 = 48
	IORING_OP_READ_MULTISHOT   uint8 = 49
	IORING_OP_WAITID           uint8 = 50
	IORING_OP_FUTEX_WAIT       uint8 = 51
	IORING_OP_FUTEX_WAKE       uint8 = 52
	IORING_OP_FUTEX_WAITV      uint8 = 53
	IORING_OP_FIXED_FD_INSTALL uint8 = 54
	IORING_OP_FTRUNCATE        uint8 = 55 // Linux 6.9
)

// Setup flags (io_uring_params.flags).
const (
	IORING_SETUP_IOPOLL             uint32 = 1 << 0
	IORING_SETUP_SQPOLL             uint32 = 1 << 1
	IORING_SETUP_SQ_AFF             uint32 = 1 << 2
	IORING_SETUP_CQSIZE             uint32 = 1 << 3
	IORING_SETUP_CLAMP              uint32 = 1 << 4
	IORING_SETUP_ATTACH_WQ          uint32 = 1 << 5
	IORING_SETUP_R_DISABLED         uint32 = 1 << 6
	IORING_SETUP_SUBMIT_ALL         uint32 = 1 << 7
	IORING_SETUP_COOP_TASKRUN       uint32 = 1 << 8
	IORING_SETUP_TASKRUN_FLAG       uint32 = 1 << 9
	IORING_SETUP_SQE128             uint32 = 1 << 10
	IORING_SETUP_CQE32              uint32 = 1 << 11
	IORING_SETUP_SINGLE_ISSUER      uint32 = 1 << 12
	IORING_SETUP_DEFER_TASKRUN      uint32 = 1 << 13
	IORING_SETUP_NO_MMAP            uint32 = 1 << 14
	IORING_SETUP_REGISTERED_FD_ONLY uint32 = 1 << 15
	IORING_SETUP_NO_SQARRAY         uint32 = 1 << 16
)

// Per-SQE flags (sqe.flags), set with SQE.SetFlags.
const (
	IOSQE_FIXED_FILE       uint8 = 1 << 0
	IOSQE_IO_DRAIN         uint8 = 1 << 1
	IOSQE_IO_LINK          uint8 = 1 << 2
	IOSQE_IO_HARDLINK      uint8 = 1 << 3
	IOSQE_ASYNC            uint8 = 1 << 4
	IOSQE_BUFFER_SELECT    uint8 = 1 << 5
	IOSQE_CQE_SKIP_SUCCESS uint8 = 1 << 6
)

// CQE flags (cqe.flags).
const (
	IORING_CQE_F_BUFFER        uint32 = 1 << 0
	IORING_CQE_F_MORE          uint32 = 1 << 1
	IORING_CQE_F_SOCK_NONEMPTY uint32 = 1 << 2
	IORING_CQE_F_NOTIF         uint32 = 1 << 3
	IORING_CQE_BUFFER_SHIFT           = 16
)

// SQ ring flags (kernel-written, read from the mmapped SQ ring).
const (
	IORING_SQ_NEED_WAKEUP uint32 = 1 << 0
	IORING_SQ_CQ_OVERFLOW uint32 = 1 << 1
	IORING_SQ_TASKRUN     uint32 = 1 << 2
)

// io_uring_enter flags.
const (
	IORING_ENTER_GETEVENTS       uint32 = 1 << 0
	IORING_ENTER_SQ_WAKEUP       uint32 = 1 << 1
	IORING_ENTER_SQ_WAIT         uint32 = 1 << 2
	IORING_ENTER_EXT_ARG         uint32 = 1 << 3
	IORING_ENTER_REGISTERED_RING uint32 = 1 << 4
)

// Feature bits reported by io_uring_setup (see Ring.Features).
const (
	IORING_FEAT_SINGLE_MMAP     uint32 = 1 << 0
	IORING_FEAT_NODROP          uint32 = 1 << 1
	IORING_FEAT_SUBMIT_STABLE   uint32 = 1 << 2
	IORING_FEAT_RW_CUR_POS      uint32 = 1 << 3
	IORING_FEAT_CUR_PERSONALITY uint32 = 1 << 4
	IORING_FEAT_FAST_POLL       uint32 = 1 << 5
	IORING_FEAT_POLL_32BITS     uint32 = 1 << 6
	IORING_FEAT_SQPOLL_NONFIXED uint32 = 1 << 7
	IORING_FEAT_EXT_ARG         uint32 = 1 << 8
	IORING_FEAT_NATIVE_WORKERS  uint32 = 1 << 9
	IORING_FEAT_RSRC_TAGS       uint32 = 1 << 10
	IORING_FEAT_CQE_SKIP        uint32 = 1 << 11
	IORING_FEAT_LINKED_FILE     uint32 = 1 << 12
	IORING_FEAT_REG_REG_RING    uint32 = 1 << 13
	IORING_FEAT_RECVSEND_BUNDLE uint32 = 1 << 14 // 6.10
	IORING_FEAT_MIN_TIMEOUT     uint32 = 1 << 15
)

// POLL_ADD / POLL_REMOVE flags (carried in sqe.len).
const (
	IORING_POLL_ADD_MULTI        uint32 = 1 << 0
	IORING_POLL_UPDATE_EVENTS    uint32 = 1 << 1
	IORING_POLL_UPDATE_USER_DATA uint32 = 1 << 2
	IORING_POLL_ADD_LEVEL        uint32 = 1 << 3
)

// ASYNC_CANCEL flags (sqe.cancel_flags).
const (
	IORING_ASYNC_CANCEL_ALL      uint32 = 1 << 0
	IORING_ASYNC_CANCEL_FD       uint32 = 1 << 1
	IORING_ASYNC_CANCEL_ANY      uint32 = 1 << 2
	IORING_ASYNC_CANCEL_FD_FIXED uint32 = 1 << 3
	IORING_ASYNC_CANCEL_USERDATA uint32 = 1 << 4
	IORING_ASYNC_CANCEL_OP       uint32 = 1 << 5
)

// TIMEOUT flags (sqe.timeout_flags).
const (
	IORING_TIMEOUT_ABS           uint32 = 1 << 0
	IORING_TIMEOUT_UPDATE        uint32 = 1 << 1
	IORING_TIMEOUT_BOOTTIME      uint32 = 1 << 2
	IORING_TIMEOUT_REALTIME      uint32 = 1 << 3
	IORING_LINK_TIMEOUT_UPDATE   uint32 = 1 << 4
	IORING_TIMEOUT_ETIME_SUCCESS uint32 = 1 << 5
	IORING_TIMEOUT_MULTISHOT     uint32 = 1 << 6
	IORING_TIMEOUT_CLOCK_MASK           = IORING_TIMEOUT_BOOTTIME | IORING_TIMEOUT_REALTIME
	IORING_TIMEOUT_UPDATE_MASK          = IORING_TIMEOUT_UPDATE | IORING_LINK_TIMEOUT_UPDATE
)

// FSYNC flags (sqe.fsync_flags).
const IORING_FSYNC_DATASYNC uint32 = 1 << 0

// SEND/RECV ioprio flags (sqe.ioprio for IORING_OP_SEND*, IORING_OP_RECV*).
const (
	IORING_RECVSEND_POLL_FIRST uint16 = 1 << 0
	IORING_RECV_MULTISHOT      uint16 = 1 << 1 // 6.0; needs IOSQE_BUFFER_SELECT
	IORING_RECVSEND_FIXED_BUF  uint16 = 1 << 2
	IORING_RECVSEND_BUNDLE     uint16 = 1 << 4 // 6.10
)

// ACCEPT ioprio flags (sqe.ioprio for IORING_OP_ACCEPT).
const IORING_ACCEPT_MULTISHOT uint16 = 1 << 0

// SPLICE flag: sqe.splice_fd_in is a fixed-file index.
const SPLICE_F_FD_IN_FIXED uint32 = 1 << 31

// io_uring_register opcodes used here.
const (
	IORING_REGISTER_BUFFERS      uint32 = 0
	IORING_UNREGISTER_BUFFERS    uint32 = 1
	IORING_REGISTER_EVENTFD      uint32 = 4
	IORING_UNREGISTER_EVENTFD    uint32 = 5
	IORING_REGISTER_FILES        uint32 = 2 // 5.1; empty (-1) slots 5.5
	IORING_UNREGISTER_FILES      uint32 = 3
	IORING_REGISTER_FILES_UPDATE uint32 = 6 // 5.5
	IORING_REGISTER_PROBE        uint32 = 8
	IORING_REGISTER_PBUF_RING    uint32 = 22 // 5.19
	IORING_UNREGISTER_PBUF_RING  uint32 = 23
)

// IORING_REGISTER_FILES_SKIP in a file update leaves that slot as it is.
const IORING_REGISTER_FILES_SKIP int32 = -2
