/*
 * control — the unix control socket, served by the main thread.
 *
 * Protocol: the client sends one line "<command> [args]\n"; the server
 * answers "OK\n" followed by the payload, or "ERR <reason>\n", then closes.
 * Commands: "queue list", "queue show ID".  Reads of the spool are blocking
 * preads of the segment files (the main thread is not a shard); records are
 * CRC-checked, so a reader never shows a half-written message.
 */
#ifndef RMX_CONTROL_H
#define RMX_CONTROL_H

#include "config.h"

#define CONTROL_LINE_MAX 512

/* Bind and listen; -errno with why. */
int control_open(const struct rmx_config *cfg, char *why, size_t why_len);
/* Serve one pending client on the listening fd (bounded by a short timeout). */
void control_serve(int lfd, const struct rmx_config *cfg);
void control_close(int lfd, const struct rmx_config *cfg);

#endif
