/*
 * Prometheus metrics: counters, gauges and histograms registered once at
 * start-up (main thread, before other threads exist), updated lock-free from
 * any thread (C11 atomics), rendered in the text exposition format by the
 * health server's thread. Names follow Prometheus conventions
 * (hookbridge_..._total, _seconds). Label values are fixed strings chosen by
 * the code, never user data or secrets.
 */
#ifndef HB_METRICS_H
#define HB_METRICS_H

#include "hb_common.h"

typedef struct hb_metric_s hb_metric_t;

/* labels: NULL or a Prometheus label set body, e.g. "outcome=\"delivered\"".
 * Registering the same name again with other labels adds a series to the
 * same family (one HELP/TYPE). */
hb_metric_t *hb_metrics_counter(const char *name, const char *labels, const char *help);
hb_metric_t *hb_metrics_gauge(const char *name, const char *labels, const char *help);
/* Bucket upper bounds ascending; +Inf is implicit. */
hb_metric_t *hb_metrics_histogram(const char *name, const char *labels, const char *help,
                                  const double *bounds, size_t nbounds);

void hb_metric_inc(hb_metric_t *m);               /* counter += 1 */
void hb_metric_add(hb_metric_t *m, double v);     /* counter/gauge += v */
void hb_metric_set(hb_metric_t *m, double v);     /* gauge = v */
void hb_metric_observe(hb_metric_t *m, double v); /* histogram */
double hb_metric_value(const hb_metric_t *m);     /* counter/gauge, for tests */

/* Text exposition of everything registered; malloc'd, caller frees. */
char *hb_metrics_render(size_t *len);

/* Frees the registry (at exit, after the health server stopped). */
void hb_metrics_reset(void);

#endif
