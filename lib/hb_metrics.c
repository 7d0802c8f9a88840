/*
 * Prometheus metrics registry.
 *
 * The design is simple: one process-wide list of families (name, help, type),
 * each with a list of series (a label-set body and its values). Registration
 * happens at start-up in the main thread; it takes a mutex anyway, so a late
 * registration and the health server's render never see a half-linked list.
 * Updates never lock: a counter or gauge is a double kept as its bit pattern
 * in an _Atomic uint64_t (compare-and-swap loops add to it), and a histogram
 * keeps one atomic count per bucket plus an atomic sum. Render cumulates the
 * buckets, so _count always equals the +Inf bucket even while observations
 * race with it. A series pointer stays valid until hb_metrics_reset(), which
 * runs at exit after every thread that updates or renders has stopped.
 *
 * Invalid registrations (bad name, one name with two types) are programming
 * errors: they are logged and return NULL, and every update accepts NULL as a
 * no-op so a mistake costs a metric, not the process.
 */
#include "hb_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_buf.h"
#include "hb_log.h"

typedef enum { HB_METRIC_COUNTER, HB_METRIC_GAUGE, HB_METRIC_HISTOGRAM } hb_metric_type_t;

static const char *const type_names[] = {"counter", "gauge", "histogram"};

typedef struct hb_family_s hb_family_t;

struct hb_metric_s {
    hb_family_t *family;
    char *labels;              /* label-set body, "" when none */
    _Atomic uint64_t value;    /* counter/gauge value; histogram sum (double bits) */
    _Atomic uint64_t *buckets; /* histogram: nbounds + 1 (last is +Inf), not cumulative */
    hb_metric_t *next;
};

struct hb_family_s {
    char *name;
    char *help;
    hb_metric_type_t type;
    double *bounds; /* histogram */
    size_t nbounds;
    hb_metric_t *series, **series_tail;
    hb_family_t *next;
};

static pthread_mutex_t hb_metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static hb_family_t *hb_families;
static hb_family_t **hb_families_tail = &hb_families;

static uint64_t dbl_bits(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static double bits_dbl(uint64_t u) {
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static void atomic_add_double(_Atomic uint64_t *a, double v) {
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, dbl_bits(bits_dbl(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

static int valid_name(const char *s) {
    if (!s || !*s || (*s >= '0' && *s <= '9'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == ':'))
            return 0;
    return 1;
}

static hb_family_t *family_find(const char *name) {
    for (hb_family_t *f = hb_families; f; f = f->next)
        if (!strcmp(f->name, name))
            return f;
    return NULL;
}

static int same_bounds(const hb_family_t *f, const double *bounds, size_t nbounds) {
    if (f->nbounds != nbounds)
        return 0;
    for (size_t i = 0; i < nbounds; i++)
        if (f->bounds[i] != bounds[i])
            return 0;
    return 1;
}

static hb_metric_t *metric_register(hb_metric_type_t type, const char *name, const char *labels,
                                    const char *help, const double *bounds, size_t nbounds) {
    hb_family_t *f;
    hb_metric_t *m = NULL;

    if (!labels)
        labels = "";
    if (!valid_name(name)) {
        hb_error("metrics: invalid metric name \"%s\"", name ? name : "(null)");
        return NULL;
    }
    if (type == HB_METRIC_HISTOGRAM) {
        for (size_t i = 0; i < nbounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
                hb_error("metrics: %s: bucket bounds must be finite and ascending", name);
                return NULL;
            }
    }

    pthread_mutex_lock(&hb_metrics_lock);
    f = family_find(name);
    if (f &&
        (f->type != type || (type == HB_METRIC_HISTOGRAM && !same_bounds(f, bounds, nbounds)))) {
        pthread_mutex_unlock(&hb_metrics_lock);
        hb_error("metrics: %s registered again with another type or buckets", name);
        return NULL;
    }
    if (!f) {
        f = hb_calloc(1, sizeof(*f));
        f->name = hb_strdup(name);
        f->help = hb_strdup(help ? help : "");
        f->type = type;
        if (type == HB_METRIC_HISTOGRAM && nbounds) {
            f->bounds = hb_malloc(nbounds * sizeof(*bounds));
            memcpy(f->bounds, bounds, nbounds * sizeof(*bounds));
            f->nbounds = nbounds;
        }
        f->series_tail = &f->series;
        *hb_families_tail = f;
        hb_families_tail = &f->next;
    }
    for (m = f->series; m; m = m->next)
        if (!strcmp(m->labels, labels))
            break; /* the same series again: hand out the existing one */
    if (!m) {
        m = hb_calloc(1, sizeof(*m));
        m->family = f;
        m->labels = hb_strdup(labels);
        atomic_init(&m->value, dbl_bits(0.0));
        if (type == HB_METRIC_HISTOGRAM) {
            m->buckets = hb_calloc(f->nbounds + 1, sizeof(*m->buckets));
            for (size_t i = 0; i <= f->nbounds; i++)
                atomic_init(&m->buckets[i], 0);
        }
        *f->series_tail = m;
        f->series_tail = &m->next;
    }
    pthread_mutex_unlock(&hb_metrics_lock);
    return m;
}

hb_metric_t *hb_metrics_counter(const char *name, const char *labels, const char *help) {
    return metric_register(HB_METRIC_COUNTER, name, labels, help, NULL, 0);
}

hb_metric_t *hb_metrics_gauge(const char *name, const char *labels, const char *help) {
    return metric_register(HB_METRIC_GAUGE, name, labels, help, NULL, 0);
}

hb_metric_t *hb_metrics_histogram(const char *name, const char *labels, const char *help,
                                  const double *bounds, size_t nbounds) {
    return metric_register(HB_METRIC_HISTOGRAM, name, labels, help, bounds, nbounds);
}

void hb_metric_inc(hb_metric_t *m) {
    hb_metric_add(m, 1.0);
}

void hb_metric_add(hb_metric_t *m, double v) {
    if (!m || m->family->type == HB_METRIC_HISTOGRAM)
        return;
    if (m->family->type == HB_METRIC_COUNTER && !(v >= 0)) /* counters only go up */
        return;
    atomic_add_double(&m->value, v);
}

void hb_metric_set(hb_metric_t *m, double v) {
    if (!m || m->family->type != HB_METRIC_GAUGE)
        return;
    atomic_store_explicit(&m->value, dbl_bits(v), memory_order_relaxed);
}

void hb_metric_observe(hb_metric_t *m, double v) {
    size_t i;
    const hb_family_t *f;
    if (!m || m->family->type != HB_METRIC_HISTOGRAM || isnan(v))
        return;
    f = m->family;
    for (i = 0; i < f->nbounds && v > f->bounds[i]; i++)
        ;
    atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
    atomic_add_double(&m->value, v);
}

static uint64_t histogram_count(const hb_metric_t *m) {
    uint64_t n = 0;
    for (size_t i = 0; i <= m->family->nbounds; i++)
        n += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
    return n;
}

double hb_metric_value(const hb_metric_t *m) {
    if (!m)
        return 0.0;
    if (m->family->type == HB_METRIC_HISTOGRAM)
        return (double)histogram_count(m);
    return bits_dbl(atomic_load_explicit(&m->value, memory_order_relaxed));
}

/* ---- rendering --------------------------------------------------------- */

/* HELP text escapes backslash and newline. */
static void text_help(hb_buf_t *t, const char *s) {
    for (; *s; s++) {
        if (*s == '\\')
            hb_buf_put(t, "\\\\", 2);
        else if (*s == '\n')
            hb_buf_put(t, "\\n", 2);
        else
            hb_buf_put(t, s, 1);
    }
}

/* Shortest text that reads back as the same double; Prometheus spellings of
 * the special values. */
static void format_double(double v, char *out, size_t outsz) {
    if (isnan(v)) {
        snprintf(out, outsz, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(out, outsz, "%s", v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, outsz, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* name{labels[,extra]} value */
static void text_sample(hb_buf_t *t, const char *name, const char *suffix, const char *labels,
                        const char *extra, const char *value) {
    hb_buf_puts(t, name);
    hb_buf_puts(t, suffix);
    if (*labels || extra) {
        hb_buf_puts(t, "{");
        hb_buf_puts(t, labels);
        if (extra) {
            if (*labels)
                hb_buf_puts(t, ",");
            hb_buf_puts(t, extra);
        }
        hb_buf_puts(t, "}");
    }
    hb_buf_puts(t, " ");
    hb_buf_puts(t, value);
    hb_buf_puts(t, "\n");
}

static void render_histogram(hb_buf_t *t, const hb_family_t *f, const hb_metric_t *m) {
    char le[64], val[64];
    uint64_t cum = 0;
    for (size_t i = 0; i <= f->nbounds; i++) {
        cum += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
        if (i < f->nbounds) {
            char b[32];
            format_double(f->bounds[i], b, sizeof(b));
            snprintf(le, sizeof(le), "le=\"%s\"", b);
        } else {
            snprintf(le, sizeof(le), "le=\"+Inf\"");
        }
        snprintf(val, sizeof(val), "%llu", (unsigned long long)cum);
        text_sample(t, f->name, "_bucket", m->labels, le, val);
    }
    format_double(bits_dbl(atomic_load_explicit(&m->value, memory_order_relaxed)), val,
                  sizeof(val));
    text_sample(t, f->name, "_sum", m->labels, NULL, val);
    snprintf(val, sizeof(val), "%llu", (unsigned long long)cum);
    text_sample(t, f->name, "_count", m->labels, NULL, val);
}

char *hb_metrics_render(size_t *len) {
    hb_buf_t t = {0};
    hb_buf_reserve(&t, 0);
    pthread_mutex_lock(&hb_metrics_lock);
    for (const hb_family_t *f = hb_families; f; f = f->next) {
        hb_buf_printf(&t, "# HELP %s ", f->name);
        text_help(&t, f->help);
        hb_buf_printf(&t, "\n# TYPE %s %s\n", f->name, type_names[f->type]);
        for (const hb_metric_t *m = f->series; m; m = m->next) {
            if (f->type == HB_METRIC_HISTOGRAM) {
                render_histogram(&t, f, m);
            } else {
                char val[64];
                format_double(hb_metric_value(m), val, sizeof(val));
                text_sample(&t, f->name, "", m->labels, NULL, val);
            }
        }
    }
    pthread_mutex_unlock(&hb_metrics_lock);
    if (len)
        *len = t.len;
    return t.p;
}

void hb_metrics_reset(void) {
    hb_family_t *f, *fnext;
    pthread_mutex_lock(&hb_metrics_lock);
    for (f = hb_families; f; f = fnext) {
        hb_metric_t *m, *mnext;
        fnext = f->next;
        for (m = f->series; m; m = mnext) {
            mnext = m->next;
            free(m->labels);
            free(m->buckets);
            free(m);
        }
        free(f->name);
        free(f->help);
        free(f->bounds);
        free(f);
    }
    hb_families = NULL;
    hb_families_tail = &hb_families;
    pthread_mutex_unlock(&hb_metrics_lock);
}
