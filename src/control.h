/*
 * control — the unix control socket, served off the main thread.
 *
 * Protocol: the client sends one line "<command> [args]\n"; the server
 * answers "OK\n" followed by the payload, or "ERR <reason>\n", then closes.
 * Commands: "queue list", "queue show ID", "queue flush [ID]", "queue hold
 * ID", "queue release ID", "queue delete ID", "queue bounce ID", "ping".
 *
 * Threads: control_start() starts an acceptor thread, and each client is
 * served on a thread of its own, so a client that stops reading holds its
 * own thread only: never the main thread (signals, log drain, SIGTERM) nor
 * another client (`ping`).  The queue's state lives in the shards' delivery
 * engines: requests go to them through post() (the owning shard is the
 * queue ID's top byte), one request at a time (a shard has a one-slot
 * mailbox), and the client's thread waits for the answer.  `queue show`
 * reads the message itself with blocking preads of the segment files;
 * records are CRC-checked, so a reader never shows a half-written message.
 * Answers are streamed, never buffered whole.
 *
 * Bounds (each drop is logged, event=control_dropped): at most
 * CONTROL_CLIENTS_MAX clients at once (one more gets "ERR busy" and is
 * closed); the command line must arrive within CONTROL_READ_MS; a client
 * that accepts no byte of its answer for CONTROL_STALL_MS, or is still being
 * answered CONTROL_CLIENT_MS after it connected, is dropped.
 *
 * The socket file: control_prepare() runs before the shards start: it
 * refuses a path that is not a socket (a regular file, a directory, a
 * symlink: never removed) or a socket something answers on (another
 * instance), and removes only a stale socket (nothing answers).
 * control_start() binds with mode 0600 from the start (see
 * control_bind()); bind() never replaces an existing path.  control_stop()
 * removes the path only if it is still the socket this process made (same
 * device and inode).
 */
#ifndef RMX_CONTROL_H
#define RMX_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "deliver/deliver.h"

/* Hand req to shard (0..shards-1) and wait until it was answered. */
typedef void (*control_post_fn)(void *ctx, uint32_t shard, struct dctl_req *req);

#define CONTROL_LINE_MAX    512
#define CONTROL_CLIENTS_MAX 8
#define CONTROL_READ_MS	    5000   /* the command line, from accept */
#define CONTROL_STALL_MS    5000   /* an answer that does not move */
#define CONTROL_CLIENT_MS   120000 /* a whole client, from accept */

struct control;

/* Main thread, before the shards start: is path free for our socket?  0
 * (nothing there, or a stale socket now removed) or -errno with why. */
int control_prepare(const char *path, char *why, size_t why_len);
/* Main thread: bind, listen and start serving.  0 or -errno with why. */
struct flt_rules;
int control_start(struct control **out, const struct rmx_config *cfg, const struct flt_rules *rules,
		  control_post_fn post, void *post_ctx, char *why, size_t why_len);
/* Main thread: stop accepting, drop the clients being served, join every
 * control thread, remove the socket file if it is still ours.  Call before
 * the shards stop (a client may be waiting for a shard's answer). */
void control_stop(struct control *ctl);

#endif
