/*
 * Small primitives every module needs: error strings, clocks, allocation.
 * Any thread may call these.
 */
#include "hb_common.h"

#include <stdatomic.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void hb_seterr(char *errstr, size_t errstr_size, const char *fmt, ...) {
    va_list ap;
    if (!errstr || errstr_size == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
}

int hb_parse_int(const char *s, int min, int max, int *out) {
    char *end = NULL;
    long v;
    /* digits, with a '-' at most: strtol alone would take " 5" and "+5" */
    if (!isdigit((unsigned char)s[s[0] == '-']))
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (*end || errno || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

int hb_parse_int_flag(const char *flag, const char *value, int min, int max, const char *unit,
                      int *out, char *errstr, size_t errstr_size) {
    if (hb_parse_int(value, min, max, out) == 0)
        return 0;
    hb_seterr(errstr, errstr_size, "%s: want %d..%d%s%s", flag, min, max, unit ? " " : "",
              unit ? unit : "");
    return -1;
}

/* Length of the valid UTF-8 character at p (1..4), or 0 when invalid. A NUL
 * is no continuation byte, so nothing is read past the end of the string. */
static size_t utf8_char_len(const unsigned char *p) {
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0))
            return 0; /* overlong, surrogate */
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if ((p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90))
            return 0; /* overlong, over U+10FFFF */
        return 4;
    }
    return 0;
}

void hb_utf8_scrub(char *s) {
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        size_t n = utf8_char_len(p);
        if (n)
            p += n;
        else
            *p++ = '?';
    }
}

int64_t hb_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void hb_cond_init_mono(pthread_cond_t *cond) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &ca);
    pthread_condattr_destroy(&ca);
}

void hb_cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t until_mono_ms) {
    struct timespec ts;
    int64_t wait = until_mono_ms - hb_mono_ms();
    if (wait <= 0)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += wait / 1000;
    ts.tv_nsec += (long)(wait % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    (void)pthread_cond_timedwait(cond, mu, &ts);
}

int64_t hb_mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t hb_host_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define CLOCK_UNSET INT64_MIN
/* The reference clock minus hb_ticks_ms; CLOCK_UNSET: none yet. */
static _Atomic int64_t clock_offset = CLOCK_UNSET;
static _Atomic int64_t clock_warned = 0; /* the skew last warned of, ms */
/* Under clock_mu: what the samples so far say of that offset, lo..hi, as
 * of the tick clock_at (each sample is only as good as its round trip) */
static pthread_mutex_t clock_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t clock_lo, clock_hi, clock_at;
/* How far the offset may wander per second between samples, either way
 * (ms per 1000 s): crystals drift well under 100 ppm, NTP slews at most 500 */
#define CLOCK_DRIFT_PER_1000_S 500

/* CLOCK_BOOTTIME: monotonic, and counts a suspend (a VM's too, where the
 * hypervisor says so), which CLOCK_MONOTONIC skips */
int64_t hb_ticks_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int hb_clock_referenced(void) {
    return atomic_load_explicit(&clock_offset, memory_order_relaxed) != CLOCK_UNSET;
}

int64_t hb_wall_ms(void) {
    int64_t off = atomic_load_explicit(&clock_offset, memory_order_relaxed);
    return off == CLOCK_UNSET ? hb_host_wall_ms() : hb_ticks_ms() + off;
}

int hb_clock_reference(int64_t ref_ms, int64_t mono0, int64_t mono1, int64_t host_ms,
                       int64_t *skew_ms) {
    /* the server read its clock somewhere between mono0 and mono1: the
     * offset is within lo..hi. A sample that agrees with the ones before
     * (their range, widened by the drift since) narrows it, so one over a
     * slow round trip (a database answering after 5 s, the delay on the way
     * in) does not move a reference a fast one pinned; one that cannot
     * agree (the server's clock stepped) replaces it. */
    int64_t lo = ref_ms - mono1, hi = ref_ms - mono0, off, unc, skew, mag, last;
    pthread_mutex_lock(&clock_mu);
    if (atomic_load_explicit(&clock_offset, memory_order_relaxed) != CLOCK_UNSET) {
        int64_t age = mono1 > clock_at ? mono1 - clock_at : 0;
        int64_t w = age * CLOCK_DRIFT_PER_1000_S / 1000000 + 1;
        int64_t plo = clock_lo - w, phi = clock_hi + w;
        if (plo <= hi && lo <= phi) {
            lo = lo > plo ? lo : plo;
            hi = hi < phi ? hi : phi;
        }
    }
    clock_lo = lo;
    clock_hi = hi;
    clock_at = mono1;
    off = lo + (hi - lo) / 2;
    unc = (hi - lo) / 2;
    atomic_store_explicit(&clock_offset, off, memory_order_relaxed);
    pthread_mutex_unlock(&clock_mu);
    /* host_ms was read at mono0 */
    skew = host_ms - mono0 - off;
    *skew_ms = skew;
    mag = skew < 0 ? -skew : skew;
    last = atomic_load_explicit(&clock_warned, memory_order_relaxed);
    if (mag + unc <= HB_CLOCK_SKEW_WARN_MS) { /* surely within */
        atomic_store_explicit(&clock_warned, 0, memory_order_relaxed);
        return 0;
    }
    if (mag <= HB_CLOCK_SKEW_WARN_MS + unc)
        return 0; /* cannot tell: as said before */
    if (last && skew - last < 1000 && last - skew < 1000)
        return 0; /* said already */
    atomic_store_explicit(&clock_warned, skew, memory_order_relaxed);
    return 1;
}

void hb_copy_str(char *dst, size_t dstsz, const char *src) {
    size_t n = strnlen(src, dstsz - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* y-m-d of the proleptic Gregorian calendar for days since 1970-01-01
 * (the inverse of days_from_civil below: March-based years). */
static void civil_from_days(int64_t days, int64_t *y, int *m, int *d) {
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static char *put_digits(char *o, int64_t v, int width) {
    for (int i = width - 1; i >= 0; i--, v /= 10)
        o[i] = (char)('0' + v % 10);
    return o + width;
}

/* Once per delivery (the payload's time): digits written directly, not
 * through strftime and snprintf (2,500 instructions, 1.5 % of a delivery). */
void hb_format_time(int64_t wall_ms, char *out, size_t outsz) {
    int64_t secs = wall_ms >= 0 ? wall_ms / 1000 : -((-wall_ms + 999) / 1000);
    int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    int64_t sod = secs - days * 86400, y;
    int m, d;
    char text[40], *o = text;
    civil_from_days(days, &y, &m, &d);
    if (y < 0) {
        *o++ = '-';
        y = -y;
    }
    int width = 4;
    for (int64_t big = 10000; y >= big && width < 18; big *= 10)
        width++;
    o = put_digits(o, y, width);
    *o++ = '-';
    o = put_digits(o, m, 2);
    *o++ = '-';
    o = put_digits(o, d, 2);
    *o++ = 'T';
    o = put_digits(o, sod / 3600, 2);
    *o++ = ':';
    o = put_digits(o, sod / 60 % 60, 2);
    *o++ = ':';
    o = put_digits(o, sod % 60, 2);
    *o++ = '.';
    o = put_digits(o, wall_ms - secs * 1000, 3);
    *o++ = 'Z';
    if (!outsz)
        return;
    size_t n = (size_t)(o - text) < outsz ? (size_t)(o - text) : outsz - 1;
    memcpy(out, text, n);
    out[n] = '\0';
}

/* n decimal digits at *p (advanced past them) as a number; -1 if not so. */
static int fixed_digits(const char **p, int n) {
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

/* Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar
 * (March-based years, so that February's leap day is a year's last). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    int64_t era, yoe, doy;
    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

int hb_parse_time(const char *s, int64_t *wall_ms) {
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = s;
    int y, mo, d, h, mi, sec, ms = 0, off = 0;
    if (!s)
        return -1;
    y = fixed_digits(&p, 4);
    if (y < 0 || *p++ != '-' || (mo = fixed_digits(&p, 2)) < 1 || mo > 12 || *p++ != '-' ||
        (d = fixed_digits(&p, 2)) < 1 || d > mdays[mo - 1] ||
        (mo == 2 && d == 29 && (y % 4 || (y % 100 == 0 && y % 400))))
        return -1;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return -1;
    p++;
    if ((h = fixed_digits(&p, 2)) < 0 || h > 23 || *p++ != ':' || (mi = fixed_digits(&p, 2)) < 0 ||
        mi > 59 || *p++ != ':' || (sec = fixed_digits(&p, 2)) < 0 || sec > 60)
        return -1;
    if (*p == '.') { /* milliseconds: the first three digits count */
        int n = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, n++)
            if (n < 3)
                ms = ms * 10 + (*p - '0');
        if (!n)
            return -1;
        for (; n < 3; n++)
            ms *= 10;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '+' ? 1 : -1, oh, om;
        if ((oh = fixed_digits(&p, 2)) < 0 || oh > 23 || *p++ != ':' ||
            (om = fixed_digits(&p, 2)) < 0 || om > 59)
            return -1;
        off = sign * (oh * 60 + om);
    } else {
        return -1;
    }
    if (*p)
        return -1;
    /* a leap second (:60) counts as the next minute's first */
    *wall_ms =
        ((days_from_civil(y, mo, d) * 24 + h) * 3600 + (int64_t)mi * 60 + sec - (int64_t)off * 60) *
            1000 +
        ms;
    return 0;
}

int hb_time_before(const char *a, const char *b) {
    int64_t ta, tb;
    if (hb_parse_time(a, &ta) == 0 && hb_parse_time(b, &tb) == 0)
        return ta < tb;
    return strcmp(a, b) < 0;
}

static void *hb_oom(size_t n) {
    fprintf(stderr, "hookbridge: out of memory allocating %zu bytes\n", n);
    abort();
}

void *hb_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    return p ? p : hb_oom(n);
}

void *hb_calloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    return p ? p : hb_oom(n * sz);
}

void *hb_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    return q ? q : hb_oom(n);
}

char *hb_strdup(const char *s) {
    return hb_strndup(s, strlen(s));
}

char *hb_strndup(const char *s, size_t n) {
    char *p = hb_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

int hb_duration_parse_ms(const char *s, long long *out_ms) {
    char *end;
    double v;
    size_t num, digits = 0, dots = 0;
    errno = 0;
    if (!s || !*s)
        return -1;
    /* Decimal digits with an optional fraction, nothing strtod takes beyond
     * that: no sign, space, exponent, hex, "inf" or "nan" (a NaN has no
     * integer to convert to). */
    num = strspn(s, "0123456789.");
    for (size_t i = 0; i < num; i++) {
        if (s[i] == '.')
            dots++;
        else
            digits++;
    }
    if (digits == 0 || dots > 1)
        return -1;
    v = strtod(s, &end);
    if (errno || end != s + num || v < 0)
        return -1;
    if (!*end || !strcmp(end, "ms"))
        ;
    else if (!strcmp(end, "s"))
        v *= 1000;
    else if (!strcmp(end, "m"))
        v *= 60 * 1000;
    else if (!strcmp(end, "h"))
        v *= 3600 * 1000;
    else if (!strcmp(end, "d"))
        v *= 86400 * 1000;
    else
        return -1;
    if (v > 9.0e15)
        return -1;
    *out_ms = (long long)v;
    return 0;
}

void hb_poke(int fd) {
    (void)!write(fd, "w", 1);
}

static atomic_size_t held_bytes;

void hb_held_add(size_t n) {
    atomic_fetch_add_explicit(&held_bytes, n, memory_order_relaxed);
}

void hb_held_sub(size_t n) {
    atomic_fetch_sub_explicit(&held_bytes, n, memory_order_relaxed);
}

size_t hb_held_bytes(void) {
    return atomic_load_explicit(&held_bytes, memory_order_relaxed);
}
