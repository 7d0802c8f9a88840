/*
 * make bench: what our HTTP engine (lib/hb_http.c) costs per request, next to
 * the reference client (bench_curl_ref.c) against the same receiver.
 *
 *     bench_http URL [CONNECTIONS [SECONDS [BODY_BYTES]]]
 *
 * One thread submits POSTs through hb_http exactly as the delivery path does
 * (a copied URL, a delivery's header lines, a body whose ownership passes to
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
#include "bench_client.h"
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
    hb_http_req_t req = {0};
    char *body = malloc(b->body_len + 1);
    if (!body)
        abort();
    memcpy(body, b->body, b->body_len + 1);
    req.method = HB_HTTP_POST;
    req.url = b->url;
    req.headers = bench_delivery_headers;
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
    char errstr[512];
    bench_t b = {0};
    hb_http_conf_t conf = {0};
    bench_args_t args = bench_args("bench_http", argc, argv);
    long conns = args.conns, seconds = args.seconds;
    char *body = args.body;
    double t0, c0, deadline, elapsed, cpu;

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
    b.url = args.url;
    b.body = body;
    b.body_len = (size_t)args.body_bytes;

    t0 = bench_now_s();
    c0 = bench_cpu_s();
    deadline = t0 + (double)seconds;
    for (long i = 0; i < conns; i++)
        submit(&b);
    while (b.in_flight > 0) {
        if (!b.stopping && bench_now_s() >= deadline)
            b.stopping = 1;
        (void)hb_http_run(b.h, 100, -1);
    }
    elapsed = bench_now_s() - t0;
    cpu = bench_cpu_s() - c0;
    printf("%ld %.3f %.0f %.3f %.0f %ld\n", b.requests, elapsed, (double)b.requests / elapsed, cpu,
           cpu > 0 ? (double)b.requests / cpu : 0.0, b.failed);
    hb_http_free(b.h);
    free(body);
    return b.requests > 0 ? 0 : 1;
}
