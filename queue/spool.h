/*
 * queue/spool — the writer side of one shard's spool: segment files, message
 * chunk writes straight from receive buffers, commit records, and group
 * commit (one fdatasync per segment per loop turn releases every message that
 * completed in that turn).
 *
 * Owns: the shard's open segments and their fds.  Thread: the shard only,
 * except spool_recover() (start-up, before the shard runs).  All I/O goes
 * through the shard's ring; completions come back through spool_complete().
 *
 * Message life:   spool_msg_begin -> spool_msg_append* -> (all writes done)
 *                 -> spool_msg_commit -> (commit written) -> group fdatasync
 *                 -> on_durable(msg, 0)             "persist before reply"
 * spool_msg_abort() drops a message that will never commit (its chunks stay
 * as garbage in the segment; recovery ignores chunks without a commit).
 *
 * Callbacks (on_write, on_durable) never fire synchronously from a spool_*
 * call; they fire from spool_complete() or spool_flush().
 */
#ifndef RMX_QUEUE_SPOOL_H
#define RMX_QUEUE_SPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "queue/record.h"
#include "ring/ring.h"

#define SPOOL_MSG_WRITES_MAX 4		    /* record writes in flight per message */
#define SPOOL_PIECES_MAX     16		    /* pieces gathered into one chunk record */
#define SPOOL_CHUNK_TARGET   (256u * 1024u) /* write once this much is gathered */
#define SPOOL_SEGMENTS_MAX   8		    /* segments open at once per shard */
#define SPOOL_NO_BUF	     0xffff	    /* payload not from a provided buffer */

struct spool;
struct spool_seg;

/* One record write in flight: a chunk (its pieces as iovecs), optionally
 * followed by the commit record in the same writev.  Headers and iovecs
 * live here until the completion. */
struct spool_wr {
	struct spool_rec_hdr hdr;  /* chunk */
	struct spool_rec_hdr chdr; /* commit */
	struct iovec iov[SPOOL_PIECES_MAX + 5];
	uint16_t bids[SPOOL_PIECES_MAX]; /* provided buffers to release */
	uint8_t nbids;
	bool has_commit;
	bool busy;
	uint32_t len; /* bytes the write must complete */
};

struct spool_msg {
	uint64_t id;
	struct spool_seg *seg;
	uint64_t first_off; /* first chunk; set at the first write */
	uint64_t wire_len;  /* bytes appended so far */
	uint32_t crc;	    /* CRC32C of the bytes already written */
	uint32_t writes_inflight;
	int io_error; /* first write error (-errno, -EIO for short) */
	/* Gathered and not yet written: pointers into provided buffers (a
	 * reference held on each) or into caller memory (SPOOL_NO_BUF). */
	struct iovec piece[SPOOL_PIECES_MAX];
	uint16_t piece_bid[SPOOL_PIECES_MAX];
	uint32_t npieces;
	uint32_t plen;
	uint32_t pcrc;
	struct spool_msg *pend_next, *pend_prev; /* spool's list of messages with pieces */
	bool pend_listed;
	struct spool_wr wr[SPOOL_MSG_WRITES_MAX];
	bool committing; /* commit record submitted */
	bool active;
	struct spool_msg *sync_next; /* group-commit list link */
	uint32_t owner;		     /* the owner's slot, for the callbacks */
	uint16_t owner_gen;
};

/* Ring op codes of the spool's completions (user_data op byte).  WRITE and
 * COMMIT carry the owner's slot/generation and the write index in aux: the
 * shard finds the message and calls spool_msg_complete().  SYNC, OPEN and
 * SEGHDR carry a segment index and go to spool_complete(). */
enum {
	SPOOL_OP_WRITE = 0x40,
	SPOOL_OP_COMMIT = 0x41,
	SPOOL_OP_SYNC = 0x42,
	SPOOL_OP_OPEN = 0x43,
	SPOOL_OP_SEGHDR = 0x44,
	SPOOL_OP_DIRSYNC = 0x45,
	SPOOL_OP_CLOSE = 0x46,
};
#define SPOOL_OP_FIRST SPOOL_OP_WRITE
#define SPOOL_OP_LAST  SPOOL_OP_CLOSE

struct spool_ops {
	/* The message is durable (res 0) or could not be made so (res -errno).
	 * Called from spool_complete() or spool_flush(), never from the call
	 * that started the work. */
	void (*on_durable)(void *ctx, struct spool_msg *m, int res);
};

struct spool_stats {
	uint64_t messages;
	uint64_t bytes;
	uint64_t syncs;
	uint64_t sync_msgs;
	uint64_t writes; /* record writes submitted (chunks and commits) */
};

/* Open the shard's spool directory and a fresh segment.  Start-up only
 * (blocking).  durable=false: no fdatasync at all (spool.durability none).
 * 0 or -errno with why. */
int spool_open(struct spool **out, const char *root, uint32_t shard, uint64_t segment_size,
	       bool durable, uint64_t first_id, struct ring *ring, const struct spool_ops *ops,
	       void *ctx, char *why, size_t why_len);
void spool_close(struct spool *sp);

/* Start-up: scan every segment of <root>/<shard>, truncate torn tails, and
 * return the count of committed messages and the largest message id seen
 * (new ids must be larger).  Blocking; before the shard runs. */
int spool_recover(const char *root, uint32_t shard, uint64_t *messages, uint64_t *max_id, char *why,
		  size_t why_len);

/* A new queue id: unique in this shard and never reused across restarts. */
uint64_t spool_next_id(struct spool *sp);

void spool_msg_begin(struct spool *sp, struct spool_msg *m, uint64_t id, uint32_t owner,
		     uint16_t owner_gen);
/* Can spool_msg_append take another piece now? (else wait for a write
 * completion of this message) */
bool spool_msg_can_write(const struct spool_msg *m);
/* Append n bytes at p.  bid names the provided buffer p lies in (a
 * reference is taken until the bytes are written) or SPOOL_NO_BUF for
 * memory the caller keeps alive until on_durable or abort.  Pieces are
 * gathered and written as one chunk record per loop turn (spool_flush), or
 * sooner once SPOOL_CHUNK_TARGET bytes or SPOOL_PIECES_MAX pieces are
 * gathered.  Requires spool_msg_can_write(). */
void spool_msg_append(struct spool *sp, struct spool_msg *m, const char *p, uint32_t n,
		      uint16_t bid);
/* No write of this message in flight (gathered pieces may remain). */
static inline bool spool_msg_idle(const struct spool_msg *m)
{
	return m->writes_inflight == 0;
}
/* Is a write slot free for spool_msg_commit()? */
bool spool_msg_can_commit(const struct spool_msg *m);
/* Write the commit record, in the same writev as the last gathered
 * pieces.  Earlier chunk writes may still be in flight: the message goes to
 * the group sync only when all its writes completed (recovery checks the
 * body CRC, so a commit on disk without its chunks is never trusted).
 * env->id/first_chunk_off/wire_len/msg_crc are filled here; enc points to
 * encode space of enc_cap bytes the caller keeps alive until on_durable.
 * Returns 0 or -ENOSPC (envelope too big; nothing written).  Requires
 * spool_msg_can_commit(). */
int spool_msg_commit(struct spool *sp, struct spool_msg *m, struct spool_env *env, uint8_t *enc,
		     size_t enc_cap);
/* Drop a message that will never commit.  Requires spool_msg_idle(); its
 * gathered pieces are released; written chunks stay as garbage in the
 * segment, which recovery ignores. */
void spool_msg_abort(struct spool *sp, struct spool_msg *m);

/* A WRITE or COMMIT completion of message m.  Releases the buffer
 * reference; a COMMIT completion queues m for the next group sync. */
void spool_msg_complete(struct spool *sp, struct spool_msg *m, uint64_t ud, int res);

/* End of a loop turn: start one fdatasync per segment with waiters. */
void spool_flush(struct spool *sp);
/* A SYNC/OPEN/SEGHDR/DIRSYNC/CLOSE completion. */
void spool_complete(struct spool *sp, uint64_t ud, int res);
/* Anything still in flight (writes, syncs, opens)? */
bool spool_busy(const struct spool *sp);

const struct spool_stats *spool_stats(const struct spool *sp);

#endif
