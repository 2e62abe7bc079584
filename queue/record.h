/*
 * queue/record — the on-disk format of spool segments: record framing,
 * CRC32C, envelope encode/decode, and the blocking segment scanner used by
 * recovery (at start, before shards run) and by the control thread.
 *
 * A segment is one append-only file <spool.path>/<shard>/<seq as 16 hex>.seg.
 * It is a sequence of records, each starting at an 8-byte aligned offset:
 *
 *   struct spool_rec_hdr (32 bytes, little-endian) | payload | zero pad to 8
 *
 * Records of several messages interleave (one shard writes many sessions'
 * bodies into the same segment, each write at an offset reserved in order,
 * completing in any order).  A message is:
 *   CHUNK* (payload = message bytes, in order, tagged with msg_id)
 *   COMMIT (payload = encoded envelope; written only after every chunk of the
 *           message completed; its msg_crc covers the concatenated chunks)
 * A message exists iff its COMMIT record is valid AND its chunks verify
 * (total length and CRC); anything else is garbage from an aborted or torn
 * transaction.  Because writes complete out of order, a crash can leave a
 * hole (zeros or garbage) *before* valid records: the scanner resynchronises
 * by trying the next 8-byte aligned offset, accepting a record only when its
 * magic, header CRC and payload CRC all match.  The "valid end" of a segment
 * is the end of the last valid record; everything after it is a torn tail to
 * truncate.
 *
 * Thread: pure functions any thread may call; the scan/read functions do
 * blocking pread() and are for the main/control thread and start-up only.
 */
#ifndef RMX_QUEUE_RECORD_H
#define RMX_QUEUE_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPOOL_REC_MAGIC	      0x52584d52u /* "RMXR" little-endian on disk */
#define SPOOL_REC_ALIGN	      8u
#define SPOOL_REC_PAYLOAD_MAX (1u << 24) /* 16 MiB; a chunk or envelope never exceeds */
#define SPOOL_ENV_MAX	      65536	 /* encoded envelope bound */
#define SPOOL_QID_LEN	      16	 /* queue ID text: 16 upper-case hex digits */

enum spool_rec_type {
	SPOOL_REC_SEGMENT = 1, /* first record of a segment: payload = spool_seg_info */
	SPOOL_REC_CHUNK = 2,   /* message bytes */
	SPOOL_REC_COMMIT = 3,  /* envelope: the message is complete */
	/* Reserved for the delivery issue: per-recipient state changes. */
	SPOOL_REC_RCPT_STATE = 4,
	SPOOL_REC_DONE = 5,
};

struct spool_rec_hdr {
	uint32_t magic;
	uint8_t type;  /* enum spool_rec_type */
	uint8_t flags; /* reserved, 0 */
	uint16_t reserved;
	uint32_t len;	  /* payload octets (before padding) */
	uint32_t pay_crc; /* CRC32C of the payload */
	uint64_t msg_id;  /* queue ID as a number; 0 for SEGMENT */
	uint32_t seq;	  /* reserved, 0 */
	uint32_t hdr_crc; /* CRC32C of the 28 bytes before it */
};
_Static_assert(sizeof(struct spool_rec_hdr) == 32, "record header is 32 bytes");

struct spool_seg_info {
	uint32_t version; /* 1 */
	uint32_t shard;
	uint64_t seq;
};

/* CRC32C (Castagnoli), chainable: crc = spool_crc32c(crc, p, n), start at 0. */
uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n);
/* crc(A||B) from crc(A), crc(B) and |B|: O(log |B|), no data touched. */
uint32_t spool_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* Fill a header for a payload of len bytes whose CRC is pay_crc. */
void spool_rec_hdr_init(struct spool_rec_hdr *h, enum spool_rec_type type, uint64_t msg_id,
			uint32_t len, uint32_t pay_crc);
/* Bytes a record with this payload occupies on disk, padding included. */
static inline uint64_t spool_rec_size(uint32_t len)
{
	return (sizeof(struct spool_rec_hdr) + (uint64_t)len + SPOOL_REC_ALIGN - 1) &
	       ~(uint64_t)(SPOOL_REC_ALIGN - 1);
}
/* Check magic, hdr_crc, type range and len bound. 0 or -EINVAL. */
int spool_rec_hdr_check(const struct spool_rec_hdr *h);

/* Queue ID text <-> number. */
void spool_qid_format(uint64_t id, char out[SPOOL_QID_LEN + 1]);
int spool_qid_parse(const char *s, size_t len, uint64_t *id);

/* ---- envelope ------------------------------------------------------------ */

struct spool_str {
	const char *ptr; /* not NUL-terminated on decode: points into the payload */
	uint32_t len;
};

enum {
	SPOOL_ENV_STUFFED = 1u << 0,  /* bytes are DATA wire form (dot-stuffed) */
	SPOOL_ENV_8BIT = 1u << 1,     /* message has non-ASCII octets */
	SPOOL_ENV_SMTPUTF8 = 1u << 2, /* MAIL ... SMTPUTF8 */
};

struct spool_rcpt {
	struct spool_str addr;	/* "local@domain" or "Postmaster" */
	struct spool_str orcpt; /* RFC 3461 ORCPT value or empty */
	uint8_t notify;		/* SMTP_NOTIFY_* bits */
};

struct spool_env {
	uint64_t id;
	int64_t arrival_s;	  /* unix time the message was committed */
	uint64_t msg_len;	  /* message octets as stored (the wire bytes minus
				     the DATA terminator) */
	uint64_t wire_len;	  /* total chunk payload octets */
	uint32_t msg_crc;	  /* CRC32C over all chunk payloads, in order */
	uint64_t first_chunk_off; /* segment offset of the first CHUNK record */
	uint32_t flags;		  /* SPOOL_ENV_* */
	uint8_t body_type;	  /* enum smtp_body_type */
	uint8_t ret;		  /* enum smtp_ret */
	uint64_t size_declared;	  /* MAIL SIZE=, 0 if none */
	struct spool_str listener, client_addr, helo, mail_from, envid, auth_user;
	uint32_t rcpt_count;
	/* Encode: rcpts points at rcpt_count entries.  Decode: NULL; use
	 * spool_env_rcpt() (recipients stay encoded in the payload). */
	const struct spool_rcpt *rcpts;
	const uint8_t *rcpt_data; /* decode: start of the encoded recipients */
	uint32_t rcpt_data_len;
};

/* Encode into out[0..cap). Returns bytes written, or 0 when it does not fit
 * (or exceeds SPOOL_ENV_MAX). */
size_t spool_env_encode(const struct spool_env *env, uint8_t *out, size_t cap);
/* Decode; strings point into p. 0 or -EINVAL (trailing bytes are an error). */
int spool_env_decode(const uint8_t *p, size_t len, struct spool_env *env);
/* i-th recipient of a decoded envelope (0-based). 0 or -EINVAL. */
int spool_env_rcpt(const struct spool_env *env, uint32_t i, struct spool_rcpt *out);

/* ---- scanning (blocking pread) ------------------------------------------- */

struct spool_scan_msg {
	struct spool_env env;	/* strings point into the scanner's buffer:
				   valid only during the callback */
	uint64_t commit_off;	/* offset of the COMMIT record */
	bool body_ok;		/* chunks found, length and CRC match */
	const uint8_t *env_raw; /* the encoded envelope env was decoded from */
	uint32_t env_raw_len;
};

/* Called once per valid COMMIT record, in file order.  Return 0 to go on,
 * non-zero to stop the scan (returned by spool_segment_scan). */
typedef int (*spool_scan_fn)(void *ctx, const struct spool_scan_msg *msg);

struct spool_scan_stats {
	uint64_t valid_end; /* end of the last valid record: truncate here */
	uint64_t file_len;
	uint32_t records;
	uint32_t skipped; /* invalid aligned positions resynchronised over */
	uint32_t commits;
	uint32_t bad_bodies; /* commits whose chunks did not verify */
	struct spool_seg_info info;
	bool has_info;
	/* Added: valid COMMIT records whose envelope did not decode (or whose
	 * envelope id differs from the header's msg_id).  fn is not called for
	 * them; commits counts them too. */
	uint32_t bad_envs;
};

/* Scan fd from offset 0 up to limit (UINT64_MAX: the file length).  Verifies
 * each commit's body (verify_bodies=true) before calling fn with body_ok.
 * Returns 0, -errno on I/O error, or fn's non-zero return. */
int spool_segment_scan(int fd, uint64_t limit, bool verify_bodies, spool_scan_fn fn, void *ctx,
		       struct spool_scan_stats *stats);

/* Stream the stored bytes of one committed message (the msg_len octets, in
 * stored form) to fn in pieces.  Verifies length and CRC over the chunks;
 * returns 0, -EIO on mismatch, -errno on read error, or fn's non-zero. */
typedef int (*spool_body_fn)(void *ctx, const char *p, size_t n);
int spool_message_read(int fd, const struct spool_env *env, uint64_t commit_off, spool_body_fn fn,
		       void *ctx);

/* ---- additions ----------------------------------------------------------- */

/* Envelope encoding version written by spool_env_encode (first payload byte). */
#define SPOOL_ENV_VERSION 1
/* The scanner reads the file in blocks of this size (one allocation per call);
 * records larger than it are streamed, not buffered whole. */
#define SPOOL_SCAN_BUF_SIZE (1u << 20)

/* Zero bytes a writer appends after a payload of len bytes (0..7). */
static inline size_t spool_rec_pad(uint32_t len)
{
	return (size_t)(spool_rec_size(len) - sizeof(struct spool_rec_hdr) - len);
}

/* The table-driven CRC32C that spool_crc32c falls back to without SSE4.2;
 * exported so tests can hold both paths to the same answers. */
uint32_t spool_crc32c_sw(uint32_t crc, const void *p, size_t n);

/* ---- per-recipient state (RCPT_STATE) and DONE records --------------------------
 *
 * Written by the delivery engine into the shard's current segment, after the
 * message's COMMIT (so always later in (segment seq, offset) order).  Each
 * RCPT_STATE record is a full snapshot of the message's delivery state: the
 * last one read wins.  DONE (empty payload) says every recipient is
 * finished.  A state record whose message is unknown (its segment was
 * reclaimed) is ignored. */
#define SPOOL_STATE_RCPTS_MAX 100000
#define SPOOL_STATE_ERR_MAX   512
#define SPOOL_STATE_MAX	      (20 + SPOOL_STATE_RCPTS_MAX + SPOOL_STATE_ERR_MAX)

enum spool_rcpt_state {
	SPOOL_RCPT_PENDING = 0,
	SPOOL_RCPT_DELIVERED = 1,
	SPOOL_RCPT_BOUNCED = 2,	 /* bounce (DSN) queued or not wanted */
	SPOOL_RCPT_DEFERRED = 3, /* pending, failed temporarily at least once */
};

enum {
	SPOOL_STATE_HELD = 1u << 0,
};

struct spool_state {
	uint8_t flags; /* SPOOL_STATE_* */
	uint16_t attempts;
	uint32_t rcpt_count;
	int64_t next_attempt_s;	   /* unix time */
	const uint8_t *rcpt_state; /* rcpt_count entries of enum spool_rcpt_state */
	const char *error;	   /* last error, not NUL-terminated */
	uint32_t error_len;
};

size_t spool_state_encode(const struct spool_state *st, uint8_t *out, size_t cap);
int spool_state_decode(const uint8_t *p, size_t len, struct spool_state *st);

/* Called for each valid RCPT_STATE or DONE record; payload is h->len bytes
 * (NULL when empty), valid during the call.  Non-zero stops the scan. */
typedef int (*spool_state_fn)(void *ctx, const struct spool_rec_hdr *h, const uint8_t *payload);

/* spool_segment_scan, also reporting state records to state_fn. */
int spool_segment_scan_states(int fd, uint64_t limit, bool verify_bodies, spool_scan_fn fn,
			      spool_state_fn state_fn, void *ctx, struct spool_scan_stats *stats);

#endif
