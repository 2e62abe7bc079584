/*
 * queue/spool_recover — start-up, before the shards run: each shard's
 * segments scanned (torn tails truncated, CRC-checked records only, the
 * highest message ID per prefix), and the directories of shards that no
 * longer run adopted by the ones that do.  Blocking I/O, main thread.
 * Contract: spool.h.
 */
#include "queue/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log/log.h"

struct recover_ctx {
	uint64_t messages;
	uint64_t *max_ids; /* SPOOL_ID_PREFIXES */
};

static int recover_msg(void *vctx, const struct spool_scan_msg *msg)
{
	struct recover_ctx *ctx = vctx;
	uint32_t prefix = (uint32_t)(msg->env.id >> 56);

	ctx->messages++; /* commits: their bodies are verified by the queue load */
	if (msg->env.id > ctx->max_ids[prefix])
		ctx->max_ids[prefix] = msg->env.id;
	return 0;
}

/* One segment: scan, and cut a torn tail so the next writer (and reader)
 * never sees it.  An empty segment (no valid record at all) is removed. */
static int recover_segment(int dirfd, const char *dir, const char *name, struct recover_ctx *ctx,
			   char *why, size_t why_len)
{
	struct spool_scan_stats st = {0};
	int fd = openat(dirfd, name, O_RDWR | O_CLOEXEC);
	int rc;

	if (fd < 0) {
		snprintf(why, why_len, "%s/%s: %s", dir, name, strerror(errno));
		return -errno;
	}
	/* Only the valid end and the ids are needed here; the queue load
	 * (qindex_load) verifies every body once. */
	rc = spool_segment_scan(fd, UINT64_MAX, false, recover_msg, ctx, &st);
	if (rc == -EPROTO) {
		/* Nothing is deployed with format 1; its CRCs are unkeyed, so
		 * client bytes in it could pass for records: not read at all. */
		snprintf(why, why_len,
			 "%s/%s: segment of an older format (unkeyed record CRCs), not read by "
			 "this version; move it out of the spool",
			 dir, name);
		close(fd);
		return rc;
	}
	if (rc < 0) {
		snprintf(why, why_len, "%s/%s: scan failed: %s", dir, name, strerror(-rc));
		close(fd);
		return rc;
	}
	if (st.bad_records || st.skipped)
		log_msg(LOG_WARN,
			"event=spool_recover segment=%s/%s torn_records=%u skipped_bytes=%llu", dir,
			name, st.bad_records, (unsigned long long)st.skipped * SPOOL_REC_ALIGN);
	if (st.valid_end < st.file_len) {
		log_msg(LOG_WARN, "event=spool_recover segment=%s/%s torn_tail=%llu valid_end=%llu",
			dir, name, (unsigned long long)(st.file_len - st.valid_end),
			(unsigned long long)st.valid_end);
		if (ftruncate(fd, (off_t)st.valid_end) != 0 || fsync(fd) != 0) {
			snprintf(why, why_len, "%s/%s: truncate: %s", dir, name, strerror(errno));
			close(fd);
			return -errno;
		}
	}
	close(fd);
	if (st.valid_end == 0)
		unlinkat(dirfd, name, 0);
	return 0;
}

int spool_recover(const char *root, uint32_t shard, uint64_t *messages, uint64_t *max_ids,
		  char *why, size_t why_len)
{
	struct recover_ctx ctx = {.max_ids = max_ids};
	char dir[PATH_MAX];
	struct dirent *de;
	int dirfd, rc = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/%u", root, shard);
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		*messages = 0;
		if (errno == ENOENT)
			return 0;
		snprintf(why, why_len, "spool.path: %s: %s", dir, strerror(errno));
		return -errno;
	}
	d = fdopendir(dup(dirfd));
	while (d && rc == 0 && (de = readdir(d)) != NULL) {
		if (spool_seg_is_name(de->d_name))
			rc = recover_segment(dirfd, dir, de->d_name, &ctx, why, why_len);
	}
	if (d)
		closedir(d);
	if (rc == 0)
		fsync(dirfd);
	close(dirfd);
	*messages = ctx.messages;
	return rc;
}

/* ---- adoption of the directories of shards that no longer run ------------------ */

static int seq_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The segment sequence numbers in dirfd, sorted; *out malloc'd. */
static int seg_list(int dirfd, uint64_t **out, size_t *n)
{
	DIR *d = fdopendir(dup(dirfd));
	size_t cap = 0;
	struct dirent *de;

	*out = NULL;
	*n = 0;
	if (!d)
		return -errno;
	while ((de = readdir(d)) != NULL) {
		uint64_t seq;

		if (!spool_seg_parse(de->d_name, &seq))
			continue;
		if (*n == cap) {
			uint64_t *t = realloc(*out, (cap = cap ? cap * 2 : 64) * sizeof(*t));

			if (!t) {
				closedir(d);
				return -ENOMEM;
			}
			*out = t;
		}
		(*out)[(*n)++] = seq;
	}
	closedir(d);
	qsort(*out, *n, sizeof(**out), seq_cmp);
	return 0;
}

/* Move every segment of <root>/<from> to <root>/<to>, in sequence order,
 * numbered after the last one there.  Records only refer to messages of
 * older segments of their own directory, so a directory appended as a
 * block after another keeps every reference pointing backwards; a crash
 * half-way leaves the rest to be appended after the part already moved. */
static int adopt_dir(int rootfd, const char *root, uint32_t from, uint32_t shards, char *why,
		     size_t why_len)
{
	char src[16], dst[16], name[SPOOL_SEG_NAME_MAX], nname[SPOOL_SEG_NAME_MAX];
	uint64_t *have = NULL, *move = NULL, next = 0;
	size_t nhave = 0, nmove = 0;
	uint32_t to = from % shards;
	int sfd, dfd, rc;

	snprintf(src, sizeof(src), "%u", from);
	snprintf(dst, sizeof(dst), "%u", to);
	if (mkdirat(rootfd, dst, 0750) != 0 && errno != EEXIST)
		goto fail_errno;
	sfd = openat(rootfd, src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	dfd = openat(rootfd, dst, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0 || dfd < 0) {
		rc = -errno;
		snprintf(why, why_len, "spool.path: %s/%s: %s", root, sfd < 0 ? src : dst,
			 strerror(-rc));
		goto out;
	}
	rc = seg_list(dfd, &have, &nhave);
	if (rc == 0)
		rc = seg_list(sfd, &move, &nmove);
	if (rc < 0) {
		snprintf(why, why_len, "spool.path: %s: %s", root, strerror(-rc));
		goto out;
	}
	next = nhave ? have[nhave - 1] + 1 : 1;
	for (size_t i = 0; i < nmove; i++, next++) {
		spool_seg_name(move[i], name);
		spool_seg_name(next, nname);
		if (renameat2(sfd, name, dfd, nname, RENAME_NOREPLACE) != 0) {
			rc = -errno;
			snprintf(why, why_len, "spool.path: adopting %s/%s/%s as %s/%s/%s: %s",
				 root, src, name, root, dst, nname, strerror(-rc));
			goto out;
		}
	}
	if (fsync(dfd) != 0 || fsync(sfd) != 0) {
		rc = -errno;
		snprintf(why, why_len, "spool.path: %s: fsync: %s", root, strerror(-rc));
		goto out;
	}
	log_msg(LOG_WARN, "event=spool_adopt from=%s/%s to=%s/%s segments=%zu shards=%u", root, src,
		root, dst, nmove, shards);
	if (unlinkat(rootfd, src, AT_REMOVEDIR) != 0)
		log_msg(LOG_WARN, "event=spool_adopt dir=%s/%s error=\"not removed: %s\"", root,
			src, strerror(errno));
	rc = 0;
out:
	free(have);
	free(move);
	if (sfd >= 0)
		close(sfd);
	if (dfd >= 0)
		close(dfd);
	return rc;
fail_errno:
	rc = -errno;
	snprintf(why, why_len, "spool.path: %s/%s: %s", root, dst, strerror(-rc));
	return rc;
}

int spool_adopt(const char *root, uint32_t shards, char *why, size_t why_len)
{
	int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	DIR *d;
	int rc = 0;

	assert(shards > 0);
	if (rootfd < 0) {
		snprintf(why, why_len, "spool.path: %s: %s", root, strerror(errno));
		return -errno;
	}
	d = fdopendir(dup(rootfd));
	while (d && rc == 0 && (de = readdir(d)) != NULL) {
		char *end;
		unsigned long n = strtoul(de->d_name, &end, 10);

		if (de->d_name[0] < '0' || de->d_name[0] > '9' || *end || n > 255 || n < shards)
			continue;
		rc = adopt_dir(rootfd, root, (uint32_t)n, shards, why, why_len);
	}
	if (d)
		closedir(d);
	if (rc == 0)
		fsync(rootfd);
	close(rootfd);
	return rc;
}
