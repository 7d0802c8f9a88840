/*
 * JSON-lines logger.
 *
 * The design is simple: a line is built in a stack buffer (truncated at 8 KiB,
 * marked with "truncated":true) and written with a single write(2) to stdout,
 * which POSIX keeps whole for pipes up to PIPE_BUF and which in practice keeps
 * lines intact for the container log collector. There is no lock for a line:
 * the level and component are set once at start-up, before threads exist
 * (the limits of repeated lines have one, limits_mu).
 */
#include "hb_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "hb_hash.h"

volatile hb_log_level_t hb_log_level = HB_LOG_INFO;
static char hb_log_component[32] = "hookbridge";

static const char *const level_names[] = {"debug", "info", "warn", "error"};

static int hb_log_fd = STDOUT_FILENO;

void hb_log_to_stderr(void) {
    hb_log_fd = STDERR_FILENO;
}

void hb_log_init(const char *component, hb_log_level_t level) {
    snprintf(hb_log_component, sizeof(hb_log_component), "%s", component);
    hb_log_level = level;
}

int hb_log_level_parse(const char *s, hb_log_level_t *out) {
    if (!strcasecmp(s, "debug"))
        *out = HB_LOG_DEBUG;
    else if (!strcasecmp(s, "info"))
        *out = HB_LOG_INFO;
    else if (!strcasecmp(s, "warn") || !strcasecmp(s, "warning"))
        *out = HB_LOG_WARN;
    else if (!strcasecmp(s, "error"))
        *out = HB_LOG_ERROR;
    else
        return -1;
    return 0;
}

size_t hb_json_escape(char *buf, size_t len, size_t bufsz, const char *s) {
    static const char hex[] = "0123456789abcdef";
    for (; *s && len + 7 < bufsz; s++) {
        unsigned char c = (unsigned char)*s;
        switch (c) {
        case '"':
            buf[len++] = '\\';
            buf[len++] = '"';
            break;
        case '\\':
            buf[len++] = '\\';
            buf[len++] = '\\';
            break;
        case '\n':
            buf[len++] = '\\';
            buf[len++] = 'n';
            break;
        case '\r':
            buf[len++] = '\\';
            buf[len++] = 'r';
            break;
        case '\t':
            buf[len++] = '\\';
            buf[len++] = 't';
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                memcpy(buf + len, "\\u00", 4);
                buf[len + 4] = hex[c >> 4];
                buf[len + 5] = hex[c & 15];
                len += 6;
            } else {
                buf[len++] = (char)c;
            }
        }
    }
    if (len < bufsz)
        buf[len] = '\0';
    return len;
}

static size_t append(char *buf, size_t len, size_t bufsz, const char *s) {
    size_t n = strlen(s);
    if (len + n >= bufsz)
        n = len + 1 < bufsz ? bufsz - len - 1 : 0;
    memcpy(buf + len, s, n);
    len += n;
    buf[len] = '\0';
    return len;
}

/* Appends "key":"value" (or just "value" when key is NULL), always closing
 * the quote: escaping stops at cap, and the reserve past cap holds the rest. */
static size_t add_pair(char *line, size_t len, size_t cap, const char *key, const char *v) {
    if (key) {
        len = append(line, len, cap, ",\"");
        len = hb_json_escape(line, len, cap, key);
        len = append(line, len, cap, "\":");
    }
    len = append(line, len, cap + 2, "\"");
    len = hb_json_escape(line, len, cap, v);
    return append(line, len, cap + 4, "\"");
}

void hb_log_emit(hb_log_level_t lvl, const char *const *kv, const char *fmt, ...) {
    char line[8192], msg[4096], ts[32];
    size_t len = 0, cap = sizeof(line) - 40; /* reserve: quotes, "truncated", "}\n" */
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    hb_format_time(hb_wall_ms(), ts, sizeof(ts));

    len = append(line, len, cap, "{\"time\":\"");
    len = append(line, len, cap, ts);
    len = append(line, len, cap, "\",\"level\":\"");
    len = append(line, len, cap, level_names[lvl <= HB_LOG_ERROR ? lvl : HB_LOG_ERROR]);
    len = append(line, len, cap, "\",\"component\":\"");
    len = hb_json_escape(line, len, cap, hb_log_component);
    len = append(line, len, cap, "\",\"msg\":");
    len = add_pair(line, len, cap, NULL, msg);
    for (; kv && kv[0] && len + 16 < cap; kv += 2)
        len = add_pair(line, len, cap, kv[0], kv[1] ? kv[1] : "");
    if (len + 16 >= cap)
        len = append(line, len, sizeof(line), ",\"truncated\":true");
    len = append(line, len, sizeof(line), "}\n");
    /* A short write cannot be reported anywhere better. */
    (void)!write(hb_log_fd, line, len);
}

static hb_log_limit_t *limits; /* every limit used so far, under limits_mu */
static pthread_mutex_t limits_mu = PTHREAD_MUTEX_INITIALIZER;

static void limit_summary(hb_log_limit_t *l, int64_t now) {
    if (l->left_out)
        hb_log_emit(l->lvl, NULL,
                    "%llu more %s line(s) not logged in the last %lld s (at most %d per %d s "
                    "are%s)",
                    l->left_out, l->what, (long long)((now - l->window_ms + 999) / 1000),
                    HB_LOG_LIMIT_LINES, HB_LOG_LIMIT_WINDOW_MS / 1000, l->note ? l->note : "");
    l->left_out = 0;
    l->logged = 0;
    l->keys_cnt = 0;
    l->window_ms = now;
}

/* 1 when key is new in l's window, and there is room to remember it. */
static int limit_first_of(hb_log_limit_t *l, const char *key) {
    uint64_t h = hb_hash_str(key);
    for (unsigned i = 0; i < l->keys_cnt; i++)
        if (l->keys[i] == h)
            return 0;
    if (l->keys_cnt == HB_LOG_LIMIT_KEYS)
        return 0;
    l->keys[l->keys_cnt++] = h;
    return 1;
}

int hb_log_admit(hb_log_limit_t *l, hb_log_level_t lvl) {
    return hb_log_admit_for(l, NULL, lvl);
}

int hb_log_admit_for(hb_log_limit_t *l, const char *key, hb_log_level_t lvl) {
    int64_t now;
    int ok = 0;
    if (hb_log_level == HB_LOG_DEBUG)
        return 1;
    now = hb_mono_ms();
    pthread_mutex_lock(&limits_mu);
    if (!l->registered) {
        l->registered = 1;
        l->next = limits;
        limits = l;
        l->window_ms = now;
    }
    if (now - l->window_ms >= HB_LOG_LIMIT_WINDOW_MS)
        limit_summary(l, now);
    l->lvl = lvl;
    if (key && limit_first_of(l, key)) {
        ok = 1; /* not counted against the window's lines */
    } else if (l->logged < HB_LOG_LIMIT_LINES) {
        l->logged++;
        ok = 1;
    } else {
        l->left_out++;
    }
    pthread_mutex_unlock(&limits_mu);
    return ok;
}

static void limits_flush(int all) {
    int64_t now = hb_mono_ms();
    pthread_mutex_lock(&limits_mu);
    for (hb_log_limit_t *l = limits; l; l = l->next)
        if (l->left_out && (all || now - l->window_ms >= HB_LOG_LIMIT_WINDOW_MS))
            limit_summary(l, now);
    pthread_mutex_unlock(&limits_mu);
}

void hb_log_limits_flush(void) {
    limits_flush(0);
}

void hb_log_limits_flush_all(void) {
    limits_flush(1);
}
