/* Okta event-hook bodies: what the ingest endpoint accepts, and how a
 * refusal names the envelope or the event at fault. */
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

static int parse(const char *body, hb_ingest_batch_t *b, long *bad, char *err, size_t errsz) {
    return hb_ingest_parse(codec, body, strlen(body), b, bad, err, errsz);
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
    long bad = 99;
    json_t *back;
    (void)state;
    assert_int_equal(
        parse(ENVELOPE("{\"eventType\":\"user.session.start\",\"uuid\":\"u-1\","
                       "\"actor\":{\"id\":\"00uA\",\"type\":\"User\"}},"
                       "{\"eventType\":\"user.lifecycle.create\",\"target\":[{\"id\":\"0oaX\","
                       "\"type\":\"AppInstance\"},{\"id\":\"00uB\",\"type\":\"User\"}]},"
                       /* not in the catalogue: Okta has hundreds of types, accepted */
                       "{\"eventType\":\"policy.evaluate_sign_on\",\"uuid\":\"u-3\"}"),
              &b, &bad, err, sizeof(err)),
        0);
    assert_int_equal(bad, -1);
    assert_int_equal(b.cnt, 3);
    assert_string_equal(b.msgs[0].key, "00uA"); /* the actor, no target user */
    assert_string_equal(b.msgs[1].key, "00uB"); /* the first target of type User */
    assert_string_equal(b.msgs[2].key, "u-3");  /* else the uuid */
    for (size_t i = 0; i < b.cnt; i++)
        assert_memory_equal(b.msgs[i].value, "\xc3\x01", 2); /* single-object encoding */
    /* normalized as the CLI does: uuid and published filled in */
    assert_int_equal(
        hb_codec_decode(codec, b.msgs[1].value, b.msgs[1].value_len, &back, err, sizeof(err)), 0);
    assert_string_equal(hb_event_type(back), "user.lifecycle.create");
    assert_non_null(hb_event_uuid(back));
    assert_true(json_is_string(json_object_get(back, "published")));
    json_decref(back);
    hb_ingest_batch_free(&b);
}

static void an_empty_delivery_is_fine(void **state) {
    hb_ingest_batch_t b;
    char err[512];
    long bad;
    (void)state;
    assert_int_equal(parse(ENVELOPE(""), &b, &bad, err, sizeof(err)), 0);
    assert_int_equal(b.cnt, 0);
    hb_ingest_batch_free(&b);
}

static const struct {
    const char *body;
    long event; /* -1: the envelope */
    const char *says;
} refusals[] = {
    {"", -1, "invalid JSON"},
    {"{\"eventType\":", -1, "invalid JSON"},
    {"[1,2]", -1, "expected a JSON object"},
    {"{\"data\":{\"events\":[]}}", -1, "eventType missing"},
    {"{\"eventType\":\"user.session.start\",\"uuid\":\"x\"}", -1,
     "eventType is \"user.session.start\", want \"com.okta.event_hook\""},
    {"{\"eventType\":\"com.okta.event_hook\"}", -1, "data: expected an object"},
    {"{\"eventType\":\"com.okta.event_hook\",\"data\":{\"events\":{}}}", -1,
     "data.events: expected an array"},
    {"{\"eventType\":\"com.okta.event_hook\",\"eventType\":\"x\",\"data\":{\"events\":[]}}", -1,
     "duplicate object key"},
    {ENVELOPE("{\"eventType\":\"user.session.start\"},{\"displayMessage\":\"no type\"}"), 1,
     "data.events[1]: eventType: missing"},
    {ENVELOPE("{\"eventType\":\"user.session.start\"},{\"eventType\":\"user.session.end\"},"
              "\"not an object\""),
     2, "data.events[2]: event: expected a JSON object"},
    {ENVELOPE("{\"eventType\":\"user.session.start\",\"actor\":\"nobody\"}"), 0,
     "data.events[0]: actor: expected null or an object"},
    {ENVELOPE("{\"eventType\":\"user.session.start\",\"published\":\"yesterday\"}"), 0,
     "data.events[0]: published"},
};

static void refusals_name_the_place(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        hb_ingest_batch_t b;
        char err[512] = "";
        long bad = 99;
        int rc = parse(refusals[i].body, &b, &bad, err, sizeof(err));
        if (rc != -1 || bad != refusals[i].event || !strstr(err, refusals[i].says))
            fail_msg("case %zu: rc %d, event %ld, \"%s\"", i, rc, bad, err);
        assert_int_equal(b.cnt, 0); /* nothing of a refused request */
        assert_null(b.msgs);
        hb_ingest_batch_free(&b);
    }
}

static void an_event_over_the_bound_is_refused(void **state) {
    size_t big = HB_EVENT_MAX_BYTES + 10, n = 0;
    char *body = malloc(big + 512), err[512];
    hb_ingest_batch_t b;
    long bad;
    (void)state;
    n += (size_t)sprintf(body, "{\"eventType\":\"com.okta.event_hook\",\"data\":{\"events\":["
                               "{\"eventType\":\"user.session.start\"},"
                               "{\"eventType\":\"user.session.start\",\"displayMessage\":\"");
    memset(body + n, 'y', big);
    n += big;
    strcpy(body + n, "\"}]}}");
    assert_int_equal(parse(body, &b, &bad, err, sizeof(err)), -1);
    assert_int_equal(bad, 1);
    assert_non_null(strstr(err, "data.events[1]: event of"));
    assert_non_null(strstr(err, "is larger than 262144 bytes"));
    assert_int_equal(b.cnt, 0);
    hb_ingest_batch_free(&b);
    free(body);
}

/* A refusal's text goes into the JSON answer: quoting a long value of the
 * body must not cut a character in two (jansson refuses invalid UTF-8, and
 * the answer lost its "error"). Found by tests/fuzz/fuzz_ingest.c. */
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
    long bad;
    (void)state;
    for (size_t i = 0; i < 300; i++)
        memcpy(e300 + 2 * i, "\xc3\xa9", 2); /* é */
    e300[600] = '\0';
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (size_t z = 0; z < sizeof(sizes) / sizeof(sizes[0]); z++) {
            json_t *j;
            snprintf(body, sizeof(body), "%s%s%s", shapes[s][0], e300, shapes[s][1]);
            assert_int_equal(hb_ingest_parse(codec, body, strlen(body), &b, &bad, err, sizes[z]),
                             -1);
            j = json_string(err);
            if (!j)
                fail_msg("shape %zu, errstr %zu bytes: not UTF-8: \"%s\"", s, sizes[z], err);
            json_decref(j);
            assert_non_null(strstr(err, s == 0 ? "not an Okta event hook" : "data.events["));
            hb_ingest_batch_free(&b);
        }
    /* Whole characters are kept as they are. */
    snprintf(body, sizeof(body), "%s%s%s", shapes[0][0], "\xc3\xa9t\xc3\xa9", shapes[0][1]);
    assert_int_equal(hb_ingest_parse(codec, body, strlen(body), &b, &bad, err, sizeof(err)), -1);
    hb_ingest_batch_free(&b);
    assert_non_null(strstr(err, "eventType is \"\xc3\xa9t\xc3\xa9\", want"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_event_is_encoded_and_keyed),
        cmocka_unit_test(an_empty_delivery_is_fine),
        cmocka_unit_test(refusals_name_the_place),
        cmocka_unit_test(an_event_over_the_bound_is_refused),
        cmocka_unit_test(refusals_quoting_long_values_stay_utf8),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
