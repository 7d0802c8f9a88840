/*
 * Delivery log writer: attempts go to PostgreSQL off the hot path.
 *
 * The design is simple: a queue of copied rows behind one mutex, and one writer
 * thread with its own connection. hb_dlog_add() (any thread) copies the
 * attempt, appends it and returns; it wakes the writer early when the queue is
 * half full. The writer wakes every flush_ms, takes up to DLOG_BATCH_MAX rows
 * from the front, and writes them in one transaction of a few statements whose
 * parameters are whole columns as arrays (unnest; each statement prepared
 * once per connection, the arrays sent in binary): the rows of
 * hookbridge.deliveries (one row per delivery, picked in C from the batch's
 * rows of it, dlog_pick), by a plain insert for deliveries at their first
 * attempt and an upsert for the others (attempts = greatest, status and
 * last_* from the latest attempt unless the delivery is already final,
 * first_attempt_at = least, the body kept when given); should a first
 * attempt's row be there already (logged again after a crash), the unique
 * violation rolls back and the batch is written again through the upsert
 * alone. Then an insert into hookbridge.delivery_attempts. The upsert's key
 * is (delivery_id, log_day),
 * log_day the UTC day of the delivery's first attempt (hb_dlog.h,
 * Partitions). Only after COMMIT do the rows' tokens move to
 * the flushed list that hb_dlog_take_flushed() drains.
 *
 * Look-ups ride the same queue: the writer takes them out of its batch,
 * commits the batch's rows, then answers all its look-ups with one SELECT
 * (unnest of the ids), and returns their tokens the same way. A look-up wakes
 * the writer at once instead of waiting for flush_ms.
 *
 * What must hold:
 *  - a token is returned only once its row is committed, or (logged as an
 *    error) when the row itself is rejected by the database as invalid and
 *    could never be written: one poisoned row must not stall the offsets of
 *    everything behind it;
 *  - while the database is down (connection lost, server shutting down, schema
 *    missing ...) the batch goes back to the front of the queue and the writer
 *    retries with backoff (250 ms doubling to 5 s), reconnecting as needed;
 *  - the queue is bounded by max_queue for untokened rows: past the bound the
 *    oldest untokened row is discarded and counted; tokened rows (the
 *    services token every row: hb_worker.h) and look-ups are never discarded
 *    (their number is bounded by the caller, which stops consuming while
 *    deliveries are unfinished);
 *  - text is made valid UTF-8 on the way in (response snippets are arbitrary
 *    bytes), so no row is rejected for its encoding.
 * hb_dlog_close() flushes until the queue is empty or its deadline passes.
 */
#include "hb_dlog.h"

#include <errno.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "hb_buf.h"
#include "hb_log.h"
#include "hb_pg.h"

#define DLOG_BATCH_MAX 2000
#define DLOG_UUID_LEN 36
#define DLOG_BACKOFF_MIN_MS 250
/* PostgreSQL's clock read again this often after a write (hb_pg_clock_sample):
 * a long-lived connection follows a step of the server's clock, and the
 * drift of this host's monotonic one, within a minute */
#define DLOG_CLOCK_EVERY_MS 60000
#define DLOG_CLOSE_GRACE_MS 1000 /* past the close's deadline, for the statement under way */
#define DLOG_BACKOFF_MAX_MS 5000 /* so does the log: offsets move again */
#define DLOG_WARN_EVERY_MS 30000
#define DLOG_COL_KEEP (1u << 20) /* a column buffer larger than this is freed after its batch */
/* A look-up's first day when its delivery's first attempt is unknown: every
 * partition (about 2700 years before 1970, a valid date) */
#define LOOKUP_ANY_DAY (-1000000)

struct hb_dlog_row_s {
    size_t bytes; /* its allocation, counted in hb_held_bytes until freed */
    char *delivery_id;
    char *subscription_id;
    char *event_ids;
    char *event_type;
    int attempt;
    int64_t started_ms;
    int64_t log_day; /* days since 1970-01-01 (UTC) of the first attempt */
    int64_t duration_ms;
    int http_status;
    hb_outcome_t outcome;
    char *error;
    char *snippet;
    char *body;
    char *content_type;
    void *token;
    int rejected;            /* refused by the database as invalid: never written */
    hb_dlog_state_t *lookup; /* non-NULL: a look-up request, not a row to write */
    char *ordering_key;      /* ordered delivery: the key (a look-up: of a tail) */
    int32_t source_partition;
    int64_t source_offset;
    /* The writer's: 1 when both ids are uuid-shaped, their 16 bytes in
     * did_bin and sid_bin; -1 when not; 0 not looked at yet. */
    int ids_bin;
    unsigned char did_bin[16], sid_bin[16];
};
typedef struct hb_dlog_row_s dlog_row_t;

typedef struct {
    dlog_row_t **v;
    size_t n, cap;
} dlog_vec_t;

struct hb_dlog_s {
    char *conninfo; /* may hold a password: never printed, cleansed on free */
    long long flush_ms;
    size_t max_queue;
    int wake_fd;           /* written once a batch's tokens are in flushed (-1: none) */
    hb_metric_t *errors;   /* under mu: each failed write or look-up round counts (NULL: none) */
    hb_metric_t *rejected; /* under mu: each row the database rejected as invalid (NULL: none) */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t synced; /* a round ended: what hb_dlog_sync waits on */
    pthread_t thread;
    int thread_started;
    /* Since when (monotonic ms) the writer waits for the database to answer
     * its current batch or look-ups; 0 while it does not (hb_dlog_waiting_ms). */
    _Atomic int64_t busy_since;

    /* Under mu. */
    dlog_vec_t queue;
    size_t queue_untokened;
    size_t queue_lookups; /* look-up requests in the queue */
    void **flushed;
    size_t flushed_n, flushed_cap;
    uint64_t dropped, written;
    int closing;
    int64_t deadline_ms; /* monotonic, once closing */
    int closed;          /* hb_dlog_close ran */
    size_t left;
    size_t writing; /* rows and look-ups of the batch the writer is on */
    int exited;     /* the writer thread is done with dl */
    int syncing;    /* hb_dlog_sync callers waiting: write now, not at the next flush */
    int abandoned;  /* closed without it: dl is the writer's until the process ends */
    /* Since when (monotonic ms) every round has failed (its rows refused, or
     * the database unreachable), and the last round's reason; 0 after a
     * round that wrote (hb_dlog_failing_ms). */
    int64_t failing_since;
    char failing_why[512];

    /* Writer thread only. */
    struct dlog_cols_s *cols; /* column buffers, kept from batch to batch */
    PGconn *conn;
    unsigned prepared; /* bit s: dlog_stmts[s] is prepared on conn (0 on a new one) */
    int failing;
    int64_t warned_ms;
};

const char *hb_outcome_name(hb_outcome_t o) {
    switch (o) {
    case HB_OUTCOME_DELIVERED: return "delivered";
    case HB_OUTCOME_RETRY: return "retry";
    case HB_OUTCOME_FAILED: return "failed";
    case HB_OUTCOME_DROPPED: return "dropped";
    }
    return "failed";
}

/* ------------------------------------------------------------------------ */
/* Rows                                                                     */

/* A row and its strings are one allocation (row_pack). */
static void row_free(dlog_row_t *r) {
    if (r)
        hb_held_sub(r->bytes);
    free(r);
}

/* A zeroed row with copies of the n strings src[i] (NULL stays NULL) in the
 * same allocation, the char * member at offset off[i] pointing at each; those
 * with scrub[i] made valid UTF-8 (every invalid byte replaced by '?'). One
 * malloc and one free per row instead of one per string (issue 12: the
 * services' CPU per logged attempt). */
static dlog_row_t *row_pack(int n, const char *const *src, const size_t *off, const int *scrub) {
    size_t len[16], total = sizeof(dlog_row_t);
    dlog_row_t *r;
    char *p;
    for (int i = 0; i < n; i++) {
        len[i] = src[i] ? strlen(src[i]) + 1 : 0;
        total += len[i];
    }
    r = hb_calloc(1, total);
    r->bytes = total; /* a failed delivery's row keeps its payload: it counts */
    hb_held_add(total);
    p = (char *)(r + 1);
    for (int i = 0; i < n; i++) {
        if (!src[i])
            continue;
        memcpy(p, src[i], len[i]);
        if (scrub[i])
            hb_utf8_scrub(p);
        memcpy((char *)r + off[i], &p, sizeof(p));
        p += len[i];
    }
    return r;
}

static void flushed_push_locked(hb_dlog_t *dl, void *token);

static void vec_push(dlog_vec_t *v, dlog_row_t *r) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 256;
        v->v = hb_realloc(v->v, v->cap * sizeof(*v->v));
    }
    v->v[v->n++] = r;
}

/* Puts rows[0..n) back in front of the queue (a batch that was not written). */
static void queue_unshift_locked(hb_dlog_t *dl, dlog_row_t **rows, size_t n) {
    if (n == 0)
        return;
    if (dl->queue.n + n > dl->queue.cap) {
        dl->queue.cap = dl->queue.n + n + 256;
        dl->queue.v = hb_realloc(dl->queue.v, dl->queue.cap * sizeof(*dl->queue.v));
    }
    memmove(dl->queue.v + n, dl->queue.v, dl->queue.n * sizeof(*dl->queue.v));
    memcpy(dl->queue.v, rows, n * sizeof(*rows));
    dl->queue.n += n;
    for (size_t i = 0; i < n; i++) {
        dl->queue_untokened += rows[i]->token == NULL;
        dl->queue_lookups += rows[i]->lookup != NULL;
    }
}

/* Enforces the bound: discards the oldest untokened rows past max_queue. */
static void queue_trim_locked(hb_dlog_t *dl) {
    size_t i = 0, dropped = 0;
    while (dl->queue.n > dl->max_queue && dl->queue_untokened > 0) {
        while (i < dl->queue.n && dl->queue.v[i]->token)
            i++;
        if (i == dl->queue.n)
            break;
        row_free(dl->queue.v[i]);
        memmove(dl->queue.v + i, dl->queue.v + i + 1, (dl->queue.n - i - 1) * sizeof(*dl->queue.v));
        dl->queue.n--;
        dl->queue_untokened--;
        dropped++;
    }
    dl->dropped += dropped;
}

hb_dlog_row_t *hb_dlog_row_new(const hb_attempt_t *a) {
    /* the payload is kept for replay: of a failed or a dropped delivery */
    int kept = a->outcome == HB_OUTCOME_FAILED || a->outcome == HB_OUTCOME_DROPPED;
    const char *src[] = {a->delivery_id ? a->delivery_id : "",
                         a->subscription_id ? a->subscription_id : "",
                         a->event_ids ? a->event_ids : "",
                         a->event_type ? a->event_type : "",
                         a->error,
                         a->response_snippet,
                         kept ? a->body : NULL,
                         kept ? a->content_type : NULL,
                         a->ordering_key};
    static const size_t off[] = {
        offsetof(dlog_row_t, delivery_id), offsetof(dlog_row_t, subscription_id),
        offsetof(dlog_row_t, event_ids),   offsetof(dlog_row_t, event_type),
        offsetof(dlog_row_t, error),       offsetof(dlog_row_t, snippet),
        offsetof(dlog_row_t, body),        offsetof(dlog_row_t, content_type),
        offsetof(dlog_row_t, ordering_key)};
    static const int scrub[] = {0, 0, 1, 1, 1, 1, 1, 1, 1};
    dlog_row_t *r = row_pack(9, src, off, scrub);
    r->attempt = a->attempt < 0 ? 0 : a->attempt;
    r->started_ms = a->started_ms;
    r->log_day = hb_dlog_day(a->first_attempt_ms > 0 ? a->first_attempt_ms : a->started_ms);
    r->duration_ms = a->duration_ms < 0 ? 0 : a->duration_ms;
    r->http_status = a->http_status;
    r->outcome = a->outcome;
    r->source_partition = a->source_partition;
    r->source_offset = a->source_offset;
    return r;
}

int64_t hb_dlog_day(int64_t wall_ms) {
    int64_t d = wall_ms / 86400000;
    return wall_ms < 0 && wall_ms % 86400000 ? d - 1 : d; /* floor */
}

void hb_dlog_row_free(hb_dlog_row_t *r) {
    row_free(r);
}

void hb_dlog_add_row(hb_dlog_t *dl, hb_dlog_row_t *r, void *token) {
    size_t wake_at;
    r->token = token;
    pthread_mutex_lock(&dl->mu);
    vec_push(&dl->queue, r);
    dl->queue_untokened += token == NULL;
    queue_trim_locked(dl);
    wake_at = dl->max_queue / 2 < DLOG_BATCH_MAX ? dl->max_queue / 2 : DLOG_BATCH_MAX;
    if (dl->queue.n >= (wake_at ? wake_at : 1))
        pthread_cond_signal(&dl->cv);
    pthread_mutex_unlock(&dl->mu);
}

void hb_dlog_add(hb_dlog_t *dl, const hb_attempt_t *a, void *token) {
    hb_dlog_add_row(dl, hb_dlog_row_new(a), token);
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = (char)(ch | 0x20);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* s as 8-4-4-4-12 hex digits (what the uuid[] cast of a look-up accepts)
 * into its 16 bytes u: 0, or -1 when it is not so shaped. */
static int uuid_parse(const char *s, unsigned char u[16]) {
    int i = 0;
    for (int k = 0; k < 16; k++) {
        int hi, lo;
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return -1;
            i++;
        }
        if ((hi = hexval(s[i])) < 0 || (lo = hexval(s[i + 1])) < 0)
            return -1;
        u[k] = (unsigned char)(hi << 4 | lo);
        i += 2;
    }
    return s[DLOG_UUID_LEN] == '\0' ? 0 : -1;
}

static int uuid_shaped(const char *s) {
    unsigned char u[16];
    return uuid_parse(s, u) == 0;
}

void hb_dlog_lookup(hb_dlog_t *dl, const char *delivery_id, int64_t since_ms, hb_dlog_state_t *out,
                    void *token) {
    dlog_row_t *r;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&dl->mu);
    if (!delivery_id || !uuid_shaped(delivery_id)) { /* cannot be in the log */
        flushed_push_locked(dl, token);
        pthread_mutex_unlock(&dl->mu);
        return;
    }
    {
        static const size_t off[] = {offsetof(dlog_row_t, delivery_id)};
        static const int scrub[] = {0};
        r = row_pack(1, &delivery_id, off, scrub);
    }
    r->lookup = out;
    r->token = token;
    /* a day early: the margin costs one partition, and no row can be missed */
    r->log_day = since_ms > 0 ? hb_dlog_day(since_ms) - 1 : LOOKUP_ANY_DAY;
    vec_push(&dl->queue, r);
    dl->queue_lookups++;
    pthread_cond_signal(&dl->cv); /* answered soon, not at the next flush */
    pthread_mutex_unlock(&dl->mu);
}

void hb_dlog_lookup_tail(hb_dlog_t *dl, const char *subscription_id, const char *key,
                         hb_dlog_state_t *out, void *token) {
    dlog_row_t *r;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&dl->mu);
    if (!subscription_id || !uuid_shaped(subscription_id) || !key) { /* cannot be there */
        flushed_push_locked(dl, token);
        pthread_mutex_unlock(&dl->mu);
        return;
    }
    {
        const char *src[] = {subscription_id, key};
        static const size_t off[] = {offsetof(dlog_row_t, subscription_id),
                                     offsetof(dlog_row_t, ordering_key)};
        static const int scrub[] = {0, 1};
        r = row_pack(2, src, off, scrub);
    }
    r->lookup = out;
    r->token = token;
    vec_push(&dl->queue, r);
    dl->queue_lookups++;
    pthread_cond_signal(&dl->cv);
    pthread_mutex_unlock(&dl->mu);
}

const char *hb_dlog_state_stale(const hb_dlog_state_t *st, int attempt, int64_t began_ms, char *buf,
                                size_t bufsz) {
    if (!st->found)
        return NULL;
    if (began_ms > 0 && st->replay_ms > began_ms) {
        snprintf(buf, bufsz,
                 "a replay of the delivery was asked for after this attempt's delivery began: the "
                 "replay makes the attempts now (status %s)",
                 st->status);
        return buf;
    }
    if (!strcmp(st->status, "delivered") || !strcmp(st->status, "failed") ||
        !strcmp(st->status, "dropped")) {
        snprintf(buf, bufsz, "the delivery is already %s (after %d attempt(s))", st->status,
                 st->attempts);
        return buf;
    }
    if (st->attempts >= attempt) {
        snprintf(buf, bufsz,
                 "attempt %d was already made (the log has %d attempt(s), status %s): a "
                 "duplicate",
                 attempt, st->attempts, st->status);
        return buf;
    }
    return NULL;
}

size_t hb_dlog_take_flushed(hb_dlog_t *dl, void **tokens, size_t max) {
    size_t n;
    pthread_mutex_lock(&dl->mu);
    n = dl->flushed_n < max ? dl->flushed_n : max;
    if (n > 0) {
        memcpy(tokens, dl->flushed, n * sizeof(*tokens));
        memmove(dl->flushed, dl->flushed + n, (dl->flushed_n - n) * sizeof(*dl->flushed));
        dl->flushed_n -= n;
    }
    pthread_mutex_unlock(&dl->mu);
    return n;
}

uint64_t hb_dlog_dropped(hb_dlog_t *dl) {
    uint64_t v;
    pthread_mutex_lock(&dl->mu);
    v = dl->dropped;
    pthread_mutex_unlock(&dl->mu);
    return v;
}

uint64_t hb_dlog_written(hb_dlog_t *dl) {
    uint64_t v;
    pthread_mutex_lock(&dl->mu);
    v = dl->written;
    pthread_mutex_unlock(&dl->mu);
    return v;
}

int64_t hb_dlog_waiting_ms(hb_dlog_t *dl) {
    int64_t since = atomic_load(&dl->busy_since);
    return since ? hb_mono_ms() - since : 0;
}

int64_t hb_dlog_failing_ms(hb_dlog_t *dl, char *why, size_t whysz) {
    int64_t since;
    pthread_mutex_lock(&dl->mu);
    since = dl->failing_since;
    if (whysz > 0)
        snprintf(why, whysz, "%s", since ? dl->failing_why : "");
    pthread_mutex_unlock(&dl->mu);
    return since ? hb_mono_ms() - since : 0;
}

size_t hb_dlog_queued(hb_dlog_t *dl) {
    size_t v;
    pthread_mutex_lock(&dl->mu);
    v = dl->queue.n;
    pthread_mutex_unlock(&dl->mu);
    return v;
}

/* ------------------------------------------------------------------------ */
/* Writing (writer thread)                                                  */

/* Appends one element of a PostgreSQL array literal: NULL, or a quoted string
 * with '"' and '\' escaped. */
static void buf_elem_text(hb_buf_t *b, const char *s) {
    if (b->len > 1)
        hb_buf_put(b, ",", 1);
    if (!s) {
        hb_buf_put(b, "NULL", 4);
        return;
    }
    hb_buf_put(b, "\"", 1);
    for (const char *p = s; *p;) {
        size_t run = strcspn(p, "\"\\");
        hb_buf_put(b, p, run);
        p += run;
        if (*p) {
            hb_buf_put(b, "\\", 1);
            hb_buf_put(b, p, 1);
            p++;
        }
    }
    hb_buf_put(b, "\"", 1);
}

static void buf_elem_int(hb_buf_t *b, long long v) {
    char num[24];
    int n = snprintf(num, sizeof(num), "%lld", v);
    if (b->len > 1)
        hb_buf_put(b, ",", 1);
    hb_buf_put(b, num, (size_t)n);
}

/* One column of a batch as a PostgreSQL array in binary format (array_recv:
 * ndim, has-nulls flag, element type, then per dimension its size and lower
 * bound, then each element as a 4-byte length, -1 for NULL, and its bytes),
 * all big-endian. The writer's statements take their columns so: PostgreSQL
 * then reads each element's bytes as they are instead of parsing an array
 * literal and each number in it (array_in was an eighth of its CPU per logged
 * attempt, issue 12). uuids go as their 16 bytes when they are 8-4-4-4-12 hex
 * (uuid_in's parse was another 6 %); otherwise as text cast in SQL, so that a
 * malformed one is still the database's 22P02, an invalid row. */
#define OID_INT8 20
#define OID_INT4 23
#define OID_TEXT 25
#define OID_TIMESTAMPTZ 1184
#define OID_UUID 2950
#define COL_HEADER 20 /* ndim, flags, element type, size, lower bound */

typedef struct {
    hb_buf_t b;
    uint32_t elem, n;
    int hasnull;
} dcol_t;

static void put_be32(hb_buf_t *b, uint32_t v) {
    unsigned char *x;
    if (b->cap - b->len < 5)
        hb_buf_reserve(b, 4);
    x = (unsigned char *)b->p + b->len;
    x[0] = (unsigned char)(v >> 24);
    x[1] = (unsigned char)(v >> 16);
    x[2] = (unsigned char)(v >> 8);
    x[3] = (unsigned char)v;
    b->len += 4;
}

/* Starts column c afresh, keeping its buffer's memory (the writer's columns
 * live from batch to batch: no allocation, no page faults per batch). */
static void col_begin(dcol_t *c, uint32_t elem) {
    static const char zero[COL_HEADER];
    c->b.len = 0;
    c->n = 0;
    c->hasnull = 0;
    c->elem = elem;
    hb_buf_put(&c->b, zero, COL_HEADER);
}

static void col_text(dcol_t *c, const char *s) {
    c->n++;
    if (!s) {
        put_be32(&c->b, 0xFFFFFFFFu);
        c->hasnull = 1;
        return;
    }
    size_t len = strlen(s);
    put_be32(&c->b, (uint32_t)len);
    hb_buf_put(&c->b, s, len);
}

static void col_int4(dcol_t *c, int32_t v) {
    c->n++;
    put_be32(&c->b, 4);
    put_be32(&c->b, (uint32_t)v);
}

static void col_int8(dcol_t *c, int64_t v) {
    c->n++;
    put_be32(&c->b, 8);
    put_be32(&c->b, (uint32_t)((uint64_t)v >> 32));
    put_be32(&c->b, (uint32_t)(uint64_t)v);
}

/* u: a uuid's 16 bytes (uuid_parse). */
static void col_uuid(dcol_t *c, const unsigned char *u) {
    c->n++;
    put_be32(&c->b, 16);
    hb_buf_put(&c->b, u, 16);
}

/* A wall-clock time in ms as a timestamptz: microseconds since 2000-01-01
 * UTC (what to_timestamp(ms / 1000.0) gave, without numeric arithmetic). */
static void col_ts(dcol_t *c, int64_t wall_ms) {
    col_int8(c, (wall_ms - INT64_C(946684800000)) * 1000);
}

/* Fills in the header; an empty column is a zero-dimension array. */
static void col_end(dcol_t *c) {
    hb_buf_t h = {.p = c->b.p, .cap = c->b.cap}; /* the header's room */
    put_be32(&h, c->n ? 1 : 0);
    put_be32(&h, (uint32_t)c->hasnull);
    put_be32(&h, c->elem);
    put_be32(&h, c->n);
    put_be32(&h, 1);
    if (!c->n)
        c->b.len = 12;
}

enum {
    A_DID,
    A_SID,
    A_EIDS,
    A_ETYPE,
    A_ATTEMPT,
    A_STARTED,
    A_DURATION,
    A_HTTP,
    A_OUTCOME,
    A_ERROR,
    A_SNIPPET,
    A_BODY,
    A_CTYPE,
    A_DAY,
    A_FIRST, /* deliveries: the earliest started_ms of the batch's rows of the delivery */
    A_COUNT
};

/* The writer's column buffers: the attempts (arr), the deliveries' upsert
 * (darr) and their plain insert (fresh). */
struct dlog_cols_s {
    dcol_t arr[A_COUNT], darr[A_COUNT], fresh[A_COUNT];
};

/* Whether an upserted attempt replaces the delivery's status and last_*: it is
 * the newest one, and the delivery is not final (delivered, failed and dropped
 * stay; replay() is what takes a failed delivery back to 'replay'). */
#define DLOG_TAKES_NEW                                                                             \
    "(d.status NOT IN ('delivered', 'failed', 'dropped')"                                          \
    " AND (EXCLUDED.attempts, EXCLUDED.last_attempt_at)"                                           \
    "     >= (d.attempts, coalesce(d.last_attempt_at, '-infinity')))"

/* One row per (delivery, day): dlog_pick chose, in C, each delivery's newest
 * attempt of the batch and its earliest start, which spares PostgreSQL a
 * sort and a window per batch (issue 12: its cost per logged attempt). The
 * columns are unnested in the select list (a ProjectSet), not in FROM (a
 * function scan, which first copies every row of the batch into a tuplestore:
 * issue 12 again); the arrays are all as long, so the rows are the same. */
#define DLOG_DELIVERIES_ROWS(IDT)                                                                  \
    "INSERT INTO hookbridge.deliveries AS d"                                                       \
    "  (delivery_id, subscription_id, event_ids, event_type, status, attempts,"                    \
    "   first_attempt_at, last_attempt_at, last_http_status, last_error, body, content_type,"      \
    "   log_day)"                                                                                  \
    " SELECT r.did::uuid, r.sid::uuid, r.eids, r.etype, r.outcome, r.attempt, r.first,"            \
    "        r.started, nullif(r.http, 0), r.err, r.body, r.ctype, date '1970-01-01' + r.day"      \
    "   FROM (SELECT unnest($1::" IDT "[]) AS did, unnest($2::" IDT "[]) AS sid,"                  \
    "                unnest($3::text[]) AS eids, unnest($4::text[]) AS etype,"                     \
    "                unnest($5::text[]) AS outcome, unnest($6::int[]) AS attempt,"                 \
    "                unnest($7::timestamptz[]) AS started, unnest($8::int[]) AS http,"             \
    "                unnest($9::text[]) AS err, unnest($10::text[]) AS body,"                      \
    "                unnest($11::text[]) AS ctype, unnest($12::int[]) AS day,"                     \
    "                unnest($13::timestamptz[]) AS first) r"

/* The newest attempt sets status and last_*, unless the delivery is final. */
#define DLOG_UPSERT_DELIVERIES(IDT)                                                                \
    DLOG_DELIVERIES_ROWS(IDT)                                                                      \
    " ON CONFLICT (delivery_id, log_day) DO UPDATE SET"                                            \
    "   attempts = greatest(d.attempts, EXCLUDED.attempts),"                                       \
    "   first_attempt_at = least(d.first_attempt_at, EXCLUDED.first_attempt_at),"                  \
    "   status = CASE WHEN " DLOG_TAKES_NEW " THEN EXCLUDED.status ELSE d.status END,"             \
    "   last_http_status = CASE WHEN " DLOG_TAKES_NEW                                              \
    "            THEN EXCLUDED.last_http_status ELSE d.last_http_status END,"                      \
    "   last_error = CASE WHEN " DLOG_TAKES_NEW " THEN EXCLUDED.last_error ELSE d.last_error END," \
    "   last_attempt_at = greatest(d.last_attempt_at, EXCLUDED.last_attempt_at),"                  \
    "   body = coalesce(EXCLUDED.body, d.body),"                                                   \
    "   content_type = coalesce(EXCLUDED.content_type, d.content_type)"

/* A delivery's first attempt (or its drop, attempt 0) almost always makes its
 * row: a plain INSERT, without ON CONFLICT's look-up of the key before the
 * insert, its speculative-insertion lock and the extra WAL record confirming
 * it (issue 12). When the row is there after all (the attempt logged again
 * after a crash, or by another replica), the unique violation rolls the
 * batch back and it is written again with the upsert alone (dlog_write). */
#define DLOG_INSERT_DELIVERIES(IDT) DLOG_DELIVERIES_ROWS(IDT)

#define DLOG_INSERT_ATTEMPTS(IDT)                                                                  \
    "INSERT INTO hookbridge.delivery_attempts"                                                     \
    "  (delivery_id, attempt, started_at, duration_ms, http_status, outcome, error,"               \
    "   response_snippet, subscription_id)"                                                        \
    " SELECT r.did::uuid, r.attempt, r.started, r.dur, nullif(r.http, 0),"                         \
    "        r.outcome, r.err, r.snip, r.sid::uuid"                                                \
    "   FROM (SELECT unnest($1::" IDT "[]) AS did, unnest($2::int[]) AS attempt,"                  \
    "                unnest($3::timestamptz[]) AS started, unnest($4::bigint[]) AS dur,"           \
    "                unnest($5::int[]) AS http, unnest($6::text[]) AS outcome,"                    \
    "                unnest($7::text[]) AS err, unnest($8::text[]) AS snip,"                       \
    "                unnest($9::" IDT "[]) AS sid) r"

/* A delivery with two rows (two days) is answered by the later one (the
 * last filled in). Each id comes with the first day its rows can be in
 * (days since 1970-01-01): the day partitions before it are pruned while the
 * query runs (PostgreSQL's run-time pruning, per id). */
static const char DLOG_LOOKUP[] = "SELECT r.i, d.status, d.attempts,"
                                  "       coalesce((extract(epoch FROM d.replay_requested_at)"
                                  "                 * 1000)::bigint, 0),"
                                  "       coalesce((extract(epoch FROM d.resume_requested_at)"
                                  "                 * 1000)::bigint, 0)"
                                  "  FROM unnest($1::uuid[], $2::int[]) WITH ORDINALITY"
                                  "       AS r(id, since, i)"
                                  "  JOIN hookbridge.deliveries d ON d.delivery_id = r.id"
                                  "   AND d.log_day >= date '1970-01-01' + r.since"
                                  " ORDER BY r.i, d.log_day";

/* Ordered delivery: each keyed row makes its delivery the key's tail, unless
 * the tail's event was read later from the same partition (an older event
 * read again after a crash does not move the tail back). */
static const char DLOG_UPSERT_TAILS[] =
    "INSERT INTO hookbridge.ordering_tails AS t"
    "  (subscription_id, ordering_key, delivery_id, source_partition, source_offset)"
    " SELECT DISTINCT ON (r.sid, r.okey) r.sid, r.okey, r.did, r.part, r.off"
    "   FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int[], $5::bigint[])"
    "        WITH ORDINALITY AS r(sid, okey, did, part, off, i)"
    "  ORDER BY r.sid, r.okey, r.i DESC"
    " ON CONFLICT (subscription_id, ordering_key) DO UPDATE SET"
    "   delivery_id = EXCLUDED.delivery_id, source_partition = EXCLUDED.source_partition,"
    "   source_offset = EXCLUDED.source_offset, updated_at = now()"
    " WHERE NOT (t.source_partition = EXCLUDED.source_partition"
    "            AND t.source_offset > EXCLUDED.source_offset)";

/* The newest delivery of each (subscription, key) asked about, and its status
 * ('' when the log no longer has it). */
static const char DLOG_LOOKUP_TAILS[] =
    "SELECT r.i, t.delivery_id, coalesce(d.status, ''), coalesce(d.attempts, 0)"
    "  FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS r(sid, okey, i)"
    "  JOIN hookbridge.ordering_tails t ON t.subscription_id = r.sid AND t.ordering_key = r.okey"
    "  LEFT JOIN hookbridge.deliveries d ON d.delivery_id = t.delivery_id"
    " ORDER BY r.i, d.log_day NULLS FIRST"; /* two days' rows: the later answers */

/* W_DUPLICATE: the plain insert of new deliveries found one there already. */
typedef enum { W_OK = 0, W_RETRY = -1, W_INVALID = -2, W_DUPLICATE = -3 } dlog_wrc_t;

/* Data that can never be written (class 22 data exception, 23 integrity
 * constraint violation) versus everything else (retry). */
static int sqlstate_invalid(const PGresult *res) {
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return state && (!strncmp(state, "22", 2) || !strncmp(state, "23", 2));
}

static int sqlstate_unique_violation(const PGresult *res) {
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return state && !strcmp(state, "23505");
}

/* The writer's statements, each prepared once per connection (PQprepare) the
 * first time it is used, then only executed: parsing and planning them for
 * every batch was a good part of PostgreSQL's CPU per logged attempt (issue
 * 12). A failed prepare leaves its bit clear and is reported like a failed
 * execution (the transaction, if any, is rolled back by the caller). */
/* The writer's two statements come in two kinds: ids as binary uuids (all of
 * the batch's ids are 8-4-4-4-12 hex), or, for a batch with any other, as
 * text cast by PostgreSQL, whose error then makes the row invalid (_T). */
enum {
    S_INSERT_DELIVERIES,
    S_INSERT_DELIVERIES_T,
    S_UPSERT_DELIVERIES,
    S_UPSERT_DELIVERIES_T,
    S_INSERT_ATTEMPTS,
    S_INSERT_ATTEMPTS_T,
    S_UPSERT_TAILS,
    S_LOOKUP,
    S_LOOKUP_TAILS,
    S_COUNT
};
static const struct {
    const char *name, *sql;
} dlog_stmts[S_COUNT] = {
    [S_INSERT_DELIVERIES] = {"hb_dlog_insert_deliveries", DLOG_INSERT_DELIVERIES("uuid")},
    [S_INSERT_DELIVERIES_T] = {"hb_dlog_insert_deliveries_t", DLOG_INSERT_DELIVERIES("text")},
    [S_UPSERT_DELIVERIES] = {"hb_dlog_upsert_deliveries", DLOG_UPSERT_DELIVERIES("uuid")},
    [S_UPSERT_DELIVERIES_T] = {"hb_dlog_upsert_deliveries_t", DLOG_UPSERT_DELIVERIES("text")},
    [S_INSERT_ATTEMPTS] = {"hb_dlog_insert_attempts", DLOG_INSERT_ATTEMPTS("uuid")},
    [S_INSERT_ATTEMPTS_T] = {"hb_dlog_insert_attempts_t", DLOG_INSERT_ATTEMPTS("text")},
    [S_UPSERT_TAILS] = {"hb_dlog_upsert_tails", DLOG_UPSERT_TAILS},
    [S_LOOKUP] = {"hb_dlog_lookup", DLOG_LOOKUP},
    [S_LOOKUP_TAILS] = {"hb_dlog_lookup_tails", DLOG_LOOKUP_TAILS},
};

/* The writer's connection: the one it has, unless the server closed it while
 * idle, else a new one, its statements not prepared yet. Their
 * plans are the generic ones: with the log partitioned by day, planning a
 * look-up for its parameters (what PostgreSQL otherwise keeps doing for it)
 * walks every partition and cost about 0.9 ms a look-up at 35 partitions (a
 * 30-day retention), against 0.2 ms with the generic plan; the writes'
 * plans do not depend on their parameters anyway. Set outside any
 * transaction, so no rollback undoes it; a server that cannot (before
 * PostgreSQL 12) keeps its default, said once at debug. */
static int dlog_connect(hb_dlog_t *dl, char *why, size_t whysz) {
    PGresult *res;
    if (hb_pg_idle_closed(dl->conn, why, whysz)) {
        /* ended while idle (idle_session_timeout, a firewall): this round
         * goes on a new connection, rather than fail and wait its back-off */
        hb_info("delivery log: the server closed its idle connection (%s); reconnecting", why);
        PQfinish(dl->conn);
        dl->conn = NULL;
    }
    if (dl->conn)
        return 0;
    dl->prepared = 0;
    dl->conn = hb_pg_connect(dl->conninfo, "hookbridge-dlog", why, whysz);
    if (!dl->conn)
        return -1;
    res = PQexec(dl->conn, "SET plan_cache_mode = force_generic_plan");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        hb_log(HB_LOG_DEBUG, NULL, "delivery log: plan_cache_mode not set: %s",
               PQresultErrorMessage(res));
    PQclear(res);
    return 0;
}

/* After a failed round on a connection lost, or on a server that turned
 * read-only (a failover: writes fail with SQLSTATE 25006 on a connection
 * that still answers): drops it, so the next round connects again and finds
 * the new primary (a multi-host URL with target_session_attrs=read-write, or
 * a DNS name moved), instead of failing on the old server for ever. why
 * gets the server's state in front. */
static void dlog_drop(hb_dlog_t *dl, char *why, size_t whysz) {
    const char *ro = hb_pg_read_only(dl->conn);
    if (ro) {
        char was[512];
        snprintf(was, sizeof(was), "%s", why);
        hb_seterr(why, whysz, "%s (%s); reconnecting", ro, was);
    }
    PQfinish(dl->conn);
    dl->conn = NULL;
}

/* Runs statement s with n text parameters; the result as PQexecPrepared's,
 * or the failed prepare's. */
static PGresult *dlog_run(hb_dlog_t *dl, int s, int n, const char *const *params,
                          const int *lengths, const int *formats) {
    if (!(dl->prepared & (1u << s))) {
        PGresult *res = PQprepare(dl->conn, dlog_stmts[s].name, dlog_stmts[s].sql, n, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            return res;
        PQclear(res);
        dl->prepared |= 1u << s;
    }
    return PQexecPrepared(dl->conn, dlog_stmts[s].name, n, params, lengths, formats, 0);
}

/* Runs statement s (prepared) or, s < 0, the plain command sql. */
static dlog_wrc_t dlog_exec(hb_dlog_t *dl, int s, const char *sql, int n, const char *const *params,
                            const int *lengths, const int *formats, char *why, size_t whysz) {
    PGresult *res = s >= 0 ? dlog_run(dl, s, n, params, lengths, formats) : PQexec(dl->conn, sql);
    dlog_wrc_t rc = W_OK;
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        hb_pg_error(dl->conn, res, why, whysz);
        rc = (s == S_INSERT_DELIVERIES || s == S_INSERT_DELIVERIES_T) &&
                     sqlstate_unique_violation(res)
                 ? W_DUPLICATE
             : sqlstate_invalid(res) ? W_INVALID
                                     : W_RETRY;
    }
    PQclear(res);
    return rc;
}

/* The ordered rows among rows[0..n) move their keys' tails; nothing at all
 * when none is ordered (the usual case). */
static dlog_wrc_t dlog_write_tails(hb_dlog_t *dl, dlog_row_t **rows, size_t n, char *why,
                                   size_t whysz) {
    hb_buf_t arr[5];
    const char *p[5];
    size_t keyed = 0;
    dlog_wrc_t rc;

    for (size_t i = 0; i < n; i++)
        keyed += rows[i]->ordering_key != NULL;
    if (!keyed)
        return W_OK;
    memset(arr, 0, sizeof(arr));
    for (int c = 0; c < 5; c++)
        hb_buf_put(&arr[c], "{", 1);
    for (size_t i = 0; i < n; i++) {
        const dlog_row_t *r = rows[i];
        if (!r->ordering_key)
            continue;
        buf_elem_text(&arr[0], r->subscription_id);
        buf_elem_text(&arr[1], r->ordering_key);
        buf_elem_text(&arr[2], r->delivery_id);
        buf_elem_int(&arr[3], r->source_partition);
        buf_elem_int(&arr[4], (long long)r->source_offset);
    }
    for (int c = 0; c < 5; c++) {
        hb_buf_put(&arr[c], "}", 1);
        p[c] = arr[c].p;
    }
    rc = dlog_exec(dl, S_UPSERT_TAILS, NULL, 5, p, NULL, NULL, why, whysz);
    for (int c = 0; c < 5; c++)
        free(arr[c].p);
    return rc;
}

/* Appends row r to the column arrays arr[]; first: its A_FIRST. */
static void arrays_add(dcol_t *arr, const dlog_row_t *r, int64_t first) {
    if (arr[A_DID].elem == OID_UUID) {
        col_uuid(&arr[A_DID], r->did_bin);
        col_uuid(&arr[A_SID], r->sid_bin);
    } else {
        col_text(&arr[A_DID], r->delivery_id);
        col_text(&arr[A_SID], r->subscription_id);
    }
    col_text(&arr[A_EIDS], r->event_ids);
    col_text(&arr[A_ETYPE], r->event_type);
    col_int4(&arr[A_ATTEMPT], (int32_t)r->attempt);
    col_ts(&arr[A_STARTED], r->started_ms);
    col_int8(&arr[A_DURATION], r->duration_ms);
    col_int4(&arr[A_HTTP], (int32_t)r->http_status);
    col_text(&arr[A_OUTCOME], hb_outcome_name(r->outcome));
    col_text(&arr[A_ERROR], r->error);
    col_text(&arr[A_SNIPPET], r->snippet);
    col_text(&arr[A_BODY], r->body);
    col_text(&arr[A_CTYPE], r->content_type);
    col_int4(&arr[A_DAY], (int32_t)r->log_day);
    col_ts(&arr[A_FIRST], first);
}

/* Each column's element type (arrays_add); A_DID and A_SID: OID_UUID when
 * every id of the batch is uuid_shaped. */
static const uint32_t col_elem[A_COUNT] = {
    [A_DID] = OID_TEXT,      [A_SID] = OID_TEXT,     [A_EIDS] = OID_TEXT,
    [A_ETYPE] = OID_TEXT,    [A_ATTEMPT] = OID_INT4, [A_STARTED] = OID_TIMESTAMPTZ,
    [A_DURATION] = OID_INT8, [A_HTTP] = OID_INT4,    [A_OUTCOME] = OID_TEXT,
    [A_ERROR] = OID_TEXT,    [A_SNIPPET] = OID_TEXT, [A_BODY] = OID_TEXT,
    [A_CTYPE] = OID_TEXT,    [A_DAY] = OID_INT4,     [A_FIRST] = OID_TIMESTAMPTZ,
};

/* Delivery ids compared: their bytes when both are parsed (the same order as
 * strcasecmp of uuid-shaped text: hex digits sort as their values). */
static int delivery_cmp(const dlog_row_t *a, const dlog_row_t *b) {
    return a->ids_bin > 0 && b->ids_bin > 0 ? memcmp(a->did_bin, b->did_bin, 16)
                                            : strcasecmp(a->delivery_id, b->delivery_id);
}

/* Order of a delivery's rows: by delivery and day, then the newest attempt
 * (highest number, then latest start) first. */
static int pick_cmp(const void *pa, const void *pb) {
    const dlog_row_t *a = *(const dlog_row_t *const *)pa, *b = *(const dlog_row_t *const *)pb;
    int c = delivery_cmp(a, b);
    if (c)
        return c;
    if (a->log_day != b->log_day)
        return a->log_day < b->log_day ? -1 : 1;
    if (a->attempt != b->attempt)
        return a->attempt > b->attempt ? -1 : 1;
    if (a->started_ms != b->started_ms)
        return a->started_ms > b->started_ms ? -1 : 1;
    return 0;
}

/* Adds one row per (delivery, day) of rows[0..n): its newest attempt, with
 * the earliest start among them (what the deliveries row takes: status and
 * last_* from the newest, first_attempt_at the least), to fresh[] when that
 * attempt is the delivery's first (or its drop) and fresh is not NULL, to
 * darr[] otherwise. */
static void dlog_pick(dcol_t *darr, dcol_t *fresh, dlog_row_t **rows, size_t n) {
    const dlog_row_t **v = hb_malloc((n ? n : 1) * sizeof(*v));
    memcpy(v, rows, n * sizeof(*v));
    qsort(v, n, sizeof(*v), pick_cmp);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        int64_t first = v[i]->started_ms;
        while (j < n && !delivery_cmp(v[j], v[i]) && v[j]->log_day == v[i]->log_day) {
            if (v[j]->started_ms < first)
                first = v[j]->started_ms;
            j++;
        }
        arrays_add(fresh && v[i]->attempt <= 1 ? fresh : darr, v[i], first);
        i = j;
    }
    free(v);
}

/* Writes rows[0..n) in one transaction; upsert_all: every deliveries row
 * through the upsert (none through the plain insert of new ones). */
static dlog_wrc_t dlog_write_once(hb_dlog_t *dl, dlog_row_t **rows, size_t n, int upsert_all,
                                  char *why, size_t whysz) {
    dcol_t *arr, *darr, *fresh;
    const char *p1[13], *p0[13], *p2[9];
    int l1[13], l0[13], l2[9], ids_uuid = 1;
    static const int fmt[13] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}; /* all binary */
    dlog_wrc_t rc = W_OK;

    if (dlog_connect(dl, why, whysz) < 0)
        return W_RETRY;
    for (size_t i = 0; i < n; i++) {
        dlog_row_t *r = rows[i];
        if (!r->ids_bin)
            r->ids_bin = r->delivery_id && r->subscription_id &&
                                 uuid_parse(r->delivery_id, r->did_bin) == 0 &&
                                 uuid_parse(r->subscription_id, r->sid_bin) == 0
                             ? 1
                             : -1;
        ids_uuid &= r->ids_bin > 0;
    }
    if (!dl->cols)
        dl->cols = hb_calloc(1, sizeof(*dl->cols));
    arr = dl->cols->arr;
    darr = dl->cols->darr;
    fresh = dl->cols->fresh;
    for (int c = 0; c < A_COUNT; c++) {
        uint32_t elem = (c == A_DID || c == A_SID) && ids_uuid ? OID_UUID : col_elem[c];
        col_begin(&arr[c], elem);
        col_begin(&darr[c], elem);
        col_begin(&fresh[c], elem);
    }
    for (size_t i = 0; i < n; i++)
        arrays_add(arr, rows[i], rows[i]->started_ms);
    dlog_pick(darr, upsert_all ? NULL : fresh, rows, n);
    for (int c = 0; c < A_COUNT; c++) {
        col_end(&arr[c]);
        col_end(&darr[c]);
        col_end(&fresh[c]);
    }

    for (int k = 0; k < 13; k++) {
        static const int c1[13] = {A_DID,     A_SID,     A_EIDS, A_ETYPE, A_OUTCOME,
                                   A_ATTEMPT, A_STARTED, A_HTTP, A_ERROR, A_BODY,
                                   A_CTYPE,   A_DAY,     A_FIRST};
        p1[k] = darr[c1[k]].b.p;
        l1[k] = (int)darr[c1[k]].b.len;
        p0[k] = fresh[c1[k]].b.p;
        l0[k] = (int)fresh[c1[k]].b.len;
    }
    for (int k = 0; k < 9; k++) {
        static const int c2[9] = {A_DID,     A_ATTEMPT, A_STARTED, A_DURATION, A_HTTP,
                                  A_OUTCOME, A_ERROR,   A_SNIPPET, A_SID};
        p2[k] = arr[c2[k]].b.p;
        l2[k] = (int)arr[c2[k]].b.len;
    }

    if ((rc = dlog_exec(dl, -1, "BEGIN", 0, NULL, NULL, NULL, why, whysz)) != W_OK)
        goto fail;
    if (fresh[A_DID].n > 0 &&
        (rc = dlog_exec(dl, ids_uuid ? S_INSERT_DELIVERIES : S_INSERT_DELIVERIES_T, NULL, 13, p0,
                        l0, fmt, why, whysz)) != W_OK)
        goto fail;
    if (darr[A_DID].n > 0 &&
        (rc = dlog_exec(dl, ids_uuid ? S_UPSERT_DELIVERIES : S_UPSERT_DELIVERIES_T, NULL, 13, p1,
                        l1, fmt, why, whysz)) != W_OK)
        goto fail;
    if ((rc = dlog_exec(dl, ids_uuid ? S_INSERT_ATTEMPTS : S_INSERT_ATTEMPTS_T, NULL, 9, p2, l2,
                        fmt, why, whysz)) != W_OK)
        goto fail;
    if ((rc = dlog_write_tails(dl, rows, n, why, whysz)) != W_OK)
        goto fail;
    rc = dlog_exec(dl, -1, "COMMIT", 0, NULL, NULL, NULL, why, whysz);
    if (rc != W_OK)
        goto fail;
    goto out;
fail:
    if (hb_pg_unusable(dl->conn)) {
        dlog_drop(dl, why, whysz);
        rc = W_RETRY;
    } else {
        PQclear(PQexec(dl->conn, "ROLLBACK"));
    }
out:
    for (int c = 0; c < A_COUNT; c++) { /* a column grown past the bound is not kept */
        if (arr[c].b.cap > DLOG_COL_KEEP)
            hb_buf_free(&arr[c].b);
        if (darr[c].b.cap > DLOG_COL_KEEP)
            hb_buf_free(&darr[c].b);
        if (fresh[c].b.cap > DLOG_COL_KEEP)
            hb_buf_free(&fresh[c].b);
    }
    return rc;
}

/* Writes rows[0..n) in one transaction: new deliveries by a plain insert,
 * and, when one of them was there after all, the whole batch again with the
 * upsert alone. */
static dlog_wrc_t dlog_write(hb_dlog_t *dl, dlog_row_t **rows, size_t n, char *why, size_t whysz) {
    dlog_wrc_t rc = dlog_write_once(dl, rows, n, 0, why, whysz);
    if (rc == W_DUPLICATE)
        rc = dlog_write_once(dl, rows, n, 1, why, whysz);
    return rc;
}

/* Answers the tail look-ups among rows[0..n) (those with an ordering key) in
 * one query; nothing when there are none. */
static dlog_wrc_t dlog_lookup_tails(hb_dlog_t *dl, dlog_row_t **rows, size_t n, char *why,
                                    size_t whysz) {
    hb_buf_t sids = {0}, keys = {0};
    const char *params[2];
    size_t *at = hb_malloc((n ? n : 1) * sizeof(*at)), cnt = 0;
    PGresult *res;
    dlog_wrc_t rc = W_OK;

    hb_buf_put(&sids, "{", 1);
    hb_buf_put(&keys, "{", 1);
    for (size_t i = 0; i < n; i++) {
        if (!rows[i]->ordering_key)
            continue;
        at[cnt++] = i;
        buf_elem_text(&sids, rows[i]->subscription_id);
        buf_elem_text(&keys, rows[i]->ordering_key);
    }
    hb_buf_put(&sids, "}", 1);
    hb_buf_put(&keys, "}", 1);
    if (cnt > 0) {
        params[0] = sids.p;
        params[1] = keys.p;
        res = dlog_run(dl, S_LOOKUP_TAILS, 2, params, NULL, NULL);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            hb_pg_error(dl->conn, res, why, whysz);
            rc = W_RETRY;
        } else {
            for (int t = 0; t < PQntuples(res); t++) {
                long long i = strtoll(PQgetvalue(res, t, 0), NULL, 10); /* 1-based */
                hb_dlog_state_t *st;
                if (i < 1 || (size_t)i > cnt)
                    continue;
                st = rows[at[i - 1]]->lookup;
                st->found = 1;
                snprintf(st->delivery_id, sizeof(st->delivery_id), "%s", PQgetvalue(res, t, 1));
                snprintf(st->status, sizeof(st->status), "%s", PQgetvalue(res, t, 2));
                st->attempts = (int)strtol(PQgetvalue(res, t, 3), NULL, 10);
            }
        }
        PQclear(res);
    }
    free(at);
    free(sids.p);
    free(keys.p);
    return rc;
}

/* Answers the look-ups rows[0..n) in one query (each out filled; not found
 * stays zeroed); tail look-ups in a second one. */
static dlog_wrc_t dlog_lookup(hb_dlog_t *dl, dlog_row_t **rows, size_t n, char *why, size_t whysz) {
    hb_buf_t ids = {0}, since = {0};
    const char *params[2];
    PGresult *res;
    dlog_wrc_t rc = W_OK;

    if (dlog_connect(dl, why, whysz) < 0)
        return W_RETRY;
    hb_buf_put(&ids, "{", 1);
    hb_buf_put(&since, "{", 1);
    for (size_t i = 0; i < n; i++) { /* a tail look-up matches nothing here */
        char day[24];
        buf_elem_text(&ids, rows[i]->ordering_key ? NULL : rows[i]->delivery_id);
        snprintf(day, sizeof(day), "%s%lld", i ? "," : "",
                 rows[i]->ordering_key ? (long long)LOOKUP_ANY_DAY : (long long)rows[i]->log_day);
        hb_buf_puts(&since, day);
    }
    hb_buf_put(&ids, "}", 1);
    hb_buf_put(&since, "}", 1);
    params[0] = ids.p;
    params[1] = since.p;
    res = dlog_run(dl, S_LOOKUP, 2, params, NULL, NULL);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        hb_pg_error(dl->conn, res, why, whysz);
        rc = W_RETRY; /* the ids are checked on the way in: nothing here is invalid */
        if (hb_pg_unusable(dl->conn))
            dlog_drop(dl, why, whysz);
    } else {
        for (int t = 0; t < PQntuples(res); t++) {
            long long i = strtoll(PQgetvalue(res, t, 0), NULL, 10); /* 1-based */
            hb_dlog_state_t *st;
            if (i < 1 || (size_t)i > n)
                continue;
            st = rows[i - 1]->lookup;
            st->found = 1;
            snprintf(st->status, sizeof(st->status), "%s", PQgetvalue(res, t, 1));
            st->attempts = (int)strtol(PQgetvalue(res, t, 2), NULL, 10);
            st->replay_ms = strtoll(PQgetvalue(res, t, 3), NULL, 10);
            st->resume_ms = strtoll(PQgetvalue(res, t, 4), NULL, 10);
        }
    }
    PQclear(res);
    free(ids.p);
    free(since.p);
    if (rc == W_OK) {
        rc = dlog_lookup_tails(dl, rows, n, why, whysz);
        if (rc != W_OK && hb_pg_unusable(dl->conn))
            dlog_drop(dl, why, whysz);
    }
    return rc;
}

/* Under mu: a written (or hopeless) row's token becomes takeable. */
static void flushed_push_locked(hb_dlog_t *dl, void *token) {
    if (!token)
        return;
    if (dl->flushed_n == dl->flushed_cap) {
        dl->flushed_cap = dl->flushed_cap ? dl->flushed_cap * 2 : 256;
        dl->flushed = hb_realloc(dl->flushed, dl->flushed_cap * sizeof(*dl->flushed));
    }
    dl->flushed[dl->flushed_n++] = token;
}

/* Writes a batch the database refused as a whole one row at a time, so only
 * the rows it rejects are lost. Returns how many leading rows are finished
 * (written or rejected); the rest stay for a retry. */
static size_t dlog_write_singly(hb_dlog_t *dl, dlog_row_t **rows, size_t n, size_t *written) {
    char why[512];
    size_t i;
    *written = 0;
    for (i = 0; i < n; i++) {
        dlog_wrc_t rc = dlog_write(dl, &rows[i], 1, why, sizeof(why));
        if (rc == W_RETRY)
            break;
        if (rc == W_INVALID) {
            hb_log(HB_LOG_ERROR,
                   HB_KV("delivery_id", rows[i]->delivery_id, "subscription_id",
                         rows[i]->subscription_id),
                   "delivery log: attempt rejected by the database and not recorded: %s", why);
            rows[i]->rejected = 1;
        } else {
            (*written)++;
        }
    }
    return i;
}

static void dlog_warn_down(hb_dlog_t *dl, const char *why, size_t queued) {
    int64_t now = hb_mono_ms();
    if (!dl->failing || now - dl->warned_ms >= DLOG_WARN_EVERY_MS) {
        char q[24];
        snprintf(q, sizeof(q), "%zu", queued);
        hb_log(HB_LOG_WARN, HB_KV("queued", q), "delivery log: cannot write, will retry: %s", why);
        dl->warned_ms = now;
    }
    dl->failing = 1;
}

static void *dlog_main(void *arg) {
    hb_dlog_t *dl = arg;
    dlog_row_t **batch = hb_malloc(DLOG_BATCH_MAX * sizeof(*batch));
    dlog_row_t **looks = hb_malloc(DLOG_BATCH_MAX * sizeof(*looks));
    int64_t next_flush = hb_mono_ms() + dl->flush_ms, backoff = DLOG_BACKOFF_MIN_MS;
    int64_t next_clock = hb_mono_ms() + DLOG_CLOCK_EVERY_MS; /* the connect read it */
    char why[512];

    pthread_mutex_lock(&dl->mu);
    for (;;) {
        size_t n, nw, nl, done, ldone = 0, written = 0;
        dlog_wrc_t rc = W_OK;
        size_t wake_at = dl->max_queue / 2 < DLOG_BATCH_MAX ? dl->max_queue / 2 : DLOG_BATCH_MAX;

        if (dl->closing && (dl->queue.n == 0 || hb_mono_ms() >= dl->deadline_ms))
            break;
        if (!dl->closing && !(dl->syncing && dl->queue.n > 0) && hb_mono_ms() < next_flush &&
            dl->queue.n < (wake_at ? wake_at : 1) && dl->queue_lookups == 0) {
            hb_cond_wait_until(&dl->cv, &dl->mu, next_flush);
            continue;
        }
        if (dl->queue.n == 0) {
            next_flush = hb_mono_ms() + dl->flush_ms;
            continue;
        }
        n = dl->queue.n < DLOG_BATCH_MAX ? dl->queue.n : DLOG_BATCH_MAX;
        memcpy(batch, dl->queue.v, n * sizeof(*batch));
        memmove(dl->queue.v, dl->queue.v + n, (dl->queue.n - n) * sizeof(*dl->queue.v));
        dl->queue.n -= n;
        /* Rows to write stay in batch[0..nw), in order; look-ups go to
         * looks[0..nl) and are answered after every row of the batch is
         * committed, so each sees at least the rows queued before it. */
        nw = nl = 0;
        for (size_t i = 0; i < n; i++) {
            dl->queue_untokened -= batch[i]->token == NULL;
            if (batch[i]->lookup) {
                dl->queue_lookups--;
                looks[nl++] = batch[i];
            } else {
                batch[nw++] = batch[i];
            }
        }
        dl->writing = n;
        pthread_mutex_unlock(&dl->mu);

        done = 0;
        atomic_store(&dl->busy_since, hb_mono_ms());
        if (nw > 0) {
            rc = dlog_write(dl, batch, nw, why, sizeof(why));
            if (rc == W_OK)
                done = written = nw;
            else if (rc == W_INVALID)
                done = dlog_write_singly(dl, batch, nw, &written);
        }
        if (done == nw && nl > 0) {
            rc = dlog_lookup(dl, looks, nl, why, sizeof(why));
            ldone = rc == W_OK ? nl : 0;
        }
        if (rc == W_OK && dl->conn && hb_mono_ms() >= next_clock) {
            hb_pg_clock_sample(dl->conn);
            next_clock = hb_mono_ms() + DLOG_CLOCK_EVERY_MS;
        }
        atomic_store(&dl->busy_since, 0);

        pthread_mutex_lock(&dl->mu);
        dl->writing = 0;
        for (size_t i = 0; i < done; i++) {
            dl->dropped += batch[i]->rejected != 0;
            if (batch[i]->rejected)
                hb_metric_inc(dl->rejected);
            flushed_push_locked(dl, batch[i]->token);
            row_free(batch[i]);
        }
        for (size_t i = 0; i < ldone; i++) {
            flushed_push_locked(dl, looks[i]->token); /* its answer is filled in */
            row_free(looks[i]);
        }
        dl->written += written;
        if (dl->syncing)
            pthread_cond_broadcast(&dl->synced);
        /* the loop takes the tokens now, not at its next wake-up: an idle
         * loop waiting for them (consumption paused) sleeps up to 100 ms */
        if ((done > 0 || ldone > 0) && dl->wake_fd >= 0)
            hb_poke(dl->wake_fd);
        if (done < nw || ldone < nl) {
            /* back in front: the unwritten rows, then the unanswered look-ups */
            memmove(batch, batch + done, (nw - done) * sizeof(*batch));
            memcpy(batch + (nw - done), looks, nl * sizeof(*batch));
            n = (nw - done) + nl;
            queue_unshift_locked(dl, batch, n);
            queue_trim_locked(dl);
            hb_metric_inc(dl->errors);
            dlog_warn_down(dl, rc == W_RETRY ? why : "database unavailable", dl->queue.n);
            if (!dl->failing_since)
                dl->failing_since = hb_mono_ms();
            snprintf(dl->failing_why, sizeof(dl->failing_why), "%s",
                     rc == W_RETRY ? why : "database unavailable");
            if (dl->syncing) /* they go on without the database */
                pthread_cond_broadcast(&dl->synced);
            next_flush = hb_mono_ms() + backoff;
            if (dl->closing && next_flush > dl->deadline_ms)
                next_flush = dl->deadline_ms;
            backoff = backoff * 2 > DLOG_BACKOFF_MAX_MS ? DLOG_BACKOFF_MAX_MS : backoff * 2;
            /* Back off even when woken early by a full queue or by close. */
            while (hb_mono_ms() < next_flush && !(dl->closing && hb_mono_ms() >= dl->deadline_ms))
                hb_cond_wait_until(&dl->cv, &dl->mu, next_flush);
            continue;
        }
        if (dl->failing) {
            hb_info("delivery log: writing again");
            dl->failing = 0;
        }
        dl->failing_since = 0;
        backoff = DLOG_BACKOFF_MIN_MS;
        next_flush = dl->queue.n > 0 ? hb_mono_ms() : hb_mono_ms() + dl->flush_ms;
    }
    dl->left = dl->queue.n;
    pthread_mutex_unlock(&dl->mu);
    free(batch);
    free(looks);
    if (dl->conn) {
        PQfinish(dl->conn);
        dl->conn = NULL;
    }
    pthread_mutex_lock(&dl->mu);
    dl->exited = 1;
    pthread_cond_broadcast(&dl->cv);
    pthread_mutex_unlock(&dl->mu);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                               */

hb_dlog_t *hb_dlog_new(const char *conninfo, long long flush_ms, size_t max_queue, char *errstr,
                       size_t errstr_size) {
    hb_dlog_t *dl = hb_calloc(1, sizeof(*dl));
    int err;

    dl->conninfo = hb_strdup(conninfo ? conninfo : "");
    dl->flush_ms = flush_ms > 0 ? flush_ms : 200;
    dl->wake_fd = -1;
    dl->max_queue = max_queue > 0 ? max_queue : 100000;
    pthread_mutex_init(&dl->mu, NULL);
    hb_cond_init_mono(&dl->cv);
    hb_cond_init_mono(&dl->synced);

    /* Connect now so a wrong URL or a down database is reported at start. */
    if (dlog_connect(dl, errstr, errstr_size) < 0)
        goto fail;
    err = pthread_create(&dl->thread, NULL, dlog_main, dl);
    if (err) {
        hb_seterr(errstr, errstr_size, "delivery log: cannot start its thread: %s", strerror(err));
        goto fail;
    }
    dl->thread_started = 1;
    return dl;
fail:
    hb_dlog_free(dl);
    return NULL;
}

int hb_dlog_sync(hb_dlog_t *dl, long long max_wait_ms) {
    int64_t until = hb_mono_ms() + max_wait_ms;
    int written;
    pthread_mutex_lock(&dl->mu);
    if (dl->thread_started && !dl->closing && !dl->failing_since) {
        dl->syncing++;
        pthread_cond_broadcast(&dl->cv);
        /* A failed round sets failing_since: the database is not going to
         * take them now, and the caller goes on without. */
        while ((dl->queue.n > 0 || dl->writing > 0) && !dl->failing_since && !dl->closing &&
               hb_mono_ms() < until)
            hb_cond_wait_until(&dl->synced, &dl->mu, until);
        dl->syncing--;
    }
    written = dl->queue.n == 0 && dl->writing == 0;
    pthread_mutex_unlock(&dl->mu);
    return written ? 0 : -1;
}

size_t hb_dlog_close(hb_dlog_t *dl, long long deadline_ms) {
    size_t left;
    pthread_mutex_lock(&dl->mu);
    if (dl->closed) {
        left = dl->left;
        pthread_mutex_unlock(&dl->mu);
        return left;
    }
    dl->closing = 1;
    dl->deadline_ms = hb_mono_ms() + (deadline_ms > 0 ? deadline_ms : 0);
    pthread_cond_broadcast(&dl->cv);
    /* The writer stops between statements; one the database never answers
     * (a server that keeps its connections but answers nothing) would hold
     * a join for ever, and the stop with it: past the deadline and a grace,
     * the writer is left to its statement and dl to the writer. Its rows
     * count as unwritten: their offsets were never stored, so their events
     * are consumed again. */
    if (dl->thread_started) {
        int64_t until = dl->deadline_ms + DLOG_CLOSE_GRACE_MS;
        while (!dl->exited && hb_mono_ms() < until)
            hb_cond_wait_until(&dl->cv, &dl->mu, until);
        if (!dl->exited) {
            dl->abandoned = 1;
            dl->wake_fd = -1;
            dl->errors = NULL; /* the metrics go before the writer may come back */
            dl->rejected = NULL;
            dl->left = dl->queue.n + dl->writing;
            hb_warn("delivery log: the database did not answer by the stop's deadline; "
                    "stopping without it");
        }
    }
    pthread_mutex_unlock(&dl->mu);

    if (dl->thread_started) {
        if (dl->abandoned)
            pthread_detach(dl->thread);
        else
            pthread_join(dl->thread, NULL);
        dl->thread_started = 0;
    } else {
        dl->left = dl->queue.n;
    }
    pthread_mutex_lock(&dl->mu);
    dl->closed = 1;
    left = dl->left;
    pthread_mutex_unlock(&dl->mu);
    if (left > 0) {
        char q[24];
        snprintf(q, sizeof(q), "%zu", left);
        hb_log(HB_LOG_WARN, HB_KV("unwritten", q),
               "delivery log: closed with rows unwritten (database unavailable until the "
               "deadline)");
    }
    return left;
}

void hb_dlog_free(hb_dlog_t *dl) {
    if (!dl)
        return;
    if (dl->thread_started)
        (void)hb_dlog_close(dl, 0);
    if (dl->abandoned) /* its writer may still wake up and use it */
        return;
    if (dl->conn)
        PQfinish(dl->conn);
    if (dl->cols) {
        for (int c = 0; c < A_COUNT; c++) {
            free(dl->cols->arr[c].b.p);
            free(dl->cols->darr[c].b.p);
            free(dl->cols->fresh[c].b.p);
        }
        free(dl->cols);
    }
    for (size_t i = 0; i < dl->queue.n; i++)
        row_free(dl->queue.v[i]);
    free(dl->queue.v);
    free(dl->flushed);
    pthread_cond_destroy(&dl->cv);
    pthread_cond_destroy(&dl->synced);
    pthread_mutex_destroy(&dl->mu);
    OPENSSL_cleanse(dl->conninfo, strlen(dl->conninfo));
    free(dl->conninfo);
    free(dl);
}

void hb_dlog_set_wake_fd(hb_dlog_t *dl, int fd) {
    pthread_mutex_lock(&dl->mu);
    dl->wake_fd = fd;
    pthread_mutex_unlock(&dl->mu);
}

void hb_dlog_set_error_metric(hb_dlog_t *dl, hb_metric_t *errors) {
    pthread_mutex_lock(&dl->mu);
    dl->errors = errors;
    pthread_mutex_unlock(&dl->mu);
}

void hb_dlog_set_rejected_metric(hb_dlog_t *dl, hb_metric_t *rejected) {
    pthread_mutex_lock(&dl->mu);
    dl->rejected = rejected;
    pthread_mutex_unlock(&dl->mu);
}
