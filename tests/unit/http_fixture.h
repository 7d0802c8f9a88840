/*
 * What the unit tests that talk real HTTP (test_http.c, test_deliver.c)
 * share: a libmicrohttpd server on 127.0.0.1 and a free port, an answer from
 * one of its handlers, and a delivery engine allowed to reach it.
 *
 * The server runs its own polling thread and a thread per connection, so a
 * handler may hold a request (a "slow" endpoint) while others are answered.
 * Failures stop the test through cmocka, so callers need no error paths.
 */
#ifndef HB_TESTS_HTTP_FIXTURE_H
#define HB_TESTS_HTTP_FIXTURE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <string.h>

#include "hb_http.h"

/* Starts a server on 127.0.0.1 (the kernel picks the port, stored in *port)
 * calling handler(cls, ...) for each request. extra: more options for
 * MHD_OPTION_ARRAY (a notify callback and its closure), ended by
 * {MHD_OPTION_END, 0, NULL}. */
static inline struct MHD_Daemon *test_server_start(MHD_AccessHandlerCallback handler, void *cls,
                                                   const struct MHD_OptionItem *extra,
                                                   uint16_t *port) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL, handler,
        cls, MHD_OPTION_SOCK_ADDR, &sin, MHD_OPTION_ARRAY, extra, MHD_OPTION_END);
    assert_non_null(d);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(info);
    *port = info->port;
    assert_true(*port > 0);
    return d;
}

/* Queues the answer status with a copy of body[0..len) and, when hname is
 * not NULL, one header. */
static inline enum MHD_Result test_server_reply(struct MHD_Connection *c, unsigned status,
                                                const char *body, size_t len, const char *hname,
                                                const char *hvalue) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (hname)
        MHD_add_response_header(r, hname, hvalue);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* An engine that may use plain http:// (allow_http) and reach loopback
 * (allow_private, which the test server needs), 2 s to connect. */
static inline hb_http_t *test_http_new(long max_in_flight, long max_host, int allow_http,
                                       int allow_private) {
    char err[256];
    hb_http_conf_t conf = {
        .max_in_flight = max_in_flight,
        .max_host_connections = max_host,
        .connect_timeout_ms = 2000,
        .allow_http = allow_http,
        .allow_private_networks = allow_private,
    };
    hb_http_t *h = hb_http_new(&conf, err, sizeof(err));
    if (!h)
        fail_msg("hb_http_new: %s", err);
    return h;
}

#endif
