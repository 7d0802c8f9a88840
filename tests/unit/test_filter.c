/* Content filters: every case of tests/filter_cases.json (the table the SQL
 * validator is tested against too), plus what the table cannot say. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "hb_filter.h"

/* The Makefile runs unit tests from the repository root. */
#define CASES_DEFAULT "tests/filter_cases.json"

static json_t *load_cases(void) {
    const char *path = getenv("HB_FILTER_CASES");
    json_error_t jerr;
    json_t *t = json_load_file(path && *path ? path : CASES_DEFAULT, 0, &jerr);
    if (!t)
        fail_msg("cannot read %s: %s (line %d)", path && *path ? path : CASES_DEFAULT, jerr.text,
                 jerr.line);
    return t;
}

static void valid_filters_compile_and_match_as_the_table_says(void **state) {
    json_t *t = load_cases();
    json_t *valid = json_object_get(t, "valid");
    size_t i, checked = 0;
    json_t *c;
    assert_true(json_array_size(valid) >= 30); /* not vacuous */
    json_array_foreach(valid, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        char err[512] = "";
        hb_filter_t *f = hb_filter_compile(json_object_get(c, "filter"), err, sizeof(err));
        if (!f)
            fail_msg("valid[%zu] \"%s\" did not compile: %s", i, name, err);
        size_t k;
        json_t *ec;
        assert_true(json_array_size(json_object_get(c, "cases")) > 0);
        json_array_foreach(json_object_get(c, "cases"), k, ec) {
            int want = json_is_true(json_object_get(ec, "match"));
            int got = hb_filter_match(f, json_object_get(ec, "event"));
            if (got != want)
                fail_msg("valid[%zu] \"%s\" case %zu: match %d, want %d", i, name, k, got, want);
            checked++;
        }
        hb_filter_free(f);
    }
    assert_true(checked >= 100);
    json_decref(t);
}

static void invalid_filters_are_refused_with_where_and_what(void **state) {
    json_t *t = load_cases();
    json_t *invalid = json_object_get(t, "invalid");
    size_t i;
    json_t *c;
    assert_true(json_array_size(invalid) >= 30);
    json_array_foreach(invalid, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *want = json_string_value(json_object_get(c, "error"));
        char err[1024] = "";
        hb_filter_t *f = hb_filter_compile(json_object_get(c, "filter"), err, sizeof(err));
        if (f) {
            hb_filter_free(f);
            fail_msg("invalid[%zu] \"%s\" compiled", i, name);
        }
        if (!want || !strstr(err, want))
            fail_msg("invalid[%zu] \"%s\": message \"%s\" lacks \"%s\"", i, name, err,
                     want ? want : "(no error in table)");
    }
    json_decref(t);
}

static void no_filter_matches_everything(void **state) {
    json_t *ev = json_pack("{s:s}", "eventType", "user.session.start");
    assert_int_equal(hb_filter_match(NULL, ev), 1);
    hb_filter_free(NULL);
    json_decref(ev);
}

static void compiled_filter_keeps_its_own_operands(void **state) {
    /* The dispatcher frees the options JSON after compiling: the filter must
     * not point into it (ASan reports a use after free otherwise). */
    char err[256];
    json_t *spec = json_loads("{\"a.b[].c\": {\"$in\": [\"x\", 2]}, \"d\": {\"$prefix\": \"pre\"},"
                              " \"e\": \"v\"}",
                              0, NULL);
    assert_non_null(spec);
    hb_filter_t *f = hb_filter_compile(spec, err, sizeof(err));
    assert_non_null(f);
    json_decref(spec);
    json_t *ev = json_loads("{\"a\": {\"b\": [{\"c\": 1}, {\"c\": 2}]}, \"d\": \"prefix\","
                            " \"e\": \"v\"}",
                            0, NULL);
    assert_int_equal(hb_filter_match(f, ev), 1);
    json_object_set_new(ev, "e", json_string("w"));
    assert_int_equal(hb_filter_match(f, ev), 0);
    json_decref(ev);
    hb_filter_free(f);
}

static void long_keys_are_shortened_in_messages(void **state) {
    char key[201], err[512]; /* under the 256-byte path limit */
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    key[10] = '-'; /* an invalid path, shown cut to 64 bytes */
    json_t *spec = json_object();
    json_object_set_new(spec, key, json_integer(1));
    assert_null(hb_filter_compile(spec, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid path"));
    assert_non_null(strstr(err, "kkk...\""));
    assert_true(strlen(err) < 400);
    json_decref(spec);

    /* A cut never splits a UTF-8 character. */
    char ukey[300] = "a";
    for (size_t i = 1; i + 2 < sizeof(ukey); i += 2)
        memcpy(ukey + i, "\xc3\xa9", 3);
    spec = json_pack("{s:{s:i}}", "x", ukey, 1);
    assert_non_null(spec);
    assert_null(hb_filter_compile(spec, err, sizeof(err)));
    assert_non_null(strstr(err, "is not an operator"));
    assert_non_null(strstr(err, "\xc3\xa9...\""));
    json_decref(spec);
}

static void small_or_missing_error_buffers_are_safe(void **state) {
    char err[8];
    json_t *spec = json_pack("{s:{s:i}}", "a", "$gt", 1);
    memset(err, 'z', sizeof(err));
    assert_null(hb_filter_compile(spec, err, sizeof(err)));
    assert_int_equal(strlen(err), sizeof(err) - 1);
    assert_null(hb_filter_compile(spec, NULL, 0));
    assert_null(hb_filter_compile(NULL, err, sizeof(err)));
    json_decref(spec);
}

static void location_survives_deep_long_paths(void **state) {
    /* The location buffer is bounded; a deep filter with long paths must
     * truncate it, not overflow it. */
    char path[257], err[2048];
    memset(path, 'p', 256);
    path[256] = '\0';
    json_t *inner = json_pack("{s:{s:i}}", path, "$bad", 1);
    for (int i = 0; i < 7; i++) {
        json_t *w = json_object();
        json_object_set_new(w, "$or", json_pack("[o]", inner));
        inner = w;
    }
    assert_null(hb_filter_compile(inner, err, sizeof(err)));
    assert_non_null(strstr(err, "filter.$or[0].$or[0]"));
    json_decref(inner);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_filters_compile_and_match_as_the_table_says),
        cmocka_unit_test(invalid_filters_are_refused_with_where_and_what),
        cmocka_unit_test(no_filter_matches_everything),
        cmocka_unit_test(compiled_filter_keeps_its_own_operands),
        cmocka_unit_test(long_keys_are_shortened_in_messages),
        cmocka_unit_test(small_or_missing_error_buffers_are_safe),
        cmocka_unit_test(location_survives_deep_long_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
