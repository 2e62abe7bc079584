/*
 * admit — the connection limits every shard shares: the total
 * (limits.connections) and the count per client (limits.connections_per_ip,
 * an IPv4 address or an IPv6 /64).  The kernel spreads one client's
 * connections over every shard's socket, so the counts are process-wide.
 * Any thread; admit_init() once at start, before the shards.
 */
#ifndef RMX_ADMIT_H
#define RMX_ADMIT_H

#include <sys/socket.h>

#include "config/config.h"

/* Size the per-client table and raise the descriptor limit.  0 or -ENOMEM. */
int admit_init(const struct rmx_config *cfg);
/* Count one more connection of this client: NULL, or why it is refused
 * ("connections" / "connections_per_ip"), counting nothing. */
const char *admit_take(const struct sockaddr_storage *ss);
/* A connection admit_take() counted is gone. */
void admit_release(const struct sockaddr_storage *ss);

#endif
