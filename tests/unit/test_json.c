/*
 * Tests of hb_json, the compact JSON writer of the delivery hot path: its
 * output must be json_dumps(JSON_COMPACT | JSON_REAL_PRECISION(15))'s byte
 * for byte (signatures are over the exact body), checked on hand-picked
 * values (every control byte, escapes, UTF-8, integer and real edge cases,
 * empty and nested containers) and on many random documents; and
 * hb_json_utf8_ok must accept exactly what jansson accepts as a string.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hb_json.h"
#include "json_same.h"

#define FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

static void check_same(json_t *v) {
    hb_buf_t b = {0};
    char *want = json_dumps(v, FLAGS | JSON_ENCODE_ANY);
    assert_non_null(want);
    hb_json_put(&b, v);
    if (strlen(want) != b.len || memcmp(want, b.p, b.len) != 0)
        fail_msg("jansson: %s\nhb_json: %s", want, b.p);
    free(want);
    hb_buf_free(&b);
}

static void test_scalars(void **state) {
    (void)state;
    static const double reals[] = {0.0,
                                   -0.0,
                                   1.0,
                                   -1.5,
                                   52.517,
                                   0.1,
                                   1e15,
                                   1e16,
                                   1e17,
                                   123456789012345678.0,
                                   1e300,
                                   1e-300,
                                   -2.5e-7,
                                   3.14159265358979,
                                   1e21,
                                   5e-324,
                                   1.7976931348623157e308,
                                   100.0,
                                   1e-5,
                                   123.456e10};
    static const json_int_t ints[] = {0, 1, -1, 9, 10, -10, 1234567890123LL, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof(reals) / sizeof(reals[0]); i++) {
        json_t *r = json_real(reals[i]);
        check_same(r);
        json_decref(r);
    }
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        json_t *n = json_integer(ints[i]);
        check_same(n);
        json_decref(n);
    }
    check_same(json_true());
    check_same(json_false());
    check_same(json_null());
}

static void test_strings(void **state) {
    (void)state;
    char all[256];
    for (int i = 0; i < 128; i++)
        all[i] = (char)i; /* every ASCII byte, NUL and controls included */
    json_t *s = json_stringn(all, 128);
    check_same(s);
    json_decref(s);
    static const char *const texts[] = {
        "",
        "plain",
        "quote \" backslash \\ slash / done",
        "tab\tnl\ncr\rbs\bff\f",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbf",
        "\x7f del",
        "\x1f\x01\x0b",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        json_t *o = json_object();
        json_object_set_new(o, texts[i], json_string(texts[i])); /* keys are escaped too */
        check_same(o);
        json_decref(o);
    }
    json_t *o = json_object();
    json_object_setn_new(o, "a\0b", 3, json_stringn("x\0y", 3)); /* NUL inside a key */
    check_same(o);
    json_decref(o);
}

static void test_containers(void **state) {
    (void)state;
    json_t *doc = json_pack("{s:{}, s:[], s:[{}, [], [[]], {s:[i, f, s, n, b]}], s:o}", "empty",
                            "list", "nested", "k", 1, 2.5, "v", 1, "last", json_string("z"));
    assert_non_null(doc);
    check_same(doc);
    json_object_set_new(doc, "added", json_integer(7)); /* insertion order, not sorted */
    json_object_set_new(doc, "aaa", json_integer(8));
    json_object_del(doc, "empty");
    json_object_set_new(doc, "empty", json_object());
    check_same(doc);
    json_decref(doc);
}

/* Random documents: random shapes, strings from a byte alphabet rich in
 * escapes, integers and reals of every magnitude. */
static json_t *random_value(unsigned *seed, int depth) {
    int kind = rand_r(seed) % (depth > 4 ? 5 : 7);
    switch (kind) {
    case 0: return json_null();
    case 1: return json_boolean(rand_r(seed) & 1);
    case 2: return json_integer((json_int_t)rand_r(seed) * rand_r(seed) - rand_r(seed));
    case 3: {
        double d = ldexp((double)rand_r(seed) / RAND_MAX - 0.5, rand_r(seed) % 400 - 200);
        return json_real(d);
    }
    case 4: {
        static const char alpha[] = "ab \"\\/\n\t\x01\x1f\x7f\xc3\xa9";
        char s[40];
        size_t n = (size_t)(rand_r(seed) % 20), k = 0;
        for (size_t i = 0; i < n; i++) {
            size_t c = (size_t)rand_r(seed) % (sizeof(alpha) - 3);
            s[k++] = alpha[c];
        }
        if (rand_r(seed) % 3 == 0) { /* a two-byte character, whole */
            s[k++] = '\xc3';
            s[k++] = '\xa9';
        }
        return json_stringn(s, k);
    }
    case 5: {
        json_t *a = json_array();
        for (int i = rand_r(seed) % 5; i > 0; i--)
            json_array_append_new(a, random_value(seed, depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = rand_r(seed) % 5; i > 0; i--) {
            char key[16];
            snprintf(key, sizeof(key), "k%d\t%d", rand_r(seed) % 50, i);
            json_object_set_new(o, key, random_value(seed, depth + 1));
        }
        return o;
    }
    }
}

/* Reals of every shape hb_json writes without printf (short decimals) and
 * of the shapes next to them, against jansson. */
static void test_reals_against_jansson(void **state) {
    (void)state;
    unsigned seed = 31337;
    static const double edges[] = {1e-3,
                                   0.00099999999999999,
                                   1e14,
                                   99999999999999.9,
                                   0.1 + 0.2,
                                   1.0 / 3,
                                   47.3769,
                                   -8.5417,
                                   0.5,
                                   1e13 + 0.5,
                                   123456789012.345,
                                   999999999999999.0,
                                   0.001,
                                   -0.001,
                                   9.995,
                                   1.005,
                                   2.675};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
        json_t *r = json_real(edges[i]);
        check_same(r);
        json_decref(r);
    }
    for (int i = 0; i < 200000; i++) {
        double d;
        int kind = rand_r(&seed) % 4;
        if (kind == 0) { /* a short decimal */
            long long m = (long long)rand_r(&seed) * (rand_r(&seed) % 100000);
            d = (double)m / pow(10, rand_r(&seed) % 16);
        } else if (kind == 1) { /* any bits in range */
            uint64_t u = ((uint64_t)rand_r(&seed) << 33) ^ ((uint64_t)rand_r(&seed) << 10) ^
                         (uint64_t)rand_r(&seed);
            memcpy(&d, &u, sizeof(d));
            if (!isfinite(d))
                continue;
        } else if (kind == 2) { /* a decimal near the 15-digit limit */
            d = (double)(rand_r(&seed) % 1000000000) * 1e6 + rand_r(&seed) % 1000000;
            d /= pow(10, rand_r(&seed) % 18);
        } else { /* a neighbour of a short decimal */
            d = nextafter((double)(rand_r(&seed) % 100000) / 1000.0, rand_r(&seed) % 2 ? 1e300 : 0);
        }
        if (rand_r(&seed) % 2)
            d = -d;
        json_t *r = json_real(d);
        check_same(r);
        json_decref(r);
    }
}

static void test_random_documents(void **state) {
    (void)state;
    unsigned seed = 12345;
    for (int i = 0; i < 3000; i++) {
        json_t *v = random_value(&seed, 0);
        assert_non_null(v);
        check_same(v);
        json_decref(v);
    }
}

static void test_members_selected(void **state) {
    (void)state;
    hb_buf_t b = {0};
    int first = 1;
    json_t *o = json_pack("{s:i, s:i, s:i}", "x", 1, "y", 2, "z", 3);
    int (*keep)(const char *, void *) = NULL;
    hb_json_put_members(&b, o, keep, NULL, &first);
    assert_string_equal(b.p, "\"x\":1,\"y\":2,\"z\":3");
    assert_int_equal(first, 0);
    hb_json_put_members(&b, o, keep, NULL, &first); /* a leading comma when not first */
    assert_string_equal(b.p, "\"x\":1,\"y\":2,\"z\":3,\"x\":1,\"y\":2,\"z\":3");
    json_decref(o);
    hb_buf_free(&b);
}

static void test_utf8_matches_jansson(void **state) {
    (void)state;
    static const char *const cases[] = {"",
                                        "ascii",
                                        "\xc3\xa9",
                                        "\xc3",
                                        "\xc3\x28",
                                        "\xc0\x80",
                                        "\xc1\xbf",
                                        "\xe0\x80\x80",
                                        "\xe0\xa0\x80",
                                        "\xed\xa0\x80",
                                        "\xed\x9f\xbf",
                                        "\xef\xbf\xbf",
                                        "\xf0\x90\x80\x80",
                                        "\xf0\x8f\xbf\xbf",
                                        "\xf4\x8f\xbf\xbf",
                                        "\xf4\x90\x80\x80",
                                        "\xf5\x80\x80\x80",
                                        "\xff",
                                        "\x80",
                                        "a\xe2\x82",
                                        "\xe2\x82\xac\xe2\x82\xac"};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *s = json_string(cases[i]);
        assert_int_equal(hb_json_utf8_ok(cases[i], strlen(cases[i])), s != NULL);
        json_decref(s);
    }
    unsigned seed = 7;
    for (int i = 0; i < 20000; i++) {
        unsigned char s[6];
        size_t n = 1 + (size_t)rand_r(&seed) % 5;
        for (size_t k = 0; k < n; k++)
            s[k] = (unsigned char)(0x80 + rand_r(&seed) % 0x80 -
                                   (k == 0 ? rand_r(&seed) % 2 * 0x40 : 0));
        json_t *j = json_stringn((const char *)s, n);
        if (hb_json_utf8_ok((const char *)s, n) != (j != NULL))
            fail_msg("disagree on %zu bytes starting %02x", n, s[0]);
        json_decref(j);
    }
}

/* Long strings (the word-at-a-time scans of hb_json_str, hb_json_utf8_ok
 * and hb_json_put_utf8 take eight bytes at once): ASCII text with one byte
 * of every value, or a two-byte sequence, at every position, checked
 * against jansson; hb_json_put_utf8 writes what hb_json_put_str does, or
 * refuses what jansson refuses and appends nothing. */
static void test_long_strings_every_byte_everywhere(void **state) {
    (void)state;
    static const size_t lens[] = {1, 7, 8, 9, 14, 16, 27, 40};
    for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
        size_t len = lens[li];
        for (size_t at = 0; at < len; at++) {
            for (int v = 0; v < 256; v++) {
                char s[48];
                memset(s, 'a', len);
                s[at] = (char)v;
                if (at + 1 < len && v >= 0xc2 && v <= 0xdf)
                    s[at + 1] = (char)0xa9; /* a whole two-byte sequence */
                json_t *j = json_stringn(s, len);
                int ok = j != NULL;
                assert_int_equal(hb_json_utf8_ok(s, len), ok);
                if (j)
                    check_same(j);
                json_decref(j);
                hb_buf_t got = {0}, want = {0};
                hb_json_append(&got, "[", 1);
                hb_json_append(&want, "[", 1);
                assert_int_equal(hb_json_put_utf8(&got, s, len), ok ? 0 : -1);
                if (ok)
                    hb_json_put_str(&want, s, len);
                assert_int_equal(got.len, want.len);
                assert_memory_equal(got.p, want.p, want.len);
                assert_int_equal(got.p[got.len], '\0'); /* terminated, refused or not */
                hb_buf_free(&got);
                hb_buf_free(&want);
            }
        }
    }
}

/* A document's text is hb_json_put's, its members' spans hold each member's
 * key and value as written, and it turns back into the same value (reals
 * exactly, not as the 15 digits of the text). */
static void check_jdoc(json_t *v) {
    hb_jdoc_t d = {0};
    hb_buf_t b = {0};
    json_t *back;
    int is_obj = json_is_object(v);
    assert_int_equal(hb_jdoc_from_json(&d, v), is_obj ? 0 : -1);
    hb_json_put(&b, v);
    assert_int_equal(d.text.len, b.len);
    assert_memory_equal(d.text.p, b.p, b.len);
    assert_int_equal(d.n, is_obj ? json_object_size(v) : 0);
    if (is_obj) {
        const char *key;
        size_t key_len, i = 0;
        json_t *val;
        json_object_keylen_foreach(v, key, key_len, val) {
            hb_buf_t kb = {0}, vb = {0};
            char *raw = malloc(d.m[i].key_len + 1);
            hb_json_put_str(&kb, key, key_len);
            hb_json_put(&vb, val);
            assert_int_equal(d.m[i].key_len + 2, kb.len);
            assert_memory_equal(d.text.p + d.m[i].key - 1, kb.p, kb.len);
            assert_int_equal(d.m[i].val_len, vb.len);
            assert_memory_equal(d.text.p + d.m[i].val, vb.p, vb.len);
            assert_int_equal(hb_json_unescape(d.text.p + d.m[i].key, d.m[i].key_len, raw),
                             (long)key_len);
            assert_memory_equal(raw, key, key_len);
            free(raw);
            hb_buf_free(&kb);
            hb_buf_free(&vb);
            i++;
        }
    }
    back = hb_jdoc_json(&d);
    assert_non_null(back);
    if (!same_value(back, v))
        fail_msg("hb_jdoc_json does not give the value back: %s", b.p);
    json_decref(back);
    hb_buf_free(&b);
    hb_jdoc_free(&d);
}

static void test_jdoc(void **state) {
    (void)state;
    unsigned seed = 4242;
    json_t *o = json_object();
    /* a key with a NUL, escapes, reals that 15 digits do not keep */
    json_object_setn_new(o, "a\0b\"\\\n", 6, json_real(0.30000000000000004));
    json_object_set_new(o, "r", json_pack("[f,f,f,f]", 1e300, -0.0, 5e-324, 2.0 / 3.0));
    json_object_set_new(o, "s", json_stringn("x\0y\x1f\xc3\xa9", 6));
    json_object_set_new(o, "i", json_pack("[I,I]", (json_int_t)INT64_MAX, (json_int_t)INT64_MIN));
    check_jdoc(o);
    json_decref(o);
    for (int i = 0; i < 3000; i++) {
        json_t *v = random_value(&seed, i % 2 ? 0 : 5); /* depth 5: scalars, arrays */
        check_jdoc(v);
        json_decref(v);
    }
    for (int i = 0; i < 2000; i++) {
        json_t *v = json_object();
        for (int k = rand_r(&seed) % 6; k > 0; k--) {
            char key[8];
            snprintf(key, sizeof(key), "m%d", k);
            json_object_set_new(v, key, random_value(&seed, 1));
        }
        check_jdoc(v);
        json_decref(v);
    }
}

/* Unescaping gives back every string hb_json_put_str wrote; the text parser
 * refuses what is not compact JSON as hb_json writes it, and reals it was
 * not given. */
static void test_unescape_and_parse(void **state) {
    (void)state;
    static const char *const bad[] = {
        "",        "{",         "[1,]",        "{\"a\"}", "{\"a\":}",
        "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "tru",     "nul",
        "-",       "1 ",        "[1]]",        "\"abc",   "99999999999999999999"};
    unsigned seed = 99;
    for (int i = 0; i < 5000; i++) {
        char s[32], out[200];
        size_t n = (size_t)rand_r(&seed) % sizeof(s);
        hb_buf_t b = {0};
        for (size_t k = 0; k < n; k++)
            s[k] = (char)(rand_r(&seed) % 128);
        hb_json_put_str(&b, s, n);
        assert_int_equal(hb_json_unescape(b.p + 1, b.len - 2, out), (long)n);
        assert_memory_equal(out, s, n);
        hb_buf_free(&b);
    }
    {
        char out[16];
        assert_int_equal(hb_json_unescape("\\u00e9\\ud83d\\ude00\\/", 20, out), 7);
        assert_memory_equal(out, "\xc3\xa9\xf0\x9f\x98\x80/", 7);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *j = hb_json_from_text(bad[i], strlen(bad[i]), NULL, 0);
        if (j)
            fail_msg("hb_json_from_text accepted %s", bad[i]);
    }
    {
        double r[2] = {0.1, 2.5};
        json_t *t = hb_json_from_text("1.5", 3, NULL, 0); /* its own digits */
        assert_non_null(t);
        assert_true(json_real_value(t) == 1.5);
        json_decref(t);
        assert_null(hb_json_from_text("1.5", 3, r, 0)); /* no real given */
        json_t *j = hb_json_from_text("[0.1,-9223372036854775808,2.5]", 30, r, 1);
        assert_null(j); /* a real left over */
        j = hb_json_from_text("[0.1,-9223372036854775808,2.5]", 30, r, 2);
        assert_non_null(j);
        assert_true(json_integer_value(json_array_get(j, 1)) == INT64_MIN);
        json_decref(j);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_containers),
        cmocka_unit_test(test_random_documents),
        cmocka_unit_test(test_members_selected),
        cmocka_unit_test(test_utf8_matches_jansson),
        cmocka_unit_test(test_long_strings_every_byte_everywhere),
        cmocka_unit_test(test_jdoc),
        cmocka_unit_test(test_reals_against_jansson),
        cmocka_unit_test(test_unescape_and_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
