/*
 * Subscription content filters: compile a JSON spec into a tree of tests,
 * match events against it without allocating. See hb_filter.h.
 */
#include "hb_filter.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef enum { FN_AND, FN_OR, FN_NOT, FN_TEST } fn_kind_t;
typedef enum { OP_EQ, OP_NE, OP_IN, OP_NIN, OP_EXISTS, OP_PREFIX } fn_op_t;

static const char *const op_names[] = {"$eq", "$ne", "$in", "$nin", "$exists", "$prefix"};
#define KNOWN_OPS "(known: $eq $ne $in $nin $exists $prefix)"

typedef struct {
    const char *name; /* points into the test's path copy */
    int each;         /* "name[]": every element of the array */
} fn_seg_t;

typedef struct fn_node_s fn_node_t;
struct fn_node_s {
    fn_kind_t kind;
    fn_node_t **kids; /* FN_AND, FN_OR: nkids; FN_NOT: one */
    size_t nkids;
    /* FN_TEST */
    fn_op_t op;
    char *path; /* the path, NUL at every segment end */
    fn_seg_t segs[HB_FILTER_MAX_SEGMENTS];
    int nsegs;
    json_t *arg; /* own copy: scalar ($eq $ne), array ($in $nin), string ($prefix) */
    int exists;  /* $exists */
};

struct hb_filter_s {
    fn_node_t *root;
};

/* --- Compiling --------------------------------------------------------------
 * The compiler walks the spec depth-first, keeping the location of what it
 * looks at ("filter.$or[1].\"target[].type\".$in[3]") for error messages.
 * Any error aborts the whole compile. */

typedef struct {
    char *err;
    size_t errsz;
    int nodes;
    char loc[768];
    size_t loclen;
} fn_cc_t;

static void node_free(fn_node_t *n) {
    if (!n)
        return;
    for (size_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->path);
    if (n->arg)
        json_decref(n->arg);
    free(n);
}

static void fail(fn_cc_t *cc, const char *fmt, ...) HB_PRINTF(2, 3);
static void fail(fn_cc_t *cc, const char *fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    hb_seterr(cc->err, cc->errsz, "%s: %s", cc->loc, what);
}

/* A key as shown in messages: at most 64 bytes (cut at a character
 * boundary, "..." appended), control characters as '?'. */
static void display(const char *key, char *out, size_t outsz) {
    size_t n = strlen(key), cut = n > 64 ? 64 : n, o = 0;
    while (cut < n && cut > 0 && ((unsigned char)key[cut] & 0xC0) == 0x80)
        cut--;
    for (size_t i = 0; i < cut && o + 1 < outsz; i++)
        out[o++] = (unsigned char)key[i] < 0x20 ? '?' : key[i];
    if (cut < n)
        for (int i = 0; i < 3 && o + 1 < outsz; i++)
            out[o++] = '.';
    out[o] = '\0';
}

static size_t loc_push(fn_cc_t *cc, const char *fmt, ...) HB_PRINTF(2, 3);
static size_t loc_push(fn_cc_t *cc, const char *fmt, ...) {
    size_t saved = cc->loclen;
    va_list ap;
    if (cc->loclen + 1 < sizeof(cc->loc)) {
        va_start(ap, fmt);
        int w = vsnprintf(cc->loc + cc->loclen, sizeof(cc->loc) - cc->loclen, fmt, ap);
        va_end(ap);
        if (w > 0)
            cc->loclen += (size_t)w;
        if (cc->loclen >= sizeof(cc->loc))
            cc->loclen = sizeof(cc->loc) - 1;
    }
    return saved;
}

static void loc_pop(fn_cc_t *cc, size_t saved) {
    cc->loclen = saved;
    cc->loc[saved] = '\0';
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER:
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

static int is_scalar(const json_t *v) {
    return !json_is_object(v) && !json_is_array(v);
}

static int count_node(fn_cc_t *cc) {
    if (++cc->nodes > HB_FILTER_MAX_NODES) {
        fail(cc, "filter has more than %d conditions (operators and $and/$or/$not)",
             HB_FILTER_MAX_NODES);
        return -1;
    }
    return 0;
}

/* A scalar operand: string, number, boolean or null, strings bounded. */
static int check_scalar(fn_cc_t *cc, const json_t *v) {
    if (!is_scalar(v)) {
        fail(cc, "must be a string, number, boolean or null, got %s%s", type_name(v),
             json_is_array(v) ? " (use $in for a list of values)" : "");
        return -1;
    }
    if (json_is_string(v) && json_string_length(v) > HB_FILTER_MAX_STRING) {
        fail(cc, "string is longer than %d bytes", HB_FILTER_MAX_STRING);
        return -1;
    }
    /* The filter reaches the dispatcher as PostgreSQL's text of a jsonb
     * number, without an exponent: a larger one is an integer literal jansson
     * cannot read, and the subscription could not be loaded at all. So the
     * SQL side refuses it, and so does this. */
    if (json_is_real(v) && !(json_real_value(v) >= -9223372036854775808.0 &&
                             json_real_value(v) < 9223372036854775808.0)) {
        fail(cc, "number is outside the 64-bit integer range (-9223372036854775808 .. "
                 "9223372036854775807)");
        return -1;
    }
    return 0;
}

static int is_seg_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* Splits the path into n->segs (n->path becomes a copy with NULs). */
static int compile_path(fn_cc_t *cc, const char *key, fn_node_t *n) {
    size_t len = strlen(key);
    if (len > HB_FILTER_MAX_PATH) {
        fail(cc, "path is longer than %d bytes", HB_FILTER_MAX_PATH);
        return -1;
    }
    n->path = hb_strdup(key);
    n->nsegs = 0;
    char *p = n->path;
    for (;;) {
        char *start = p;
        while (is_seg_char(*p))
            p++;
        int each = 0;
        char *end = p;
        if (p == start)
            goto bad;
        if (p[0] == '[' && p[1] == ']') {
            each = 1;
            p += 2;
        }
        if (*p != '.' && *p != '\0')
            goto bad;
        if (n->nsegs == HB_FILTER_MAX_SEGMENTS) {
            fail(cc, "path has more than %d segments", HB_FILTER_MAX_SEGMENTS);
            return -1;
        }
        n->segs[n->nsegs].name = start;
        n->segs[n->nsegs].each = each;
        n->nsegs++;
        char sep = *p;
        *end = '\0';
        if (sep == '\0')
            return 0;
        p++;
    }
bad:
    fail(cc, "invalid path (dot-separated segments of letters, digits and _, each optionally "
             "followed by [] for any element of an array)");
    return -1;
}

static fn_node_t *new_test(fn_cc_t *cc, const char *key, fn_op_t op) {
    fn_node_t *n = hb_calloc(1, sizeof(*n));
    n->kind = FN_TEST;
    n->op = op;
    if (compile_path(cc, key, n) < 0) {
        node_free(n);
        return NULL;
    }
    return n;
}

/* One operator of a condition object; cc->loc ends at the operator. */
static fn_node_t *compile_op(fn_cc_t *cc, const char *key, fn_op_t op, const json_t *v) {
    switch (op) {
    case OP_EQ:
    case OP_NE:
        if (check_scalar(cc, v) < 0)
            return NULL;
        break;
    case OP_IN:
    case OP_NIN:
        if (!json_is_array(v)) {
            fail(cc, "must be a non-empty array of values, got %s", type_name(v));
            return NULL;
        }
        if (json_array_size(v) == 0) {
            fail(cc, "must be a non-empty array of values");
            return NULL;
        }
        if (json_array_size(v) > HB_FILTER_MAX_LIST) {
            fail(cc, "has more than %d items", HB_FILTER_MAX_LIST);
            return NULL;
        }
        for (size_t i = 0; i < json_array_size(v); i++) {
            size_t saved = loc_push(cc, "[%zu]", i);
            if (check_scalar(cc, json_array_get(v, i)) < 0)
                return NULL;
            loc_pop(cc, saved);
        }
        break;
    case OP_EXISTS:
        if (!json_is_boolean(v)) {
            fail(cc, "must be true or false, got %s", type_name(v));
            return NULL;
        }
        break;
    case OP_PREFIX:
        if (!json_is_string(v)) {
            fail(cc, "must be a string, got %s", type_name(v));
            return NULL;
        }
        if (json_string_length(v) > HB_FILTER_MAX_STRING) {
            fail(cc, "string is longer than %d bytes", HB_FILTER_MAX_STRING);
            return NULL;
        }
        break;
    }
    fn_node_t *n = new_test(cc, key, op);
    if (!n)
        return NULL;
    if (op == OP_EXISTS)
        n->exists = json_is_true(v);
    else
        n->arg = json_deep_copy(v);
    return n;
}

static fn_node_t *new_group(fn_kind_t kind, size_t cap) {
    fn_node_t *n = hb_calloc(1, sizeof(*n));
    n->kind = kind;
    n->kids = cap ? hb_calloc(cap, sizeof(*n->kids)) : NULL;
    return n;
}

/* A group of one is its only member. */
static fn_node_t *collapse(fn_node_t *g) {
    if (g->kind == FN_AND && g->nkids == 1) {
        fn_node_t *only = g->kids[0];
        g->nkids = 0;
        node_free(g);
        return only;
    }
    return g;
}

/* "<path>": condition; cc->loc ends at the path. */
static fn_node_t *compile_condition(fn_cc_t *cc, const char *key, const json_t *cond) {
    char shown[256], path_shown[256];
    fn_node_t probe = {0}; /* the path is checked before its condition */
    int path_ok = compile_path(cc, key, &probe) == 0;
    free(probe.path);
    if (!path_ok)
        return NULL;
    if (json_is_array(cond)) {
        fail(cc, "a condition cannot be an array; use {\"$in\": [...]} to match any of several "
                 "values");
        return NULL;
    }
    if (!json_is_object(cond)) {
        if (count_node(cc) < 0 || check_scalar(cc, cond) < 0)
            return NULL;
        return compile_op(cc, key, OP_EQ, cond);
    }
    if (json_object_size(cond) == 0) {
        fail(cc, "condition must not be empty; give at least one operator " KNOWN_OPS);
        return NULL;
    }
    fn_node_t *all = new_group(FN_AND, json_object_size(cond));
    const char *opkey;
    const json_t *v;
    json_object_foreach((json_t *)cond, opkey, v) {
        size_t i;
        for (i = 0; i < HB_ARRAY_SIZE(op_names); i++)
            if (!strcmp(opkey, op_names[i]))
                break;
        if (i == HB_ARRAY_SIZE(op_names)) {
            display(opkey, shown, sizeof(shown));
            display(key, path_shown, sizeof(path_shown));
            if (opkey[0] != '$')
                fail(cc,
                     "\"%s\" is not an operator " KNOWN_OPS "; to test a nested field, write "
                     "its dotted path as the key, e.g. \"%s.%s\"",
                     shown, path_shown, shown);
            else
                fail(cc, "unknown operator \"%s\" " KNOWN_OPS, shown);
            goto fail;
        }
        if (count_node(cc) < 0)
            goto fail;
        size_t saved = loc_push(cc, ".%s", op_names[i]);
        fn_node_t *t = compile_op(cc, key, (fn_op_t)i, v);
        if (!t)
            goto fail;
        loc_pop(cc, saved);
        all->kids[all->nkids++] = t;
    }
    return collapse(all);
fail:
    node_free(all);
    return NULL;
}

static fn_node_t *compile_filter(fn_cc_t *cc, const json_t *spec, int depth);

/* "$and"/"$or": [filter, ...]; cc->loc ends at the combinator. */
static fn_node_t *compile_list(fn_cc_t *cc, fn_kind_t kind, const json_t *v, int depth) {
    if (!json_is_array(v)) {
        fail(cc, "must be a non-empty array of filters, got %s", type_name(v));
        return NULL;
    }
    if (json_array_size(v) == 0) {
        fail(cc, "must be a non-empty array of filters");
        return NULL;
    }
    fn_node_t *g = new_group(kind, json_array_size(v));
    for (size_t i = 0; i < json_array_size(v); i++) {
        size_t saved = loc_push(cc, "[%zu]", i);
        fn_node_t *k = compile_filter(cc, json_array_get(v, i), depth + 1);
        if (!k) {
            node_free(g);
            return NULL;
        }
        loc_pop(cc, saved);
        g->kids[g->nkids++] = k;
    }
    return g;
}

static fn_node_t *compile_entry(fn_cc_t *cc, const char *key, const json_t *v, int depth) {
    char shown[256];
    if (key[0] != '$') {
        display(key, shown, sizeof(shown));
        size_t saved = loc_push(cc, ".\"%s\"", shown);
        fn_node_t *n = compile_condition(cc, key, v);
        if (n)
            loc_pop(cc, saved);
        return n;
    }
    int is_and = !strcmp(key, "$and"), is_or = !strcmp(key, "$or"), is_not = !strcmp(key, "$not");
    if (!is_and && !is_or && !is_not) {
        display(key, shown, sizeof(shown));
        fail(cc,
             "unknown combinator \"%s\" (known: $and $or $not; operators such as $eq go inside "
             "a path's condition: {\"<path>\": {\"$eq\": ...}})",
             shown);
        return NULL;
    }
    if (count_node(cc) < 0)
        return NULL;
    size_t saved = loc_push(cc, ".%s", key);
    fn_node_t *n;
    if (is_not) {
        fn_node_t *k = compile_filter(cc, v, depth + 1);
        if (!k)
            return NULL;
        n = new_group(FN_NOT, 1);
        n->kids[n->nkids++] = k;
    } else {
        n = compile_list(cc, is_and ? FN_AND : FN_OR, v, depth);
        if (!n)
            return NULL;
    }
    loc_pop(cc, saved);
    return n;
}

/* A filter object: all entries must hold. depth 1 is the top. */
static fn_node_t *compile_filter(fn_cc_t *cc, const json_t *spec, int depth) {
    if (!json_is_object(spec)) {
        fail(cc, "must be a JSON object, got %s", type_name(spec));
        return NULL;
    }
    if (depth > HB_FILTER_MAX_DEPTH) {
        fail(cc, "filters nest deeper than %d levels", HB_FILTER_MAX_DEPTH);
        return NULL;
    }
    if (json_object_size(spec) == 0 && depth > 1) {
        fail(cc, "must not be empty (only the whole filter may be {}, which matches every "
                 "event)");
        return NULL;
    }
    fn_node_t *all = new_group(FN_AND, json_object_size(spec));
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)spec, key, v) {
        fn_node_t *k = compile_entry(cc, key, v, depth);
        if (!k) {
            node_free(all);
            return NULL;
        }
        all->kids[all->nkids++] = k;
    }
    return collapse(all);
}

hb_filter_t *hb_filter_compile(const json_t *spec, char *errstr, size_t errstr_size) {
    fn_cc_t cc = {.err = errstr, .errsz = errstr_size};
    if (!spec) {
        hb_seterr(errstr, errstr_size, "filter: missing");
        return NULL;
    }
    cc.loclen = (size_t)snprintf(cc.loc, sizeof(cc.loc), "filter");
    fn_node_t *root = compile_filter(&cc, spec, 1);
    if (!root)
        return NULL;
    hb_filter_t *f = hb_calloc(1, sizeof(*f));
    f->root = root;
    return f;
}

void hb_filter_free(hb_filter_t *f) {
    if (!f)
        return;
    node_free(f->root);
    free(f);
}

/* --- Matching ---------------------------------------------------------------- */

/* Strings byte for byte, numbers numerically (1 equals 1.0), booleans and
 * null by type; values of different types never equal. */
static int scalar_eq(const json_t *a, const json_t *b) {
    if (json_is_string(a))
        return json_is_string(b) && json_string_length(a) == json_string_length(b) &&
               !memcmp(json_string_value(a), json_string_value(b), json_string_length(a));
    if (json_is_number(a)) {
        if (!json_is_number(b))
            return 0;
        if (json_is_integer(a) && json_is_integer(b))
            return json_integer_value(a) == json_integer_value(b);
        return json_number_value(a) == json_number_value(b);
    }
    return is_scalar(a) && json_typeof(a) == json_typeof(b);
}

/* Whether this one value, reached by the path, qualifies for the operator. */
static int value_hits(const fn_node_t *t, const json_t *v) {
    switch (t->op) {
    case OP_EQ:
    case OP_NE: return scalar_eq(v, t->arg);
    case OP_IN:
    case OP_NIN:
        for (size_t i = 0; i < json_array_size(t->arg); i++)
            if (scalar_eq(v, json_array_get(t->arg, i)))
                return 1;
        return 0;
    case OP_EXISTS: return !json_is_null(v);
    case OP_PREFIX: {
        size_t n = json_string_length(t->arg);
        return json_is_string(v) && json_string_length(v) >= n &&
               !memcmp(json_string_value(v), json_string_value(t->arg), n);
    }
    }
    return 0;
}

/* Whether some value the path yields from segment i on qualifies. */
static int any_value(const fn_node_t *t, int i, const json_t *v) {
    if (i == t->nsegs)
        return value_hits(t, v);
    if (!json_is_object(v))
        return 0;
    const json_t *child = json_object_get(v, t->segs[i].name);
    if (!child)
        return 0;
    if (!t->segs[i].each)
        return any_value(t, i + 1, child);
    if (!json_is_array(child))
        return 0;
    for (size_t k = 0; k < json_array_size(child); k++)
        if (any_value(t, i + 1, json_array_get(child, k)))
            return 1;
    return 0;
}

static int node_match(const fn_node_t *n, const json_t *event) {
    switch (n->kind) {
    case FN_AND:
        for (size_t i = 0; i < n->nkids; i++)
            if (!node_match(n->kids[i], event))
                return 0;
        return 1;
    case FN_OR:
        for (size_t i = 0; i < n->nkids; i++)
            if (node_match(n->kids[i], event))
                return 1;
        return 0;
    case FN_NOT: return !node_match(n->kids[0], event);
    case FN_TEST: break;
    }
    int hit = any_value(n, 0, event);
    switch (n->op) {
    case OP_NE:
    case OP_NIN: return !hit;
    case OP_EXISTS: return n->exists ? hit : !hit;
    default: return hit;
    }
}

int hb_filter_match(const hb_filter_t *f, const json_t *event) {
    return !f || node_match(f->root, event);
}
