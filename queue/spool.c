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
	int opening;	 /* segment index being opened, -1 */
	int open_steps;	 /* SEGHDR + DIRSYNC still to complete */
	int open_error;
	uint32_t inflight; /* spool-level ops (sync, open, close) */
	char open_name[32];
	struct spool_rec_hdr seghdr;
	struct spool_seg_info seginfo;
	struct iovec seghdr_iov[2];
	uint64_t next_seq;
	uint64_t last_id;
	struct spool_stats stats;
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
	char name[32];
	ssize_t w;

	seg_name(name, sizeof(name), sp->next_seq);
	seg->fd = openat(sp->dirfd, name, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0640);
	if (seg->fd < 0) {
		snprintf(why, why_len, "%s/%s: %s", sp->dir, name, strerror(errno));
		return -errno;
	}
	seghdr_prepare(sp, sp->next_seq);
	w = pwritev(seg->fd, sp->seghdr_iov, 2, 0);
	if (w != (ssize_t)(sizeof(sp->seghdr) + sizeof(sp->seginfo)) || fdatasync(seg->fd) != 0 ||
	    fsync(sp->dirfd) != 0) {
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
	uint64_t id = (uint64_t)(sp->shard & 0xff) << 56 |
		      ((uint64_t)time(NULL) & 0xffffffffu) << 24;

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

	assert(!m->active && m->writes_inflight == 0);
	if (seg->tail >= sp->segment_size && sp->opening < 0)
		seg_rotate_start(sp);
	memset(m, 0, sizeof(*m));
	m->id = id;
	m->seg = seg;
	m->owner = owner;
	m->owner_gen = owner_gen;
	m->active = true;
	seg->users++;
}

bool spool_msg_can_write(const struct spool_msg *m)
{
	return m->writes_inflight < SPOOL_MSG_WRITES_MAX;
}

/* Reserve space for a record of payload length len and queue its writev. */
static void rec_write(struct spool *sp, struct spool_seg *seg, struct spool_wr *wr,
		      uint64_t ud)
{
	uint64_t off = seg->tail;
	uint32_t pad = (uint32_t)(spool_rec_size(wr->hdr.len) - sizeof(wr->hdr) - wr->hdr.len);
	struct io_uring_sqe *sqe;
	unsigned n = 2;

	wr->iov[0] = (struct iovec){&wr->hdr, sizeof(wr->hdr)};
	if (pad)
		wr->iov[n++] = (struct iovec){(void *)zero_pad, pad};
	wr->len = (uint32_t)spool_rec_size(wr->hdr.len);
	seg->tail += wr->len;
	sqe = ring_sqe(sp->ring);
	io_uring_prep_writev(sqe, seg->fd, wr->iov, n, off);
	io_uring_sqe_set_data64(sqe, ud);
}

void spool_msg_append(struct spool *sp, struct spool_msg *m, const char *p, uint32_t n,
		      uint16_t bid)
{
	struct spool_wr *wr = NULL;
	uint8_t idx;

	assert(m->active && !m->committing && n > 0 && n <= SPOOL_REC_PAYLOAD_MAX);
	for (idx = 0; idx < SPOOL_MSG_WRITES_MAX; idx++)
		if (!m->wr[idx].busy) {
			wr = &m->wr[idx];
			break;
		}
	assert(wr);
	if (m->wire_len == 0)
		m->first_off = m->seg->tail;
	m->crc = spool_crc32c(m->crc, p, n);
	m->wire_len += n;
	spool_rec_hdr_init(&wr->hdr, SPOOL_REC_CHUNK, m->id, n, spool_crc32c(0, p, n));
	wr->iov[1] = (struct iovec){(void *)p, n};
	wr->bid = bid;
	wr->busy = true;
	if (bid != SPOOL_NO_BUF)
		ring_buf_get(sp->ring, bid);
	m->writes_inflight++;
	rec_write(sp, m->seg, wr, ring_ud(SPOOL_OP_WRITE, idx, m->owner_gen, m->owner));
}

int spool_msg_commit(struct spool *sp, struct spool_msg *m, struct spool_env *env, uint8_t *enc,
		     size_t enc_cap)
{
	size_t n;

	assert(m->active && !m->committing && m->writes_inflight == 0);
	env->id = m->id;
	env->first_chunk_off = m->first_off;
	env->wire_len = m->wire_len;
	env->msg_crc = m->crc;
	n = spool_env_encode(env, enc, enc_cap);
	if (n == 0)
		return -ENOSPC;
	spool_rec_hdr_init(&m->commit.hdr, SPOOL_REC_COMMIT, m->id, (uint32_t)n,
			   spool_crc32c(0, enc, n));
	m->commit.iov[1] = (struct iovec){enc, n};
	m->commit.bid = SPOOL_NO_BUF;
	m->commit.busy = true;
	m->committing = true;
	m->writes_inflight++;
	rec_write(sp, m->seg, &m->commit, ring_ud(SPOOL_OP_COMMIT, 0, m->owner_gen, m->owner));
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
	msg_release(sp, m);
}

void spool_msg_complete(struct spool *sp, struct spool_msg *m, uint64_t ud, int res)
{
	uint8_t op = ring_ud_op(ud);
	struct spool_wr *wr = op == SPOOL_OP_COMMIT ? &m->commit : &m->wr[ring_ud_aux(ud)];

	assert(wr->busy && m->writes_inflight > 0);
	if (res != (int)wr->len && m->io_error == 0)
		m->io_error = res < 0 ? res : -EIO; /* short write: disk full */
	if (wr->bid != SPOOL_NO_BUF)
		ring_buf_put(sp->ring, wr->bid);
	wr->busy = false;
	m->writes_inflight--;
	if (op != SPOOL_OP_COMMIT)
		return;
	if (m->io_error) {
		int err = m->io_error;

		msg_release(sp, m);
		sp->ops->on_durable(sp->ctx, m, err);
		return;
	}
	/* Queue for the group sync of this loop turn (also with durability
	 * none, so the reply still goes out from one place: spool_flush). */
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

int spool_recover(const char *root, uint32_t shard, uint64_t *messages, uint64_t *max_id,
		  char *why, size_t why_len)
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
