/* The Kafka consumer: membership, offsets, deferral, lag (see hb_consumer.h). */
#include "hb_consumer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "hb_kafka.h"
#include "hb_log.h"

#define LAG_EVERY_MS 5000
#define LAG_ASK_TIMEOUT_MS 1000   /* each broker round trip of the lag thread */
#define RESEEK_EVERY_MS 1000      /* a rewind that failed is tried again this often */
#define FETCH_PAUSE_AFTER_MS 3000 /* a last-resort pause this long stops fetching too */
#define KEEPALIVE_AFTER_MS 3000   /* no message taken this long: the queue served without */
#define REVOKE_LOG_WAIT_MS 2000   /* a revocation waits this long at most for the delivery log */

/* partitions added to a topic are read within this (hb_consumer_start) */
#define METADATA_REFRESH_MS "10000"
/* rd_kafka_destroy after the consumer was closed takes well under a second;
 * past this it will not return (hb_kafka_destroy_within) */
#define DESTROY_WAIT_MS 5000

typedef struct deferred_s {
    char *topic;
    int32_t partition;
    int64_t due_ms;
    int64_t seek_offset; /* a rewind that failed, tried again when due; -1: none */
    int64_t offset;      /* the partition is read again from here */
    struct deferred_s *next;
} deferred_t;

/* A partition whose fetch position the broker no longer had (deleted by
 * retention while nobody consumed it): librdkafka reset it to the start of
 * the partition and said so in a log line (its own thread); what was
 * between that position and the first message read afterwards is lost. */
typedef struct reset_s {
    char *topic;
    int32_t partition;
    int64_t at; /* the position that was no longer there */
    struct reset_s *next;
} reset_t;

/* The lag thread: the group's committed offset of a partition this process
 * has no position in, and a paused partition's end offset, are broker round
 * trips (rd_kafka_committed, rd_kafka_query_watermark_offsets), asked here,
 * never on the loop thread; a fetched partition's end offset is librdkafka's,
 * from its last fetch, and this process's position is where it resumes.
 * The loop hands it the assignment to measure and takes its last answer. */
typedef struct lag_thread_s {
    pthread_t thread;
    int running; /* loop thread only */
    rd_kafka_t *rk;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;                              /* lock */
    rd_kafka_topic_partition_list_t *want; /* lock: loop -> thread, NULL: nothing new */
    /* lock: thread -> loop, NULL: nothing new; offset is where the group
     * resumes (committed, or the start of the partition when nothing is),
     * and ends[i] the partition's end offset */
    rd_kafka_topic_partition_list_t *got;
    int64_t *got_ends;
} lag_thread_t;

struct hb_consumer_s {
    const hb_config_t *cfg;
    unsigned revocations; /* times partitions were revoked (ordered delivery forgets keys) */
    unsigned assignments; /* times partitions were assigned (hb_consumer_keepalive) */
    char client_id[64];
    const char *group;
    char *const *topics; /* borrowed */
    int topics_cnt;
    int wake_fd; /* the queue writes here */
    hb_offsets_t *offsets;
    hb_outbox_t *outbox; /* committed log rows are taken before a revoke commits */
    hb_consumer_metrics_t m;
    rd_kafka_t *rk;
    rd_kafka_queue_t *rkq;
    int assigned;
    int paused;        /* no message is taken (hb_consumer_poll) */
    int fetch_paused;  /* and librdkafka's partitions are paused: nothing fetched */
    int64_t paused_at; /* monotonic ms of the last resort's pause */
    int64_t polled_at; /* monotonic ms messages were last asked for (or the queue served) */
    int kept_alive;    /* fetching paused by hb_consumer_keepalive past its pass (partitions
                        * assigned there), resumed by the next keep-alive or poll */
    int64_t next_lag;
    /* our own copy of the assignment, kept by the rebalance callback:
     * rd_kafka_assignment() waits on librdkafka's main thread, which stalled
     * the loop for up to a second under load */
    rd_kafka_topic_partition_list_t *assignment;
    hb_kafka_reach_t brokers; /* do the brokers answer? (a probe thread on rk) */
    char missing_topic[256];  /* a subscribed topic the broker does not have */
    char missing_why[300];
    char pause_why[200]; /* set while consumption is paused as the last resort */
    char fatal_why[300]; /* librdkafka's fatal error: the consumer is unusable */
    int64_t next_topic_check;
    deferred_t *deferred;
    /* taken (hb_consumer_take), not handed on yet (hb_consumer_handle_held),
     * in the order taken, each with the ticket it waits for */
    rd_kafka_message_t **held;
    unsigned long long *held_ticket;
    int64_t *held_at; /* monotonic ms each was taken (its sync asked right after) */
    int held_cnt, held_cap;
    size_t held_bytes; /* their payloads' */
    lag_thread_t lag;
    size_t (*revoked)(void *opaque); /* abandons held work of forgotten partitions */
    void *revoked_opaque;
    pthread_mutex_t resets_lock; /* librdkafka's log thread -> loop */
    reset_t *resets;             /* resets_lock */
    atomic_int resets_cnt;       /* entries in resets: the loop's cheap check */
};

static void set_lag(const char *topic, int32_t partition, int64_t lag);

static int is_deferred(const hb_consumer_t *c, const char *topic, int32_t partition) {
    for (const deferred_t *d = c->deferred; d; d = d->next)
        if (d->partition == partition && !strcmp(d->topic, topic))
            return 1;
    return 0;
}

/* rkm's partition is deferred and will be read again from rkm or before. */
static int read_again(const hb_consumer_t *c, const rd_kafka_message_t *rkm) {
    for (const deferred_t *d = c->deferred; d; d = d->next)
        if (d->partition == rkm->partition && d->offset <= rkm->offset &&
            !strcmp(d->topic, rd_kafka_topic_name(rkm->rkt)))
            return 1;
    return 0;
}

static void pause_or_resume(hb_consumer_t *c, rd_kafka_topic_partition_list_t *parts, int pause) {
    rd_kafka_resp_err_t err =
        pause ? rd_kafka_pause_partitions(c->rk, parts) : rd_kafka_resume_partitions(c->rk, parts);
    if (err)
        hb_warn("%s partitions: %s", pause ? "pausing" : "resuming", rd_kafka_err2str(err));
}

static void pause_one(hb_consumer_t *c, const char *topic, int32_t partition, int pause) {
    rd_kafka_topic_partition_list_t *one = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(one, topic, partition);
    pause_or_resume(c, one, pause);
    rd_kafka_topic_partition_list_destroy(one);
}

/* Pauses (or resumes) fetching every assigned partition in librdkafka;
 * deferred partitions stay paused until due. */
static void pause_fetch_all(hb_consumer_t *c, int pause) {
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (c->fetch_paused == pause || !c->rk)
        return;
    if (c->assignment && (parts = rd_kafka_topic_partition_list_copy(c->assignment)) != NULL) {
        if (!pause) { /* deferred partitions stay paused until due */
            rd_kafka_topic_partition_list_t *live = rd_kafka_topic_partition_list_new(parts->cnt);
            for (int i = 0; i < parts->cnt; i++)
                if (!is_deferred(c, parts->elems[i].topic, parts->elems[i].partition))
                    rd_kafka_topic_partition_list_add(live, parts->elems[i].topic,
                                                      parts->elems[i].partition);
            rd_kafka_topic_partition_list_destroy(parts);
            parts = live;
        }
        if (parts->cnt)
            pause_or_resume(c, parts, pause);
        rd_kafka_topic_partition_list_destroy(parts);
    }
    c->fetch_paused = pause;
    c->kept_alive = 0;
}

void hb_consumer_pause_all(hb_consumer_t *c, int pause, const char *why, size_t in_flight,
                           size_t queued) {
    if (!c->rk)
        return;
    /* A shutdown stops fetching at once; the last resort's end fetches
     * again. Not a keep-alive's pause (hb_consumer_keepalive): the check
     * that finds nothing to hold back, on every pass, resumed it in the
     * pass that paused it, with the partitions a rebalance served there had
     * just assigned, whose start that resume could make outdated (review 86:
     * never fetched again); the keep-alive ends its own pause. */
    if (!why || (!pause && c->paused))
        pause_fetch_all(c, pause);
    if (c->paused == pause)
        return;
    c->paused = pause;
    if (why) { /* the last resort, not a shutdown's pause */
        hb_metric_set(c->m.paused, pause);
        if (pause) {
            c->paused_at = hb_mono_ms();
            hb_metric_inc(c->m.pauses);
            snprintf(c->pause_why, sizeof(c->pause_why), "%s", why);
            hb_warn("consumption of every partition paused: %s (%zu requests in flight, %zu "
                    "waiting for a connection)",
                    why, in_flight, queued);
        } else {
            c->pause_why[0] = '\0';
            hb_info("consumption resumed: %zu consumed messages unfinished",
                    hb_offsets_pending(c->offsets));
        }
    }
}

/* Rewinds one partition to offset (asynchronous: librdkafka reports no
 * later error); 0, or -1 logged at warn with the partition and the error. */
static int rewind_partition(hb_consumer_t *c, const char *topic, int32_t partition,
                            int64_t offset) {
    rd_kafka_topic_partition_list_t *one = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_t *p = rd_kafka_topic_partition_list_add(one, topic, partition);
    rd_kafka_error_t *err;
    int rc = 0;
    p->offset = offset;
    /* Messages already fetched behind offset are discarded (and ignored
     * meanwhile: the partition is deferred). */
    err = rd_kafka_seek_partitions(c->rk, one, 0);
    if (err) {
        hb_warn("rewinding %s [%d] to offset %lld: %s", topic, (int)partition, (long long)offset,
                rd_kafka_error_string(err));
        rd_kafka_error_destroy(err);
        rc = -1;
    } else if (one->elems[0].err && one->elems[0].err != RD_KAFKA_RESP_ERR__IN_PROGRESS) {
        /* __IN_PROGRESS: an asynchronous seek was started (what we asked) */
        hb_warn("rewinding %s [%d] to offset %lld: %s", topic, (int)partition, (long long)offset,
                rd_kafka_err2str(one->elems[0].err));
        rc = -1;
    }
    rd_kafka_topic_partition_list_destroy(one);
    return rc;
}

static int is_assigned(const hb_consumer_t *c, const char *topic, int32_t partition) {
    for (int i = 0; c->assignment && i < c->assignment->cnt; i++)
        if (c->assignment->elems[i].partition == partition &&
            !strcmp(c->assignment->elems[i].topic, topic))
            return 1;
    return 0;
}

void hb_consumer_defer(hb_consumer_t *c, const rd_kafka_message_t *rkm, int64_t due_ms) {
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    deferred_t *d;

    pause_one(c, topic, rkm->partition, 1);
    d = hb_calloc(1, sizeof(*d));
    d->topic = hb_strdup(topic);
    d->partition = rkm->partition;
    d->offset = rkm->offset;
    d->due_ms = due_ms;
    /* A failed rewind is not given up: the partition stays paused and
     * deferred (nothing fetched behind rkm is handed out) and the rewind is
     * tried again when due, before the partition resumes (hb_consumer_resume_due). */
    d->seek_offset = rewind_partition(c, topic, rkm->partition, rkm->offset) < 0 ? rkm->offset : -1;
    d->next = c->deferred;
    c->deferred = d;
    hb_metric_inc(c->m.deferred);
    hb_debug("%s [%d] paused at offset %lld until it is due in %lld ms", topic, (int)rkm->partition,
             (long long)rkm->offset, (long long)(due_ms - hb_wall_ms()));
}

static void deferred_free(deferred_t *d) {
    free(d->topic);
    free(d);
}

/* Resumes deferred partitions that are due; returns ms until the next one. */
long long hb_consumer_resume_due(hb_consumer_t *c, long long max_ms) {
    deferred_t **pp = &c->deferred;
    int64_t now = hb_wall_ms();
    long long next = max_ms;
    while (*pp) {
        deferred_t *d = *pp;
        if (d->due_ms > now) {
            if (d->due_ms - now < next)
                next = d->due_ms - now;
            pp = &d->next;
            continue;
        }
        if (d->seek_offset >= 0 && is_assigned(c, d->topic, d->partition)) {
            if (rewind_partition(c, d->topic, d->partition, d->seek_offset) < 0) {
                d->due_ms = now + RESEEK_EVERY_MS; /* still paused, still deferred */
                if (RESEEK_EVERY_MS < next)
                    next = RESEEK_EVERY_MS;
                pp = &d->next;
                continue;
            }
            hb_info("%s [%d] rewound to offset %lld after all", d->topic, (int)d->partition,
                    (long long)d->seek_offset);
        }
        *pp = d->next;
        if (!c->fetch_paused)
            pause_one(c, d->topic, d->partition, 0);
        deferred_free(d);
    }
    return next;
}

static void forget_deferred(hb_consumer_t *c, const char *topic, int32_t partition) {
    deferred_t **pp = &c->deferred;
    while (*pp) {
        deferred_t *d = *pp;
        if (d->partition == partition && !strcmp(d->topic, topic)) {
            *pp = d->next;
            deferred_free(d);
        } else {
            pp = &d->next;
        }
    }
}

/* The positions collected are marked reported whether or not librdkafka
 * stores them. It refuses only partitions not assigned (RD_KAFKA_RESP_ERR__STATE,
 * per partition; the call fails only when it stored none) or everything after
 * the consumer's fatal error. Neither happens to a partition this process
 * still owns: the only unassignment is in rebalance_cb, which stores and
 * commits first and forgets the partitions before it unassigns them, on this
 * thread; and after a fatal error nothing is committed any more (the service
 * is not ready until restarted). A refused store would anyway only leave the
 * committed position lower (a message consumed again, same webhook-id),
 * never past unfinished work; trying a partition not assigned again on every
 * pass would only repeat the warning. */
void hb_consumer_store_offsets(hb_consumer_t *c) {
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(8);
    if (hb_offsets_collect(c->offsets, list) > 0) {
        rd_kafka_resp_err_t err = rd_kafka_offsets_store(c->rk, list);
        if (err)
            hb_warn("storing offsets: %s", rd_kafka_err2str(err));
    }
    rd_kafka_topic_partition_list_destroy(list);
}

/* librdkafka's log line for a reset whose position the broker did not have
 * (version 2.0: "[thrd:main]: T [P]: offset reset (at offset N, broker B) to ...";
 * later versions add " (leader epoch E)" after N). Only logged for an
 * error such as "offset out of range"; a group's first start (no committed
 * offset) is a debug line and nothing lost. */
static void consumer_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    static const char mark[] = "]: offset reset (at offset ";
    hb_consumer_t *c = rd_kafka_opaque(rk);
    const char *m, *open, *name;
    char *end;
    long partition;
    long long at;
    reset_t *r;

    hb_kafka_log_cb(rk, level, fac, buf);
    if (!c || strcmp(fac, "OFFSET") != 0 || !(m = strstr(buf, mark)))
        return;
    for (open = m; open > buf && *open != '['; open--)
        ;
    if (open - buf < 2 || open[-1] != ' ')
        return;
    partition = strtol(open + 1, &end, 10);
    if (end != m || partition < 0 || partition > INT32_MAX)
        return;
    at = strtoll(m + sizeof(mark) - 1, &end, 10);
    if (end == m + sizeof(mark) - 1 || at < 0) /* a logical offset: nothing known lost */
        return;
    /* the topic is the word before " [" (names have no spaces; librdkafka
     * starts the line with "[thrd:NAME]: ") */
    for (name = open - 1; name > buf && name[-1] != ' '; name--)
        ;
    if (name == open - 1)
        return;
    r = hb_calloc(1, sizeof(*r));
    r->topic = hb_strndup(name, (size_t)(open - 1 - name));
    r->partition = (int32_t)partition;
    r->at = at;
    pthread_mutex_lock(&c->resets_lock);
    r->next = c->resets;
    c->resets = r;
    atomic_fetch_add(&c->resets_cnt, 1);
    pthread_mutex_unlock(&c->resets_lock);
}

/* Takes the reset entry of (topic, partition), NULL when there is none. */
static reset_t *take_reset(hb_consumer_t *c, const char *topic, int32_t partition) {
    reset_t **p, *r = NULL;
    pthread_mutex_lock(&c->resets_lock);
    for (p = &c->resets; *p; p = &(*p)->next)
        if ((*p)->partition == partition && !strcmp((*p)->topic, topic)) {
            r = *p;
            *p = r->next;
            atomic_fetch_sub(&c->resets_cnt, 1);
            break;
        }
    pthread_mutex_unlock(&c->resets_lock);
    return r;
}

static void reset_free(reset_t *r) {
    free(r->topic);
    free(r);
}

/* The first message of a partition after a reset: the offsets between the
 * position the broker no longer had and this one were deleted unread. */
static void check_reset(hb_consumer_t *c, const rd_kafka_message_t *rkm) {
    const char *topic = rd_kafka_topic_name(rkm->rkt);
    reset_t *r = take_reset(c, topic, rkm->partition);
    if (!r)
        return;
    if (rkm->offset > r->at) {
        long long lost = (long long)(rkm->offset - r->at);
        hb_metric_add(c->m.expired, (double)lost);
        hb_error("%s [%d]: %lld messages (offsets %lld to %lld) were deleted by the broker before "
                 "they were consumed (the topic's retention is shorter than the time they waited): "
                 "they are lost; consuming from offset %lld",
                 topic, (int)rkm->partition, lost, (long long)r->at, (long long)rkm->offset - 1,
                 (long long)rkm->offset);
    } else if (rkm->offset < r->at) {
        hb_warn("%s [%d]: offset %lld was past the partition's end (the topic recreated or "
                "truncated?): consuming again from offset %lld; what is read again is delivered "
                "again",
                topic, (int)rkm->partition, (long long)r->at, (long long)rkm->offset);
    }
    reset_free(r);
}

/* How long the brokers' metadata may hold the loop at one revocation whose
 * commit failed, all its topics together. */
#define REVOKE_METADATA_MS 1000

/* Whether topic is gone from the brokers (deleted): 1 when their metadata
 * says they do not have it, 0 when they do or cannot say (a metadata
 * request of up to wait_ms; *asked cleared when they did not answer, so
 * the other topics are not asked, each for as long: review 67, the
 * retrier's 8 tiers held its loop 8 s at an assignment lost to brokers
 * down; 0 without asking when *asked is 0). */
static int topic_deleted(hb_consumer_t *c, const char *topic, int wait_ms, int *asked) {
    rd_kafka_topic_t *rkt;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err;
    int gone = 0;
    if (!*asked || wait_ms <= 0 || !(rkt = rd_kafka_topic_new(c->rk, topic, NULL)))
        return 0;
    err = rd_kafka_metadata(c->rk, 0, rkt, &md, wait_ms);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        *asked = 0;
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR && md) {
        gone =
            md->topic_cnt == 1 &&
            (md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
             (md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topics[0].partition_cnt == 0));
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    return gone;
}

/* The commit at a revocation failed: what it means. Usually the new owner
 * delivers again what was finished since the last commit; but partitions
 * revoked because their topic was deleted have no new owner, and nothing
 * of them is delivered again (review 64: the log said "their new owner
 * delivers again" of a topic just deleted). */
static void say_commit_failed(hb_consumer_t *c, const rd_kafka_topic_partition_list_t *parts,
                              rd_kafka_resp_err_t cerr) {
    char gone_names[256] = "";
    char *deleted = hb_malloc((size_t)parts->cnt + 1); /* per partition: its topic is gone */
    /* not asked while the brokers are known not to answer (the loop's own
     * probe, this thread's: hb_kafka_reach_check) */
    int gone = 0, asked = !c->brokers.down;
    int64_t until_ms = hb_mono_ms() + REVOKE_METADATA_MS;
    hb_metric_inc(c->m.kafka_errors);
    for (int i = 0; i < parts->cnt; i++) {
        const char *t = parts->elems[i].topic;
        int k = 0;
        while (k < i && strcmp(parts->elems[k].topic, t) != 0)
            k++;
        deleted[i] = k < i ? deleted[k] /* one question a topic */
                           : (char)topic_deleted(c, t, (int)(until_ms - hb_mono_ms()), &asked);
        if (deleted[i] && k == i)
            snprintf(gone_names + strlen(gone_names), sizeof(gone_names) - strlen(gone_names),
                     "%s%s", gone_names[0] ? ", " : "", t);
        gone += deleted[i];
    }
    free(deleted);
    if (gone == parts->cnt)
        hb_warn("committing the offsets of %d revoked partition(s) failed: %s; their topic "
                "(%s) was deleted: no consumer takes them over, and what they held went with it",
                parts->cnt, rd_kafka_err2str(cerr), gone_names);
    else if (gone > 0)
        hb_warn("committing the offsets of %d revoked partition(s) failed: %s; %d of them were "
                "of a deleted topic (%s), gone with it; the new owner of the others starts from "
                "the offsets committed before and delivers again what this process finished "
                "after them (same webhook-ids)",
                parts->cnt, rd_kafka_err2str(cerr), gone, gone_names);
    else
        hb_warn("committing the offsets of %d revoked partition(s) failed: %s; their new owner "
                "starts from the offsets committed before and delivers again what this process "
                "finished after them (same webhook-ids)",
                parts->cnt, rd_kafka_err2str(cerr));
}

/* Held messages of revoked partitions (or all: parts NULL) are dropped:
 * not handed on, their offsets not stored; the partitions' next owner (or
 * this process at its next start) reads them again. */
static int in_parts(const hb_consumer_t *c, const rd_kafka_message_t *rkm, const void *arg) {
    const rd_kafka_topic_partition_list_t *parts = arg;
    (void)c;
    return !parts ||
           rd_kafka_topic_partition_list_find(parts, rd_kafka_topic_name(rkm->rkt), rkm->partition);
}

static int to_read_again(const hb_consumer_t *c, const rd_kafka_message_t *rkm, const void *arg) {
    (void)arg;
    return c->deferred && read_again(c, rkm);
}

/* The held messages from index `from` on, but those drop() claims
 * (destroyed), moved to the front in order; the rest before `from` are
 * gone already. */
static void held_keep(hb_consumer_t *c, int from,
                      int (*drop)(const hb_consumer_t *c, const rd_kafka_message_t *rkm,
                                  const void *arg),
                      const void *arg) {
    int kept = 0;
    size_t bytes = 0;
    for (int i = from; i < c->held_cnt; i++) {
        rd_kafka_message_t *rkm = c->held[i];
        if (drop(c, rkm, arg)) {
            rd_kafka_message_destroy(rkm);
            continue;
        }
        c->held_ticket[kept] = c->held_ticket[i];
        c->held_at[kept] = c->held_at[i];
        c->held[kept++] = rkm;
        bytes += rkm->len;
    }
    c->held_cnt = kept;
    c->held_bytes = bytes;
}

static void drop_held(hb_consumer_t *c, const rd_kafka_topic_partition_list_t *parts) {
    held_keep(c, 0, in_parts, parts);
}

/* Pauses partitions about to be assigned (fetching is paused): before the
 * assignment, so the pause's version comes before their start's
 * (rebalance_cb). A partition librdkafka has no object for yet (a topic
 * this process never had) is not paused: it is fetched, and a message of it
 * taken while fetching is paused is deferred (hb_consumer_keepalive), which
 * pauses it then, started. */
static void pause_unstarted(hb_consumer_t *c, const rd_kafka_topic_partition_list_t *parts) {
    rd_kafka_topic_partition_list_t *copy = rd_kafka_topic_partition_list_copy(parts);
    pause_or_resume(c, copy, 1);
    rd_kafka_topic_partition_list_destroy(copy);
}

/* Resumes the revoked partitions this process has paused: every one while
 * fetching is paused, else the deferred ones. */
static void resume_revoked(hb_consumer_t *c, const rd_kafka_topic_partition_list_t *parts) {
    rd_kafka_topic_partition_list_t *paused = rd_kafka_topic_partition_list_new(parts->cnt);
    for (int i = 0; i < parts->cnt; i++)
        if (c->fetch_paused || is_deferred(c, parts->elems[i].topic, parts->elems[i].partition))
            rd_kafka_topic_partition_list_add(paused, parts->elems[i].topic,
                                              parts->elems[i].partition);
    if (paused->cnt)
        pause_or_resume(c, paused, 0);
    rd_kafka_topic_partition_list_destroy(paused);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    hb_consumer_t *c = opaque;
    int cooperative = !strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE");
    rd_kafka_error_t *kerr = NULL;

    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        hb_info("assigned %d partition(s)", parts->cnt);
        /* No pause, resume or seek of a partition may meet its start:
         * librdkafka 2.0 starts an assigned partition on its main thread
         * once the group's committed offset is in, with an op whose version
         * it takes before it queues it, and drops an op whose version is
         * older than the partition's last one; a pause or resume from this
         * thread that took its version in between and queued first made
         * the start "outdated" and the partition was never fetched, without
         * a word (review 80: the resume of every partition just assigned,
         * paused or not, that this process sent here). Partitions revoked while
         * paused are resumed at their revocation (below), so none comes back
         * paused; while fetching is paused, new ones are paused before they
         * are assigned, so that pause comes before their start. */
        if (c->fetch_paused)
            pause_unstarted(c, parts);
        if (cooperative)
            kerr = rd_kafka_incremental_assign(rk, parts);
        else
            (void)rd_kafka_assign(rk, parts);
        c->assigned = 1;
        c->assignments++;
        if (!cooperative || !c->assignment) {
            if (c->assignment)
                rd_kafka_topic_partition_list_destroy(c->assignment);
            c->assignment = rd_kafka_topic_partition_list_new(parts->cnt);
        }
        for (int i = 0; i < parts->cnt; i++)
            rd_kafka_topic_partition_list_add(c->assignment, parts->elems[i].topic,
                                              parts->elems[i].partition);
    } else {
        size_t left = 0;
        rd_kafka_resp_err_t cerr;
        c->revocations++;
        /* Commit what is finished before the new owner starts from it:
         * what was answered is finished once its delivery-log row is
         * committed, which the log's writer does every
         * HOOKBRIDGE_LOG_FLUSH_INTERVAL; left to that, the new owner would
         * deliver again everything answered since the last flush (most of
         * it under load). The loop waits for the rows, a bounded time. */
        hb_outbox_settle(c->outbox, REVOKE_LOG_WAIT_MS);
        hb_consumer_store_offsets(c);
        cerr = rd_kafka_commit(rk, NULL, 0);
        /* Apache Kafka takes a commit of the generation being revoked, also
         * while the group rebalances again; the devbroker (librdkafka's mock
         * cluster) refuses every commit while its group rebalances, and
         * starts a rebalance again right after a revocation when a member's
         * SyncGroup came after the leader's (docs/design.md, the devbroker).
         * Nothing can commit for this generation then: what was finished
         * since the last commit is delivered again by the new owner. */
        if (cerr && cerr != RD_KAFKA_RESP_ERR__NO_OFFSET)
            say_commit_failed(c, parts, cerr);
        /* librdkafka keeps a partition's pause across a revocation: one
         * paused here (deferred, or fetching paused) would stay paused for
         * good when assigned back to this process. Resumed now, while it is
         * started, not at its next assignment (above). */
        resume_revoked(c, parts);
        drop_held(c, parts);
        for (int i = 0; i < parts->cnt; i++) {
            set_lag(parts->elems[i].topic, parts->elems[i].partition, 0);
            hb_offsets_forget(c->offsets, parts->elems[i].topic, parts->elems[i].partition);
            forget_deferred(c, parts->elems[i].topic, parts->elems[i].partition);
            if (atomic_load(&c->resets_cnt) > 0) {
                reset_t *r = take_reset(c, parts->elems[i].topic, parts->elems[i].partition);
                if (r)
                    reset_free(r);
            }
        }
        /* What this process holds for them and has not started is the new
         * owner's now: started here too, it would be delivered twice. */
        if (c->revoked)
            left = c->revoked(c->revoked_opaque);
        hb_info("revoking %d partition(s): %zu held deliveries left to their new owner", parts->cnt,
                left);
        if (cooperative)
            kerr = rd_kafka_incremental_unassign(rk, parts);
        else
            (void)rd_kafka_assign(rk, NULL);
        for (int i = 0; c->assignment && i < parts->cnt; i++)
            (void)rd_kafka_topic_partition_list_del(c->assignment, parts->elems[i].topic,
                                                    parts->elems[i].partition);
        if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            hb_warn("rebalance: %s", rd_kafka_err2str(err));
    }
    if (kerr) {
        hb_error("rebalance: %s", rd_kafka_error_string(kerr));
        rd_kafka_error_destroy(kerr);
    }
}

/* librdkafka's error events (loop thread, through the consumer poll). All
 * brokers down makes the service not ready until a request sent afterwards
 * is answered (broker_check, hb_kafka_reach_t). */
static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    hb_consumer_t *c = opaque;
    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        if (hb_kafka_reach_down(&c->brokers, err))
            hb_error("no Kafka broker reachable (not ready until one is): %s", reason);
        return;
    }
    hb_metric_inc(c->m.kafka_errors);
    hb_log(HB_LOG_DEBUG, HB_KV("source", "librdkafka"), "kafka error: %s", reason);
}

/* Whether the brokers answer: a probe thread on the consumer asks them every
 * second (started with the consumer, stopped in hb_worker_free); this only
 * reads its result and logs the changes. */
static void broker_check(hb_consumer_t *c) {
    char errstr[512];
    if (c->rk && !c->brokers.rk && c->topics_cnt > 0 &&
        hb_kafka_reach_start(&c->brokers, c->rk, c->topics[0], errstr, sizeof(errstr)) < 0)
        hb_error("%s (readiness ignores the brokers)", errstr);
    (void)hb_kafka_reach_check(&c->brokers);
}

void hb_consumer_on_revoke(hb_consumer_t *c, size_t (*revoked)(void *opaque), void *opaque) {
    c->revoked = revoked;
    c->revoked_opaque = opaque;
}

int hb_consumer_start(hb_consumer_t *c, char *errstr, size_t errstr_size) {
    const hb_config_t *cfg = c->cfg;
    rd_kafka_conf_t *conf = hb_kafka_conf_new(cfg, c->client_id, errstr, errstr_size);
    rd_kafka_topic_partition_list_t *topics;
    rd_kafka_resp_err_t err;
    char kerr[512];

    if (!conf)
        return -1;
    if (hb_kafka_conf_set(conf, "group.id", c->group, errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "enable.auto.commit", "true", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "auto.commit.interval.ms", "1000", errstr, errstr_size) < 0 ||
        hb_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, errstr_size) < 0 ||
        /* What librdkafka fetches ahead, 64 MiB by default: catching up a
         * backlog of 200,000 events took the dispatcher to 140 MiB (VmHWM);
         * with 16 MiB to 61 MiB, draining as fast (make bench, catch-up:
         * 34,800 and 33,000 deliveries/s; 8 MiB starved it: 21,700/s). */
        hb_kafka_conf_set(conf, "queued.max.messages.kbytes", "16384", errstr, errstr_size) < 0 ||
        /* Partitions added to a subscribed topic are seen, and the group
         * rebalances onto them, at a member's next metadata refresh: 5 min
         * by librdkafka's default. A producer that sees them first writes
         * there meanwhile: retries due in seconds came up to 5 min late,
         * events as late. One metadata request every 10 s (with the
         * retrier's pattern, the cluster's topic list) bounds that. */
        hb_kafka_conf_set(conf, "topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS, errstr,
                          errstr_size) < 0 ||
        /* Incremental rebalancing: a member joining or leaving moves only the
         * partitions that change owner; the others keep being consumed. */
        hb_kafka_conf_set(conf, "partition.assignment.strategy", "cooperative-sticky", errstr,
                          errstr_size) < 0 ||
        /* Static membership: a replica restarted with the same id takes its
         * partitions back without a rebalance (docs/operations.md). */
        (*cfg->instance_id &&
         hb_kafka_conf_set(conf, "group.instance.id", cfg->instance_id, errstr, errstr_size) < 0) ||

        /* the operator's HOOKBRIDGE_KAFKA_* settings win over our defaults */
        hb_kafka_conf_passthrough(conf, cfg, errstr, errstr_size) < 0 ||
        hb_kafka_conf_fixed(conf, errstr, errstr_size) < 0) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    rd_kafka_conf_set_log_cb(conf, consumer_log_cb);
    rd_kafka_conf_set_opaque(conf, c);
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof(kerr));
    if (!c->rk) {
        rd_kafka_conf_destroy(conf);
        hb_seterr(errstr, errstr_size, "kafka consumer: %s", kerr);
        return -1;
    }
    conf = NULL; /* now owned by the rd_kafka_t */
    rd_kafka_poll_set_consumer(c->rk);
    c->rkq = rd_kafka_queue_get_consumer(c->rk);
    rd_kafka_queue_io_event_enable(c->rkq, c->wake_fd, "k", 1);

    topics = rd_kafka_topic_partition_list_new(c->topics_cnt);
    for (int i = 0; i < c->topics_cnt; i++)
        rd_kafka_topic_partition_list_add(topics, c->topics[i], RD_KAFKA_PARTITION_UA);
    err = rd_kafka_subscribe(c->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        hb_seterr(errstr, errstr_size, "subscribe: %s", rd_kafka_err2str(err));
        return -1;
    }
    for (int i = 0; i < c->topics_cnt; i++)
        hb_info("consuming %s in group %s", c->topics[i], c->group);
    return 0;
}

/* hookbridge_consumer_lag{topic,partition}: messages of the partition that
 * are not finished and committed: its end offset minus where the group
 * resumes (its committed offset, or the position this process has finished
 * up to when that is further: auto-commit sends it within a second). 0 when
 * everything is consumed and committed; a paused or stuck consumer reads its
 * backlog. Set from the lag thread's last answer; a partition revoked from
 * this process reads 0 here. */
static void set_lag(const char *topic, int32_t partition, int64_t lag) {
    char labels[300];
    snprintf(labels, sizeof(labels), "topic=\"%s\",partition=\"%d\"", topic, (int)partition);
    hb_metric_set(hb_metrics_gauge("hookbridge_consumer_lag", labels,
                                   "Messages of the partition not finished and committed yet "
                                   "(end offset minus the group's committed offset)."),
                  (double)lag);
}

/* Sleeps until until_ms, new work or a stop; returns 1 on a stop. */
static int lag_sleep(lag_thread_t *l, int64_t until_ms) {
    int stop;
    pthread_mutex_lock(&l->lock);
    while (!l->stop && !l->want && hb_mono_ms() < until_ms)
        hb_cond_wait_until(&l->cond, &l->lock, until_ms);
    stop = l->stop;
    pthread_mutex_unlock(&l->lock);
    return stop;
}

static int lag_stopping(lag_thread_t *l) {
    int stop;
    pthread_mutex_lock(&l->lock);
    stop = l->stop;
    pthread_mutex_unlock(&l->lock);
    return stop;
}

/* One measurement of parts (owned): where the group resumes, in place, and
 * the end offsets; handed to the loop unless a partition's answer is
 * missing (then that partition is left out). */
static void lag_measure(lag_thread_t *l, rd_kafka_topic_partition_list_t *parts) {
    rd_kafka_topic_partition_list_t *got = rd_kafka_topic_partition_list_new(parts->cnt);
    int64_t *ends = hb_calloc((size_t)parts->cnt + 1, sizeof(*ends));
    rd_kafka_resp_err_t err = 0;
    /* Where the group resumes is asked only for the partitions this process
     * has no position in yet; for the others it is that position (it commits
     * them itself): the round trip held deliveries too. */
    rd_kafka_topic_partition_list_t *ask = rd_kafka_topic_partition_list_new(parts->cnt);
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].offset < 0)
            rd_kafka_topic_partition_list_add(ask, parts->elems[i].topic,
                                              parts->elems[i].partition);
    if (ask->cnt > 0 && (err = rd_kafka_committed(l->rk, ask, LAG_ASK_TIMEOUT_MS)) != 0)
        hb_debug("consumer lag: committed offsets: %s", rd_kafka_err2str(err));
    for (int i = 0; !err && i < ask->cnt; i++) {
        rd_kafka_topic_partition_t *q =
            rd_kafka_topic_partition_list_find(parts, ask->elems[i].topic, ask->elems[i].partition);
        if (q) {
            q->offset = ask->elems[i].offset;
            q->err = ask->elems[i].err;
        }
    }
    rd_kafka_topic_partition_list_destroy(ask);
    for (int i = 0; !err && i < parts->cnt && !lag_stopping(l); i++) {
        const rd_kafka_topic_partition_t *p = &parts->elems[i];
        int64_t lo = -1, hi = -1;
        rd_kafka_resp_err_t perr = p->err;
        /* A partition being fetched: its end offset as of its last fetch
         * (every fetch answer carries it), no round trip. Asking the leader
         * queues behind the fetches on the same connection: measured, it
         * held deliveries up to 60 ms every 5 s. A paused partition (or one
         * with nothing committed, whose start is needed) is asked. */
        if (!perr &&
            (p->opaque || p->offset < 0 ||
             rd_kafka_get_watermark_offsets(l->rk, p->topic, p->partition, &lo, &hi) || hi < 0))
            perr = rd_kafka_query_watermark_offsets(l->rk, p->topic, p->partition, &lo, &hi,
                                                    LAG_ASK_TIMEOUT_MS);
        if (perr || hi < 0) { /* this partition's figure stays as it was */
            hb_debug("consumer lag: %s [%d]: %s", p->topic, (int)p->partition,
                     rd_kafka_err2str(perr));
            continue;
        }
        /* nothing committed: the group starts at the beginning
         * (auto.offset.reset=earliest) */
        ends[got->cnt] = hi;
        rd_kafka_topic_partition_list_add(got, p->topic, p->partition)->offset =
            p->offset >= 0 ? p->offset : lo;
    }
    rd_kafka_topic_partition_list_destroy(parts);
    pthread_mutex_lock(&l->lock);
    if (l->got) {
        rd_kafka_topic_partition_list_destroy(l->got);
        free(l->got_ends);
    }
    l->got = got;
    l->got_ends = ends;
    pthread_mutex_unlock(&l->lock);
}

static void *lag_main(void *arg) {
    lag_thread_t *l = arg;
    int64_t started;
    do {
        rd_kafka_topic_partition_list_t *parts;
        started = hb_mono_ms();
        pthread_mutex_lock(&l->lock);
        parts = l->want;
        l->want = NULL;
        pthread_mutex_unlock(&l->lock);
        if (parts)
            lag_measure(l, parts);
    } while (!lag_sleep(l, started + LAG_EVERY_MS));
    return NULL;
}

static void lag_stop(lag_thread_t *l) {
    if (!l->running)
        return;
    pthread_mutex_lock(&l->lock);
    l->stop = 1;
    pthread_cond_signal(&l->cond);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->thread, NULL);
    pthread_cond_destroy(&l->cond);
    pthread_mutex_destroy(&l->lock);
    if (l->want)
        rd_kafka_topic_partition_list_destroy(l->want);
    if (l->got)
        rd_kafka_topic_partition_list_destroy(l->got);
    free(l->got_ends);
    l->want = l->got = NULL;
    l->got_ends = NULL;
    l->running = 0;
}

static void lag_start(hb_consumer_t *c) {
    lag_thread_t *l = &c->lag;
    int err;
    l->rk = c->rk;
    l->stop = 0;
    pthread_mutex_init(&l->lock, NULL);
    hb_cond_init_mono(&l->cond);
    err = pthread_create(&l->thread, NULL, lag_main, l);
    if (err) {
        pthread_cond_destroy(&l->cond);
        pthread_mutex_destroy(&l->lock);
        hb_error("cannot start the consumer lag thread (no hookbridge_consumer_lag): %s",
                 strerror(err));
        return;
    }
    l->running = 1;
}

/* The lag thread's answer into the metric as soon as it is there (for the
 * partitions still assigned); every 5 s the current assignment handed to it. */
static void lag_tick(hb_consumer_t *c) {
    lag_thread_t *l = &c->lag;
    rd_kafka_topic_partition_list_t *got;
    int64_t *ends;
    if (!c->rk || !c->assignment)
        return;
    if (!l->running && hb_mono_ms() >= c->next_lag) {
        lag_start(c);
        if (!l->running) {
            c->next_lag = hb_mono_ms() + LAG_EVERY_MS; /* tried again then */
            return;
        }
    }
    if (!l->running)
        return;
    pthread_mutex_lock(&l->lock);
    got = l->got;
    ends = l->got_ends;
    l->got = NULL;
    l->got_ends = NULL;
    if (hb_mono_ms() >= c->next_lag) {
        c->next_lag = hb_mono_ms() + LAG_EVERY_MS;
        if (l->want)
            rd_kafka_topic_partition_list_destroy(l->want);
        l->want = rd_kafka_topic_partition_list_copy(c->assignment);
        for (int i = 0; i < l->want->cnt; i++) {
            rd_kafka_topic_partition_t *p = &l->want->elems[i];
            /* not fetched: its end offset asked */
            p->opaque = c->fetch_paused || is_deferred(c, p->topic, p->partition) ? p : NULL;
            /* unknown (-1): where the group resumes asked */
            p->offset = hb_offsets_position(c->offsets, p->topic, p->partition);
        }
        pthread_cond_signal(&l->cond);
    }
    pthread_mutex_unlock(&l->lock);
    for (int i = 0; got && i < got->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &got->elems[i];
        int64_t from = p->offset, done;
        if (!is_assigned(c, p->topic, p->partition))
            continue;
        done = hb_offsets_position(c->offsets, p->topic, p->partition);
        if (done > from)
            from = done;
        set_lag(p->topic, p->partition, ends[i] > from ? ends[i] - from : 0);
    }
    if (got) {
        rd_kafka_topic_partition_list_destroy(got);
        free(ends);
    }
}

/* While a subscribed topic is missing, look it up every 5 s (a metadata
 * request of up to 1 s) and become ready again once it exists. */
static void topic_check(hb_consumer_t *c) {
    rd_kafka_topic_t *rkt;
    const struct rd_kafka_metadata *md = NULL;
    int exists = 0;
    if (!c->missing_topic[0] || !c->rk || hb_mono_ms() < c->next_topic_check)
        return;
    c->next_topic_check = hb_mono_ms() + 5000;
    rkt = rd_kafka_topic_new(c->rk, c->missing_topic, NULL);
    if (!rkt)
        return;
    if (rd_kafka_metadata(c->rk, 0, rkt, &md, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR && md) {
        exists = md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
                 md->topics[0].partition_cnt > 0;
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    if (exists) {
        hb_info("topic %s exists now", c->missing_topic);
        c->missing_topic[0] = '\0';
        /* With a pattern in the subscription librdkafka matches it against
         * the whole cluster's metadata, which it refreshes only every
         * topic.metadata.refresh.interval.ms (METADATA_REFRESH_MS, unless
         * the operator's passthrough sets more): an application's request
         * for all topics makes the group see the new topic now. */
        for (int i = 0; i < c->topics_cnt; i++)
            if (c->topics[i][0] == '^') {
                md = NULL;
                if (rd_kafka_metadata(c->rk, 1, NULL, &md, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
                    md)
                    rd_kafka_metadata_destroy(md);
                break;
            }
    }
}

/* An error event instead of a message: 1 when rkm is one (handled here). A
 * subscribed topic that does not exist makes the service not ready until it
 * does (topic_check); the rest is informational, the consumer recovers. */
static int consumed_error(hb_consumer_t *c, const rd_kafka_message_t *rkm) {
    if (!rkm->err)
        return 0;
    if (rkm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return 1;
    if ((rkm->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
         rkm->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC) &&
        rkm->rkt) {
        const char *t = rd_kafka_topic_name(rkm->rkt);
        if (t[0] == '^') /* a pattern (the retrier's retired tiers) matching nothing */
            return 1;
        if (strcmp(c->missing_topic, t) != 0) {
            hb_error("topic %s does not exist: create it (not ready until it exists)", t);
            snprintf(c->missing_topic, sizeof(c->missing_topic), "%s", t);
            snprintf(c->missing_why, sizeof(c->missing_why), "topic %s does not exist", t);
        }
        c->next_topic_check = hb_mono_ms() + 5000;
        return 1;
    }
    /* Informational: the consumer recovers by itself. */
    hb_metric_inc(c->m.kafka_errors);
    hb_warn("kafka: %s", rd_kafka_message_errstr(rkm));
    return 1;
}

/* The next message of the queue for hb_consumer_poll or hb_consumer_take
 * (the i-th asked for this pass): 0 when the queue is empty, else 1 with
 * *out the message, or NULL for one not to hand on (an error event, one
 * fetched before its partition's rewind: read again when due). */
static int take_one(hb_consumer_t *c, int i, rd_kafka_message_t **out) {
    rd_kafka_message_t *rkm;
    *out = NULL;
    if (i == 0) {
        c->polled_at = hb_mono_ms();
        if (c->kept_alive) /* messages are taken again: fetch them */
            pause_fetch_all(c, 0);
    }
    rkm = rd_kafka_consumer_poll(c->rk, 0);
    if (!rkm)
        return 0;
    if (!rkm->err && atomic_load_explicit(&c->resets_cnt, memory_order_relaxed) > 0)
        check_reset(c, rkm);
    if (consumed_error(c, rkm) ||
        (c->deferred && is_deferred(c, rd_kafka_topic_name(rkm->rkt), rkm->partition)))
        rd_kafka_message_destroy(rkm);
    else
        *out = rkm;
    return 1;
}

void hb_consumer_poll(hb_consumer_t *c, int max, int (*more)(void *opaque),
                      void (*handle)(rd_kafka_message_t *rkm, void *opaque), void *opaque) {
    rd_kafka_message_t *rkm;
    for (int i = 0; i < max && !c->paused && more(opaque) && take_one(c, i, &rkm); i++) {
        if (!rkm)
            continue;
        handle(rkm, opaque);
        rd_kafka_message_destroy(rkm);
    }
}

int hb_consumer_take(hb_consumer_t *c, int max, int (*more)(void *opaque), void *opaque,
                     unsigned long long ticket) {
    rd_kafka_message_t *rkm;
    int taken = 0;
    for (int i = 0; i < max && !c->paused && more(opaque) && take_one(c, i, &rkm); i++) {
        if (!rkm)
            continue;
        if (c->held_cnt == c->held_cap) {
            c->held_cap = c->held_cap ? c->held_cap * 2 : 64;
            c->held = hb_realloc(c->held, (size_t)c->held_cap * sizeof(*c->held));
            c->held_ticket =
                hb_realloc(c->held_ticket, (size_t)c->held_cap * sizeof(*c->held_ticket));
            c->held_at = hb_realloc(c->held_at, (size_t)c->held_cap * sizeof(*c->held_at));
        }
        c->held_ticket[c->held_cnt] = ticket;
        c->held_at[c->held_cnt] = hb_mono_ms();
        c->held[c->held_cnt++] = rkm;
        c->held_bytes += rkm->len;
        taken++;
    }
    return taken;
}

int hb_consumer_held(const hb_consumer_t *c) {
    return c->held_cnt;
}

size_t hb_consumer_held_bytes(const hb_consumer_t *c) {
    return c->held_bytes;
}

int64_t hb_consumer_held_since(const hb_consumer_t *c) {
    return c->held_cnt ? c->held_at[0] : 0;
}

int hb_consumer_handle_held(hb_consumer_t *c, unsigned long long done,
                            void (*handle)(rd_kafka_message_t *rkm, void *opaque), void *opaque) {
    int i, handed = 0;
    for (i = 0; i < c->held_cnt && c->held_ticket[i] <= done; i++) {
        rd_kafka_message_t *rkm = c->held[i];
        /* one handled before deferred its partition (a writer schema on its
         * way): what follows it there is read again; a deferral of a later
         * message (hb_consumer_keepalive) leaves the held ones to handle */
        if (!c->deferred || !read_again(c, rkm)) {
            handle(rkm, opaque);
            handed++;
        }
        rd_kafka_message_destroy(rkm);
    }
    /* The rest wait for a later sync. Those of a partition deferred
     * meanwhile are read again too: dropped now, not handed on once the
     * deferral is over and the partition read again from before them
     * (each twice, and ahead of the deferred one). */
    held_keep(c, i, to_read_again, NULL);
    return handed;
}

void hb_consumer_limit(hb_consumer_t *c, long long max_pending, long long max_bytes,
                       size_t in_flight, size_t queued) {
    size_t pending = hb_offsets_pending(c->offsets);
    size_t held = hb_held_bytes();
    if (pending >= (size_t)max_pending) {
        char why[160];
        snprintf(why, sizeof(why),
                 "%zu consumed messages unfinished (HOOKBRIDGE_MAX_PENDING_EVENTS=%lld)", pending,
                 max_pending);
        hb_consumer_pause_all(c, 1, why, in_flight, queued);
    } else if (held >= (size_t)max_bytes) {
        char why[200];
        snprintf(why, sizeof(why),
                 "%zu bytes of payloads held by unfinished deliveries "
                 "(HOOKBRIDGE_MAX_PENDING_BYTES=%lld)",
                 held, max_bytes);
        hb_consumer_pause_all(c, 1, why, in_flight, queued);
    } else if (pending <= (size_t)max_pending * 3 / 4 && held <= (size_t)max_bytes / 4 * 3) {
        hb_consumer_pause_all(c, 0, "", in_flight, queued);
    }
    /* A pause that lasts (a database or endpoints down, not a burst) also
     * stops librdkafka fetching, which frees the messages it fetched ahead. A
     * short one keeps them: librdkafka discards what it fetched for a paused
     * partition and, resumed, fetches it again only after a delay (measured:
     * a second or more with no delivery, on the devbroker). */
    if (c->paused && !c->fetch_paused && hb_mono_ms() - c->paused_at >= FETCH_PAUSE_AFTER_MS) {
        hb_info("consumption still paused after %d ms: fetching paused too", FETCH_PAUSE_AFTER_MS);
        pause_fetch_all(c, 1);
    }
}

void hb_consumer_keepalive(hb_consumer_t *c) {
    rd_kafka_message_t *rkm;
    unsigned assignments = c->assignments;
    if (!c->rk || hb_mono_ms() - c->polled_at < KEEPALIVE_AFTER_MS)
        return;
    if (!c->fetch_paused) {
        if (c->paused) /* the last resort pauses fetching itself (hb_consumer_limit) */
            return;
        /* Paused, fetched-ahead messages are discarded (and fetched again on
         * resume): none can come out of the queue below. */
        pause_fetch_all(c, 1);
        c->kept_alive = 1;
        hb_debug("no message taken for %d ms: fetching paused, the consumer group still served",
                 KEEPALIVE_AFTER_MS);
    }
    c->polled_at = hb_mono_ms();
    for (int i = 0; i < 100 && (rkm = rd_kafka_consumer_poll(c->rk, 0)) != NULL; i++) {
        /* A message all the same (a partition assigned and not yet paused):
         * not taken now; its partition is rewound to it and read again once
         * fetching resumes. */
        if (!consumed_error(c, rkm))
            hb_consumer_defer(c, rkm, hb_wall_ms());
        rd_kafka_message_destroy(rkm);
    }
    /* Fetching again at once: what it fetches ahead is there when messages
     * are taken again (a pause until then held the first of them half a
     * second or more once the database answered again). Not when partitions
     * were assigned just now: their start is under way, and a resume meeting
     * it makes it outdated, the partition never fetched (review 86); the
     * next keep-alive or the next message taken resumes them. */
    if (c->kept_alive && c->assignments == assignments)
        pause_fetch_all(c, 0);
}

/* A fatal error (e.g. fenced out of the group by another process with the
 * same group.instance.id) leaves the consumer unusable: not ready from then
 * on, and said once at error. */
static void fatal_check(hb_consumer_t *c) {
    char why[256];
    if (c->fatal_why[0] || !c->rk ||
        rd_kafka_fatal_error(c->rk, why, sizeof(why)) == RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    snprintf(c->fatal_why, sizeof(c->fatal_why), "Kafka consumer unusable: %s", why);
    hb_error("%s; it consumes nothing more until the service is restarted", c->fatal_why);
}

void hb_consumer_tick(hb_consumer_t *c) {
    fatal_check(c);
    lag_tick(c);
    topic_check(c);
    broker_check(c);
}

const char *hb_consumer_unready(const hb_consumer_t *c) {
    if (c->fatal_why[0])
        return c->fatal_why;
    if (c->missing_topic[0])
        return c->missing_why;
    if (c->brokers.down)
        return c->brokers.why;
    return NULL;
}

int hb_consumer_assigned(const hb_consumer_t *c) {
    return c->assigned;
}

unsigned hb_consumer_revocations(const hb_consumer_t *c) {
    return c->revocations;
}

int hb_consumer_paused(const hb_consumer_t *c) {
    return c->paused;
}

const char *hb_consumer_pause_why(const hb_consumer_t *c) {
    return c->pause_why;
}

int hb_consumer_started(const hb_consumer_t *c) {
    return c->rk != NULL;
}

void hb_consumer_brokers_continue(hb_consumer_t *c, const hb_kafka_reach_t *early) {
    hb_kafka_reach_continue(&c->brokers, early);
}

/* ------------------------------------------------------------ build/free */

hb_consumer_t *hb_consumer_new(const hb_config_t *cfg, const char *client_id, const char *group,
                               char *const *topics, int topics_cnt, int wake_fd,
                               hb_offsets_t *offsets, hb_outbox_t *outbox,
                               const hb_consumer_metrics_t *m) {
    hb_consumer_t *c = hb_calloc(1, sizeof(*c));
    c->cfg = cfg;
    snprintf(c->client_id, sizeof(c->client_id), "%s", client_id);
    c->group = group;
    c->topics = topics;
    c->topics_cnt = topics_cnt;
    c->wake_fd = wake_fd;
    c->offsets = offsets;
    c->outbox = outbox;
    c->m = *m;
    c->polled_at = hb_mono_ms();
    pthread_mutex_init(&c->resets_lock, NULL);
    return c;
}

void hb_consumer_close(hb_consumer_t *c) {
    rd_kafka_resp_err_t err;
    if (!c->rk)
        return;
    lag_stop(&c->lag);  /* its round trips use c->rk */
    drop_held(c, NULL); /* librdkafka closes only once its messages are gone */
    hb_consumer_store_offsets(c);
    err = rd_kafka_commit(c->rk, NULL, 0);
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        hb_warn("final offset commit: %s", rd_kafka_err2str(err));
    if (c->rkq) {
        rd_kafka_queue_destroy(c->rkq);
        c->rkq = NULL;
    }
    err = rd_kafka_consumer_close(c->rk);
    if (err)
        hb_warn("leaving the consumer group: %s", rd_kafka_err2str(err));
}

void hb_consumer_free(hb_consumer_t *c) {
    if (!c)
        return;
    if (c->rkq)
        rd_kafka_queue_destroy(c->rkq);
    hb_kafka_reach_stop(&c->brokers); /* its thread uses c->rk */
    lag_stop(&c->lag);
    drop_held(c, NULL);
    free(c->held);
    free(c->held_ticket);
    free(c->held_at);
    c->held = NULL;
    c->held_ticket = NULL;
    c->held_at = NULL;
    if (c->rk && hb_kafka_destroy_within(c->rk, DESTROY_WAIT_MS) < 0) {
        /* Closed already (hb_consumer_close: the offsets committed, the
         * group left); what librdkafka still holds is its own. c stays
         * allocated for its threads, and the process ends with _exit. */
        hb_warn("the Kafka consumer is not destroyed after %d s (librdkafka waits for a "
                "partition of a topic deleted while it ran): not waiting for it; its offsets "
                "were committed",
                DESTROY_WAIT_MS / 1000);
        return;
    }
    if (c->assignment)
        rd_kafka_topic_partition_list_destroy(c->assignment);
    while (c->deferred) {
        deferred_t *d = c->deferred;
        c->deferred = d->next;
        deferred_free(d);
    }
    while (c->resets) {
        reset_t *r = c->resets;
        c->resets = r->next;
        reset_free(r);
    }
    pthread_mutex_destroy(&c->resets_lock);
    free(c);
}
