/*
 * Tests of the shared primitives in hb_common: whole-number parsing, the
 * one wording every program uses to refuse a numeric flag, and RFC 3339
 * times read.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

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

/* RFC 3339 times as the producer's event JSON, --okta-logs' --since and
 * --until, and Okta's `published` give them; each against timegm's answer
 * or a figure worked out by hand. */
static void test_parse_time(void **state) {
    static const struct {
        const char *in;
        int64_t want; /* ms since the epoch; INT64_MIN: refused */
    } cases[] = {
        {"1970-01-01T00:00:00Z", 0},
        {"2026-12-06T10:00:00Z", 1796551200000LL},
        {"2026-12-06T10:00:00.123Z", 1796551200123LL},
        {"2026-12-06T10:00:00.1Z", 1796551200100LL},
        {"2026-12-06T10:00:00.123456789z", 1796551200123LL}, /* ms count */
        {"2026-12-06t10:00:00Z", 1796551200000LL},
        {"2026-12-06 10:00:00Z", 1796551200000LL},
        {"2026-12-06T11:00:00+01:00", 1796551200000LL},
        {"2026-12-06T04:30:00-05:30", 1796551200000LL},
        {"2024-02-29T00:00:00Z", 1709164800000LL}, /* a leap day */
        {"2000-02-29T00:00:00Z", 951782400000LL},  /* 400 years: a leap year */
        {"1969-12-31T23:59:59.999Z", -1},
        {"2016-12-31T23:59:60Z", 1483228800000LL}, /* a leap second: the next minute */
        {"2023-02-29T00:00:00Z", INT64_MIN},       /* not a leap year */
        {"1900-02-29T00:00:00Z", INT64_MIN},       /* a century, not a leap year */
        {"2026-04-31T00:00:00Z", INT64_MIN},
        {"2026-13-01T00:00:00Z", INT64_MIN},
        {"2026-00-01T00:00:00Z", INT64_MIN},
        {"2026-12-00T00:00:00Z", INT64_MIN},
        {"2026-12-06T24:00:00Z", INT64_MIN},
        {"2026-12-06T10:60:00Z", INT64_MIN},
        {"2026-12-06T10:00:61Z", INT64_MIN},
        {"2026-12-06T10:00:00", INT64_MIN},      /* no zone */
        {"2026-12-06T10:00:00.Z", INT64_MIN},    /* an empty fraction */
        {"2026-12-06T10:00:00+0100", INT64_MIN}, /* no colon in the offset */
        {"2026-12-06T10:00:00+24:00", INT64_MIN},
        {"2026-12-06T10:00:00Zx", INT64_MIN},
        {"2026-12-06X10:00:00Z", INT64_MIN},
        {"2026-1-06T10:00:00Z", INT64_MIN},
        {"+2026-12-06T10:00:00Z", INT64_MIN},
        {"", INT64_MIN},
        {NULL, INT64_MIN},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        int64_t got = 42;
        int rc = hb_parse_time(cases[i].in, &got);
        if (cases[i].want == INT64_MIN ? rc != -1 : rc != 0 || got != cases[i].want)
            fail_msg("case %zu (%s): rc %d, %lld ms", i, cases[i].in ? cases[i].in : "NULL", rc,
                     (long long)got);
    }
    /* every day from 1570 to 2369 (two Gregorian cycles) against gmtime */
    for (int64_t day = -146097; day < 146097; day += 1) {
        time_t t = (time_t)(day * 86400 + 45296); /* 12:34:56 */
        struct tm tm;
        char text[40];
        int64_t got;
        gmtime_r(&t, &tm);
        strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
        if (tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
            continue;
        if (hb_parse_time(text, &got) != 0 || got != (int64_t)t * 1000)
            fail_msg("%s: %lld, want %lld", text, (long long)got, (long long)t * 1000);
    }
    /* instants, not text: an offset, a fraction's length */
    assert_true(hb_time_before("2026-12-06T10:30:00.000Z", "2026-12-06T12:00:00+01:00"));
    assert_false(hb_time_before("2026-12-06T11:30:00+01:00", "2026-12-06T10:00:00.000Z"));
    assert_true(hb_time_before("2026-12-06T10:00:00Z", "2026-12-06T10:00:00.001Z"));
    assert_false(hb_time_before("2026-12-06T10:00:00.000Z", "2026-12-06T10:00:00Z"));
}

/* hb_format_time against gmtime + strftime, what it replaced: every day of
 * two Gregorian cycles (1570-2369) at a time with milliseconds, instants
 * before 1970, and a buffer too short (cut like snprintf). */
static void test_format_time(void **state) {
    (void)state;
    char got[40], want[40], base[32];
    for (int64_t day = -146097; day < 146097; day += 1) {
        int64_t ms = day * 86400000 + 45296789 + (day % 7) * 3600000;
        time_t t = (time_t)(ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000));
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(want, sizeof(want), "%s.%03dZ", base, (int)(ms - (int64_t)t * 1000));
        hb_format_time(ms, got, sizeof(got));
        if (strcmp(got, want) != 0)
            fail_msg("%lld ms: %s, want %s", (long long)ms, got, want);
    }
    hb_format_time(0, got, sizeof(got));
    assert_string_equal(got, "1970-01-01T00:00:00.000Z");
    hb_format_time(-1, got, sizeof(got));
    assert_string_equal(got, "1969-12-31T23:59:59.999Z");
    hb_format_time(1796684400123LL, got, sizeof(got));
    assert_string_equal(got, "2026-12-07T23:00:00.123Z");
    hb_format_time(253402300799999LL, got, sizeof(got));
    assert_string_equal(got, "9999-12-31T23:59:59.999Z");
    hb_format_time(253402300800000LL, got, sizeof(got));
    assert_string_equal(got, "10000-01-01T00:00:00.000Z");
    hb_format_time(1796684400123LL, got, 11);
    assert_string_equal(got, "2026-12-07");
    int64_t back;
    hb_format_time(1796684400123LL, got, sizeof(got));
    assert_int_equal(hb_parse_time(got, &back), 0);
    assert_int_equal(back, 1796684400123LL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_int),   cmocka_unit_test(test_parse_int_flag),
        cmocka_unit_test(test_utf8_scrub),  cmocka_unit_test(test_parse_time),
        cmocka_unit_test(test_format_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
