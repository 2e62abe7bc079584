/*
 * control — see control.h.  One acceptor thread; a thread per client, with
 * a non-blocking socket whose every wait is a poll() bounded by the
 * client's stall and whole-client deadlines.
 */
#include "control.h"
#include "control_int.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log/log.h"
#include "queue/spool.h"

#define CONTROL_BACKLOG 16

/* A client slot's life; one transition function, under control.lock. */
enum ctl_slot_state {
	CTL_SLOT_FREE, /* no thread */
	CTL_SLOT_BUSY, /* its thread serves fd */
	CTL_SLOT_DONE, /* its thread finished: join it before reuse */
};

static const char *const drop_names[] = {"none",   "stalled",  "deadline",
					 "closed", "stopping", "idle"};

struct control;

struct ctl_client {
	struct control *ctl;
	enum ctl_slot_state state;
	int fd; /* -1 once its thread let go of it */
	uint64_t accepted_ms;
	pthread_t thread;
};

struct control {
	const struct rmx_config *cfg;
	const struct flt_rules *rules;
	control_post_fn post;
	void *post_ctx;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t dev; /* the socket file we made */
	ino_t ino;
	int lfd;
	int stop_fd; /* eventfd: the acceptor returns */
	pthread_t acceptor;
	_Atomic bool stopping;
	pthread_mutex_t lock;	   /* clients[] */
	pthread_mutex_t post_lock; /* one request in the shards' mailboxes at a time */
	struct ctl_client clients[CONTROL_CLIENTS_MAX];
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void slot_enter(struct ctl_client *cl, enum ctl_slot_state next)
{
	switch (next) {
	case CTL_SLOT_BUSY:
		assert(cl->state == CTL_SLOT_FREE && cl->fd >= 0);
		break;
	case CTL_SLOT_DONE:
		assert(cl->state == CTL_SLOT_BUSY && cl->fd < 0);
		break;
	case CTL_SLOT_FREE:
		assert(cl->state == CTL_SLOT_DONE || cl->state == CTL_SLOT_BUSY);
		break;
	default:
		abort();
	}
	cl->state = next;
}

/* Wait until fd is ready for events, at most CONTROL_STALL_MS or until the
 * deadline; the drop reason when it did not get ready. */
static enum ctl_drop out_wait(const struct out *o, short events, int stall_ms)
{
	uint64_t now = mono_ms();
	struct pollfd p = {.fd = o->fd, .events = events};
	int wait_ms, r;

	if (atomic_load(&o->ctl->stopping))
		return CTL_DROP_STOPPING;
	if (now >= o->deadline_ms)
		return CTL_DROP_DEADLINE;
	wait_ms =
	    o->deadline_ms - now < (uint64_t)stall_ms ? (int)(o->deadline_ms - now) : stall_ms;
	do
		r = poll(&p, 1, wait_ms);
	while (r < 0 && errno == EINTR);
	if (r > 0)
		return CTL_DROP_NONE;
	return mono_ms() >= o->deadline_ms ? CTL_DROP_DEADLINE : CTL_DROP_STALLED;
}

void out_write(struct out *o, const void *p, size_t n)
{
	const char *c = p;

	while (n > 0 && o->drop == CTL_DROP_NONE) {
		ssize_t w = send(o->fd, c, n, MSG_NOSIGNAL);

		if (w > 0) {
			c += w;
			n -= (size_t)w;
			o->sent += (uint64_t)w;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			o->drop = out_wait(o, POLLOUT, CONTROL_STALL_MS);
		} else {
			o->drop =
			    atomic_load(&o->ctl->stopping) ? CTL_DROP_STOPPING : CTL_DROP_CLOSED;
		}
	}
}

void out_printf(struct out *o, const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > 0)
		out_write(o, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* The shards' mailboxes hold one request each: client threads take turns. */
static void ctl_post(struct control *ctl, uint32_t shard, struct dctl_req *req)
{
	pthread_mutex_lock(&ctl->post_lock);
	ctl->post(ctl->post_ctx, shard, req);
	pthread_mutex_unlock(&ctl->post_lock);
}

static void cmd_queue_list(struct out *o, struct control *c, bool quarantined)
{
	out_write(o, "OK\n", 3);
	for (uint32_t i = 0; i < c->cfg->shards && o->drop == CTL_DROP_NONE; i++) {
		struct dctl_req req = {.op = DCTL_LIST, .quarantined = quarantined};

		ctl_post(c, i, &req);
		if (req.out_len)
			out_write(o, req.out, req.out_len);
		free(req.out);
	}
}

/* The shard owning a queue ID (its top byte), or -1 with the error sent. */
static int id_shard(struct out *o, struct control *c, const char *arg, uint64_t *id)
{
	if (spool_qid_parse(arg, strlen(arg), id) != 0) {
		out_printf(o, "ERR bad queue ID: %.40s\n", arg);
		return -1;
	}
	if ((*id >> 56) >= c->cfg->shards) {
		out_printf(o, "ERR no such message: %.40s\n", arg);
		return -1;
	}
	return (int)(*id >> 56);
}

static void cmd_queue_op(struct out *o, struct control *c, enum dctl_op op, const char *name,
			 const char *arg)
{
	struct dctl_req req = {.op = op};
	int shard;

	if (op == DCTL_FLUSH && arg == NULL) {
		for (uint32_t i = 0; i < c->cfg->shards; i++)
			ctl_post(c, i, &req);
		out_printf(o, "OK\nflushed\n");
		return;
	}
	shard = id_shard(o, c, arg, &req.id);
	if (shard < 0)
		return;
	ctl_post(c, (uint32_t)shard, &req);
	if (req.result == -ENOENT)
		out_printf(o, "ERR no such message: %.40s\n", arg);
	else if (req.result < 0)
		out_printf(o, "ERR %s: %s\n", name, strerror(-req.result));
	else
		out_printf(o, "OK\n%s %s\n", name, arg);
}

static void cmd_queue_show(struct out *o, struct control *c, const char *arg)
{
	struct dctl_req req = {.op = DCTL_FIND};
	uint64_t id;
	int shard = id_shard(o, c, arg, &id);

	if (shard < 0)
		return;
	/* Only a message still queued: a finished one may linger in its
	 * segment until the segment is reclaimed. */
	req.id = id;
	ctl_post(c, (uint32_t)shard, &req);
	if (req.result != 0 || !control_show_message(o, c->cfg->spool.path, id, arg))
		out_printf(o, "ERR no such message: %.40s\n", arg);
}

/* The command line, within CONTROL_READ_MS of accept; *idle when it did
 * not come in time. */
static bool read_line(struct out *o, char *line, size_t cap, bool *idle)
{
	uint64_t deadline = o->deadline_ms;
	size_t n = 0;

	o->deadline_ms = mono_ms() + CONTROL_READ_MS;
	if (o->deadline_ms > deadline)
		o->deadline_ms = deadline;
	while (n + 1 < cap) {
		ssize_t r = read(o->fd, line + n, cap - 1 - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			enum ctl_drop d = out_wait(o, POLLIN, CONTROL_READ_MS);

			*idle = d == CTL_DROP_STALLED || d == CTL_DROP_DEADLINE;
			if (d != CTL_DROP_NONE)
				break;
			continue;
		}
		if (r <= 0)
			break;
		n += (size_t)r;
		line[n] = '\0';
		char *nl = strchr(line, '\n');
		if (nl) {
			*nl = '\0';
			if (nl > line && nl[-1] == '\r')
				nl[-1] = '\0';
			o->deadline_ms = deadline;
			return true;
		}
	}
	o->deadline_ms = deadline;
	return false;
}

static void cmd_queue_verb(struct out *o, struct control *c, const char *line)
{
	static const struct {
		const char *verb;
		enum dctl_op op;
	} ops[] = {
	    {"flush", DCTL_FLUSH},   {"hold", DCTL_HOLD},     {"release", DCTL_RELEASE},
	    {"delete", DCTL_DELETE}, {"bounce", DCTL_BOUNCE},
	};
	const char *verb = line + 6;
	const char *arg = strchr(verb, ' ');
	size_t vlen = arg ? (size_t)(arg - verb) : strlen(verb);
	size_t i;

	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strlen(ops[i].verb) == vlen && strncmp(verb, ops[i].verb, vlen) == 0)
			break;
	if (i == sizeof(ops) / sizeof(ops[0]))
		out_printf(o, "ERR unknown command: %.60s\n", line);
	else if (!arg && ops[i].op != DCTL_FLUSH)
		out_printf(o, "ERR usage: queue %s ID\n", ops[i].verb);
	else
		cmd_queue_op(o, c, ops[i].op, ops[i].verb, arg ? arg + 1 : NULL);
}

static void client_command(struct control *c, struct out *o, const char *line)
{
	if (strcmp(line, "queue list") == 0 || strcmp(line, "queue list --quarantine") == 0)
		cmd_queue_list(o, c, line[10] != '\0');
	else if (strncmp(line, "queue show ", 11) == 0)
		cmd_queue_show(o, c, line + 11);
	else if (strcmp(line, "filter explain") == 0 || strncmp(line, "filter explain ", 15) == 0)
		control_explain(o, c->cfg, c->rules, line + 14);
	else if (strcmp(line, "ping") == 0)
		out_printf(o, "OK\npong\n");
	else if (strncmp(line, "queue ", 6) == 0)
		cmd_queue_verb(o, c, line);
	else
		out_printf(o, "ERR unknown command: %.60s\n", line);
}

/* One client, on its own thread: read the command, answer, log a drop. */
static void client_serve(struct control *c, struct out *o)
{
	char line[CONTROL_LINE_MAX];
	bool idle = false;

	line[0] = '\0';
	if (read_line(o, line, sizeof(line), &idle)) {
		/* An answer never comes before the lines the shards logged
		 * before it, nor before those its command made (a script that
		 * runs `queue hold` and then reads the log sees them). */
		log_drain();
		client_command(c, o, line);
		log_drain();
	} else {
		out_printf(o, "ERR expected one command line\n");
		line[0] = '\0';
		if (idle && o->drop == CTL_DROP_NONE)
			o->drop = CTL_DROP_IDLE;
	}
	/* A reader that went away is its own business (`| head`); one that
	 * stopped reading, or outstayed its time, was cut off. */
	if (o->drop != CTL_DROP_NONE)
		log_msg(o->drop == CTL_DROP_CLOSED ? LOG_DEBUG : LOG_WARN,
			"event=control_dropped reason=%s command=\"%.60s\" sent=%llu",
			drop_names[o->drop], line, (unsigned long long)o->sent);
}

static void *client_main(void *arg)
{
	struct ctl_client *cl = arg;
	struct control *c = cl->ctl;
	struct out o = {.ctl = c, .fd = cl->fd, .deadline_ms = cl->accepted_ms + CONTROL_CLIENT_MS};
	int fd;

	client_serve(c, &o);
	pthread_mutex_lock(&c->lock);
	fd = cl->fd;
	cl->fd = -1; /* control_stop() shuts down only fds still held */
	slot_enter(cl, CTL_SLOT_DONE);
	pthread_mutex_unlock(&c->lock);
	close(fd);
	return NULL;
}

/* A free slot (joining a finished thread), or NULL; under c->lock. */
static struct ctl_client *slot_take(struct control *c)
{
	for (size_t i = 0; i < CONTROL_CLIENTS_MAX; i++) {
		struct ctl_client *cl = &c->clients[i];

		if (cl->state == CTL_SLOT_DONE) {
			pthread_join(cl->thread, NULL);
			slot_enter(cl, CTL_SLOT_FREE);
		}
		if (cl->state == CTL_SLOT_FREE)
			return cl;
	}
	return NULL;
}

static void accept_one(struct control *c)
{
	static const char busy[] = "ERR busy: too many control clients\n";
	int fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	struct ctl_client *cl;

	if (fd < 0) {
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			struct timespec pause = {.tv_nsec = 100 * 1000000};

			log_msg(LOG_WARN, "event=control_accept error=\"%s\"", strerror(errno));
			nanosleep(&pause, NULL); /* the backlog stays readable: do not spin */
		}
		return;
	}
	pthread_mutex_lock(&c->lock);
	cl = slot_take(c);
	if (cl) {
		cl->fd = fd;
		cl->accepted_ms = mono_ms();
		slot_enter(cl, CTL_SLOT_BUSY);
		if (pthread_create(&cl->thread, NULL, client_main, cl) != 0) {
			cl->fd = -1;
			slot_enter(cl, CTL_SLOT_FREE);
			cl = NULL;
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (cl)
		return;
	/* A fresh socket's buffer takes this line without waiting. */
	if (send(fd, busy, sizeof(busy) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		(void)0;
	log_msg(LOG_WARN, "event=control_dropped reason=busy clients=%u", CONTROL_CLIENTS_MAX);
	close(fd);
}

static void *acceptor_main(void *arg)
{
	struct control *c = arg;

	for (;;) {
		struct pollfd p[2] = {{.fd = c->lfd, .events = POLLIN},
				      {.fd = c->stop_fd, .events = POLLIN}};

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_msg(LOG_ERROR, "event=control_poll error=\"%s\"", strerror(errno));
			return NULL;
		}
		if (p[1].revents)
			return NULL;
		if (p[0].revents)
			accept_one(c);
	}
}

/* ---- the socket file ---------------------------------------------------------------------- */

static const char *file_kind(mode_t mode)
{
	return S_ISREG(mode)   ? "a regular file"
	       : S_ISDIR(mode) ? "a directory"
	       : S_ISLNK(mode) ? "a symbolic link"
			       : "not a socket";
}

static int path_addr(const char *path, struct sockaddr_un *sa, char *why, size_t why_len)
{
	*sa = (struct sockaddr_un){.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa->sun_path)) {
		snprintf(why, why_len, "control.socket: path too long");
		return -ENAMETOOLONG;
	}
	memcpy(sa->sun_path, path, strlen(path) + 1);
	return 0;
}

/* 0: something accepts connections on path; -ECONNREFUSED: nothing does. */
static int socket_probe(const struct sockaddr_un *sa)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int rc;

	if (fd < 0)
		return -errno;
	rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0 ? 0 : -errno;
	close(fd);
	/* EAGAIN: a listener whose backlog is full is a listener. */
	return rc == -EAGAIN || rc == -EINPROGRESS ? 0 : rc;
}

int control_prepare(const char *path, char *why, size_t why_len)
{
	struct sockaddr_un sa;
	struct stat st;
	int rc = path_addr(path, &sa, why, why_len);

	if (rc != 0)
		return rc;
	if (lstat(path, &st) != 0) {
		if (errno == ENOENT)
			return 0;
		rc = -errno;
		snprintf(why, why_len, "control.socket: %s: %s", path, strerror(-rc));
		return rc;
	}
	/* Whatever else is there belongs to someone: never removed. */
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(why, why_len,
			 "control.socket: %s exists and is %s; refusing to replace it", path,
			 file_kind(st.st_mode));
		return -EEXIST;
	}
	rc = socket_probe(&sa);
	if (rc == 0) {
		snprintf(why, why_len, "control socket %s is in use by another process", path);
		return -EADDRINUSE;
	}
	if (rc != -ECONNREFUSED) {
		snprintf(why, why_len, "control.socket: %s: cannot tell whether it is in use: %s",
			 path, strerror(-rc));
		return rc;
	}
	/* A socket nothing answers on: left by a process that died (kill -9). */
	if (unlink(path) != 0 && errno != ENOENT) {
		rc = -errno;
		snprintf(why, why_len, "control.socket: %s: %s", path, strerror(-rc));
		return rc;
	}
	log_msg(LOG_INFO, "event=control_stale_removed path=%s", path);
	return 0;
}

/*
 * Bind path with mode 0600 from its first moment.  Linux creates a unix
 * socket's file with the mode of the socket's own inode (less the umask),
 * and fchmod() on the unbound socket sets that mode: so there is no window
 * with the umask's mode, no process-wide umask change (shards create spool
 * and Maildir files meanwhile), and no chmod() on a path that could have
 * been swapped for a symlink after bind.  bind() fails on any existing
 * path, so it never replaces what control_prepare() let stand.
 */
static int control_bind(struct control *c, char *why, size_t why_len)
{
	struct sockaddr_un sa;
	struct stat st;
	int fd, rc = path_addr(c->path, &sa, why, why_len);

	if (rc != 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || fchmod(fd, 0600) != 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		rc = -errno;
		snprintf(why, why_len,
			 rc == -EADDRINUSE ? "control socket %s: the path appeared while starting "
					     "(another process?): %s"
					   : "control.socket: %s: %s",
			 c->path, strerror(-rc));
		goto fail;
	}
	if (lstat(c->path, &st) != 0 || !S_ISSOCK(st.st_mode) || (st.st_mode & 0077) != 0) {
		rc = -EPERM;
		snprintf(why, why_len, "control.socket: %s: not created with mode 0600", c->path);
		unlink(c->path);
		goto fail;
	}
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	if (listen(fd, CONTROL_BACKLOG) != 0) {
		rc = -errno;
		snprintf(why, why_len, "control.socket: %s: listen: %s", c->path, strerror(-rc));
		unlink(c->path);
		goto fail;
	}
	c->lfd = fd;
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Remove the socket file only if it is still the one we made. */
static void control_unlink(const struct control *c)
{
	struct stat st;

	if (lstat(c->path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == c->dev &&
	    st.st_ino == c->ino)
		unlink(c->path);
}

int control_start(struct control **out, const struct rmx_config *cfg, const struct flt_rules *rules,
		  control_post_fn post, void *post_ctx, char *why, size_t why_len)
{
	struct control *c = calloc(1, sizeof(*c));
	int rc;

	if (c == NULL) {
		snprintf(why, why_len, "control: out of memory");
		return -ENOMEM;
	}
	*c = (struct control){
	    .cfg = cfg, .rules = rules, .post = post, .post_ctx = post_ctx, .lfd = -1};
	snprintf(c->path, sizeof(c->path), "%s", cfg->control.socket);
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->post_lock, NULL);
	for (size_t i = 0; i < CONTROL_CLIENTS_MAX; i++)
		c->clients[i] = (struct ctl_client){.ctl = c, .fd = -1};
	rc = control_bind(c, why, why_len);
	if (rc != 0)
		goto fail;
	c->stop_fd = eventfd(0, EFD_CLOEXEC);
	rc = c->stop_fd < 0 ? -errno : -pthread_create(&c->acceptor, NULL, acceptor_main, c);
	if (rc != 0) {
		snprintf(why, why_len, "control: %s", strerror(-rc));
		if (c->stop_fd >= 0)
			close(c->stop_fd);
		close(c->lfd);
		control_unlink(c);
		goto fail;
	}
	*out = c;
	return 0;
fail:
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->post_lock);
	free(c);
	return rc;
}

void control_stop(struct control *c)
{
	bool joined[CONTROL_CLIENTS_MAX];
	uint64_t one = 1;

	if (c == NULL)
		return;
	atomic_store(&c->stopping, true);
	if (write(c->stop_fd, &one, sizeof(one)) != sizeof(one))
		abort(); /* an eventfd write of 1 cannot fail short of a bug */
	pthread_join(c->acceptor, NULL);
	close(c->lfd);
	close(c->stop_fd);
	/* A client blocked on a reader that does not read wakes up now. */
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < CONTROL_CLIENTS_MAX; i++) {
		struct ctl_client *cl = &c->clients[i];

		joined[i] = cl->state != CTL_SLOT_FREE;
		if (cl->state == CTL_SLOT_BUSY && cl->fd >= 0)
			shutdown(cl->fd, SHUT_RDWR);
	}
	pthread_mutex_unlock(&c->lock);
	for (size_t i = 0; i < CONTROL_CLIENTS_MAX; i++)
		if (joined[i])
			pthread_join(c->clients[i].thread, NULL);
	control_unlink(c);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->post_lock);
	free(c);
}
