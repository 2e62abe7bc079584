/*
 * local/local — what Maildir and mbox delivery share: the dispatch by route,
 * recipient to path names, the generated header lines, the streaming
 * filter, the buffered writer and the mapping of errno to
 * temporary/permanent.  Contract: local.h.
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

/* ---- results ------------------------------------------------------------- */

static const char *local_strerror(int err, char *buf, size_t cap)
{
	/* GNU strerror_r: may return a static string instead of filling buf. */
	return strerror_r(-err, buf, cap);
}

static void local_set(struct local_result *res, int err, enum local_class cls, const char *status,
		      const char *step)
{
	char ebuf[64];
	res->err = err;
	res->cls = cls;
	res->status = status;
	if (err == 0)
		snprintf(res->diag, sizeof res->diag, "%s", step);
	else
		snprintf(res->diag, sizeof res->diag, "%s: %s", step,
			 local_strerror(err, ebuf, sizeof ebuf));
}

void local_ok(struct local_result *res)
{
	local_set(res, 0, LOCAL_DELIVERED, "2.0.0", "delivered");
}

/* Only errors that say something about this recipient's mailbox bounce;
 * everything else (the disk, the kernel, an errno we did not foresee) keeps
 * the mail queued, because a wrong 5xx loses mail and a wrong 4xx only
 * delays it. */
int local_fail(struct local_result *res, int err, const char *step)
{
	assert(err < 0);
	switch (-err) {
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		local_set(res, err, LOCAL_TEMPFAIL, "4.2.2", step);
		break;
	case ETIMEDOUT:
		local_set(res, err, LOCAL_TEMPFAIL, "4.2.0", step);
		break;
	case ENAMETOOLONG:
		local_set(res, err, LOCAL_PERMFAIL, "5.1.3", step);
		break;
	case EACCES:
	case EPERM:
	case ENOTDIR:
	case EISDIR:
	case ELOOP:
		local_set(res, err, LOCAL_PERMFAIL, "5.2.0", step);
		break;
	default:
		local_set(res, err, LOCAL_TEMPFAIL, "4.3.0", step);
		break;
	}
	return err;
}

int local_refuse(struct local_result *res, int err, const char *what)
{
	assert(err < 0);
	local_set(res, err, LOCAL_PERMFAIL, "5.1.3", what);
	return err;
}

/* ---- addresses ----------------------------------------------------------- */

/* Header injection guard: the sender and recipient go into header lines
 * and the mbox From_ line verbatim, so no control octet may pass. */
static bool local_addr_printable(const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1);
	if (n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			return false;
	}
	return true;
}

int local_check_msg(const struct local_msg *msg, struct local_result *res)
{
	assert(msg != NULL && res != NULL);
	assert(msg->read != NULL && msg->sender != NULL && msg->rcpt != NULL);
	if (!local_addr_printable(msg->sender, LOCAL_ADDR_MAX))
		return local_refuse(res, -EINVAL, "sender: too long or control characters");
	if (!local_addr_printable(msg->rcpt, LOCAL_ADDR_MAX))
		return local_refuse(res, -EINVAL, "recipient: too long or control characters");
	return 0;
}

/* RFC 5322 atext minus nothing: all of it is harmless in a file name. */
static bool local_part_octet_ok(unsigned char c)
{
	if (c >= 0x80) /* SMTPUTF8 local parts: UTF-8 is a fine file name */
		return true;
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return c != 0 && strchr("!#$%&'*+-=?^_`{|}~.", c) != NULL;
}

/* Copy the local part s[0..n) into out, unquoting a quoted string.  What is
 * left must pass local_part_octet_ok, so quoting cannot smuggle in '/'. */
static int local_part_copy(const char *s, size_t n, char *out, struct local_result *res)
{
	size_t o = 0;
	bool quoted = n >= 2 && s[0] == '"' && s[n - 1] == '"';
	size_t i = quoted ? 1 : 0, end = quoted ? n - 1 : n;

	for (; i < end; i++) {
		char c = s[i];
		if (quoted && c == '\\' && i + 1 < end)
			c = s[++i];
		if (o == LOCAL_PART_MAX)
			return local_refuse(res, -ENAMETOOLONG, "recipient: local part too long");
		if (!local_part_octet_ok((unsigned char)c))
			return local_refuse(res, -EINVAL, "recipient: unsafe local part");
		out[o++] = c;
	}
	out[o] = '\0';
	/* A leading '.' would make ".", "..", or a hidden name. */
	if (o == 0 || out[0] == '.')
		return local_refuse(res, -EINVAL, "recipient: unsafe local part");
	return 0;
}

static int local_domain_copy(const char *s, size_t n, char *out, struct local_result *res)
{
	if (n > 0 && s[n - 1] == '.') /* "example.org." is "example.org" */
		n--;
	if (n > LOCAL_DOMAIN_MAX)
		return local_refuse(res, -ENAMETOOLONG, "recipient: domain too long");
	if (n == 0 || s[0] == '.')
		return local_refuse(res, -EINVAL, "recipient: unsafe domain");
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		bool ok = c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
			  (c >= 'A' && c <= 'Z') || c == '-' || c == '.';
		if (!ok || (c == '.' && s[i + 1] == '.'))
			return local_refuse(res, -EINVAL, "recipient: unsafe domain");
		out[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : (char)c;
	}
	out[n] = '\0';
	return 0;
}

int local_addr_parse(const char *rcpt, struct local_addr *a, struct local_result *res)
{
	const char *at = strrchr(rcpt, '@');
	if (at == NULL)
		return local_refuse(res, -EINVAL, "recipient: no domain");
	int rc = local_part_copy(rcpt, (size_t)(at - rcpt), a->local, res);
	if (rc == 0)
		rc = local_domain_copy(at + 1, strlen(at + 1), a->domain, res);
	assert(rc != 0 || (a->local[0] != '\0' && strchr(a->local, '/') == NULL));
	return rc;
}

/* ---- directories --------------------------------------------------------- */

void local_close(int fd)
{
	if (fd >= 0)
		close(fd);
}

int local_open_base(const char *kind, const char *base, int *fd, struct local_result *res)
{
	char step[48];
	size_t n = strnlen(base, LOCAL_BASE_MAX + 1);
	snprintf(step, sizeof step, "%s: base directory", kind);
	*fd = -1;
	if (n == 0 || n > LOCAL_BASE_MAX) {
		local_set(res, -ENAMETOOLONG, LOCAL_TEMPFAIL, "4.3.5", step);
		return res->err;
	}
	/* The base may be a symlink: it is the operator's choice, not input. */
	*fd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0) {
		local_set(res, -errno, LOCAL_TEMPFAIL, "4.3.5", step);
		return res->err;
	}
	return 0;
}

int local_open_dir(int parent, const char *name, int *fd)
{
	const int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
	*fd = openat(parent, name, flags);
	if (*fd >= 0)
		return 0;
	if (errno != ENOENT)
		return -errno;
	/* EEXIST: another thread won the race; its entry may not be durable
	 * yet, so fsync the parent all the same. */
	if (mkdirat(parent, name, 0700) < 0 && errno != EEXIST)
		return -errno;
	if (fsync(parent) < 0)
		return -errno;
	*fd = openat(parent, name, flags);
	return *fd >= 0 ? 0 : -errno;
}

/* ---- buffered writer ----------------------------------------------------- */

void local_out_init(struct local_out *out, int fd)
{
	out->fd = fd;
	out->err = 0;
	out->len = 0;
	out->total = 0;
	out->last = '\n';
	out->tick = NULL;
	out->tick_arg = NULL;
}

int local_out_flush(struct local_out *out)
{
	size_t off = 0;
	while (out->err == 0 && off < out->len) {
		ssize_t w = write(out->fd, out->buf + off, out->len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) /* 0 from a regular file means no progress: treat as EIO */
			out->err = w < 0 ? -errno : -EIO;
		else
			off += (size_t)w;
	}
	out->len = 0;
	return out->err;
}

void local_out_put(struct local_out *out, const char *p, size_t n)
{
	if (out->err != 0 || n == 0)
		return;
	out->total += n;
	out->last = p[n - 1];
	while (n > 0) {
		size_t room = sizeof out->buf - out->len;
		size_t k = n < room ? n : room;
		memcpy(out->buf + out->len, p, k);
		out->len += k;
		p += k;
		n -= k;
		if (out->len == sizeof out->buf && local_out_flush(out) != 0)
			return;
	}
}

static void local_out_str(struct local_out *out, const char *s)
{
	local_out_put(out, s, strlen(s));
}

void local_put_headers(struct local_out *out, const struct local_msg *msg)
{
	local_out_str(out, "Return-Path: <");
	local_out_str(out, msg->sender);
	local_out_str(out, ">\nDelivered-To: ");
	local_out_str(out, msg->rcpt);
	local_out_str(out, "\n");
}

/* ---- streaming filter ---------------------------------------------------- */

void local_filter_init(struct local_filter *f, bool dot, bool mboxrd)
{
	*f = (struct local_filter){.dot = dot, .dot_bol = true, .mboxrd = mboxrd, .scan = mboxrd};
}

/* Release a held line prefix: the '>'s and the part of "From " matched,
 * with one more '>' in front when the whole "From " matched (mboxrd). */
static void quote_release(struct local_filter *f, struct local_out *out, bool quote)
{
	static const char gts[] = ">>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>";
	if (quote)
		local_out_put(out, ">", 1);
	while (f->gt > 0) {
		size_t k = f->gt < sizeof gts - 1 ? (size_t)f->gt : sizeof gts - 1;
		local_out_put(out, gts, k);
		f->gt -= k;
	}
	local_out_put(out, "From ", f->from_len);
	f->from_len = 0;
	f->scan = false;
}

/* Stage 3: mboxrd quoting.  Only line starts are looked at octet by octet;
 * the rest of a line goes out in one piece.  The held prefix is a counter,
 * so a line of a million '>' costs no memory. */
static void filter_quote(struct local_filter *f, struct local_out *out, const char *p, size_t n)
{
	static const char from[] = "From ";
	while (n > 0) {
		if (f->scan) {
			if (f->from_len == 0 && *p == '>') {
				f->gt++, p++, n--;
				continue;
			}
			if (*p == from[f->from_len]) {
				p++, n--;
				if (++f->from_len == sizeof from - 1)
					quote_release(f, out, true);
				continue;
			}
			quote_release(f, out, false);
		}
		const char *nl = memchr(p, '\n', n);
		size_t seg = nl != NULL ? (size_t)(nl - p) + 1 : n;
		local_out_put(out, p, seg);
		p += seg;
		n -= seg;
		f->scan = f->mboxrd && nl != NULL;
	}
}

/* Stage 2: CRLF -> LF, in place (the output never outgrows the input; a CR
 * held from the previous chunk goes out on its own). */
static void filter_lf(struct local_filter *f, struct local_out *out, char *p, size_t n)
{
	size_t o = 0, i = 0;
	if (n == 0)
		return;
	if (f->cr) {
		f->cr = false;
		if (p[0] != '\n')
			filter_quote(f, out, "\r", 1);
	}
	while (i < n) {
		char *cr = memchr(p + i, '\r', n - i);
		size_t seg = cr != NULL ? (size_t)(cr - (p + i)) : n - i;
		memmove(p + o, p + i, seg);
		o += seg;
		i += seg;
		if (cr == NULL)
			break;
		if (++i == n) {
			f->cr = true;
			break;
		}
		if (p[i] != '\n')
			p[o++] = '\r';
	}
	assert(o <= n);
	filter_quote(f, out, p, o);
}

void local_filter_finish(struct local_filter *f, struct local_out *out)
{
	if (f->cr) {
		f->cr = false;
		filter_quote(f, out, "\r", 1);
	}
	if (f->scan)
		quote_release(f, out, false);
	assert(f->gt == 0 && f->from_len == 0);
}

int local_copy(const struct local_msg *msg, struct local_filter *f, struct local_out *out,
	       const char *step, struct local_result *res)
{
	char in[LOCAL_READ_CHUNK];
	for (;;) {
		size_t got = 0;
		int rc = msg->read(msg->ctx, in, sizeof in, &got);
		if (rc < 0) {
			local_set(res, rc, LOCAL_TEMPFAIL, "4.3.0", "read message");
			return rc;
		}
		assert(rc == 0 && got <= sizeof in);
		if (got == 0)
			return 0;
		if (f->dot)
			got = smtp_unstuff(in, got, in, &f->dot_bol);
		filter_lf(f, out, in, got);
		if (out->err != 0)
			return local_fail(res, out->err, step);
		if (out->tick != NULL)
			out->tick(out->tick_arg);
	}
}

/* ---- dispatch ------------------------------------------------------------ */

int local_deliver(const char *route_to, const struct local_msg *msg, struct local_result *res)
{
	assert(route_to != NULL);
	if (strncmp(route_to, "maildir:", 8) == 0)
		return local_maildir_deliver(route_to + 8, msg, res);
	if (strncmp(route_to, "mbox:", 5) == 0)
		return local_mbox_deliver(route_to + 5, msg, res);
	/* A config error, not the recipient's: defer until it is fixed. */
	local_set(res, -EINVAL, LOCAL_TEMPFAIL, "4.3.5", "not a local route");
	return res->err;
}
