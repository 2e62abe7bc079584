/*
 * local/maildir — Maildir delivery (https://cr.yp.to/proto/maildir.html).
 * The parts mbox.c shares are in local.c.  Contract: local.h.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "local/local.h"

/* ---- Maildir ------------------------------------------------------------- */

/* Q<counter> keeps names unique between threads of one process within one
 * microsecond; the pid between processes; the host between machines that
 * share the directory (NFS). */
static _Atomic uint64_t maildir_seq;

size_t local_maildir_name(char *buf, size_t cap, const struct timespec *now, pid_t pid,
			  uint64_t counter, const char *host)
{
	int n = snprintf(buf, cap, "%lld.M%ldP%ldQ%" PRIu64 ".", (long long)now->tv_sec,
			 now->tv_nsec / 1000, (long)pid, counter);
	if (n < 0 || (size_t)n >= cap)
		return 0;
	size_t len = (size_t)n;
	if (host[0] == '\0')
		host = "localhost";
	for (size_t i = 0; host[i] != '\0' && i < LOCAL_HOST_MAX; i++) {
		const char *esc = host[i] == '/' ? "\\057" : host[i] == ':' ? "\\072" : NULL;
		size_t k = esc != NULL ? 4 : 1;
		if (len + k >= cap)
			return 0;
		memcpy(buf + len, esc != NULL ? esc : host + i, k);
		len += k;
	}
	buf[len] = '\0';
	return len;
}

static int maildir_open_box(int basefd, const struct local_addr *a, int *tmpfd, int *newfd)
{
	int domfd = -1, boxfd = -1, curfd = -1;
	int rc = local_open_dir(basefd, a->domain, &domfd);
	if (rc == 0)
		rc = local_open_dir(domfd, a->local, &boxfd);
	if (rc == 0)
		rc = local_open_dir(boxfd, "tmp", tmpfd);
	if (rc == 0)
		rc = local_open_dir(boxfd, "new", newfd);
	/* cur/ is never written by an MDA, but a Maildir without it is not
	 * one: readers refuse it. */
	if (rc == 0)
		rc = local_open_dir(boxfd, "cur", &curfd);
	local_close(domfd);
	local_close(boxfd);
	local_close(curfd);
	return rc;
}

/* Create tmp/<unique> exclusively.  A collision means a clock step back or
 * a foreign writer: take the next counter value and try again, boundedly. */
static int maildir_create(int tmpfd, char *name, int *fd)
{
	char host[256] = "";
	if (gethostname(host, sizeof host - 1) < 0)
		host[0] = '\0';
	for (int tries = 0; tries < LOCAL_NAME_TRIES; tries++) {
		struct timespec now;
		clock_gettime(CLOCK_REALTIME, &now);
		uint64_t seq = atomic_fetch_add(&maildir_seq, 1);
		if (local_maildir_name(name, LOCAL_NAME_MAX, &now, getpid(), seq, host) == 0)
			return -ENAMETOOLONG;
		*fd =
		    openat(tmpfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (*fd >= 0)
			return 0;
		if (errno != EEXIST)
			return -errno;
	}
	return -EEXIST;
}

/* Write the whole message into the open tmp file and make it durable. */
static int maildir_write(int fd, const struct local_msg *msg, struct local_result *res)
{
	struct local_out out;
	struct local_filter f;
	local_out_init(&out, fd);
	local_filter_init(&f, msg->dot_stuffed, false);
	local_put_headers(&out, msg);
	int rc = local_copy(msg, &f, &out, "maildir: write", res);
	if (rc != 0)
		return rc;
	local_filter_finish(&f, &out);
	if (local_out_flush(&out) != 0)
		return local_fail(res, out.err, "maildir: write");
	if (fsync(fd) < 0)
		return local_fail(res, -errno, "maildir: fsync");
	return 0;
}

/* Move tmp/name to new/name without ever replacing a delivered message,
 * then make the new entry durable. */
static int maildir_publish(int tmpfd, int newfd, const char *name, struct local_result *res)
{
	if (renameat2(tmpfd, name, newfd, name, RENAME_NOREPLACE) < 0) {
		if (errno != EINVAL && errno != ENOSYS)
			return local_fail(res, -errno, "maildir: rename into new");
		/* The file system lacks RENAME_NOREPLACE: link(2) never
		 * replaces either, which is what the Maildir spec uses. */
		if (linkat(tmpfd, name, newfd, name, 0) < 0)
			return local_fail(res, -errno, "maildir: link into new");
		(void)unlinkat(tmpfd, name, 0);
	}
	if (fsync(newfd) < 0) {
		int err = -errno;
		/* Not known durable, but visible: take it back, so the retry
		 * the 4xx causes does not deliver the message twice. */
		(void)unlinkat(newfd, name, 0);
		return local_fail(res, err, "maildir: fsync new");
	}
	return 0;
}

static int maildir_store(int tmpfd, int newfd, const struct local_msg *msg,
			 struct local_result *res)
{
	char name[LOCAL_NAME_MAX];
	int fd = -1;
	int rc = maildir_create(tmpfd, name, &fd);
	if (rc != 0)
		return local_fail(res, rc, "maildir: create in tmp");
	rc = maildir_write(fd, msg, res);
	if (close(fd) < 0 && rc == 0) /* NFS reports write errors at close */
		rc = local_fail(res, -errno, "maildir: close");
	if (rc == 0)
		rc = maildir_publish(tmpfd, newfd, name, res);
	if (rc != 0)
		(void)unlinkat(tmpfd, name, 0); /* ENOENT after a publish: fine */
	return rc;
}

int local_maildir_deliver(const char *base, const struct local_msg *msg, struct local_result *res)
{
	struct local_addr a;
	int basefd = -1, tmpfd = -1, newfd = -1;
	int rc = local_check_msg(msg, res);
	if (rc == 0)
		rc = local_addr_parse(msg->rcpt, &a, res);
	if (rc == 0)
		rc = local_open_base("maildir", base, &basefd, res);
	if (rc == 0) {
		rc = maildir_open_box(basefd, &a, &tmpfd, &newfd);
		if (rc != 0)
			local_fail(res, rc, "maildir: open mailbox");
	}
	if (rc == 0)
		rc = maildir_store(tmpfd, newfd, msg, res);
	if (rc == 0)
		local_ok(res);
	local_close(basefd);
	local_close(tmpfd);
	local_close(newfd);
	assert(rc == res->err && (rc == 0) == (res->cls == LOCAL_DELIVERED));
	return rc;
}
