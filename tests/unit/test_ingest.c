/* Okta event-hook bodies: what the ingest endpoint accepts, how a refusal
 * names the envelope, and how an event at fault is refused alone, kept as
 * it came for the dead-letter topic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "hb_codec.h"
#include "hb_event.h"
#include "hb_ingest.h"
#include "hb_schemas.h"

static hb_codec_t *codec;

static int setup(void **state) {
    char err[256];
    (void)state;
    codec = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    return codec ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    hb_codec_free(codec);
    return 0;
}

static int parse(const char *body, hb_ingest_batch_t *b, char *err, size_t errsz) {
    return hb_ingest_parse(codec, body, strlen(body), b, err, errsz);
}

/* The event's member at path ("a.b.c") after the round trip through Avro. */
static json_t *decoded(const hb_ingest_msg_t *m) {
    char err[256];
    json_t *back = NULL;
    assert_null(m->refused);
    if (hb_codec_decode(codec, m->value, m->value_len, &back, err, sizeof(err)) < 0)
        fail_msg("decode: %s", err);
    return back;
}

#define ENVELOPE_HEAD                                                                              \
    "{\"eventType\":\"com.okta.event_hook\",\"eventTypeVersion\":\"1.0\","                         \
    "\"cloudEventsVersion\":\"0.1\",\"source\":\"https://example.okta.com/api/v1/eventHooks/x\","  \
    "\"eventId\":\"b5a188b9\",\"eventTime\":\"2024-05-01T12:34:56.000Z\","                         \
    "\"contentType\":\"application/json\",\"data\":{\"events\":["
#define ENVELOPE_TAIL "]}}"
#define ENVELOPE(events) ENVELOPE_HEAD events ENVELOPE_TAIL

static void every_event_is_encoded_and_keyed(void **state) {
    hb_ingest_batch_t b;
    char err[512];
    json_t *back;
    (void)state;
    assert_int_equal(
        parse(ENVELOPE("{\"eventType\":\"user.session.start\",\"uuid\":\"u-1\","
                       "\"actor\":{\"id\":\"00uA\",\"type\":\"User\"}},"
                       "{\"eventType\":\"user.lifecycle.create\",\"target\":[{\"id\":\"0oaX\","
                       "\"type\":\"AppInstance\"},{\"id\":\"00uB\",\"type\":\"User\"}]},"
                       /* not in the catalogue: Okta has hundreds of types, accepted */
                       "{\"eventType\":\"policy.evaluate_sign_on\",\"uuid\":\"u-3\"}"),
              &b, err, sizeof(err)),
        0);
    assert_int_equal(b.cnt, 3);
    assert_int_equal(b.refused, 0);
    assert_string_equal(b.msgs[0].key, "00uA"); /* the actor, no target user */
    assert_string_equal(b.msgs[1].key, "00uB"); /* the first target of type User */
    assert_string_equal(b.msgs[2].key, "u-3");  /* else the uuid */
    assert_string_equal(b.msgs[0].uuid, "u-1");
    assert_string_equal(b.msgs[2].type, "policy.evaluate_sign_on");
    for (size_t i = 0; i < b.cnt; i++) {
        assert_null(b.msgs[i].refused);
        assert_memory_equal(b.msgs[i].value, "\xc3\x01", 2); /* single-object encoding */
    }
    /* normalized as the CLI does: uuid and published filled in */
    back = decoded(&b.msgs[1]);
    assert_string_equal(hb_event_type(back), "user.lifecycle.create");
    assert_non_null(hb_event_uuid(back));
    assert_string_equal(b.msgs[1].uuid, hb_event_uuid(back)); /* the one filled in */
    assert_true(json_is_string(json_object_get(back, "published")));
    json_decref(back);
    hb_ingest_batch_free(&b);
    assert_int_equal(b.cnt, 0);
    assert_null(b.msgs);
}

static void an_empty_delivery_is_fine(void **state) {
    hb_ingest_batch_t b;
    char err[512];
    (void)state;
    assert_int_equal(parse(ENVELOPE(""), &b, err, sizeof(err)), 0);
    assert_int_equal(b.cnt, 0);
    hb_ingest_batch_free(&b);
}

/* What is not an event-hook envelope fails the whole body. */
static const struct {
    const char *body;
    const char *says;
} envelope_refusals[] = {
    {"", "invalid JSON"},
    {"{\"eventType\":", "invalid JSON"},
    {"[1,2]", "expected a JSON object"},
    {"{\"data\":{\"events\":[]}}", "eventType missing"},
    {"{\"eventType\":\"user.session.start\",\"uuid\":\"x\"}",
     "eventType is \"user.session.start\", want \"com.okta.event_hook\""},
    {"{\"eventType\":\"com.okta.event_hook\"}", "data: expected an object"},
    {"{\"eventType\":\"com.okta.event_hook\",\"data\":{\"events\":{}}}",
     "data.events: expected an array"},
    {"{\"eventType\":\"com.okta.event_hook\",\"eventType\":\"x\",\"data\":{\"events\":[]}}",
     "duplicate object key"},
};

static void a_wrong_envelope_refuses_the_body(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(envelope_refusals) / sizeof(envelope_refusals[0]); i++) {
        hb_ingest_batch_t b;
        char err[512] = "";
        int rc = parse(envelope_refusals[i].body, &b, err, sizeof(err));
        if (rc != -1 || !strstr(err, envelope_refusals[i].says))
            fail_msg("case %zu: rc %d, \"%s\"", i, rc, err);
        assert_int_equal(b.cnt, 0); /* nothing of a refused request */
        assert_null(b.msgs);
        hb_ingest_batch_free(&b);
    }
}

/* An event at fault is refused alone: the others are encoded as usual. */
static const struct {
    const char *event;
    const char *says;
} event_refusals[] = {
    {"{\"displayMessage\":\"no type\"}", "eventType: missing"},
    {"\"not an object\"", "event: expected a JSON object"},
    {"{\"eventType\":\"user.session.start\",\"actor\":\"nobody\"}",
     "actor: expected null or an object"},
    {"{\"eventType\":\"user.session.start\",\"published\":\"yesterday\"}", "published"},
    /* an AS number is unsigned 32-bit; the schema's is an int */
    {"{\"eventType\":\"user.session.start\",\"uuid\":\"as\",\"securityContext\":{\"asNumber\":"
     "4200000000}}",
     "securityContext.asNumber: expected null or an integer"},
    /* beyond 64 bits: taken as its digits, which the int refuses */
    {"{\"eventType\":\"user.session.start\",\"securityContext\":{\"asNumber\":"
     "123456789012345678901234567890}}",
     "securityContext.asNumber: expected null or an integer"},
    {"{\"eventType\":\"user.session\\u0000.start\"}", "eventType: holds a NUL character"},
    {"{\"eventType\":\"user.session.start\",\"uuid\":\"a\\u0000b\"}",
     "uuid: holds a NUL character"},
    {"{\"eventType\":\"user.session.start\",\"client\":{\"geographicalContext\":{\"geolocation\":"
     "{\"lat\":1.5,\"lon\":null}}}}",
     "geolocation.lon: must not be null"},
};

static void an_event_at_fault_is_refused_alone_and_kept_as_it_came(void **state) {
    static const char good[] = "{\"eventType\":\"user.session.start\",\"uuid\":\"good-%d\","
                               "\"debugContext\":{\"debugData\":{\"n\":7}}}";
    (void)state;
    for (size_t i = 0; i < sizeof(event_refusals) / sizeof(event_refusals[0]); i++) {
        char body[2048], g0[256], g2[256], err[512] = "";
        json_t *want, *got, *back;
        hb_ingest_batch_t b;
        hb_ingest_msg_t *m;
        json_error_t jerr;
        snprintf(g0, sizeof(g0), good, 0);
        snprintf(g2, sizeof(g2), good, 2);
        snprintf(body, sizeof(body), ENVELOPE("%s,%s,%s"), g0, event_refusals[i].event, g2);
        if (parse(body, &b, err, sizeof(err)) != 0)
            fail_msg("case %zu: the body was refused: %s", i, err);
        assert_int_equal(b.cnt, 3);
        assert_int_equal(b.refused, 1);
        m = &b.msgs[1];
        if (!m->refused || strncmp(m->refused, "data.events[1]: ", 16) ||
            !strstr(m->refused, event_refusals[i].says))
            fail_msg("case %zu: \"%s\"", i, m->refused ? m->refused : "(accepted)");
        /* kept as it came (not normalized: no uuid filled in, debugData as sent) */
        want = json_loads(event_refusals[i].event, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        got = json_loadb(m->value, m->value_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!want) /* the number beyond 64 bits: kept as its digits */
            want = json_pack("{s:s,s:{s:s}}", "eventType", "user.session.start", "securityContext",
                             "asNumber", "123456789012345678901234567890");
        if (!got || !json_equal(want, got))
            fail_msg("case %zu: kept as %.*s", i, (int)m->value_len, (const char *)m->value);
        json_decref(want);
        json_decref(got);
        if (i == 4)
            assert_string_equal(m->key, "as"); /* keyed by its uuid when it has one */
        /* the others are encoded as usual */
        for (int k = 0; k < 3; k += 2) {
            back = decoded(&b.msgs[k]);
            assert_string_equal(
                json_string_value(json_object_get(
                    json_object_get(json_object_get(back, "debugContext"), "debugData"), "n")),
                "7");
            json_decref(back);
        }
        hb_ingest_batch_free(&b);
    }
}

static void big_events_are_refused_and_the_biggest_kept_by_their_ids(void **state) {
    size_t sizes[] = {HB_EVENT_MAX_BYTES + 10, HB_INGEST_REFUSED_MAX_BYTES + 10};
    (void)state;
    for (int k = 0; k < 2; k++) {
        size_t big = sizes[k], n = 0;
        char *body = malloc(big + 512), err[512];
        hb_ingest_batch_t b;
        json_error_t jerr;
        json_t *kept;
        n += (size_t)sprintf(body, "{\"eventType\":\"com.okta.event_hook\",\"data\":{\"events\":["
                                   "{\"eventType\":\"user.session.start\"},"
                                   "{\"eventType\":\"user.session.start\",\"uuid\":\"big\","
                                   "\"published\":\"2024-05-01T12:00:00Z\",\"displayMessage\":\"");
        memset(body + n, 'y', big);
        n += big;
        strcpy(body + n, "\"}]}}");
        assert_int_equal(parse(body, &b, err, sizeof(err)), 0);
        assert_int_equal(b.refused, 1);
        assert_null(b.msgs[0].refused);
        assert_non_null(strstr(b.msgs[1].refused, "data.events[1]: event of"));
        assert_non_null(strstr(b.msgs[1].refused, "is larger than 262144 bytes"));
        kept = json_loadb(b.msgs[1].value, b.msgs[1].value_len, 0, &jerr);
        assert_non_null(kept);
        if (k == 0) { /* whole */
            assert_int_equal(json_string_length(json_object_get(kept, "displayMessage")), big);
        } else { /* too large for a Kafka message: what identifies it */
            assert_non_null(strstr(b.msgs[1].refused, "only its uuid, eventType and published"));
            assert_int_equal(json_object_size(kept), 3);
            assert_string_equal(json_string_value(json_object_get(kept, "uuid")), "big");
            assert_string_equal(json_string_value(json_object_get(kept, "published")),
                                "2024-05-01T12:00:00Z");
        }
        json_decref(kept);
        hb_ingest_batch_free(&b);
        free(body);
    }
}

/* What Okta may send that the schema takes once adjusted: a NUL character
 * in free text, numbers beyond 64 bits in free-form maps, a geolocation
 * without coordinates. */
static void okta_s_odd_values_are_delivered(void **state) {
    hb_ingest_batch_t b;
    char err[512];
    json_t *back, *dd, *geo;
    (void)state;
    assert_int_equal(
        parse(ENVELOPE("{\"eventType\":\"user.session.start\",\"uuid\":\"odd\","
                       "\"displayMessage\":\"a\\u0000b\","
                       "\"debugContext\":{\"debugData\":{\"big\":123456789012345678901234567890,"
                       "\"huge\":1e999,\"tiny\":1e-999,\"s\":\"-12345678901234567890123\"}},"
                       "\"client\":{\"geographicalContext\":{\"city\":\"X\",\"geolocation\":"
                       "{\"lat\":null,\"lon\":null}}},"
                       "\"request\":{\"ipChain\":[{\"ip\":\"10.0.0.1\",\"geographicalContext\":"
                       "{\"geolocation\":{}}}]}}"),
              &b, err, sizeof(err)),
        0);
    assert_int_equal(b.refused, 0);
    back = decoded(&b.msgs[0]);
    assert_int_equal(json_string_length(json_object_get(back, "displayMessage")), 3);
    assert_memory_equal(json_string_value(json_object_get(back, "displayMessage")), "a\0b", 3);
    dd = json_object_get(json_object_get(back, "debugContext"), "debugData");
    assert_string_equal(json_string_value(json_object_get(dd, "big")),
                        "123456789012345678901234567890");
    assert_string_equal(json_string_value(json_object_get(dd, "huge")), "1e999");
    assert_string_equal(json_string_value(json_object_get(dd, "s")), "-12345678901234567890123");
    assert_true(json_is_string(json_object_get(dd, "tiny"))); /* a real, as its JSON text */
    geo = json_object_get(json_object_get(json_object_get(back, "client"), "geographicalContext"),
                          "geolocation");
    assert_true(!geo || json_is_null(geo));
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(back, "client"), "geographicalContext"), "city")),
        "X");
    json_decref(back);
    hb_ingest_batch_free(&b);
}

/* hb_ingest_loadb quotes a number jansson cannot hold where a value stands,
 * and nowhere else: a number as an object's key stays invalid JSON (review
 * 39: it was quoted into a valid key, and the body answered 200). */
static void only_values_beyond_jansson_are_quoted(void **state) {
    json_error_t jerr;
    json_t *j;
    (void)state;
    static const char text[] = "{\"a\":[99999999999999999999, 1, -1e999,{\"b\" : \n"
                               "123456789012345678901234567890}], "
                               "\"s\":\"1e999 \\\" 99999999999999999999\"}";
    j = hb_ingest_loadb(text, strlen(text), 0, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "a"), 0)),
                        "99999999999999999999");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "a"), 1)), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "a"), 2)), "-1e999");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "a"), 3), "b")),
        "123456789012345678901234567890");
    assert_string_equal(json_string_value(json_object_get(j, "s")),
                        "1e999 \" 99999999999999999999");
    json_decref(j);
    /* the whole document, with JSON_DECODE_ANY */
    j = hb_ingest_loadb("-99999999999999999999", 21, JSON_DECODE_ANY, &jerr);
    assert_string_equal(json_string_value(j), "-99999999999999999999");
    json_decref(j);
    /* not values: stay errors */
    static const char *const invalid[] = {
        "{\"a\":1, 99999999999999999999: 2}",
        "{99999999999999999999: 2}",
        "{\"a\": 99999999999999999999x}",
        "[0099999999999999999999]",
    };
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        j = hb_ingest_loadb(invalid[i], strlen(invalid[i]), 0, &jerr);
        if (j)
            fail_msg("\"%s\" was taken", invalid[i]);
    }
}

/* A refusal's text goes into the JSON answer and a Kafka header: quoting a
 * long value of the body must not cut a character in two (jansson refuses
 * invalid UTF-8, and the answer lost its "error"). Found by
 * tests/fuzz/fuzz_ingest.c. */
static void refusals_quoting_long_values_stay_utf8(void **state) {
    char e300[601], body[2048], err[600];
    static const char *const shapes[][2] = {
        /* the body around the long value */
        {"{\"eventType\":\"", "\",\"data\":{\"events\":[]}}"},
        {ENVELOPE_HEAD "{\"eventType\":\"x\"},{\"eventType\":\"x\",\"published\":\"",
         "\"}" ENVELOPE_TAIL},
        {ENVELOPE_HEAD "{\"eventType\":\"x\",\"severity\":\"", "\"}" ENVELOPE_TAIL},
    };
    static const size_t sizes[] = {600, 512, 101, 100, 31};
    hb_ingest_batch_t b;
    (void)state;
    for (size_t i = 0; i < 300; i++)
        memcpy(e300 + 2 * i, "\xc3\xa9", 2); /* é */
    e300[600] = '\0';
    for (size_t z = 0; z < sizeof(sizes) / sizeof(sizes[0]); z++) { /* the envelope's */
        json_t *j;
        snprintf(body, sizeof(body), "%s%s%s", shapes[0][0], e300, shapes[0][1]);
        assert_int_equal(hb_ingest_parse(codec, body, strlen(body), &b, err, sizes[z]), -1);
        j = json_string(err);
        if (!j)
            fail_msg("errstr %zu bytes: not UTF-8: \"%s\"", sizes[z], err);
        json_decref(j);
        assert_non_null(strstr(err, "not an Okta event hook"));
        hb_ingest_batch_free(&b);
    }
    for (size_t s = 1; s < sizeof(shapes) / sizeof(shapes[0]); s++) { /* an event's */
        json_t *j;
        const char *why;
        snprintf(body, sizeof(body), "%s%s%s", shapes[s][0], e300, shapes[s][1]);
        assert_int_equal(hb_ingest_parse(codec, body, strlen(body), &b, err, sizeof(err)), 0);
        assert_int_equal(b.refused, 1);
        why = b.msgs[b.cnt - 1].refused;
        assert_non_null(why);
        j = json_string(why);
        if (!j)
            fail_msg("shape %zu: not UTF-8: \"%s\"", s, why);
        json_decref(j);
        assert_non_null(strstr(why, "data.events["));
        hb_ingest_batch_free(&b);
    }
    /* Whole characters are kept as they are. */
    snprintf(body, sizeof(body), "%s%s%s", shapes[0][0], "\xc3\xa9t\xc3\xa9", shapes[0][1]);
    assert_int_equal(hb_ingest_parse(codec, body, strlen(body), &b, err, sizeof(err)), -1);
    hb_ingest_batch_free(&b);
    assert_non_null(strstr(err, "eventType is \"\xc3\xa9t\xc3\xa9\", want"));
}

/* A body that is mostly empty objects would cost jansson about 80 times its
 * size: refused before it is parsed, saying why; the same number of
 * objects spread over realistic events is fine. */
static void a_body_of_countless_objects_is_refused_before_parsing(void **state) {
    hb_ingest_batch_t b;
    char err[512];
    const size_t n = 20000; /* 60 KB of {}: at most 60000 / 16 + 4096 = 7846 */
    size_t len = strlen(ENVELOPE_HEAD) + 4 * n + strlen(ENVELOPE_TAIL) + 32, at;
    char *body = malloc(len);
    (void)state;
    assert_non_null(body);
    at = (size_t)snprintf(body, len, "%s", ENVELOPE_HEAD);
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(body + at, len - at, i ? ",{}" : "{}");
    snprintf(body + at, len - at, "%s", ENVELOPE_TAIL);
    assert_int_equal(hb_ingest_parse(codec, body, strlen(body), &b, err, sizeof(err)), -1);
    hb_ingest_batch_free(&b);
    assert_non_null(strstr(err, "20003 JSON objects and arrays in"));
    assert_non_null(strstr(err, "more than an event-hook delivery holds"));
    /* braces inside strings are text, not objects: a body of them parses */
    at = (size_t)snprintf(body, len, "%s{\"uuid\":\"", ENVELOPE_HEAD);
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(body + at, len - at, "{[\\\"");
    snprintf(body + at, len - at, "\"}%s", ENVELOPE_TAIL);
    assert_int_equal(hb_ingest_parse(codec, body, strlen(body), &b, err, sizeof(err)), 0);
    assert_int_equal(b.cnt, 1);
    hb_ingest_batch_free(&b);
    free(body);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_event_is_encoded_and_keyed),
        cmocka_unit_test(an_empty_delivery_is_fine),
        cmocka_unit_test(a_wrong_envelope_refuses_the_body),
        cmocka_unit_test(an_event_at_fault_is_refused_alone_and_kept_as_it_came),
        cmocka_unit_test(big_events_are_refused_and_the_biggest_kept_by_their_ids),
        cmocka_unit_test(okta_s_odd_values_are_delivered),
        cmocka_unit_test(only_values_beyond_jansson_are_quoted),
        cmocka_unit_test(refusals_quoting_long_values_stay_utf8),
        cmocka_unit_test(a_body_of_countless_objects_is_refused_before_parsing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
