/*
 * deliver/oc_body — the message body from the spool segment to the next hop:
 * read into a window, sent from there by iovecs (dot-stuffed on the way for
 * a BDAT-received body), the final dot only once the stored bytes verify.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "deliver/oc_int.h"
#include "log/log.h"
#include "net/net.h"

static_assert(DLV_IOV_MAX + 2 <= NET_IOV_MAX, "a body send fits one net_send");
static const char dot_crlf[] = ".\r\n";
void oc_body_start(struct oconn *oc)
{
	const struct spool_env *e = &oc->job->m->env;

	oc->segfd = oc->job->segfd;
	if (oc->segfd < 0) {
		oc_fail(oc, "spool segment not open");
		return;
	}
	if (!oc->win && !(oc->win = malloc(DLV_WIN))) {
		oc_fail(oc, "out of memory");
		return;
	}
	oc_enter_state(oc, OC_BODY);
	oc->win_off = oc->win_len = 0;
	oc->pos = e->first_chunk_off;
	oc->chunk_left = 0;
	oc->wire_left = e->wire_len;
	oc->msg_left = e->msg_len;
	oc->crc = 0;
	oc->stuffed = (e->flags & SPOOL_ENV_STUFFED) != 0;
	oc->body_end = false;
	oc->prepend_due = e->prepend.len > 0;
	smtp_stuff_begin(&oc->stuff);
}

/* What one step of oc_pump did. */
enum pump_step {
	PUMP_MORE,   /* go on */
	PUMP_READ,   /* the window does not hold what comes next: read */
	PUMP_END,    /* the final dot is in iov[] */
	PUMP_FAILED, /* the connection was failed */
};
static bool win_has(const struct oconn *oc, uint64_t off, uint64_t n)
{
	return off >= oc->win_off && off + n <= oc->win_off + oc->win_len;
}

/* The current chunk's bytes in the window go into iov[]: as they are when
 * stored dot-stuffed, else stuffed on the way. */
static enum pump_step pump_chunk(struct oconn *oc)
{
	if (!win_has(oc, oc->pos, 1))
		return PUMP_READ;
	uint64_t avail = oc->win_off + oc->win_len - oc->pos;
	uint64_t k = avail < oc->chunk_left ? avail : oc->chunk_left;
	const char *p = oc->win + (oc->pos - oc->win_off);
	uint64_t take = k;

	if (oc->stuffed) {
		uint64_t give = k < oc->msg_left ? k : oc->msg_left;

		if (give)
			oc->iov[oc->niov++] = (struct iovec){(void *)p, give};
		oc->msg_left -= give;
	} else {
		size_t used;

		oc->niov += (uint32_t)smtp_stuff_iov(&oc->stuff, p, k, oc->iov + oc->niov,
						     DLV_IOV_MAX - oc->niov, &used);
		take = used;
		oc->msg_left -= used;
	}
	oc->crc = spool_crc32c(oc->crc, p, take);
	oc->chunk_left -= take;
	oc->wire_left -= take;
	oc->pos += take;
	if (oc->chunk_left == 0)
		oc->pos += oc->chunk_pad;
	return PUMP_MORE;
}

/* Every stored byte went: the final dot, only if they verify. */
static enum pump_step pump_end(struct oconn *oc)
{
	const struct qmsg *m = oc->job->m;

	if (oc->crc != m->env.msg_crc) {
		log_msg(LOG_ERROR, "event=spool_corrupt shard=%u id=%016llX",
			dlv_core(oc->d)->shard, (unsigned long long)m->id);
		oc_fail(oc, "stored message does not verify (CRC)");
		return PUMP_FAILED;
	}
	if (oc->stuffed)
		oc->iov[oc->niov++] = (struct iovec){(void *)dot_crlf, 3};
	else
		smtp_stuff_end(&oc->stuff, &oc->iov[oc->niov++]);
	oc->body_end = true;
	return PUMP_END;
}

/* The record at pos: the message's next chunk begins, or it is skipped. */
static enum pump_step pump_record(struct oconn *oc)
{
	const struct qmsg *m = oc->job->m;
	struct spool_rec_hdr h;

	if (!win_has(oc, oc->pos, sizeof(h)))
		return PUMP_READ;
	memcpy(&h, oc->win + (oc->pos - oc->win_off), sizeof(h));
	/* Damage: resynchronise at the next aligned offset.  Only a header
	 * made under the segment's key counts (record.h), so bytes a client
	 * sent are never taken for a chunk. */
	if (spool_rec_hdr_check(&h, &oc->job->t->segkey) != 0) {
		oc->pos += SPOOL_REC_ALIGN;
		return PUMP_MORE;
	}
	if (h.type != SPOOL_REC_CHUNK || h.msg_id != m->id) {
		oc->pos += spool_rec_size(h.len);
		return PUMP_MORE;
	}
	if (h.len > oc->wire_left) {
		oc_fail(oc, "stored message does not verify (length)");
		return PUMP_FAILED;
	}
	oc->chunk_left = h.len;
	oc->chunk_pad = (uint32_t)spool_rec_pad(h.len);
	oc->pos += sizeof(h);
	if (h.len == 0)
		oc->pos += oc->chunk_pad;
	return PUMP_MORE;
}

/* Turn what the window holds into iovecs and send them, or read the next
 * window.  The CHUNK records of the message are found by walking the
 * segment from its first chunk, skipping other messages' records. */
void oc_pump(struct oconn *oc)
{
	enum pump_step step = PUMP_MORE;

	if (net_sending(oc->nc) || oc->read_inflight || oc_gone(oc))
		return;
	oc->niov = 0;
	if (oc->prepend_due) {
		/* The header fields the filters added: whole lines of ASCII,
		 * none starting with a dot, so as they are in either form. */
		const struct spool_str *pre = &oc->job->m->env.prepend;

		oc->iov[oc->niov++] = (struct iovec){(void *)pre->ptr, pre->len};
		oc->prepend_due = false;
	}
	while (oc->niov < DLV_IOV_MAX && step == PUMP_MORE) {
		if (oc->chunk_left)
			step = pump_chunk(oc);
		else if (oc->wire_left == 0)
			step = pump_end(oc);
		else
			step = pump_record(oc);
	}
	if (step == PUMP_FAILED)
		return;
	if (oc->niov) {
		net_send(oc->nc, oc->iov, oc->niov);
		return;
	}
	if (step == PUMP_READ) {
		oc->win_off = oc->pos;
		oc->win_len = 0;
		oc->read_inflight = true;
		net_read_file(oc->nc, oc->segfd, oc->win, DLV_WIN, oc->pos);
	}
}
