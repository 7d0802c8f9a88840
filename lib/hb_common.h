/*
 * Conventions shared by every module of libhookbridge.
 *
 * Error contract: a function that can fail returns 0 on success and a
 * negative value on failure, and writes a one-line, secret-free reason into
 * the caller's (errstr, errstr_size). Such functions are HB_MUSTCHECK; a result
 * ignored on purpose is cast to (void). Only a program's main() decides to exit.
 */
#ifndef HB_COMMON_H
#define HB_COMMON_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define HB_MUSTCHECK __attribute__((warn_unused_result))
#define HB_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define HB_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#ifndef HB_VERSION
#define HB_VERSION "0.1.0"
#endif

/* Writes a formatted reason into errstr (always NUL-terminated, truncated). */
void hb_seterr(char *errstr, size_t errstr_size, const char *fmt, ...) HB_PRINTF(3, 4);

/* Whole decimal number in [min, max], nothing else in s; 0 or -1. */
int hb_parse_int(const char *s, int min, int max, int *out) HB_MUSTCHECK;

/* hb_parse_int() of a command-line flag's value, with the programs' one
 * wording of a refusal: "<flag>: want <min>..<max>", followed by " <unit>"
 * when unit is not NULL ("seconds"). The value itself is not repeated.
 * *out is left alone on failure. */
int hb_parse_int_flag(const char *flag, const char *value, int min, int max, const char *unit,
                      int *out, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* Replaces, in place, every byte of s that is not part of a valid UTF-8
 * character (RFC 3629: no overlong forms, surrogates or code points over
 * U+10FFFF) with '?', so that s can go into a JSON string or a text column. */
void hb_utf8_scrub(char *s);

/* Parses "250ms", "5s", "2m", "1h", "1d" or a bare number of milliseconds;
 * the number is decimal, with an optional fraction ("1.5s"). */
int hb_duration_parse_ms(const char *s, long long *out_ms) HB_MUSTCHECK;

/* Monotonic and wall clocks, in milliseconds. */
int64_t hb_mono_ms(void);

/* A condition variable timed on the monotonic clock (hb_mono_ms), and a wait
 * on it until until_mono_ms (or a signal, or a spurious wake-up: callers
 * re-check their predicate). The mutex is held on entry and on return. */
void hb_cond_init_mono(pthread_cond_t *cond);
void hb_cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t until_mono_ms);
int64_t hb_mono_us(void); /* monotonic microseconds, for benchmarks */

/* The time every process of a deployment judges a time written by another
 * by (a retry's due time, a secret's expiry, a deactivation, a webhook's
 * timestamp): PostgreSQL's clock as this host's monotonic clock advances it
 * (hb_ticks_ms), from the last hb_clock_reference (each database connection
 * takes one), or this host's wall clock until the first. So a host whose clock is off by
 * minutes, or that NTP steps while it runs, neither sends a retry before it
 * is due nor holds it, nor signs with a secret past its grace. */
int64_t hb_wall_ms(void);
int64_t hb_host_wall_ms(void); /* this host's CLOCK_REALTIME */
int64_t hb_ticks_ms(void);     /* what advances the reference: CLOCK_BOOTTIME */
int hb_clock_referenced(void); /* 1 once hb_wall_ms is PostgreSQL's clock */
/* PostgreSQL said ref_ms between mono0 and mono1 (hb_ticks_ms), while this
 * host's wall clock read host_ms (at mono0): takes it as the reference,
 * narrowed by the samples before when it agrees with them (a slow round
 * trip's sample moves no reference a fast one pinned), replacing them when
 * it cannot (the server's clock stepped). *skew_ms: how far this host's
 * clock is ahead (< 0: behind). 1 when that is surely more than
 * HB_CLOCK_SKEW_WARN_MS and not said already (within a second): the
 * caller warns; a sample too uncertain to tell changes nothing. */
#define HB_CLOCK_SKEW_WARN_MS 2000
int hb_clock_reference(int64_t ref_ms, int64_t mono0, int64_t mono1, int64_t host_ms,
                       int64_t *skew_ms);
/* Copies src into dst of dstsz bytes (dstsz > 0), cut to fit and always
 * terminated, as snprintf(dst, dstsz, "%s", src) does, without its format
 * machinery (about 500 instructions): for copies made per delivery. */
void hb_copy_str(char *dst, size_t dstsz, const char *src);
/* Writes one byte to fd, a non-blocking pipe another thread's loop polls
 * (a full pipe wakes it already: the error is ignored). */
void hb_poke(int fd);

/* RFC 3339 UTC timestamp with milliseconds ("2026-11-29T02:50:00.123Z").
 * out must hold at least 25 bytes. */
void hb_format_time(int64_t wall_ms, char *out, size_t outsz);
/* An RFC 3339 date-time (2026-12-06T10:00:00Z; 'T', 't' or a blank between
 * date and time; a fraction, of which milliseconds count; Z or an offset
 * such as +01:00) as milliseconds since the epoch. 0, or -1 when s is not
 * one (a field out of range, February 30th and the like included). */
int hb_parse_time(const char *s, int64_t *wall_ms);
/* Whether RFC 3339 time a is before b, by the instants they name (two
 * offsets, or fractions of different lengths, do not compare as text); as
 * text when either is not such a time. */
int hb_time_before(const char *a, const char *b);

/* Allocation that never returns NULL: aborts the process on exhaustion,
 * because no caller could do better than crash-and-restart at that point. */
void *hb_malloc(size_t n);
void *hb_calloc(size_t n, size_t sz);
void *hb_realloc(void *p, size_t n);
char *hb_strdup(const char *s);
char *hb_strndup(const char *s, size_t n);

/* Bytes of payloads unfinished work holds in memory (rendered bodies, their
 * copies handed to the HTTP engine, messages waiting for the broker): what
 * max_pending_bytes bounds. Any thread. */
void hb_held_add(size_t n);
void hb_held_sub(size_t n);
size_t hb_held_bytes(void);

#endif
