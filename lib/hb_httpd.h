/*
 * The operations endpoint every service serves on HOOKBRIDGE_HTTP_LISTEN
 * (libmicrohttpd, its own thread):
 *   GET /healthz  200 "ok" while the main loop keeps calling hb_httpd_beat()
 *                 (503 when it has not for stall_ms: the loop is stuck)
 *   GET /readyz   200 "ready" when the main loop said so with
 *                 hb_httpd_set_ready(h, 1, NULL) (or the note given instead of
 *                 NULL: "ready, but ..."), else 503 with the reason
 *   GET /metrics  hb_metrics_render()
 * Anything else is 404. The main loop calls beat/set_ready; they are thread-safe.
 */
#ifndef HB_HTTPD_H
#define HB_HTTPD_H

#include "hb_common.h"

typedef struct hb_httpd_s hb_httpd_t;

/* listen: "host:port" ("0.0.0.0:8080", "127.0.0.1:0" picks a free port); the
 * forms accepted are hb_listen_resolve()'s, with "*" as the wildcard host. */
hb_httpd_t *hb_httpd_start(const char *listen, long long stall_ms, char *errstr,
                           size_t errstr_size) HB_MUSTCHECK;
int hb_httpd_port(const hb_httpd_t *h); /* the bound port */
void hb_httpd_beat(hb_httpd_t *h);
void hb_httpd_set_ready(hb_httpd_t *h, int ready, const char *reason);
void hb_httpd_stop(hb_httpd_t *h); /* NULL ok */

#endif
