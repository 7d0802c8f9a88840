/*
 * Subscription store: the services' view of PostgreSQL schema `hookbridge`,
 * kept off the delivery loop.
 *
 * Two connections, each owned by its own thread (a "lane"), as the delivery
 * log owns its own:
 *   the follower  LISTENs on the channels the SQL triggers notify:
 *     hookbridge_subscriptions  payload: subscription id (row or its event types changed)
 *     hookbridge_verify         payload: subscription id (hookbridge.verify() was called)
 *     hookbridge_preview        payload: preview id (hookbridge.preview() was called)
 *     hookbridge_seal           a plaintext secret waits in hookbridge.secret_inbox: it
 *                               is sealed (lib/hb_sealer.h) before anything is loaded,
 *                               so snapshots only ever come from sealed values; a full
 *                               load also moves values sealed under an older key to
 *                               the current one
 *                 and loads a fresh snapshot of each changed subscription by
 *                 id (the ones notified together 500 to a query, never a
 *                 reload);
 *   the requests  verification and preview claims and outcomes, pending ones,
 *                 replay claims, the failing-endpoint sweep, rate-limit
 *                 tokens and the delivery log's maintenance, in order, but
 *                 for the rate-limit token asks, which go first (a bulk
 *                 URL change's thousands of claims must not hold them).
 * What they produce waits in one queue for the loop thread, which
 * hb_store_fd() (a pipe) wakes; hb_store_process() runs the handlers and the
 * requests' callbacks there, in the order the lanes queued them. The loop
 * never waits for the database, except to connect in hb_store_new at
 * start-up (bounded by connect_timeout): even the first full load is the
 * follower's, so a database that takes its time (a lock held on the
 * subscriptions) never stalls the loop, whose /healthz would then fail.
 *
 * A change notified before an event was produced is applied before that
 * event is matched: while the follower holds notifications it has not queued
 * as changes (or its socket has bytes it has not read), hb_store_settled()
 * says so and the loop does not consume; for 10 s at most: a database that
 * stopped answering while the follower waits for it (a lock its load waits
 * for; each answered round of loads starts the 10 s again, and hands what it
 * loaded to the loop at once) then holds events no longer, and they are matched against the
 * subscriptions in memory, as while it is unreachable (said once at warn).
 *
 * When the follower's connection drops, it reconnects with backoff (1 s
 * doubling to 5 s), LISTENs again, loads everything and queues on_reload,
 * whose handler takes that load with hb_store_load_all() (notifications were
 * lost while disconnected). All SQL is parameterised. Errors never contain
 * the connection string (it may hold a password).
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
    /* A full load is there for hb_store_load_all: the first one, after
     * hb_store_new, or the reload after an outage. */
    void (*on_reload)(void *opaque);
    /* hookbridge.preview() asked for preview `id`. */
    void (*on_preview)(const char *id, void *opaque);
} hb_store_handlers_t;

/* Connects (blocking, bounded by connect_timeout in conninfo or 10 s),
 * LISTENs, then starts the lanes; the follower loads every subscription on
 * its own thread and announces it with on_reload (a first load that fails
 * is made again on a new connection, as after an outage). Fails with a
 * clear reason, e.g. "database: connection refused (host 127.0.0.1 port
 * 5432)" when PostgreSQL is unreachable. keyring (borrowed, outlives the
 * store) seals what hookbridge.secret_inbox holds and opens the sealed
 * signing secrets and auth values of the snapshots. verifies: the caller
 * sends verification challenges (the dispatcher), so the verification
 * claims and outcomes get their lanes; without it (the retrier) those lanes
 * are not started, and such a request, should one come, waits its turn on
 * the request lane. */
hb_store_t *hb_store_new(const char *conninfo, const hb_keyring_t *keyring, int verifies,
                         char *errstr, size_t errstr_size) HB_MUSTCHECK;
/* Stops the lanes (each finishes the statement it runs) and drops what
 * waits for the loop, without calling back. */
void hb_store_free(hb_store_t *st);
/* The same, waiting at most wait_ms (< 0: as long as it takes) for the
 * statements under way; past it, st is left to them (for a stop). */
void hb_store_free_within(hb_store_t *st, long long wait_ms);

/* Calls cb for every subscription that is not deregistered (deliverable or
 * not; the caller filters) of the last full load, the one on_reload
 * announces. cb takes ownership of each snapshot. -1,
 * with why, when that load failed or was taken already. Never waits. */
int hb_store_load_all(hb_store_t *st, void (*cb)(hb_sub_t *sub, void *opaque), void *opaque,
                      char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* The pipe that turns readable when something waits for hb_store_process. */
int hb_store_fd(hb_store_t *st);
/* The follower is connected. Any thread. */
int hb_store_connected(hb_store_t *st);
/* Why the follower's last attempt to connect again failed, into out (""
 * while connected, or before any failed): the reason alone, without the
 * back-off's "next attempt in N s" its log line has, which would be stale
 * by the time a reader of /readyz sees it. Any thread. */
void hb_store_down_why(hb_store_t *st, char *out, size_t outsz);
/* The follower is connected and the full load made on this connection has
 * been applied (hb_store_process, on_reload): changes made while it was
 * away are in it. 0 from a lost connection until then, while a
 * subscription that load skipped (a value not sealed yet) waits to be loaded
 * (as hb_store_settled), while the follower has waited 10 s or more for
 * the database (a change it was notified of may be missing), and while the
 * check of its idle connection has waited 3 s or more for its answer (the
 * database may have gone silent, and changes with it); the loop's thread. */
int hb_store_current(hb_store_t *st);
/* Why hb_store_current is 0, in words for a log line; NULL when it is 1. */
const char *hb_store_stale(hb_store_t *st);
/* 0 while a subscription change may be on its way (see above): the loop
 * should not take new events until it is applied, unless the follower has
 * waited 10 s for the database. The loop's thread. */
int hb_store_settled(hb_store_t *st);
/* A sync: asks the follower to send an empty query (at most one at a time,
 * 2 ms apart); its answer comes after every notification of a transaction
 * that committed before it was sent (the server sends a listener its
 * notifications before it reads the next query), and those are queued
 * before the sync is done. An event taken from Kafka before hb_store_sync
 * was published before that, so a subscription change committed before the
 * event was published is queued (and applied by hb_store_process) once
 * hb_store_synced has reached its ticket: then hb_store_settled, then
 * match. hb_store_next_sync is the ticket the next hb_store_sync returns
 * (for what is taken before it is asked). The loop's thread. */
unsigned long long hb_store_next_sync(hb_store_t *st);
unsigned long long hb_store_sync(hb_store_t *st);
/* The last ticket done; every ticket asked when none can be (the follower
 * disconnected: its reload comes when it is back, as hb_store_settled says),
 * when asked_ms (monotonic, when the oldest waiting one was asked) is 1 s
 * past, or when the follower's query or load has waited 1 s already (a
 * database that answers nothing): the events are then matched against the
 * subscriptions in memory. *answered: the last ticket the database
 * answered (below the one returned in those cases). The loop's thread. */
unsigned long long hb_store_synced(hb_store_t *st, int64_t asked_ms, unsigned long long *answered);

/* Runs the handlers and callbacks of what the lanes queued. -1 reports a lost
 * connection or a failed reconnect attempt (at most one per call and per
 * backoff step): worth a log line, never fatal; the store keeps trying and
 * calls on_reload once it is back. Loop thread. */
int hb_store_process(hb_store_t *st, const hb_store_handlers_t *h, void *opaque, char *errstr,
                     size_t errstr_size) HB_MUSTCHECK;

/* Requests, answered on the request lane; each callback runs once, on the
 * loop thread from hb_store_process, with err NULL or a one-line reason (the
 * database unreachable, a statement failed); what it is given is borrowed
 * unless said. A store freed first calls nothing back. */

/* Verification. claim: atomically take a pending request for `id` for
 * lease_ms (so only one replica runs the challenge; the request stays pending
 * until its outcome is recorded, and becomes claimable again when the lease
 * expires); sub is a snapshot (the callback's to unref) and `claim` names the
 * claim (HB_CLAIM_LEN, text) when it was claimed; both NULL when nothing was
 * claimable. err with a claim and no sub: claimed, but the subscription's row
 * makes no snapshot (err says why: a secret not sealed, or lost; not a
 * database error), so nothing can be challenged until the claim expires.
 * record: store the outcome made under `claim`, which ends the
 * request; ok=1 marks the subscription verified, ok=0 failed with `reason`
 * (e.g. "timeout", "wrong echo", "HTTP 404"). An outcome out of date is not
 * recorded (recorded=0): `url`, the URL that was challenged, is no longer the
 * subscription's, or the claim no longer holds (verify() asked again while
 * the challenge ran, or its lease ran out and another replica took it).
 * pending: the ids with a claimable request (pending, and no lease or an
 * expired one: for start-up, reconnects and the periodic look). -1 (nothing
 * queued) only for an id that is not one. */
#define HB_CLAIM_LEN 64
typedef void hb_store_claim_cb(const char *id, hb_sub_t *sub, const char *claim, const char *err,
                               void *opaque);
typedef void hb_store_recorded_cb(const char *id, int recorded, const char *err, void *opaque);
typedef void hb_store_ids_cb(char **ids, int cnt, const char *err, void *opaque);
int hb_store_claim_verification(hb_store_t *st, const char *id, long long lease_ms,
                                hb_store_claim_cb *cb, void *opaque, char *errstr,
                                size_t errstr_size) HB_MUSTCHECK;
/* ok 1 verified, 0 failed (record_verification); -1: not an outcome, the
 * challenge is asked again, reason being what it got (defer_verification:
 * shown in subscription_overview.verification_retrying). */
int hb_store_record_verification(hb_store_t *st, const char *id, const char *url, const char *claim,
                                 int ok, const char *reason, hb_store_recorded_cb *cb, void *opaque,
                                 char *errstr, size_t errstr_size) HB_MUSTCHECK;
/* Gives back a request claimed under `claim` whose challenge was not sent
 * (the HTTP engine did not take it now, or the subscription cannot be loaded
 * here): pending again, claimable by any dispatcher after_ms from now rather
 * than at its lease's end; why (no secret; NULL keeps the note) is shown in
 * verification_retrying meanwhile. Not an outcome (recorded=0 when the claim
 * no longer holds). */
int hb_store_release_verification(hb_store_t *st, const char *id, const char *claim,
                                  const char *why, long long after_ms, hb_store_recorded_cb *cb,
                                  void *opaque, char *errstr, size_t errstr_size) HB_MUSTCHECK;
void hb_store_pending_verifications(hb_store_t *st, hb_store_ids_cb *cb, void *opaque);

/* Previews (hookbridge.preview(), sql/70_previews.sql), by the preview's id,
 * as verifications: claim takes a pending preview for lease_ms; cb gets the
 * subscription's snapshot (the callback's to unref), the event type and the
 * claim when it was claimed, else NULL (another replica holds it, it was
 * sent, or cancelled: its subscription was deregistered); err with a claim
 * and no sub: claimed, but the subscription makes no snapshot. record:
 * stores what it got under `claim` (recorded=0 when the claim no longer
 * holds). pending: the ids of the claimable previews. */
typedef void hb_store_preview_cb(const char *id, hb_sub_t *sub, const char *event_type,
                                 const char *claim, const char *err, void *opaque);
typedef struct hb_preview_outcome_s {
    int http_status;      /* 0: no answer */
    const char *error;    /* NULL or "" for a 2xx */
    const char *response; /* the response snippet, or NULL */
    long long duration_ms;
    const char *content_type, *body; /* what was sent */
} hb_preview_outcome_t;
int hb_store_claim_preview(hb_store_t *st, const char *id, long long lease_ms,
                           hb_store_preview_cb *cb, void *opaque, char *errstr,
                           size_t errstr_size) HB_MUSTCHECK;
int hb_store_record_preview(hb_store_t *st, const char *id, const char *claim,
                            const hb_preview_outcome_t *o, hb_store_recorded_cb *cb, void *opaque,
                            char *errstr, size_t errstr_size) HB_MUSTCHECK;
/* Gives back a preview claimed under `claim` and not sent (the HTTP engine
 * did not take it now): pending again, claimable by any dispatcher after_ms
 * from now rather than at its lease's end; why (no secret) is kept in its
 * error while it waits (recorded=0 when the claim no longer holds). after_ms
 * < 0: claimable at once, and the other dispatchers are told so (NOTIFY
 * hookbridge_preview), for a dispatcher that stops: they take it within a
 * second, not at their next look. So for hb_store_release_verification. */
int hb_store_release_preview(hb_store_t *st, const char *id, const char *claim, const char *why,
                             long long after_ms, hb_store_recorded_cb *cb, void *opaque,
                             char *errstr, size_t errstr_size) HB_MUSTCHECK;
void hb_store_pending_previews(hb_store_t *st, hb_store_ids_cb *cb, void *opaque);

/* Draws up to wanted tokens from the rate-limit budget that every replica
 * shares (hookbridge.take_rate_tokens): cb gets granted (-1 with err when the
 * statement failed) and, when none was left, the ms until the next. -1
 * (nothing queued) for an id that is not one. */
typedef void hb_store_tokens_cb(const char *id, int granted, long long wait_ms, const char *err,
                                void *opaque);
int hb_store_take_rate_tokens(hb_store_t *st, const char *id, int wanted, hb_store_tokens_cb *cb,
                              void *opaque) HB_MUSTCHECK;

/* Requests not called back yet that a stopping loop waits for: all but the
 * verification claims. A claim at a stop would only take a lease for a
 * challenge not sent any more (a new one is not claimed then), and one can
 * wait as long as an operator's transaction holds its subscription's row:
 * the loop waited its whole HOOKBRIDGE_SHUTDOWN_TIMEOUT for it. Its statement
 * is cancelled when the store is freed (hb_store_free_within); its
 * subscription is verified by another replica, or after the restart. */
int hb_store_pending(hb_store_t *st);

/* For the retrier. */

/* A replay request taken up (hookbridge.claim_replays, leased for 5 minutes). */
typedef struct hb_replay_s {
    char *delivery_id, *subscription_id, *event_ids, *event_type, *content_type;
    char *body;
    size_t body_len;
    int attempts; /* attempts made so far */
    /* wall ms on the database's clock when hookbridge.replay() was called:
     * the replay's first attempt, whose UTC day is the delivery's log_day */
    int64_t requested_ms;
} hb_replay_t;

/* Takes up to max replay requests: cb gets an array of cnt. */
typedef void hb_store_replays_cb(const hb_replay_t *replays, int cnt, const char *err,
                                 void *opaque);
void hb_store_claim_replays(hb_store_t *st, int max, hb_store_replays_cb *cb, void *opaque);
void hb_store_replays_free(hb_replay_t *replays, int cnt);

/* Deactivates the subscriptions whose every attempt failed for after_ms
 * (hookbridge.deactivate_failing), each with a warning naming it and why;
 * cb gets how many. */
typedef void hb_store_count_cb(int count, const char *err, void *opaque);
void hb_store_deactivate_failing(hb_store_t *st, long long after_ms, hb_store_count_cb *cb,
                                 void *opaque);

/* Runs hookbridge.maintain_delivery_log() (partitions ahead, days past the
 * retention dropped), logging each thing it did at info; cb gets how many. */
void hb_store_maintain_delivery_log(hb_store_t *st, hb_store_count_cb *cb, void *opaque);

#endif
