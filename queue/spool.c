/*
 * queue/spool — segment writer and group commit.  See spool.h.
 *
 * Offsets are reserved in submission order (seg->tail grows synchronously),
 * writes complete in any order; the record format (record.h) tolerates the
 * holes a crash can leave between them.  A commit record goes into a batch
 * only once every chunk of its message is placed; the batch's writev and
 * the fdatasync linked behind it (IOSQE_IO_LINK, same submission) must both
 * complete before the message is reported durable, and the `250` waits for
 * that: invariant 1.
 */
#include "queue/spool.h"

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

#define SPOOL_BATCH_IOV	 1024 /* IOV_MAX */
#define SPOOL_BATCH_RECS 256
#define SPOOL_BATCHES	 4 /* per shard: one in flight and one filling per segment */
/* Bytes of copied small records (states) per batch.  At least the largest
 * state record (one octet per recipient, limits.recipients up to 100,000):
 * with 32 KiB, the state of a message with more than ~32,000 recipients
 * never fitted, spool_rec_put said "try again next turn" for ever, and
 * every state record queued behind it waited with it. */
#define SPOOL_ARENA 131072
static_assert(SPOOL_STATE_MAX <= SPOOL_ARENA, "a state record fits an empty batch's arena");

struct spool_batch;

struct spool;

struct spool_seg {
	struct spool *owner;
	struct spool_batch *open; /* batch being filled for this segment */
	int fd;
	uint64_t seq;
	uint64_t tail;		    /* next free offset */
	uint32_t users;		    /* messages begun here and not yet durable/aborted */
	struct spool_batch *flying; /* the one batch being written (and synced) */
	struct spool_key key;	    /* keys every record header (record.h) */
	/* First failed write or sync (-errno), 0 while healthy.  A sealed
	 * segment gets nothing more: a short write leaves part of a batch,
	 * client bytes included, and no later record may follow it. */
	int sealed;
	bool in_use;
	bool retiring; /* a newer segment took over: close when quiet */
};

/* The records placed while the segment's previous batch was being written:
 * one contiguous region, reserved as records are placed, written by one
 * writev with its fdatasync linked behind it (one io-wq hop for both).
 * Only one batch per segment is in flight, so its fdatasync also covers
 * every earlier batch: group commit. */
struct spool_batch {
	struct spool_seg *seg; /* NULL: free */
	uint64_t off, len;
	uint32_t niov, nrec, nbid, nmsg;
	uint32_t gen;
	bool busy;	/* submitted */
	bool sync;	/* an fdatasync is linked behind the write */
	bool commits;	/* holds a commit record: needs the sync */
	bool sync_want; /* holds a record someone waits on: needs the sync */
	uint8_t cqes;	/* completions still to come (write, sync) */
	int res;	/* first error of the write or the sync */
	struct iovec iov[SPOOL_BATCH_IOV];
	struct spool_rec_hdr rec[SPOOL_BATCH_RECS];
	uint16_t bid[SPOOL_BATCH_IOV];
	struct spool_msg *msg[SPOOL_BATCH_RECS];   /* each message once */
	struct spool_note *note[SPOOL_BATCH_RECS]; /* per record, or NULL */
	bool data;				   /* holds chunks or commits, not only states */
	uint32_t arena_len;
	uint8_t arena[SPOOL_ARENA]; /* payloads of spool_rec_put records */
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
	uint32_t inflight; /* ring ops in flight (writes, syncs, open, close) */
	char open_name[SPOOL_SEG_NAME_MAX];
	bool open_retry;	  /* the last rotation failed: reuse its file name */
	uint64_t rotate_after_ms; /* no new rotation attempt before this */
	struct spool_seg_head seghead;
	uint64_t next_seq;
	uint64_t last_id;
	struct spool_stats stats;
	struct spool_msg *pend_head; /* messages with gathered pieces */
	struct spool_msg *wait_head; /* writers blocked on a free batch */
	struct spool_msg *wake_head; /* waiters a completion is calling back */
	struct spool_msg *doomed;    /* commits on a sealed segment: fail at flush */
	uint32_t batch_gen;
	bool flush_states; /* the next spool_flush writes state-only batches too */
	struct spool_batch batches[SPOOL_BATCHES];
};

static const char zero_pad[SPOOL_REC_ALIGN];

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

static uint64_t spool_mono_ms(void)
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

static void batch_submit(struct spool *sp, struct spool_batch *b);

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

/* Off whichever list m is on.  A message can leave the wake list while a
 * completion walks it (an earlier callback committed or aborted it), so the
 * walk pops from the live list rather than following saved links. */
static void wait_unlink(struct spool *sp, struct spool_msg *m)
{
	(void)sp;
	if (!m->wait_list)
		return;
	if (m->wait_prev)
		m->wait_prev->wait_next = m->wait_next;
	else
		*m->wait_list = m->wait_next;
	if (m->wait_next)
		m->wait_next->wait_prev = m->wait_prev;
	m->wait_next = m->wait_prev = NULL;
	m->wait_list = NULL;
}

static void wait_push(struct spool_msg **head, struct spool_msg *m)
{
	assert(m->wait_list == NULL);
	m->wait_prev = NULL;
	m->wait_next = *head;
	if (*head)
		(*head)->wait_prev = m;
	*head = m;
	m->wait_list = head;
}

void spool_msg_wait(struct spool *sp, struct spool_msg *m)
{
	assert(m->active && !m->committing);
	if (m->wait_list == &sp->wait_head)
		return;
	/* Being woken already: it asked again, so it waits for the next one. */
	wait_unlink(sp, m);
	wait_push(&sp->wait_head, m);
}

/* Could a batch be opened for seg now? */
static bool spool_batch_free(const struct spool_seg *seg)
{
	const struct spool *sp = seg->owner;

	for (int i = 0; i < SPOOL_BATCHES; i++)
		if (!sp->batches[i].busy && !sp->batches[i].seg)
			return true;
	return false;
}

void spool_msg_begin(struct spool *sp, struct spool_msg *m, uint64_t id, uint32_t owner,
		     uint16_t owner_gen)
{
	struct spool_seg *seg = &sp->segs[sp->cur];

	assert(!m->active && m->writes_inflight == 0 && !m->pend_listed);
	if ((seg->tail >= sp->segment_size || seg->sealed) && sp->opening < 0)
		seg_rotate_start(sp);
	memset(m, 0, sizeof(*m));
	m->id = id;
	m->seg = seg;
	m->owner = owner;
	m->owner_gen = owner_gen;
	m->active = true;
	seg->users++;
}

/* ---- batches: the records of one loop turn, one writev per segment ---------- */

/* The batch filling for seg, or a free one opened at seg's tail; NULL when
 * every batch is in flight (backpressure: writers wait for on_progress). */
static struct spool_batch *batch_get(struct spool *sp, struct spool_seg *seg)
{
	struct spool_batch *b;

	if (seg->open)
		return seg->open;
	for (int i = 0; i < SPOOL_BATCHES; i++) {
		b = &sp->batches[i];
		if (b->busy || b->seg)
			continue;
		b->seg = seg;
		b->off = seg->tail;
		b->arena_len = 0;
		b->data = false;
		b->len = b->niov = b->nrec = b->nbid = b->nmsg = 0;
		b->commits = false;
		b->sync_want = false;
		b->gen = ++sp->batch_gen;
		seg->open = b;
		return b;
	}
	return NULL;
}

static bool batch_room(const struct spool_batch *b, uint32_t niov, uint32_t nrec)
{
	return b->niov + niov <= SPOOL_BATCH_IOV && b->nrec + nrec <= SPOOL_BATCH_RECS;
}

/* Would batch_for(seg, niov, nrec) succeed now?  The open batch if it has
 * room; else a fresh one, which needs the open one submitted first (only
 * possible when none of the segment's batches is in flight) and a free
 * batch. */
static bool seg_can_place(const struct spool_seg *seg, uint32_t niov, uint32_t nrec)
{
	if (seg->open && batch_room(seg->open, niov, nrec))
		return true;
	if (seg->open && seg->flying)
		return false;
	return spool_batch_free(seg);
}

/* A batch with room for niov iovecs and nrec records; submits a full one. */
static struct spool_batch *batch_for(struct spool *sp, struct spool_seg *seg, uint32_t niov,
				     uint32_t nrec)
{
	struct spool_batch *b = batch_get(sp, seg);

	if (b && !batch_room(b, niov, nrec)) {
		if (seg->flying)
			return NULL; /* full until the flying one lands */
		batch_submit(sp, b);
		b = batch_get(sp, seg);
	}
	return b;
}

/* A record that batch_for() made room for did not go in after all: an
 * empty batch must not stay open (batch_submit() needs records), so it is
 * given back as if never opened. */
static void batch_unget(struct spool_batch *b)
{
	if (b->nrec > 0 || b->niov > 0)
		return;
	assert(b->len == 0 && !b->busy && b->seg != NULL && b->seg->open == b);
	b->seg->open = NULL;
	b->seg = NULL;
}

/* Place one record (header + payload iovecs + pad) at the batch's end. */
static void batch_add_rec(struct spool_batch *b, struct spool_msg *m, enum spool_rec_type type,
			  const struct iovec *pay, uint32_t npay, uint32_t len, uint32_t crc)
{
	struct spool_rec_hdr *h = &b->rec[b->nrec];
	uint64_t size = spool_rec_size(len);
	uint32_t pad = (uint32_t)(size - sizeof(*h) - len);

	assert(batch_room(b, 0, 0) && b->niov + npay + 2 <= SPOOL_BATCH_IOV);
	b->note[b->nrec++] = NULL;
	spool_rec_hdr_init(h, &b->seg->key, type, m->id, len, crc);
	b->data = true;
	b->iov[b->niov++] = (struct iovec){h, sizeof(*h)};
	for (uint32_t i = 0; i < npay; i++)
		b->iov[b->niov++] = pay[i];
	if (pad)
		b->iov[b->niov++] = (struct iovec){(void *)zero_pad, pad};
	b->len += size;
	b->seg->tail += size;
	if (m->batch_gen != b->gen) {
		/* Counted once per batch: the completion releases it once. */
		m->batch_gen = b->gen;
		m->writes_inflight++;
		b->msg[b->nmsg++] = m;
	}
}

/* Move m's gathered pieces into b as one CHUNK record. */
static void batch_add_chunk(struct spool *sp, struct spool_batch *b, struct spool_msg *m)
{
	if (m->wire_len == m->plen)
		m->first_off = b->seg->tail; /* the message's first chunk */
	batch_add_rec(b, m, SPOOL_REC_CHUNK, m->piece, m->npieces, m->plen, m->pcrc);
	for (uint32_t i = 0; i < m->npieces; i++)
		if (m->piece_bid[i] != SPOOL_NO_BUF)
			b->bid[b->nbid++] = m->piece_bid[i];
	m->crc = spool_crc32c_combine(m->crc, m->pcrc, m->plen);
	m->npieces = m->plen = m->pcrc = 0;
	pend_unlink(sp, m);
}

static void batch_submit(struct spool *sp, struct spool_batch *b)
{
	uint32_t idx = (uint32_t)(b - sp->batches);
	struct io_uring_sqe *sqe;

	assert(b->seg && b->seg->open == b && !b->seg->flying && !b->busy && b->niov > 0);
	b->seg->open = NULL;
	b->seg->flying = b;
	b->busy = true;
	b->res = 0;
	b->sync = (b->commits || b->sync_want) && sp->durable;
	b->cqes = b->sync ? 2 : 1;
	sqe = ring_sqe(sp->ring);
	io_uring_prep_writev(sqe, b->seg->fd, b->iov, b->niov, b->off);
	io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_WRITE, 0, 0, idx));
	sp->stats.writes++;
	if (b->sync) {
		/* Linked: runs after the write, in the same worker; a failed or
		 * short write cancels it (-ECANCELED). */
		sqe->flags |= IOSQE_IO_LINK;
		sqe = ring_sqe(sp->ring);
		io_uring_prep_fsync(sqe, b->seg->fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data64(sqe, ring_ud(SPOOL_OP_SYNC, 0, 0, idx));
		sp->stats.syncs++;
	}
	sp->inflight += b->cqes;
}

/* m's segment is sealed: its gathered bytes go nowhere, and the message
 * fails (its writer refuses it once idle). */
static void msg_drop_pieces(struct spool *sp, struct spool_msg *m)
{
	for (uint32_t i = 0; i < m->npieces; i++)
		if (m->piece_bid[i] != SPOOL_NO_BUF)
			ring_buf_put(sp->ring, m->piece_bid[i]);
	m->npieces = m->plen = m->pcrc = 0;
	if (!m->io_error)
		m->io_error = m->seg->sealed;
	pend_unlink(sp, m);
}

/* Place m's gathered pieces now; false when no batch has room. */
static bool msg_place_pieces(struct spool *sp, struct spool_msg *m)
{
	struct spool_batch *b;

	if (m->seg->sealed) {
		msg_drop_pieces(sp, m);
		return true;
	}
	if (m->npieces == 0)
		return true;
	b = batch_for(sp, m->seg, m->npieces + 2, 1);
	if (!b)
		return false;
	batch_add_chunk(sp, b, m);
	return true;
}

bool spool_msg_can_write(const struct spool_msg *m)
{
	return m->npieces < SPOOL_PIECES_MAX || m->seg->sealed ||
	       seg_can_place(m->seg, m->npieces + 2, 1);
}

void spool_msg_append(struct spool *sp, struct spool_msg *m, const char *p, uint32_t n,
		      uint16_t bid)
{
	assert(m->active && !m->committing && n > 0 && spool_msg_can_write(m));
	if (m->npieces == SPOOL_PIECES_MAX ||
	    (m->npieces && m->plen + (uint64_t)n > SPOOL_REC_PAYLOAD_MAX)) {
		bool placed = msg_place_pieces(sp, m); /* full, or a record's bound */

		assert(placed);
	}
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
	if (m->plen >= SPOOL_CHUNK_TARGET)
		msg_place_pieces(sp, m); /* or at the end of the turn */
}

bool spool_msg_can_commit(const struct spool_msg *m)
{
	return m->seg->sealed || seg_can_place(m->seg, m->npieces + 5, 2);
}

/* A commit on a sealed segment: nothing is written, and on_durable says so
 * from the next spool_flush (never from the call itself). */
static void msg_commit_doomed(struct spool *sp, struct spool_msg *m)
{
	msg_drop_pieces(sp, m);
	wait_unlink(sp, m);
	m->committing = true;
	if (m->writes_inflight == 0) {
		m->sync_next = sp->doomed;
		sp->doomed = m;
	}
}

int spool_msg_commit(struct spool *sp, struct spool_msg *m, struct spool_env *env, uint8_t *enc,
		     size_t enc_cap)
{
	struct spool_batch *b;
	struct iovec pay;
	size_t n;

	assert(m->active && !m->committing && spool_msg_can_commit(m));
	if (m->seg->sealed) {
		msg_commit_doomed(sp, m);
		return 0;
	}
	env->id = m->id;
	env->wire_len = m->wire_len;
	env->msg_crc = spool_crc32c_combine(m->crc, m->pcrc, m->plen);
	b = batch_for(sp, m->seg, m->npieces + 5, 2);
	assert(b);
	/* No chunk placed yet: the first one goes at the batch's end now. */
	env->first_chunk_off = m->wire_len == m->plen ? b->seg->tail : m->first_off;
	n = spool_env_encode(env, enc, enc_cap);
	if (n == 0) {
		batch_unget(b);
		return -ENOSPC;
	}
	m->env_enc = enc;
	m->env_len = (uint32_t)n;
	if (m->npieces)
		batch_add_chunk(sp, b, m);
	assert(env->first_chunk_off == m->first_off);
	pay = (struct iovec){enc, n};
	m->commit_off = b->seg->tail;
	batch_add_rec(b, m, SPOOL_REC_COMMIT, &pay, 1, (uint32_t)n, spool_crc32c(0, enc, n));
	b->commits = true;
	wait_unlink(sp, m);
	m->committing = true;
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
	wait_unlink(sp, m);
	msg_release(sp, m);
}

/* Every record of a committing message is written and synced (or failed):
 * "persist before reply". */
static void msg_durable(struct spool *sp, struct spool_msg *m)
{
	int err = m->io_error;

	if (!err) {
		sp->stats.messages++;
		sp->stats.bytes += m->wire_len;
	}
	/* Captured before the release may retire the segment: its fd stays
	 * open until the close submitted by the retirement runs, after this
	 * turn's callbacks. */
	m->seg_seq = m->seg->seq;
	m->seg_fd = m->seg->fd;
	m->seg_key = m->seg->key;
	msg_release(sp, m);
	sp->ops->on_durable(sp->ctx, m, err);
}

/* The batch's write (and linked sync) completed: release its buffers and
 * the batch first (so callbacks can place records again), then tell each
 * message once, then every writer that was blocked on a free batch. */
static void batch_complete(struct spool *sp, struct spool_batch *b)
{
	struct spool_msg *msgs[SPOOL_BATCH_RECS];
	struct spool_note *notes[SPOOL_BATCH_RECS];
	uint32_t nmsg = b->nmsg, nnote = 0;
	int err = b->res;

	/* Written (flying), or never written because its segment is sealed. */
	assert(b->busy ? b->seg->flying == b : b->seg->open == b && b->seg->sealed);
	assert(nmsg <= SPOOL_BATCH_RECS);
	assert(sp->wake_head == NULL); /* completions do not nest */
	/* The writers waiting now are the ones this completion wakes; a
	 * callback below may commit or abort one of them (off the list) or
	 * register again (for the next completion). */
	while (sp->wait_head) {
		struct spool_msg *m = sp->wait_head;

		wait_unlink(sp, m);
		wait_push(&sp->wake_head, m);
	}
	if (err && !b->seg->sealed) {
		/* A failed fdatasync may have dropped dirty pages it could not
		 * write, and a short write left part of the batch: nothing is
		 * appended after it, and nothing in it is acknowledged. */
		b->seg->sealed = err;
		log_msg(LOG_ERROR,
			"event=spool_write shard=%u segment=%016llx bytes=%llu sealed=yes "
			"error=\"%s\"",
			sp->shard, (unsigned long long)b->seg->seq, (unsigned long long)b->len,
			strerror(-err));
	}
	for (uint32_t i = 0; i < b->nbid; i++)
		ring_buf_put(sp->ring, b->bid[i]);
	memcpy(msgs, b->msg, nmsg * sizeof(msgs[0]));
	for (uint32_t i = 0; i < b->nrec; i++)
		if (b->note[i])
			notes[nnote++] = b->note[i];
	if (b->busy)
		b->seg->flying = NULL;
	else
		b->seg->open = NULL;
	b->busy = false;
	b->seg = NULL;
	for (uint32_t i = 0; i < nmsg; i++) {
		struct spool_msg *m = msgs[i];

		assert(m->writes_inflight > 0);
		if (err && !m->io_error)
			m->io_error = err;
		if (--m->writes_inflight == 0 && m->committing)
			msg_durable(sp, m);
		else if (!m->committing)
			sp->ops->on_progress(sp->ctx, m);
	}
	while (sp->wake_head) {
		struct spool_msg *m = sp->wake_head;

		wait_unlink(sp, m);
		assert(m->active && !m->committing);
		sp->ops->on_progress(sp->ctx, m);
	}
	for (uint32_t i = 0; i < nnote; i++)
		notes[i]->fn(notes[i], err);
}

/* End of turn on a sealed segment: its unwritten batch fails, commits
 * placed on it fail, and a new segment is sought. */
static void spool_flush_sealed(struct spool *sp)
{
	while (sp->doomed) {
		struct spool_msg *m = sp->doomed;

		sp->doomed = m->sync_next;
		m->sync_next = NULL;
		assert(m->committing && m->writes_inflight == 0 && m->io_error);
		msg_durable(sp, m);
	}
	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++) {
		struct spool_seg *seg = &sp->segs[i];

		if (seg->open && !seg->flying && seg->sealed) {
			seg->open->res = seg->sealed;
			batch_complete(sp, seg->open);
			seg_maybe_retire(sp, seg);
		}
	}
	if (sp->segs[sp->cur].sealed && sp->opening < 0)
		seg_rotate_start(sp);
}

void spool_flush(struct spool *sp)
{
	/* Gathered pieces become chunks in their segment's open batch; a
	 * segment with no write in flight sends its batch now.  A message that
	 * found no room stays gathered (its writer waits on on_progress). */
	for (struct spool_msg *m = sp->pend_head, *next; m; m = next) {
		next = m->pend_next;
		msg_place_pieces(sp, m);
	}
	spool_flush_sealed(sp);
	/* A batch of state records only waits for the next message's batch
	 * (or spool_flush_states): each write is a hop to an io-wq worker, and
	 * state records need no sync of their own. */
	for (int i = 0; i < SPOOL_SEGMENTS_MAX; i++)
		if (sp->segs[i].open && !sp->segs[i].flying &&
		    (sp->segs[i].open->data || sp->flush_states))
			batch_submit(sp, sp->segs[i].open);
	sp->flush_states = false;
}

void spool_flush_states(struct spool *sp)
{
	sp->flush_states = true;
}

static int rec_put(struct spool *sp, enum spool_rec_type type, uint64_t msg_id, const void *p,
		   uint32_t len, struct spool_note *note)
{
	struct spool_seg *seg = &sp->segs[sp->cur];
	struct spool_batch *b;
	struct spool_rec_hdr *h;
	uint64_t size = spool_rec_size(len);
	uint32_t pad = (uint32_t)(size - sizeof(*h) - len);

	if (seg->sealed) {
		if (sp->opening < 0)
			seg_rotate_start(sp);
		return -EAGAIN; /* kept until a segment takes records again */
	}
	if (len > SPOOL_ARENA)
		return -E2BIG; /* would never fit: waiting would not help */
	b = batch_for(sp, seg, 3, 1);
	if (b && (b->arena_len + len > SPOOL_ARENA || !batch_room(b, 3, 1))) {
		batch_unget(b);
		return -EAGAIN;
	}
	if (!b)
		return -EAGAIN;
	if (len)
		memcpy(b->arena + b->arena_len, p, len);
	if (note) {
		b->sync_want = true;
		b->data = true; /* out at this turn's flush, not a second later */
	}
	b->note[b->nrec] = note;
	h = &b->rec[b->nrec++];
	spool_rec_hdr_init(h, &seg->key, type, msg_id, len, len ? spool_crc32c(0, p, len) : 0);
	b->iov[b->niov++] = (struct iovec){h, sizeof(*h)};
	if (len)
		b->iov[b->niov++] = (struct iovec){b->arena + b->arena_len, len};
	if (pad)
		b->iov[b->niov++] = (struct iovec){(void *)zero_pad, pad};
	b->arena_len += len;
	b->len += size;
	seg->tail += size;
	if (seg->tail >= sp->segment_size && sp->opening < 0)
		seg_rotate_start(sp);
	return 0;
}

int spool_rec_put(struct spool *sp, enum spool_rec_type type, uint64_t msg_id, const void *p,
		  uint32_t len)
{
	return rec_put(sp, type, msg_id, p, len, NULL);
}

int spool_rec_put_sync(struct spool *sp, enum spool_rec_type type, uint64_t msg_id, const void *p,
		       uint32_t len, struct spool_note *note)
{
	assert(note != NULL && note->fn != NULL);
	return rec_put(sp, type, msg_id, p, len, note);
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

static void seg_maybe_retire(struct spool *sp, struct spool_seg *seg)
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
static void seg_rotate_finish(struct spool *sp)
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
	seg_maybe_retire(sp, old);
	log_msg(LOG_INFO, "event=spool_rotate shard=%u segment=%016llx", sp->shard,
		(unsigned long long)sp->segs[idx].seq);
	sp->ops->on_segment(sp->ctx, sp->segs[idx].seq);
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
	sp->open_error = seghead_prepare(sp, seg);
	if (sp->open_error) {
		seg_rotate_finish(sp);
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

void spool_complete(struct spool *sp, uint64_t ud, int res)
{
	uint32_t idx = ring_ud_slot(ud);
	struct spool_seg *seg = &sp->segs[idx];
	struct spool_batch *b = &sp->batches[idx];
	struct spool_seg *bseg;

	assert(idx < SPOOL_SEGMENTS_MAX && sp->inflight > 0);
	sp->inflight--;
	switch (ring_ud_op(ud)) {
	case SPOOL_OP_WRITE:
	case SPOOL_OP_SYNC:
		assert(idx < SPOOL_BATCHES && b->busy && b->cqes > 0);
		if (ring_ud_op(ud) == SPOOL_OP_WRITE && res != (int)b->len && !b->res)
			b->res = res < 0 ? res : -ENOSPC; /* a short file write: disk full */
		else if (ring_ud_op(ud) == SPOOL_OP_SYNC && res < 0 && !b->res)
			b->res = res;
		if (--b->cqes > 0)
			break;
		bseg = b->seg;
		batch_complete(sp, b);
		seg_maybe_retire(sp, bseg);
		break;
	case SPOOL_OP_OPEN:
		seg_opened(sp, (int)idx, res);
		break;
	case SPOOL_OP_SEGHDR:
	case SPOOL_OP_DIRSYNC:
		if (ring_ud_op(ud) == SPOOL_OP_SEGHDR && res >= 0 &&
		    res != (int)sizeof(sp->seghead))
			res = -ENOSPC; /* a short head: disk full */
		if (res < 0 && !sp->open_error)
			sp->open_error = res;
		if (--sp->open_steps == 0)
			seg_rotate_finish(sp);
		break;
	case SPOOL_OP_CLOSE:
		*seg = (struct spool_seg){.owner = sp, .fd = -1};
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
		if (sp->segs[i].users || sp->segs[i].open)
			return true;
	return false;
}

const struct spool_stats *spool_stats(const struct spool *sp)
{
	return &sp->stats;
}
