/* Avro encode: the direct walk from jansson to the bytes (what the producer
 * and the ingest endpoint run) against the general way, avro-c's generic
 * value built from the JSON and written (hb_codec_set_generic_only, kept as
 * the oracle). Thousands of random events, valid and not, for the real
 * schemas and for a hostile one (nested unions, maps of arrays of unions,
 * enums, fixed, bytes, defaults of every kind, a recursive record, nulls
 * everywhere): the same bytes, both framings, or the same error, word for
 * word. */
#include <setjmp.h>
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
#include "hb_schemas.h"

/* ------------------------------------------------------- the comparison */

typedef struct {
    int ok, failed;
} tally_t;

/* Encodes j with both codecs, in both framings: the same answer. */
static void check_same(hb_codec_t *direct, hb_codec_t *generic, const json_t *j, tally_t *t) {
    for (int framing = 0; framing < 2; framing++) {
        char err[512] = "", gerr[512] = "";
        void *buf = NULL, *gbuf = NULL;
        size_t len = 0, glen = 0;
        int rc = framing ? hb_codec_encode_registry(direct, j, 77, &buf, &len, err, sizeof(err))
                         : hb_codec_encode(direct, j, &buf, &len, err, sizeof(err));
        int grc = framing
                      ? hb_codec_encode_registry(generic, j, 77, &gbuf, &glen, gerr, sizeof(gerr))
                      : hb_codec_encode(generic, j, &gbuf, &glen, gerr, sizeof(gerr));
        if (rc != grc || strcmp(err, gerr) != 0 || len != glen ||
            (len && memcmp(buf, gbuf, len) != 0)) {
            char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
            print_error("input %s\n direct  %d %zu bytes \"%s\"\n general %d %zu bytes \"%s\"\n",
                        text ? text : "?", rc, len, err, grc, glen, gerr);
            for (size_t i = 0; i < len || i < glen; i++)
                if (i >= len || i >= glen ||
                    ((unsigned char *)buf)[i] != ((unsigned char *)gbuf)[i]) {
                    print_error(" first difference at byte %zu\n", i);
                    break;
                }
            free(text);
            fail();
        }
        if (rc == 0 && !*err)
            assert_true(len > 0);
        else
            assert_true(*err != '\0'); /* every refusal says why */
        if (!framing)
            rc == 0 ? t->ok++ : t->failed++;
        free(buf);
        free(gbuf);
    }
}

static void codecs(const char *schema, hb_codec_t **direct, hb_codec_t **generic) {
    char err[256];
    *direct = hb_codec_new(schema, err, sizeof(err));
    if (!*direct)
        fail_msg("codec: %s", err);
    *generic = hb_codec_new(schema, err, sizeof(err));
    assert_non_null(*generic);
    hb_codec_set_generic_only(*generic, 1);
}

/* ------------------------------------------- random JSON, schema-driven */

typedef struct {
    unsigned seed;
    int bad;       /* per mille: a value of a random kind instead of what fits */
    json_t *named; /* {name: definition}, short and full names */
} gen_t;

static int below(gen_t *g, int n) {
    return rand_r(&g->seed) % n;
}

/* Strings that matter: empty, ASCII, UTF-8, escapes, a NUL inside, enum
 * symbols and near misses, fixed-size (4) ones, a long one. */
static json_t *gen_string(gen_t *g) {
    static const char *const some[] = {
        "",     "a",           "RED",  "GREEN", "BLUE",          "red",
        "RED ", "abcd",        "abc",  "abcde", "Z\xc3\xbcrich", "\xe2\x82\xac\xe2\x82\xac",
        "k",    "detailEntry", "null", "0",     "\"quoted\\\"",  "tab\there"};
    int k = below(g, 24);
    if (k < (int)(sizeof(some) / sizeof(some[0])))
        return json_string(some[k]);
    if (k == 20)
        return json_stringn("ab\0d", 4); /* a NUL inside, 4 bytes: fits F4 */
    if (k == 21)
        return json_stringn("RED\0x", 5); /* avro-c finds the symbol up to the NUL */
    if (k == 22) {
        char s[300];
        size_t n = 1 + (size_t)below(g, (int)sizeof(s) - 1);
        for (size_t i = 0; i < n; i++)
            s[i] = (char)('a' + below(g, 26));
        return json_stringn(s, n);
    }
    {
        char s[16];
        size_t n = (size_t)below(g, 8);
        for (size_t i = 0; i < n; i++)
            s[i] = (char)(' ' + below(g, 95));
        return json_stringn(s, n);
    }
}

static json_t *gen_integer(gen_t *g) {
    static const json_int_t edges[] = {0,         1,         -1,        63,           64,
                                       -64,       -65,       127,       128,          8191,
                                       8192,      INT32_MAX, INT32_MIN, 2147483648LL, -2147483649LL,
                                       INT64_MAX, INT64_MIN, 1LL << 40};
    if (below(g, 2))
        return json_integer(edges[below(g, (int)(sizeof(edges) / sizeof(edges[0])))]);
    return json_integer((json_int_t)below(g, 2000000) - 1000000);
}

static json_t *gen_real(gen_t *g) {
    static const double some[] = {0.0,   -0.0,    1.5,    -2.25, 47.3769,
                                  1e300, -1e-300, 3.4e38, 1e39,  0.1};
    return json_real(some[below(g, (int)(sizeof(some) / sizeof(some[0])))]);
}

static json_t *gen_key(gen_t *g) {
    return gen_string(g); /* used as a key by its text */
}

static json_t *gen_any(gen_t *g, int depth);

static void put_member(json_t *obj, json_t *key, json_t *val) {
    (void)json_object_setn_new(obj, json_string_value(key), json_string_length(key), val);
    json_decref(key);
}

/* A JSON value of a random kind. */
static json_t *gen_any(gen_t *g, int depth) {
    switch (below(g, depth > 3 ? 7 : 9)) {
    case 0: return json_null();
    case 1: return json_boolean(below(g, 2));
    case 2:
    case 3: return gen_integer(g);
    case 4: return gen_real(g);
    case 5:
    case 6: return gen_string(g);
    case 7: {
        json_t *a = json_array();
        for (int i = below(g, 4); i > 0; i--)
            (void)json_array_append_new(a, gen_any(g, depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = below(g, 4); i > 0; i--)
            put_member(o, gen_key(g), gen_any(g, depth + 1));
        return o;
    }
    }
}

static json_t *gen_value(gen_t *g, const json_t *s, int depth);

static json_t *gen_named(gen_t *g, const json_t *s, const char *t, int depth) {
    if (!strcmp(t, "record")) {
        json_t *o = json_object(), *f;
        size_t i;
        json_array_foreach(json_object_get(s, "fields"), i, f) {
            const char *name = json_string_value(json_object_get(f, "name"));
            int k = below(g, 100);
            if (depth > 12 || k < 4)
                continue; /* absent */
            if (k < 7)
                (void)json_object_set_new(o, name, json_null());
            else
                (void)json_object_set_new(o, name,
                                          gen_value(g, json_object_get(f, "type"), depth + 1));
        }
        if (below(g, 10) == 0) /* unknown members are ignored */
            put_member(o, gen_key(g), gen_any(g, depth + 1));
        return o;
    }
    if (!strcmp(t, "enum")) {
        const json_t *syms = json_object_get(s, "symbols");
        if (below(g, 30) == 0)
            return gen_string(g);
        return json_deep_copy(json_array_get(syms, (size_t)below(g, (int)json_array_size(syms))));
    }
    /* fixed */
    if (below(g, 30) == 0)
        return gen_string(g);
    {
        char b[64];
        json_int_t size = json_integer_value(json_object_get(s, "size"));
        assert_true(size >= 0 && size <= (json_int_t)sizeof(b));
        for (json_int_t i = 0; i < size; i++)
            b[i] = (char)(below(g, 3) ? 'a' + below(g, 26) : below(g, 128)); /* NULs too */
        return json_stringn(b, (size_t)size);
    }
}

static json_t *gen_value(gen_t *g, const json_t *s, int depth) {
    if (below(g, 1000) < g->bad)
        return gen_any(g, depth);
    if (json_is_array(s)) { /* a union: any branch, null more often near the bottom */
        size_t n = json_array_size(s);
        if (depth > 12 && json_is_string(json_array_get(s, 0)) &&
            !strcmp(json_string_value(json_array_get(s, 0)), "null"))
            return json_null();
        return gen_value(g, json_array_get(s, (size_t)below(g, (int)n)), depth + 1);
    }
    if (json_is_string(s)) {
        const char *t = json_string_value(s);
        const json_t *def = json_object_get(g->named, t);
        if (def)
            return gen_value(g, def, depth);
        if (!strcmp(t, "null"))
            return json_null();
        if (!strcmp(t, "boolean"))
            return json_boolean(below(g, 2));
        if (!strcmp(t, "int") || !strcmp(t, "long"))
            return gen_integer(g);
        if (!strcmp(t, "float") || !strcmp(t, "double"))
            return below(g, 4) ? gen_real(g) : gen_integer(g);
        if (!strcmp(t, "string") || !strcmp(t, "bytes"))
            return gen_string(g);
        fail_msg("test schema: unknown type %s", t);
    }
    {
        const json_t *type = json_object_get(s, "type");
        const char *t = json_string_value(type);
        if (!t)
            return gen_value(g, type, depth);
        if (!strcmp(t, "record") || !strcmp(t, "enum") || !strcmp(t, "fixed"))
            return gen_named(g, s, t, depth);
        if (!strcmp(t, "array")) {
            json_t *a = json_array();
            for (int i = depth > 12                 ? 0
                         : below(g, 3) || depth > 3 ? below(g, 4)
                                                    : below(g, 70);
                 i > 0; i--)
                (void)json_array_append_new(a,
                                            gen_value(g, json_object_get(s, "items"), depth + 1));
            return a;
        }
        if (!strcmp(t, "map")) {
            json_t *o = json_object();
            for (int i = depth > 12                 ? 0
                         : below(g, 3) || depth > 3 ? below(g, 4)
                                                    : below(g, 70);
                 i > 0; i--)
                put_member(o, gen_key(g), gen_value(g, json_object_get(s, "values"), depth + 1));
            return o;
        }
        return gen_value(g, type, depth);
    }
}

/* {name: definition} of every named type, by short and by full name. */
static void collect_named(const json_t *s, const char *ns, json_t *named) {
    size_t i;
    const json_t *k;
    if (json_is_array(s)) {
        json_array_foreach(s, i, k) collect_named(k, ns, named);
        return;
    }
    if (!json_is_object(s))
        return;
    const char *t = json_string_value(json_object_get(s, "type"));
    if (!t) {
        collect_named(json_object_get(s, "type"), ns, named);
        return;
    }
    if (!strcmp(t, "record") || !strcmp(t, "enum") || !strcmp(t, "fixed")) {
        const char *name = json_string_value(json_object_get(s, "name"));
        const char *space = json_string_value(json_object_get(s, "namespace"));
        char full[256];
        if (space)
            ns = space;
        snprintf(full, sizeof(full), "%s%s%s", ns ? ns : "", ns && *ns ? "." : "", name);
        (void)json_object_set(named, name, (json_t *)s);
        (void)json_object_set(named, full, (json_t *)s);
        json_array_foreach(json_object_get(s, "fields"), i, k)
            collect_named(json_object_get(k, "type"), ns, named);
    } else if (!strcmp(t, "array")) {
        collect_named(json_object_get(s, "items"), ns, named);
    } else if (!strcmp(t, "map")) {
        collect_named(json_object_get(s, "values"), ns, named);
    }
}

/* n random events of schema, a share `bad` per mille of the values replaced
 * by one of a random kind, through both codecs. */
static tally_t fuzz_schema(const char *schema, unsigned seed, int n, int bad) {
    hb_codec_t *direct, *generic;
    json_error_t jerr;
    json_t *s = json_loads(schema, 0, &jerr);
    gen_t g = {seed, bad, json_object()};
    tally_t t = {0, 0};
    assert_non_null(s);
    collect_named(s, NULL, g.named);
    codecs(schema, &direct, &generic);
    for (int i = 0; i < n; i++) {
        json_t *j = gen_value(&g, s, 0);
        check_same(direct, generic, j, &t);
        json_decref(j);
    }
    hb_codec_free(direct);
    hb_codec_free(generic);
    json_decref(g.named);
    json_decref(s);
    return t;
}

/* ----------------------------------------------------------------- tests */

static void identity_events_random(void **state) {
    (void)state;
    tally_t clean = fuzz_schema(hb_schema_identity_event, 1, 3000, 0);
    tally_t dirty = fuzz_schema(hb_schema_identity_event, 2, 3000, 15);
    /* absent uuid/published/eventType make some clean ones fail too */
    assert_true(clean.ok > 300);
    assert_true(dirty.ok > 100 && dirty.failed > 1000);
}

static void delivery_retry_random(void **state) {
    (void)state;
    tally_t clean = fuzz_schema(hb_schema_delivery_retry, 3, 1500, 0);
    tally_t dirty = fuzz_schema(hb_schema_delivery_retry, 4, 1500, 20);
    assert_true(clean.ok + dirty.ok > 100 && dirty.failed > 300);
}

/* Every Avro type in unions, maps and arrays nested in each other; defaults
 * of every kind on fields whose type takes no null (a record, an enum, a
 * map, an array, a number as an integer, a wrong-typed one, a null one);
 * fields whose type is a union with null not first; a recursive record
 * (deep enough chains are refused as nested too deeply). */
static const char hostile_schema[] =
    "{\"type\":\"record\",\"name\":\"Hostile\",\"namespace\":\"t\",\"fields\":["
    "{\"name\":\"n\",\"type\":\"null\"},"
    "{\"name\":\"b\",\"type\":\"boolean\",\"default\":true},"
    "{\"name\":\"i\",\"type\":\"int\",\"default\":-3},"
    "{\"name\":\"l\",\"type\":\"long\"},"
    "{\"name\":\"f\",\"type\":\"float\",\"default\":1.5},"
    "{\"name\":\"d\",\"type\":\"double\",\"default\":2},"
    "{\"name\":\"s\",\"type\":\"string\",\"default\":\"dflt\"},"
    "{\"name\":\"y\",\"type\":\"bytes\",\"default\":\"\\u00ff\"},"
    "{\"name\":\"x\",\"type\":{\"type\":\"fixed\",\"name\":\"F4\",\"size\":4}},"
    "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"Color\",\"symbols\":"
    "[\"RED\",\"GREEN\",\"BLUE\"]},\"default\":\"GREEN\"},"
    "{\"name\":\"u\",\"type\":[\"null\",\"boolean\",\"int\",\"long\",\"float\",\"double\","
    "\"Color\",\"F4\",\"string\",\"bytes\",{\"type\":\"array\",\"items\":[\"null\",\"long\","
    "\"string\"]},{\"type\":\"map\",\"values\":[\"double\",\"Color\",\"null\"]}]},"
    "{\"name\":\"u2\",\"type\":[\"string\",\"null\",\"F4\"],\"default\":\"x\"},"
    "{\"name\":\"u3\",\"type\":[\"F4\",\"Color\",\"float\",\"boolean\"]},"
    "{\"name\":\"rec\",\"type\":{\"type\":\"record\",\"name\":\"Inner\",\"fields\":["
    "{\"name\":\"k\",\"type\":[\"null\",\"long\"],\"default\":null},"
    "{\"name\":\"e\",\"type\":\"Color\",\"default\":\"RED\"},"
    "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":{\"type\":\"array\",\"items\":"
    "[\"null\",\"Inner\"]}},\"default\":{}}]},\"default\":{\"e\":\"BLUE\"}},"
    "{\"name\":\"a\",\"type\":{\"type\":\"array\",\"items\":[\"null\",{\"type\":\"map\","
    "\"values\":[\"null\",\"string\",{\"type\":\"array\",\"items\":\"F4\"}]}]},\"default\":[]},"
    "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":[\"null\",\"Inner\",\"t.Color\"]}},"
    "{\"name\":\"chain\",\"type\":[\"null\",{\"type\":\"record\",\"name\":\"Node\",\"fields\":["
    "{\"name\":\"v\",\"type\":\"int\"},{\"name\":\"next\",\"type\":[\"null\",\"Node\"]}]}]},"
    "{\"name\":\"wrong\",\"type\":\"int\",\"default\":\"seven\"},"
    "{\"name\":\"nodef\",\"type\":\"long\",\"default\":null},"
    "{\"name\":\"arr\",\"type\":{\"type\":\"array\",\"items\":\"int\"},\"default\":[1,2,3]},"
    "{\"name\":\"mp\",\"type\":{\"type\":\"map\",\"values\":\"Color\"},\"default\":{\"a\":\"RED\"}}"
    ","
    "{\"name\":\"by\",\"type\":[\"bytes\",\"null\"],\"default\":\"z\"}]}";

static void hostile_schema_random(void **state) {
    (void)state;
    tally_t clean = fuzz_schema(hostile_schema, 5, 3000, 0);
    tally_t dirty = fuzz_schema(hostile_schema, 6, 3000, 10);
    assert_true(clean.ok > 100 && clean.failed > 100);
    assert_true(dirty.failed > 1000);
}

/* The other shapes a schema's top can take, and other schemas' features. */
static void other_schemas_random(void **state) {
    (void)state;
    static const char *const schemas[] = {
        "{\"type\":\"map\",\"values\":[\"null\",\"long\",{\"type\":\"array\",\"items\":\"string\"}]"
        "}",
        "[\"null\",\"long\",{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\","
        "\"type\":\"string\",\"default\":\"q\"}]},{\"type\":\"map\",\"values\":\"int\"}]",
        "{\"type\":\"record\",\"name\":\"E\",\"fields\":[]}",
        "{\"type\":\"record\",\"name\":\"N\",\"namespace\":\"a.b\",\"fields\":["
        "{\"name\":\"in\",\"type\":{\"type\":\"record\",\"name\":\"In\",\"fields\":["
        "{\"name\":\"q\",\"type\":\"int\",\"default\":4}]}},"
        "{\"name\":\"other\",\"type\":{\"type\":\"record\",\"name\":\"In\",\"namespace\":\"c\","
        "\"fields\":[{\"name\":\"q\",\"type\":\"string\",\"default\":\"x\"}]}}]}",
    };
    for (size_t i = 0; i < sizeof(schemas) / sizeof(schemas[0]); i++) {
        tally_t t = fuzz_schema(schemas[i], 10 + (unsigned)i, 800, 30);
        assert_true(t.ok + t.failed == 800);
    }
}

/* Hand-picked inputs: the sample events, the limits of the path an error
 * names (a 300-character key, a chain deeper than HB_CODEC_MAX_DEPTH),
 * a map key with a NUL inside (the general way decides), a top that is not
 * an object, a member of every wrong kind. */
static void chosen_inputs(void **state) {
    (void)state;
    hb_codec_t *direct, *generic;
    tally_t t = {0, 0};
    json_error_t jerr;
    char key[301];

    codecs(hb_schema_identity_event, &direct, &generic);
    {
        static const char *const samples[] = {full_event, minimal_event};
        for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
            json_t *j = json_loads(samples[i], 0, &jerr);
            assert_non_null(j);
            check_same(direct, generic, j, &t);
            json_decref(j);
        }
        assert_int_equal(t.ok, 2);
    }
    {
        json_t *j = json_loads(full_event, 0, &jerr), *detail = json_object();
        memset(key, 'k', sizeof(key) - 1);
        key[sizeof(key) - 1] = '\0';
        (void)json_object_set_new(detail, key, json_integer(1)); /* not a string */
        (void)json_object_set_new(json_object_get(j, "transaction"), "detail", detail);
        check_same(direct, generic, j, &t);
        (void)json_object_set_new(detail, key, json_string("ok"));
        (void)json_object_setn_new(detail, "a\0b", 3, json_string("nul"));
        (void)json_object_setn_new(detail, "a\0c", 3, json_string("nul too"));
        (void)json_object_set_new(detail, "a", json_string("plain"));
        check_same(direct, generic, j, &t); /* the general way: keys cut at the NUL merge */
        (void)json_object_setn_new(detail, "z\0", 2, json_integer(5));
        check_same(direct, generic, j, &t);
        json_decref(j);
    }
    {
        /* an event larger than the buffer encode keeps, then a small one */
        json_t *j = json_loads(full_event, 0, &jerr), *small = json_loads(minimal_event, 0, &jerr);
        size_t big = 600 * 1024;
        char *text = malloc(big);
        assert_non_null(text);
        memset(text, 'x', big);
        (void)json_object_set_new(j, "displayMessage", json_stringn(text, big));
        check_same(direct, generic, j, &t);
        check_same(direct, generic, small, &t);
        check_same(direct, generic, j, &t);
        free(text);
        json_decref(j);
        json_decref(small);
    }
    {
        static const char *const tops[] = {"[]", "null", "\"x\"", "1", "1.5", "true"};
        for (size_t i = 0; i < sizeof(tops) / sizeof(tops[0]); i++) {
            json_t *j = json_loads(tops[i], JSON_DECODE_ANY, &jerr);
            check_same(direct, generic, j, &t);
            json_decref(j);
        }
    }
    hb_codec_free(direct);
    hb_codec_free(generic);

    codecs(hostile_schema, &direct, &generic);
    for (int len = 0; len < 40; len++) { /* chains up to and past the depth limit */
        json_t *j = json_pack("{s:i, s:s, s:s, s:i, s:s}", "l", 1, "x", "abcd", "u3", "RED",
                              "wrong", 1, "nodef", "no");
        json_t *tail = json_null();
        (void)json_object_set_new(j, "nodef", json_integer(2));
        for (int k = 0; k < len; k++)
            tail = json_pack("{s:i, s:o}", "v", k, "next", tail);
        (void)json_object_set_new(j, "chain", tail);
        check_same(direct, generic, j, &t);
        if (len > 35)
            (void)json_object_set_new(j, "m", json_pack("{s:s}", key, "RED"));
        check_same(direct, generic, j, &t);
        json_decref(j);
    }
    hb_codec_free(direct);
    hb_codec_free(generic);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chosen_inputs),         cmocka_unit_test(identity_events_random),
        cmocka_unit_test(delivery_retry_random), cmocka_unit_test(hostile_schema_random),
        cmocka_unit_test(other_schemas_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
