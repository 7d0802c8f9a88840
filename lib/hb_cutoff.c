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
 */
#include "hb_cutoff.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "hb_common.h"
#include "hb_log.h"

#define HB_CUTOFF_TICK_MS 200

typedef struct hb_cutoff_conn_s {
    struct hb_cutoff_conn_s *prev, *next;
    hb_cutoff_t *owner;
    int fd;
    int cut;
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
    hb_cutoff_conn_t *head;
    int stop;
    unsigned long cut;
    pthread_t thread;
};

static void *watchdog(void *arg) {
    hb_cutoff_t *c = arg;
    pthread_mutex_lock(&c->lock);
    while (!c->stop) {
        int64_t now;
        unsigned long cut = 0;
        hb_cond_wait_until(&c->cond, &c->lock, hb_mono_ms() + HB_CUTOFF_TICK_MS);
        now = hb_mono_ms();
        for (hb_cutoff_conn_t *r = c->head; r; r = r->next)
            if (r->deadline && now >= r->deadline) {
                (void)shutdown(r->fd, SHUT_RDWR);
                r->deadline = 0;
                r->cut = 1;
                cut++;
            }
        c->cut += cut;
        if (cut) {
            pthread_mutex_unlock(&c->lock);
            if (c->min_body_rate > 0)
                hb_log(HB_LOG_INFO, NULL,
                       "%s: closed %lu connection(s) that sent no whole request within %lld ms "
                       "(a body within %lld ms of its headers and at %lld bytes/s or more)",
                       c->what, cut, c->limit_ms, c->limit_ms, c->min_body_rate);
            else
                hb_log(HB_LOG_INFO, NULL,
                       "%s: closed %lu connection(s) that sent no whole request within %lld ms",
                       c->what, cut, c->limit_ms);
            pthread_mutex_lock(&c->lock);
        }
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
        r->next = c->head;
        if (c->head)
            c->head->prev = r;
        c->head = r;
        pthread_mutex_unlock(&c->lock);
        *socket_context = r;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && (r = *socket_context) != NULL) {
        pthread_mutex_lock(&c->lock);
        if (r->prev)
            r->prev->next = r->next;
        else
            c->head = r->next;
        if (r->next)
            r->next->prev = r->prev;
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

unsigned long hb_cutoff_count(hb_cutoff_t *c) {
    unsigned long n;
    if (!c)
        return 0;
    pthread_mutex_lock(&c->lock);
    n = c->cut;
    pthread_mutex_unlock(&c->lock);
    return n;
}
