/* The retry schedule: parsing, tier topics, next attempt, and the
 * DeliveryRetry message's JSON form. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hb_retry.h"

static void parses_and_names_tiers_canonically(void **state) {
    hb_schedule_t s;
    char err[256];
    (void)state;
    assert_int_equal(hb_schedule_parse(&s, "5s, 300s,30m,2h,5h,10h,10h,1500ms", NULL,
                                       "hookbridge.retry.", err, sizeof(err)),
                     0);
    assert_int_equal(s.steps, 8);
    assert_int_equal(hb_schedule_max_attempts(&s), 9);
    /* 300s and 5m are one tier; 10h appears once; sorted ascending */
    assert_int_equal(s.tiers, 7);
    assert_string_equal(s.tier_topics[0], "hookbridge.retry.1500ms");
    assert_string_equal(s.tier_topics[1], "hookbridge.retry.5s");
    assert_string_equal(s.tier_topics[2], "hookbridge.retry.5m");
    assert_string_equal(s.tier_topics[3], "hookbridge.retry.30m");
    assert_string_equal(s.tier_topics[4], "hookbridge.retry.2h");
    assert_string_equal(s.tier_topics[5], "hookbridge.retry.5h");
    assert_string_equal(s.tier_topics[6], "hookbridge.retry.10h");
    hb_schedule_free(&s);
}

/* Tiers of an earlier schedule are still recognised (the retrier drains
 * them), by name and by the subscription pattern; other topics are not. */
static void retired_tiers_are_recognised(void **state) {
    hb_schedule_t s;
    char err[256], pattern[128];
    int retired = -1;
    (void)state;
    assert_int_equal(hb_schedule_parse(&s, "5s,5m", NULL, "hb.retry.", err, sizeof(err)), 0);
    assert_int_equal(hb_schedule_tier_ms(&s, "hb.retry.5m", &retired), 300000);
    assert_int_equal(retired, 0);
    assert_int_equal(hb_schedule_tier_ms(&s, "hb.retry.10h", &retired), 36000000);
    assert_int_equal(retired, 1);
    assert_int_equal(hb_schedule_tier_ms(&s, "hb.retry.1500ms", NULL), 1500);
    /* not named as we name a tier: another spelling, another prefix, garbage */
    assert_int_equal(hb_schedule_tier_ms(&s, "hb.retry.60s", &retired), -1);
    assert_int_equal(retired, 0);
    assert_int_equal(hb_schedule_tier_ms(&s, "hb.retry.", NULL), -1);
    assert_int_equal(hb_schedule_tier_ms(&s, "hb.retry.5x", NULL), -1);
    assert_int_equal(hb_schedule_tier_ms(&s, "hbXretry.5s", NULL), -1);
    assert_int_equal(hb_schedule_tier_ms(&s, "identity.events", NULL), -1);
    assert_int_equal(hb_schedule_tier_ms(&s, "hb.retry.50d", NULL), -1); /* over 30 days */
    hb_schedule_tier_pattern(&s, pattern, sizeof(pattern));
    assert_string_equal(pattern, "^hb\\.retry\\.[0-9]+(ms|s|m|h|d)$");
    hb_schedule_free(&s);
}

static void bad_schedules_name_the_problem(void **state) {
    static const struct {
        const char *spec, *want;
    } cases[] = {
        {"", "empty"},
        {"5s,,1m", "empty or over-long"},
        {"5s,", "ends with a comma"},
        {"5x", "\"5x\" is not a delay"},
        {"50ms", "\"50ms\" is not a delay"},
        {"31d", "\"31d\" is not a delay"},
        {"-5s", "is not a delay"},
    };
    (void)state;
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        hb_schedule_t s;
        char err[256] = "";
        assert_int_equal(hb_schedule_parse(&s, cases[i].spec, NULL, "p.", err, sizeof(err)), -1);
        if (!strstr(err, cases[i].want))
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].spec, err, cases[i].want);
    }
}

/* Hop tiers are tiers (topics) but no step: the attempts follow the
 * schedule, and a long Retry-After waits in the longest tier, hop tier or
 * step, not longer than the wait. */
static void hop_tiers_are_tiers_but_no_steps(void **state) {
    hb_schedule_t s;
    const char *topic = NULL;
    int64_t nb = 0;
    char err[256] = "";
    (void)state;
    assert_int_equal(hb_schedule_parse(&s, "5s,5m", "1m, 20s,5m", "r.", err, sizeof(err)), 0);
    assert_int_equal(s.steps, 2);
    assert_int_equal(hb_schedule_max_attempts(&s), 3);
    assert_int_equal(s.tiers, 4); /* 5m is a step and a hop tier: one tier */
    assert_string_equal(s.tier_topics[0], "r.5s");
    assert_string_equal(s.tier_topics[1], "r.20s");
    assert_string_equal(s.tier_topics[2], "r.1m");
    assert_string_equal(s.tier_topics[3], "r.5m");
    assert_int_equal(s.hop_only[0] + 2 * s.hop_only[1] + 4 * s.hop_only[2] + 8 * s.hop_only[3], 6);
    assert_int_equal(hb_schedule_tier_ms(&s, "r.20s", NULL), 20000);
    /* the steps' tiers are the steps' */
    assert_int_equal(hb_schedule_next(&s, 1, 0, 3600000, 20, 0.99, 0, &topic, &nb), 0);
    assert_string_equal(topic, "r.5s");
    assert_int_equal(hb_schedule_next(&s, 2, 0, 3600000, 0, 0, 0, &topic, &nb), 0);
    assert_string_equal(topic, "r.5m");
    /* Retry-After 240 s after attempt 1: the 1m hop tier, not the 5s tier */
    assert_int_equal(hb_schedule_next(&s, 1, 240000, 3600000, 0, 0, 0, &topic, &nb), 0);
    assert_string_equal(topic, "r.1m");
    assert_int_equal(nb, 240000);
    assert_string_equal(hb_schedule_wait_topic(&s, 59999), "r.20s");
    assert_string_equal(hb_schedule_wait_topic(&s, 19999), "r.5s");
    assert_null(hb_schedule_wait_topic(&s, 4999));
    hb_schedule_free(&s);
    /* none */
    assert_int_equal(hb_schedule_parse(&s, "5s,5m", "", "r.", err, sizeof(err)), 0);
    assert_int_equal(s.tiers, 2);
    hb_schedule_free(&s);
    /* a bad one is named as a hop tier */
    assert_int_equal(hb_schedule_parse(&s, "5s,5m", "20s,2x", "r.", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "retry hop tiers: \"2x\" is not a delay"));
    assert_string_equal(hb_schedule_setting(err), "HOOKBRIDGE_RETRY_HOP_TIERS");
}

static void next_attempt_follows_schedule_jitter_and_retry_after(void **state) {
    hb_schedule_t s;
    const char *topic = NULL;
    int64_t nb = 0;
    char err[256];
    (void)state;
    assert_int_equal(hb_schedule_parse(&s, "5s,1m,1h", NULL, "r.", err, sizeof(err)), 0);
    /* attempt 1 failed: 5 s later, on the 5s tier */
    assert_int_equal(hb_schedule_next(&s, 1, 0, 3600000, 0, 0.9, 1000, &topic, &nb), 0);
    assert_string_equal(topic, "r.5s");
    assert_int_equal(nb, 6000);
    /* jitter lengthens by up to N %, never shortens */
    assert_int_equal(hb_schedule_next(&s, 2, 0, 3600000, 20, 0.5, 0, &topic, &nb), 0);
    assert_string_equal(topic, "r.1m");
    assert_int_equal(nb, 66000);
    assert_int_equal(hb_schedule_next(&s, 2, 0, 3600000, 20, 0.0, 0, &topic, &nb), 0);
    assert_int_equal(nb, 60000);
    /* Retry-After longer than the step: honoured, on the longest tier not
     * longer than it (it hops there until due; on the 1h tier it would wait
     * behind retries due up to an hour later) */
    assert_int_equal(hb_schedule_next(&s, 1, 120000, 3600000, 0, 0, 0, &topic, &nb), 0);
    assert_int_equal(nb, 120000);
    assert_string_equal(topic, "r.1m");
    assert_int_equal(hb_schedule_next(&s, 1, 30000, 3600000, 0, 0, 0, &topic, &nb), 0);
    assert_int_equal(nb, 30000);
    assert_string_equal(topic, "r.5s");
    /* one longer than every tier: the longest */
    assert_int_equal(hb_schedule_next(&s, 1, 7200000, 86400000, 0, 0, 0, &topic, &nb), 0);
    assert_int_equal(nb, 7200000);
    assert_string_equal(topic, "r.1h");
    /* ... but bounded by retry_after_max */
    assert_int_equal(hb_schedule_next(&s, 1, 7200000, 30000, 0, 0, 0, &topic, &nb), 0);
    assert_int_equal(nb, 30000);
    assert_string_equal(topic, "r.5s");
    /* shorter Retry-After than the step changes nothing */
    assert_int_equal(hb_schedule_next(&s, 3, 1000, 3600000, 0, 0, 0, &topic, &nb), 0);
    assert_int_equal(nb, 3600000);
    /* attempts used up */
    assert_int_equal(hb_schedule_next(&s, 4, 0, 3600000, 0, 0, 0, &topic, &nb), 1);
    assert_int_equal(hb_schedule_next(&s, 0, 0, 3600000, 0, 0, 0, &topic, &nb), 1);
    hb_schedule_free(&s);
}

static void delay_format(void **state) {
    char b[32];
    (void)state;
    hb_delay_format(86400000, b, sizeof(b));
    assert_string_equal(b, "1d");
    hb_delay_format(7200000, b, sizeof(b));
    assert_string_equal(b, "2h");
    hb_delay_format(90000, b, sizeof(b));
    assert_string_equal(b, "90s");
    hb_delay_format(100, b, sizeof(b));
    assert_string_equal(b, "100ms");
}

static void message_round_trips_and_rejects_garbage(void **state) {
    hb_retry_msg_t in = {
        .delivery_id = "11111111-2222-8333-8444-555555555555",
        .subscription_id = "66666666-7777-4888-9999-000000000000",
        .event_ids = "a,b,c",
        .event_type = "user.session.start",
        .content_type = "application/json",
        .body = "{\"x\":1}",
        .body_len = 7,
        .attempt = 3,
        .not_before_ms = 1700000000123,
        .first_attempt_ms = 1700000000000,
        .last_status = 503,
        .last_error = "HTTP 503",
        .schedule_offset = 1,
    };
    hb_retry_msg_t out;
    char err[256];
    json_t *j = hb_retry_msg_to_json(&in), *bad;
    (void)state;
    assert_non_null(j);
    assert_int_equal(json_array_size(json_object_get(j, "event_ids")), 3);
    assert_int_equal(hb_retry_msg_from_json(&out, j, err, sizeof(err)), 0);
    assert_string_equal(out.delivery_id, in.delivery_id);
    assert_string_equal(out.event_ids, "a,b,c");
    assert_string_equal(out.body, "{\"x\":1}");
    assert_int_equal(out.body_len, 7);
    assert_int_equal(out.attempt, 3);
    assert_int_equal(out.not_before_ms, in.not_before_ms);
    assert_int_equal(out.last_status, 503);
    assert_int_equal(out.schedule_offset, 1);
    assert_null(out.after_delivery_id); /* waits for nothing: null */
    assert_true(json_is_null(json_object_get(j, "after_delivery_id")));
    hb_retry_msg_clear(&out);

    /* ordered delivery: the predecessor it waits behind round-trips */
    {
        hb_retry_msg_t ord = in;
        json_t *oj;
        ord.after_delivery_id = "99999999-2222-8333-8444-555555555555";
        oj = hb_retry_msg_to_json(&ord);
        assert_int_equal(hb_retry_msg_from_json(&out, oj, err, sizeof(err)), 0);
        assert_string_equal(out.after_delivery_id, ord.after_delivery_id);
        hb_retry_msg_clear(&out);
        json_object_set_new(oj, "after_delivery_id", json_string("short"));
        assert_int_equal(hb_retry_msg_from_json(&out, oj, err, sizeof(err)), -1);
        json_decref(oj);
    }

    bad = json_deep_copy(j);
    json_object_del(bad, "body");
    assert_int_equal(hb_retry_msg_from_json(&out, bad, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "without body"));
    json_decref(bad);
    bad = json_deep_copy(j);
    json_object_set_new(bad, "attempt", json_integer(0));
    assert_int_equal(hb_retry_msg_from_json(&out, bad, err, sizeof(err)), -1);
    json_decref(bad);
    bad = json_deep_copy(j);
    json_object_set_new(bad, "delivery_id", json_string("short"));
    assert_int_equal(hb_retry_msg_from_json(&out, bad, err, sizeof(err)), -1);
    json_decref(bad);
    json_decref(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_and_names_tiers_canonically),
        cmocka_unit_test(retired_tiers_are_recognised),
        cmocka_unit_test(bad_schedules_name_the_problem),
        cmocka_unit_test(next_attempt_follows_schedule_jitter_and_retry_after),
        cmocka_unit_test(hop_tiers_are_tiers_but_no_steps),
        cmocka_unit_test(delay_format),
        cmocka_unit_test(message_round_trips_and_rejects_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
