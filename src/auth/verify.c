/* auth/verify — the password check on the helper pool; contract in users.h. */
#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "auth/users.h"
#include "hpool/hpool.h"

/* ---- the check on a helper thread --------------------------------------- */

/* What travels in the helper pool's slot: no pointer into the session, so
 * the session may go away while the check runs. */
struct users_verify_req {
	struct auth_users *users; /* a reference, dropped by the job */
	uint16_t user_len, pass_len;
	char user[AUTH_USER_MAX];
	char pass[AUTH_PASS_MAX];
};
static_assert(sizeof(struct users_verify_req) <= HPOOL_DATA_MAX,
	      "a password check fits the helper pool's inline data");

static int users_verify_job(void *data, bool cancelled)
{
	struct users_verify_req *r = data;

	assert(r->users != NULL);
	int rc = cancelled
		     ? -ECANCELED
		     : auth_users_verify(r->users, r->user, r->user_len, r->pass, r->pass_len);
	/* The pool zeroes its slot too; the password goes first anyway. */
	explicit_bzero(r->pass, sizeof(r->pass));
	auth_users_unref(r->users);
	r->users = NULL;
	return rc;
}

int auth_users_submit_verify(struct hpool *p, uint32_t shard, uint64_t cookie, struct auth_users *u,
			     const char *user, size_t user_len, const char *pass, size_t pass_len)
{
	struct users_verify_req r;

	assert(u != NULL && (user != NULL || user_len == 0) && (pass != NULL || pass_len == 0));
	if (user_len > AUTH_USER_MAX || pass_len > AUTH_PASS_MAX)
		return -EINVAL;
	r.users = auth_users_ref(u);
	r.user_len = (uint16_t)user_len;
	r.pass_len = (uint16_t)pass_len;
	if (user_len > 0)
		memcpy(r.user, user, user_len);
	if (pass_len > 0)
		memcpy(r.pass, pass, pass_len);
	/* Only the lengths in use are copied: the rest of r stays here. */
	int rc = hpool_submit_inline(p, shard, cookie, users_verify_job, &r,
				     offsetof(struct users_verify_req, pass) + pass_len);
	explicit_bzero(&r, sizeof(r));
	if (rc != 0)
		auth_users_unref(u);
	return rc;
}
