/*
 * preflight — what start-up would refuse, found without starting, and the
 * likely mistakes worth a warning.
 *
 * `ringmx --check-config` must fail on everything that would stop the server
 * from starting (so an admin can trust its "config ok"), and both it and the
 * start-up warn, one line each, about settings that load but are probably
 * wrong.  The checks read the files and directories the server will use,
 * build the TLS contexts the shards will build, and probe the listener
 * addresses; they create nothing.
 *
 * Thread: the main thread, before the shards start (it blocks on files and
 * sockets).
 */
#ifndef RMX_PREFLIGHT_H
#define RMX_PREFLIGHT_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

/* 0, or -1 with one line in why naming the config key and what is wrong.
 * check_only: a running ringmx may hold the listener addresses, so a probe
 * that finds one in use is not an error (start-up probes them itself). */
int preflight_check(const struct rmx_config *cfg, bool check_only, char *why, size_t why_len);

/* Calls warn(arg, line) for each likely mistake; returns how many. */
unsigned preflight_warnings(const struct rmx_config *cfg, void (*warn)(void *arg, const char *line),
			    void *arg);

#endif
