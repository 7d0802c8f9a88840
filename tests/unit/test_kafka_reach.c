/* Broker reachability (hb_kafka_reach_t) against librdkafka's mock cluster of
 * three brokers: one frozen broker (its answers delayed far beyond the probe's
 * timeout, as a stopped process does) leaves the brokers answering; all three
 * frozen make them "not answering" within a few seconds, and answering again
 * soon after they thaw. The test is the caller's loop: it checks every 50 ms. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hb_kafka.h" /* rdkafka.h, which rdkafka_mock.h needs first */
#include "hb_log.h"

#include <librdkafka/rdkafka_mock.h>

#define TOPIC "reach.t"
#define FROZEN_RTT_MS 600000

typedef struct {
    rd_kafka_t *mrk; /* the mock cluster's own handle */
    rd_kafka_mock_cluster_t *mc;
    rd_kafka_t *rk; /* an idle producer, as the ingest endpoint is between requests */
    hb_kafka_reach_t r;
    int all_down_events; /* hb_kafka_reach_down said "newly down" */
} fixture_t;

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    fixture_t *f = opaque;
    (void)rk;
    (void)reason;
    f->all_down_events += hb_kafka_reach_down(&f->r, err);
}

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof(*f));
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    (void)rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr));
    f->mrk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    assert_non_null(f->mrk);
    f->mc = rd_kafka_mock_cluster_new(f->mrk, 3);
    assert_non_null(f->mc);
    assert_int_equal(rd_kafka_mock_topic_create(f->mc, TOPIC, 6, 3), 0);
    conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers",
                                       rd_kafka_mock_cluster_bootstraps(f->mc), errstr,
                                       sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    (void)rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr));
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_opaque(conf, f);
    f->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    assert_non_null(f->rk);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    for (int id = 1; id <= 3; id++)
        rd_kafka_mock_broker_set_rtt(f->mc, id, 0);
    hb_kafka_reach_stop(&f->r); /* also after a failed assertion */
    rd_kafka_destroy(f->rk);
    rd_kafka_mock_cluster_destroy(f->mc);
    rd_kafka_destroy(f->mrk);
    free(f);
    return 0;
}

/* Checks every 50 ms for up to ms; returns the first time (ms from now) the
 * check says want_down, or -1. */
static int64_t until_state(hb_kafka_reach_t *r, int want_down, int64_t ms) {
    int64_t start = hb_mono_ms();
    while (hb_mono_ms() - start < ms) {
        if (hb_kafka_reach_check(r) == want_down)
            return hb_mono_ms() - start;
        usleep(50 * 1000);
    }
    return -1;
}

static void one_frozen_broker_of_three_is_not_an_outage(void **state) {
    fixture_t *f = *state;
    hb_kafka_reach_t *r = &f->r;
    char errstr[256];
    /* Broker 1 leads partitions 0 to 3 (leadership gathers after failovers),
     * brokers 2 and 3 the others. */
    static const int32_t leaders[6] = {1, 1, 1, 1, 2, 3};
    for (int p = 0; p < 6; p++)
        assert_int_equal(rd_kafka_mock_partition_set_leader(f->mc, TOPIC, p, leaders[p]), 0);
    assert_int_equal(hb_kafka_reach_start(r, f->rk, TOPIC, errstr, sizeof(errstr)), 0);
    assert_int_equal(until_state(r, 0, 1000), 0);
    usleep(1500 * 1000); /* the probe learns the leaders (nothing to wait on) */

    /* The broker the probe asks first freezes: another answers. */
    rd_kafka_mock_broker_set_rtt(f->mc, 1, FROZEN_RTT_MS);
    assert_int_equal(until_state(r, 1, 7000), -1);

    /* All three freeze: not answering within about 4 s, and says so. */
    for (int id = 1; id <= 3; id++)
        rd_kafka_mock_broker_set_rtt(f->mc, id, FROZEN_RTT_MS);
    {
        int64_t took = until_state(r, 1, 8000);
        assert_true(took >= 0 && took <= 7000);
        assert_non_null(strstr(r->why, "Kafka brokers not answering for"));
    }
    /* They thaw: answering again within a couple of seconds. */
    for (int id = 1; id <= 3; id++)
        rd_kafka_mock_broker_set_rtt(f->mc, id, 0);
    {
        int64_t took = until_state(r, 0, 5000);
        assert_true(took >= 0 && took <= 4000);
        assert_string_equal(r->why, "");
    }
    hb_kafka_reach_stop(r);
}

static void all_brokers_down_holds_until_a_later_answer(void **state) {
    fixture_t *f = *state;
    hb_kafka_reach_t *r = &f->r;
    char errstr[256];
    int64_t start;
    assert_int_equal(hb_kafka_reach_down(r, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN), 0); /* idle */
    assert_int_equal(hb_kafka_reach_check(r), 0);
    assert_int_equal(hb_kafka_reach_start(r, f->rk, TOPIC, errstr, sizeof(errstr)), 0);
    assert_int_equal(hb_kafka_reach_down(r, RD_KAFKA_RESP_ERR__TRANSPORT), 0);
    assert_int_equal(until_state(r, 0, 1000), 0);

    /* Every broker refuses connections: librdkafka says "all brokers down"
     * (the error callback, served by rd_kafka_poll), at once not ready. */
    for (int id = 1; id <= 3; id++)
        rd_kafka_mock_broker_set_down(f->mc, id);
    for (start = hb_mono_ms(); !f->all_down_events && hb_mono_ms() - start < 10000;)
        rd_kafka_poll(f->rk, 50);
    assert_int_equal(f->all_down_events, 1);
    assert_int_equal(hb_kafka_reach_check(r), 1);
    assert_string_equal(r->why, "no Kafka broker reachable");
    assert_int_equal(hb_kafka_reach_down(r, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN), 0); /* once */

    for (int id = 1; id <= 3; id++)
        rd_kafka_mock_broker_set_up(f->mc, id);
    assert_true(until_state(r, 0, 5000) >= 0);
    hb_kafka_reach_stop(r);
    hb_kafka_reach_stop(r); /* harmless twice */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(one_frozen_broker_of_three_is_not_an_outage, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(all_brokers_down_holds_until_a_later_answer, setup,
                                        teardown),
    };
    hb_log_init("test", HB_LOG_ERROR);
    return cmocka_run_group_tests_name("kafka_reach", tests, NULL, NULL);
}
