/*
 * shard_conn — between the shard's loop (shard.c) and its inbound
 * connections (conn.c), and nothing else.  Everything here runs on the
 * shard's thread.  The session sees connections through shard.h only.
 *
 * The shard calls in: a new client (conn_accepted), every completion whose
 * op is a connection's (conn_complete, which reaps the slot at its end when
 * nothing of it is in flight), the 1 s sweep (conn_tick), the stop
 * (conn_stop), helper and spool answers for sessions, and buffers that came
 * back (conn_rearm_starved).  The connections call out for the process-wide
 * per-IP count (conn_release_ip).
 */
#ifndef RMX_SHARD_CONN_H
#define RMX_SHARD_CONN_H

#include <stdint.h>

#include "shard.h"

struct io_uring_cqe;
struct spool_msg;

void conn_accepted(struct shard *sh, int fd, uint32_t li, const struct sockaddr_storage *ss);
/* peer_ip and peer_port from c->peer (also for a refused client's log). */
void conn_peer_format(struct conn *c);
void conn_complete(struct shard *sh, struct io_uring_cqe *cqe);
void conn_tick(struct conn *c);
void conn_stop(struct conn *c, const char *reply, uint64_t linger_ms);
void conn_helper_done(struct shard *sh, uint64_t cookie, int result);
void conn_spool_durable(struct shard *sh, struct spool_msg *m, int res);
void conn_spool_progress(struct shard *sh, struct spool_msg *m);
/* Buffers came back: connections that waited for one go on. */
void conn_rearm_starved(struct shard *sh);

/* shard.c: the per-client-IP count of a connection that is reaped. */
void conn_release_ip(const struct sockaddr_storage *ss);

#endif
