/*
 * One delivery's life, the same in the dispatcher and the retrier:
 * render -> sign -> send -> classify -> route, as one explicit state machine.
 *
 *   PENDING ---send----> IN_FLIGHT ---2xx-------------------> DELIVERED
 *     |  |                  |  |------retryable-------------> RETRY
 *     |  |                  |  '------final, attempts out---> FAILED
 *     |  |                  '--not sent (diverted, busy)--.
 *     |  '--circuit open----------------------------------+-> NOT_MADE --> RETRY | FAILED
 *     '--skip: DROPPED | FAILED (not attempted); DISCARDED (stale, nothing logged)
 *   IN_FLIGHT --a batch answered 413, its events at hand--> DISCARDED (sent again
 *              in halves, each a delivery of its own; the refused request not recorded)
 *   IN_FLIGHT --a batch answered 413, its body only (retrier)--> DROPPED (its
 *              halves, cut from the body, on the first tier; logged once both are durable)
 *   IN_FLIGHT or PENDING --shutdown--> ABANDONED (nothing recorded; consumed again)
 *   PENDING, or IN_FLIGHT not handed to curl yet --revoked--> ABANDONED (the same)
 *
 * The state changes in one function (set_state in hb_delivery.c), which checks
 * that the move is allowed, keeps the in-flight count and counts the outcome
 * (hookbridge_deliveries_total); the routing around it is:
 *   DELIVERED  the row is logged; the jobs are released when it is committed.
 *   RETRY      a DeliveryRetry on the delay tier of the next attempt
 *              (hb_retry.h); once the broker acks it, the 'retry' row; the jobs
 *              are released when it is committed.
 *   FAILED     (attempts used up, or a final failure) the delivery log is asked
 *              first: a delivery already final, or whose attempt is already
 *              logged (a duplicate after a restart), is not dead-lettered
 *              again. Else a DeliveryRetry on the dead-letter topic, once acked
 *              the failure (with its body, for replay) in the log.
 *   NOT_MADE   (circuit open, endpoint host's queue full or slow, rate limit)
 *              the attempt is not counted: a first attempt or a retry waits in
 *              the first tier, keeping its number; in the retrier an open
 *              circuit counts the attempt as failed, so a dead endpoint's
 *              schedule still ends. An ordered delivery waiting behind an
 *              earlier one of its key (hb_delivery_wait, hb_ordering.h) is
 *              NOT_MADE too, carrying after_delivery_id, but waits in the tier
 *              its last attempt chose (its predecessor may wait that long).
 * A delivery's settled callback (when set) hears once that it was routed or
 * abandoned: the ordered chains move on from there.
 *
 * Revocation: a delivery whose every job belongs to a partition revoked from
 * this process (hb_delivery_revoked) is not started any more: the partition's
 * new owner consumes its messages again and delivers them, so sending it here
 * too would deliver it twice. hb_deliveries_withdraw takes back the ones the
 * engine holds (in a host queue waiting for a connection, or held by a rate
 * limit), and a revoked delivery reaching send, wait, or a completion that
 * says it was never sent is abandoned there. Its jobs' holds are released
 * (their partition is forgotten: nothing is committed for them). Requests
 * already running finish and are recorded as usual. A batch holding jobs of
 * partitions revoked and of partitions still owned (the dispatcher's batches
 * mix partitions) is not sent as it is either: before it is sent (from the
 * engine's hold, a rate-limit turn, or a host queue, which gives it back),
 * or handed to a delay tier unattempted, its events of revoked partitions
 * are taken out (their new owner delivers them) and the rest is rendered
 * again, under the delivery id of the events left (hb_deliver_id).
 * So "the log shows attempt N with outcome X" implies that what X produced on
 * Kafka is durable (hb_outbox's gates keep that order).
 *
 * Rate limits (options.rate_limit, hb_ratelimit.h): a delivery of a limited
 * subscription waits for its turn in memory (still PENDING, not in flight)
 * before it is sent; one that cannot wait is NOT_MADE like one whose endpoint
 * is busy (the reason says "rate limited: ..."). When its turn comes it goes
 * as its subscription is then (hb_deliveries_set_current), and a delivery the
 * dispatcher made leaves out the events the subscription no longer takes
 * (event types, filter; dl->matched). The tokens of the budget
 * every replica shares come from ask (hb_deliveries_set_rate_ask), answered
 * through hb_deliveries_rate_granted; hb_deliveries_tick moves the held ones.
 *
 * The circuit breaker (circuit_failures > 0) lives here too, keyed by endpoint
 * host (scheme://host:port, the unit hb_http queues by): after that many
 * consecutive failed attempts (no complete answer, or a 5xx: the host looks
 * down; a 3xx or 4xx is about one URL and resets the count) the host's
 * waiting requests are diverted and its deliveries are not attempted for
 * circuit_cooldown; then one attempt probes it (half open: the others
 * meanwhile are treated as with the circuit open), an answer that shows the
 * host up closes the circuit (logged), a failure opens it again for another
 * cool-down (logged); a probe that ends without an answer (not sent, refused
 * by the address policy, dropped, abandoned) lets the next delivery probe.
 * A circuit that has seen no failure for a cool-down (or, open, no probe
 * for the retry schedule's longest delay after it half-opened: the host's
 * retries come back in waves that far apart) starts afresh at the next
 * failure, and is
 * forgotten when the circuits kept pass a bound: failures further apart
 * than circuit_cooldown do not add up, and hosts that went away leave
 * nothing behind. State is per process.
 *
 * Main loop thread only (completions come from hb_http_run on that thread).
 */
#ifndef HB_DELIVERY_H
#define HB_DELIVERY_H

#include <jansson.h>

#include "hb_common.h"
#include "hb_config.h"
#include "hb_dlog.h"
#include "hb_event.h"
#include "hb_http.h"
#include "hb_metrics.h"
#include "hb_outbox.h"
#include "hb_retry.h"
#include "hb_sub.h"

typedef enum hb_dl_state_e {
    HB_DL_PENDING,   /* made, not sent */
    HB_DL_IN_FLIGHT, /* its request is with hb_http */
    HB_DL_NOT_MADE,  /* not sent: circuit open, endpoint busy or slow */
    HB_DL_DELIVERED,
    HB_DL_RETRY, /* handed to a delay tier */
    HB_DL_FAILED,
    HB_DL_DROPPED,   /* not attempted: subscription gone, inactive, not verified */
    HB_DL_DISCARDED, /* stale (the log has it): nothing logged, jobs released */
    HB_DL_ABANDONED, /* shutdown: nothing recorded, jobs left unfinished */
    HB_DL_LOST,      /* its DeliveryRetry could not be encoded (logged at error) */
    HB_DL_STATES
} hb_dl_state_t;

const char *hb_dl_state_name(hb_dl_state_t st);

typedef struct hb_delivery_s {
    hb_sub_t *sub; /* a reference, released with the delivery */
    char id[HB_UUID_LEN + 1];
    char *body; /* rendered payload, owned (its request borrows it while in flight) */
    size_t body_len;
    char *content_type;       /* owned */
    char *event_ids;          /* comma-separated uuids, owned */
    char *event_type;         /* owned */
    int attempt;              /* this attempt: 1 = first */
    int64_t first_attempt_ms; /* 0: set when the first attempt starts (or waits) */
    /* the retrier's: when replay_dropped() asked that this pending retry go
     * on though a deactivation since its delivery began would drop it (the
     * log's resume_requested_at; hb_delivery_began_ms); 0: not asked */
    int64_t resume_ms;
    int schedule_offset; /* attempts made before the current schedule (replay) */
    int64_t due_ms;      /* the retrier's: when this attempt was due (0: not one) */
    hb_job_t **jobs;     /* each held once by the delivery */
    size_t jobs_cnt;
    /* a batch made by hb_delivery_make, or one event of a rate-limited
     * subscription: its events (references), events[i] the one of jobs[i],
     * so that the events of revoked partitions, or those its subscription
     * no longer takes, can be taken out before it is sent; else NULL */
    hb_event_t **events;
    hb_dl_state_t state; /* changed by set_state only */
    int circuit;         /* NOT_MADE because the circuit is open (else: endpoint busy) */
    int rate_limited;    /* NOT_MADE because it could not wait for its rate limit */
    int unverified;      /* NOT_MADE because its subscription's new URL awaits verification */
    char endpoint[512];  /* host key: the circuit's unit, "" when the URL does not parse */
    int probe;           /* it probes its host's half-open circuit (hb_delivery.c) */
    struct hb_deliveries_s *owner; /* while in flight */
    /* Ordered delivery (options.ordering, hb_ordering.h). */
    char after_id[HB_UUID_LEN + 1]; /* waits behind this delivery ("": nothing) */
    int waiting;                    /* NOT_MADE because it waits behind after_id */
    int quiet;                      /* its wait adds no delivery-log row (the retrier's re-waits) */
    /* made by the dispatcher from its events (hb_delivery_make/render), nothing
     * logged of it yet: a change of its subscription's event types or filter
     * while it waits leaves out what is no longer taken (hb_delivery.c) */
    int matched;
    int revoked;             /* ABANDONED because its partitions were revoked (not a shutdown) */
    char *order_key;         /* the dispatcher's ordered deliveries: the key (owned), else NULL */
    int32_t order_partition; /* where its event was read */
    int64_t order_offset;
    /* called once it is routed (its state says how) or abandoned, before it
     * is freed; NULL: none */
    void (*settled)(const struct hb_delivery_s *dl, void *arg);
    void *settled_arg;
} hb_delivery_t;

/* The engine: sends deliveries and routes their outcomes. */
typedef struct hb_deliveries_s hb_deliveries_t;

typedef struct hb_delivery_metrics_s {
    hb_metric_t *delivered, *retry, *failed, *dropped; /* hookbridge_deliveries_total */
    hb_metric_t *latency, *dlq, *dlq_skipped, *circuit_skips, *circuit_opens, *endpoint_busy;
    hb_metric_t *ordering_waits;     /* not attempted: waiting behind a predecessor (may be NULL) */
    hb_metric_t *verification_waits; /* not attempted: the new URL awaits verification (or NULL) */
    hb_metric_t *status_class[6];    /* responses: none, 1xx..5xx */
    hb_metric_t *connections_opened; /* attempts that opened a connection */
    hb_metric_t *tier[HB_RETRY_MAX_TIERS];
    hb_metric_t *rate_limited, *rate_limit_wait; /* held back by a rate limit; how long */
    hb_metric_t *circuit_probes; /* attempts let through a half-open circuit (may be NULL) */
    /* events a delivery that waited no longer took (may be NULL) */
    hb_metric_t *filtered;
} hb_delivery_metrics_t;

/* circuit_counts_attempts: an open circuit counts a skipped attempt as failed
 * (the retrier) rather than handing it to the first tier unattempted. */
hb_deliveries_t *hb_deliveries_new(const hb_config_t *cfg, hb_http_t *http, hb_outbox_t *outbox,
                                   const hb_delivery_metrics_t *m, int circuit_counts_attempts,
                                   char *errstr, size_t errstr_size) HB_MUSTCHECK;
void hb_deliveries_free(hb_deliveries_t *D);

/* Encodes m as a DeliveryRetry with the one encoder deliveries use and
 * produces it to topic (at least once, hb_outbox); -1 when it cannot be
 * encoded. */
int hb_deliveries_produce_retry(hb_deliveries_t *D, const char *topic, const hb_retry_msg_t *m,
                                char *errstr, size_t errstr_size) HB_MUSTCHECK;
/* Where the tokens of the shared rate-limit budget come from: ask(key,
 * wanted, opaque) returns 0 when it asked (answer: hb_deliveries_rate_granted),
 * -1 when it cannot ask now. Without one, limited deliveries wait and are
 * NOT_MADE after max_queue_wait. */
void hb_deliveries_set_rate_ask(hb_deliveries_t *D, int (*ask)(const char *, int, void *),
                                void *opaque);
/* Where a delivery held by its rate limit finds its subscription as it is
 * when its turn comes (NULL: deregistered; borrowed). A subscription
 * deactivated (even if activated again), unverified or gone meanwhile drops
 * the delivery; a changed one is sent to its current URL with its current
 * secrets. Without one, the subscription as it was when the delivery was
 * made. A delivery the dispatcher made from its events leaves out those the
 * subscription no longer takes (event types, filter), counted in the metric
 * set by hb_deliveries_set_filtered. */
void hb_deliveries_set_filtered(hb_deliveries_t *D, hb_metric_t *m);
void hb_deliveries_set_current(hb_deliveries_t *D, hb_sub_t *(*current)(const char *, void *),
                               void *opaque);
/* The answer to an ask for subscription id: granted tokens (< 0: the ask
 * failed) and, when none was left, the ms until the next. */
void hb_deliveries_rate_granted(hb_deliveries_t *D, const char *id, int granted, long long wait_ms);
/* Moves the deliveries held by rate limits; the ms until it is due again
 * (-1: none held). */
long long hb_deliveries_tick(hb_deliveries_t *D);
/* Revocation: every delivery of a revoked partition (hb_delivery_revoked)
 * held in a host queue or by a rate limit is abandoned, its request never
 * sent (those in a host queue once hb_http_run completes them); returns how
 * many. Main loop thread, not from inside a completion or rate-limit
 * callback. */
size_t hb_deliveries_withdraw(hb_deliveries_t *D);
/* A subscription changed (sub_id; NULL: the index was loaded again): every
 * request of the engine made for it as it was and still waiting in a host
 * queue is taken back and sent anew as the subscription is now (its URL and
 * secrets), or dropped (deregistered, deactivated) or parked (its new URL
 * awaits verification), once hb_http_run completes it; running ones finish.
 * Returns how many. Needs hb_deliveries_set_current; main loop thread, not
 * from inside a completion or rate-limit callback. */
size_t hb_deliveries_rebind_waiting(hb_deliveries_t *D, const char *sub_id);

/* No subscription has its URL at the endpoint host of key any more
 * (hb_index.h): its circuit (open or counting failures), its pacing clock
 * and what the HTTP engine keeps of it idle are forgotten, so a host
 * subscribed to again starts afresh, not with the state of its previous
 * life (an open circuit let one request of its first burst through and
 * sent the rest to the delay tiers). Deliveries of the old subscriptions
 * still under way finish as they would. 1 when an open circuit was
 * forgotten. */
int hb_deliveries_forget_host(hb_deliveries_t *D, const char *key);
/* Shutdown passed its deadline: completions record nothing from now on. */
void hb_deliveries_abandon(hb_deliveries_t *D);
int hb_deliveries_abandoning(const hb_deliveries_t *D);
size_t hb_deliveries_in_flight(const hb_deliveries_t *D);

/* A PENDING delivery holding each of jobs[0..n) once; takes a reference to
 * sub and ownership of body. */
hb_delivery_t *hb_delivery_new(hb_sub_t *sub, const char *id, char *body, size_t body_len,
                               const char *content_type, const char *event_ids,
                               const char *event_type, hb_job_t *const *jobs, size_t n);
/* A delivery read back from a delay tier: its attempt, when its first attempt
 * started, attempts made before the current schedule. */
void hb_delivery_continue(hb_delivery_t *dl, int attempt, int64_t first_attempt_ms,
                          int schedule_offset);
/* When dl began, as a deactivation judges it (hb_sub_drop_reason): its first
 * attempt, or, when replay_dropped() took it back since, that request (a
 * deactivation before the request does not drop it, a later one does). */
int64_t hb_delivery_began_ms(const hb_delivery_t *dl);
/* dl goes to sub (a reference is taken) as it is now, not as it was when the
 * delivery was made; before it is sent. */
void hb_delivery_rebind(hb_delivery_t *dl, hb_sub_t *sub);
/* Frees dl without releasing its jobs (they stay unfinished). */
void hb_delivery_free(hb_delivery_t *dl);
/* A response snippet with every occurrence of secret (the subscription's
 * auth value, which an echoing endpoint sends back) as "[redacted]": a
 * malloc'd copy, or NULL when there is none (keep the snippet as it came). */
char *hb_snippet_redacted(const char *snip, const char *secret);

/* Render: the payload of events[0..n) for sub, then send it, or, when it
 * cannot be rendered or is too large, FAILED without an attempt. A batch
 * (n > 1) too large for max_payload_bytes is split in halves instead, each
 * rendered and sent under the delivery id of its own events (hb_deliver_id),
 * until every part fits or is one event. id and event_ids name the delivery;
 * each job is held until it is durable. */
void hb_delivery_render(hb_deliveries_t *D, hb_sub_t *sub, hb_event_t *const *events, size_t n,
                        const char *id, const char *event_ids, hb_job_t *const *jobs);
/* hb_delivery_render without the sending: the PENDING delivery, or NULL when
 * it could not be rendered or is too large (then FAILED, routed already). */
hb_delivery_t *hb_delivery_make(hb_deliveries_t *D, hb_sub_t *sub, hb_event_t *const *events,
                                size_t n, const char *id, const char *event_ids,
                                hb_job_t *const *jobs);
/* Ordered delivery: NOT_MADE, waiting behind delivery after_id; dl goes to
 * the tier of its next attempt (a first attempt: the first tier) with
 * after_delivery_id set, its attempt not counted, and, unless quiet, a
 * 'retry' row saying "waiting behind <after_id>"; takes dl. */
void hb_delivery_wait(hb_deliveries_t *D, hb_delivery_t *dl, const char *after_id, int quiet);
/* Sign and send (or, with an open circuit, NOT_MADE), then classify and route
 * the outcome; takes dl. */
void hb_delivery_send(hb_deliveries_t *D, hb_delivery_t *dl);
/* Not attempted: HB_OUTCOME_DROPPED (logged) or HB_OUTCOME_FAILED (logged
 * and dead-lettered); takes dl. */
void hb_delivery_skip(hb_deliveries_t *D, hb_delivery_t *dl, hb_outcome_t outcome,
                      const char *reason);
/* DISCARDED: releases dl's jobs without attempting or logging; takes dl. */
void hb_delivery_discard(hb_deliveries_t *D, hb_delivery_t *dl);
/* ABANDONED: shutdown or revocation; nothing recorded, dl freed; the holds
 * of its jobs of revoked partitions are released (nothing commits them),
 * the others left unfinished; takes dl. */
void hb_delivery_abandon(hb_deliveries_t *D, hb_delivery_t *dl);
/* 1 when dl holds jobs and every one is of a partition revoked from this
 * process: its new owner delivers it. */
int hb_delivery_revoked(const hb_delivery_t *dl);
/* Events collected for one payload (events[i] with its job jobs[i]): those
 * of revoked partitions are dropped, each event unreferenced and its job
 * released (forgotten: it commits nothing, its new owner sends it), the
 * others moved to the front in their order. Returns how many are kept. */
size_t hb_deliveries_shed(hb_deliveries_t *D, hb_event_t **events, hb_job_t **jobs, size_t n);

#endif
