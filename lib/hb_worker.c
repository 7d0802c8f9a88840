/* The consuming service shared by the dispatcher and the retrier (see hb_worker.h). */
#include "hb_worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hb_consumer.h"
#include "hb_decoder.h"
#include "hb_httpd.h"
#include "hb_kafka.h"
#include "hb_log.h"
#include "hb_delivery.h"
#include "hb_offsets.h"
#include "hb_outbox.h"
#include "hb_pg.h"
#include "hb_signal.h"

#define POLL_BATCH 1000  /* messages taken from Kafka per loop pass */
#define LOOP_WAIT_MS 100 /* longest sleep of one pass */
#define DLOG_MAX_QUEUE 200000
#define STALL_MS 1000      /* a host with requests running and none finished this long is stalled */
#define STORE_STOP_MS 2000 /* at a stop, for the store's statements under way (cancelled) */
/* The delivery log waiting this long for the database: not ready, said once */
#define DB_UNANSWERED_MS 10000

struct hb_worker_s {
    const hb_config_t *cfg;
    hb_worker_spec_t spec;
    char **topics; /* owned copies of spec.topics */
    int topics_cnt;
    char client_id[64];
    const char *group;
    hb_decoder_t *decoder; /* consumed messages: every writer schema, the registry */
    hb_http_t *http;
    hb_httpd_t *httpd;
    hb_store_t *store;
    int unsynced_said;       /* events matched without their sync's answer: said once */
    hb_metric_t *m_unsynced; /* ... and counted (spec.syncs) */
    hb_index_t *index;
    hb_offsets_t *offsets;
    hb_outbox_t *outbox;         /* jobs, gates, the producer */
    hb_deliveries_t *deliveries; /* sending and routing, the circuit breaker */
    hb_consumer_t *consumer;     /* group, offsets, deferral, lag */
    /* Do the brokers answer, before the consumer (and its own probe) starts?
     * The consumer waits for the database; with the database out from the
     * start, /readyz would otherwise never hear of the brokers. A probe on
     * the outbox's producer, stopped once the consumer runs. */
    hb_kafka_reach_t early_brokers;
    int wake[2]; /* Kafka queues and signals write here */
    int index_loaded;
    int schema_missing; /* the last load found no (or an older) hookbridge schema */
    int deferred;       /* the handler put the message it was given back (hb_worker_defer) */
    unsigned loads;     /* full loads of the subscriptions the store announced */
    int db_unanswered;  /* the delivery log waits past DB_UNANSWERED_MS (said once) */
    int64_t next_store_attempt;
    char store_why[512]; /* why the last start of the store failed ("": it did not) */

    hb_metric_t *m_held_bytes; /* hb_held_bytes */
    hb_metric_t *m_consumed, *m_poison, *m_in_flight, *m_subs, *m_db_errors, *m_kafka_errors;
    hb_metric_t *m_dlog_stalled;  /* seconds the delivery log has not written */
    hb_metric_t *m_dlog_rejected; /* delivery-log rows the database rejected as invalid */
    hb_consumer_metrics_t cm;     /* handed to hb_consumer */
    hb_delivery_metrics_t dm;     /* handed to hb_deliveries */
};

/* ----------------------------------------------------------------- jobs */

hb_job_t *hb_worker_track(hb_worker_t *w, const rd_kafka_message_t *rkm) {
    return hb_outbox_track(w->outbox, rkm);
}

void hb_job_release(hb_worker_t *w, hb_job_t *j) {
    hb_outbox_release(w->outbox, j);
}

void hb_worker_defer(hb_worker_t *w, const rd_kafka_message_t *rkm, int64_t due_ms) {
    w->deferred = 1;
    hb_consumer_defer(w->consumer, rkm, due_ms);
}

void hb_worker_produce(hb_worker_t *w, const char *topic, const char *key, const void *val,
                       size_t len, hb_job_t *job) {
    hb_outbox_produce(w->outbox, topic, key, val, len, job);
}

/* ------------------------------------------------------------ deliveries */

void hb_worker_render(hb_worker_t *w, hb_sub_t *sub, hb_event_t *const *events, size_t n,
                      const char *id, const char *event_ids, hb_job_t *const *jobs) {
    hb_delivery_render(w->deliveries, sub, events, n, id, event_ids, jobs);
}

size_t hb_worker_shed(hb_worker_t *w, hb_event_t **events, hb_job_t **jobs, size_t n) {
    return hb_deliveries_shed(w->deliveries, events, jobs, n);
}

hb_delivery_t *hb_worker_make(hb_worker_t *w, hb_sub_t *sub, hb_event_t *const *events, size_t n,
                              const char *id, const char *event_ids, hb_job_t *const *jobs) {
    return hb_delivery_make(w->deliveries, sub, events, n, id, event_ids, jobs);
}

void hb_worker_wait(hb_worker_t *w, hb_delivery_t *dl, const char *after_id, int quiet) {
    hb_delivery_wait(w->deliveries, dl, after_id, quiet);
}

void hb_worker_deliver(hb_worker_t *w, hb_delivery_t *dl) {
    hb_delivery_send(w->deliveries, dl);
}

int hb_worker_produce_retry(hb_worker_t *w, const char *topic, const hb_retry_msg_t *m,
                            char *errstr, size_t errstr_size) {
    return hb_deliveries_produce_retry(w->deliveries, topic, m, errstr, errstr_size);
}

void hb_worker_skip(hb_worker_t *w, hb_delivery_t *dl, hb_outcome_t outcome, const char *reason) {
    hb_delivery_skip(w->deliveries, dl, outcome, reason);
}

void hb_worker_abandon(hb_worker_t *w, hb_delivery_t *dl) {
    hb_delivery_abandon(w->deliveries, dl);
}

/* The consumer forgot revoked partitions: what is held for them goes. */
static size_t on_revoke(void *opaque) {
    hb_worker_t *w = opaque;
    size_t n = hb_deliveries_withdraw(w->deliveries);
    if (w->spec.hooks->on_revoke)
        n += w->spec.hooks->on_revoke(w, w->spec.opaque);
    return n;
}

void hb_worker_discard(hb_worker_t *w, hb_delivery_t *dl) {
    hb_delivery_discard(w->deliveries, dl);
}

typedef struct lookup_ctx_s {
    hb_worker_t *w;
    hb_delivery_t *dl;
    hb_worker_lookup_cb then;
    void *opaque;
} lookup_ctx_t;

static void lookup_ctx_free(void *arg) {
    lookup_ctx_t *c = arg;
    hb_delivery_free(c->dl); /* its jobs stay unfinished */
    free(c);
}

static void lookup_answered(hb_outbox_t *ob, hb_gate_t *g) {
    lookup_ctx_t *c = g->arg;
    hb_worker_t *w = c->w;
    if (hb_stop_requested || hb_deliveries_abandoning(w->deliveries) ||
        hb_delivery_revoked(c->dl)) {
        /* start nothing new: the message will be consumed again (here, or
         * by the new owner of its partition) */
        hb_delivery_abandon(w->deliveries, c->dl); /* nothing recorded */
    } else {
        c->then(w, c->dl, &g->state, c->opaque);
    }
    hb_gate_forget(w->outbox, g); /* it held no jobs: the delivery does */
    free(c);
}

static void lookup(hb_worker_t *w, hb_delivery_t *dl, const char *id, int64_t since_ms,
                   hb_worker_lookup_cb then, void *opaque) {
    lookup_ctx_t *c = hb_calloc(1, sizeof(*c));
    c->w = w;
    c->dl = dl;
    c->then = then;
    c->opaque = opaque;
    hb_gate_lookup(w->outbox, hb_gate_new(w->outbox, NULL, 0), id, since_ms, lookup_answered, c,
                   lookup_ctx_free);
}

void hb_worker_lookup(hb_worker_t *w, hb_delivery_t *dl, hb_worker_lookup_cb then, void *opaque) {
    /* its rows are from its first attempt's day on */
    lookup(w, dl, dl->id, dl->first_attempt_ms, then, opaque);
}

void hb_worker_lookup_id(hb_worker_t *w, hb_delivery_t *dl, const char *id,
                         hb_worker_lookup_cb then, void *opaque) {
    lookup(w, dl, id, 0, then, opaque); /* another delivery's: any day */
}

typedef struct ask_ctx_s {
    hb_worker_t *w;
    hb_worker_answer_cb then;
    void *opaque;
    void (*opaque_free)(void *opaque);
} ask_ctx_t;

static void ask_ctx_free(void *arg) {
    ask_ctx_t *c = arg;
    if (c->opaque_free)
        c->opaque_free(c->opaque);
    free(c);
}

static void ask_answered(hb_outbox_t *ob, hb_gate_t *g) {
    ask_ctx_t *c = g->arg;
    hb_worker_t *w = c->w;
    (void)ob;
    if (hb_stop_requested || hb_deliveries_abandoning(w->deliveries)) {
        ask_ctx_free(c);
    } else {
        c->then(w, &g->state, c->opaque);
        free(c);
    }
    hb_gate_forget(w->outbox, g);
}

static ask_ctx_t *ask_ctx(hb_worker_t *w, hb_worker_answer_cb then, void *opaque,
                          void (*opaque_free)(void *opaque)) {
    ask_ctx_t *c = hb_calloc(1, sizeof(*c));
    c->w = w;
    c->then = then;
    c->opaque = opaque;
    c->opaque_free = opaque_free;
    return c;
}

void hb_worker_ask(hb_worker_t *w, const char *delivery_id, hb_worker_answer_cb then, void *opaque,
                   void (*opaque_free)(void *opaque)) {
    hb_gate_lookup(w->outbox, hb_gate_new(w->outbox, NULL, 0), delivery_id, 0, ask_answered,
                   ask_ctx(w, then, opaque, opaque_free), ask_ctx_free);
}

void hb_worker_ask_tail(hb_worker_t *w, const char *subscription_id, const char *key,
                        hb_worker_answer_cb then, void *opaque, void (*opaque_free)(void *opaque)) {
    hb_gate_lookup_tail(w->outbox, hb_gate_new(w->outbox, NULL, 0), subscription_id, key,
                        ask_answered, ask_ctx(w, then, opaque, opaque_free), ask_ctx_free);
}

void hb_worker_set_filtered(hb_worker_t *w, hb_metric_t *m) {
    hb_deliveries_set_filtered(w->deliveries, m);
}

unsigned hb_worker_revocations(const hb_worker_t *w) {
    return hb_consumer_revocations(w->consumer);
}

/* Rate limits: tokens of the shared budget, asked on the store's request
 * lane; while the database is away none can be, and the held deliveries wait
 * (then go to the delay tier, hb_ratelimit.h). */
static void rate_tokens_answered(const char *id, int granted, long long wait_ms, const char *err,
                                 void *opaque) {
    hb_worker_t *w = opaque;
    if (err) {
        hb_metric_inc(w->m_db_errors);
        hb_log(HB_LOG_WARN, HB_KV("subscription_id", id), "rate limit: %s", err);
    }
    hb_deliveries_rate_granted(w->deliveries, id, granted, wait_ms);
}

static int rate_ask(const char *id, int wanted, void *opaque) {
    hb_worker_t *w = opaque;
    if (!w->store || !hb_store_connected(w->store))
        return -1;
    return hb_store_take_rate_tokens(w->store, id, wanted, rate_tokens_answered, w);
}

static hb_sub_t *current_sub(const char *id, void *opaque) {
    hb_worker_t *w = opaque;
    return hb_index_get(w->index, id);
}

size_t hb_worker_in_flight(const hb_worker_t *w) {
    return hb_deliveries_in_flight(w->deliveries);
}

int hb_worker_consumption_paused(const hb_worker_t *w) {
    return w->consumer && hb_consumer_paused(w->consumer);
}

/* ---------------------------------------------------------- subscriptions */

static void on_sub_loaded(hb_sub_t *sub, void *opaque) {
    hb_index_upsert(opaque, sub);
}

/* Into a fresh index, which replaces the one in memory only once loaded: a
 * reload that fails (the store tries again) leaves the services with the
 * index they had, as during the outage before it, not an empty one that
 * matches nothing while consumption goes on. */
static int load_index(hb_worker_t *w) {
    char errstr[512];
    hb_index_t *fresh = hb_index_new();
    if (hb_store_load_all(w->store, on_sub_loaded, fresh, errstr, sizeof(errstr)) < 0) {
        hb_index_free(fresh);
        hb_metric_inc(w->m_db_errors);
        /* undefined schema, table, column or function: a database not (yet)
         * migrated to this release, the usual first-run mistake */
        w->schema_missing =
            strstr(errstr, "(SQLSTATE 3F000)") || strstr(errstr, "(SQLSTATE 42P01)") ||
            strstr(errstr, "(SQLSTATE 42703)") || strstr(errstr, "(SQLSTATE 42883)") ||
            strstr(errstr, "this release's migration"); /* hb_store: migrated to an older one */
        hb_error("cannot load subscriptions: %s%s", errstr,
                 w->schema_missing ? "; is the database migrated? run hookbridge-migrate up of "
                                     "this release"
                                   : "");
        return -1;
    }
    w->schema_missing = 0;
    if (w->index) { /* hosts no subscription has any more (changed while away) */
        const char *key;
        size_t pos = 0;
        while ((key = hb_index_host_each(w->index, &pos)) != NULL)
            if (!hb_index_host_subs(fresh, key))
                (void)hb_deliveries_forget_host(w->deliveries, key);
    }
    hb_index_free(w->index);
    w->index = fresh;
    hb_metric_set(w->m_subs, (double)hb_index_deliverable_count(w->index));
    hb_info("subscription index loaded: %zu subscriptions, %zu deliverable",
            hb_index_count(w->index), hb_index_deliverable_count(w->index));
    return 0;
}

static void index_loaded(hb_worker_t *w) {
    w->index_loaded = load_index(w) == 0;
    if (w->index_loaded) /* changes missed while disconnected (none at start) */
        (void)hb_deliveries_rebind_waiting(w->deliveries, NULL);
    if (w->index_loaded && w->spec.hooks->on_index_loaded)
        w->spec.hooks->on_index_loaded(w, w->spec.opaque);
}

static void on_change(const char *id, hb_sub_t *sub, void *opaque) {
    hb_worker_t *w = opaque;
    size_t rebound;
    char host[HB_INDEX_HOST_KEY];
    int had_host = hb_index_host_key(hb_index_get(w->index, id), host, sizeof(host)) == 0;
    if (sub) {
        hb_log(HB_LOG_INFO, HB_KV("subscription_id", id), "subscription changed: %s, %s",
               sub->active ? "active" : "inactive", sub->verified ? "verified" : "not verified");
        hb_index_upsert(w->index, sub);
    } else {
        hb_log(HB_LOG_INFO, HB_KV("subscription_id", id), "subscription removed");
        hb_index_remove(w->index, id);
    }
    /* deregistered, or its URL moved: the last one at its old host? */
    if (had_host && !hb_index_host_subs(w->index, host))
        (void)hb_deliveries_forget_host(w->deliveries, host);
    hb_metric_set(w->m_subs, (double)hb_index_deliverable_count(w->index));
    /* what waits for a connection goes as the subscription is now */
    rebound = hb_deliveries_rebind_waiting(w->deliveries, id);
    if (rebound)
        hb_log(HB_LOG_INFO, HB_KV("subscription_id", id),
               "%zu request(s) waiting for a connection follow the change", rebound);
}

static void on_verify(const char *id, void *opaque) {
    hb_worker_t *w = opaque;
    if (w->spec.hooks->on_verify)
        w->spec.hooks->on_verify(w, id, w->spec.opaque);
}

static void on_reload(void *opaque) {
    hb_worker_t *w = opaque;
    if (w->loads++ > 0) /* the first is the start's (hb_store_new) */
        hb_info("database connection restored: reloading subscriptions");
    index_loaded(w);
}

static void on_preview(const char *id, void *opaque) {
    hb_worker_t *w = opaque;
    if (w->spec.hooks->on_preview)
        w->spec.hooks->on_preview(w, id, w->spec.opaque);
}

static const hb_store_handlers_t store_handlers = {on_change, on_verify, on_reload, on_preview};

/* Connects to PostgreSQL; retried by the loop while the database is
 * unreachable (the service stays up, not ready). The index is loaded once
 * the store has its first full load (on_reload), made off this thread. */
static void ensure_store(hb_worker_t *w) {
    char errstr[512];
    if (w->store || hb_mono_ms() < w->next_store_attempt)
        return;
    w->store = hb_store_new(w->cfg->database_url, w->cfg->keyring, w->spec.verifies, errstr,
                            sizeof(errstr));
    if (w->store && !hb_outbox_dlog(w->outbox)) {
        hb_dlog_t *dlog = hb_dlog_new(w->cfg->database_url, w->cfg->log_flush_ms, DLOG_MAX_QUEUE,
                                      errstr, sizeof(errstr));
        if (dlog) {
            hb_dlog_set_wake_fd(dlog, w->wake[1]);
            hb_dlog_set_error_metric(dlog, w->m_db_errors);
            hb_dlog_set_rejected_metric(dlog, w->m_dlog_rejected);
        }
        hb_outbox_set_dlog(w->outbox, dlog);
        if (!dlog) {
            hb_store_free(w->store);
            w->store = NULL;
        }
    }
    if (!w->store) {
        hb_metric_inc(w->m_db_errors);
        hb_error("database unavailable, retrying in 2 s: %s", errstr);
        snprintf(w->store_why, sizeof(w->store_why), "%s", errstr);
        w->next_store_attempt = hb_mono_ms() + 2000;
    } else {
        w->store_why[0] = '\0';
    }
}

/* ------------------------------------------------------------------ kafka */

/* A producer writing what cannot be decoded writes it at its own rate: a
 * line each would flood the log exactly then. At most HB_LOG_LIMIT_LINES per
 * window, besides the first of each topic, with the first's reason; the
 * counter and the copies on the dead-letter topic have every one. */
static hb_log_limit_t log_poison =
    HB_LOG_LIMIT_NOTE("\"poison message sent to ...\"",
                      ", and the first of each topic; hookbridge_poison_messages_total counts "
                      "every one, and the dead-letter topic has each with its reason");

void hb_worker_poison(hb_worker_t *w, const rd_kafka_message_t *rkm, const char *reason) {
    char part[16], off[24];
    hb_job_t *job;
    snprintf(part, sizeof(part), "%d", (int)rkm->partition);
    snprintf(off, sizeof(off), "%lld", (long long)rkm->offset);
    hb_metric_inc(w->m_poison);
    hb_log_limited_for(
        &log_poison, rd_kafka_topic_name(rkm->rkt), HB_LOG_ERROR,
        HB_KV("topic", rd_kafka_topic_name(rkm->rkt), "partition", part, "offset", off),
        "poison message sent to %s: %s", w->cfg->dlq_topic, reason);
    job = hb_worker_track(w, rkm);
    hb_outbox_poison(w->outbox, w->cfg->dlq_topic, rkm, job, reason);
    hb_outbox_release(w->outbox, job);
}

/* A message from the consumer: decoded, then the handler's (or poison). */
static void handle_message(rd_kafka_message_t *rkm, void *opaque) {
    hb_worker_t *w = opaque;
    const char *topic;
    char errstr[512];
    json_t *json = NULL;
    hb_event_t *ev = NULL;
    int64_t wait_ms = 0;
    int r;

    topic = rd_kafka_topic_name(rkm->rkt);
    if (w->spec.hooks->on_event)
        r = hb_decoder_decode_event(w->decoder, rkm->payload, rkm->len, &ev, &wait_ms, errstr,
                                    sizeof(errstr));
    else
        r = hb_decoder_decode(w->decoder, rkm->payload, rkm->len, &json, &wait_ms, errstr,
                              sizeof(errstr));
    if (r == HB_DECODE_WAIT) { /* its writer schema is on the way from the registry */
        hb_debug("%s [%d] offset %lld waits %lld ms: %s", topic, (int)rkm->partition,
                 (long long)rkm->offset, (long long)wait_ms, errstr);
        hb_consumer_defer(w->consumer, rkm, hb_wall_ms() + wait_ms);
        return;
    }
    if (r != HB_DECODE_OK) {
        hb_metric_inc(w->m_consumed);
        hb_worker_poison(w, rkm, errstr);
        return;
    }
    w->deferred = 0;
    if (ev)
        w->spec.hooks->on_event(w, rkm, ev, w->spec.opaque);
    else
        w->spec.hooks->on_message(w, rkm, json, w->spec.opaque);
    /* A message put back (a retry not due yet: its partition rewound to it)
     * is consumed when it is read again, and counted then: once. */
    if (!w->deferred)
        hb_metric_inc(w->m_consumed);
    json_decref(json);
    hb_ev_unref(ev);
}

/* Take new messages only while the endpoints keep up: requests waiting for
 * hosts that answer at a good pace stay under max_in_flight (hb_http_backlog
 * leaves hung and slow hosts out: their queues are bounded, not waited for).
 * Checked before every message, since one event may fan out to many. */
static int keeping_up(void *opaque) {
    hb_worker_t *w = opaque;
    size_t limit = (size_t)w->cfg->max_in_flight;
    size_t lookups = hb_outbox_lookups(w->outbox);
    /* deliveries waiting for their delivery-log look-up (the retrier's) are
     * about to join the queue: they count as waiting already */
    /* events taken and waiting for their sync (spec.syncs) are about to
     * join it too */
    size_t held = (size_t)hb_consumer_held(w->consumer);
    if (lookups + held >= limit)
        return 0;
    /* the rest of a message's fan-out goes first (on_pass) */
    if (w->spec.hooks->holding && w->spec.hooks->holding(w, w->spec.opaque))
        return 0;
    /* one message's deliveries at a time past the payload budget, not a
     * whole batch's (hb_consumer_limit pauses); the events taken and
     * waiting for their sync are about to render theirs */
    if (hb_held_bytes() + hb_consumer_held_bytes(w->consumer) >= (size_t)w->cfg->max_pending_bytes)
        return 0;
    limit -= lookups + held;
    return hb_http_queued(w->http) < limit || /* cheap, usual */
           hb_http_backlog(w->http, STALL_MS) < limit;
}

/* ------------------------------------------------------------------- loop */

/* Called when the wait found the pipe readable: a read shorter than the
 * buffer emptied it (a write after it wakes the next wait), so no read
 * waits for EAGAIN. */
static void drain_wake_pipe(hb_worker_t *w) {
    char buf[256];
    while (read(w->wake[0], buf, sizeof(buf)) == (ssize_t)sizeof(buf))
        ;
}

/* A database that accepts connections but does not answer (a stopped
 * server, a statement waiting for a lock) fails nothing: the delivery log
 * just waits, and offsets stop moving. Not ready while it waits longer than
 * DB_UNANSWERED_MS, said once each way, counted as one database error.
 * Returns the reason, in buf, or NULL. */
static const char *db_unanswered(hb_worker_t *w, char *buf, size_t size) {
    hb_dlog_t *dlog = hb_outbox_dlog(w->outbox);
    int64_t waiting = dlog ? hb_dlog_waiting_ms(dlog) : 0;
    int now = waiting >= DB_UNANSWERED_MS;
    if (now != w->db_unanswered) {
        w->db_unanswered = now;
        if (now) {
            hb_metric_inc(w->m_db_errors);
            hb_warn("database: no answer to the delivery log for %lld s; offsets wait for it",
                    (long long)(waiting / 1000));
        } else {
            hb_info("database: the delivery log has its answer again");
        }
    }
    if (!now)
        return NULL;
    snprintf(buf, size, "database not answering (the delivery log has waited %lld s)",
             (long long)(waiting / 1000));
    return buf;
}

/* A database that answers but refuses the delivery log (a privilege taken
 * from the services' role, a trigger raising, a full disk): nothing is
 * committed, offsets stand still, and a restart sends everything since
 * again. Not ready once every round has failed for DB_UNANSWERED_MS, with
 * PostgreSQL's reason (the writer logs it at warn every 30 s, and says
 * "writing again" when it can). Sets hookbridge_delivery_log_stalled_seconds:
 * how long the log has not written, refused or unanswered. Returns the
 * reason, in buf, or NULL. */
static const char *dlog_refused(hb_worker_t *w, char *buf, size_t size) {
    hb_dlog_t *dlog = hb_outbox_dlog(w->outbox);
    char why[512] = "";
    int64_t failing = dlog ? hb_dlog_failing_ms(dlog, why, sizeof(why)) : 0;
    int64_t waiting = dlog ? hb_dlog_waiting_ms(dlog) : 0;
    hb_metric_set(w->m_dlog_stalled, (double)(failing > waiting ? failing : waiting) / 1000.0);
    if (failing < DB_UNANSWERED_MS)
        return NULL;
    snprintf(buf, size, "delivery log refused by the database for %lld s: %s",
             (long long)(failing / 1000), *why ? why : "no reason given");
    return buf;
}

static void update_readiness(hb_worker_t *w) {
    const char *why = NULL, *db_why, *log_why, *db_reason, *kafka_why, *unconnected = NULL;
    char schema_why[400], db_buf[120], log_buf[600], topic_buf[340], both[1800], down[540];
    char store_down[512];
    db_why = db_unanswered(w, db_buf, sizeof(db_buf));
    log_why = dlog_refused(w, log_buf, sizeof(log_buf));
    if (!w->store) { /* why the store could not start, or reconnect */
        unconnected = w->store_why;
    } else if (!hb_store_connected(w->store)) {
        hb_store_down_why(w->store, store_down, sizeof(store_down));
        unconnected = store_down;
    }
    if (w->schema_missing && !w->index_loaded) /* it reconnects after each try */
        db_reason =
            "database not ready: it lacks this release's schema (run hookbridge-migrate up)";
    else if (unconnected && strstr(unconnected, HB_PG_NOT_PRIMARY)) {
        /* the server answers, but cannot be written (a URL naming a hot
         * standby by mistake, or leading to one after a failover): say so,
         * not only that nothing is connected */
        snprintf(down, sizeof(down), "database not connected: %s", unconnected);
        db_reason = down;
    } else if (!w->store || !hb_store_connected(w->store))
        db_reason = "database not connected";
    else
        db_reason = db_why ? db_why : log_why;
    kafka_why = hb_consumer_unready(w->consumer);
    if (!kafka_why && !hb_consumer_started(w->consumer) && hb_kafka_reach_check(&w->early_brokers))
        kafka_why = w->early_brokers.why;
    if (hb_stop_requested) {
        why = "shutting down";
    } else if (hb_outbox_fatal(w->outbox)) {
        why = hb_outbox_fatal(w->outbox);
    } else if (kafka_why && db_reason) {
        /* both out: say both, or the one fixed first only uncovers the other */
        snprintf(both, sizeof(both), "%s; %s", kafka_why, db_reason);
        why = both;
    } else if (kafka_why) {
        why = kafka_why;
    } else if (db_reason) {
        why = db_reason;
    } else if (!w->index_loaded)
        why = "subscription index not loaded";
    else if (hb_outbox_unready(w->outbox, topic_buf, sizeof(topic_buf)))
        why = topic_buf; /* the delay tiers, the dead-letter topic */
    else if (!hb_consumer_assigned(w->consumer))
        why = "waiting for the consumer group assignment";
    else if (hb_decoder_unready(w->decoder, schema_why, sizeof(schema_why)))
        why = schema_why;
    if (!why && *hb_consumer_pause_why(w->consumer)) { /* still ready, but say so */
        char note[260];
        snprintf(note, sizeof(note), "ready, but consumption paused: %s",
                 hb_consumer_pause_why(w->consumer));
        hb_httpd_set_ready(w->httpd, 1, note);
    } else {
        hb_httpd_set_ready(w->httpd, why == NULL, why);
    }
    hb_metric_set(w->m_in_flight, (double)hb_deliveries_in_flight(w->deliveries));
    hb_metric_set(w->m_held_bytes, (double)hb_held_bytes());
}

/* The events held up to ticket `done` are matched without the answer to
 * their sync (the store's follower is not connected, or its query has
 * waited 1 s): counted, and said once until a sync is answered again. */
static void unsynced(hb_worker_t *w, unsigned long long done) {
    int handed = hb_consumer_handle_held(w->consumer, done, handle_message, w);
    if (!handed)
        return;
    hb_metric_add(w->m_unsynced, handed);
    if (!w->unsynced_said) {
        w->unsynced_said = 1;
        hb_warn("database: no answer to the subscription store's sync (not connected, or none "
                "within 1 s); events are matched against the subscriptions in memory, without "
                "the changes committed just before them (hookbridge_events_unsynced_total)");
    }
}

/* One turn of the loop; consume: take messages from Kafka (not while
 * draining). Subscription changes are applied first, so a NOTIFY committed
 * before an event was produced is applied before that event is matched. */
static void one_pass(hb_worker_t *w, long long wait_ms, int consume) {
    char errstr[512];
    long long next;
    hb_httpd_beat(w->httpd);
    hb_log_limits_flush();
    if (w->store && hb_store_process(w->store, &store_handlers, w, errstr, sizeof(errstr)) < 0) {
        hb_metric_inc(w->m_db_errors);
        /* the store's messages mostly say "database: " already: once is enough */
        hb_warn("%s%s", strncmp(errstr, "database: ", 10) ? "database: " : "", errstr);
    }
    /* A subscription change on its way is applied before new events come in. */
    if (consume && hb_consumer_started(w->consumer) && !hb_consumer_paused(w->consumer) &&
        (!w->store || hb_store_settled(w->store))) {
        if (!w->spec.syncs || !w->store) {
            hb_consumer_poll(w->consumer, POLL_BATCH, keeping_up, handle_message, w);
        } else {
            /* Taken now, matched once a change committed before they were
             * published is applied: synced, then settled again. Taking goes
             * on meanwhile; one query answers every batch taken before it. */
            int held = hb_consumer_held(w->consumer);
            if (held < POLL_BATCH && hb_consumer_take(w->consumer, POLL_BATCH - held, keeping_up, w,
                                                      hb_store_next_sync(w->store)))
                (void)hb_store_sync(w->store);
            if (hb_consumer_held(w->consumer)) {
                /* the oldest's sync was asked when it was taken */
                unsigned long long answered,
                    done =
                        hb_store_synced(w->store, hb_consumer_held_since(w->consumer), &answered);
                if (hb_store_settled(w->store)) {
                    int handed = hb_consumer_handle_held(w->consumer, answered, handle_message, w);
                    if (done > answered)
                        unsynced(w, done);
                    else if (handed && w->unsynced_said) {
                        w->unsynced_said = 0;
                        hb_info("database: the subscription store's sync is answered again");
                    }
                }
            }
        }
    }
    if (consume && hb_consumer_started(w->consumer))
        hb_consumer_keepalive(w->consumer);
    hb_outbox_poll(w->outbox);
    /* A host that stopped keeping up gives back what waits for it beyond its
     * share before the budget pauses every endpoint */
    if (hb_held_bytes() >= (size_t)w->cfg->max_pending_bytes)
        (void)hb_http_shed_lagging(w->http);
    if (hb_consumer_started(w->consumer)) {
        hb_consumer_store_offsets(w->consumer);
        if (!hb_stop_requested) /* the last resort */
            hb_consumer_limit(w->consumer, w->cfg->max_pending_events, w->cfg->max_pending_bytes,
                              hb_deliveries_in_flight(w->deliveries), hb_http_queued(w->http));
    }
    next = hb_consumer_resume_due(w->consumer, LOOP_WAIT_MS);
    if (next < wait_ms)
        wait_ms = next;
    if (w->spec.hooks->on_pass && !hb_stop_requested) {
        next = w->spec.hooks->on_pass(w, w->spec.opaque);
        if (next < wait_ms)
            wait_ms = next;
    }
    next = hb_deliveries_tick(w->deliveries); /* rate-limited deliveries whose turn came */
    if (next >= 0 && next < wait_ms)
        wait_ms = next;
    if (hb_outbox_resending(w->outbox) && wait_ms > 100)
        wait_ms = 100;
    hb_consumer_tick(w->consumer);
    update_readiness(w);
    {
        /* Subscription changes (LISTEN/NOTIFY) wake the loop as Kafka does. */
        int fds[2] = {w->wake[0], w->store ? hb_store_fd(w->store) : -1}, readable[2];
        (void)hb_http_run_fds(w->http, (int)(wait_ms < 0 ? 0 : wait_ms), fds, 2, readable);
        if (readable[0])
            drain_wake_pipe(w);
    }
}

int hb_worker_run(hb_worker_t *w) {
    char errstr[512];
    int64_t deadline;
    const char *fatal = NULL;

    while (!hb_stop_requested && !fatal) {
        ensure_store(w);
        if (w->store && w->index_loaded && !hb_consumer_started(w->consumer)) {
            if (hb_consumer_start(w->consumer, errstr, sizeof(errstr)) < 0) {
                hb_error("cannot start the Kafka consumer: %s", errstr);
                return -1;
            }
            hb_kafka_reach_stop(&w->early_brokers); /* the consumer's probe takes over */
            /* ... from where this one was: brokers out stay named, counted
             * from when they went (not 4 s of "checking that the delay
             * tiers ... exist", then "not answering for 4 s" again) */
            hb_consumer_brokers_continue(w->consumer, &w->early_brokers);
        }
        one_pass(w, LOOP_WAIT_MS, 1);
        fatal = hb_outbox_fatal(w->outbox);
    }

    if (fatal) {
        /* Nothing that needs a retry or a dead letter can be finished: stop
         * now rather than consume and deliver on. Offsets are committed only
         * as far as work is durable (the rest is consumed again after a
         * restart, which makes a new producer). */
        hb_error("stopping at once, the Kafka producer being unusable: %zu deliveries in "
                 "flight abandoned, their messages will be consumed again after a restart",
                 hb_deliveries_in_flight(w->deliveries));
        hb_consumer_pause_all(w->consumer, 1, NULL, 0, 0);
        hb_deliveries_abandon(w->deliveries);
        hb_outbox_drain(w->outbox);
        hb_consumer_close(w->consumer);
        hb_log_limits_flush_all();
        hb_info("stopped");
        return -1;
    }
    hb_outbox_watch_end(w->outbox); /* its thread ends while the drain runs */
    hb_info("stopping: %zu deliveries in flight, draining for at most %lld ms",
            hb_deliveries_in_flight(w->deliveries), w->cfg->shutdown_timeout_ms);
    hb_consumer_pause_all(w->consumer, 1, NULL, 0, 0);
    if (w->spec.hooks->on_stop)
        w->spec.hooks->on_stop(w, w->spec.opaque);
    deadline = hb_mono_ms() + w->cfg->shutdown_timeout_ms;
    while ((hb_deliveries_in_flight(w->deliveries) > 0 ||
            (hb_outbox_resending(w->outbox) && !hb_outbox_fatal(w->outbox)) ||
            hb_outbox_lookups(w->outbox) > 0 || (w->store && hb_store_pending(w->store) > 0) ||
            (w->spec.hooks->busy && w->spec.hooks->busy(w, w->spec.opaque) > 0)) &&
           hb_mono_ms() < deadline)
        one_pass(w, 50, 0);
    if (w->spec.hooks->on_deadline && w->spec.hooks->busy &&
        w->spec.hooks->busy(w, w->spec.opaque) > 0) {
        /* claims the drain did not finish, given back now rather than left
         * to their leases (a crash's bound: 20 s a challenge, 75 s a
         * preview); a database that does not answer is not waited for
         * beyond HB_WORKER_HAND_OVER_MS (the leases then end as before) */
        int64_t until = hb_mono_ms() + HB_WORKER_HAND_OVER_MS;
        w->spec.hooks->on_deadline(w, w->spec.opaque);
        while (w->store && hb_store_pending(w->store) > 0 && hb_mono_ms() < until)
            one_pass(w, 50, 0);
    }
    if (hb_deliveries_in_flight(w->deliveries) > 0) {
        hb_warn("abandoning %zu deliveries still in flight; their messages will be consumed "
                "again",
                hb_deliveries_in_flight(w->deliveries));
        hb_deliveries_abandon(w->deliveries);
    }
    hb_outbox_drain(w->outbox);
    hb_consumer_close(w->consumer);
    hb_log_limits_flush_all(); /* the last window's count, not lost with the process */
    hb_info("stopped");
    return 0;
}

/* ------------------------------------------------------------ build/free */

static void register_metrics(hb_worker_t *w) {
    static const double latency_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                            0.5,   1,    2.5,   5,    10,  30};
    static const double rate_wait_bounds[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5};
    static const char by_outcome[] =
        "Deliveries by outcome; retry includes those put on a delay tier unattempted "
        "(host busy or slow, circuit open, rate limit, ordering or verification wait), "
        "dropped ones are not attempted (but for a batch the retrier split after a 413, its "
        "halves counted on their own): hookbridge_responses_total counts attempts.";
    w->m_consumed = hb_metrics_counter("hookbridge_messages_consumed_total", NULL,
                                       "Messages consumed from the input topics.");
    w->m_poison = hb_metrics_counter("hookbridge_poison_messages_total", NULL,
                                     "Messages that could not be decoded, or events with an empty "
                                     "uuid (copied to the dead-letter topic).");
    w->dm.delivered =
        hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"delivered\"", by_outcome);
    w->dm.retry =
        hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"retry\"", by_outcome);
    w->dm.failed =
        hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"failed\"", by_outcome);
    w->dm.dropped =
        hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"dropped\"", by_outcome);
    w->dm.latency = hb_metrics_histogram("hookbridge_attempt_duration_seconds", NULL,
                                         "Duration of delivery attempts.", latency_bounds,
                                         HB_ARRAY_SIZE(latency_bounds));
    w->m_in_flight =
        hb_metrics_gauge("hookbridge_requests_in_flight", NULL, "Delivery requests in flight.");
    /* its bound, so an alert needs no copy of the setting */
    hb_metric_set(hb_metrics_gauge("hookbridge_requests_in_flight_limit", NULL,
                                   "HOOKBRIDGE_MAX_IN_FLIGHT: the bound of "
                                   "hookbridge_requests_in_flight."),
                  (double)w->cfg->max_in_flight);
    w->m_held_bytes = hb_metrics_gauge(
        "hookbridge_pending_payload_bytes", NULL,
        "Bytes of payloads unfinished deliveries hold in memory (max_pending_bytes).");
    if (w->spec.syncs)
        w->m_unsynced = hb_metrics_counter(
            "hookbridge_events_unsynced_total", NULL,
            "Events matched without the database's answer to the sync made after they were "
            "taken (not connected, or none within 1 s): a subscription change committed just "
            "before one may not apply to it.");
    w->m_subs = hb_metrics_gauge("hookbridge_subscriptions", NULL,
                                 "Deliverable (active and verified) subscriptions.");
    w->m_db_errors =
        hb_metrics_counter("hookbridge_database_errors_total", NULL, "PostgreSQL errors.");
    w->m_kafka_errors = hb_metrics_counter("hookbridge_kafka_errors_total", NULL, "Kafka errors.");
    w->m_dlog_stalled = hb_metrics_gauge(
        "hookbridge_delivery_log_stalled_seconds", NULL,
        "How long the delivery log has not been able to write: the database refusing its rows, "
        "unreachable or not answering (0 while it writes). Offsets wait for it.");
    w->m_dlog_rejected = hb_metrics_counter(
        "hookbridge_delivery_log_rows_rejected_total", NULL,
        "Delivery-log rows the database rejected as invalid (a constraint, a value it refuses): "
        "logged at error and not written; the delivery happened, the log does not show it.");
    w->dm.dlq = hb_metrics_counter("hookbridge_dead_letters_total", NULL,
                                   "Deliveries the dead-letter topic has taken.");
    w->dm.dlq_skipped = hb_metrics_counter(
        "hookbridge_dead_letters_skipped_total", NULL,
        "Final failures not dead-lettered: the delivery log had the delivery final already, or "
        "the attempt logged (a duplicate after a restart).");
    w->dm.circuit_skips =
        hb_metrics_counter("hookbridge_circuit_skips_total", NULL,
                           "Attempts not made because the endpoint's circuit was open.");
    w->dm.circuit_opens = hb_metrics_counter("hookbridge_circuit_opens_total", NULL,
                                             "Times an endpoint host's circuit opened.");
    w->dm.circuit_probes =
        hb_metrics_counter("hookbridge_circuit_probes_total", NULL,
                           "Attempts let through a half-open circuit to probe its endpoint host.");
    w->dm.endpoint_busy =
        hb_metrics_counter("hookbridge_endpoint_busy_total", NULL,
                           "Deliveries handed to a delay tier without an attempt because their "
                           "endpoint host's queue was full or slow (max_host_queue, "
                           "max_queue_wait).");
    w->dm.rate_limited = hb_metrics_counter(
        "hookbridge_rate_limited_total", NULL,
        "Deliveries held back by their subscription's rate limit (waited for a token, or handed "
        "to a delay tier unattempted because they could not wait).");
    w->dm.rate_limit_wait =
        hb_metrics_histogram("hookbridge_rate_limit_wait_seconds", NULL,
                             "How long deliveries held back by a rate limit waited.",
                             rate_wait_bounds, HB_ARRAY_SIZE(rate_wait_bounds));
    w->dm.ordering_waits =
        hb_metrics_counter("hookbridge_ordering_waits_total", NULL,
                           "Ordered deliveries handed to a delay tier without an attempt because "
                           "an earlier delivery of their key was not final yet.");
    w->dm.verification_waits =
        hb_metrics_counter("hookbridge_verification_waits_total", NULL,
                           "Deliveries handed to a delay tier without an attempt because their "
                           "subscription's new URL had not passed its verification yet.");
    w->cm.paused = hb_metrics_gauge("hookbridge_consumption_paused", NULL,
                                    "1 while consumption of every partition is paused because "
                                    "max_pending_events messages are unfinished or their "
                                    "deliveries hold max_pending_bytes of payloads.");
    w->cm.pauses = hb_metrics_counter("hookbridge_consumption_pauses_total", NULL,
                                      "Times consumption of every partition was paused "
                                      "(max_pending_events, max_pending_bytes).");
    w->cm.deferred = hb_metrics_counter("hookbridge_partition_pauses_total", NULL,
                                        "Times a partition was paused: retrier, a delay tier until "
                                        "its head is due; dispatcher, events waiting for a writer "
                                        "schema from the Schema Registry.");
    w->cm.expired = hb_metrics_counter(
        "hookbridge_messages_expired_total", NULL,
        "Messages the broker deleted (retention) before they were consumed: lost.");
    for (int c = 0; c < 6; c++) {
        char label[32];
        if (c == 0)
            snprintf(label, sizeof(label), "class=\"none\"");
        else
            snprintf(label, sizeof(label), "class=\"%dxx\"", c);
        w->dm.status_class[c] = hb_metrics_counter(
            "hookbridge_responses_total", label,
            "Delivery attempts by HTTP status class of the answer "
            "(none: timeout, connection error, refused, or an answer cut short).");
    }
    w->dm.connections_opened = hb_metrics_counter(
        "hookbridge_connections_opened_total", NULL,
        "Delivery attempts that opened a connection to their endpoint (TCP, and a TLS "
        "handshake on HTTPS) instead of reusing one.");
    for (int t = 0; t < w->cfg->schedule.tiers; t++) {
        char label[96], d[32];
        hb_delay_format(w->cfg->schedule.tiers_ms[t], d, sizeof(d));
        snprintf(label, sizeof(label), "tier=\"%s\"", d);
        w->dm.tier[t] = hb_metrics_counter("hookbridge_retries_enqueued_total", label,
                                           "Deliveries handed to a delay tier.");
    }
}

hb_worker_t *hb_worker_new(const hb_config_t *cfg, const hb_worker_spec_t *spec, char *errstr,
                           size_t errstr_size) {
    hb_worker_t *w = hb_calloc(1, sizeof(*w));
    hb_http_conf_t hconf = {
        .max_in_flight = (long)cfg->max_in_flight,
        .max_host_connections = (long)cfg->max_host_connections,
        .max_connections = (long)cfg->max_connections,
        .max_host_queue = (long)cfg->max_host_queue,
        /* one hung host's queue never holds the whole payload budget, so
         * it cannot pause consumption for every endpoint (hb_http_shed_lagging) */
        .max_host_queue_bytes = cfg->max_pending_bytes / 4,
        .max_queue_wait_ms = cfg->max_queue_wait_ms,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .connection_max_age_ms = cfg->connection_max_age_ms,
        .allow_http = cfg->allow_http,
        .allow_private_networks = cfg->allow_private_networks,
        .allowed_cidrs = cfg->allowed_cidrs,
        .ca_file = cfg->ca_file,
        .tls_client_cert = cfg->tls_client_cert,
        .tls_client_key = cfg->tls_client_key,
    };

    w->cfg = cfg;
    w->spec = *spec;
    w->wake[0] = w->wake[1] = -1;
    snprintf(w->client_id, sizeof(w->client_id), "hookbridge-%s", spec->name);
    w->group = *cfg->consumer_group ? cfg->consumer_group : w->client_id;
    if (!*cfg->database_url) {
        hb_seterr(errstr, errstr_size, "HOOKBRIDGE_DATABASE_URL is not set");
        goto fail;
    }
    if (cfg->schedule.steps < 1) { /* hb_config_load parses it for the services */
        hb_seterr(errstr, errstr_size, "HOOKBRIDGE_RETRY_SCHEDULE was not parsed");
        goto fail;
    }
    hb_info("secrets are sealed with key %s", hb_keyring_current_id(cfg->keyring));
    w->topics_cnt = spec->topics_cnt;
    w->topics = hb_calloc((size_t)w->topics_cnt + 1, sizeof(char *));
    for (int i = 0; i < w->topics_cnt; i++)
        w->topics[i] = hb_strdup(spec->topics[i]);
    w->spec.topics = NULL;
    if (pipe2(w->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
        hb_seterr(errstr, errstr_size, "pipe: %s", strerror(errno));
        goto fail;
    }
    hb_signal_install(w->wake[1]);
    register_metrics(w);
    w->decoder = hb_decoder_new(cfg, spec->schema, errstr, errstr_size);
    if (!w->decoder)
        goto fail;
    w->http = hb_http_new(&hconf, errstr, errstr_size);
    if (!w->http)
        goto fail;
    w->httpd = hb_httpd_start(cfg->http_listen, 30000, errstr, errstr_size);
    if (!w->httpd)
        goto fail;
    w->offsets = hb_offsets_new();
    w->outbox = hb_outbox_new(cfg, w->client_id, w->wake[1], w->offsets, w->m_kafka_errors, errstr,
                              errstr_size);
    if (!w->outbox)
        goto fail;
    {
        /* what the producer writes: every tier (a Retry-After may pick any)
         * and the dead-letter topic */
        const char *produced[HB_RETRY_MAX_TIERS + 1];
        int n = 0;
        for (int t = 0; t < cfg->schedule.tiers; t++)
            produced[n++] = cfg->schedule.tier_topics[t];
        produced[n++] = cfg->dlq_topic;
        hb_outbox_watch_topics(w->outbox, produced, n);
    }
    if (hb_kafka_reach_start(&w->early_brokers, hb_outbox_producer(w->outbox), cfg->dlq_topic,
                             errstr, errstr_size) < 0)
        hb_error("%s (readiness ignores the brokers until the consumer starts)", errstr);
    w->deliveries = hb_deliveries_new(cfg, w->http, w->outbox, &w->dm,
                                      spec->circuit_counts_attempts, errstr, errstr_size);
    if (!w->deliveries)
        goto fail;
    hb_deliveries_set_rate_ask(w->deliveries, rate_ask, w);
    hb_deliveries_set_current(w->deliveries, current_sub, w);
    w->cm.kafka_errors = w->m_kafka_errors;
    w->consumer = hb_consumer_new(cfg, w->client_id, w->group, w->topics, w->topics_cnt, w->wake[1],
                                  w->offsets, w->outbox, &w->cm);
    hb_consumer_on_revoke(w->consumer, on_revoke, w);
    w->index = hb_index_new();
    hb_info("hookbridge-%s %s: health on port %d", spec->name, HB_VERSION, hb_httpd_port(w->httpd));
    return w;
fail:
    hb_worker_free(w);
    return NULL;
}

void hb_worker_free(hb_worker_t *w) {
    if (!w)
        return;
    if (w->consumer) /* a revocation from here on holds nothing: all is freed */
        hb_consumer_on_revoke(w->consumer, NULL, NULL);
    if (w->http) {
        if (w->deliveries) /* completions from the abort record nothing */
            hb_deliveries_abandon(w->deliveries);
        hb_http_free(w->http);
    }
    hb_consumer_free(w->consumer);
    hb_deliveries_free(w->deliveries);
    hb_kafka_reach_stop(&w->early_brokers); /* its thread uses the outbox's producer */
    hb_outbox_free(w->outbox);              /* the producer, the delivery log, unfinished work */
    hb_store_free_within(w->store, STORE_STOP_MS);
    hb_httpd_stop(w->httpd);
    hb_index_free(w->index);
    hb_offsets_free(w->offsets);
    hb_decoder_free(w->decoder);
    for (int i = 0; i < w->topics_cnt; i++)
        free(w->topics[i]);
    free(w->topics);
    if (w->wake[0] >= 0) {
        close(w->wake[0]);
        close(w->wake[1]);
    }
    hb_metrics_reset();
    free(w);
}

const hb_config_t *hb_worker_config(const hb_worker_t *w) {
    return w->cfg;
}
const hb_schedule_t *hb_worker_schedule(const hb_worker_t *w) {
    return &w->cfg->schedule;
}
hb_index_t *hb_worker_index(hb_worker_t *w) {
    return w->index;
}
hb_store_t *hb_worker_store(hb_worker_t *w) {
    return w->store;
}
const char *hb_worker_index_stale(hb_worker_t *w) {
    if (!w->store)
        return "the connection to the database is lost";
    if (!w->index_loaded)
        return "the subscriptions are not loaded yet";
    return hb_store_stale(w->store);
}
int hb_worker_index_current(hb_worker_t *w) {
    return hb_worker_index_stale(w) == NULL;
}
hb_http_t *hb_worker_http(hb_worker_t *w) {
    return w->http;
}
int hb_worker_stopping(const hb_worker_t *w) {
    return w->deliveries && hb_deliveries_abandoning(w->deliveries);
}
void hb_worker_db_error(hb_worker_t *w) {
    hb_metric_inc(w->m_db_errors);
}
