/*
 * The operations endpoint: /healthz, /readyz and /metrics over
 * libmicrohttpd.
 *
 * libmicrohttpd runs its own polling thread (MHD_USE_INTERNAL_POLLING_THREAD)
 * and calls on_request there; it polls with epoll (MHD_USE_AUTO), not
 * select(), which cannot watch a descriptor above FD_SETSIZE (1024): a
 * dispatcher with a thousand connections open would stop answering its
 * probes; the main loop only touches the hb_httpd_t
 * through hb_httpd_beat() (an atomic store of the monotonic clock) and
 * hb_httpd_set_ready() (a mutex around the flag and its reason). So the
 * service's loop never waits on a scrape, and a stuck loop shows up as a 503
 * from /healthz once stall_ms passes without a beat: the liveness probe then
 * restarts the pod. Every response is built from a copy taken under the lock
 * or from a freshly rendered buffer; nothing the main thread may change is
 * handed to libmicrohttpd by reference. libmicrohttpd's own diagnostics are
 * routed into hb_log so stdout stays JSON lines.
 */
#include "hb_httpd.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "hb_cutoff.h"
#include "hb_listen.h"
#include "hb_log.h"
#include "hb_mhd.h"
#include "hb_metrics.h"

#define HB_HTTPD_REASON_MAX 256
/* Idle connections are closed after this long. */
#define HB_HTTPD_CONN_TIMEOUT_S 10
/* A connection that has not sent a whole request within this long of its
 * start (or of its previous request's end) is closed (hb_cutoff): a client
 * trickling bytes would otherwise hold a connection, and 64 of them every
 * probe and scrape out, and the liveness probe would restart the pod. A
 * probe or scrape sends its few hundred bytes at once. The deadline is not
 * held while the answer is written, and need not be: the largest answer,
 * /metrics, is a fixed set of series (no label per endpoint or
 * subscription), about 8 KB for a dispatcher, which the kernel's socket
 * buffers take whole at once however slowly the scraper reads; only a
 * client that sends no whole request within the 5 s is cut. */
#define HB_HTTPD_REQUEST_DEADLINE_MS 5000
/* Connections served at once. Past HB_HTTPD_ROOM open, a new one has the
 * one that has waited longest for its request closed (hb_cutoff: Room):
 * clients that connect and send nothing, or half a request, no longer hold
 * all 64 for the 5 s while the probes wait in the listen queue; the probes
 * are answered at once. The 8 between them are for connections
 * libmicrohttpd accepts in a row before it has closed the ones cut. */
#define HB_HTTPD_MAX_CONNECTIONS 64
#define HB_HTTPD_ROOM 56

/* libmicrohttpd says a line for every connection a client drops half-way or
 * that was cut: thousands a minute from a client flooding the port. */
static hb_log_limit_t log_mhd = HB_LOG_LIMIT_NOTE("\"httpd: ...\"", "");

struct hb_httpd_s {
    struct MHD_Daemon *mhd;
    hb_cutoff_t *cutoff;
    int port;
    long long stall_ms;           /* <= 0: never stalled */
    _Atomic int64_t last_beat_ms; /* hb_mono_ms() of the last beat */
    pthread_mutex_t lock;         /* guards ready and reason */
    int ready;
    char reason[HB_HTTPD_REASON_MAX];
};

/* hb_listen_resolve() with this module's wording of its refusals. */
static int resolve_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *sslen,
                          char *errstr, size_t errstr_size) {
    char why[128];
    switch (hb_listen_resolve(listen, HB_LISTEN_STAR_ANY, ss, sslen, why, sizeof(why))) {
    case HB_LISTEN_OK: return 0;
    case HB_LISTEN_ESYNTAX:
        hb_seterr(errstr, errstr_size, "listen address \"%s\" is not host:port",
                  listen ? listen : "");
        return -1;
    case HB_LISTEN_EHOST:
        hb_seterr(errstr, errstr_size, "listen address: host name too long");
        return -1;
    default: /* HB_LISTEN_EPORT, HB_LISTEN_ERESOLVE */
        hb_seterr(errstr, errstr_size, "listen address \"%s\": %s", listen, why);
        return -1;
    }
}

static void mhd_log(void *cls, const char *fmt, va_list ap) HB_PRINTF(2, 0);
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    hb_mhd_log(&log_mhd, "httpd", fmt, ap);
}

/* Queues a response; MUST_FREE buffers come from malloc (hb_metrics_render). */
static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status,
                               const char *content_type, void *body, size_t len,
                               enum MHD_ResponseMemoryMode mode) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    enum MHD_Result ret;
    if (!resp) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        (void)MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned status,
                                    const char *text) {
    return respond(conn, status, "text/plain; charset=utf-8", (void *)text, strlen(text),
                   MHD_RESPMEM_MUST_COPY);
}

static enum MHD_Result serve_healthz(hb_httpd_t *h, struct MHD_Connection *conn) {
    char text[128];
    int64_t age = hb_mono_ms() - atomic_load(&h->last_beat_ms);
    if (h->stall_ms > 0 && age > h->stall_ms) {
        snprintf(text, sizeof(text), "stalled: main loop silent for %lld ms\n", (long long)age);
        return respond_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, text);
    }
    return respond_text(conn, MHD_HTTP_OK, "ok\n");
}

static enum MHD_Result serve_readyz(hb_httpd_t *h, struct MHD_Connection *conn) {
    char text[HB_HTTPD_REASON_MAX + 16];
    int ready;
    pthread_mutex_lock(&h->lock);
    ready = h->ready;
    snprintf(text, sizeof(text), "%s\n", h->reason[0] ? h->reason : ready ? "ready" : "not ready");
    pthread_mutex_unlock(&h->lock);
    if (ready)
        return respond_text(conn, MHD_HTTP_OK, text);
    return respond_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, text);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    hb_httpd_t *h = cls;
    int known = !strcmp(url, "/healthz") || !strcmp(url, "/readyz") || !strcmp(url, "/metrics");

    hb_cutoff_hold(conn); /* a request being answered is not closed to make room */

    if (!known)
        return respond_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
        return respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    if (!strcmp(url, "/healthz"))
        return serve_healthz(h, conn);
    if (!strcmp(url, "/readyz"))
        return serve_readyz(h, conn);
    size_t len = 0;
    char *text = hb_metrics_render(&len);
    return respond(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len,
                   MHD_RESPMEM_MUST_FREE);
}

hb_httpd_t *hb_httpd_start(const char *listen, long long stall_ms, char *errstr,
                           size_t errstr_size) {
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    const union MHD_DaemonInfo *info;
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    hb_httpd_t *h;

    if (resolve_listen(listen, &ss, &sslen, errstr, errstr_size) != 0)
        return NULL;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;

    h = hb_calloc(1, sizeof(*h));
    h->stall_ms = stall_ms;
    atomic_init(&h->last_beat_ms, hb_mono_ms());
    pthread_mutex_init(&h->lock, NULL);
    snprintf(h->reason, sizeof(h->reason), "starting");

    /* The logger goes first so that even option errors reach hb_log. */
    h->cutoff = hb_cutoff_new(HB_HTTPD_REQUEST_DEADLINE_MS, 0, "httpd"); /* GETs: no body */
    hb_cutoff_set_room(h->cutoff, HB_HTTPD_ROOM);
    hb_cutoff_count_closes(h->cutoff, "operations");
    h->mhd = MHD_start_daemon(
        flags, hb_listen_port(&ss), NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
        NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)HB_HTTPD_CONN_TIMEOUT_S, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)HB_HTTPD_MAX_CONNECTIONS, MHD_OPTION_NOTIFY_CONNECTION, hb_cutoff_notify,
        h->cutoff, MHD_OPTION_NOTIFY_COMPLETED, hb_cutoff_completed, NULL, MHD_OPTION_END);
    if (!h->mhd) {
        hb_seterr(errstr, errstr_size, "cannot listen on %s (address in use or not local?)",
                  listen);
        goto fail;
    }
    info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    if (!info || info->port == 0) {
        hb_seterr(errstr, errstr_size, "cannot learn the port bound for %s", listen);
        goto fail;
    }
    h->port = info->port;
    return h;
fail:
    hb_httpd_stop(h);
    return NULL;
}

int hb_httpd_port(const hb_httpd_t *h) {
    return h->port;
}

void hb_httpd_beat(hb_httpd_t *h) {
    atomic_store(&h->last_beat_ms, hb_mono_ms());
}

void hb_httpd_set_ready(hb_httpd_t *h, int ready, const char *reason) {
    pthread_mutex_lock(&h->lock);
    h->ready = ready;
    snprintf(h->reason, sizeof(h->reason), "%s", reason ? reason : "");
    pthread_mutex_unlock(&h->lock);
}

void hb_httpd_stop(hb_httpd_t *h) {
    if (!h)
        return;
    if (h->mhd)
        MHD_stop_daemon(h->mhd);
    hb_cutoff_free(h->cutoff); /* after the server: it notifies every close */
    pthread_mutex_destroy(&h->lock);
    free(h);
}
