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

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Eight bytes at a time (the usual string has nothing to escape and is
 * ASCII): whether a word holds a byte that is not plain, or one >= 0x80.
 * The classic exact tests: "has a zero byte" is (x - 0x01..) & ~x & 0x80..,
 * "has a byte below n" (n <= 0x80) is (x - n..) & ~x & 0x80... */
#define HB_ONES 0x0101010101010101ULL
#define HB_HIGH 0x8080808080808080ULL

static inline uint64_t hb_json_load8(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, sizeof(w));
    return w;
}

static inline int hb_json_word_plain(uint64_t w) {
    uint64_t q = w ^ (HB_ONES * '"'), s = w ^ (HB_ONES * '\\');
    return !((((w - HB_ONES * 0x20) & ~w) | ((q - HB_ONES) & ~q) | ((s - HB_ONES) & ~s)) & HB_HIGH);
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
        while (end - p >= 8 && hb_json_word_plain(hb_json_load8(p)))
            p += 8;
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

/* Whether a word is plain ASCII: no byte >= 0x80, none below 0x20, no '"'
 * and no '\\'. With the high bits excluded, the tests need not mask with ~w:
 * a borrow only follows a byte that fails already. */
static inline int hb_json_word_ascii_plain(uint64_t w) {
    uint64_t q = w ^ (HB_ONES * '"'), s = w ^ (HB_ONES * '\\');
    return !(((w - HB_ONES * 0x20) | (q - HB_ONES) | (s - HB_ONES) | w) & HB_HIGH);
}

int hb_json_put_utf8(hb_buf_t *b, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    /* copied while checked, a word at a time (the last word overlapping the
     * one before), into room past the end that counts only once all is plain */
    if (b->cap - b->len <= n + 2)
        hb_buf_reserve(b, n + 2);
    char *o = b->p + b->len;
    o[0] = '"';
    for (; n - i >= 8; i += 8) {
        uint64_t w = hb_json_load8(p + i);
        if (!hb_json_word_ascii_plain(w))
            goto other;
        memcpy(o + 1 + i, &w, sizeof(w));
    }
    if (i < n && n >= 8) {
        uint64_t w = hb_json_load8(p + n - 8);
        if (!hb_json_word_ascii_plain(w))
            goto other;
        memcpy(o + 1 + n - 8, &w, sizeof(w));
    } else {
        for (; i < n; i++) {
            if (p[i] >= 0x80 || !hb_json_is_plain(p[i]))
                goto other;
            o[1 + i] = (char)p[i];
        }
    }
    o[n + 1] = '"';
    o[n + 2] = '\0';
    b->len += n + 2;
    return 0;
other: /* something to escape, or beyond ASCII */
    o[0] = '\0';
    if (!hb_json_utf8_ok(s, n))
        return -1;
    hb_json_put_str(b, s, n);
    return 0;
}

static void hb_json_int(hb_buf_t *b, json_int_t i) {
    char num[24], *p = num + sizeof(num);
    unsigned long long u = i < 0 ? 0ULL - (unsigned long long)i : (unsigned long long)i;
    do
        *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (i < 0)
        *--p = '-';
    hb_json_raw(b, p, (size_t)(num + sizeof(num) - p));
}

/* The common real, a short decimal such as 47.3769 or 100.0, without
 * printf: when some r / 10^k (|r| < 10^15, so at most 15 significant digits)
 * is d's nearest decimal, i.e. r / 10^k == d in IEEE division, which is
 * correctly rounded with r and 10^k both exact, then "%.15g" prints exactly
 * that decimal: d is within half an ulp (< 1.2e-16 |d|) of it, and half the
 * spacing of 15-digit decimals is more than 5e-16 |d|. For 1e-3 <= |d| <
 * 1e14 that is fixed notation, trailing zeros dropped; jansson then adds
 * ".0" to an integer. 0 when d is not such a number (the caller uses
 * printf). */
static int hb_json_real_short(hb_buf_t *b, double d) {
    static const double p10[] = {1e0, 1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,
                                 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17};
    double a = fabs(d);
    char num[48], *o = num + sizeof(num);
    if (!(a >= 1e-3 && a < 1e14))
        return 0;
    for (int k = 0; k < (int)(sizeof(p10) / sizeof(p10[0])); k++) {
        double v = a * p10[k], r;
        unsigned long long u;
        int frac = 0;
        if (v >= 1e15)
            return 0;
        r = nearbyint(v);
        if (r / p10[k] != a)
            continue;
        u = (unsigned long long)r;
        for (int i = 0; i < k; i++, u /= 10) { /* the k decimals, trailing zeros dropped */
            if (frac || u % 10) {
                *--o = (char)('0' + u % 10);
                frac = 1;
            }
        }
        if (frac)
            *--o = '.';
        else {
            *--o = '0';
            *--o = '.';
        }
        do
            *--o = (char)('0' + u % 10);
        while ((u /= 10) != 0);
        if (d < 0)
            *--o = '-';
        hb_json_raw(b, o, (size_t)(num + sizeof(num) - o));
        return 1;
    }
    return 0;
}

/* jansson's jsonp_dtostr with precision 15 (the C locale's '.' assumed, as
 * the services never call setlocale). */
static void hb_json_real(hb_buf_t *b, double d) {
    char num[64];
    if (hb_json_real_short(b, d))
        return;
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
    case JSON_INTEGER: hb_json_int(b, json_integer_value(v)); return;
    case JSON_REAL: hb_json_real(b, json_real_value(v)); return;
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
        if (end - p >= 8 && !(hb_json_load8(p) & HB_HIGH)) { /* eight ASCII bytes */
            p += 8;
            continue;
        }
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

void hb_json_put_integer(hb_buf_t *b, json_int_t i) {
    hb_json_int(b, i);
    b->p[b->len] = '\0';
}

void hb_json_put_real(hb_buf_t *b, double d) {
    hb_json_real(b, d);
    b->p[b->len] = '\0';
}

/* ------------------------------------------------------- JSON documents */

void hb_jdoc_reset(hb_jdoc_t *d) {
    d->text.len = 0;
    if (d->text.p)
        d->text.p[0] = '\0';
    d->n = 0;
    d->reals_n = 0;
}

void hb_jdoc_free(hb_jdoc_t *d) {
    hb_buf_free(&d->text);
    free(d->m);
    free(d->reals);
    memset(d, 0, sizeof(*d));
}

void hb_jdoc_add_member(hb_jdoc_t *d, size_t key, size_t key_len, size_t val, size_t val_len) {
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 32;
        d->m = hb_realloc(d->m, d->cap * sizeof(*d->m));
    }
    d->m[d->n].key = key;
    d->m[d->n].key_len = key_len;
    d->m[d->n].val = val;
    d->m[d->n].val_len = val_len;
    d->n++;
}

void hb_jdoc_add_real(hb_jdoc_t *d, double v) {
    if (d->reals_n == d->reals_cap) {
        d->reals_cap = d->reals_cap ? d->reals_cap * 2 : 8;
        d->reals = hb_realloc(d->reals, d->reals_cap * sizeof(*d->reals));
    }
    d->reals[d->reals_n++] = v;
}

/* The reals of v in the order hb_json_value writes them. */
static void hb_jdoc_collect_reals(hb_jdoc_t *d, const json_t *v) {
    json_t *o = (json_t *)(uintptr_t)v, *val;
    const char *key;
    size_t i;
    switch (json_typeof(v)) {
    case JSON_OBJECT: json_object_foreach(o, key, val) hb_jdoc_collect_reals(d, val); return;
    case JSON_ARRAY: json_array_foreach(o, i, val) hb_jdoc_collect_reals(d, val); return;
    case JSON_REAL: hb_jdoc_add_real(d, json_real_value(v)); return;
    default: return;
    }
}

int hb_jdoc_from_json(hb_jdoc_t *d, const json_t *obj) {
    const char *key;
    size_t key_len;
    json_t *val, *o = (json_t *)(uintptr_t)obj;
    hb_jdoc_reset(d);
    if (!json_is_object(obj)) {
        hb_json_put(&d->text, obj);
        hb_jdoc_collect_reals(d, obj);
        return -1;
    }
    hb_json_char(&d->text, '{');
    json_object_keylen_foreach(o, key, key_len, val) {
        size_t k, v;
        if (d->n)
            hb_json_char(&d->text, ',');
        k = d->text.len + 1;
        hb_json_str(&d->text, key, key_len);
        hb_json_char(&d->text, ':');
        v = d->text.len;
        hb_json_value(&d->text, val);
        hb_jdoc_add_member(d, k, key_len, v, d->text.len - v);
        /* the key as written: escapes make it longer */
        d->m[d->n - 1].key_len = v - 2 - k;
        hb_jdoc_collect_reals(d, val);
    }
    hb_json_char(&d->text, '}');
    d->text.p[d->text.len] = '\0';
    return 0;
}

/* ------------------------------------------------- JSON text -> jansson */

static int hb_json_hex4(const char *s, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t hb_json_utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

long hb_json_unescape(const char *s, size_t n, char *out) {
    const char *end = s + n;
    char *o = out;
    while (s < end) {
        const char *bs = memchr(s, '\\', (size_t)(end - s));
        size_t run = bs ? (size_t)(bs - s) : (size_t)(end - s);
        memmove(o, s, run);
        o += run;
        s += run;
        if (!bs)
            break;
        if (end - s < 2)
            return -1;
        switch (s[1]) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (end - s < 6 || hb_json_hex4(s + 2, &cp) < 0)
                return -1;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (end - s < 12 || s[6] != '\\' || s[7] != 'u' || hb_json_hex4(s + 8, &lo) < 0 ||
                    lo < 0xdc00 || lo > 0xdfff)
                    return -1;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                s += 6;
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return -1;
            }
            o += hb_json_utf8_put(o, cp);
            s += 4;
            break;
        }
        default: return -1;
        }
        s += 2;
    }
    *o = '\0';
    return (long)(o - out);
}

/* A cursor over compact JSON text (what hb_json writes: no whitespace). */
typedef struct {
    const char *p, *end;
    const double *reals;
    size_t reals_n, reals_i;
} hb_jtext_t;

#define HB_JSON_TEXT_MAX_DEPTH 256

/* The string at t->p (its opening quote): its body's length, escapes as
 * written; t->p moves past the closing quote. -1 when there is none. */
static long hb_jtext_string(hb_jtext_t *t, const char **body) {
    const char *p = t->p + 1;
    *body = p;
    while (p < t->end && *p != '"') {
        if (*p == '\\' && t->end - p < 2)
            return -1;
        p += *p == '\\' ? 2 : 1;
    }
    if (p >= t->end)
        return -1;
    t->p = p + 1;
    return (long)(p - *body);
}

static json_t *hb_jtext_value(hb_jtext_t *t, int depth);

static json_t *hb_jtext_str(hb_jtext_t *t) {
    const char *body;
    long n = hb_jtext_string(t, &body);
    char stack[256], *tmp;
    json_t *j;
    long len;
    if (n < 0)
        return NULL;
    tmp = (size_t)n < sizeof(stack) ? stack : hb_malloc((size_t)n + 1);
    len = hb_json_unescape(body, (size_t)n, tmp);
    j = len < 0 ? NULL : json_stringn(tmp, (size_t)len);
    if (tmp != stack)
        free(tmp);
    return j;
}

static json_t *hb_jtext_number(hb_jtext_t *t) {
    const char *p = t->p;
    int real = 0, neg = 0;
    unsigned long long u = 0;
    if (p < t->end && *p == '-')
        neg = 1, p++;
    const char *digits = p;
    while (p < t->end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' ||
                          *p == '+' || *p == '-')) {
        if (*p < '0' || *p > '9')
            real = 1;
        else if (!real) {
            if (u > (ULLONG_MAX - 9) / 10)
                return NULL;
            u = u * 10 + (unsigned)(*p - '0');
        }
        p++;
    }
    if (p == digits)
        return NULL;
    if (real && !t->reals) { /* the text's own digits */
        char num[64];
        size_t len = (size_t)(p - t->p);
        if (len >= sizeof(num))
            return NULL;
        memcpy(num, t->p, len);
        num[len] = '\0';
        t->p = p;
        return json_real(strtod(num, NULL));
    }
    t->p = p;
    if (real) /* the exact value, not the 15 digits the text keeps */
        return t->reals_i < t->reals_n ? json_real(t->reals[t->reals_i++]) : NULL;
    if (neg ? u > (unsigned long long)LLONG_MAX + 1 : u > (unsigned long long)LLONG_MAX)
        return NULL;
    return json_integer(neg ? (json_int_t)(0 - u) : (json_int_t)u);
}

static json_t *hb_jtext_container(hb_jtext_t *t, int depth) {
    int is_obj = *t->p == '{';
    char close = is_obj ? '}' : ']';
    json_t *j = is_obj ? json_object() : json_array();
    t->p++;
    if (t->p < t->end && *t->p == close) {
        t->p++;
        return j;
    }
    for (;;) {
        json_t *v;
        if (is_obj) {
            const char *body;
            char stack[128], *key;
            long n, klen;
            int bad;
            if (t->p >= t->end || *t->p != '"' || (n = hb_jtext_string(t, &body)) < 0)
                goto fail;
            key = (size_t)n < sizeof(stack) ? stack : hb_malloc((size_t)n + 1);
            klen = hb_json_unescape(body, (size_t)n, key);
            bad = klen < 0 || t->p >= t->end || *t->p != ':';
            if (!bad) {
                t->p++;
                v = hb_jtext_value(t, depth + 1);
                /* setn_new checks the key is UTF-8, and takes v also when it fails */
                bad = !v || json_object_setn_new(j, key, (size_t)klen, v) != 0;
            }
            if (key != stack)
                free(key);
            if (bad)
                goto fail;
        } else if (!(v = hb_jtext_value(t, depth + 1)) || json_array_append_new(j, v)) {
            goto fail;
        }
        if (t->p < t->end && *t->p == ',') {
            t->p++;
            continue;
        }
        if (t->p < t->end && *t->p == close) {
            t->p++;
            return j;
        }
        goto fail;
    }
fail:
    json_decref(j);
    return NULL;
}

static json_t *hb_jtext_value(hb_jtext_t *t, int depth) {
    size_t left = (size_t)(t->end - t->p);
    if (!left || depth > HB_JSON_TEXT_MAX_DEPTH)
        return NULL;
    switch (*t->p) {
    case '{':
    case '[': return hb_jtext_container(t, depth);
    case '"': return hb_jtext_str(t);
    case 't':
        if (left < 4 || memcmp(t->p, "true", 4))
            return NULL;
        t->p += 4;
        return json_true();
    case 'f':
        if (left < 5 || memcmp(t->p, "false", 5))
            return NULL;
        t->p += 5;
        return json_false();
    case 'n':
        if (left < 4 || memcmp(t->p, "null", 4))
            return NULL;
        t->p += 4;
        return json_null();
    default: return hb_jtext_number(t);
    }
}

json_t *hb_json_from_text(const char *text, size_t len, const double *reals, size_t reals_n) {
    hb_jtext_t t = {text, text + len, reals, reals_n, 0};
    json_t *j = hb_jtext_value(&t, 0);
    if (j && (t.p != t.end || (reals && t.reals_i != reals_n))) {
        json_decref(j);
        return NULL;
    }
    return j;
}

json_t *hb_jdoc_json(const hb_jdoc_t *d) {
    return hb_json_from_text(d->text.p ? d->text.p : "", d->text.len, d->reals, d->reals_n);
}
