/*
 * Delivery log writer: records every attempt in PostgreSQL off the hot path.
 *
 * The main loop hands attempts to hb_dlog_add(), which copies them into a
 * bounded queue and returns at once. A writer thread with its own connection
 * flushes the queue every flush_ms (or sooner when it fills) in one
 * transaction: it upserts hookbridge.deliveries (one row per delivery) and
 * inserts hookbridge.delivery_attempts (one row per attempt).
 *
 * Attempts added with a non-NULL token are ones whose durability gates a Kafka
 * offset (a finally failed delivery counts as finished only once logged): after
 * their transaction commits, the tokens come back through hb_dlog_take_flushed()
 * on the main loop thread. While the database is down the writer retries with
 * backoff; tokened rows are never dropped; when the queue exceeds its bound,
 * untokened rows (successful attempts) are dropped and counted, so a database
 * outage never stops deliveries.
 */
#ifndef HB_DLOG_H
#define HB_DLOG_H

#include "hb_common.h"

typedef enum {
    HB_OUTCOME_DELIVERED = 0, /* 2xx */
    HB_OUTCOME_RETRY,         /* retryable failure, handed to a delay topic */
    HB_OUTCOME_FAILED,        /* final failure */
    HB_OUTCOME_DROPPED,       /* subscription inactive or gone: not attempted */
} hb_outcome_t;

const char *hb_outcome_name(hb_outcome_t o); /* "delivered", "retry", "failed", "dropped" */

typedef struct hb_attempt_s {
    const char *delivery_id;
    const char *subscription_id;
    const char *event_ids; /* comma-separated event uuids (a batch has several) */
    const char *event_type;
    int attempt;        /* 1 = first */
    int64_t started_ms; /* wall clock */
    int64_t duration_ms;
    int http_status; /* 0 = no response */
    hb_outcome_t outcome;
    const char *error;            /* NULL on success; never contains a secret */
    const char *response_snippet; /* bounded, may be NULL */
    const char *body; /* rendered payload; stored only when outcome is FAILED (for replay) */
    const char *content_type; /* of body; stored with it */
} hb_attempt_t;

typedef struct hb_dlog_s hb_dlog_t;

hb_dlog_t *hb_dlog_new(const char *conninfo, long long flush_ms, size_t max_queue, char *errstr,
                       size_t errstr_size) HB_MUSTCHECK;

/* Copies *a. Any thread, never blocks on the database. */
void hb_dlog_add(hb_dlog_t *dl, const hb_attempt_t *a, void *token);

/* Moves up to max tokens whose rows are committed into tokens[]; returns count. */
size_t hb_dlog_take_flushed(hb_dlog_t *dl, void **tokens, size_t max);

/* Rows dropped because the queue overflowed, and rows written, so far. */
uint64_t hb_dlog_dropped(hb_dlog_t *dl);
uint64_t hb_dlog_written(hb_dlog_t *dl);
/* Queue length right now. */
size_t hb_dlog_queued(hb_dlog_t *dl);

/* Flushes what is queued, waiting at most deadline_ms, then stops the thread.
 * Returns the number of rows left unwritten (logged as a warning). Tokens of
 * rows written during the final flush can still be taken until hb_dlog_free. */
size_t hb_dlog_close(hb_dlog_t *dl, long long deadline_ms);
void hb_dlog_free(hb_dlog_t *dl);

#endif
