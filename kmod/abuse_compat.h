/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The only place where abuse.ko looks at the kernel
 * version.  Each guard marks a block-layer API change (see PROTOCOL.md).
 */
#ifndef _ABUSE_COMPAT_H
#define _ABUSE_COMPAT_H

#include <linux/version.h>

/* 6.5: ->open(struct gendisk *, blk_mode_t) and ->release(struct gendisk *) */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
#define ABUSE_BDOPS_TAKE_GENDISK
#endif

/* 6.9: blk_mq_alloc_disk(set, struct queue_limits *, queuedata) */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
#define ABUSE_ALLOC_DISK_TAKES_LIMITS
#endif

/*
 * 6.11: queue limits and features (write cache, FUA, rotational) are set
 * only through struct queue_limits; the blk_queue_* setters are gone.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
#define ABUSE_LIMITS_HAVE_FEATURES
#endif

#endif /* _ABUSE_COMPAT_H */
