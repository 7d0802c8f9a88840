/*
 * Review 55: the reference clock (hb_clock_reference) from samples of
 * PostgreSQL's clock whose round trips differ. A sample is only as good as
 * its round trip (the server read its clock somewhere in it): one over a
 * slow round trip (a database answering after 5 s) must neither move a
 * reference a fast one pinned to within milliseconds nor reset the
 * warning, and a step of the server's clock is still followed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>

#include "hb_common.h"

#define BASE 1780000000000LL /* PostgreSQL's clock at tick 0 */

/* A sample whose round trip ran from m0 to m1 (ticks), the server reading
 * its clock (BASE + step + the tick) at read; this host's clock is ahead of
 * the server's by host_ahead (before any step). */
static int sample(int64_t m0, int64_t m1, int64_t read, int64_t step, int64_t host_ahead,
                  int64_t *skew) {
    return hb_clock_reference(BASE + step + read, m0, m1, BASE + m0 + host_ahead, skew);
}

static int64_t reference_error(int64_t step) {
    return hb_wall_ms() - (BASE + step + hb_ticks_ms());
}

static void test_a_slow_sample_neither_moves_the_reference_nor_repeats_the_warning(void **state) {
    int64_t t = hb_ticks_ms() - 20000, skew;
    (void)state;
    /* a fast sample: this host 3 s ahead, said */
    assert_int_equal(sample(t, t + 2, t + 1, 0, 3000, &skew), 1);
    assert_true(llabs(reference_error(0)) <= 5);
    /* 5 s for an answer, the server's clock read near its end (the delay
     * was on the way in): the midpoint would put the reference 2.5 s ahead
     * and the skew at 0.5 s */
    assert_int_equal(sample(t + 5000, t + 10000, t + 9990, 0, 3000, &skew), 0);
    assert_true(llabs(reference_error(0)) <= 50);
    assert_true(skew > 2500 && skew < 3500);
    /* a fast one again: same skew, said already */
    assert_int_equal(sample(t + 12000, t + 12002, t + 12001, 0, 3000, &skew), 0);
    assert_true(llabs(skew - 3000) <= 5);
}

static void test_a_step_of_the_server_clock_is_followed_even_by_a_slow_sample(void **state) {
    int64_t t = hb_ticks_ms() - 20000, skew;
    (void)state;
    (void)sample(t, t + 2, t + 1, 0, 0, &skew);
    assert_true(llabs(reference_error(0)) <= 5);
    /* the server's clock stepped a minute ahead: the next sample, slow,
     * cannot agree with the last; it is taken */
    (void)sample(t + 5000, t + 8000, t + 6500, 60000, 0, &skew);
    assert_true(llabs(reference_error(60000)) <= 1500);
    assert_true(llabs(skew + 60000) <= 1500);
    /* and a fast one after it pins it */
    (void)sample(t + 9000, t + 9002, t + 9001, 60000, 0, &skew);
    assert_true(llabs(reference_error(60000)) <= 5);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_slow_sample_neither_moves_the_reference_nor_repeats_the_warning),
        cmocka_unit_test(test_a_step_of_the_server_clock_is_followed_even_by_a_slow_sample),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
