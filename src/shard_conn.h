/*
 * shard_conn — between the shard's loop (shard.c) and its inbound
 * connections (conn.c), and nothing else.  Everything here runs on the
 * shard's thread.  The session sees its connection through smtp/conn.h
 * only; the connections' completions, tick and buffer re-arming go
 * through the connection layer (the shard's NET_TABLE_INBOUND table).
 *
 * The shard calls in: a new client (conn_accepted), the stop
 * (conn_stop_all), helper and spool answers for sessions.
 */
#ifndef RMX_SHARD_CONN_H
#define RMX_SHARD_CONN_H

#include <stdint.h>

#include "shard.h"

struct spool_msg;

/* A new client on listener li; the caller checked a slot is free. */
void conn_accepted(struct shard *sh, int fd, uint32_t li, const struct sockaddr_storage *ss);
/* peer_ip and peer_port from c->peer (also for a refused client's log). */
void conn_peer_format(struct conn *c);
void conn_stop_all(struct shard *sh, const char *reply, uint64_t linger_until_ms);
void conn_helper_done(struct shard *sh, uint64_t cookie, int result);
void conn_spool_durable(struct shard *sh, struct spool_msg *m, int res);
void conn_spool_progress(struct shard *sh, struct spool_msg *m);

#endif
