/*
 * Fuzz target: producer input, the path one line of JSON takes in
 * hookbridge-producer (producer/main.c run_lines, producer.c send).
 *
 * The input is split into lines as getline would; each line that is not
 * blank is parsed by jansson with JSON_REJECT_DUPLICATES, normalized
 * (hb_event_normalize, with and without unknown event types allowed) and
 * encoded with the IdentityEvent codec, and its Kafka key is taken. Every
 * rejection must come with a reason (the producer prints it per line). A
 * type the catalogue knows must pass both ways alike; an encoded event must
 * decode and keep its uuid, published time and type; a normalized event must
 * always have a key. Encoding, of the line's JSON as parsed and of the
 * normalized event, in both framings, gives the same bytes or the same error
 * as avro-c's generic value (hb_codec_set_generic_only), the way before the
 * direct walk.
 */
#include <string.h>

#include "fuzz.h"
#include "hb_codec.h"
#include "hb_event.h"
#include "hb_schemas.h"

static hb_codec_t *codec;

/* The generic-only twin of the IdentityEvent codec, freed at exit. */
static hb_codec_t *generic;

static void generic_free(void) {
    hb_codec_free(generic);
    generic = NULL;
}

static hb_codec_t *generic_codec(void) {
    char err[256];
    if (!generic) {
        generic = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
        if (!generic)
            hb_fuzz_fail("IdentityEvent codec", err);
        hb_codec_set_generic_only(generic, 1);
        atexit(generic_free);
    }
    return generic;
}

/* The direct encode and the generic one agree on ev, in both framings. */
static void same_encoding(const json_t *ev) {
    for (int framing = 0; framing < 2; framing++) {
        char err[512] = "", gerr[512] = "";
        void *buf = NULL, *gbuf = NULL;
        size_t len = 0, glen = 0;
        int rc = framing ? hb_codec_encode_registry(codec, ev, 7, &buf, &len, err, sizeof(err))
                         : hb_codec_encode(codec, ev, &buf, &len, err, sizeof(err));
        int grc = framing ? hb_codec_encode_registry(generic_codec(), ev, 7, &gbuf, &glen, gerr,
                                                     sizeof(gerr))
                          : hb_codec_encode(generic_codec(), ev, &gbuf, &glen, gerr, sizeof(gerr));
        if (rc != grc || strcmp(err, gerr) || len != glen || (len && memcmp(buf, gbuf, len)))
            hb_fuzz_fail("the direct encode gives what avro-c's generic value gives", err);
        free(buf);
        free(gbuf);
    }
}

static int only_space(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

static int same_member(const json_t *a, const json_t *b, const char *name) {
    return json_equal(json_object_get(a, name), json_object_get(b, name));
}

static void one_line(const uint8_t *line, size_t n) {
    json_error_t jerr;
    json_t *ev, *strict, *back = NULL;
    char err[512] = "", err2[512] = "";
    void *buf = NULL;
    size_t len = 0;
    int strict_ok, loose_ok;
    ev = json_loadb((const char *)line, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!ev) {
        if (!*jerr.text)
            hb_fuzz_fail("invalid JSON has a reason", NULL);
        return;
    }
    same_encoding(ev);
    strict = json_deep_copy(ev);
    strict_ok = hb_event_normalize(strict, 0, err2, sizeof(err2)) == 0;
    loose_ok = hb_event_normalize(ev, 1, err, sizeof(err)) == 0;
    if ((!strict_ok && !*err2) || (!loose_ok && !*err))
        hb_fuzz_fail("a rejected event has a reason", NULL);
    if (strict_ok && !loose_ok)
        hb_fuzz_fail("allowing unknown types never rejects more", err);
    if (strict && loose_ok && hb_event_type_known(hb_event_type(ev)) && !strict_ok)
        hb_fuzz_fail("a known type passes without allow_unknown_types", err2);
    json_decref(strict);
    if (!loose_ok)
        goto done;
    if (!hb_event_key(ev) || !hb_event_uuid(ev) || !hb_event_type(ev))
        hb_fuzz_fail("a normalized event has a key, a uuid and a type", NULL);
    same_encoding(ev);
    if (hb_codec_encode(codec, ev, &buf, &len, err, sizeof(err)) < 0) {
        if (!*err)
            hb_fuzz_fail("an encode error has a reason", NULL);
        goto done;
    }
    if (hb_codec_decode(codec, buf, len, &back, err, sizeof(err)) < 0)
        hb_fuzz_fail("an encoded event decodes", err);
    if (!same_member(ev, back, "uuid") || !same_member(ev, back, "published") ||
        !same_member(ev, back, "eventType"))
        hb_fuzz_fail("an encoded event keeps uuid, published and eventType", NULL);
    json_decref(back);
    free(buf);
done:
    json_decref(ev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t start = 0;
    codec = hb_fuzz_identity_codec();
    while (start < size) {
        const uint8_t *nl = memchr(data + start, '\n', size - start);
        size_t end = nl ? (size_t)(nl - data) + 1 : size; /* getline keeps the newline */
        if (!only_space(data + start, end - start))
            one_line(data + start, end - start);
        start = end;
    }
    return 0;
}
