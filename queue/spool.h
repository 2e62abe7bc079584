/*
 * queue/spool — the writer side of one shard's spool: segment files, message
 * bytes written straight from receive buffers, commit records, and group
 * commit.
 *
 * Owns: the shard's open segments and their fds, and a few write batches.
 * Thread: the shard only, except spool_recover() (start-up, before the
 * shard runs).  All I/O goes through the shard's ring; completions come
 * back through spool_complete().
 *
 * Group commit: per segment, one batch is being written while the next one
 * fills.  A batch holds every record placed in one or more loop turns (any
 * number of messages) and goes out as one writev with its fdatasync linked
 * behind it, so a buffered write and its sync cost one io-wq hop.  Writes
 * to a segment are serialised, so the sync of batch N covers all earlier
 * batches: a message is durable when the batch holding its commit record
 * completes.
 *
 * Message life:   spool_msg_begin -> spool_msg_append* -> spool_msg_commit
 *                 -> (its batch written and synced) -> on_durable(msg, 0)
 * spool_msg_abort() drops a message that will never commit (its chunks stay
 * as garbage in the segment; recovery ignores chunks without a commit).
 *
 * Callbacks (on_durable, on_progress) never fire synchronously from a
 * spool_msg_* call; they fire from spool_complete().
 */
#ifndef RMX_QUEUE_SPOOL_H
#define RMX_QUEUE_SPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>

#include "queue/record.h"
#include "ring/ops.h"
#include "ring/ring.h"

#define SPOOL_PIECES_MAX   16		  /* pieces gathered before a chunk must be written */
#define SPOOL_CHUNK_TARGET (256u * 1024u) /* write once this much is gathered */
#define SPOOL_SEGMENTS_MAX 8		  /* segments open at once per shard */
#define SPOOL_NO_BUF	   0xffff	  /* payload not from a provided buffer */

struct spool;
struct spool_seg;

/*
 * A message being written.  Its bytes are gathered as pieces (pointers into
 * provided buffers, a reference held on each, or into caller memory) and
 * go out as CHUNK records; the spool puts the records of every message of
 * one loop turn into one writev per segment (a "batch"), because each
 * buffered file write costs a hop to an io-wq worker.
 */
struct spool_msg {
	uint64_t id;
	struct spool_seg *seg;
	uint64_t first_off;	  /* first chunk; set when it is placed */
	uint64_t wire_len;	  /* bytes appended so far */
	uint32_t crc;		  /* CRC32C of the bytes already placed in chunks */
	uint32_t writes_inflight; /* batches holding records of this message */
	int io_error;		  /* first write error (-errno; -ENOSPC for short) */
	struct iovec piece[SPOOL_PIECES_MAX];
	uint16_t piece_bid[SPOOL_PIECES_MAX];
	uint32_t npieces;
	uint32_t plen;
	uint32_t pcrc;
	struct spool_msg *pend_next, *pend_prev; /* spool's list of messages with pieces */
	bool pend_listed;
	struct spool_msg *wait_next, *wait_prev; /* blocked on a free batch */
	/* The list m is on: the spool's waiters, or the ones a completion is
	 * waking right now; NULL when on neither. */
	struct spool_msg **wait_list;
	bool committing; /* commit record placed */
	bool active;
	uint32_t batch_gen;	     /* last batch this message was counted in */
	struct spool_msg *sync_next; /* committed on a failed segment: the doomed list */
	uint32_t owner;		     /* the owner's slot, for the callbacks */
	uint16_t owner_gen;
	/* Set by spool_msg_commit: the encoded envelope (the caller's memory). */
	const uint8_t *env_enc;
	uint32_t env_len;
	uint64_t commit_off; /* offset of the COMMIT record in its segment */
	/* Set just before on_durable: the segment holding the message, and an
	 * fd of it that stays open until the callbacks of this turn returned
	 * (dup it to keep reading). */
	uint64_t seg_seq;
	int seg_fd;
	struct spool_key seg_key;
};

/* spool_msg.owner of messages the spool's user writes itself (bounces),
 * not a connection's. */
#define SPOOL_OWNER_ENGINE UINT32_MAX

/* Ring op codes of the spool's completions (user_data op byte); all go to
 * spool_complete().  WRITE carries a batch index, the others a segment's. */
enum {
	SPOOL_OP_WRITE = 0x40,
	SPOOL_OP_SYNC = 0x42,
	SPOOL_OP_OPEN = 0x43,
	SPOOL_OP_SEGHDR = 0x44,
	SPOOL_OP_DIRSYNC = 0x45,
	SPOOL_OP_CLOSE = 0x46,
};
#define SPOOL_OP_FIRST SPOOL_OP_WRITE
#define SPOOL_OP_LAST  SPOOL_OP_CLOSE
static_assert(SPOOL_OP_FIRST >= OPS_SPOOL_FIRST && SPOOL_OP_LAST <= OPS_SPOOL_LAST,
	      "spool ops inside the spool's range (ring/ops.h)");

struct spool_ops {
	/* The message is durable (res 0) or could not be made so (res -errno).
	 * Called from spool_complete() or spool_flush(), never from the call
	 * that started the work. */
	void (*on_durable)(void *ctx, struct spool_msg *m, int res);
	/* A write holding some of m's records completed (m not committing):
	 * a writer waiting for spool_msg_can_write/can_commit/idle may go on. */
	void (*on_progress)(void *ctx, struct spool_msg *m);
	/* Segment seq exists on disk (head and directory entry durable) and is
	 * now the current one.  Called from spool_complete() for every segment
	 * after the first (spool_current_seq() names that one once spool_open
	 * returned), so the spool's user knows every file it must delete once
	 * nothing live is in it -- including one that only ever held aborted
	 * messages and state records. */
	void (*on_segment)(void *ctx, uint64_t seq);
};

struct spool_stats {
	uint64_t messages;
	uint64_t bytes;
	uint64_t syncs;
	uint64_t writes; /* record writes submitted (chunks and commits) */
};

/* Open the shard's spool directory and a fresh segment.  Start-up only
 * (blocking).  durable=false: no fdatasync at all (spool.durability none).
 * 0 or -errno with why. */
int spool_open(struct spool **out, const char *root, uint32_t shard, uint64_t segment_size,
	       bool durable, uint64_t first_id, struct ring *ring, const struct spool_ops *ops,
	       void *ctx, char *why, size_t why_len);
void spool_close(struct spool *sp);

/* Queue ids carry the shard that made them in their top byte. */
#define SPOOL_ID_PREFIXES 256

/* Start-up: scan every segment of <root>/<shard>, truncate torn tails, and
 * return the count of commit records; max_ids[p] (SPOOL_ID_PREFIXES
 * entries, kept across calls) is raised to the largest id seen with top
 * byte p (new ids must be larger: a directory may hold another shard's
 * ids once adopted).  Bodies are not verified here: the queue load
 * (queue/qindex.h) does that once.  A segment of an older format is an
 * error naming the file.  Blocking; before the shards run. */
int spool_recover(const char *root, uint32_t shard, uint64_t *messages, uint64_t *max_ids,
		  char *why, size_t why_len);

/* Start-up, before spool_recover: the directory of every shard n >= shards
 * (a previous run had more) is adopted by shard n % shards -- its segments
 * renamed into that directory after the ones there, in order, the empty
 * directory removed, each adoption logged -- so every segment on disk is
 * loaded and delivered whatever the shard count.  0 or -errno with why. */
int spool_adopt(const char *root, uint32_t shards, char *why, size_t why_len);

/* Start-up: create the spool root and hold an exclusive lock on it for the
 * life of the process, so two ringmx processes never write one spool (with
 * SO_REUSEPORT a second one could even share the port).  Returns the lock's
 * fd (kept open, never closed) or -errno with why. */
int spool_lock_root(const char *root, char *why, size_t why_len);

/* A new queue id: unique in this shard and never reused across restarts. */
uint64_t spool_next_id(struct spool *sp);

void spool_msg_begin(struct spool *sp, struct spool_msg *m, uint64_t id, uint32_t owner,
		     uint16_t owner_gen);
/* Can spool_msg_append take another piece now? (else spool_msg_wait) */
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
/* The writer found spool_msg_can_write()/can_commit() false: call
 * on_progress for m once a batch frees up.  Undone by commit or abort. */
void spool_msg_wait(struct spool *sp, struct spool_msg *m);
/* Is there room to place the commit now? (else spool_msg_wait) */
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

/* End of a loop turn: gathered pieces into chunks, and each segment's
 * filling batch out as one writev when no batch of that segment is in
 * flight (else when that one lands) and it carries message data (or
 * spool_flush_states() asked); an fdatasync is linked behind it when it
 * holds commits or a waited-for record and durability is on. */
void spool_flush(struct spool *sp);
/* Append a small record (per-recipient state, done) to the current segment:
 * the payload is copied, the record rides the next batch that carries
 * message data, or the next spool_flush after spool_flush_states(), and no
 * callback fires for it (it is synced by the next commit's fdatasync, or by
 * none: losing it to a crash means a delivery is repeated, never lost).
 * 0 or -EAGAIN (no batch room this turn: try again next turn), -E2BIG for
 * a payload over the batch arena (128 KiB; every state record fits it,
 * SPOOL_STATE_MAX), which no turn could take. */
int spool_rec_put(struct spool *sp, enum spool_rec_type type, uint64_t msg_id, const void *p,
		  uint32_t len);

/* Told when a record put with spool_rec_put_sync is on disk (res 0: written
 * and, unless spool.durability is none, fdatasync'ed) or could not be made
 * so (-errno).  Called from spool_complete() or spool_flush(). */
struct spool_note {
	void (*fn)(struct spool_note *n, int res);
};

/* spool_rec_put for a record someone waits on (an operator's command is
 * answered only once its record is durable): its batch goes out at this
 * turn's flush with an fdatasync, and note->fn fires once for the record.
 * 0 or -EAGAIN (try again next turn; note not taken). */
int spool_rec_put_sync(struct spool *sp, enum spool_rec_type type, uint64_t msg_id, const void *p,
		       uint32_t len, struct spool_note *note);

/* 0 while the current segment takes records; else the -errno of the write
 * that sealed it.  Until a new segment opens (tried once a second: the
 * disk may be full), spool_rec_put and spool_rec_put_sync only say
 * -EAGAIN, so a caller that answers someone on a record's durability asks
 * here first rather than wait for as long as the disk stays full. */
int spool_write_error(const struct spool *sp);

/* Have the next spool_flush write batches that hold only state records
 * (the engine asks once a second, and on every turn while stopping). */
void spool_flush_states(struct spool *sp);

/* Segment files are <spool.path>/<shard>/<seq as 16 hex digits>.seg.  The
 * name is built here and nowhere else, so the writer, recovery, the queue
 * index and reclaim always agree on which file a sequence number is. */
#define SPOOL_SEG_SUFFIX   ".seg"
#define SPOOL_SEG_NAME_MAX 24 /* 16 hex digits, the suffix, NUL, slack */

static inline void spool_seg_name(uint64_t seq, char out[SPOOL_SEG_NAME_MAX])
{
	snprintf(out, SPOOL_SEG_NAME_MAX, "%016llx" SPOOL_SEG_SUFFIX, (unsigned long long)seq);
}

/* A directory entry's sequence number, or false when it does not name a
 * segment.  Only the exact name spool_seg_name() makes (16 lower-case hex
 * digits, the suffix) counts, so two entries can never name one sequence
 * number: "0000000000000001.seg.orig", "1.seg" or an upper-case twin (an
 * operator's copy) would be segment 1 a second time, and the queue's table
 * of segments holds each once (the start-up died on its assertion). */
static inline bool spool_seg_parse(const char *name, uint64_t *seq)
{
	uint64_t v = 0;

	for (int i = 0; i < 16; i++) {
		char ch = name[i];

		if (ch >= '0' && ch <= '9')
			v = v << 4 | (uint64_t)(ch - '0');
		else if (ch >= 'a' && ch <= 'f')
			v = v << 4 | (uint64_t)(ch - 'a' + 10);
		else
			return false; /* also the end of a shorter name */
	}
	if (strcmp(name + 16, SPOOL_SEG_SUFFIX) != 0)
		return false;
	*seq = v;
	return true;
}

/* Does a directory entry name a segment file?  Exactly as spool_seg_parse:
 * recovery and the control walk see the same files as the index. */
static inline bool spool_seg_is_name(const char *name)
{
	uint64_t seq;

	return spool_seg_parse(name, &seq);
}

/* No write of the spool can touch segment seq any more (it is not open). */
bool spool_seg_quiet(const struct spool *sp, uint64_t seq);

/* Sequence number of the segment new records go to. */
uint64_t spool_current_seq(const struct spool *sp);

/* A completion whose op is one of SPOOL_OP_*. */
void spool_complete(struct spool *sp, uint64_t ud, int res);
/* Anything still in flight (writes, syncs, opens)? */
bool spool_busy(const struct spool *sp);

const struct spool_stats *spool_stats(const struct spool *sp);

#endif
