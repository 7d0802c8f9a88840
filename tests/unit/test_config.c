/* Configuration: environment, flags, passthrough, and errors a user sees. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "hb_config.h"

/* Sealing keys for the services: 32 bytes in base64, and another in hex. */
#define TEST_KEY "c2VhbGluZy1rZXktZm9yLXRoZS1jb25maWctdGVzdHM="
#define OLD_KEY "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"

static int load(hb_config_t *cfg, int argc, char **argv, char *err, size_t errsz) {
    return hb_config_load(cfg, HB_PROG_DISPATCHER, "test", argc, argv, err, errsz);
}

static void clear_env(void) {
    unsetenv("HOOKBRIDGE_KAFKA_BROKERS");
    unsetenv("HOOKBRIDGE_MAX_IN_FLIGHT");
    unsetenv("HOOKBRIDGE_KAFKA_SASL_MECHANISM");
    unsetenv("HOOKBRIDGE_DATABASE_URL");
    unsetenv("HOOKBRIDGE_REQUEST_TIMEOUT");
    unsetenv("HOOKBRIDGE_ALLOWED_CIDRS");
    unsetenv("HOOKBRIDGE_CA_FILE");
    unsetenv("HOOKBRIDGE_TLS_CLIENT_CERT");
    unsetenv("HOOKBRIDGE_TLS_CLIENT_KEY");
    unsetenv("HOOKBRIDGE_SECRET_KEYS_OLD");
    /* The services refuse to start without a sealing key (see secret_key_required). */
    setenv("HOOKBRIDGE_SECRET_KEY", TEST_KEY, 1);
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

static void flag_wins_over_an_invalid_variable(void **state) {
    hb_config_t cfg;
    char err[256];
    char *argv[] = {"prog", "--max-in-flight=7", NULL};
    clear_env();
    setenv("HOOKBRIDGE_MAX_IN_FLIGHT", "lots", 1); /* refused if it were read */
    assert_int_equal(load(&cfg, 2, argv, err, sizeof(err)), 0);
    assert_int_equal(cfg.max_in_flight, 7);
    hb_config_free(&cfg);
    unsetenv("HOOKBRIDGE_MAX_IN_FLIGHT");
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

/* A database URL from a file that ends in a newline (kubectl create secret
 * --from-file): the newline is not part of the value. Other settings are
 * taken as they are (the keys' parser skips blanks itself). */
static void the_database_url_loses_a_trailing_newline(void **state) {
    hb_config_t cfg;
    char err[256];
    char *argv[] = {"prog", NULL};
    clear_env();
    setenv("HOOKBRIDGE_DATABASE_URL", "postgresql://hb:pw@db/hb?sslmode=require\n", 1);
    setenv("HOOKBRIDGE_SECRET_KEY", TEST_KEY "\r\n", 1);
    setenv("HOOKBRIDGE_SOURCE", "urn:x ", 1);
    assert_int_equal(load(&cfg, 1, argv, err, sizeof(err)), 0);
    assert_string_equal(cfg.database_url, "postgresql://hb:pw@db/hb?sslmode=require");
    assert_non_null(cfg.keyring); /* the key's line end is skipped by its parser */
    assert_string_equal(cfg.source, "urn:x ");
    hb_config_free(&cfg);
    setenv("HOOKBRIDGE_INGEST_AUTH_VALUE", "Bearer abc \n", 1);
    assert_int_equal(hb_config_load(&cfg, HB_PROG_PRODUCER, "t", 1, argv, err, sizeof(err)), 0);
    assert_string_equal(cfg.ingest_auth_value, "Bearer abc \n"); /* the producer refuses it */
    hb_config_free(&cfg);
    unsetenv("HOOKBRIDGE_INGEST_AUTH_VALUE");
    unsetenv("HOOKBRIDGE_SOURCE");
    clear_env();
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
        /* libpq cannot parse it: no retry could connect (the value not repeated) */
        {"HOOKBRIDGE_DATABASE_URL", "postgresql://hb:p%zz@db/hb",
         "HOOKBRIDGE_DATABASE_URL: the connection string is not valid"},
        {"HOOKBRIDGE_DATABASE_URL", "host=db password", "connection string is not valid"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        hb_config_t cfg;
        char err[256] = "";
        char *argv[] = {"prog", NULL};
        clear_env();
        setenv(cases[i].var, cases[i].val, 1);
        assert_int_equal(load(&cfg, 1, argv, err, sizeof(err)), -1);
        assert_non_null(strstr(err, cases[i].expect));
        assert_null(strstr(err, "p%zz"));
        hb_config_free(&cfg);
    }
}

/* The outbound security settings: unset by default, read from the
 * environment and flags, none of them a secret (the key's path is shown; its
 * content is read by hb_http only). */
static void outbound_security_settings(void **state) {
    hb_config_t cfg;
    char err[256];
    char *argv[] = {"prog", "--tls-client-key", "/etc/hb/client.key", NULL};
    clear_env();
    char *argv0[] = {"prog", NULL};
    assert_int_equal(load(&cfg, 1, argv0, err, sizeof(err)), 0);
    assert_string_equal(cfg.allowed_cidrs, "");
    assert_string_equal(cfg.ca_file, "");
    assert_string_equal(cfg.tls_client_cert, "");
    assert_string_equal(cfg.tls_client_key, "");
    assert_int_equal(cfg.allow_private_networks, 0);
    hb_config_free(&cfg);

    setenv("HOOKBRIDGE_ALLOWED_CIDRS", "10.20.0.0/16,fd00::/8", 1);
    setenv("HOOKBRIDGE_CA_FILE", "/etc/hb/ca.pem", 1);
    setenv("HOOKBRIDGE_TLS_CLIENT_CERT", "/etc/hb/client.pem", 1);
    assert_int_equal(load(&cfg, 3, argv, err, sizeof(err)), 0);
    assert_string_equal(cfg.allowed_cidrs, "10.20.0.0/16,fd00::/8");
    assert_string_equal(cfg.ca_file, "/etc/hb/ca.pem");
    assert_string_equal(cfg.tls_client_cert, "/etc/hb/client.pem");
    assert_string_equal(cfg.tls_client_key, "/etc/hb/client.key");
    assert_int_equal(cfg.args_cnt, 0);
    hb_config_free(&cfg);

    /* Not for the producer, which makes no HTTP requests. */
    assert_int_equal(hb_config_load(&cfg, HB_PROG_PRODUCER, "test", 1, argv0, err, sizeof(err)), 0);
    assert_string_equal(cfg.ca_file, "");
    hb_config_free(&cfg);
    clear_env();
}

/* --help lists them under the programs that read them. */
static void outbound_security_in_help(void **state) {
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    assert_non_null(fp);
    hb_config_usage(fp, HB_PROG_DISPATCHER, "hookbridge-dispatcher");
    fclose(fp);
    assert_non_null(strstr(text, "--allowed-cidrs, HOOKBRIDGE_ALLOWED_CIDRS"));
    assert_non_null(strstr(text, "--ca-file, HOOKBRIDGE_CA_FILE"));
    assert_non_null(strstr(text, "--tls-client-cert, HOOKBRIDGE_TLS_CLIENT_CERT"));
    assert_non_null(strstr(text, "--tls-client-key, HOOKBRIDGE_TLS_CLIENT_KEY"));
    free(text);
}

/* The services need HOOKBRIDGE_SECRET_KEY; a missing or unusable one stops
 * them at start with the variable and how to make a key, never its value. */
static void secret_key_required(void **state) {
    static const struct {
        const char *key, *old, *expect;
    } cases[] = {
        {NULL, NULL,
         "HOOKBRIDGE_SECRET_KEY is not set: it is the key that seals signing secrets and auth "
         "values in the database; generate one with: hookbridge-secret generate-key"},
        {"", NULL, "HOOKBRIDGE_SECRET_KEY is not set"},
        {"c2VhbGluZy1rZXktZm9yLXRoZS1jb25maWctdGVzdA==", NULL,
         "HOOKBRIDGE_SECRET_KEY: 31 bytes, want 32; generate one with: hookbridge-secret "
         "generate-key"},
        {"not-a-key-at-all!", NULL, "HOOKBRIDGE_SECRET_KEY: neither base64 nor hex"},
        {TEST_KEY, OLD_KEY " 0102030405",
         "key 2 of HOOKBRIDGE_SECRET_KEYS_OLD: 10 hex digits, "
         "want 64"},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        hb_config_t cfg;
        char err[512] = "";
        char *argv[] = {"prog", NULL};
        clear_env();
        if (cases[i].key)
            setenv("HOOKBRIDGE_SECRET_KEY", cases[i].key, 1);
        else
            unsetenv("HOOKBRIDGE_SECRET_KEY");
        if (cases[i].old)
            setenv("HOOKBRIDGE_SECRET_KEYS_OLD", cases[i].old, 1);
        assert_int_equal(load(&cfg, 1, argv, err, sizeof(err)), -1);
        if (!strstr(err, cases[i].expect))
            fail_msg("got \"%s\", want \"%s\"", err, cases[i].expect);
        if (cases[i].key && *cases[i].key)
            assert_null(strstr(err, cases[i].key));
        assert_null(strstr(err, "0102030405"));
        hb_config_free(&cfg);
        /* The retrier too; the producer and migrate do not read it. */
        assert_int_equal(hb_config_load(&cfg, HB_PROG_RETRIER, "t", 1, argv, err, sizeof(err)), -1);
        hb_config_free(&cfg);
        assert_int_equal(hb_config_load(&cfg, HB_PROG_PRODUCER, "t", 1, argv, err, sizeof(err)), 0);
        assert_string_equal(cfg.secret_key, "");
        hb_config_free(&cfg);
        assert_int_equal(hb_config_load(&cfg, HB_PROG_MIGRATE, "t", 1, argv, err, sizeof(err)), 0);
        hb_config_free(&cfg);
        /* hookbridge-secret reads it but checks it per command (generate-key needs none). */
        assert_int_equal(hb_config_load(&cfg, HB_PROG_SECRET, "t", 1, argv, err, sizeof(err)), 0);
        hb_config_free(&cfg);
    }
    {
        hb_config_t cfg;
        char err[512] = "";
        char *argv[] = {"prog", NULL};
        clear_env();
        setenv("HOOKBRIDGE_SECRET_KEYS_OLD", " " OLD_KEY ", ", 1);
        assert_int_equal(load(&cfg, 1, argv, err, sizeof(err)), 0);
        assert_string_equal(cfg.secret_key, TEST_KEY);
        assert_string_equal(cfg.secret_keys_old, " " OLD_KEY ", ");
        hb_config_free(&cfg);
        clear_env();
    }
}

/* --help shows the key settings, hidden like every secret: no default shown. */
static void secret_key_in_help(void **state) {
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    assert_non_null(fp);
    hb_config_usage(fp, HB_PROG_RETRIER, "hookbridge-retrier");
    hb_config_usage(fp, HB_PROG_SECRET, "hookbridge-secret");
    fclose(fp);
    assert_non_null(strstr(text, "--secret-key, HOOKBRIDGE_SECRET_KEY"));
    assert_non_null(strstr(text, "--secret-keys-old, HOOKBRIDGE_SECRET_KEYS_OLD"));
    assert_non_null(strstr(text, "hookbridge-secret generate-key"));
    assert_null(strstr(text, TEST_KEY));
    free(text);
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
    assert_int_equal(hb_duration_parse_ms("1.5s", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(hb_duration_parse_ms(".5s", &ms), 0);
    assert_int_equal(ms, 500);
    /* decimal only: nothing else strtod would take */
    static const char *const refused[] = {"nan", "nans", "inf",   "0x10s", "1e3", "+5s",
                                          " 5s", "5s ",  "1..5s", ".s",    "5 s"};
    for (size_t i = 0; i < HB_ARRAY_SIZE(refused); i++)
        if (hb_duration_parse_ms(refused[i], &ms) != -1)
            fail_msg("\"%s\" was taken as %lld ms", refused[i], ms);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_env_then_flags),
        cmocka_unit_test(empty_variable_is_unset),
        cmocka_unit_test(the_database_url_loses_a_trailing_newline),
        cmocka_unit_test(flag_wins_over_an_invalid_variable),
        cmocka_unit_test(kafka_passthrough_names),
        cmocka_unit_test(bad_values_name_the_setting),
        cmocka_unit_test(outbound_security_settings),
        cmocka_unit_test(outbound_security_in_help),
        cmocka_unit_test(secret_key_required),
        cmocka_unit_test(secret_key_in_help),
        cmocka_unit_test(durations),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
