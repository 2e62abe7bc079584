/*
 * queue/spool_seg — the spool's segment files: the directory and its lock,
 * the first segment made at start, the rotation to the next one in the
 * background (open, head, directory sync: no message is acknowledged from
 * a file whose name is not durable), and the retirement of a full one once
 * nothing uses it.  The writer (spool.c) places records in them.  See
 * spool.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log/log.h"
#include "queue/spool.h"
#include "queue/spool_int.h"

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
		uint64_t seq;

		if (spool_seg_parse(de->d_name, &seq) && seq > max)
			max = seq;
	}
	rewinddir(d);
	return max;
}

/* A new key and head for segment seg.  A key per segment, so one key
 * learnt (from a stolen disk, say) forges nothing in any other file. */
static int seghead_prepare(struct spool *sp, struct spool_seg *seg)
{
	int rc = spool_key_new(&seg->key);

	if (rc < 0)
		return rc;
	spool_seg_head_init(&sp->seghead, sp->shard, seg->seq, &seg->key);
	return 0;
}

uint64_t spool_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no system call */
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Start-up path: create the first segment with blocking calls, made
 * durable (file and directory entry) before any message can use it. */
static int seg_create_sync(struct spool *sp, struct spool_seg *seg, char *why, size_t why_len)
{
	char name[SPOOL_SEG_NAME_MAX];
	ssize_t w;

	spool_seg_name(sp->next_seq, name);
	seg->fd = openat(sp->dirfd, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0640);
	if (seg->fd < 0) {
		snprintf(why, why_len, "%s/%s: %s", sp->dir, name, strerror(errno));
		return -errno;
	}
	seg->seq = sp->next_seq;
	if (seghead_prepare(sp, seg) < 0) {
		snprintf(why, why_len, "getrandom: %s", strerror(errno));
		return -EIO;
	}
	w = pwrite(seg->fd, &sp->seghead, sizeof(sp->seghead), 0);
	if (w != (ssize_t)sizeof(sp->seghead) || fdatasync(seg->fd) != 0 || fsync(sp->dirfd) != 0) {
		snprintf(why, why_len, "%s/%s: cannot write segment header: %s", sp->dir, name,
			 strerror(errno ? errno : EIO));
		return -EIO;
	}
	sp->next_seq++;
	seg->tail = sizeof(sp->seghead);
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
	int dupfd = sp->dirfd >= 0 ? dup(sp->dirfd) : -1;

	d = dupfd >= 0 ? fdopendir(dupfd) : NULL;
	if (!d) {
		int err = rc ? rc : errno ? -errno : -EIO;

		snprintf(why, why_len, "spool.path: cannot use %s: %s", sp->dir, strerror(-err));
		if (dupfd >= 0)
			close(dupfd);
		if (sp->dirfd >= 0)
			close(sp->dirfd);
		free(sp);
		return err;
	}
	sp->next_seq = seg_max_seq(d) + 1;
	closedir(d);
	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++)
		sp->segs[i] = (struct spool_seg){.owner = sp, .fd = -1};
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

int spool_lock_root(const char *root, char *why, size_t why_len)
{
	char path[PATH_MAX];
	int fd, rc = mkdir_p(root);

	if (rc < 0) {
		snprintf(why, why_len, "spool.path: cannot create %s: %s", root, strerror(-rc));
		return rc;
	}
	snprintf(path, sizeof(path), "%s/ringmx.lock", root);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		snprintf(why, why_len, "spool.path: %s: %s", path, strerror(errno));
		return -errno;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		rc = -errno;
		snprintf(why, why_len, "spool.path: %s is in use by another ringmx process (%s)",
			 root, strerror(-rc));
		close(fd);
		return rc;
	}
	return fd;
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
void spool_seg_rotate_start(struct spool *sp)
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
	if (spool_mono_ms() < sp->rotate_after_ms)
		return; /* the last attempt failed a moment ago (disk full?) */
	sp->opening = idx;
	sp->segs[idx] =
	    (struct spool_seg){.owner = sp, .fd = -1, .in_use = true, .seq = sp->next_seq++};
	spool_seg_name(sp->segs[idx].seq, sp->open_name);
	sqe = ring_sqe(sp->ring);
	/* After a failed attempt the same name is used again (O_TRUNC): its
	 * file holds no valid head, and retrying every second must not leave a
	 * trail of empty files. */
	io_uring_prep_openat(sqe, sp->dirfd, sp->open_name,
			     O_CREAT | O_RDWR | O_CLOEXEC | (sp->open_retry ? O_TRUNC : O_EXCL),
			     0640);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_OPEN, 0, 0, (uint32_t)idx));
	sp->inflight++;
}

bool spool_seg_quiet(const struct spool *sp, uint64_t seq)
{
	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++)
		if (sp->segs[i].in_use && sp->segs[i].seq == seq)
			return false;
	return true;
}

int spool_write_error(const struct spool *sp)
{
	assert(sp->segs[sp->cur].in_use && sp->segs[sp->cur].sealed <= 0);
	return sp->segs[sp->cur].sealed;
}

uint64_t spool_current_seq(const struct spool *sp)
{
	return sp->segs[sp->cur].seq;
}

void spool_seg_maybe_retire(struct spool *sp, struct spool_seg *seg)
{
	struct io_uring_sqe *sqe;

	if (!seg->retiring || seg->users || seg->flying || seg->open || seg->fd < 0)
		return;
	sqe = ring_sqe(sp->ring);
	io_uring_prep_close(sqe, seg->fd);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_CLOSE, 0, 0, (uint32_t)(seg - sp->segs)));
	seg->fd = -1;
	sp->inflight++;
}

/* The new segment is open, its header written and its name durable. */
void spool_seg_rotate_finish(struct spool *sp)
{
	int idx = sp->opening;
	struct spool_seg *old = &sp->segs[sp->cur];

	sp->opening = -1;
	if (sp->open_error) {
		log_msg(LOG_ERROR, "event=spool_rotate shard=%u segment=%016llx error=\"%s\"",
			sp->shard, (unsigned long long)sp->segs[idx].seq,
			strerror(-sp->open_error));
		if (sp->segs[idx].fd >= 0)
			close(sp->segs[idx].fd);
		/* The name is used again by the next attempt, a second on. */
		sp->next_seq = sp->segs[idx].seq;
		sp->open_retry = true;
		sp->rotate_after_ms = spool_mono_ms() + 1000;
		sp->segs[idx] = (struct spool_seg){.owner = sp, .fd = -1};
		return;
	}
	sp->open_retry = false;
	sp->segs[idx].tail = sizeof(sp->seghead);
	sp->cur = idx;
	old->retiring = true;
	spool_seg_maybe_retire(sp, old);
	log_msg(LOG_INFO, "event=spool_rotate shard=%u segment=%016llx", sp->shard,
		(unsigned long long)sp->segs[idx].seq);
	sp->ops->on_segment(sp->ctx, sp->segs[idx].seq);
}

void spool_seg_opened(struct spool *sp, int idx, int res)
{
	struct spool_seg *seg = &sp->segs[idx];
	struct io_uring_sqe *sqe;

	sp->open_error = res < 0 ? res : 0;
	if (res < 0) {
		spool_seg_rotate_finish(sp);
		return;
	}
	seg->fd = res;
	sp->open_error = seghead_prepare(sp, seg);
	if (sp->open_error) {
		spool_seg_rotate_finish(sp);
		return;
	}
	sqe = ring_sqe(sp->ring);
	io_uring_prep_write(sqe, seg->fd, &sp->seghead, sizeof(sp->seghead), 0);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_SEGHDR, 0, 0, (uint32_t)idx));
	/* The new file's directory entry must be durable before a message
	 * acknowledged from it relies on it. */
	sqe = ring_sqe(sp->ring);
	io_uring_prep_fsync(sqe, sp->dirfd, 0);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_DIRSYNC, 0, 0, (uint32_t)idx));
	sp->open_steps = 2;
	sp->inflight += 2;
}
