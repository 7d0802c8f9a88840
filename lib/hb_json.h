/*
 * Compact JSON text from jansson values, written straight into an hb_buf_t:
 * byte for byte what json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15))
 * writes (members in the object's own order, "/" and non-ASCII left as they
 * are, control characters as \b \f \n \r \t or \u00XX, reals as %.15g with
 * ".0" added when that looks like an integer), at a fraction of its cost:
 * no callback per token, no allocation but the buffer's own. It exists for
 * the delivery hot path (hb_deliver_render), which also writes envelopes
 * member by member with the helpers below instead of building a document.
 *
 * Strings in jansson values are valid UTF-8 (jansson checks them when they
 * are made), so they are copied without a second check; text that comes
 * from elsewhere goes through hb_json_utf8_ok first.
 */
#ifndef HB_JSON_H
#define HB_JSON_H

#include <jansson.h>
#include <string.h>

#include "hb_buf.h"

/* Appends n bytes of JSON text as they are, without a call when there is
 * room; keeps room for the NUL but does not write it (the other hb_json_put*
 * do; else write it once at the end). */
static inline void hb_json_append(hb_buf_t *b, const char *s, size_t n) {
    if (b->cap - b->len <= n)
        hb_buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

/* Appends v (any type) as compact JSON. */
void hb_json_put(hb_buf_t *b, const json_t *v);

/* Appends s (n bytes, valid UTF-8) as a JSON string, quotes included. */
void hb_json_put_str(hb_buf_t *b, const char *s, size_t n);
/* hb_json_put_str of bytes from elsewhere: 0, or -1 (nothing appended)
 * when s is not valid UTF-8 as hb_json_utf8_ok decides. One pass over
 * plain ASCII (the usual string) instead of a check and a copy. */
int hb_json_put_utf8(hb_buf_t *b, const char *s, size_t n);

/* Appends the members of object obj for which keep(key, arg) is non-zero,
 * in the object's order, as "key":value pairs separated by commas, with a
 * leading comma when *first is 0; sets *first to 0 once one is written.
 * keep NULL keeps every member. */
void hb_json_put_members(hb_buf_t *b, const json_t *obj, int (*keep)(const char *key, void *arg),
                         void *arg, int *first);

/* Appends an integer, a real (finite) as hb_json_put writes them. */
void hb_json_put_integer(hb_buf_t *b, json_int_t i);
void hb_json_put_real(hb_buf_t *b, double d);

/* The unescaped bytes of a JSON string's body s (n bytes, quotes excluded)
 * into out (room for n + 1 bytes: unescaping never lengthens), NUL-terminated;
 * returns their count, -1 when s is not a valid string body. */
long hb_json_unescape(const char *s, size_t n, char *out);

/*
 * A JSON object held as its compact text (exactly what hb_json_put writes of
 * it) with an index: where each top-level member's key and value are, and the
 * exact value of every real number in it, in text order (the text keeps 15
 * significant digits; hb_jdoc_json rebuilds the values exactly). Made by the
 * codec straight from Avro bytes (hb_codec_decode_doc) or from a jansson
 * object (hb_jdoc_from_json); the delivery path copies members' bytes out of
 * it instead of walking a document.
 */
typedef struct hb_jmember_s {
    size_t key, key_len; /* the key's bytes as written (escaped), quotes excluded */
    size_t val, val_len; /* the value's text */
} hb_jmember_t;

typedef struct hb_jdoc_s {
    hb_buf_t text;
    hb_jmember_t *m; /* top-level members in order */
    size_t n, cap;
    double *reals;
    size_t reals_n, reals_cap;
} hb_jdoc_t;

/* Empty again, keeping its memory. */
void hb_jdoc_reset(hb_jdoc_t *d);
void hb_jdoc_free(hb_jdoc_t *d);
void hb_jdoc_add_member(hb_jdoc_t *d, size_t key, size_t key_len, size_t val, size_t val_len);
void hb_jdoc_add_real(hb_jdoc_t *d, double v);
/* d made anew from v; -1 when v is not an object (then only its text and
 * reals, no members). */
int hb_jdoc_from_json(hb_jdoc_t *d, const json_t *v);
/* The document as a new jansson value (NULL: not well-formed). */
json_t *hb_jdoc_json(const hb_jdoc_t *d);
/* Compact JSON text (no whitespace, as hb_json writes it) -> a new jansson
 * value, the reals taken in order from reals (every one must be used), or
 * with reals NULL read from the text's digits; NULL when the text is not
 * that. */
json_t *hb_json_from_text(const char *text, size_t len, const double *reals, size_t reals_n);

/* 1 when s (n bytes) is valid UTF-8 as jansson understands it (no overlong
 * forms, no surrogates, nothing above U+10FFFF), else 0. */
int hb_json_utf8_ok(const char *s, size_t n);

#endif
