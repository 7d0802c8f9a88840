/*
 * Subscription snapshots read from PostgreSQL (lib/hb_snapshot.c). Runs on
 * the caller's connection and thread; libpq types stay out of this header.
 */
#ifndef HB_SNAPSHOT_H
#define HB_SNAPSHOT_H

#include "hb_common.h"
#include "hb_seal.h"
#include "hb_sub.h"

struct pg_conn;

/* Every subscription that is not deregistered (deliverable or not): *subs is
 * an array of *cnt snapshots (refcnt 1 each; the caller unrefs them and frees
 * the array). A row that cannot be read is skipped with a warning naming its
 * subscription; one skipped only for a value not sealed yet is also handed
 * to unsealed (when not NULL), to be loaded again once it is. keyring opens the sealed values
 * (NULL: none opens). -1 when the query fails (a lost connection shows in PQstatus). */
int hb_snapshot_load_all(struct pg_conn *conn, const hb_keyring_t *keyring, hb_sub_t ***subs,
                         size_t *cnt, void (*unsealed)(const char *id, void *arg), void *arg,
                         char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* One subscription by id; *out = NULL when it does not exist or is
 * deregistered. -1 when its row cannot be read, HB_SNAPSHOT_UNSEALED when
 * the only reason is a value not sealed yet, -2 when the query fails (why). */
#define HB_SNAPSHOT_UNSEALED (-3)
int hb_snapshot_load_one(struct pg_conn *conn, const hb_keyring_t *keyring, const char *id,
                         hb_sub_t **out, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* The subscriptions ids[0..n) (distinct) in one statement, each as
 * hb_snapshot_load_one loads it: out[i] (NULL when it does not exist, is
 * deregistered, or its row cannot be read) and rc[i] (0, -1 or
 * HB_SNAPSHOT_UNSEALED, with why[i] the reason, the caller's to free; else
 * NULL). 0, or -1 for an id that is not one, -2 when the query fails (a bulk
 * change costs one round trip per n subscriptions, not one each). */
int hb_snapshot_load_many(struct pg_conn *conn, const hb_keyring_t *keyring, const char *const *ids,
                          size_t n, hb_sub_t **out, int *rc, char **why, char *errstr,
                          size_t errstr_size) HB_MUSTCHECK;

/* s is a subscription id (a UUID in its text form). */
int hb_snapshot_is_id(const char *s);

#endif
