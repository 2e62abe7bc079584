/*
 * ringmxctl — the control client.  Sends one command line to the control
 * socket and prints the answer; exit 0 on "OK", 1 on "ERR" (printed to
 * stderr), 2 on usage or connection errors.
 *
 * Output to a terminal shows control bytes as ^X (cat -v style): `queue
 * show` prints a message a stranger wrote, and an ESC in it would start
 * a sequence the operator's terminal acts on.  Pipes and files get the
 * bytes exactly as stored.
 *
 *   ringmxctl [-s SOCKET] queue list
 *   ringmxctl [-s SOCKET] queue show ID
 *   ringmxctl [-s SOCKET] filter explain [--listener NAME] [--ip ADDR] ...
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_DEFAULT_SOCKET "/run/ringmx/control.sock"
#define CTL_LINE_MAX	   512

static int usage(void)
{
	fprintf(stderr,
		"usage: ringmxctl [-s SOCKET] queue list\n"
		"       ringmxctl [-s SOCKET] queue show ID\n"
		"       ringmxctl [-s SOCKET] queue flush [ID]\n"
		"       ringmxctl [-s SOCKET] queue hold|release|delete|bounce ID\n"
		"       ringmxctl [-s SOCKET] filter explain [--listener NAME] [--ip ADDR]\n"
		"                 [--helo NAME] [--tls 1.2|1.3] [--auth-user USER]\n"
		"                 [--from ADDR] [--rcpt ADDR]...\n"
		"       ringmxctl [-s SOCKET] ping\n");
	return 2;
}

static int ctl_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "ringmxctl: socket path too long: %s\n", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		fprintf(stderr, "ringmxctl: %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* C0 controls other than TAB, LF and CR (CRLF lines), and DEL, as ^X. */
static void put_bytes(FILE *f, bool tty, const char *p, size_t n)
{
	if (!tty) {
		fwrite(p, 1, n, f);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];

		if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f) {
			fputc('^', f);
			fputc(c == 0x7f ? '?' : c + 0x40, f);
		} else {
			fputc(c, f);
		}
	}
}

/* Copy the answer to stdout; the first line decides the exit status. */
static int ctl_answer(int fd)
{
	bool tty_out = isatty(STDOUT_FILENO), tty_err = isatty(STDERR_FILENO);
	char buf[65536];
	size_t have = 0;
	ssize_t r;
	int status = -1;

	while ((r = read(fd, buf + have, sizeof(buf) - have)) > 0 || (r < 0 && errno == EINTR)) {
		if (r < 0)
			continue;
		have += (size_t)r;
		if (status < 0) {
			char *nl = memchr(buf, '\n', have);

			if (!nl && have < sizeof(buf))
				continue;
			if (have >= 3 && memcmp(buf, "OK\n", 3) == 0) {
				status = 0;
				memmove(buf, buf + 3, have - 3);
				have -= 3;
			} else {
				status = 1;
				put_bytes(stderr, tty_err, buf, have);
				have = 0;
				continue;
			}
		}
		if (status == 0)
			put_bytes(stdout, tty_out, buf, have);
		else
			put_bytes(stderr, tty_err, buf, have);
		have = 0;
	}
	if (status < 0) {
		fprintf(stderr, "ringmxctl: no answer from the server\n");
		return 2;
	}
	return status;
}

int main(int argc, char **argv)
{
	const char *sock = CTL_DEFAULT_SOCKET;
	char line[CTL_LINE_MAX];
	size_t n = 0;
	int i = 1, fd, rc;

	if (argc > 2 && strcmp(argv[1], "-s") == 0) {
		sock = argv[2];
		i = 3;
	}
	if (i >= argc)
		return usage();
	for (; i < argc; i++) {
		/* filter explain --message FILE: the server opens it, from its
		 * own working directory: send the path whole. */
		char abs[PATH_MAX];
		const char *arg = argv[i];

		if (i > 1 && strcmp(argv[i - 1], "--message") == 0 && arg[0] != '/' &&
		    realpath(arg, abs))
			arg = abs;
		int w = snprintf(line + n, sizeof(line) - n, "%s%s", n ? " " : "", arg);

		if (w < 0 || (size_t)w >= sizeof(line) - n - 1) {
			fprintf(stderr, "ringmxctl: the command is too long (at most %zu bytes)\n",
				sizeof(line) - 2);
			return 2;
		}
		n += (size_t)w;
	}
	line[n++] = '\n';
	fd = ctl_connect(sock);
	if (fd < 0)
		return 2;
	if (write(fd, line, n) != (ssize_t)n) {
		fprintf(stderr, "ringmxctl: write: %s\n", strerror(errno));
		close(fd);
		return 2;
	}
	shutdown(fd, SHUT_WR);
	rc = ctl_answer(fd);
	close(fd);
	return rc;
}
