/* Review 8: writer schemas that the Avro rules resolve into the reader and
 * the codec must read, checked on the decoded event. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "hb_codec.h"
#include "hb_json.h"
#include "hb_ordering.h"
#include "hb_schemas.h"
#include "json_text.h"

static json_t *field(json_t *record, const char *name) {
    size_t i;
    json_t *f;
    json_array_foreach(
        json_object_get(record, "fields"), i,
        f) if (!strcmp(json_string_value(json_object_get(f, "name")), name)) return f;
    fail_msg("no field %s", name);
    return NULL;
}

static void drop_field(json_t *record, const char *name) {
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(record, "fields"), i, f) {
        if (!strcmp(json_string_value(json_object_get(f, "name")), name)) {
            json_array_remove(json_object_get(record, "fields"), i);
            return;
        }
    }
    fail_msg("no field %s", name);
}

/* The record inside a field of type ["null", record]. */
static json_t *branch(json_t *f) {
    return json_array_get(json_object_get(f, "type"), 1);
}

/* The reader's GeographicalContext is defined in client and referenced from
 * request.ipChain[].geographicalContext. A producer that drops `client` (an
 * optional field, which docs/schemas.md says may go) defines it under
 * request instead. That writer resolves by Avro's rules: it must be taken,
 * and its events read with request's geolocation intact. */
static void writer_without_the_field_defining_a_named_type(void **state) {
    char err[512];
    json_t *w = parse(hb_schema_identity_event), *geo, *ip, *ev, *out = NULL;
    hb_codec_t *reader, *writer;
    char *wtext;
    void *buf = NULL;
    size_t len = 0;
    (void)state;
    geo = json_deep_copy(branch(field(branch(field(w, "client")), "geographicalContext")));
    drop_field(w, "client");
    ip = json_object_get(branch(field(branch(field(w, "request")), "ipChain")), "items");
    json_array_set_new(json_object_get(field(ip, "geographicalContext"), "type"), 1, geo);
    wtext = json_dumps(w, JSON_COMPACT);

    reader = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    assert_non_null(reader);
    if (hb_codec_add_writer(reader, wtext, err, sizeof(err)) != 0)
        fail_msg("a writer without client is refused: %s", err);

    writer = hb_codec_new(wtext, err, sizeof(err));
    assert_non_null(writer);
    ev = parse(
        "{\"uuid\": \"u1\", \"published\": \"2025-11-29T02:50:00.123Z\","
        " \"eventType\": \"user.session.start\","
        " \"request\": {\"ipChain\": [{\"ip\": \"10.0.0.1\", \"geographicalContext\":"
        " {\"city\": \"Z\\u00fcrich\", \"geolocation\": {\"lat\": 47.3769, \"lon\": -0.5}}}]}}");
    assert_int_equal(hb_codec_encode(writer, ev, &buf, &len, err, sizeof(err)), 0);
    if (hb_codec_decode(reader, buf, len, &out, err, sizeof(err)) != 0)
        fail_msg("decode: %s", err);
    if (!json_equal(out, ev)) {
        char *a = json_dumps(out, JSON_SORT_KEYS);
        fail_msg("decoded %s", a);
    }
    json_decref(out);
    free(buf);
    json_decref(ev);
    hb_codec_free(writer);
    hb_codec_free(reader);
    free(wtext);
    json_decref(w);
}

/* docs/schemas.md: changing a field's type incompatibly makes the writer not
 * resolve, so the dispatcher stops at start instead of dead-lettering events
 * later. A writer whose optional securityContext.asNumber is ["null", "long"]
 * (the reader's is ["null", "int"]; long does not promote to int) must be
 * refused, and so must one whose optional severity is an enum (the reader's
 * is a string). The same writer with the field's type kept is taken. */
static void writer_union_branch_that_does_not_resolve_is_refused(void **state) {
    char err[512];
    json_t *w = parse(hb_schema_identity_event), *asn;
    hb_codec_t *reader = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    char *wtext;
    (void)state;
    assert_non_null(reader);
    asn = field(branch(field(w, "securityContext")), "asNumber");
    json_array_set_new(json_object_get(asn, "type"), 1, json_string("long"));
    wtext = json_dumps(w, JSON_COMPACT);
    assert_int_equal(hb_codec_add_writer(reader, wtext, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "securityContext.asNumber"));
    free(wtext);

    json_array_set_new(json_object_get(asn, "type"), 1, json_string("int"));
    json_array_set_new(json_object_get(field(w, "severity"), "type"), 1,
                       parse("{\"type\": \"enum\", \"name\": \"Severity\","
                             " \"symbols\": [\"INFO\", \"WARN\"]}"));
    wtext = json_dumps(w, JSON_COMPACT);
    assert_int_equal(hb_codec_add_writer(reader, wtext, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "severity"));
    free(wtext);

    json_array_set_new(json_object_get(field(w, "severity"), "type"), 1, json_string("string"));
    json_object_set_new(w, "doc", json_string("same types, another fingerprint"));
    drop_field(w, "version");
    wtext = json_dumps(w, JSON_COMPACT);
    if (hb_codec_add_writer(reader, wtext, err, sizeof(err)) != 0)
        fail_msg("a writer with the reader's types is refused: %s", err);
    free(wtext);
    hb_codec_free(reader);
    json_decref(w);
}

/* options.ordering "key": the events topic's message key, which Kafka lets
 * be any bytes (Confluent's Avro keys start 00 and the schema id). Two
 * different keys must be two chains, and the key must stay text that the
 * delivery log's ordering_tails.ordering_key (text) keeps as it is. */
static void binary_message_keys_stay_apart(void **state) {
    static const struct {
        const char *bytes;
        size_t len;
    } keys[] = {
        {"\x00\x00\x00\x00\x15\x02k", 7},
        {"\x00\x00\x00\x00\x16\x02k", 7},
        {"\xff\xfe", 2},
        {"\xff\xfd", 2},
        {"00uK", 4},
    };
    char got[5][64], err[64];
    json_t *ev = parse("{}"), *long_actor;
    char actor[200] = "";
    (void)state;
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(hb_order_key(HB_ORDER_KEY, ev, keys[i].bytes, keys[i].len, got[i], 64), 1);
        if (!hb_json_utf8_ok(got[i], strlen(got[i])))
            fail_msg("key %zu is not text: the delivery log would not keep it", i);
        for (size_t k = 0; k < i; k++)
            if (!strcmp(got[i], got[k]))
                fail_msg("keys %zu and %zu share the chain \"%s\"", k, i, got[i]);
    }
    assert_string_equal(got[4], "00uK");
    json_decref(ev);

    /* an id longer than the key buffer is cut at a character's start */
    for (int i = 0; i < 70; i++)
        strcat(actor, "\xc3\xa9");
    long_actor = json_pack("{s:{s:s}}", "actor", "id", actor);
    assert_int_equal(hb_order_key(HB_ORDER_ACTOR, long_actor, NULL, 0, err, sizeof(err)), 1);
    assert_true(hb_json_utf8_ok(err, strlen(err)));
    json_decref(long_actor);
}

/* A newer producer adds a decimal (Avro bytes) with the default zero, which
 * Java's Avro writes as "\u0000". That is valid JSON and valid Avro, and a
 * writer's defaults are never used when reading: the writer must be taken,
 * and its events read. */
static void writer_with_a_nul_default_resolves(void **state) {
    char err[512];
    json_t *w = parse(hb_schema_identity_event), *ev, *out = NULL;
    hb_codec_t *reader, *writer;
    char *wtext;
    void *buf = NULL;
    size_t len = 0;
    (void)state;
    json_array_append_new(json_object_get(w, "fields"),
                          json_pack("{s:s, s:{s:s, s:s, s:i, s:i}, s:o}", "name", "amount", "type",
                                    "type", "bytes", "logicalType", "decimal", "precision", 9,
                                    "scale", 2, "default", json_stringn("\0", 1)));
    wtext = json_dumps(w, JSON_COMPACT);
    assert_non_null(strstr(wtext, "\\u0000"));
    reader = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    assert_non_null(reader);
    if (hb_codec_add_writer(reader, wtext, err, sizeof(err)) != 0)
        fail_msg("a writer with a \\u0000 default is refused: %s", err);
    writer = hb_codec_new(wtext, err, sizeof(err));
    if (!writer)
        fail_msg("codec of that writer: %s", err);
    ev = parse("{\"uuid\": \"u2\", \"published\": \"2025-11-29T02:50:00.123Z\","
               " \"eventType\": \"user.session.start\", \"amount\": \"\\u0001\\u00ff\"}");
    assert_int_equal(hb_codec_encode(writer, ev, &buf, &len, err, sizeof(err)), 0);
    if (hb_codec_decode(reader, buf, len, &out, err, sizeof(err)) != 0)
        fail_msg("decode: %s", err);
    json_object_del(ev, "amount"); /* not the reader's */
    assert_true(json_equal(out, ev));
    json_decref(out);
    json_decref(ev);
    free(buf);
    hb_codec_free(writer);
    hb_codec_free(reader);
    free(wtext);
    json_decref(w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(writer_without_the_field_defining_a_named_type),
        cmocka_unit_test(writer_union_branch_that_does_not_resolve_is_refused),
        cmocka_unit_test(binary_message_keys_stay_apart),
        cmocka_unit_test(writer_with_a_nul_default_resolves),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
