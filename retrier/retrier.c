/*
 * The retrier: the delay tiers in, second and later attempts out.
 *
 * It consumes every tier topic of the retry schedule (hb_retry.h) in its own
 * consumer group, on the same machinery as the dispatcher (hb_worker), and by
 * a pattern every other topic named like a tier: a retired tier, which an
 * earlier schedule had, is drained the same way, its next attempts routed by
 * the current schedule. For each DeliveryRetry:
 *
 *   - not yet due: the partition is paused and rewound to the message, and
 *     resumed when the message is due. Nothing is kept in memory and nothing
 *     polls; the loop just sleeps until the earliest due partition. Within a
 *     tier messages are in due order (up to the jitter), so waiting for the
 *     head of a partition is waiting for the earliest message in it;
 *   - due later than its tier's delay allows (a Retry-After longer than
 *     its tier, the longest not longer than the wait: hb_schedule_next):
 *     produced again, attempt and due time unchanged (a "hop"), onto the
 *     longest tier not longer than what is left of the wait (hop tiers
 *     included, HOOKBRIDGE_RETRY_HOP_TIERS), and its offset released once
 *     the broker has the copy, so no retry behind it waits for a message
 *     due later than itself;
 *   - due: first the delivery log is asked (hb_worker_lookup, answered by the
 *     log's own thread after the rows queued before). A delivery already
 *     delivered, failed or dropped, or whose attempt N is already logged
 *     (with its successor durable: hb_delivery.h), is dropped with an info
 *     line: a duplicate, e.g. read again after a restart. No request, no
 *     row, no dead letter. So is a copy of an attempt this retrier is
 *     making (a replay queued again after its lease, beside the message of
 *     the retrier that died). While the database is down the retry waits.
 *     Otherwise re-delivered with the same webhook-id, a fresh timestamp and
 *     signature, to the subscription's current URL and secrets. A failure
 *     goes to the next tier, or after the last attempt to the dead-letter
 *     topic, exactly as in the dispatcher (hb_delivery routes both); a batch
 *     refused as too large (413) goes on in two halves cut from its body,
 *     each a delivery of its own on the first tier (hb_delivery.c,
 *     split_refused_body);
 *   - ordered (after_delivery_id set: it waits behind an earlier delivery of
 *     its key, hb_ordering.h): the log is asked about that predecessor; until
 *     it is final (delivered, failed, dropped) the message goes back onto its
 *     tier unattempted (hb_delivery_wait: attempt not counted, no row, a
 *     metric), and is asked about again when due. A predecessor the log does
 *     not know is waited for only ORDER_UNKNOWN_WAIT_MS after this delivery
 *     began (its row may be on its way from a dispatcher), then not. When
 *     the predecessor is being attempted by this very retrier (or is itself
 *     held here), the delivery waits in memory instead, for one request's
 *     time: it goes the moment its predecessor is final, or back onto its
 *     tier when the predecessor is not (the outcome is noted when the
 *     predecessor is routed and acted on at the next loop pass), so a chain
 *     of waiting deliveries drains at the endpoint's pace, not one per tier
 *     delay;
 *   - its subscription deactivated, unverified or deregistered: dropped and
 *     recorded as dropped. So is an attempt whose delivery began before the
 *     subscription's last deactivation, though it is active again: a
 *     deactivation drops the retries pending at that moment, and
 *     reactivating does not bring them back (hb_sub_deactivated_since).
 *     "Began" is the first attempt's time (the dispatcher's clock, which
 *     must agree with the database's, as NTP keeps them), or for a replay
 *     when it was asked for, on the database's clock (replay_requested_at),
 *     or, for a pending retry replay_dropped() took back after such a
 *     deactivation, when that was asked for (resume_requested_at: the retry
 *     goes on when due, rather than being dropped then and waiting for a
 *     second replay_dropped() to bring it back).
 *
 * Offsets move only over finished messages, so a retrier killed at any point
 * resumes at the first unfinished one and re-checks its due time: nothing is
 * lost and nothing is attempted early.
 *
 * Every second it claims replay requests (hookbridge.replay) and puts them on
 * the first tier, due at once; every minute (or a quarter of the period, if shorter) it asks
 * PostgreSQL to deactivate endpoints that have failed every attempt for auto_deactivate_after;
 * at start and every hour it has the delivery log maintained (hookbridge.maintain_delivery_log:
 * partitions created ahead, days past the retention dropped), a minute later again when the
 * database was away. All three go through the store's request lane, never this loop's thread.
 */
#include "retrier.h"

#include <stdlib.h>
#include <string.h>

#include "hb_hash.h"
#include "hb_log.h"
#include "hb_retry.h"
#include "hb_schemas.h"
#include "hb_worker.h"

#define REPLAY_POLL_MS 1000
#define REPLAY_BATCH 100
#define SWEEP_MS 60000
#define MAINTAIN_MS 3600000     /* the delivery log's upkeep: at start, then hourly */
#define MAINTAIN_RETRY_MS 60000 /* ... or a minute after it failed */
#define HOP_SLACK_MS 100        /* rounding and resends: never hop a message due within its tier */
#define CLOCK_AHEAD_MS 1000     /* a message timestamp this far in the future: its clock is ahead */
#define ORDER_UNKNOWN_WAIT_MS (5 * 60 * 1000) /* a predecessor the log does not know */
/* A failure of the periodic requests (replays, sweep, upkeep) is said at
 * once, then at most this often while they keep failing: on a primary
 * read-only for hours, whose connection the store keeps, they fail every
 * second */
#define DB_WARN_EVERY_MS 30000

typedef struct active_s active_t;
typedef struct held_s held_t;

struct hb_retrier_s {
    const hb_config_t *cfg;
    hb_worker_t *w;
    int64_t next_replay_poll;
    int replays_asked, sweep_asked; /* a question to the store is open */
    int64_t next_sweep;
    int maintain_asked;
    int64_t next_maintain;
    hb_metric_t *m_replayed, *m_auto_deactivated, *m_stale, *m_hops, *m_late, *m_held;
    hb_hash_t active;  /* delivery id -> active_t*: attempted or held here */
    hb_hash_t retired; /* retired tier topics seen (said once each); no values */
    active_t **ready;  /* routed since the last pass: their waiters go on */
    size_t ready_n, ready_cap;
    /* Due retries the log answered for while the subscriptions may miss
     * changes made during a database outage (the store's connection not
     * back, or back but not reloaded; or a subscription the reload skipped
     * for a value not sealed yet: hb_worker_index_current); they go on once
     * they are current (held_pass). */
    held_t *held;
    size_t held_n, held_cap;
    int held_said;        /* "waiting for the subscriptions" said for this stretch */
    int64_t db_warned_at; /* a periodic request's failure last said (hb_mono_ms) */
    int db_unsaid;        /* ... and those failed since, not said */
    int db_failing;       /* the periodic requests (DB_*) whose last try failed */
    int db_said;          /* a failure said since the last "answered again" */
};

/* The periodic requests to the store, for db_failing. */
enum { DB_REPLAYS = 1, DB_SWEEP = 2, DB_UPKEEP = 4 };

/* A due retry held until the subscriptions are current; ready: an ordered
 * one whose predecessor is final already (ready_pass), which goes then
 * without asking about it again (it is tracked: asked again, it took itself
 * for a copy of its own attempt and was dropped unattempted, its offset
 * committed). */
struct held_s {
    hb_delivery_t *dl;
    int ready;
};

/* A delivery being attempted (or held) by this retrier, and the ordered
 * deliveries held in memory behind it. */
struct active_s {
    hb_delivery_t **waiters; /* owned; each waits behind this one */
    size_t n, cap;
    int final; /* routed: delivered, failed, dropped (else it waits in a tier) */
};

/* "retry dropped" comes once per retry read again (after a restart, a whole
 * tier's worth): at most HB_LOG_LIMIT_LINES per window below debug. */
static hb_log_limit_t log_stale = HB_LOG_LIMIT("\"retry dropped, attempt N not made\"");

/* Tracks dl as being attempted or held here (once per id), until it is
 * routed: ordered deliveries may wait for it, and a second copy of its
 * attempt read meanwhile is not made (on_state). */
static void track(hb_retrier_t *r, hb_delivery_t *dl) {
    if (hb_hash_get(&r->active, dl->id))
        return;
    (void)hb_hash_put(&r->active, dl->id, hb_calloc(1, sizeof(active_t)));
}

static void active_free(active_t *a) {
    for (size_t i = 0; i < a->n; i++)
        hb_delivery_free(a->waiters[i]); /* never attempted: consumed again */
    free(a->waiters);
    free(a);
}

/* Any delivery of the retrier was routed (hb_delivery's settled): if it was
 * tracked, its waiters go on at the next pass. A discarded one never was
 * (the stale are dropped before they are tracked): it is a copy read again
 * of an attempt already made, while the tracked attempt of its delivery may
 * still be in flight, so it tells its waiters nothing. */
static void on_settled(const hb_delivery_t *dl, void *arg) {
    hb_retrier_t *r = arg;
    hb_hash_slot_t *s;
    active_t *a;
    if (dl->state == HB_DL_DISCARDED || !(s = hb_hash_find(&r->active, dl->id)))
        return;
    a = s->val;
    hb_hash_del(&r->active, s);
    a->final =
        dl->state == HB_DL_DELIVERED || dl->state == HB_DL_FAILED || dl->state == HB_DL_DROPPED;
    if (r->ready_n == r->ready_cap) {
        r->ready_cap = r->ready_cap ? r->ready_cap * 2 : 64;
        r->ready = hb_realloc(r->ready, r->ready_cap * sizeof(*r->ready));
    }
    r->ready[r->ready_n++] = a;
}

static const char *rebind_now(hb_worker_t *w, hb_delivery_t *dl);
static void hold(hb_retrier_t *r, hb_delivery_t *dl, int ready);

/* A waiter whose predecessor is final: attempted, or dropped when its
 * subscription changed meanwhile; held while the subscriptions may miss
 * changes (hold), and then sent here without asking about its predecessor
 * again (held_pass). */
static void waiter_go(hb_retrier_t *r, hb_delivery_t *dl) {
    const char *why;
    if (!hb_worker_index_current(r->w))
        hold(r, dl, 1);
    else if ((why = rebind_now(r->w, dl)) != NULL)
        hb_worker_skip(r->w, dl, HB_OUTCOME_DROPPED, why);
    else
        hb_worker_deliver(r->w, dl);
}

/* The waiters of routed deliveries: attempted when their predecessor is final
 * (unless their subscription changed meanwhile so that they are dropped),
 * else back onto their tiers (which routes their own waiters the same way). */
static void ready_pass(hb_retrier_t *r) {
    for (size_t i = 0; i < r->ready_n; i++) { /* waiting may add more: n re-read */
        active_t *a = r->ready[i];
        for (size_t j = 0; j < a->n; j++) {
            if (a->final)
                waiter_go(r, a->waiters[j]);
            else
                hb_worker_wait(r->w, a->waiters[j], a->waiters[j]->after_id, 1);
        }
        a->n = 0;
        active_free(a);
    }
    r->ready_n = 0;
}

/* Takes the revoked deliveries out of a's waiters, onto out. */
static void waiters_withdraw(active_t *a, hb_delivery_t ***out, size_t *n, size_t *cap) {
    size_t kept = 0;
    for (size_t j = 0; j < a->n; j++) {
        if (!hb_delivery_revoked(a->waiters[j])) {
            a->waiters[kept++] = a->waiters[j];
            continue;
        }
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 64;
            *out = hb_realloc(*out, *cap * sizeof(**out));
        }
        (*out)[(*n)++] = a->waiters[j];
    }
    a->n = kept;
}

/* Partitions were revoked: the ordered deliveries of theirs waiting here in
 * memory are the new owner's (it reads them from the tier again). They are
 * abandoned once out of every list: abandoning tells on_settled, which
 * changes r->active and r->ready. (Deferred partitions hold nothing: the
 * consumer forgets them; retries in a look-up are abandoned when it is
 * answered, those in the HTTP engine by hb_deliveries_withdraw.) */
static size_t on_revoke(hb_worker_t *w, void *opaque) {
    hb_retrier_t *r = opaque;
    hb_delivery_t **out = NULL;
    size_t n = 0, cap = 0;
    hb_hash_slot_t *s;
    size_t pos = 0;
    while ((s = hb_hash_each(&r->active, &pos)) != NULL)
        waiters_withdraw(s->val, &out, &n, &cap);
    for (size_t i = 0; i < r->ready_n; i++)
        waiters_withdraw(r->ready[i], &out, &n, &cap);
    {
        size_t kept = 0;
        for (size_t i = 0; i < r->held_n; i++) {
            if (!hb_delivery_revoked(r->held[i].dl)) {
                r->held[kept++] = r->held[i];
                continue;
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                out = hb_realloc(out, cap * sizeof(*out));
            }
            out[n++] = r->held[i].dl;
        }
        r->held_n = kept;
    }
    for (size_t i = 0; i < n; i++)
        hb_worker_abandon(w, out[i]);
    free(out);
    return n;
}

/* A stand-in for a subscription that no longer exists, so its pending
 * attempts can be recorded as dropped under its id. */
static hb_sub_t *gone_sub(const char *id) {
    hb_sub_t *s = hb_sub_new();
    snprintf(s->id, sizeof(s->id), "%s", id);
    return s;
}

/* dl goes to its subscription as it is now, not as it was when the message
 * came (or when it began to wait in memory); returns why it must be dropped
 * instead, or NULL. */
static const char *rebind_now(hb_worker_t *w, hb_delivery_t *dl) {
    hb_sub_t *sub = hb_index_get(hb_worker_index(w), dl->sub->id);
    if (sub != dl->sub) {
        hb_sub_t *gone = sub ? NULL : gone_sub(dl->sub->id);
        hb_delivery_rebind(dl, sub ? sub : gone);
        hb_sub_unref(gone);
    }
    return hb_sub_drop_reason(sub, hb_delivery_began_ms(dl));
}

/* The log answered about an ordered delivery's predecessor: attempt it once
 * the predecessor is final, else back onto its tier to wait. */
static void on_predecessor(hb_worker_t *w, hb_delivery_t *dl, const hb_dlog_state_t *st,
                           void *opaque) {
    hb_retrier_t *r = opaque;
    int final = st->found && (!strcmp(st->status, "delivered") || !strcmp(st->status, "failed") ||
                              !strcmp(st->status, "dropped"));
    active_t *a;
    if (hb_hash_get(&r->active, dl->id)) { /* a copy read with it got here first (on_state) */
        hb_metric_inc(r->m_stale);
        hb_log(HB_LOG_INFO, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
               "retry dropped, attempt %d not made: a copy of this delivery is being attempted "
               "here already",
               dl->attempt);
        hb_worker_discard(w, dl);
        return;
    }
    if (!final && !st->found && dl->first_attempt_ms &&
        hb_wall_ms() - dl->first_attempt_ms > ORDER_UNKNOWN_WAIT_MS) {
        hb_log(HB_LOG_WARN,
               HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id, "after_delivery_id",
                     dl->after_id),
               "ordered delivery no longer waits behind a delivery the log does not know");
        final = 1;
    }
    if (final) {
        hb_log(HB_LOG_DEBUG,
               HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id, "after_delivery_id",
                     dl->after_id),
               "predecessor is %s: attempt %d goes", st->found ? st->status : "unknown",
               dl->attempt);
        track(r, dl);
        hb_worker_deliver(w, dl);
    } else if ((a = hb_hash_get(&r->active, dl->after_id)) != NULL) {
        /* its predecessor is being attempted here: wait for it in memory */
        track(r, dl);
        if (a->n == a->cap) {
            a->cap = a->cap ? a->cap * 2 : 2;
            a->waiters = hb_realloc(a->waiters, a->cap * sizeof(*a->waiters));
        }
        a->waiters[a->n++] = dl;
    } else {
        hb_worker_wait(w, dl, dl->after_id, 1);
    }
}

/* A due retry whose log said it goes: to its subscription as it is now, or
 * dropped. How late the retrier is counts to now: from when the retry was
 * due, or its tier's order let it go if later (on_time_until), to when the
 * attempt goes (or it is dropped, or waits for its predecessor), the wait
 * for the subscriptions (hold) included: a lock on them held for minutes
 * keeps every due retry here while /readyz stays ready. Once per message
 * read. */
static void go_on(hb_worker_t *w, hb_retrier_t *r, hb_delivery_t *dl) {
    const char *why;
    if (dl->due_ms) {
        int64_t late = hb_wall_ms() - dl->due_ms;
        hb_metric_observe(r->m_late, late > 0 ? (double)late / 1000 : 0);
        dl->due_ms = 0;
    }
    if ((why = rebind_now(w, dl)) != NULL)
        hb_worker_skip(w, dl, HB_OUTCOME_DROPPED, why);
    else if (*dl->after_id) /* ordered: first its predecessor */
        hb_worker_lookup_id(w, dl, dl->after_id, on_predecessor, r);
    else {
        track(r, dl); /* later deliveries of its key may wait for it here */
        hb_worker_deliver(w, dl);
    }
}

static void hold(hb_retrier_t *r, hb_delivery_t *dl, int ready) {
    if (r->held_n == r->held_cap) {
        r->held_cap = r->held_cap ? r->held_cap * 2 : 64;
        r->held = hb_realloc(r->held, r->held_cap * sizeof(*r->held));
    }
    r->held[r->held_n].dl = dl;
    r->held[r->held_n++].ready = ready;
    if (!r->held_said) {
        const char *why = hb_worker_index_stale(r->w);
        r->held_said = 1;
        hb_info("database: due retries wait until the subscriptions are current again (%s: "
                "changes made meanwhile may be missing)",
                why ? why : "they were not when the retry came due");
    }
    hb_log(HB_LOG_DEBUG, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
           "attempt %d waits for the subscriptions to be current again", dl->attempt);
}

/* The held retries go on once the subscriptions are current again. */
static void held_pass(hb_retrier_t *r) {
    held_t *held = r->held;
    size_t n = r->held_n;
    if (!n || !hb_worker_index_current(r->w))
        return;
    r->held = NULL;
    r->held_n = r->held_cap = 0;
    r->held_said = 0;
    hb_info("subscriptions current again: %zu due retr%s that waited for them go%s on", n,
            n == 1 ? "y" : "ies", n == 1 ? "es" : "");
    for (size_t i = 0; i < n; i++) {
        if (held[i].ready)
            waiter_go(r, held[i].dl); /* current now: not held again */
        else
            go_on(r->w, r, held[i].dl);
    }
    free(held);
}

/* The log answered for a due retry (hb_worker_lookup): drop it when it is
 * stale, else check its subscription as it is now and attempt it. */
static void on_state(hb_worker_t *w, hb_delivery_t *dl, const hb_dlog_state_t *st, void *opaque) {
    hb_retrier_t *r = opaque;
    char buf[200];
    const char *stale =
        hb_dlog_state_stale(st, dl->attempt, dl->first_attempt_ms, buf, sizeof(buf));

    /* Two messages of one attempt can be read together, before either is
     * logged: a replay claimed again after its lease, whose first message
     * was queued by a retrier that died (both on the first tier, keyed by
     * the subscription: one partition, so one retrier reads both). */
    if (!stale && hb_hash_get(&r->active, dl->id)) {
        snprintf(buf, sizeof(buf), "a copy of this delivery is being attempted here already");
        stale = buf;
    }
    if (stale) {
        hb_metric_inc(r->m_stale);
        hb_log_limited_for(
            &log_stale, dl->sub->id, HB_LOG_INFO,
            HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
            "retry dropped, attempt %d not made: %s (read again, e.g. after a restart)",
            dl->attempt, stale);
        hb_worker_discard(w, dl);
        return;
    }
    /* replay_dropped() took it back after a deactivation that would drop
     * it (rebind_now judges it by that request) */
    dl->resume_ms = st->found ? st->resume_ms : 0;
    /* its lateness counts when it goes on (go_on); a copy read again
     * (stale, above) is not a retry late */
    hb_log(HB_LOG_DEBUG, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
           "attempt %d is due; the log has %s, %d attempt(s)", dl->attempt,
           st->found ? st->status : "no row yet", st->attempts);
    if (!hb_worker_index_current(w)) {
        /* The log is back before the subscriptions are (each connection
         * has its own back-off): one deactivated or deregistered during
         * the outage must not receive it. */
        hold(r, dl, 0);
        return;
    }
    go_on(w, r, dl);
}

/* When rkm was produced, on the reference clock (hb_wall_ms) its producer
 * stamped it with (hb_outbox_send): its creation timestamp. 0: unknown, as
 * for a topic whose message.timestamp.type is LogAppendTime: that stamp is
 * the broker's clock, which may be minutes off PostgreSQL's, and a copy this
 * retrier produces gets the broker's clock again (a broker 90 s behind made
 * every waiting retry hop onto its tier again and again, hundreds of copies a
 * second, for its last 90 s). */
static int64_t written_ms(const rd_kafka_message_t *rkm) {
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(rkm, &tstype);
    return tstype == RD_KAFKA_TIMESTAMP_CREATE_TIME && ts > 0 ? ts : 0;
}

/* When a message read from its tier, due at not_before, must leave the head
 * of its partition: every message behind it was produced later, so none is
 * due before ts + the tier's delay (ts: when this one was produced). Holding
 * the partition longer than that (plus the jitter) would make them wait
 * behind a message due later than themselves, which happens when Retry-After
 * asked for more than the tier it waits in. Or when its producer's clock is
 * ahead of this one's: its due time and its timestamp are both late by as
 * much (up to an hour, what Kafka takes by default:
 * message.timestamp.after.max.ms), and it would hold the partition until its
 * own clock's due time; a creation timestamp more than CLOCK_AHEAD_MS in the
 * future makes it hop at once (the copy has this retrier's timestamp, so it hops
 * again within its tier's span, never attempted before it is due). 0: it is
 * due within its tier's span, or when it was produced is not known
 * (written_ms): it waits for its due time. */
static int64_t hop_at(const hb_retrier_t *r, const rd_kafka_message_t *rkm, int64_t not_before) {
    const hb_schedule_t *sch = hb_worker_schedule(r->w);
    int64_t ts = written_ms(rkm), span, now = hb_wall_ms();
    long long tier = hb_schedule_tier_ms(sch, rd_kafka_topic_name(rkm->rkt), NULL);

    if (tier < 0 || !ts)
        return 0;
    if (ts > now + CLOCK_AHEAD_MS)
        return now;
    span = tier + tier * r->cfg->retry_jitter_percent / 100 + HOP_SLACK_MS;
    return not_before > ts + span ? ts + span : 0;
}

/* Until when rkm, due at not_before, is on time: its due time, or, if later,
 * the latest a message written before it on its tier can be due (its
 * timestamp + the tier's delay + the jitter): waiting behind those is the
 * tier's order (a retry may be late by the jitter), not the retrier behind. */
static int64_t on_time_until(const hb_retrier_t *r, const rd_kafka_message_t *rkm,
                             int64_t not_before) {
    int64_t ts = written_ms(rkm);
    long long tier =
        hb_schedule_tier_ms(hb_worker_schedule(r->w), rd_kafka_topic_name(rkm->rkt), NULL);
    int64_t until;
    if (tier < 0 || !ts)
        return not_before;
    until = ts + tier + tier * r->cfg->retry_jitter_percent / 100;
    return until > not_before ? until : not_before;
}

/* Produces rkm again (attempt and due time unchanged) onto the longest tier
 * not longer than what is left of its wait (its own, a longer one, or a
 * shorter one near the end: hb_schedule_wait_topic); its offset is released
 * once the broker has the copy. */
static void hop(hb_retrier_t *r, const rd_kafka_message_t *rkm, const hb_retry_msg_t *m) {
    hb_worker_t *w = r->w;
    const hb_schedule_t *sch = hb_worker_schedule(w);
    long long left = (long long)(m->not_before_ms - hb_wall_ms());
    const char *topic = hb_schedule_wait_topic(sch, left);
    hb_job_t *job = hb_worker_track(w, rkm);
    char *key = rkm->key ? hb_strndup(rkm->key, rkm->key_len) : NULL;
    if (!topic) /* due sooner than the shortest tier's delay */
        topic = sch->tier_topics[0];
    hb_metric_inc(r->m_hops);
    hb_log(HB_LOG_DEBUG,
           HB_KV("delivery_id", m->delivery_id, "subscription_id", m->subscription_id),
           "attempt %d is due in %lld ms, later than %s's span: produced again onto %s so the "
           "retries behind it do not wait",
           m->attempt, left, rd_kafka_topic_name(rkm->rkt), topic);
    hb_worker_produce(w, topic, key, rkm->payload, rkm->len, job);
    free(key);
    hb_job_release(w, job);
}

/* The first message read from a retired tier (a tier of an earlier schedule,
 * matched by the subscription's pattern) says so, once per topic. */
static void note_retired(hb_retrier_t *r, const char *topic) {
    int retired = 0;
    char d[32];
    long long ms = hb_schedule_tier_ms(hb_worker_schedule(r->w), topic, &retired);
    if (!retired || hb_hash_find(&r->retired, topic))
        return;
    hb_hash_put(&r->retired, topic, NULL);
    hb_delay_format(ms, d, sizeof(d));
    hb_warn("%s is not a tier of HOOKBRIDGE_RETRY_SCHEDULE (any more): its retries are drained "
            "as due (a %s tier), and their next attempts go to the schedule's tiers; delete the "
            "topic once hookbridge_consumer_lag shows it empty",
            topic, d);
}

static void on_message(hb_worker_t *w, const rd_kafka_message_t *rkm, json_t *msg, void *opaque) {
    hb_retrier_t *r = opaque;
    hb_retry_msg_t m;
    hb_sub_t *sub, *gone = NULL;
    hb_delivery_t *dl;
    hb_job_t *job;
    char errstr[256];

    if (hb_retry_msg_from_json(&m, msg, errstr, sizeof(errstr)) < 0) {
        hb_worker_poison(w, rkm, errstr);
        return;
    }
    note_retired(r, rd_kafka_topic_name(rkm->rkt));
    if (m.not_before_ms > hb_wall_ms()) {
        int64_t at = hop_at(r, rkm, m.not_before_ms);
        hb_log(HB_LOG_DEBUG,
               HB_KV("delivery_id", m.delivery_id, "subscription_id", m.subscription_id),
               "attempt %d is due in %lld ms: it waits at %s [%d] offset %lld", m.attempt,
               (long long)(m.not_before_ms - hb_wall_ms()), rd_kafka_topic_name(rkm->rkt),
               (int)rkm->partition, (long long)rkm->offset);
        if (!at)
            hb_worker_defer(w, rkm, m.not_before_ms);
        else if (at > hb_wall_ms())
            hb_worker_defer(w, rkm, at);
        else
            hop(r, rkm, &m);
        hb_retry_msg_clear(&m);
        return;
    }
    job = hb_worker_track(w, rkm);
    sub = hb_index_get(hb_worker_index(w), m.subscription_id);
    if (!sub)
        sub = gone = gone_sub(m.subscription_id);
    dl = hb_delivery_new(sub, m.delivery_id, m.body, m.body_len, m.content_type, m.event_ids,
                         m.event_type, &job, 1);
    m.body = NULL; /* now the delivery's */
    hb_delivery_continue(dl, m.attempt, m.first_attempt_ms, m.schedule_offset);
    dl->due_ms = on_time_until(r, rkm, m.not_before_ms);
    dl->settled = on_settled;
    dl->settled_arg = r;
    if (m.after_delivery_id)
        snprintf(dl->after_id, sizeof(dl->after_id), "%s", m.after_delivery_id);
    /* First what the log says: a retry of a delivery already final, or of an
     * attempt already made, is dropped (on_state). */
    hb_worker_lookup(w, dl, on_state, r);
    hb_sub_unref(gone);
    hb_job_release(w, job);
    hb_retry_msg_clear(&m);
}

/* ----------------------------------------------------------------- replay */

/* A periodic request to the store failed: counted, and said at once, or
 * with those since if it was said less than DB_WARN_EVERY_MS ago. */
static void periodic_failed(hb_retrier_t *r, int kind, const char *err) {
    int64_t now = hb_mono_ms();
    hb_worker_db_error(r->w);
    r->db_failing |= kind;
    if (r->db_warned_at && now - r->db_warned_at < DB_WARN_EVERY_MS) {
        r->db_unsaid++;
        return;
    }
    if (r->db_unsaid)
        hb_warn("%s (and %d more failures of the periodic database requests in the last %d s)", err,
                r->db_unsaid, (int)((now - r->db_warned_at) / 1000));
    else
        hb_warn("%s", err);
    r->db_warned_at = now;
    r->db_unsaid = 0;
    r->db_said = 1;
}

/* A periodic request of kind (DB_*) was answered. Once every one that
 * failed is answered again, the failures said end here, and that is said
 * once; while another still fails (the sweep failing for good beside replay
 * claims answered every second), nothing is: it would say "answered again"
 * after each warning. Those that failed too are asked at once, rather than
 * at their next turn (the sweep's up to a minute away, the upkeep's a
 * minute after it failed), so the end of an outage is said within a
 * second or two. The pace of the warnings goes on (a failure within
 * DB_WARN_EVERY_MS of the last one said is counted, said with the next), or
 * one request failing while another is answered would say both every
 * second. */
static void periodic_ok(hb_retrier_t *r, int kind) {
    int64_t now;
    if (!(r->db_failing & kind))
        return;
    r->db_failing &= ~kind;
    if (r->db_failing) {
        now = hb_mono_ms();
        if ((r->db_failing & DB_SWEEP) && r->next_sweep > now)
            r->next_sweep = now;
        if ((r->db_failing & DB_UPKEEP) && r->next_maintain > now)
            r->next_maintain = now;
        return;
    }
    if (!r->db_said)
        return;
    if (r->db_unsaid)
        hb_info("database: the periodic requests are answered again (%d failures since the "
                "last warning)",
                r->db_unsaid);
    else
        hb_info("database: the periodic requests are answered again");
    r->db_said = 0;
    r->db_unsaid = 0;
}

/* The store's answer (on the loop thread): each replay to the first tier. */
static void on_replays(const hb_replay_t *rp, int cnt, const char *err, void *opaque) {
    hb_retrier_t *r = opaque;
    const hb_schedule_t *sch = hb_worker_schedule(r->w);
    char errstr[512];

    r->replays_asked = 0;
    if (err) {
        periodic_failed(r, DB_REPLAYS, err);
        return;
    }
    periodic_ok(r, DB_REPLAYS);
    for (int i = 0; i < cnt; i++) {
        hb_retry_msg_t m = {
            .delivery_id = rp[i].delivery_id,
            .subscription_id = rp[i].subscription_id,
            .event_ids = rp[i].event_ids,
            .event_type = rp[i].event_type,
            .content_type = rp[i].content_type,
            .body = rp[i].body,
            .body_len = rp[i].body_len,
            .attempt = rp[i].attempts + 1,
            .not_before_ms = hb_wall_ms(),
            /* The replay's attempts begin when it was requested, on the
             * database's clock: it was requested while the subscription
             * was active, so a deactivation before it does not drop it,
             * one after does (on_message), with no clock skew between the
             * two. Its day is the delivery's log_day (replay() moved the
             * row there), the same however often it is claimed. */
            .first_attempt_ms = rp[i].requested_ms,
            .last_status = 0,
            .last_error = (char *)"replay requested",
            .schedule_offset = rp[i].attempts,
        };
        if (hb_worker_produce_retry(r->w, sch->tier_topics[0], &m, errstr, sizeof(errstr)) < 0) {
            hb_log(HB_LOG_ERROR, HB_KV("delivery_id", m.delivery_id), "cannot replay: %s", errstr);
            continue;
        }
        hb_metric_inc(r->m_replayed);
        hb_log(HB_LOG_INFO,
               HB_KV("delivery_id", m.delivery_id, "subscription_id", m.subscription_id),
               "replay requested: attempt %d queued on %s", m.attempt, sch->tier_topics[0]);
    }
}

/* Asks the store for replay requests; one question at a time, so a slow
 * database gets no pile of them. */
static void poll_replays(hb_retrier_t *r) {
    hb_store_t *store = hb_worker_store(r->w);
    if (r->replays_asked || !store || !hb_store_connected(store))
        return;
    r->replays_asked = 1;
    hb_store_claim_replays(store, REPLAY_BATCH, on_replays, r);
}

static void on_swept(int cnt, const char *err, void *opaque) {
    hb_retrier_t *r = opaque;
    r->sweep_asked = 0;
    if (err) {
        periodic_failed(r, DB_SWEEP, err);
        return;
    }
    periodic_ok(r, DB_SWEEP);
    for (int i = 0; i < cnt; i++)
        hb_metric_inc(r->m_auto_deactivated);
}

static void sweep_failing(hb_retrier_t *r) {
    hb_store_t *store = hb_worker_store(r->w);
    if (r->cfg->auto_deactivate_ms <= 0 || r->sweep_asked || !store || !hb_store_connected(store))
        return;
    r->sweep_asked = 1;
    hb_store_deactivate_failing(store, r->cfg->auto_deactivate_ms, on_swept, r);
}

/* The delivery log's partitions (hookbridge.maintain_delivery_log, on the
 * store's request lane); a failure (the database away) only delays it. */
static void on_maintained(int cnt, const char *err, void *opaque) {
    hb_retrier_t *r = opaque;
    (void)cnt;
    r->maintain_asked = 0;
    if (err) {
        r->next_maintain = hb_mono_ms() + MAINTAIN_RETRY_MS;
        periodic_failed(r, DB_UPKEEP, err);
    } else {
        periodic_ok(r, DB_UPKEEP);
    }
}

static void maintain_log(hb_retrier_t *r) {
    hb_store_t *store = hb_worker_store(r->w);
    if (r->maintain_asked || !store || !hb_store_connected(store)) {
        r->next_maintain = hb_mono_ms() + 1000; /* asked again in a second */
        return;
    }
    r->maintain_asked = 1;
    hb_store_maintain_delivery_log(store, on_maintained, r);
}

static long long on_pass(hb_worker_t *w, void *opaque) {
    hb_retrier_t *r = opaque;
    int64_t now = hb_mono_ms();
    (void)w;
    held_pass(r);
    ready_pass(r);
    hb_metric_set(r->m_held, (double)r->held_n);
    if (now >= r->next_replay_poll) {
        r->next_replay_poll = now + REPLAY_POLL_MS;
        poll_replays(r);
    }
    if (now >= r->next_sweep) {
        /* every minute, or sooner when the period itself is short */
        long long every = r->cfg->auto_deactivate_ms / 4;
        r->next_sweep = now + (every < 1000 ? 1000 : every > SWEEP_MS ? SWEEP_MS : every);
        sweep_failing(r);
    }
    if (now >= r->next_maintain) {
        r->next_maintain = now + MAINTAIN_MS;
        maintain_log(r);
    }
    return r->next_replay_poll - now;
}

/* Stopping: the held retries are not attempted (consumed again after the
 * restart, their offsets not committed). */
static void on_stop(hb_worker_t *w, void *opaque) {
    hb_retrier_t *r = opaque;
    held_t *held = r->held;
    size_t n = r->held_n;
    r->held = NULL;
    r->held_n = r->held_cap = 0;
    for (size_t i = 0; i < n; i++)
        hb_worker_abandon(w, held[i].dl);
    free(held);
}

static const hb_worker_hooks_t hooks = {
    .on_message = on_message,
    .on_pass = on_pass,
    .on_revoke = on_revoke,
    .on_stop = on_stop,
};

/* ------------------------------------------------------------ build/free */

hb_retrier_t *hb_retrier_new(const hb_config_t *cfg, char *errstr, size_t errstr_size) {
    static const double late_bounds[] = {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600};
    hb_retrier_t *r = hb_calloc(1, sizeof(*r));
    const hb_schedule_t *sch = &cfg->schedule;
    const char *topics[HB_RETRY_MAX_TIERS + 1];
    char pattern[300];
    hb_worker_spec_t spec = {
        .name = "retrier",
        .schema = hb_schema_delivery_retry,
        .hooks = &hooks,
        .opaque = r,
        .circuit_counts_attempts = 1,
        .topics = topics,
    };
    /* The schedule's tiers by name (a missing one keeps the service not
     * ready), and by pattern every topic named like a tier: so the tiers of
     * an earlier schedule are drained, not stranded, when the schedule
     * changes, and one deleted once drained is simply no longer matched. */
    for (int t = 0; t < sch->tiers; t++)
        topics[spec.topics_cnt++] = sch->tier_topics[t];
    hb_schedule_tier_pattern(sch, pattern, sizeof(pattern));
    topics[spec.topics_cnt++] = pattern;
    r->cfg = cfg;
    r->w = hb_worker_new(cfg, &spec, errstr, errstr_size);
    if (!r->w) {
        free(r);
        return NULL;
    }
    r->m_replayed = hb_metrics_counter("hookbridge_replays_total", NULL,
                                       "Replay requests put back on the first delay tier.");
    r->m_stale = hb_metrics_counter(
        "hookbridge_stale_retries_dropped_total", NULL,
        "Retries dropped unattempted: the delivery log had the delivery final already, or the "
        "attempt made (a duplicate, e.g. read again after a restart).");
    r->m_hops = hb_metrics_counter("hookbridge_retry_hops_total", NULL,
                                   "Retries due later than their tier's delay, produced again "
                                   "onto the longest tier not longer than what is left of their "
                                   "wait, so that none waits behind them.");
    r->m_held = hb_metrics_gauge(
        "hookbridge_retries_held", NULL,
        "Due retries waiting in the retrier for the subscriptions to be loaded again (after a "
        "database outage, while their load waits 10 s or more for the database, or while it "
        "may have gone silent): counted late only once they go on.");
    r->m_late = hb_metrics_histogram(
        "hookbridge_retry_lateness_seconds", NULL,
        "How late the retrier took up the retries of the delay tiers: from their due time "
        "(or, if later, their tier's delay and jitter after they were written) to when it "
        "took them up (a copy read again and dropped as stale is not counted).",
        late_bounds, HB_ARRAY_SIZE(late_bounds));
    r->m_auto_deactivated =
        hb_metrics_counter("hookbridge_auto_deactivations_total", NULL,
                           "Subscriptions deactivated because every attempt kept failing.");
    return r;
}

int hb_retrier_run(hb_retrier_t *r) {
    return hb_worker_run(r->w);
}

void hb_retrier_free(hb_retrier_t *r) {
    hb_hash_slot_t *s;
    size_t pos = 0;
    if (!r)
        return;
    hb_worker_free(r->w); /* deliveries aborted now still report to on_settled */
    for (size_t i = 0; i < r->ready_n; i++)
        active_free(r->ready[i]);
    free(r->ready);
    for (size_t i = 0; i < r->held_n; i++)
        hb_delivery_free(r->held[i].dl); /* never attempted: consumed again */
    free(r->held);
    while ((s = hb_hash_each(&r->active, &pos)) != NULL)
        active_free(s->val);
    hb_hash_clear(&r->active);
    hb_hash_clear(&r->retired);
    free(r);
}
