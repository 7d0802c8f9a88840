/* Jobs, durability gates and the producer with its resend list (see hb_outbox.h). */
#include "hb_outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_kafka.h"
#include "hb_log.h"

#define RESEND_DELAY_MS 1000
#define WATCH_EVERY_MS 30000  /* the produced topics' existence asked again */
#define WATCH_MISSING_MS 2000 /* ... while one is missing */
#define WATCH_RETRY_MS 1000   /* ... after the brokers did not answer, or once missing */
#define WATCH_TIMEOUT_MS 1000 /* one metadata request */

/* The produced topics' watch (hb_outbox_watch_topics): its own thread, as the
 * metadata requests are round trips the loop never waits for. */
typedef struct {
    pthread_t thread;
    int running; /* loop thread only */
    rd_kafka_t *rk;
    char **topics;
    int cnt;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;          /* lock */
    int recheck;       /* lock: asked to look again now */
    int answered;      /* lock: every topic answered for at least once */
    char missing[320]; /* lock: why a topic cannot be written ("" none) */
    char gone[256];    /* the watch's thread only: the topic missing says */
} watch_t;

struct hb_job_s {
    hb_offref_t ref;
    int holds;
    hb_job_t *prev, *next; /* live jobs, freed at exit if unfinished */
};

/* A message for the delay tiers or the dead-letter topic, kept until acked. */
struct hb_pmsg_s {
    char *topic;
    char *key;      /* NUL-terminated, but a poison copy's may hold NULs: key_len */
    size_t key_len; /* bytes of key */
    void *val;
    size_t len;
    char *hdr[10];                 /* name, value pairs (poison copies); NULL-terminated */
    rd_kafka_headers_t *orig_hdrs; /* a poison copy: the original's headers, before ours */
    hb_gate_t *gate;
    hb_dlog_row_t *row;       /* logged once the broker acks, with gate as its token */
    char *delivery_id;        /* the delivery it carries (a retry or dead letter), else NULL */
    void (*taken)(void *arg); /* the broker has it (hb_pmsg_on_taken) */
    void (*taken_free)(void *arg);
    void *taken_arg;
    int64_t resend_at;
    int poison; /* a poison copy: hdr[1] is its reason */
    int shrunk; /* dropped as too large: 1 its value, 2 its key too, 3 its headers too */
    struct hb_pmsg_s *next;
};

struct hb_outbox_s {
    hb_offsets_t *offsets;
    hb_metric_t *m_kafka_errors;
    rd_kafka_t *producer; /* delay tiers and dead letters */
    rd_kafka_queue_t *pq;
    hb_dlog_t *dlog;
    size_t unacked; /* produced, not yet acknowledged */
    size_t lookups; /* delivery-log look-ups not yet answered */
    hb_job_t *jobs;
    hb_gate_t *gates;
    hb_pmsg_t *resend;   /* refused by the broker, produced again later */
    char fatal_why[320]; /* the producer's fatal error: it is unusable */
    watch_t watch;       /* do the produced topics exist? */
};

/* ----------------------------------------------------------------- jobs */

hb_job_t *hb_outbox_track(hb_outbox_t *ob, const rd_kafka_message_t *rkm) {
    hb_job_t *j = hb_calloc(1, sizeof(*j));
    j->ref =
        hb_offsets_track(ob->offsets, rd_kafka_topic_name(rkm->rkt), rkm->partition, rkm->offset);
    j->holds = 1;
    j->next = ob->jobs;
    if (ob->jobs)
        ob->jobs->prev = j;
    ob->jobs = j;
    return j;
}

void hb_job_hold(hb_job_t *j) {
    j->holds++;
}

static void job_unlink_free(hb_outbox_t *ob, hb_job_t *j) {
    if (j->prev)
        j->prev->next = j->next;
    else
        ob->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    free(j);
}

void hb_outbox_release(hb_outbox_t *ob, hb_job_t *j) {
    if (--j->holds > 0)
        return;
    hb_offsets_done(ob->offsets, j->ref);
    job_unlink_free(ob, j);
}

int hb_job_revoked(const hb_job_t *j) {
    return hb_offsets_revoked(j->ref);
}

/* ---------------------------------------------------------------- gates */

hb_gate_t *hb_gate_new(hb_outbox_t *ob, hb_job_t *const *jobs, size_t n) {
    hb_gate_t *g = hb_calloc(1, sizeof(*g));
    g->next = ob->gates;
    if (ob->gates)
        ob->gates->prev = g;
    ob->gates = g;
    g->jobs_cnt = n;
    if (n) {
        g->jobs = hb_malloc(n * sizeof(*g->jobs));
        for (size_t i = 0; i < n; i++) {
            g->jobs[i] = jobs[i];
            hb_job_hold(jobs[i]);
        }
    }
    g->pending = 1;
    return g;
}

void hb_gate_forget(hb_outbox_t *ob, hb_gate_t *g) {
    if (g->prev)
        g->prev->next = g->next;
    else
        ob->gates = g->next;
    if (g->next)
        g->next->prev = g->prev;
    free(g->jobs);
    free(g);
}

void hb_gate_release(hb_outbox_t *ob, hb_gate_t *g) {
    for (size_t i = 0; i < g->jobs_cnt; i++)
        hb_outbox_release(ob, g->jobs[i]);
    hb_gate_forget(ob, g);
}

void hb_gate_done(hb_outbox_t *ob, hb_gate_t *g) {
    void (*answered)(hb_outbox_t *, hb_gate_t *) = g->answered;
    if (--g->pending > 0)
        return;
    if (answered) { /* a look-up's answer: the next step decides */
        g->answered = NULL;
        ob->lookups--;
        answered(ob, g);
        return;
    }
    hb_gate_release(ob, g);
}

void hb_gate_lookup(hb_outbox_t *ob, hb_gate_t *g, const char *delivery_id, int64_t since_ms,
                    void (*answered)(hb_outbox_t *ob, hb_gate_t *g), void *arg,
                    void (*arg_free)(void *arg)) {
    g->pending = 1;
    g->answered = answered;
    g->arg = arg;
    g->arg_free = arg_free;
    ob->lookups++;
    hb_dlog_lookup(ob->dlog, delivery_id, since_ms, &g->state, g);
}

void hb_gate_lookup_tail(hb_outbox_t *ob, hb_gate_t *g, const char *subscription_id,
                         const char *key, void (*answered)(hb_outbox_t *ob, hb_gate_t *g),
                         void *arg, void (*arg_free)(void *arg)) {
    g->pending = 1;
    g->answered = answered;
    g->arg = arg;
    g->arg_free = arg_free;
    ob->lookups++;
    hb_dlog_lookup_tail(ob->dlog, subscription_id, key, &g->state, g);
}

void hb_gate_log(hb_outbox_t *ob, hb_gate_t *g, hb_dlog_row_t *row) {
    hb_dlog_add_row(ob->dlog, row, g);
}

/* ------------------------------------------------------------- producing */

void hb_pmsg_free(hb_pmsg_t *m) {
    if (m->taken_free)
        m->taken_free(m->taken_arg);
    hb_dlog_row_free(m->row);
    free(m->delivery_id);
    free(m->topic);
    free(m->key);
    hb_held_sub(m->len);
    free(m->val);
    for (int i = 0; m->hdr[i]; i++)
        free(m->hdr[i]);
    if (m->orig_hdrs)
        rd_kafka_headers_destroy(m->orig_hdrs);
    free(m);
}

void hb_pmsg_set_delivery(hb_pmsg_t *m, const char *delivery_id) {
    free(m->delivery_id);
    m->delivery_id = delivery_id ? hb_strdup(delivery_id) : NULL;
}

void hb_pmsg_on_taken(hb_pmsg_t *m, void (*taken)(void *arg), void *arg,
                      void (*free_arg)(void *arg)) {
    m->taken = taken;
    m->taken_arg = arg;
    m->taken_free = free_arg;
}

/* A producer writing large poison messages writes them at its own rate (a
 * line each, like the poison lines themselves): the first of each topic, then
 * the limit counts. */
static hb_log_limit_t log_shrunk = HB_LOG_LIMIT_NOTE(
    "\"poison message copy for ... too large\"",
    ", and the first of each topic; each copy on the dead-letter topic names its source");

/* A poison copy too large to produce (librdkafka's message.max.bytes, a
 * million bytes by default, is below what a broker takes by default, 1 MiB,
 * and the topic's max.message.bytes may be below the events topic's): it
 * would be refused for ever, holding its offset, so it goes without its
 * value (then without its key, then without the original's headers), the
 * reason saying so and where the bytes are. Returns 1 when m was shrunk (to
 * be produced again at once). */
static int shrink_poison(hb_pmsg_t *m, rd_kafka_resp_err_t err) {
    static const char *const what[] = {"value", "key", "original headers"};
    char *reason;
    size_t n, size = m->len + m->key_len;
    const char *name;
    const void *val;
    size_t val_size;
    if (!m->poison || err != RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE || m->shrunk >= 3)
        return 0;
    if (m->shrunk++ == 0) {
        for (size_t i = 0;
             m->orig_hdrs && rd_kafka_header_get_all(m->orig_hdrs, i, &name, &val, &val_size) == 0;
             i++)
            size += strlen(name) + val_size;
        n = strlen(m->hdr[1]) + 200;
        reason = hb_malloc(n);
        snprintf(reason, n,
                 "%s; the message (%zu bytes) is too large to copy here: read it at its source "
                 "topic, partition and offset (headers hookbridge-source-*)",
                 m->hdr[1], size);
        free(m->hdr[1]);
        m->hdr[1] = reason;
        m->len = 0; /* m->val stays allocated (freed with m) */
    } else if (m->shrunk == 2) {
        free(m->key);
        m->key = NULL;
        m->key_len = 0;
    } else if (m->orig_hdrs) {
        rd_kafka_headers_destroy(m->orig_hdrs);
        m->orig_hdrs = NULL;
    }
    hb_log_limited_for(&log_shrunk, m->topic, HB_LOG_WARN, NULL,
                       "poison message copy for %s too large: dead-lettered without its %s; read "
                       "it at %s [%s] offset %s",
                       m->topic, what[m->shrunk - 1], m->hdr[3], m->hdr[5], m->hdr[7]);
    return 1;
}

static void watch_recheck(watch_t *wt);

/* One line per refused message a second grew with the messages held (every
 * retry or dead letter a topic refuses is produced again each second): the
 * first of each topic in a window says so at once, then the limit counts. */
static hb_log_limit_t log_refused = HB_LOG_LIMIT_NOTE(
    "\"... trying again in 1 s\"",
    ", and the first of each topic; hookbridge_kafka_errors_total counts every one");

/* The broker refused m (or it could not be queued): produced again in a
 * second, and said, with the delivery it carries so an operator can tell
 * which one waits (its key is the subscription id). */
static void resend_later(hb_outbox_t *ob, hb_pmsg_t *m, const char *what, rd_kafka_resp_err_t err) {
    hb_metric_inc(ob->m_kafka_errors);
    if (err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC || err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
        err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
        watch_recheck(&ob->watch); /* deleted, or its ACLs changed: not ready once known */
    if (shrink_poison(m, err)) {   /* produced again at once, smaller */
        m->resend_at = hb_mono_ms();
        m->next = ob->resend;
        ob->resend = m;
        return;
    }
    if (m->delivery_id)
        hb_log_limited_for(
            &log_refused, m->topic, HB_LOG_WARN,
            HB_KV("delivery_id", m->delivery_id, "subscription_id", m->key ? m->key : ""),
            "%s %s (%s): trying again in 1 s", what, m->topic, hb_kafka_err_str(err));
    else
        hb_log_limited_for(&log_refused, m->topic, HB_LOG_WARN, NULL,
                           "%s %s (%s): trying again in 1 s", what, m->topic,
                           hb_kafka_err_str(err));
    m->resend_at = hb_mono_ms() + RESEND_DELAY_MS;
    m->next = ob->resend;
    ob->resend = m;
}

void hb_outbox_send(hb_outbox_t *ob, hb_pmsg_t *m) {
    rd_kafka_headers_t *hdrs = NULL;
    rd_kafka_resp_err_t err;
    /* stamped by the reference clock the retrier judges its due time by
     * (hb_wall_ms), not this host's: a clock off here holds no retry */
    int64_t ts = hb_wall_ms();
    if (m->hdr[0]) {
        hdrs = m->orig_hdrs ? rd_kafka_headers_copy(m->orig_hdrs) : rd_kafka_headers_new(4);
        for (int i = 0; m->hdr[i]; i += 2)
            (void)rd_kafka_header_add(hdrs, m->hdr[i], -1, m->hdr[i + 1], -1);
    }
    if (hdrs)
        err = rd_kafka_producev(ob->producer, RD_KAFKA_V_TOPIC(m->topic),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                RD_KAFKA_V_KEY(m->key, m->key_len),
                                RD_KAFKA_V_VALUE(m->val, m->len), RD_KAFKA_V_HEADERS(hdrs),
                                RD_KAFKA_V_TIMESTAMP(ts), RD_KAFKA_V_OPAQUE(m), RD_KAFKA_V_END);
    else
        err = rd_kafka_producev(
            ob->producer, RD_KAFKA_V_TOPIC(m->topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->val, m->len),
            RD_KAFKA_V_TIMESTAMP(ts), RD_KAFKA_V_OPAQUE(m), RD_KAFKA_V_END);
    if (!err) {
        ob->unacked++;
        return; /* headers now owned by the message */
    }
    if (hdrs)
        rd_kafka_headers_destroy(hdrs);
    resend_later(ob, m, "cannot produce to", err);
}

/* Delivery report (main loop thread, from rd_kafka_poll). */
static void on_produced(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque) {
    hb_outbox_t *ob = opaque;
    hb_pmsg_t *m = rkm->_private;
    (void)rk;
    ob->unacked--;
    if (rkm->err) {
        resend_later(ob, m, "the broker did not take a message for", rkm->err);
        return;
    }
    if (m->taken)
        m->taken(m->taken_arg);
    if (m->row) { /* durable on the broker: now the log may say so */
        hb_dlog_add_row(ob->dlog, m->row, m->gate);
        m->row = NULL;
    } else if (m->gate) {
        hb_gate_done(ob, m->gate);
    }
    hb_pmsg_free(m);
}

static void resend_due(hb_outbox_t *ob) {
    hb_pmsg_t **pp = &ob->resend;
    int64_t now = hb_mono_ms();
    while (*pp) {
        hb_pmsg_t *m = *pp;
        if (m->resend_at > now) {
            pp = &m->next;
            continue;
        }
        *pp = m->next;
        m->next = NULL;
        hb_outbox_send(ob, m);
    }
}

hb_pmsg_t *hb_pmsg_new(const char *topic, const char *key, const void *val, size_t len,
                       hb_gate_t *gate, hb_dlog_row_t *row) {
    hb_pmsg_t *m = hb_calloc(1, sizeof(*m));
    m->topic = hb_strdup(topic);
    m->key = key ? hb_strdup(key) : NULL;
    m->key_len = key ? strlen(key) : 0;
    m->val = hb_malloc(len ? len : 1);
    memcpy(m->val, val, len);
    m->len = len;
    hb_held_add(len);
    m->gate = gate;
    m->row = row;
    return m;
}

void hb_outbox_produce(hb_outbox_t *ob, const char *topic, const char *key, const void *val,
                       size_t len, hb_job_t *job) {
    hb_gate_t *g = hb_gate_new(ob, job ? &job : NULL, job ? 1 : 0);
    hb_outbox_send(ob, hb_pmsg_new(topic, key, val, len, g, NULL));
}

void hb_outbox_poison(hb_outbox_t *ob, const char *topic, const rd_kafka_message_t *rkm,
                      hb_job_t *job, const char *reason) {
    char part[16], off[24];
    hb_pmsg_t *m = hb_pmsg_new(topic, NULL, rkm->payload ? rkm->payload : "", rkm->len,
                               hb_gate_new(ob, &job, 1), NULL);
    rd_kafka_headers_t *orig = NULL;
    /* the original's headers go along: they may be what reads it (a schema
     * id in headers, as Apicurio's serializers write by default), or trace it */
    if (rd_kafka_message_headers(rkm, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR && orig) {
        static const char *const ours[] = {"hookbridge-reason", "hookbridge-source-topic",
                                           "hookbridge-source-partition",
                                           "hookbridge-source-offset"};
        m->orig_hdrs = rd_kafka_headers_copy(orig);
        /* a dead letter produced again and poison again: the headers of its
         * first copy would name another place and reason than ours */
        for (size_t i = 0; i < HB_ARRAY_SIZE(ours); i++)
            (void)rd_kafka_header_remove(m->orig_hdrs, ours[i]);
    }
    if (rkm->key) { /* the key's bytes, all of them: a key may be binary (Avro, a number) */
        m->key = hb_malloc(rkm->key_len + 1);
        memcpy(m->key, rkm->key, rkm->key_len);
        m->key[rkm->key_len] = '\0';
        m->key_len = rkm->key_len;
    }
    snprintf(part, sizeof(part), "%d", (int)rkm->partition);
    snprintf(off, sizeof(off), "%lld", (long long)rkm->offset);
    m->hdr[0] = hb_strdup("hookbridge-reason");
    m->hdr[1] = hb_strdup(reason);
    m->hdr[2] = hb_strdup("hookbridge-source-topic");
    m->hdr[3] = hb_strdup(rd_kafka_topic_name(rkm->rkt));
    m->hdr[4] = hb_strdup("hookbridge-source-partition");
    m->hdr[5] = hb_strdup(part);
    m->hdr[6] = hb_strdup("hookbridge-source-offset");
    m->hdr[7] = hb_strdup(off);
    m->poison = 1;
    hb_outbox_send(ob, m);
}

/* ------------------------------------------------------------------ loop */

void hb_outbox_take_flushed(hb_outbox_t *ob) {
    void *tokens[256];
    size_t n;
    if (!ob->dlog)
        return;
    while ((n = hb_dlog_take_flushed(ob->dlog, tokens, HB_ARRAY_SIZE(tokens))) > 0)
        for (size_t i = 0; i < n; i++)
            hb_gate_done(ob, tokens[i]);
}

void hb_outbox_settle(hb_outbox_t *ob, long long max_wait_ms) {
    if (ob->dlog && hb_dlog_sync(ob->dlog, max_wait_ms) < 0)
        hb_debug("delivery log: rows still unwritten after %lld ms; their offsets are not "
                 "committed",
                 max_wait_ms);
    hb_outbox_take_flushed(ob);
}

void hb_outbox_poll(hb_outbox_t *ob) {
    rd_kafka_poll(ob->producer, 0); /* delivery reports */
    if (ob->resend)
        resend_due(ob);
    hb_outbox_take_flushed(ob);
}

rd_kafka_t *hb_outbox_producer(hb_outbox_t *ob) {
    return ob->producer;
}

const char *hb_outbox_fatal(hb_outbox_t *ob) {
    char why[256];
    if (ob->fatal_why[0])
        return ob->fatal_why;
    if (!ob->producer ||
        rd_kafka_fatal_error(ob->producer, why, sizeof(why)) == RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    snprintf(ob->fatal_why, sizeof(ob->fatal_why), "Kafka producer unusable: %s", why);
    hb_error("%s; no retry or dead letter can be written any more", ob->fatal_why);
    return ob->fatal_why;
}

int hb_outbox_resending(const hb_outbox_t *ob) {
    return ob->resend != NULL;
}

size_t hb_outbox_lookups(const hb_outbox_t *ob) {
    return ob->lookups;
}

void hb_outbox_drain(hb_outbox_t *ob) {
    size_t unwritten, refused = 0;
    int queued = hb_kafka_flush(ob->producer, 5000);
    rd_kafka_poll(ob->producer, 0); /* a last refusal lands in the resend list */
    for (const hb_pmsg_t *m = ob->resend; m; m = m->next)
        refused++;
    if (queued > 0 || refused > 0)
        hb_warn("%zu retry or dead-letter message(s) left unsent (%zu refused by the broker); "
                "their sources will be read again",
                (size_t)(queued > 0 ? queued : 0) + refused, refused);
    unwritten = ob->dlog ? hb_dlog_close(ob->dlog, 5000) : 0;
    if (unwritten)
        hb_warn("%zu delivery log rows were not written", unwritten);
    hb_outbox_take_flushed(ob);
}

/* ---------------------------------------------------------- topic watch */

/* One round: each topic's metadata through the producer. 1 when every topic
 * answered; why (empty when all exist) says the first that cannot be
 * written, and topic names it. */
static int watch_round(watch_t *wt, char *why, size_t size, char *topic, size_t topic_size) {
    why[0] = '\0';
    for (int i = 0; i < wt->cnt; i++) {
        rd_kafka_topic_t *rkt;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err;
        int stop;
        pthread_mutex_lock(&wt->lock); /* a stop waits for one request at most */
        stop = wt->stop;
        pthread_mutex_unlock(&wt->lock);
        if (stop || !(rkt = rd_kafka_topic_new(wt->rk, wt->topics[i], NULL)))
            return 0;
        err = rd_kafka_metadata(wt->rk, 0, rkt, &md, WATCH_TIMEOUT_MS);
        rd_kafka_topic_destroy(rkt);
        if (err || !md) { /* nobody answered: nothing learnt */
            if (md)
                rd_kafka_metadata_destroy(md);
            return 0;
        }
        if (md->topic_cnt == 1 && !why[0]) {
            rd_kafka_resp_err_t terr = md->topics[0].err;
            if (terr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                snprintf(why, size, "topic %s does not exist", wt->topics[i]);
            else if (terr == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
                snprintf(why, size, "topic %s is not authorized to this service", wt->topics[i]);
            if (why[0])
                snprintf(topic, topic_size, "%s", wt->topics[i]);
        }
        rd_kafka_metadata_destroy(md);
    }
    return 1;
}

static void *watch_main(void *arg) {
    watch_t *wt = arg;
    int stop = 0, suspect = 0;
    while (!stop) {
        char why[sizeof(wt->missing)], topic[sizeof(wt->gone)];
        int answered = watch_round(wt, why, sizeof(why), topic, sizeof(topic));
        int64_t until;
        /* A topic created a moment ago may be unknown to the broker asked
         * (its metadata spreads through the cluster): missing only when it
         * still is a second later. */
        if (answered && why[0] && !suspect && !wt->missing[0]) {
            suspect = 1;
            answered = 0;
        } else if (answered) {
            suspect = 0;
        }
        pthread_mutex_lock(&wt->lock);
        if (answered) {
            if (why[0] && strcmp(why, wt->missing) != 0)
                hb_error("%s: %s (not ready until it %s; the retries and dead letters for it "
                         "wait, and so do the offsets of their sources)",
                         why,
                         strstr(why, "not authorized")
                             ? "give the service's principal Describe and Write on it"
                             : "create it",
                         strstr(why, "not authorized") ? "is" : "exists");
            else if (!why[0] && wt->missing[0])
                hb_info("topic %s can be written now (ready as far as the topics it writes go)",
                        wt->gone);
            snprintf(wt->missing, sizeof(wt->missing), "%s", why);
            if (why[0])
                snprintf(wt->gone, sizeof(wt->gone), "%s", topic);
            wt->answered = 1;
        }
        until = hb_mono_ms() + (!answered ? WATCH_RETRY_MS
                                : why[0]  ? WATCH_MISSING_MS
                                          : WATCH_EVERY_MS);
        while (!wt->stop && !wt->recheck && hb_mono_ms() < until)
            hb_cond_wait_until(&wt->cond, &wt->lock, until);
        wt->recheck = 0;
        stop = wt->stop;
        pthread_mutex_unlock(&wt->lock);
    }
    return NULL;
}

static void watch_recheck(watch_t *wt) {
    if (!wt->running)
        return;
    pthread_mutex_lock(&wt->lock);
    wt->recheck = 1;
    pthread_cond_signal(&wt->cond);
    pthread_mutex_unlock(&wt->lock);
}

void hb_outbox_watch_end(hb_outbox_t *ob) {
    watch_t *wt = &ob->watch;
    if (!wt->running)
        return;
    pthread_mutex_lock(&wt->lock);
    wt->stop = 1;
    pthread_cond_signal(&wt->cond);
    pthread_mutex_unlock(&wt->lock);
}

static void watch_stop(hb_outbox_t *ob) {
    watch_t *wt = &ob->watch;
    if (wt->running) {
        hb_outbox_watch_end(ob);
        pthread_join(wt->thread, NULL);
        pthread_cond_destroy(&wt->cond);
        pthread_mutex_destroy(&wt->lock);
        wt->running = 0;
    }
    for (int i = 0; i < wt->cnt; i++)
        free(wt->topics[i]);
    free(wt->topics);
    wt->topics = NULL;
    wt->cnt = 0;
}

void hb_outbox_watch_topics(hb_outbox_t *ob, const char *const *topics, int n) {
    watch_t *wt = &ob->watch;
    int err;
    if (wt->running || !ob->producer || n <= 0)
        return;
    wt->rk = ob->producer;
    wt->topics = hb_calloc((size_t)n, sizeof(*wt->topics));
    for (int i = 0; i < n; i++) {
        int seen = 0; /* a tier named like the DLQ is refused by the config; be safe */
        for (int j = 0; j < wt->cnt; j++)
            seen |= !strcmp(wt->topics[j], topics[i]);
        if (!seen)
            wt->topics[wt->cnt++] = hb_strdup(topics[i]);
    }
    pthread_mutex_init(&wt->lock, NULL);
    hb_cond_init_mono(&wt->cond);
    err = pthread_create(&wt->thread, NULL, watch_main, wt);
    if (err) {
        pthread_cond_destroy(&wt->cond);
        pthread_mutex_destroy(&wt->lock);
        hb_error("cannot start the produced topics' watch (readiness ignores them): %s",
                 strerror(err));
        return;
    }
    wt->running = 1;
}

const char *hb_outbox_unready(hb_outbox_t *ob, char *buf, size_t size) {
    watch_t *wt = &ob->watch;
    const char *why = NULL;
    if (!wt->running)
        return NULL;
    pthread_mutex_lock(&wt->lock);
    if (!wt->answered)
        snprintf(buf, size, "checking that the delay tiers and the dead-letter topic exist");
    else if (wt->missing[0])
        snprintf(buf, size, "%s", wt->missing);
    why = !wt->answered || wt->missing[0] ? buf : NULL;
    pthread_mutex_unlock(&wt->lock);
    return why;
}

/* ------------------------------------------------------------ build/free */

void hb_outbox_set_dlog(hb_outbox_t *ob, hb_dlog_t *dlog) {
    ob->dlog = dlog;
}

hb_dlog_t *hb_outbox_dlog(const hb_outbox_t *ob) {
    return ob->dlog;
}

hb_outbox_t *hb_outbox_new(const hb_config_t *cfg, const char *client_id, int wake_fd,
                           hb_offsets_t *offsets, hb_metric_t *kafka_errors, char *errstr,
                           size_t errstr_size) {
    hb_outbox_t *ob = hb_calloc(1, sizeof(*ob));
    rd_kafka_conf_t *pconf = hb_kafka_conf_new(cfg, client_id, errstr, errstr_size);
    ob->offsets = offsets;
    ob->m_kafka_errors = kafka_errors;
    if (!pconf)
        goto fail;
    rd_kafka_conf_set_opaque(pconf, ob);
    ob->producer = hb_kafka_producer_new(pconf, on_produced, errstr, errstr_size);
    if (!ob->producer)
        goto fail;
    /* Delivery reports wake the loop, so acknowledged work frees offsets soon. */
    ob->pq = rd_kafka_queue_get_main(ob->producer);
    rd_kafka_queue_io_event_enable(ob->pq, wake_fd, "p", 1);
    return ob;
fail:
    hb_outbox_free(ob);
    return NULL;
}

void hb_outbox_free(hb_outbox_t *ob) {
    if (!ob)
        return;
    watch_stop(ob); /* its thread uses the producer */
    if (ob->pq)
        rd_kafka_queue_destroy(ob->pq);
    if (ob->producer) {
        rd_kafka_purge(ob->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(ob->producer, 0); /* purged reports land in the resend list */
        rd_kafka_destroy(ob->producer);
    }
    while (ob->resend) {
        hb_pmsg_t *m = ob->resend;
        ob->resend = m->next;
        hb_pmsg_free(m);
    }
    if (ob->dlog) {
        (void)hb_dlog_close(ob->dlog, 0);
        hb_dlog_free(ob->dlog);
    }
    while (ob->gates) {
        if (ob->gates->answered && ob->gates->arg_free) /* a look-up never answered */
            ob->gates->arg_free(ob->gates->arg);
        hb_gate_forget(ob, ob->gates);
    }
    while (ob->jobs)
        job_unlink_free(ob, ob->jobs);
    free(ob);
}
