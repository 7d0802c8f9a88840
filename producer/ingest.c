/*
 * The Okta event-hook ingest endpoint: `hookbridge-producer --listen HOST:PORT`.
 * What a client sees is in docs/ingest.md; the validation is hb_ingest.
 *
 * Threads. libmicrohttpd runs one thread per connection (at most
 * ingest_max_connections) and calls on_request there. main's thread runs
 * ingest_loop: it serves librdkafka's delivery reports (rd_kafka_poll, the
 * only place on_delivery runs), beats the health endpoint and learns the
 * events topic's metadata; readiness means that, and that the brokers answer
 * (hb_kafka_reach_t: a probe thread asks them every second). A fatal error
 * of the producer (librdkafka's idempotent producer cannot go on, e.g. the
 * broker lost what it had acknowledged) stops the endpoint, said at error,
 * with a non-zero exit: a restart makes a new producer. A POST handler
 * validates the whole body first (hb_ingest_parse under codec_lock: a codec
 * is not thread-safe), then produces every event with its request as the
 * message opaque, then waits on `cond` until each event has its delivery
 * report, the ingest timeout passes, or a stop aborts the wait. Only after
 * every report says "written" is the answer 200. An event the validation
 * refuses goes to the dead-letter topic instead, with the values Okta sent and the
 * reason in a header (hb_ingest.h says why not the whole request), and is
 * acknowledged like the others.
 *
 * Lifetime. A request is referenced by its connection and by each of its
 * messages still inside librdkafka (a message's opaque is its slot in the
 * request: the request and the event's index); whoever drops the last
 * reference frees it. So a handler that stops waiting (503) leaves its request to the
 * reports still to come, and a late report never touches freed memory.
 * Every request field two threads touch (refs and the counters) is guarded
 * by `lock`, as are the server's in_flight, outstanding, answering and
 * aborting.
 *
 * Memory is bounded by connections x ingest_max_body_bytes (each body is
 * freed once parsed, or with a spool once on it or acknowledged within the
 * spool wait; each event's encoded bytes once queued; what stays
 * until the answer is a few strings per event: key, uuid, type, reason)
 * plus librdkafka's queue; slow clients are cut off by
 * the connection timeout, counted from the last byte for an idle connection
 * and, by hb_cutoff, from the connection's start (or its previous request's
 * end) for one that trickles its headers, and for a body from its headers
 * on, by a budget that grows as its bytes arrive (INGEST_MIN_BODY_RATE).
 */
#include <errno.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hb_buf.h"
#include "hb_codec.h"
#include "hb_cutoff.h"
#include "hb_httpd.h"
#include "hb_ingest.h"
#include "hb_kafka.h"
#include "hb_listen.h"
#include "hb_log.h"
#include "hb_mhd.h"
#include "hb_metrics.h"
#include "hb_schemas.h"
#include "hb_sign.h"
#include "hb_signal.h"
#include "producer.h"
#include "spool.h"

/* A stop waits this long for requests in flight before cutting them off. */
#define INGEST_DRAIN_MS 20000
/* ... and then at most this long for the ones cut off to send their 503. */
#define INGEST_ANSWER_MS 2000
/* The stop's last flush takes this long at most, and while every broker is
 * away ends once this long passed without an acknowledgement. */
#define INGEST_FLUSH_MS 5000
#define INGEST_FLUSH_QUIET_MS 3000
/* Connections past ingest_max_connections that are still accepted, to be
 * answered 503 at once (their request is not read), and ... */
#define INGEST_SPARE_CONNECTIONS 16
/* ... for connections closed to make room (hb_cutoff) whose threads are
 * ending: a client opening a hundred connections at once had them fill the
 * spare ones until their threads ended, and libmicrohttpd closed Okta's
 * next connection unanswered. Past all these, libmicrohttpd closes a
 * connection unanswered. */
#define INGEST_CLOSING_CONNECTIONS 64

/* One line per connection over the limit would flood the log in a storm
 * (hb_log.h: at most HB_LOG_LIMIT_LINES per window, then how many). */
static hb_log_limit_t log_busy =
    HB_LOG_LIMIT_NOTE("\"ingest: too many connections\"",
                      "; hookbridge_ingest_requests_total{class=\"5xx\"} counts every one");
static hb_log_limit_t log_mhd = HB_LOG_LIMIT_NOTE("\"ingest httpd: ...\"", "");
/* Nor may a client sending bad requests (a scanner, a hook configured with
 * the wrong auth value): each client address still gets its first line of a
 * window (hb_log_limited_for), and the metrics count every request. */
#define INGEST_LIMIT_NOTE                                                                          \
    ", and the first of each client address; hookbridge_ingest_requests_total counts every "       \
    "request"
static hb_log_limit_t log_refused = HB_LOG_LIMIT_NOTE("\"ingest: ...\" (4xx)", INGEST_LIMIT_NOTE);
static hb_log_limit_t log_failed = HB_LOG_LIMIT_NOTE("\"ingest: ...\" (5xx)", INGEST_LIMIT_NOTE);
/* Nor may a client sending events the schema refuses, by the thousand. */
static hb_log_limit_t log_dead = HB_LOG_LIMIT_NOTE(
    "\"ingest: data.events[i] refused ...\"",
    "; hookbridge_ingest_events_total{outcome=\"dead_lettered\"} counts every one, and each is "
    "on the dead-letter topic with its reason");

/* Nor may a spool that is full or failing, one line per delivery. */
static hb_log_limit_t log_spool = HB_LOG_LIMIT_NOTE(
    "\"ingest spool ...\"", "; hookbridge_ingest_spool_failures_total counts every one");
/* The spool's replay waits this long after a failed try, doubling up to
 * the maximum, before its next. */
#define INGEST_REPLAY_BACKOFF_MS 1000
#define INGEST_REPLAY_BACKOFF_MAX_MS 30000
/* A replay round publishes at most this many files, and takes no more once
 * it holds this many events, or files of this many bytes: its events wait
 * in librdkafka's queue until acknowledged (review 43: 256 files of 4 MiB,
 * a gigabyte in memory with the brokers away; a file at a time, before,
 * held 4 MiB). */
#define INGEST_REPLAY_FILES 256
#define INGEST_REPLAY_EVENTS 20000
#define INGEST_REPLAY_BYTES (8 * 1024 * 1024)

/* Idle connections are closed after this many seconds, and so are those that
 * have not sent a whole request's headers within them (of their start, or of
 * their previous request's end: hb_cutoff), however steadily they trickle. */
#define INGEST_CONN_TIMEOUT_S 30
/* A body, once its headers are accepted (authenticated, size within bounds),
 * gets INGEST_CONN_TIMEOUT_S and a second more for every this many bytes:
 * the largest body HOOKBRIDGE_INGEST_MAX_BODY_BYTES allows (64 MiB) arrives
 * over a link of 32 kbit/s or faster, and a client that sends less than this
 * on average is cut. Without it a body had to be whole within the 30 s,
 * which takes 17 Mbit/s for 64 MiB. */
#define INGEST_MIN_BODY_RATE 4096
/* How long one attempt to learn the topic's metadata may hold the loop. */
#define INGEST_PREPARE_MS 500
#define INGEST_PREPARE_EVERY_MS 2000
/* The spool's replay waits this much longer than librdkafka's message
 * timeout, whose expiry scan runs once a second, so a timed-out event
 * reports first. A client's request waits ingest_timeout, no longer: its
 * events' reports may come up to a second after their timeout, and the
 * client is gone by then (review 67: with 3 s, as Okta waits, the 503 came
 * after 3.9 s, after 5.0 s when events waited for room in the queue); the
 * 503 says some events may yet be written, and they may: a produce request
 * a frozen broker reads when it wakes is written though timed out here. */
#define INGEST_WAIT_MARGIN_MS 2000
/* What a 503 asks the client to wait before sending again, in seconds. */
#define INGEST_RETRY_AFTER "5"
/* A 200's body lists at most this many refused events (and counts the rest). */
#define INGEST_ANSWER_REFUSED 100
/* A 503's log line names at most this many of the delivery's event uuids. */
#define INGEST_LOGGED_UUIDS 50
/* The source header of a refused event on the dead-letter topic. */
#define INGEST_DLQ_SOURCE "okta-event-hook"

typedef struct ingest_s ingest_t;

typedef struct req_s req_t;

/* A message's opaque: its request and its index in the request's batch. */
typedef struct {
    req_t *r;
    size_t i;
    int dead; /* the event is refused: its message is the dead-letter copy */
} slot_t;

struct req_s {
    ingest_t *in;
    char *body; /* the handler's thread only */
    size_t len, cap;
    int too_large;
    int64_t started_ms;
    slot_t *slots; /* one per event, set before the first is produced */
    /* guarded by in->lock */
    int refs;
    int answering; /* in handle_post or sending its answer: counted in in->answering */
    size_t queued, reported, acked, failed;
    rd_kafka_resp_err_t first_err;
    unsigned char *dlq_refused; /* by event: its dead-letter copy refused for its size */
    size_t dlq_refused_cnt;
    unsigned char *event_ok; /* by event: it (or its dead-letter copy) is acknowledged */
    size_t n, ok_cnt;        /* events, and those acknowledged */
    /* set under in->lock: its body is on the spool (spooled): req_free
     * settles the file (a POST's once the brokers were slow, a replay's
     * before its first event is produced) */
    int spool_on;
    /* set before the first event is produced */
    int spool_wait; /* a POST with a spool: goes there if not acknowledged in time */
    int replay;     /* the spool's replay publishes it: no connection */
    /* guarded by in->lock: events that failed while spool_wait, counted
     * failed only if the spool cannot take the delivery (count_failed) */
    size_t failed_uncounted;
    hb_spool_file_t spooled;
    /* guarded by in->lock: an event the brokers refuse for good (larger
     * than message.max.bytes): the replay sets its file aside */
    rd_kafka_resp_err_t refused_for_good;
};

struct ingest_s {
    const hb_config_t *cfg;
    const char *auth_value; /* NULL: unauthenticated (allowed explicitly) */
    rd_kafka_t *rk;
    rd_kafka_topic_t *topic;  /* the main thread's; NULL until the metadata came */
    rd_kafka_topic_t *dlq;    /* the same for the dead-letter topic */
    int recheck_topics;       /* main thread: a report said a topic is gone */
    int reach_started;        /* main thread: the brokers' probe runs */
    hb_kafka_reach_t brokers; /* main thread: do the brokers answer? (a probe thread) */
    hb_codec_t *codec;
    pthread_mutex_t codec_lock;
    struct MHD_Daemon *mhd;
    hb_cutoff_t *cutoff; /* the request deadline of each connection */
    hb_httpd_t *ops;

    pthread_mutex_t lock;
    pthread_cond_t cond; /* broadcast on every report and every request's end */
    long in_flight;      /* POSTs begun and not completed */
    long connections;    /* open (MHD_OPTION_NOTIFY_CONNECTION) */
    unsigned char *over; /* by socket: opened with ingest_max_connections open */
    size_t over_cap;
    long outstanding; /* messages queued and not reported */
    long answering;   /* POSTs past their body, not completed: their answer comes */
    long acked_total; /* messages acknowledged so far (the stop's flush sees progress) */
    int aborting;     /* waits end at once: the drain is over */
    int stopping;     /* a stop began: spooled requests stop waiting (answered 200) */

    hb_spool_t *spool;          /* NULL: no spool */
    pthread_t replay_thread;    /* publishes the spool's queued files */
    int replay_started;         /* main thread */
    pthread_cond_t replay_cond; /* with lock: a file was queued, or the stop */

    hb_metric_t *m_class[3]; /* requests answered 2xx, 4xx, 5xx */
    hb_metric_t *m_produced, *m_failed, *m_dead, *m_rejected;
    hb_metric_t *m_kafka_errors; /* the client's error callback, as the consumers count them */
    hb_metric_t *m_duration;
    hb_metric_t *m_answering; /* in->answering, under lock */
    /* the spool's (registered only with one) */
    hb_metric_t *m_spool_files, *m_spool_bytes, *m_spool_answered, *m_spool_replayed,
        *m_spool_failures;
    hb_metric_t *m_spool_replaying; /* the replay thread's round */
};

static void req_unref_locked(req_t *r, int *last) {
    *last = --r->refs == 0;
}

/* A message error no later try can change (the message is too large for
 * the brokers or this producer): the replay sets its file aside rather
 * than hold every later file behind it (review 42). */
static int refused_for_good(rd_kafka_resp_err_t err) {
    return err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ||
           err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE;
}

/* The request's last reference is gone, so every message of it has its
 * report: its spool file goes if every event was acknowledged, else it is
 * queued for the replay (or, the replay's and refused for good, set aside
 * as .bad). */
static void req_free(req_t *r) {
    ingest_t *in = r->in;
    if (r->spool_on) {
        if (r->n == r->ok_cnt) {
            hb_spool_remove(in->spool, &r->spooled);
            if (r->replay)
                hb_metric_inc(in->m_spool_replayed);
        } else if (r->replay && r->refused_for_good) {
            hb_log(HB_LOG_ERROR, NULL,
                   "ingest spool: %s/%s: the brokers refuse %zu of its %zu events for good (%s): "
                   "renamed %s.bad, not published",
                   hb_spool_dir(in->spool), r->spooled.name, r->n - r->ok_cnt, r->n,
                   hb_kafka_err_str(r->refused_for_good), r->spooled.name);
            hb_metric_inc(in->m_spool_failures);
            hb_spool_quarantine(in->spool, &r->spooled);
        } else {
            hb_spool_requeue(in->spool, &r->spooled);
            pthread_mutex_lock(&in->lock);
            pthread_cond_signal(&in->replay_cond);
            pthread_mutex_unlock(&in->lock);
        }
    }
    free(r->event_ok);
    free(r->body);
    free(r->slots);
    free(r->dlq_refused);
    free(r);
}

/* n events of r not acknowledged: failed, unless r is on the spool (its
 * events are published from there: the spool's metrics count them), or may
 * still go there (spool_wait: counted if the spool cannot take it; review
 * 46: an event that failed within the spool wait was counted failed, and
 * its delivery spooled and published all the same). in->lock held. */
static void count_failed_locked(ingest_t *in, req_t *r, size_t n) {
    if (r->spool_on)
        return;
    if (r->spool_wait)
        r->failed_uncounted += n;
    else
        hb_metric_add(in->m_failed, (double)n);
}

static void count_failed(ingest_t *in, req_t *r, size_t n) {
    pthread_mutex_lock(&in->lock);
    count_failed_locked(in, r, n);
    pthread_mutex_unlock(&in->lock);
}

/* librdkafka's delivery report, on main's thread (rd_kafka_poll). */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque) {
    ingest_t *in = opaque;
    const slot_t *slot = rkm->_private;
    req_t *r = slot->r;
    /* by the event, not the topic's name: HOOKBRIDGE_DLQ_TOPIC may name the
     * events topic, and an accepted event is no dead-letter copy to shrink
     * (review 41: hb_ingest_refused_shrink on it, the process died) */
    int last, dlq = slot->dead;
    /* a dead-letter copy larger than the topic takes (its max.message.bytes):
     * handle_post sends what identifies the event instead */
    int too_large = dlq && (rkm->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ||
                            rkm->err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE);
    (void)rk;
    /* a topic deleted, or its ACLs changed, since it was known: the loop
     * learns the topics again, not ready until it has them (the dispatcher
     * does the same: hb_outbox's watch) */
    if (rkm->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
        rkm->err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
        rkm->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
        rkm->err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
        in->recheck_topics = 1;
    if (!rkm->err)
        hb_metric_inc(dlq ? in->m_dead : in->m_produced);
    pthread_mutex_lock(&in->lock);
    if (rkm->err && !too_large)
        count_failed_locked(in, r, 1);
    r->reported++;
    r->acked += !rkm->err;
    in->acked_total += !rkm->err;
    if (!rkm->err && r->event_ok && !r->event_ok[slot->i]) {
        r->event_ok[slot->i] = 1;
        r->ok_cnt++;
    }
    if (too_large) {
        r->dlq_refused[slot->i] = 1;
        r->dlq_refused_cnt++;
    } else if (rkm->err && r->failed++ == 0) {
        r->first_err = rkm->err;
    }
    if (rkm->err && !too_large && refused_for_good(rkm->err))
        r->refused_for_good = rkm->err;
    in->outstanding--;
    req_unref_locked(r, &last);
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->lock);
    if (last)
        req_free(r);
}

static void client_address(struct MHD_Connection *conn, char *out, size_t outsz) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(out, outsz, "?");
    if (ci && ci->client_addr) {
        socklen_t len = ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                               : sizeof(struct sockaddr_in);
        if (getnameinfo(ci->client_addr, len, out, (socklen_t)outsz, NULL, 0, NI_NUMERICHOST))
            snprintf(out, outsz, "?");
    }
}

/* Answers with a JSON body (taken over); logs 4xx at info, 5xx at warn
 * (both limited, per client address), the rest at debug, with uuids (or
 * NULL) as the line's event_uuids. */
static enum MHD_Result reply_uuids(ingest_t *in, struct MHD_Connection *conn, unsigned status,
                                   json_t *body, const char *what, const char *uuids) {
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    struct MHD_Response *resp;
    enum MHD_Result ret;
    char code[8], remote[NI_MAXHOST];
    json_decref(body);
    if (!text)
        text = hb_strdup("{}");
    resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, POST");
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
        (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, INGEST_RETRY_AFTER);
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    if (status >= 200 && status < 600 && status / 100 != 3)
        hb_metric_inc(in->m_class[status < 300 ? 0 : status < 500 ? 1 : 2]);
    snprintf(code, sizeof(code), "%u", status);
    client_address(conn, remote, sizeof(remote));
    if (status >= 500)
        hb_log_limited_for(&log_failed, remote, HB_LOG_WARN,
                           uuids ? HB_KV("status", code, "remote", remote, "event_uuids", uuids)
                                 : HB_KV("status", code, "remote", remote),
                           "ingest: %s", what);
    else if (status >= 400)
        hb_log_limited_for(&log_refused, remote, HB_LOG_INFO,
                           HB_KV("status", code, "remote", remote), "ingest: %s", what);
    else
        hb_log(HB_LOG_DEBUG, HB_KV("status", code, "remote", remote), "ingest: %s", what);
    return ret;
}

static enum MHD_Result reply(ingest_t *in, struct MHD_Connection *conn, unsigned status,
                             json_t *body, const char *what) {
    return reply_uuids(in, conn, status, body, what, NULL);
}

/* {"error": why} and, when the fault is one event's, its index. */
static enum MHD_Result reply_error(ingest_t *in, struct MHD_Connection *conn, unsigned status,
                                   const char *why, long event) {
    json_t *body = json_object();
    (void)json_object_set_new(body, "error", json_string(why));
    if (event >= 0)
        (void)json_object_set_new(body, "event", json_integer(event));
    return reply(in, conn, status, body, why);
}

/* Okta's one-time verification: echo the challenge header. */
static enum MHD_Result verification(ingest_t *in, struct MHD_Connection *conn) {
    const char *v =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Okta-Verification-Challenge");
    json_t *body;
    if (!v)
        return reply_error(in, conn, MHD_HTTP_BAD_REQUEST,
                           "GET is Okta's verification request: the "
                           "X-Okta-Verification-Challenge header is missing",
                           -1);
    body = json_pack("{s:s}", "verification", v);
    if (!body)
        return reply_error(in, conn, MHD_HTTP_BAD_REQUEST,
                           "X-Okta-Verification-Challenge is not valid UTF-8", -1);
    return reply(in, conn, MHD_HTTP_OK, body, "verification challenge answered");
}

/* Content-Length over the limit? (Absent: the body is counted as it comes.) */
static int announced_too_large(struct MHD_Connection *conn, long long max) {
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    char *end;
    unsigned long long n;
    if (!cl)
        return 0;
    n = strtoull(cl, &end, 10);
    return end != cl && n > (unsigned long long)max;
}

static void append_body(req_t *r, const char *data, size_t n, long long max) {
    if (r->too_large)
        return;
    if (r->len + n > (size_t)max) { /* keep reading, keep nothing: 413 at the end */
        r->too_large = 1;
        free(r->body);
        r->body = NULL;
        r->len = r->cap = 0;
        return;
    }
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 16384;
        while (cap < r->len + n)
            cap *= 2;
        if (cap > (size_t)max)
            cap = (size_t)max;
        r->body = hb_realloc(r->body, cap);
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
}

static void abs_deadline(struct timespec *ts, int64_t in_ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(in_ms / 1000);
    ts->tv_nsec += (long)(in_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Each refused event said, with its uuid and type (limited: log_dead). */
static void log_refused_events(ingest_t *in, const hb_ingest_batch_t *b) {
    for (size_t i = 0; i < b->cnt; i++) {
        const hb_ingest_msg_t *m = &b->msgs[i];
        if (!m->refused)
            continue;
        hb_log_limited(&log_dead, HB_LOG_WARN,
                       HB_KV("uuid", m->uuid ? m->uuid : "", "event_type", m->type ? m->type : ""),
                       "ingest: %s: refused; sending it to the dead-letter topic %s (header "
                       "hookbridge-reason), the delivery's other events to %s",
                       m->refused, in->cfg->dlq_topic, in->cfg->events_topic);
    }
}

/* Up to INGEST_LOGGED_UUIDS of the events' uuids, comma-separated, and how
 * many more: for the log line of a delivery that is not acknowledged. */
static char *uuid_list(const hb_ingest_batch_t *b) {
    hb_buf_t out = {0};
    size_t shown = 0;
    for (size_t i = 0; i < b->cnt; i++)
        if (b->msgs[i].uuid && shown < INGEST_LOGGED_UUIDS) {
            hb_buf_printf(&out, "%s%s", shown ? "," : "", b->msgs[i].uuid);
            shown++;
        }
    if (shown < b->cnt)
        hb_buf_printf(&out, "%s(and %zu more, their uuids not shown)", shown ? "," : "",
                      b->cnt - shown);
    if (!out.p)
        hb_buf_puts(&out, "");
    return out.p;
}

/* The 200's body: how many events went to each topic, and which were
 * refused (the first INGEST_ANSWER_REFUSED: review 39 had a body of 1.4
 * million refused events answered with 99 MB, the process at 924 MB). A
 * delivery answered from the spool (spooled) says how many events it holds
 * and how many the brokers have acknowledged so far instead. */
static json_t *accepted_body(const hb_ingest_batch_t *b, int spooled, size_t acked) {
    json_t *body = spooled ? json_pack("{s:I, s:I}", "spooled", (json_int_t)b->cnt, "acknowledged",
                                       (json_int_t)acked)
                           : json_pack("{s:I}", "produced", (json_int_t)(b->cnt - b->refused)),
           *refused;
    size_t listed = 0;
    if (!b->refused)
        return body;
    refused = json_array();
    for (size_t i = 0; i < b->cnt && listed < INGEST_ANSWER_REFUSED; i++) {
        const hb_ingest_msg_t *m = &b->msgs[i];
        json_t *one;
        if (!m->refused)
            continue;
        listed++;
        one = json_pack("{s:I, s:s}", "event", (json_int_t)i, "error", m->refused);
        if (one && m->key) /* its uuid, when one of a sensible length */
            (void)json_object_set_new(one, "uuid", json_string(m->key));
        if (one)
            (void)json_array_append_new(refused, one);
    }
    (void)json_object_set_new(body, "dead_lettered", json_integer((json_int_t)b->refused));
    (void)json_object_set_new(body, "refused", refused);
    if (listed < b->refused)
        (void)json_object_set_new(body, "refused_not_listed",
                                  json_integer((json_int_t)(b->refused - listed)));
    return body;
}

/* produce_event's answer when a stop ended the request's wait */
#define INGEST_STOPPING (-9)

/* Queues event i of b (a refused one to the dead-letter topic) with r as
 * its request, waiting while librdkafka's queue is full, as long as the
 * request may (until). 0, or < 0 with perr (HB_KAFKA_TOO_LARGE: over
 * librdkafka's message.max.bytes; INGEST_STOPPING), the message then not
 * counted in. */
static int produce_event(ingest_t *in, req_t *r, const hb_ingest_msg_t *m, size_t i,
                         const struct timespec *until, char *perr, size_t perr_size) {
    const char *const dead_hdrs[] = {"hookbridge-reason", m->refused, "hookbridge-source",
                                     INGEST_DLQ_SOURCE, NULL};
    const char *topic = m->refused ? in->cfg->dlq_topic : in->cfg->events_topic;
    int rc, last;
    pthread_mutex_lock(&in->lock);
    /* a spooled request is still produced during the stop (its answer does
     * not wait): the stop's flush may have its acks, and its file goes
     * (review 42: a delivery on a kept-alive connection in the drain was
     * left on the disk, nothing produced, the brokers up) */
    if (in->aborting) {
        pthread_mutex_unlock(&in->lock);
        hb_seterr(perr, perr_size, "the producer is stopping");
        return INGEST_STOPPING;
    }
    /* The report may come before producev returns: count it in first. */
    r->refs++;
    r->queued++;
    in->outstanding++;
    pthread_mutex_unlock(&in->lock);
    while ((rc = hb_kafka_produce_hdrs(in->rk, topic, m->key, m->key ? strlen(m->key) : 0, m->value,
                                       m->value_len, m->refused ? dead_hdrs : NULL, &r->slots[i], 0,
                                       perr, perr_size)) == HB_KAFKA_QUEUE_FULL) {
        /* librdkafka's queue is full (queue.buffering.max.messages: a
         * batch larger than it, or many at once): room comes as the
         * brokers acknowledge what is queued (every report broadcasts
         * cond), so wait for that as long as the request may, rather
         * than answer 503 to a request that would never fit. */
        int waited;
        pthread_mutex_lock(&in->lock);
        waited = !in->aborting && !((r->spool_on || r->spool_wait) && in->stopping) &&
                 pthread_cond_timedwait(&in->cond, &in->lock, until) == 0;
        pthread_mutex_unlock(&in->lock);
        if (!waited)
            break;
    }
    if (rc == 0)
        return 0;
    pthread_mutex_lock(&in->lock);
    r->queued--;
    in->outstanding--;
    req_unref_locked(r, &last); /* the connection still holds one */
    pthread_mutex_unlock(&in->lock);
    return rc;
}

/* Waits until every message queued for r has its report, the request's
 * time is up, or a stop aborts the wait (at once for a request with a
 * spool: it is answered from the spool). */
static void wait_reports(ingest_t *in, req_t *r, const struct timespec *until) {
    pthread_mutex_lock(&in->lock);
    while (r->reported < r->queued && !in->aborting &&
           !((r->spool_on || r->spool_wait) && in->stopping))
        if (pthread_cond_timedwait(&in->cond, &in->lock, until) != 0)
            break; /* ETIMEDOUT */
    pthread_mutex_unlock(&in->lock);
}

/* Refused events whose dead-letter copy the broker found too large go again
 * as what identifies them (hb_ingest_refused_shrink). -1 with perr when one
 * could not be queued, or was refused so already. */
static int resend_refused_smaller(ingest_t *in, req_t *r, hb_ingest_batch_t *b,
                                  const struct timespec *until, char *perr, size_t perr_size) {
    for (size_t i = 0; i < b->cnt; i++) {
        hb_ingest_msg_t *m = &b->msgs[i];
        int again;
        pthread_mutex_lock(&in->lock);
        again = r->dlq_refused[i];
        if (again && !m->shrunk) {
            r->dlq_refused[i] = 0;
            r->dlq_refused_cnt--;
        }
        pthread_mutex_unlock(&in->lock);
        if (!again)
            continue;
        if (m->shrunk) {
            pthread_mutex_lock(&in->lock);
            r->refused_for_good = RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
            pthread_mutex_unlock(&in->lock);
            hb_seterr(perr, perr_size,
                      "data.events[%zu]: the dead-letter topic %s refused even what identifies "
                      "the event (Broker: Message size too large)",
                      i, in->cfg->dlq_topic);
            count_failed(in, r, 1);
            return -1;
        }
        hb_ingest_refused_shrink(m, "is larger than the dead-letter topic takes");
        hb_log(HB_LOG_WARN, HB_KV("uuid", m->uuid ? m->uuid : ""),
               "ingest: data.events[%zu]: the dead-letter topic %s refused the refused event's "
               "copy as too large (its max.message.bytes): sending its uuid, eventType and "
               "published only",
               i, in->cfg->dlq_topic);
        if (produce_event(in, r, m, i, until, perr, perr_size) < 0) {
            count_failed(in, r, 1);
            return -1;
        }
    }
    return 0;
}

/* What publish did: how many events were queued, and why it stopped early. */
typedef struct {
    size_t queued;
    int produce_failed; /* why says */
    /* a POST waiting for the spool stopped producing at event `queued`
     * when librdkafka's queue stayed full through the spool wait: on the
     * spool, the replay publishes it all; else produce_events goes on */
    int queue_full;
    char why[600];
} pub_t;

/* publish's first half: produces every event of b for r (a refused one to
 * the dead-letter topic). */
static void produce_events(ingest_t *in, req_t *r, hb_ingest_batch_t *b,
                           const struct timespec *until, pub_t *p);

static void publish_start(ingest_t *in, req_t *r, hb_ingest_batch_t *b,
                          const struct timespec *until, pub_t *p) {
    size_t n = b->cnt;
    memset(p, 0, sizeof(*p));
    r->n = n;
    r->slots = n ? hb_calloc(n, sizeof(*r->slots)) : NULL;
    r->dlq_refused = n ? hb_calloc(n, 1) : NULL;
    r->event_ok = n ? hb_calloc(n, 1) : NULL;
    for (size_t i = 0; i < n; i++) {
        r->slots[i].r = r;
        r->slots[i].i = i;
        r->slots[i].dead = b->msgs[i].refused != NULL;
    }
    produce_events(in, r, b, until, p);
}

/* Produces b's events from p->queued on (publish_start). */
static void produce_events(ingest_t *in, req_t *r, hb_ingest_batch_t *b,
                           const struct timespec *until, pub_t *p) {
    char perr[300];
    int rc;
    p->queue_full = 0;
    for (size_t i = p->queued; i < b->cnt; i++) {
        hb_ingest_msg_t *m = &b->msgs[i];
        rc = produce_event(in, r, m, i, until, perr, sizeof(perr));
        if (rc == HB_KAFKA_TOO_LARGE && m->refused && !m->shrunk) {
            hb_ingest_refused_shrink(m, "is larger than this producer sends (message.max.bytes)");
            rc = produce_event(in, r, m, i, until, perr, sizeof(perr));
        }
        if (rc == INGEST_STOPPING)
            break;
        if (rc == HB_KAFKA_QUEUE_FULL && r->spool_wait) {
            p->queue_full = 1; /* not failed: the spool may take it */
            break;
        }
        if (rc == HB_KAFKA_TOO_LARGE) {
            pthread_mutex_lock(&in->lock);
            r->refused_for_good = RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
            pthread_mutex_unlock(&in->lock);
        }
        if (rc < 0) {
            count_failed(in, r, 1);
            p->produce_failed = 1;
            snprintf(p->why, sizeof(p->why), "event %zu could not be queued (%s)", i, perr);
            break;
        }
        free(m->value); /* librdkafka has its copy: the request holds what it answers with */
        m->value = NULL;
        p->queued++;
    }
}

/* publish's second half: the reports, and the copies sent again smaller. */
static void publish_finish(ingest_t *in, req_t *r, hb_ingest_batch_t *b,
                           const struct timespec *until, pub_t *p) {
    char perr[300];
    size_t refused_left, failed;
    wait_reports(in, r, until);
    pthread_mutex_lock(&in->lock);
    refused_left = r->dlq_refused_cnt;
    failed = r->failed;
    pthread_mutex_unlock(&in->lock);
    if (!p->produce_failed && p->queued == b->cnt && !failed && refused_left) {
        if (resend_refused_smaller(in, r, b, until, perr, sizeof(perr)) < 0) {
            p->produce_failed = 1;
            snprintf(p->why, sizeof(p->why), "%s", perr);
        }
        wait_reports(in, r, until);
    }
}

/* Produces every event of b for r (a refused one to the dead-letter topic),
 * waits for the reports until `until`, and sends again smaller the
 * dead-letter copies the brokers refused as too large. The POST handler
 * publishes this way; the spool's replay in the two halves, for several
 * files at once. */
static void publish(ingest_t *in, req_t *r, hb_ingest_batch_t *b, const struct timespec *until,
                    pub_t *p) {
    publish_start(in, r, b, until, p);
    publish_finish(in, r, b, until, p);
}

/* Writes the request's body to the spool (r->spool_on once it is there). A
 * body the spool cannot take is answered as without a spool. */
static void spool_body(ingest_t *in, req_t *r) {
    char err[512];
    int rc;
    rc = hb_spool_put(in->spool, r->body ? r->body : "", r->len, &r->spooled, err, sizeof(err));
    if (rc == 0) {
        pthread_mutex_lock(&in->lock);
        r->spool_on = 1;
        r->failed_uncounted = 0; /* published from the spool */
        pthread_mutex_unlock(&in->lock);
        return;
    }
    hb_metric_inc(in->m_spool_failures);
    if (rc == HB_SPOOL_FULL)
        snprintf(err, sizeof(err),
                 "ingest spool %s is full (HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES=%lld): a delivery of "
                 "%zu bytes",
                 hb_spool_dir(in->spool), in->cfg->ingest_spool_max_bytes, r->len);
    hb_log_limited(&log_spool, HB_LOG_WARN, NULL,
                   "%s; this delivery waits for the brokers as without a spool (answered 503 "
                   "if they do not acknowledge it within HOOKBRIDGE_INGEST_TIMEOUT)",
                   err);
}

static void free_body(req_t *r) {
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
}

/* Whether every event of r (n of them) is acknowledged, and no copy waits
 * to be sent again smaller: the delivery is done. */
static int publish_done(ingest_t *in, req_t *r, const pub_t *p, size_t n) {
    int done;
    pthread_mutex_lock(&in->lock);
    done = !p->produce_failed && p->queued == n && r->reported == r->queued && r->failed == 0 &&
           !r->dlq_refused_cnt;
    pthread_mutex_unlock(&in->lock);
    return done;
}

/* The whole body is in: validate it all, produce it all (a refused event to
 * the dead-letter topic), wait for the acks. With a spool, a delivery the
 * brokers have not acknowledged within ingest_spool_wait is written to the
 * spool then and answered 200 from there: the disk is touched only when the
 * brokers are slow, so a slow, full or hung disk costs nothing while they
 * answer (and the happy path no sync). */
static enum MHD_Result handle_post(ingest_t *in, struct MHD_Connection *conn, req_t *r) {
    hb_ingest_batch_t b;
    char why[600], what[800], *uuids;
    size_t total, reported, acked, failed, n, refused_left, ok;
    rd_kafka_resp_err_t first_err;
    int rc, aborted;
    struct timespec until;
    enum MHD_Result ret;
    json_t *body;
    pub_t p;
    int64_t body_in_ms = hb_mono_ms(); /* ingest_timeout counts from here */

    pthread_mutex_lock(&in->lock);
    r->answering = 1;
    in->answering++;
    hb_metric_set(in->m_answering, (double)in->answering);
    pthread_mutex_unlock(&in->lock);
    pthread_mutex_lock(&in->codec_lock);
    rc = hb_ingest_parse(in->codec, r->body ? r->body : "", r->len, &b, why, sizeof(why));
    pthread_mutex_unlock(&in->codec_lock);
    if (rc < 0) {
        free_body(r);
        hb_ingest_batch_free(&b);
        hb_metric_inc(in->m_rejected);
        return reply_error(in, conn, MHD_HTTP_BAD_REQUEST, why, -1);
    }
    n = b.cnt;
    log_refused_events(in, &b);
    /* The whole request, its events queued and acknowledged, within this
     * (with a spool: on the spool after ingest_spool_wait, and answered
     * from there). */
    r->spool_wait = in->spool != NULL;
    if (!r->spool_wait)
        free_body(r); /* librdkafka takes copies of the events */
    abs_deadline(&until,
                 r->spool_wait ? in->cfg->ingest_spool_wait_ms : in->cfg->ingest_timeout_ms);
    publish(in, r, &b, &until, &p);
    if (r->spool_wait && !publish_done(in, r, &p, n))
        spool_body(in, r);
    free_body(r); /* on the spool now, or not needed */
    if (r->spool_wait && !r->spool_on && !publish_done(in, r, &p, n)) {
        /* the spool could not take it: as without one, for the rest of
         * ingest_timeout, counted from the whole body's arrival as without
         * a spool (review 46: from the headers, a slow upload had spent it,
         * and such a delivery was answered 503 at the spool wait's end) */
        int64_t left = in->cfg->ingest_timeout_ms - (hb_mono_ms() - body_in_ms);
        pthread_mutex_lock(&in->lock);
        r->spool_wait = 0;
        hb_metric_add(in->m_failed, (double)r->failed_uncounted);
        r->failed_uncounted = 0;
        pthread_mutex_unlock(&in->lock);
        abs_deadline(&until, left > 0 ? left : 0);
        if (p.queue_full) /* the rest waits for room, as without a spool */
            produce_events(in, r, &b, &until, &p);
        publish_finish(in, r, &b, &until, &p);
    }
    pthread_mutex_lock(&in->lock);
    total = r->queued; /* the events and the copies sent again smaller */
    reported = r->reported;
    acked = r->acked;
    ok = r->ok_cnt;
    failed = r->failed;
    refused_left = r->dlq_refused_cnt;
    first_err = r->first_err;
    aborted = in->aborting;
    pthread_mutex_unlock(&in->lock);

    hb_metric_observe(in->m_duration, (double)(hb_mono_ms() - r->started_ms) / 1000.0);
    if (!p.produce_failed && p.queued == n && reported == total && failed == 0 && !refused_left) {
        if (b.refused)
            snprintf(what, sizeof(what), "%zu events produced, %zu refused and dead-lettered",
                     n - b.refused, b.refused);
        else
            snprintf(what, sizeof(what), "%zu events produced", n);
        if (r->spool_on) { /* every report is in: no other thread settles it */
            hb_spool_remove(in->spool, &r->spooled);
            r->spool_on = 0;
        }
        body = accepted_body(&b, 0, 0);
        hb_ingest_batch_free(&b);
        return reply(in, conn, MHD_HTTP_OK, body, what);
    }
    if (r->spool_on) { /* on disk: published when the brokers take it */
        hb_metric_inc(in->m_spool_answered);
        snprintf(what, sizeof(what),
                 "%zu events spooled (%s, %zu acknowledged so far): published from the spool "
                 "when the brokers take them",
                 n, r->spooled.name, ok);
        body = accepted_body(&b, 1, ok);
        hb_ingest_batch_free(&b);
        return reply(in, conn, MHD_HTTP_OK, body, what);
    }
    if (!p.produce_failed) { /* else p.why says already */
        if (failed || refused_left)
            snprintf(p.why, sizeof(p.why), "the brokers did not acknowledge %zu of %zu events (%s)",
                     failed + refused_left, n,
                     hb_kafka_err_str(failed ? first_err : RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE));
        else if (aborted || p.queued < n)
            snprintf(p.why, sizeof(p.why),
                     "the producer is stopping: %zu of %zu events acknowledged", acked, n);
        else
            snprintf(p.why, sizeof(p.why),
                     "the brokers did not acknowledge %zu of %zu events in %lld ms",
                     total - reported, n, in->cfg->ingest_timeout_ms);
    }
    snprintf(what, sizeof(what),
             "%s; some events of this request may already be written: send it again "
             "(at least once: what is written again has the same uuids)",
             p.why);
    body = json_pack("{s:s, s:I, s:I}", "error", what, "events", (json_int_t)n, "acknowledged",
                     (json_int_t)acked);
    /* dead-letter copies refused as too large and not sent again smaller
     * failed too (on_delivery left them to the resend) */
    hb_metric_add(in->m_failed, (double)refused_left);
    uuids = uuid_list(&b);
    hb_ingest_batch_free(&b);
    ret = reply_uuids(in, conn, MHD_HTTP_SERVICE_UNAVAILABLE, body, p.why, uuids);
    free(uuids);
    return ret;
}

/* A spooled file that could not be read this time may be the next (review
 * 42: out of descriptors under a burst of connections, the file was set
 * aside for good, never published): err 0 is a size changed while read. */
static int spool_read_passes(int err) {
    return err == 0 || err == EMFILE || err == ENFILE || err == ENOMEM || err == EAGAIN ||
           err == EINTR || err == ENOBUFS || err == EIO;
}

/* One spooled file the replay publishes: its request and events, from
 * replay_start to replay_finish. */
typedef struct {
    hb_spool_file_t f;
    hb_ingest_batch_t b;
    req_t *r;
    pub_t p;
} replay_t;

/* Reads, parses and produces one spooled file (x->f): 1 with x->r set (its
 * events are produced: replay_finish waits for them); 0 when it cannot be
 * read for now (why says; the caller queues it again after its round); -1
 * when it is set aside or gone. */
static int replay_start(ingest_t *in, replay_t *x, const struct timespec *until, char *why,
                        size_t why_size) {
    const hb_spool_file_t *f = &x->f;
    size_t len = 0;
    int rc, err;
    req_t *r;
    char *text = hb_spool_read(in->spool, f, &len, &err, why, why_size);
    x->r = NULL;
    if (!text && err == ENOENT) { /* deleted by hand: nothing left to publish */
        hb_log_limited(&log_spool, HB_LOG_ERROR, NULL,
                       "ingest spool: %s (deleted?); that delivery is not published", why);
        hb_metric_inc(in->m_spool_failures);
        hb_spool_forget(in->spool, f);
        return -1;
    }
    if (!text && spool_read_passes(err)) /* the bytes are intact: another try */
        return 0;
    if (!text) { /* EACCES, EISDIR...: set aside rather than hold every later file */
        hb_log_limited(&log_spool, HB_LOG_ERROR, NULL,
                       "ingest spool: %s; renamed %s.bad, not published", why, f->name);
        hb_metric_inc(in->m_spool_failures);
        hb_spool_quarantine(in->spool, f);
        return -1;
    }
    pthread_mutex_lock(&in->codec_lock);
    rc = hb_ingest_parse(in->codec, text, len, &x->b, why, why_size);
    pthread_mutex_unlock(&in->codec_lock);
    free(text);
    if (rc < 0) {
        hb_ingest_batch_free(&x->b);
        hb_log(HB_LOG_ERROR, NULL,
               "ingest spool: %s/%s is no event-hook delivery (%s): renamed %s.bad, not "
               "published",
               hb_spool_dir(in->spool), f->name, why, f->name);
        hb_metric_inc(in->m_spool_failures);
        hb_spool_quarantine(in->spool, f);
        return -1;
    }
    r = x->r = hb_calloc(1, sizeof(*r));
    r->in = in;
    r->refs = 1;
    r->started_ms = hb_mono_ms();
    r->spool_on = 1;
    r->replay = 1;
    r->spooled = *f;
    log_refused_events(in, &x->b);
    publish_start(in, r, &x->b, until, &x->p);
    return 1;
}

/* Waits for a started file's reports: 1 when every event of it is
 * acknowledged (the file is gone), 0 when not (it is queued again: outcome
 * says how far it got), -1 when the brokers refuse some for good (set aside
 * as .bad). */
static int replay_finish(ingest_t *in, replay_t *x, const struct timespec *until, char *outcome,
                         size_t outcome_size) {
    req_t *r = x->r;
    int last, ok, for_good;
    publish_finish(in, r, &x->b, until, &x->p);
    pthread_mutex_lock(&in->lock);
    ok = r->ok_cnt == r->n;
    for_good = !ok && r->refused_for_good; /* req_free sets it aside */
    if (!ok)
        snprintf(outcome, outcome_size, "%zu of %zu events acknowledged%s%.600s", r->ok_cnt, r->n,
                 x->p.produce_failed ? ": " : "", x->p.produce_failed ? x->p.why : "");
    req_unref_locked(r, &last);
    pthread_mutex_unlock(&in->lock);
    if (ok)
        hb_debug("ingest spool: published %s (%zu events)", x->f.name, x->b.cnt);
    hb_ingest_batch_free(&x->b);
    if (last) /* else the last report settles the file */
        req_free(r);
    return ok ? 1 : for_good ? -1 : 0;
}

/* Publishes up to INGEST_REPLAY_FILES of the spool's queued files (oldest
 * first) at once, their events produced together and then their reports
 * awaited, about INGEST_REPLAY_EVENTS events and INGEST_REPLAY_BYTES at
 * most (one file at a time and its acks awaited, review 42 measured 190
 * deliveries a second: half an hour for a full spool). Whether any failed
 * (to be tried again later) and how many were published. The files not
 * published are one warning a round, not one each (review 43: a round's
 * 256 lines spent the limit log_spool shares, and the warning that the
 * spool is full went unwritten). */
static void replay_round(ingest_t *in, int *failed, size_t *published) {
    replay_t *xs = hb_calloc(INGEST_REPLAY_FILES, sizeof(*xs));
    hb_spool_file_t *later = hb_calloc(INGEST_REPLAY_FILES, sizeof(*later));
    size_t cnt = 0, nlater = 0, events = 0, bytes = 0, unpublished = 0;
    int stopped;
    char first[HB_SPOOL_NAME_LEN + 1] = "", outcome[700] = "", why[700], unread[700] = "";
    struct timespec until;
    *failed = 0;
    *published = 0;
    abs_deadline(&until, in->cfg->ingest_timeout_ms + INGEST_WAIT_MARGIN_MS);
    while (cnt + nlater < INGEST_REPLAY_FILES && events < INGEST_REPLAY_EVENTS &&
           bytes < INGEST_REPLAY_BYTES) {
        int rc, stopping;
        pthread_mutex_lock(&in->lock);
        stopping = in->stopping;
        pthread_mutex_unlock(&in->lock);
        if (stopping || !hb_spool_take(in->spool, &xs[cnt].f))
            break;
        rc = replay_start(in, &xs[cnt], &until, why, sizeof(why));
        if (rc == 0) { /* queued again after the round, which goes on (review 43:
                        * the oldest file unreadable for a while held up all) */
            if (!nlater)
                snprintf(unread, sizeof(unread), "%s", why);
            later[nlater++] = xs[cnt].f;
        } else if (rc > 0) {
            events += xs[cnt].b.cnt;
            bytes += xs[cnt++].f.size;
        }
    }
    /* the round's events all produced: what it waits for, file by file */
    hb_metric_set(in->m_spool_replaying, (double)cnt);
    for (size_t i = 0; i < cnt; i++) {
        int rc = replay_finish(in, &xs[i], &until, why, sizeof(why));
        hb_metric_set(in->m_spool_replaying, (double)(cnt - i - 1));
        if (rc == 0 && !unpublished++) {
            snprintf(first, sizeof(first), "%s", xs[i].f.name);
            snprintf(outcome, sizeof(outcome), "%s", why);
        } else if (rc > 0) {
            (*published)++;
        }
    }
    for (size_t i = 0; i < nlater; i++)
        hb_spool_requeue(in->spool, &later[i]);
    *failed = unpublished > 0 || nlater > 0;
    pthread_mutex_lock(&in->lock);
    stopped = in->stopping;
    pthread_mutex_unlock(&in->lock);
    if (stopped && unpublished) { /* nothing is tried again: the stop says what stays */
        hb_info("ingest spool: the stop ended a replay round: %zu of its deliveries not "
                "acknowledged yet (the stop's flush may still have them; else they stay on the "
                "spool)",
                unpublished);
        unpublished = 0;
    }
    if (nlater == 1)
        hb_log_limited(&log_spool, HB_LOG_WARN, NULL, "ingest spool: %s: tried again later",
                       unread);
    else if (nlater)
        hb_log_limited(&log_spool, HB_LOG_WARN, NULL,
                       "ingest spool: %s, and %zu more files of its round: tried again later",
                       unread, nlater - 1);
    if (unpublished == 1)
        hb_log_limited(&log_spool, HB_LOG_WARN, NULL,
                       "ingest spool: %s not published yet (%s): tried again later", first,
                       outcome);
    else if (unpublished)
        hb_log_limited(&log_spool, HB_LOG_WARN, NULL,
                       "ingest spool: %s not published yet (%s), and %zu more deliveries of its "
                       "round: tried again later",
                       first, outcome, unpublished - 1);
    free(later);
    free(xs);
}

/* The replay thread: publishes the spool's queued files, oldest first, a
 * round of several at a time; after a round that published none of them it
 * waits, backing off, before the next; after one that published some but
 * not all, the first step only (review 43: a file the brokers cannot take
 * for now had every round wait up to 30 s, each publishing 255 others). */
static void *replay_main(void *arg) {
    ingest_t *in = arg;
    int64_t backoff = 0, next_try = 0;
    size_t drained = 0; /* published since the queue was last empty */
    (void)pthread_setname_np(pthread_self(), "hb-spool");
    pthread_mutex_lock(&in->lock);
    while (!in->stopping) {
        struct timespec ts;
        int64_t wait_ms = 1000;
        if (hb_mono_ms() >= next_try && hb_spool_queued(in->spool)) {
            int failed;
            size_t published;
            pthread_mutex_unlock(&in->lock);
            replay_round(in, &failed, &published);
            if (failed && published) { /* the brokers take files: not an outage */
                backoff = INGEST_REPLAY_BACKOFF_MS;
                next_try = hb_mono_ms() + backoff;
            } else if (failed) {
                backoff = backoff ? backoff * 2 : INGEST_REPLAY_BACKOFF_MS;
                if (backoff > INGEST_REPLAY_BACKOFF_MAX_MS)
                    backoff = INGEST_REPLAY_BACKOFF_MAX_MS;
                next_try = hb_mono_ms() + backoff;
            } else {
                backoff = 0;
                next_try = 0;
            }
            drained += published;
            if (drained && !hb_spool_queued(in->spool)) { /* one line a drain, not a round */
                hb_info("ingest spool: published %zu spooled deliveries; none is waiting", drained);
                drained = 0;
            }
            pthread_mutex_lock(&in->lock);
            continue;
        }
        if (next_try > hb_mono_ms() && next_try - hb_mono_ms() < wait_ms)
            wait_ms = next_try - hb_mono_ms();
        abs_deadline(&ts, wait_ms);
        (void)pthread_cond_timedwait(&in->replay_cond, &in->lock, &ts);
    }
    pthread_mutex_unlock(&in->lock);
    return NULL;
}

/* A connection over ingest_max_connections (one of the spare ones): 503
 * with Retry-After, the connection closed after it, its request not read. */
static enum MHD_Result reply_busy(ingest_t *in, struct MHD_Connection *conn, long open) {
    static const char body[] = "{\"error\":\"too many connections: try again later\"}";
    struct MHD_Response *resp;
    enum MHD_Result ret;
    char remote[NI_MAXHOST];
    resp = MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, INGEST_RETRY_AFTER);
    (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    ret = MHD_queue_response(conn, MHD_HTTP_SERVICE_UNAVAILABLE, resp);
    MHD_destroy_response(resp);
    hb_metric_inc(in->m_class[2]);
    client_address(conn, remote, sizeof(remote));
    hb_log_limited(
        &log_busy, HB_LOG_WARN, HB_KV("status", "503", "remote", remote),
        "ingest: too many connections (%ld open, HOOKBRIDGE_INGEST_MAX_CONNECTIONS=%lld): "
        "answered 503, the request not read",
        open, in->cfg->ingest_max_connections);
    return ret;
}

/* The connection's socket, or -1. */
static int conn_fd(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? (int)ci->connect_fd : -1;
}

/* Counts the open connections, and marks one opened while
 * ingest_max_connections were open already: its requests are answered 503
 * (reply_busy), the others' as usual. (Deciding by the count at each
 * request refused every connection's requests while one too many was open:
 * a client holding a spare connection, no secret needed, had Okta's
 * established connections answered 503.) The mark is by socket, cleared at
 * CLOSED, which libmicrohttpd notifies before it closes the socket.
 *
 * Before that, hb_cutoff makes room: with more than ingest_max_connections
 * open, the one that has waited longest for a request (not one whose
 * accepted body is arriving or whose answer is coming) is closed, and the
 * new one counts as within the limit. So clients that connect and send
 * nothing, or half a request, no secret needed, take each other's places,
 * not Okta's: before, 80 of them had every delivery refused for the 30 s,
 * and for good when they came back. Only connections that are all busy with
 * accepted requests make a new one's request a 503. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    ingest_t *in = cls;
    int fd = conn_fd(conn), started = toe == MHD_CONNECTION_NOTIFY_STARTED;
    long open;
    if (started) /* its whole-request deadline, and room made for it */
        hb_cutoff_notify(in->cutoff, conn, socket_context, toe);
    pthread_mutex_lock(&in->lock);
    in->connections += started ? 1 : -1;
    open = in->cutoff ? hb_cutoff_open(in->cutoff) : in->connections;
    if (fd >= 0 && (size_t)fd >= in->over_cap && started) {
        size_t cap = in->over_cap ? in->over_cap : 256;
        while (cap <= (size_t)fd)
            cap *= 2;
        in->over = hb_realloc(in->over, cap);
        memset(in->over + in->over_cap, 0, cap - in->over_cap);
        in->over_cap = cap;
    }
    if (fd >= 0 && (size_t)fd < in->over_cap)
        in->over[fd] = started && open > in->cfg->ingest_max_connections;
    pthread_mutex_unlock(&in->lock);
    if (!started)
        hb_cutoff_notify(in->cutoff, conn, socket_context, toe);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    ingest_t *in = cls;
    req_t *r = *con_cls;
    (void)version;
    if (!r) {
        long open;
        int over, fd = conn_fd(conn);
        pthread_mutex_lock(&in->lock);
        open = in->connections;
        over = fd >= 0 && (size_t)fd < in->over_cap && in->over[fd];
        pthread_mutex_unlock(&in->lock);
        if (over)
            return reply_busy(in, conn, open);
        int is_get = !strcmp(method, MHD_HTTP_METHOD_GET);
        int is_post = !strcmp(method, MHD_HTTP_METHOD_POST);
        if (strcmp(url, HB_INGEST_PATH) != 0)
            return reply_error(in, conn, MHD_HTTP_NOT_FOUND,
                               "not found: Okta event hooks are delivered to " HB_INGEST_PATH, -1);
        if (!is_get && !is_post)
            return reply_error(in, conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                               "method not allowed: POST delivers events, GET verifies", -1);
        if (in->auth_value &&
            !hb_secret_equal(
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, in->cfg->ingest_auth_header),
                in->auth_value))
            return reply_error(in, conn, MHD_HTTP_UNAUTHORIZED, "unauthorized", -1);
        if (is_get)
            return verification(in, conn);
        if (announced_too_large(conn, in->cfg->ingest_max_body_bytes)) {
            char why[160];
            snprintf(why, sizeof(why), "request body larger than %lld bytes",
                     in->cfg->ingest_max_body_bytes);
            return reply_error(in, conn, MHD_HTTP_CONTENT_TOO_LARGE, why, -1);
        }
        r = hb_calloc(1, sizeof(*r));
        r->in = in;
        r->refs = 1;
        r->started_ms = hb_mono_ms();
        pthread_mutex_lock(&in->lock);
        in->in_flight++;
        pthread_mutex_unlock(&in->lock);
        *con_cls = r;
        hb_cutoff_body_start(conn); /* a slow link's body is not cut at the 30 s */
        return MHD_YES;
    }
    if (*upload_data_size) {
        append_body(r, upload_data, *upload_data_size, in->cfg->ingest_max_body_bytes);
        if (!r->too_large) /* bytes thrown away buy no time */
            hb_cutoff_body_bytes(conn, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->too_large) {
        char why[160];
        snprintf(why, sizeof(why), "request body larger than %lld bytes",
                 in->cfg->ingest_max_body_bytes);
        return reply_error(in, conn, MHD_HTTP_CONTENT_TOO_LARGE, why, -1);
    }
    hb_cutoff_hold(conn); /* all here: waiting for the brokers is not the client's doing */
    return handle_post(in, conn, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    ingest_t *in = cls;
    req_t *r = *con_cls;
    int last;
    (void)toe;
    hb_cutoff_rearm(conn); /* the connection's next request is due from now */
    if (!r)
        return;
    *con_cls = NULL;
    pthread_mutex_lock(&in->lock);
    in->in_flight--;
    if (r->answering) {
        in->answering--;
        hb_metric_set(in->m_answering, (double)in->answering);
    }
    req_unref_locked(r, &last);
    pthread_cond_broadcast(&in->cond);
    pthread_mutex_unlock(&in->lock);
    if (last)
        req_free(r);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) HB_PRINTF(2, 0);
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    hb_mhd_log(&log_mhd, "ingest httpd", fmt, ap);
}

static int start_listener(ingest_t *in, const char *listen, char *errstr, size_t errstr_size) {
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    char why[128];
    const union MHD_DaemonInfo *info;
    /* MHD_USE_AUTO: poll(), not select(), so descriptors above FD_SETSIZE work. */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG;
    if (hb_listen_resolve(listen, HB_LISTEN_STAR_ANY, &ss, &sslen, why, sizeof(why)) !=
        HB_LISTEN_OK) {
        hb_seterr(errstr, errstr_size, "ingest_listen \"%s\": %s", listen, why);
        return -1;
    }
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    in->cutoff = hb_cutoff_new(INGEST_CONN_TIMEOUT_S * 1000LL, INGEST_MIN_BODY_RATE, "ingest");
    hb_cutoff_set_room(in->cutoff, (long)in->cfg->ingest_max_connections);
    hb_cutoff_count_closes(in->cutoff, "ingest");
    in->mhd = MHD_start_daemon(
        flags, hb_listen_port(&ss), NULL, NULL, on_request, in, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, in, MHD_OPTION_NOTIFY_CONNECTION, on_connection, in,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)INGEST_CONN_TIMEOUT_S,
        MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)(in->cfg->ingest_max_connections + INGEST_SPARE_CONNECTIONS +
                       INGEST_CLOSING_CONNECTIONS),
        MHD_OPTION_END);
    if (!in->mhd) {
        hb_seterr(errstr, errstr_size, "cannot listen on %s (address in use or not local?)",
                  listen);
        return -1;
    }
    info = MHD_get_daemon_info(in->mhd, MHD_DAEMON_INFO_BIND_PORT);
    if (!info || !info->port) {
        hb_seterr(errstr, errstr_size, "cannot learn the port bound for %s", listen);
        return -1;
    }
    return info->port;
}

/* librdkafka's error events, served by rd_kafka_poll on the main thread.
 * "All brokers down" makes the endpoint not ready until a request sent
 * afterwards is answered (ingest_loop, hb_kafka_reach_t), so a load balancer
 * stops sending deliveries that could only time out. */
static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    ingest_t *in = opaque;
    (void)rk;
    if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        hb_metric_inc(in->m_kafka_errors);
    if (hb_kafka_reach_down(&in->brokers, err))
        hb_warn("ingest: %s: all Kafka brokers are down (%s)",
                in->spool ? "deliveries are answered from the spool" : "not ready", reason);
}

static int setup(ingest_t *in, const char *listen, int *port, char *errstr, size_t errstr_size) {
    rd_kafka_conf_t *conf;
    char ms[32];
    in->codec = hb_codec_new(hb_schema_identity_event, errstr, errstr_size);
    if (!in->codec)
        return -1;
    if (*in->cfg->ingest_spool_dir) {
        long files;
        long long bytes, bad;
        in->spool = hb_spool_open(in->cfg->ingest_spool_dir, in->cfg->ingest_spool_max_bytes,
                                  errstr, errstr_size);
        if (!in->spool)
            return -1;
        hb_spool_usage(in->spool, &files, &bytes, &bad);
        if (files)
            hb_info("ingest spool: %ld deliveries (%lld bytes) found in %s: publishing them", files,
                    bytes - bad, in->cfg->ingest_spool_dir);
        if (bad)
            hb_warn("ingest spool %s: files set aside earlier (*.okta.bad) take %lld of its "
                    "%lld bytes: remove them once read (docs/ingest.md, The spool)",
                    in->cfg->ingest_spool_dir, bad, (long long)in->cfg->ingest_spool_max_bytes);
    }
    conf = hb_kafka_conf_new(in->cfg, "hookbridge-producer", errstr, errstr_size);
    if (!conf)
        return -1;
    /* The request's wait is the message's lifetime; an operator's own
     * HOOKBRIDGE_KAFKA_MESSAGE_TIMEOUT_MS still wins (passthrough last). */
    snprintf(ms, sizeof(ms), "%lld", in->cfg->ingest_timeout_ms);
    /* Brokers back after an outage are reconnected to within a second, not
     * after librdkafka's backoff of up to 10 s: the messages queued during
     * it are published before their timeout, and the stop's flush (3 s
     * without an acknowledgement while the brokers are away) sees them
     * back (review 46). */
    if (hb_kafka_conf_set(conf, "message.timeout.ms", ms, errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "reconnect.backoff.max.ms", "1000", errstr, errstr_size) < 0 ||
        hb_kafka_conf_passthrough(conf, in->cfg, errstr, errstr_size) < 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_conf_set_opaque(conf, in);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    in->rk = hb_kafka_producer_new(conf, on_delivery, errstr, errstr_size);
    if (!in->rk)
        return -1;
    /* The endpoint listens before the health port answers: a probe (or a
     * test) that saw /healthz answer can connect to it (answered 503 until
     * ready), never be refused. */
    *port = start_listener(in, listen, errstr, errstr_size);
    if (*port < 0)
        return -1;
    in->ops = hb_httpd_start(in->cfg->http_listen, 30000, errstr, errstr_size);
    if (!in->ops)
        return -1;
    hb_httpd_set_ready(in->ops, 0, "waiting for the events and dead-letter topics' metadata");
    return 0;
}

#define EVENTS_HELP                                                                                \
    "Ingested events by outcome: produced (acknowledged by the brokers), dead_lettered (refused "  \
    "by the validation, on the dead-letter topic as received) or failed (not acknowledged, and "   \
    "not on the spool)."

static void register_metrics(ingest_t *in) {
    static const char *const classes[] = {"class=\"2xx\"", "class=\"4xx\"", "class=\"5xx\""};
    /* 3: Okta waits that long for an answer (its documentation), so what
     * lies above it was never seen by Okta, whatever it said */
    static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 3, 5, 10};
    for (int c = 0; c < 3; c++)
        in->m_class[c] = hb_metrics_counter("hookbridge_ingest_requests_total", classes[c],
                                            "Ingest requests answered, by HTTP status class.");
    in->m_produced =
        hb_metrics_counter("hookbridge_ingest_events_total", "outcome=\"produced\"", EVENTS_HELP);
    in->m_failed =
        hb_metrics_counter("hookbridge_ingest_events_total", "outcome=\"failed\"", EVENTS_HELP);
    in->m_dead = hb_metrics_counter("hookbridge_ingest_events_total", "outcome=\"dead_lettered\"",
                                    EVENTS_HELP);
    in->m_kafka_errors = hb_metrics_counter("hookbridge_kafka_errors_total", NULL, "Kafka errors.");
    in->m_rejected = hb_metrics_counter("hookbridge_ingest_rejected_requests_total", NULL,
                                        "Ingest requests refused as invalid (400): nothing of "
                                        "them was produced.");
    in->m_duration = hb_metrics_histogram("hookbridge_ingest_request_duration_seconds", NULL,
                                          "Time from a delivery's headers to its answer, for the "
                                          "deliveries whose events were handed to the brokers "
                                          "(200 and 503).",
                                          bounds, HB_ARRAY_SIZE(bounds));
    in->m_answering = hb_metrics_gauge("hookbridge_ingest_requests_in_progress", NULL,
                                       "Deliveries received whole and not answered yet: their "
                                       "events being published, waiting for the brokers' "
                                       "acknowledgements (or the spool).");
    if (!*in->cfg->ingest_spool_dir)
        return;
    in->m_spool_files = hb_metrics_gauge("hookbridge_ingest_spool_deliveries", NULL,
                                         "Deliveries on the ingest spool: answered, not yet "
                                         "every event acknowledged by the brokers.");
    in->m_spool_bytes =
        hb_metrics_gauge("hookbridge_ingest_spool_bytes", NULL,
                         "Bytes the spool takes on its volume, in 4 KiB blocks (the "
                         "files set aside as .bad included): what "
                         "HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES bounds.");
    in->m_spool_answered =
        hb_metrics_counter("hookbridge_ingest_spool_answered_total", NULL,
                           "Deliveries answered 200 from the spool before the brokers "
                           "acknowledged every event.");
    in->m_spool_replayed = hb_metrics_counter(
        "hookbridge_ingest_spool_replayed_total", NULL,
        "Spooled deliveries published again by the replay (after a failure or a restart).");
    in->m_spool_failures = hb_metrics_counter(
        "hookbridge_ingest_spool_failures_total", NULL,
        "Deliveries the spool could not take (full, a write error), and spooled files found "
        "unreadable (renamed .bad).");
    in->m_spool_replaying = hb_metrics_gauge(
        "hookbridge_ingest_spool_replaying", NULL,
        "Spooled deliveries the replay's current round has produced and not yet settled: "
        "their acknowledgements awaited (0 between rounds).");
}

/* Readiness. With a spool: ready while it has room, whatever the brokers
 * say (while they are away, deliveries go to the spool, so the load balancer
 * must keep sending them here), and while the brokers answer, full or not
 * (a delivery the spool cannot take is produced as without one: a spool
 * full of .bad files must not take every replica out of the load balancer
 * while they could publish). Without, or while the spool cannot write (a
 * full disk: review 42 had every delivery answered 503 with /readyz 200):
 * what the brokers say (kafka_ok, why). */
static void set_ready(ingest_t *in, int kafka_ok, const char *why) {
    char cannot[400], both[1000];
    if (in->spool && !hb_spool_writable(in->spool, cannot, sizeof(cannot))) {
        if (kafka_ok) {
            hb_httpd_set_ready(in->ops, 1, NULL);
            return;
        }
        snprintf(both, sizeof(both), "%s, and %s", cannot,
                 why ? why : "the events and dead-letter topics are not known");
        hb_httpd_set_ready(in->ops, 0, both);
        return;
    }
    if (in->spool) {
        if (hb_spool_has_room(in->spool) || kafka_ok) {
            hb_httpd_set_ready(in->ops, 1, NULL);
            return;
        }
        snprintf(both, sizeof(both),
                 "the ingest spool is full (HOOKBRIDGE_INGEST_SPOOL_MAX_BYTES), and %s",
                 why ? why : "the events and dead-letter topics are not known");
        hb_httpd_set_ready(in->ops, 0, both);
        return;
    }
    hb_httpd_set_ready(in->ops, kafka_ok, why);
}

/* The spool's gauges, from its usage now. */
static void spool_gauges(ingest_t *in) {
    long files;
    long long bytes;
    if (!in->spool)
        return;
    hb_spool_recount(in->spool);
    hb_spool_usage(in->spool, &files, &bytes, NULL);
    hb_metric_set(in->m_spool_files, (double)files);
    hb_metric_set(in->m_spool_bytes, (double)bytes);
}

/* The stop's last flush: whatever an aborted request (or the replay) left
 * queued gets up to INGEST_FLUSH_MS, and its acknowledgements remove the
 * spooled files it belongs to. While every broker is away no answer waits
 * on it (its request was answered 503, or from the spool, whose file
 * stays), so the flush ends once INGEST_FLUSH_QUIET_MS passed without an
 * acknowledgement. (Skipped at once on the probe's word, review 46: the
 * brokers back a moment before the stop, the probe had not asked them yet,
 * and a delivery spooled during the outage stayed on the spool instead of
 * being published; on an emptyDir, lost with the pod.) The messages still
 * queued. */
static int stop_flush(ingest_t *in) {
    int64_t start = hb_mono_ms(), quiet_since = start;
    long acked, seen;
    pthread_mutex_lock(&in->lock);
    seen = in->acked_total;
    pthread_mutex_unlock(&in->lock);
    for (;;) {
        int64_t now;
        (void)rd_kafka_flush(in->rk, 100); /* serves the reports */
        if (rd_kafka_outq_len(in->rk) == 0)
            return 0;
        now = hb_mono_ms();
        pthread_mutex_lock(&in->lock);
        acked = in->acked_total;
        pthread_mutex_unlock(&in->lock);
        if (acked != seen) {
            seen = acked;
            quiet_since = now;
        }
        if (now - start >= INGEST_FLUSH_MS ||
            (in->reach_started && hb_kafka_reach_check(&in->brokers) &&
             now - quiet_since >= INGEST_FLUSH_QUIET_MS))
            return rd_kafka_outq_len(in->rk);
    }
}

/* Runs until SIGTERM/SIGINT or the producer's fatal error; then stops
 * accepting, lets requests in flight finish (bounded), flushes, and returns
 * (-1 after the fatal error). */
static int ingest_loop(ingest_t *in) {
    int64_t next_prepare = 0, deadline;
    long left;
    MHD_socket ls;
    struct timespec answered_by;
    char errstr[512];
    int fatal = 0;

    while (!hb_stop_requested) {
        hb_log_limits_flush();
        if (rd_kafka_fatal_error(in->rk, errstr, sizeof(errstr)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            hb_error("ingest: Kafka producer unusable: %s; stopping (a restart makes a new "
                     "producer): nothing more is accepted, requests in flight are answered 503",
                     errstr);
            fatal = 1;
            break;
        }
        if (in->recheck_topics) {
            in->recheck_topics = 0;
            hb_warn("ingest: the brokers refused a message for an unknown topic (deleted, or "
                    "its ACLs changed?): checking the events and dead-letter topics again");
            if (in->topic)
                rd_kafka_topic_destroy(in->topic);
            if (in->dlq)
                rd_kafka_topic_destroy(in->dlq);
            in->topic = in->dlq = NULL;
            next_prepare = 0;
            set_ready(in, 0, "checking the events and dead-letter topics again");
        }
        if ((!in->topic || !in->dlq) && hb_mono_ms() >= next_prepare) {
            /* refused events go to the dead-letter topic: without it a
             * delivery holding one could only be answered 503 */
            if (!in->topic)
                in->topic = hb_kafka_topic_prepare(in->rk, in->cfg->events_topic, INGEST_PREPARE_MS,
                                                   errstr, sizeof(errstr));
            if (in->topic && !in->dlq)
                in->dlq = hb_kafka_topic_prepare(in->rk, in->cfg->dlq_topic, INGEST_PREPARE_MS,
                                                 errstr, sizeof(errstr));
            if (in->topic && in->dlq) {
                hb_info("ingest: ready (events topic %s and dead-letter topic %s known)",
                        in->cfg->events_topic, in->cfg->dlq_topic);
                if (in->spool) /* ready all the same: the log says so */
                    in->brokers.while_down = "deliveries are answered from the ingest spool";
                if (!in->reach_started &&
                    hb_kafka_reach_start(&in->brokers, in->rk, in->cfg->events_topic, errstr,
                                         sizeof(errstr)) < 0)
                    hb_error("%s (readiness ignores the brokers)", errstr);
                in->reach_started = 1;
            } else {
                set_ready(in, 0, errstr);
                hb_debug("ingest: not ready: %s", errstr);
            }
            next_prepare = hb_mono_ms() + INGEST_PREPARE_EVERY_MS;
        }
        if (in->topic && in->dlq) { /* the probe thread tells whether the brokers answer */
            int down = hb_kafka_reach_check(&in->brokers);
            set_ready(in, !down, down ? in->brokers.why : NULL);
        } else if (in->spool) {
            set_ready(in, 0, NULL);
        }
        spool_gauges(in);
        rd_kafka_poll(in->rk, 100);
        hb_httpd_beat(in->ops);
    }

    /* Spooled requests are answered from the spool at once; the replay
     * stops (what it had queued stays on disk). */
    pthread_mutex_lock(&in->lock);
    in->stopping = 1;
    pthread_cond_broadcast(&in->cond);
    pthread_cond_broadcast(&in->replay_cond);
    pthread_mutex_unlock(&in->lock);
    if (in->replay_started) {
        pthread_join(in->replay_thread, NULL);
        in->replay_started = 0;
    }

    hb_httpd_set_ready(in->ops, 0, "stopping");
    ls = MHD_quiesce_daemon(in->mhd); /* no new connections from here */
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    deadline = hb_mono_ms() + INGEST_DRAIN_MS;
    for (;;) {
        pthread_mutex_lock(&in->lock);
        left = in->in_flight;
        pthread_mutex_unlock(&in->lock);
        if (!left || hb_mono_ms() >= deadline)
            break;
        rd_kafka_poll(in->rk, 100);
        hb_httpd_beat(in->ops);
    }
    if (left)
        hb_warn("stopping: %ld ingest requests still in flight after %d ms are answered 503", left,
                INGEST_DRAIN_MS);
    /* The requests cut off answer 503 now. MHD_stop_daemon shuts every
     * connection's socket at once, so it waits until they have sent it
     * (on_completed), for a bounded time: a slow reader does not hold the
     * stop. A request still receiving its body has no answer coming. */
    abs_deadline(&answered_by, INGEST_ANSWER_MS);
    pthread_mutex_lock(&in->lock);
    in->aborting = 1;
    pthread_cond_broadcast(&in->cond);
    while (in->answering > 0)
        if (pthread_cond_timedwait(&in->cond, &in->lock, &answered_by) != 0)
            break; /* ETIMEDOUT */
    pthread_mutex_unlock(&in->lock);
    MHD_stop_daemon(in->mhd); /* joins every connection's thread */
    in->mhd = NULL;
    hb_cutoff_free(in->cutoff); /* after the server: it notifies every close */
    in->cutoff = NULL;

    if (stop_flush(in) > 0) {
        rd_kafka_purge(in->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        for (int64_t until = hb_mono_ms() + 2000; hb_mono_ms() < until;) {
            pthread_mutex_lock(&in->lock);
            left = in->outstanding;
            pthread_mutex_unlock(&in->lock);
            if (!left)
                break;
            rd_kafka_poll(in->rk, 100);
        }
    }
    rd_kafka_poll(in->rk, 0); /* the last reports, so every request is freed */
    if (in->spool) {
        long files;
        long long bytes, bad;
        spool_gauges(in);
        hb_spool_usage(in->spool, &files, &bytes, &bad);
        if (files)
            hb_warn("stopping: %ld deliveries (%lld bytes) stay on the ingest spool %s: the "
                    "next start with this directory publishes them",
                    files, bytes - bad, hb_spool_dir(in->spool));
    }
    return fatal ? -1 : 0;
}

/* Open files besides the ingest endpoint's connections: the health port's
 * (HB_HTTPD_MAX_CONNECTIONS and those closing), librdkafka's sockets and
 * wake-up pipes (a few per broker), the spool's directory, lock and file in
 * hand, the standard streams. */
#define INGEST_FILES_BESIDES 192

long long hb_ingest_open_files(const hb_config_t *cfg) {
    return cfg->ingest_max_connections + INGEST_SPARE_CONNECTIONS + INGEST_CLOSING_CONNECTIONS +
           INGEST_FILES_BESIDES;
}

int hb_ingest_serve(const hb_config_t *cfg, const char *listen) {
    ingest_t in;
    pthread_condattr_t ca;
    char errstr[512];
    int port = -1, rc = 0;

    memset(&in, 0, sizeof(in));
    in.cfg = cfg;
    in.auth_value = *cfg->ingest_auth_value ? cfg->ingest_auth_value : NULL;
    pthread_mutex_init(&in.lock, NULL);
    pthread_mutex_init(&in.codec_lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&in.cond, &ca);
    pthread_cond_init(&in.replay_cond, &ca);
    pthread_condattr_destroy(&ca);
    register_metrics(&in);

    if (setup(&in, listen, &port, errstr, sizeof(errstr)) < 0) {
        hb_error("cannot start: %s", errstr);
        rc = 1;
    } else {
        char p[16];
        snprintf(p, sizeof(p), "%d", port);
        hb_log(HB_LOG_INFO, HB_KV("ingest_port", p),
               "hookbridge-producer %s: Okta event hooks on %s (port %d, path " HB_INGEST_PATH
               "), health on port %d%s",
               HB_VERSION, listen, port, hb_httpd_port(in.ops),
               in.auth_value ? "" : "; WARNING: no authentication (ingest_allow_unauthenticated)");
        if (in.spool && pthread_create(&in.replay_thread, NULL, replay_main, &in) == 0)
            in.replay_started = 1;
        else if (in.spool)
            hb_error("ingest spool: cannot start its replay thread: spooled deliveries are "
                     "published at the next start");
        if (ingest_loop(&in) < 0)
            rc = 1;
        hb_log_limits_flush_all();
        hb_info("stopped");
    }
    if (in.mhd)
        MHD_stop_daemon(in.mhd);
    hb_cutoff_free(in.cutoff);
    hb_httpd_stop(in.ops);
    hb_kafka_reach_stop(&in.brokers); /* its thread uses in.rk */
    if (in.topic)
        rd_kafka_topic_destroy(in.topic);
    if (in.dlq)
        rd_kafka_topic_destroy(in.dlq);
    if (in.rk)
        rd_kafka_destroy(in.rk);
    hb_codec_free(in.codec);
    hb_spool_close(in.spool); /* after the producer: its last reports settle spooled files */
    hb_metrics_reset();
    free(in.over);
    pthread_cond_destroy(&in.cond);
    pthread_cond_destroy(&in.replay_cond);
    pthread_mutex_destroy(&in.codec_lock);
    pthread_mutex_destroy(&in.lock);
    return rc;
}
