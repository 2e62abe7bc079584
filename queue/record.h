/*
 * queue/record — the on-disk format of spool segments: record framing and
 * authentication, CRC32C, envelope encode/decode, and the blocking segment
 * scanner used by recovery (at start, before shards run) and by the
 * control thread.
 *
 * A segment is one append-only file <spool.path>/<shard>/<seq as 16 hex>.seg.
 * It is a sequence of records, each starting at an 8-byte aligned offset:
 *
 *   struct spool_rec_hdr (32 bytes, little-endian) | payload | zero pad to 8
 *
 * Offset 0 holds the SEGMENT record (format version, and the segment's key:
 * 16 random bytes from getrandom, made when the file is created).  Every
 * record header carries mac = SipHash-2-4 under that key of its first 24
 * bytes, which include the payload's CRC32C.  Message bytes from clients are
 * stored in the same file (CHUNK payloads), so a client can write bytes
 * shaped like records; without the key it cannot make a header verify (one
 * chance in 2^64 per try), so bytes a client sent never pass for a record.
 * A plain CRC keyed by prefixing the key would not do: CRC is affine, the
 * key's contribution is one 32-bit unknown per length, the same for every
 * record.
 *
 * Records of several messages interleave (one shard writes many sessions'
 * bodies into the same segment).  The writer keeps one batch per segment in
 * flight, so batches tile the file in order; a failed or short write seals
 * the segment (nothing is ever appended after it).  A message is:
 *   CHUNK* (payload = message bytes, in order, tagged with msg_id)
 *   COMMIT (payload = encoded envelope; written only after every chunk of the
 *           message completed; its msg_crc covers the concatenated chunks)
 * A message exists iff its COMMIT record is valid AND its chunks verify:
 * walking [first_chunk_off, commit_off) by the scan rules below, its valid
 * CHUNK records give wire_len octets with msg_crc (a verified record running
 * over the COMMIT breaks the walk: chunks precede their commit).
 *
 * Recovery scan: a crash can leave holes (pages never written back) before
 * later records of an unsynced tail.  The scanner tries each 8-byte aligned
 * offset where no verified header is; a header that verifies fixes the
 * record's extent, and the scan never looks inside it again, even when the
 * payload CRC fails (a torn record) -- the next try is at its end.  A
 * verified header whose record runs past the end ends the scan.  The "valid
 * end" is the end of the last wholly valid record; the rest is a torn tail
 * to truncate.  A file whose SEGMENT record does not verify holds nothing
 * (it was never synced); one of an older format version is refused, naming
 * the file (-EPROTO): version 1 (unkeyed CRCs) is not read any more.
 *
 * Thread: pure functions any thread may call; the scan/read functions do
 * blocking pread() and are for the main/control/helper threads only.
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
#define SPOOL_PREPEND_MAX     8192	 /* spool_env.prepend bound */
#define SPOOL_QID_LEN	      16	 /* queue ID text: 16 upper-case hex digits */

enum spool_rec_type {
	SPOOL_REC_SEGMENT = 1, /* first record of a segment: payload = spool_seg_info */
	SPOOL_REC_CHUNK = 2,   /* message bytes */
	SPOOL_REC_COMMIT = 3,  /* envelope: the message is complete */
	/* Reserved for the delivery issue: per-recipient state changes. */
	SPOOL_REC_RCPT_STATE = 4,
	SPOOL_REC_DONE = 5,
};

#define SPOOL_SEG_VERSION 2 /* 1: unkeyed header CRCs (refused) */
#define SPOOL_KEY_LEN	  16

struct spool_rec_hdr {
	uint32_t magic;
	uint8_t type;  /* enum spool_rec_type */
	uint8_t flags; /* reserved, 0 */
	uint16_t reserved;
	uint32_t len;	  /* payload octets (before padding) */
	uint32_t pay_crc; /* CRC32C of the payload */
	uint64_t msg_id;  /* queue ID as a number; 0 for SEGMENT */
	uint64_t mac;	  /* SipHash-2-4 under the segment key of the 24 bytes before */
};
_Static_assert(sizeof(struct spool_rec_hdr) == 32, "record header is 32 bytes");

/* The segment's secret: keys every record header's MAC. */
struct spool_key {
	uint8_t b[SPOOL_KEY_LEN];
};

/* SEGMENT payload.  shard and seq say where the file was created; the file
 * name is authoritative (a segment adopted by another shard keeps them). */
struct spool_seg_info {
	uint32_t version; /* SPOOL_SEG_VERSION */
	uint32_t shard;
	uint64_t seq;
	struct spool_key key;
};

/* The first 64 bytes of every segment: its SEGMENT record. */
struct spool_seg_head {
	struct spool_rec_hdr hdr;
	struct spool_seg_info info;
};
_Static_assert(sizeof(struct spool_seg_head) == 64, "segment head is 64 bytes");

/* A fresh random key (getrandom).  0 or -errno. */
int spool_key_new(struct spool_key *k);
/* SipHash-2-4 (Aumasson and Bernstein) of p[0..n) under k. */
uint64_t spool_siphash(const struct spool_key *k, const void *p, size_t n);
/* The head of a new segment. */
void spool_seg_head_init(struct spool_seg_head *out, uint32_t shard, uint64_t seq,
			 const struct spool_key *k);
/* Check the first n bytes of a segment: 0 (info filled), -EPROTO (a head of
 * an older format version), -EINVAL (no valid head). */
int spool_seg_head_parse(const void *p, size_t n, struct spool_seg_info *info);
/* Read and check fd's head (blocking pread).  0, -EPROTO, -EINVAL, -errno. */
int spool_seg_head_read(int fd, struct spool_seg_info *info);

/* CRC32C (Castagnoli), chainable: crc = spool_crc32c(crc, p, n), start at 0. */
uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n);
/* crc(A||B) from crc(A), crc(B) and |B|: O(log |B|), no data touched. */
uint32_t spool_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

/* Fill a header for a payload of len bytes whose CRC is pay_crc. */
void spool_rec_hdr_init(struct spool_rec_hdr *h, const struct spool_key *k,
			enum spool_rec_type type, uint64_t msg_id, uint32_t len, uint32_t pay_crc);
/* Bytes a record with this payload occupies on disk, padding included. */
static inline uint64_t spool_rec_size(uint32_t len)
{
	return (sizeof(struct spool_rec_hdr) + (uint64_t)len + SPOOL_REC_ALIGN - 1) &
	       ~(uint64_t)(SPOOL_REC_ALIGN - 1);
}
/* Check magic, mac under k, type range and len bound. 0 or -EINVAL. */
int spool_rec_hdr_check(const struct spool_rec_hdr *h, const struct spool_key *k);

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
	/* A BDAT body whose last line has no CRLF: relayed with DATA it gains
	 * one (RFC 5321 4.1.1.4), two octets its size must count. */
	SPOOL_ENV_NO_FINAL_CRLF = 1u << 3,
	/* The header section as stored (the Received: field we add included)
	 * is all ASCII: looked at on receipt.  With ASCII addresses too, an
	 * SMTPUTF8 message does not need SMTPUTF8 at the next hop (RFC 6531
	 * 3.4).  Absent (older spools): not known, taken as not ASCII. */
	SPOOL_ENV_HDR_ASCII = 1u << 4,
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
	uint64_t stuff_len;	  /* of msg_len, stuffing dots (STUFFED only; version 2) */
	uint32_t msg_crc;	  /* CRC32C over all chunk payloads, in order */
	uint64_t first_chunk_off; /* segment offset of the first CHUNK record */
	uint32_t flags;		  /* SPOOL_ENV_* */
	uint8_t body_type;	  /* enum smtp_body_type */
	uint8_t ret;		  /* enum smtp_ret */
	uint64_t size_declared;	  /* MAIL SIZE=, 0 if none */
	struct spool_str listener, client_addr, helo, mail_from, envid, auth_user;
	/* Header fields the filters added at the data stage ("Name: value\r\n"
	 * lines, at most SPOOL_PREPEND_MAX octets), delivered before the
	 * stored bytes; not in msg_len nor in msg_crc.  Version 3. */
	struct spool_str prepend;
	/* The quarantine a filter put the message in (empty: none): it enters
	 * the queue held, until an operator releases it.  Version 3. */
	struct spool_str quarantine;
	/* The route a filter chose by name for every recipient (empty: by
	 * domain, config_route_find).  Version 3. */
	struct spool_str route;
	uint32_t rcpt_count;
	/* Encode: rcpts points at rcpt_count entries.  Decode: NULL; use
	 * spool_env_rcpt() (recipients stay encoded in the payload). */
	const struct spool_rcpt *rcpts;
	const uint8_t *rcpt_data; /* decode: start of the encoded recipients */
	uint32_t rcpt_data_len;
};

/* The message's size as RFC 1870 counts it and as it is relayed with DATA:
 * the stored octets without their dot-stuffing, plus the CRLF a body that
 * lacks one gains.  SIZE= and every logged size use this. */
static inline uint64_t spool_env_size(const struct spool_env *env)
{
	return env->prepend.len + env->msg_len - env->stuff_len +
	       (env->flags & SPOOL_ENV_NO_FINAL_CRLF ? 2 : 0);
}

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
	uint32_t skipped;     /* aligned positions with no verified header, tried over */
	uint32_t bad_records; /* verified header, payload CRC wrong: extent skipped */
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
 * Returns 0, -EPROTO (older format version), -errno on I/O error, or fn's
 * non-zero return.  No valid head: 0 with no record (valid_end 0). */
int spool_segment_scan(int fd, uint64_t limit, bool verify_bodies, spool_scan_fn fn, void *ctx,
		       struct spool_scan_stats *stats);

/* Stream one committed message to fn in pieces: env->prepend, then the
 * stored bytes (the msg_len octets, in stored form).  Reads the segment's key from fd's head,
 * verifies every header and length and CRC over the chunks; returns 0, -EIO
 * on mismatch, -errno on read error, or fn's non-zero. */
typedef int (*spool_body_fn)(void *ctx, const char *p, size_t n);
int spool_message_read(int fd, const struct spool_env *env, uint64_t commit_off, spool_body_fn fn,
		       void *ctx);

/* ---- additions ----------------------------------------------------------- */

/* Envelope encoding version written by spool_env_encode (first payload byte).
 * Versions 1 (no stuff_len) and 2 (no prepend) are still read. */
#define SPOOL_ENV_VERSION 3
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
	SPOOL_STATE_DELETED = 1u << 1, /* the operator deleted it: gone at load */
	SPOOL_STATE_BOUNCE = 1u << 2,  /* the operator asked for a bounce */
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
