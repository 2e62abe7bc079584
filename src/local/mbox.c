/*
 * local/mbox — append to an mbox file (mboxrd flavour) under both locking
 * conventions.  Contract and layout: local.h.
 *
 * Locks, taken in this order and both within one deadline:
 *  1. dotlock: <local>.lock created with O_EXCL next to the mbox (what
 *     procmail, mutt, Postfix local(8) and traditional mail readers use).
 *     Our pid is written into it; a lock older than LOCAL_DOTLOCK_STALE_S
 *     is broken (its owner died), and ours is touched every
 *     LOCAL_DOTLOCK_TOUCH_S while writing so a long append never looks stale.
 *  2. fcntl: a whole-file write lock, polled with F_SETLK-style attempts
 *     until the deadline (F_SETLKW has no timeout).  We use the OFD variant
 *     (Linux 3.15): it conflicts with classic POSIX locks held by other
 *     programs, and unlike them it also excludes other threads of this
 *     process; on an older kernel we fall back to F_SETLK.
 * Unlock happens only after fsync, in the reverse order.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "local/local.h"

struct mbox_lock {
	int domfd;			   /* directory of the mbox (borrowed) */
	int lockfd;			   /* our dotlock, -1 when not held */
	int fd;				   /* the mbox, fcntl-locked when locked */
	int lock_cmd;			   /* F_OFD_SETLK, or F_SETLK on old kernels */
	bool locked;			   /* fcntl lock held */
	time_t touched;			   /* last refresh of the dotlock's mtime */
	char lockname[LOCAL_PART_MAX + 6]; /* "<local>.lock" */
};

static int64_t mbox_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep one poll interval, never past the deadline; -ETIMEDOUT once it is
 * reached.  Polling, because neither lock kind has a wait with timeout. */
static int mbox_wait(int64_t deadline_ms)
{
	int64_t left = deadline_ms - mbox_now_ms();
	if (left <= 0)
		return -ETIMEDOUT;
	if (left > LOCAL_LOCK_POLL_MS)
		left = LOCAL_LOCK_POLL_MS;
	struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000};
	nanosleep(&ts, NULL);
	return 0;
}

/* 1: the lock was stale and is gone (or vanished by itself): try again now.
 * 0: it is live.  Breaking races with another breaker that has just taken a
 * fresh lock; checking the inode and mtime again right before the unlink
 * narrows that window to almost nothing (the dotlock protocol cannot close
 * it; the fcntl lock behind it still protects the file). */
static int dotlock_break_stale(int domfd, const char *lockname)
{
	struct stat a, b;
	if (fstatat(domfd, lockname, &a, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 1 : -errno;
	if (time(NULL) - a.st_mtime < LOCAL_DOTLOCK_STALE_S)
		return 0;
	if (fstatat(domfd, lockname, &b, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 1 : -errno;
	if (a.st_ino != b.st_ino || a.st_mtime != b.st_mtime)
		return 1;
	if (unlinkat(domfd, lockname, 0) < 0 && errno != ENOENT)
		return -errno;
	return 1;
}

static int dotlock_take(struct mbox_lock *lk, int64_t deadline_ms)
{
	for (;;) {
		int fd = openat(lk->domfd, lk->lockname,
				O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd >= 0) {
			char pid[24];
			int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
			if (write(fd, pid, (size_t)n) < 0) {
				/* An empty dotlock locks just as well. */
			}
			lk->lockfd = fd;
			lk->touched = time(NULL);
			return 0;
		}
		if (errno != EEXIST)
			return -errno;
		int rc = dotlock_break_stale(lk->domfd, lk->lockname);
		if (rc < 0)
			return rc;
		if (rc == 0 && (rc = mbox_wait(deadline_ms)) < 0)
			return rc;
		if (rc == 1 && mbox_now_ms() >= deadline_ms)
			return -ETIMEDOUT;
	}
}

/* Remove our dotlock, but only if it is still ours: had it been broken as
 * stale, the file there now belongs to someone else. */
static void dotlock_drop(struct mbox_lock *lk)
{
	struct stat mine, there;
	if (lk->lockfd < 0)
		return;
	if (fstat(lk->lockfd, &mine) == 0 &&
	    fstatat(lk->domfd, lk->lockname, &there, AT_SYMLINK_NOFOLLOW) == 0 &&
	    mine.st_ino == there.st_ino && mine.st_dev == there.st_dev)
		(void)unlinkat(lk->domfd, lk->lockname, 0);
	close(lk->lockfd);
	lk->lockfd = -1;
}

static int fcntl_take(struct mbox_lock *lk, int64_t deadline_ms)
{
	lk->lock_cmd = F_OFD_SETLK;
	for (;;) {
		struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
		if (fcntl(lk->fd, lk->lock_cmd, &fl) == 0) {
			lk->locked = true;
			return 0;
		}
		if (errno == EINVAL && lk->lock_cmd == F_OFD_SETLK) {
			lk->lock_cmd = F_SETLK; /* kernel before 3.15 */
			continue;
		}
		if (errno != EAGAIN && errno != EACCES && errno != EINTR)
			return -errno;
		int rc = mbox_wait(deadline_ms);
		if (rc < 0)
			return rc;
	}
}

static void fcntl_drop(struct mbox_lock *lk)
{
	if (!lk->locked)
		return;
	struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};
	(void)fcntl(lk->fd, lk->lock_cmd, &fl); /* close(2) would release it too */
	lk->locked = false;
}

/* While we waited, a mail reader may have replaced the mbox by rename: then
 * our fd is a file nobody reads any more.  Defer rather than write there. */
static int mbox_same_file(const struct mbox_lock *lk, const char *name)
{
	struct stat a, b;
	if (fstat(lk->fd, &a) < 0)
		return -errno;
	if (fstatat(lk->domfd, name, &b, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? -EAGAIN : -errno;
	return a.st_ino == b.st_ino && a.st_dev == b.st_dev ? 0 : -EAGAIN;
}

static int mbox_lock(struct mbox_lock *lk, const char *name, uint32_t wait_ms,
		     struct local_result *res)
{
	int64_t deadline_ms = mbox_now_ms() + (wait_ms != 0 ? wait_ms : LOCAL_LOCK_WAIT_MS);
	int rc = dotlock_take(lk, deadline_ms);
	if (rc != 0)
		return local_fail(res, rc, "mbox: dotlock");
	rc = fcntl_take(lk, deadline_ms);
	if (rc != 0)
		return local_fail(res, rc, "mbox: fcntl lock");
	rc = mbox_same_file(lk, name);
	if (rc != 0)
		return local_fail(res, rc, "mbox: replaced while locking");
	assert(lk->lockfd >= 0 && lk->locked);
	return 0;
}

static void mbox_unlock(struct mbox_lock *lk)
{
	fcntl_drop(lk);
	dotlock_drop(lk);
}

/* local_out tick: keep our dotlock younger than the stale limit. */
static void mbox_touch(void *arg)
{
	struct mbox_lock *lk = arg;
	time_t now = time(NULL);
	if (lk->lockfd >= 0 && now - lk->touched >= LOCAL_DOTLOCK_TOUCH_S) {
		(void)futimens(lk->lockfd, NULL);
		lk->touched = now;
	}
}

/* Open (or create, 0600) the mbox, refusing anything that is not one plain
 * file: a symlink (O_NOFOLLOW), a FIFO or device (O_NONBLOCK keeps a FIFO
 * open from hanging us, S_ISREG refuses it), a hard link to some other file. */
static int mbox_open(int domfd, const char *name, int *fd)
{
	const int flags = O_RDWR | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
	struct stat st;
	for (;;) {
		*fd = openat(domfd, name, flags);
		if (*fd >= 0)
			break;
		if (errno != ENOENT)
			return -errno;
		*fd = openat(domfd, name, flags | O_CREAT | O_EXCL, 0600);
		if (*fd >= 0) {
			if (fsync(domfd) < 0)
				return -errno; /* *fd is closed by the caller */
			break;
		}
		if (errno != EEXIST) /* EEXIST: created meanwhile, open it */
			return -errno;
	}
	if (fstat(*fd, &st) < 0)
		return -errno;
	if (S_ISDIR(st.st_mode))
		return -EISDIR;
	if (!S_ISREG(st.st_mode) || st.st_nlink != 1)
		return -EPERM;
	if (fcntl(*fd, F_SETFL, O_APPEND) < 0)
		return -errno;
	return 0;
}

/* "From <sender> <asctime date>\n".  The From_ line is split on spaces by
 * readers, so blanks in a (quoted) sender become '_'; the real address is
 * in Return-Path.  Names are spelled out: strftime would follow the locale. */
static void mbox_from_line(char *buf, size_t cap, const char *sender, time_t t)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char mons[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	struct tm tm;
	localtime_r(&t, &tm);
	int n = snprintf(buf, cap, "From %s ", sender[0] != '\0' ? sender : "MAILER-DAEMON");
	assert(n > 0 && (size_t)n < cap);
	for (char *p = buf + 5; p < buf + n - 1; p++)
		if (*p == ' ' || *p == '\t')
			*p = '_';
	snprintf(buf + n, cap - (size_t)n, "%s %s %2d %02d:%02d:%02d %d\n", days[tm.tm_wday],
		 mons[tm.tm_mon], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year + 1900);
}

/* Write separator, headers, the quoted message and the blank line; fsync. */
static int mbox_write(struct mbox_lock *lk, off_t size0, const struct local_msg *msg,
		      struct local_result *res)
{
	struct local_out out;
	struct local_filter f;
	char line[LOCAL_ADDR_MAX + 64], c = '\n';
	local_out_init(&out, lk->fd);
	out.tick = mbox_touch;
	out.tick_arg = lk;
	/* A From_ line is only one at a line start: repair a mailbox whose
	 * last writer left the final line open. */
	if (size0 > 0 && pread(lk->fd, &c, 1, size0 - 1) == 1 && c != '\n')
		local_out_put(&out, "\n", 1);
	mbox_from_line(line, sizeof line, msg->sender, time(NULL));
	local_out_put(&out, line, strlen(line));
	local_put_headers(&out, msg);
	local_filter_init(&f, msg->dot_stuffed, true);
	int rc = local_copy(msg, &f, &out, "mbox: write", res);
	if (rc != 0)
		return rc;
	local_filter_finish(&f, &out);
	if (out.last != '\n')
		local_out_put(&out, "\n", 1);
	local_out_put(&out, "\n", 1); /* the blank line that ends a message */
	if (local_out_flush(&out) != 0)
		return local_fail(res, out.err, "mbox: write");
	if (fsync(lk->fd) < 0)
		return local_fail(res, -errno, "mbox: fsync");
	return 0;
}

/* Append under the locks; on any failure cut the file back to where it
 * was, so readers never see half a message. */
static int mbox_append(struct mbox_lock *lk, const struct local_msg *msg, struct local_result *res)
{
	struct stat st;
	if (fstat(lk->fd, &st) < 0)
		return local_fail(res, -errno, "mbox: stat");
	int rc = mbox_write(lk, st.st_size, msg, res);
	if (rc != 0 && ftruncate(lk->fd, st.st_size) == 0)
		(void)fsync(lk->fd);
	assert(rc == 0 || res->cls != LOCAL_DELIVERED);
	return rc;
}

static int mbox_name_ok(const struct local_addr *a, struct local_result *res)
{
	size_t n = strlen(a->local);
	if (n >= 5 && strcmp(a->local + n - 5, ".lock") == 0)
		return local_refuse(res, -EINVAL, "recipient: local part ends in .lock");
	return 0;
}

int local_mbox_deliver(const char *base, const struct local_msg *msg, struct local_result *res)
{
	struct local_addr a;
	struct mbox_lock lk = {.domfd = -1, .lockfd = -1, .fd = -1};
	int basefd = -1;
	int rc = local_check_msg(msg, res);
	if (rc == 0)
		rc = local_addr_parse(msg->rcpt, &a, res);
	if (rc == 0)
		rc = mbox_name_ok(&a, res);
	if (rc == 0)
		rc = local_open_base("mbox", base, &basefd, res);
	if (rc == 0 && (rc = local_open_dir(basefd, a.domain, &lk.domfd)) != 0)
		local_fail(res, rc, "mbox: open domain directory");
	if (rc == 0 && (rc = mbox_open(lk.domfd, a.local, &lk.fd)) != 0)
		local_fail(res, rc, "mbox: open mailbox");
	if (rc == 0) {
		snprintf(lk.lockname, sizeof lk.lockname, "%s.lock", a.local);
		rc = mbox_lock(&lk, a.local, msg->lock_wait_ms, res);
	}
	if (rc == 0)
		rc = mbox_append(&lk, msg, res);
	if (rc == 0)
		local_ok(res);
	mbox_unlock(&lk);
	local_close(lk.fd);
	local_close(lk.domfd);
	local_close(basefd);
	assert(rc == res->err && (rc == 0) == (res->cls == LOCAL_DELIVERED));
	return rc;
}
