/*
 * The sender: every input event goes normalize -> encode (single-object Avro
 * with the embedded IdentityEvent schema) -> produce to the events topic,
 * keyed by hb_event_key; or, with hb_producer_use_registry, in the Schema
 * Registry framing (0x00 + schema id). The librdkafka producer is idempotent with
 * acks=all, so a retried send never duplicates.
 *
 * One thread: main's. Delivery reports arrive through rd_kafka_poll and
 * rd_kafka_flush on that same thread, so the counters are plain integers.
 *
 * What must hold: every input ends up counted exactly once, as delivered or
 * as failed (a bad line, an encode error, a produce error, a failed delivery
 * report, or still unsent when a stop cut the drain short), so
 * "produced N, failed M" adds up to the inputs that were read. An input a
 * stop kept out of a full queue (or --print out of a closed stdout) is not
 * read: HB_PRODUCER_STOPPED, and the caller's input ends before it. The
 * ones that failed are named so they can be published again: lines by
 * number (as ranges), Okta events by uuid and by the earliest published
 * time among them (hb_producer_first_lost).
 */
#include "producer.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hb_codec.h"
#include "hb_event.h"
#include "hb_kafka.h"
#include "hb_log.h"
#include "hb_registry.h"
#include "hb_schemas.h"
#include "hb_signal.h"

/* How long start-up waits for the events topic's metadata (hb_kafka_topic_prepare). */
#define HB_PREPARE_MS 5000
/* How long a produce call may wait for room in a full local queue. */
#define HB_PRODUCE_BLOCK_MS 30000

struct hb_producer_s {
    const hb_config_t *cfg;
    rd_kafka_t *rk;          /* NULL when print_only */
    rd_kafka_topic_t *topic; /* the events topic, its leaders known before the first send */
    hb_codec_t *codec;
    const char *unit;
    int allow_unknown_types;
    int name_uuids; /* a refusal names the event's uuid */
    int registry_framing;
    uint32_t schema_id;
    long long queued;   /* handed to librdkafka, report pending or received */
    long long reported; /* delivery reports received */
    long long delivered;
    long long failed;
    long long timed_out;          /* of failed: not acknowledged within message.timeout.ms */
    long long message_timeout_ms; /* librdkafka's message.timeout.ms as configured */
    long long *timed_out_at;      /* their line (event) numbers, as reported */
    size_t timed_out_cap;
    long long *unsent_at; /* purged at a stop: line (event) numbers */
    size_t unsent_cnt, unsent_cap;
    /* named (Okta) events: of those the brokers did not take, the earliest
     * published time, and whether one had none; a run again from there
     * publishes them */
    char first_lost[64];
    int lost_unnamed;
    int output_failed; /* print_only: stdout could not be written (stopping) */
    int stalled;       /* the local queue stayed full HB_PRODUCE_BLOCK_MS (stopping) */
};

/* What a queued event carries to its delivery report: its number, and for
 * a named event (hb_producer_name_uuids) its uuid and published time as
 * Okta gave them, which a user can find again. */
typedef struct {
    long long seq;
    char uuid[104];
    char published[64];
} sent_t;

/* Timed-out events named one by one before the summary says the rest. */
#define HB_TIMEOUTS_LISTED 10

static void seq_add(long long **at, size_t *cnt, size_t *cap, long long seq) {
    if (*cnt == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        *at = hb_realloc(*at, *cap * sizeof(**at));
    }
    (*at)[(*cnt)++] = seq;
}

/* A named event the brokers did not take: where a run again starts. */
static void note_lost(hb_producer_t *p, const sent_t *sent) {
    if (!*sent->published)
        p->lost_unnamed = 1;
    else if (!*p->first_lost || hb_time_before(sent->published, p->first_lost))
        snprintf(p->first_lost, sizeof(p->first_lost), "%s", sent->published);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque) {
    hb_producer_t *p = opaque;
    sent_t *sent = p->name_uuids ? rkm->_private : NULL;
    long long seq = sent ? sent->seq : (long long)(intptr_t)rkm->_private;
    char named[160] = "";
    (void)rk;
    p->reported++;
    if (!rkm->err) {
        p->delivered++;
        free(sent);
        return;
    }
    p->failed++;
    if (sent) {
        note_lost(p, sent);
        if (*sent->uuid)
            snprintf(named, sizeof(named), " (uuid %s)", sent->uuid);
        free(sent);
    }
    /* timeouts come all together when the brokers are out of reach: the
     * first few by number, then one summary (hb_producer_finish) */
    if (rkm->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT) {
        /* kept for the summary, which names them all as ranges: without
         * their numbers a user cannot publish again just what failed */
        size_t n = (size_t)p->timed_out;
        seq_add(&p->timed_out_at, &n, &p->timed_out_cap, seq);
        if (++p->timed_out > HB_TIMEOUTS_LISTED)
            return;
    }
    /* purged messages are summed up once by hb_producer_finish, by number */
    if (rkm->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE || rkm->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
        seq_add(&p->unsent_at, &p->unsent_cnt, &p->unsent_cap, seq);
    else
        fprintf(stderr, "%s %lld%s: delivery failed: %s\n", p->unit, seq, named,
                hb_kafka_err_str(rkm->err));
}

/* "30 s", or "1500 ms" when not whole seconds. */
static void fmt_ms(char *buf, size_t size, long long ms) {
    if (ms % 1000)
        snprintf(buf, size, "%lld ms", ms);
    else
        snprintf(buf, size, "%lld s", ms / 1000);
}

/* The wait in force in conf, whoever set it (librdkafka's default: 300 s). */
static long long conf_message_timeout_ms(rd_kafka_conf_t *conf) {
    rd_kafka_topic_conf_t *tconf = rd_kafka_conf_get_default_topic_conf(conf);
    char val[32];
    size_t val_len = sizeof(val);
    if (tconf &&
        rd_kafka_topic_conf_get(tconf, "message.timeout.ms", val, &val_len) == RD_KAFKA_CONF_OK)
        return atoll(val);
    return 300000;
}

/* p's librdkafka producer made of conf (taken, also on failure). */
static rd_kafka_t *producer_of(hb_producer_t *p, rd_kafka_conf_t *conf, char *errstr,
                               size_t errstr_size) {
    p->message_timeout_ms = conf_message_timeout_ms(conf);
    rd_kafka_conf_set_opaque(conf, p);
    return hb_kafka_producer_new(conf, on_delivery, errstr, errstr_size);
}

hb_producer_t *hb_producer_new(const hb_config_t *cfg, int allow_unknown_types, int print_only,
                               const char *unit, long long unreachable_timeout_ms, char *errstr,
                               size_t errstr_size) {
    hb_producer_t *p = hb_calloc(1, sizeof(*p));
    rd_kafka_conf_t *conf, *fast = NULL;
    char val[32], wait[32];
    p->cfg = cfg;
    p->unit = unit;
    p->allow_unknown_types = allow_unknown_types;
    p->codec = hb_codec_new(hb_schema_identity_event, errstr, errstr_size);
    if (!p->codec)
        goto fail;
    if (print_only)
        return p;
    conf = hb_kafka_conf_new(cfg, "hookbridge-producer", errstr, errstr_size);
    if (!conf)
        goto fail;
    if (unreachable_timeout_ms > 0) {
        /* the same settings with the shorter wait, for brokers that do not
         * answer at start; an operator's HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS
         * still wins (the passthrough once more, after) */
        fast = rd_kafka_conf_dup(conf);
        snprintf(val, sizeof(val), "%lld", unreachable_timeout_ms);
        if (hb_kafka_conf_set(fast, "message.timeout.ms", val, errstr, errstr_size) < 0 ||
            hb_kafka_conf_passthrough(fast, cfg, errstr, errstr_size) < 0) {
            rd_kafka_conf_destroy(fast);
            rd_kafka_conf_destroy(conf);
            fast = NULL;
            goto fail;
        }
    }
    p->rk = producer_of(p, conf, errstr, errstr_size);
    if (!p->rk)
        goto fail;
    p->topic = hb_kafka_topic_prepare(p->rk, cfg->events_topic, HB_PREPARE_MS, errstr, errstr_size);
    if (!p->topic && fast) {
        /* No broker gave the events topic at start (a wrong address, a
         * firewall, a missing topic) and nothing is produced yet: the
         * producer is made again with the shorter wait, so a user hears of it
         * in half a minute instead of librdkafka's five. Brokers that
         * answered keep librdkafka's wait, so a stream (hookbridge-producer -
         * fed by a pipe) rides out an outage later on as before. */
        rd_kafka_destroy(p->rk);
        p->rk = producer_of(p, fast, errstr, errstr_size);
        fast = NULL;
        if (!p->rk)
            goto fail;
    }
    if (fast)
        rd_kafka_conf_destroy(fast);
    if (!p->topic) { /* the events wait in librdkafka's queue for the brokers */
        fmt_ms(wait, sizeof(wait), p->message_timeout_ms);
        hb_log(HB_LOG_WARN, NULL,
               "kafka: %s (brokers %s); producing anyway: an event the brokers have not "
               "acknowledged within %s fails (HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS)",
               errstr, cfg->kafka_brokers, wait);
    }
    return p;
fail:
    if (fast)
        rd_kafka_conf_destroy(fast);
    hb_producer_free(p);
    return NULL;
}

int hb_producer_use_registry(hb_producer_t *p, long long schema_id, char *errstr,
                             size_t errstr_size) {
    if (schema_id < 0) {
        hb_registry_opts_t o = {p->cfg->schema_registry_url, p->cfg->schema_registry_user_info,
                                p->cfg->schema_registry_ca_file, p->cfg->schema_registry_timeout_ms,
                                0}; /* registers only */
        char subject[300];
        uint32_t id = 0;
        snprintf(subject, sizeof(subject), "%s-value", p->cfg->events_topic);
        if (hb_registry_register(&o, subject, hb_schema_identity_event, &id, errstr, errstr_size) <
            0)
            return -1;
        hb_info("IdentityEvent schema registered under %s: id %u", subject, (unsigned)id);
        schema_id = id;
    }
    p->registry_framing = 1;
    p->schema_id = (uint32_t)schema_id;
    return 0;
}

void hb_producer_reject(hb_producer_t *p, long long seq, const char *reason) {
    p->failed++;
    fprintf(stderr, "%s %lld: %s\n", p->unit, seq, reason);
}

void hb_producer_name_uuids(hb_producer_t *p) {
    p->name_uuids = 1;
}

/* All of s[0, n) to fd, through interruptions and short writes: a signal
 * while a reader is slow cut a line of --print's output short, its event
 * counted as printed (stdio gives up on EINTR). 0, or -1 with errno. */
static int write_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

int hb_producer_send(hb_producer_t *p, json_t *ev, long long seq) {
    char errstr[512], named[700];
    void *buf = NULL, *opaque = (void *)(intptr_t)seq;
    size_t len = 0;
    int r;
    int64_t give_up;
    const char *key, *uuid = json_string_value(json_object_get(ev, "uuid"));
    const char *published = json_string_value(json_object_get(ev, "published"));
    char *given = p->name_uuids && uuid ? hb_strdup(uuid) : NULL; /* before normalizing */
    sent_t *sent = NULL;
    if (p->name_uuids && p->rk) { /* as Okta gave them, for its delivery report */
        sent = hb_calloc(1, sizeof(*sent));
        sent->seq = seq;
        if (uuid && strlen(uuid) < sizeof(sent->uuid))
            snprintf(sent->uuid, sizeof(sent->uuid), "%s", uuid);
        if (published && strlen(published) < sizeof(sent->published))
            snprintf(sent->published, sizeof(sent->published), "%s", published);
        hb_utf8_scrub(sent->uuid);
        opaque = sent;
    }
    if (hb_event_normalize(ev, p->allow_unknown_types, errstr, sizeof(errstr)) < 0)
        goto fail;
    if (p->registry_framing ? hb_codec_encode_registry(p->codec, ev, p->schema_id, &buf, &len,
                                                       errstr, sizeof(errstr)) < 0
                            : hb_codec_encode(p->codec, ev, &buf, &len, errstr, sizeof(errstr)) < 0)
        goto fail;
    if (len > HB_EVENT_MAX_BYTES) {
        hb_seterr(errstr, sizeof(errstr), "event of %zu bytes (encoded) is larger than %d bytes",
                  len, HB_EVENT_MAX_BYTES);
        free(buf);
        buf = NULL;
        goto fail;
    }
    key = hb_event_key(ev);
    if (!p->rk) {
        char *line = p->output_failed ? NULL : json_dumps(ev, JSON_COMPACT);
        size_t n = line ? strlen(line) : 0;
        free(buf);
        free(given);
        if (line) { /* one write of the whole line (a stop waits for it) */
            line = hb_realloc(line, n + 2);
            memcpy(line + n, "\n", 2);
            if (write_all(STDOUT_FILENO, line, n + 1) < 0) {
                hb_error("writing the events to stdout: %s: stopping", strerror(errno));
                p->output_failed = 1;
                hb_stop_requested = 1;
            }
        }
        free(line);
        if (p->output_failed) /* not printed: the input is left there */
            return HB_PRODUCER_STOPPED;
        if (!n) {
            hb_producer_reject(p, seq, "cannot be written as JSON");
            return -1;
        }
        p->delivered++;
        return 0;
    }
    /* A full queue is waited out (delivery reports make room) for
     * HB_PRODUCE_BLOCK_MS, in short turns: a stop ends the wait, and the
     * event counts as not read (it is where a run again starts). A queue
     * still full then (the brokers away or frozen, taking nothing) stops
     * the run the same way: each later event would wait as long again and
     * fail, 30 s a line (review 64: "line 12: ... Local: Queue full", then
     * line 13 30 s later, the resume point past both). */
    give_up = hb_mono_ms() + HB_PRODUCE_BLOCK_MS;
    while ((r = hb_kafka_produce(p->rk, p->cfg->events_topic, key, strlen(key), buf, len, opaque,
                                 100, errstr, sizeof(errstr))) == HB_KAFKA_QUEUE_FULL &&
           !hb_stop_requested && hb_mono_ms() < give_up) {
    }
    if (r == HB_KAFKA_QUEUE_FULL && !hb_stop_requested) {
        char wait[32];
        fmt_ms(wait, sizeof(wait), HB_PRODUCE_BLOCK_MS);
        hb_error("the Kafka brokers %s (HOOKBRIDGE_KAFKA_BROKERS) took no %s for %s, the local "
                 "queue full (queue.buffering.max.messages): stopping before %s %lld",
                 p->cfg->kafka_brokers, p->unit, wait, p->unit, seq);
        p->stalled = 1;
        hb_stop_requested = 1;
    }
    if (r == HB_KAFKA_QUEUE_FULL && hb_stop_requested) {
        free(buf);
        free(given);
        free(sent);
        return HB_PRODUCER_STOPPED;
    }
    if (r < 0) {
        if (sent) /* not refused for what it is: the brokers did not take it */
            note_lost(p, sent);
        goto fail;
    }
    free(buf);
    free(given);
    p->queued++;
    rd_kafka_poll(p->rk, 0); /* serve delivery reports as we go */
    return 0;
fail:
    free(buf);
    free(sent);
    if (given) {
        snprintf(named, sizeof(named), "uuid %.100s: %s", given, errstr);
        hb_utf8_scrub(named);
    }
    hb_producer_reject(p, seq, given ? named : errstr);
    free(given);
    return -1;
}

void hb_producer_poll(hb_producer_t *p, int timeout_ms) {
    if (p->rk)
        rd_kafka_poll(p->rk, timeout_ms);
}

static int cmp_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* "<label>: 1-12, 14-25": the numbers at[0, n), sorted, as ranges. */
static void say_ranges(const char *label, long long *at, size_t n) {
    qsort(at, n, sizeof(*at), cmp_ll);
    fprintf(stderr, "hookbridge-producer: %s:", label);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && at[j + 1] <= at[j] + 1)
            j++;
        if (at[j] == at[i])
            fprintf(stderr, "%s %lld", i ? "," : "", at[i]);
        else
            fprintf(stderr, "%s %lld-%lld", i ? "," : "", at[i], at[j]);
        i = j + 1;
    }
    fprintf(stderr, "\n");
}

/* One line for the events that timed out (and one naming them): where they were going and how
 * long they waited (the broker list is addresses only; credentials are in
 * other settings and never printed). */
static void say_timeouts(hb_producer_t *p) {
    char wait[32], why_auth[768], label[64];
    size_t n = (size_t)p->timed_out;
    if (!p->timed_out)
        return;
    fmt_ms(wait, sizeof(wait), p->message_timeout_ms);
    if (hb_kafka_auth_failure(why_auth, sizeof(why_auth))) {
        /* a wrong password or an untrusted certificate: that, not a guess */
        fprintf(stderr,
                "hookbridge-producer: %lld %s%s not delivered: the Kafka brokers %s "
                "(HOOKBRIDGE_KAFKA_BROKERS) did not let this producer in: %s\n",
                p->timed_out, p->unit, p->timed_out == 1 ? "" : "s", p->cfg->kafka_brokers,
                why_auth);
    } else {
        fprintf(stderr,
                "hookbridge-producer: %lld %s%s not delivered: the Kafka brokers %s "
                "(HOOKBRIDGE_KAFKA_BROKERS) did not acknowledge %s within %s: unreachable, or "
                "without topic %s? HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS sets the wait\n",
                p->timed_out, p->unit, p->timed_out == 1 ? "" : "s", p->cfg->kafka_brokers,
                p->timed_out == 1 ? "it" : "them", wait, p->cfg->events_topic);
    }
    /* Which ones, every one, as ranges (they time out in runs: one per
     * outage, or per partition whose leader was out): past the first few
     * named above, the count alone left a user unable to tell which lines
     * of a file to publish again. Reports come per partition, not in line
     * order: sorted first. Named (Okta) events are not: their numbers are
     * nowhere a user can look, and the caller says where to go on. */
    if (p->name_uuids)
        return;
    snprintf(label, sizeof(label), "the %ss that timed out", p->unit);
    say_ranges(label, p->timed_out_at, n);
}

void hb_producer_finish(hb_producer_t *p, int drain_ms) {
    int64_t deadline = -1;
    long long unsent;
    if (!p->rk)
        return;
    for (;;) {
        if (p->reported >= p->queued) {
            say_timeouts(p);
            return;
        }
        if (hb_stop_requested && deadline < 0) {
            deadline = hb_mono_ms() + drain_ms;
            hb_warn("stopping: waiting up to %d ms for %lld delivery reports", drain_ms,
                    p->queued - p->reported);
        }
        if (deadline >= 0 && hb_mono_ms() >= deadline)
            break;
        (void)rd_kafka_flush(p->rk, 100);
    }
    unsent = p->queued - p->reported;
    fprintf(stderr, "%lld %ss left unsent\n", unsent, p->unit);
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    /* the purged messages report here, as failed */
    for (int64_t until = hb_mono_ms() + 1000; p->reported < p->queued && hb_mono_ms() < until;)
        rd_kafka_poll(p->rk, 100);
    if (p->unsent_cnt && !p->name_uuids) {
        char label[64];
        snprintf(label, sizeof(label), "the %ss left unsent", p->unit);
        say_ranges(label, p->unsent_at, p->unsent_cnt);
    }
    if (p->reported < p->queued) {
        /* a report that never comes still counts as a failure */
        p->failed += p->queued - p->reported;
        p->reported = p->queued;
        p->lost_unnamed = 1;
    }
    say_timeouts(p);
}

const char *hb_producer_first_lost(const hb_producer_t *p, int *unnamed) {
    *unnamed = p->lost_unnamed;
    return *p->first_lost ? p->first_lost : NULL;
}

long long hb_producer_delivered(const hb_producer_t *p) {
    return p->delivered;
}
long long hb_producer_failed(const hb_producer_t *p) {
    return p->failed;
}
int hb_producer_stalled(const hb_producer_t *p) {
    return p->stalled;
}

void hb_producer_free(hb_producer_t *p) {
    if (!p)
        return;
    if (p->topic)
        rd_kafka_topic_destroy(p->topic);
    if (p->rk)
        rd_kafka_destroy(p->rk);
    hb_codec_free(p->codec);
    free(p->timed_out_at);
    free(p->unsent_at);
    free(p);
}

/* Can an HTTP request carry this header value? A header ends at its line
 * break and HTTP drops the blanks around a value (RFC 9110 5.5): a value
 * with a control character (tab aside) or a blank at either end never
 * arrives as it is. */
int hb_header_value_sendable(const char *v) {
    size_t n = strlen(v);
    if (n && (v[0] == ' ' || v[0] == '\t' || v[n - 1] == ' ' || v[n - 1] == '\t'))
        return 0;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return 0;
    return 1;
}
