/*
 * queue/spool_int — what the spool's writer (spool.c) and its segment
 * files (spool_seg.c) share.  Not an interface: nothing outside queue/
 * includes it.  Everything here runs on the spool's shard thread.
 */
#ifndef RMX_QUEUE_SPOOL_INT_H
#define RMX_QUEUE_SPOOL_INT_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "queue/spool.h"

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

/* spool_seg.c, for the writer */
uint64_t spool_mono_ms(void);
/* The current segment is full: open the next in the background. */
void spool_seg_rotate_start(struct spool *sp);
/* A retiring segment nothing uses any more is closed. */
void spool_seg_maybe_retire(struct spool *sp, struct spool_seg *seg);
/* Completions of a rotation: the open, then the head and directory sync
 * (spool_seg_rotate_finish once both are in, or at the first failure). */
void spool_seg_opened(struct spool *sp, int idx, int res);
void spool_seg_rotate_finish(struct spool *sp);

#endif
