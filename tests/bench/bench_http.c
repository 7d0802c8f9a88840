/*
 * make bench: what our HTTP engine (lib/hb_http.c) costs per request, next to
 * the reference client (bench_curl_ref.c) against the same receiver.
 *
 *     bench_http URL [CONNECTIONS [SECONDS [BODY_BYTES]]]
 *
 * One thread submits POSTs through hb_http exactly as the delivery path does
 * (a copied URL, the webhook header lines, a body whose ownership passes to
 * the engine) and submits the next one from each done callback, so
 * CONNECTIONS requests are always in flight over keep-alive connections.
 * Nothing else happens between requests: no Kafka, no rendering, no
 * signing, no delivery log. The gap between this and bench_curl_ref is the
 * engine's own cost; the gap between this and the dispatcher is everything
 * else.
 *
 * Prints one line like bench_curl_ref: "requests seconds requests_per_s
 * cpu_seconds requests_per_cpu_s failed"; exits 1 when nothing succeeded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "hb_http.h"
#include "hb_log.h"

typedef struct {
    hb_http_t *h;
    const char *url;
    const char *body;
    size_t body_len;
    long requests, failed, in_flight;
    int stopping;
} bench_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static long arg_long(int argc, char **argv, int i, long def, long lo, long hi) {
    char *end = NULL;
    long v;
    if (argc <= i)
        return def;
    v = strtol(argv[i], &end, 10);
    if (!end || *end || v < lo || v > hi) {
        fprintf(stderr, "bench_http: argument %d must be a number in %ld..%ld\n", i, lo, hi);
        exit(2);
    }
    return v;
}

static void submit(bench_t *b);

static void done(const hb_http_result_t *res, void *opaque) {
    bench_t *b = opaque;
    if (res->http_status >= 200 && res->http_status < 300)
        b->requests++;
    else
        b->failed++;
    b->in_flight--;
    if (!b->stopping)
        submit(b);
}

static void submit(bench_t *b) {
    static const char *const headers[] = {
        "Content-Type: application/json",
        "webhook-id: msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp: 1733340000",
        "webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
        "X-Hookbridge-Attempt: 1",
        NULL};
    hb_http_req_t req = {0};
    char *body = malloc(b->body_len + 1);
    if (!body)
        abort();
    memcpy(body, b->body, b->body_len + 1);
    req.method = HB_HTTP_POST;
    req.url = b->url;
    req.headers = headers;
    req.body = body;
    req.body_len = b->body_len;
    req.timeout_ms = 10000;
    req.max_response_bytes = 4096;
    req.done = done;
    req.opaque = b;
    b->in_flight++;
    hb_http_submit(b->h, &req);
}

int main(int argc, char **argv) {
    static const char head[] =
        "{\"eventType\":\"com.okta.event_hook\",\"eventTypeVersion\":\"1.0\",\"data\":{"
        "\"events\":[{\"pad\":\"";
    static const char tail[] = "\"}]}}";
    char errstr[512];
    bench_t b = {0};
    hb_http_conf_t conf = {0};
    long conns, seconds, body_bytes;
    char *body;
    double t0, c0, deadline, elapsed, cpu;

    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: bench_http URL [CONNECTIONS [SECONDS [BODY_BYTES]]]\n");
        return 2;
    }
    conns = arg_long(argc, argv, 2, 32, 1, 1024);
    seconds = arg_long(argc, argv, 3, 5, 1, 3600);
    body_bytes = arg_long(argc, argv, 4, 900, (long)(sizeof(head) + sizeof(tail)), 1 << 24);
    body = malloc((size_t)body_bytes + 1);
    if (!body)
        return 1;
    memcpy(body, head, sizeof(head) - 1);
    memset(body + sizeof(head) - 1, 'x', (size_t)body_bytes - (sizeof(head) - 1));
    memcpy(body + body_bytes - (long)(sizeof(tail) - 1), tail, sizeof(tail) - 1);
    body[body_bytes] = '\0';

    hb_log_init("bench_http", HB_LOG_WARN);
    conf.max_in_flight = conns;
    conf.max_host_connections = conns;
    conf.max_host_queue = 0;
    conf.max_queue_wait_ms = 0;
    conf.allow_http = 1;
    conf.allow_private_networks = 1;
    b.h = hb_http_new(&conf, errstr, sizeof(errstr));
    if (!b.h) {
        fprintf(stderr, "bench_http: %s\n", errstr);
        return 1;
    }
    b.url = argv[1];
    b.body = body;
    b.body_len = (size_t)body_bytes;

    t0 = now_s();
    c0 = cpu_s();
    deadline = t0 + (double)seconds;
    for (long i = 0; i < conns; i++)
        submit(&b);
    while (b.in_flight > 0) {
        if (!b.stopping && now_s() >= deadline)
            b.stopping = 1;
        (void)hb_http_run(b.h, 100, -1);
    }
    elapsed = now_s() - t0;
    cpu = cpu_s() - c0;
    printf("%ld %.3f %.0f %.3f %.0f %ld\n", b.requests, elapsed, (double)b.requests / elapsed, cpu,
           cpu > 0 ? (double)b.requests / cpu : 0.0, b.failed);
    hb_http_free(b.h);
    free(body);
    return b.requests > 0 ? 0 : 1;
}
