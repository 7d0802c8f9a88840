/*
 * The producer's per-event CPU without Kafka: generate an event
 * (producer/generate.c), normalize it, encode it, free both; the two encode
 * ways side by side in one process, alternating rounds (A B A B ...):
 *   generic  avro-c's generic value built from the JSON and written (the
 *            encode of before, hb_codec_set_generic_only);
 *   direct   the walk from the JSON straight to the bytes (encode now);
 * and, to tell the steps apart, rounds that stop earlier: gen (generate and
 * free), normalize (generate, normalize, free).
 * Prints CPU ns per event (CLOCK_PROCESS_CPUTIME_ID, read once a round) for
 * every round. BENCH_ENCODE_EVENTS (default 20000) events a round,
 * BENCH_ENCODE_ROUNDS (default 5) rounds; BENCH_ENCODE_ONLY=gen|normalize|
 * generic|direct runs one way (for perf).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../producer/generate.c"
#include "hb_codec.h"
#include "hb_event.h"
#include "hb_schemas.h"

static double cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char *what, const char *err) {
    fprintf(stderr, "bench_encode: %s: %s\n", what, err);
    exit(1);
}

static long env_long(const char *name, long dflt) {
    const char *s = getenv(name);
    char *end;
    long v;
    if (!s || !*s)
        return dflt;
    v = strtol(s, &end, 10);
    return *end || v <= 0 ? dflt : v;
}

static const char *const ways[] = {"gen", "normalize", "generic", "direct"};

/* One round of events events, up to the step way names; bytes encoded. */
static size_t round_of(hb_codec_t *c, hb_gen_t *g, int way, long events) {
    char err[256];
    size_t bytes = 0;
    hb_codec_set_generic_only(c, way == 2);
    for (long i = 0; i < events; i++) {
        json_t *ev = hb_gen_event(g);
        void *buf = NULL;
        size_t len = 0;
        if (way >= 1 && hb_event_normalize(ev, 0, err, sizeof(err)) < 0)
            die("normalize", err);
        if (way >= 2 && hb_codec_encode(c, ev, &buf, &len, err, sizeof(err)) < 0)
            die("encode", err);
        free(buf);
        json_decref(ev);
        bytes += len;
    }
    return bytes;
}

int main(void) {
    long events = env_long("BENCH_ENCODE_EVENTS", 20000);
    long rounds = env_long("BENCH_ENCODE_ROUNDS", 5);
    const char *only = getenv("BENCH_ENCODE_ONLY");
    char err[256];
    hb_codec_t *c = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    hb_gen_t g;
    if (!c)
        die("codec", err);
    hb_gen_init(&g, 2026);
    printf("%ld events a round; CPU ns per event, each round up to and with its step\n", events);
    for (long r = 0; r < rounds; r++) {
        for (int way = 0; way < 4; way++) {
            double start;
            size_t bytes;
            if (only && strcmp(only, ways[way]))
                continue;
            start = cpu_ns();
            bytes = round_of(c, &g, way, events);
            printf("round %ld %-9s %6.0f ns/event", r + 1, ways[way],
                   (cpu_ns() - start) / (double)events);
            if (way >= 2)
                printf("  (%zu bytes/event)", bytes / (size_t)events);
            printf("\n");
        }
    }
    hb_gen_free(&g);
    hb_codec_free(c);
    return 0;
}
