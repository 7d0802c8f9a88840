/*
 * The producer's per-event CPU without Kafka: generate an event
 * (lib/hb_generate.c), normalize it, encode it, free both; the two encode
 * ways side by side in one process, alternating rounds (A B A B ...):
 *   generic  avro-c's generic value built from the JSON and written (the
 *            encode of before, hb_codec_set_generic_only);
 *   direct   the walk from the JSON straight to the bytes (encode now);
 * and, to tell the steps apart, rounds that stop earlier: gen (generate and
 * free), normalize (generate, normalize, free). Then the ingest endpoint's
 * part, the same two ways: hb_ingest_parse of an Okta event-hook body of 50
 * sample events (tests/sample_events.h, each its own uuid), per event.
 * Prints CPU ns per event (CLOCK_PROCESS_CPUTIME_ID, read once a round) for
 * every round. BENCH_ENCODE_EVENTS (default 20000) events a round,
 * BENCH_ENCODE_ROUNDS (default 5) rounds; BENCH_ENCODE_ONLY=gen|normalize|
 * generic|direct|ingest-generic|ingest-direct runs one way (for perf).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hb_generate.h"
#include "../sample_events.h"
#include "hb_buf.h"
#include "hb_codec.h"
#include "hb_event.h"
#include "hb_ingest.h"
#include "hb_schemas.h"

#define HB_BENCH_BODY_EVENTS 50

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

static const char *const ways[] = {"gen",    "normalize",      "generic",
                                   "direct", "ingest-generic", "ingest-direct"};

/* An event-hook body of HB_BENCH_BODY_EVENTS copies of full_event, each
 * with its own uuid. */
static char *ingest_body(size_t *len) {
    json_t *events = json_array(), *root;
    char *text;
    for (int i = 0; i < HB_BENCH_BODY_EVENTS; i++) {
        json_t *ev = json_loads(full_event, 0, NULL);
        char uuid[40];
        snprintf(uuid, sizeof(uuid), "00000000-0000-4000-8000-%012d", i);
        (void)json_object_set_new(ev, "uuid", json_string(uuid));
        (void)json_array_append_new(events, ev);
    }
    root =
        json_pack("{s:s, s:{s:o}}", "eventType", HB_INGEST_ENVELOPE_TYPE, "data", "events", events);
    text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    *len = strlen(text);
    return text;
}

/* One round of ingest: bodies parsed until events events are done. */
static size_t ingest_round(hb_codec_t *c, int way, const char *body, size_t len, long events) {
    char err[512];
    size_t bytes = 0;
    hb_codec_set_generic_only(c, way == 4);
    for (long done = 0; done < events; done += HB_BENCH_BODY_EVENTS) {
        hb_ingest_batch_t b;
        if (hb_ingest_parse(c, body, len, &b, err, sizeof(err)) < 0)
            die("ingest", err);
        if (b.refused)
            die("ingest", b.msgs[0].refused ? b.msgs[0].refused : "an event was refused");
        for (size_t i = 0; i < b.cnt; i++)
            bytes += b.msgs[i].value_len;
        hb_ingest_batch_free(&b);
    }
    return bytes;
}

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
    size_t body_len;
    char *body = ingest_body(&body_len);
    if (!c)
        die("codec", err);
    hb_gen_init(&g, 2026);
    printf("%ld events a round; CPU ns per event, each round up to and with its step\n", events);
    for (long r = 0; r < rounds; r++) {
        for (int way = 0; way < 6; way++) {
            double start;
            size_t bytes;
            if (only && strcmp(only, ways[way]))
                continue;
            start = cpu_ns();
            bytes = way < 4 ? round_of(c, &g, way, events)
                            : ingest_round(c, way, body, body_len, events);
            printf("round %ld %-9s %6.0f ns/event", r + 1, ways[way],
                   (cpu_ns() - start) / (double)events);
            if (way >= 2)
                printf("  (%zu bytes/event)", bytes / (size_t)events);
            printf("\n");
        }
    }
    hb_gen_free(&g);
    hb_codec_free(c);
    free(body);
    return 0;
}
