/*
 * The consuming service shared by the dispatcher and the retrier.
 *
 * Both programs are the same machine with a different message handler: a
 * Kafka consumer in a group, a subscription index that follows PostgreSQL,
 * an HTTP engine, a delivery log, a producer for the delay tiers and the
 * dead-letter topic, health and metrics, and one loop that drives them. This
 * module is that machine; dispatcher.c and retrier.c supply on_message.
 *
 * Work and offsets. Each consumed message that the handler takes becomes a
 * job (hb_worker_track). A job is held by every piece of work it caused and
 * its offset counts as done in the offset tracker when the last hold is
 * released, so a partition's committed position never passes unfinished
 * work and a crash redelivers instead of losing.
 *
 * Deliveries. The handler builds an hb_delivery_t (subscription, delivery id,
 * rendered body, the jobs it holds) and calls hb_worker_deliver, which signs
 * and sends it and routes the outcome, the same way in both programs:
 *   2xx                -> logged; jobs released when the row is committed.
 *   retryable failure  -> a DeliveryRetry on the delay tier of the next attempt
 *                         (hb_retry.h); once the broker acks it, the 'retry'
 *                         row is logged; jobs released when it is committed.
 *   attempts used up,
 *   or a final failure -> the delivery log is asked first: a delivery already
 *                         final, or whose attempt is already logged (a
 *                         duplicate after a restart), is not dead-lettered
 *                         again. Else a DeliveryRetry on the dead-letter
 *                         topic, once acked the failure (with its body, for
 *                         replay) in the log; jobs released when committed.
 *   not attempted      -> hb_worker_skip: dropped (subscription inactive or
 *                         gone) or failed (payload could not be rendered).
 * So the durable writes are ordered: "the log shows attempt N with outcome X"
 * implies that what X produced on Kafka is durable, and a committed offset
 * implies its outcome is in the log. A message the broker refused is produced
 * again every second until it is acknowledged: a broker outage delays
 * offsets, it never loses a delivery.
 *
 * Endpoint isolation. A slow or dead endpoint costs its own deliveries time
 * and nobody else anything; three mechanisms, all keyed by endpoint host
 * (scheme://host:port, the unit hb_http queues by):
 *   - bounded queues (hb_http.h): a delivery whose host already has
 *     max_host_queue requests waiting, that waited max_queue_wait for a
 *     connection, or whose host is known slow, is not sent; it is routed
 *     "not made": to the first delay tier (a first attempt), or back to the
 *     tier it came from (a retry), its attempt not counted. Durable in
 *     Kafka, so its offset moves on.
 *   - the circuit breaker (circuit_failures > 0): after that many
 *     consecutive failed attempts to one host, requests waiting for it are
 *     taken out of the queue and its deliveries are not attempted for
 *     circuit_cooldown; then one attempt probes it, and a success closes
 *     the circuit (logged). The dispatcher's skipped deliveries wait in the
 *     first tier unattempted; the retrier counts each as a failed attempt,
 *     so a dead endpoint's schedule still ends. State is per process.
 *   - consumption follows the healthy: Kafka is polled only while the
 *     requests waiting for hosts that make progress (hb_http_backlog) are
 *     fewer than max_in_flight; a hung host's queue does not count.
 * Pausing every partition (max_pending_events unfinished messages) remains
 * as the last resort: logged at warn with the reason, in the metric
 * hookbridge_consumption_paused and in /readyz's text.
 *
 * Deferral (the retrier): hb_worker_defer pauses a partition and rewinds it
 * to a message that is not yet due, and resumes it when it is. Nothing is
 * held in memory meanwhile; the committed position stays at that message.
 *
 * Main loop thread only.
 */
#ifndef HB_WORKER_H
#define HB_WORKER_H

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
    /* Every loop pass; returns the longest the loop may sleep, in ms. */
    long long (*on_pass)(hb_worker_t *w, void *opaque);
    /* hookbridge.verify(id) was called (NULL: ignored). */
    void (*on_verify)(hb_worker_t *w, const char *id, void *opaque);
    /* The index was (re)loaded from the database. */
    void (*on_index_loaded)(hb_worker_t *w, void *opaque);
    /* Shutdown began: stop starting work, finish what can be (NULL: none). */
    void (*on_stop)(hb_worker_t *w, void *opaque);
} hb_worker_hooks_t;

typedef struct hb_worker_spec_s {
    const char *name;          /* "dispatcher": client id hookbridge-dispatcher, default group */
    const char *schema;        /* reader schema of the consumed messages */
    const char *const *topics; /* copied; NULL: every delay tier of the schedule */
    int topics_cnt;
    const hb_worker_hooks_t *hooks;
    void *opaque;
    /* An open circuit counts a skipped attempt as failed (the retrier), rather
     * than handing the delivery to the first tier unattempted (the dispatcher). */
    int circuit_counts_attempts;
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

/* Produces an already-encoded message with the at-least-once rules above;
 * the job (may be NULL) is held until the broker acknowledges it. */
void hb_worker_produce(hb_worker_t *w, const char *topic, const char *key, const void *val,
                       size_t len, hb_job_t *job);

/* ----------------------------------------------------------- deliveries */

/* Renders events[0..n) for sub and sends the payload (hb_delivery_render). */
void hb_worker_render(hb_worker_t *w, hb_sub_t *sub, json_t *const *events, size_t n,
                      const char *id, const char *event_ids, hb_job_t *const *jobs);

/* Sends (or, with an open circuit, hands straight to the first delay tier)
 * and routes the outcome; takes ownership of dl. */
void hb_worker_deliver(hb_worker_t *w, hb_delivery_t *dl);

/* Records a delivery that is not attempted: HB_OUTCOME_DROPPED (logged), or
 * HB_OUTCOME_FAILED (logged and dead-lettered); takes ownership of dl. */
void hb_worker_skip(hb_worker_t *w, hb_delivery_t *dl, hb_outcome_t outcome, const char *reason);

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

/* Deliveries whose HTTP request is in flight. */
size_t hb_worker_in_flight(const hb_worker_t *w);

#endif
