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
 * offset (the services log every outcome that way: a delivery counts as
 * finished only once its outcome is logged): after their transaction commits,
 * the tokens come back through hb_dlog_take_flushed() on the main loop thread.
 * While the database is down the writer retries with backoff; tokened rows are
 * never dropped; when the queue exceeds its bound, untokened rows are dropped
 * and counted.
 *
 * Partitions. hookbridge.deliveries is partitioned by log_day, the UTC day
 * of the delivery's first attempt (hb_attempt_t.first_attempt_ms: the
 * dispatcher's first attempt, carried by every DeliveryRetry; a replay's
 * request time), and its key is (delivery_id, log_day): the upsert finds a
 * delivery's row only because every writer of it computes the same day.
 * delivery_attempts is partitioned by started_at. Look-ups by delivery id
 * alone read every partition's key index; when a delivery has two rows (a
 * crash redelivered at a day's end), the one of the later day answers.
 *
 * Final states. The upsert never moves a delivery out of a final status
 * (delivered, failed, dropped) into another one, and never lowers its attempt
 * count; only hookbridge.replay() takes a failed delivery back (to 'replay').
 * So an attempt made again after a crash (at least once: same webhook-id)
 * adds its attempt row but cannot turn a delivered delivery into a failed one.
 *
 * Look-ups. hb_dlog_lookup() queues a question "what does the log say about
 * this delivery?" behind the rows already queued; the writer answers it after
 * those rows are committed (so the answer includes every outcome this process
 * logged before asking), fills the caller's hb_dlog_state_t and returns the
 * token through hb_dlog_take_flushed() like a written row. While the database
 * is down a look-up waits, as writes do: it is never answered blindly.
 */
#ifndef HB_DLOG_H
#define HB_DLOG_H

#include "hb_common.h"
#include "hb_metrics.h"

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
    /* When the delivery's first attempt began (wall ms; 0: started_ms). Its
     * UTC day is the delivery's log_day, the partition key of
     * hookbridge.deliveries: every writer of one delivery passes the same. */
    int64_t first_attempt_ms;
    int64_t duration_ms;
    int http_status; /* 0 = no response */
    hb_outcome_t outcome;
    const char *error;            /* NULL on success; never contains a secret */
    const char *response_snippet; /* bounded, may be NULL */
    const char *body; /* rendered payload; stored only when outcome is FAILED or DROPPED (replay) */
    const char *content_type; /* of body; stored with it */
    /* Ordered delivery (options.ordering), the dispatcher's rows only: the
     * delivery's key (NULL: unordered) and where its event was read. The row
     * also makes it the key's tail in hookbridge.ordering_tails, unless a
     * later event of that partition is already there. */
    const char *ordering_key;
    int32_t source_partition;
    int64_t source_offset;
} hb_attempt_t;

typedef struct hb_dlog_s hb_dlog_t;

/* What the log says about one delivery (the answer to hb_dlog_lookup). */
typedef struct hb_dlog_state_s {
    int found;         /* 0: no row yet */
    char status[16];   /* pending, delivered, retry, failed, dropped, replay */
    int attempts;      /* attempts made (the highest attempt number logged) */
    int64_t replay_ms; /* when a replay was last asked for (hookbridge.replay), 0: never */
    /* when replay_dropped() last asked that its pending retry, which an
     * earlier deactivation would drop, go on when due; 0: never */
    int64_t resume_ms;
    /* hb_dlog_lookup_tail: the key's newest delivery ("" when found is 0);
     * status "" when the log no longer has it */
    char delivery_id[37];
} hb_dlog_state_t;

/* Whether a message about attempt `attempt` of a delivery in state *st,
 * whose attempts began at began_ms (its first attempt, or for a replay when
 * it was asked for; 0: not known), is stale: the delivery is final
 * (delivered, failed, dropped), attempt `attempt` was already made and
 * logged (so what followed it is durable), or a replay was asked for after
 * the message's attempts began (the replay's own messages carry over them: a
 * retry still pending when a cancelled delivery was replayed is not the
 * replay's). Returns NULL when it is not, else the reason (in buf). */
const char *hb_dlog_state_stale(const hb_dlog_state_t *st, int attempt, int64_t began_ms, char *buf,
                                size_t bufsz);

/* The UTC day of wall_ms, as days since 1970-01-01: a delivery's log_day. */
int64_t hb_dlog_day(int64_t wall_ms);

/* A row copied out of an attempt, to be added later (hb_dlog_add_row). */
typedef struct hb_dlog_row_s hb_dlog_row_t;
hb_dlog_row_t *hb_dlog_row_new(const hb_attempt_t *a);
void hb_dlog_row_free(hb_dlog_row_t *r);

hb_dlog_t *hb_dlog_new(const char *conninfo, long long flush_ms, size_t max_queue, char *errstr,
                       size_t errstr_size) HB_MUSTCHECK;

/* Copies *a. Any thread, never blocks on the database. */
void hb_dlog_add(hb_dlog_t *dl, const hb_attempt_t *a, void *token);
/* The same with a row made by hb_dlog_row_new, which it takes. */
void hb_dlog_add_row(hb_dlog_t *dl, hb_dlog_row_t *r, void *token);

/* Queues a look-up of delivery_id behind everything queued so far; once they
 * are committed, *out is filled and token (non-NULL) comes back through
 * hb_dlog_take_flushed. *out must stay valid until then. since_ms: the
 * delivery's first attempt (wall clock ms; 0: unknown): its rows are in the
 * day partitions from that day on, so only those are searched (with a
 * 30-day retention, a look-up otherwise probes 35 partitions). Any thread. */
void hb_dlog_lookup(hb_dlog_t *dl, const char *delivery_id, int64_t since_ms, hb_dlog_state_t *out,
                    void *token);

/* The same for an ordered key: which delivery is the newest of
 * (subscription_id, key) (hookbridge.ordering_tails), and its status. */
void hb_dlog_lookup_tail(hb_dlog_t *dl, const char *subscription_id, const char *key,
                         hb_dlog_state_t *out, void *token);

/* Moves up to max tokens whose rows are committed into tokens[]; returns count. */
size_t hb_dlog_take_flushed(hb_dlog_t *dl, void **tokens, size_t max);

/* Rows dropped because the queue overflowed, and rows written, so far. */
uint64_t hb_dlog_dropped(hb_dlog_t *dl);
uint64_t hb_dlog_written(hb_dlog_t *dl);
/* Queue length right now. */
size_t hb_dlog_queued(hb_dlog_t *dl);
/* How long (ms) the writer has been waiting for the database to answer its
 * current batch: 0 when it is not waiting. A server that accepts the
 * connection but does not answer (stopped, or the statement waiting for a
 * lock) shows here; a broken connection fails instead. Any thread. */
int64_t hb_dlog_waiting_ms(hb_dlog_t *dl);
/* How long (ms) every round of the writer has failed: the database refused
 * its rows or look-ups (a privilege taken away, a trigger raising, a full
 * disk) or could not be reached; 0 once a round succeeds. why (may be
 * empty) gets the last round's reason, PostgreSQL's message. Any thread. */
int64_t hb_dlog_failing_ms(hb_dlog_t *dl, char *why, size_t whysz);

/* Writes what is queued now, not at the next flush, and waits at most
 * max_wait_ms for it to be committed; returns at once while the database is
 * failing (hb_dlog_failing_ms). 0 when nothing is left unwritten. A
 * revocation calls it, so that what was answered is committed before the
 * partition's new owner reads it. Any thread but the writer's. */
int hb_dlog_sync(hb_dlog_t *dl, long long max_wait_ms);

/* Flushes what is queued, waiting at most deadline_ms, then stops the thread.
 * Returns the number of rows left unwritten (logged as a warning). Tokens of
 * rows written during the final flush can still be taken until hb_dlog_free. */
size_t hb_dlog_close(hb_dlog_t *dl, long long deadline_ms);
void hb_dlog_free(hb_dlog_t *dl);

/* Tokens returned (rows committed, look-ups answered) write a byte to fd, a
 * non-blocking pipe the caller's loop polls, so it takes them at once. */
void hb_dlog_set_wake_fd(hb_dlog_t *dl, int fd);

/* Each round of rows or look-ups the database refused or did not take (an
 * error, a lost connection; retried after a backoff) adds 1 to errors
 * (hookbridge_database_errors_total), from the writer's thread. */
void hb_dlog_set_error_metric(hb_dlog_t *dl, hb_metric_t *errors);

/* Each row the database rejected as invalid (class 22 or 23: a constraint
 * added by hand, say), logged at error and not written, adds 1 to rejected
 * (hookbridge_delivery_log_rows_rejected_total), from the writer's thread:
 * the delivery happened, the log will never show it. */
void hb_dlog_set_rejected_metric(hb_dlog_t *dl, hb_metric_t *rejected);

#endif
