/*
 * Subscription content filters: a small JSON predicate over an event.
 *
 * A subscription's options may hold {"filter": {...}}; the dispatcher delivers
 * an event to that subscription only when the filter matches it. The syntax
 * (docs/filters.md) is a JSON object whose entries must all hold:
 *
 *   {"eventType": "user.session.start",
 *    "outcome.result": {"$in": ["FAILURE", "DENY"]},
 *    "$or": [{"target[].type": "AppInstance"}, {"$not": {"client.ipAddress": null}}]}
 *
 * Entries are combinators ($and, $or, $not) or "<path>": <condition>, where a
 * path is dotted segments [A-Za-z0-9_]+ with an optional [] ("any element of
 * this array") and a condition is a scalar (equality) or an object of
 * operators ($eq $ne $in $nin $exists $prefix). A path yields a set of values;
 * $ne, $nin and $exists:false hold when no value qualifies, so a missing path
 * satisfies them.
 *
 * The design is compile once, match often: hb_filter_compile() validates the
 * whole spec (with bounds, so a hostile filter cannot cost much: depth 8,
 * 64 conditions, paths of 16 segments and 256 bytes, strings of 1024 bytes,
 * lists of 100 items; and numbers in the 64-bit integer range, which is what
 * the dispatcher can read back from PostgreSQL) and turns every path into an
 * array of segments.
 * hb_filter_match() then walks the event with json_object_get() per segment
 * and never allocates. hookbridge.filter_problem() in
 * sql/30_filters.sql applies the same rules in SQL, so an invalid
 * filter is refused when it is registered, never at delivery time;
 * tests/filter_cases.json is the table both are tested against.
 *
 * A compiled filter is immutable: any thread may match with it concurrently.
 * It keeps its own copy of the operands, so the spec may be freed after
 * compiling.
 */
#ifndef HB_FILTER_H
#define HB_FILTER_H

#include <jansson.h>

#include "hb_common.h"

/* Bounds (the SQL validator uses the same numbers). */
#define HB_FILTER_MAX_DEPTH 8     /* nested filter objects, the top one is 1 */
#define HB_FILTER_MAX_NODES 64    /* operators plus $and/$or/$not entries */
#define HB_FILTER_MAX_SEGMENTS 16 /* per path */
#define HB_FILTER_MAX_PATH 256    /* bytes per path */
#define HB_FILTER_MAX_STRING 1024 /* bytes per string operand */
#define HB_FILTER_MAX_LIST 100    /* items in $in / $nin */

typedef struct hb_filter_s hb_filter_t;

/* Compiles spec (a JSON object; {} matches every event). NULL with a message
 * saying where and what ("filter.$or[1].\"target[].type\": unknown operator
 * ...") when the spec is invalid. The caller keeps spec; free the result with
 * hb_filter_free(). */
hb_filter_t *hb_filter_compile(const json_t *spec, char *errstr, size_t errstr_size) HB_MUSTCHECK;

/* 1 when event matches f, 0 when it does not. A NULL filter matches every
 * event. Does not allocate. */
int hb_filter_match(const hb_filter_t *f, const json_t *event);

void hb_filter_free(hb_filter_t *f);

#endif
