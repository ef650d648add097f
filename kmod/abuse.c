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
 * request is completed.  On a USER_COPY queue the server names the address
 * for both directions (in its completion, or with ABUSE_QUEUE_COPY), so a
 * RAM disk's data moves once, between the bio and its final place.  That is
 * the only copy the kernel makes.
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
#include <linux/pagemap.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>
#include <linux/slab.h>
#include <linux/kref.h>
#include <linux/capability.h>

#include "include/uapi/linux/abuse.h"
#include "abuse_compat.h"

/*
 * A request is only ever held where nothing can make it wait for the
 * server: BUSY covers a copy with page faults disabled.  Faulting the
 * server's memory in (which may sleep for as long as the server likes,
 * e.g. on userfaultfd) happens with the request PENDING-like (FAULTING) or
 * INFLIGHT, states its I/O timeout and server loss can end.
 */
enum abuse_cmd_state {
	ABUSE_CMD_FREE,		/* not owned by abuse (or finished) */
	ABUSE_CMD_PENDING,	/* queued, waiting for the server */
	ABUSE_CMD_FAULTING,	/* fetched, pages untouched, server memory being faulted in */
	ABUSE_CMD_BUSY,		/* an ioctl is copying its data, faults disabled */
	ABUSE_CMD_INFLIGHT,	/* handed to the server */
};

enum abuse_q_state {
	ABUSE_Q_LIVE,		/* a server is attached */
	ABUSE_Q_WAITING,	/* server lost; hold I/O for a reconnect */
	ABUSE_Q_DEAD,		/* no server: fail all I/O */
};

/* Per-request driver data: the PDU of tag_set.cmd_size. */
struct abuse_cmd {
	struct list_head node;	/* on abuse_queue.pending */
	u64 seq;		/* of the fetch that handed it to the server */
	s64 wr_mark;		/* FLUSH: abuse_dev.wr_acked when queued */
	enum abuse_cmd_state state;
};

/*
 * One per tag.  The server names requests by tag, so completions look them
 * up here rather than through blk_mq_tag_to_rq(): an entry is set when the
 * request is queued and cleared (under the queue lock) before it is ended,
 * so a tag from userspace can never reach a request that is not ours.
 *
 * A request that times out while the server has it is ended, and blk-mq
 * may reuse its tag at once.  The server still holds the old request under
 * that tag (and its buffer), so the tag is quarantined: requests on it are
 * not handed out until the server's late completion of @expired_seq
 * arrives (it is accepted and ignored) or the server generation ends.
 */
struct abuse_tag {
	struct request *rq;
	u64 expired_seq;	/* non-zero: quarantined, see above */
};

struct abuse_dev;

struct abuse_queue {
	struct abuse_dev *dev;
	spinlock_t lock;		/* protects everything below */
	wait_queue_head_t wait;		/* the one wait queue of the queue fd */
	struct list_head pending;
	struct abuse_tag *tags;		/* [queue_depth] */
	unsigned int nr_expired;	/* quarantined tags */
	enum abuse_q_state state;
	u64 seq;
	u32 gen;			/* server generation */
	bool has_file;			/* a queue fd of @gen exists */
	u16 id;
};

struct abuse_session;

struct abuse_dev {
	struct kref kref;
	struct mutex lock;		/* gen, server, removing, open_count */
	struct abuse_dev_config cfg;	/* effective values */
	u64 token;			/* ownership token handed out by ADD */
	int id;
	u32 gen;			/* bumped on attach and server loss */
	struct abuse_session *server;	/* attached session of @gen, or NULL */
	bool removing;
	bool cache_lost;		/* a server died with unflushed writes */
	unsigned int open_count;
	/*
	 * Write-cache bookkeeping: writes the server acknowledged, and how
	 * many of those a completed FLUSH made durable.
	 */
	atomic64_t wr_acked;
	atomic64_t wr_durable;
	struct delayed_work reconnect_work;
	struct work_struct expire_work;	/* ABUSE_DEV_F_TIMEOUT_DEAD */
	u32 expire_gen;
	struct blk_mq_tag_set tag_set;
	struct gendisk *disk;
	struct abuse_queue *queues;	/* [cfg.nr_hw_queues] */
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
	bool user_copy;			/* ABUSE_QUEUE_F_USER_COPY */
	u64 buf_addr;
	u64 buf_len;
};

static int abuse_major;
/*
 * Index -> device.  An index is reserved with a NULL entry while ADD builds
 * the device and filled with idr_replace() once it is live, so REMOVE and
 * ATTACH never see a half-built device.  It is freed only after
 * del_gendisk(), so no second abuseN can appear while the first is in sysfs.
 */
static DEFINE_IDR(abuse_idr);
static DEFINE_MUTEX(abuse_idr_lock);	/* protects abuse_idr */

static void abuse_dev_free(struct kref *kref)
{
	struct abuse_dev *dev = container_of(kref, struct abuse_dev, kref);
	unsigned int i;

	if (dev->queues) {
		for (i = 0; i < dev->cfg.nr_hw_queues; i++)
			kvfree(dev->queues[i].tags);
		kfree(dev->queues);
	}
	kfree(dev);
}

static void abuse_dev_put(struct abuse_dev *dev)
{
	kref_put(&dev->kref, abuse_dev_free);
}

static struct abuse_cmd *abuse_rq_cmd(struct request *rq)
{
	return blk_mq_rq_to_pdu(rq);
}

static void abuse_wake(struct abuse_queue *q)
{
	/*
	 * Say which event this is: a Linux AIO IOCB_CMD_POLL can then complete
	 * in this wakeup instead of going through a workqueue to call poll.
	 */
	wake_up_poll(&q->wait, EPOLLIN | EPOLLRDNORM);
}

/* ---------------------------------------------------------------- data */

/* Tries of a data copy whose user pages keep going missing. */
#define ABUSE_COPY_TRIES	8

/* User pages a copy pins at a time. */
#define ABUSE_PIN_BATCH		16

/* A window of pinned server pages, see abuse_upage(). */
struct abuse_upages {
	struct page *pages[ABUSE_PIN_BATCH];
	unsigned long base;		/* user address of pages[0] */
	int nr;
};

static void abuse_upages_put(struct abuse_upages *up, bool dirty)
{
	int i;

	for (i = 0; i < up->nr; i++) {
		if (dirty)
			set_page_dirty(up->pages[i]);
		put_page(up->pages[i]);
	}
	up->nr = 0;
}

/*
 * The server page holding @addr (of a range ending at @end), from the
 * pinned window or by pinning the next one.  get_user_pages_fast_only()
 * never faults or sleeps, so this is safe while a request is BUSY; NULL
 * when the page is not present (or is special, like the zero page): the
 * caller then copies through the user mapping instead.
 */
static struct page *abuse_upage(struct abuse_upages *up, unsigned long addr,
				unsigned long end, bool write)
{
	unsigned long pg = addr & PAGE_MASK;
	int want;

	if (up->nr && pg >= up->base &&
	    pg < up->base + ((unsigned long)up->nr << PAGE_SHIFT))
		return up->pages[(pg - up->base) >> PAGE_SHIFT];
	abuse_upages_put(up, write);
	want = min_t(unsigned long, ABUSE_PIN_BATCH,
		     (PAGE_ALIGN(end) - pg) >> PAGE_SHIFT);
	up->base = pg;
	up->nr = get_user_pages_fast_only(pg, want, write ? FOLL_WRITE : 0,
					  up->pages);
	if (up->nr <= 0) {
		up->nr = 0;
		return NULL;
	}
	return up->pages[0];
}

/*
 * Copy @len bytes at @off of @rq's data between its bio pages and server
 * memory at @uaddr (@to_user: from the bio to the server), without page
 * faults.  The server's pages are pinned and copied kernel to kernel with
 * memcpy, as ublk's user copy does; a page that cannot be pinned that way
 * is copied through the user mapping.  Returns 0, -EFAULT for an address
 * the server may not use, or -EAGAIN when a page is not present: fault it
 * in (abuse_fault_in) with the request released, then try again.
 */
static int abuse_copy_rq(struct request *rq, u32 off, u32 len, u64 uaddr,
			 bool to_user)
{
	struct abuse_upages up = { .nr = 0 };
	unsigned long ua = uaddr, end = uaddr + len;
	struct req_iterator iter;
	struct bio_vec bv;
	int ret = 0;

	if (!len)
		return 0;
	if (!access_ok(u64_to_user_ptr(uaddr), len))
		return -EFAULT;
	pagefault_disable();
	rq_for_each_segment(bv, rq, iter) {
		unsigned int bo = bv.bv_offset, bl = bv.bv_len;

		if (off >= bl) {
			off -= bl;
			continue;
		}
		bo += off;
		bl -= off;
		off = 0;
		while (bl && ua < end) {
			unsigned int uo = offset_in_page(ua);
			unsigned int n = min3(bl, (unsigned int)(end - ua),
					      (unsigned int)PAGE_SIZE - uo);
			struct page *upg = abuse_upage(&up, ua, end, to_user);
			void __user *uptr = (void __user *)ua;
			char *k = kmap_local_page(bv.bv_page);
			unsigned long left = 0;

			if (upg) {
				char *u = kmap_local_page(upg);

				if (to_user)
					memcpy(u + uo, k + bo, n);
				else
					memcpy(k + bo, u + uo, n);
				kunmap_local(u);
			} else if (to_user) {
				left = __copy_to_user_inatomic(uptr, k + bo, n);
			} else {
				left = __copy_from_user_inatomic(k + bo, uptr, n);
			}
			kunmap_local(k);
			if (left) {
				ret = -EAGAIN;
				goto out;
			}
			if (!to_user)
				flush_dcache_page(bv.bv_page);
			ua += n;
			bo += n;
			bl -= n;
		}
		if (ua >= end)
			break;
	}
out:
	pagefault_enable();
	abuse_upages_put(&up, to_user);
	return ret;
}

/* Fault in @len bytes of server memory at @uaddr; this may sleep. */
static bool abuse_fault_in(u64 uaddr, size_t len, bool write)
{
	char __user *p = u64_to_user_ptr(uaddr);

	if (!len)
		return true;
	if (write)
		return !fault_in_writeable(p, len);
	return !fault_in_readable(p, len);
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

static bool abuse_is_write(struct request *rq)
{
	switch (req_op(rq)) {
	case REQ_OP_WRITE:
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		return true;
	default:
		return false;
	}
}

static blk_status_t abuse_queue_rq(struct blk_mq_hw_ctx *hctx,
				   const struct blk_mq_queue_data *bd)
{
	struct abuse_queue *q = hctx->driver_data;
	struct abuse_dev *dev = q->dev;
	struct request *rq = bd->rq;
	struct abuse_cmd *cmd = blk_mq_rq_to_pdu(rq);
	unsigned long flags;

	switch (req_op(rq)) {
	case REQ_OP_READ:
	case REQ_OP_FLUSH:
		break;
	case REQ_OP_WRITE:
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		if (dev->cfg.flags & ABUSE_DEV_F_READ_ONLY)
			return BLK_STS_IOERR;
		break;
	default:
		return BLK_STS_NOTSUPP;
	}
	if (rq->tag < 0 || rq->tag >= dev->cfg.queue_depth)
		return BLK_STS_IOERR;

	/* The writes this FLUSH makes durable: those acknowledged by now. */
	cmd->wr_mark = atomic64_read(&dev->wr_acked);
	spin_lock_irqsave(&q->lock, flags);
	if (q->state == ABUSE_Q_DEAD) {
		spin_unlock_irqrestore(&q->lock, flags);
		return BLK_STS_IOERR;
	}
	blk_mq_start_request(rq);
	q->tags[rq->tag].rq = rq;
	cmd->state = ABUSE_CMD_PENDING;
	cmd->seq = 0;
	list_add_tail(&cmd->node, &q->pending);
	spin_unlock_irqrestore(&q->lock, flags);
	/* One wakeup per batch: .commit_rqs covers a batch cut short. */
	if (bd->last)
		abuse_wake(q);
	return BLK_STS_OK;
}

static void abuse_commit_rqs(struct blk_mq_hw_ctx *hctx)
{
	abuse_wake(hctx->driver_data);
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

/*
 * A request has waited cfg.io_timeout_ms for the server.  Fail it with EIO
 * (and, with ABUSE_DEV_F_TIMEOUT_DEAD, end the server generation as if the
 * server had died).  A request whose data is being copied right now (a
 * copy that cannot sleep) and requests held for a reconnect (bounded by the
 * reconnect window) get a new period.
 */
static enum blk_eh_timer_return abuse_timeout(struct request *rq)
{
	struct abuse_queue *q = rq->mq_hctx->driver_data;
	struct abuse_cmd *cmd = blk_mq_rq_to_pdu(rq);
	struct abuse_dev *dev = q->dev;
	struct abuse_tag *t = &q->tags[rq->tag];
	unsigned long flags;
	bool inflight;
	u32 gen;

	spin_lock_irqsave(&q->lock, flags);
	if (t->rq != rq || q->state == ABUSE_Q_WAITING ||
	    cmd->state == ABUSE_CMD_BUSY || cmd->state == ABUSE_CMD_FREE) {
		spin_unlock_irqrestore(&q->lock, flags);
		return BLK_EH_RESET_TIMER;
	}
	inflight = cmd->state == ABUSE_CMD_INFLIGHT;
	if (inflight) {
		t->expired_seq = cmd->seq;
		q->nr_expired++;
	} else if (cmd->state == ABUSE_CMD_PENDING) {
		list_del_init(&cmd->node);
	}
	cmd->state = ABUSE_CMD_FREE;
	t->rq = NULL;
	gen = q->gen;
	spin_unlock_irqrestore(&q->lock, flags);

	pr_warn_ratelimited("abuse%d: queue %u tag %d: %s request timed out after %u ms\n",
			    dev->id, q->id, rq->tag,
			    inflight ? "in-flight" : "unfetched",
			    dev->cfg.io_timeout_ms);
	if (dev->cfg.flags & ABUSE_DEV_F_TIMEOUT_DEAD) {
		WRITE_ONCE(dev->expire_gen, gen);
		schedule_work(&dev->expire_work);
	}
	blk_mq_end_request(rq, BLK_STS_IOERR);
	return BLK_EH_DONE;
}

static const struct blk_mq_ops abuse_mq_ops = {
	.queue_rq	= abuse_queue_rq,
	.commit_rqs	= abuse_commit_rqs,
	.init_hctx	= abuse_init_hctx,
	.timeout	= abuse_timeout,
};

/*
 * Each opener holds a reference: a forced REMOVE deletes the disk while it
 * is open (mounted), and release runs after that.
 */
static int abuse_disk_open(struct gendisk *disk)
{
	struct abuse_dev *dev = disk->private_data;
	int ret = 0;

	mutex_lock(&dev->lock);
	if (dev->removing) {
		ret = -ENXIO;
	} else {
		dev->open_count++;
		kref_get(&dev->kref);
	}
	mutex_unlock(&dev->lock);
	return ret;
}

static void abuse_disk_release(struct gendisk *disk)
{
	struct abuse_dev *dev = disk->private_data;

	mutex_lock(&dev->lock);
	dev->open_count--;
	mutex_unlock(&dev->lock);
	abuse_dev_put(dev);
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
		struct abuse_tag *t = &q->tags[tag];
		struct abuse_cmd *cmd;

		spin_lock_irq(&q->lock);
		rq = t->rq;
		if (rq) {
			cmd = blk_mq_rq_to_pdu(rq);
			if (cmd->state == ABUSE_CMD_PENDING)
				list_del_init(&cmd->node);
			if (cmd->state == ABUSE_CMD_PENDING ||
			    cmd->state == ABUSE_CMD_FAULTING ||
			    cmd->state == ABUSE_CMD_INFLIGHT) {
				t->rq = NULL;
				cmd->state = ABUSE_CMD_FREE;
			} else {
				rq = NULL;
			}
		}
		spin_unlock_irq(&q->lock);
		if (rq)
			blk_mq_end_request(rq, BLK_STS_IOERR);
		cond_resched();
	}
}

/* A new server generation knows nothing of the old one's requests. */
static void abuse_queue_clear_expired(struct abuse_queue *q)
{
	unsigned int tag;

	if (!q->nr_expired)
		return;
	for (tag = 0; tag < q->dev->cfg.queue_depth; tag++)
		q->tags[tag].expired_seq = 0;
	q->nr_expired = 0;
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
	dev->server = NULL;
	for (i = 0; i < dev->cfg.nr_hw_queues; i++) {
		struct abuse_queue *q = &dev->queues[i];

		spin_lock_irq(&q->lock);
		q->gen = dev->gen;
		q->has_file = false;
		q->state = hold ? ABUSE_Q_WAITING : ABUSE_Q_DEAD;
		abuse_queue_clear_expired(q);
		if (hold) {
			for (tag = 0; tag < dev->cfg.queue_depth; tag++) {
				struct request *rq = q->tags[tag].rq;
				struct abuse_cmd *cmd;

				if (!rq)
					continue;
				cmd = blk_mq_rq_to_pdu(rq);
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

/*
 * Did the server acknowledge writes that no completed FLUSH covers?  Only
 * meaningful once the generation has ended (no completion can start).
 */
static bool abuse_cache_dirty(struct abuse_dev *dev)
{
	return (dev->cfg.flags & ABUSE_DEV_F_WRITE_CACHE) &&
	       atomic64_read(&dev->wr_acked) > atomic64_read(&dev->wr_durable);
}

static void abuse_server_lost(struct abuse_dev *dev, u32 gen)
{
	bool hold;

	mutex_lock(&dev->lock);
	if (dev->gen == gen && dev->server) {
		hold = dev->cfg.reconnect_ms && !dev->removing;
		abuse_set_disconnected(dev, hold);
		if (abuse_cache_dirty(dev) && !dev->removing) {
			/*
			 * Writes the lost server acknowledged may be gone with
			 * its cache.  A FLUSH served by a new server would
			 * call them durable: no reconnect, fail everything.
			 */
			dev->cache_lost = true;
			if (hold)
				abuse_set_disconnected(dev, false);
			hold = false;
			pr_warn("abuse%d: server lost with %lld unflushed writes; failing I/O, no reconnect\n",
				dev->id, atomic64_read(&dev->wr_acked) -
				atomic64_read(&dev->wr_durable));
		} else if (!hold && !dev->removing) {
			pr_info("abuse%d: server gone, failing I/O\n", dev->id);
		}
		if (hold)
			schedule_delayed_work(&dev->reconnect_work,
					      msecs_to_jiffies(dev->cfg.reconnect_ms));
	}
	mutex_unlock(&dev->lock);
}

static void abuse_reconnect_timeout(struct work_struct *work)
{
	struct abuse_dev *dev = container_of(to_delayed_work(work),
					     struct abuse_dev, reconnect_work);

	mutex_lock(&dev->lock);
	if (!dev->server && dev->queues[0].state == ABUSE_Q_WAITING) {
		pr_info("abuse%d: no server reconnected, failing I/O\n", dev->id);
		abuse_set_disconnected(dev, false);
	}
	mutex_unlock(&dev->lock);
}

/* ABUSE_DEV_F_TIMEOUT_DEAD: a timed-out request ends its server. */
static void abuse_expire_server(struct work_struct *work)
{
	struct abuse_dev *dev = container_of(work, struct abuse_dev, expire_work);

	pr_warn("abuse%d: I/O timeout, treating the server as dead\n", dev->id);
	abuse_server_lost(dev, READ_ONCE(dev->expire_gen));
}

/* Make @s the server of @dev.  Called with dev->lock held. */
static void abuse_set_attached(struct abuse_dev *dev, struct abuse_session *s)
{
	unsigned int i;

	dev->gen++;
	dev->server = s;
	for (i = 0; i < dev->cfg.nr_hw_queues; i++) {
		struct abuse_queue *q = &dev->queues[i];

		spin_lock_irq(&q->lock);
		q->gen = dev->gen;
		q->has_file = false;
		q->state = ABUSE_Q_LIVE;
		abuse_queue_clear_expired(q);
		spin_unlock_irq(&q->lock);
		wake_up_all(&q->wait);
	}
	kref_get(&dev->kref);
	s->dev = dev;
	s->gen = dev->gen;
}

/* Undo abuse_set_attached() for a session whose device is going away. */
static void abuse_session_drop(struct abuse_session *s)
{
	struct abuse_dev *dev = s->dev;

	s->dev = NULL;
	abuse_dev_put(dev);
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
	if (c->features || c->token)
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
	if (!c->io_timeout_ms)
		c->io_timeout_ms = ABUSE_DEF_IO_TIMEOUT_MS;
	if (c->io_timeout_ms < ABUSE_MIN_IO_TIMEOUT_MS ||
	    c->io_timeout_ms > ABUSE_MAX_IO_TIMEOUT_MS)
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

/*
 * Tear down a device marked removing: fail its I/O, delete the disk (which
 * works while it is open or mounted: its users get errors), then free the
 * index and drop the reference abuse_idr held.
 */
static void abuse_destroy(struct abuse_dev *dev)
{
	cancel_delayed_work_sync(&dev->reconnect_work);
	mutex_lock(&dev->lock);
	abuse_set_disconnected(dev, false);
	mutex_unlock(&dev->lock);
	del_gendisk(dev->disk);
	cancel_work_sync(&dev->expire_work);
	mutex_lock(&abuse_idr_lock);
	idr_remove(&abuse_idr, dev->id);
	mutex_unlock(&abuse_idr_lock);
	put_disk(dev->disk);
	blk_mq_free_tag_set(&dev->tag_set);
	pr_info("abuse%d: removed\n", dev->id);
	abuse_dev_put(dev);
}

static int abuse_alloc_queues(struct abuse_dev *dev)
{
	unsigned int i, nr = dev->cfg.nr_hw_queues;

	dev->queues = kcalloc(nr, sizeof(*dev->queues), GFP_KERNEL);
	if (!dev->queues)
		return -ENOMEM;
	for (i = 0; i < nr; i++) {
		struct abuse_queue *q = &dev->queues[i];

		q->dev = dev;
		q->id = i;
		q->state = ABUSE_Q_LIVE;
		spin_lock_init(&q->lock);
		init_waitqueue_head(&q->wait);
		INIT_LIST_HEAD(&q->pending);
		q->tags = kvcalloc(dev->cfg.queue_depth, sizeof(*q->tags),
				   GFP_KERNEL);
		if (!q->tags)
			return -ENOMEM;
	}
	return 0;
}

static int abuse_add(struct abuse_session *s, struct abuse_dev_config *c,
		     struct abuse_dev_config __user *reply)
{
	struct abuse_dev *dev;
	struct gendisk *disk;
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
	INIT_WORK(&dev->expire_work, abuse_expire_server);
	atomic64_set(&dev->wr_acked, 0);
	atomic64_set(&dev->wr_durable, 0);
	dev->cfg = *c;
	dev->cfg.features = ABUSE_FEAT_ALL;	/* reported in every reply */
	dev->id = -1;
	do {
		dev->token = get_random_u64();
	} while (!dev->token);

	/* Reserve the index; the device becomes visible only when live. */
	mutex_lock(&abuse_idr_lock);
	if (c->dev_id >= 0)
		ret = idr_alloc(&abuse_idr, NULL, c->dev_id, c->dev_id + 1,
				GFP_KERNEL);
	else
		ret = idr_alloc(&abuse_idr, NULL, 0, ABUSE_MAX_DEVICES,
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
	dev->tag_set.cmd_size = sizeof(struct abuse_cmd);
	dev->tag_set.timeout = msecs_to_jiffies(c->io_timeout_ms);
	dev->tag_set.driver_data = dev;
#ifdef BLK_MQ_F_SHOULD_MERGE
	dev->tag_set.flags = BLK_MQ_F_SHOULD_MERGE;
#endif
	ret = blk_mq_alloc_tag_set(&dev->tag_set);
	if (ret)
		goto out_idr;
	/*
	 * blk-mq lowers the queue count to the CPU count and the depth under
	 * memory pressure: the server gets (and serves) what it applied.
	 */
	dev->cfg.nr_hw_queues = dev->tag_set.nr_hw_queues;
	dev->cfg.queue_depth = dev->tag_set.queue_depth;
	ret = abuse_alloc_queues(dev);
	if (ret)
		goto out_tags;

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
	c->token = dev->token;
	if (copy_to_user(reply, c, sizeof(*c))) {
		/* The caller cannot know the device: do not leave it behind. */
		dev->removing = true;
		abuse_session_drop(s);
		abuse_destroy(dev);
		return -EFAULT;
	}
	mutex_lock(&abuse_idr_lock);
	idr_replace(&abuse_idr, dev, dev->id);
	mutex_unlock(&abuse_idr_lock);
	pr_info("abuse%d: %llu bytes, lbs %u, %u queues x %u, max io %u, io timeout %u ms\n",
		dev->id, c->size, c->logical_block_size, c->nr_hw_queues,
		c->queue_depth, c->max_io_bytes, c->io_timeout_ms);
	return 0;

out_detach:
	mutex_lock(&dev->lock);
	dev->server = NULL;
	mutex_unlock(&dev->lock);
	abuse_session_drop(s);
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

/*
 * May session @s remove @dev?  Its current server may, and whoever holds
 * the token ADD handed out; a device without a server that holds no I/O
 * for a reconnect (every request fails) may be removed by anyone.
 * Called with dev->lock held.
 */
static bool abuse_may_remove(struct abuse_dev *dev, struct abuse_session *s,
			     u64 token)
{
	if (dev->server && dev->server == s)
		return true;
	if (token && token == dev->token)
		return true;
	return !dev->server && dev->queues[0].state == ABUSE_Q_DEAD;
}

static int abuse_remove(struct abuse_session *s, struct abuse_dev_remove *rm)
{
	struct abuse_dev *dev;
	bool forced = false;
	int ret = 0;

	mutex_lock(&abuse_idr_lock);
	dev = idr_find(&abuse_idr, rm->dev_id);
	if (!dev) {
		mutex_unlock(&abuse_idr_lock);
		return -ENOENT;
	}
	mutex_lock(&dev->lock);
	if (!abuse_may_remove(dev, s, rm->token))
		ret = -EPERM;
	else if (dev->removing)
		ret = -EBUSY;
	else if (dev->open_count && !(rm->flags & ABUSE_REMOVE_F_FORCE))
		ret = -EBUSY;
	else
		dev->removing = true;
	forced = !ret && dev->open_count;
	mutex_unlock(&dev->lock);
	mutex_unlock(&abuse_idr_lock);
	if (ret)
		return ret;

	if (forced)
		pr_warn("abuse%d: forced removal while open, failing its I/O\n",
			dev->id);
	abuse_destroy(dev);
	return 0;
}

static int abuse_attach(struct abuse_session *s, struct abuse_dev_config *c)
{
	struct abuse_dev_config zero = {
		.version = c->version,
		.dev_id = c->dev_id,
		.token = c->token,
	};
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
	if (!c->token || c->token != dev->token) {
		ret = -EPERM;
	} else if (dev->cache_lost) {
		ret = -ENOTRECOVERABLE;
	} else if (dev->server || dev->removing) {
		ret = -EBUSY;
	} else {
		cancel_delayed_work(&dev->reconnect_work);
		abuse_set_attached(dev, s);
		*c = dev->cfg;
		c->token = dev->token;
		pr_info("abuse%d: server attached\n", dev->id);
	}
	mutex_unlock(&dev->lock);
	mutex_unlock(&abuse_idr_lock);
	return ret;
}

/* ---------------------------------------------------------- queue fd */

/* A completed FLUSH made the writes acknowledged before it durable. */
static void abuse_flush_done(struct abuse_dev *dev, s64 mark)
{
	s64 old = atomic64_read(&dev->wr_durable);

	while (old < mark) {
		s64 prev = atomic64_cmpxchg(&dev->wr_durable, old, mark);

		if (prev == old)
			break;
		old = prev;
	}
}

/* End a request the caller holds (BUSY or FAULTING). */
static void abuse_end_held(struct abuse_queue *q, struct request *rq,
			   blk_status_t sts)
{
	spin_lock_irq(&q->lock);
	q->tags[rq->tag].rq = NULL;
	abuse_rq_cmd(rq)->state = ABUSE_CMD_FREE;
	spin_unlock_irq(&q->lock);
	blk_mq_end_request(rq, sts);
}

/*
 * The in-flight request (@tag, @seq) names, with the queue lock held.
 * NULL: it timed out; for a completion (@complete) that late completion
 * is accepted and ignored, and it frees the tag.
 */
static struct request *abuse_find_inflight(struct abuse_queue *q,
					   struct abuse_qfile *qf, u16 tag,
					   u64 seq, bool complete)
{
	struct abuse_tag *t = &q->tags[tag];
	struct abuse_cmd *cmd;

	if (q->gen != qf->gen || q->state != ABUSE_Q_LIVE)
		return ERR_PTR(-ENOTCONN);
	cmd = t->rq ? blk_mq_rq_to_pdu(t->rq) : NULL;
	if (cmd && cmd->state == ABUSE_CMD_INFLIGHT && cmd->seq == seq)
		return t->rq;
	if (complete && t->expired_seq && seq == t->expired_seq) {
		/* the request timed out: the tag is free again */
		t->expired_seq = 0;
		q->nr_expired--;
		return NULL;
	}
	return ERR_PTR(-ENOENT);
}

/*
 * Give back a BUSY request whose copy found a page missing, so that it can
 * time out while the page is faulted in: in flight again, or wherever the
 * end of its server generation meanwhile would have put it (failed, or
 * pending for the next server, which may be asleep in poll already).
 */
static int abuse_unhold_inflight(struct abuse_queue *q, struct abuse_qfile *qf,
				 struct request *rq)
{
	struct abuse_cmd *cmd = blk_mq_rq_to_pdu(rq);

	spin_lock_irq(&q->lock);
	if (q->state == ABUSE_Q_DEAD) {
		spin_unlock_irq(&q->lock);
		abuse_end_held(q, rq, BLK_STS_IOERR);
		return -ENOTCONN;
	}
	if (q->gen != qf->gen) {
		cmd->state = ABUSE_CMD_PENDING;
		list_add(&cmd->node, &q->pending);
		spin_unlock_irq(&q->lock);
		abuse_wake(q);
		return -ENOTCONN;
	}
	cmd->state = ABUSE_CMD_INFLIGHT;
	spin_unlock_irq(&q->lock);
	return 0;
}

static int abuse_complete_one(struct abuse_qfile *qf,
			      const struct abuse_completion *c)
{
	struct abuse_queue *q = qf->q;
	struct abuse_dev *dev = q->dev;
	bool bad_addr = false, to_user;
	struct request *rq;
	blk_status_t sts;
	u64 addr = 0;
	int tries, ret;

	if (c->flags || c->result > 0 || c->result < -MAX_ERRNO ||
	    c->tag >= dev->cfg.queue_depth)
		return -EINVAL;

	for (tries = 0; ; tries++) {
		spin_lock_irq(&q->lock);
		rq = abuse_find_inflight(q, qf, c->tag, c->seq, true);
		if (IS_ERR_OR_NULL(rq)) {
			spin_unlock_irq(&q->lock);
			return PTR_ERR_OR_ZERO(rq);
		}
		/* an address only for data: READ, and WRITE on USER_COPY */
		if (c->addr && req_op(rq) != REQ_OP_READ &&
		    !(qf->user_copy && req_op(rq) == REQ_OP_WRITE)) {
			spin_unlock_irq(&q->lock);
			return -EINVAL;
		}
		abuse_rq_cmd(rq)->state = ABUSE_CMD_BUSY;
		/*
		 * Count what the server acknowledged while its generation is
		 * certainly current: abuse_server_lost() reads these counters
		 * after ending the generation under this lock.
		 */
		if (!c->result && (dev->cfg.flags & ABUSE_DEV_F_WRITE_CACHE)) {
			if (req_op(rq) == REQ_OP_FLUSH)
				abuse_flush_done(dev, abuse_rq_cmd(rq)->wr_mark);
			else if (abuse_is_write(rq) && !(rq->cmd_flags & REQ_FUA))
				atomic64_inc(&dev->wr_acked);
		}
		spin_unlock_irq(&q->lock);

		sts = errno_to_blk_status(c->result);
		ret = 0;
		if (c->result)
			break;
		if (qf->user_copy) {
			/* the data moves only where the server names it */
			if (!c->addr)
				break;
			addr = c->addr;
		} else {
			if (req_op(rq) != REQ_OP_READ)
				break;
			addr = c->addr ? c->addr :
			       qf->buf_addr + (u64)c->tag * dev->cfg.max_io_bytes;
		}
		to_user = req_op(rq) == REQ_OP_WRITE;
		if (bad_addr) {
			ret = -EFAULT;
			break;
		}
		ret = abuse_copy_rq(rq, 0, blk_rq_bytes(rq), addr, to_user);
		if (ret != -EAGAIN)
			break;
		if (tries == ABUSE_COPY_TRIES) {
			ret = -EFAULT;
			break;
		}
		ret = abuse_unhold_inflight(q, qf, rq);
		if (ret)
			return ret;
		bad_addr = !abuse_fault_in(addr, blk_rq_bytes(rq), to_user);
	}
	/* A bad address ends that request with EIO, as a bad WRITE buffer does. */
	abuse_end_held(q, rq, ret ? BLK_STS_IOERR : sts);
	return ret;
}

/* The first pending request that may be handed out (queue lock held). */
static struct abuse_cmd *abuse_first_ready(struct abuse_queue *q)
{
	struct abuse_cmd *cmd;

	if (!q->nr_expired)
		return list_first_entry_or_null(&q->pending, struct abuse_cmd,
						node);
	list_for_each_entry(cmd, &q->pending, node)
		if (!q->tags[blk_mq_rq_from_pdu(cmd)->tag].expired_seq)
			return cmd;
	return NULL;
}

static void abuse_fill_request(struct abuse_qfile *qf, struct request *rq,
			       struct abuse_request *r)
{
	struct abuse_queue *q = qf->q;

	memset(r, 0, sizeof(*r));
	r->seq = abuse_rq_cmd(rq)->seq;
	if (req_op(rq) != REQ_OP_FLUSH) {
		r->offset = (u64)blk_rq_pos(rq) << SECTOR_SHIFT;
		r->len = blk_rq_bytes(rq);
	}
	r->op_flags = abuse_rq_op_flags(rq);
	r->tag = rq->tag;
	r->queue_id = q->id;
	if (req_op(rq) == REQ_OP_WRITE && !qf->user_copy)
		r->addr = qf->buf_addr + (u64)r->tag * q->dev->cfg.max_io_bytes;
}

/* Hand one pending request to the server; 0 = stored, 1 = none left. */
static int abuse_fetch_one(struct abuse_qfile *qf, struct abuse_request __user *ureq)
{
	struct abuse_queue *q = qf->q;
	struct abuse_request r;
	struct abuse_cmd *cmd;
	struct request *rq;
	bool bad_buf, bad_ureq;
	int tries, ret;
	u64 seq;

	for (tries = 0; ; tries++) {
		spin_lock_irq(&q->lock);
		if (q->gen != qf->gen || q->state != ABUSE_Q_LIVE) {
			spin_unlock_irq(&q->lock);
			return -ENOTCONN;
		}
		cmd = abuse_first_ready(q);
		if (!cmd) {
			spin_unlock_irq(&q->lock);
			return 1;
		}
		list_del_init(&cmd->node);
		cmd->state = ABUSE_CMD_BUSY;
		seq = ++q->seq;
		cmd->seq = seq;
		rq = blk_mq_rq_from_pdu(cmd);
		spin_unlock_irq(&q->lock);

		abuse_fill_request(qf, rq, &r);
		ret = 0;
		if (r.addr)
			ret = abuse_copy_rq(rq, 0, r.len, r.addr, true);
		if (ret == -EFAULT) {
			/*
			 * The server's buffer for this tag is unusable.  Handing
			 * the request back would fail on every fetch and wedge
			 * the queue: fail it, as a bad READ source is.
			 */
			abuse_end_held(q, rq, BLK_STS_IOERR);
			return -EFAULT;
		}
		if (!ret) {
			pagefault_disable();
			if (copy_to_user(ureq, &r, sizeof(r)))
				ret = -EAGAIN;
			pagefault_enable();
		}

		spin_lock_irq(&q->lock);
		if (q->state == ABUSE_Q_DEAD) {
			/* the device died while we copied: fail it ourselves */
			spin_unlock_irq(&q->lock);
			abuse_end_held(q, rq, BLK_STS_IOERR);
			return -ENOTCONN;
		}
		if (q->gen != qf->gen) {
			/*
			 * For the next server, which may already be asleep in
			 * poll: wake it.
			 */
			cmd->state = ABUSE_CMD_PENDING;
			list_add(&cmd->node, &q->pending);
			spin_unlock_irq(&q->lock);
			abuse_wake(q);
			return -ENOTCONN;
		}
		if (!ret) {
			cmd->state = ABUSE_CMD_INFLIGHT;
			spin_unlock_irq(&q->lock);
			return 0;
		}
		/*
		 * A page of the tag buffer or of the request array is not
		 * present.  Fault them in with the request off the list but
		 * its pages untouched, where its timeout and the end of the
		 * server generation can still reach it.
		 */
		cmd->state = ABUSE_CMD_FAULTING;
		spin_unlock_irq(&q->lock);
		bad_ureq = !abuse_fault_in((u64)(uintptr_t)ureq, sizeof(r), true);
		bad_buf = !abuse_fault_in(r.addr, r.addr ? r.len : 0, true);

		spin_lock_irq(&q->lock);
		if (q->tags[r.tag].rq != rq || cmd->state != ABUSE_CMD_FAULTING ||
		    cmd->seq != seq) {
			/* timed out or failed meanwhile: not ours any more */
			spin_unlock_irq(&q->lock);
			if (bad_ureq)
				return -EFAULT;
			continue;
		}
		if (bad_buf || tries == ABUSE_COPY_TRIES) {
			spin_unlock_irq(&q->lock);
			abuse_end_held(q, rq, BLK_STS_IOERR);
			return -EFAULT;
		}
		cmd->state = ABUSE_CMD_PENDING;
		list_add(&cmd->node, &q->pending);
		ret = q->gen != qf->gen ? -ENOTCONN : bad_ureq ? -EFAULT : 0;
		spin_unlock_irq(&q->lock);
		if (ret) {
			abuse_wake(q);
			return ret;
		}
	}
}

/* Fetch up to b->max_requests waiting requests into @ur. */
static int abuse_fetch_batch(struct abuse_qfile *qf,
			     struct abuse_request __user *ur,
			     struct abuse_batch *b)
{
	int ret = 0;

	while (!ret && b->nr_requests < b->max_requests) {
		ret = abuse_fetch_one(qf, &ur[b->nr_requests]);
		if (ret == 1)
			return 0;
		if (!ret)
			b->nr_requests++;
		cond_resched();
	}
	return ret;
}

/* Has the server something to do: a request to fetch, or a dead queue fd? */
static bool abuse_queue_ready(struct abuse_qfile *qf)
{
	struct abuse_queue *q = qf->q;
	bool ready;

	spin_lock_irq(&q->lock);
	ready = q->gen != qf->gen || q->state != ABUSE_Q_LIVE ||
		abuse_first_ready(q);
	spin_unlock_irq(&q->lock);
	return ready;
}

/*
 * ABUSE_BATCH_F_WAIT with nothing fetched: poll for up to @spin_us (while
 * nothing else wants this CPU), then sleep for up to @wait_ms, until
 * abuse_queue_ready().  A signal ends the wait early.  Returns true if
 * there is something to fetch (or report).
 */
static bool abuse_wait_ready(struct abuse_qfile *qf, u32 wait_ms, u32 spin_us)
{
	struct abuse_queue *q = qf->q;
	u64 end;

	if (spin_us) {
		end = ktime_get_ns() + (u64)spin_us * NSEC_PER_USEC;
		do {
			/* a racy peek; abuse_queue_ready() decides */
			if ((!list_empty(&q->pending) ||
			     READ_ONCE(q->gen) != qf->gen) &&
			    abuse_queue_ready(qf))
				return true;
			if (need_resched() || signal_pending(current))
				break;
			cpu_relax();
		} while (ktime_get_ns() < end);
	}
	return wait_event_interruptible_timeout(q->wait, abuse_queue_ready(qf),
						msecs_to_jiffies(wait_ms)) > 0;
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
	if ((b.flags & ~ABUSE_BATCH_F_WAIT) || b.reserved ||
	    b.nr_completions > ABUSE_MAX_BATCH ||
	    b.max_requests > ABUSE_MAX_BATCH)
		return -EINVAL;
	if (b.flags & ABUSE_BATCH_F_WAIT) {
		if (!b.wait_ms || b.wait_ms > ABUSE_MAX_WAIT_MS ||
		    b.spin_us > ABUSE_MAX_SPIN_US || !b.max_requests)
			return -EINVAL;
	} else if (b.wait_ms || b.spin_us) {
		return -EINVAL;
	}
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
		cond_resched();
	}

	if (!ret)
		ret = abuse_fetch_batch(qf, ur, &b);
	if (!ret && !b.nr_requests && (b.flags & ABUSE_BATCH_F_WAIT) &&
	    abuse_wait_ready(qf, b.wait_ms, b.spin_us))
		ret = abuse_fetch_batch(qf, ur, &b);

	if (copy_to_user(ub, &b, sizeof(b)))
		return -EFAULT;
	return ret;
}

/*
 * ABUSE_QUEUE_COPY: move part of an in-flight request's data between its
 * bio and server memory (USER_COPY queues).  The request stays in flight
 * whatever happens; the server completes it.
 */
static long abuse_queue_copy(struct abuse_qfile *qf, struct abuse_copy __user *ua)
{
	struct abuse_queue *q = qf->q;
	struct abuse_copy a;
	struct request *rq;
	bool to_user;
	int tries, ret, err;

	if (copy_from_user(&a, ua, sizeof(a)))
		return -EFAULT;
	if (!qf->user_copy || a.flags || a.reserved || !a.len ||
	    a.tag >= q->dev->cfg.queue_depth)
		return -EINVAL;
	for (tries = 0; ; tries++) {
		spin_lock_irq(&q->lock);
		rq = abuse_find_inflight(q, qf, a.tag, a.seq, false);
		if (IS_ERR_OR_NULL(rq)) {
			spin_unlock_irq(&q->lock);
			return rq ? PTR_ERR(rq) : -ENOENT;
		}
		if ((req_op(rq) != REQ_OP_READ && req_op(rq) != REQ_OP_WRITE) ||
		    (u64)a.offset + a.len > blk_rq_bytes(rq)) {
			spin_unlock_irq(&q->lock);
			return -EINVAL;
		}
		abuse_rq_cmd(rq)->state = ABUSE_CMD_BUSY;
		spin_unlock_irq(&q->lock);

		to_user = req_op(rq) == REQ_OP_WRITE;
		ret = abuse_copy_rq(rq, a.offset, a.len, a.addr, to_user);
		if (ret == -EAGAIN && tries == ABUSE_COPY_TRIES)
			ret = -EFAULT;
		err = abuse_unhold_inflight(q, qf, rq);
		if (err)
			return err;
		if (ret != -EAGAIN)
			return ret;
		if (!abuse_fault_in(a.addr, a.len, to_user))
			return -EFAULT;
	}
}

static long abuse_queue_ioctl(struct file *file, unsigned int cmd,
			      unsigned long arg)
{
	struct abuse_qfile *qf = file->private_data;

	switch (cmd) {
	case ABUSE_QUEUE_COMMIT_FETCH:
		return abuse_queue_commit_fetch(qf, (void __user *)arg);
	case ABUSE_QUEUE_COPY:
		return abuse_queue_copy(qf, (void __user *)arg);
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
	else if (abuse_first_ready(q))
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

	if ((qs->flags & ~ABUSE_QUEUE_F_USER_COPY) || qs->reserved0 ||
	    qs->reserved)
		return -EINVAL;
	if (!dev)
		return -ENOTCONN;
	if (qs->dev_id != dev->id || qs->queue_id >= dev->cfg.nr_hw_queues)
		return -EINVAL;
	need = (u64)dev->cfg.queue_depth * dev->cfg.max_io_bytes;
	if (qs->flags & ABUSE_QUEUE_F_USER_COPY) {
		/* no per-tag buffers: the server names every address */
		if (qs->buf_addr || qs->buf_len)
			return -EINVAL;
	} else if (!PAGE_ALIGNED(qs->buf_addr) || qs->buf_len < need ||
		   !access_ok(u64_to_user_ptr(qs->buf_addr), need)) {
		return -EINVAL;
	}
	q = &dev->queues[qs->queue_id];

	qf = kzalloc(sizeof(*qf), GFP_KERNEL);
	if (!qf)
		return -ENOMEM;
	qf->dev = dev;
	qf->q = q;
	qf->gen = s->gen;
	qf->user_copy = qs->flags & ABUSE_QUEUE_F_USER_COPY;
	qf->buf_addr = qs->buf_addr;
	qf->buf_len = qs->buf_len;

	mutex_lock(&dev->lock);
	if (dev->gen != s->gen || dev->server != s) {
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
		abuse_session_drop(s);
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
		if (copy_from_user(&cfg, argp, sizeof(cfg)))
			return -EFAULT;
		mutex_lock(&s->lock);
		ret = abuse_add(s, &cfg, argp);
		mutex_unlock(&s->lock);
		return ret ? ret : cfg.dev_id;
	case ABUSE_CTL_ATTACH:
		if (copy_from_user(&cfg, argp, sizeof(cfg)))
			return -EFAULT;
		mutex_lock(&s->lock);
		ret = abuse_attach(s, &cfg);
		if (!ret && copy_to_user(argp, &cfg, sizeof(cfg))) {
			/* The caller cannot serve what it cannot see: undo. */
			abuse_server_lost(s->dev, s->gen);
			abuse_session_drop(s);
			ret = -EFAULT;
		}
		mutex_unlock(&s->lock);
		return ret ? ret : cfg.dev_id;
	case ABUSE_CTL_REMOVE:
		if (copy_from_user(&rm, argp, sizeof(rm)))
			return -EFAULT;
		if (rm.flags & ~ABUSE_REMOVE_F_FORCE ||
		    rm.dev_id >= ABUSE_MAX_DEVICES)
			return -EINVAL;
		return abuse_remove(s, &rm);
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

/*
 * A dynamic minor: there is no reserved one to claim for /dev/abctl, so no
 * "devname:" alias either (depmod ignores it without a fixed minor).  Load
 * the module with modprobe (see the README's DKMS section).
 */
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
	for (;;) {
		id = 0;
		mutex_lock(&abuse_idr_lock);
		dev = idr_get_next(&abuse_idr, &id);
		mutex_unlock(&abuse_idr_lock);
		if (!dev)
			break;
		mutex_lock(&dev->lock);
		dev->removing = true;
		mutex_unlock(&dev->lock);
		abuse_destroy(dev);
	}
	idr_destroy(&abuse_idr);
	unregister_blkdev(abuse_major, "abuse");
}

module_init(abuse_init);
module_exit(abuse_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("The uio authors");
MODULE_DESCRIPTION("ABUSE: block devices served from userspace");
MODULE_VERSION("1.2");
