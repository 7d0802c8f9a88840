/* The delivery log's staleness rule: which retries and final failures are
 * duplicates of something the log already has (hb_dlog_state_stale). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "hb_dlog.h"

static hb_dlog_state_t state(const char *status, int attempts) {
    hb_dlog_state_t st = {.found = 1, .attempts = attempts};
    snprintf(st.status, sizeof(st.status), "%s", status);
    return st;
}

static const char *stale(hb_dlog_state_t st, int attempt) {
    static char buf[200];
    return hb_dlog_state_stale(&st, attempt, 0, buf, sizeof(buf));
}

static void unknown_delivery_is_never_stale(void **unused) {
    hb_dlog_state_t st = {0};
    char buf[64];
    (void)unused;
    assert_null(hb_dlog_state_stale(&st, 1, 0, buf, sizeof(buf)));
    assert_null(hb_dlog_state_stale(&st, 7, 1000, buf, sizeof(buf)));
}

static void final_states_make_every_attempt_stale(void **unused) {
    static const char *const finals[] = {"delivered", "failed", "dropped"};
    (void)unused;
    for (size_t i = 0; i < sizeof(finals) / sizeof(finals[0]); i++) {
        const char *why = stale(state(finals[i], 2), 5); /* even a later attempt */
        assert_non_null(why);
        assert_non_null(strstr(why, finals[i]));
    }
}

static void an_attempt_already_logged_is_a_duplicate(void **unused) {
    (void)unused;
    assert_non_null(stale(state("retry", 2), 2)); /* attempt 2 made, its successor durable */
    assert_non_null(stale(state("retry", 3), 2));
    assert_null(stale(state("retry", 2), 3)); /* the successor itself */
    assert_null(stale(state("pending", 0), 1));
    assert_null(stale(state("retry", 0), 1)); /* a circuit skip logs attempt 0 */
}

/* replay() reopens a failed delivery with attempts kept: the replay's attempt
 * (attempts + 1) goes ahead, a stale retry from before does not. */
static void a_replay_goes_ahead_older_retries_do_not(void **unused) {
    (void)unused;
    assert_null(stale(state("replay", 3), 4));
    assert_non_null(stale(state("replay", 3), 3));
    assert_non_null(stale(state("replay", 3), 2));
}

/* A replay of a delivery whose retry was still pending (a cancelled one,
 * replayed at once) makes the attempts from then on: the pending retry
 * (begun before the replay was asked for) is stale even though its attempt
 * number is the replay's next one; the replay's own messages (begun when it
 * was asked for) and those of a later first attempt are not. */
static void a_retry_begun_before_a_replay_was_asked_for_is_stale(void **unused) {
    hb_dlog_state_t st = state("replay", 3);
    char buf[200];
    const char *why;
    (void)unused;
    st.replay_ms = 5000;
    why = hb_dlog_state_stale(&st, 4, 4999, buf, sizeof(buf));
    assert_non_null(why);
    assert_non_null(strstr(why, "replay"));
    assert_null(hb_dlog_state_stale(&st, 4, 5000, buf, sizeof(buf))); /* the replay's own */
    assert_null(hb_dlog_state_stale(&st, 4, 0, buf, sizeof(buf)));    /* not known: kept */
    st = state("retry", 4);
    st.replay_ms = 5000;
    assert_non_null(hb_dlog_state_stale(&st, 5, 1000, buf, sizeof(buf))); /* after its 1st try */
    assert_null(hb_dlog_state_stale(&st, 5, 5000, buf, sizeof(buf)));
}

/* A delivery's log_day is the UTC day of its first attempt, the same for every
 * writer: 2026-12-04 is day 20791; the last millisecond of a day is still it. */
static void the_log_day_is_the_utc_day_of_the_first_attempt(void **unused) {
    (void)unused;
    assert_int_equal(hb_dlog_day(0), 0);
    assert_int_equal(hb_dlog_day(86399999), 0);
    assert_int_equal(hb_dlog_day(86400000), 1);
    assert_int_equal(hb_dlog_day(1796342400000LL), 20791);            /* 2026-12-04T00:00Z */
    assert_int_equal(hb_dlog_day(1796342400000LL + 86399999), 20791); /* 23:59:59.999Z */
    assert_int_equal(hb_dlog_day(-1), -1);                            /* floor, not toward 0 */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(unknown_delivery_is_never_stale),
        cmocka_unit_test(final_states_make_every_attempt_stale),
        cmocka_unit_test(an_attempt_already_logged_is_a_duplicate),
        cmocka_unit_test(a_replay_goes_ahead_older_retries_do_not),
        cmocka_unit_test(a_retry_begun_before_a_replay_was_asked_for_is_stale),
        cmocka_unit_test(the_log_day_is_the_utc_day_of_the_first_attempt),
    };
    return cmocka_run_group_tests_name("dlog", tests, NULL, NULL);
}
