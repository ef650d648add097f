/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The only place where abuse.ko looks at the kernel version.  Each guard
 * marks a kernel API change (see PROTOCOL.md); abuse.c itself has no
 * version-dependent function signatures.
 */
#ifndef _ABUSE_COMPAT_H
#define _ABUSE_COMPAT_H

#include <linux/version.h>
#include <linux/blkdev.h>
#include <linux/uio.h>

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

/*
 * 6.5: ->open(struct gendisk *, blk_mode_t) and ->release(struct gendisk *).
 * abuse.c implements abuse_disk_open() and abuse_disk_release() on the
 * gendisk; these wrappers adapt them to the kernel's prototypes.
 */
static int abuse_disk_open(struct gendisk *disk);
static void abuse_disk_release(struct gendisk *disk);

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
static int abuse_bdev_open(struct gendisk *disk, blk_mode_t mode)
{
	return abuse_disk_open(disk);
}

static void abuse_bdev_release(struct gendisk *disk)
{
	abuse_disk_release(disk);
}
#else
static int abuse_bdev_open(struct block_device *bdev, fmode_t mode)
{
	return abuse_disk_open(bdev->bd_disk);
}

static void abuse_bdev_release(struct gendisk *disk, fmode_t mode)
{
	abuse_disk_release(disk);
}
#endif

/*
 * import_ubuf() (a checked ITER_UBUF iterator over one user buffer) is in
 * 6.4 and later; 6.1 has ITER_UBUF and iov_iter_ubuf() but not the helper.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
static inline int abuse_import_ubuf(int rw, void __user *buf, size_t len,
				    struct iov_iter *i)
{
	return import_ubuf(rw, buf, len, i);
}
#else
static inline int abuse_import_ubuf(int rw, void __user *buf, size_t len,
				    struct iov_iter *i)
{
	if (len > MAX_RW_COUNT)
		len = MAX_RW_COUNT;
	if (!access_ok(buf, len))
		return -EFAULT;
	iov_iter_ubuf(i, rw, buf, len);
	return 0;
}
#endif

#endif /* _ABUSE_COMPAT_H */
