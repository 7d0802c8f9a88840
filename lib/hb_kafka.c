/*
 * Kafka configuration and producing. See hb_kafka.h.
 *
 * librdkafka calls the log callback from its own threads; hb_log is
 * thread-safe (one write per line), so the callback logs directly. The
 * reachability probe's design is with its code below.
 */
#include "hb_kafka.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hb_log.h"

static pthread_mutex_t auth_failure_lock = PTHREAD_MUTEX_INITIALIZER;
static char auth_failure[768];
static int64_t auth_failure_ms;

int hb_kafka_auth_failure_recent(char *buf, size_t size, int64_t max_age_ms) {
    int have;
    pthread_mutex_lock(&auth_failure_lock);
    have =
        auth_failure[0] != '\0' && (max_age_ms < 0 || hb_mono_ms() - auth_failure_ms <= max_age_ms);
    if (have && size)
        snprintf(buf, size, "%s", auth_failure);
    pthread_mutex_unlock(&auth_failure_lock);
    return have;
}

int hb_kafka_auth_failure(char *buf, size_t size) {
    return hb_kafka_auth_failure_recent(buf, size, -1);
}

/* librdkafka before 2.6.1 appends its nonce twice to the SCRAM
 * client-final-message (confluentinc/librdkafka#4895); Kafka 4 checks the
 * nonce as RFC 5802 says and refuses the proof as "invalid credentials",
 * right password or not. Said with the error, so that an operator does not
 * hunt for a password that is right. */
static const char *scram_hint(const char *buf, char *hint, size_t size) {
    if (rd_kafka_version() >= 0x020601ff || !strstr(buf, "SASL authentication error") ||
        !strstr(buf, "SCRAM"))
        return "";
    snprintf(hint, size,
             "; if the password is right: librdkafka %s, which this build uses, cannot "
             "authenticate with SCRAM to Apache Kafka 4 and later (fixed in librdkafka 2.6.1)",
             rd_kafka_version_str());
    return hint;
}

void hb_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    hb_log_level_t lvl = level <= 3   ? HB_LOG_ERROR
                         : level <= 4 ? HB_LOG_WARN
                         : level <= 6 ? HB_LOG_INFO
                                      : HB_LOG_DEBUG;
    /* "allow.auto.create.topics=false not supported by broker": said of a
     * broker that does not tell its Metadata versions (the embedded broker
     * of `make run` and the tests). A broker that really predates 0.11
     * cannot serve our idempotent producers at all, which fails louder. */
    if (fac && !strcmp(fac, "AUTOCREATE") && lvl == HB_LOG_WARN)
        lvl = HB_LOG_DEBUG;
    /* The HOOKBRIDGE_KAFKA_* passthrough goes to every client of a program,
     * so a consumer's setting reaches its producer too, by design: not worth
     * a warning at each start. */
    if (fac && !strcmp(fac, "CONFWARN") && lvl == HB_LOG_WARN &&
        (strstr(buf, "is a consumer property and will be ignored by this producer") ||
         strstr(buf, "is a producer property and will be ignored by this consumer")))
        lvl = HB_LOG_DEBUG;
    if (fac && !strcmp(fac, "FAIL") && lvl >= HB_LOG_WARN &&
        (strstr(buf, "SASL authentication error") || strstr(buf, "SSL handshake failed"))) {
        /* "[thrd:...]: broker: reason": the thread name is of no use here */
        const char *msg =
            strncmp(buf, "[thrd:", 6) || !strstr(buf, "]: ") ? buf : strstr(buf, "]: ") + 3;
        char hint_buf[256]; /* librdkafka logs from its brokers' threads at once */
        const char *hint = scram_hint(msg, hint_buf, sizeof(hint_buf));
        pthread_mutex_lock(&auth_failure_lock);
        snprintf(auth_failure, sizeof(auth_failure), "%s%s", msg, hint);
        auth_failure_ms = hb_mono_ms();
        pthread_mutex_unlock(&auth_failure_lock);
        hb_log(lvl, HB_KV("source", "librdkafka", "facility", fac), "%s%s", buf, hint);
        return;
    }
    hb_log(lvl, HB_KV("source", "librdkafka", "facility", fac), "%s", buf);
}

int hb_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errstr,
                      size_t errstr_size) {
    char kerr[512];
    if (rd_kafka_conf_set(conf, name, value, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
        hb_seterr(errstr, errstr_size, "kafka property %s: %s", name, kerr);
        return -1;
    }
    return 0;
}

int hb_kafka_conf_passthrough(rd_kafka_conf_t *conf, const hb_config_t *cfg, char *errstr,
                              size_t errstr_size) {
    for (size_t i = 0; i < cfg->kafka_props_cnt; i++) {
        const char *name = cfg->kafka_props[2 * i], *value = cfg->kafka_props[2 * i + 1];
        char kerr[512], var[300];
        size_t n = (size_t)snprintf(var, sizeof(var), "HOOKBRIDGE_KAFKA_");
        for (const char *p = name; *p && n + 1 < sizeof(var); p++)
            var[n++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
        var[n] = '\0';
        if (rd_kafka_conf_set(conf, name, value, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
            /* librdkafka's text may quote the value for enums; it never does
             * for string properties such as passwords. */
            hb_seterr(errstr, errstr_size, "%s (%s): %s", var, name, kerr);
            return -1;
        }
    }
    return 0;
}

int hb_kafka_conf_fixed(rd_kafka_conf_t *conf, char *errstr, size_t errstr_size) {
    /* Topics are created by `hookbridge-migrate topics` only, with the
     * planned partitions, replication and retention. librdkafka's producer
     * asks by default that a topic it looks up be created, which a broker
     * with auto.create.topics.enable=true (Kafka's default) does with its
     * own defaults: a missing delay tier came back with one partition and
     * the broker's retention, shorter than its delay can need. */
    return hb_kafka_conf_set(conf, "allow.auto.create.topics", "false", errstr, errstr_size);
}

const char *hb_kafka_err_str(rd_kafka_resp_err_t err) {
    if (err == RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP && hb_clock_referenced())
        return "Broker: Invalid timestamp: the broker refuses the time this service stamped the "
               "message with, PostgreSQL's (docs/operations.md, Clocks), so PostgreSQL's clock "
               "or the broker's is off: the stamp is ahead of the broker's clock by more than "
               "the topic's message.timestamp.after.max.ms (1 hour by default since Kafka 4.0), "
               "or behind by more than its message.timestamp.before.max.ms; set the wrong one "
               "right (NTP)";
    if (err == RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP)
        return "Broker: Invalid timestamp: the broker refuses the time this host stamped the "
               "message with, so this host's clock is off: ahead of the broker's by more than "
               "the topic's message.timestamp.after.max.ms (1 hour by default since Kafka 4.0), "
               "or behind by more than its message.timestamp.before.max.ms; set this host's "
               "clock right (NTP)";
    return rd_kafka_err2str(err);
}

rd_kafka_conf_t *hb_kafka_conf_new(const hb_config_t *cfg, const char *client_id, char *errstr,
                                   size_t errstr_size) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (hb_kafka_conf_set(conf, "bootstrap.servers", cfg->kafka_brokers, errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "client.id", client_id, errstr, errstr_size) < 0 ||
        hb_kafka_conf_passthrough(conf, cfg, errstr, errstr_size) < 0 ||
        hb_kafka_conf_fixed(conf, errstr, errstr_size) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, hb_kafka_log_cb);
    return conf;
}

rd_kafka_t *hb_kafka_producer_new(rd_kafka_conf_t *conf,
                                  void (*dr_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *),
                                  char *errstr, size_t errstr_size) {
    rd_kafka_t *rk;
    char kerr[512];
    char part[64];
    size_t part_len = sizeof(part);
    /* Keys partitioned as the Java clients do (murmur2), so one user's events
     * share a partition whoever produced them; an operator's
     * HOOKBRIDGE_KAFKA_PARTITIONER (any value but librdkafka's default) wins. */
    rd_kafka_topic_conf_t *tconf = rd_kafka_conf_get_default_topic_conf(conf);
    if ((!tconf ||
         (rd_kafka_topic_conf_get(tconf, "partitioner", part, &part_len) == RD_KAFKA_CONF_OK &&
          !strcmp(part, "consistent_random"))) &&
        hb_kafka_conf_set(conf, "partitioner", "murmur2_random", errstr, errstr_size) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    /* fixed here too: a program may apply the passthrough again after
     * hb_kafka_conf_new (the ingest endpoint's producer does) */
    if (hb_kafka_conf_set(conf, "enable.idempotence", "true", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "acks", "all", errstr, errstr_size) < 0 ||
        hb_kafka_conf_fixed(conf, errstr, errstr_size) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    if (dr_cb)
        rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        hb_seterr(errstr, errstr_size, "kafka producer: %s", kerr);
        return NULL;
    }
    conf = NULL; /* now owned by the rd_kafka_t */
    return rk;
}

int hb_kafka_produce_hdrs(rd_kafka_t *rk, const char *topic, const void *key, size_t key_len,
                          const void *val, size_t val_len, const char *const *hdrs,
                          void *msg_opaque, int block_ms, char *errstr, size_t errstr_size) {
    int64_t deadline = hb_mono_ms() + block_ms;
    rd_kafka_vu_t vu[5 + HB_KAFKA_MAX_HEADERS];
    size_t n = 0;
    memset(vu, 0, sizeof(vu));
    vu[n].vtype = RD_KAFKA_VTYPE_TOPIC;
    vu[n++].u.cstr = topic;
    vu[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vu[n++].u.i = RD_KAFKA_MSG_F_COPY;
    vu[n].vtype = RD_KAFKA_VTYPE_KEY;
    vu[n].u.mem.ptr = (void *)key;
    vu[n++].u.mem.size = key_len;
    vu[n].vtype = RD_KAFKA_VTYPE_VALUE;
    vu[n].u.mem.ptr = (void *)val;
    vu[n++].u.mem.size = val_len;
    vu[n].vtype = RD_KAFKA_VTYPE_OPAQUE;
    vu[n++].u.ptr = msg_opaque;
    for (size_t i = 0; hdrs && hdrs[i] && i < 2 * HB_KAFKA_MAX_HEADERS; i += 2) {
        vu[n].vtype = RD_KAFKA_VTYPE_HEADER; /* copied by librdkafka */
        vu[n].u.header.name = hdrs[i];
        vu[n].u.header.val = hdrs[i + 1];
        vu[n++].u.header.size = -1;
    }
    for (;;) {
        rd_kafka_error_t *error = rd_kafka_produceva(rk, vu, n);
        rd_kafka_resp_err_t err;
        if (!error)
            return 0;
        err = rd_kafka_error_code(error);
        rd_kafka_error_destroy(error);
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || hb_mono_ms() >= deadline) {
            hb_seterr(errstr, errstr_size, "produce to %s: %s", topic, rd_kafka_err2str(err));
            return err == RD_KAFKA_RESP_ERR__QUEUE_FULL          ? HB_KAFKA_QUEUE_FULL
                   : err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ? HB_KAFKA_TOO_LARGE
                                                                 : -1;
        }
        rd_kafka_poll(rk, 100); /* serve delivery reports to make room */
    }
}

int hb_kafka_produce(rd_kafka_t *rk, const char *topic, const void *key, size_t key_len,
                     const void *val, size_t val_len, void *msg_opaque, int block_ms, char *errstr,
                     size_t errstr_size) {
    return hb_kafka_produce_hdrs(rk, topic, key, key_len, val, val_len, NULL, msg_opaque, block_ms,
                                 errstr, errstr_size);
}

rd_kafka_topic_t *hb_kafka_topic_prepare(rd_kafka_t *rk, const char *topic, int timeout_ms,
                                         char *errstr, size_t errstr_size) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err;
    if (!rkt) {
        hb_seterr(errstr, errstr_size, "topic %s: %s", topic,
                  rd_kafka_err2str(rd_kafka_last_error()));
        return NULL;
    }
    err = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
    if (!err && md->topic_cnt == 1 && md->topics[0].err)
        err = md->topics[0].err;
    if (md)
        rd_kafka_metadata_destroy(md);
    if (err) {
        char auth[768];
        /* no broker let us in (a wrong password, an untrusted certificate):
         * say that rather than only librdkafka's "Broker transport failure" */
        if (err < 0 && hb_kafka_auth_failure_recent(auth, sizeof(auth), 60000))
            hb_seterr(errstr, errstr_size, "topic %s: no metadata yet: %s: %s", topic,
                      rd_kafka_err2str(err), auth);
        else
            hb_seterr(errstr, errstr_size, "topic %s: no metadata yet: %s", topic,
                      rd_kafka_err2str(err));
        rd_kafka_topic_destroy(rkt);
        return NULL;
    }
    return rkt;
}

/* ------------------------------------------------------ reachability
 *
 * librdkafka tells when every broker connection is down ("all brokers down",
 * an error event), but not when a broker stops answering on a connection that
 * stays open: a frozen or wedged broker (SIGSTOP, a hung JVM, a dead network
 * path without RST) keeps its sockets, and librdkafka notices only when a
 * request times out (socket.timeout.ms, a minute by default). So one probe
 * thread per handle sends a small request every second and stores, in an
 * atomic, when the last answered request was sent; the loop thread compares
 * that with the clock (hb_kafka_reach_check) and never waits on the network.
 * librdkafka handles are thread-safe, so the probe uses the service's own
 * handle and its connections: it sees what the service sees.
 *
 * The request is a ListOffsets for one partition of the service's topic
 * (rd_kafka_offsets_for_times), which goes to that partition's leader. The
 * partition that answered is asked again next time; after one that did not
 * answer within a second, the next probe asks a partition led by another
 * broker (as the last metadata answer said: learned at start, again every
 * minute). So in a cluster of several brokers a single frozen broker costs
 * one unanswered probe, the others answer and the service stays ready, as
 * it should: the cluster moves that broker's leadership away and librdkafka
 * follows. /readyz turns 503 only when no broker has answered for
 * HB_KAFKA_SILENT_MS, within about that time of the freeze; so also when
 * the frozen broker leads every partition of the topic, and then nothing
 * can be consumed or produced indeed.
 *
 * Why not a metadata request, which any broker can answer: librdkafka sends
 * it to the broker it used most recently, and the probe's own request to the
 * frozen broker makes that one the most recent, so an idle producer kept
 * asking the frozen broker while two others were fine (tried on a
 * three-broker mock cluster). The metadata request only learns the topic's
 * partitions and leaders, and stands in for as long as the topic has none,
 * at start or once it is deleted (its answer that the topic does not exist
 * counts as an answer all the same: the ListOffsets for a partition that
 * librdkafka knows is gone is never sent, and a deleted tier made a retrier
 * say the brokers were not answering); a broker frozen before that first
 * answer can hold the probe until librdkafka drops its connection, which
 * only delays readiness at start-up.
 *
 * A request counts as answered when the brokers sent something back: success
 * or a broker's error code (>= 0). librdkafka's own errors (negative: timed
 * out, transport failure, ...) mean nobody answered. */

#define HB_KAFKA_PROBE_EVERY_MS 1000
#define HB_KAFKA_PROBE_TIMEOUT_MS 1000
#define HB_KAFKA_SILENT_MS 4000
#define HB_KAFKA_LEADERS_EVERY_MS 60000

static int answered(rd_kafka_resp_err_t err) {
    return err >= 0;
}

/* The topic's partitions and their leaders, as the last metadata answer
 * said: only a guide to which partition to ask next. */
typedef struct {
    int cnt;
    int32_t *leader; /* by partition id */
    int64_t learned_ms;
} leaders_t;

/* A metadata request for rkt (NULL: the brokers); updates l when the topic
 * has partitions. */
static rd_kafka_resp_err_t learn_leaders(rd_kafka_t *rk, rd_kafka_topic_t *rkt, leaders_t *l) {
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, HB_KAFKA_PROBE_TIMEOUT_MS);
    if (!err && rkt && md->topic_cnt == 1 && !md->topics[0].err &&
        md->topics[0].partition_cnt > 0) {
        const struct rd_kafka_metadata_topic *t = &md->topics[0];
        free(l->leader);
        l->cnt = t->partition_cnt;
        l->leader = hb_calloc((size_t)l->cnt, sizeof(*l->leader));
        for (int i = 0; i < t->partition_cnt; i++)
            if (t->partitions[i].id >= 0 && t->partitions[i].id < l->cnt)
                l->leader[t->partitions[i].id] = t->partitions[i].leader;
        l->learned_ms = hb_mono_ms();
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    return err;
}

/* After partition p went unanswered: the next partition with another leader
 * (or simply the next one, when all have the same). */
static int next_partition(const leaders_t *l, int p) {
    for (int i = 1; i < l->cnt; i++) {
        int q = (p + i) % l->cnt;
        if (l->leader[q] != l->leader[p])
            return q;
    }
    return (p + 1) % l->cnt;
}

/* ListOffsets (the latest offset) for one partition, sent to its leader.
 * rd_kafka_offsets_for_times, not rd_kafka_query_watermark_offsets: that one
 * waits past its timeout until the request itself fails (librdkafka 2.0). */
static rd_kafka_resp_err_t ask_leader(rd_kafka_t *rk, const char *topic, int partition) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_resp_err_t err;
    rd_kafka_topic_partition_list_add(l, topic, partition)->offset = RD_KAFKA_OFFSET_END;
    err = rd_kafka_offsets_for_times(rk, l, HB_KAFKA_PROBE_TIMEOUT_MS);
    rd_kafka_topic_partition_list_destroy(l);
    return err;
}

/* Sleeps until until_ms or a stop; returns 1 on a stop. */
static int reach_sleep(hb_kafka_reach_t *r, int64_t until_ms) {
    int stop;
    pthread_mutex_lock(&r->lock);
    while (!r->stop && hb_mono_ms() < until_ms)
        hb_cond_wait_until(&r->cond, &r->lock, until_ms);
    stop = r->stop;
    pthread_mutex_unlock(&r->lock);
    return stop;
}

static void *reach_main(void *arg) {
    hb_kafka_reach_t *r = arg;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(r->rk, r->topic, NULL);
    leaders_t l = {0, NULL, 0};
    int p = 0;
    int64_t sent;
    do {
        rd_kafka_resp_err_t err;
        sent = hb_mono_ms();
        if (l.cnt <= 0) {
            err = learn_leaders(r->rk, rkt, &l);
        } else {
            err = ask_leader(r->rk, r->topic, p);
            if (err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
                err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) {
                /* Not sent: the last metadata answer has no such partition
                 * (the topic deleted, or re-created with fewer). Asking
                 * about the topic itself tells whether the brokers answer. */
                err = learn_leaders(r->rk, rkt, &l);
                p %= l.cnt;
            } else if (!answered(err)) {
                p = next_partition(&l, p);
            }
        }
        if (answered(err)) {
            atomic_store(&r->answered_ms, sent);
            /* Leaders move; this round has its answer already, so a
             * metadata request held by a frozen broker costs nothing. */
            if (l.cnt > 0 && sent - l.learned_ms >= HB_KAFKA_LEADERS_EVERY_MS) {
                (void)learn_leaders(r->rk, rkt, &l);
                p %= l.cnt;
            }
        }
    } while (!reach_sleep(r, sent + HB_KAFKA_PROBE_EVERY_MS)); /* at once after a timeout */
    free(l.leader);
    if (rkt)
        rd_kafka_topic_destroy(rkt);
    return NULL;
}

int hb_kafka_reach_start(hb_kafka_reach_t *r, rd_kafka_t *rk, const char *topic, char *errstr,
                         size_t errstr_size) {
    int err;
    r->rk = rk;
    snprintf(r->topic, sizeof(r->topic), "%s", topic);
    if (!r->down) /* silence counts from now, unless it goes on (hb_kafka_reach_continue) */
        atomic_store(&r->answered_ms, hb_mono_ms());
    r->stop = 0;
    pthread_mutex_init(&r->lock, NULL);
    hb_cond_init_mono(&r->cond);
    err = pthread_create(&r->thread, NULL, reach_main, r);
    if (err) {
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->lock);
        hb_seterr(errstr, errstr_size, "cannot start the Kafka probe thread: %s", strerror(err));
        return -1;
    }
    r->running = 1;
    return 0;
}

void hb_kafka_reach_continue(hb_kafka_reach_t *r, const hb_kafka_reach_t *from) {
    if (r->running || !from->down)
        return;
    r->down = 1;
    snprintf(r->why, sizeof(r->why), "%s", from->why);
    r->down_ms = from->down_ms;
    r->all_down_ms = from->all_down_ms;
    atomic_store(&r->answered_ms, atomic_load(&from->answered_ms));
}

int hb_kafka_reach_down(hb_kafka_reach_t *r, int err) {
    int was_down = r->down || r->all_down_ms;
    if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || !r->running)
        return 0;
    r->all_down_ms = hb_mono_ms();
    return !was_down;
}

int hb_kafka_reach_check(hb_kafka_reach_t *r) {
    int64_t now = hb_mono_ms(), answered_ms, silent;
    int was_down = r->down;
    if (!r->running)
        return 0;
    answered_ms = atomic_load(&r->answered_ms);
    silent = now - answered_ms;
    if (r->all_down_ms && answered_ms >= r->all_down_ms)
        r->all_down_ms = 0; /* a request sent after the event was answered */
    if (r->all_down_ms || silent >= HB_KAFKA_SILENT_MS) {
        /* A wrong password or an untrusted certificate named with it: the
         * brokers do answer, they refuse this client. librdkafka tries again
         * at most every 10 s and logs a repeat at least once a minute. */
        char auth[768];
        int n;
        r->down = 1;
        if (r->all_down_ms)
            n = snprintf(r->why, sizeof(r->why), "no Kafka broker reachable");
        else
            n = snprintf(r->why, sizeof(r->why), "Kafka brokers not answering for %lld s",
                         (long long)(silent / 1000));
        if (n > 0 && (size_t)n < sizeof(r->why) &&
            hb_kafka_auth_failure_recent(auth, sizeof(auth), 60000))
            snprintf(r->why + n, sizeof(r->why) - (size_t)n, ": %s", auth);
    } else {
        r->down = 0;
        r->why[0] = '\0';
    }
    if (r->down && !was_down) {
        r->down_ms = now;
        if (!r->all_down_ms)
            hb_warn("%s (%s)", r->why,
                    r->while_down ? r->while_down : "not ready until they answer");
    } else if (!r->down && was_down) {
        hb_info("Kafka reachable again: the brokers answer (%s for %lld s)",
                r->while_down ? "away" : "not ready", (long long)((now - r->down_ms) / 1000));
    }
    return r->down;
}

void hb_kafka_reach_stop(hb_kafka_reach_t *r) {
    if (!r->running)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    r->running = 0;
}

int hb_kafka_flush(rd_kafka_t *rk, int timeout_ms) {
    (void)rd_kafka_flush(rk, timeout_ms);
    return rd_kafka_outq_len(rk);
}

/* ------------------------------------------------------------ destroy */

/* One rd_kafka_destroy run in a thread: whoever of the waiter and the thread
 * finishes last frees it (the waiter after a join; the thread itself once
 * the waiter has given up on it). */
typedef struct {
    rd_kafka_t *rk;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;      /* rd_kafka_destroy returned */
    int abandoned; /* the waiter gave up: the thread frees this */
} destroy_t;

static atomic_int destroys_abandoned;

static void destroy_free(destroy_t *d) {
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

static void *destroy_main(void *arg) {
    destroy_t *d = arg;
    int abandoned;
    rd_kafka_destroy(d->rk);
    pthread_mutex_lock(&d->lock);
    d->done = 1;
    abandoned = d->abandoned;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
    if (abandoned)
        destroy_free(d);
    return NULL;
}

int hb_kafka_destroy_within(rd_kafka_t *rk, int wait_ms) {
    destroy_t *d = hb_calloc(1, sizeof(*d));
    int64_t until = hb_mono_ms() + wait_ms;
    pthread_t thread;
    int done;
    d->rk = rk;
    pthread_mutex_init(&d->lock, NULL);
    hb_cond_init_mono(&d->cond);
    if (pthread_create(&thread, NULL, destroy_main, d) != 0) {
        destroy_free(d);
        rd_kafka_destroy(rk); /* no thread to spare: wait as before */
        return 0;
    }
    pthread_mutex_lock(&d->lock);
    while (!d->done && hb_mono_ms() < until)
        hb_cond_wait_until(&d->cond, &d->lock, until);
    done = d->done;
    if (!done)
        d->abandoned = 1;
    pthread_mutex_unlock(&d->lock);
    if (!done) {
        pthread_detach(thread);
        atomic_store(&destroys_abandoned, 1);
        return -1;
    }
    pthread_join(thread, NULL);
    destroy_free(d);
    return 0;
}

int hb_kafka_abandoned(void) {
    return atomic_load(&destroys_abandoned);
}
