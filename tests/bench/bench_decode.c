/*
 * The dispatcher's per-event CPU without Kafka or HTTP: decode one
 * IdentityEvent message and render its okta payload (one subscription, no
 * field selection, and one with a selection), the two ways side by side in
 * one process, alternating rounds (A B A B ...):
 *   json  hb_codec_decode to a jansson object, the renderer of before
 *         (tests/render_ref.h), json_decref: the path before events were text
 *         (its reals are written by today's hb_json, without printf when
 *         short: a little faster than it was);
 *   text  hb_codec_decode_doc to text, hb_ev_new, hb_deliver_render,
 *         hb_ev_unref: the dispatcher's path now.
 * Prints CPU ns per event (CLOCK_PROCESS_CPUTIME_ID) for every round.
 * BENCH_DECODE_EVENTS (default 20000) messages a round, BENCH_DECODE_ROUNDS
 * (default 5) rounds; BENCH_DECODE_ONLY=json|text runs one way (for perf).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../render_ref.h"
#include "../sample_events.h"
#include "hb_codec.h"
#include "hb_deliver.h"
#include "hb_event.h"
#include "hb_schemas.h"
#include "hb_sub.h"

#define DID "0f8b6a1e-3c2d-8e4f-9a0b-1c2d3e4f5a6b"

static double cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char *what, const char *err) {
    fprintf(stderr, "bench_decode: %s: %s\n", what, err);
    exit(1);
}

int main(void) {
    const char *env = getenv("BENCH_DECODE_EVENTS");
    size_t events = env ? strtoul(env, NULL, 10) : 20000;
    int rounds = getenv("BENCH_DECODE_ROUNDS") ? atoi(getenv("BENCH_DECODE_ROUNDS")) : 5;
    const char *only = getenv("BENCH_DECODE_ONLY"); /* json or text: one way (for perf) */
    char err[256];
    hb_codec_t *c = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    hb_sub_t *subs[2] = {hb_sub_new(), hb_sub_new()};
    json_t *ev, *fields;
    void *msg = NULL;
    size_t len = 0, bytes = 0;
    hb_jdoc_t doc = {0};
    if (!c)
        die("codec", err);
    ev = json_loads(full_event, 0, NULL);
    if (!ev || hb_codec_encode(c, ev, &msg, &len, err, sizeof(err)) < 0)
        die("encode", err);
    json_decref(ev);
    fields = json_pack("[s,s]", "actor", "target");
    if (hb_sub_set_fields(subs[1], fields, err, sizeof(err)) < 0)
        die("fields", err);
    json_decref(fields);
    printf("bench_decode: %zu events a round, %zu-byte message, okta format\n", events, len);
    for (int r = 0; r < rounds; r++) {
        for (int way = 0; way < 2; way++) {
            if (only && strcmp(only, way ? "text" : "json"))
                continue;
            for (int s = 0; s < 2; s++) {
                double t0 = cpu_ns();
                for (size_t i = 0; i < events; i++) {
                    hb_payload_t p;
                    if (way == 0) {
                        json_t *j = NULL;
                        if (hb_codec_decode(c, msg, len, &j, err, sizeof(err)) < 0)
                            die("decode", err);
                        if (ref_render(subs[s], &j, 1, DID, "hookbridge", 1764384600123LL, &p, err,
                                       sizeof(err)) < 0)
                            die("render", err);
                        json_decref(j);
                    } else {
                        json_t *j = NULL;
                        hb_event_t *e;
                        if (hb_codec_decode_doc(c, msg, len, &doc, &j, err, sizeof(err)) < 0)
                            die("decode", err);
                        e = hb_ev_new(&doc, j);
                        if (!e || hb_deliver_render(subs[s], &e, 1, DID, "hookbridge",
                                                    1764384600123LL, &p, err, sizeof(err)) < 0)
                            die("render", err);
                        hb_ev_unref(e);
                    }
                    bytes += p.len;
                    free(p.body);
                }
                printf("round %d %-4s %-9s %7.0f ns/event\n", r + 1, way ? "text" : "json",
                       s ? "selection" : "whole", (cpu_ns() - t0) / (double)events);
            }
        }
    }
    fprintf(stderr, "(%zu bytes rendered)\n", bytes);
    free(msg);
    hb_jdoc_free(&doc);
    hb_sub_unref(subs[0]);
    hb_sub_unref(subs[1]);
    hb_codec_free(c);
    return 0;
}
