/* Offset tracking: the committed position never passes an unfinished message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "hb_offsets.h"

static int64_t collect_one(hb_offsets_t *o, int32_t partition) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    int64_t pos = -1;
    (void)hb_offsets_collect(o, l);
    for (int i = 0; i < l->cnt; i++)
        if (l->elems[i].partition == partition)
            pos = l->elems[i].offset;
    rd_kafka_topic_partition_list_destroy(l);
    return pos;
}

static void out_of_order_completion_waits_for_lowest(void **state) {
    hb_offsets_t *o = hb_offsets_new();
    hb_offref_t r[5];
    for (int i = 0; i < 5; i++)
        r[i] = hb_offsets_track(o, "t", 0, 100 + i);
    assert_int_equal(hb_offsets_pending(o), 5);
    hb_offsets_done(o, r[1]);
    hb_offsets_done(o, r[2]);
    assert_int_equal(collect_one(o, 0), -1); /* 100 unfinished: nothing to commit */
    hb_offsets_done(o, r[0]);
    assert_int_equal(collect_one(o, 0), 103); /* 100..102 done */
    assert_int_equal(collect_one(o, 0), -1);  /* unchanged: not reported again */
    hb_offsets_done(o, r[4]);
    assert_int_equal(collect_one(o, 0), -1);
    hb_offsets_done(o, r[3]);
    assert_int_equal(collect_one(o, 0), 105);
    assert_int_equal(hb_offsets_pending(o), 0);
    hb_offsets_free(o);
}

static void partitions_are_independent_and_ring_grows(void **state) {
    hb_offsets_t *o = hb_offsets_new();
    hb_offref_t *refs = test_malloc(1000 * sizeof(*refs));
    for (int i = 0; i < 1000; i++)
        refs[i] = hb_offsets_track(o, "t", i % 2, i / 2);
    for (int i = 999; i >= 0; i--)
        if (i % 2 == 1)
            hb_offsets_done(o, refs[i]);
    assert_int_equal(collect_one(o, 1), 500);
    assert_int_equal(collect_one(o, 0), -1);
    for (int i = 0; i < 1000; i += 2)
        hb_offsets_done(o, refs[i]);
    assert_int_equal(collect_one(o, 0), 500);
    test_free(refs);
    hb_offsets_free(o);
}

static void forgotten_partition_ignores_late_completions(void **state) {
    hb_offsets_t *o = hb_offsets_new();
    hb_offref_t a = hb_offsets_track(o, "t", 3, 7);
    hb_offref_t b = hb_offsets_track(o, "t", 3, 8);
    hb_offsets_forget(o, "t", 3);
    assert_int_equal(hb_offsets_pending(o), 0);
    hb_offsets_done(o, a); /* must not crash nor report */
    assert_int_equal(collect_one(o, 3), -1);
    hb_offsets_done(o, b); /* frees the revoked partition (ASan checks) */
    hb_offsets_free(o);
}

/* Work abandoned at shutdown: the revoked partition is freed with the
 * tracker (LeakSanitizer checks under make test-asan). */
static void revoked_partition_with_abandoned_work_is_freed(void **state) {
    hb_offsets_t *o = hb_offsets_new();
    (void)state;
    (void)hb_offsets_track(o, "t", 1, 1);
    (void)hb_offsets_track(o, "t", 2, 1);
    hb_offsets_forget(o, "t", 1);
    hb_offsets_forget(o, "t", 2);
    hb_offsets_free(o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(out_of_order_completion_waits_for_lowest),
        cmocka_unit_test(partitions_are_independent_and_ring_grows),
        cmocka_unit_test(forgotten_partition_ignores_late_completions),
        cmocka_unit_test(revoked_partition_with_abandoned_work_is_freed),
    };
    return cmocka_run_group_tests_name("offsets", tests, NULL, NULL);
}
