/*
 * queue/spool — segment writer and group commit.  See spool.h.
 *
 * Offsets are reserved in submission order (seg->tail grows synchronously),
 * writes complete in any order; the record format (record.h) tolerates the
 * holes a crash can leave between them.  A commit record is written only
 * after every chunk of its message completed, and the `250` waits for the
 * fdatasync submitted after the commit record completed: that ordering is
 * invariant 1.
 */
#include "queue/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

struct spool_seg {
	int fd;
	uint64_t seq;
	uint64_t tail;	/* next free offset */
	uint32_t users; /* messages begun here and not yet durable/aborted */
	struct spool_msg *wait_head, *wait_tail; /* commits written, need a sync */
	struct spool_msg *sync_head;		 /* covered by the sync in flight */
	bool sync_inflight;
	bool in_use;
	bool retiring; /* a newer segment took over: close when quiet */
};

struct spool {
	struct ring *ring;
	const struct spool_ops *ops;
	void *ctx;
	char dir[PATH_MAX]; /* <root>/<shard> */
	int dirfd;
	uint32_t shard;
	uint64_t segment_size;
	bool durable;
	struct spool_seg segs[SPOOL_SEGMENTS_MAX];
	int cur;
	int opening;	/* segment index being opened, -1 */
	int open_steps; /* SEGHDR + DIRSYNC still to complete */
	int open_error;
	uint32_t inflight; /* spool-level ops (sync, open, close) */
	char open_name[32];
	struct spool_rec_hdr seghdr;
	struct spool_seg_info seginfo;
	struct iovec seghdr_iov[2];
	uint64_t next_seq;
	uint64_t last_id;
	struct spool_stats stats;
	struct spool_msg *pend_head; /* messages with gathered pieces */
};

static const char zero_pad[SPOOL_REC_ALIGN];

static void seg_name(char *out, size_t cap, uint64_t seq)
{
	snprintf(out, cap, "%016llx.seg", (unsigned long long)seq);
}

static int mkdir_p(const char *path)
{
	char tmp[PATH_MAX];
	size_t n = strlen(path);

	if (n == 0 || n >= sizeof(tmp))
		return -ENAMETOOLONG;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Largest segment sequence number present in dir, 0 if none. */
static uint64_t seg_max_seq(DIR *d)
{
	struct dirent *de;
	uint64_t max = 0;

	while ((de = readdir(d)) != NULL) {
		unsigned long long seq;
		char tail[8];

		if (sscanf(de->d_name, "%16llx.se%1s", &seq, tail) == 2 && seq > max)
			max = seq;
	}
	rewinddir(d);
	return max;
}

static void seghdr_prepare(struct spool *sp, uint64_t seq)
{
	sp->seginfo = (struct spool_seg_info){.version = 1, .shard = sp->shard, .seq = seq};
	spool_rec_hdr_init(&sp->seghdr, SPOOL_REC_SEGMENT, 0, sizeof(sp->seginfo),
			   spool_crc32c(0, &sp->seginfo, sizeof(sp->seginfo)));
	sp->seghdr_iov[0] = (struct iovec){&sp->seghdr, sizeof(sp->seghdr)};
	sp->seghdr_iov[1] = (struct iovec){&sp->seginfo, sizeof(sp->seginfo)};
}

/* Start-up path: create the first segment with blocking calls, made
 * durable (file and directory entry) before any message can use it. */
static int seg_create_sync(struct spool *sp, struct spool_seg *seg, char *why, size_t why_len)
{
	char rec[sizeof(struct spool_rec_hdr) + sizeof(struct spool_seg_info)];
	char name[32];
	ssize_t w;

	seg_name(name, sizeof(name), sp->next_seq);
	seg->fd = openat(sp->dirfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0640);
	if (seg->fd < 0) {
		snprintf(why, why_len, "%s/%s: %s", sp->dir, name, strerror(errno));
		return -errno;
	}
	seghdr_prepare(sp, sp->next_seq);
	memcpy(rec, &sp->seghdr, sizeof(sp->seghdr));
	memcpy(rec + sizeof(sp->seghdr), &sp->seginfo, sizeof(sp->seginfo));
	w = pwrite(seg->fd, rec, sizeof(rec), 0);
	if (w != (ssize_t)sizeof(rec) || fdatasync(seg->fd) != 0 || fsync(sp->dirfd) != 0) {
		snprintf(why, why_len, "%s/%s: cannot write segment header: %s", sp->dir, name,
			 strerror(errno ? errno : EIO));
		return -EIO;
	}
	seg->seq = sp->next_seq++;
	seg->tail = spool_rec_size(sizeof(sp->seginfo));
	seg->in_use = true;
	return 0;
}

int spool_open(struct spool **out, const char *root, uint32_t shard, uint64_t segment_size,
	       bool durable, uint64_t first_id, struct ring *ring, const struct spool_ops *ops,
	       void *ctx, char *why, size_t why_len)
{
	struct spool *sp = calloc(1, sizeof(*sp));
	DIR *d;
	int rc;

	if (!sp)
		return -ENOMEM;
	sp->ring = ring;
	sp->ops = ops;
	sp->ctx = ctx;
	sp->shard = shard;
	sp->segment_size = segment_size;
	sp->durable = durable;
	sp->last_id = first_id;
	sp->opening = -1;
	snprintf(sp->dir, sizeof(sp->dir), "%s/%u", root, shard);
	rc = mkdir_p(sp->dir);
	sp->dirfd = rc == 0 ? open(sp->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	d = sp->dirfd >= 0 ? fdopendir(dup(sp->dirfd)) : NULL;
	if (!d) {
		snprintf(why, why_len, "spool.path: cannot use %s: %s", sp->dir,
			 strerror(rc ? -rc : errno));
		free(sp);
		return rc ? rc : -errno;
	}
	sp->next_seq = seg_max_seq(d) + 1;
	closedir(d);
	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++)
		sp->segs[i].fd = -1;
	rc = seg_create_sync(sp, &sp->segs[0], why, why_len);
	if (rc < 0) {
		spool_close(sp);
		return rc;
	}
	sp->cur = 0;
	*out = sp;
	return 0;
}

void spool_close(struct spool *sp)
{
	if (!sp)
		return;
	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++)
		if (sp->segs[i].fd >= 0)
			close(sp->segs[i].fd);
	if (sp->dirfd >= 0)
		close(sp->dirfd);
	free(sp);
}

uint64_t spool_next_id(struct spool *sp)
{
	/* shard (8 bits) | unix seconds (32) | counter (24): readable, sorted
	 * by arrival, and strictly above every id recovered from disk. */
	uint64_t id = (uint64_t)(sp->shard & 0xff) << 56 | ((uint64_t)time(NULL) & 0xffffffffu)
							       << 24;

	if (id <= sp->last_id)
		id = sp->last_id + 1;
	sp->last_id = id;
	return id;
}

/* Begin opening the next segment in the background once the current one is
 * full; messages keep going to the current one until the new one is durable. */
static void seg_rotate_start(struct spool *sp)
{
	struct io_uring_sqe *sqe;
	int idx = -1;

	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++)
		if (!sp->segs[i].in_use) {
			idx = i;
			break;
		}
	if (idx < 0)
		return; /* all slots busy: grow the current segment instead */
	sp->opening = idx;
	sp->segs[idx] = (struct spool_seg){.fd = -1, .in_use = true, .seq = sp->next_seq++};
	seg_name(sp->open_name, sizeof(sp->open_name), sp->segs[idx].seq);
	sqe = ring_sqe(sp->ring);
	io_uring_prep_openat(sqe, sp->dirfd, sp->open_name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC,
			     0640);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_OPEN, 0, 0, (uint32_t)idx));
	sp->inflight++;
}

void spool_msg_begin(struct spool *sp, struct spool_msg *m, uint64_t id, uint32_t owner,
		     uint16_t owner_gen)
{
	struct spool_seg *seg = &sp->segs[sp->cur];

	assert(!m->active && m->writes_inflight == 0 && !m->pend_listed);
	if (seg->tail >= sp->segment_size && sp->opening < 0)
		seg_rotate_start(sp);
	memset(m, 0, offsetof(struct spool_msg, wr));
	m->id = id;
	m->seg = seg;
	m->owner = owner;
	m->owner_gen = owner_gen;
	m->active = true;
	m->committing = false;
	m->sync_next = NULL;
	seg->users++;
}

static struct spool_wr *wr_free(struct spool_msg *m)
{
	for (int i = 0; i < SPOOL_MSG_WRITES_MAX; i++)
		if (!m->wr[i].busy)
			return &m->wr[i];
	return NULL;
}

bool spool_msg_can_write(const struct spool_msg *m)
{
	if (m->npieces < SPOOL_PIECES_MAX)
		return true;
	for (int i = 0; i < SPOOL_MSG_WRITES_MAX; i++)
		if (!m->wr[i].busy)
			return true;
	return false;
}

bool spool_msg_can_commit(const struct spool_msg *m)
{
	return wr_free((struct spool_msg *)m) != NULL;
}

static void pend_unlink(struct spool *sp, struct spool_msg *m)
{
	if (!m->pend_listed)
		return;
	if (m->pend_prev)
		m->pend_prev->pend_next = m->pend_next;
	else
		sp->pend_head = m->pend_next;
	if (m->pend_next)
		m->pend_next->pend_prev = m->pend_prev;
	m->pend_next = m->pend_prev = NULL;
	m->pend_listed = false;
}

/* Move the gathered pieces into wr as one CHUNK record (iovecs from iov[0]);
 * returns the iovec count used and the record's size on disk in *size. */
static unsigned wr_take_chunk(struct spool_msg *m, struct spool_wr *wr, uint64_t *size)
{
	uint32_t pad = (uint32_t)(spool_rec_size(m->plen) - sizeof(wr->hdr) - m->plen);
	unsigned n = 0;

	spool_rec_hdr_init(&wr->hdr, SPOOL_REC_CHUNK, m->id, m->plen, m->pcrc);
	wr->iov[n++] = (struct iovec){&wr->hdr, sizeof(wr->hdr)};
	for (uint32_t i = 0; i < m->npieces; i++) {
		wr->iov[n++] = m->piece[i];
		if (m->piece_bid[i] != SPOOL_NO_BUF)
			wr->bids[wr->nbids++] = m->piece_bid[i];
	}
	if (pad)
		wr->iov[n++] = (struct iovec){(void *)zero_pad, pad};
	if (m->wire_len == m->plen)
		m->first_off = m->seg->tail; /* the first chunk of the message */
	m->crc = spool_crc32c_combine(m->crc, m->pcrc, m->plen);
	m->npieces = 0;
	m->plen = 0;
	m->pcrc = 0;
	*size = spool_rec_size(wr->hdr.len);
	return n;
}

/* Reserve space at the segment tail and queue the writev. */
static void wr_submit(struct spool *sp, struct spool_msg *m, struct spool_wr *wr, unsigned niov,
		      uint64_t size, uint8_t op)
{
	struct spool_seg *seg = m->seg;
	struct io_uring_sqe *sqe;

	assert(niov <= sizeof(wr->iov) / sizeof(wr->iov[0]));
	wr->len = (uint32_t)size;
	wr->busy = true;
	sqe = ring_sqe(sp->ring);
	io_uring_prep_writev(sqe, seg->fd, wr->iov, niov, seg->tail);
	io_uring_sqe_set_data64(sqe, ring_ud(op, (uint8_t)(wr - m->wr), m->owner_gen, m->owner));
	seg->tail += size;
	m->writes_inflight++;
	sp->stats.writes++;
}

/* Write the gathered pieces now.  Requires a free write slot. */
static void msg_write_pieces(struct spool *sp, struct spool_msg *m)
{
	struct spool_wr *wr = wr_free(m);
	uint64_t size;
	unsigned niov;

	assert(wr && m->npieces > 0);
	wr->nbids = 0;
	wr->has_commit = false;
	niov = wr_take_chunk(m, wr, &size);
	pend_unlink(sp, m);
	wr_submit(sp, m, wr, niov, size, SPOOL_OP_WRITE);
}

void spool_msg_append(struct spool *sp, struct spool_msg *m, const char *p, uint32_t n,
		      uint16_t bid)
{
	assert(m->active && !m->committing && n > 0 && spool_msg_can_write(m));
	if (m->npieces == SPOOL_PIECES_MAX ||
	    (m->npieces && m->plen + (uint64_t)n > SPOOL_REC_PAYLOAD_MAX))
		msg_write_pieces(sp, m); /* full, or one record's bound reached */
	m->piece[m->npieces] = (struct iovec){(void *)p, n};
	m->piece_bid[m->npieces] = bid;
	m->npieces++;
	m->plen += n;
	m->pcrc = spool_crc32c(m->pcrc, p, n);
	m->wire_len += n;
	if (bid != SPOOL_NO_BUF)
		ring_buf_get(sp->ring, bid);
	if (!m->pend_listed) {
		m->pend_next = sp->pend_head;
		if (sp->pend_head)
			sp->pend_head->pend_prev = m;
		sp->pend_head = m;
		m->pend_listed = true;
	}
	if (m->plen >= SPOOL_CHUNK_TARGET && wr_free(m))
		msg_write_pieces(sp, m);
}

int spool_msg_commit(struct spool *sp, struct spool_msg *m, struct spool_env *env, uint8_t *enc,
		     size_t enc_cap)
{
	struct spool_wr *wr = wr_free(m);
	uint64_t size = 0, csize;
	unsigned niov = 0;
	uint32_t pad;
	size_t n;

	assert(m->active && !m->committing && wr);
	env->id = m->id;
	env->wire_len = m->wire_len;
	env->msg_crc = spool_crc32c_combine(m->crc, m->pcrc, m->plen);
	/* No chunk written yet: the first one is about to go at the tail. */
	env->first_chunk_off = m->wire_len == m->plen ? m->seg->tail : m->first_off;
	n = spool_env_encode(env, enc, enc_cap);
	if (n == 0)
		return -ENOSPC;
	wr->nbids = 0;
	wr->has_commit = true;
	if (m->npieces) {
		niov = wr_take_chunk(m, wr, &size);
		pend_unlink(sp, m);
	}
	spool_rec_hdr_init(&wr->chdr, SPOOL_REC_COMMIT, m->id, (uint32_t)n,
			   spool_crc32c(0, enc, n));
	csize = spool_rec_size((uint32_t)n);
	pad = (uint32_t)(csize - sizeof(wr->chdr) - n);
	wr->iov[niov++] = (struct iovec){&wr->chdr, sizeof(wr->chdr)};
	wr->iov[niov++] = (struct iovec){enc, n};
	if (pad)
		wr->iov[niov++] = (struct iovec){(void *)zero_pad, pad};
	m->committing = true;
	wr_submit(sp, m, wr, niov, size + csize, SPOOL_OP_COMMIT);
	return 0;
}

static void seg_maybe_retire(struct spool *sp, struct spool_seg *seg);

static void msg_release(struct spool *sp, struct spool_msg *m)
{
	struct spool_seg *seg = m->seg;

	assert(seg->users > 0);
	seg->users--;
	m->active = false;
	seg_maybe_retire(sp, seg);
}

void spool_msg_abort(struct spool *sp, struct spool_msg *m)
{
	assert(m->active && m->writes_inflight == 0 && !m->committing);
	for (uint32_t i = 0; i < m->npieces; i++)
		if (m->piece_bid[i] != SPOOL_NO_BUF)
			ring_buf_put(sp->ring, m->piece_bid[i]);
	m->npieces = 0;
	pend_unlink(sp, m);
	msg_release(sp, m);
}

void spool_msg_complete(struct spool *sp, struct spool_msg *m, uint64_t ud, int res)
{
	struct spool_wr *wr = &m->wr[ring_ud_aux(ud)];

	assert(ring_ud_aux(ud) < SPOOL_MSG_WRITES_MAX && wr->busy && m->writes_inflight > 0);
	if (res != (int)wr->len && m->io_error == 0)
		m->io_error = res < 0 ? res : -ENOSPC; /* a short file write: disk full */
	for (uint8_t i = 0; i < wr->nbids; i++)
		ring_buf_put(sp->ring, wr->bids[i]);
	wr->nbids = 0;
	wr->busy = false;
	m->writes_inflight--;
	if (!m->committing || m->writes_inflight > 0)
		return;
	if (m->io_error) {
		int err = m->io_error;

		msg_release(sp, m);
		sp->ops->on_durable(sp->ctx, m, err);
		return;
	}
	/* Every write of the message completed: it joins the group sync of
	 * this loop turn (also with durability none, so the reply goes out
	 * from one place: spool_flush). */
	m->sync_next = NULL;
	if (m->seg->wait_tail)
		m->seg->wait_tail->sync_next = m;
	else
		m->seg->wait_head = m;
	m->seg->wait_tail = m;
}

/* Tell every message of a list that it is durable (or failed). */
static void msgs_done(struct spool *sp, struct spool_msg *head, int res)
{
	while (head) {
		struct spool_msg *next = head->sync_next;

		head->sync_next = NULL;
		if (res == 0) {
			sp->stats.messages++;
			sp->stats.bytes += head->wire_len;
		}
		msg_release(sp, head);
		sp->ops->on_durable(sp->ctx, head, res);
		head = next;
	}
}

void spool_flush(struct spool *sp)
{
	/* Gathered pieces go out as one chunk per message per loop turn. */
	for (struct spool_msg *m = sp->pend_head, *next; m; m = next) {
		next = m->pend_next;
		if (wr_free(m))
			msg_write_pieces(sp, m);
	}
	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++) {
		struct spool_seg *seg = &sp->segs[i];
		struct io_uring_sqe *sqe;
		struct spool_msg *list;
		uint32_t count = 0;

		if (!seg->wait_head || seg->sync_inflight)
			continue;
		list = seg->wait_head;
		seg->wait_head = seg->wait_tail = NULL;
		if (!sp->durable) {
			msgs_done(sp, list, 0);
			continue;
		}
		for (struct spool_msg *m = list; m; m = m->sync_next)
			count++;
		seg->sync_head = list;
		seg->sync_inflight = true;
		sp->stats.syncs++;
		sp->stats.sync_msgs += count;
		sqe = ring_sqe(sp->ring);
		io_uring_prep_fsync(sqe, seg->fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_SYNC, 0, 0, (uint32_t)i));
		sp->inflight++;
	}
}

static void seg_maybe_retire(struct spool *sp, struct spool_seg *seg)
{
	struct io_uring_sqe *sqe;

	if (!seg->retiring || seg->users || seg->sync_inflight || seg->wait_head || seg->fd < 0)
		return;
	sqe = ring_sqe(sp->ring);
	io_uring_prep_close(sqe, seg->fd);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_CLOSE, 0, 0, (uint32_t)(seg - sp->segs)));
	seg->fd = -1;
	sp->inflight++;
}

/* The new segment is open, its header written and its name durable. */
static void seg_rotate_finish(struct spool *sp)
{
	int idx = sp->opening;
	struct spool_seg *old = &sp->segs[sp->cur];

	sp->opening = -1;
	if (sp->open_error) {
		log_msg(LOG_ERROR, "event=spool_rotate shard=%u error=\"%s\"", sp->shard,
			strerror(-sp->open_error));
		if (sp->segs[idx].fd >= 0)
			close(sp->segs[idx].fd);
		sp->segs[idx] = (struct spool_seg){.fd = -1};
		return;
	}
	sp->segs[idx].tail = spool_rec_size(sizeof(sp->seginfo));
	sp->cur = idx;
	old->retiring = true;
	seg_maybe_retire(sp, old);
	log_msg(LOG_INFO, "event=spool_rotate shard=%u segment=%016llx", sp->shard,
		(unsigned long long)sp->segs[idx].seq);
}

static void seg_opened(struct spool *sp, int idx, int res)
{
	struct spool_seg *seg = &sp->segs[idx];
	struct io_uring_sqe *sqe;

	sp->open_error = res < 0 ? res : 0;
	if (res < 0) {
		seg_rotate_finish(sp);
		return;
	}
	seg->fd = res;
	seghdr_prepare(sp, seg->seq);
	sqe = ring_sqe(sp->ring);
	io_uring_prep_writev(sqe, seg->fd, sp->seghdr_iov, 2, 0);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_SEGHDR, 0, 0, (uint32_t)idx));
	/* The new file's directory entry must be durable before a message
	 * acknowledged from it relies on it. */
	sqe = ring_sqe(sp->ring);
	io_uring_prep_fsync(sqe, sp->dirfd, 0);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_DIRSYNC, 0, 0, (uint32_t)idx));
	sp->open_steps = 2;
	sp->inflight += 2;
}

void spool_complete(struct spool *sp, uint64_t ud, int res)
{
	uint32_t idx = ring_ud_slot(ud);
	struct spool_seg *seg = &sp->segs[idx];
	struct spool_msg *list;

	assert(idx < SPOOL_SEGMENTS_MAX && sp->inflight > 0);
	sp->inflight--;
	switch (ring_ud_op(ud)) {
	case SPOOL_OP_SYNC:
		list = seg->sync_head;
		seg->sync_head = NULL;
		seg->sync_inflight = false;
		if (res < 0)
			log_msg(LOG_ERROR, "event=spool_sync shard=%u error=\"%s\"", sp->shard,
				strerror(-res));
		msgs_done(sp, list, res < 0 ? res : 0);
		seg_maybe_retire(sp, seg);
		break;
	case SPOOL_OP_OPEN:
		seg_opened(sp, (int)idx, res);
		break;
	case SPOOL_OP_SEGHDR:
	case SPOOL_OP_DIRSYNC:
		if (res < 0 && !sp->open_error)
			sp->open_error = res;
		if (--sp->open_steps == 0)
			seg_rotate_finish(sp);
		break;
	case SPOOL_OP_CLOSE:
		*seg = (struct spool_seg){.fd = -1};
		break;
	default:
		abort();
	}
}

bool spool_busy(const struct spool *sp)
{
	if (sp->inflight)
		return true;
	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++)
		if (sp->segs[i].wait_head || sp->segs[i].users)
			return true;
	return false;
}

const struct spool_stats *spool_stats(const struct spool *sp)
{
	return &sp->stats;
}

struct recover_ctx {
	uint64_t messages;
	uint64_t max_id;
};

static int recover_msg(void *vctx, const struct spool_scan_msg *msg)
{
	struct recover_ctx *ctx = vctx;

	if (msg->body_ok)
		ctx->messages++;
	if (msg->env.id > ctx->max_id)
		ctx->max_id = msg->env.id;
	return 0;
}

/* One segment: scan, and cut a torn tail so the next writer (and reader)
 * never sees it.  An empty segment (no valid record at all) is removed. */
static int recover_segment(int dirfd, const char *dir, const char *name, struct recover_ctx *ctx,
			   char *why, size_t why_len)
{
	struct spool_scan_stats st = {0};
	int fd = openat(dirfd, name, O_RDWR | O_CLOEXEC);
	int rc;

	if (fd < 0) {
		snprintf(why, why_len, "%s/%s: %s", dir, name, strerror(errno));
		return -errno;
	}
	rc = spool_segment_scan(fd, UINT64_MAX, true, recover_msg, ctx, &st);
	if (rc < 0) {
		snprintf(why, why_len, "%s/%s: scan failed: %s", dir, name, strerror(-rc));
		close(fd);
		return rc;
	}
	if (st.valid_end < st.file_len) {
		log_msg(LOG_WARN, "event=spool_recover segment=%s/%s torn_tail=%llu valid_end=%llu",
			dir, name, (unsigned long long)(st.file_len - st.valid_end),
			(unsigned long long)st.valid_end);
		if (ftruncate(fd, (off_t)st.valid_end) != 0 || fsync(fd) != 0) {
			snprintf(why, why_len, "%s/%s: truncate: %s", dir, name, strerror(errno));
			close(fd);
			return -errno;
		}
	}
	if (st.bad_bodies)
		log_msg(LOG_WARN, "event=spool_recover segment=%s/%s bad_bodies=%u", dir, name,
			st.bad_bodies);
	close(fd);
	if (st.valid_end == 0)
		unlinkat(dirfd, name, 0);
	return 0;
}

int spool_recover(const char *root, uint32_t shard, uint64_t *messages, uint64_t *max_id, char *why,
		  size_t why_len)
{
	struct recover_ctx ctx = {0};
	char dir[PATH_MAX];
	struct dirent *de;
	int dirfd, rc = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/%u", root, shard);
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		*messages = 0;
		*max_id = 0;
		if (errno == ENOENT)
			return 0;
		snprintf(why, why_len, "spool.path: %s: %s", dir, strerror(errno));
		return -errno;
	}
	d = fdopendir(dup(dirfd));
	while (d && rc == 0 && (de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);

		if (n > 4 && strcmp(de->d_name + n - 4, ".seg") == 0)
			rc = recover_segment(dirfd, dir, de->d_name, &ctx, why, why_len);
	}
	if (d)
		closedir(d);
	if (rc == 0)
		fsync(dirfd);
	close(dirfd);
	*messages = ctx.messages;
	*max_id = ctx.max_id;
	return rc;
}
