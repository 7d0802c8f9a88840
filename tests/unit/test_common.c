/*
 * Tests of the shared primitives in hb_common: whole-number parsing and the
 * one wording every program uses to refuse a numeric flag.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "hb_common.h"

static void test_parse_int(void **state) {
    (void)state;
    static const struct {
        const char *in;
        int min, max;
        int rc, want;
    } cases[] = {
        {"0", 0, 10, 0, 0},
        {"10", 0, 10, 0, 10},
        {"-3", -5, 5, 0, -3},
        {"2147483647", 0, INT_MAX, 0, INT_MAX},
        {"11", 0, 10, -1, 0},
        {"-1", 0, 10, -1, 0},
        {"", 0, 10, -1, 0},
        {"5x", 0, 10, -1, 0},
        {"x5", 0, 10, -1, 0},
        {"5.0", 0, 10, -1, 0},
        {" 5", 0, 10, -1, 0},
        {"+5", 0, 10, -1, 0},
        {"-", -5, 5, -1, 0},
        {"--1", -5, 5, -1, 0},
        {"99999999999999999999", 0, INT_MAX, -1, 0},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        int out = 42;
        int rc = hb_parse_int(cases[i].in, cases[i].min, cases[i].max, &out);
        if (rc != cases[i].rc || out != (cases[i].rc == 0 ? cases[i].want : 42))
            fail_msg("\"%s\" in %d..%d: rc %d out %d", cases[i].in, cases[i].min, cases[i].max, rc,
                     out);
    }
}

/* What a user who mistypes a numeric flag of the devbroker or the example
 * receiver is told, with and without a unit. */
static void test_parse_int_flag(void **state) {
    (void)state;
    static const struct {
        const char *flag, *value;
        int min, max;
        const char *unit;
        int want;          /* the value parsed, or -1 for a refusal */
        const char *error; /* the whole message of a refusal */
    } cases[] = {
        {"--brokers", "1", 1, 16, NULL, 1, NULL},
        {"--brokers", "16", 1, 16, NULL, 16, NULL},
        {"--retry-after", "0", 0, 86400, "seconds", 0, NULL},
        {"--brokers", "17", 1, 16, NULL, -1, "--brokers: want 1..16"},
        {"--brokers", "0", 1, 16, NULL, -1, "--brokers: want 1..16"},
        {"--brokers", "three", 1, 16, NULL, -1, "--brokers: want 1..16"},
        {"--brokers", "", 1, 16, NULL, -1, "--brokers: want 1..16"},
        {"--retry-after", "1d", 0, 86400, "seconds", -1, "--retry-after: want 0..86400 seconds"},
        {"--status", "600", 100, 599, "(an HTTP status)", -1,
         "--status: want 100..599 (an HTTP status)"},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        int out = -7;
        char err[128] = "";
        int rc = hb_parse_int_flag(cases[i].flag, cases[i].value, cases[i].min, cases[i].max,
                                   cases[i].unit, &out, err, sizeof(err));
        if (cases[i].want >= 0) {
            if (rc != 0 || out != cases[i].want || err[0])
                fail_msg("%s %s: rc %d out %d err \"%s\"", cases[i].flag, cases[i].value, rc, out,
                         err);
        } else if (rc != -1 || out != -7 || strcmp(err, cases[i].error)) {
            fail_msg("%s %s: rc %d out %d, error \"%s\", want \"%s\"", cases[i].flag,
                     cases[i].value, rc, out, err, cases[i].error);
        }
    }
    /* a short buffer gets a truncated, terminated message */
    int out = 0;
    char small[8];
    assert_int_equal(hb_parse_int_flag("--threads", "0", 1, 64, NULL, &out, small, sizeof(small)),
                     -1);
    assert_string_equal(small, "--threa");
}

static void test_utf8_scrub(void **state) {
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"plain ascii", "plain ascii"},
        {"\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
         "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
        {"cut \xe2\x82", "cut ??"},   /* a character cut at the end */
        {"\xc0\xaf", "??"},           /* overlong '/' */
        {"\xe0\x80\xaf", "???"},      /* overlong, 3 bytes */
        {"\xed\xa0\x80", "???"},      /* a UTF-16 surrogate */
        {"\xf4\x90\x80\x80", "????"}, /* over U+10FFFF */
        {"\xff a \x80", "? a ?"},     /* never valid, a lone continuation */
        {"\xc3\xa9\xc3", "\xc3\xa9?"},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        char buf[64];
        snprintf(buf, sizeof(buf), "%s", cases[i].in);
        hb_utf8_scrub(buf);
        if (strcmp(buf, cases[i].want) != 0)
            fail_msg("case %zu: got \"%s\"", i, buf);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_int),
        cmocka_unit_test(test_parse_int_flag),
        cmocka_unit_test(test_utf8_scrub),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
