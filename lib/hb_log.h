/*
 * Structured logging: one JSON object per line on stdout.
 *
 *   hb_log(HB_LOG_WARN, HB_KV("delivery_id", did, "subscription_id", sid),
 *          "attempt failed: %s", reason);
 *
 * prints {"time":"...","level":"warn","component":"dispatcher",
 *         "msg":"attempt failed: ...","delivery_id":"...","subscription_id":"..."}
 *
 * Below the configured level nothing is formatted. Each line is written with
 * one write(2), so lines from librdkafka's and curl's threads never interleave.
 * Any thread may log. Never pass a secret (auth value, signing secret,
 * database password) as a field or in the message.
 */
#ifndef HB_LOG_H
#define HB_LOG_H

#include "hb_common.h"

typedef enum {
    HB_LOG_DEBUG = 0,
    HB_LOG_INFO = 1,
    HB_LOG_WARN = 2,
    HB_LOG_ERROR = 3,
} hb_log_level_t;

extern volatile hb_log_level_t hb_log_level;

/* NULL-terminated key, value, key, value ... list built in place. */
#define HB_KV(...) ((const char *const[]){__VA_ARGS__, NULL})

#define hb_log(lvl, kv, ...)                                                                       \
    do {                                                                                           \
        if ((lvl) >= hb_log_level)                                                                 \
            hb_log_emit((lvl), (kv), __VA_ARGS__);                                                 \
    } while (0)

#define hb_debug(...) hb_log(HB_LOG_DEBUG, NULL, __VA_ARGS__)
#define hb_info(...) hb_log(HB_LOG_INFO, NULL, __VA_ARGS__)
#define hb_warn(...) hb_log(HB_LOG_WARN, NULL, __VA_ARGS__)
#define hb_error(...) hb_log(HB_LOG_ERROR, NULL, __VA_ARGS__)

/* Sets the component name on every line ("dispatcher") and the level. */
void hb_log_init(const char *component, hb_log_level_t level);
/* Lines go to stderr instead of stdout (before any is written): for a
 * command whose stdout is its output (hookbridge-producer --print). */
void hb_log_to_stderr(void);

/* "debug" | "info" | "warn" | "error" (also "warning"). */
int hb_log_level_parse(const char *s, hb_log_level_t *out) HB_MUSTCHECK;

void hb_log_emit(hb_log_level_t lvl, const char *const *kv, const char *fmt, ...) HB_PRINTF(3, 4);

/* Lines that come once per delivery (an attempt failed, a dead letter): an
 * endpoint failing at thousands of deliveries a second must not flood the
 * log, whose reader wants the pattern (the delivery log has every one).
 * Below debug, at most HB_LOG_LIMIT_LINES lines of one limit are written per
 * HB_LOG_LIMIT_WINDOW_MS; the others are counted, and once the window is over
 * one line at their level says how many were left out (hb_log_limits_flush,
 * or the next line of that limit). At debug every line is written. Any
 * thread. So a condition that lasts (an endpoint down, a producer writing
 * garbage) costs a limit about a dozen lines per half minute, whatever the
 * traffic: the first lines say why, the summary how many more (before,
 * 50 per 10 s: 5 lines/s of one kind, 18,000 an hour). */
#define HB_LOG_LIMIT_LINES 10
#define HB_LOG_LIMIT_WINDOW_MS 30000
/* With a key (hb_log_limited_for: the subscription), the first line of each
 * key in a window is written even past HB_LOG_LIMIT_LINES, for up to this
 * many keys: one endpoint failing thousands of deliveries does not hide that
 * another one fails too. Few: the first of each key comes again every window
 * while its fault lasts, so 1,000 tenants failing at once wrote 266 lines of
 * a kind per 30 s at 256 (9 lines/s, more than the limit's 10 per 30 s were
 * to end); at 20 a kind writes at most 30 lines and a summary per 30 s. */
#define HB_LOG_LIMIT_KEYS 20

typedef struct hb_log_limit_s {
    const char *what; /* names the lines in the summary, e.g. "\"attempt N failed\"" */
    const char *note; /* ends the summary: where the lines left out are counted */
    int64_t window_ms;
    unsigned logged;
    unsigned long long left_out;
    hb_log_level_t lvl;
    int registered;
    struct hb_log_limit_s *next;
    unsigned keys_cnt;                /* keys seen in this window */
    uint64_t keys[HB_LOG_LIMIT_KEYS]; /* their hashes */
} hb_log_limit_t;

/* The deliveries' lines: the summary names the delivery log. */
#define HB_LOG_LIMIT(what)                                                                         \
    HB_LOG_LIMIT_NOTE(what, ", and the first of each subscription; the delivery log has every "    \
                            "delivery and attempt")
/* note follows "at most 10 per 30 s are" in the summary. */
#define HB_LOG_LIMIT_NOTE(what, note)                                                              \
    {                                                                                              \
        (what), (note), 0, 0, 0, HB_LOG_DEBUG, 0, NULL, 0, {                                       \
            0                                                                                      \
        }                                                                                          \
    }

#define hb_log_limited(lim, lvl, kv, ...)                                                          \
    do {                                                                                           \
        if ((lvl) >= hb_log_level && hb_log_admit((lim), (lvl)))                                   \
            hb_log_emit((lvl), (kv), __VA_ARGS__);                                                 \
    } while (0)

#define hb_log_limited_for(lim, key, lvl, kv, ...)                                                 \
    do {                                                                                           \
        if ((lvl) >= hb_log_level && hb_log_admit_for((lim), (key), (lvl)))                        \
            hb_log_emit((lvl), (kv), __VA_ARGS__);                                                 \
    } while (0)

/* 1 when a line of lim may be written now (counted either way). */
int hb_log_admit(hb_log_limit_t *lim, hb_log_level_t lvl);
/* The same, and 1 for the first line of key in the window (key may be NULL). */
int hb_log_admit_for(hb_log_limit_t *lim, const char *key, hb_log_level_t lvl);
/* Says, for every limit whose window is over, how many lines it left out. */
void hb_log_limits_flush(void);
/* The same for every limit that left lines out, its window over or not: at
 * the end of a run, so the count of the last window is not lost. */
void hb_log_limits_flush_all(void);

/* Appends s to buf as a JSON string body (no quotes), escaping as needed.
 * Returns the new length; never writes past bufsz-1. Shared with the
 * metrics and payload code that need JSON escaping without jansson. */
size_t hb_json_escape(char *buf, size_t len, size_t bufsz, const char *s);

#endif
