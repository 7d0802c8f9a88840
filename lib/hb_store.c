/*
 * Subscription store: snapshots of hookbridge.subscriptions kept fresh by
 * LISTEN/NOTIFY, and the services' other questions to PostgreSQL, answered
 * off the delivery loop.
 *
 * The design is simple: two lanes, each a thread that owns one blocking libpq
 * connection, as the delivery log's writer owns its own. The follower LISTENs;
 * when its socket turns readable it drains libpq's notification queue,
 * de-duplicates it, seals what the inbox holds (lib/hb_sealer.h), reloads each
 * changed subscription by id (lib/hb_snapshot.h) and queues the snapshots as
 * events. The request lane answers the loop's requests (replay claims, the
 * failing-endpoint sweep, rate-limit tokens ...) one after another; the
 * verification claims and outcomes go to STORE_VERIFY_LANES lanes of their
 * own, a subscription's always to the same one (so its outcome follows its
 * claim), several at once: one after another, 3,000 changed URLs took 12 s
 * to verify, each claim (with the load of its subscription) and outcome a
 * few round trips and a commit. Those lanes connect on their first request,
 * and only a store made for a service that verifies (the dispatcher) starts
 * them: the retrier sends no challenge.
 * Both queue what they produce on one list under one mutex and poke a pipe;
 * the loop, woken by it, runs handlers and callbacks in hb_store_process.
 * The loop never touches a connection, and a lane never runs a handler.
 *
 * Ordering: the follower marks itself busy (under the mutex) before it reads
 * its socket and clears the mark when the resulting events are queued, in
 * one step; a reconnect is busy until its reload is queued, together with
 * the changes notified while it loaded (libpq may have taken them in with
 * the load's answer, where the socket no longer shows them). hb_store_settled
 * is 0 while it is busy, while events wait, or while its socket has unread
 * bytes, so a loop that consumes only when settled never matches an event
 * against a subscription whose change had reached us first.
 *
 * The follower's connection sends nothing while it waits for notifications,
 * so a database gone silent (a partition, a failover's old address) was
 * noticed only by its keepalives; after STORE_PING_MS without traffic it
 * sends an empty query, and tcp_user_timeout ends the connection as it ends
 * the delivery log's (docs/operations.md, PostgreSQL unreachable).
 *
 * When a connection drops, its lane forgets it and reconnects with backoff
 * (1 s doubling to 5 s; the request lane when a request comes). The follower
 * LISTENs again before it reloads, so a change made while it reloads is
 * notified, not lost. What must hold: no error string ever carries the
 * conninfo or the password (messages name host and port only), and no SQL is
 * built by string concatenation.
 */
#include "hb_store.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hb_log.h"
#include "hb_pg.h"
#include "hb_sealer.h"
#include "hb_snapshot.h"

#define STORE_BACKOFF_MIN_MS 1000
#define STORE_BACKOFF_MAX_MS 5000 /* readiness returns within about 5 s of the database */
/* A request lane connects only when a request comes, and the periodic ones
 * (the retrier's replay claims) come a second apart: one that comes this
 * little before the next attempt is due takes it, rather than wait a whole
 * period more (review 64: the back-off ran 2, 3, 5, 6, 6 s, not 1, 2, 4, 5) */
#define STORE_RETRY_EARLY_MS 250
#define STORE_SWEEP_MS 60000 /* expired revealable secrets leave the inbox within this */
/* A subscription left unsealed is loaded again after 1 s, then 2, 4, 8 and
 * every 10 s (a value lost in a database crash is never sealed: it waits
 * for the operator's rotate_secret, which is notified, at little cost). */
#define STORE_UNSEALED_RETRY_MS 1000
#define STORE_UNSEALED_RETRY_MAX_MS 10000
/* ... and keeps the snapshot it had at least this long before it fails closed */
#define STORE_UNSEALED_KEEP_MS 10000
/* Lanes (connections) for verification claims and outcomes. */
#define STORE_VERIFY_LANES 4
#define STORE_LANES (2 + STORE_VERIFY_LANES)
/* The loop holds new events while the follower is busy (hb_store_settled),
 * at most this long: a database that stopped answering (or a lock its load
 * waits for) holds consumption no longer than it would hold the delivery
 * log before /readyz says so; then events are matched against the
 * subscriptions in memory, as while the database is unreachable. */
#define STORE_BUSY_WAIT_MS 10000
/* A sync's query goes at least this long after the last one: under a
 * steady stream each would carry a handful of events, at a cost of a round
 * trip's system calls and thread hand-overs each; the events taken
 * meanwhile wait for the next one together. */
#define STORE_SYNC_GAP_MS 2
/* Events taken wait for a sync (hb_store_sync) at most this long, and not
 * at all while the follower's query (or load) has waited this long
 * already: a database that answers nothing costs the stream one such wait,
 * and the events are matched against the subscriptions in memory (well
 * below the consumer's 3 s keep-alive). */
#define STORE_SYNC_WAIT_MS 1000
/* The follower's connection, idle on LISTEN, sends an empty query when it
 * has sent nothing for this long: the kernel gives up on data it sent and
 * nobody acknowledged after tcp_user_timeout (15 s, hb_pg_connect), as on
 * the delivery log's, where the keepalives of a connection that sends
 * nothing took 40 s or more (a network partition, a failover whose old
 * primary's address went silent). One round trip every 5 s, no plan. */
#define STORE_PING_MS 5000
/* ... and, its answer not back after this long, the subscriptions are not
 * taken for current (hb_store_current: the retrier holds due retries): the
 * delivery log, back on a new connection, let them go before the store
 * found its own connection gone, with the subscriptions as they were
 * before the silence. A database that answers an empty query that slowly
 * holds retries, which go on at its answer. */
#define STORE_PING_WAIT_MS 3000
/* ... and, its answer still not back after this long (or the connection's
 * tcp_user_timeout, when set shorter), the connection is dropped and made
 * again: a server that keeps the connection and answers nothing on it (its
 * backend stopped, a proxy or pooler in between hung) is given up as a
 * silent network is after tcp_user_timeout. Before, the retrier held its due
 * retries for as long as that lasted, with no bound (review 64: a backend
 * SIGSTOPped, the rest of the server answering). */
#define STORE_PING_GIVE_UP_MS 15000
/* Both come well before the connection's own tcp_user_timeout: a shorter
 * one in the URL (the delivery log, back after it, would otherwise find the
 * store still current) shortens them to a third and a fifth of it. */
#define STORE_PING_MIN_MS 500
#define STORE_PING_WAIT_MIN_MS 200

/* ------------------------------------------------------------------------ */
/* Messages between the loop and the lanes                                  */

enum {
    /* requests (loop -> lane -> loop, with a callback) */
    MSG_CLAIM_VERIFY,
    MSG_RECORD_VERIFY,
    MSG_PENDING_VERIFY,
    MSG_REPLAYS,
    MSG_SWEEP,
    MSG_TOKENS,
    MSG_MAINTAIN,
    /* events (follower -> loop) */
    MSG_CHANGE,
    MSG_VERIFY,
    MSG_RELOAD,
    MSG_ERROR
};

/* The callback of a request, by kind. */
typedef union {
    hb_store_claim_cb *claim;
    hb_store_preview_cb *preview;
    hb_store_recorded_cb *recorded;
    hb_store_ids_cb *ids;
    hb_store_replays_cb *replays;
    hb_store_count_cb *count;
    hb_store_tokens_cb *tokens;
} hb_store_cb_t;

typedef struct store_msg_s store_msg_t;
struct store_msg_s {
    struct store_msg_s *next;
    int kind;
    char id[HB_UUID_LEN + 1];
    char *url, *reason; /* MSG_RECORD_VERIFY; a preview's claim: reason is its event type */
    char *response, *body, *ctype; /* a preview's outcome (MSG_RECORD_VERIFY) */
    int preview;   /* MSG_*_VERIFY: of a preview (id: the preview's), not a verification */
    int release;   /* MSG_RECORD_VERIFY of a preview: not sent, given back (after_ms: when) */
    int hand_over; /* a release at once that NOTIFYs the other replicas (their LISTEN) */
    int ok, max;
    int unloadable; /* MSG_CLAIM_VERIFY: claimed, but its row cannot be built */
    long long after_ms;
    long long lease_ms;       /* MSG_CLAIM_VERIFY */
    char claim[HB_CLAIM_LEN]; /* MSG_CLAIM_VERIFY's answer, MSG_RECORD_VERIFY */
    /* answers */
    char *err;       /* NULL: it worked */
    hb_sub_t *sub;   /* MSG_CLAIM_VERIFY, MSG_CHANGE */
    hb_sub_t **subs; /* MSG_RELOAD */
    size_t subs_cnt; /* MSG_RELOAD */
    long long gen;   /* MSG_RELOAD: the follower's connection it was made on */
    char **ids;      /* MSG_PENDING_VERIFY */
    int cnt;         /* ids, replays, deactivations */
    hb_replay_t *replays;
    hb_store_cb_t cb;
    void *opaque;
};

static store_msg_t *msg_new(int kind) {
    store_msg_t *m = hb_calloc(1, sizeof(*m));
    m->kind = kind;
    return m;
}

static void subs_free(hb_sub_t **subs, size_t n) {
    for (size_t i = 0; subs && i < n; i++)
        hb_sub_unref(subs[i]);
    free(subs);
}

static void msg_free(store_msg_t *m) {
    if (!m)
        return;
    free(m->url);
    free(m->reason);
    free(m->response);
    free(m->body);
    free(m->ctype);
    free(m->err);
    hb_sub_unref(m->sub);
    subs_free(m->subs, m->subs_cnt);
    for (int i = 0; m->ids && i < m->cnt; i++)
        free(m->ids[i]);
    free(m->ids);
    hb_store_replays_free(m->replays, m->replays ? m->cnt : 0);
    free(m);
}

static void msg_fail(store_msg_t *m, const char *err) {
    free(m->err);
    m->err = hb_strdup(err);
}

typedef struct {
    store_msg_t *head, *tail;
} msg_queue_t;

static void queue_push(msg_queue_t *q, store_msg_t *m) {
    m->next = NULL;
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
}

static store_msg_t *queue_pop(msg_queue_t *q) {
    store_msg_t *m = q->head;
    if (m) {
        q->head = m->next;
        if (!q->head)
            q->tail = NULL;
        m->next = NULL;
    }
    return m;
}

static void queue_free(msg_queue_t *q) {
    store_msg_t *m;
    while ((m = queue_pop(q)) != NULL)
        msg_free(m);
}

/* A subscription id notified (or to load again). */
typedef struct {
    char id[HB_UUID_LEN + 1];
    int verify;       /* 1 hookbridge_verify, 2 hookbridge_preview, 0 hookbridge_subscriptions */
    int64_t since_ms; /* in the unsealed list: first found unsealed (monotonic) */
} store_note_t;

/* A lane: one connection and the thread that owns it. */
typedef struct lane_s {
    hb_store_t *st;
    const char *app_name;
    int follower;        /* LISTENs, loads what changed, seals */
    PGconn *conn;        /* NULL while disconnected; only the lane's thread uses it */
    int sock;            /* PQsocket(conn) or -1; changed under st->mu */
    int busy;            /* under st->mu: notifications taken, their events not queued */
    int64_t busy_since;  /* under st->mu: monotonic ms busy was set */
    int connected;       /* under st->mu */
    int64_t retry_at_ms; /* monotonic; next reconnect attempt */
    int64_t backoff_ms;
    int64_t attempt_ms;   /* monotonic; when the last connection attempt began */
    int first_load;       /* the follower's first full load is still to make */
    int seal_due;         /* hookbridge_seal was notified */
    int64_t next_seal_ms; /* monotonic; the inbox is swept at least this often */
    int ping_sent;        /* the follower's empty query (STORE_PING_MS) awaits its answer */
    int64_t ping_since;   /* under st->mu: monotonic ms it was sent, 0 when answered */
    int64_t next_ping_ms; /* monotonic; when the follower sends it */
    int64_t ping_idle_ms; /* quiet before the check (STORE_PING_MS, or less: ping_times_locked) */
    int64_t ping_sent_ms; /* monotonic ms the check was sent (the lane's thread only) */
    int64_t ping_give_up_ms; /* its answer awaited this long, then the connection is dropped */
    unsigned long long ping_ticket; /* st->sync_want when the check was sent (hb_store_sync) */
    /* The follower's: subscriptions whose change it could not load because a
     * value was not sealed yet (another session held the row while it
     * sealed), loaded again at unsealed_at_ms, then after unsealed_wait_ms. */
    store_note_t *unsealed;
    size_t unsealed_cnt, unsealed_cap;
    int64_t unsealed_at_ms, unsealed_wait_ms;
    int wake[2];      /* loop -> lane: requests wait, or stop */
    msg_queue_t reqs; /* under st->mu */
    /* rate-limit token asks (under st->mu): answered before reqs, so that a
     * burst of other requests (replay claims, a sweep) does not keep every
     * rate-limited subscription's deliveries from their turn until they are
     * parked (verification claims, thousands in a bulk URL change, have
     * lanes of their own) */
    msg_queue_t urgent;
    pthread_t thread;
    int started;
    int exited;          /* under st->mu: the thread is done with the lane */
    long long left_seen; /* a request lane's: st->left_primary when it last answered */
    int ro_connected;    /* a request lane's: its server was read-only when it connected */
    /* a request lane's: its last connection was dropped as read-only (a
     * write refused with SQLSTATE 25006 by a server that did not report
     * it: hb_pg_read_only) and nothing was answered since */
    int ro_dropped;
} lane_t;

struct hb_store_s {
    char *conninfo;              /* may hold a password: cleansed on free, never printed */
    int64_t ping_wait_ms;        /* under mu: STORE_PING_WAIT_MS, or less (ping_times_locked) */
    const hb_keyring_t *keyring; /* borrowed; NULL: nothing sealed can be opened */
    lane_t lanes[STORE_LANES];   /* LANE_FOLLOWER, LANE_REQUESTS, LANE_VERIFY... */
    int verify_lanes;            /* of them started: STORE_VERIFY_LANES, or 0 (no verifier) */
    pthread_mutex_t mu;
    msg_queue_t results;      /* under mu: for the loop, in order */
    int notify[2];            /* lane -> loop: results wait */
    int stop;                 /* under mu */
    pthread_cond_t exited_cv; /* a lane's thread exited (under mu) */
    /* under mu: a full load skipped a subscription whose values wait to be
     * sealed; until it is loaded (or this monotonic time) the loop takes no
     * event, which would be matched without it and go to it nowhere */
    int64_t unloaded_until_ms;
    /* under mu: the follower's connections so far (each reconnect adds one),
     * and the one whose full load the loop has applied last: they differ
     * while changes made during an outage may still be missing (the
     * reconnect's reload not made, or not applied yet), hb_store_current */
    long long conn_gen, loaded_gen;
    /* under mu: how often the follower left a server that is no longer the
     * primary (hb_pg_left_primary): the request lanes' connections, idle
     * and unaware of it, go too, before their next request */
    long long left_primary;
    char down_why[512]; /* under mu: the follower's last failed connect (hb_store_down_why) */
    /* The loop's: the last full load, until hb_store_load_all takes it. */
    hb_sub_t **snapshot;
    size_t snapshot_cnt;
    char *snapshot_err; /* why there is none */
    int pending;        /* the loop's: requests not called back yet */
    int stuck_said;     /* the loop's: the follower's wait past STORE_BUSY_WAIT_MS was said */
    int pending_claims; /* the loop's: verification claims among them */
    /* under mu: syncs the loop asked for (hb_store_sync), and the last one
     * answered: the follower's empty query sent after it was asked has its
     * answer, and what was notified before that answer is queued */
    unsigned long long sync_want, sync_done;
};

enum { LANE_FOLLOWER, LANE_REQUESTS, LANE_VERIFY };

static void pipe_poke(int fd) {
    char c = 1;
    ssize_t rc;
    do
        rc = write(fd, &c, 1);
    while (rc < 0 && errno == EINTR);
    /* EAGAIN: the pipe is full, so a wake-up is pending anyway */
}

/* A read shorter than the buffer emptied the pipe: no read waits for EAGAIN. */
static void pipe_drain(int fd) {
    char buf[64];
    while (read(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf)) {
    }
}

static int pipe_open(int fds[2]) {
    if (pipe(fds) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        (void)fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        (void)fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    }
    return 0;
}

/* Under st->mu: the lane starts work the loop may have to wait for. */
static void set_busy_locked(lane_t *ln) {
    if (!ln->busy)
        ln->busy_since = hb_mono_ms();
    ln->busy = 1;
}

/* Lane thread: hands m (an answered request or an event) to the loop. */
static void post(lane_t *ln, store_msg_t *m) {
    pthread_mutex_lock(&ln->st->mu);
    queue_push(&ln->st->results, m);
    ln->busy = 0; /* answered, or the reload queued */
    pthread_mutex_unlock(&ln->st->mu);
    pipe_poke(ln->st->notify[1]);
}

static void post_error(lane_t *ln, const char *err) {
    store_msg_t *m = msg_new(MSG_ERROR);
    msg_fail(m, err);
    post(ln, m);
}

/* ------------------------------------------------------------------------ */
/* Connection state (the lane's thread, or hb_store_new before it starts)   */

/* The follower's check against its connection's tcp_user_timeout (set by
 * hb_pg_connect, or the URL's): the check goes after a third of it without
 * traffic, and its answer is awaited a fifth of it, at most STORE_PING_MS
 * and STORE_PING_WAIT_MS, so the store is not current before the delivery
 * log, reset after the same timeout, can come back. Under st->mu. */
static void ping_times_locked(lane_t *ln, PGconn *conn) {
    char v[32];
    long long t =
        hb_pg_conn_option(conn, "tcp_user_timeout", v, sizeof(v)) ? strtoll(v, NULL, 10) : 0;
    ln->ping_idle_ms = STORE_PING_MS;
    ln->st->ping_wait_ms = STORE_PING_WAIT_MS;
    ln->ping_give_up_ms = t > 0 && t < STORE_PING_GIVE_UP_MS ? t : STORE_PING_GIVE_UP_MS;
    if (t > 0 && t / 3 < ln->ping_idle_ms)
        ln->ping_idle_ms = t / 3 > STORE_PING_MIN_MS ? t / 3 : STORE_PING_MIN_MS;
    if (t > 0 && t / 5 < ln->st->ping_wait_ms)
        ln->st->ping_wait_ms = t / 5 > STORE_PING_WAIT_MIN_MS ? t / 5 : STORE_PING_WAIT_MIN_MS;
}

static void lane_set_conn(lane_t *ln, PGconn *conn) {
    pthread_mutex_lock(&ln->st->mu);
    if (ln->follower && conn && conn != ln->conn)
        ln->st->conn_gen++;
    if (ln->conn && ln->conn != conn)
        PQfinish(ln->conn);
    ln->conn = conn;
    if (ln->follower && conn)
        ln->st->down_why[0] = '\0';
    ln->sock = conn ? PQsocket(conn) : -1;
    ln->connected = conn != NULL;
    ln->ping_since = 0;
    if (ln->follower && conn)
        ping_times_locked(ln, conn);
    pthread_mutex_unlock(&ln->st->mu);
    ln->ping_sent = 0;
    ln->next_ping_ms = hb_mono_ms() + ln->ping_idle_ms;
}

/* Forgets a broken connection; the next attempt is due after the backoff.
 * A request lane's on a server that was read-only when it connected too (a
 * single-host URL, a primary read-only for minutes), or that refused a write
 * again after the last one was dropped so (a server that does not report
 * it): the backoff grows, as for a failed connect, rather than a connection
 * a second. */
static void store_drop(lane_t *ln) {
    int ro = !ln->follower && hb_pg_read_only(ln->conn) != NULL;
    int again = ro && (ln->ro_connected || ln->ro_dropped);
    ln->ro_dropped = ro;
    lane_set_conn(ln, NULL);
    if (!again)
        ln->backoff_ms = STORE_BACKOFF_MIN_MS;
    ln->retry_at_ms = hb_mono_ms() + ln->backoff_ms;
    if (again) {
        /* ... counted from the attempt that made the refused connection,
         * not from the refusal: the request that connected was refused
         * after its connect and its claim took their time (over 250 ms on a
         * loaded machine), and the next periodic request, a second after
         * the one that connected, then came too early and the attempt
         * waited a second more (CI 105: 2, 2, 4, 5 s, not 1, 2, 4, 5) */
        if (ln->attempt_ms + ln->backoff_ms < ln->retry_at_ms)
            ln->retry_at_ms = ln->attempt_ms + ln->backoff_ms;
        ln->backoff_ms =
            ln->backoff_ms * 2 > STORE_BACKOFF_MAX_MS ? STORE_BACKOFF_MAX_MS : ln->backoff_ms * 2;
    }
}

/* After a failed command: is the connection of no more use? Lost; or, for
 * the request lane, whose claims and records write, on a server that turned
 * read-only (a failover: SQLSTATE 25006 on a connection that still
 * answers), so the next request connects again and finds the new primary.
 * The follower only reads, and LISTEN works on a read-only primary: it
 * leaves one only when the URL asked for a primary (hb_pg_left_primary),
 * else a single-host URL would have it reload again and again. */
static int store_unusable(lane_t *ln) {
    if (!ln->conn || PQstatus(ln->conn) == CONNECTION_BAD)
        return 1;
    return ln->follower ? hb_pg_left_primary(ln->conn) != NULL : hb_pg_unusable(ln->conn);
}

/* After a failed command: drop the connection if it is gone, and say why. */
static int store_fail(lane_t *ln, PGresult *res, const char *what, char *errstr,
                      size_t errstr_size) {
    (void)hb_pg_fail(ln->conn, res, what, errstr, errstr_size);
    if (store_unusable(ln))
        store_drop(ln);
    return -1;
}

static int store_ready(lane_t *ln, char *errstr, size_t errstr_size) {
    if (ln->conn)
        return 0;
    hb_seterr(errstr, errstr_size, "database: not connected (reconnecting)");
    return -1;
}

static int store_listen(lane_t *ln, char *errstr, size_t errstr_size) {
    static const char *const channels[] = {"LISTEN hookbridge_subscriptions",
                                           "LISTEN hookbridge_verify", "LISTEN hookbridge_preview",
                                           "LISTEN hookbridge_seal"};
    for (size_t i = 0; i < HB_ARRAY_SIZE(channels); i++) {
        PGresult *res = PQexecParams(ln->conn, channels[i], 0, NULL, NULL, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            return store_fail(ln, res, "LISTEN", errstr, errstr_size);
        PQclear(res);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Sealing (lib/hb_sealer.h)                                                */

/* Seals every plaintext value the SQL functions left in the inbox, so that
 * what the store loads next is sealed. */
static int store_seal(lane_t *ln, char *errstr, size_t errstr_size) {
    int rc;
    ln->seal_due = 0;
    ln->next_seal_ms = hb_mono_ms() + STORE_SWEEP_MS;
    rc = hb_sealer_seal_inbox(ln->conn, ln->st->keyring, errstr, errstr_size);
    if (rc < 0 && store_unusable(ln))
        store_drop(ln);
    return rc;
}

/* Moves values sealed under an older key to the current one. */
static int store_reseal(lane_t *ln, char *errstr, size_t errstr_size) {
    int rc = hb_sealer_reseal(ln->conn, ln->st->keyring, errstr, errstr_size);
    if (rc < 0 && store_unusable(ln))
        store_drop(ln);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */

static size_t note_add(store_note_t **notes, size_t n, size_t *cap, const char *id, int verify);

/* A subscription the full load skipped for a value not sealed yet (another
 * session held its row while this one sealed): the follower loads it again
 * shortly, as one whose change it could not load (store_dispatch), instead
 * of leaving it out until a notification or the sweep. */
static void load_all_unsealed(const char *id, void *arg) {
    lane_t *ln = arg;
    size_t was = ln->unsealed_cnt;
    if (!ln->follower || !hb_snapshot_is_id(id))
        return;
    ln->unsealed_cnt = note_add(&ln->unsealed, ln->unsealed_cnt, &ln->unsealed_cap, id, 0);
    if (ln->unsealed_cnt == was)
        return; /* there already */
    ln->unsealed[ln->unsealed_cnt - 1].since_ms = hb_mono_ms();
    ln->unsealed_wait_ms = STORE_UNSEALED_RETRY_MS;
    ln->unsealed_at_ms = hb_mono_ms() + STORE_UNSEALED_RETRY_MS;
    pthread_mutex_lock(&ln->st->mu);
    ln->st->unloaded_until_ms = hb_mono_ms() + STORE_UNSEALED_KEEP_MS;
    pthread_mutex_unlock(&ln->st->mu);
}

#ifndef HB_SCHEMA_VERSION
#define HB_SCHEMA_VERSION 0 /* built without the Makefile's number: not checked */
#endif

/* Is the database migrated to this release (HB_SCHEMA_VERSION, the number of
 * its newest migration)? A release is written for its own schema: one whose
 * migrations were not applied yet (a migrate Job not run before the rollout,
 * docs/operations.md) loaded its subscriptions and was ready, and a query
 * that needs the newer schema failed later, one request at a time. Refused
 * like a database without the schema: not ready, and tried again at the
 * next connection. A newer database (an older pod during a rollout, a
 * rollback) is fine; so is bookkeeping this role may not read. */
static int schema_current(lane_t *ln, char *errstr, size_t errstr_size) {
    PGresult *res;
    const char *state;
    long applied;
    if (HB_SCHEMA_VERSION <= 0)
        return 0;
    res = PQexecParams(ln->conn,
                       "SELECT coalesce(max(version), 0) FROM hookbridge.hookbridge_migrations", 0,
                       NULL, NULL, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && !strcmp(state, "42501")) { /* insufficient privilege */
            PQclear(res);
            return 0;
        }
        return store_fail(ln, res, "reading the applied migrations", errstr, errstr_size);
    }
    applied = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    if (applied >= HB_SCHEMA_VERSION)
        return 0;
    hb_seterr(errstr, errstr_size,
              "database: this release's migration %04d is not applied (the newest applied is "
              "%04ld)",
              HB_SCHEMA_VERSION, applied);
    return -1;
}

/* Seals what waits, then loads every live subscription into *subs. */
static int load_all(lane_t *ln, hb_sub_t ***subs, size_t *cnt, char *errstr, size_t errstr_size) {
    char why[256];
    *subs = NULL;
    *cnt = 0;
    if (store_ready(ln, errstr, errstr_size) < 0)
        return -1;
    if (schema_current(ln, errstr, errstr_size) < 0)
        return -1;
    /* Seal what waits first, so that what is loaded is complete; a failure
     * here costs only the subscriptions it concerns (they fail closed). */
    if (store_seal(ln, why, sizeof(why)) < 0 || store_reseal(ln, why, sizeof(why)) < 0) {
        if (!ln->conn) {
            hb_seterr(errstr, errstr_size, "%s", why);
            return -1;
        }
        hb_error("sealing secrets: %s", why);
    }
    if (hb_snapshot_load_all(ln->conn, ln->st->keyring, subs, cnt, load_all_unsealed, ln, errstr,
                             errstr_size) < 0) {
        if (PQstatus(ln->conn) == CONNECTION_BAD)
            store_drop(ln);
        return -1;
    }
    return 0;
}

/* Loads one subscription by id; *out = NULL when it does not exist or is
 * deregistered. */
static int load_one(lane_t *ln, const char *id, hb_sub_t **out, char *errstr, size_t errstr_size) {
    int rc;
    char why[256];
    *out = NULL;
    if (store_ready(ln, errstr, errstr_size) < 0)
        return -1;
    rc = hb_snapshot_load_one(ln->conn, ln->st->keyring, id, out, errstr, errstr_size);
    /* A value not sealed yet (secrets_to_seal skipped it while another
     * session held the row, e.g. the verify() whose challenge this load is
     * for): seal what waits now, on this lane, and load it once more. Still
     * not sealed (the row is still held): HB_SNAPSHOT_UNSEALED, and the
     * follower tries again (store_dispatch). */
    if (rc == HB_SNAPSHOT_UNSEALED && PQstatus(ln->conn) == CONNECTION_OK && ln->st->keyring &&
        store_seal(ln, why, sizeof(why)) == 0 && ln->conn)
        rc = hb_snapshot_load_one(ln->conn, ln->st->keyring, id, out, errstr, errstr_size);
    if (rc < 0) {
        if (ln->conn && PQstatus(ln->conn) == CONNECTION_BAD)
            store_drop(ln);
        return rc;
    }
    return 0;
}

/* A full load for the loop (the first, and at a reconnect), queued by
 * follow(). One that fails on a connection still up (a statement timeout,
 * say) drops it, so the next connection reloads: the changes missed while
 * disconnected must not stay missed. */
static store_msg_t *reload(lane_t *ln) {
    store_msg_t *m = msg_new(MSG_RELOAD);
    char why[512];
    pthread_mutex_lock(&ln->st->mu);
    m->gen = ln->st->conn_gen;
    pthread_mutex_unlock(&ln->st->mu);
    if (load_all(ln, &m->subs, &m->subs_cnt, why, sizeof(why)) < 0) {
        msg_fail(m, why);
        if (ln->conn)
            store_drop(ln);
    }
    return m;
}

/* ------------------------------------------------------------------------ */
/* Notifications and reconnection (the follower lane)                       */

/* Adds id to notes[n] unless it is there; returns the new count. */
static size_t note_add(store_note_t **notes, size_t n, size_t *cap, const char *id, int verify) {
    for (size_t i = 0; i < n; i++)
        if ((*notes)[i].verify == verify && !strcmp((*notes)[i].id, id))
            return n;
    if (n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *notes = hb_realloc(*notes, *cap * sizeof(**notes));
    }
    memcpy((*notes)[n].id, id, HB_UUID_LEN + 1);
    (*notes)[n].verify = verify;
    (*notes)[n].since_ms = 0;
    return n + 1;
}

/* Moves libpq's queued notifications into notes[], without duplicates. */
static size_t store_drain(lane_t *ln, store_note_t **notes, size_t *cap) {
    size_t n = 0;
    PGnotify *nf;
    while ((nf = PQnotifies(ln->conn)) != NULL) {
        int verify = !strcmp(nf->relname, "hookbridge_verify")    ? 1
                     : !strcmp(nf->relname, "hookbridge_preview") ? 2
                                                                  : 0;
        if (!strcmp(nf->relname, "hookbridge_seal")) {
            ln->seal_due = 1;
            PQfreemem(nf);
            continue;
        }
        if (!verify && strcmp(nf->relname, "hookbridge_subscriptions")) {
            PQfreemem(nf);
            continue;
        }
        /* A value the last pass left (its subscription was held longer than
         * secrets_to_seal waits, by an operator's open transaction) is sealed
         * when that transaction's change is announced, not at the next sweep. */
        ln->seal_due = 1;
        if (!hb_snapshot_is_id(nf->extra)) {
            hb_log(HB_LOG_WARN, HB_KV("channel", nf->relname),
                   "ignoring a notification whose payload is not a subscription id");
            PQfreemem(nf);
            continue;
        }
        n = note_add(notes, n, cap, nf->extra, verify);
        PQfreemem(nf);
    }
    return n;
}

/* Forgets id from the follower's subscriptions to load again; when it was
 * there, its since_ms (-1: dropped already), else 0. */
static int64_t unsealed_remove(lane_t *ln, const char *id) {
    for (size_t i = 0; i < ln->unsealed_cnt; i++)
        if (!strcmp(ln->unsealed[i].id, id)) {
            int64_t since = ln->unsealed[i].since_ms;
            memmove(&ln->unsealed[i], &ln->unsealed[i + 1],
                    (ln->unsealed_cnt - i - 1) * sizeof(*ln->unsealed));
            ln->unsealed_cnt--;
            return since ? since : 1;
        }
    return 0;
}

/* The changed subscriptions of notes[0..n), STORE_LOAD_MANY to a statement:
 * a bulk change (an UPDATE of thousands of rows, each notified) is loaded in
 * a few round trips, not one each (10,000 took 4.5 s so, while no event was
 * taken). pre[i] is notes[i]'s snapshot, rcs[i] and whys[i] as
 * hb_snapshot_load_many gives them. -1 when a query fails (why). */
#define STORE_LOAD_MANY 500
static int load_notes(lane_t *ln, const store_note_t *notes, size_t n, hb_sub_t **pre, int *rcs,
                      char **whys, char *errstr, size_t errstr_size) {
    const char **ids = hb_malloc((n ? n : 1) * sizeof(*ids));
    size_t *at = hb_malloc((n ? n : 1) * sizeof(*at)), m = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        pre[i] = NULL;
        rcs[i] = 0;
        whys[i] = NULL;
        if (!notes[i].verify) {
            at[m] = i;
            ids[m++] = notes[i].id;
        }
    }
    if (m > 1 && store_ready(ln, errstr, errstr_size) < 0)
        rc = -1;
    for (size_t from = 0; m > 1 && rc == 0 && from < m; from += STORE_LOAD_MANY) {
        size_t k = m - from < STORE_LOAD_MANY ? m - from : STORE_LOAD_MANY;
        hb_sub_t **subs = hb_malloc(k * sizeof(*subs));
        int *r = hb_malloc(k * sizeof(*r));
        char **w = hb_malloc(k * sizeof(*w));
        if (hb_snapshot_load_many(ln->conn, ln->st->keyring, ids + from, k, subs, r, w, errstr,
                                  errstr_size) < 0) {
            /* lost, or the query failed (a statement timeout, say): as
             * with one (store_dispatch), the reconnect's reload covers
             * the changes these notes announced */
            if (ln->conn)
                store_drop(ln);
            rc = -1;
        } else {
            for (size_t j = 0; j < k; j++) {
                pre[at[from + j]] = subs[j];
                rcs[at[from + j]] = r[j];
                whys[at[from + j]] = w[j];
            }
        }
        free(subs);
        free(r);
        free(w);
    }
    free(ids);
    free(at);
    return rc;
}

/* Changes first, then verification requests (which may want the new row).
 * The events are queued together, so the loop applies them in one pass. */
static int store_dispatch(lane_t *ln, const store_note_t *notes, size_t n, msg_queue_t *out,
                          char *errstr, size_t errstr_size) {
    char why[256];
    hb_sub_t **pre = hb_malloc((n ? n : 1) * sizeof(*pre));
    int *rcs = hb_malloc((n ? n : 1) * sizeof(*rcs));
    char **whys = hb_malloc((n ? n : 1) * sizeof(*whys));
    size_t many = 0;
    int result = 0;
    for (size_t i = 0; i < n; i++) {
        many += !notes[i].verify;
        pre[i] = NULL;
        whys[i] = NULL;
    }
    /* more than one: loaded together first (one alone, as always, below) */
    if (many > 1 && load_notes(ln, notes, n, pre, rcs, whys, errstr, errstr_size) < 0) {
        result = -1;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        store_msg_t *m;
        hb_sub_t *sub = NULL;
        int rc;
        if (notes[i].verify)
            continue;
        if (many > 1 && rcs[i] != HB_SNAPSHOT_UNSEALED) {
            /* as load_one would have it; one not sealed yet goes through
             * load_one, which seals what waits and loads it again */
            sub = pre[i];
            pre[i] = NULL;
            rc = rcs[i];
            if (whys[i])
                snprintf(why, sizeof(why), "%s", whys[i]);
        } else {
            rc = load_one(ln, notes[i].id, &sub, why, sizeof(why));
        }
        int64_t since = unsealed_remove(ln, notes[i].id), now = hb_mono_ms();
        if (rc == HB_SNAPSHOT_UNSEALED && ln->conn) {
            /* Its change is committed, but most often another session holds
             * the row (secrets_to_seal skips it: another replica sealing it,
             * a claim): loaded again soon (1 s, then less often), whether or
             * not the holder's commit is notified (a statement that changes
             * nothing, or only a verification's bookkeeping, is not).
             * Meanwhile it keeps the snapshot it had, as if the change came a
             * moment later: dropped, the events read meanwhile would go to
             * it nowhere. Unsealed past STORE_UNSEALED_KEEP_MS (a value lost
             * in a database crash), it fails closed like an unreadable row,
             * so a deactivation is not missed for long. Said once each. */
            ln->unsealed_cnt =
                note_add(&ln->unsealed, ln->unsealed_cnt, &ln->unsealed_cap, notes[i].id, 0);
            ln->unsealed[ln->unsealed_cnt - 1].since_ms = since ? since : now;
            if (!since) {
                ln->unsealed_wait_ms = STORE_UNSEALED_RETRY_MS;
                ln->unsealed_at_ms = now + STORE_UNSEALED_RETRY_MS;
                hb_log(HB_LOG_WARN, HB_KV("subscription_id", notes[i].id),
                       "subscription change not applied until its new values are sealed "
                       "(another session may hold its row; trying again shortly): %s",
                       why);
                continue;
            }
            if (since < 0 || now - since < STORE_UNSEALED_KEEP_MS)
                continue; /* kept; or dropped already (since < 0) */
            ln->unsealed[ln->unsealed_cnt - 1].since_ms = -1;
            hb_log(HB_LOG_ERROR, HB_KV("subscription_id", notes[i].id),
                   "subscription still not sealed after %lld s: deliveries to it stop until it "
                   "is (see hookbridge.secret_status): %s",
                   (long long)((now - since) / 1000), why);
        } else if (rc < 0) {
            if (!ln->conn || rc == -2) {
                /* Lost mid-way, or the query failed (a statement timeout,
                 * say: the row is not known to be bad): the reconnect's
                 * reload covers the rest. */
                if (ln->conn)
                    store_drop(ln);
                hb_seterr(errstr, errstr_size, "%s", why);
                result = -1;
                goto out;
            }
            /* Fail closed: a row we cannot read (only plain SQL past the
             * validating functions can make one) receives nothing, rather
             * than keep an outdated snapshot that may miss a deactivation. */
            hb_log(HB_LOG_ERROR, HB_KV("subscription_id", notes[i].id),
                   "subscription cannot be loaded, deliveries to it stop until it is fixed: %s",
                   why);
        }
        m = msg_new(MSG_CHANGE);
        memcpy(m->id, notes[i].id, sizeof(m->id));
        m->sub = sub;
        queue_push(out, m);
    }
    for (size_t i = 0; i < n; i++) {
        store_msg_t *m;
        if (!notes[i].verify)
            continue;
        m = msg_new(MSG_VERIFY);
        memcpy(m->id, notes[i].id, sizeof(m->id));
        m->preview = notes[i].verify == 2;
        queue_push(out, m);
    }
out:
    for (size_t i = 0; i < n; i++) { /* what a failure left */
        hb_sub_unref(pre[i]);
        free(whys[i]);
    }
    free(pre);
    free(rcs);
    free(whys);
    return result;
}

/* Connects (the follower also LISTENs and reloads). */
static int lane_connect(lane_t *ln, char *errstr, size_t errstr_size) {
    char why[512];
    PGconn *conn;
    ln->attempt_ms = hb_mono_ms();
    conn = hb_pg_connect(ln->st->conninfo, ln->app_name, why, sizeof(why));
    if (conn) {
        lane_set_conn(ln, conn);
        if (!ln->follower || store_listen(ln, why, sizeof(why)) == 0) {
            /* read-only already, or maybe (the last one refused a write):
             * its backoff goes on growing (store_drop) */
            ln->ro_connected = !ln->follower && hb_pg_read_only(conn) != NULL;
            if (!ln->ro_connected && !ln->ro_dropped)
                ln->backoff_ms = STORE_BACKOFF_MIN_MS;
            return 0;
        }
    }
    lane_set_conn(ln, NULL);
    if (ln->follower) {
        pthread_mutex_lock(&ln->st->mu);
        snprintf(ln->st->down_why, sizeof(ln->st->down_why), "%s", why);
        pthread_mutex_unlock(&ln->st->mu);
    }
    ln->retry_at_ms = hb_mono_ms() + ln->backoff_ms;
    hb_seterr(errstr, errstr_size, "%s; next attempt in %lld s", why,
              (long long)(ln->backoff_ms / 1000));
    ln->backoff_ms =
        ln->backoff_ms * 2 > STORE_BACKOFF_MAX_MS ? STORE_BACKOFF_MAX_MS : ln->backoff_ms * 2;
    return -1;
}

/* The follower after its socket turned readable (or a sweep is due, or
 * after a full load, queued first): reads the notifications, seals, loads
 * what changed. The loop does not consume while busy (hb_store_settled), so
 * a change notified before an event was produced is applied before that
 * event is matched.
 *
 * A full load is followed by this in the same busy stretch: PostgreSQL sends
 * a notification that arrives while a statement runs before that
 * statement's answer, so libpq takes it into its queue while the load waits
 * for the answer, and the socket does not turn readable for it. A change
 * committed after the load's snapshot (another replica sealing the values a
 * subscription waits for, at the same start-up) was so left unapplied until
 * the next sweep, a minute later, and the events consumed meanwhile were
 * matched without it. */
/* The follower hands the loop what it has loaded so far (under st->mu). */
static void publish_locked(lane_t *ln, msg_queue_t *events) {
    if (!events->head)
        return;
    if (ln->st->results.tail)
        ln->st->results.tail->next = events->head;
    else
        ln->st->results.head = events->head;
    ln->st->results.tail = events->tail;
    events->head = events->tail = NULL;
}

static void follow(lane_t *ln, store_msg_t *reloaded) {
    store_note_t *notes = NULL;
    size_t cap = 0, n;
    msg_queue_t events = {0};
    char errstr[512];
    const char *ro;
    int retry, published;

    pthread_mutex_lock(&ln->st->mu);
    set_busy_locked(ln);
    pthread_mutex_unlock(&ln->st->mu);
    if (reloaded)
        queue_push(&events, reloaded);
    if (!ln->conn) /* the load failed and dropped it: the reconnect loads */
        goto done;
    if (!PQconsumeInput(ln->conn) || PQstatus(ln->conn) == CONNECTION_BAD) {
        char why[512];
        /* libpq appends to the last command's message: the newest line that
         * is not an indented hint is this failure's. */
        hb_pg_last_line(PQerrorMessage(ln->conn), why, sizeof(why));
        store_drop(ln);
        hb_seterr(errstr, sizeof(errstr), "database: connection lost (%s); reconnecting", why);
        queue_push(&events, msg_new(MSG_ERROR));
        msg_fail(events.tail, errstr);
        goto done;
    }
    if ((ro = hb_pg_left_primary(ln->conn)) != NULL) {
        /* the server turned read-only (a failover) while this connection
         * waited on LISTEN, which works there: changes are made on the new
         * primary, and notified there only. The URL asked for a primary:
         * connect again (libpq skips the old one). */
        hb_seterr(errstr, sizeof(errstr), "database: %s; reconnecting", ro);
        store_drop(ln);
        pthread_mutex_lock(&ln->st->mu);
        ln->st->left_primary++;
        pthread_mutex_unlock(&ln->st->mu);
        queue_push(&events, msg_new(MSG_ERROR));
        msg_fail(events.tail, errstr);
        goto done;
    }
    if (hb_mono_ms() >= ln->next_seal_ms)
        ln->seal_due = 1; /* a sweep: revealable secrets past their window leave the inbox */
    retry = ln->unsealed_cnt && hb_mono_ms() >= ln->unsealed_at_ms;
    /* Loads run queries, and libpq queues notifications that arrive
     * meanwhile without the socket turning readable again: drain until empty. */
    while (ln->conn) {
        n = store_drain(ln, &notes, &cap);
        if (retry) {
            /* those left unsealed: seal, and load them again */
            for (size_t i = 0; i < ln->unsealed_cnt; i++)
                n = note_add(&notes, n, &cap, ln->unsealed[i].id, 0);
            /* every second while the loop waits for one (unloaded_until_ms,
             * written by this thread only), else less and less often */
            ln->unsealed_wait_ms = ln->st->unloaded_until_ms ? STORE_UNSEALED_RETRY_MS
                                   : ln->unsealed_wait_ms * 2 > STORE_UNSEALED_RETRY_MAX_MS
                                       ? STORE_UNSEALED_RETRY_MAX_MS
                                       : ln->unsealed_wait_ms * 2;
            ln->unsealed_at_ms = hb_mono_ms() + ln->unsealed_wait_ms;
            ln->seal_due = 1;
            retry = 0;
        }
        if (ln->seal_due) {
            /* Sealing, and, while this service holds older keys (a key
             * rotation), moving to the current key what is still under one:
             * a replica not yet restarted with the new key seals new values
             * under the old one, and they must move without another start. */
            if (store_seal(ln, errstr, sizeof(errstr)) < 0 ||
                (ln->conn && store_reseal(ln, errstr, sizeof(errstr)) < 0)) {
                if (!ln->conn) {
                    queue_push(&events, msg_new(MSG_ERROR));
                    msg_fail(events.tail, errstr);
                    break;
                }
                hb_error("sealing secrets: %s", errstr);
            }
            if (n == 0)
                continue; /* what sealing notified is drained next round */
        }
        if (n == 0)
            break;
        if (store_dispatch(ln, notes, n, &events, errstr, sizeof(errstr)) < 0) {
            queue_push(&events, msg_new(MSG_ERROR));
            msg_fail(events.tail, errstr);
            break;
        }
        /* The database answered: what this round loaded applies now, not
         * when the changes stop coming (the loop takes no event meanwhile),
         * and the wait counted against STORE_BUSY_WAIT_MS starts again: a
         * slow database under a stream of changes is not one that stopped
         * answering (hb_store_settled let events past changes it had loaded
         * and not handed on: a deactivated subscription received them). */
        pthread_mutex_lock(&ln->st->mu);
        published = events.head != NULL;
        publish_locked(ln, &events);
        ln->busy_since = hb_mono_ms();
        pthread_mutex_unlock(&ln->st->mu);
        if (published)
            pipe_poke(ln->st->notify[1]);
    }
done:
    free(notes);
    ln->next_ping_ms = hb_mono_ms() + ln->ping_idle_ms;
    pthread_mutex_lock(&ln->st->mu);
    published = events.head != NULL;
    publish_locked(ln, &events);
    ln->busy = 0;
    if (!ln->unsealed_cnt)
        ln->st->unloaded_until_ms = 0;
    pthread_mutex_unlock(&ln->st->mu);
    if (published)
        pipe_poke(ln->st->notify[1]);
}

/* A sync the loop asked for (hb_store_sync) waits for the follower's
 * empty query. */
static int sync_asked(hb_store_t *st) {
    int asked;
    pthread_mutex_lock(&st->mu);
    asked = st->sync_want > st->sync_done;
    pthread_mutex_unlock(&st->mu);
    return asked;
}

/* The follower's check of an idle connection (STORE_PING_MS): an empty
 * query, whose answer the lane's poll waits for with the notifications; a
 * connection lost meanwhile is found by follow(), which says so and drops
 * it. An answer that does not come from a server that keeps the connection
 * (stopped, overloaded, a hung proxy in between) holds due retries
 * (hb_store_stale) until ping_give_up_ms, when the connection is dropped
 * and made again (ping_give_up). */
static void ping_send(lane_t *ln) {
    if (PQsendQuery(ln->conn, "") == 1) {
        ln->ping_sent = 1;
        ln->ping_sent_ms = hb_mono_ms();
        pthread_mutex_lock(&ln->st->mu);
        ln->ping_since = hb_mono_ms();
        ln->ping_ticket = ln->st->sync_want; /* every sync asked so far is sent */
        pthread_mutex_unlock(&ln->st->mu);
    } else {
        follow(ln, NULL);
    }
}

/* The follower's check has waited ping_give_up_ms for its answer: the
 * connection is of no more use (what was sent is acknowledged, or
 * tcp_user_timeout would have ended it: the server, or what is in between,
 * keeps it and answers nothing). Dropped, and made again after the backoff,
 * with a full load, as after a connection lost. */
static void ping_give_up(lane_t *ln) {
    char errstr[512];
    hb_seterr(errstr, sizeof(errstr),
              "database: connection lost (the check of the idle connection got no answer in "
              "%lld s: the server, or a proxy in between, keeps the connection and does not "
              "answer); reconnecting",
              (long long)(ln->ping_give_up_ms / 1000));
    store_drop(ln);
    post_error(ln, errstr);
}

/* The follower's socket turned readable while its check waits: the answer,
 * a notification, or the connection's end. Busy from the read on, as in
 * follow(): a notification libpq takes in is no longer shown by the socket. */
static void ping_answer(lane_t *ln) {
    pthread_mutex_lock(&ln->st->mu);
    set_busy_locked(ln);
    pthread_mutex_unlock(&ln->st->mu);
    if (PQconsumeInput(ln->conn) && PQstatus(ln->conn) == CONNECTION_OK) {
        while (ln->ping_sent && !PQisBusy(ln->conn)) {
            PGresult *res = PQgetResult(ln->conn);
            if (!res)
                ln->ping_sent = 0;
            PQclear(res);
        }
        if (ln->ping_sent)
            return; /* the rest of the answer is still to come (busy until it has) */
        pthread_mutex_lock(&ln->st->mu);
        ln->ping_since = 0;
        pthread_mutex_unlock(&ln->st->mu);
    }
    follow(ln, NULL); /* the notifications that came with it; or the loss */
    if (!ln->ping_sent && ln->conn) {
        /* What was notified before the answer is queued (follow): the
         * syncs asked before the query was sent are done. */
        int done;
        pthread_mutex_lock(&ln->st->mu);
        done = ln->ping_ticket > ln->st->sync_done;
        if (done)
            ln->st->sync_done = ln->ping_ticket;
        pthread_mutex_unlock(&ln->st->mu);
        if (done)
            pipe_poke(ln->st->notify[1]);
    }
}

/* ------------------------------------------------------------------------ */
/* Requests (the request lane)                                              */

static char *col_dup(const PGresult *res, int row, int c) {
    return hb_strdup(PQgetisnull(res, row, c) ? "" : PQgetvalue(res, row, c));
}

/* A verification's claim, or a preview's (its subscription and event type
 * too: the subscription is loaded by its id, not by the preview's). */
static int claim_verification(lane_t *ln, store_msg_t *m, char *errstr, size_t errstr_size) {
    char lease[32], sub_id[HB_UUID_LEN + 1];
    const char *params[2] = {m->id, lease};
    PGresult *res;
    snprintf(lease, sizeof(lease), "%lld", m->lease_ms);
    snprintf(sub_id, sizeof(sub_id), "%s", m->id);
    res = PQexecParams(ln->conn,
                       m->preview ? "SELECT claim::text, subscription_id::text, event_type"
                                    " FROM hookbridge.claim_preview($1::uuid,"
                                    " $2::bigint * interval '1 millisecond')"
                                  : "SELECT hookbridge.claim_verification_until($1::uuid,"
                                    " $2::bigint * interval '1 millisecond')",
                       2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(ln, res, m->preview ? "claiming a preview" : "claiming a verification",
                          errstr, errstr_size);
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        snprintf(m->claim, sizeof(m->claim), "%s", PQgetvalue(res, 0, 0));
        if (m->preview) {
            snprintf(sub_id, sizeof(sub_id), "%s", PQgetvalue(res, 0, 1));
            m->reason = hb_strdup(PQgetvalue(res, 0, 2));
        }
    }
    PQclear(res);
    if (!m->claim[0])
        return 0;
    int rc = load_one(ln, sub_id, &m->sub, errstr, errstr_size);
    /* the query worked, the row does not make a snapshot (a secret not
     * sealed, or lost): the subscription's problem, not the database's */
    m->unloadable = (rc == -1 || rc == HB_SNAPSHOT_UNSEALED) && ln->conn;
    return rc;
}

/* A preview, or a verification, not sent, given back
 * (hb_store_release_preview, hb_store_release_verification). */
static int release_preview(lane_t *ln, store_msg_t *m, char *errstr, size_t errstr_size) {
    char after[32];
    const char *params[4] = {m->id, m->claim, m->reason, after};
    PGresult *res;
    static const char *const sql[2][2] = {
        {"SELECT hookbridge.release_verification($1::uuid, $2::timestamptz, $3::text,"
         " $4::bigint * interval '1 millisecond')",
         "SELECT hookbridge.release_preview($1::uuid, $2::timestamptz, $3::text,"
         " $4::bigint * interval '1 millisecond')"},
        /* handed over: the others are told now, as verify() and preview()
         * tell them, not at their next look (VERIFY_LOOK_MS) */
        {"SELECT r, CASE WHEN r THEN pg_notify('hookbridge_verify', $1::uuid::text) END"
         "  FROM hookbridge.release_verification($1::uuid, $2::timestamptz, $3::text,"
         " $4::bigint * interval '1 millisecond') r",
         "SELECT r, CASE WHEN r THEN pg_notify('hookbridge_preview', $1::uuid::text) END"
         "  FROM hookbridge.release_preview($1::uuid, $2::timestamptz, $3::text,"
         " $4::bigint * interval '1 millisecond') r"}};
    snprintf(after, sizeof(after), "%lld", m->after_ms);
    res = PQexecParams(ln->conn, sql[m->hand_over != 0][m->preview != 0], 4, NULL, params, NULL,
                       NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(ln, res,
                          m->preview ? "giving back a preview" : "giving back a verification",
                          errstr, errstr_size);
    m->cnt = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

static int record_verification(lane_t *ln, store_msg_t *m, char *errstr, size_t errstr_size) {
    const char *params[5] = {m->id, m->ok ? "true" : "false", m->ok ? NULL : m->reason, m->url,
                             m->claim};
    const char *deferred[4] = {m->id, m->reason, m->url, m->claim};
    char status[16], duration[32];
    const char *outcome[8] = {m->id,       m->claim, status,   m->reason,
                              m->response, duration, m->ctype, m->body};
    PGresult *res;
    if (m->release)
        return release_preview(ln, m, errstr, errstr_size);
    snprintf(status, sizeof(status), "%d", m->ok);
    snprintf(duration, sizeof(duration), "%lld", m->after_ms);
    res = m->preview  ? PQexecParams(ln->conn,
                                     "SELECT hookbridge.record_preview($1::uuid, $2::timestamptz,"
                                      " $3::integer, $4::text, $5::text, $6::integer, $7::text,"
                                      " $8::text)",
                                     8, NULL, outcome, NULL, NULL, 0)
          : m->ok < 0 ? PQexecParams(ln->conn,
                                     "SELECT hookbridge.defer_verification($1::uuid, $2::text,"
                                     " $3::text, $4::timestamptz)",
                                     4, NULL, deferred, NULL, NULL, 0)
                      : PQexecParams(ln->conn,
                                     "SELECT hookbridge.record_verification($1::uuid, $2::boolean,"
                                     " $3::text, $4::text, $5::timestamptz)",
                                     5, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(ln, res, m->preview ? "recording a preview" : "recording a verification",
                          errstr, errstr_size);
    m->cnt = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return 0;
}

/* The claimable verifications, or previews: the oldest 100, a dispatcher
 * sending a few at a time and looking again as each finishes. */
static int pending_verifications(lane_t *ln, store_msg_t *m, char *errstr, size_t errstr_size) {
    PGresult *res =
        PQexecParams(ln->conn,
                     m->preview ? "SELECT p.id::text FROM hookbridge.previews p"
                                  " WHERE p.status = 'pending'"
                                  "   AND (p.claimed_until IS NULL OR p.claimed_until <= now())"
                                  " ORDER BY p.requested_at LIMIT 100"
                                : "SELECT s.id::text FROM hookbridge.subscriptions s"
                                  " WHERE s.verification_requested_at IS NOT NULL"
                                  "   AND s.deregistered_at IS NULL"
                                  "   AND (s.verification_claimed_until IS NULL"
                                  "        OR s.verification_claimed_until <= now())"
                                  " ORDER BY s.verification_requested_at",
                     0, NULL, NULL, NULL, NULL, 0);
    int n;
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(ln, res, "listing pending verifications", errstr, errstr_size);
    n = PQntuples(res);
    m->ids = hb_calloc((size_t)n + 1, sizeof(char *));
    for (int i = 0; i < n; i++)
        m->ids[i] = hb_strdup(PQgetvalue(res, i, 0));
    m->cnt = n;
    PQclear(res);
    return 0;
}

static int claim_replays(lane_t *ln, store_msg_t *m, char *errstr, size_t errstr_size) {
    char limit[16];
    const char *params[1] = {limit};
    PGresult *res;
    int n;
    snprintf(limit, sizeof(limit), "%d", m->max);
    res = PQexecParams(ln->conn,
                       "SELECT delivery_id, subscription_id, event_ids, event_type, content_type,"
                       "       body, attempts,"
                       "       (extract(epoch FROM replay_requested_at) * 1000)::bigint"
                       "  FROM hookbridge.claim_replays($1::int)",
                       1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(ln, res, "claiming replays", errstr, errstr_size);
    n = PQntuples(res);
    m->replays = hb_calloc((size_t)n + 1, sizeof(*m->replays));
    for (int i = 0; i < n; i++) {
        hb_replay_t *r = &m->replays[i];
        long long ll = 0;
        r->delivery_id = col_dup(res, i, 0);
        r->subscription_id = col_dup(res, i, 1);
        r->event_ids = col_dup(res, i, 2);
        r->event_type = col_dup(res, i, 3);
        r->content_type = col_dup(res, i, 4);
        r->body_len = (size_t)PQgetlength(res, i, 5);
        r->body = hb_strndup(PQgetvalue(res, i, 5), r->body_len);
        ll = strtoll(PQgetvalue(res, i, 6), NULL, 10);
        r->attempts = ll > 0 && ll <= 1000000 ? (int)ll : 0;
        r->requested_ms = strtoll(PQgetvalue(res, i, 7), NULL, 10);
    }
    m->cnt = n;
    PQclear(res);
    return 0;
}

static int deactivate_failing(lane_t *ln, store_msg_t *m, char *errstr, size_t errstr_size) {
    char after[32];
    const char *params[1] = {after};
    PGresult *res;
    snprintf(after, sizeof(after), "%lld milliseconds", m->after_ms);
    res = PQexecParams(
        ln->conn, "SELECT subscription_id, reason FROM hookbridge.deactivate_failing($1::interval)",
        1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(ln, res, "deactivating failing endpoints", errstr, errstr_size);
    for (int i = 0; i < PQntuples(res); i++)
        hb_log(HB_LOG_WARN, HB_KV("subscription_id", PQgetvalue(res, i, 0)), "%s",
               PQgetvalue(res, i, 1));
    m->cnt = PQntuples(res);
    PQclear(res);
    return 0;
}

static int take_rate_tokens(lane_t *ln, store_msg_t *m, char *errstr, size_t errstr_size) {
    char wanted[16];
    const char *params[2] = {m->id, wanted};
    PGresult *res;
    snprintf(wanted, sizeof(wanted), "%d", m->max);
    res = PQexecParams(
        ln->conn, "SELECT granted, wait_ms FROM hookbridge.take_rate_tokens($1::uuid, $2::int)", 2,
        NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        return store_fail(ln, res, "taking rate-limit tokens", errstr, errstr_size);
    m->cnt = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
    m->after_ms = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    return 0;
}

static int maintain_log(lane_t *ln, store_msg_t *m, char *errstr, size_t errstr_size) {
    PGresult *res =
        PQexecParams(ln->conn, "SELECT action, object FROM hookbridge.maintain_delivery_log()", 0,
                     NULL, NULL, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return store_fail(ln, res, "maintaining the delivery log", errstr, errstr_size);
    for (int i = 0; i < PQntuples(res); i++)
        hb_log(HB_LOG_INFO, HB_KV("action", PQgetvalue(res, i, 0)),
               "delivery log maintenance: %s %s", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
    m->cnt = PQntuples(res);
    PQclear(res);
    return 0;
}

/* Answers one request (on the lane's connection, reconnecting when due). */
static void answer(lane_t *ln, store_msg_t *m) {
    char errstr[512];
    long long left;
    int rc;
    pthread_mutex_lock(&ln->st->mu);
    set_busy_locked(ln);
    left = ln->st->left_primary;
    pthread_mutex_unlock(&ln->st->mu);
    if (ln->conn && left != ln->left_seen) {
        /* the follower found the server read-only (a failover): this
         * connection, to the same server, would read what the new primary
         * no longer has and fail every write */
        hb_debug("database: the server is no longer the primary; this lane reconnects");
        lane_set_conn(ln, NULL);
        ln->retry_at_ms = 0;
    }
    ln->left_seen = left;
    if (hb_pg_idle_closed(ln->conn, errstr, sizeof(errstr))) {
        /* ended while idle (idle_session_timeout, a firewall): the request
         * goes on a new connection, rather than fail (a verification
         * waiting for the next look, a warn, a database error counted) */
        hb_info("database: the server closed an idle connection (%s); reconnecting", errstr);
        lane_set_conn(ln, NULL);
        ln->retry_at_ms = 0;
    }
    if (!ln->conn && hb_mono_ms() + STORE_RETRY_EARLY_MS >= ln->retry_at_ms &&
        lane_connect(ln, errstr, sizeof(errstr)) < 0) {
        msg_fail(m, errstr);
        post(ln, m);
        return;
    }
    if (store_ready(ln, errstr, sizeof(errstr)) < 0) {
        msg_fail(m, errstr);
        post(ln, m);
        return;
    }
    switch (m->kind) {
    case MSG_CLAIM_VERIFY: rc = claim_verification(ln, m, errstr, sizeof(errstr)); break;
    case MSG_RECORD_VERIFY: rc = record_verification(ln, m, errstr, sizeof(errstr)); break;
    case MSG_PENDING_VERIFY: rc = pending_verifications(ln, m, errstr, sizeof(errstr)); break;
    case MSG_REPLAYS: rc = claim_replays(ln, m, errstr, sizeof(errstr)); break;
    case MSG_TOKENS: rc = take_rate_tokens(ln, m, errstr, sizeof(errstr)); break;
    case MSG_MAINTAIN: rc = maintain_log(ln, m, errstr, sizeof(errstr)); break;
    default: rc = deactivate_failing(ln, m, errstr, sizeof(errstr)); break;
    }
    if (rc < 0)
        msg_fail(m, errstr);
    else
        ln->ro_dropped = 0; /* answered: a later refusal starts the backoff afresh */
    post(ln, m);
}

/* ------------------------------------------------------------------------ */
/* The lanes' threads                                                       */

static void lane_loop(lane_t *ln);

static void *lane_main(void *arg) {
    lane_t *ln = arg;
    int i = (int)(ln - ln->st->lanes);
    char name[16]; /* what top -H, ps -L and gdb show */
    if (i == LANE_FOLLOWER)
        snprintf(name, sizeof(name), "hb-db-follow");
    else if (i == LANE_REQUESTS)
        snprintf(name, sizeof(name), "hb-db-requests");
    else
        snprintf(name, sizeof(name), "hb-db-verify%c", (char)('1' + (i - LANE_VERIFY) % 9));
    (void)pthread_setname_np(pthread_self(), name);
    lane_loop(ln);
    pthread_mutex_lock(&ln->st->mu);
    ln->exited = 1;
    pthread_cond_broadcast(&ln->st->exited_cv);
    pthread_mutex_unlock(&ln->st->mu);
    return NULL;
}

static void lane_loop(lane_t *ln) {
    hb_store_t *st = ln->st;
    char errstr[512];

    for (;;) {
        struct pollfd pfd[2];
        int64_t now = hb_mono_ms(), wait_ms = 60000;
        store_msg_t *m;
        int stop, nfds = 1;

        pthread_mutex_lock(&st->mu);
        stop = st->stop;
        m = queue_pop(&ln->urgent);
        if (!m)
            m = queue_pop(&ln->reqs);
        pthread_mutex_unlock(&st->mu);
        if (stop) {
            msg_free(m);
            break;
        }
        if (m) {
            answer(ln, m);
            continue;
        }
        if (ln->follower && ln->first_load) {
            ln->first_load = 0;
            follow(ln, reload(ln)); /* one that fails drops the connection: the reconnect loads */
            continue;
        }
        if (ln->follower && !ln->conn && now >= ln->retry_at_ms) {
            if (lane_connect(ln, errstr, sizeof(errstr)) < 0) {
                post_error(ln, errstr);
            } else {
                /* Changes made while disconnected come with the reload: the
                 * loop takes no event until it has it. */
                pthread_mutex_lock(&st->mu);
                set_busy_locked(ln);
                pthread_mutex_unlock(&st->mu);
                hb_info("database: reconnected; reloading subscriptions");
                follow(ln, reload(ln));
                continue;
            }
        }
        if (ln->follower && ln->conn && !ln->ping_sent &&
            (now >= ln->next_seal_ms || (ln->unsealed_cnt && now >= ln->unsealed_at_ms))) {
            follow(ln, NULL);
            continue;
        }
        if (ln->follower && ln->conn && !ln->ping_sent &&
            (now >= ln->next_ping_ms ||
             (sync_asked(st) && now >= ln->ping_sent_ms + STORE_SYNC_GAP_MS))) {
            ping_send(ln);
            continue;
        }
        if (ln->follower && ln->conn && ln->ping_sent &&
            now - ln->ping_sent_ms >= ln->ping_give_up_ms) {
            ping_give_up(ln);
            continue;
        }
        pfd[0].fd = ln->wake[0];
        pfd[0].events = POLLIN;
        if (ln->follower && ln->conn) {
            pfd[1].fd = PQsocket(ln->conn);
            pfd[1].events = POLLIN;
            nfds = 2;
            if (!ln->ping_sent) { /* else nothing is sent before its answer */
                wait_ms = ln->next_seal_ms - now;
                if (ln->unsealed_cnt && ln->unsealed_at_ms - now < wait_ms)
                    wait_ms = ln->unsealed_at_ms - now;
                if (ln->next_ping_ms - now < wait_ms)
                    wait_ms = ln->next_ping_ms - now;
                if (sync_asked(st) && ln->ping_sent_ms + STORE_SYNC_GAP_MS - now < wait_ms)
                    wait_ms = ln->ping_sent_ms + STORE_SYNC_GAP_MS - now + 1; /* not 0: no spin */
            } else {
                wait_ms = ln->ping_sent_ms + ln->ping_give_up_ms - now;
            }
        } else if (ln->follower) {
            wait_ms = ln->retry_at_ms - now;
        }
        if (wait_ms < 0)
            wait_ms = 0;
        if (poll(pfd, (nfds_t)nfds, (int)wait_ms) < 0 && errno != EINTR)
            break;
        if (pfd[0].revents)
            pipe_drain(ln->wake[0]);
        if (nfds == 2 && pfd[1].revents) {
            if (ln->ping_sent)
                ping_answer(ln);
            else
                follow(ln, NULL);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* The loop's side                                                          */

hb_store_t *hb_store_new(const char *conninfo, const hb_keyring_t *keyring, int verifies,
                         char *errstr, size_t errstr_size) {
    hb_store_t *st = hb_calloc(1, sizeof(*st));
    lane_t *fl = &st->lanes[LANE_FOLLOWER];
    PGconn *conn;

    st->conninfo = hb_strdup(conninfo ? conninfo : "");
    st->keyring = keyring;
    st->verify_lanes = verifies ? STORE_VERIFY_LANES : 0;
    st->notify[0] = st->notify[1] = -1;
    st->ping_wait_ms = STORE_PING_WAIT_MS;
    pthread_mutex_init(&st->mu, NULL);
    hb_cond_init_mono(&st->exited_cv);
    for (int i = 0; i < STORE_LANES; i++) {
        lane_t *ln = &st->lanes[i];
        ln->st = st;
        ln->follower = i == LANE_FOLLOWER;
        ln->ping_idle_ms = STORE_PING_MS;
        ln->ping_give_up_ms = STORE_PING_GIVE_UP_MS;
        ln->app_name = "hookbridge";
        ln->sock = -1;
        ln->wake[0] = ln->wake[1] = -1;
        ln->backoff_ms = STORE_BACKOFF_MIN_MS;
    }
    /* Start-up, before the lanes run: connect and LISTEN on the caller's
     * thread (bounded by connect_timeout), so that an unreachable database
     * is said at once. The first full load is the follower's, on its own
     * thread, as after a reconnect (on_reload): sealing and loading wait
     * for whatever the database waits for (a lock on the subscriptions, a
     * server that stopped answering), and the loop must go on turning
     * meanwhile, or /healthz would call it stalled and the pod be
     * restarted, again and again, for a database that is merely slow. */
    conn = hb_pg_connect(st->conninfo, fl->app_name, errstr, errstr_size);
    if (!conn)
        goto fail;
    lane_set_conn(fl, conn);
    if (store_listen(fl, errstr, errstr_size) < 0)
        goto fail;
    st->snapshot_err = hb_strdup("database: the first load of the subscriptions is under way");
    fl->first_load = 1;
    fl->busy = 1; /* no event is taken before it (hb_store_settled) */
    fl->busy_since = hb_mono_ms();
    if (pipe_open(st->notify) < 0) {
        hb_seterr(errstr, errstr_size, "pipe: %s", strerror(errno));
        goto fail;
    }
    for (int i = 0; i < LANE_VERIFY + st->verify_lanes; i++) { /* the rest stay unstarted */
        lane_t *ln = &st->lanes[i];
        if (pipe_open(ln->wake) < 0) {
            hb_seterr(errstr, errstr_size, "pipe: %s", strerror(errno));
            goto fail;
        }
        if (pthread_create(&ln->thread, NULL, lane_main, ln) != 0) {
            hb_seterr(errstr, errstr_size, "cannot start the database thread");
            goto fail;
        }
        ln->started = 1;
    }
    return st;
fail:
    hb_store_free(st);
    return NULL;
}

static void *cancel_main(void *arg) {
    char why[256];
    (void)PQcancel(arg, why, (int)sizeof(why));
    PQfreeCancel(arg);
    return NULL;
}

/* Asks the server to cancel the statement a lane waits for (a stop must not
 * wait for a slow database), from a thread of its own: a server that
 * accepts the request but never answers holds PQcancel too. */
static void lane_cancel(lane_t *ln) {
    PGcancel *c = NULL;
    pthread_t t;
    pthread_mutex_lock(&ln->st->mu);
    if (ln->started && ln->busy && ln->conn)
        c = PQgetCancel(ln->conn);
    pthread_mutex_unlock(&ln->st->mu);
    if (c) {
        if (pthread_create(&t, NULL, cancel_main, c) == 0)
            pthread_detach(t);
        else
            PQfreeCancel(c);
    }
}

void hb_store_free(hb_store_t *st) {
    hb_store_free_within(st, -1);
}

void hb_store_free_within(hb_store_t *st, long long wait_ms) {
    int64_t until = wait_ms >= 0 ? hb_mono_ms() + wait_ms : INT64_MAX;
    int stuck = 0;
    if (!st)
        return;
    pthread_mutex_lock(&st->mu);
    st->stop = 1;
    pthread_mutex_unlock(&st->mu);
    for (int i = 0; i < STORE_LANES; i++)
        lane_cancel(&st->lanes[i]);
    for (int i = 0; i < STORE_LANES; i++)
        if (st->lanes[i].started)
            pipe_poke(st->lanes[i].wake[1]);
    /* A lane waits for its statement's answer; one that does not come
     * (cancel included) leaves the lane's thread, and st with it, to wait
     * on while the process goes on stopping. */
    pthread_mutex_lock(&st->mu);
    for (int i = 0; i < STORE_LANES; i++)
        while (st->lanes[i].started && !st->lanes[i].exited && hb_mono_ms() < until)
            hb_cond_wait_until(&st->exited_cv, &st->mu, until);
    for (int i = 0; i < STORE_LANES; i++)
        stuck |= st->lanes[i].started && !st->lanes[i].exited;
    pthread_mutex_unlock(&st->mu);
    if (stuck) {
        hb_warn("database: a statement got no answer within %lld ms of the stop; stopping "
                "without it",
                wait_ms);
        for (int i = 0; i < STORE_LANES; i++)
            if (st->lanes[i].started)
                pthread_detach(st->lanes[i].thread);
        return;
    }
    for (int i = 0; i < STORE_LANES; i++) {
        lane_t *ln = &st->lanes[i];
        if (ln->started)
            pthread_join(ln->thread, NULL);
        lane_set_conn(ln, NULL);
        queue_free(&ln->reqs);
        queue_free(&ln->urgent);
        free(ln->unsealed);
        for (int j = 0; j < 2; j++)
            if (ln->wake[j] >= 0)
                close(ln->wake[j]);
    }
    queue_free(&st->results);
    for (int j = 0; j < 2; j++)
        if (st->notify[j] >= 0)
            close(st->notify[j]);
    subs_free(st->snapshot, st->snapshot_cnt);
    free(st->snapshot_err);
    pthread_cond_destroy(&st->exited_cv);
    pthread_mutex_destroy(&st->mu);
    OPENSSL_cleanse(st->conninfo, strlen(st->conninfo));
    free(st->conninfo);
    free(st);
}

int hb_store_fd(hb_store_t *st) {
    return st->notify[0];
}

int hb_store_connected(hb_store_t *st) {
    int c;
    pthread_mutex_lock(&st->mu);
    c = st->lanes[LANE_FOLLOWER].connected;
    pthread_mutex_unlock(&st->mu);
    return c;
}

void hb_store_down_why(hb_store_t *st, char *out, size_t outsz) {
    pthread_mutex_lock(&st->mu);
    snprintf(out, outsz, "%s", st->down_why);
    pthread_mutex_unlock(&st->mu);
}

const char *hb_store_stale(hb_store_t *st) {
    lane_t *fl = &st->lanes[LANE_FOLLOWER];
    int64_t now = hb_mono_ms();
    const char *why = NULL;
    pthread_mutex_lock(&st->mu);
    if (!fl->connected)
        why = "the connection to the database is lost";
    else if (st->loaded_gen != st->conn_gen)
        why = "the subscriptions are being loaded again on a new connection";
    else if (st->unloaded_until_ms && now < st->unloaded_until_ms)
        why = "a subscription with a value not sealed yet waits to be loaded";
    else if (fl->busy && now - fl->busy_since >= STORE_BUSY_WAIT_MS)
        why = "a subscription change has waited 10 s or more for the database (a lock on "
              "hookbridge.subscriptions, or a slow database)";
    else if (fl->ping_since && now - fl->ping_since >= st->ping_wait_ms)
        why = "the check of the idle connection to the database is not answered (the "
              "database may have gone silent)";
    pthread_mutex_unlock(&st->mu);
    return why;
}

int hb_store_current(hb_store_t *st) {
    return hb_store_stale(st) == NULL;
}

int hb_store_pending(hb_store_t *st) {
    return st->pending - st->pending_claims;
}

int hb_store_settled(hb_store_t *st) {
    lane_t *fl = &st->lanes[LANE_FOLLOWER];
    int settled, stuck, busy;
    int64_t now = hb_mono_ms(), waited;
    pthread_mutex_lock(&st->mu);
    busy = fl->busy;
    waited = now - fl->busy_since;
    stuck = busy && waited >= STORE_BUSY_WAIT_MS;
    settled = !st->results.head && (!busy || stuck) &&
              (!st->unloaded_until_ms || now >= st->unloaded_until_ms);
    if (settled && fl->sock >= 0) {
        /* bytes the follower has not read yet may be a notification */
        struct pollfd pfd = {.fd = fl->sock, .events = POLLIN};
        settled = poll(&pfd, 1, 0) <= 0;
    }
    pthread_mutex_unlock(&st->mu);
    if (stuck && !st->stuck_said) {
        st->stuck_said = 1;
        hb_warn("database: no answer to the subscription store for %lld s; events are matched "
                "against the subscriptions in memory until it answers (a change notified "
                "meanwhile applies then)",
                (long long)(waited / 1000));
    } else if (!busy && st->stuck_said) {
        st->stuck_said = 0;
        hb_info("database: the subscription store has its answer again");
    }
    return settled;
}

unsigned long long hb_store_next_sync(hb_store_t *st) {
    unsigned long long next;
    pthread_mutex_lock(&st->mu);
    next = st->sync_want + 1;
    pthread_mutex_unlock(&st->mu);
    return next;
}

unsigned long long hb_store_sync(hb_store_t *st) {
    unsigned long long ticket;
    int idle;
    pthread_mutex_lock(&st->mu);
    idle = st->sync_want == st->sync_done; /* else the follower asks again after its answer */
    ticket = ++st->sync_want;
    pthread_mutex_unlock(&st->mu);
    if (idle)
        pipe_poke(st->lanes[LANE_FOLLOWER].wake[1]);
    return ticket;
}

unsigned long long hb_store_synced(hb_store_t *st, int64_t asked_ms, unsigned long long *answered) {
    unsigned long long done;
    lane_t *fl = &st->lanes[LANE_FOLLOWER];
    int64_t now = hb_mono_ms();
    pthread_mutex_lock(&st->mu);
    done = *answered = st->sync_done;
    if (fl->sock < 0 || now - asked_ms >= STORE_SYNC_WAIT_MS ||
        /* a database that answers nothing costs the first batch the wait,
         * not every batch until it answers again */
        (fl->ping_since && now - fl->ping_since >= STORE_SYNC_WAIT_MS) ||
        (fl->busy && now - fl->busy_since >= STORE_SYNC_WAIT_MS)) /* a load waits */
        done = st->sync_want;
    pthread_mutex_unlock(&st->mu);
    return done;
}

int hb_store_load_all(hb_store_t *st, void (*cb)(hb_sub_t *sub, void *opaque), void *opaque,
                      char *errstr, size_t errstr_size) {
    if (!st->snapshot) {
        hb_seterr(errstr, errstr_size, "%s",
                  st->snapshot_err ? st->snapshot_err : "database: no snapshot loaded");
        return -1;
    }
    for (size_t i = 0; i < st->snapshot_cnt; i++)
        cb(st->snapshot[i], opaque);
    free(st->snapshot);
    st->snapshot = NULL;
    st->snapshot_cnt = 0;
    return 0;
}

/* Runs an answered request's callback, or applies an event. */
static void deliver(hb_store_t *st, store_msg_t *m, const hb_store_handlers_t *h, void *opaque) {
    switch (m->kind) {
    case MSG_CHANGE:
        if (h && h->on_change)
            h->on_change(m->id, m->sub, opaque);
        else
            hb_sub_unref(m->sub);
        m->sub = NULL; /* the handler's */
        break;
    case MSG_VERIFY:
        if (h && (m->preview ? h->on_preview : h->on_verify))
            (m->preview ? h->on_preview : h->on_verify)(m->id, opaque);
        break;
    case MSG_RELOAD:
        subs_free(st->snapshot, st->snapshot_cnt);
        free(st->snapshot_err);
        st->snapshot = m->subs;
        st->snapshot_cnt = m->subs_cnt;
        st->snapshot_err = m->err;
        if (!m->err) {
            pthread_mutex_lock(&st->mu);
            st->loaded_gen = m->gen;
            pthread_mutex_unlock(&st->mu);
        }
        m->subs = NULL;
        m->subs_cnt = 0;
        m->err = NULL;
        if (h && h->on_reload)
            h->on_reload(opaque);
        break;
    case MSG_CLAIM_VERIFY:
        if (m->preview)
            m->cb.preview(m->id, m->sub, m->reason, m->sub || m->unloadable ? m->claim : NULL,
                          m->err, m->opaque);
        else
            m->cb.claim(m->id, m->sub, m->sub || m->unloadable ? m->claim : NULL, m->err,
                        m->opaque);
        m->sub = NULL;
        break;
    case MSG_RECORD_VERIFY: m->cb.recorded(m->id, !m->err && m->cnt, m->err, m->opaque); break;
    case MSG_PENDING_VERIFY: m->cb.ids(m->ids, m->err ? 0 : m->cnt, m->err, m->opaque); break;
    case MSG_REPLAYS: m->cb.replays(m->replays, m->err ? 0 : m->cnt, m->err, m->opaque); break;
    case MSG_SWEEP:
    case MSG_MAINTAIN: m->cb.count(m->err ? 0 : m->cnt, m->err, m->opaque); break;
    case MSG_TOKENS:
        m->cb.tokens(m->id, m->err ? -1 : m->cnt, m->err ? 0 : m->after_ms, m->err, m->opaque);
        break;
    default: break;
    }
}

int hb_store_process(hb_store_t *st, const hb_store_handlers_t *h, void *opaque, char *errstr,
                     size_t errstr_size) {
    store_msg_t *m;
    int rc = 0;
    pipe_drain(st->notify[0]);
    for (;;) {
        pthread_mutex_lock(&st->mu);
        m = queue_pop(&st->results);
        pthread_mutex_unlock(&st->mu);
        if (!m)
            break;
        if (m->kind == MSG_ERROR) {
            /* one per call, so each is counted; the rest wait for the next */
            hb_seterr(errstr, errstr_size, "%s", m->err);
            msg_free(m);
            rc = -1;
            pipe_poke(st->notify[1]);
            break;
        }
        if (m->kind < MSG_CHANGE)
            st->pending--;
        if (m->kind == MSG_CLAIM_VERIFY)
            st->pending_claims--;
        deliver(st, m, h, opaque);
        msg_free(m);
    }
    return rc;
}

/* Queues m for its lane: a verification's claim or outcome for the
 * verification lane of its subscription, anything else for the request lane. */
static void request(hb_store_t *st, store_msg_t *m) {
    lane_t *ln = &st->lanes[LANE_REQUESTS];
    if ((m->kind == MSG_CLAIM_VERIFY || m->kind == MSG_RECORD_VERIFY) && st->verify_lanes) {
        unsigned h = 0;
        for (const char *p = m->id; *p; p++)
            h = h * 31u + (unsigned char)*p;
        ln = &st->lanes[LANE_VERIFY + (int)(h % (unsigned)st->verify_lanes)];
    }
    st->pending++;
    st->pending_claims += m->kind == MSG_CLAIM_VERIFY;
    pthread_mutex_lock(&st->mu);
    queue_push(m->kind == MSG_TOKENS ? &ln->urgent : &ln->reqs, m);
    pthread_mutex_unlock(&st->mu);
    pipe_poke(ln->wake[1]);
}

/* Asks for a claim of the verification or the preview `id`; -1 when it is
 * not an id. */
static int claim_ask(hb_store_t *st, const char *id, long long lease_ms, int preview,
                     hb_store_cb_t cb, void *opaque, char *errstr, size_t errstr_size) {
    store_msg_t *m;
    if (!hb_snapshot_is_id(id)) {
        hb_seterr(errstr, errstr_size, "not a %s id", preview ? "preview" : "subscription");
        return -1;
    }
    m = msg_new(MSG_CLAIM_VERIFY);
    memcpy(m->id, id, sizeof(m->id));
    m->preview = preview;
    m->lease_ms = lease_ms;
    m->cb = cb;
    m->opaque = opaque;
    request(st, m);
    return 0;
}

/* An outcome of `id` to record under `claim` (NULL: either is wrong). */
static store_msg_t *record_msg(const char *id, const char *claim, int preview, void *opaque,
                               char *errstr, size_t errstr_size) {
    store_msg_t *m;
    if (!hb_snapshot_is_id(id)) {
        hb_seterr(errstr, errstr_size, "not a %s id", preview ? "preview" : "subscription");
        return NULL;
    }
    if (!claim || !claim[0] || strlen(claim) >= HB_CLAIM_LEN) {
        hb_seterr(errstr, errstr_size, "no claim to record the outcome under");
        return NULL;
    }
    m = msg_new(MSG_RECORD_VERIFY);
    memcpy(m->id, id, sizeof(m->id));
    snprintf(m->claim, sizeof(m->claim), "%s", claim);
    m->preview = preview;
    m->opaque = opaque;
    return m;
}

static void pending_ask(hb_store_t *st, int preview, hb_store_ids_cb *cb, void *opaque) {
    store_msg_t *m = msg_new(MSG_PENDING_VERIFY);
    m->preview = preview;
    m->cb.ids = cb;
    m->opaque = opaque;
    request(st, m);
}

int hb_store_claim_verification(hb_store_t *st, const char *id, long long lease_ms,
                                hb_store_claim_cb *cb, void *opaque, char *errstr,
                                size_t errstr_size) {
    return claim_ask(st, id, lease_ms, 0, (hb_store_cb_t){.claim = cb}, opaque, errstr,
                     errstr_size);
}

int hb_store_record_verification(hb_store_t *st, const char *id, const char *url, const char *claim,
                                 int ok, const char *reason, hb_store_recorded_cb *cb, void *opaque,
                                 char *errstr, size_t errstr_size) {
    store_msg_t *m = record_msg(id, claim, 0, opaque, errstr, errstr_size);
    if (!m)
        return -1;
    m->url = url ? hb_strdup(url) : NULL;
    m->reason = reason ? hb_strdup(reason) : NULL;
    m->ok = ok;
    m->cb.recorded = cb;
    request(st, m);
    return 0;
}

void hb_store_pending_verifications(hb_store_t *st, hb_store_ids_cb *cb, void *opaque) {
    pending_ask(st, 0, cb, opaque);
}

int hb_store_claim_preview(hb_store_t *st, const char *id, long long lease_ms,
                           hb_store_preview_cb *cb, void *opaque, char *errstr,
                           size_t errstr_size) {
    return claim_ask(st, id, lease_ms, 1, (hb_store_cb_t){.preview = cb}, opaque, errstr,
                     errstr_size);
}

int hb_store_record_preview(hb_store_t *st, const char *id, const char *claim,
                            const hb_preview_outcome_t *o, hb_store_recorded_cb *cb, void *opaque,
                            char *errstr, size_t errstr_size) {
    store_msg_t *m = record_msg(id, claim, 1, opaque, errstr, errstr_size);
    if (!m)
        return -1;
    m->ok = o->http_status;
    m->reason = o->error && *o->error ? hb_strdup(o->error) : NULL;
    m->response = o->response ? hb_strdup(o->response) : NULL;
    m->body = o->body ? hb_strdup(o->body) : NULL;
    m->ctype = o->content_type ? hb_strdup(o->content_type) : NULL;
    m->after_ms = o->duration_ms;
    m->cb.recorded = cb;
    request(st, m);
    return 0;
}

static int release_ask(hb_store_t *st, int preview, const char *id, const char *claim,
                       const char *why, long long after_ms, hb_store_recorded_cb *cb, void *opaque,
                       char *errstr, size_t errstr_size) {
    store_msg_t *m = record_msg(id, claim, preview, opaque, errstr, errstr_size);
    if (!m)
        return -1;
    m->release = 1;
    m->hand_over = after_ms < 0;
    m->reason = why && *why ? hb_strdup(why) : NULL;
    m->after_ms = after_ms > 0 ? after_ms : 0;
    m->cb.recorded = cb;
    request(st, m);
    return 0;
}

int hb_store_release_preview(hb_store_t *st, const char *id, const char *claim, const char *why,
                             long long after_ms, hb_store_recorded_cb *cb, void *opaque,
                             char *errstr, size_t errstr_size) {
    return release_ask(st, 1, id, claim, why, after_ms, cb, opaque, errstr, errstr_size);
}

int hb_store_release_verification(hb_store_t *st, const char *id, const char *claim,
                                  const char *why, long long after_ms, hb_store_recorded_cb *cb,
                                  void *opaque, char *errstr, size_t errstr_size) {
    return release_ask(st, 0, id, claim, why, after_ms, cb, opaque, errstr, errstr_size);
}

void hb_store_pending_previews(hb_store_t *st, hb_store_ids_cb *cb, void *opaque) {
    pending_ask(st, 1, cb, opaque);
}

void hb_store_claim_replays(hb_store_t *st, int max, hb_store_replays_cb *cb, void *opaque) {
    store_msg_t *m = msg_new(MSG_REPLAYS);
    m->max = max;
    m->cb.replays = cb;
    m->opaque = opaque;
    request(st, m);
}

void hb_store_replays_free(hb_replay_t *replays, int cnt) {
    for (int i = 0; replays && i < cnt; i++) {
        free(replays[i].delivery_id);
        free(replays[i].subscription_id);
        free(replays[i].event_ids);
        free(replays[i].event_type);
        free(replays[i].content_type);
        free(replays[i].body);
    }
    free(replays);
}

void hb_store_deactivate_failing(hb_store_t *st, long long after_ms, hb_store_count_cb *cb,
                                 void *opaque) {
    store_msg_t *m = msg_new(MSG_SWEEP);
    m->after_ms = after_ms;
    m->cb.count = cb;
    m->opaque = opaque;
    request(st, m);
}

int hb_store_take_rate_tokens(hb_store_t *st, const char *id, int wanted, hb_store_tokens_cb *cb,
                              void *opaque) {
    store_msg_t *m;
    if (!hb_snapshot_is_id(id) || wanted < 0)
        return -1;
    m = msg_new(MSG_TOKENS);
    memcpy(m->id, id, sizeof(m->id));
    m->max = wanted;
    m->cb.tokens = cb;
    m->opaque = opaque;
    request(st, m);
    return 0;
}

void hb_store_maintain_delivery_log(hb_store_t *st, hb_store_count_cb *cb, void *opaque) {
    store_msg_t *m = msg_new(MSG_MAINTAIN);
    m->cb.count = cb;
    m->opaque = opaque;
    request(st, m);
}
