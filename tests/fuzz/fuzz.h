/*
 * What the fuzz targets share. Each tests/fuzz/fuzz_<name>.c defines the
 * libFuzzer entry point below; the same object links either with clang's
 * libFuzzer (`make fuzz`) or with replay.c, a plain main() that feeds it
 * every file of the seed corpus (`make test-unit`).
 *
 * A target returns normally for any input the code under test handles,
 * rejected or not; it calls hb_fuzz_fail (abort) when a property that must
 * hold does not, so libFuzzer keeps the input as a crash.
 */
#ifndef HB_FUZZ_H
#define HB_FUZZ_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_codec.h"
#include "hb_schemas.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken property: say which and abort, so the input becomes a finding. */
static inline void hb_fuzz_fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz: property broken: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

/* The IdentityEvent codec of a target, made on first use and freed at exit,
 * so that LeakSanitizer sees only what an input leaked. */
static inline hb_codec_t **hb_fuzz_identity_codec_slot(void) {
    static hb_codec_t *codec;
    return &codec;
}

static inline void hb_fuzz_identity_codec_free(void) {
    hb_codec_free(*hb_fuzz_identity_codec_slot());
    *hb_fuzz_identity_codec_slot() = NULL;
}

static inline hb_codec_t *hb_fuzz_identity_codec(void) {
    hb_codec_t **slot = hb_fuzz_identity_codec_slot();
    char err[256];
    if (!*slot) {
        *slot = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
        if (!*slot)
            hb_fuzz_fail("IdentityEvent codec", err);
        atexit(hb_fuzz_identity_codec_free);
    }
    return *slot;
}

/* The schema text with the named top-level fields removed: an older writer
 * schema, so decoding through schema resolution is fuzzed too. Caller frees. */
static inline char *hb_fuzz_schema_without(const char *schema, const char *const *drop,
                                           size_t ndrop) {
    json_error_t jerr;
    json_t *s = json_loads(schema, 0, &jerr), *fields;
    char *out;
    if (!s)
        hb_fuzz_fail("embedded schema parses", jerr.text);
    fields = json_object_get(s, "fields");
    for (size_t i = 0; i < json_array_size(fields);) {
        const char *name = json_string_value(json_object_get(json_array_get(fields, i), "name"));
        int hit = 0;
        for (size_t k = 0; k < ndrop && name; k++)
            hit |= !strcmp(name, drop[k]);
        if (hit)
            (void)json_array_remove(fields, i);
        else
            i++;
    }
    out = json_dumps(s, JSON_COMPACT);
    json_decref(s);
    if (!out)
        hb_fuzz_fail("older schema serializes", NULL);
    return out;
}

/* The older writer schemas the targets register (and gen_seeds encodes with). */
static const char *const hb_fuzz_identity_v0_drop[] = {"securityContext", "request"};
static const char *const hb_fuzz_retry_v0_drop[] = {"schedule_offset"};

#endif
