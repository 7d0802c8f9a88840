/*
 * The outbox: what a consumed message's work must make durable before its
 * offset may move, and the producer that makes part of it durable.
 *
 * Jobs. A consumed message the service takes becomes a job (hb_outbox_track)
 * with one hold; every piece of work it causes holds it once more, and when
 * the last hold is released its offset is done in the offset tracker
 * (hb_offsets), so a committed position never passes unfinished work.
 *
 * Gates. A gate holds jobs until a chain of durable steps is finished; each
 * step hands the gate on as its token: a look-up in the delivery log
 * (hb_gate_lookup: answered() decides what comes next), a message for the
 * broker (an hb_pmsg_t: its acknowledgement adds its delivery-log row, or
 * ends the chain), the row's commit (the jobs are released). So the durable
 * order is always "broker ack, then delivery-log row, then release".
 *
 * The producer writes the delay tiers and the dead-letter topic. A message the
 * broker refuses is kept in the resend list and produced again every second
 * until it is acknowledged: a broker outage delays offsets, it never loses a
 * delivery. Delivery reports arrive through hb_outbox_poll and wake the loop
 * (wake_fd).
 *
 * Main loop thread only; the delivery log's own thread only returns tokens
 * (hb_dlog_take_flushed), taken here.
 */
#ifndef HB_OUTBOX_H
#define HB_OUTBOX_H

#include <librdkafka/rdkafka.h>

#include "hb_common.h"
#include "hb_config.h"
#include "hb_dlog.h"
#include "hb_metrics.h"
#include "hb_offsets.h"

typedef struct hb_outbox_s hb_outbox_t;
typedef struct hb_job_s hb_job_t;
typedef struct hb_pmsg_s hb_pmsg_t;

/* Work that must become durable before the jobs it holds are released. */
typedef struct hb_gate_s {
    hb_job_t **jobs;
    size_t jobs_cnt;
    int pending;
    /* a look-up in flight: called with the answer in state instead of
     * releasing; it releases the gate, passes it on or forgets it */
    void (*answered)(hb_outbox_t *ob, struct hb_gate_s *g);
    void *arg;
    void (*arg_free)(void *arg); /* at exit, when never answered */
    hb_dlog_state_t state;
    struct hb_gate_s *prev, *next; /* live gates, freed at exit if unfinished */
} hb_gate_t;

/* The producer (client id client_id, reports waking wake_fd); jobs are done
 * in offsets; broker errors count in kafka_errors. */
hb_outbox_t *hb_outbox_new(const hb_config_t *cfg, const char *client_id, int wake_fd,
                           hb_offsets_t *offsets, hb_metric_t *kafka_errors, char *errstr,
                           size_t errstr_size) HB_MUSTCHECK;
/* Purges the producer (unsent messages are lost: their sources are read
 * again), closes the delivery log, frees unfinished gates and jobs. */
void hb_outbox_free(hb_outbox_t *ob);

/* The delivery log the gates' rows go to (taken; once, when the database is
 * first reached). */
void hb_outbox_set_dlog(hb_outbox_t *ob, hb_dlog_t *dlog);
hb_dlog_t *hb_outbox_dlog(const hb_outbox_t *ob);

/* ----------------------------------------------------------------- jobs */

hb_job_t *hb_outbox_track(hb_outbox_t *ob, const rd_kafka_message_t *rkm); /* one hold */
void hb_job_hold(hb_job_t *j);
void hb_outbox_release(hb_outbox_t *ob, hb_job_t *j);
/* 1 when j's partition was revoked from this process: releasing j commits
 * nothing, and its message is consumed again by the partition's new owner. */
int hb_job_revoked(const hb_job_t *j);

/* ---------------------------------------------------------------- gates */

/* A gate holding each of jobs[0..n) once, waiting for one step. */
hb_gate_t *hb_gate_new(hb_outbox_t *ob, hb_job_t *const *jobs, size_t n);
/* One step is durable; the last one releases the jobs (or, after a look-up,
 * calls answered). */
void hb_gate_done(hb_outbox_t *ob, hb_gate_t *g);
/* The chain is finished now: its jobs are released. */
void hb_gate_release(hb_outbox_t *ob, hb_gate_t *g);
/* Frees a gate without releasing its jobs (a look-up's, which held none). */
void hb_gate_forget(hb_outbox_t *ob, hb_gate_t *g);
/* Asks the delivery log about delivery_id (first attempted at since_ms, 0:
 * unknown; hb_dlog_lookup); answered(ob, g) runs with g->state filled once
 * every row queued before is committed. */
void hb_gate_lookup(hb_outbox_t *ob, hb_gate_t *g, const char *delivery_id, int64_t since_ms,
                    void (*answered)(hb_outbox_t *ob, hb_gate_t *g), void *arg,
                    void (*arg_free)(void *arg));
/* The same for the tail of an ordered key (hb_dlog_lookup_tail). */
void hb_gate_lookup_tail(hb_outbox_t *ob, hb_gate_t *g, const char *subscription_id,
                         const char *key, void (*answered)(hb_outbox_t *ob, hb_gate_t *g),
                         void *arg, void (*arg_free)(void *arg));
/* The attempt's row is logged now; the gate is done when it is committed. */
void hb_gate_log(hb_outbox_t *ob, hb_gate_t *g, hb_dlog_row_t *row);

/* ------------------------------------------------------------ producing */

/* A message for topic (val copied), not yet sent; once the broker has it, row
 * (taken, may be NULL) is logged with gate as its token, or, without a row,
 * the gate's step is done. */
hb_pmsg_t *hb_pmsg_new(const char *topic, const char *key, const void *val, size_t len,
                       hb_gate_t *gate, hb_dlog_row_t *row);
void hb_pmsg_free(hb_pmsg_t *m);
/* Names the delivery m carries (a retry or a dead letter), for the log lines
 * about it (copied; NULL: none). */
void hb_pmsg_set_delivery(hb_pmsg_t *m, const char *delivery_id);
/* Calls taken(arg) when the broker has m (its row is logged after), and
 * free_arg(arg) (may be NULL) when m is freed, taken or not: unsent at
 * shutdown, taken() is never called. */
void hb_pmsg_on_taken(hb_pmsg_t *m, void (*taken)(void *arg), void *arg,
                      void (*free_arg)(void *arg));
/* Produces m (taken), at least once. */
void hb_outbox_send(hb_outbox_t *ob, hb_pmsg_t *m);
/* Produces an already-encoded message; the job (may be NULL) is held until
 * the broker acknowledges it. */
void hb_outbox_produce(hb_outbox_t *ob, const char *topic, const char *key, const void *val,
                       size_t len, hb_job_t *job);
/* Dead-letters rkm's bytes unchanged to topic, with its key and headers,
 * and the reason and where they came from in headers of ours after them;
 * the job is held until the broker has them. A copy refused as too large
 * (MSG_SIZE_TOO_LARGE) goes without its value, then without its key, then
 * without the original's headers, the reason saying so (with the size of
 * all three), instead of being refused for ever. */
void hb_outbox_poison(hb_outbox_t *ob, const char *topic, const rd_kafka_message_t *rkm,
                      hb_job_t *job, const char *reason);

/* --------------------------------------------------------------- loop */
/* Writes the delivery-log rows queued so far now and waits at most
 * max_wait_ms for them (not while the database is failing), then releases
 * the jobs they held: before a revocation's commit, what was answered is
 * committed, not delivered again by the partition's new owner. */
void hb_outbox_settle(hb_outbox_t *ob, long long max_wait_ms);

/* Delivery reports, resends that are due, committed log rows. */
void hb_outbox_poll(hb_outbox_t *ob);
/* Committed log rows only (before offsets are committed on a revoke). */
void hb_outbox_take_flushed(hb_outbox_t *ob);
/* Messages waiting to be produced again. */
int hb_outbox_resending(const hb_outbox_t *ob);
/* librdkafka's fatal error on the producer (e.g. the broker answered
 * OUT_OF_ORDER_SEQUENCE_NUMBER: it lost what it had acknowledged to the
 * idempotent producer): it produces nothing any more, ever. Its reason (said
 * once, at error, the first time it is seen), or NULL. */
const char *hb_outbox_fatal(hb_outbox_t *ob);

/* The producer of the delay tiers and dead letters (owned by the outbox). */
rd_kafka_t *hb_outbox_producer(hb_outbox_t *ob);
/* Delivery-log look-ups not yet answered. */
size_t hb_outbox_lookups(const hb_outbox_t *ob);

/* The topics the producer writes (the delay tiers, the dead-letter topic)
 * must exist: a missing one would hold every retry or dead letter for it, and
 * its source offset, with nothing but a warning every second (and none for
 * the first 30 s: librdkafka's topic.metadata.propagation.max.ms). A thread
 * asks the brokers for each topic's metadata through the producer (as a
 * produce would) at start, then every 30 s, every 2 s while one is missing,
 * and at once when the broker refuses a message for an unknown topic; one
 * unknown is asked again a second later before it counts as missing (a topic
 * just created may not be known to every broker yet).
 * Call once, from the loop thread; topics are copied. */
void hb_outbox_watch_topics(hb_outbox_t *ob, const char *const *topics, int n);
/* Tells the watch to end (a shutdown begins), without waiting: its thread
 * ends after the request it is waiting for (a second at most), before
 * hb_outbox_free joins it. */
void hb_outbox_watch_end(hb_outbox_t *ob);
/* Why the service is not ready as far as its produced topics go ("topic X
 * does not exist"; before the first answer "checking ..."), or NULL; in buf. */
const char *hb_outbox_unready(hb_outbox_t *ob, char *buf, size_t size);
/* Shutdown: waits up to 5 s each for the broker's acknowledgements and the
 * log's last rows, then releases what they finished. */
void hb_outbox_drain(hb_outbox_t *ob);

#endif
