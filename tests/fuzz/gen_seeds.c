/*
 * Writes the seed corpus: tests/fuzz/corpus/<target>/<name>. Run once when
 * the seeds change (the bytes are committed; the fuzz targets and the replay
 * only read them):
 *
 *   make B=/tmp/b BIN=/tmp/b/bin /tmp/b/tests/fuzz/gen_seeds
 *   /tmp/b/tests/fuzz/gen_seeds tests/fuzz/corpus
 *
 * Avro seeds are real messages made with the codec (current and older writer
 * schemas), plus hostile variants cut from them: truncated, trailing bytes,
 * bad magic, unknown fingerprint, huge or negative lengths, a bad union
 * branch, a non-finite double, invalid UTF-8. JSON seeds are producer lines,
 * good and bad. Ingest seeds are Okta event-hook bodies: envelopes with
 * one, several and no events, a refused event among good ones, the wrong
 * envelope, a bare LogEvent, wrong member types, invalid UTF-8, NUL bytes,
 * strings longer than any error buffer, deep nesting. Files named regress-*
 * are not written here: each was found by a fuzzer and is kept as it was
 * found.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../sample_events.h"
#include "fuzz.h"
#include "hb_codec.h"
#include "hb_schemas.h"

static const char *root;

static void put(const char *target, const char *name, const void *data, size_t len) {
    char path[512];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", root, target);
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        hb_fuzz_fail("mkdir", path);
    snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
    f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        hb_fuzz_fail("write", path);
}

static void put_text(const char *target, const char *name, const char *text) {
    put(target, name, text, strlen(text));
}

/* A growing byte string, for hand-made Avro bodies. */
typedef struct {
    unsigned char b[256];
    size_t n;
} bytes_t;

static void add(bytes_t *o, const void *p, size_t n) {
    if (o->n + n > sizeof(o->b))
        hb_fuzz_fail("seed too long", NULL);
    memcpy(o->b + o->n, p, n);
    o->n += n;
}

static void add_long(bytes_t *o, int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    do {
        unsigned char c = (unsigned char)(z & 0x7f);
        z >>= 7;
        if (z)
            c |= 0x80;
        add(o, &c, 1);
    } while (z);
}

static void add_str(bytes_t *o, const char *s) {
    add_long(o, (int64_t)strlen(s));
    add(o, s, strlen(s));
}

static void add_header(bytes_t *o, uint64_t fp) {
    unsigned char h[10] = {0xC3, 0x01};
    for (int i = 0; i < 8; i++)
        h[2 + i] = (unsigned char)(fp >> (8 * i));
    add(o, h, sizeof(h));
}

static void put_bytes(const char *target, const char *name, const bytes_t *o) {
    put(target, name, o->b, o->n);
}

/* Encodes JSON text with c and writes it; returns the bytes (caller frees). */
static unsigned char *put_encoded(const char *target, const char *name, hb_codec_t *c,
                                  const char *text, size_t *len) {
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_ALLOW_NUL, &jerr);
    void *buf = NULL;
    char err[256];
    if (!j)
        hb_fuzz_fail("seed JSON", jerr.text);
    if (hb_codec_encode(c, j, &buf, len, err, sizeof(err)) < 0)
        hb_fuzz_fail("seed encodes", err);
    json_decref(j);
    put(target, name, buf, *len);
    return buf;
}

static hb_codec_t *codec(const char *schema) {
    char err[256];
    hb_codec_t *c = hb_codec_new(schema, err, sizeof(err));
    if (!c)
        hb_fuzz_fail("codec", err);
    return c;
}

static void identity_seeds(void) {
    static const char t[] = "avro_identity";
    hb_codec_t *cur = codec(hb_schema_identity_event);
    char *v0_schema = hb_fuzz_schema_without(hb_schema_identity_event, hb_fuzz_identity_v0_drop,
                                             HB_ARRAY_SIZE(hb_fuzz_identity_v0_drop));
    hb_codec_t *v0 = codec(v0_schema);
    uint64_t fp = hb_codec_fingerprint(cur);
    unsigned char *full, *min;
    size_t full_len, min_len, len, strings_end;
    bytes_t o;

    full = put_encoded(t, "full-event", cur, full_event, &full_len);
    min = put_encoded(t, "minimal-event", cur, minimal_event, &min_len);
    free(put_encoded(t, "targets-and-maps", cur,
                     "{\"uuid\":\"u-2\",\"published\":\"2024-05-01T00:00:00.5+02:00\","
                     "\"eventType\":\"group.user_membership.add\",\"target\":[{\"id\":\"00g1\","
                     "\"type\":\"UserGroup\",\"detailEntry\":{\"a\":\"1\",\"b\":\"\"}},{\"id\":"
                     "\"00u2\",\"type\":\"User\"},{}],\"transaction\":{\"detail\":{\"k\":\"v\"}}}",
                     &len));
    free(put_encoded(t, "unicode-and-escapes", cur,
                     "{\"uuid\":\"\\u00e9\\u4e2d\\ud83d\\ude00\",\"published\":\"p\",\"eventType\":"
                     "\"t\\n\\\"x\\\"\",\"displayMessage\":\"nul\\u0000inside\",\"actor\":{\"id\":"
                     "\"\"}}",
                     &len));
    free(put_encoded(t, "v0-writer", v0,
                     "{\"uuid\":\"u-0\",\"published\":\"2023-01-01T00:00:00Z\",\"eventType\":"
                     "\"user.lifecycle.create\",\"actor\":{\"id\":\"00uadmin\",\"type\":\"User\"},"
                     "\"client\":{\"geographicalContext\":{\"geolocation\":{\"lat\":-1.5,\"lon\":"
                     "1e300}}}}",
                     &len));

    put(t, "empty", "", 0);
    put(t, "truncated-full-event", full, full_len - 5);
    put(t, "header-only", full, 10);
    put(t, "half-header", full, 6);
    memset(&o, 0, sizeof(o));
    add(&o, min, min_len);
    add(&o, "\0\0\0", 3);
    put_bytes(t, "trailing-bytes", &o);
    memset(&o, 0, sizeof(o));
    add(&o, "\xC3\x02", 2);
    add(&o, min + 2, min_len - 2);
    put_bytes(t, "bad-magic", &o);
    memset(&o, 0, sizeof(o));
    add_header(&o, fp ^ 1);
    add(&o, min + 10, min_len - 10);
    put_bytes(t, "unknown-fingerprint", &o);
    memset(&o, 0, sizeof(o));
    add_header(&o, fp);
    add_long(&o, 1LL << 40);
    add(&o, "abc", 3);
    put_bytes(t, "huge-string-length", &o);
    memset(&o, 0, sizeof(o));
    add_header(&o, fp);
    add_long(&o, -5);
    put_bytes(t, "negative-string-length", &o);
    memset(&o, 0, sizeof(o));
    add_header(&o, fp);
    add(&o, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11); /* over 64 bits */
    put_bytes(t, "overlong-varint", &o);

    /* After the three required strings come the 13 optional unions. */
    strings_end = 10 + 3 + strlen(MINIMAL_EVENT_UUID) + strlen(MINIMAL_EVENT_PUBLISHED) +
                  strlen(MINIMAL_EVENT_TYPE);
    memset(&o, 0, sizeof(o));
    add(&o, min, min_len);
    o.b[strings_end] = 0x0a; /* branch 5 of ["null", "string"] */
    put_bytes(t, "bad-union-branch", &o);
    memset(&o, 0, sizeof(o));
    add(&o, min, strings_end);
    add(&o, "\x02\x06\xff\xfe\x80", 5); /* version: a 3-byte string that is not UTF-8 */
    add(&o, min + strings_end + 1, min_len - strings_end - 1);
    put_bytes(t, "invalid-utf8", &o);
    memset(&o, 0, sizeof(o));
    add(&o, min, strings_end + 7); /* up to target: ["null", array of Target] */
    add(&o, "\x02", 1);
    add_long(&o, 1LL << 61); /* items */
    add(&o, "\0\0\0\0\0", 5);
    add_long(&o, 0);
    add(&o, "\0\0\0\0\0", 5);
    put_bytes(t, "huge-array-count", &o);
    memset(&o, 0, sizeof(o));
    add(&o, min, strings_end + 7);
    add(&o, "\x02", 1);
    add_long(&o, -1); /* one item, in a block with a byte size */
    add_long(&o, 5);
    add(&o, "\0\0\0\0\0", 5);
    add_long(&o, -1);
    add_long(&o, 7);
    add(&o, "\x02\x02x\0\0\0\0", 7);
    add_long(&o, 0);
    add(&o, "\0\0\0\0\0", 5);
    put_bytes(t, "array-blocks-with-sizes", &o);
    memset(&o, 0, sizeof(o));
    add(&o, min, strings_end + 4);                /* up to actor */
    add(&o, "\x02\0\0\0\0\x02", 6);               /* actor.detailEntry: a map of two, */
    add(&o, "\x04\x02\xff\x02v\x02k\x02w\0", 10); /* "\xff" (not UTF-8): "v", "k": "w" */
    add(&o, "\0\0\0\0\0\0\0\0", 8);               /* client .. request */
    put_bytes(t, "map-key-invalid-utf8", &o);
    memset(&o, 0, sizeof(o));
    add(&o, min, strings_end + 5);                 /* up to client */
    add(&o, "\x02\0\0\0\0\0\x02\0\0\0\0\x02", 12); /* .. geographicalContext.geolocation */
    add(&o, "\0\0\0\0\0\0\xf8\x7f", 8);            /* lat: NaN */
    add(&o, "\0\0\0\0\0\0\xf0\x7f", 8);            /* lon: +inf */
    add(&o, "\0\0\0\0\0\0\0", 7);                  /* outcome .. request */
    put_bytes(t, "non-finite-double", &o);

    free(full);
    free(min);
    free(v0_schema);
    hb_codec_free(v0);
    hb_codec_free(cur);
}

#define RETRY_IDS                                                                                  \
    "\"delivery_id\":\"6a1e3c1e-1111-4222-8333-944455556666\",\"subscription_id\":"                \
    "\"0f9d3c1e-1111-4222-8333-944455556666\""

static void retry_seeds(void) {
    static const char t[] = "avro_retry";
    hb_codec_t *cur = codec(hb_schema_delivery_retry);
    hb_codec_t *events = codec(hb_schema_identity_event);
    char *v0_schema = hb_fuzz_schema_without(hb_schema_delivery_retry, hb_fuzz_retry_v0_drop,
                                             HB_ARRAY_SIZE(hb_fuzz_retry_v0_drop));
    hb_codec_t *v0 = codec(v0_schema);
    unsigned char *good;
    size_t good_len, len;
    bytes_t o;

    good = put_encoded(t, "first-retry", cur,
                       "{" RETRY_IDS ",\"event_ids\":[\"f1c9b0b4-6c59-11ee-9f1a-0b5d4c1e2a77\"],"
                       "\"event_type\":\"user.session.start\",\"content_type\":"
                       "\"application/json\",\"body\":\"{\\\"data\\\":{\\\"events\\\":[]}}\","
                       "\"attempt\":2,\"not_before_ms\":1714567895123,\"first_attempt_ms\":"
                       "1714567890123,\"last_status\":503,\"last_error\":\"HTTP 503\","
                       "\"schedule_offset\":0}",
                       &good_len);
    free(put_encoded(t, "batch-replay", cur,
                     "{" RETRY_IDS ",\"event_ids\":[\"a\",\"b\",\"c\"],\"event_type\":\"t\","
                     "\"content_type\":\"application/cloudevents-batch+json\",\"body\":\"[]\","
                     "\"attempt\":5,\"not_before_ms\":0,\"first_attempt_ms\":0,\"last_status\":0,"
                     "\"last_error\":\"timeout after 10000 ms\",\"schedule_offset\":3}",
                     &len));
    free(put_encoded(t, "v0-writer", v0,
                     "{" RETRY_IDS ",\"event_ids\":[],\"event_type\":\"t\",\"content_type\":\"c\","
                     "\"body\":\"\",\"attempt\":8,\"not_before_ms\":-1,\"first_attempt_ms\":"
                     "9223372036854775807,\"last_status\":-1,\"last_error\":\"\"}",
                     &len));
    free(put_encoded(t, "poison-attempt-zero", cur,
                     "{" RETRY_IDS ",\"event_ids\":[\"x\"],\"event_type\":\"t\",\"content_type\":"
                     "\"c\",\"body\":\"b\",\"attempt\":0,\"not_before_ms\":0,\"first_attempt_ms\":"
                     "0,\"last_status\":0,\"last_error\":\"\"}",
                     &len));
    free(put_encoded(t, "poison-offset-not-below-attempt", cur,
                     "{" RETRY_IDS ",\"event_ids\":[\"x\"],\"event_type\":\"t\",\"content_type\":"
                     "\"c\",\"body\":\"b\",\"attempt\":3,\"not_before_ms\":0,\"first_attempt_ms\":"
                     "0,\"last_status\":0,\"last_error\":\"\",\"schedule_offset\":3}",
                     &len));
    free(put_encoded(t, "poison-short-ids", cur,
                     "{\"delivery_id\":\"d\",\"subscription_id\":\"s\",\"event_ids\":[\"x\"],"
                     "\"event_type\":\"t\",\"content_type\":\"c\",\"body\":\"b\",\"attempt\":2,"
                     "\"not_before_ms\":0,\"first_attempt_ms\":0,\"last_status\":0,"
                     "\"last_error\":\"\"}",
                     &len));
    free(put_encoded(t, "odd-strings", cur,
                     "{" RETRY_IDS ",\"event_ids\":[\"a,b\",\"\",\"\\u00e9\"],\"event_type\":\"\","
                     "\"content_type\":\"\",\"body\":\"nul\\u0000inside\",\"attempt\":1000,"
                     "\"not_before_ms\":0,\"first_attempt_ms\":0,\"last_status\":2147483647,"
                     "\"last_error\":\"\\n\",\"schedule_offset\":999}",
                     &len));
    /* an identity event on a delay topic: a fingerprint the reader does not know */
    free(put_encoded(t, "identity-event-on-delay-topic", events, minimal_event, &len));
    put(t, "truncated", good, good_len - 1);
    memset(&o, 0, sizeof(o));
    add(&o, good, good_len);
    add(&o, "\x02", 1);
    put_bytes(t, "trailing-byte", &o);
    memset(&o, 0, sizeof(o));
    add_header(&o, hb_codec_fingerprint(cur));
    add_str(&o, "6a1e3c1e-1111-4222-8333-944455556666");
    add_str(&o, "0f9d3c1e-1111-4222-8333-944455556666");
    add_long(&o, 1LL << 60); /* event_ids count */
    add_str(&o, "x");
    put_bytes(t, "huge-event-ids-count", &o);
    put(t, "not-single-object", good + 10, good_len - 10);

    free(good);
    free(v0_schema);
    hb_codec_free(v0);
    hb_codec_free(events);
    hb_codec_free(cur);
}

#define BAD_UTF8_LINE "{\"eventType\":\"user.session.start\",\"displayMessage\":\"\xff\xfe\"}\n"
#define NUL_LINE "{\"eventType\":\"user.session.start\"}\0\n"

static void json_seeds(void) {
    static const char t[] = "event_json";
    char deep[4200];
    size_t n = 0;
    put_text(t, "full-event", full_event);
    put_text(t, "minimal-event", minimal_event);
    put_text(t, "several-lines",
             "{\"eventType\":\"user.session.start\",\"actor\":{\"id\":\"00u1\"}}\n"
             "\n  \t\r\n"
             "{\"eventType\":\"user.session.end\",\"target\":[{\"type\":\"User\",\"id\":\"00u2\"}],"
             "\"severity\":\"WARN\",\"published\":\"2024-05-01T12:00:00.000+02:00\"}\n"
             "not json\n");
    put_text(t, "missing-event-type", "{\"uuid\":\"u\"}\n");
    put_text(t, "unknown-event-type", "{\"eventType\":\"made.up.type\"}\n");
    put_text(t, "bad-published",
             "{\"eventType\":\"user.session.start\",\"published\":"
             "\"2024-05-01 12:00\"}\n");
    put_text(t, "bad-severity", "{\"eventType\":\"user.session.start\",\"severity\":\"LOUD\"}\n");
    put_text(t, "empty-uuid", "{\"eventType\":\"user.session.start\",\"uuid\":\"\"}\n");
    put_text(t, "wrong-types",
             "{\"eventType\":\"user.session.start\",\"actor\":\"root\",\"target\":{},"
             "\"client\":{\"geographicalContext\":{\"geolocation\":{\"lat\":\"x\"}}}}\n");
    put_text(t, "wrong-type-event-type", "{\"eventType\":7}\n");
    put_text(t, "int-out-of-range",
             "{\"eventType\":\"user.session.start\",\"securityContext\":{\"asNumber\":4294967296}}"
             "\n");
    put_text(t, "nulls",
             "{\"eventType\":\"user.session.start\",\"uuid\":null,\"actor\":null,"
             "\"target\":[null],\"version\":null}\n");
    put_text(t, "duplicate-keys", "{\"eventType\":\"user.session.start\",\"eventType\":\"x\"}\n");
    put_text(t, "not-an-object", "[\"eventType\",\"user.session.start\"]\n");
    put_text(t, "trailing-garbage", "{\"eventType\":\"user.session.start\"} {}\n");
    put(t, "invalid-utf8", BAD_UTF8_LINE, sizeof(BAD_UTF8_LINE) - 1);
    put(t, "nul-byte", NUL_LINE, sizeof(NUL_LINE) - 1);
    put_text(t, "escaped-nul", "{\"eventType\":\"user.session.start\\u0000x\"}\n");
    while (n < 2100)
        deep[n++] = '[';
    while (n < 4200)
        deep[n++] = ']';
    put(t, "deep-nesting", deep, sizeof(deep));
    n = 0;
    n += (size_t)snprintf(deep, sizeof(deep), "{\"eventType\":\"user.session.start\",\"actor\":");
    while (n < 4000)
        n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{\"a\":");
    put(t, "deep-object-unterminated", deep, n);
}

/* An Okta event-hook envelope around the given events (as Okta sends it). */
#define ENVELOPE_HEAD                                                                              \
    "{\"eventType\":\"com.okta.event_hook\",\"eventTypeVersion\":\"1.0\","                         \
    "\"cloudEventsVersion\":\"0.1\",\"source\":\"https://example.okta.com/api/v1/eventHooks/"      \
    "who8sy0SomeHook\",\"eventId\":\"b5a188b9-5ece-4636-b041-482ffda96311\","                      \
    "\"eventTime\":\"2024-05-01T12:34:57.000Z\",\"contentType\":\"application/json\","             \
    "\"data\":{\"events\":["
#define ENVELOPE_TAIL "]}}"
#define ENVELOPE(events) ENVELOPE_HEAD events ENVELOPE_TAIL
#define INVALID_UTF8_EVENTS                                                                        \
    ENVELOPE("{\"eventType\":\"user.session.start\",\"displayMessage\":\"\xc3\x28\"}")
#define NUL_AFTER_BODY ENVELOPE("{\"eventType\":\"x\"}") "\0"
#define NUL_IN_STRING_BODY ENVELOPE("{\"eventType\":\"x\0y\"}")

/* A string of n copies of c (n < size). */
static char *fill(char *buf, size_t size, char c, size_t n) {
    if (n >= size)
        hb_fuzz_fail("fill too long", NULL);
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

static void ingest_seeds(void) {
    static const char t[] = "ingest";
    static char big[20000], body[40000];
    char deep[4800];
    size_t n = 0;
    int len;

    len = snprintf(body, sizeof(body), ENVELOPE_HEAD "%s" ENVELOPE_TAIL, full_event);
    put(t, "one-event", body, (size_t)len);
    len = snprintf(body, sizeof(body), ENVELOPE_HEAD "%s,%s,%s" ENVELOPE_TAIL, full_event,
                   minimal_event,
                   "{\"eventType\":\"policy.evaluate_sign_on\",\"actor\":{\"id\":\"00uA\","
                   "\"type\":\"User\"},\"target\":[{\"id\":\"0oaX\",\"type\":\"AppInstance\"},"
                   "{\"id\":\"00uB\",\"type\":\"User\"}],\"severity\":\"WARN\"}");
    put(t, "several-events", body, (size_t)len);
    put_text(t, "no-events", ENVELOPE(""));
    put_text(t, "bare-envelope",
             "{\"eventType\":\"com.okta.event_hook\",\"data\":{\"events\":[]}}");
    put_text(t, "second-event-bad",
             ENVELOPE("{\"eventType\":\"user.session.start\"},{\"uuid\":\"u\"},"
                      "{\"eventType\":\"user.session.end\"}"));
    put_text(t, "last-event-not-object",
             ENVELOPE("{\"eventType\":\"user.session.start\"},[],\"x\",7,null"));
    put_text(t, "wrong-envelope-type",
             "{\"eventType\":\"com.okta.inline_hook\",\"data\":{\"events\":[]}}");
    put_text(t, "envelope-type-not-string", "{\"eventType\":[\"com.okta.event_hook\"]}");
    put_text(t, "bare-log-event", full_event);
    put_text(t, "no-data", "{\"eventType\":\"com.okta.event_hook\"}");
    put_text(t, "data-not-object", "{\"eventType\":\"com.okta.event_hook\",\"data\":[]}");
    put_text(t, "events-not-array",
             "{\"eventType\":\"com.okta.event_hook\",\"data\":{\"events\":{\"0\":{}}}}");
    put_text(t, "duplicate-envelope-keys",
             "{\"eventType\":\"com.okta.event_hook\",\"data\":{\"events\":[]},\"data\":{}}");
    put_text(t, "duplicate-event-keys",
             ENVELOPE("{\"eventType\":\"user.session.start\",\"uuid\":\"a\",\"uuid\":\"b\"}"));
    put_text(t, "numbers-where-strings-go",
             ENVELOPE("{\"eventType\":\"user.session.start\",\"uuid\":7,\"published\":1.5e9,"
                      "\"actor\":{\"id\":123,\"type\":\"User\"},\"target\":[{\"id\":-1,"
                      "\"type\":\"User\"}]}"));
    put_text(t, "strings-where-numbers-go",
             ENVELOPE("{\"eventType\":\"user.session.start\",\"securityContext\":{\"asNumber\":"
                      "\"3303\",\"isProxy\":\"false\"},\"client\":{\"geographicalContext\":{"
                      "\"geolocation\":{\"lat\":\"47.3\",\"lon\":null}}}}"));
    put_text(t, "out-of-range-numbers",
             ENVELOPE("{\"eventType\":\"user.session.start\",\"securityContext\":{\"asNumber\":"
                      "4294967296}},{\"eventType\":\"x\",\"authenticationContext\":{"
                      "\"authenticationStep\":-9223372036854775808}}"));
    put_text(
        t, "bad-published-and-severity",
        ENVELOPE("{\"eventType\":\"user.session.start\"},{\"eventType\":\"user.session.start\","
                 "\"published\":\"yesterday\"},{\"eventType\":\"x\",\"severity\":\"LOUD\"}"));
    put_text(
        t, "empty-strings",
        ENVELOPE("{\"eventType\":\"\"},{\"eventType\":\"x\",\"uuid\":\"\"},{\"eventType\":"
                 "\"x\",\"actor\":{\"id\":\"\"},\"target\":[{\"type\":\"User\",\"id\":\"\"}]}"));
    put_text(t, "nulls",
             ENVELOPE("{\"eventType\":\"user.session.start\",\"uuid\":null,\"published\":null,"
                      "\"actor\":null,\"target\":[null],\"severity\":null}"));
    put_text(t, "unicode-and-escapes",
             ENVELOPE("{\"eventType\":\"user.session.start\",\"uuid\":\"\\u00e9\\ud83d\\ude00\","
                      "\"actor\":{\"id\":\"\\u4e2d\\u0000x\",\"type\":\"User\"},"
                      "\"displayMessage\":\"nul\\u0000inside\"}"));
    put(t, "invalid-utf8", INVALID_UTF8_EVENTS, sizeof(INVALID_UTF8_EVENTS) - 1);
    put(t, "nul-byte-after", NUL_AFTER_BODY, sizeof(NUL_AFTER_BODY) - 1);
    put(t, "nul-byte-in-string", NUL_IN_STRING_BODY, sizeof(NUL_IN_STRING_BODY) - 1);
    put_text(t, "trailing-garbage", ENVELOPE("") " {}");
    put_text(t, "not-json", "eventType=com.okta.event_hook");
    put(t, "empty", "", 0);

    /* Huge strings: over every buffer an error message is built in. */
    fill(big, sizeof(big), 'a', 16384);
    len =
        snprintf(body, sizeof(body), ENVELOPE("{\"eventType\":\"%s\",\"uuid\":\"%s\"}"), big, big);
    put(t, "huge-strings", body, (size_t)len);
    len = snprintf(body, sizeof(body), "{\"eventType\":\"%s\",\"data\":{\"events\":[]}}", big);
    put(t, "huge-envelope-type", body, (size_t)len);
    for (n = 0; n < 300; n++) /* "é" 300 times: cut in a character by any short buffer */
        memcpy(big + 2 * n, "\xc3\xa9", 2);
    big[2 * n] = '\0';
    len = snprintf(body, sizeof(body),
                   ENVELOPE("{\"eventType\":\"x\",\"published\":\"%s\"},{\"eventType\":\"x\","
                            "\"severity\":\"%s\"}"),
                   big, big);
    put(t, "huge-multibyte-published", body, (size_t)len);
    len = snprintf(body, sizeof(body), "{\"eventType\":\"%s\",\"data\":{\"events\":[]}}", big);
    put(t, "multibyte-envelope-type", body, (size_t)len);

    /* Deep nesting: in an event, and deeper than jansson allows. */
    n = (size_t)snprintf(deep, sizeof(deep), ENVELOPE_HEAD "{\"eventType\":\"x\",\"actor\":");
    while (n < 4000)
        n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{\"a\":");
    put(t, "deep-object-unterminated", deep, n);
    n = (size_t)snprintf(deep, sizeof(deep),
                         ENVELOPE_HEAD "{\"eventType\":\"x\",\"debugContext\":"
                                       "{\"debugData\":");
    for (int d = 0; d < 40; d++)
        n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{\"a\":[");
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "1");
    for (int d = 0; d < 40; d++)
        n += (size_t)snprintf(deep + n, sizeof(deep) - n, "]}");
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "}}" ENVELOPE_TAIL);
    put(t, "deep-debug-data", deep, n);
    n = (size_t)snprintf(deep, sizeof(deep), ENVELOPE_HEAD "{\"eventType\":\"x\",\"extra\":");
    for (int d = 0; d < 2000; d++)
        deep[n++] = '[';
    for (int d = 0; d < 2000; d++)
        deep[n++] = ']';
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "}" ENVELOPE_TAIL);
    put(t, "deep-unknown-member", deep, n);
    /* 6,000 empty objects: more than its 18 KB may open (a memory bound) */
    n = (size_t)snprintf(big, sizeof(big), ENVELOPE_HEAD "{}");
    for (int i = 1; i < 6000; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, ",{}");
    n += (size_t)snprintf(big + n, sizeof(big) - n, ENVELOPE_TAIL);
    put(t, "countless-objects", big, n);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
        return 2;
    }
    root = argv[1];
    if (mkdir(root, 0755) < 0 && errno != EEXIST)
        hb_fuzz_fail("mkdir", root);
    identity_seeds();
    retry_seeds();
    json_seeds();
    ingest_seeds();
    return 0;
}
