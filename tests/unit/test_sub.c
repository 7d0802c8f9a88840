/* Subscription snapshots: which pending retries a deactivation dropped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "hb_sub.h"

#define T0 1700000000000LL /* the last deactivation, Unix ms */

static void never_deactivated_drops_nothing(void **state) {
    hb_sub_t *s = hb_sub_new();
    (void)state;
    s->active = s->verified = 1;
    assert_false(hb_sub_deactivated_since(s, 1));
    assert_false(hb_sub_deactivated_since(s, T0));
    hb_sub_unref(s);
}

static void a_delivery_begun_before_the_deactivation_is_dropped(void **state) {
    hb_sub_t *s = hb_sub_new();
    (void)state;
    s->active = s->verified = 1; /* active again: the deactivation still counts */
    s->deactivated_ms = T0;
    assert_true(hb_sub_deactivated_since(s, T0 - 1));
    assert_true(hb_sub_deactivated_since(s, T0 - 86400000LL));
    hb_sub_unref(s);
}

static void a_delivery_begun_at_or_after_the_deactivation_is_kept(void **state) {
    hb_sub_t *s = hb_sub_new();
    (void)state;
    s->deactivated_ms = T0;
    /* the same millisecond is not "before": a doubt goes to delivering */
    assert_false(hb_sub_deactivated_since(s, T0));
    assert_false(hb_sub_deactivated_since(s, T0 + 1));
    /* a replay is taken up after the reactivation: its run begins then */
    assert_false(hb_sub_deactivated_since(s, T0 + 5000));
    hb_sub_unref(s);
}

static void an_unknown_start_is_kept(void **state) {
    hb_sub_t *s = hb_sub_new();
    (void)state;
    s->deactivated_ms = T0;
    assert_false(hb_sub_deactivated_since(s, 0));
    hb_sub_unref(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(never_deactivated_drops_nothing),
        cmocka_unit_test(a_delivery_begun_before_the_deactivation_is_dropped),
        cmocka_unit_test(a_delivery_begun_at_or_after_the_deactivation_is_kept),
        cmocka_unit_test(an_unknown_start_is_kept),
    };
    return cmocka_run_group_tests_name("sub", tests, NULL, NULL);
}
