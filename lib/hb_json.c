/*
 * Compact JSON text from jansson values (see hb_json.h).
 *
 * The output must equal json_dumps(JSON_COMPACT | JSON_REAL_PRECISION(15))
 * byte for byte, since receivers verify signatures over the exact body and
 * tests compare bodies: tests/unit/test_json.c checks it against jansson on
 * every kind of value. The rules copied from jansson 2.14's dump.c and
 * strconv.c: objects in insertion order, separators "," and ":" without
 * spaces; strings escape '"', '\\' and every byte below 0x20 (\b \f \n \r \t,
 * the rest \u00XX with upper-case hex) and nothing else; integers "%lld";
 * reals "%.15g", then ".0" appended when neither '.' nor 'e' is there, and
 * the exponent loses its '+' and leading zeros.
 */
#include "hb_json.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Appends without a call when there is room (the common case): every
 * append keeps room for the terminating NUL, which the public functions
 * write once at the end. */
static inline void hb_json_raw(hb_buf_t *b, const char *s, size_t n) {
    if (b->cap - b->len <= n)
        hb_buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static inline void hb_json_char(hb_buf_t *b, char c) {
    if (b->cap - b->len <= 1)
        hb_buf_reserve(b, 1);
    b->p[b->len++] = c;
}

/* Bytes of a string that are copied as they are. */
static inline int hb_json_is_plain(unsigned char c) {
    return c >= 0x20 && c != '"' && c != '\\';
}

static void hb_json_str(hb_buf_t *b, const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    /* Room for the string as it is, both quotes and the NUL; an escape
     * makes room for itself and the rest again. */
    if (b->cap - b->len <= n + 2)
        hb_buf_reserve(b, n + 2);
    b->p[b->len++] = '"';
    while (p < end) {
        const unsigned char *run = p;
        while (p < end && hb_json_is_plain(*p))
            p++;
        memcpy(b->p + b->len, run, (size_t)(p - run));
        b->len += (size_t)(p - run);
        if (p == end)
            break;
        size_t rest = (size_t)(end - p) - 1;
        if (b->cap - b->len <= 6 + rest + 1)
            hb_buf_reserve(b, 6 + rest + 1);
        char *o = b->p + b->len;
        o[0] = '\\';
        switch (*p) {
        case '"': o[1] = '"'; break;
        case '\\': o[1] = '\\'; break;
        case '\b': o[1] = 'b'; break;
        case '\f': o[1] = 'f'; break;
        case '\n': o[1] = 'n'; break;
        case '\r': o[1] = 'r'; break;
        case '\t': o[1] = 't'; break;
        default:
            o[1] = 'u';
            o[2] = '0';
            o[3] = '0';
            o[4] = hex[*p >> 4];
            o[5] = hex[*p & 15];
            b->len += 4;
        }
        b->len += 2;
        p++;
    }
    b->p[b->len++] = '"';
}

void hb_json_put_str(hb_buf_t *b, const char *s, size_t n) {
    hb_json_str(b, s, n);
    b->p[b->len] = '\0';
}

static void hb_json_put_int(hb_buf_t *b, json_int_t i) {
    char num[24], *p = num + sizeof(num);
    unsigned long long u = i < 0 ? 0ULL - (unsigned long long)i : (unsigned long long)i;
    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (i < 0)
        *--p = '-';
    hb_json_raw(b, p, (size_t)(num + sizeof(num) - p));
}

/* jansson's jsonp_dtostr with precision 15 (the C locale's '.' assumed, as
 * the services never call setlocale). */
static void hb_json_put_real(hb_buf_t *b, double d) {
    char num[64];
    int n = snprintf(num, sizeof(num), "%.15g", d);
    if (n < 0 || (size_t)n >= sizeof(num) - 3)
        return; /* cannot happen for %.15g */
    size_t len = (size_t)n;
    if (!strchr(num, '.') && !strchr(num, 'e')) {
        num[len++] = '.';
        num[len++] = '0';
        num[len] = '\0';
    }
    char *start = strchr(num, 'e');
    if (start) {
        start++;
        char *end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, len - (size_t)(end - num) + 1);
            len -= (size_t)(end - start);
        }
    }
    hb_json_raw(b, num, len);
}

static void hb_json_value(hb_buf_t *b, const json_t *v);

static void hb_json_members(hb_buf_t *b, const json_t *obj, int (*keep)(const char *key, void *arg),
                            void *arg, int *first) {
    const char *key;
    size_t key_len;
    json_t *val;
    /* the foreach macro wants a non-const object; iterating does not change it */
    json_t *o = (json_t *)(uintptr_t)obj;
    json_object_keylen_foreach(o, key, key_len, val) {
        if (keep && !keep(key, arg))
            continue;
        if (!*first)
            hb_json_char(b, ',');
        *first = 0;
        hb_json_str(b, key, key_len);
        hb_json_char(b, ':');
        hb_json_value(b, val);
    }
}

void hb_json_put_members(hb_buf_t *b, const json_t *obj, int (*keep)(const char *key, void *arg),
                         void *arg, int *first) {
    hb_json_members(b, obj, keep, arg, first);
    hb_buf_reserve(b, 0);
    b->p[b->len] = '\0';
}

static void hb_json_value(hb_buf_t *b, const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        int first = 1;
        hb_json_char(b, '{');
        hb_json_members(b, v, NULL, NULL, &first);
        hb_json_char(b, '}');
        return;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        hb_json_char(b, '[');
        for (size_t i = 0; i < n; i++) {
            if (i)
                hb_json_char(b, ',');
            hb_json_value(b, json_array_get(v, i));
        }
        hb_json_char(b, ']');
        return;
    }
    case JSON_STRING: hb_json_str(b, json_string_value(v), json_string_length(v)); return;
    case JSON_INTEGER: hb_json_put_int(b, json_integer_value(v)); return;
    case JSON_REAL: hb_json_put_real(b, json_real_value(v)); return;
    case JSON_TRUE: hb_json_raw(b, "true", 4); return;
    case JSON_FALSE: hb_json_raw(b, "false", 5); return;
    case JSON_NULL:
    default: hb_json_raw(b, "null", 4); return;
    }
}

void hb_json_put(hb_buf_t *b, const json_t *v) {
    hb_json_value(b, v);
    b->p[b->len] = '\0';
}

int hb_json_utf8_ok(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p, need, min;
        uint32_t cp;
        if (c < 0x80) {
            p++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if ((size_t)(end - p) <= need)
            return 0;
        for (unsigned i = 1; i <= need; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        p += need + 1;
    }
    return 1;
}
