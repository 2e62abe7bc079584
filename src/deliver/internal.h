/*
 * deliver/internal — what the engine (deliver.c) and the outbound
 * connections (outbound.c) share.  Not a public interface.
 */
#ifndef RMX_DELIVER_INTERNAL_H
#define RMX_DELIVER_INTERNAL_H

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "deliver/deliver.h"
#include "smtp/client.h"

#define DLV_OCONN_MAX 256    /* outbound connections per shard */
#define DLV_HOPS_MAX  16     /* addresses tried per job */
#define DLV_WIN	      131072 /* body read window */
#define DLV_OUT_CAP   65536  /* command bytes buffered per connection */
#define DLV_IN_CAP    8192   /* reply bytes read at once */
#define DLV_IOV_MAX   128    /* iovecs per body send */
#define DLV_IDLE_MS   5000   /* an idle connection is kept this long */
#define DLV_ERR_MAX   256

struct dhop {
	struct sockaddr_storage addr;
	socklen_t len;
	bool lmtp;
	uint8_t tls;			/* enum config_route_tls of the route */
	uint16_t route;			/* index of the route (its TLS client context) */
	char name[96];			/* "mx.example[192.0.2.1]:25" */
	char host[SMTP_DOMAIN_MAX + 1]; /* the name to verify a certificate against */
};

/* One delivery attempt of one message, on the shared queue.  The owner
 * fills it; the shard that runs it writes only m->res[] (the per-recipient
 * answers) and hands it back. */
struct dticket {
	struct qmsg *m;		 /* the owner's entry: immutable fields and res[] only */
	uint32_t owner;		 /* shard */
	int segfd;		 /* the owner's fd of m's segment (reads are position-based) */
	struct spool_key segkey; /* that segment's key: its record headers verify under it */
	uint32_t jobs;		 /* jobs of this attempt not finished (runner's) */
	uint32_t runner;	 /* shard that ran it, for the log */
};

/* Where each recipient of a job stands (djob.acc[]).  One job may take
 * several transactions: recipients over the hop's limit per transaction
 * ("too many recipients", RFC 5321 4.5.3.1.10) go in the next one, and
 * after a 503 the ones without an answer go again on a fresh connection. */
enum dlv_rcpt_tx {
	DLV_RT_OPEN = 0, /* no answer yet: goes in the next transaction */
	DLV_RT_SENT,	 /* its RCPT is in this transaction, the reply due */
	DLV_RT_ACCEPTED, /* RCPT took it: the reply to the final dot answers it */
	DLV_RT_DONE,	 /* answered (dlv_rcpt_result): in no later transaction */
};

/* Recipients of one message that go to one next hop (list) together. */
struct djob {
	struct deliver *d;
	struct dticket *t;
	int segfd;
	char tls_info[128]; /* of the connection that carried the transaction */
	struct qmsg *m;
	const struct config_route *route;
	char domain[SMTP_DOMAIN_MAX + 1];
	uint32_t *rcpt; /* indexes into the envelope's recipients */
	uint8_t *acc;	/* per rcpt[]: enum dlv_rcpt_tx */
	uint32_t nrcpt;
	struct dhop hops[DLV_HOPS_MAX];
	uint32_t nhops, cur;
	bool dns_wait, waiting, started;
	bool hop_dsn; /* the hop of the transaction offered DSN: it took NOTIFY */
	/* A 503 showed a connection to the hop out of step: the next
	 * transaction goes on a new connection (fresh), and only once
	 * (restarted) — a second 503 defers. */
	bool fresh, restarted;
	/* A hop ended an overflow transaction before any data (one message
	 * per connection): it went again on a fresh connection, and may not
	 * again until a transaction takes someone. */
	bool cont_lost;
	char last_err[DLV_ERR_MAX];
	struct djob *next, *prev; /* the engine's wait list */
};

/* An outbound connection's state (oconn.state): which reply it waits for,
 * if any (outbound.c, oc_state_ask).  Changed only by oc_enter_state(),
 * against the legality table of oc_state.c. */
enum oc_state {
	OC_FREE = 0,
	OC_CONNECTING,
	OC_BANNER,
	OC_EHLO,
	OC_HELO,
	OC_STARTTLS, /* STARTTLS sent */
	OC_TLS_HS,   /* TLS handshake */
	OC_IDLE,
	OC_MAIL,
	OC_RCPT,
	OC_DATA,
	OC_BODY,
	OC_DOT,
	OC_RSET,
	OC_QUIT,
	OC_TLS_CLOSE, /* QUIT answered: our close_notify goes out, then the close */
	OC_CLOSING,
};
#define OC_STATE_COUNT (OC_CLOSING + 1)

/* oc_state.c (pure: unit tested) */
/* May a connection go from one state to the other? */
bool oc_state_legal(enum oc_state from, enum oc_state to);
/* "ehlo", "tls_handshake", ...: for the logs. */
const char *oc_state_name(enum oc_state st);

struct tls_conn;
struct tls_ctx;
struct net_conn;
struct net_table;

/* An outbound SMTP/LMTP client: the protocol on one connection of the
 * shard's outbound net table (net/net.h), in the slot of the same index. */
struct oconn {
	struct deliver *d;
	uint32_t slot;
	struct net_conn *nc; /* NULL while free */
	enum oc_state state;
	bool read_inflight; /* a body window is being read */
	struct dhop hop;
	struct smtp_ehlo_caps caps;
	char tls_info[128]; /* "TLSv1.3 TLS_AES_256_GCM_SHA384 verified" or "none" */
	uint32_t msgs;
	uint64_t idle_since_ms;
	struct djob *job;
	/* Replies owed for the commands in flight, in order (invariant 9):
	 * every reply is taken off here before it is acted on. */
	struct smtp_owed owed;
	/* transaction: replies come back in the order commands went out */
	uint32_t rcpt_sent, rcpt_replies, naccepted, lmtp_idx;
	uint32_t tx_rcpts;    /* RCPTs this transaction sends (its open recipients, capped) */
	uint32_t wcur, rcur;  /* job indexes: the next RCPT to write, the next reply's */
	uint32_t tx_answered; /* recipients this transaction answered (its progress) */
	uint32_t rcpt_max;    /* RCPTs the hop took before "too many" (0: no limit seen) */
	bool mail_ok, data_sent, pipelining;
	bool overflow;	 /* a RCPT was over the hop's limit: the rest go in the next */
	bool dot_failed; /* a reply to the final dot was not 2xx: RSET before reuse */
	char over_status[SMTP_ESC_MAX + 1], over_diag[DLV_ERR_MAX]; /* that RCPT's reply */
	/* output */
	char *out;
	uint32_t out_len;
	uint32_t out_inflight; /* bytes of out[] in the send in flight */
	struct iovec iov[DLV_IOV_MAX + 2];
	uint32_t niov;
	/* body streaming */
	int segfd;
	char *win;
	uint64_t win_off;
	uint32_t win_len;
	uint64_t pos, chunk_left, wire_left, msg_left;
	uint32_t chunk_pad, crc;
	bool stuffed, body_end;
	bool prepend_due; /* env.prepend goes out before the stored bytes */
	struct smtp_stuff_state stuff;
	/* input */
	struct smtp_reply_state rp;
	struct oconn *next, *prev; /* idle list / active */
};

/* outbound.c */
int oc_table_init(struct deliver *d);
int oc_tls_init(struct deliver *d, char *why, size_t why_len);
void oc_table_free(struct deliver *d);
/* Give job to an idle connection to its current hop, or open one; false
 * when the hop's connection limit is reached (the job waits). */
bool oc_assign(struct deliver *d, struct djob *job);
void oc_tick(struct deliver *d);
void oc_stop(struct deliver *d);
uint32_t oc_active(const struct deliver *d);

/* deliver.c, called by outbound.c */
/* The job's recipient rcpt[i] has its answer (code 2xx/4xx/5xx; reply may
 * be NULL with text in why for our own failures). */
void dlv_rcpt_result(struct deliver *d, struct djob *job, uint32_t i, int cls, const char *status,
		     const char *diag);
/* The job's connection attempt to its current hop failed before any
 * recipient had an answer: try the next hop or defer. */
void dlv_job_hop_failed(struct deliver *d, struct djob *job, const char *why);
/* Every recipient of the job has its answer (the ones still open are
 * deferred). */
void dlv_job_done(struct deliver *d, struct djob *job);
/* The job's recipients without an answer go in a new transaction to its
 * current hop: on an idle connection, or a new one (job->fresh: a new one
 * only), now or when the hop's connection limit lets it. */
void dlv_job_again(struct deliver *d, struct djob *job);
/* A connection slot freed or went idle: waiting jobs may go. */
void dlv_conn_freed(struct deliver *d);
int dlv_seg_fd(struct deliver *d, uint64_t seq);

/* Engine fields outbound.c uses. */
struct deliver_core {
	const struct rmx_config *cfg;
	struct ring *ring;
	uint32_t shard, shards;
	uint64_t now_ms;
	bool stopping;
	struct oconn *oc;	     /* by the slot of c->net */
	struct net_table *net;	     /* the outbound connections */
	struct oconn *oc_idle;	     /* idle connections, most recent first */
	struct tls_ctx **tls_client; /* per route, made on first use */
};

struct deliver_core *dlv_core(struct deliver *d);

#endif
