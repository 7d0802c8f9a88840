/*
 * Request deadlines for libmicrohttpd servers (hb_cutoff.h says why).
 *
 * Every connection has a record in a list guarded by `lock`: its socket and
 * the time by which its next request must have arrived whole (0: none, while
 * a request is answered). A watchdog thread looks every 200 ms and shuts
 * down (shutdown(2), both directions) the socket of a connection past its
 * deadline: libmicrohttpd then reads the end of the stream and closes the
 * connection as if the client had. A record leaves the list in
 * libmicrohttpd's CLOSED notification, which it makes before it closes the
 * socket, so the descriptor the watchdog shuts down is always that
 * connection's own, never one the kernel handed out again since.
 *
 * A body's deadline is body_base (limit_ms after its headers were accepted)
 * plus body_bytes * 1000 / min_body_rate ms, recomputed as bytes arrive; a
 * connection once cut gets no deadline again.
 *
 * Room (hb_cutoff_set_room). The list is kept in the order connections began
 * to wait for their next request: a new connection goes to the head, and so
 * does one whose request was answered (hb_cutoff_rearm); the tail has waited
 * longest. When a connection opens with more than `room` open and not cut
 * (itself included), the notify callback walks from the tail to the first
 * that is waiting for a request (not holding one, not receiving an accepted
 * body) and has no bytes unread in its socket (FIONREAD: a client whose
 * request is there but not read yet is served, not cut), and shuts it down
 * as the watchdog would;
 * one that has never had a request answered goes first, so a client's
 * kept-alive connection (Okta's, Prometheus's) is closed only when every
 * other waiting connection has had a request answered too. It closes as many
 * as it takes to be within `room` again, or as many as it may.
 * So connections that send nothing, or half a request, cost each other their
 * place, and never the newest: a probe or a delivery that sends its request
 * at once is read, however many such connections there are.
 */
#include "hb_cutoff.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "hb_common.h"
#include "hb_log.h"
#include "hb_metrics.h"

#define HB_CUTOFF_TICK_MS 200
/* Connections closed to make room are said at most this often (a client
 * flooding the port has some closed every tick). */
#define HB_CUTOFF_ROOM_LOG_MS 5000

typedef struct hb_cutoff_conn_s {
    struct hb_cutoff_conn_s *prev, *next;
    hb_cutoff_t *owner;
    int fd;
    int cut;
    int served;          /* a request of it was answered */
    int64_t deadline;    /* hb_mono_ms(); 0: none */
    int64_t body_base;   /* hb_mono_ms() + limit_ms when its body began; 0: no body */
    uint64_t body_bytes; /* of that body, so far */
} hb_cutoff_conn_t;

struct hb_cutoff_s {
    long long limit_ms;
    long long min_body_rate; /* bytes/s; 0: none */
    char what[32];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    hb_cutoff_conn_t *head, *tail; /* newest and longest waiting */
    long open;                     /* records not cut */
    long room;                     /* 0: no eviction */
    int stop;
    unsigned long cut;
    unsigned long evicted, evicted_unlogged, evicted_counted;
    hb_metric_t *m_deadline, *m_room;
    pthread_t thread;
};

static void unlink_locked(hb_cutoff_t *c, hb_cutoff_conn_t *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        c->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        c->tail = r->prev;
    r->prev = r->next = NULL;
}

static void push_head_locked(hb_cutoff_t *c, hb_cutoff_conn_t *r) {
    r->prev = NULL;
    r->next = c->head;
    if (c->head)
        c->head->prev = r;
    else
        c->tail = r;
    c->head = r;
}

static void cut_locked(hb_cutoff_t *c, hb_cutoff_conn_t *r) {
    (void)shutdown(r->fd, SHUT_RDWR);
    r->deadline = 0;
    r->cut = 1;
    c->open--;
}

/* Bytes the client sent that the server has not read yet. */
static int unread_bytes(int fd) {
    int n = 0;
    return ioctl(fd, FIONREAD, &n) == 0 ? n : 1;
}

/* Cuts the connection other than fresh that has waited longest for a request
 * it has not begun to send whole, preferring one that has had no request
 * answered (hb_cutoff.c: Room); 0 when there is none. */
static int evict_locked(hb_cutoff_t *c, const hb_cutoff_conn_t *fresh) {
    for (int pass = 0; pass < 2; pass++)
        for (hb_cutoff_conn_t *r = c->tail; r; r = r->prev) {
            if (r == fresh || r->cut || !r->deadline || r->body_base || (!pass && r->served) ||
                unread_bytes(r->fd) > 0)
                continue;
            cut_locked(c, r);
            c->evicted++;
            c->evicted_unlogged++;
            return 1;
        }
    return 0;
}

static void *watchdog(void *arg) {
    hb_cutoff_t *c = arg;
    int64_t room_logged = 0;
    pthread_mutex_lock(&c->lock);
    while (!c->stop) {
        int64_t now;
        unsigned long cut = 0, evicted;
        long open, room;
        hb_cond_wait_until(&c->cond, &c->lock, hb_mono_ms() + HB_CUTOFF_TICK_MS);
        now = hb_mono_ms();
        for (hb_cutoff_conn_t *r = c->head; r; r = r->next)
            if (r->deadline && now >= r->deadline) {
                cut_locked(c, r);
                cut++;
            }
        c->cut += cut;
        evicted = 0;
        if (c->evicted_unlogged && (!room_logged || now - room_logged >= HB_CUTOFF_ROOM_LOG_MS)) {
            evicted = c->evicted_unlogged;
            c->evicted_unlogged = 0;
            room_logged = now;
        }
        open = c->open;
        room = c->room;
        if (c->m_deadline && cut)
            hb_metric_add(c->m_deadline, (double)cut);
        if (c->m_room && c->evicted > c->evicted_counted)
            hb_metric_add(c->m_room, (double)(c->evicted - c->evicted_counted));
        c->evicted_counted = c->evicted;
        pthread_mutex_unlock(&c->lock);
        if (cut && c->min_body_rate > 0)
            hb_log(HB_LOG_INFO, NULL,
                   "%s: closed %lu connection(s) that sent no whole request within %lld ms "
                   "(a body within %lld ms of its headers and at %lld bytes/s or more)",
                   c->what, cut, c->limit_ms, c->limit_ms, c->min_body_rate);
        else if (cut)
            hb_log(HB_LOG_INFO, NULL,
                   "%s: closed %lu connection(s) that sent no whole request within %lld ms",
                   c->what, cut, c->limit_ms);
        if (evicted)
            hb_log(HB_LOG_INFO, NULL,
                   "%s: %ld connections open (at most %ld): closed %lu that waited longest "
                   "without sending a whole request, to make room for new ones",
                   c->what, open, room, evicted);
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

hb_cutoff_t *hb_cutoff_new(long long limit_ms, long long min_body_rate, const char *what) {
    hb_cutoff_t *c = hb_calloc(1, sizeof(*c));
    c->limit_ms = limit_ms;
    c->min_body_rate = min_body_rate > 0 ? min_body_rate : 0;
    hb_seterr(c->what, sizeof(c->what), "%s", what ? what : "httpd");
    pthread_mutex_init(&c->lock, NULL);
    hb_cond_init_mono(&c->cond);
    if (pthread_create(&c->thread, NULL, watchdog, c) != 0) {
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->lock);
        free(c);
        return NULL; /* no deadlines: the server runs as before */
    }
    return c;
}

void hb_cutoff_free(hb_cutoff_t *c) {
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->stop = 1;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    while (c->head) { /* none once the server is stopped; be safe */
        hb_cutoff_conn_t *r = c->head;
        c->head = r->next;
        free(r);
    }
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void hb_cutoff_set_room(hb_cutoff_t *c, long room) {
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->room = room > 0 ? room : 0;
    pthread_mutex_unlock(&c->lock);
}

void hb_cutoff_count_closes(hb_cutoff_t *c, const char *port) {
    static const char help[] =
        "Connections closed before they sent a whole request: at their deadline or to make "
        "room for a new connection, by port (operations or ingest).";
    char deadline[96], room[96];
    hb_metric_t *m_deadline, *m_room;
    if (!c)
        return;
    snprintf(deadline, sizeof(deadline), "port=\"%s\",reason=\"deadline\"", port);
    snprintf(room, sizeof(room), "port=\"%s\",reason=\"room\"", port);
    m_deadline = hb_metrics_counter("hookbridge_http_connections_closed_total", deadline, help);
    m_room = hb_metrics_counter("hookbridge_http_connections_closed_total", room, help);
    pthread_mutex_lock(&c->lock);
    c->m_deadline = m_deadline;
    c->m_room = m_room;
    pthread_mutex_unlock(&c->lock);
}

void hb_cutoff_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                      enum MHD_ConnectionNotificationCode toe) {
    hb_cutoff_t *c = cls;
    hb_cutoff_conn_t *r;
    if (!c)
        return;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!info)
            return;
        r = hb_calloc(1, sizeof(*r));
        r->owner = c;
        r->fd = info->connect_fd;
        pthread_mutex_lock(&c->lock);
        r->deadline = hb_mono_ms() + c->limit_ms;
        push_head_locked(c, r);
        c->open++;
        /* as many as needed: some that had bytes unread when others opened
         * may have been read since */
        while (c->room && c->open > c->room && evict_locked(c, r))
            ;
        pthread_mutex_unlock(&c->lock);
        *socket_context = r;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && (r = *socket_context) != NULL) {
        pthread_mutex_lock(&c->lock);
        unlink_locked(c, r);
        if (!r->cut)
            c->open--;
        pthread_mutex_unlock(&c->lock);
        *socket_context = NULL;
        free(r);
    }
}

static hb_cutoff_conn_t *record_of(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

static void set_deadline(struct MHD_Connection *conn, int hold) {
    hb_cutoff_conn_t *r = record_of(conn);
    if (!r)
        return;
    pthread_mutex_lock(&r->owner->lock);
    r->body_base = 0;
    if (!r->cut)
        r->deadline = hold ? 0 : hb_mono_ms() + r->owner->limit_ms;
    if (!hold) { /* waits for its next request from now: the newest */
        r->served = 1;
        unlink_locked(r->owner, r);
        push_head_locked(r->owner, r);
    }
    pthread_mutex_unlock(&r->owner->lock);
}

void hb_cutoff_hold(struct MHD_Connection *conn) {
    set_deadline(conn, 1);
}

void hb_cutoff_rearm(struct MHD_Connection *conn) {
    set_deadline(conn, 0);
}

void hb_cutoff_body_start(struct MHD_Connection *conn) {
    hb_cutoff_conn_t *r = record_of(conn);
    if (!r)
        return;
    pthread_mutex_lock(&r->owner->lock);
    if (!r->cut) {
        r->body_base = hb_mono_ms() + r->owner->limit_ms;
        r->body_bytes = 0;
        r->deadline = r->body_base;
    }
    pthread_mutex_unlock(&r->owner->lock);
}

void hb_cutoff_body_bytes(struct MHD_Connection *conn, size_t n) {
    hb_cutoff_conn_t *r = record_of(conn);
    if (!r)
        return;
    pthread_mutex_lock(&r->owner->lock);
    if (!r->cut && r->body_base && r->owner->min_body_rate > 0) {
        r->body_bytes += n;
        r->deadline =
            r->body_base + (int64_t)(r->body_bytes * 1000u / (uint64_t)r->owner->min_body_rate);
    }
    pthread_mutex_unlock(&r->owner->lock);
}

void hb_cutoff_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)con_cls;
    (void)toe;
    hb_cutoff_rearm(conn);
}

long hb_cutoff_open(hb_cutoff_t *c) {
    long n;
    if (!c)
        return 0;
    pthread_mutex_lock(&c->lock);
    n = c->open;
    pthread_mutex_unlock(&c->lock);
    return n;
}

unsigned long hb_cutoff_evicted(hb_cutoff_t *c) {
    unsigned long n;
    if (!c)
        return 0;
    pthread_mutex_lock(&c->lock);
    n = c->evicted;
    pthread_mutex_unlock(&c->lock);
    return n;
}

unsigned long hb_cutoff_count(hb_cutoff_t *c) {
    unsigned long n;
    if (!c)
        return 0;
    pthread_mutex_lock(&c->lock);
    n = c->cut;
    pthread_mutex_unlock(&c->lock);
    return n;
}
