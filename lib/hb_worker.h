/*
 * The consuming service shared by the dispatcher and the retrier: the loop
 * that turns its parts.
 *
 * Both programs are the same machine with a different message handler;
 * dispatcher.c and retrier.c supply the hooks (on_message, on_pass, ...).
 * The parts, each in its own module:
 *   hb_consumer   group membership, rebalance, offsets, defer/resume, the
 *                 last-resort pause, lag, missing topics;
 *   hb_delivery   one delivery's state machine, render -> sign -> send ->
 *                 classify -> route, and the circuit breaker;
 *   hb_outbox     jobs and durability gates ("broker ack, then delivery-log
 *                 row, then release"), the producer and its resend list;
 *   hb_index/hb_store  the subscription index following PostgreSQL
 *                 (LISTEN/NOTIFY), applied here;
 *   hb_http, hb_httpd, hb_dlog, hb_decoder: the engines they drive.
 *
 * One pass of the loop (hb_worker_run): health beat; subscription changes
 * (applied first, so a NOTIFY committed before an event was produced is
 * applied before that event is matched); poll Kafka and hand each decoded
 * message to on_message (which tracks it as a job and adds transfers); the
 * producer's reports, resends and committed log rows (hb_outbox_poll); store
 * offsets and the last-resort pause; resume deferred partitions; on_pass; lag
 * and readiness; then curl_multi_poll on the HTTP engine, woken also by
 * Kafka's queues, signals and LISTEN/NOTIFY, where finished requests
 * complete their deliveries.
 *
 * Endpoint isolation. A slow or dead endpoint costs its own deliveries time
 * and nobody else anything; three mechanisms, all keyed by endpoint host
 * (scheme://host:port, the unit hb_http queues by):
 *   - bounded queues (hb_http.h): a delivery whose host already has
 *     max_host_queue requests waiting, that waited max_queue_wait for a
 *     connection, or whose host is known slow, is not sent but routed "not
 *     made" (hb_delivery.h), durable in Kafka, so its offset moves on;
 *   - the circuit breaker (hb_delivery.h);
 *   - consumption follows the healthy: Kafka is polled, message by message,
 *     only while the requests waiting for hosts that answer at a good pace
 *     (hb_http_backlog) plus the deliveries waiting for their delivery-log
 *     look-up are fewer than max_in_flight; a hung or slow host's queue does
 *     not count (its bounds divert instead).
 * Pausing every partition (max_pending_events unfinished messages) remains
 * as the last resort (hb_consumer.h).
 *
 * Readiness (/readyz): not ready while shutting down, a subscribed topic is
 * missing, the brokers do not answer, the database is not connected, the
 * index is not loaded, no assignment came yet, or a writer schema is
 * unavailable; ready but saying so while consumption is paused.
 *
 * Revocation (hb_consumer): what is finished is committed, the partitions
 * forgotten, then every delivery of theirs not handed to curl yet is
 * abandoned (hb_deliveries_withdraw, on_revoke; hb_delivery.h): the new owner
 * consumes and delivers it. Requests running finish and are recorded.
 *
 * Shutdown: stop consuming, on_stop, drain what is in flight for at most
 * shutdown_timeout, then give back what the service claimed in the database
 * and did not finish (on_deadline), abandon the rest (consumed again), flush
 * the producer and the delivery log, commit, leave the group.
 *
 * Main loop thread only.
 */
#ifndef HB_WORKER_H
#define HB_WORKER_H

/* At the drain's deadline, how long the store is given to take the give-backs
 * of on_deadline. */
#define HB_WORKER_HAND_OVER_MS 1000

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "hb_common.h"
#include "hb_config.h"
#include "hb_deliver.h"
#include "hb_delivery.h"
#include "hb_dlog.h"
#include "hb_http.h"
#include "hb_index.h"
#include "hb_metrics.h"
#include "hb_outbox.h"
#include "hb_retry.h"
#include "hb_store.h"
#include "hb_sub.h"

typedef struct hb_worker_s hb_worker_t;

typedef struct hb_worker_hooks_s {
    /* A decoded message (msg is borrowed). Either track it (and release the
     * job when its work is durable) or defer it. Poison messages never reach
     * the handler: the worker dead-letters them. */
    void (*on_message)(hb_worker_t *w, const rd_kafka_message_t *rkm, json_t *msg, void *opaque);
    /* Instead of on_message, when set: the message decoded as an event
     * (hb_decoder_decode_event: its JSON text, no jansson value; borrowed,
     * take a reference to keep it). */
    void (*on_event)(hb_worker_t *w, const rd_kafka_message_t *rkm, hb_event_t *ev, void *opaque);
    /* Every loop pass; returns the longest the loop may sleep, in ms. */
    long long (*on_pass)(hb_worker_t *w, void *opaque);
    /* hookbridge.verify(id) was called (NULL: ignored). */
    void (*on_verify)(hb_worker_t *w, const char *id, void *opaque);
    /* hookbridge.preview() asked for preview `id` (NULL: ignored). */
    void (*on_preview)(hb_worker_t *w, const char *id, void *opaque);
    /* The index was (re)loaded from the database. */
    void (*on_index_loaded)(hb_worker_t *w, void *opaque);
    /* Shutdown began: stop starting work, finish what can be (NULL: none). */
    void (*on_stop)(hb_worker_t *w, void *opaque);
    /* The drain's deadline passed with busy work left (NULL: nothing to
     * do): give back to the other replicas, in the database, what is
     * claimed there and will not be finished here; the worker then waits
     * at most HB_WORKER_HAND_OVER_MS for the store to take it. */
    void (*on_deadline)(hb_worker_t *w, void *opaque);
    /* Work of the service's own that the drain also waits for (e.g. the
     * dispatcher's verification challenges): how much is running (NULL: none). */
    size_t (*busy)(hb_worker_t *w, void *opaque);
    /* 1 while the service still holds work of a message it took that it
     * has not started (the dispatcher's fan-out waiting for the payload
     * budget): no message is taken meanwhile (NULL: never). */
    int (*holding)(hb_worker_t *w, void *opaque);
    /* Partitions were revoked (inside the consumer poll): abandon with
     * hb_worker_abandon what the service holds for them and has not started
     * (hb_delivery_revoked, hb_job_revoked), without routing anything;
     * returns how many (NULL: nothing held). */
    size_t (*on_revoke)(hb_worker_t *w, void *opaque);
} hb_worker_hooks_t;

typedef struct hb_worker_spec_s {
    const char *name;          /* "dispatcher": client id hookbridge-dispatcher, default group */
    const char *schema;        /* reader schema of the consumed messages */
    const char *const *topics; /* copied; names, or librdkafka patterns ("^...") */
    int topics_cnt;
    const hb_worker_hooks_t *hooks;
    void *opaque;
    /* An open circuit counts a skipped attempt as failed (the retrier), rather
     * than handing the delivery to the first tier unattempted (the dispatcher). */
    int circuit_counts_attempts;
    /* Sends verification challenges (the dispatcher): the store starts the
     * lanes for their claims and outcomes. */
    int verifies;
    /* Matches the events taken only once the subscription store has synced
     * with PostgreSQL after they were taken (hb_store_sync; the dispatcher):
     * a change committed before an event was published applies to it. */
    int syncs;
} hb_worker_spec_t;

hb_worker_t *hb_worker_new(const hb_config_t *cfg, const hb_worker_spec_t *spec, char *errstr,
                           size_t errstr_size) HB_MUSTCHECK;
/* Runs until hb_stop_requested, then drains, commits and leaves the group.
 * 0 on a clean stop, -1 on a fatal error (logged). */
int hb_worker_run(hb_worker_t *w);
void hb_worker_free(hb_worker_t *w);

const hb_config_t *hb_worker_config(const hb_worker_t *w);
const hb_schedule_t *hb_worker_schedule(const hb_worker_t *w);
hb_index_t *hb_worker_index(hb_worker_t *w);
hb_store_t *hb_worker_store(hb_worker_t *w); /* NULL while the database is away */
/* The subscription index has every change committed before the store's
 * current connection (hb_store_current): 0 from a lost connection until its
 * reload is applied, while the index may miss changes made meanwhile. */
int hb_worker_index_current(hb_worker_t *w);
/* Why it is 0 (hb_store_stale), for a log line; NULL when it is 1. */
const char *hb_worker_index_stale(hb_worker_t *w);
hb_http_t *hb_worker_http(hb_worker_t *w);

/* Shutdown passed its deadline: completions must record nothing. */
int hb_worker_stopping(const hb_worker_t *w);
/* Counts a PostgreSQL error in hookbridge_database_errors_total. */
void hb_worker_db_error(hb_worker_t *w);

/* ---------------------------------------------------------------- jobs */

hb_job_t *hb_worker_track(hb_worker_t *w, const rd_kafka_message_t *rkm); /* one hold */
void hb_job_release(hb_worker_t *w, hb_job_t *j);

/* Dead-letters rkm's bytes unchanged with the reason (a message the handler
 * cannot use); consumption continues. */
void hb_worker_poison(hb_worker_t *w, const rd_kafka_message_t *rkm, const char *reason);

/* Pause rkm's partition, rewind it to rkm, resume it at due_ms (wall clock). */
void hb_worker_defer(hb_worker_t *w, const rd_kafka_message_t *rkm, int64_t due_ms);

/* Encodes m as a DeliveryRetry (the one encoder retries go through,
 * hb_delivery.c) and produces it to topic, keyed by its subscription id; -1
 * when it cannot be encoded (nothing produced). */
int hb_worker_produce_retry(hb_worker_t *w, const char *topic, const hb_retry_msg_t *m,
                            char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Produces an already-encoded message, at least once (hb_outbox.h);
 * the job (may be NULL) is held until the broker acknowledges it. */
void hb_worker_produce(hb_worker_t *w, const char *topic, const char *key, const void *val,
                       size_t len, hb_job_t *job);

/* ----------------------------------------------------------- deliveries */

/* Renders events[0..n) for sub and sends the payload (hb_delivery_render). */
void hb_worker_render(hb_worker_t *w, hb_sub_t *sub, hb_event_t *const *events, size_t n,
                      const char *id, const char *event_ids, hb_job_t *const *jobs);

/* hb_deliveries_shed: drops the events of revoked partitions from events
 * collected for one payload; returns how many are kept. */
size_t hb_worker_shed(hb_worker_t *w, hb_event_t **events, hb_job_t **jobs, size_t n);

/* hb_delivery_make: rendered, not sent (NULL: failed, routed already). */
hb_delivery_t *hb_worker_make(hb_worker_t *w, hb_sub_t *sub, hb_event_t *const *events, size_t n,
                              const char *id, const char *event_ids, hb_job_t *const *jobs);

/* hb_delivery_wait: parked unattempted behind delivery after_id; takes dl. */
void hb_worker_wait(hb_worker_t *w, hb_delivery_t *dl, const char *after_id, int quiet);

/* Sends (or, with an open circuit, hands straight to the first delay tier)
 * and routes the outcome; takes ownership of dl (hb_delivery_send). */
void hb_worker_deliver(hb_worker_t *w, hb_delivery_t *dl);

/* Records a delivery that is not attempted: HB_OUTCOME_DROPPED (logged), or
 * HB_OUTCOME_FAILED (logged and dead-lettered); takes ownership of dl. */
void hb_worker_skip(hb_worker_t *w, hb_delivery_t *dl, hb_outcome_t outcome, const char *reason);

/* ABANDONED: nothing recorded, the jobs of revoked partitions released
 * (hb_delivery_abandon); takes dl. */
void hb_worker_abandon(hb_worker_t *w, hb_delivery_t *dl);

/* Releases dl's jobs without attempting or logging anything (a message that
 * is stale: hb_worker_lookup); takes dl. */
void hb_worker_discard(hb_worker_t *w, hb_delivery_t *dl);

/* Asks the delivery log what it has for dl->id, behind every row this process
 * queued before (hb_dlog_lookup, off the loop thread), and then calls
 * then(w, dl, state) on the loop thread, which takes dl. dl's jobs stay held
 * meanwhile; while the database is down the answer waits. Once shutdown has
 * begun, then is not called: dl is freed and its jobs stay unfinished (the
 * message is consumed again). */
typedef void (*hb_worker_lookup_cb)(hb_worker_t *w, hb_delivery_t *dl, const hb_dlog_state_t *st,
                                    void *opaque);
void hb_worker_lookup(hb_worker_t *w, hb_delivery_t *dl, hb_worker_lookup_cb then, void *opaque);
/* The same, asking about another delivery (id: an ordered delivery's
 * predecessor). */
void hb_worker_lookup_id(hb_worker_t *w, hb_delivery_t *dl, const char *id,
                         hb_worker_lookup_cb then, void *opaque);

/* Questions to the delivery log without a delivery (ordered delivery's
 * chains): what it has for delivery_id, or which delivery is the newest of
 * the ordered key (subscription_id, key) and its status. then(w, state,
 * opaque) runs on the loop thread, after the rows this process queued before
 * are committed; once shutdown has begun, or when the worker is freed first,
 * opaque_free(opaque) (may be NULL) runs instead. */
typedef void (*hb_worker_answer_cb)(hb_worker_t *w, const hb_dlog_state_t *st, void *opaque);
void hb_worker_ask(hb_worker_t *w, const char *delivery_id, hb_worker_answer_cb then, void *opaque,
                   void (*opaque_free)(void *opaque));
void hb_worker_ask_tail(hb_worker_t *w, const char *subscription_id, const char *key,
                        hb_worker_answer_cb then, void *opaque, void (*opaque_free)(void *opaque));

/* Times partitions were revoked from this process: what it knows about the
 * keys of a revoked partition may be stale from then on. */
unsigned hb_worker_revocations(const hb_worker_t *w);
/* The counter of events a delivery that waited no longer took (the
 * dispatcher's hookbridge_events_filtered_total; hb_deliveries_set_filtered). */
void hb_worker_set_filtered(hb_worker_t *w, hb_metric_t *m);

/* Deliveries whose HTTP request is in flight. */
size_t hb_worker_in_flight(const hb_worker_t *w);

/* Consumption of every partition is paused (the last resort:
 * max_pending_events or max_pending_bytes reached). */
int hb_worker_consumption_paused(const hb_worker_t *w);

#endif
