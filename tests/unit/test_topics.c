/* Topic provisioning: the plan made from the settings, and what counts as drift. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "hb_config.h"
#include "hb_topics.h"

#define DAY (86400000LL)

static int load(hb_config_t *cfg, char **argv, int argc) {
    char err[256];
    unsetenv("HOOKBRIDGE_RETRY_SCHEDULE");
    unsetenv("HOOKBRIDGE_TOPIC_PARTITIONS");
    unsetenv("HOOKBRIDGE_TOPIC_REPLICATION_FACTOR");
    unsetenv("HOOKBRIDGE_EVENTS_RETENTION");
    unsetenv("HOOKBRIDGE_DLQ_RETENTION");
    return hb_config_load(cfg, HB_PROG_MIGRATE, "test", argc, argv, err, sizeof(err));
}

static void tier_retention_is_a_week_or_ten_delays(void **state) {
    (void)state;
    assert_true(hb_topics_tier_retention_ms(5000) == 7 * DAY);
    assert_true(hb_topics_tier_retention_ms(10 * 3600000LL) == 7 * DAY); /* 100 h < 7 d */
    assert_true(hb_topics_tier_retention_ms(1 * DAY) == 10 * DAY);
    assert_true(hb_topics_tier_retention_ms(30 * DAY) == 300 * DAY);
}

static void default_plan_lists_events_every_tier_and_the_dlq(void **state) {
    hb_config_t cfg;
    hb_topic_plan_t plan;
    char err[256];
    char *argv[] = {"prog", NULL};
    (void)state;
    assert_int_equal(load(&cfg, argv, 1), 0);
    assert_int_equal(hb_topics_plan(&plan, &cfg, err, sizeof(err)), 0);
    /* identity.events, 6 distinct tiers of 5s,5m,30m,2h,5h,10h,10h and the
     * hop tiers 20s and 1m, hookbridge.dlq */
    assert_int_equal(plan.n, 10);
    assert_string_equal(plan.v[0].name, "identity.events");
    assert_string_equal(plan.v[0].role, "events");
    assert_true(plan.v[0].retention_ms == 7 * DAY);
    assert_string_equal(plan.v[1].name, "hookbridge.retry.5s");
    assert_string_equal(plan.v[1].role, "delay tier 5s");
    assert_string_equal(plan.v[2].name, "hookbridge.retry.20s");
    assert_string_equal(plan.v[2].role, "delay tier 20s (hops only)");
    assert_true(plan.v[2].tier);
    assert_true(plan.v[2].retention_ms == 7 * DAY);
    assert_string_equal(plan.v[3].name, "hookbridge.retry.1m");
    assert_string_equal(plan.v[8].name, "hookbridge.retry.10h");
    assert_true(plan.v[8].retention_ms == 7 * DAY);
    assert_string_equal(plan.v[9].name, "hookbridge.dlq");
    assert_true(plan.v[9].retention_ms == 30 * DAY);
    for (size_t i = 0; i < plan.n; i++) {
        assert_int_equal(plan.v[i].partitions, 12);
        assert_int_equal(plan.v[i].replication_factor, 3);
        assert_int_equal(plan.v[i].min_insync_replicas, 2);
    }
    hb_topics_plan_free(&plan);
    hb_config_free(&cfg);
}

static void settings_shape_the_plan(void **state) {
    hb_config_t cfg;
    hb_topic_plan_t plan;
    char err[256];
    char *argv[] = {"prog",  "--retry-schedule",
                    "2s,3d", "--topic-partitions",
                    "4",     "--topic-replication-factor",
                    "1",     "--dlq-retention",
                    "90d",   "--retry-topic-prefix",
                    "r.",    "--retry-hop-tiers",
                    "",      NULL};
    (void)state;
    assert_int_equal(load(&cfg, argv, (int)HB_ARRAY_SIZE(argv) - 1), 0);
    assert_int_equal(hb_topics_plan(&plan, &cfg, err, sizeof(err)), 0);
    assert_int_equal(plan.n, 4);
    assert_string_equal(plan.v[1].name, "r.2s");
    assert_string_equal(plan.v[2].name, "r.3d");
    assert_true(plan.v[2].retention_ms == 30 * DAY); /* ten times three days */
    assert_true(plan.v[3].retention_ms == 90 * DAY);
    assert_int_equal(plan.v[0].partitions, 4);
    assert_int_equal(plan.v[0].replication_factor, 1);
    assert_int_equal(plan.v[0].min_insync_replicas, 0); /* the broker's default */
    hb_topics_plan_free(&plan);
    hb_config_free(&cfg);
}

static void one_topic_in_two_roles_is_refused(void **state) {
    hb_config_t cfg;
    hb_topic_plan_t plan;
    char err[256] = "";
    char *argv[] = {"prog", "--dlq-topic", "hookbridge.retry.5s", NULL};
    (void)state;
    assert_int_equal(load(&cfg, argv, 3), 0);
    assert_int_equal(hb_topics_plan(&plan, &cfg, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "hookbridge.retry.5s is both the delay tier 5s and the dead "
                                "letters topic"));
    hb_config_free(&cfg);
}

static void drift_names_what_differs(void **state) {
    hb_topic_spec_t want = {
        .name = "t", .partitions = 12, .replication_factor = 3, .retention_ms = 7 * DAY};
    hb_topic_state_t same = {12, 3, 7 * DAY, 0, 0, 0}, more = {24, 3, 30 * DAY, 0, 0, 0},
                     unlimited = {12, 3, -1, 0, 0, 0};
    hb_topic_state_t fewer = {6, 1, 3600000, 0, 0, 0};
    char out[512];
    (void)state;
    assert_int_equal(hb_topics_drift(&want, &same, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    /* more partitions, a longer or unlimited retention: fine */
    assert_int_equal(hb_topics_drift(&want, &more, out, sizeof(out)), 0);
    assert_int_equal(hb_topics_drift(&want, &unlimited, out, sizeof(out)), 0);
    assert_int_equal(hb_topics_drift(&want, &fewer, out, sizeof(out)), 3);
    assert_string_equal(out, "6 partitions, fewer than the 12 planned; replication factor 1, "
                             "not 3; retention 1h, shorter than the 7d planned");
}

/* A size limit deletes a delay tier's retries before they are due (not
 * drift elsewhere: the operator's call for events and dead letters);
 * compaction keeps one message per key on any topic. */
static void drift_names_a_size_limit_on_a_tier_and_compaction(void **state) {
    hb_topic_spec_t tier = {.name = "t",
                            .partitions = 12,
                            .replication_factor = 3,
                            .retention_ms = 7 * DAY,
                            .tier = 1},
                    dlq = {.name = "d",
                           .partitions = 12,
                           .replication_factor = 3,
                           .retention_ms = 30 * DAY};
    hb_topic_state_t sized = {12, 3, 30 * DAY, 1073741824, 0, 0};
    hb_topic_state_t compacted = {12, 3, 30 * DAY, 0, 1, 0};
    hb_topic_state_t appended = {12, 3, 30 * DAY, 0, 0, 1};
    char out[512];
    (void)state;
    assert_int_equal(hb_topics_drift(&tier, &sized, out, sizeof(out)), 1);
    assert_string_equal(out, "retention.bytes 1073741824: retries are deleted before they are "
                             "due once a partition holds that much");
    assert_int_equal(hb_topics_drift(&dlq, &sized, out, sizeof(out)), 0);
    assert_int_equal(hb_topics_drift(&dlq, &compacted, out, sizeof(out)), 1);
    assert_string_equal(out, "cleanup.policy compact: only the newest message of each key is kept");
    /* the broker's clock on a tier (review 70): the retrier cannot tell
     * which retries hold their partition; anywhere else it is not read */
    assert_int_equal(hb_topics_drift(&tier, &appended, out, sizeof(out)), 1);
    assert_string_equal(out, "message.timestamp.type LogAppendTime: the broker's clock stamps "
                             "the retries, so one due later than its tier holds its partition");
    assert_int_equal(hb_topics_drift(&dlq, &appended, out, sizeof(out)), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tier_retention_is_a_week_or_ten_delays),
        cmocka_unit_test(default_plan_lists_events_every_tier_and_the_dlq),
        cmocka_unit_test(settings_shape_the_plan),
        cmocka_unit_test(one_topic_in_two_roles_is_refused),
        cmocka_unit_test(drift_names_what_differs),
        cmocka_unit_test(drift_names_a_size_limit_on_a_tier_and_compaction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
