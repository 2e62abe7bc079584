/*
 * control — the unix control socket, served by the main thread.
 *
 * Protocol: the client sends one line "<command> [args]\n"; the server
 * answers "OK\n" followed by the payload, or "ERR <reason>\n", then closes.
 * Commands: "queue list", "queue show ID", "queue flush [ID]", "queue hold
 * ID", "queue release ID", "queue delete ID", "queue bounce ID", "ping".
 * The queue's state lives in the shards' delivery engines: requests go to
 * them through post() (the owning shard is the queue ID's top byte) and
 * the main thread waits for the answer.  `queue show` reads the message
 * itself with blocking preads of the segment files (the main thread is not
 * a shard); records are CRC-checked, so a reader never shows a
 * half-written message.
 */
#ifndef RMX_CONTROL_H
#define RMX_CONTROL_H

#include "config.h"
#include "deliver/deliver.h"

/* Hand req to shard (0..shards-1) and wait until it was answered. */
typedef void (*control_post_fn)(void *ctx, uint32_t shard, struct dctl_req *req);

#define CONTROL_LINE_MAX 512

/* Bind and listen; -errno with why. */
int control_open(const struct rmx_config *cfg, char *why, size_t why_len);
/* Serve one pending client on the listening fd (bounded by a short timeout). */
void control_serve(int lfd, const struct rmx_config *cfg, control_post_fn post, void *ctx);
void control_close(int lfd, const struct rmx_config *cfg);

#endif
