/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ABUSE - A Block device in USErspace, protocol version 1.
 *
 * The one and only user-visible ABI of abuse.ko.  All structures have
 * explicit padding, contain only fixed-size types and are naturally
 * aligned, so they have the same layout on every 64-bit and 32-bit ABI.
 * Reserved fields must be zero; the kernel rejects anything else with
 * -EINVAL.  See kmod/PROTOCOL.md for the full description.
 *
 * Later additions are optional features, not new versions: the module
 * reports the ones it has in abuse_dev_config.features (a module without
 * any leaves it zero), and a server asks for one only where it is listed.
 */
#ifndef _UAPI_LINUX_ABUSE_H
#define _UAPI_LINUX_ABUSE_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define ABUSE_PROTOCOL_VERSION	1

#define ABUSE_CTL_NAME		"abctl"

/* Limits enforced by the kernel. */
#define ABUSE_MAX_DEVICES	1024
#define ABUSE_MAX_QUEUES	64
#define ABUSE_MAX_DEPTH		1024
#define ABUSE_MIN_IO_BYTES	4096
#define ABUSE_MAX_IO_BYTES	(8 << 20)
#define ABUSE_DEF_IO_BYTES	(1 << 20)
#define ABUSE_DEF_DEPTH		128
#define ABUSE_MAX_BATCH		1024
#define ABUSE_MAX_RECONNECT_MS	3600000
#define ABUSE_DEF_IO_TIMEOUT_MS	30000
#define ABUSE_MIN_IO_TIMEOUT_MS	1000
#define ABUSE_MAX_IO_TIMEOUT_MS	3600000
#define ABUSE_MAX_SIZE		(1ULL << 60)
#define ABUSE_MAX_WAIT_MS	1000
#define ABUSE_MAX_SPIN_US	1000

/* struct abuse_dev_config.features (out): what this module supports. */
#define ABUSE_FEAT_USER_COPY	(1U << 0)	/* ABUSE_QUEUE_F_USER_COPY, ABUSE_QUEUE_COPY */
#define ABUSE_FEAT_WAIT		(1U << 1)	/* ABUSE_BATCH_F_WAIT */
#define ABUSE_FEAT_ALL		(ABUSE_FEAT_USER_COPY | ABUSE_FEAT_WAIT)

/* struct abuse_dev_config.flags */
#define ABUSE_DEV_F_READ_ONLY	(1U << 0)
#define ABUSE_DEV_F_WRITE_CACHE	(1U << 1)	/* server has a volatile cache: FLUSH requests */
#define ABUSE_DEV_F_FUA		(1U << 2)	/* server honours FUA (needs WRITE_CACHE) */
#define ABUSE_DEV_F_TIMEOUT_DEAD (1U << 3)	/* an I/O timeout ends the server */
#define ABUSE_DEV_F_ALL		(ABUSE_DEV_F_READ_ONLY | ABUSE_DEV_F_WRITE_CACHE | \
				 ABUSE_DEV_F_FUA | ABUSE_DEV_F_TIMEOUT_DEAD)

/* Device parameters: ABUSE_CTL_ADD (in/out) and ABUSE_CTL_ATTACH (out). 80 bytes. */
struct abuse_dev_config {
	__u32 version;			/* ABUSE_PROTOCOL_VERSION */
	__u32 flags;			/* ABUSE_DEV_F_* */
	__u64 size;			/* bytes, multiple of logical_block_size */
	__u32 logical_block_size;	/* 512 or 4096 */
	__u32 nr_hw_queues;		/* 1..ABUSE_MAX_QUEUES, 0 = 1 */
	__u32 queue_depth;		/* 1..ABUSE_MAX_DEPTH, 0 = ABUSE_DEF_DEPTH */
	__u32 max_io_bytes;		/* page multiple, 0 = ABUSE_DEF_IO_BYTES */
	__u32 max_discard_sectors;	/* 0 = no DISCARD */
	__u32 max_write_zeroes_sectors;	/* 0 = no WRITE_ZEROES */
	__u32 reconnect_ms;		/* hold I/O this long after server loss */
	__s32 dev_id;			/* in: wanted index or -1; out: index */
	__u32 io_timeout_ms;		/* 0 = ABUSE_DEF_IO_TIMEOUT_MS */
	__u32 features;			/* in: zero; out: ABUSE_FEAT_* */
	__u64 token;			/* ADD out / ATTACH in: ownership token */
	__u64 reserved[2];		/* must be zero */
};

/* struct abuse_dev_remove.flags */
#define ABUSE_REMOVE_F_FORCE	(1U << 0)	/* even if open: fail its I/O */

/* ABUSE_CTL_REMOVE argument. 16 bytes. */
struct abuse_dev_remove {
	__u32 dev_id;
	__u32 flags;			/* ABUSE_REMOVE_F_* */
	__u64 token;			/* from ADD; 0 = none */
};

/*
 * struct abuse_queue_setup.flags.  USER_COPY: the kernel copies no data
 * on its own; the server names where each request's data lives, in its
 * completion or with ABUSE_QUEUE_COPY (no per-tag buffers).
 */
#define ABUSE_QUEUE_F_USER_COPY	(1U << 0)

/* ABUSE_CTL_QUEUE_FD argument. 40 bytes. */
struct abuse_queue_setup {
	__u32 dev_id;			/* device attached to this control fd */
	__u16 queue_id;			/* 0..nr_hw_queues-1 */
	__u16 flags;			/* ABUSE_QUEUE_F_* */
	__u64 buf_addr;			/* per-tag buffers, page aligned (USER_COPY: 0) */
	__u64 buf_len;			/* >= queue_depth * max_io_bytes (USER_COPY: 0) */
	__s32 fd;			/* out: the queue fd */
	__u32 reserved0;		/* must be zero */
	__u64 reserved;			/* must be zero */
};

/* Operation codes: bits 0..7 of abuse_request.op_flags. */
#define ABUSE_OP_READ		0
#define ABUSE_OP_WRITE		1
#define ABUSE_OP_FLUSH		2
#define ABUSE_OP_DISCARD	3
#define ABUSE_OP_WRITE_ZEROES	5
#define ABUSE_OP_MASK		0xff

/* Request flags: bits 8..31 of abuse_request.op_flags (stable numbering). */
#define ABUSE_F_FUA		(1U << 8)
#define ABUSE_F_PREFLUSH	(1U << 9)
#define ABUSE_F_NOUNMAP		(1U << 10)
#define ABUSE_F_SYNC		(1U << 11)
#define ABUSE_F_META		(1U << 12)
#define ABUSE_F_PRIO		(1U << 13)
#define ABUSE_F_RAHEAD		(1U << 14)
#define ABUSE_F_BACKGROUND	(1U << 15)
#define ABUSE_F_NOWAIT		(1U << 16)
#define ABUSE_F_IDLE		(1U << 17)
#define ABUSE_F_FAILFAST_DEV	(1U << 18)
#define ABUSE_F_FAILFAST_TRANSPORT (1U << 19)
#define ABUSE_F_FAILFAST_DRIVER	(1U << 20)

/* One request handed to the server. 40 bytes. */
struct abuse_request {
	__u64 seq;			/* per-queue sequence number */
	__u64 offset;			/* byte offset on the device */
	__u32 len;			/* bytes (0 for FLUSH) */
	__u32 op_flags;			/* ABUSE_OP_* | ABUSE_F_* */
	__u16 tag;			/* 0..queue_depth-1 */
	__u16 queue_id;
	__u32 reserved;			/* zero */
	__u64 addr;			/* WRITE: user address holding the data (USER_COPY: 0) */
};

/* One completion from the server. 24 bytes. */
struct abuse_completion {
	__u64 seq;			/* as received */
	__u16 tag;			/* as received */
	__u16 flags;			/* must be zero */
	__s32 result;			/* 0 or -errno */
	__u64 addr;			/* READ: data source (0: tag buffer; USER_COPY: none) */
					/* USER_COPY WRITE: data destination (0: none) */
};

/* struct abuse_batch.flags */
#define ABUSE_BATCH_F_WAIT	(1U << 0)	/* nothing to fetch: wait up to wait_ms */

/* ABUSE_QUEUE_COMMIT_FETCH argument. 48 bytes. */
struct abuse_batch {
	__u64 completions;		/* user pointer to abuse_completion[] */
	__u64 requests;			/* user pointer to abuse_request[] */
	__u32 nr_completions;		/* in: 0..ABUSE_MAX_BATCH */
	__u32 max_requests;		/* in: 0..ABUSE_MAX_BATCH */
	__u32 nr_completed;		/* out: completions consumed */
	__u32 nr_requests;		/* out: requests stored */
	__u32 flags;			/* ABUSE_BATCH_F_* */
	__u32 wait_ms;			/* F_WAIT: 1..ABUSE_MAX_WAIT_MS; else 0 */
	__u32 spin_us;			/* F_WAIT: poll this long before sleeping */
	__u32 reserved;			/* must be zero */
};

/* ABUSE_QUEUE_COPY argument (USER_COPY queues). 32 bytes. */
struct abuse_copy {
	__u64 seq;			/* of the in-flight request */
	__u16 tag;
	__u16 flags;			/* must be zero */
	__u32 len;			/* bytes, offset + len <= the request's len */
	__u32 offset;			/* in the request's data */
	__u32 reserved;			/* must be zero */
	__u64 addr;			/* server memory: WRITE data to, READ data from */
};

/* 0xB9: unassigned in Documentation/userspace-api/ioctl/ioctl-number.rst */
#define ABUSE_IOC_MAGIC		0xb9

/* On /dev/abctl. */
#define ABUSE_CTL_ADD		_IOWR(ABUSE_IOC_MAGIC, 0x01, struct abuse_dev_config)
#define ABUSE_CTL_ATTACH	_IOWR(ABUSE_IOC_MAGIC, 0x02, struct abuse_dev_config)
#define ABUSE_CTL_REMOVE	_IOWR(ABUSE_IOC_MAGIC, 0x03, struct abuse_dev_remove)
#define ABUSE_CTL_QUEUE_FD	_IOWR(ABUSE_IOC_MAGIC, 0x04, struct abuse_queue_setup)

/* On a queue fd. */
#define ABUSE_QUEUE_COMMIT_FETCH _IOWR(ABUSE_IOC_MAGIC, 0x10, struct abuse_batch)
#define ABUSE_QUEUE_COPY	_IOWR(ABUSE_IOC_MAGIC, 0x11, struct abuse_copy)

#endif /* _UAPI_LINUX_ABUSE_H */
