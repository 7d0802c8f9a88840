/*
 * Review 16 (today's changes, attacked): checks that fail on main 7121c61.
 *
 * hb_pg_conninfo_problem refuses, at start, a database URL option libpq would
 * refuse at every connection; it must not refuse one libpq takes, or a
 * configuration that worked stops every service after an upgrade (exit 2).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "hb_pg.h"

/* libpq compares the TLS protocol versions without regard to case
 * (pg_strcasecmp in sslVerifyProtocolVersion): "tlsv1.2" connects. */
static void test_tls_versions_any_case(void **state) {
    char why[256] = "";
    (void)state;
    assert_int_equal(hb_pg_conninfo_problem("host=db dbname=hb ssl_min_protocol_version=tlsv1.2 "
                                            "ssl_max_protocol_version=TLSV1.3",
                                            why, sizeof(why)),
                     0);
    assert_int_equal(hb_pg_conninfo_problem("postgresql://u@db/hb?ssl_min_protocol_version=tlsv1.3",
                                            why, sizeof(why)),
                     0);
    /* what libpq refuses still is */
    assert_int_equal(
        hb_pg_conninfo_problem("host=db ssl_min_protocol_version=tls1.2", why, sizeof(why)), -1);
    assert_non_null(strstr(why, "ssl_min_protocol_version"));
    /* sslmode is compared exactly by libpq: "Require" fails every connection */
    assert_int_equal(hb_pg_conninfo_problem("host=db sslmode=Require", why, sizeof(why)), -1);
}

/* What libpq 15 refuses of the values together, at every connection
 * (connectOptions2), is refused at start as well; what it takes is taken. */
static void test_combinations(void **state) {
    static const char *const refused[] = {
        "host=db ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
        "host=db ssl_min_protocol_version=tlsv1.2 ssl_max_protocol_version=TLSv1",
        "host=a,b port=5432,5433,5434",
        "postgresql://a:1,b:2/hb?port=1,2,3",
        "host=a,b hostaddr=10.0.0.1",
    };
    static const char *const taken[] = {
        "host=db ssl_min_protocol_version=TLSv1.2 ssl_max_protocol_version=tlsv1.2",
        "host=db ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1",
        "host=db ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=",
        "host=a,b port=5432",
        "host=a,b port=5432,5433",
        "postgresql://a:1,b:2/hb",
        "postgresql://a,b:2/hb",
        "host=a,b hostaddr=10.0.0.1,10.0.0.2 port=5432",
        "port=5432,5433", /* the hosts come from PGHOST: not judged here */
    };
    char why[256];
    (void)state;
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        why[0] = 0;
        if (hb_pg_conninfo_problem(refused[i], why, sizeof(why)) != -1)
            fail_msg("taken, but libpq refuses it: %s", refused[i]);
        assert_true(*why);
    }
    for (size_t i = 0; i < sizeof(taken) / sizeof(taken[0]); i++)
        if (hb_pg_conninfo_problem(taken[i], why, sizeof(why)) != 0)
            fail_msg("refused (%s), but libpq takes it: %s", why, taken[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_versions_any_case),
        cmocka_unit_test(test_combinations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
