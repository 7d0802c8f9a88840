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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_versions_any_case),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
