/*
 * The dispatcher's main loop.
 *
 * One thread does everything that matters, in a loop with a bounded wait:
 *   follow subscription changes (LISTEN/NOTIFY) -> poll Kafka -> start
 *   deliveries -> wait in curl_multi_poll (woken by Kafka's queue pipe) ->
 *   complete finished transfers -> collect delivery-log flushes -> store
 *   offsets -> pause or resume consumption.
 *
 * Each consumed message becomes an event_t that counts its unfinished
 * deliveries. A delivery finishes when it is acknowledged (2xx) or, when it
 * failed, once its failure is written to the delivery log (the log writer
 * hands the event back through hb_dlog_take_flushed). When an event's count
 * reaches zero its offset is marked done in the offset tracker, and only then
 * can the partition's committed position move past it. A crash at any moment
 * therefore redelivers instead of losing; the delivery id (the webhook-id) is
 * derived from the event uuid and the subscription id, so a redelivery carries
 * the same one.
 *
 * A message that cannot be decoded (a poison message) is copied, bytes
 * unchanged, to the dead-letter topic with the reason and its origin in Kafka
 * headers; its offset counts as done only when the broker acknowledged that
 * copy, so nothing that was accepted onto the events topic is lost.
 *
 * Nothing is consumed before the subscription index is loaded, so no event is
 * matched against an empty index. When too many events are unfinished
 * (max_pending_events) the assigned partitions are paused, not the loop.
 *
 * Shutdown (first SIGTERM): not ready, pause, let in-flight deliveries finish
 * until shutdown_timeout, flush the delivery log, store and commit offsets
 * synchronously, leave the group. Deliveries still in flight at the deadline
 * are abandoned without being recorded; their events are redelivered after
 * restart.
 */
#include "dispatcher.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hb_codec.h"
#include "hb_deliver.h"
#include "hb_dlog.h"
#include "hb_event.h"
#include "hb_http.h"
#include "hb_httpd.h"
#include "hb_index.h"
#include "hb_kafka.h"
#include "hb_log.h"
#include "hb_metrics.h"
#include "hb_offsets.h"
#include "hb_schemas.h"
#include "hb_sign.h"
#include "hb_signal.h"
#include "hb_store.h"

#define POLL_BATCH 1000  /* messages taken from Kafka per loop pass */
#define LOOP_WAIT_MS 100 /* longest sleep of one pass */
#define DLOG_MAX_QUEUE 200000

typedef struct event_s {
    hb_offref_t ref;
    int remaining; /* deliveries not yet durable */
    json_t *json;
} event_t;

typedef struct delivery_s {
    struct hb_dispatcher_s *d;
    event_t *ev;
    hb_sub_t *sub; /* reference held while in flight */
    char id[HB_UUID_LEN + 1];
    char *body; /* copy, kept for the failure log (replay) */
} delivery_t;

typedef struct verify_s {
    struct hb_dispatcher_s *d;
    hb_sub_t *sub;
    char challenge[HB_UUID_LEN + 1];
} verify_t;

struct hb_dispatcher_s {
    const hb_config_t *cfg;
    hb_codec_t *codec;
    hb_http_t *http;
    hb_httpd_t *httpd;
    hb_store_t *store;
    hb_dlog_t *dlog;
    hb_index_t *index;
    hb_offsets_t *offsets;
    rd_kafka_t *rk; /* consumer */
    rd_kafka_queue_t *rkq;
    rd_kafka_t *producer; /* dead letters */
    int wake[2];          /* Kafka queue and signals write here */
    int index_loaded;
    int assigned; /* the group assigned us (possibly zero partitions) */
    int paused;
    int abandoning; /* shutdown deadline passed: completions record nothing */
    size_t deliveries_in_flight;
    int64_t next_store_attempt;

    hb_metric_t *m_consumed, *m_poison, *m_matched, *m_delivered, *m_failed, *m_dropped;
    hb_metric_t *m_latency, *m_in_flight, *m_subs, *m_db_errors, *m_kafka_errors;
    hb_metric_t *m_verify_ok, *m_verify_failed;
};

/* ---------------------------------------------------------------- events */

static void event_finish_one(hb_dispatcher_t *d, event_t *ev) {
    if (--ev->remaining > 0)
        return;
    hb_offsets_done(d->offsets, ev->ref);
    json_decref(ev->json);
    free(ev);
}

static void delivery_free(delivery_t *dl) {
    hb_sub_unref(dl->sub);
    free(dl->body);
    free(dl);
}

static void record_attempt(hb_dispatcher_t *d, delivery_t *dl, const hb_http_result_t *res,
                           hb_outcome_t outcome, const char *reason) {
    const char *uuid = hb_event_uuid(dl->ev->json), *type = hb_event_type(dl->ev->json);
    hb_attempt_t a = {
        .delivery_id = dl->id,
        .subscription_id = dl->sub->id,
        .event_ids = uuid ? uuid : "",
        .event_type = type ? type : "",
        .attempt = 1,
        .started_ms = res ? res->started_ms : hb_wall_ms(),
        .duration_ms = res ? res->duration_ms : 0,
        .http_status = res ? res->http_status : 0,
        .outcome = outcome,
        .error = *reason ? reason : NULL,
        .response_snippet = res && res->body_len ? res->body : NULL,
        .body = outcome == HB_OUTCOME_DELIVERED ? NULL : dl->body,
    };
    /* A success does not gate the offset; a failure counts as finished only
     * once its row is durable, so it carries the event as token. */
    hb_dlog_add(d->dlog, &a, outcome == HB_OUTCOME_DELIVERED ? NULL : dl->ev);
}

static void on_delivery_done(const hb_http_result_t *res, void *opaque) {
    delivery_t *dl = opaque;
    hb_dispatcher_t *d = dl->d;
    char reason[256];
    hb_outcome_t outcome;

    d->deliveries_in_flight--;
    if (d->abandoning) { /* shutdown: the event will be redelivered */
        delivery_free(dl);
        return;
    }
    outcome = hb_deliver_classify(res, reason, sizeof(reason));
    hb_metric_observe(d->m_latency, (double)res->duration_ms / 1000.0);
    if (outcome == HB_OUTCOME_DELIVERED) {
        hb_metric_inc(d->m_delivered);
        hb_log(HB_LOG_DEBUG, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
               "delivered (HTTP %d, %lld ms)", res->http_status, (long long)res->duration_ms);
        record_attempt(d, dl, res, outcome, "");
        event_finish_one(d, dl->ev);
    } else {
        /* Until the retrier takes retryable failures, every failure is final. */
        hb_metric_inc(d->m_failed);
        hb_log(HB_LOG_WARN, HB_KV("delivery_id", dl->id, "subscription_id", dl->sub->id),
               "delivery failed: %s", reason);
        record_attempt(d, dl, res, HB_OUTCOME_FAILED, reason);
    }
    delivery_free(dl);
}

static void start_delivery(hb_dispatcher_t *d, event_t *ev, hb_sub_t *sub) {
    delivery_t *dl = hb_calloc(1, sizeof(*dl));
    const char *uuid = hb_event_uuid(ev->json);
    const char *parts[3] = {"delivery", uuid ? uuid : "", sub->id};
    json_t *events[1] = {ev->json};
    hb_payload_t payload;
    char errstr[256];

    dl->d = d;
    dl->ev = ev;
    dl->sub = hb_sub_ref(sub);
    hb_uuid_derive(parts, 3, dl->id);
    if (hb_deliver_render(sub, events, 1, dl->id, d->cfg->source, hb_wall_ms(), &payload, errstr,
                          sizeof(errstr)) < 0) {
        char reason[300];
        snprintf(reason, sizeof(reason), "cannot render payload: %s", errstr);
        hb_metric_inc(d->m_failed);
        hb_log(HB_LOG_ERROR, HB_KV("delivery_id", dl->id, "subscription_id", sub->id), "%s",
               reason);
        record_attempt(d, dl, NULL, HB_OUTCOME_FAILED, reason);
        delivery_free(dl);
        return;
    }
    dl->body = hb_strndup(payload.body, payload.len);
    d->deliveries_in_flight++;
    hb_deliver_send(d->http, sub, dl->id, &payload, d->cfg->request_timeout_ms,
                    (size_t)d->cfg->response_snippet_bytes, on_delivery_done, dl);
}

/* Delivery report of a dead-lettered poison message (main loop thread, from
 * rd_kafka_poll). Only an acknowledged copy lets the offset move. */
static void on_dead_letter_report(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque) {
    hb_dispatcher_t *d = opaque;
    event_t *ev = rkm->_private;
    if (rkm->err) {
        /* The offset stays uncommitted: after a restart the message is read
         * and dead-lettered again rather than lost. */
        hb_metric_inc(d->m_kafka_errors);
        hb_error("dead-lettering a poison message failed: %s; its offset stays uncommitted",
                 rd_kafka_err2str(rkm->err));
        json_decref(ev->json);
        free(ev);
        return;
    }
    event_finish_one(d, ev);
}

static void dead_letter_poison(hb_dispatcher_t *d, const rd_kafka_message_t *rkm, hb_offref_t ref,
                               const char *reason) {
    char part[16], off[24], errstr[256];
    rd_kafka_resp_err_t err;
    event_t *ev = hb_calloc(1, sizeof(*ev));
    const char *topic = rd_kafka_topic_name(rkm->rkt);

    ev->ref = ref;
    ev->remaining = 1;
    snprintf(part, sizeof(part), "%d", (int)rkm->partition);
    snprintf(off, sizeof(off), "%lld", (long long)rkm->offset);
    err = rd_kafka_producev(
        d->producer, RD_KAFKA_V_TOPIC(d->cfg->dlq_topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(rkm->key, rkm->key_len), RD_KAFKA_V_VALUE(rkm->payload, rkm->len),
        RD_KAFKA_V_HEADER("hookbridge-reason", reason, -1),
        RD_KAFKA_V_HEADER("hookbridge-source-topic", topic, -1),
        RD_KAFKA_V_HEADER("hookbridge-source-partition", part, -1),
        RD_KAFKA_V_HEADER("hookbridge-source-offset", off, -1), RD_KAFKA_V_OPAQUE(ev),
        RD_KAFKA_V_END);
    if (err) {
        hb_seterr(errstr, sizeof(errstr), "%s", rd_kafka_err2str(err));
        hb_error("cannot dead-letter a poison message (offset stays uncommitted): %s", errstr);
        free(ev);
    }
}

static void handle_message(hb_dispatcher_t *d, rd_kafka_message_t *rkm) {
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    char errstr[512];
    hb_sub_t *const *subs;
    size_t n;
    event_t *ev;
    json_t *json = NULL;
    hb_offref_t ref;

    if (rkm->err) {
        if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            return;
        /* Informational: the consumer recovers by itself. */
        hb_metric_inc(d->m_kafka_errors);
        hb_warn("kafka: %s", rd_kafka_message_errstr(rkm));
        return;
    }
    hb_metric_inc(d->m_consumed);
    ref = hb_offsets_track(d->offsets, topic, rkm->partition, rkm->offset);
    if (hb_codec_decode(d->codec, rkm->payload, rkm->len, &json, errstr, sizeof(errstr)) < 0) {
        char part[16], off[24];
        snprintf(part, sizeof(part), "%d", (int)rkm->partition);
        snprintf(off, sizeof(off), "%lld", (long long)rkm->offset);
        hb_metric_inc(d->m_poison);
        hb_log(HB_LOG_ERROR, HB_KV("topic", topic, "partition", part, "offset", off),
               "poison message sent to %s: %s", d->cfg->dlq_topic, errstr);
        dead_letter_poison(d, rkm, ref, errstr);
        return;
    }
    n = hb_index_match(d->index, hb_event_type(json), &subs);
    if (n == 0) {
        json_decref(json);
        hb_offsets_done(d->offsets, ref);
        return;
    }
    hb_metric_add(d->m_matched, (double)n);
    ev = hb_calloc(1, sizeof(*ev));
    ev->ref = ref;
    ev->json = json;
    /* Hold one count while starting, so a synchronous failure cannot finish
     * the event before all its deliveries exist. */
    ev->remaining = (int)n + 1;
    for (size_t i = 0; i < n; i++)
        start_delivery(d, ev, subs[i]);
    event_finish_one(d, ev);
}

/* ----------------------------------------------------------- verification */

static void on_verify_done(const hb_http_result_t *res, void *opaque) {
    verify_t *v = opaque;
    hb_dispatcher_t *d = v->d;
    char reason[256], errstr[256];
    int ok = 0;

    if (!d->abandoning) {
        ok = hb_deliver_check_challenge(res, v->challenge, reason, sizeof(reason)) == 0;
        hb_metric_inc(ok ? d->m_verify_ok : d->m_verify_failed);
        hb_log(ok ? HB_LOG_INFO : HB_LOG_WARN, HB_KV("subscription_id", v->sub->id),
               ok ? "endpoint verified" : "endpoint verification failed: %s", ok ? "" : reason);
        if (hb_store_record_verification(d->store, v->sub->id, ok, ok ? NULL : reason, errstr,
                                         sizeof(errstr)) < 0) {
            hb_metric_inc(d->m_db_errors);
            hb_log(HB_LOG_ERROR, HB_KV("subscription_id", v->sub->id),
                   "cannot record verification: %s", errstr);
        }
    }
    hb_sub_unref(v->sub);
    free(v);
}

static void run_verification(hb_dispatcher_t *d, const char *id) {
    hb_sub_t *sub = NULL;
    verify_t *v;
    char errstr[256];

    if (hb_store_claim_verification(d->store, id, &sub, errstr, sizeof(errstr)) < 0) {
        hb_metric_inc(d->m_db_errors);
        hb_log(HB_LOG_ERROR, HB_KV("subscription_id", id), "cannot claim verification: %s", errstr);
        return;
    }
    if (!sub)
        return; /* another replica took it, or nothing pending */
    v = hb_calloc(1, sizeof(*v));
    v->d = d;
    v->sub = sub;
    if (hb_uuid_random(v->challenge) < 0) {
        hb_error("cannot generate a verification challenge");
        hb_sub_unref(sub);
        free(v);
        return;
    }
    hb_log(HB_LOG_INFO, HB_KV("subscription_id", sub->id), "sending verification challenge");
    hb_deliver_verify_send(d->http, sub, v->challenge, d->cfg->verify_timeout_ms, on_verify_done,
                           v);
}

/* ---------------------------------------------------------- subscriptions */

static void on_sub_loaded(hb_sub_t *sub, void *opaque) {
    hb_index_upsert(((hb_dispatcher_t *)opaque)->index, sub);
}

static int load_index(hb_dispatcher_t *d) {
    char errstr[512];
    hb_index_clear(d->index);
    if (hb_store_load_all(d->store, on_sub_loaded, d, errstr, sizeof(errstr)) < 0) {
        hb_metric_inc(d->m_db_errors);
        hb_error("cannot load subscriptions: %s", errstr);
        return -1;
    }
    hb_metric_set(d->m_subs, (double)hb_index_deliverable_count(d->index));
    hb_info("subscription index loaded: %zu subscriptions, %zu deliverable",
            hb_index_count(d->index), hb_index_deliverable_count(d->index));
    return 0;
}

static void on_change(const char *id, hb_sub_t *sub, void *opaque) {
    hb_dispatcher_t *d = opaque;
    if (sub) {
        hb_log(HB_LOG_INFO, HB_KV("subscription_id", id), "subscription changed: %s, %s",
               sub->active ? "active" : "inactive", sub->verified ? "verified" : "not verified");
        hb_index_upsert(d->index, sub);
    } else {
        hb_log(HB_LOG_INFO, HB_KV("subscription_id", id), "subscription removed");
        hb_index_remove(d->index, id);
    }
    hb_metric_set(d->m_subs, (double)hb_index_deliverable_count(d->index));
}

static void on_verify(const char *id, void *opaque) {
    run_verification(opaque, id);
}

static void run_pending_verifications(hb_dispatcher_t *d);

static void on_reload(void *opaque) {
    hb_dispatcher_t *d = opaque;
    hb_info("database connection restored: reloading subscriptions");
    d->index_loaded = load_index(d) == 0;
    if (d->index_loaded)
        run_pending_verifications(d); /* requests made while we were away */
}

static const hb_store_handlers_t store_handlers = {on_change, on_verify, on_reload};

static void run_pending_verifications(hb_dispatcher_t *d) {
    char **ids = NULL, errstr[256];
    int cnt = 0;
    if (hb_store_pending_verifications(d->store, &ids, &cnt, errstr, sizeof(errstr)) < 0) {
        hb_error("cannot list pending verifications: %s", errstr);
        return;
    }
    for (int i = 0; i < cnt; i++) {
        run_verification(d, ids[i]);
        free(ids[i]);
    }
    free(ids);
}

/* Connects to PostgreSQL and loads the index; retried by the loop while the
 * database is unreachable (the service stays up, not ready). */
static void ensure_store(hb_dispatcher_t *d) {
    char errstr[512];
    if (d->store || hb_mono_ms() < d->next_store_attempt)
        return;
    d->store = hb_store_new(d->cfg->database_url, errstr, sizeof(errstr));
    if (d->store && !d->dlog) {
        d->dlog = hb_dlog_new(d->cfg->database_url, d->cfg->log_flush_ms, DLOG_MAX_QUEUE, errstr,
                              sizeof(errstr));
        if (!d->dlog) {
            hb_store_free(d->store);
            d->store = NULL;
        }
    }
    if (!d->store) {
        hb_metric_inc(d->m_db_errors);
        hb_error("database unavailable, retrying in 2 s: %s", errstr);
        d->next_store_attempt = hb_mono_ms() + 2000;
        return;
    }
    d->index_loaded = load_index(d) == 0;
    if (d->index_loaded)
        run_pending_verifications(d);
}

/* ------------------------------------------------------------------ kafka */

static void set_paused(hb_dispatcher_t *d, int pause) {
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (d->paused == pause || !d->rk)
        return;
    if (rd_kafka_assignment(d->rk, &parts) == RD_KAFKA_RESP_ERR_NO_ERROR && parts) {
        if (pause)
            (void)rd_kafka_pause_partitions(d->rk, parts);
        else
            (void)rd_kafka_resume_partitions(d->rk, parts);
        rd_kafka_topic_partition_list_destroy(parts);
    }
    d->paused = pause;
    hb_debug("consumption %s (%zu events unfinished)", pause ? "paused" : "resumed",
             hb_offsets_pending(d->offsets));
}

static void store_offsets(hb_dispatcher_t *d) {
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(8);
    if (hb_offsets_collect(d->offsets, list) > 0) {
        rd_kafka_resp_err_t err = rd_kafka_offsets_store(d->rk, list);
        if (err)
            hb_warn("storing offsets: %s", rd_kafka_err2str(err));
    }
    rd_kafka_topic_partition_list_destroy(list);
}

static void take_flushed(hb_dispatcher_t *d) {
    void *tokens[256];
    size_t n;
    if (!d->dlog)
        return;
    while ((n = hb_dlog_take_flushed(d->dlog, tokens, HB_ARRAY_SIZE(tokens))) > 0)
        for (size_t i = 0; i < n; i++)
            event_finish_one(d, tokens[i]);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    hb_dispatcher_t *d = opaque;
    int cooperative = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
    rd_kafka_error_t *kerr = NULL;

    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        hb_info("assigned %d partition(s)", parts->cnt);
        if (cooperative)
            kerr = rd_kafka_incremental_assign(rk, parts);
        else
            (void)rd_kafka_assign(rk, parts);
        if (d->paused)
            (void)rd_kafka_pause_partitions(rk, parts);
        d->assigned = 1;
    } else {
        hb_info("revoking %d partition(s)", parts->cnt);
        /* Commit what is finished before the new owner starts from it. */
        take_flushed(d);
        store_offsets(d);
        (void)rd_kafka_commit(rk, NULL, 0);
        for (int i = 0; i < parts->cnt; i++)
            hb_offsets_forget(d->offsets, parts->elems[i].topic, parts->elems[i].partition);
        if (cooperative)
            kerr = rd_kafka_incremental_unassign(rk, parts);
        else
            (void)rd_kafka_assign(rk, NULL);
        if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            hb_warn("rebalance: %s", rd_kafka_err2str(err));
    }
    if (kerr) {
        hb_error("rebalance: %s", rd_kafka_error_string(kerr));
        rd_kafka_error_destroy(kerr);
    }
}

static int start_consumer(hb_dispatcher_t *d, char *errstr, size_t errstr_size) {
    const hb_config_t *cfg = d->cfg;
    rd_kafka_conf_t *conf = hb_kafka_conf_new(cfg, "hookbridge-dispatcher", errstr, errstr_size);
    rd_kafka_topic_partition_list_t *topics;
    rd_kafka_resp_err_t err;
    char kerr[512];

    if (!conf)
        return -1;
    if (hb_kafka_conf_set(conf, "group.id",
                          *cfg->consumer_group ? cfg->consumer_group : "hookbridge-dispatcher",
                          errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "enable.auto.commit", "true", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "auto.commit.interval.ms", "1000", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "partition.assignment.strategy", "range", errstr, errstr_size) <
            0 ||
        /* the operator's HOOKBRIDGE_KAFKA_* settings win over our defaults */
        hb_kafka_conf_passthrough(conf, cfg, errstr, errstr_size) < 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_opaque(conf, d);
    d->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof(kerr));
    if (!d->rk) {
        rd_kafka_conf_destroy(conf);
        hb_seterr(errstr, errstr_size, "kafka consumer: %s", kerr);
        return -1;
    }
    conf = NULL; /* now owned by the rd_kafka_t */
    rd_kafka_poll_set_consumer(d->rk);
    d->rkq = rd_kafka_queue_get_consumer(d->rk);
    rd_kafka_queue_io_event_enable(d->rkq, d->wake[1], "k", 1);

    topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, cfg->events_topic, RD_KAFKA_PARTITION_UA);
    err = rd_kafka_subscribe(d->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        hb_seterr(errstr, errstr_size, "subscribe to %s: %s", cfg->events_topic,
                  rd_kafka_err2str(err));
        return -1;
    }
    hb_info("consuming %s in group %s", cfg->events_topic,
            *cfg->consumer_group ? cfg->consumer_group : "hookbridge-dispatcher");
    return 0;
}

static void poll_kafka(hb_dispatcher_t *d) {
    for (int i = 0; i < POLL_BATCH; i++) {
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(d->rk, 0);
        if (!rkm)
            return;
        handle_message(d, rkm);
        rd_kafka_message_destroy(rkm);
    }
}

/* ------------------------------------------------------------------- loop */

static void drain_wake_pipe(hb_dispatcher_t *d) {
    char buf[256];
    while (read(d->wake[0], buf, sizeof(buf)) > 0)
        ;
}

static void update_readiness(hb_dispatcher_t *d) {
    const char *why = NULL;
    if (hb_stop_requested)
        why = "shutting down";
    else if (!d->store || !hb_store_connected(d->store))
        why = "database not connected";
    else if (!d->index_loaded)
        why = "subscription index not loaded";
    else if (!d->assigned)
        why = "waiting for the consumer group assignment";
    hb_httpd_set_ready(d->httpd, why == NULL, why);
    hb_metric_set(d->m_in_flight, (double)d->deliveries_in_flight);
}

static void one_pass(hb_dispatcher_t *d, int wait_ms) {
    char errstr[512];
    hb_httpd_beat(d->httpd);
    if (d->store && hb_store_process(d->store, &store_handlers, d, errstr, sizeof(errstr)) < 0) {
        hb_metric_inc(d->m_db_errors);
        hb_warn("database: %s", errstr);
    }
    if (d->producer)
        rd_kafka_poll(d->producer, 0); /* dead-letter reports */
    take_flushed(d);
    if (d->rk) {
        store_offsets(d);
        if (!hb_stop_requested) {
            size_t pending = hb_offsets_pending(d->offsets);
            if (pending >= (size_t)d->cfg->max_pending_events)
                set_paused(d, 1);
            else if (pending <= (size_t)d->cfg->max_pending_events * 3 / 4)
                set_paused(d, 0);
        }
    }
    update_readiness(d);
    (void)hb_http_run(d->http, wait_ms, d->wake[0]);
    drain_wake_pipe(d);
}

int hb_dispatcher_run(hb_dispatcher_t *d) {
    char errstr[512];
    int64_t deadline;
    size_t unwritten;

    while (!hb_stop_requested) {
        ensure_store(d);
        if (d->store && d->index_loaded && !d->rk) {
            if (start_consumer(d, errstr, sizeof(errstr)) < 0) {
                hb_error("cannot start the Kafka consumer: %s", errstr);
                return -1;
            }
        }
        if (d->rk && !d->paused)
            poll_kafka(d);
        one_pass(d, LOOP_WAIT_MS);
    }

    hb_info("stopping: %zu deliveries in flight, draining for at most %lld ms",
            d->deliveries_in_flight, d->cfg->shutdown_timeout_ms);
    set_paused(d, 1);
    deadline = hb_mono_ms() + d->cfg->shutdown_timeout_ms;
    while (d->deliveries_in_flight > 0 && hb_mono_ms() < deadline)
        one_pass(d, 50);
    if (d->deliveries_in_flight > 0) {
        hb_warn("abandoning %zu deliveries still in flight; their events will be redelivered",
                d->deliveries_in_flight);
        d->abandoning = 1;
    }
    if (d->producer && hb_kafka_flush(d->producer, 5000) > 0)
        hb_warn("dead letters left unsent; their messages will be read again after restart");
    unwritten = d->dlog ? hb_dlog_close(d->dlog, 5000) : 0;
    if (unwritten)
        hb_warn("%zu delivery log rows were not written", unwritten);
    take_flushed(d);
    if (d->rk) {
        rd_kafka_resp_err_t err;
        store_offsets(d);
        err = rd_kafka_commit(d->rk, NULL, 0);
        if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
            hb_warn("final offset commit: %s", rd_kafka_err2str(err));
        if (d->rkq) {
            rd_kafka_queue_destroy(d->rkq);
            d->rkq = NULL;
        }
        err = rd_kafka_consumer_close(d->rk);
        if (err)
            hb_warn("leaving the consumer group: %s", rd_kafka_err2str(err));
    }
    hb_info("stopped");
    return 0;
}

/* ------------------------------------------------------------ build/free */

static void register_metrics(hb_dispatcher_t *d) {
    static const double latency_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                            0.5,   1,    2.5,   5,    10,  30};
    d->m_consumed = hb_metrics_counter("hookbridge_events_consumed_total", NULL,
                                       "Messages consumed from the events topic.");
    d->m_poison = hb_metrics_counter("hookbridge_poison_messages_total", NULL,
                                     "Messages that could not be decoded.");
    d->m_matched = hb_metrics_counter("hookbridge_deliveries_created_total", NULL,
                                      "Deliveries created by matching events to subscriptions.");
    d->m_delivered = hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"delivered\"",
                                        "Delivery attempts by outcome.");
    d->m_failed = hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"failed\"",
                                     "Delivery attempts by outcome.");
    d->m_dropped = hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"dropped\"",
                                      "Delivery attempts by outcome.");
    d->m_latency = hb_metrics_histogram("hookbridge_attempt_duration_seconds", NULL,
                                        "Duration of delivery attempts.", latency_bounds,
                                        HB_ARRAY_SIZE(latency_bounds));
    d->m_in_flight =
        hb_metrics_gauge("hookbridge_requests_in_flight", NULL, "Delivery requests in flight.");
    d->m_subs = hb_metrics_gauge("hookbridge_subscriptions", NULL,
                                 "Deliverable (active and verified) subscriptions.");
    d->m_db_errors =
        hb_metrics_counter("hookbridge_database_errors_total", NULL, "PostgreSQL errors.");
    d->m_kafka_errors =
        hb_metrics_counter("hookbridge_kafka_errors_total", NULL, "Kafka consumer errors.");
    d->m_verify_ok = hb_metrics_counter("hookbridge_verifications_total", "result=\"verified\"",
                                        "Verification challenges by result.");
    d->m_verify_failed = hb_metrics_counter("hookbridge_verifications_total", "result=\"failed\"",
                                            "Verification challenges by result.");
}

hb_dispatcher_t *hb_dispatcher_new(const hb_config_t *cfg, char *errstr, size_t errstr_size) {
    hb_dispatcher_t *d = hb_calloc(1, sizeof(*d));
    hb_http_conf_t hconf = {
        .max_in_flight = (long)cfg->max_in_flight,
        .max_host_connections = (long)cfg->max_host_connections,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .allow_http = cfg->allow_http,
        .allow_private_networks = cfg->allow_private_networks,
    };

    d->cfg = cfg;
    d->wake[0] = d->wake[1] = -1;
    if (!*cfg->database_url) {
        hb_seterr(errstr, errstr_size, "HOOKBRIDGE_DATABASE_URL is not set");
        goto fail;
    }
    if (pipe2(d->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
        hb_seterr(errstr, errstr_size, "pipe: %s", strerror(errno));
        goto fail;
    }
    hb_signal_install(d->wake[1]);
    register_metrics(d);
    d->codec = hb_codec_new(hb_schema_identity_event, errstr, errstr_size);
    if (!d->codec)
        goto fail;
    d->http = hb_http_new(&hconf, errstr, errstr_size);
    if (!d->http)
        goto fail;
    d->httpd = hb_httpd_start(cfg->http_listen, 30000, errstr, errstr_size);
    if (!d->httpd)
        goto fail;
    {
        rd_kafka_conf_t *pconf =
            hb_kafka_conf_new(cfg, "hookbridge-dispatcher", errstr, errstr_size);
        if (!pconf)
            goto fail;
        rd_kafka_conf_set_opaque(pconf, d);
        d->producer = hb_kafka_producer_new(pconf, on_dead_letter_report, errstr, errstr_size);
        pconf = NULL; /* owned by the producer, or destroyed on failure */
        if (!d->producer)
            goto fail;
    }
    d->index = hb_index_new();
    d->offsets = hb_offsets_new();
    hb_info("hookbridge-dispatcher %s: health on port %d", HB_VERSION, hb_httpd_port(d->httpd));
    return d;
fail:
    hb_dispatcher_free(d);
    return NULL;
}

void hb_dispatcher_free(hb_dispatcher_t *d) {
    if (!d)
        return;
    if (d->http) {
        d->abandoning = 1; /* completions from the abort record nothing */
        hb_http_free(d->http);
    }
    if (d->rkq)
        rd_kafka_queue_destroy(d->rkq);
    if (d->rk)
        rd_kafka_destroy(d->rk);
    if (d->producer)
        rd_kafka_destroy(d->producer);
    if (d->dlog) {
        (void)hb_dlog_close(d->dlog, 0);
        hb_dlog_free(d->dlog);
    }
    hb_store_free(d->store);
    hb_httpd_stop(d->httpd);
    hb_index_free(d->index);
    hb_offsets_free(d->offsets);
    hb_codec_free(d->codec);
    if (d->wake[0] >= 0) {
        close(d->wake[0]);
        close(d->wake[1]);
    }
    hb_metrics_reset();
    free(d);
}
