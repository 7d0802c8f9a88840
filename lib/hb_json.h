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

#include "hb_buf.h"

/* Appends v (any type) as compact JSON. */
void hb_json_put(hb_buf_t *b, const json_t *v);

/* Appends s (n bytes, valid UTF-8) as a JSON string, quotes included. */
void hb_json_put_str(hb_buf_t *b, const char *s, size_t n);

/* Appends the members of object obj for which keep(key, arg) is non-zero,
 * in the object's order, as "key":value pairs separated by commas, with a
 * leading comma when *first is 0; sets *first to 0 once one is written.
 * keep NULL keeps every member. */
void hb_json_put_members(hb_buf_t *b, const json_t *obj, int (*keep)(const char *key, void *arg),
                         void *arg, int *first);

/* 1 when s (n bytes) is valid UTF-8 as jansson understands it (no overlong
 * forms, no surrogates, nothing above U+10FFFF), else 0. */
int hb_json_utf8_ok(const char *s, size_t n);

#endif
