/* Operations endpoint: health, readiness, metrics and errors over real HTTP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <time.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <unistd.h>

#include "hb_httpd.h"
#include "hb_listen.h"
#include "hb_metrics.h"

typedef struct {
    char body[8192];
    size_t len;
    char content_type[128];
} reply_t;

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata) {
    reply_t *r = userdata;
    size_t n = size * nmemb;
    size_t room = sizeof(r->body) - 1 - r->len;
    size_t take = n < room ? n : room;
    memcpy(r->body + r->len, data, take);
    r->len += take;
    r->body[r->len] = '\0';
    return n;
}

/* Returns the HTTP status of `method path`, body in r. */
static long fetch(int port, const char *method, const char *path, reply_t *r) {
    char url[256];
    long status = 0;
    char *ct = NULL;
    CURL *c = curl_easy_init();
    assert_non_null(c);
    memset(r, 0, sizeof(*r));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (!strcmp(method, "POST"))
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "x=1");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
        snprintf(r->content_type, sizeof(r->content_type), "%s", ct);
    curl_easy_cleanup(c);
    return status;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void serves_health_readiness_and_metrics(void **state) {
    char err[256] = "";
    reply_t r;
    hb_metric_t *m = hb_metrics_counter("hookbridge_test_total", "kind=\"x\"", "Test counter.");
    hb_httpd_t *h = hb_httpd_start("127.0.0.1:0", 0, err, sizeof(err));
    assert_non_null(h);
    int port = hb_httpd_port(h);
    assert_true(port > 0 && port < 65536);

    assert_int_equal(fetch(port, "GET", "/healthz", &r), 200);
    assert_string_equal(r.body, "ok\n");

    assert_int_equal(fetch(port, "GET", "/readyz", &r), 503);
    hb_httpd_set_ready(h, 0, "kafka: waiting for partition assignment");
    assert_int_equal(fetch(port, "GET", "/readyz", &r), 503);
    assert_string_equal(r.body, "kafka: waiting for partition assignment\n");
    hb_httpd_set_ready(h, 1, NULL);
    assert_int_equal(fetch(port, "GET", "/readyz", &r), 200);
    assert_string_equal(r.body, "ready\n");

    hb_metric_add(m, 41);
    hb_metric_inc(m);
    assert_int_equal(fetch(port, "GET", "/metrics", &r), 200);
    assert_non_null(strstr(r.content_type, "text/plain; version=0.0.4"));
    assert_non_null(strstr(r.body, "# TYPE hookbridge_test_total counter\n"));
    assert_non_null(strstr(r.body, "hookbridge_test_total{kind=\"x\"} 42\n"));

    assert_int_equal(fetch(port, "GET", "/nope", &r), 404);
    assert_int_equal(fetch(port, "GET", "/", &r), 404);
    assert_int_equal(fetch(port, "POST", "/healthz", &r), 405);
    assert_int_equal(fetch(port, "HEAD", "/healthz", &r), 200);

    hb_httpd_stop(h);
    hb_metrics_reset();
}

static void healthz_fails_when_the_loop_stops_beating(void **state) {
    char err[256] = "";
    reply_t r;
    hb_httpd_t *h = hb_httpd_start("127.0.0.1:0", 150, err, sizeof(err));
    assert_non_null(h);
    int port = hb_httpd_port(h);
    hb_httpd_beat(h);
    assert_int_equal(fetch(port, "GET", "/healthz", &r), 200);
    sleep_ms(300);
    assert_int_equal(fetch(port, "GET", "/healthz", &r), 503);
    assert_non_null(strstr(r.body, "stalled"));
    hb_httpd_beat(h);
    assert_int_equal(fetch(port, "GET", "/healthz", &r), 200);
    hb_httpd_stop(h);
}

/* A dispatcher with a thousand delivery connections open: the probes and
 * /metrics still answer on sockets numbered above FD_SETSIZE (select() could
 * not watch them; libmicrohttpd refused such connections). */
static void answers_with_more_than_fd_setsize_descriptors_open(void **state) {
    enum { N = 1100 };
    int fds[N], n = 0;
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < N + 64) {
        rl.rlim_cur = rl.rlim_max < N + 64 ? rl.rlim_max : N + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < N + 64)
        skip(); /* the machine allows too few descriptors to tell */
    while (n < N) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        fds[n++] = fd;
    }
    char err[256] = "";
    reply_t r;
    long health = 0, metrics = 0;
    hb_httpd_t *h = hb_httpd_start("127.0.0.1:0", 0, err, sizeof(err));
    if (h) {
        health = fetch(hb_httpd_port(h), "GET", "/healthz", &r);
        metrics = fetch(hb_httpd_port(h), "GET", "/metrics", &r);
        hb_httpd_stop(h);
    }
    while (n > 0)
        close(fds[--n]);
    assert_non_null(h);
    assert_int_equal(health, 200);
    assert_int_equal(metrics, 200);
}

static void bad_listen_addresses_fail_with_a_reason(void **state) {
    static const char *const bad[] = {"nocolon", "127.0.0.1:", "127.0.0.1:70000", "127.0.0.1:8x",
                                      "no.such.host.invalid:0"};
    for (size_t i = 0; i < HB_ARRAY_SIZE(bad); i++) {
        char err[256] = "";
        assert_null(hb_httpd_start(bad[i], 0, err, sizeof(err)));
        assert_true(err[0] != '\0');
    }
    /* a port already taken */
    char err[256] = "", addr[64];
    hb_httpd_t *h = hb_httpd_start("127.0.0.1:0", 0, err, sizeof(err));
    assert_non_null(h);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", hb_httpd_port(h));
    assert_null(hb_httpd_start(addr, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "cannot listen"));
    hb_httpd_stop(h);
    hb_httpd_stop(NULL);
}

/* hb_listen_resolve(): what each form resolves to, or why it is refused. */
static void listen_addresses_resolve_or_say_why(void **state) {
    static char long_host[300 + sizeof(":80")];
    memset(long_host, 'a', 300);
    memcpy(long_host + 300, ":80", sizeof(":80"));
    static const struct {
        const char *listen;
        unsigned flags;
        int rc;
        int family; /* 0: either */
        int port;
        const char *why; /* NULL: any non-empty reason */
    } cases[] = {
        {"127.0.0.1:0", 0, HB_LISTEN_OK, AF_INET, 0, ""},
        {"0.0.0.0:8080", 0, HB_LISTEN_OK, AF_INET, 8080, ""},
        {"[::1]:9000", 0, HB_LISTEN_OK, AF_INET6, 9000, ""},
        {":8080", 0, HB_LISTEN_OK, 0, 8080, ""},
        {"[]:8081", 0, HB_LISTEN_OK, 0, 8081, ""},
        {"*:8082", HB_LISTEN_STAR_ANY, HB_LISTEN_OK, 0, 8082, ""},
        {"127.0.0.1:65535", 0, HB_LISTEN_OK, AF_INET, 65535, ""},
        {NULL, 0, HB_LISTEN_ESYNTAX, 0, 0, "not host:port"},
        {"nocolon", 0, HB_LISTEN_ESYNTAX, 0, 0, "not host:port"},
        {"", 0, HB_LISTEN_ESYNTAX, 0, 0, "not host:port"},
        {"127.0.0.1:", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"127.0.0.1:70000", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"127.0.0.1:65536", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"127.0.0.1:-1", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"127.0.0.1:8x", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"127.0.0.1:+80", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"127.0.0.1: 80", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"127.0.0.1:-0", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"127.0.0.1:99999999999999999999", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {"[::1]", 0, HB_LISTEN_EPORT, 0, 0, "bad port"},
        {long_host, 0, HB_LISTEN_EHOST, 0, 0, "host name too long"},
        {"no.such.host.invalid:0", 0, HB_LISTEN_ERESOLVE, 0, 0, NULL},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        char why[128] = "";
        memset(&ss, 0, sizeof(ss));
        int rc = hb_listen_resolve(cases[i].listen, cases[i].flags, &ss, &len, why, sizeof(why));
        if (rc != cases[i].rc)
            fail_msg("%s: rc %d, want %d (%s)", cases[i].listen ? cases[i].listen : "(null)", rc,
                     cases[i].rc, why);
        if (rc != HB_LISTEN_OK) {
            if (cases[i].why)
                assert_string_equal(why, cases[i].why);
            else
                assert_true(why[0] != '\0');
            continue;
        }
        if (cases[i].family)
            assert_int_equal(ss.ss_family, cases[i].family);
        else
            assert_true(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
        assert_int_equal(len, ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                       : sizeof(struct sockaddr_in));
        assert_int_equal(hb_listen_port(&ss), cases[i].port);
    }
}

/* hb_httpd_start() words the refusals as "listen address ...". */
static void httpd_words_listen_refusals(void **state) {
    static const struct {
        const char *listen, *err;
    } cases[] = {
        {"nocolon", "listen address \"nocolon\" is not host:port"},
        {"127.0.0.1:8x", "listen address \"127.0.0.1:8x\": bad port"},
        {"[::1]", "listen address \"[::1]\": bad port"},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        char err[256] = "";
        assert_null(hb_httpd_start(cases[i].listen, 0, err, sizeof(err)));
        assert_string_equal(err, cases[i].err);
    }
    char err[256] = "";
    assert_null(hb_httpd_start(NULL, 0, err, sizeof(err)));
    assert_string_equal(err, "listen address \"\" is not host:port");
}

static void listens_on_ipv6_loopback(void **state) {
    char err[256] = "";
    hb_httpd_t *h = hb_httpd_start("[::1]:0", 0, err, sizeof(err));
    if (!h) /* no IPv6 on this machine: nothing to check */
        skip();
    assert_true(hb_httpd_port(h) > 0);
    hb_httpd_stop(h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(serves_health_readiness_and_metrics),
        cmocka_unit_test(healthz_fails_when_the_loop_stops_beating),
        cmocka_unit_test(answers_with_more_than_fd_setsize_descriptors_open),
        cmocka_unit_test(bad_listen_addresses_fail_with_a_reason),
        cmocka_unit_test(listens_on_ipv6_loopback),
        cmocka_unit_test(listen_addresses_resolve_or_say_why),
        cmocka_unit_test(httpd_words_listen_refusals),
    };
    int rc;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
