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

#include "hb_httpd.h"
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

static void bad_listen_addresses_fail_with_a_reason(void **state) {
    static const char *const bad[] = {"nocolon", "127.0.0.1:", "127.0.0.1:70000",
                                      "127.0.0.1:8x", "no.such.host.invalid:0"};
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
        cmocka_unit_test(bad_listen_addresses_fail_with_a_reason),
        cmocka_unit_test(listens_on_ipv6_loopback),
    };
    int rc;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
