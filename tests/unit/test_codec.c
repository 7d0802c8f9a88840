/* Avro codec: fingerprints and canonical form (known answers from the Avro
 * spec and from Apache's Python Avro), round trips of Okta-shaped events, the
 * natural JSON mapping and its path-naming errors, resolution of an older
 * writer schema, and hostile bytes (every one must fail cleanly or decode). */
#include <setjmp.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "../sample_events.h"
#include "hb_codec.h"
#include "json_same.h"
#include "hb_schemas.h"
#include "json_text.h"

static hb_codec_t *event_codec(void) {
    char err[256];
    hb_codec_t *c = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    if (!c)
        fail_msg("codec: %s", err);
    return c;
}

/* Encodes text with c; returns the bytes (caller frees). */
static void *encode_text(hb_codec_t *c, const char *text, size_t *len) {
    json_t *j = parse(text);
    void *buf = NULL;
    char err[256];
    if (hb_codec_encode(c, j, &buf, len, err, sizeof(err)) < 0)
        fail_msg("encode: %s", err);
    json_decref(j);
    return buf;
}

static void assert_json_equal(const json_t *a, const json_t *b) {
    if (!json_equal(a, b)) {
        char *sa = json_dumps(a, JSON_SORT_KEYS), *sb = json_dumps(b, JSON_SORT_KEYS);
        print_error("expected %s\n     got %s\n", sa, sb);
        free(sa);
        free(sb);
        fail();
    }
}

/* ------------------------------------------------------------ fingerprints */

static void crc64_spec_vector(void **state) {
    char err[128];
    hb_codec_t *c;
    (void)state;
    assert_true(hb_crc64_avro("\"int\"", 5) == 8247732601305521295ULL);
    assert_true(hb_crc64_avro("", 0) == 0xc15d213aa4d7a795ULL);
    c = hb_codec_new("{\"type\": \"int\"}", err, sizeof(err));
    assert_non_null(c);
    assert_true(hb_codec_fingerprint(c) == 8247732601305521295ULL);
    hb_codec_free(c);
}

static const struct {
    const char *schema, *canonical;
    uint64_t fp; /* 0: not checked */
} pcf_cases[] = {
    {"\"string\"", "\"string\"", 10304597078529344455ULL},
    {"{\"type\":\"long\"}", "\"long\"", 15011871142588980663ULL},
    {"[\"null\", {\"type\": \"string\"}]", "[\"null\",\"string\"]", 10972442280899560605ULL},
    {"{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}", "\"long\"", 0},
    /* Apache's Python Avro gives the same form and fingerprint. */
    {"{\"type\":\"record\",\"name\":\"R\",\"namespace\":\"a.b\",\"doc\":\"x\",\"aliases\":[\"Q\"],"
     "\"fields\":[{\"name\":\"e\",\"doc\":\"d\",\"type\":{\"type\":\"enum\",\"name\":\"E\","
     "\"symbols\":[\"A\",\"B\"]},\"default\":\"A\"},{\"type\":{\"size\":4,\"type\":\"fixed\","
     "\"name\":\"F\"},\"name\":\"f\"},{\"name\":\"g\",\"type\":[\"null\",\"E\",{\"type\":\"map\","
     "\"values\":{\"type\":\"long\"}}],\"default\":null},{\"name\":\"h\",\"type\":{\"type\":"
     "\"array\",\"items\":\"int\"}},{\"name\":\"i\",\"type\":{\"type\":\"record\",\"name\":"
     "\"x.y.S\",\"fields\":[{\"name\":\"j\",\"type\":\"int\"},{\"name\":\"k\",\"type\":{\"type\":"
     "\"enum\",\"name\":\"T\",\"symbols\":[\"Z\"]}}]}}]}",
     "{\"name\":\"a.b.R\",\"type\":\"record\",\"fields\":[{\"name\":\"e\",\"type\":{\"name\":"
     "\"a.b.E\",\"type\":\"enum\",\"symbols\":[\"A\",\"B\"]}},{\"name\":\"f\",\"type\":{\"name\":"
     "\"a.b.F\",\"type\":\"fixed\",\"size\":4}},{\"name\":\"g\",\"type\":[\"null\",\"a.b.E\","
     "{\"type\":\"map\",\"values\":\"long\"}]},{\"name\":\"h\",\"type\":{\"type\":\"array\","
     "\"items\":\"int\"}},{\"name\":\"i\",\"type\":{\"name\":\"x.y.S\",\"type\":\"record\","
     "\"fields\":[{\"name\":\"j\",\"type\":\"int\"},{\"name\":\"k\",\"type\":{\"name\":\"x.y.T\","
     "\"type\":\"enum\",\"symbols\":[\"Z\"]}}]}}]}",
     5996949906637452256ULL},
    /* A second use of a named type is its full name (as Java's SchemaNormalization). */
    {"{\"type\":\"record\",\"name\":\"P\",\"namespace\":\"n\",\"fields\":[{\"name\":\"a\","
     "\"type\":{\"type\":\"fixed\",\"name\":\"F\",\"size\":2}},{\"name\":\"b\",\"type\":{"
     "\"type\":\"array\",\"items\":\"F\"}},{\"name\":\"c\",\"type\":\"n.F\"},"
     "{\"name\":\"d\",\"type\":{\"type\":\"record\",\"name\":\"Q\",\"namespace\":\"\","
     "\"fields\":[{\"name\":\"z\",\"type\":\"F\"}]}}]}",
     "{\"name\":\"n.P\",\"type\":\"record\",\"fields\":[{\"name\":\"a\",\"type\":{\"name\":"
     "\"n.F\",\"type\":\"fixed\",\"size\":2}},{\"name\":\"b\",\"type\":{\"type\":\"array\","
     "\"items\":\"n.F\"}},{\"name\":\"c\",\"type\":\"n.F\"},{\"name\":\"d\",\"type\":{\"name\":"
     "\"Q\",\"type\":\"record\",\"fields\":[{\"name\":\"z\",\"type\":\"F\"}]}}]}",
     0},
};

static void canonical_form_table(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(pcf_cases) / sizeof(pcf_cases[0]); i++) {
        char *out = NULL, err[128];
        assert_int_equal(hb_codec_canonical_form(pcf_cases[i].schema, &out, err, sizeof(err)), 0);
        if (strcmp(out, pcf_cases[i].canonical))
            fail_msg("case %zu:\nexpected %s\n     got %s", i, pcf_cases[i].canonical, out);
        if (pcf_cases[i].fp)
            assert_true(hb_crc64_avro(out, strlen(out)) == pcf_cases[i].fp);
        free(out);
    }
}

static void event_schema_fingerprint_in_header(void **state) {
    hb_codec_t *c = event_codec();
    char *canon = NULL, err[128];
    size_t len;
    unsigned char *buf;
    uint64_t fp = 0;
    (void)state;
    assert_int_equal(hb_codec_canonical_form(hb_schema_identity_event, &canon, err, sizeof(err)),
                     0);
    assert_true(hb_codec_fingerprint(c) == hb_crc64_avro(canon, strlen(canon)));
    buf = encode_text(c, minimal_event, &len);
    assert_true(len > 10);
    assert_int_equal(buf[0], 0xC3);
    assert_int_equal(buf[1], 0x01);
    for (int i = 0; i < 8; i++)
        fp |= (uint64_t)buf[2 + i] << (8 * i);
    assert_true(fp == hb_codec_fingerprint(c));
    free(buf);
    free(canon);
    hb_codec_free(c);
}

/* ------------------------------------------------------------ round trips */

static void roundtrip(hb_codec_t *c, const char *in_text, const char *want_text) {
    json_t *want = parse(want_text), *out = NULL;
    size_t len;
    void *buf = encode_text(c, in_text, &len);
    char err[256];
    if (hb_codec_decode(c, buf, len, &out, err, sizeof(err)) < 0)
        fail_msg("decode: %s", err);
    assert_json_equal(want, out);
    json_decref(out);
    json_decref(want);
    free(buf);
}

static void roundtrip_full_okta_event(void **state) {
    hb_codec_t *c = event_codec();
    (void)state;
    roundtrip(c, full_event, full_event);
    roundtrip(c, minimal_event, minimal_event); /* the same codec, reused */
    roundtrip(c, full_event, full_event);
    hb_codec_free(c);
}

static void roundtrip_minimal_event(void **state) {
    hb_codec_t *c = event_codec();
    (void)state;
    roundtrip(c, minimal_event, minimal_event);
    /* explicit nulls are the same as absent members */
    roundtrip(c,
              "{\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\",\"actor\":null,"
              "\"target\":null,\"client\":{\"zone\":null,\"id\":\"c\"}}",
              "{\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\",\"client\":{\"id\":\"c\"}}");
    /* an integer is a fine double; an empty array stays an empty array */
    roundtrip(c,
              "{\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\",\"target\":[],"
              "\"client\":{\"geographicalContext\":{\"geolocation\":{\"lat\":1,\"lon\":-2}}}}",
              "{\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\",\"target\":[],"
              "\"client\":{\"geographicalContext\":{\"geolocation\":{\"lat\":1.0,\"lon\":-2.0}}}}");
    hb_codec_free(c);
}

/* A double that is NaN or infinite is valid Avro but has no JSON form: the
 * event decodes (the direct walk, the text and the general way alike) with
 * that member left out as a null is, the rest intact; it is not refused. */
static void a_number_json_cannot_carry_is_left_out(void **state) {
    static const double odd[] = {NAN, INFINITY, -INFINITY};
    static const char *text = "{\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\","
                              "\"client\":{\"id\":\"c\",\"geographicalContext\":{\"city\":\"Bern\","
                              "\"geolocation\":{\"lat\":12.5,\"lon\":-2.25}}}}";
    static const char *want = "{\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\","
                              "\"client\":{\"id\":\"c\",\"geographicalContext\":{\"city\":\"Bern\","
                              "\"geolocation\":{\"lon\":-2.25}}}}";
    hb_codec_t *c = event_codec(), *g = event_codec();
    json_t *w = parse(want);
    double lat = 12.5;
    unsigned char pat[8];
    (void)state;
    hb_codec_set_generic_only(g, 1);
    memcpy(pat, &lat, sizeof(pat)); /* little-endian, as Avro writes it */
    for (size_t k = 0; k < sizeof(odd) / sizeof(odd[0]); k++) {
        size_t len, at;
        unsigned char *buf = encode_text(c, text, &len);
        json_t *out = NULL, *j = NULL;
        hb_jdoc_t d = {0};
        char err[256] = "";
        for (at = 0; at + 8 <= len && memcmp(buf + at, pat, 8) != 0; at++)
            ;
        assert_true(at + 8 <= len);
        memcpy(buf + at, &odd[k], 8);
        if (hb_codec_decode(c, buf, len, &out, err, sizeof(err)) < 0)
            fail_msg("decode refused the event: %s", err);
        assert_json_equal(w, out);
        json_decref(out);
        out = NULL;
        if (hb_codec_decode(g, buf, len, &out, err, sizeof(err)) < 0)
            fail_msg("the general decode refused the event: %s", err);
        assert_json_equal(w, out);
        if (hb_codec_decode_doc(c, buf, len, &d, &j, err, sizeof(err)) < 0)
            fail_msg("text decode refused the event: %s", err);
        assert_non_null(strstr(d.text.p, "\"geolocation\":{\"lon\":-2.25}"));
        json_decref(j);
        hb_jdoc_free(&d);
        json_decref(out);
        free(buf);
    }
    json_decref(w);
    hb_codec_free(c);
    hb_codec_free(g);
}

static void unknown_members_ignored(void **state) {
    hb_codec_t *c = event_codec();
    (void)state;
    roundtrip(c,
              "{\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\",\"extra\":{\"deep\":[1,2]},"
              "\"actor\":{\"id\":\"a\",\"changeDetails\":{\"x\":1}},"
              "\"target\":[{\"id\":\"t1\",\"unknown\":true}]}",
              "{\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\",\"actor\":{\"id\":\"a\"},"
              "\"target\":[{\"id\":\"t1\"}]}");
    hb_codec_free(c);
}

#define BASE "\"uuid\":\"u\",\"published\":\"p\",\"eventType\":\"t\""
static const struct {
    const char *json, *error;
} bad_cases[] = {
    {"[1,2]", "(root): expected an object"},
    {"{\"published\":\"p\",\"eventType\":\"t\"}", "uuid: missing"},
    {"{\"uuid\":null,\"published\":\"p\",\"eventType\":\"t\"}", "uuid: must not be null"},
    {"{\"uuid\":7,\"published\":\"p\",\"eventType\":\"t\"}", "uuid: expected a string"},
    {"{" BASE ",\"severity\":3}", "severity: expected null or a string"},
    {"{" BASE ",\"actor\":\"00u1\"}", "actor: expected null or an object"},
    {"{" BASE ",\"actor\":{\"id\":5}}", "actor.id: expected null or a string"},
    {"{" BASE ",\"actor\":{\"detailEntry\":{\"k\":1}}}", "actor.detailEntry.k: expected a string"},
    {"{" BASE ",\"target\":{\"id\":\"x\"}}", "target: expected null or an array"},
    {"{" BASE ",\"target\":[{\"id\":\"x\"},{\"id\":[]}]}",
     "target[1].id: expected null or a string"},
    {"{" BASE ",\"target\":[{\"id\":\"x\"},7]}", "target[1]: expected an object"},
    {"{" BASE ",\"client\":{\"geographicalContext\":{\"geolocation\":{\"lat\":\"47\",\"lon\":8}}}}",
     "client.geographicalContext.geolocation.lat: expected a number"},
    {"{" BASE ",\"client\":{\"geographicalContext\":{\"geolocation\":{\"lat\":47}}}}",
     "client.geographicalContext.geolocation.lon: missing"},
    {"{" BASE ",\"securityContext\":{\"isProxy\":\"no\"}}",
     "securityContext.isProxy: expected null or a boolean"},
    {"{" BASE ",\"securityContext\":{\"asNumber\":1.5}}",
     "securityContext.asNumber: expected null or an integer"},
    {"{" BASE ",\"securityContext\":{\"asNumber\":4294967296}}",
     "securityContext.asNumber: expected null or an integer"},
    {"{" BASE ",\"request\":{\"ipChain\":[{\"geographicalContext\":{\"city\":1}}]}}",
     "request.ipChain[0].geographicalContext.city: expected null or a string"},
    {"{" BASE ",\"debugContext\":{\"debugData\":{\"risk\":{\"level\":\"LOW\"}}}}",
     "debugContext.debugData.risk: expected a string"},
};

static void wrong_types_name_the_path(void **state) {
    hb_codec_t *c = event_codec();
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        json_t *j = parse(bad_cases[i].json);
        void *buf = (void *)1;
        size_t len = 1;
        char err[256] = "";
        if (hb_codec_encode(c, j, &buf, &len, err, sizeof(err)) == 0)
            fail_msg("case %zu encoded: %s", i, bad_cases[i].json);
        if (strcmp(err, bad_cases[i].error))
            fail_msg("case %zu:\nexpected %s\n     got %s", i, bad_cases[i].error, err);
        assert_null(buf);
        json_decref(j);
    }
    /* a failed encode leaves the codec usable */
    roundtrip(c, full_event, full_event);
    hb_codec_free(c);
}

/* --------------------------------------------------- schema resolution */

/* The event schema with some optional fields removed: an "older" version. */
static char *schema_without(const char *const *paths, size_t n) {
    json_t *s = parse(hb_schema_identity_event);
    char *out;
    for (size_t i = 0; i < n; i++) {
        /* "actor.detailEntry": field detailEntry of the record in field actor */
        char buf[128], *dot;
        json_t *rec = s, *fields;
        snprintf(buf, sizeof(buf), "%s", paths[i]);
        for (char *part = buf;; part = dot + 1) {
            size_t k;
            json_t *f = NULL;
            dot = strchr(part, '.');
            if (dot)
                *dot = '\0';
            fields = json_object_get(rec, "fields");
            for (k = 0; k < json_array_size(fields); k++) {
                f = json_array_get(fields, k);
                if (!strcmp(json_string_value(json_object_get(f, "name")), part))
                    break;
            }
            assert_true(k < json_array_size(fields));
            if (!dot) {
                assert_int_equal(json_array_remove(fields, k), 0);
                break;
            }
            rec = json_array_get(json_object_get(f, "type"), 1); /* ["null", {record}] */
        }
    }
    out = json_dumps(s, JSON_COMPACT);
    json_decref(s);
    return out;
}

static void older_writer_resolves_into_reader(void **state) {
    static const char *const removed[] = {"securityContext", "request", "actor.detailEntry",
                                          "client.geographicalContext"};
    char *v0 = schema_without(removed, 4), err[256];
    hb_codec_t *old = NULL, *cur = event_codec();
    const char *v0_event =
        "{\"uuid\":\"u0\",\"published\":\"2023-01-01T00:00:00Z\",\"eventType\":"
        "\"user.lifecycle.create\",\"actor\":{\"id\":\"00uadmin\",\"type\":\"User\"},"
        "\"client\":{\"ipAddress\":\"192.0.2.1\"},"
        "\"target\":[{\"id\":\"a\",\"type\":\"User\"},{\"id\":\"b\"},{\"id\":\"c\"}]}";
    const char *v0_small = "{\"uuid\":\"u1\",\"published\":\"p\",\"eventType\":\"t\","
                           "\"target\":[{\"id\":\"z\"}]}";
    void *buf, *buf2;
    size_t len, len2;
    json_t *out = NULL, *want;
    (void)state;
    old = hb_codec_new(v0, err, sizeof(err));
    assert_non_null(old);
    assert_true(hb_codec_fingerprint(old) != hb_codec_fingerprint(cur));
    buf = encode_text(old, v0_event, &len);
    buf2 = encode_text(old, v0_small, &len2);

    /* not registered: the reader says which fingerprint it does not know */
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown writer schema fingerprint 0x"));

    assert_int_equal(hb_codec_add_writer(cur, v0, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_add_writer(cur, v0, err, sizeof(err)), 0); /* idempotent */
    assert_int_equal(hb_codec_add_writer(cur, hb_schema_identity_event, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), 0);
    want = parse(v0_event);
    assert_json_equal(want, out);
    json_decref(want);
    json_decref(out);
    /* the resolved value is reused: no targets left over from the last one */
    assert_int_equal(hb_codec_decode(cur, buf2, len2, &out, err, sizeof(err)), 0);
    want = parse(v0_small);
    assert_json_equal(want, out);
    json_decref(want);
    json_decref(out);
    /* the reader's own messages still decode */
    roundtrip(cur, full_event, full_event);

    free(buf);
    free(buf2);
    free(v0);
    hb_codec_free(old);
    hb_codec_free(cur);
}

static void resolution_defaults_and_errors(void **state) {
    const char *writer = "{\"type\":\"record\",\"name\":\"E\",\"fields\":["
                         "{\"name\":\"a\",\"type\":\"string\"},{\"name\":\"n\",\"type\":\"int\"},"
                         "{\"name\":\"gone\",\"type\":\"string\"}]}";
    /* reader: n promoted to long, "gone" dropped, two fields added with defaults */
    const char *reader = "{\"type\":\"record\",\"name\":\"E\",\"fields\":["
                         "{\"name\":\"a\",\"type\":\"string\"},{\"name\":\"n\",\"type\":\"long\"},"
                         "{\"name\":\"lvl\",\"type\":\"string\",\"default\":\"INFO\"},"
                         "{\"name\":\"opt\",\"type\":[\"null\",\"string\"],\"default\":null}]}";
    const char *no_default =
        "{\"type\":\"record\",\"name\":\"E\",\"fields\":["
        "{\"name\":\"a\",\"type\":\"string\"},{\"name\":\"z\",\"type\":\"int\"}]}";
    const char *incompatible = "{\"type\":\"record\",\"name\":\"E\",\"fields\":["
                               "{\"name\":\"a\",\"type\":\"int\"}]}";
    char err[256];
    hb_codec_t *w = hb_codec_new(writer, err, sizeof(err)),
               *r = hb_codec_new(reader, err, sizeof(err));
    hb_codec_t *r2 = hb_codec_new(no_default, err, sizeof(err));
    hb_codec_t *r3 = hb_codec_new("{\"type\":\"record\",\"name\":\"E\",\"fields\":["
                                  "{\"name\":\"a\",\"type\":\"string\"}]}",
                                  err, sizeof(err));
    void *buf;
    size_t len;
    json_t *out = NULL, *want;
    (void)state;
    assert_non_null(w);
    assert_non_null(r);
    assert_non_null(r2);
    assert_non_null(r3);
    buf = encode_text(w, "{\"a\":\"x\",\"n\":-7,\"gone\":\"bye\"}", &len);
    assert_int_equal(hb_codec_add_writer(r, writer, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_decode(r, buf, len, &out, err, sizeof(err)), 0);
    want = parse("{\"a\":\"x\",\"n\":-7,\"lvl\":\"INFO\"}");
    assert_json_equal(want, out);
    json_decref(want);
    json_decref(out);
    /* encoding with the reader fills a missing defaulted member too */
    roundtrip(r, "{\"a\":\"x\",\"n\":1}", "{\"a\":\"x\",\"n\":1,\"lvl\":\"INFO\"}");

    assert_int_equal(hb_codec_add_writer(r2, writer, err, sizeof(err)), -1);
    assert_string_equal(err,
                        "reader field E.z is missing from the writer schema and has no default");
    assert_int_equal(hb_codec_add_writer(r3, incompatible, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "does not resolve"));
    assert_int_equal(hb_codec_add_writer(r3, "{not json", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "writer schema: invalid JSON"));
    assert_null(hb_codec_new("{\"type\":\"record\"}", err, sizeof(err)));
    free(buf);
    hb_codec_free(w);
    hb_codec_free(r);
    hb_codec_free(r2);
    hb_codec_free(r3);
}

/* The reader schema with one more optional field at the top and one in
 * Actor: what a producer one release ahead writes. */
static char *schema_with_added_fields(void) {
    json_t *s = parse(hb_schema_identity_event), *actor = NULL, *f;
    size_t i;
    char *out;
    json_array_foreach(json_object_get(s, "fields"), i, f) {
        if (!strcmp(json_string_value(json_object_get(f, "name")), "actor"))
            actor = json_array_get(json_object_get(f, "type"), 1);
    }
    assert_non_null(actor);
    (void)json_array_append_new(json_object_get(s, "fields"),
                                parse("{\"name\":\"riskScore\",\"type\":[\"null\",\"long\"],"
                                      "\"default\":null}"));
    (void)json_array_append_new(json_object_get(actor, "fields"),
                                parse("{\"name\":\"department\",\"type\":[\"null\",\"string\"],"
                                      "\"default\":null}"));
    out = json_dumps(s, JSON_COMPACT);
    json_decref(s);
    return out;
}

static void newer_writer_with_added_fields_resolves(void **state) {
    char *v2 = schema_with_added_fields(), err[256];
    hb_codec_t *w = NULL, *cur = event_codec();
    const char *v2_event =
        "{\"uuid\":\"u2\",\"published\":\"2026-01-01T00:00:00Z\",\"eventType\":"
        "\"user.session.start\",\"riskScore\":70,"
        "\"actor\":{\"id\":\"00u1\",\"department\":\"Finance\"},\"target\":[{\"id\":\"t\"}]}";
    void *buf;
    size_t len;
    json_t *out = NULL, *want;
    (void)state;
    w = hb_codec_new(v2, err, sizeof(err));
    assert_non_null(w);
    buf = encode_text(w, v2_event, &len);
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown writer schema fingerprint 0x"));
    assert_int_equal(hb_codec_add_writer(cur, v2, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), 0);
    /* the fields this reader does not know are skipped */
    want = parse("{\"uuid\":\"u2\",\"published\":\"2026-01-01T00:00:00Z\",\"eventType\":"
                 "\"user.session.start\",\"actor\":{\"id\":\"00u1\"},\"target\":[{\"id\":\"t\"}]}");
    assert_json_equal(want, out);
    json_decref(want);
    json_decref(out);
    free(buf);
    free(v2);
    hb_codec_free(w);
    hb_codec_free(cur);
}

static void every_history_version_resolves(void **state) {
    char err[256];
    hb_codec_t *cur = event_codec();
    size_t n = 0;
    (void)state;
    for (; hb_schema_history_identity_event[n]; n++)
        if (hb_codec_add_writer(cur, hb_schema_history_identity_event[n], err, sizeof(err)) < 0)
            fail_msg("schema/history version %zu: %s", n + 1, err);
    assert_true(n >= 1);
    hb_codec_free(cur);
}

/* DeliveryRetry messages already on the delay tiers, written before
 * after_delivery_id (ordered delivery) existed, are still read: v1 resolves,
 * and its messages decode with after_delivery_id null. */
static void delivery_retry_history_resolves(void **state) {
    char err[256];
    hb_codec_t *cur = hb_codec_new(hb_schema_delivery_retry, err, sizeof(err)), *v1;
    json_t *in, *out = NULL;
    void *buf = NULL;
    size_t len = 0, n = 0;
    (void)state;
    assert_non_null(cur);
    for (; hb_schema_history_delivery_retry[n]; n++)
        if (hb_codec_add_writer(cur, hb_schema_history_delivery_retry[n], err, sizeof(err)) < 0)
            fail_msg("schema/history delivery_retry version %zu: %s", n + 1, err);
    assert_true(n >= 1);
    v1 = hb_codec_new(hb_schema_history_delivery_retry[0], err, sizeof(err));
    assert_non_null(v1);
    in = json_pack("{s:s, s:s, s:[s], s:s, s:s, s:s, s:i, s:I, s:I, s:i, s:s, s:i}", "delivery_id",
                   "0b9f3f9c-5f0e-4a43-9d3f-1d2b8d3c1a11", "subscription_id",
                   "1c9f3f9c-5f0e-4a43-9d3f-1d2b8d3c1a22", "event_ids", "e1", "event_type",
                   "user.session.start", "content_type", "application/json", "body", "{}",
                   "attempt", 2, "not_before_ms", (json_int_t)1, "first_attempt_ms", (json_int_t)1,
                   "last_status", 503, "last_error", "HTTP 503", "schedule_offset", 0);
    if (hb_codec_encode(v1, in, &buf, &len, err, sizeof(err)) < 0)
        fail_msg("encode v1: %s", err);
    if (hb_codec_decode(cur, buf, len, &out, err, sizeof(err)) < 0)
        fail_msg("decode v1 with the current reader: %s", err);
    assert_true(json_is_null(json_object_get(out, "after_delivery_id")) ||
                !json_object_get(out, "after_delivery_id"));
    assert_int_equal(json_integer_value(json_object_get(out, "attempt")), 2);
    json_decref(in);
    json_decref(out);
    free(buf);
    hb_codec_free(v1);
    hb_codec_free(cur);
}

static void registry_framing(void **state) {
    static const char *const removed[] = {"securityContext", "actor.detailEntry"};
    char *v0 = schema_without(removed, 2), *v2 = schema_with_added_fields(), err[256];
    hb_codec_t *cur = event_codec(), *old = NULL, *newer = NULL;
    const char *text = "{\"uuid\":\"u3\",\"published\":\"p\",\"eventType\":\"user.session.start\","
                       "\"actor\":{\"id\":\"a\",\"department\":\"Ops\"},\"riskScore\":3}";
    const char *want_text =
        "{\"uuid\":\"u3\",\"published\":\"p\",\"eventType\":\"user.session.start\","
        "\"actor\":{\"id\":\"a\"}}";
    json_t *ev = parse(text), *out = NULL, *want = parse(want_text);
    void *buf = NULL;
    size_t len = 0;
    uint32_t id = 0;
    const unsigned char *p;
    (void)state;
    old = hb_codec_new(v0, err, sizeof(err));
    newer = hb_codec_new(v2, err, sizeof(err));
    assert_non_null(old);
    assert_non_null(newer);

    /* the reader's own schema under id 7: 0x00, 00 00 00 07, the body */
    assert_int_equal(hb_codec_encode_registry(cur, ev, 7, &buf, &len, err, sizeof(err)), 0);
    p = buf;
    assert_int_equal(p[0], 0);
    assert_memory_equal(p + 1, "\x00\x00\x00\x07", 4);
    assert_int_equal(hb_codec_registry_id(buf, len, &id), 1);
    assert_int_equal(id, 7);
    /* an id the codec was not given is a distinct answer, not poison */
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), HB_CODEC_UNKNOWN_ID);
    assert_string_equal(err, "unknown Schema Registry schema id 7");
    assert_int_equal(hb_codec_add_writer_id(cur, 7, hb_schema_identity_event, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), 0);
    assert_json_equal(want, out);
    json_decref(out);
    free(buf);

    /* an older writer (fields missing) under id 1, a newer one under id 1000000 */
    assert_int_equal(hb_codec_encode_registry(old, ev, 1, &buf, &len, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_add_writer_id(cur, 1, v0, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), 0);
    assert_json_equal(want, out);
    json_decref(out);
    free(buf);
    assert_int_equal(hb_codec_encode_registry(newer, ev, 1000000, &buf, &len, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_add_writer_id(cur, 1000000, v2, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), 0);
    assert_json_equal(want, out);
    json_decref(out);
    /* the same bytes with the single-object header need the fingerprint, which
     * the id did not register */
    free(buf);
    assert_int_equal(hb_codec_encode(newer, ev, &buf, &len, err, sizeof(err)), 0);
    assert_int_equal(hb_codec_decode(cur, buf, len, &out, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown writer schema fingerprint"));
    free(buf);

    /* a schema that does not resolve is refused under its id too */
    assert_int_equal(hb_codec_add_writer_id(cur, 9,
                                            "{\"type\":\"record\",\"name\":"
                                            "\"IdentityEvent\",\"namespace\":\"hookbridge\","
                                            "\"fields\":[{\"name\":\"uuid\",\"type\":"
                                            "\"long\"}]}",
                                            err, sizeof(err)),
                     -1);
    /* headers cut short */
    assert_int_equal(hb_codec_decode(cur, "\x00\x00\x00", 3, &out, err, sizeof(err)), -1);
    assert_string_equal(err, "truncated Schema Registry header (3 bytes)");
    assert_int_equal(hb_codec_registry_id("\x00\x00\x00\x07", 4, &id), 0);
    /* a known id with a corrupt body is poison */
    assert_int_equal(hb_codec_decode(cur, "\x00\x00\x00\x00\x07\x99", 6, &out, err, sizeof(err)),
                     -1);

    json_decref(ev);
    json_decref(want);
    free(v0);
    free(v2);
    hb_codec_free(old);
    hb_codec_free(newer);
    hb_codec_free(cur);
}

/* ------------------------------------------------------------ hostile bytes */

/* Decodes; returns the result. A success must be a JSON object. */
static int try_decode(hb_codec_t *c, const void *buf, size_t len, char *err, size_t errsz) {
    json_t *out = NULL;
    int r = hb_codec_decode(c, buf, len, &out, err, errsz);
    if (r == 0) {
        assert_true(json_is_object(out));
        json_decref(out);
    } else {
        assert_null(out);
        assert_true(err[0] != '\0');
    }
    return r;
}

static void poison_messages_fail_cleanly(void **state) {
    hb_codec_t *c = event_codec();
    size_t len;
    unsigned char *good = encode_text(c, full_event, &len), *buf = malloc(len + 64);
    char err[256];
    uint64_t fp = hb_codec_fingerprint(c);
    (void)state;

    assert_int_equal(try_decode(c, "", 0, err, sizeof(err)), -1);
    assert_string_equal(err, "not single-object encoded (bad magic)");
    assert_int_equal(try_decode(c, "{\"uuid\":1}", 10, err, sizeof(err)), -1);
    assert_string_equal(err, "not single-object encoded (bad magic)");
    assert_int_equal(try_decode(c, "\xC3\x01\x00", 3, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "truncated single-object header"));
    memcpy(buf, good, len);
    buf[5] ^= 0x40;
    assert_int_equal(try_decode(c, buf, len, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown writer schema fingerprint"));

    /* a map key that is not UTF-8 (found by reading what the fuzzer reached):
     * refused like a string value that is not UTF-8, not silently dropped */
    {
        unsigned char *p = memmem(good, len, "methodTypeUsed", 14);
        assert_non_null(p);
        memcpy(buf, good, len);
        buf[p - good] = 0xff;
        buf[p - good + 1] = 0xfe;
        assert_int_equal(try_decode(c, buf, len, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "a map key is not valid UTF-8"));
    }

    /* every truncation fails */
    for (size_t n = 0; n < len; n++) {
        assert_int_equal(try_decode(c, good, n, err, sizeof(err)), -1);
    }
    /* trailing bytes */
    memcpy(buf, good, len);
    memcpy(buf + len, "junk", 4);
    assert_int_equal(try_decode(c, buf, len + 4, err, sizeof(err)), -1);
    assert_string_equal(err, "4 trailing bytes");

    /* crafted lengths: uuid of 2^40 bytes, negative, and a varint that never ends */
    static const unsigned char bodies[][12] = {
        {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02}, /* +2^48 */
        {0x03, 'a'},                                      /* -2 */
        {0x01},                                           /* -1 */
        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        buf[0] = 0xC3;
        buf[1] = 0x01;
        for (int k = 0; k < 8; k++)
            buf[2 + k] = (unsigned char)(fp >> (8 * k));
        memcpy(buf + 10, bodies[i], sizeof(bodies[i]));
        assert_int_equal(try_decode(c, buf, 10 + sizeof(bodies[i]), err, sizeof(err)), -1);
    }

    /* random bodies behind a valid header, and random mutations of a good message */
    srand(12345);
    for (int iter = 0; iter < 20000; iter++) {
        size_t n;
        if (iter % 2) {
            n = 10 + (size_t)(rand() % 64);
            memcpy(buf, good, 10);
            for (size_t k = 10; k < n; k++)
                buf[k] = (unsigned char)rand();
        } else {
            n = len;
            memcpy(buf, good, len);
            for (int k = 0; k < 1 + rand() % 4; k++)
                buf[10 + (size_t)rand() % (len - 10)] = (unsigned char)rand();
        }
        (void)try_decode(c, buf, n, err, sizeof(err));
    }
    /* the codec still works afterwards */
    roundtrip(c, full_event, full_event);
    free(buf);
    free(good);
    hb_codec_free(c);
}

/* A schema whose arrays hold nulls: counts cannot be checked against the size. */
static void array_of_nulls_is_capped(void **state) {
    char err[256];
    hb_codec_t *c = hb_codec_new("{\"type\":\"record\",\"name\":\"N\",\"fields\":[{\"name\":\"x\","
                                 "\"type\":{\"type\":\"array\",\"items\":\"null\"}}]}",
                                 err, sizeof(err));
    unsigned char buf[32];
    uint64_t fp;
    json_t *out = NULL;
    size_t n = 0;
    (void)state;
    assert_non_null(c);
    fp = hb_codec_fingerprint(c);
    buf[n++] = 0xC3;
    buf[n++] = 0x01;
    for (int k = 0; k < 8; k++)
        buf[n++] = (unsigned char)(fp >> (8 * k));
    /* count 2^61, then the end marker */
    memcpy(buf + n, "\x80\x80\x80\x80\x80\x80\x80\x80\x40\x00", 10);
    assert_int_equal(hb_codec_decode(c, buf, n + 10, &out, err, sizeof(err)), -1);
    /* a small count is fine */
    buf[n] = 0x06; /* 3 */
    buf[n + 1] = 0x00;
    assert_int_equal(hb_codec_decode(c, buf, n + 2, &out, err, sizeof(err)), 0);
    assert_int_equal(json_array_size(json_object_get(out, "x")), 3);
    json_decref(out);
    hb_codec_free(c);
}

/* decode's direct walk (messages written with the reader schema) and the
 * general way (avro-c's generic value) give the same answer: the same JSON,
 * members in the same order, or the same error, on every Avro type, on the
 * sample events and on hand-made bytes (a map key seen twice, a key with a
 * NUL, text that is not UTF-8, NaN). */
/* The text decode (hb_codec_decode_doc with c) against the jansson decode
 * (hb_codec_decode with ref): the same answer and error; the text is
 * json_dumps' of the value, each top-level member's key and value are where
 * the index says, and the value comes back exactly from the text. */
static void check_doc_is_json(hb_codec_t *c, hb_codec_t *ref, const void *buf, size_t len) {
    char err[256] = "", rerr[256] = "";
    hb_jdoc_t d = {0};
    json_t *j = NULL, *want = NULL;
    int rc = hb_codec_decode_doc(c, buf, len, &d, &j, err, sizeof(err));
    int rrc = hb_codec_decode(ref, buf, len, &want, rerr, sizeof(rerr));
    assert_int_equal(rc, rrc);
    assert_string_equal(err, rerr);
    if (rc == 0) {
        char *t = json_dumps(want, JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_ENCODE_ANY);
        json_t *back = hb_jdoc_json(&d);
        assert_non_null(t);
        assert_int_equal(d.text.len, strlen(t));
        assert_string_equal(d.text.p, t);
        if (!back || !same_value(back, want))
            fail_msg("the text does not give the value back: %s", t);
        if (j && !same_value(j, want))
            fail_msg("the value handed over is not the decoded one: %s", t);
        if (json_is_object(want)) {
            const char *key;
            json_t *val;
            size_t i = 0;
            assert_int_equal(d.n, json_object_size(want));
            json_object_foreach(want, key, val) {
                char *v = json_dumps(val, JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_ENCODE_ANY);
                assert_int_equal(d.m[i].key_len, strlen(key)); /* field names need no escape */
                assert_memory_equal(d.text.p + d.m[i].key, key, strlen(key));
                assert_int_equal(d.m[i].val_len, strlen(v));
                assert_memory_equal(d.text.p + d.m[i].val, v, strlen(v));
                free(v);
                i++;
            }
        }
        json_decref(back);
        free(t);
    } else {
        assert_int_equal(d.text.len, 0);
        assert_null(j);
    }
    json_decref(j);
    json_decref(want);
    hb_jdoc_free(&d);
}

static void check_direct_is_generic(hb_codec_t *direct, hb_codec_t *generic, const void *buf,
                                    size_t len) {
    check_doc_is_json(direct, generic, buf, len);
    check_doc_is_json(generic, generic, buf, len);
    char err[256] = "", gerr[256] = "";
    json_t *a = NULL, *b = NULL;
    int rc = hb_codec_decode(direct, buf, len, &a, err, sizeof(err));
    int grc = hb_codec_decode(generic, buf, len, &b, gerr, sizeof(gerr));
    assert_int_equal(rc, grc);
    assert_string_equal(err, gerr);
    if (rc == 0) {
        char *ta = json_dumps(a, JSON_COMPACT), *tb = json_dumps(b, JSON_COMPACT);
        assert_string_equal(ta, tb);
        free(ta);
        free(tb);
    }
    json_decref(a);
    json_decref(b);
}

static void direct_decode_is_generic_decode(void **state) {
    (void)state;
    static const char *schema =
        "{\"type\":\"record\",\"name\":\"All\",\"namespace\":\"t\",\"fields\":["
        "{\"name\":\"n\",\"type\":\"null\"},{\"name\":\"b\",\"type\":\"boolean\"},"
        "{\"name\":\"i\",\"type\":\"int\"},{\"name\":\"l\",\"type\":\"long\"},"
        "{\"name\":\"f\",\"type\":\"float\"},{\"name\":\"d\",\"type\":\"double\"},"
        "{\"name\":\"s\",\"type\":\"string\"},{\"name\":\"y\",\"type\":\"bytes\"},"
        "{\"name\":\"x\",\"type\":{\"type\":\"fixed\",\"name\":\"F\",\"size\":2}},"
        "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"A\",\"B\"]}},"
        "{\"name\":\"u\",\"type\":[\"null\",\"string\"]},"
        "{\"name\":\"a\",\"type\":{\"type\":\"array\",\"items\":{\"type\":\"record\",\"name\":"
        "\"R\","
        "\"fields\":[{\"name\":\"k\",\"type\":[\"null\",\"long\"]}]}}},"
        "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":\"string\"}}]}";
    static const char *const docs[] = {
        "{\"b\":true,\"i\":-7,\"l\":9007199254740993,\"f\":1.5,\"d\":52.517,\"s\":\"caf\\u00e9\","
        "\"y\":\"raw\",\"x\":\"xy\",\"e\":\"B\",\"u\":\"here\",\"a\":[{\"k\":1},{},{\"k\":-2}],"
        "\"m\":{\"z\":\"1\",\"a\":\"2\",\"m\":\"3\"}}",
        "{\"b\":false,\"i\":0,\"l\":0,\"f\":0,\"d\":-0.0,\"s\":\"\",\"y\":\"\",\"x\":"
        "\"\\u0001\\u007f\","
        "\"e\":\"A\",\"a\":[],\"m\":{}}",
    };
    char err[256];
    hb_codec_t *direct = hb_codec_new(schema, err, sizeof(err));
    hb_codec_t *generic = hb_codec_new(schema, err, sizeof(err));
    assert_non_null(direct);
    assert_non_null(generic);
    hb_codec_set_generic_only(generic, 1);
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        size_t len;
        unsigned char *buf = encode_text(direct, docs[i], &len);
        check_direct_is_generic(direct, generic, buf, len);
        for (size_t cut = 0; cut < len; cut++) /* every truncation */
            check_direct_is_generic(direct, generic, buf, cut);
        free(buf);
    }
    /* Hand-made bodies after the 10-byte header: b i l f d s y x e u a as
     * in docs[1], then a map; variants break one thing each. */
    unsigned char hdr[10];
    size_t hlen;
    unsigned char *any = encode_text(direct, docs[1], &hlen);
    memcpy(hdr, any, sizeof(hdr));
    free(any);
    static const unsigned char fields[] = {0, 0, 0, 0, 0, 0, 0,   0,   0, 0, 0,
                                           0, 0, 0, 0, 0, 0, 'x', 'y', 0, 0, 0};
    static const struct {
        const char *map;
        size_t len;
        int bad_string, nan;
    } variants[] = {
        {"\x04\x02k\x02"
         "1\x02k\x02"
         "2\x00",
         10, 0, 0}, /* {"k":"1","k":"2"}: a key twice */
        {"\x02\x06"
         "a\0b\x02"
         "1\x00",
         8, 0, 0}, /* {"a\0b":"1"}: a key with a NUL */
        {"\x04\x02k\x02"
         "1\x02j\x02"
         "2\x00",
         10, 0, 0}, /* two keys: the direct walk */
        {"\x02\x02\xff\x02"
         "1\x00",
         6, 0, 0},         /* a key that is not UTF-8 */
        {"\x00", 1, 1, 0}, /* s is not UTF-8 */
        {"\x00", 1, 0, 1}, /* d is NaN */
    };
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        unsigned char buf[64];
        size_t n = sizeof(hdr);
        memcpy(buf, hdr, sizeof(hdr));
        memcpy(buf + n, fields, sizeof(fields));
        if (variants[i].nan) {
            buf[n + 13] = 0xf8;
            buf[n + 14] = 0x7f;
        }
        n += sizeof(fields);
        if (variants[i].bad_string) { /* s: "" becomes "\xff" */
            memmove(buf + sizeof(hdr) + 17, buf + sizeof(hdr) + 15, sizeof(fields) - 15);
            buf[sizeof(hdr) + 15] = 0x02;
            buf[sizeof(hdr) + 16] = 0xff;
            n += 1;
        }
        memcpy(buf + n, variants[i].map, variants[i].len);
        n += variants[i].len;
        check_direct_is_generic(direct, generic, buf, n);
    }
    /* What only check_plan used to refuse before the direct walk to text ran
     * (it now runs first and must refuse the same): a boolean byte of 2, an
     * int beyond 32 bits, an array block whose size or count cannot fit. */
#define BROKEN(lit) lit, sizeof(lit) - 1
    static const struct {
        const char *bytes; /* b i ... u (21 bytes as in fields), then a, then m */
        size_t len;
    } broken[] = {
        {BROKEN("\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00xy\x00\x00"
                "\x00\x00")}, /* b = 2 */
        {BROKEN("\x00\x80\x80\x80\x80\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                "\x00xy\x00\x00\x00\x00")}, /* i = 2^31 */
        {BROKEN(
            "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00xy\x00\x00"
            "\x01\x7e\x00\x00\x00")}, /* a: a block of -1 item whose size (63) is past the end */
        {BROKEN("\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00xy\x00\x00"
                "\x7e\x00\x00\x00")}, /* a: 63 items, 3 bytes left */
    };
#undef BROKEN
    for (size_t i = 0; i < sizeof(broken) / sizeof(broken[0]); i++) {
        unsigned char buf[64];
        char berr[256];
        json_t *j = NULL;
        hb_jdoc_t d = {0};
        memcpy(buf, hdr, sizeof(hdr));
        memcpy(buf + sizeof(hdr), broken[i].bytes, broken[i].len);
        check_direct_is_generic(direct, generic, buf, sizeof(hdr) + broken[i].len);
        assert_int_equal(hb_codec_decode_doc(direct, buf, sizeof(hdr) + broken[i].len, &d, &j, berr,
                                             sizeof(berr)),
                         -1);
        assert_string_equal(berr, "truncated or corrupt Avro data");
        hb_jdoc_free(&d);
    }
    {
        /* the sanity of the bytes above: the plain two-key map decodes */
        unsigned char buf[64];
        json_t *j = NULL;
        memcpy(buf, hdr, sizeof(hdr));
        memcpy(buf + sizeof(hdr), fields, sizeof(fields));
        memcpy(buf + sizeof(hdr) + sizeof(fields), variants[2].map, variants[2].len);
        assert_int_equal(hb_codec_decode(direct, buf,
                                         sizeof(hdr) + sizeof(fields) + variants[2].len, &j, err,
                                         sizeof(err)),
                         0);
        assert_string_equal(json_string_value(json_object_get(json_object_get(j, "m"), "j")), "2");
        json_decref(j);
    }
    hb_codec_free(direct);
    hb_codec_free(generic);

    /* The sample events, through the identity event schema. */
    direct = event_codec();
    generic = event_codec();
    hb_codec_set_generic_only(generic, 1);
    static const char *const samples[] = {full_event, minimal_event};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        size_t len;
        void *buf = encode_text(direct, samples[i], &len);
        check_direct_is_generic(direct, generic, buf, len);
        free(buf);
    }
    hb_codec_free(direct);
    hb_codec_free(generic);
}

/* ------------------------------------------ random and hostile bodies */

static void put_long(unsigned char *b, size_t *n, int64_t v) {
    uint64_t u = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    do {
        unsigned char c = u & 0x7f;
        u >>= 7;
        b[(*n)++] = (unsigned char)(c | (u ? 0x80 : 0));
    } while (u);
}

static void put_raw(unsigned char *b, size_t *n, const void *s, size_t len) {
    memcpy(b + *n, s, len);
    *n += len;
}

static void put_str(unsigned char *b, size_t *n, const void *s, size_t len) {
    put_long(b, n, (int64_t)len);
    put_raw(b, n, s, len);
}

/* Strings to pick from: escapes, control bytes, a NUL, UTF-8 and bytes that
 * are not (a lone lead byte, a surrogate, an overlong form), JSON look-alikes. */
static const char *const odd_strings[] = {"",
                                          "k",
                                          "k\0x",
                                          "\"",
                                          "\\",
                                          "\x01\x1f\x7f",
                                          "caf\xc3\xa9",
                                          "\xff",
                                          "\xed\xa0\x80",
                                          "\xc0\x80",
                                          "\xf0\x9f\x98\x80",
                                          "a\"b\\c\n",
                                          "null",
                                          "1.5e300",
                                          "{\"x\":1}",
                                          "/"};
static const size_t odd_lens[] = {0, 1, 3, 1, 1, 3, 5, 1, 3, 2, 4, 6, 4, 7, 7, 1};

static void put_odd_string(unsigned char *b, size_t *n, unsigned *seed) {
    size_t i = (size_t)rand_r(seed) % (sizeof(odd_lens) / sizeof(odd_lens[0]));
    put_str(b, n, odd_strings[i], odd_lens[i]);
}

static void put_odd_double(unsigned char *b, size_t *n, unsigned *seed) {
    static const double picks[] = {0.0,  -0.0, 0.1 + 0.2, 1e308,   -1e-308, 5e-324, 52.517,
                                   1e15, 1e16, 1e17,      2.0 / 3, 100.0,   -1.5};
    double d;
    uint64_t u;
    int k = rand_r(seed) % 16;
    if (k < 13)
        d = picks[k];
    else if (k == 13)
        d = NAN;
    else if (k == 14)
        d = rand_r(seed) % 2 ? INFINITY : -INFINITY;
    else {
        u = ((uint64_t)rand_r(seed) << 33) ^ ((uint64_t)rand_r(seed) << 11) ^
            (uint64_t)rand_r(seed);
        memcpy(&d, &u, sizeof(d));
    }
    memcpy(&u, &d, sizeof(u));
    for (int i = 0; i < 8; i++)
        b[(*n)++] = (unsigned char)(u >> (8 * i));
}

static int64_t odd_long(unsigned *seed) {
    static const int64_t picks[] = {0, -1, 1, INT64_MAX, INT64_MIN, 9007199254740993LL, -64, 63};
    int k = rand_r(seed) % 10;
    return k < 8 ? picks[k] : (int64_t)(((uint64_t)rand_r(seed) << 40) ^ (uint64_t)rand_r(seed));
}

/* A block list of count items (sometimes in two blocks, sometimes with the
 * negative count and byte size form), items written by put_item. */
static void put_blocks(unsigned char *b, size_t *n, unsigned *seed, int count,
                       void (*put_item)(unsigned char *, size_t *, unsigned *)) {
    int first = count > 1 && rand_r(seed) % 3 == 0 ? count / 2 : count;
    int done = 0;
    while (done < count) {
        int in = done ? count - done : first;
        if (rand_r(seed) % 4 == 0) {
            unsigned char tmp[4096];
            size_t tn = 0;
            for (int i = 0; i < in; i++)
                put_item(tmp, &tn, seed);
            put_long(b, n, -in);
            put_long(b, n, (int64_t)tn);
            put_raw(b, n, tmp, tn);
        } else {
            put_long(b, n, in);
            for (int i = 0; i < in; i++)
                put_item(b, n, seed);
        }
        done += in;
    }
    put_long(b, n, 0);
}

static void put_opt_long(unsigned char *b, size_t *n, unsigned *seed) { /* ["null","long"] */
    if (rand_r(seed) % 3 == 0) {
        put_long(b, n, 0);
    } else {
        put_long(b, n, 1);
        put_long(b, n, odd_long(seed));
    }
}

static void put_inner(unsigned char *b, size_t *n, unsigned *seed) {
    /* ["null","double","string",{"type":"array","items":["null","long"]}] */
    int k = rand_r(seed) % 4;
    put_long(b, n, k);
    if (k == 1)
        put_odd_double(b, n, seed);
    else if (k == 2)
        put_odd_string(b, n, seed);
    else if (k == 3)
        put_blocks(b, n, seed, rand_r(seed) % 4, put_opt_long);
}

static void put_map_entry(unsigned char *b, size_t *n, unsigned *seed) {
    put_odd_string(b, n, seed); /* the key */
    put_inner(b, n, seed);
}

static void put_string_entry(unsigned char *b, size_t *n, unsigned *seed) {
    put_odd_string(b, n, seed);
    put_odd_string(b, n, seed);
}

static void put_item_rec(unsigned char *b, size_t *n, unsigned *seed) {
    /* ["null","boolean",{"type":"record","name":"In","fields":[x: ["null","double"]]}] */
    int k = rand_r(seed) % 3;
    put_long(b, n, k);
    if (k == 1)
        b[(*n)++] = (unsigned char)(rand_r(seed) % 2);
    else if (k == 2) {
        int some = rand_r(seed) % 2;
        put_long(b, n, some);
        if (some)
            put_odd_double(b, n, seed);
    }
}

static const char odd_schema[] =
    "{\"type\":\"record\",\"name\":\"Odd\",\"fields\":["
    "{\"name\":\"d\",\"type\":\"double\"},{\"name\":\"f\",\"type\":\"float\"},"
    "{\"name\":\"l\",\"type\":\"long\"},{\"name\":\"s\",\"type\":\"string\"},"
    "{\"name\":\"n\",\"type\":[\"null\",\"string\"]},"
    "{\"name\":\"u\",\"type\":[\"null\",\"string\",\"long\",\"double\",{\"type\":\"map\","
    "\"values\":"
    "[\"null\",\"double\",\"string\",{\"type\":\"array\",\"items\":[\"null\",\"long\"]}]}]},"
    "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":\"string\"}},"
    "{\"name\":\"a\",\"type\":{\"type\":\"array\",\"items\":[\"null\",\"boolean\",{\"type\":"
    "\"record\",\"name\":\"In\",\"fields\":[{\"name\":\"x\",\"type\":[\"null\",\"double\"]}]}]}}]}";

static size_t random_odd(unsigned char *b, uint64_t fp, unsigned *seed) {
    size_t n = 0;
    float f;
    uint32_t u;
    int k;
    b[n++] = 0xc3;
    b[n++] = 0x01;
    for (int i = 0; i < 8; i++)
        b[n++] = (unsigned char)(fp >> (8 * i));
    put_odd_double(b, &n, seed);
    f = rand_r(seed) % 5 == 0 ? NAN : (float)rand_r(seed) / 7.0f;
    memcpy(&u, &f, sizeof(u));
    for (int i = 0; i < 4; i++)
        b[n++] = (unsigned char)(u >> (8 * i));
    put_long(b, &n, odd_long(seed));
    put_odd_string(b, &n, seed);
    k = rand_r(seed) % 2;
    put_long(b, &n, k);
    if (k)
        put_odd_string(b, &n, seed);
    k = rand_r(seed) % 5;
    put_long(b, &n, k);
    if (k == 1)
        put_odd_string(b, &n, seed);
    else if (k == 2)
        put_long(b, &n, odd_long(seed));
    else if (k == 3)
        put_odd_double(b, &n, seed);
    else if (k == 4)
        put_blocks(b, &n, seed, rand_r(seed) % 5, put_map_entry);
    put_blocks(b, &n, seed, rand_r(seed) % 4, put_string_entry);
    put_blocks(b, &n, seed, rand_r(seed) % 5, put_item_rec);
    return n;
}

/* Random bodies of a schema with nested unions, maps with odd keys (a NUL,
 * not UTF-8, the same key twice), NaN and infinite reals, huge numbers and
 * strings that are not UTF-8; then each one mutated (bytes flipped, cut,
 * repeated): the text decode and the jansson decode, direct and general,
 * always agree. */
static void text_decode_is_json_decode_on_hostile_bodies(void **state) {
    (void)state;
    char err[256];
    hb_codec_t *direct = hb_codec_new(odd_schema, err, sizeof(err));
    hb_codec_t *generic = hb_codec_new(odd_schema, err, sizeof(err));
    unsigned seed = 2026;
    int decoded = 0;
    assert_non_null(direct);
    assert_non_null(generic);
    hb_codec_set_generic_only(generic, 1);
    for (int i = 0; i < 4000; i++) {
        unsigned char b[1 << 16];
        size_t n = random_odd(b, hb_codec_fingerprint(direct), &seed);
        json_t *j = NULL;
        assert_true(n < sizeof(b) / 2);
        if (hb_codec_decode(direct, b, n, &j, err, sizeof(err)) == 0)
            decoded++;
        json_decref(j);
        check_direct_is_generic(direct, generic, b, n);
        for (int m = 0; m < 4; m++) {
            unsigned char c[1 << 16];
            size_t cn = n;
            memcpy(c, b, n);
            switch (rand_r(&seed) % 3) {
            case 0:
                c[10 + (size_t)rand_r(&seed) % (n - 10)] ^=
                    (unsigned char)(1 + rand_r(&seed) % 255);
                break;
            case 1: cn = 10 + (size_t)rand_r(&seed) % (n - 10); break;
            default: {
                size_t at = 10 + (size_t)rand_r(&seed) % (n - 10), k = (size_t)rand_r(&seed) % 8;
                memmove(c + at + k, c + at, n - at);
                memcpy(c + at, b + 10 + (size_t)rand_r(&seed) % (n - 10), k);
                cn = n + k;
            }
            }
            check_direct_is_generic(direct, generic, c, cn);
        }
    }
    assert_true(decoded > 400); /* the generator makes decodable bodies too */
    hb_codec_free(direct);
    hb_codec_free(generic);

    /* The sample events, mutated. */
    direct = event_codec();
    generic = event_codec();
    hb_codec_set_generic_only(generic, 1);
    {
        size_t len;
        unsigned char *buf = encode_text(direct, full_event, &len);
        for (int i = 0; i < 3000; i++) {
            unsigned char c[8192];
            assert_true(len < sizeof(c));
            memcpy(c, buf, len);
            for (int k = rand_r(&seed) % 3; k >= 0; k--)
                c[10 + (size_t)rand_r(&seed) % (len - 10)] = (unsigned char)rand_r(&seed);
            check_direct_is_generic(direct, generic, c, len);
        }
        free(buf);
    }
    hb_codec_free(direct);
    hb_codec_free(generic);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crc64_spec_vector),
        cmocka_unit_test(canonical_form_table),
        cmocka_unit_test(event_schema_fingerprint_in_header),
        cmocka_unit_test(roundtrip_full_okta_event),
        cmocka_unit_test(roundtrip_minimal_event),
        cmocka_unit_test(a_number_json_cannot_carry_is_left_out),
        cmocka_unit_test(unknown_members_ignored),
        cmocka_unit_test(wrong_types_name_the_path),
        cmocka_unit_test(older_writer_resolves_into_reader),
        cmocka_unit_test(resolution_defaults_and_errors),
        cmocka_unit_test(newer_writer_with_added_fields_resolves),
        cmocka_unit_test(every_history_version_resolves),
        cmocka_unit_test(delivery_retry_history_resolves),
        cmocka_unit_test(registry_framing),
        cmocka_unit_test(poison_messages_fail_cleanly),
        cmocka_unit_test(array_of_nulls_is_capped),
        cmocka_unit_test(direct_decode_is_generic_decode),
        cmocka_unit_test(text_decode_is_json_decode_on_hostile_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
