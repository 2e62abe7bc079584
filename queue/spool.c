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
#include "queue/spool_int.h"

static const char zero_pad[SPOOL_REC_ALIGN];

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
		spool_seg_rotate_start(sp);
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

static void msg_release(struct spool *sp, struct spool_msg *m)
{
	struct spool_seg *seg = m->seg;

	assert(seg->users > 0);
	seg->users--;
	m->active = false;
	spool_seg_maybe_retire(sp, seg);
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
			spool_seg_maybe_retire(sp, seg);
		}
	}
	if (sp->segs[sp->cur].sealed && sp->opening < 0)
		spool_seg_rotate_start(sp);
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
			spool_seg_rotate_start(sp);
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
		spool_seg_rotate_start(sp);
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
		spool_seg_maybe_retire(sp, bseg);
		break;
	case SPOOL_OP_OPEN:
		spool_seg_opened(sp, (int)idx, res);
		break;
	case SPOOL_OP_SEGHDR:
	case SPOOL_OP_DIRSYNC:
		if (ring_ud_op(ud) == SPOOL_OP_SEGHDR && res >= 0 &&
		    res != (int)sizeof(sp->seghead))
			res = -ENOSPC; /* a short head: disk full */
		if (res < 0 && !sp->open_error)
			sp->open_error = res;
		if (--sp->open_steps == 0)
			spool_seg_rotate_finish(sp);
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
