// SPDX-License-Identifier: GPL-2.0
/*
 * abuse.ko - A Block device in USErspace, protocol version 1.
 *
 * A blk-mq driver that hands block requests to a userspace server.  The
 * server talks to /dev/abctl (device creation, removal, reconnect) and to
 * one anonymous "queue fd" per hardware queue, on which a single ioctl
 * completes a batch of requests and fetches the next batch.  See
 * PROTOCOL.md for the user-visible contract.
 *
 * Requests are identified by (queue, tag, sequence number).  WRITE data is
 * copied into a per-tag user buffer when the request is fetched; READ data
 * is copied from a server-named address (or the per-tag buffer) when the
 * request is completed.  That is the only copy the kernel makes.
 *
 * Modelled on drivers/block/brd.c and drivers/block/null_blk.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/blkdev.h>
#include <linux/blk-mq.h>
#include <linux/miscdevice.h>
#include <linux/anon_inodes.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/poll.h>
#include <linux/idr.h>
#include <linux/highmem.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>
#include <linux/slab.h>
#include <linux/kref.h>
#include <linux/capability.h>

#include "include/uapi/linux/abuse.h"
#include "abuse_compat.h"

enum abuse_cmd_state {
	ABUSE_CMD_FREE,		/* not owned by abuse (or finished) */
	ABUSE_CMD_PENDING,	/* queued, waiting for the server */
	ABUSE_CMD_BUSY,		/* an ioctl is copying data for it */
	ABUSE_CMD_INFLIGHT,	/* handed to the server */
};

enum abuse_q_state {
	ABUSE_Q_LIVE,		/* a server is attached */
	ABUSE_Q_WAITING,	/* server lost; hold I/O for a reconnect */
	ABUSE_Q_DEAD,		/* no server: fail all I/O */
};

struct abuse_cmd {
	struct request *rq;
	struct list_head node;	/* on abuse_queue.pending */
	u64 seq;
	enum abuse_cmd_state state;
};

struct abuse_dev;

struct abuse_queue {
	struct abuse_dev *dev;
	spinlock_t lock;		/* protects everything below */
	wait_queue_head_t wait;		/* the one wait queue of the queue fd */
	struct list_head pending;
	struct abuse_cmd *cmds;		/* [queue_depth] */
	enum abuse_q_state state;
	u64 seq;
	u32 gen;			/* server generation */
	bool has_file;			/* a queue fd of @gen exists */
	u16 id;
};

struct abuse_dev {
	struct kref kref;
	struct mutex lock;		/* gen, attached, removing, open_count */
	struct abuse_dev_config cfg;
	int id;
	u32 gen;			/* bumped on attach and server loss */
	bool attached;			/* a control fd of @gen owns us */
	bool removing;
	unsigned int open_count;
	struct delayed_work reconnect_work;
	struct blk_mq_tag_set tag_set;
	struct gendisk *disk;
	struct abuse_queue *queues;	/* [nr_hw_queues] */
};

/* private_data of an /dev/abctl file */
struct abuse_session {
	struct mutex lock;		/* serialises ioctls that change dev */
	struct abuse_dev *dev;		/* attached device or NULL */
	u32 gen;
};

/* private_data of a queue fd */
struct abuse_qfile {
	struct abuse_dev *dev;
	struct abuse_queue *q;
	u32 gen;
	u64 buf_addr;
	u64 buf_len;
};

static int abuse_major;
static DEFINE_IDR(abuse_idr);
static DEFINE_MUTEX(abuse_idr_lock);	/* protects abuse_idr */

static void abuse_dev_free(struct kref *kref)
{
	struct abuse_dev *dev = container_of(kref, struct abuse_dev, kref);
	unsigned int i;

	if (dev->queues) {
		for (i = 0; i < dev->cfg.nr_hw_queues; i++)
			kvfree(dev->queues[i].cmds);
		kfree(dev->queues);
	}
	kfree(dev);
}

static void abuse_dev_put(struct abuse_dev *dev)
{
	kref_put(&dev->kref, abuse_dev_free);
}

/* ---------------------------------------------------------------- data */

/* Copy between the bio pages of @rq and user memory at @uaddr. */
static int abuse_copy_rq(struct request *rq, u64 uaddr, bool to_user)
{
	void __user *ubuf = u64_to_user_ptr(uaddr);
	struct req_iterator iter;
	struct bio_vec bv;
	unsigned long left;
	void *kaddr;

	rq_for_each_segment(bv, rq, iter) {
		kaddr = kmap_local_page(bv.bv_page);
		if (to_user)
			left = copy_to_user(ubuf, kaddr + bv.bv_offset, bv.bv_len);
		else
			left = copy_from_user(kaddr + bv.bv_offset, ubuf, bv.bv_len);
		kunmap_local(kaddr);
		if (left)
			return -EFAULT;
		ubuf += bv.bv_len;
	}
	return 0;
}

static u32 abuse_rq_op_flags(struct request *rq)
{
	static const struct {
		blk_opf_t req;
		u32 abuse;
	} map[] = {
		{ REQ_FUA, ABUSE_F_FUA },
		{ REQ_PREFLUSH, ABUSE_F_PREFLUSH },
		{ REQ_NOUNMAP, ABUSE_F_NOUNMAP },
		{ REQ_SYNC, ABUSE_F_SYNC },
		{ REQ_META, ABUSE_F_META },
		{ REQ_PRIO, ABUSE_F_PRIO },
		{ REQ_RAHEAD, ABUSE_F_RAHEAD },
		{ REQ_BACKGROUND, ABUSE_F_BACKGROUND },
		{ REQ_NOWAIT, ABUSE_F_NOWAIT },
		{ REQ_IDLE, ABUSE_F_IDLE },
		{ REQ_FAILFAST_DEV, ABUSE_F_FAILFAST_DEV },
		{ REQ_FAILFAST_TRANSPORT, ABUSE_F_FAILFAST_TRANSPORT },
		{ REQ_FAILFAST_DRIVER, ABUSE_F_FAILFAST_DRIVER },
	};
	u32 v;
	int i;

	switch (req_op(rq)) {
	case REQ_OP_READ:
		v = ABUSE_OP_READ;
		break;
	case REQ_OP_WRITE:
		v = ABUSE_OP_WRITE;
		break;
	case REQ_OP_FLUSH:
		v = ABUSE_OP_FLUSH;
		break;
	case REQ_OP_DISCARD:
		v = ABUSE_OP_DISCARD;
		break;
	case REQ_OP_WRITE_ZEROES:
		v = ABUSE_OP_WRITE_ZEROES;
		break;
	default:
		return ABUSE_OP_MASK;
	}
	for (i = 0; i < ARRAY_SIZE(map); i++)
		if (rq->cmd_flags & map[i].req)
			v |= map[i].abuse;
	return v;
}

/* ------------------------------------------------------------- blk-mq */

static blk_status_t abuse_queue_rq(struct blk_mq_hw_ctx *hctx,
				   const struct blk_mq_queue_data *bd)
{
	struct abuse_queue *q = hctx->driver_data;
	struct request *rq = bd->rq;
	struct abuse_cmd *cmd;
	unsigned long flags;

	switch (req_op(rq)) {
	case REQ_OP_READ:
	case REQ_OP_FLUSH:
		break;
	case REQ_OP_WRITE:
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		if (q->dev->cfg.flags & ABUSE_DEV_F_READ_ONLY)
			return BLK_STS_IOERR;
		break;
	default:
		return BLK_STS_NOTSUPP;
	}
	if (rq->tag < 0 || rq->tag >= q->dev->cfg.queue_depth)
		return BLK_STS_IOERR;
	cmd = &q->cmds[rq->tag];

	spin_lock_irqsave(&q->lock, flags);
	if (q->state == ABUSE_Q_DEAD) {
		spin_unlock_irqrestore(&q->lock, flags);
		return BLK_STS_IOERR;
	}
	blk_mq_start_request(rq);
	cmd->rq = rq;
	cmd->state = ABUSE_CMD_PENDING;
	list_add_tail(&cmd->node, &q->pending);
	spin_unlock_irqrestore(&q->lock, flags);
	/*
	 * Say which event this is: a Linux AIO IOCB_CMD_POLL can then complete
	 * in this wakeup instead of going through a workqueue to call poll.
	 */
	wake_up_poll(&q->wait, EPOLLIN | EPOLLRDNORM);
	return BLK_STS_OK;
}

static int abuse_init_hctx(struct blk_mq_hw_ctx *hctx, void *data,
			   unsigned int hctx_idx)
{
	struct abuse_dev *dev = data;

	if (hctx_idx >= dev->cfg.nr_hw_queues)
		return -EINVAL;
	hctx->driver_data = &dev->queues[hctx_idx];
	return 0;
}

static enum blk_eh_timer_return abuse_timeout(struct request *rq)
{
	/* Server liveness is tracked through its file descriptors. */
	return BLK_EH_RESET_TIMER;
}

static const struct blk_mq_ops abuse_mq_ops = {
	.queue_rq	= abuse_queue_rq,
	.init_hctx	= abuse_init_hctx,
	.timeout	= abuse_timeout,
};

#ifdef ABUSE_BDOPS_TAKE_GENDISK
static int abuse_bdev_open(struct gendisk *disk, blk_mode_t mode)
#else
static int abuse_bdev_open(struct block_device *bdev, fmode_t mode)
#endif
{
#ifdef ABUSE_BDOPS_TAKE_GENDISK
	struct abuse_dev *dev = disk->private_data;
#else
	struct abuse_dev *dev = bdev->bd_disk->private_data;
#endif
	int ret = 0;

	mutex_lock(&dev->lock);
	if (dev->removing)
		ret = -ENXIO;
	else
		dev->open_count++;
	mutex_unlock(&dev->lock);
	return ret;
}

#ifdef ABUSE_BDOPS_TAKE_GENDISK
static void abuse_bdev_release(struct gendisk *disk)
#else
static void abuse_bdev_release(struct gendisk *disk, fmode_t mode)
#endif
{
	struct abuse_dev *dev = disk->private_data;

	mutex_lock(&dev->lock);
	dev->open_count--;
	mutex_unlock(&dev->lock);
}

static const struct block_device_operations abuse_bdev_ops = {
	.owner		= THIS_MODULE,
	.open		= abuse_bdev_open,
	.release	= abuse_bdev_release,
};

/* ------------------------------------------------------ state changes */

/* Fail every request owned by @q that nobody is copying. */
static void abuse_queue_fail_all(struct abuse_queue *q)
{
	unsigned int tag;
	struct request *rq;

	for (tag = 0; tag < q->dev->cfg.queue_depth; tag++) {
		struct abuse_cmd *cmd = &q->cmds[tag];

		spin_lock_irq(&q->lock);
		rq = NULL;
		if (cmd->state == ABUSE_CMD_PENDING)
			list_del_init(&cmd->node);
		if (cmd->state == ABUSE_CMD_PENDING ||
		    cmd->state == ABUSE_CMD_INFLIGHT) {
			rq = cmd->rq;
			cmd->rq = NULL;
			cmd->state = ABUSE_CMD_FREE;
		}
		spin_unlock_irq(&q->lock);
		if (rq)
			blk_mq_end_request(rq, BLK_STS_IOERR);
	}
}

/*
 * The server went away (or the device is being removed).  With @hold, keep
 * the requests for a new server: in-flight ones go back to the head of the
 * pending list.  Otherwise fail everything and mark the queues dead.
 * Called with dev->lock held.
 */
static void abuse_set_disconnected(struct abuse_dev *dev, bool hold)
{
	unsigned int i, tag;

	dev->gen++;
	dev->attached = false;
	for (i = 0; i < dev->cfg.nr_hw_queues; i++) {
		struct abuse_queue *q = &dev->queues[i];

		spin_lock_irq(&q->lock);
		q->gen = dev->gen;
		q->has_file = false;
		q->state = hold ? ABUSE_Q_WAITING : ABUSE_Q_DEAD;
		if (hold) {
			for (tag = 0; tag < dev->cfg.queue_depth; tag++) {
				struct abuse_cmd *cmd = &q->cmds[tag];

				if (cmd->state != ABUSE_CMD_INFLIGHT)
					continue;
				cmd->state = ABUSE_CMD_PENDING;
				list_add(&cmd->node, &q->pending);
			}
		}
		spin_unlock_irq(&q->lock);
		if (!hold)
			abuse_queue_fail_all(q);
		wake_up_all(&q->wait);
	}
}

static void abuse_server_lost(struct abuse_dev *dev, u32 gen)
{
	bool hold;

	mutex_lock(&dev->lock);
	if (dev->gen == gen && dev->attached) {
		hold = dev->cfg.reconnect_ms && !dev->removing;
		abuse_set_disconnected(dev, hold);
		if (hold)
			schedule_delayed_work(&dev->reconnect_work,
					      msecs_to_jiffies(dev->cfg.reconnect_ms));
		else
			pr_info("abuse%d: server gone, failing I/O\n", dev->id);
	}
	mutex_unlock(&dev->lock);
}

static void abuse_reconnect_timeout(struct work_struct *work)
{
	struct abuse_dev *dev = container_of(to_delayed_work(work),
					     struct abuse_dev, reconnect_work);

	mutex_lock(&dev->lock);
	if (!dev->attached && dev->queues[0].state == ABUSE_Q_WAITING) {
		pr_info("abuse%d: no server reconnected, failing I/O\n", dev->id);
		abuse_set_disconnected(dev, false);
	}
	mutex_unlock(&dev->lock);
}

/* Make @s the server of @dev.  Called with dev->lock held. */
static void abuse_set_attached(struct abuse_dev *dev, struct abuse_session *s)
{
	unsigned int i;

	dev->gen++;
	dev->attached = true;
	for (i = 0; i < dev->cfg.nr_hw_queues; i++) {
		struct abuse_queue *q = &dev->queues[i];

		spin_lock_irq(&q->lock);
		q->gen = dev->gen;
		q->has_file = false;
		q->state = ABUSE_Q_LIVE;
		spin_unlock_irq(&q->lock);
		wake_up_all(&q->wait);
	}
	kref_get(&dev->kref);
	s->dev = dev;
	s->gen = dev->gen;
}

/* ------------------------------------------------- device add/remove */

static int abuse_check_config(struct abuse_dev_config *c)
{
	int i;

	if (c->version != ABUSE_PROTOCOL_VERSION)
		return -EPROTONOSUPPORT;
	for (i = 0; i < ARRAY_SIZE(c->reserved); i++)
		if (c->reserved[i])
			return -EINVAL;
	if (c->flags & ~ABUSE_DEV_F_ALL)
		return -EINVAL;
	if ((c->flags & ABUSE_DEV_F_FUA) && !(c->flags & ABUSE_DEV_F_WRITE_CACHE))
		return -EINVAL;
	if (c->logical_block_size != 512 && c->logical_block_size != 4096)
		return -EINVAL;
	if (!c->size || c->size % c->logical_block_size ||
	    c->size > ABUSE_MAX_SIZE)
		return -EINVAL;
	if (!c->nr_hw_queues)
		c->nr_hw_queues = 1;
	if (c->nr_hw_queues > ABUSE_MAX_QUEUES)
		return -EINVAL;
	if (!c->queue_depth)
		c->queue_depth = ABUSE_DEF_DEPTH;
	if (c->queue_depth > ABUSE_MAX_DEPTH)
		return -EINVAL;
	if (!c->max_io_bytes)
		c->max_io_bytes = ABUSE_DEF_IO_BYTES;
	if (c->max_io_bytes < ABUSE_MIN_IO_BYTES ||
	    c->max_io_bytes > ABUSE_MAX_IO_BYTES ||
	    c->max_io_bytes % PAGE_SIZE)
		return -EINVAL;
	if (c->max_discard_sectors > (UINT_MAX >> SECTOR_SHIFT) ||
	    c->max_write_zeroes_sectors > (UINT_MAX >> SECTOR_SHIFT))
		return -EINVAL;
	if ((c->max_discard_sectors || c->max_write_zeroes_sectors) &&
	    (c->flags & ABUSE_DEV_F_READ_ONLY))
		return -EINVAL;
	if (c->reconnect_ms > ABUSE_MAX_RECONNECT_MS)
		return -EINVAL;
	if (c->dev_id < -1 || c->dev_id >= ABUSE_MAX_DEVICES)
		return -EINVAL;
	return 0;
}

static struct gendisk *abuse_alloc_disk(struct abuse_dev *dev)
{
	struct abuse_dev_config *c = &dev->cfg;
	struct gendisk *disk;
#ifdef ABUSE_LIMITS_HAVE_FEATURES
	struct queue_limits lim = {
		.logical_block_size	= c->logical_block_size,
		.physical_block_size	= c->logical_block_size,
		.io_min			= c->logical_block_size,
		.max_hw_sectors		= c->max_io_bytes >> SECTOR_SHIFT,
		.max_segments		= c->max_io_bytes >> PAGE_SHIFT,
		.max_segment_size	= c->max_io_bytes,
		.max_hw_discard_sectors	= c->max_discard_sectors,
		.max_write_zeroes_sectors = c->max_write_zeroes_sectors,
		.discard_granularity	= c->max_discard_sectors ?
					  c->logical_block_size : 0,
	};

	if (c->flags & ABUSE_DEV_F_WRITE_CACHE)
		lim.features |= BLK_FEAT_WRITE_CACHE;
	if (c->flags & ABUSE_DEV_F_FUA)
		lim.features |= BLK_FEAT_FUA;
	disk = blk_mq_alloc_disk(&dev->tag_set, &lim, dev);
	if (IS_ERR(disk))
		return disk;
#else
	struct request_queue *q;

#ifdef ABUSE_ALLOC_DISK_TAKES_LIMITS
	disk = blk_mq_alloc_disk(&dev->tag_set, NULL, dev);
#else
	disk = blk_mq_alloc_disk(&dev->tag_set, dev);
#endif
	if (IS_ERR(disk))
		return disk;
	q = disk->queue;
	blk_queue_logical_block_size(q, c->logical_block_size);
	blk_queue_physical_block_size(q, c->logical_block_size);
	blk_queue_io_min(q, c->logical_block_size);
	blk_queue_max_hw_sectors(q, c->max_io_bytes >> SECTOR_SHIFT);
	blk_queue_max_segments(q, c->max_io_bytes >> PAGE_SHIFT);
	blk_queue_max_segment_size(q, c->max_io_bytes);
	if (c->max_discard_sectors) {
		blk_queue_max_discard_sectors(q, c->max_discard_sectors);
		q->limits.discard_granularity = c->logical_block_size;
	}
	blk_queue_max_write_zeroes_sectors(q, c->max_write_zeroes_sectors);
	blk_queue_write_cache(q, c->flags & ABUSE_DEV_F_WRITE_CACHE,
			      c->flags & ABUSE_DEV_F_FUA);
	blk_queue_flag_set(QUEUE_FLAG_NONROT, q);
#endif
	return disk;
}

static int abuse_add(struct abuse_session *s, struct abuse_dev_config *c)
{
	struct abuse_dev *dev;
	struct gendisk *disk;
	unsigned int i;
	int ret;

	ret = abuse_check_config(c);
	if (ret)
		return ret;
	if (s->dev)
		return -EBUSY;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	kref_init(&dev->kref);
	mutex_init(&dev->lock);
	INIT_DELAYED_WORK(&dev->reconnect_work, abuse_reconnect_timeout);
	dev->cfg = *c;
	dev->id = -1;

	dev->queues = kcalloc(c->nr_hw_queues, sizeof(*dev->queues), GFP_KERNEL);
	if (!dev->queues) {
		ret = -ENOMEM;
		goto out_put;
	}
	for (i = 0; i < c->nr_hw_queues; i++) {
		struct abuse_queue *q = &dev->queues[i];
		unsigned int tag;

		q->dev = dev;
		q->id = i;
		q->state = ABUSE_Q_LIVE;
		spin_lock_init(&q->lock);
		init_waitqueue_head(&q->wait);
		INIT_LIST_HEAD(&q->pending);
		q->cmds = kvcalloc(c->queue_depth, sizeof(*q->cmds), GFP_KERNEL);
		if (!q->cmds) {
			ret = -ENOMEM;
			goto out_put;
		}
		for (tag = 0; tag < c->queue_depth; tag++)
			INIT_LIST_HEAD(&q->cmds[tag].node);
	}

	mutex_lock(&abuse_idr_lock);
	if (c->dev_id >= 0)
		ret = idr_alloc(&abuse_idr, dev, c->dev_id, c->dev_id + 1,
				GFP_KERNEL);
	else
		ret = idr_alloc(&abuse_idr, dev, 0, ABUSE_MAX_DEVICES,
				GFP_KERNEL);
	mutex_unlock(&abuse_idr_lock);
	if (ret < 0) {
		if (ret == -ENOSPC)
			ret = c->dev_id >= 0 ? -EEXIST : -ENOSPC;
		goto out_put;
	}
	dev->id = ret;
	dev->cfg.dev_id = ret;

	dev->tag_set.ops = &abuse_mq_ops;
	dev->tag_set.nr_hw_queues = c->nr_hw_queues;
	dev->tag_set.queue_depth = c->queue_depth;
	dev->tag_set.numa_node = NUMA_NO_NODE;
	dev->tag_set.driver_data = dev;
#ifdef BLK_MQ_F_SHOULD_MERGE
	dev->tag_set.flags = BLK_MQ_F_SHOULD_MERGE;
#endif
	ret = blk_mq_alloc_tag_set(&dev->tag_set);
	if (ret)
		goto out_idr;

	disk = abuse_alloc_disk(dev);
	if (IS_ERR(disk)) {
		ret = PTR_ERR(disk);
		goto out_tags;
	}
	dev->disk = disk;
	disk->major = abuse_major;
	disk->first_minor = dev->id;
	disk->minors = 1;
	disk->fops = &abuse_bdev_ops;
	disk->private_data = dev;
	disk->flags |= GENHD_FL_NO_PART;
	snprintf(disk->disk_name, DISK_NAME_LEN, "abuse%d", dev->id);
	set_capacity(disk, c->size >> SECTOR_SHIFT);
	if (c->flags & ABUSE_DEV_F_READ_ONLY)
		set_disk_ro(disk, true);

	/* The server owns the device before the first request can arrive. */
	mutex_lock(&dev->lock);
	abuse_set_attached(dev, s);
	mutex_unlock(&dev->lock);

	ret = add_disk(disk);
	if (ret)
		goto out_detach;
	*c = dev->cfg;
	pr_info("abuse%d: %llu bytes, lbs %u, %u queues x %u, max io %u\n",
		dev->id, c->size, c->logical_block_size, c->nr_hw_queues,
		c->queue_depth, c->max_io_bytes);
	return 0;

out_detach:
	s->dev = NULL;
	abuse_dev_put(dev);
	put_disk(disk);
out_tags:
	blk_mq_free_tag_set(&dev->tag_set);
out_idr:
	mutex_lock(&abuse_idr_lock);
	idr_remove(&abuse_idr, dev->id);
	mutex_unlock(&abuse_idr_lock);
out_put:
	abuse_dev_put(dev);
	return ret;
}

/* Tear down a device already taken out of abuse_idr. */
static void abuse_destroy(struct abuse_dev *dev)
{
	cancel_delayed_work_sync(&dev->reconnect_work);
	mutex_lock(&dev->lock);
	abuse_set_disconnected(dev, false);
	mutex_unlock(&dev->lock);
	del_gendisk(dev->disk);
	put_disk(dev->disk);
	blk_mq_free_tag_set(&dev->tag_set);
	pr_info("abuse%d: removed\n", dev->id);
	abuse_dev_put(dev);
}

static int abuse_remove(u32 id)
{
	struct abuse_dev *dev;

	mutex_lock(&abuse_idr_lock);
	dev = idr_find(&abuse_idr, id);
	if (!dev) {
		mutex_unlock(&abuse_idr_lock);
		return -ENOENT;
	}
	mutex_lock(&dev->lock);
	if (dev->open_count || dev->removing) {
		mutex_unlock(&dev->lock);
		mutex_unlock(&abuse_idr_lock);
		return -EBUSY;
	}
	dev->removing = true;
	mutex_unlock(&dev->lock);
	idr_remove(&abuse_idr, id);
	mutex_unlock(&abuse_idr_lock);

	abuse_destroy(dev);
	return 0;
}

static int abuse_attach(struct abuse_session *s, struct abuse_dev_config *c)
{
	struct abuse_dev_config zero = { .version = c->version, .dev_id = c->dev_id };
	struct abuse_dev *dev;
	int ret = 0;

	if (c->version != ABUSE_PROTOCOL_VERSION)
		return -EPROTONOSUPPORT;
	if (memcmp(c, &zero, sizeof(zero)) || c->dev_id < 0)
		return -EINVAL;
	if (s->dev)
		return -EBUSY;

	mutex_lock(&abuse_idr_lock);
	dev = idr_find(&abuse_idr, c->dev_id);
	if (!dev) {
		mutex_unlock(&abuse_idr_lock);
		return -ENOENT;
	}
	mutex_lock(&dev->lock);
	if (dev->attached || dev->removing) {
		ret = -EBUSY;
	} else {
		cancel_delayed_work(&dev->reconnect_work);
		abuse_set_attached(dev, s);
		*c = dev->cfg;
		pr_info("abuse%d: server attached\n", dev->id);
	}
	mutex_unlock(&dev->lock);
	mutex_unlock(&abuse_idr_lock);
	return ret;
}

/* ---------------------------------------------------------- queue fd */

static int abuse_complete_one(struct abuse_qfile *qf,
			      const struct abuse_completion *c)
{
	struct abuse_queue *q = qf->q;
	struct abuse_cmd *cmd;
	struct request *rq;
	blk_status_t sts;
	u64 addr;
	int ret = 0;

	if (c->flags || c->result > 0 || c->result < -MAX_ERRNO ||
	    c->tag >= q->dev->cfg.queue_depth)
		return -EINVAL;
	cmd = &q->cmds[c->tag];

	spin_lock_irq(&q->lock);
	if (q->gen != qf->gen || q->state != ABUSE_Q_LIVE) {
		spin_unlock_irq(&q->lock);
		return -ENOTCONN;
	}
	if (cmd->state != ABUSE_CMD_INFLIGHT || cmd->seq != c->seq) {
		spin_unlock_irq(&q->lock);
		return -ENOENT;
	}
	rq = cmd->rq;
	if (c->addr && req_op(rq) != REQ_OP_READ) {
		spin_unlock_irq(&q->lock);
		return -EINVAL;
	}
	cmd->state = ABUSE_CMD_BUSY;
	spin_unlock_irq(&q->lock);

	sts = errno_to_blk_status(c->result);
	if (!c->result && req_op(rq) == REQ_OP_READ) {
		addr = c->addr ? c->addr :
		       qf->buf_addr + (u64)c->tag * q->dev->cfg.max_io_bytes;
		if (!access_ok(u64_to_user_ptr(addr), blk_rq_bytes(rq)) ||
		    abuse_copy_rq(rq, addr, false)) {
			sts = BLK_STS_IOERR;
			ret = -EFAULT;
		}
	}

	spin_lock_irq(&q->lock);
	cmd->rq = NULL;
	cmd->state = ABUSE_CMD_FREE;
	spin_unlock_irq(&q->lock);
	blk_mq_end_request(rq, sts);
	return ret;
}

/* Hand one pending request to the server; 0 = stored, 1 = none left. */
static int abuse_fetch_one(struct abuse_qfile *qf, struct abuse_request __user *ureq)
{
	struct abuse_queue *q = qf->q;
	struct abuse_request r = { 0 };
	struct abuse_cmd *cmd;
	struct request *rq;
	int ret = 0;

	spin_lock_irq(&q->lock);
	if (q->gen != qf->gen || q->state != ABUSE_Q_LIVE) {
		spin_unlock_irq(&q->lock);
		return -ENOTCONN;
	}
	cmd = list_first_entry_or_null(&q->pending, struct abuse_cmd, node);
	if (!cmd) {
		spin_unlock_irq(&q->lock);
		return 1;
	}
	list_del_init(&cmd->node);
	cmd->state = ABUSE_CMD_BUSY;
	cmd->seq = ++q->seq;
	rq = cmd->rq;
	spin_unlock_irq(&q->lock);

	r.seq = cmd->seq;
	if (req_op(rq) != REQ_OP_FLUSH) {
		r.offset = (u64)blk_rq_pos(rq) << SECTOR_SHIFT;
		r.len = blk_rq_bytes(rq);
	}
	r.op_flags = abuse_rq_op_flags(rq);
	r.tag = rq->tag;
	r.queue_id = q->id;
	if (req_op(rq) == REQ_OP_WRITE) {
		r.addr = qf->buf_addr + (u64)r.tag * q->dev->cfg.max_io_bytes;
		ret = abuse_copy_rq(rq, r.addr, true);
	}
	if (!ret && copy_to_user(ureq, &r, sizeof(r)))
		ret = -EFAULT;

	spin_lock_irq(&q->lock);
	if (q->state == ABUSE_Q_DEAD) {
		/* the device died while we copied: fail it ourselves */
		cmd->state = ABUSE_CMD_FREE;
		cmd->rq = NULL;
		spin_unlock_irq(&q->lock);
		blk_mq_end_request(rq, BLK_STS_IOERR);
		return ret ? ret : -ENOTCONN;
	}
	if (ret || q->gen != qf->gen) {
		/* keep it for the next fetch (or the next server) */
		cmd->state = ABUSE_CMD_PENDING;
		list_add(&cmd->node, &q->pending);
		ret = ret ? ret : -ENOTCONN;
	} else {
		cmd->state = ABUSE_CMD_INFLIGHT;
	}
	spin_unlock_irq(&q->lock);
	return ret;
}

static long abuse_queue_commit_fetch(struct abuse_qfile *qf,
				     struct abuse_batch __user *ub)
{
	struct abuse_completion __user *uc;
	struct abuse_request __user *ur;
	struct abuse_completion c;
	struct abuse_batch b;
	u32 i;
	int ret = 0;

	if (copy_from_user(&b, ub, sizeof(b)))
		return -EFAULT;
	if (b.flags || b.reserved0 || b.reserved ||
	    b.nr_completions > ABUSE_MAX_BATCH ||
	    b.max_requests > ABUSE_MAX_BATCH)
		return -EINVAL;
	uc = u64_to_user_ptr(b.completions);
	ur = u64_to_user_ptr(b.requests);
	b.nr_completed = 0;
	b.nr_requests = 0;

	for (i = 0; i < b.nr_completions; i++) {
		if (copy_from_user(&c, &uc[i], sizeof(c))) {
			ret = -EFAULT;
			break;
		}
		ret = abuse_complete_one(qf, &c);
		if (ret && ret != -EFAULT)
			break;
		b.nr_completed++;	/* -EFAULT: consumed, ended with EIO */
		if (ret)
			break;
	}

	while (!ret && b.nr_requests < b.max_requests) {
		ret = abuse_fetch_one(qf, &ur[b.nr_requests]);
		if (ret == 1) {
			ret = 0;
			break;
		}
		if (!ret)
			b.nr_requests++;
	}

	if (copy_to_user(ub, &b, sizeof(b)))
		return -EFAULT;
	return ret;
}

static long abuse_queue_ioctl(struct file *file, unsigned int cmd,
			      unsigned long arg)
{
	struct abuse_qfile *qf = file->private_data;

	switch (cmd) {
	case ABUSE_QUEUE_COMMIT_FETCH:
		return abuse_queue_commit_fetch(qf, (void __user *)arg);
	default:
		return -ENOTTY;
	}
}

static __poll_t abuse_queue_poll(struct file *file, poll_table *wait)
{
	struct abuse_qfile *qf = file->private_data;
	struct abuse_queue *q = qf->q;
	__poll_t mask = 0;

	poll_wait(file, &q->wait, wait);
	spin_lock_irq(&q->lock);
	if (q->gen != qf->gen || q->state != ABUSE_Q_LIVE)
		mask = EPOLLERR | EPOLLHUP;
	else if (!list_empty(&q->pending))
		mask = EPOLLIN | EPOLLRDNORM;
	spin_unlock_irq(&q->lock);
	return mask;
}

static int abuse_queue_release(struct inode *inode, struct file *file)
{
	struct abuse_qfile *qf = file->private_data;
	struct abuse_dev *dev = qf->dev;

	/* Closing a live queue fd means nobody serves that queue any more. */
	abuse_server_lost(dev, qf->gen);
	kfree(qf);
	abuse_dev_put(dev);
	return 0;
}

static const struct file_operations abuse_queue_fops = {
	.owner		= THIS_MODULE,
	.release	= abuse_queue_release,
	.poll		= abuse_queue_poll,
	.unlocked_ioctl	= abuse_queue_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

static int abuse_queue_fd(struct abuse_session *s, struct abuse_queue_setup *qs)
{
	struct abuse_dev *dev = s->dev;
	struct abuse_qfile *qf;
	struct abuse_queue *q;
	u64 need;
	int fd;

	if (qs->flags || qs->reserved0 || qs->reserved)
		return -EINVAL;
	if (!dev)
		return -ENOTCONN;
	if (qs->dev_id != dev->id || qs->queue_id >= dev->cfg.nr_hw_queues)
		return -EINVAL;
	need = (u64)dev->cfg.queue_depth * dev->cfg.max_io_bytes;
	if (!PAGE_ALIGNED(qs->buf_addr) || qs->buf_len < need ||
	    !access_ok(u64_to_user_ptr(qs->buf_addr), need))
		return -EINVAL;
	q = &dev->queues[qs->queue_id];

	qf = kzalloc(sizeof(*qf), GFP_KERNEL);
	if (!qf)
		return -ENOMEM;
	qf->dev = dev;
	qf->q = q;
	qf->gen = s->gen;
	qf->buf_addr = qs->buf_addr;
	qf->buf_len = qs->buf_len;

	mutex_lock(&dev->lock);
	if (dev->gen != s->gen || !dev->attached) {
		fd = -ENOTCONN;
		goto out_unlock;
	}
	if (q->has_file) {
		fd = -EBUSY;
		goto out_unlock;
	}
	kref_get(&dev->kref);
	fd = anon_inode_getfd("[abuse-queue]", &abuse_queue_fops, qf,
			      O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		abuse_dev_put(dev);
		goto out_unlock;
	}
	spin_lock_irq(&q->lock);
	q->has_file = true;
	spin_unlock_irq(&q->lock);
	mutex_unlock(&dev->lock);
	qs->fd = fd;
	return fd;

out_unlock:
	mutex_unlock(&dev->lock);
	kfree(qf);
	return fd;
}

/* --------------------------------------------------------- /dev/abctl */

static int abctl_open(struct inode *inode, struct file *file)
{
	struct abuse_session *s;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	s = kzalloc(sizeof(*s), GFP_KERNEL);
	if (!s)
		return -ENOMEM;
	mutex_init(&s->lock);
	file->private_data = s;
	return 0;
}

static int abctl_release(struct inode *inode, struct file *file)
{
	struct abuse_session *s = file->private_data;

	if (s->dev) {
		abuse_server_lost(s->dev, s->gen);
		abuse_dev_put(s->dev);
	}
	kfree(s);
	return 0;
}

static long abctl_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct abuse_session *s = file->private_data;
	void __user *argp = (void __user *)arg;
	struct abuse_dev_config cfg;
	struct abuse_dev_remove rm;
	struct abuse_queue_setup qs;
	long ret;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;

	switch (cmd) {
	case ABUSE_CTL_ADD:
	case ABUSE_CTL_ATTACH:
		if (copy_from_user(&cfg, argp, sizeof(cfg)))
			return -EFAULT;
		mutex_lock(&s->lock);
		if (cmd == ABUSE_CTL_ADD)
			ret = abuse_add(s, &cfg);
		else
			ret = abuse_attach(s, &cfg);
		mutex_unlock(&s->lock);
		if (!ret && copy_to_user(argp, &cfg, sizeof(cfg)))
			ret = -EFAULT;
		return ret ? ret : cfg.dev_id;
	case ABUSE_CTL_REMOVE:
		if (copy_from_user(&rm, argp, sizeof(rm)))
			return -EFAULT;
		if (rm.flags || rm.reserved || rm.dev_id >= ABUSE_MAX_DEVICES)
			return -EINVAL;
		return abuse_remove(rm.dev_id);
	case ABUSE_CTL_QUEUE_FD:
		if (copy_from_user(&qs, argp, sizeof(qs)))
			return -EFAULT;
		mutex_lock(&s->lock);
		ret = abuse_queue_fd(s, &qs);
		mutex_unlock(&s->lock);
		/* The fd is installed: it is also the return value. */
		if (ret >= 0 && copy_to_user(argp, &qs, sizeof(qs)))
			pr_debug("queue fd %ld: setup not copied out\n", ret);
		return ret;
	default:
		return -ENOTTY;
	}
}

static const struct file_operations abctl_fops = {
	.owner		= THIS_MODULE,
	.open		= abctl_open,
	.release	= abctl_release,
	.unlocked_ioctl	= abctl_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

static struct miscdevice abctl_misc = {
	.minor		= MISC_DYNAMIC_MINOR,
	.name		= ABUSE_CTL_NAME,
	.fops		= &abctl_fops,
	.mode		= 0600,
};

static int __init abuse_init(void)
{
	int ret;

	abuse_major = register_blkdev(0, "abuse");
	if (abuse_major < 0)
		return abuse_major;
	ret = misc_register(&abctl_misc);
	if (ret) {
		unregister_blkdev(abuse_major, "abuse");
		return ret;
	}
	pr_info("protocol %d, block major %d\n", ABUSE_PROTOCOL_VERSION,
		abuse_major);
	return 0;
}

static void __exit abuse_exit(void)
{
	struct abuse_dev *dev;
	int id;

	misc_deregister(&abctl_misc);
	/* No file can be open here (each holds a module reference). */
	mutex_lock(&abuse_idr_lock);
	idr_for_each_entry(&abuse_idr, dev, id) {
		idr_remove(&abuse_idr, id);
		mutex_lock(&dev->lock);
		dev->removing = true;
		mutex_unlock(&dev->lock);
		abuse_destroy(dev);
	}
	mutex_unlock(&abuse_idr_lock);
	idr_destroy(&abuse_idr);
	unregister_blkdev(abuse_major, "abuse");
}

module_init(abuse_init);
module_exit(abuse_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ABUSE: block devices served from userspace");
MODULE_ALIAS("devname:" ABUSE_CTL_NAME);
