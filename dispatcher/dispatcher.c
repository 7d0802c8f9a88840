/*
 * The dispatcher: identity events in, deliveries out.
 *
 * The consuming machinery (hb_worker's loop: hb_consumer for the group and
 * offsets that only move over durable work, hb_outbox for durability, the
 * subscription index following PostgreSQL, graceful shutdown) and one
 * delivery's path (hb_delivery: render, sign, send, classify, route, the
 * circuit breaker) are shared with the retrier. This file is what only the
 * dispatcher does:
 *
 *   - match each event against the index (by type) and each subscription's
 *     content filter, and start one delivery per deliverable subscription, rendered in the
 * subscription's format; the delivery id (the webhook-id) is derived from the event uuid and the
 *     subscription id, so a redelivered event carries the same one; the
 *     deliveries of one event start as the payload budget lets them
 *     (max_pending_bytes): the rest of a fan-out waits for the ones held to
 *     finish, and no other message is taken meanwhile (fanout_t);
 *   - batch events for subscriptions with batch_max > 1: a batch collects
 *     one subscription's events until it holds batch_max of them or its
 *     first event has waited batch_window_ms (both as the subscription is
 *     now, also when they changed since it opened), and is delivered as one
 *     request; each event's offset is held until the batch is durable. The
 *     batch's delivery id is derived from the subscription and its events'
 *     uuids, so the same batch re-sent after a crash has the same webhook-id
 *     (a batch put together differently gets another one: receivers
 *     de-duplicate batches on the event uuids inside);
 *   - keep per-key order for subscriptions with options.ordering
 *     (hb_ordering.h): the events of one key go out one at a time, the ones
 *     behind an in-flight head wait in memory, and when the head goes to a
 *     delay tier they are parked behind it (each naming its predecessor, for
 *     the retrier). The chains' steps are taken here: questions to the
 *     delivery log (on its thread), sends and parks; a head's outcome is
 *     noted when it is routed and acted on at the next loop pass (never from
 *     inside an HTTP completion);
 *   - run endpoint verification challenges (hookbridge.verify(), and requests
 *     pending at start-up); claiming a request is atomic in SQL, so with
 *     several replicas exactly one sends the challenge. A claim is a lease
 *     (verify_lease_ms): the request stays pending until the outcome is
 *     recorded, and every VERIFY_LOOK_MS each dispatcher looks for requests
 *     whose lease expired (their dispatcher died) and claims them again. At
 *     shutdown the drain waits for running challenges and records them. A
 *     challenge not sent (its endpoint busy; its subscription not loadable
 *     here) records nothing: it is given back as a preview is (below), its
 *     verification_retrying saying why, and tried at its lease's pace once
 *     the same bounds have passed;
 *   - send previews (hookbridge.preview(): sql/70_previews.sql) as
 *     verifications are sent: claimed with a lease (preview_lease_ms), looked
 *     for with them; each one sample event of its type (hb_generate.h),
 *     rendered and signed as a delivery to its subscription, sent once
 *     through the HTTP engine (not through a delivery: no retry, no delivery
 *     log, no health or rate limit), and what it got recorded; a few at a
 *     time (preview_slots), the others left pending and looked for as
 *     those finish. One the engine did not take now is given back and
 *     looked for again PREVIEW_RETRY_MS later, for up to preview_busy_ms,
 *     then failed; one whose subscription cannot be loaded here is given
 *     back to the other replicas for PREVIEW_UNLOADABLE_MS, then recorded
 *     failed, saying why;
 *   - on a revocation (on_revoke, inside the consumer poll), take the
 *     deliveries of revoked partitions out of the chains and their events
 *     out of the batches still filling (a batch flushed and not sent yet
 *     sheds them in hb_delivery.c): the new owner delivers them. The
 *     chains' tails are asked for again; a head abandoned unsent is waited
 *     behind as if parked (the new owner delivers it with the same id).
 */
#include "dispatcher.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "hb_codec.h"
#include "hb_deliver.h"
#include "hb_delivery.h"
#include "hb_event.h"
#include "hb_generate.h"
#include "hb_hash.h"
#include "hb_log.h"
#include "hb_metrics.h"
#include "hb_ordering.h"
#include "hb_schemas.h"
#include "hb_sign.h"
#include "hb_signal.h"
#include "hb_worker.h"

/* A running challenge or preview into (LIST_LINK) or out of (LIST_UNLINK)
 * the dispatcher's list headed by head. */
#define LIST_LINK(head, x)                                                                         \
    do {                                                                                           \
        (x)->prev = NULL;                                                                          \
        (x)->next = (head);                                                                        \
        if (head)                                                                                  \
            (head)->prev = (x);                                                                    \
        (head) = (x);                                                                              \
    } while (0)
#define LIST_UNLINK(head, x)                                                                       \
    do {                                                                                           \
        if ((x)->prev)                                                                             \
            (x)->prev->next = (x)->next;                                                           \
        else                                                                                       \
            (head) = (x)->next;                                                                    \
        if ((x)->next)                                                                             \
            (x)->next->prev = (x)->prev;                                                           \
        (x)->prev = (x)->next = NULL;                                                              \
    } while (0)

typedef struct verify_s {
    struct hb_dispatcher_s *d;
    hb_sub_t *sub;
    char challenge[HB_UUID_LEN + 1];
    char claim[HB_CLAIM_LEN];     /* the store's name for our claim of the request */
    struct verify_s *prev, *next; /* the dispatcher's running ones */
    int handed_over;              /* given back at the drain's deadline: HAND_OVER_* */
    char refused[160];            /* why the database did not take it ("": it did, or asked) */
} verify_t;

/* A preview being sent: its id (also the request's webhook-id) and what was
 * sent (the request borrows the body). */
typedef struct preview_s {
    struct hb_dispatcher_s *d;
    hb_sub_t *sub;
    char id[HB_UUID_LEN + 1];
    char claim[HB_CLAIM_LEN];
    hb_payload_t p;
    struct preview_s *prev, *next; /* the dispatcher's running ones */
    int handed_over;               /* given back at the drain's deadline: HAND_OVER_* */
    char refused[160];             /* why the database did not take it ("": it did, or asked) */
} preview_t;

/* A running request's hand-over at the drain's deadline (on_deadline): not
 * asked (or refused), asked with no answer from the database yet (it may
 * still take it after this replica stopped, or not), taken. */
enum { HAND_OVER_NONE, HAND_OVER_ASKED, HAND_OVER_TAKEN };

/* The one line of a request aborted at shutdown (what: "preview", ...):
 * what became of its hand-over (refused: the database's error, or ""). */
static void say_abandoned(const char *key, const char *id, const char *what, int state,
                          const char *refused, const char *more) {
    const char *then =
        state == HAND_OVER_TAKEN ? "handed over to the other dispatchers, which send it again now"
        : state == HAND_OVER_ASKED
            ? "the database did not answer its hand-over in time: another dispatcher sends it "
              "again once the database takes it, or when this one's claim expires"
            : "another dispatcher sends it again when this one's claim expires";
    if (state == HAND_OVER_NONE && refused[0])
        hb_log(HB_LOG_WARN, HB_KV(key, id),
               "%s abandoned at shutdown; the database did not take its hand-over (%s): %s%s", what,
               refused, then, more);
    else
        hb_log(HB_LOG_WARN, HB_KV(key, id), "%s abandoned at shutdown; %s%s", what, then, more);
}

/* Since when this dispatcher has found a request (a preview, a
 * verification) not sendable (monotonic), and why: its endpoint busy, or
 * its subscription not loadable here. */
typedef struct wait_s {
    int64_t since;
    int64_t last; /* the latest try (an entry untried for long is forgotten) */
    int64_t hold; /* a verification: not claimed here before then */
    int unloadable;
    int said; /* a verification: its bound's end was said (once) */
    /* the claim it was given back under; give_back: the database did not
     * take that (unreachable), given back again once it answers */
    char claim[HB_CLAIM_LEN];
    int give_back;
} wait_t;

/* Events waiting for company, for one subscription. Its size and window are
 * the subscription's as it is now (batch_refresh): a change applies to the
 * batch already open. */
typedef struct batch_s {
    hb_sub_t *sub;       /* reference */
    hb_event_t **events; /* references */
    hb_job_t **jobs;
    size_t cnt, cap;   /* cap: room in events and jobs */
    size_t max;        /* batch_max: flush once it holds that many */
    int64_t opened;    /* monotonic: when its first event came */
    int64_t due;       /* monotonic: flush at the latest then */
    int64_t opened_ms; /* wall clock: when its first event came */
} batch_t;

/* The rest of one event's fan-out: the subscriptions it matched whose
 * deliveries are not started yet because the payload budget
 * (max_pending_bytes) is spent. They start, in order, as the deliveries
 * already held finish; meanwhile no message is taken (hooks.holding), and the
 * event's job is held, so its offset waits for them. */
typedef struct fanout_s {
    struct fanout_s *next;
    hb_event_t *event; /* reference */
    hb_job_t *job;     /* one hold */
    hb_sub_t **subs;   /* references: the subscriptions as matched */
    size_t cnt, done;  /* subs[done..cnt) are left */
    int64_t matched_ms;
    int32_t partition; /* of its message, for ordered deliveries */
    int64_t offset;
    void *key; /* its message key (a copy), or NULL */
    size_t key_len;
} fanout_t;

struct hb_dispatcher_s {
    const hb_config_t *cfg;
    hb_worker_t *w;
    fanout_t *fanout, *fanout_tail; /* the rests of fan-outs, oldest first */
    hb_hash_t batches;              /* subscription id -> batch_t* */
    size_t open_batches;
    hb_chains_t *chains;  /* ordered keys (hb_ordering.h) */
    hb_chain_t **settled; /* chains whose head was routed since the last pass */
    size_t settled_n, settled_cap;
    unsigned revocations; /* hb_worker_revocations when the chains were last trusted */
    int64_t next_evict;
    size_t chains_full;          /* at this many chains the idle ones go at once (chains_pass) */
    size_t verifying;            /* challenges sent, outcome not yet handed to the store */
    size_t previewing;           /* previews sent, outcome not yet handed to the store */
    verify_t *running_verifies;  /* the verifying ones */
    preview_t *running_previews; /* the previewing ones */
    size_t preview_claims;       /* preview claims asked, not yet answered */
    /* a preview was left pending for want of a slot (preview_slots): look
     * for it again when one frees */
    int preview_backlog;
    int looking;         /* a look for claimable verification requests is open */
    int looking_preview; /* a look for claimable previews is open */
    /* the last look for verification requests [0] / previews [1] failed:
     * said when it begins and when it ends, not at every look (every few
     * seconds while the database is away) */
    int look_failing[2];
    /* monotonic: look for previews then (one given back not sent:
     * PREVIEW_RETRY_MS), 0 none */
    int64_t preview_retry_at;
    /* monotonic: give back again the previews the database did not take
     * (wait_t.give_back) then, 0 none */
    int64_t preview_redo_at;
    int64_t next_look; /* monotonic: the next look */
    /* "<subscription id> <url>" -> int64_t* (monotonic): when this
     * dispatcher's challenge to that URL was first answered "try later" (429,
     * 503), with no other answer since */
    hb_hash_t temporary;
    /* preview id -> wait_t*: since when this dispatcher found that
     * preview not sendable now (its endpoint busy; its subscription not
     * loadable here), until it is sent, failed or another takes it */
    hb_hash_t preview_waits;
    /* subscription id -> wait_t*: the same for its verification request */
    hb_hash_t verify_waits;
    /* a preview's sample event goes through Avro as a consumed one does
     * (preview_render): the schema's codec, made at the first preview */
    hb_codec_t *codec;
    hb_metric_t *m_matched, *m_filtered, *m_verify_ok, *m_verify_failed, *m_ordered_keys;
};

#define CHAIN_IDLE_MS 60000 /* an idle key's chain is forgotten after this */
#define CHAIN_EVICT_EVERY_MS 10000
#define VERIFY_LOOK_MS 5000 /* how often to look for verification requests nobody holds */
/* Beyond the challenge's own bound (queue wait + verify_timeout): the time to
 * record its outcome through the store. A lease that expires while a slow
 * outcome is on its way costs one more challenge, never a lost one. */
#define VERIFY_LEASE_MARGIN_MS 10000
/* A preview or a challenge the HTTP engine did not take now (its host's
 * queue full) is given back, claimable again after this: not at its
 * lease's end. */
#define PREVIEW_RETRY_MS 1000
/* A preview or a verification whose subscription this dispatcher cannot
 * load is left to the others that long (each looks every VERIFY_LOOK_MS),
 * then failed here (a verification: said why, and still left to them). */
#define PREVIEW_UNLOADABLE_MS (VERIFY_LOOK_MS + 1000)

/* ---------------------------------------------------------------- events */

/* One request for events[0..n) (n > 1: a batch) to sub; each job is held by
 * the delivery until it is durable. drop_why: not sent but logged dropped
 * with that reason (NULL: sent). A dropped one keeps its payload, as a
 * pending retry a deactivation drops does, so that replay_dropped can send
 * it once the subscription is active again (docs/sql.md); a batch over the
 * size bound is dropped in halves that fit (as hb_delivery_render sends
 * one); one that cannot be rendered, or one event over the bound, is
 * dropped without it (not failed: it was not to be sent). keep: sub is the
 * subscription as it is now (a deregistered one's payload is never
 * replayed: not rendered). */
static void start_delivery(hb_dispatcher_t *d, hb_sub_t *sub, hb_event_t *const *events,
                           hb_job_t *const *jobs, size_t n, const char *drop_why, int keep) {
    char id[HB_UUID_LEN + 1], errstr[256];
    char *ids = hb_deliver_id(sub->id, events, n, id);
    hb_payload_t p = {0};
    if (!drop_why) {
        hb_worker_render(d->w, sub, events, n, id, ids, jobs); /* render, sign, send, route */
    } else {
        if (!keep || hb_deliver_render(sub, events, n, id, d->cfg->source, hb_wall_ms(), &p, errstr,
                                       sizeof(errstr)) < 0) {
            free(p.body);
            p.body = NULL;
            p.len = 0;
        } else if (p.len > (size_t)d->cfg->max_payload_bytes) {
            free(p.body);
            p.body = NULL;
            p.len = 0;
            if (n > 1) {
                /* too large to keep, as to send: in halves, as
                 * hb_delivery_render sends one, so that replay_dropped can
                 * bring back every event */
                size_t half = n / 2;
                free(ids);
                start_delivery(d, sub, events, jobs, half, drop_why, keep);
                start_delivery(d, sub, events + half, jobs + half, n - half, drop_why, keep);
                return;
            }
        }
        hb_worker_skip(d->w,
                       hb_delivery_new(sub, id, p.body ? p.body : hb_strdup(""), p.len,
                                       p.body ? p.content_type : NULL, ids, hb_ev_type(events[0]),
                                       jobs, n),
                       HB_OUTCOME_DROPPED, drop_why);
    }
    free(ids);
}

/* ------------------------------------------------------- ordered delivery */

typedef struct ask_s {
    hb_dispatcher_t *d;
    hb_chain_t *c; /* not evicted while its question is open */
} ask_t;

static void chain_advance(hb_dispatcher_t *d, hb_chain_t *c);

static int status_final(const char *status) {
    return !strcmp(status, "delivered") || !strcmp(status, "failed") || !strcmp(status, "dropped");
}

/* The log's answer about the chain's tail: by key (a tail whose row is gone
 * counts as final) or by id (a tail not logged yet is not final). */
static void on_tail_by_key(hb_worker_t *w, const hb_dlog_state_t *st, void *opaque) {
    ask_t *a = opaque;
    (void)w;
    hb_chain_answer(a->c, st->found, st->delivery_id, !*st->status || status_final(st->status));
    chain_advance(a->d, a->c);
    free(a);
}

static void on_tail_by_id(hb_worker_t *w, const hb_dlog_state_t *st, void *opaque) {
    ask_t *a = opaque;
    (void)w;
    hb_chain_answer(a->c, st->found, NULL, st->found && status_final(st->status));
    chain_advance(a->d, a->c);
    free(a);
}

/* A head was routed (or abandoned): noted now, acted on at the next pass. */
static void on_head_settled(const hb_delivery_t *dl, void *arg) {
    hb_dispatcher_t *d = arg;
    hb_chain_t *c = hb_chains_get(d->chains, dl->sub->id, dl->order_key, hb_mono_ms());
    if (dl->state == HB_DL_ABANDONED && !dl->revoked) { /* shutdown */
        hb_chain_stop(c);
        return;
    }
    if (dl->state == HB_DL_ABANDONED) /* the new owner of its partition delivers it */
        hb_chain_revoked(c);
    else
        hb_chain_settled(c, dl->state == HB_DL_RETRY);
    if (d->settled_n == d->settled_cap) {
        d->settled_cap = d->settled_cap ? d->settled_cap * 2 : 64;
        d->settled = hb_realloc(d->settled, d->settled_cap * sizeof(*d->settled));
    }
    d->settled[d->settled_n++] = c;
}

/* Takes the chain's steps until it has to wait. */
static void chain_advance(hb_dispatcher_t *d, hb_chain_t *c) {
    char after[HB_UUID_LEN + 1];
    void *item;
    ask_t *a;
    for (;;) {
        switch (hb_chain_next(c, &item, after)) {
        case HB_CHAIN_WAIT: return;
        case HB_CHAIN_ASK_KEY:
            a = hb_calloc(1, sizeof(*a));
            a->d = d;
            a->c = c;
            hb_worker_ask_tail(d->w, hb_chain_sub_id(c), hb_chain_key(c), on_tail_by_key, a, free);
            return;
        case HB_CHAIN_ASK_TAIL:
            a = hb_calloc(1, sizeof(*a));
            a->d = d;
            a->c = c;
            hb_worker_ask(d->w, hb_chain_tail(c), on_tail_by_id, a, free);
            return;
        case HB_CHAIN_SEND: {
            hb_delivery_t *dl = item;
            /* it may have waited a while: the subscription as it is now */
            hb_sub_t *sub = hb_index_get(hb_worker_index(d->w), dl->sub->id);
            const char *why = hb_sub_drop_reason(sub, dl->first_attempt_ms);
            if (why) {
                hb_worker_skip(d->w, dl, HB_OUTCOME_DROPPED, why);
                hb_chain_settled(c, 0); /* dropped is final: the next one goes on */
                break;
            }
            if (sub != dl->sub)
                hb_delivery_rebind(dl, sub); /* its URL and secrets now */
            dl->settled = on_head_settled;
            dl->settled_arg = d;
            hb_worker_deliver(d->w, dl);
            break;
        }
        case HB_CHAIN_PARK: hb_worker_wait(d->w, item, after, 0); break;
        }
    }
}

/* event for sub, whose ordering key is key: rendered now, sent when its
 * chain lets it. */
static void ordered_add(hb_dispatcher_t *d, hb_sub_t *sub, hb_event_t *event, int32_t partition,
                        int64_t offset, hb_job_t *job, const char *key) {
    char id[HB_UUID_LEN + 1];
    char *ids = hb_deliver_id(sub->id, &event, 1, id);
    hb_delivery_t *dl = hb_worker_make(d->w, sub, &event, 1, id, ids, &job);
    hb_chain_t *c;
    free(ids);
    if (!dl)
        return; /* could not be rendered: failed, and that is final */
    /* it began now, though it may wait behind its key: a deactivation while
     * it waits drops it even when the subscription is active again by then,
     * here and in the retrier (as a batch's events and a pending retry) */
    dl->first_attempt_ms = hb_wall_ms();
    dl->order_key = hb_strdup(key);
    dl->order_partition = partition;
    dl->order_offset = offset;
    if (hb_worker_revocations(d->w) != d->revocations) {
        /* partitions moved: what this process knew of keys may be stale */
        d->revocations = hb_worker_revocations(d->w);
        hb_chains_forget(d->chains);
    }
    c = hb_chains_get(d->chains, sub->id, key, hb_mono_ms());
    hb_chain_push(c, dl, dl->id);
    chain_advance(d, c);
}

/* Chains whose head was routed take their next steps; idle ones are
 * forgotten now and then, and at once when max_ordered_keys are kept: a
 * chain idle for less than CHAIN_IDLE_MS (five times that when its tail
 * waits in a tier) only spares the key's next event a question to the
 * delivery log, and with every event a key of its own (events keyed by
 * user, an endpoint down, a backlog read as fast as it comes) they held
 * about 900 bytes an event for five minutes (review 85: 18.6 MiB of RSS
 * for 20,000 events).
 * Here, after the settled chains advanced, nothing else points at an idle
 * chain. The next such walk waits for twice the chains left when more
 * than half are busy (each walk then frees at least as many as it walks
 * over again). */
static void chains_pass(hb_dispatcher_t *d) {
    int64_t now = hb_mono_ms();
    size_t cap = (size_t)d->cfg->max_ordered_keys;
    for (size_t i = 0; i < d->settled_n; i++) /* advancing may settle more: re-read n */
        chain_advance(d, d->settled[i]);
    d->settled_n = 0;
    if (now >= d->next_evict) {
        d->next_evict = now + CHAIN_EVICT_EVERY_MS;
        (void)hb_chains_evict_idle(d->chains, now, CHAIN_IDLE_MS);
    }
    if (hb_chains_count(d->chains) >= d->chains_full) {
        size_t evicted = hb_chains_evict_idle(d->chains, now, 0), left = hb_chains_count(d->chains);
        d->chains_full = left > cap / 2 ? 2 * left : cap;
        hb_debug("ordered keys: %zu kept, the %zu idle forgotten (max_ordered_keys %zu)", left,
                 evicted, cap);
    }
    hb_metric_set(d->m_ordered_keys, (double)hb_chains_count(d->chains));
}

static int item_revoked(void *item, void *arg) {
    (void)arg;
    return hb_delivery_revoked(item);
}

static void item_abandon(void *item, void *arg) {
    hb_dispatcher_t *d = arg;
    hb_worker_abandon(d->w, item); /* queued: no settled callback yet */
}

static void chain_item_free(void *item) {
    hb_delivery_free(item); /* never sent: its jobs stay unfinished, the event comes again */
}

/* ---------------------------------------------------------------- batches */

static hb_log_limit_t log_unwanted = HB_LOG_LIMIT("\"batch: N of its M events left it unsent\"");

/* The bytes of the events a batch holds. They count in hb_held_bytes while
 * they wait, as the rendered body of each would had it not waited for
 * company: HOOKBRIDGE_MAX_PENDING_BYTES bounds them too (batch_flush_due). */
static size_t batch_bytes(const batch_t *b) {
    size_t n = 0;
    for (size_t i = 0; i < b->cnt; i++)
        n += b->events[i]->len;
    return n;
}

/* Delivers the batch in slot s and removes it. Its events waited for company
 * (up to a minute): the batch goes out as its subscription is now (URL,
 * secrets, payload options, its event types and content filter: an event it
 * no longer wants leaves the batch unsent, as one it never matched; and
 * batch_max: in requests of at most that many events, were it lowered below
 * what the batch holds), and is dropped, and logged so (but for the events it
 * no longer wants, left as never matched), when the
 * subscription was deactivated or deregistered meanwhile, as any delivery
 * that waits is (an active one awaiting its new URL's verification is parked
 * by hb_delivery_send). */
static void batch_flush(hb_dispatcher_t *d, hb_hash_slot_t *s) {
    batch_t *b = s->val;
    hb_sub_t *now = hb_index_get(hb_worker_index(d->w), b->sub->id);
    const char *drop_why = hb_sub_drop_reason(now, b->opened_ms);
    size_t per = now && now->batch_max > 0 ? (size_t)now->batch_max : b->max;
    size_t kept = 0, unwanted, bytes = batch_bytes(b);
    hb_hash_del(&d->batches, s);
    d->open_batches--;
    for (size_t i = 0; i < b->cnt; i++) {
        /* also when the batch is dropped: an event no longer taken is not
         * logged dropped, which replay_dropped would send */
        if (now && (!hb_sub_has_type(now, hb_ev_type(b->events[i])) ||
                    (now->filter && !hb_sub_wants(now, hb_ev_json(b->events[i]))))) {
            hb_ev_unref(b->events[i]); /* not wanted any more: done with, as unmatched */
            hb_job_release(d->w, b->jobs[i]);
            continue;
        }
        b->events[kept] = b->events[i];
        b->jobs[kept++] = b->jobs[i];
    }
    unwanted = b->cnt - kept;
    b->cnt = kept;
    hb_metric_add(d->m_filtered, (double)unwanted);
    if (unwanted)
        hb_log_limited_for(
            &log_unwanted, b->sub->id, HB_LOG_INFO, HB_KV("subscription_id", b->sub->id),
            "batch: %zu of its %zu events left it unsent, its subscription's event types or "
            "filter changed while it filled no longer taking them",
            unwanted, unwanted + kept);
    for (size_t i = 0; i < b->cnt; i += per)
        start_delivery(d, now ? now : b->sub, b->events + i, b->jobs + i,
                       b->cnt - i < per ? b->cnt - i : per, drop_why, now != NULL);
    for (size_t i = 0; i < b->cnt; i++) {
        hb_ev_unref(b->events[i]);
        hb_job_release(d->w, b->jobs[i]);
    }
    hb_held_sub(bytes);
    hb_sub_unref(b->sub);
    free(b->events);
    free(b->jobs);
    free(b);
}

/* The batch's size and window as its subscription is now (unchanged when it
 * is gone: batch_flush drops the batch then); 1 when it is due now. */
static int batch_refresh(hb_dispatcher_t *d, batch_t *b, int64_t now_ms) {
    hb_sub_t *now = hb_index_get(hb_worker_index(d->w), b->sub->id);
    if (now) {
        b->max = now->batch_max > 1 ? (size_t)now->batch_max : 1;
        b->due = b->opened + now->batch_window_ms;
        if (b->max > b->cap) {
            b->cap = b->max;
            b->events = hb_realloc(b->events, b->cap * sizeof(*b->events));
            b->jobs = hb_realloc(b->jobs, b->cap * sizeof(*b->jobs));
        }
    }
    return b->cnt >= b->max || b->due <= now_ms;
}

static void batch_add(hb_dispatcher_t *d, hb_sub_t *sub, hb_event_t *event, hb_job_t *job) {
    hb_hash_slot_t *s = hb_hash_find(&d->batches, sub->id);
    batch_t *b = s ? s->val : NULL;
    if (b && hb_sub_deactivated_since(sub, b->opened_ms)) {
        /* deactivated and active again since the batch opened: its events
         * are dropped (batch_flush), not this one, which came after */
        batch_flush(d, s);
        b = NULL;
    }
    if (!b) {
        b = hb_calloc(1, sizeof(*b));
        b->sub = hb_sub_ref(sub);
        b->cap = b->max = (size_t)sub->batch_max;
        b->events = hb_malloc(b->cap * sizeof(*b->events));
        b->jobs = hb_malloc(b->cap * sizeof(*b->jobs));
        b->opened = hb_mono_ms();
        b->due = b->opened + sub->batch_window_ms;
        b->opened_ms = hb_wall_ms();
        s = hb_hash_put(&d->batches, sub->id, b);
        d->open_batches++;
    } else {
        (void)batch_refresh(d, b, hb_mono_ms()); /* sub is the index's, as it is now */
    }
    if (b->cnt == b->cap) { /* batch_max lowered below what it held */
        b->cap *= 2;
        b->events = hb_realloc(b->events, b->cap * sizeof(*b->events));
        b->jobs = hb_realloc(b->jobs, b->cap * sizeof(*b->jobs));
    }
    b->events[b->cnt] = hb_ev_ref(event);
    hb_held_add(event->len);
    b->jobs[b->cnt] = job;
    hb_job_hold(job);
    if (++b->cnt >= b->max)
        batch_flush(d, s);
}

/* Flushes batches whose window closed (all of them when `all`); returns the
 * ms until the next one closes. At HOOKBRIDGE_MAX_PENDING_BYTES, or while
 * consumption is paused (that, or HOOKBRIDGE_MAX_PENDING_EVENTS), every
 * batch goes now too: no company comes while paused, the window is a
 * preference and the bounds are not, and waiting would keep consumption
 * paused for every subscription for up to a window.
 *
 * There is no budget gate between the batches due (there was one, which
 * could not fire but by a few bytes: at the budget every batch goes, above):
 * a batch's events count in hb_held_bytes while it fills, so whatever a
 * window closes on is counted already; sending it adds its body (its events
 * are freed, or, in a batch of several, kept by its delivery until it is
 * sent, and counted there: hb_delivery.c), so flushing takes the count
 * above the budget by at most about what the batches held, and consumption
 * stays paused until their deliveries finish. */
static long long batch_flush_due(hb_dispatcher_t *d, int all) {
    int64_t now = hb_mono_ms();
    long long next = 1000;
    if (!d->open_batches)
        return next;
    if (!all && (hb_held_bytes() >= (size_t)d->cfg->max_pending_bytes ||
                 hb_worker_consumption_paused(d->w))) {
        hb_log(HB_LOG_DEBUG, NULL,
               "%zu batches go before their window closes: consumption paused, or "
               "HOOKBRIDGE_MAX_PENDING_BYTES reached",
               d->open_batches);
        all = 1;
    }
    {
        hb_hash_slot_t *s;
        size_t pos = 0;
        while ((s = hb_hash_each(&d->batches, &pos)) != NULL) {
            batch_t *b = s->val;
            if (batch_refresh(d, b, now) || all)
                batch_flush(d, s); /* removing the slot walked is allowed */
            else if (b->due - now < next)
                next = b->due - now;
        }
    }
    return next;
}

/* Takes the events of revoked partitions out of the batches collecting;
 * returns how many. */
static size_t batch_withdraw(hb_dispatcher_t *d) {
    hb_hash_slot_t *s;
    size_t pos = 0, n = 0;
    if (!d->open_batches)
        return 0;
    while ((s = hb_hash_each(&d->batches, &pos)) != NULL) {
        batch_t *b = s->val;
        size_t bytes = batch_bytes(b), kept = hb_worker_shed(d->w, b->events, b->jobs, b->cnt);
        n += b->cnt - kept;
        b->cnt = kept;
        hb_held_sub(bytes - batch_bytes(b));
        if (!kept) {
            hb_hash_del(&d->batches, s); /* removing the slot walked is allowed */
            d->open_batches--;
            hb_sub_unref(b->sub);
            free(b->events);
            free(b->jobs);
            free(b);
        }
    }
    return n;
}

static size_t fanout_withdraw(hb_dispatcher_t *d);

/* Partitions were revoked: the deliveries of theirs waiting in a chain and
 * the events of theirs waiting in a batch are the new owner's (not sent, not
 * recorded); the chains' tails are asked for again. */
static size_t on_revoke(hb_worker_t *w, void *opaque) {
    hb_dispatcher_t *d = opaque;
    size_t n = hb_chains_withdraw(d->chains, item_revoked, item_abandon, d) + batch_withdraw(d) +
               fanout_withdraw(d);
    hb_chains_forget(d->chains);
    d->revocations = hb_worker_revocations(w);
    return n;
}

static void look_for_verifications(hb_dispatcher_t *d);
static void preview_retry_due(hb_dispatcher_t *d);

static int fanout_run(hb_dispatcher_t *d);
static void fanout_free(hb_dispatcher_t *d, fanout_t *f, int release);

static long long on_pass(hb_worker_t *w, void *opaque) {
    long long next;
    (void)w;
    chains_pass(opaque);
    look_for_verifications(opaque);
    preview_retry_due(opaque);
    next = batch_flush_due(opaque, 0);
    /* a fan-out's rest goes on as deliveries finish (their completions
     * wake the loop; the outbox's acknowledgements may not) */
    if (fanout_run(opaque) && next > 50)
        next = 50;
    return next;
}

static void on_stop(hb_worker_t *w, void *opaque) {
    hb_dispatcher_t *d = opaque;
    (void)w;
    (void)batch_flush_due(opaque, 1); /* what waits for company goes now */
    /* a fan-out's rest is not started: its message, unfinished, is
     * consumed again (its job is not released) */
    while (d->fanout) {
        fanout_t *f = d->fanout;
        d->fanout = f->next;
        hb_log(HB_LOG_INFO, HB_KV("event_id", hb_ev_uuid(f->event)),
               "stopping: %zu matched subscription(s) of an event not started; the event is "
               "consumed again",
               f->cnt - f->done);
        fanout_free(d, f, 0);
    }
    d->fanout_tail = NULL;
}

/* One matched subscription's part of an event: by its content filter, then
 * ordered, batched or sent at once. */
static void fan_one(hb_dispatcher_t *d, hb_sub_t *sub, hb_event_t *event, hb_job_t *job,
                    int32_t partition, int64_t offset, const void *key, size_t key_len) {
    char okey[512];
    if (sub->filter && !hb_sub_wants(sub, hb_ev_json(event))) {
        /* its content filter says no: counted, and said at debug */
        hb_metric_inc(d->m_filtered);
        hb_log(HB_LOG_DEBUG, HB_KV("subscription_id", sub->id, "event_uuid", hb_ev_uuid(event)),
               "event not delivered: the subscription's filter does not match it");
        return;
    }
    hb_metric_inc(d->m_matched);
    if (sub->ordering != HB_ORDER_NONE && sub->batch_max <= 1 &&
        hb_order_key(sub->ordering, hb_ev_json(event), key, key_len, okey, sizeof(okey)))
        ordered_add(d, sub, event, partition, offset, job, okey);
    else if (sub->batch_max > 1)
        batch_add(d, sub, event, job);
    else
        start_delivery(d, sub, &event, &job, 1, NULL, 1);
}

/* The payload budget is spent: the next delivery waits (a fan-out goes on
 * as the deliveries held finish, so that one event matching many
 * subscriptions holds about max_pending_bytes of payloads, not all of theirs
 * at once). */
static int over_budget(const hb_dispatcher_t *d) {
    return hb_held_bytes() >= (size_t)d->cfg->max_pending_bytes;
}

static void fanout_free(hb_dispatcher_t *d, fanout_t *f, int release) {
    for (size_t i = f->done; i < f->cnt; i++)
        hb_sub_unref(f->subs[i]);
    if (release)
        hb_job_release(d->w, f->job);
    hb_ev_unref(f->event);
    free(f->subs);
    free(f->key);
    free(f);
}

/* Starts the rests of fan-outs while the budget lets them; 1 when one is
 * still left. A subscription that changed while its part waited goes as it
 * is now, as a delivery waiting anywhere else does: not at all when it no
 * longer takes the event (unsubscribed from its type, or its filter changed,
 * meanwhile: as one never matched, counted and said at debug as a filter's
 * no is, and as a filling batch does, batch_flush), also when it was
 * deactivated too; else dropped (and logged so, its payload kept for
 * replay_dropped) when it was deactivated or deregistered meanwhile. */
static int fanout_run(hb_dispatcher_t *d) {
    fanout_t *f;
    while ((f = d->fanout) != NULL) {
        while (f->done < f->cnt) {
            hb_sub_t *then = f->subs[f->done], *now, *as;
            const char *why;
            if (over_budget(d))
                return 1;
            f->done++;
            now = hb_index_get(hb_worker_index(d->w), then->id);
            as = now ? now : then;
            why = hb_sub_drop_reason(now, f->matched_ms);
            /* what it no longer takes is left as never matched, also when it
             * was deactivated meanwhile: logged dropped, replay_dropped would
             * send it later */
            if (now && !hb_sub_has_type(now, hb_ev_type(f->event))) {
                hb_metric_inc(d->m_filtered);
                hb_log(HB_LOG_DEBUG,
                       HB_KV("subscription_id", now->id, "event_uuid", hb_ev_uuid(f->event)),
                       "event not delivered: the subscription no longer takes its type");
            } else if (!why) {
                fan_one(d, now, f->event, f->job, f->partition, f->offset, f->key, f->key_len);
            } else if (as->filter && !hb_sub_wants(as, hb_ev_json(f->event))) {
                hb_metric_inc(d->m_filtered);
                hb_log(HB_LOG_DEBUG,
                       HB_KV("subscription_id", as->id, "event_uuid", hb_ev_uuid(f->event)),
                       "event not delivered: the subscription's filter does not match it");
            } else {
                hb_metric_inc(d->m_matched);
                start_delivery(d, as, &f->event, &f->job, 1, why, now != NULL);
            }
            hb_sub_unref(then);
        }
        d->fanout = f->next;
        if (!d->fanout)
            d->fanout_tail = NULL;
        fanout_free(d, f, 1);
    }
    return 0;
}

/* The event is matched and rendered from its JSON text; its jansson value is
 * made (once) only for a subscription with a content filter or an ordering
 * key to compute (hb_ev_json). */
static void on_event(hb_worker_t *w, const rd_kafka_message_t *rkm, hb_event_t *event,
                     void *opaque) {
    hb_dispatcher_t *d = opaque;
    hb_sub_t *const *subs;
    size_t n, i = 0;
    hb_job_t *job;
    const char *uuid = hb_ev_uuid(event);

    /* The schema requires a uuid, and the webhook-id is derived from it: two
     * events without one would share their deliveries' ids (a receiver drops
     * the second as a duplicate, the log has one row for both). */
    if (!uuid || !*uuid) {
        hb_worker_poison(w, rkm, "uuid: empty or holding a NUL character");
        return;
    }
    n = hb_index_match(hb_worker_index(w), hb_ev_type(event), &subs);
    job = hb_worker_track(w, rkm);
    /* an earlier event's rest goes first (not expected: none is taken then) */
    for (; i < n && !d->fanout && !over_budget(d); i++)
        fan_one(d, subs[i], event, job, rkm->partition, rkm->offset, rkm->key, rkm->key_len);
    if (i < n) { /* the rest waits for the budget (fanout_run) */
        fanout_t *f = hb_calloc(1, sizeof(*f));
        f->event = hb_ev_ref(event);
        f->job = job; /* the tracking hold passes to it */
        f->cnt = n - i;
        f->subs = hb_malloc(f->cnt * sizeof(*f->subs));
        for (size_t j = 0; j < f->cnt; j++)
            f->subs[j] = hb_sub_ref(subs[i + j]);
        f->matched_ms = hb_wall_ms();
        f->partition = rkm->partition;
        f->offset = rkm->offset;
        if (rkm->key && rkm->key_len) {
            f->key = hb_malloc(rkm->key_len);
            memcpy(f->key, rkm->key, rkm->key_len);
            f->key_len = rkm->key_len;
        }
        if (d->fanout_tail)
            d->fanout_tail->next = f;
        else
            d->fanout = f;
        d->fanout_tail = f;
        return;
    }
    hb_job_release(w, job);
}

/* A fan-out's rest is left: no message is taken meanwhile. */
static int holding(hb_worker_t *w, void *opaque) {
    hb_dispatcher_t *d = opaque;
    (void)w;
    return d->fanout != NULL;
}

/* Revoked partitions: the rests of their fan-outs are the new owner's (its
 * job released: forgotten, it commits nothing). */
static size_t fanout_withdraw(hb_dispatcher_t *d) {
    fanout_t **p = &d->fanout, *f;
    size_t n = 0;
    d->fanout_tail = NULL;
    while ((f = *p) != NULL) {
        if (hb_job_revoked(f->job)) {
            *p = f->next;
            n += f->cnt - f->done;
            fanout_free(d, f, 1);
        } else {
            d->fanout_tail = f;
            p = &f->next;
        }
    }
    return n;
}

/* ------------------------------------------------- requests not sent now */

/* Previews and verification challenges are claimed requests sent once
 * through the HTTP engine. One the engine did not take now (its endpoint
 * busy: no connection within max_queue_wait, its queue full), or whose
 * subscription this dispatcher cannot load, is given back rather than held
 * to its lease's end; what this dispatcher keeps of it meanwhile (since
 * when, the claim) is a wait_t, in d->preview_waits or d->verify_waits. */

static long long verify_lease_ms(const hb_config_t *cfg);

/* How long a request is tried again each PREVIEW_RETRY_MS while its
 * endpoint stays busy: twelve waits, a minute by default; then a preview is
 * failed, a verification said so and tried at its lease's pace. */
static long long busy_tries_ms(const hb_config_t *cfg) {
    long long wait = cfg->max_queue_wait_ms > 0 ? cfg->max_queue_wait_ms : 5000;
    return 12 * wait;
}

/* Forgets what this dispatcher kept of request id (sent, failed, taken by
 * another, asked again); with now, also the entries not tried for longer
 * than any bound (requests another dispatcher sent meanwhile). */
static void wait_forget(hb_dispatcher_t *d, hb_hash_t *waits, const char *id, int64_t now) {
    hb_hash_slot_t *s = hb_hash_find(waits, id);
    if (s) {
        free(s->val);
        hb_hash_del(waits, s);
    }
    if (now) {
        long long bound = busy_tries_ms(d->cfg);
        size_t pos = 0;
        if (bound < PREVIEW_UNLOADABLE_MS)
            bound = PREVIEW_UNLOADABLE_MS;
        if (bound < verify_lease_ms(d->cfg))
            bound = verify_lease_ms(d->cfg);
        while ((s = hb_hash_each(waits, &pos)) != NULL)
            if (now - ((wait_t *)s->val)->last > 2 * bound) {
                free(s->val);
                hb_hash_del(waits, s);
            }
    }
}

/* What this dispatcher keeps of request id's waiting, tried now; *first: 1
 * when made now (or its reason changed). */
static wait_t *wait_get(hb_dispatcher_t *d, hb_hash_t *waits, const char *id, int unloadable,
                        int64_t now, int *first) {
    wait_t *w = hb_hash_get(waits, id);
    *first = !w || w->unloadable != unloadable;
    if (!*first) {
        w->last = now;
        return w;
    }
    wait_forget(d, waits, id, now);
    w = hb_calloc(1, sizeof(*w));
    w->since = w->last = now;
    w->unloadable = unloadable;
    (void)hb_hash_put(waits, id, w);
    return w;
}

/* ----------------------------------------------------------- verification */

/* A claim or an outcome the database did not take (err): counted, said. */
static void store_refused(hb_dispatcher_t *d, const char *key, const char *id, const char *what,
                          const char *err) {
    hb_worker_db_error(d->w);
    hb_log(HB_LOG_ERROR, HB_KV(key, id), "cannot %s: %s", what, err);
}

static void on_recorded(const char *id, int recorded, const char *err, void *opaque) {
    hb_dispatcher_t *d = opaque;
    if (err) {
        store_refused(d, "subscription_id", id, "record verification", err);
    } else if (!recorded) {
        hb_log(HB_LOG_INFO, HB_KV("subscription_id", id),
               "verification outcome not recorded: out of date (the subscription was "
               "deregistered, the URL changed, verify() asked again while the challenge ran, or "
               "its claim expired); the newer challenge decides");
    }
}

/* The note of a challenge asked again (defer_verification) is written, or
 * out of date (nothing to say: the newer request decides). */
static void on_deferred(const char *id, int recorded, const char *err, void *opaque) {
    hb_dispatcher_t *d = opaque;
    (void)recorded;
    if (err) {
        hb_worker_db_error(d->w);
        hb_log(HB_LOG_WARN, HB_KV("subscription_id", id),
               "cannot note the verification challenge's failure: %s", err);
    }
}

/* A challenge that failed the way a delivery is retried (hb_deliver_classify):
 * no complete answer (a timeout, a connection or TLS error), 408, 429 or a
 * 5xx. That is not the endpoint refusing the challenge (a wrong echo, a
 * 3xx, another 4xx, an address refused by policy are): it may pass in a
 * moment. */
static int verify_temporary(const hb_http_result_t *res) {
    char why[8];
    return !res->not_sent && hb_deliver_classify(res, why, sizeof(why)) == HB_OUTCOME_RETRY;
}

/* The key of sub's temporary answers: its id and URL (a new URL starts
 * afresh). Returns buf. */
static const char *temporary_key(const hb_sub_t *sub, char *buf, size_t size) {
    snprintf(buf, size, "%s %s", sub->id, sub->url);
    return buf;
}

/* Forgets key's temporary answers; with evict_ms > 0, also every entry older
 * than that (a request another dispatcher decided, or deregistered). */
static void temporary_forget(hb_dispatcher_t *d, const char *key, int64_t now, int64_t evict_ms) {
    hb_hash_slot_t *s = hb_hash_find(&d->temporary, key);
    if (s) {
        free(s->val);
        hb_hash_del(&d->temporary, s);
    }
    if (evict_ms > 0) {
        size_t pos = 0;
        while ((s = hb_hash_each(&d->temporary, &pos)) != NULL)
            if (now - *(int64_t *)s->val > evict_ms) {
                free(s->val);
                hb_hash_del(&d->temporary, s);
            }
    }
}

/* Since when key's challenge has been answered "not now" (now: the first). */
static int64_t temporary_since(hb_dispatcher_t *d, const char *key, int64_t now) {
    int64_t *since = hb_hash_get(&d->temporary, key);
    if (since)
        return *since;
    temporary_forget(d, key, now, 2 * d->cfg->verify_try_later_ms);
    since = hb_calloc(1, sizeof(*since));
    *since = now;
    (void)hb_hash_put(&d->temporary, key, since);
    return now;
}

/* A give-back the database did not take: the request is claimed again at
 * its lease's end, as before the give-back was asked. */
static void on_verify_released(const char *id, int released, const char *err, void *opaque) {
    (void)released; /* not: the claim no longer holds (verify() again, a new URL ...) */
    if (err)
        store_refused(opaque, "subscription_id", id,
                      "give back a verification challenge not sent (it is sent again when its "
                      "claim expires)",
                      err);
}

/* Gives the verification of id back, pending, claimable again after_ms from
 * now, note (no secret) in its verification_retrying meanwhile. */
static void verify_give_back(hb_dispatcher_t *d, const char *id, const char *claim,
                             const char *note, long long after_ms) {
    hb_store_t *store = hb_worker_store(d->w);
    char errstr[256];
    if (!store || hb_store_release_verification(store, id, claim, note, after_ms,
                                                on_verify_released, d, errstr, sizeof(errstr)) < 0)
        on_verify_released(id, 0, store ? errstr : "database not connected", d);
}

/* Look for verifications at `at` (monotonic), or sooner if due sooner. */
static void verify_look_at(hb_dispatcher_t *d, int64_t at) {
    if (at < d->next_look)
        d->next_look = at;
}

/* why, the HTTP engine's words for a request it did not send, without their
 * leading "not sent: " (the notes below say it once). */
static const char *not_sent_reason(const char *why) {
    return strncmp(why, "not sent: ", 10) ? why : why + 10;
}

/* The note of a request not sent yet and tried again (why: its words). */
static void tried_again_note(char *note, size_t size, const char *why) {
    snprintf(note, size, "not sent yet (tried again): %s", not_sent_reason(why));
    hb_utf8_scrub(note);
}

/* The note of a request given back through secs of tries (why: the last
 * try's words). Out of open files, the endpoint was never reached: the
 * note said "its endpoint stayed busy", and a preview recorded failed so
 * had its user look at an endpoint that had been sent nothing. */
static void busy_note(char *note, size_t size, hb_http_not_sent_t kind, long long secs,
                      const char *why) {
    if (kind == HB_HTTP_NO_FILES) {
        why = not_sent_reason(why);
        snprintf(note, size,
                 "not sent: the dispatcher stayed out of open files through %lld s of tries "
                 "(the endpoint was not reached): %s",
                 secs, why);
    } else
        snprintf(note, size, "not sent: its endpoint stayed busy through %lld s of tries: %s", secs,
                 why);
}

/* A challenge the HTTP engine did not take (why: its words, no secret): it
 * says nothing of the endpoint, so nothing is recorded. Given back, pending,
 * claimable again in PREVIEW_RETRY_MS, as a preview is (it waited for its
 * lease's end: 16 to 25 s); after busy_tries_ms of tries its
 * verification_retrying says the endpoint stayed busy (busy_note), and it is left
 * pending to the other replicas and tried here at its lease's pace. Said
 * once each. */
static void verify_release(hb_dispatcher_t *d, const char *id, const char *claim,
                           hb_http_not_sent_t kind, const char *why) {
    int64_t now = hb_mono_ms();
    long long busy = busy_tries_ms(d->cfg);
    int first;
    wait_t *w;
    char note[400], pace[32];
    if (!why || !*why)
        why = "refused";
    if (hb_stop_requested) {
        /* stopping: handed over, the other replicas told (they take it
         * now, not at their next look or this replica's hold) */
        snprintf(note, sizeof(note), "not sent yet: %s; its dispatcher stopped: handed over", why);
        hb_utf8_scrub(note);
        verify_give_back(d, id, claim, note, -1);
        return;
    }
    w = wait_get(d, &d->verify_waits, id, 0, now, &first);
    if (now - w->since >= busy) {
        size_t n;
        hb_delay_format(verify_lease_ms(d->cfg), pace, sizeof(pace));
        busy_note(note, sizeof(note), kind, (long long)(now - w->since) / 1000, why);
        n = strlen(note);
        snprintf(note + n, sizeof(note) - n, "; tried again every %s", pace);
        hb_utf8_scrub(note);
        if (!w->said)
            hb_log(HB_LOG_WARN, HB_KV("subscription_id", id), "verification challenge %s", note);
        w->said = 1;
        /* pending for the others (their connections to the host may be
         * free), tried here at the lease's pace */
        w->hold = now + verify_lease_ms(d->cfg);
        verify_give_back(d, id, claim, note, 0);
        verify_look_at(d, w->hold + 100);
        return;
    }
    tried_again_note(note, sizeof(note), why);
    if (first)
        hb_log(HB_LOG_WARN, HB_KV("subscription_id", id),
               "verification challenge not sent: %s; it is tried again every %lld ms for up to "
               "%lld s",
               why, (long long)PREVIEW_RETRY_MS, busy / 1000);
    verify_give_back(d, id, claim, note, PREVIEW_RETRY_MS);
    verify_look_at(d, now + PREVIEW_RETRY_MS + 100);
}

static void on_verify_done(const hb_http_result_t *res, void *opaque) {
    verify_t *v = opaque;
    hb_dispatcher_t *d = v->d;
    hb_store_t *store = hb_worker_store(d->w);
    char reason[256], errstr[256], key[HB_UUID_LEN + 2 + 2048];
    int ok = 0;

    d->verifying--;
    LIST_UNLINK(d->running_verifies, v);
    temporary_key(v->sub, key, sizeof(key));
    if (!res->not_sent)
        wait_forget(d, &d->verify_waits, v->sub->id, 0);
    if (v->handed_over && !hb_worker_stopping(d->w)) {
        /* answered while the give-back was on its way: another dispatcher
         * may have claimed it; it decides (this claim no longer holds) */
        hb_log(HB_LOG_INFO, HB_KV("subscription_id", v->sub->id),
               "verification challenge answered after it was handed over at shutdown; not "
               "recorded here");
    } else if (hb_worker_stopping(d->w)) {
        say_abandoned("subscription_id", v->sub->id, "verification challenge", v->handed_over,
                      v->refused, "");
    } else if (res->not_sent) {
        /* Never sent (its host's queue was full, or it waited too long for a
         * connection to a busy host): that says nothing about the endpoint,
         * so no outcome is recorded; given back, tried again soon. */
        verify_release(d, v->sub->id, v->claim, res->not_sent, res->error);
    } else if (v->sub->active && verify_temporary(res) &&
               hb_mono_ms() - temporary_since(d, key, hb_mono_ms()) < d->cfg->verify_try_later_ms) {
        /* An active subscription's challenge (verify() again, or its new
         * URL) that failed the way a delivery is retried: no outcome, the
         * request stays and is asked again when the claim expires. Recorded,
         * the failure would deactivate the subscription over a network blip,
         * a moment of overload or a deploy. An inactive one's is recorded at
         * once: there is nothing to deactivate, and the operator sees why
         * now. */
        char span[32], got[300];
        hb_delay_format(d->cfg->verify_try_later_ms, span, sizeof(span));
        if (res->http_status > 0 && !res->timed_out && !res->transport_error)
            snprintf(got, sizeof(got), "answered HTTP %d%s", res->http_status,
                     res->http_status == 429 || res->http_status == 503 ? " (try later)" : "");
        else
            snprintf(got, sizeof(got), "failed (%s)", res->error[0] ? res->error : "no response");
        hb_log(HB_LOG_WARN, HB_KV("subscription_id", v->sub->id),
               "verification challenge %s: not recorded, the subscription stays active; it is "
               "sent again when this dispatcher's claim expires, and recorded as failed if it "
               "still fails so after %s (HOOKBRIDGE_VERIFY_TRY_LATER_FOR)",
               got, span);
        /* What it got, for subscription_overview.verification_retrying: the
         * operator waiting for the outcome sees why it does not come. */
        (void)hb_deliver_check_challenge(res, v->challenge, reason, sizeof(reason));
        {
            size_t n = strlen(reason);
            snprintf(reason + n, sizeof(reason) - n,
                     " (asked again; recorded as the failure if it lasts %s)", span);
        }
        if (store &&
            hb_store_record_verification(store, v->sub->id, v->sub->url, v->claim, -1, reason,
                                         on_deferred, d, errstr, sizeof(errstr)) < 0)
            on_deferred(v->sub->id, 0, errstr, d);
    } else {
        ok = hb_deliver_check_challenge(res, v->challenge, reason, sizeof(reason)) == 0;
        if (v->sub->active && verify_temporary(res) && d->cfg->verify_try_later_ms > 0) {
            char span[32];
            size_t n = strlen(reason);
            hb_delay_format(d->cfg->verify_try_later_ms, span, sizeof(span));
            snprintf(reason + n, sizeof(reason) - n, " (%s so for %s)",
                     res->timed_out || res->transport_error ? "failing" : "answered", span);
        }
        temporary_forget(d, key, 0, 0);
        hb_metric_inc(ok ? d->m_verify_ok : d->m_verify_failed);
        hb_log(ok ? HB_LOG_INFO : HB_LOG_WARN, HB_KV("subscription_id", v->sub->id),
               ok ? "endpoint verified" : "endpoint verification failed: %s", ok ? "" : reason);
        if (!store || hb_store_record_verification(store, v->sub->id, v->sub->url, v->claim, ok,
                                                   ok ? NULL : reason, on_recorded, d, errstr,
                                                   sizeof(errstr)) < 0)
            on_recorded(v->sub->id, 0, store ? errstr : "database not connected", d);
    }
    hb_sub_unref(v->sub);
    free(v);
}

/* How long a claim holds: longer than the challenge can take. */
static long long verify_lease_ms(const hb_config_t *cfg) {
    return cfg->max_queue_wait_ms + cfg->verify_timeout_ms + VERIFY_LEASE_MARGIN_MS;
}

/* The store claimed (sub) or not (NULL) the verification of id. */
static void on_claimed(const char *id, hb_sub_t *sub, const char *claim, const char *err,
                       void *opaque) {
    hb_dispatcher_t *d = opaque;
    verify_t *v;

    if (err && claim) {
        /* claimed, but the subscription makes no snapshot here (a secret
         * sealed under a key this dispatcher lacks, or not sealed yet): not
         * the database's fault, nor the endpoint's. Given back at once and
         * left to the other replicas for PREVIEW_UNLOADABLE_MS (a key
         * rollout's replica that has the key sends it); still pending then,
         * verification_retrying says why, and this dispatcher tries again at
         * its lease's pace (it held it to each lease's end, a warning each
         * time, and the user saw only "pending"). Nothing is recorded: no
         * failure, no deactivation. */
        int64_t now = hb_mono_ms();
        int first;
        wait_t *w = wait_get(d, &d->verify_waits, id, 1, now, &first);
        char why[400];
        if (hb_stop_requested || now - w->since < PREVIEW_UNLOADABLE_MS) {
            snprintf(why, sizeof(why),
                     "not sent yet: this dispatcher cannot load the subscription, left to the "
                     "others: %s",
                     err);
            if (first)
                hb_log(HB_LOG_WARN, HB_KV("subscription_id", id),
                       "verification challenge not sent here: %s; left to the other dispatchers "
                       "for %d ms",
                       err, PREVIEW_UNLOADABLE_MS);
            w->hold = w->since + PREVIEW_UNLOADABLE_MS;
        } else {
            char pace[32];
            hb_delay_format(verify_lease_ms(d->cfg), pace, sizeof(pace));
            snprintf(why, sizeof(why),
                     "not sent: no dispatcher could load the subscription in %d s: %s; tried "
                     "again every %s",
                     PREVIEW_UNLOADABLE_MS / 1000, err, pace);
            if (!w->said)
                hb_log(HB_LOG_WARN, HB_KV("subscription_id", id),
                       "verification challenge not sent: %s (no other dispatcher took it in %d "
                       "ms); tried again every %s, said once",
                       err, PREVIEW_UNLOADABLE_MS, pace);
            w->said = 1;
            w->hold = now + verify_lease_ms(d->cfg);
        }
        hb_utf8_scrub(why);
        verify_give_back(d, id, claim, why, 0);
        verify_look_at(d, w->hold + 100);
        return;
    }
    if (err) {
        store_refused(d, "subscription_id", id, "claim verification", err);
        return;
    }
    if (!sub)
        return; /* another replica took it, or nothing pending */
    if (hb_stop_requested) {
        /* claimed as the stop began: the others take it now rather than
         * this replica's drain wait for it (or its lease's end, when the
         * drain ends first) */
        verify_give_back(d, id, claim, "not sent yet: its dispatcher was stopping; handed over",
                         -1);
        hb_sub_unref(sub);
        return;
    }
    v = hb_calloc(1, sizeof(*v));
    v->d = d;
    v->sub = sub;
    snprintf(v->claim, sizeof(v->claim), "%s", claim);
    if (hb_uuid_random(v->challenge) < 0) {
        hb_error("cannot generate a verification challenge");
        hb_sub_unref(sub);
        free(v);
        return;
    }
    /* said at the first try; a try again after one not sent is not news */
    hb_log(hb_hash_get(&d->verify_waits, sub->id) ? HB_LOG_DEBUG : HB_LOG_INFO,
           HB_KV("subscription_id", sub->id), "sending verification challenge");
    d->verifying++;
    LIST_LINK(d->running_verifies, v);
    hb_deliver_verify_send(hb_worker_http(d->w), sub, v->challenge, d->cfg->verify_timeout_ms,
                           on_verify_done, v);
}

static void run_verification(hb_dispatcher_t *d, const char *id) {
    hb_store_t *store = hb_worker_store(d->w);
    wait_t *w;
    char errstr[256];

    if (!store || hb_stop_requested) /* stopping: left to the other replicas */
        return;
    w = hb_hash_get(&d->verify_waits, id);
    if (w && w->hold && hb_mono_ms() < w->hold)
        return; /* left to the dispatchers that can load it, for now */
    if (hb_store_claim_verification(store, id, verify_lease_ms(d->cfg), on_claimed, d, errstr,
                                    sizeof(errstr)) < 0)
        on_claimed(id, NULL, NULL, errstr, d);
}

/* A new verification request (verify(), or the URL changed): what this
 * dispatcher remembers of the subscription's earlier "try later" answers
 * is of an older request (decided meanwhile by another replica, or for a
 * URL since left and come back to), so the new request's first such answer
 * starts its own HOOKBRIDGE_VERIFY_TRY_LATER_FOR. */
static void on_verify(hb_worker_t *w, const char *id, void *opaque) {
    hb_dispatcher_t *d = opaque;
    hb_hash_slot_t *s;
    size_t pos = 0, n = strlen(id);
    (void)w;
    while ((s = hb_hash_each(&d->temporary, &pos)) != NULL)
        if (!strncmp(s->key, id, n) && s->key[n] == ' ') {
            free(s->val);
            hb_hash_del(&d->temporary, s); /* removing the slot walked is allowed */
        }
    wait_forget(d, &d->verify_waits, id, 0); /* a new request: its tries start afresh */
    run_verification(opaque, id);
}

/* The answer of a look (look_for_verifications): run(d, id) for each. A
 * failing look is said once, and again when it works (the database's own
 * lines say why it is away); the looks in between are debug. */
static void pending_run(hb_dispatcher_t *d, char **ids, int cnt, const char *err, const char *what,
                        void (*run)(hb_dispatcher_t *, const char *)) {
    int *failing = &d->look_failing[run == run_verification ? 0 : 1];
    if (err) {
        hb_log(*failing ? HB_LOG_DEBUG : HB_LOG_ERROR, NULL, "cannot list pending %s: %s%s", what,
               err, *failing ? "" : " (said again when the look works)");
        *failing = 1;
        return;
    }
    if (*failing)
        hb_info("pending %s listed again", what);
    *failing = 0;
    for (int i = 0; i < cnt; i++)
        run(d, ids[i]);
}

static void on_pending(char **ids, int cnt, const char *err, void *opaque) {
    hb_dispatcher_t *d = opaque;
    d->looking = 0;
    pending_run(d, ids, cnt, err, "verifications", run_verification);
}

/* ---------------------------------------------------------------- previews */

static void look_for_previews(hb_dispatcher_t *d);

/* Previews this dispatcher sends at once (claims asked included): a quarter
 * of one host's connections, so that a loop of previews to one endpoint
 * leaves its deliveries and challenges the rest, and its queue is not filled
 * past max_queue_wait (a preview not sent is given back, preview_release).
 * The others stay pending, claimed as these finish. */
static size_t preview_slots(const hb_config_t *cfg) {
    return cfg->max_host_connections >= 8 ? (size_t)(cfg->max_host_connections / 4) : 1;
}

/* Look for previews at `at` (monotonic), or sooner if one is due sooner. */
static void preview_look_at(hb_dispatcher_t *d, int64_t at) {
    if (!d->preview_retry_at || at < d->preview_retry_at)
        d->preview_retry_at = at;
}

/* A preview's slot is free again: the ones left waiting are looked for. */
static void preview_slot_freed(hb_dispatcher_t *d) {
    if (d->preview_backlog && !hb_stop_requested)
        look_for_previews(d);
}

static void on_preview_recorded(const char *id, int recorded, const char *err, void *opaque) {
    hb_dispatcher_t *d = opaque;
    if (err)
        store_refused(d, "preview_id", id,
                      "record preview (it is sent again when its claim expires)", err);
    else if (!recorded)
        hb_log(HB_LOG_INFO, HB_KV("preview_id", id),
               "preview outcome not recorded: its claim expired and another dispatcher took it");
}

/* Hands a preview's outcome to the store (a refusal is said as one). */
static void preview_record(hb_dispatcher_t *d, const char *id, const char *claim,
                           const hb_preview_outcome_t *o) {
    hb_store_t *store = hb_worker_store(d->w);
    char errstr[256];
    if (!store || hb_store_record_preview(store, id, claim, o, on_preview_recorded, d, errstr,
                                          sizeof(errstr)) < 0)
        on_preview_recorded(id, 0, store ? errstr : "database not connected", d);
}

/* A give-back the database did not take (unreachable): this dispatcher
 * still holds the claim, and gives it back again once the database answers
 * (preview_redo_due), not leaving the preview to its lease's end (75 s by
 * default, for a blip of a second). */
static void on_preview_released(const char *id, int released, const char *err, void *opaque) {
    hb_dispatcher_t *d = opaque;
    wait_t *pw = err ? hb_hash_get(&d->preview_waits, id) : NULL;
    if (err)
        store_refused(d, "preview_id", id,
                      pw && pw->claim[0]
                          ? "give back a preview not sent (given back again once the "
                            "database answers)"
                          : "give back a preview not sent (it is sent again when "
                            "its claim expires)",
                      err);
    if (pw && pw->claim[0] && !pw->give_back) {
        pw->give_back = 1;
        if (!d->preview_redo_at)
            d->preview_redo_at = hb_mono_ms() + PREVIEW_RETRY_MS;
    }
    (void)released; /* not: its claim expired, another dispatcher has it */
}

/* Gives preview id back, pending, claimable again after_ms from now, note
 * (no secret) in its error meanwhile. -1 when the store did not take it
 * (said; the preview is claimed again at its lease's end). */
static int preview_give_back(hb_dispatcher_t *d, const char *id, const char *claim,
                             const char *note, long long after_ms) {
    hb_store_t *store = hb_worker_store(d->w);
    char errstr[256];
    if (!store || hb_store_release_preview(store, id, claim, note, after_ms, on_preview_released, d,
                                           errstr, sizeof(errstr)) < 0) {
        on_preview_released(id, 0, store ? errstr : "database not connected", d);
        return -1;
    }
    return 0;
}

/* A preview the HTTP engine did not take (why: its words, no secret): given
 * back, pending, claimable again in PREVIEW_RETRY_MS (at once when this
 * dispatcher stops: another replica takes it), looked for then. Its slot
 * is free meanwhile, so previews never hold more than preview_slots. Said
 * once; an endpoint busy for preview_busy_ms of tries fails it, saying so
 * (tried each second for ever, it stayed pending, a warning a second). */
static void preview_release(hb_dispatcher_t *d, const char *id, const char *claim,
                            hb_http_not_sent_t kind, const char *why) {
    int64_t now = hb_mono_ms();
    /* stopping: handed over, the other replicas told (they take it now) */
    long long after = hb_stop_requested ? -1 : PREVIEW_RETRY_MS;
    long long busy = busy_tries_ms(d->cfg);
    int first = 1;
    wait_t *pw = NULL;
    char note[400];
    if (!why || !*why)
        why = "refused";
    if (!hb_stop_requested)
        pw = wait_get(d, &d->preview_waits, id, 0, now, &first);
    if (pw && now - pw->since >= busy) {
        hb_preview_outcome_t o = {.error = note};
        busy_note(note, sizeof(note), kind, (long long)(now - pw->since) / 1000, why);
        hb_utf8_scrub(note);
        hb_log(HB_LOG_WARN, HB_KV("preview_id", id), "preview failed: %s", note);
        wait_forget(d, &d->preview_waits, id, 0);
        preview_record(d, id, claim, &o);
        return;
    }
    tried_again_note(note, sizeof(note), why);
    if (pw)
        snprintf(pw->claim, sizeof(pw->claim), "%s", claim);
    if (first)
        hb_log(HB_LOG_WARN, HB_KV("preview_id", id),
               "preview not sent: %s; it is tried again every %lld ms for up to %lld s", why,
               (long long)PREVIEW_RETRY_MS, busy / 1000);
    if (preview_give_back(d, id, claim, note, after) < 0)
        return;
    d->preview_backlog = 1;
    preview_look_at(d, now + after + 100);
}

static void preview_free(preview_t *pv) {
    hb_sub_unref(pv->sub);
    free(pv->p.body);
    free(pv);
}

static void on_preview_done(const hb_http_result_t *res, void *opaque) {
    preview_t *pv = opaque;
    hb_dispatcher_t *d = pv->d;
    char reason[256];
    char *response = res->body_len ? hb_snippet_redacted(res->body, pv->sub->auth_value) : NULL;
    hb_preview_outcome_t o = {
        .http_status = res->timed_out || res->transport_error ? 0 : res->http_status,
        .error = reason,
        .duration_ms = res->duration_ms,
        .content_type = pv->p.content_type,
        .body = pv->p.body,
    };

    d->previewing--;
    LIST_UNLINK(d->running_previews, pv);
    preview_slot_freed(d);
    if (!res->not_sent)
        wait_forget(d, &d->preview_waits, pv->id, 0);
    if (hb_worker_stopping(d->w) || pv->handed_over) {
        /* aborted at the drain's deadline: says nothing of the endpoint
         * (it was recorded failed, "aborted at shutdown"); or answered
         * after it was handed over: the claim no longer holds */
        if (!hb_worker_stopping(d->w))
            hb_log(HB_LOG_WARN, HB_KV("preview_id", pv->id),
                   "preview answered after it was handed over at shutdown; not recorded here "
                   "(another dispatcher sends it again, the same webhook-id)");
        else
            say_abandoned("preview_id", pv->id, "preview", pv->handed_over, pv->refused,
                          " (the same webhook-id)");
        free(response); /* redacted from an answer that came after the hand-over */
        preview_free(pv);
        return;
    }
    if (res->body_len && !response)
        response = hb_strdup(res->body);
    /* text columns, as the delivery log's: an endpoint's bytes need not be
     * UTF-8, and a row the database refuses would leave the preview to be
     * sent again at each lease's end */
    if (response)
        hb_utf8_scrub(response);
    o.response = response;
    if (res->not_sent) { /* says nothing of the endpoint: given back, tried again soon */
        preview_release(d, pv->id, pv->claim, res->not_sent, res->error);
    } else {
        hb_outcome_t out = hb_deliver_classify(res, reason, sizeof(reason));
        hb_utf8_scrub(reason);
        hb_log(out == HB_OUTCOME_DELIVERED ? HB_LOG_INFO : HB_LOG_WARN,
               HB_KV("preview_id", pv->id, "subscription_id", pv->sub->id), "preview sent: %s",
               out == HB_OUTCOME_DELIVERED ? "delivered" : reason);
        preview_record(d, pv->id, pv->claim, &o);
    }
    free(response);
    preview_free(pv);
}

/* The sample event as a consumed one of its type is: written in the
 * schema's Avro and read back by the codec, as the consumer's decoder reads
 * a message, so its members (and their order: the schema's fields') are
 * those a real delivery of the type carries. */
static hb_event_t *preview_event(hb_dispatcher_t *d, json_t *ev, char *errstr, size_t errstr_size) {
    void *buf = NULL;
    size_t len = 0;
    json_t *json = NULL;
    hb_jdoc_t doc = {0};
    hb_event_t *out = NULL;
    if (!d->codec)
        d->codec = hb_codec_new(hb_schema_identity_event, errstr, errstr_size);
    if (d->codec && hb_codec_encode(d->codec, ev, &buf, &len, errstr, errstr_size) == 0 &&
        hb_codec_decode_doc(d->codec, buf, len, &doc, &json, errstr, errstr_size) == 0) {
        out = hb_ev_new(&doc, json); /* takes json */
        json = NULL;
        if (!out)
            hb_seterr(errstr, errstr_size, "the sample event is not a JSON object");
    }
    json_decref(json);
    hb_jdoc_free(&doc);
    free(buf);
    return out;
}

/* One sample event of type, as a real one (normalised: a uuid, version and
 * severity; through Avro: preview_event), rendered for sub under the
 * preview's id. */
static int preview_render(hb_dispatcher_t *d, preview_t *pv, const char *type, char *errstr,
                          size_t errstr_size) {
    hb_gen_t g;
    json_t *ev;
    hb_event_t *e = NULL;
    int rc;
    hb_gen_init(&g, (uint64_t)hb_wall_ms() ^ ((uint64_t)(uintptr_t)pv << 16));
    ev = hb_gen_event_of(&g, type);
    hb_gen_free(&g);
    rc = hb_event_normalize(ev, 1, errstr, errstr_size);
    if (rc == 0 && !(e = preview_event(d, ev, errstr, errstr_size)))
        rc = -1;
    if (rc == 0)
        rc = hb_deliver_render(pv->sub, &e, 1, pv->id, d->cfg->source, hb_wall_ms(), &pv->p, errstr,
                               errstr_size);
    hb_ev_unref(e);
    json_decref(ev);
    return rc;
}

static void on_preview_claimed(const char *id, hb_sub_t *sub, const char *type, const char *claim,
                               const char *err, void *opaque) {
    hb_dispatcher_t *d = opaque;
    preview_t *pv;
    char errstr[256];

    d->preview_claims--;
    if (!sub) /* nothing to send: its slot is free */
        preview_slot_freed(d);
    if (err && claim) {
        /* claimed, but the subscription makes no snapshot here (a secret
         * sealed under a key this dispatcher lacks, or not sealed): not the
         * database's fault. During a key rollout another replica may have
         * the key: given back at once and left to the others for
         * PREVIEW_UNLOADABLE_MS (failed here at once, a preview was lost
         * that the next replica would have sent); still pending then, no
         * replica could, and the caller is told why (claimed again at each
         * lease's end, it stayed pending 7 days). */
        int64_t now = hb_mono_ms();
        int first;
        wait_t *pw = wait_get(d, &d->preview_waits, id, 1, now, &first);
        char why[400];
        hb_preview_outcome_t o = {.error = why};
        if (hb_stop_requested || now - pw->since < PREVIEW_UNLOADABLE_MS) {
            snprintf(why, sizeof(why),
                     "not sent yet: this dispatcher cannot load the subscription, left to the "
                     "others: %s",
                     err);
            snprintf(pw->claim, sizeof(pw->claim), "%s", claim);
            if (first)
                hb_log(HB_LOG_WARN, HB_KV("preview_id", id),
                       "preview not sent here: %s; left to the other dispatchers for %d ms", err,
                       PREVIEW_UNLOADABLE_MS);
            if (preview_give_back(d, id, claim, why, 0) == 0)
                preview_look_at(d, pw->since + PREVIEW_UNLOADABLE_MS + 100);
            return;
        }
        snprintf(why, sizeof(why), "not sent: this dispatcher cannot load the subscription: %s",
                 err);
        hb_log(HB_LOG_WARN, HB_KV("preview_id", id),
               "preview not sent: %s (no other dispatcher took it in %d ms)", err,
               PREVIEW_UNLOADABLE_MS);
        wait_forget(d, &d->preview_waits, id, 0);
        preview_record(d, id, claim, &o);
        return;
    }
    if (err) {
        store_refused(d, "preview_id", id, "claim preview", err);
        return;
    }
    if (!sub)
        return;              /* another replica took it, it was sent, or cancelled */
    if (hb_stop_requested) { /* claimed as the stop began: handed over, as a challenge is */
        (void)preview_give_back(d, id, claim,
                                "not sent yet: its dispatcher was stopping; handed over", -1);
        hb_sub_unref(sub);
        return;
    }
    pv = hb_calloc(1, sizeof(*pv));
    pv->d = d;
    pv->sub = sub;
    snprintf(pv->id, sizeof(pv->id), "%s", id);
    snprintf(pv->claim, sizeof(pv->claim), "%s", claim);
    if (preview_render(d, pv, type, errstr, sizeof(errstr)) < 0) {
        /* not expected (a catalogue's type, a well-formed event): recorded */
        hb_preview_outcome_t o = {.error = errstr};
        hb_log(HB_LOG_ERROR, HB_KV("preview_id", id), "preview not rendered: %s", errstr);
        preview_record(d, id, pv->claim, &o);
        preview_free(pv);
        preview_slot_freed(d);
        return;
    }
    /* said at the first try; a try again after one not sent is not news */
    hb_log(hb_hash_get(&d->preview_waits, id) ? HB_LOG_DEBUG : HB_LOG_INFO,
           HB_KV("preview_id", id, "subscription_id", sub->id, "event_type", type),
           "sending preview");
    d->previewing++;
    LIST_LINK(d->running_previews, pv);
    hb_deliver_send_borrowed(hb_worker_http(d->w), sub, pv->id, &pv->p, d->cfg->request_timeout_ms,
                             (size_t)d->cfg->response_snippet_bytes, on_preview_done, pv);
}

/* Longer than a preview can take: the subscription's timeout_ms is at most
 * 60 s. */
static long long preview_lease_ms(const hb_config_t *cfg) {
    long long timeout = cfg->request_timeout_ms > 60000 ? cfg->request_timeout_ms : 60000;
    return cfg->max_queue_wait_ms + timeout + VERIFY_LEASE_MARGIN_MS;
}

static void run_preview(hb_dispatcher_t *d, const char *id) {
    hb_store_t *store = hb_worker_store(d->w);
    wait_t *pw;
    char errstr[256];
    /* stopping: left to the other replicas */
    if (!store || hb_stop_requested)
        return;
    pw = hb_hash_get(&d->preview_waits, id);
    if (pw && pw->unloadable && hb_mono_ms() - pw->since < PREVIEW_UNLOADABLE_MS)
        return; /* left to the dispatchers that can load it, for now */
    if (d->preview_claims + d->previewing >= preview_slots(d->cfg)) {
        d->preview_backlog = 1; /* claimed when a slot frees */
        return;
    }
    if (hb_store_claim_preview(store, id, preview_lease_ms(d->cfg), on_preview_claimed, d, errstr,
                               sizeof(errstr)) < 0)
        hb_log(HB_LOG_WARN, HB_KV("preview_id", id), "preview ignored: %s", errstr);
    else
        d->preview_claims++;
}

static void on_preview(hb_worker_t *w, const char *id, void *opaque) {
    (void)w;
    run_preview(opaque, id);
}

static void on_pending_previews(char **ids, int cnt, const char *err, void *opaque) {
    hb_dispatcher_t *d = opaque;
    d->looking_preview = 0;
    pending_run(d, ids, cnt, err, "previews", run_preview);
}

/* The pending previews nobody holds, oldest first, for the free slots (the
 * look answers while others are open: backlog set again). */
static void look_for_previews(hb_dispatcher_t *d) {
    hb_store_t *store = hb_worker_store(d->w);
    if (!store || d->looking_preview)
        return;
    d->looking_preview = 1;
    d->preview_backlog = 0;
    hb_store_pending_previews(store, on_pending_previews, d);
}

/* The give-backs the database did not take, again once it answers (a
 * second apart while it does not). */
static void preview_redo_due(hb_dispatcher_t *d) {
    hb_store_t *store = hb_worker_store(d->w);
    hb_hash_slot_t *s;
    size_t pos = 0;
    int64_t now = hb_mono_ms();
    if (!d->preview_redo_at || now < d->preview_redo_at)
        return;
    d->preview_redo_at = 0;
    if (!store || !hb_store_connected(store)) {
        d->preview_redo_at = now + PREVIEW_RETRY_MS;
        return;
    }
    while ((s = hb_hash_each(&d->preview_waits, &pos)) != NULL) {
        wait_t *pw = s->val;
        if (!pw->give_back)
            continue;
        pw->give_back = 0;
        if (preview_give_back(d, s->key, pw->claim,
                              "not sent yet (tried again): given back once the database answered",
                              0) == 0) {
            d->preview_backlog = 1;
            preview_look_at(d, now + 100);
        }
    }
}

/* A preview given back not sent is claimable again: looked for. */
static void preview_retry_due(hb_dispatcher_t *d) {
    preview_redo_due(d);
    if (!d->preview_retry_at || hb_mono_ms() < d->preview_retry_at || d->looking_preview)
        return;
    d->preview_retry_at = 0;
    look_for_previews(d);
}

/* Requests made while no dispatcher was connected, or whose claim's lease
 * expired (the replica that took them died), verifications and previews:
 * at start-up, on reconnects and every VERIFY_LOOK_MS. */
static void look_for_verifications(hb_dispatcher_t *d) {
    hb_store_t *store = hb_worker_store(d->w);
    int64_t now = hb_mono_ms();
    if (!store || d->looking || now < d->next_look)
        return;
    d->looking = 1;
    d->next_look = now + VERIFY_LOOK_MS;
    hb_store_pending_verifications(store, on_pending, d);
    look_for_previews(d);
}

static void on_index_loaded(hb_worker_t *w, void *opaque) {
    hb_dispatcher_t *d = opaque;
    (void)w;
    d->next_look = 0; /* now */
    look_for_verifications(d);
}

/* The drain waits for running challenges and previews, and records their
 * outcome. */
static size_t busy(hb_worker_t *w, void *opaque) {
    hb_dispatcher_t *d = opaque;
    (void)w;
    return d->verifying + d->previewing;
}

/* A hand-over the database took, or did not (unreachable): then the
 * request waits for its lease's end, as before. The abort of one still
 * running says which (or that no answer came). */
static void on_handed_over(const char *id, int released, const char *err, void *opaque) {
    hb_dispatcher_t *d = opaque;
    int state = err ? HAND_OVER_NONE : HAND_OVER_TAKEN, running = 0;
    (void)released; /* not: the claim no longer holds (decided, asked again) */
    for (verify_t *v = d->running_verifies; v; v = v->next)
        if (!strcmp(v->sub->id, id)) {
            v->handed_over = state;
            snprintf(v->refused, sizeof(v->refused), "%s", err ? err : "");
            running = 1;
        }
    for (preview_t *pv = d->running_previews; pv; pv = pv->next)
        if (!strcmp(pv->id, id)) {
            pv->handed_over = state;
            snprintf(pv->refused, sizeof(pv->refused), "%s", err ? err : "");
            running = 1;
        }
    if (!err)
        return;
    if (running) { /* its abort says why, in its one line */
        hb_worker_db_error(d->w);
        return;
    }
    /* answered meanwhile, and not recorded (its claim was being given up) */
    store_refused(d, "request_id", id,
                  "hand over a challenge or preview at shutdown (it is sent again when its "
                  "claim expires)",
                  err);
}

/* The drain's deadline passed with challenges and previews still running
 * (their endpoint slower than HOOKBRIDGE_SHUTDOWN_TIMEOUT): their claims are
 * given back now, the other dispatchers told, so one of them sends each
 * within a second rather than at this claim's lease's end (20 s a
 * challenge, 75 s a preview, by default). The request running here is
 * aborted just after: the endpoint may have seen it (a challenge twice,
 * each with its own value; a preview twice, with the same webhook-id). */
static void on_deadline(hb_worker_t *w, void *opaque) {
    hb_dispatcher_t *d = opaque;
    hb_store_t *store = hb_worker_store(w);
    char errstr[256];
    static const char note[] = "not answered before its dispatcher stopped: handed over";
    for (verify_t *v = d->running_verifies; v; v = v->next) {
        v->handed_over = HAND_OVER_ASKED;
        if (!store || hb_store_release_verification(store, v->sub->id, v->claim, note, -1,
                                                    on_handed_over, d, errstr, sizeof(errstr)) < 0)
            on_handed_over(v->sub->id, 0, store ? errstr : "database not connected", d);
    }
    for (preview_t *pv = d->running_previews; pv; pv = pv->next) {
        pv->handed_over = HAND_OVER_ASKED;
        if (!store || hb_store_release_preview(store, pv->id, pv->claim, note, -1, on_handed_over,
                                               d, errstr, sizeof(errstr)) < 0)
            on_handed_over(pv->id, 0, store ? errstr : "database not connected", d);
    }
}

static const hb_worker_hooks_t hooks = {
    .on_deadline = on_deadline,
    .on_event = on_event,
    .on_pass = on_pass,
    .on_stop = on_stop,
    .on_revoke = on_revoke,
    .on_verify = on_verify,
    .on_preview = on_preview,
    .on_index_loaded = on_index_loaded,
    .busy = busy,
    .holding = holding,
};

/* ------------------------------------------------------------ build/free */

hb_dispatcher_t *hb_dispatcher_new(const hb_config_t *cfg, char *errstr, size_t errstr_size) {
    hb_dispatcher_t *d = hb_calloc(1, sizeof(*d));
    const char *topics[1] = {cfg->events_topic};
    hb_worker_spec_t spec = {
        .name = "dispatcher",
        .schema = hb_schema_identity_event,
        .topics = topics,
        .topics_cnt = 1,
        .hooks = &hooks,
        .opaque = d,
        .verifies = 1,
        .syncs = 1,
    };
    d->cfg = cfg;
    d->chains_full = (size_t)cfg->max_ordered_keys;
    d->chains = hb_chains_new();
    d->w = hb_worker_new(cfg, &spec, errstr, errstr_size);
    if (!d->w) {
        hb_chains_free(d->chains, NULL);
        free(d);
        return NULL;
    }
    d->m_matched = hb_metrics_counter("hookbridge_deliveries_created_total", NULL,
                                      "Deliveries created by matching events to subscriptions.");
    d->m_filtered = hb_metrics_counter(
        "hookbridge_events_filtered_total", NULL,
        "Events of a subscription's types not delivered to it because its content filter does "
        "not match them (also when a changed filter or event types leave a filling batch, or the "
        "rest of a fan-out waiting for the payload budget, or a delivery waiting for its rate "
        "limit or a connection).");
    hb_worker_set_filtered(d->w, d->m_filtered);
    d->m_verify_ok = hb_metrics_counter("hookbridge_verifications_total", "result=\"verified\"",
                                        "Verification challenges by result.");
    d->m_verify_failed = hb_metrics_counter("hookbridge_verifications_total", "result=\"failed\"",
                                            "Verification challenges by result.");
    d->m_ordered_keys =
        hb_metrics_gauge("hookbridge_ordered_keys", NULL,
                         "Keys of ordered subscriptions whose end this dispatcher keeps in memory "
                         "(HOOKBRIDGE_MAX_ORDERED_KEYS).");
    return d;
}

int hb_dispatcher_run(hb_dispatcher_t *d) {
    return hb_worker_run(d->w);
}

void hb_dispatcher_free(hb_dispatcher_t *d) {
    if (!d)
        return;
    {
        hb_hash_slot_t *s;
        size_t pos = 0;
        while ((s = hb_hash_each(&d->batches, &pos)) != NULL) { /* never started: */
            batch_t *b = s->val;                                /* their events come again */
            hb_held_sub(batch_bytes(b));
            for (size_t j = 0; j < b->cnt; j++)
                hb_ev_unref(b->events[j]);
            hb_sub_unref(b->sub);
            free(b->events);
            free(b->jobs);
            free(b);
        }
        hb_hash_clear(&d->batches);
        pos = 0;
        while ((s = hb_hash_each(&d->temporary, &pos)) != NULL)
            free(s->val);
        hb_hash_clear(&d->temporary);
        pos = 0;
        while ((s = hb_hash_each(&d->preview_waits, &pos)) != NULL)
            free(s->val);
        hb_hash_clear(&d->preview_waits);
        pos = 0;
        while ((s = hb_hash_each(&d->verify_waits, &pos)) != NULL)
            free(s->val);
        hb_hash_clear(&d->verify_waits);
    }
    while (d->fanout) { /* never started: the event comes again */
        fanout_t *f = d->fanout;
        d->fanout = f->next;
        fanout_free(d, f, 0);
    }
    hb_worker_free(d->w); /* heads aborted now still tell their chains */
    hb_codec_free(d->codec);
    hb_chains_free(d->chains, chain_item_free);
    free(d->settled);
    free(d);
}
