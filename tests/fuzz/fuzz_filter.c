/*
 * libFuzzer target for lib/hb_filter.c: the input bytes are parsed as JSON
 * (jansson, any value), compiled as a filter, and, when they compile, matched
 * against a few fixed Okta-shaped events. Besides crashes and sanitizer
 * reports it checks what must always hold:
 *   - a refused filter has a message starting with "filter";
 *   - {"$not": f}, when it compiles, gives the opposite verdict of f.
 *
 * Run with `make fuzz FUZZ_TARGETS=filter`; `make test-unit` replays its
 * corpus (tests/fuzz/corpus/filter) like every target's.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hb_filter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const event_texts[] = {
    "{\"uuid\": \"e1\", \"eventType\": \"user.session.start\", \"severity\": \"INFO\","
    " \"outcome\": {\"result\": \"SUCCESS\", \"reason\": null},"
    " \"actor\": {\"id\": \"00u1\", \"type\": \"User\", \"alternateId\": \"alice@example.com\"},"
    " \"client\": {\"ipAddress\": \"10.0.0.1\", \"zone\": null},"
    " \"target\": [{\"id\": \"0oa1\", \"type\": \"AppInstance\"}, {\"type\": \"User\","
    " \"details\": [{\"k\": \"v\"}]}],"
    " \"debugContext\": {\"debugData\": {\"risk\": 3, \"behaviors\": [\"New IP\"]}},"
    " \"version\": 0, \"score\": 1.5, \"flag\": true}",
    "{\"eventType\": \"user.session.end\", \"outcome\": {\"result\": \"FAILURE\"}, \"target\": []}",
    "{}",
    "[1, \"a\", null]",
};

static json_t *events[HB_ARRAY_SIZE(event_texts)];

static void load_events(void) {
    for (size_t i = 0; i < HB_ARRAY_SIZE(event_texts); i++) {
        events[i] = json_loads(event_texts[i], 0, NULL);
        if (!events[i])
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[512];
    if (!events[0])
        load_events();
    json_t *spec = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!spec)
        return 0;
    hb_filter_t *f = hb_filter_compile(spec, err, sizeof(err));
    if (!f) {
        if (strncmp(err, "filter", 6) != 0)
            abort();
        json_decref(spec);
        return 0;
    }
    /* NULL when wrapping exceeds a bound, or f is {} (empty only at the top) */
    json_t *neg_spec = json_pack("{s:O}", "$not", spec);
    hb_filter_t *neg = neg_spec ? hb_filter_compile(neg_spec, err, sizeof(err)) : NULL;
    for (size_t i = 0; i < HB_ARRAY_SIZE(events); i++) {
        int m = hb_filter_match(f, events[i]);
        if (m != 0 && m != 1)
            abort();
        if (neg && hb_filter_match(neg, events[i]) != !m)
            abort();
    }
    hb_filter_free(neg);
    json_decref(neg_spec);
    hb_filter_free(f);
    json_decref(spec);
    return 0;
}
