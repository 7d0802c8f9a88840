/* Configuration: environment, flags, passthrough, and errors a user sees. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "hb_config.h"

static int load(hb_config_t *cfg, int argc, char **argv, char *err, size_t errsz) {
    return hb_config_load(cfg, HB_PROG_DISPATCHER, "test", argc, argv, err, errsz);
}

static void clear_env(void) {
    unsetenv("HOOKBRIDGE_KAFKA_BROKERS");
    unsetenv("HOOKBRIDGE_MAX_IN_FLIGHT");
    unsetenv("HOOKBRIDGE_KAFKA_SASL_MECHANISM");
    unsetenv("HOOKBRIDGE_DATABASE_URL");
    unsetenv("HOOKBRIDGE_REQUEST_TIMEOUT");
}

static void defaults_env_then_flags(void **state) {
    hb_config_t cfg;
    char err[256];
    char *argv[] = {"prog", "--max-in-flight", "7", "--allow-http", "extra", NULL};
    clear_env();
    setenv("HOOKBRIDGE_KAFKA_BROKERS", "k1:9092,k2:9092", 1);
    setenv("HOOKBRIDGE_MAX_IN_FLIGHT", "99", 1);
    setenv("HOOKBRIDGE_REQUEST_TIMEOUT", "2.5s", 1);
    assert_int_equal(load(&cfg, 5, argv, err, sizeof(err)), 0);
    assert_string_equal(cfg.kafka_brokers, "k1:9092,k2:9092");
    assert_int_equal(cfg.max_in_flight, 7); /* the flag wins over the variable */
    assert_int_equal(cfg.allow_http, 1);
    assert_int_equal(cfg.request_timeout_ms, 2500);
    assert_string_equal(cfg.events_topic, "identity.events");
    assert_int_equal(cfg.args_cnt, 1);
    assert_string_equal(cfg.args[0], "extra");
    hb_config_free(&cfg);
}

static void empty_variable_is_unset(void **state) {
    hb_config_t cfg;
    char err[256];
    char *argv[] = {"prog", NULL};
    clear_env();
    setenv("HOOKBRIDGE_KAFKA_BROKERS", "", 1);
    assert_int_equal(load(&cfg, 1, argv, err, sizeof(err)), 0);
    assert_string_equal(cfg.kafka_brokers, "localhost:9092");
    hb_config_free(&cfg);
}

static void kafka_passthrough_names(void **state) {
    hb_config_t cfg;
    char err[256];
    char *argv[] = {"prog", "-X", "fetch.wait.max.ms=50", NULL};
    clear_env();
    setenv("HOOKBRIDGE_KAFKA_SASL_MECHANISM", "PLAIN", 1);
    setenv("HOOKBRIDGE_KAFKA_BROKERS", "b:1", 1); /* a setting, not passed through */
    assert_int_equal(load(&cfg, 3, argv, err, sizeof(err)), 0);
    int found_sasl = 0, found_fetch = 0;
    for (size_t i = 0; i < cfg.kafka_props_cnt; i++) {
        const char *n = cfg.kafka_props[2 * i], *v = cfg.kafka_props[2 * i + 1];
        assert_string_not_equal(n, "brokers");
        if (!strcmp(n, "sasl.mechanism") && !strcmp(v, "PLAIN"))
            found_sasl = 1;
        if (!strcmp(n, "fetch.wait.max.ms") && !strcmp(v, "50"))
            found_fetch = 1;
    }
    assert_true(found_sasl && found_fetch);
    hb_config_free(&cfg);
}

static void bad_values_name_the_setting(void **state) {
    static const struct {
        const char *var, *val, *expect;
    } cases[] = {
        {"HOOKBRIDGE_MAX_IN_FLIGHT", "lots",
         "HOOKBRIDGE_MAX_IN_FLIGHT: \"lots\" is not an integer"},
        {"HOOKBRIDGE_MAX_IN_FLIGHT", "0", "HOOKBRIDGE_MAX_IN_FLIGHT: 0 is out of range"},
        {"HOOKBRIDGE_REQUEST_TIMEOUT", "5 parsecs", "is not a duration"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        hb_config_t cfg;
        char err[256] = "";
        char *argv[] = {"prog", NULL};
        clear_env();
        setenv(cases[i].var, cases[i].val, 1);
        assert_int_equal(load(&cfg, 1, argv, err, sizeof(err)), -1);
        assert_non_null(strstr(err, cases[i].expect));
        hb_config_free(&cfg);
    }
}

static void durations(void **state) {
    long long ms;
    assert_int_equal(hb_duration_parse_ms("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(hb_duration_parse_ms("2m", &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(hb_duration_parse_ms("1h", &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(hb_duration_parse_ms("1500", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(hb_duration_parse_ms("-1s", &ms), -1);
    assert_int_equal(hb_duration_parse_ms("s", &ms), -1);
    assert_int_equal(hb_duration_parse_ms("", &ms), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_env_then_flags),
        cmocka_unit_test(empty_variable_is_unset),
        cmocka_unit_test(kafka_passthrough_names),
        cmocka_unit_test(bad_values_name_the_setting),
        cmocka_unit_test(durations),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
