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
    int64_t deadline; /* hb_mono_ms(); 0: none */
} hb_cutoff_conn_t;

struct hb_cutoff_s {
    long long limit_ms;
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
                cut++;
            }
        c->cut += cut;
        if (cut) {
            pthread_mutex_unlock(&c->lock);
            hb_log(HB_LOG_INFO, NULL,
                   "%s: closed %lu connection(s) that sent no whole request within %lld ms",
                   c->what, cut, c->limit_ms);
            pthread_mutex_lock(&c->lock);
        }
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

hb_cutoff_t *hb_cutoff_new(long long limit_ms, const char *what) {
    hb_cutoff_t *c = hb_calloc(1, sizeof(*c));
    c->limit_ms = limit_ms;
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

static void set_deadline(struct MHD_Connection *conn, int hold) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    hb_cutoff_conn_t *r = info ? info->socket_context : NULL;
    if (!r)
        return;
    pthread_mutex_lock(&r->owner->lock);
    r->deadline = hold ? 0 : hb_mono_ms() + r->owner->limit_ms;
    pthread_mutex_unlock(&r->owner->lock);
}

void hb_cutoff_hold(struct MHD_Connection *conn) {
    set_deadline(conn, 1);
}

void hb_cutoff_rearm(struct MHD_Connection *conn) {
    set_deadline(conn, 0);
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
