/*
 * What the two benchmark clients share (bench_curl_ref.c, libcurl alone, and
 * bench_http.c, our HTTP engine): their clocks, their arguments, the header
 * lines and the body they POST, so that the two figures scripts/bench.sh puts side by side come
 * from the same requests measured the same way.
 *
 *     CLIENT URL [CONNECTIONS [SECONDS [BODY_BYTES]]]
 *
 * and both print "requests seconds requests_per_s cpu_seconds
 * requests_per_cpu_s failed" (CPU time: getrusage of the process, user +
 * system).
 */
#ifndef BENCH_CLIENT_H
#define BENCH_CLIENT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "hb_common.h" /* HB_VERSION */

#define BENCH_MAX_CONNECTIONS 1024

/* The header lines of a delivery in make bench (lib/hb_deliver.c's
 * deliver_send for a subscription without an auth header or headers of its
 * own; the id, timestamp and signature of one delivery): both clients send
 * them, so the reference is libcurl alone making the request a delivery
 * makes. curl 7.88 builds a request a byte at a time through its printf
 * (about 100 instructions a byte, callgrind), so these lines are about a
 * fifth of libcurl's instructions per request: 86,600 against 69,000 for
 * bench_minimal_headers. */
static const char *const bench_delivery_headers[] = {
    "Content-Type: application/json",
    "User-Agent: hookbridge/" HB_VERSION,
    "webhook-id: 3e2e1b6c-3eff-8046-947b-7d0843948841",
    "webhook-timestamp: 1733340000",
    "webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    "Expect:",
    NULL};

/* The reference's request until session 31 (BENCH_REF_HEADERS=minimal): two
 * short lines, what the cheapest POST costs libcurl. */
static const char *const bench_minimal_headers[] = {"Content-Type: application/json",
                                                    "webhook-id: bench-curl-ref", NULL};

typedef struct {
    const char *url;
    long conns, seconds, body_bytes;
    char *body; /* BODY_BYTES of JSON, NUL-terminated */
} bench_args_t;

static inline double bench_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline double bench_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* A whole number in [lo, hi] from argv, or def when the argument is absent. */
static inline long bench_arg_long(const char *prog, int argc, char **argv, int i, long def, long lo,
                                  long hi) {
    char *end = NULL;
    long v;
    if (argc <= i)
        return def;
    v = strtol(argv[i], &end, 10);
    if (!end || *end || v < lo || v > hi) {
        fprintf(stderr, "%s: argument %d must be a number in %ld..%ld\n", prog, i, lo, hi);
        exit(2);
    }
    return v;
}

/* The command line, and the body: an okta envelope padded to BODY_BYTES.
 * Exits 2 on a bad command line, 1 when out of memory. */
static inline bench_args_t bench_args(const char *prog, int argc, char **argv) {
    static const char head[] =
        "{\"eventType\":\"com.okta.event_hook\",\"eventTypeVersion\":\"1.0\",\"data\":{"
        "\"events\":[{\"pad\":\"";
    static const char tail[] = "\"}]}}";
    bench_args_t a;
    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: %s URL [CONNECTIONS [SECONDS [BODY_BYTES]]]\n", prog);
        exit(2);
    }
    a.url = argv[1];
    a.conns = bench_arg_long(prog, argc, argv, 2, 32, 1, BENCH_MAX_CONNECTIONS);
    a.seconds = bench_arg_long(prog, argc, argv, 3, 5, 1, 3600);
    a.body_bytes =
        bench_arg_long(prog, argc, argv, 4, 900, (long)(sizeof(head) + sizeof(tail)), 1 << 24);
    a.body = malloc((size_t)a.body_bytes + 1);
    if (!a.body)
        exit(1);
    memcpy(a.body, head, sizeof(head) - 1);
    memset(a.body + sizeof(head) - 1, 'x', (size_t)a.body_bytes - (sizeof(head) - 1));
    memcpy(a.body + a.body_bytes - (long)(sizeof(tail) - 1), tail, sizeof(tail) - 1);
    a.body[a.body_bytes] = '\0';
    return a;
}

#endif
