/* Metrics registry: exposition text, families, histograms, concurrent updates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <pthread.h>

#include "hb_log.h"
#include "hb_metrics.h"

static int teardown(void **state) {
    hb_metrics_reset();
    return 0;
}

static char *render(void) {
    size_t len = 0;
    char *text = hb_metrics_render(&len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

static size_t count_substr(const char *hay, const char *needle) {
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static void empty_registry_renders_empty_text(void **state) {
    char *text = render();
    assert_string_equal(text, "");
    free(text);
}

static void counters_and_gauges_render_exactly(void **state) {
    hb_metric_t *ok = hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"delivered\"",
                                         "Deliveries by final outcome.");
    hb_metric_t *bad = hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"failed\"",
                                          "Deliveries by final outcome.");
    hb_metric_t *inflight = hb_metrics_gauge("hookbridge_in_flight", NULL,
                                             "HTTP requests in flight.\nBackslash \\ too.");
    assert_non_null(ok);
    assert_non_null(bad);
    assert_ptr_not_equal(ok, bad);
    /* the same series again is the same object */
    assert_ptr_equal(
        ok, hb_metrics_counter("hookbridge_deliveries_total", "outcome=\"delivered\"", "ignored"));
    hb_metric_inc(ok);
    hb_metric_inc(ok);
    hb_metric_add(bad, 3);
    hb_metric_add(bad, -1); /* counters never go down */
    hb_metric_set(inflight, 7);
    hb_metric_add(inflight, -2.5);
    assert_true(hb_metric_value(ok) == 2.0);
    assert_true(hb_metric_value(bad) == 3.0);
    assert_true(hb_metric_value(inflight) == 4.5);
    char *text = render();
    assert_string_equal(
        text, "# HELP hookbridge_deliveries_total Deliveries by final outcome.\n"
              "# TYPE hookbridge_deliveries_total counter\n"
              "hookbridge_deliveries_total{outcome=\"delivered\"} 2\n"
              "hookbridge_deliveries_total{outcome=\"failed\"} 3\n"
              "# HELP hookbridge_in_flight HTTP requests in flight.\\nBackslash \\\\ too.\n"
              "# TYPE hookbridge_in_flight gauge\n"
              "hookbridge_in_flight 4.5\n");
    free(text);
}

static void histogram_renders_cumulative_buckets(void **state) {
    static const double bounds[] = {0.005, 0.1, 1};
    hb_metric_t *h = hb_metrics_histogram("hookbridge_attempt_seconds", "kind=\"http\"",
                                          "Delivery attempt duration.", bounds, 3);
    hb_metric_t *h2 = hb_metrics_histogram("hookbridge_attempt_seconds", "kind=\"verify\"",
                                           "Delivery attempt duration.", bounds, 3);
    hb_metric_t *plain = hb_metrics_histogram("hookbridge_batch_size", NULL, "Events per request.",
                                              (const double[]){1, 10}, 2);
    assert_non_null(h);
    assert_non_null(h2);
    assert_non_null(plain);
    hb_metric_observe(h, 0.001);
    hb_metric_observe(h, 0.1); /* le is inclusive */
    hb_metric_observe(h, 0.5);
    hb_metric_observe(h, 30);
    hb_metric_observe(plain, 4);
    assert_true(hb_metric_value(h) == 4.0);
    char *text = render();
    assert_string_equal(text, "# HELP hookbridge_attempt_seconds Delivery attempt duration.\n"
                              "# TYPE hookbridge_attempt_seconds histogram\n"
                              "hookbridge_attempt_seconds_bucket{kind=\"http\",le=\"0.005\"} 1\n"
                              "hookbridge_attempt_seconds_bucket{kind=\"http\",le=\"0.1\"} 2\n"
                              "hookbridge_attempt_seconds_bucket{kind=\"http\",le=\"1\"} 3\n"
                              "hookbridge_attempt_seconds_bucket{kind=\"http\",le=\"+Inf\"} 4\n"
                              "hookbridge_attempt_seconds_sum{kind=\"http\"} 30.601\n"
                              "hookbridge_attempt_seconds_count{kind=\"http\"} 4\n"
                              "hookbridge_attempt_seconds_bucket{kind=\"verify\",le=\"0.005\"} 0\n"
                              "hookbridge_attempt_seconds_bucket{kind=\"verify\",le=\"0.1\"} 0\n"
                              "hookbridge_attempt_seconds_bucket{kind=\"verify\",le=\"1\"} 0\n"
                              "hookbridge_attempt_seconds_bucket{kind=\"verify\",le=\"+Inf\"} 0\n"
                              "hookbridge_attempt_seconds_sum{kind=\"verify\"} 0\n"
                              "hookbridge_attempt_seconds_count{kind=\"verify\"} 0\n"
                              "# HELP hookbridge_batch_size Events per request.\n"
                              "# TYPE hookbridge_batch_size histogram\n"
                              "hookbridge_batch_size_bucket{le=\"1\"} 0\n"
                              "hookbridge_batch_size_bucket{le=\"10\"} 1\n"
                              "hookbridge_batch_size_bucket{le=\"+Inf\"} 1\n"
                              "hookbridge_batch_size_sum 4\n"
                              "hookbridge_batch_size_count 1\n");
    free(text);
}

static void misuse_returns_null_and_updates_ignore_null(void **state) {
    hb_log_level = HB_LOG_ERROR + 1; /* keep the expected error lines out of the output */
    assert_null(hb_metrics_counter("9starts_with_digit", NULL, "x"));
    assert_null(hb_metrics_counter("has-dash", NULL, "x"));
    assert_null(hb_metrics_counter("", NULL, "x"));
    assert_non_null(hb_metrics_counter("hookbridge_x_total", NULL, "x"));
    assert_null(hb_metrics_gauge("hookbridge_x_total", "a=\"b\"", "x")); /* other type */
    assert_non_null(hb_metrics_histogram("hookbridge_h", NULL, "h", (const double[]){1, 2}, 2));
    assert_null(hb_metrics_histogram("hookbridge_h", "a=\"b\"", "h", (const double[]){1, 3}, 2));
    assert_null(hb_metrics_histogram("hookbridge_h2", NULL, "h", (const double[]){2, 1}, 2));
    hb_log_level = HB_LOG_INFO;
    hb_metric_inc(NULL);
    hb_metric_add(NULL, 1);
    hb_metric_set(NULL, 1);
    hb_metric_observe(NULL, 1);
    assert_true(hb_metric_value(NULL) == 0.0);
    char *text = render();
    assert_int_equal(count_substr(text, "# TYPE hookbridge_x_total "), 1);
    assert_int_equal(count_substr(text, "# TYPE "), 2);
    free(text);
}

enum { THREADS = 4, PER_THREAD = 100000 };

typedef struct {
    hb_metric_t *c, *g, *h;
} shared_t;

static void *hammer(void *arg) {
    shared_t *s = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        hb_metric_inc(s->c);
        hb_metric_add(s->g, 0.5);
        hb_metric_observe(s->h, (double)(i % 3));
    }
    return NULL;
}

static void *render_loop(void *arg) {
    for (int i = 0; i < 50; i++) {
        char *text = hb_metrics_render(NULL);
        assert_non_null(strstr(text, "hookbridge_hammer_total"));
        free(text);
    }
    return NULL;
}

static void concurrent_updates_are_not_lost(void **state) {
    shared_t s = {
        hb_metrics_counter("hookbridge_hammer_total", NULL, "c"),
        hb_metrics_gauge("hookbridge_hammer_gauge", NULL, "g"),
        hb_metrics_histogram("hookbridge_hammer_hist", NULL, "h", (const double[]){0, 1}, 2),
    };
    pthread_t th[THREADS + 1];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &s), 0);
    assert_int_equal(pthread_create(&th[THREADS], NULL, render_loop, NULL), 0);
    for (int i = 0; i <= THREADS; i++)
        pthread_join(th[i], NULL);
    assert_true(hb_metric_value(s.c) == (double)THREADS * PER_THREAD);
    assert_true(hb_metric_value(s.g) == 0.5 * THREADS * PER_THREAD);
    assert_true(hb_metric_value(s.h) == (double)THREADS * PER_THREAD);
    char *text = render();
    char want[128];
    /* i % 3 == 0 falls in le="0": a third of the observations, rounded up */
    snprintf(want, sizeof(want), "hookbridge_hammer_hist_bucket{le=\"0\"} %d\n",
             THREADS * ((PER_THREAD + 2) / 3));
    assert_non_null(strstr(text, want));
    snprintf(want, sizeof(want), "hookbridge_hammer_hist_count %d\n", THREADS * PER_THREAD);
    assert_non_null(strstr(text, want));
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(empty_registry_renders_empty_text, teardown),
        cmocka_unit_test_teardown(counters_and_gauges_render_exactly, teardown),
        cmocka_unit_test_teardown(histogram_renders_cumulative_buckets, teardown),
        cmocka_unit_test_teardown(misuse_returns_null_and_updates_ignore_null, teardown),
        cmocka_unit_test_teardown(concurrent_updates_are_not_lost, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
