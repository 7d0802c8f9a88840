/*
 * Subscription store: the services' view of PostgreSQL schema `hookbridge`.
 *
 * One libpq connection, owned by the main loop thread. It LISTENs on the
 * channels the SQL triggers notify:
 *   hookbridge_subscriptions  payload: subscription id (row or its event types changed)
 *   hookbridge_verify         payload: subscription id (hookbridge.verify() was called)
 *   hookbridge_seal           a plaintext secret waits in hookbridge.secret_inbox: the
 *                             store seals it (lib/hb_sealer.h) before it
 *                             loads anything, so snapshots only ever come from sealed
 *                             values; at load_all it also moves values sealed under an
 *                             older key to the current one
 * hb_store_process() is called when hb_store_fd() is readable (and once per
 * loop pass anyway); it reads notifications and calls the handlers with fresh
 * snapshots loaded by id: one changed row costs one query, never a reload.
 *
 * When the connection drops, the store reconnects with backoff on later
 * hb_store_process() calls; after a reconnect it calls on_reload so the caller
 * rebuilds its index from hb_store_load_all() (notifications were lost while
 * disconnected). All SQL is parameterised. Errors never contain the
 * connection string (it may hold a password).
 */
#ifndef HB_STORE_H
#define HB_STORE_H

#include "hb_common.h"
#include "hb_seal.h"
#include "hb_sub.h"

typedef struct hb_store_s hb_store_t;

typedef struct hb_store_handlers_s {
    /* A subscription changed. sub is a fresh snapshot (refcnt 1, the handler
     * takes ownership), or NULL with `id` when it was deregistered/deleted. */
    void (*on_change)(const char *id, hb_sub_t *sub, void *opaque);
    /* hookbridge.verify(id) was called (or a request was pending at start). */
    void (*on_verify)(const char *id, void *opaque);
    /* Reconnected after an outage: reload everything. */
    void (*on_reload)(void *opaque);
} hb_store_handlers_t;

/* Connects (blocking, bounded by connect_timeout in conninfo or 10 s) and
 * LISTENs. Fails with a clear reason, e.g. "database: connection refused
 * (host 127.0.0.1 port 5432)" when PostgreSQL is unreachable. keyring
 * (borrowed, outlives the store) seals what hookbridge.secret_inbox holds and
 * opens the sealed signing secrets and auth values of the snapshots. */
hb_store_t *hb_store_new(const char *conninfo, const hb_keyring_t *keyring, char *errstr,
                         size_t errstr_size) HB_MUSTCHECK;
void hb_store_free(hb_store_t *st);

/* Calls cb for every subscription that is not deregistered (deliverable or
 * not; the caller filters). cb takes ownership of each snapshot. */
int hb_store_load_all(hb_store_t *st, void (*cb)(hb_sub_t *sub, void *opaque), void *opaque,
                      char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Loads one subscription by id; *out = NULL when it does not exist or is
 * deregistered. */
int hb_store_load_one(hb_store_t *st, const char *id, hb_sub_t **out, char *errstr,
                      size_t errstr_size) HB_MUSTCHECK;

/* Socket to wait on (-1 while disconnected). */
int hb_store_fd(hb_store_t *st);
int hb_store_connected(hb_store_t *st);

/* Reads pending notifications and dispatches them; reconnects when due.
 * -1 reports a lost connection or a failed reconnect attempt (at most one per
 * backoff step, 1 s doubling to 30 s): worth a log line, never fatal; the
 * store keeps trying and calls on_reload once it is back. */
int hb_store_process(hb_store_t *st, const hb_store_handlers_t *h, void *opaque, char *errstr,
                     size_t errstr_size) HB_MUSTCHECK;

/* Verification. claim: atomically take a pending request for `id` (so only one
 * replica runs the challenge); returns 1 claimed (with a snapshot in *out,
 * caller unrefs), 0 nothing pending. record: store the outcome; ok=1 marks the
 * subscription verified, ok=0 failed with `reason` (e.g. "timeout",
 * "wrong echo", "HTTP 404"); `url` is the URL that was challenged: an outcome
 * for a URL the subscription no longer has is ignored. */
int hb_store_claim_verification(hb_store_t *st, const char *id, hb_sub_t **out, char *errstr,
                                size_t errstr_size) HB_MUSTCHECK;
int hb_store_record_verification(hb_store_t *st, const char *id, const char *url, int ok,
                                 const char *reason, char *errstr, size_t errstr_size) HB_MUSTCHECK;
/* Ids with a pending verification request (for start-up and reconnects).
 * *ids is an array of *cnt malloc'd strings; caller frees each and the array. */
int hb_store_pending_verifications(hb_store_t *st, char ***ids, int *cnt, char *errstr,
                                   size_t errstr_size) HB_MUSTCHECK;

/* For the retrier. */

/* A replay request taken up (hookbridge.claim_replays, leased for 5 minutes). */
typedef struct hb_replay_s {
    char *delivery_id, *subscription_id, *event_ids, *event_type, *content_type;
    char *body;
    size_t body_len;
    int attempts;       /* attempts made so far */
    int64_t claimed_ms; /* wall ms on the database's clock when it was taken up */
} hb_replay_t;

/* Takes up to max replay requests: *out is an array of *cnt (free with
 * hb_store_replays_free). */
int hb_store_claim_replays(hb_store_t *st, int max, hb_replay_t **out, int *cnt, char *errstr,
                           size_t errstr_size) HB_MUSTCHECK;
void hb_store_replays_free(hb_replay_t *replays, int cnt);

/* Deactivates the subscriptions whose every attempt failed for after_ms
 * (hookbridge.deactivate_failing), each with a warning naming it and why;
 * *count is how many. */
int hb_store_deactivate_failing(hb_store_t *st, long long after_ms, int *count, char *errstr,
                                size_t errstr_size) HB_MUSTCHECK;

#endif
