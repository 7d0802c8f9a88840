/*
 * Avro codec: JSON <-> single-object-encoded Avro. See hb_codec.h.
 *
 * The design: avro-c does the binary work (generic values, the memory reader
 * and writer, and avro_resolved_writer for schema resolution); this file adds
 * what avro-c lacks or gets wrong for us:
 *
 *  - the Parsing Canonical Form and its CRC-64-AVRO fingerprint, computed from
 *    the schema's JSON text (avro_schema_to_json is not canonical: it keeps
 *    namespaces, short names and whitespace);
 *  - a structural check of the binary body against the writer schema before
 *    avro-c reads it. avro-c trusts the lengths it reads (a string length of
 *    2^40 becomes a malloc of 2^40, a negative one writes before a buffer, an
 *    array count of 2^62 nulls loops for ever), so every length, count, union
 *    branch and enum index is checked here against the bytes that are really
 *    there; after the check avro-c only ever sees well-formed data, and the
 *    check also yields the exact body length, so trailing bytes are caught;
 *  - reader fields that an older writer lacks: avro-c 1.11 refuses to resolve
 *    them ("Reader field x doesn't appear in writer", defaults are a TODO), so
 *    each registered writer resolves into a *projection* of the reader schema
 *    without those fields, and the fields' defaults are put back when the
 *    value becomes JSON (a null default simply leaves the member out);
 *  - the natural JSON mapping in both directions, with errors that name the
 *    path ("target[0].id: expected null or a string");
 *  - the Schema Registry framing (0x00 + big-endian id) beside the
 *    single-object one: writers are looked up by fingerprint or by id, and an
 *    id the codec was not given is a distinct answer (HB_CODEC_UNKNOWN_ID),
 *    since fetching it is the caller's business (hb_registry);
 *  - direct walks for the hot paths, on a plan of the reader schema made
 *    once (hb_plan_t): encode goes from the jansson value straight to the
 *    Avro bytes, and decode of a message written with the reader schema from
 *    the bytes straight to JSON or JSON text, each giving exactly what the
 *    avro-c way gives (tests compare them, hb_codec_set_generic_only).
 *
 * Threads: a codec is used by one thread at a time (it reuses one value per
 * schema). The fingerprint helpers are pure and callable from anywhere.
 *
 * What must hold: every decode either returns a JSON object or an error; no
 * input bytes can make it crash, allocate more than the input's size in
 * strings, or loop without consuming input.
 */
#include "hb_codec.h"

#include <avro.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_buf.h"
#include "hb_json.h"

#define HB_SO_MAGIC0 0xC3
#define HB_SO_MAGIC1 0x01
#define HB_SO_HEADER 10
#define HB_SR_MAGIC 0x00
#define HB_SR_HEADER 5
#define HB_CODEC_MAX_DEPTH 64
/* Arrays and maps whose items may take zero bytes (nulls, empty records) are
 * capped, since their length cannot be checked against the input size. */
#define HB_CODEC_MAX_EMPTY_ITEMS 65536
#define HB_PATH_MAX 256
/* encode's buffer is kept from call to call up to this size (a larger
 * event's is freed after it) */
#define HB_ENC_KEEP (256 * 1024)

/* One writer schema the codec can read: by fingerprint (single-object
 * encoding) or by Schema Registry id; is_reader when it is the reader itself
 * (only for an id: nothing to resolve then). */
typedef struct {
    uint64_t fp;
    int has_id, is_reader;
    uint32_t id;
    avro_schema_t schema; /* the writer schema */
    avro_schema_t proj;   /* the reader without fields the writer lacks */
    avro_value_iface_t *proj_iface;
    avro_value_t proj_value;
    avro_value_iface_t *resolver; /* avro_resolved_writer: writer -> proj */
    avro_value_t resolved;
    json_t *defaults; /* {record fullname: {field: non-null default}} */
} hb_writer_t;

struct hb_codec_s {
    avro_schema_t reader;
    json_t *reader_json;
    uint64_t fp;
    avro_value_iface_t *iface;
    avro_value_t value;
    json_t *field_defaults; /* {record fullname: {field: default}} of the reader */
    avro_reader_t rd;
    hb_writer_t *writers;
    size_t writers_cnt;
    int generic_only;         /* hb_codec_set_generic_only: never the direct walk */
    struct hb_plan_s *plan;   /* the reader schema for the direct walk; NULL: none */
    struct hb_plan_s **plans; /* every node of it, to free */
    size_t plans_cnt;
    hb_buf_t enc; /* encode's direct walk writes here */
};

/* ------------------------------------------------------------ CRC-64-AVRO */

#define HB_CRC64_EMPTY 0xc15d213aa4d7a795ULL

static uint64_t hb_crc64_table[256];
static pthread_once_t hb_crc64_once = PTHREAD_ONCE_INIT;

static void crc64_table_init(void) {
    for (int i = 0; i < 256; i++) {
        uint64_t f = (uint64_t)i;
        for (int j = 0; j < 8; j++)
            f = (f >> 1) ^ (HB_CRC64_EMPTY & (0 - (f & 1)));
        hb_crc64_table[i] = f;
    }
}

uint64_t hb_crc64_avro(const void *buf, size_t len) {
    const unsigned char *p = buf;
    uint64_t fp = HB_CRC64_EMPTY;
    (void)pthread_once(&hb_crc64_once, crc64_table_init);
    for (size_t i = 0; i < len; i++)
        fp = (fp >> 8) ^ hb_crc64_table[(fp ^ p[i]) & 0xff];
    return fp;
}

/* ------------------------------------------------- JSON text (hb_buf) */

/* A JSON string literal with the minimal escaping the canonical form wants:
 * UTF-8 stays as is, only quote, backslash and control characters escape. */
static void buf_put_jstr(hb_buf_t *b, const char *s) {
    hb_buf_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        char esc[8];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            hb_buf_put(b, esc, 2);
        } else if (ch < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
            hb_buf_put(b, esc, 6);
        } else {
            hb_buf_put(b, s, 1);
        }
    }
    hb_buf_put(b, "\"", 1);
}

/* ------------------------------------------------ schema JSON: full names */

static const char *const hb_primitives[] = {"null",  "boolean", "int",   "long",
                                            "float", "double",  "bytes", "string"};

static int is_primitive(const char *s) {
    for (size_t i = 0; i < HB_ARRAY_SIZE(hb_primitives); i++)
        if (!strcmp(s, hb_primitives[i]))
            return 1;
    return 0;
}

/* Full name of a named type definition and the namespace its children
 * inherit. Returns -1 when "name" is missing. */
static int named_fullname(const json_t *def, const char *ns, char *full, size_t fullsz,
                          char *child_ns, size_t child_nssz) {
    const char *name = json_string_value(json_object_get(def, "name"));
    const char *space = json_string_value(json_object_get(def, "namespace"));
    const char *dot;
    if (!name || !*name)
        return -1;
    if (strchr(name, '.')) {
        snprintf(full, fullsz, "%s", name);
    } else {
        if (space)
            ns = space; /* "" means the null namespace */
        if (ns && *ns)
            snprintf(full, fullsz, "%s.%s", ns, name);
        else
            snprintf(full, fullsz, "%s", name);
    }
    dot = strrchr(full, '.');
    snprintf(child_ns, child_nssz, "%.*s", dot ? (int)(dot - full) : 0, full);
    return 0;
}

/* A reference to a named type, as a full name: ns.name when that was
 * defined (or nothing by that bare name was), else the bare name. */
static void ref_fullname(const char *ref, const char *ns, const json_t *defined, char *full,
                         size_t fullsz) {
    if (strchr(ref, '.') || !ns || !*ns) {
        snprintf(full, fullsz, "%s", ref);
        return;
    }
    snprintf(full, fullsz, "%s.%s", ns, ref);
    if (!json_object_get(defined, full) && json_object_get(defined, ref))
        snprintf(full, fullsz, "%s", ref);
}

/* ------------------------------------------------ Parsing Canonical Form */

static int pcf_write(hb_buf_t *b, const json_t *s, const char *ns, json_t *defined, int depth,
                     char *errstr, size_t errstr_size);

static int pcf_write_named(hb_buf_t *b, const json_t *s, const char *type, const char *ns,
                           json_t *defined, int depth, char *errstr, size_t errstr_size) {
    char full[512], cns[512];
    if (named_fullname(s, ns, full, sizeof(full), cns, sizeof(cns)) < 0) {
        hb_seterr(errstr, errstr_size, "schema: a %s without a name", type);
        return -1;
    }
    (void)json_object_set_new(defined, full, json_true());
    hb_buf_puts(b, "{\"name\":");
    buf_put_jstr(b, full);
    hb_buf_puts(b, ",\"type\":");
    buf_put_jstr(b, type);
    if (!strcmp(type, "record") || !strcmp(type, "error")) {
        const json_t *fields = json_object_get(s, "fields"), *f;
        size_t i;
        if (!json_is_array(fields)) {
            hb_seterr(errstr, errstr_size, "schema: record %s without fields", full);
            return -1;
        }
        hb_buf_puts(b, ",\"fields\":[");
        json_array_foreach(fields, i, f) {
            const char *fname = json_string_value(json_object_get(f, "name"));
            if (!fname) {
                hb_seterr(errstr, errstr_size, "schema: a field of %s without a name", full);
                return -1;
            }
            hb_buf_puts(b, i ? ",{\"name\":" : "{\"name\":");
            buf_put_jstr(b, fname);
            hb_buf_puts(b, ",\"type\":");
            if (pcf_write(b, json_object_get(f, "type"), cns, defined, depth + 1, errstr,
                          errstr_size) < 0)
                return -1;
            hb_buf_puts(b, "}");
        }
        hb_buf_puts(b, "]}");
    } else if (!strcmp(type, "enum")) {
        const json_t *syms = json_object_get(s, "symbols"), *sym;
        size_t i;
        hb_buf_puts(b, ",\"symbols\":[");
        json_array_foreach(syms, i, sym) {
            if (i)
                hb_buf_puts(b, ",");
            buf_put_jstr(b, json_string_value(sym) ? json_string_value(sym) : "");
        }
        hb_buf_puts(b, "]}");
    } else { /* fixed */
        char num[32];
        snprintf(num, sizeof(num), ",\"size\":%" JSON_INTEGER_FORMAT "}",
                 json_integer_value(json_object_get(s, "size")));
        hb_buf_puts(b, num);
    }
    return 0;
}

static int pcf_write(hb_buf_t *b, const json_t *s, const char *ns, json_t *defined, int depth,
                     char *errstr, size_t errstr_size) {
    if (depth > HB_CODEC_MAX_DEPTH) {
        hb_seterr(errstr, errstr_size, "schema: nested too deeply");
        return -1;
    }
    if (json_is_string(s)) {
        const char *name = json_string_value(s);
        char full[512];
        if (is_primitive(name)) {
            buf_put_jstr(b, name);
        } else {
            ref_fullname(name, ns, defined, full, sizeof(full));
            buf_put_jstr(b, full);
        }
        return 0;
    }
    if (json_is_array(s)) {
        const json_t *branch;
        size_t i;
        hb_buf_puts(b, "[");
        json_array_foreach(s, i, branch) {
            if (i)
                hb_buf_puts(b, ",");
            if (pcf_write(b, branch, ns, defined, depth + 1, errstr, errstr_size) < 0)
                return -1;
        }
        hb_buf_puts(b, "]");
        return 0;
    }
    if (json_is_object(s)) {
        const json_t *type = json_object_get(s, "type");
        const char *t = json_string_value(type);
        if (!t) /* {"type": {...}} or {"type": [...]} */
            return pcf_write(b, type, ns, defined, depth + 1, errstr, errstr_size);
        if (is_primitive(t)) {
            buf_put_jstr(b, t);
            return 0;
        }
        if (!strcmp(t, "record") || !strcmp(t, "error") || !strcmp(t, "enum") ||
            !strcmp(t, "fixed"))
            return pcf_write_named(b, s, t, ns, defined, depth, errstr, errstr_size);
        if (!strcmp(t, "array") || !strcmp(t, "map")) {
            int arr = !strcmp(t, "array");
            hb_buf_puts(b,
                        arr ? "{\"type\":\"array\",\"items\":" : "{\"type\":\"map\",\"values\":");
            if (pcf_write(b, json_object_get(s, arr ? "items" : "values"), ns, defined, depth + 1,
                          errstr, errstr_size) < 0)
                return -1;
            hb_buf_puts(b, "}");
            return 0;
        }
        /* A reference written as {"type": "Name"}. */
        return pcf_write(b, type, ns, defined, depth + 1, errstr, errstr_size);
    }
    hb_seterr(errstr, errstr_size, "schema: unexpected JSON where a type belongs");
    return -1;
}

/* Canonical form of a parsed schema; caller frees *out. */
static int schema_canonical(const json_t *schema, char **out, char *errstr, size_t errstr_size) {
    hb_buf_t b = {0};
    json_t *defined = json_object();
    int r = pcf_write(&b, schema, NULL, defined, 0, errstr, errstr_size);
    json_decref(defined);
    if (r < 0) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    return 0;
}

int hb_codec_canonical_form(const char *schema_json, char **out, char *errstr, size_t errstr_size) {
    json_error_t jerr;
    json_t *s = json_loads(schema_json, JSON_DECODE_ANY, &jerr);
    int r;
    if (!s) {
        hb_seterr(errstr, errstr_size, "schema: invalid JSON at line %d column %d: %s", jerr.line,
                  jerr.column, jerr.text);
        return -1;
    }
    r = schema_canonical(s, out, errstr, errstr_size);
    json_decref(s);
    return r;
}

/* ------------------------------------------ walking record definitions */

typedef int (*record_visit_fn)(json_t *record, const char *fullname, void *ctx, char *errstr,
                               size_t errstr_size);

/* Calls visit for every record definition in a parsed schema (parents first;
 * the visitor may remove fields, which are then not walked). */
static int records_walk(json_t *s, const char *ns, record_visit_fn visit, void *ctx, int depth,
                        char *errstr, size_t errstr_size) {
    json_t *child;
    size_t i;
    if (depth > HB_CODEC_MAX_DEPTH) {
        hb_seterr(errstr, errstr_size, "schema: nested too deeply");
        return -1;
    }
    if (json_is_array(s)) {
        json_array_foreach(s, i, child) if (records_walk(child, ns, visit, ctx, depth + 1, errstr,
                                                         errstr_size) < 0) return -1;
        return 0;
    }
    if (!json_is_object(s))
        return 0;
    const char *t = json_string_value(json_object_get(s, "type"));
    if (!t)
        return records_walk(json_object_get(s, "type"), ns, visit, ctx, depth + 1, errstr,
                            errstr_size);
    if (!strcmp(t, "array"))
        return records_walk(json_object_get(s, "items"), ns, visit, ctx, depth + 1, errstr,
                            errstr_size);
    if (!strcmp(t, "map"))
        return records_walk(json_object_get(s, "values"), ns, visit, ctx, depth + 1, errstr,
                            errstr_size);
    if (strcmp(t, "record") && strcmp(t, "error"))
        return 0;
    char full[512], cns[512];
    if (named_fullname(s, ns, full, sizeof(full), cns, sizeof(cns)) < 0) {
        hb_seterr(errstr, errstr_size, "schema: a record without a name");
        return -1;
    }
    if (visit(s, full, ctx, errstr, errstr_size) < 0)
        return -1;
    json_array_foreach(json_object_get(s, "fields"), i,
                       child) if (records_walk(json_object_get(child, "type"), cns, visit, ctx,
                                               depth + 1, errstr, errstr_size) < 0) return -1;
    return 0;
}

/* Collects {fullname: {field: default}} of every field with a default. */
static int collect_defaults(json_t *record, const char *fullname, void *ctx, char *errstr,
                            size_t errstr_size) {
    json_t *all = ctx, *mine = json_object(), *f;
    size_t i;
    (void)errstr;
    (void)errstr_size;
    json_array_foreach(json_object_get(record, "fields"), i, f) {
        const char *fname = json_string_value(json_object_get(f, "name"));
        json_t *def = json_object_get(f, "default");
        if (fname && def)
            (void)json_object_set(mine, fname, def);
    }
    (void)json_object_set_new(all, fullname, mine);
    return 0;
}

/* Collects {fullname: {field: true}} and {shortname: {field: true}}. */
static int collect_fields(json_t *record, const char *fullname, void *ctx, char *errstr,
                          size_t errstr_size) {
    json_t *all = ctx, *names = json_object(), *f;
    const char *dot = strrchr(fullname, '.');
    size_t i;
    (void)errstr;
    (void)errstr_size;
    json_array_foreach(json_object_get(record, "fields"), i, f) {
        const char *fname = json_string_value(json_object_get(f, "name"));
        if (fname)
            (void)json_object_set_new(names, fname, json_true());
    }
    (void)json_object_set(all, fullname, names);
    if (dot && !json_object_get(all, dot + 1))
        (void)json_object_set(all, dot + 1, names);
    json_decref(names);
    return 0;
}

typedef struct {
    json_t *writer_fields; /* from collect_fields over the writer */
    json_t *defaults;      /* out: {fullname: {field: non-null default}} */
} project_ctx_t;

/* Drops the reader fields the writer's same-named record lacks. */
static int project_record(json_t *record, const char *fullname, void *ctx, char *errstr,
                          size_t errstr_size) {
    project_ctx_t *pc = ctx;
    const char *dot = strrchr(fullname, '.');
    json_t *wf = json_object_get(pc->writer_fields, fullname), *fields, *f;
    if (!wf && dot)
        wf = json_object_get(pc->writer_fields, dot + 1);
    if (!wf)
        return 0; /* not in the writer: avro-c judges the resolution */
    fields = json_object_get(record, "fields");
    for (size_t i = 0; i < json_array_size(fields);) {
        const char *fname;
        json_t *def;
        f = json_array_get(fields, i);
        fname = json_string_value(json_object_get(f, "name"));
        if (!fname || json_object_get(wf, fname)) {
            i++;
            continue;
        }
        def = json_object_get(f, "default");
        if (!def) {
            hb_seterr(errstr, errstr_size,
                      "reader field %s.%s is missing from the writer schema and has no default",
                      fullname, fname);
            return -1;
        }
        if (!json_is_null(def)) {
            json_t *mine = json_object_get(pc->defaults, fullname);
            if (!mine) {
                mine = json_object();
                (void)json_object_set_new(pc->defaults, fullname, mine);
            }
            (void)json_object_set(mine, fname, def);
        }
        (void)json_array_remove(fields, i);
    }
    return 0;
}

/* A named type is defined once, where it first appears, and referenced by
 * name after that: GeographicalContext is defined in Client and referenced
 * from Request.ipChain. When project_record drops the field the definition
 * is in (a writer without `client`), the projection still references it, and
 * would not parse. So the projection is walked again in document order, and
 * the first reference to a type it no longer defines is replaced by the
 * reader's definition (projected the same way), the namespace spelled out so
 * that it keeps its full name. */

/* {fullname: definition} of every named type in s. */
static void collect_named(json_t *s, const char *ns, json_t *out, int depth) {
    json_t *child;
    size_t i;
    const char *t;
    if (depth > HB_CODEC_MAX_DEPTH)
        return;
    if (json_is_array(s)) {
        json_array_foreach(s, i, child) collect_named(child, ns, out, depth + 1);
        return;
    }
    if (!json_is_object(s))
        return;
    t = json_string_value(json_object_get(s, "type"));
    if (!t)
        collect_named(json_object_get(s, "type"), ns, out, depth + 1);
    else if (!strcmp(t, "array"))
        collect_named(json_object_get(s, "items"), ns, out, depth + 1);
    else if (!strcmp(t, "map"))
        collect_named(json_object_get(s, "values"), ns, out, depth + 1);
    else if (!strcmp(t, "record") || !strcmp(t, "error") || !strcmp(t, "enum") ||
             !strcmp(t, "fixed")) {
        char full[512], cns[512];
        if (named_fullname(s, ns, full, sizeof(full), cns, sizeof(cns)) < 0)
            return;
        if (!json_object_get(out, full))
            (void)json_object_set(out, full, s);
        json_array_foreach(json_object_get(s, "fields"), i, child)
            collect_named(json_object_get(child, "type"), cns, out, depth + 1);
    }
}

typedef struct {
    json_t *defined;      /* full names defined so far in the projection */
    json_t *reader_named; /* collect_named over the reader */
    project_ctx_t *pc;
} restore_ctx_t;

/* The type s as it belongs in the projection (a new reference): s itself, or
 * the reader's definition where s references a type not defined yet, or a
 * reference where s defines one again. NULL on error. */
static json_t *restore_type(json_t *s, const char *ns, restore_ctx_t *rc, int depth, char *errstr,
                            size_t errstr_size) {
    json_t *child;
    size_t i;
    const char *t;
    if (depth > HB_CODEC_MAX_DEPTH) {
        hb_seterr(errstr, errstr_size, "schema: nested too deeply");
        return NULL;
    }
    if (json_is_string(s) && !is_primitive(json_string_value(s))) {
        char full[512], cns[512];
        const char *dot;
        json_t *def, *copy, *r;
        ref_fullname(json_string_value(s), ns, rc->defined, full, sizeof(full));
        if (json_object_get(rc->defined, full))
            return json_incref(s);
        def = json_object_get(rc->reader_named, full);
        if (!def) {
            snprintf(full, sizeof(full), "%s", json_string_value(s));
            def = json_object_get(rc->reader_named, full);
        }
        if (!def)
            return json_incref(s); /* unknown: avro-c says so */
        copy = json_deep_copy(def);
        dot = strrchr(full, '.');
        snprintf(cns, sizeof(cns), "%.*s", dot ? (int)(dot - full) : 0, full);
        (void)json_object_set_new(copy, "namespace", json_string(cns));
        if (records_walk(copy, NULL, project_record, rc->pc, 0, errstr, errstr_size) < 0) {
            json_decref(copy);
            return NULL;
        }
        r = restore_type(copy, ns, rc, depth + 1, errstr, errstr_size);
        json_decref(copy);
        return r;
    }
    if (json_is_array(s)) {
        json_array_foreach(s, i, child) {
            json_t *r = restore_type(child, ns, rc, depth + 1, errstr, errstr_size);
            if (!r)
                return NULL;
            (void)json_array_set_new(s, i, r);
        }
        return json_incref(s);
    }
    if (!json_is_object(s))
        return json_incref(s);
    t = json_string_value(json_object_get(s, "type"));
    if (t && is_primitive(t))
        return json_incref(s);
    if (!t ||
        (strcmp(t, "record") && strcmp(t, "error") && strcmp(t, "enum") && strcmp(t, "fixed"))) {
        /* {"type": <a type>}, {"type": "Name"}, an array's items, a map's values */
        const char *key = !t || (strcmp(t, "array") && strcmp(t, "map")) ? "type"
                          : !strcmp(t, "array")                          ? "items"
                                                                         : "values";
        json_t *r = json_object_get(s, key);
        if (r) {
            r = restore_type(r, ns, rc, depth + 1, errstr, errstr_size);
            if (!r)
                return NULL;
            (void)json_object_set_new(s, key, r);
        }
        return json_incref(s);
    }
    {
        char full[512], cns[512];
        if (named_fullname(s, ns, full, sizeof(full), cns, sizeof(cns)) < 0)
            return json_incref(s); /* avro-c says why */
        if (json_object_get(rc->defined, full))
            return json_string(full); /* defined again (given back earlier): a reference */
        (void)json_object_set_new(rc->defined, full, json_true());
        json_array_foreach(json_object_get(s, "fields"), i, child) {
            json_t *r = json_object_get(child, "type");
            if (!r)
                continue;
            r = restore_type(r, cns, rc, depth + 1, errstr, errstr_size);
            if (!r)
                return NULL;
            (void)json_object_set_new(child, "type", r);
        }
    }
    return json_incref(s);
}

/* ------------------------------------------------ hostile-bytes check */

typedef struct {
    const unsigned char *p, *end;
} hb_cursor_t;

static int cur_long_slow(hb_cursor_t *c, int64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        unsigned char b;
        if (c->p >= c->end)
            return -1;
        b = *c->p++;
        if (shift == 63 && (b & 0x7e))
            return -1; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
    }
    return -1;
}

/* A zigzag varint; most are one byte (lengths of short strings, union
 * branches, enum symbols, small numbers): that case without the loop. */
static inline int cur_long(hb_cursor_t *c, int64_t *out) {
    if (c->p < c->end && !(*c->p & 0x80)) {
        unsigned v = *c->p++;
        *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
        return 0;
    }
    return cur_long_slow(c, out);
}

/* A little-endian float (4 bytes) or double (8) as a double; -1 when the
 * input is short. NaN and the infinities are read too: JSON has no word for
 * them, so the callers write them as null (absent, in a record). */
static int cur_real(hb_cursor_t *c, int is_float, double *out) {
    if (is_float) {
        float f;
        uint32_t u = 0;
        if (c->end - c->p < 4)
            return -1;
        for (int i = 0; i < 4; i++)
            u |= (uint32_t)c->p[i] << (8 * i);
        memcpy(&f, &u, sizeof(f));
        *out = f;
        c->p += 4;
    } else {
        uint64_t u = 0;
        if (c->end - c->p < 8)
            return -1;
        for (int i = 0; i < 8; i++)
            u |= (uint64_t)c->p[i] << (8 * i);
        memcpy(out, &u, sizeof(*out));
        c->p += 8;
    }
    return 0;
}

static int cur_skip(hb_cursor_t *c, int64_t n) {
    if (n < 0 || n > c->end - c->p)
        return -1;
    c->p += n;
    return 0;
}

static avro_schema_t deref(avro_schema_t s) {
    while (s && is_avro_link(s))
        s = avro_schema_link_target(s);
    return s;
}

/* Fewest bytes one value of s takes (0 when it may take none). */
static int64_t min_size(avro_schema_t s, int depth) {
    s = deref(s);
    if (!s || depth > 16)
        return 0;
    switch (avro_typeof(s)) {
    case AVRO_NULL: return 0;
    case AVRO_FLOAT: return 4;
    case AVRO_DOUBLE: return 8;
    case AVRO_FIXED: return avro_schema_fixed_size(s);
    case AVRO_RECORD: {
        int64_t n = 0;
        for (size_t i = 0; i < avro_schema_record_size(s); i++)
            n += min_size(avro_schema_record_field_get_by_index(s, (int)i), depth + 1);
        return n;
    }
    default: /* every other type starts with at least one byte */ return 1;
    }
}

/* A value of a type without children (size: a fixed's bytes, an enum's
 * symbols): steps over it, -1 if it does not fit or is out of range. */
static int check_scalar(avro_type_t type, hb_cursor_t *c, int64_t size) {
    int64_t n;
    switch (type) {
    case AVRO_NULL: return 0;
    case AVRO_BOOLEAN:
        if (c->p >= c->end || *c->p > 1)
            return -1;
        c->p++;
        return 0;
    case AVRO_INT32: return cur_long(c, &n) < 0 || n < INT32_MIN || n > INT32_MAX ? -1 : 0;
    case AVRO_INT64: return cur_long(c, &n);
    case AVRO_FLOAT: return cur_skip(c, 4);
    case AVRO_DOUBLE: return cur_skip(c, 8);
    case AVRO_STRING:
    case AVRO_BYTES: return cur_long(c, &n) < 0 ? -1 : cur_skip(c, n);
    case AVRO_FIXED: return cur_skip(c, size);
    case AVRO_ENUM: return cur_long(c, &n) < 0 || n < 0 || n >= size ? -1 : 0;
    default: return -1;
    }
}

static int check_value(avro_schema_t s, hb_cursor_t *c, int depth);

/* The header of an array's or map's next block: its item count (0 at the
 * end), checked against the bytes left (per: the least bytes an item takes;
 * items of none are counted in *total, up to HB_CODEC_MAX_EMPTY_ITEMS). A
 * negative count is followed by the block's size, which must fit. */
static int next_block(hb_cursor_t *c, int64_t per, int64_t *total, int64_t *count) {
    int64_t size;
    if (cur_long(c, count) < 0)
        return -1;
    if (*count == 0)
        return 0;
    if (*count < 0) {
        if (*count == INT64_MIN || cur_long(c, &size) < 0 || size < 0 || size > c->end - c->p)
            return -1;
        *count = -*count;
    }
    if (per > 0 ? *count > (c->end - c->p) / per : (*total += *count) > HB_CODEC_MAX_EMPTY_ITEMS)
        return -1;
    return 0;
}

static int check_blocks(avro_schema_t items, int is_map, hb_cursor_t *c, int depth) {
    int64_t per = min_size(items, 0) + (is_map ? 1 : 0), total = 0;
    for (;;) {
        int64_t count;
        if (next_block(c, per, &total, &count) < 0)
            return -1;
        if (count == 0)
            return 0;
        for (int64_t i = 0; i < count; i++) {
            int64_t klen;
            if (is_map && (cur_long(c, &klen) < 0 || cur_skip(c, klen) < 0))
                return -1;
            if (check_value(items, c, depth + 1) < 0)
                return -1;
        }
    }
}

static int check_value(avro_schema_t s, hb_cursor_t *c, int depth) {
    int64_t n;
    s = deref(s);
    if (!s || depth > HB_CODEC_MAX_DEPTH)
        return -1;
    switch (avro_typeof(s)) {
    case AVRO_FIXED: return check_scalar(AVRO_FIXED, c, avro_schema_fixed_size(s));
    case AVRO_ENUM: return check_scalar(AVRO_ENUM, c, avro_schema_enum_number_of_symbols(s));
    case AVRO_UNION:
        if (cur_long(c, &n) < 0 || n < 0 || (uint64_t)n >= avro_schema_union_size(s))
            return -1;
        return check_value(avro_schema_union_branch(s, (int)n), c, depth + 1);
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(s); i++)
            if (check_value(avro_schema_record_field_get_by_index(s, (int)i), c, depth + 1) < 0)
                return -1;
        return 0;
    case AVRO_ARRAY: return check_blocks(avro_schema_array_items(s), 0, c, depth);
    case AVRO_MAP: return check_blocks(avro_schema_map_values(s), 1, c, depth);
    default: return check_scalar(avro_typeof(s), c, 0);
    }
}

/* ------------------------------------------------------ JSON -> Avro */

/* The path is kept for error messages only, but pushed for every value
 * decoded: plain copies, not snprintf (same result, truncated the same way). */
static void path_put(char *path, size_t plen, const char *s, size_t n) {
    if (plen >= HB_PATH_MAX - 1)
        return;
    if (n > HB_PATH_MAX - 1 - plen)
        n = HB_PATH_MAX - 1 - plen;
    memcpy(path + plen, s, n);
    path[plen + n] = '\0';
}

static void path_push(char *path, size_t plen, const char *name) {
    if (plen) {
        path_put(path, plen, ".", 1);
        plen += plen < HB_PATH_MAX - 1;
    }
    path_put(path, plen, name, strlen(name));
}

static void path_index(char *path, size_t plen, size_t i) {
    char num[24], *p = num + sizeof(num);
    *--p = ']';
    do
        *--p = (char)('0' + i % 10);
    while ((i /= 10) != 0);
    *--p = '[';
    path_put(path, plen, p, (size_t)(num + sizeof(num) - p));
}

static const char *at(const char *path) {
    return *path ? path : "(root)";
}

static const char *type_desc(avro_schema_t s) {
    switch (avro_typeof(s)) {
    case AVRO_NULL: return "null";
    case AVRO_BOOLEAN: return "a boolean";
    case AVRO_INT32:
    case AVRO_INT64: return "an integer";
    case AVRO_FLOAT:
    case AVRO_DOUBLE: return "a number";
    case AVRO_STRING:
    case AVRO_BYTES: return "a string";
    case AVRO_ENUM: return "a symbol string";
    case AVRO_FIXED: return "a fixed-size string";
    case AVRO_RECORD:
    case AVRO_MAP: return "an object";
    case AVRO_ARRAY: return "an array";
    default: return "a value";
    }
}

static void union_desc(avro_schema_t u, char *out, size_t outsz) {
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < avro_schema_union_size(u) && n < outsz; i++) {
        int w = snprintf(out + n, outsz - n, "%s%s", i ? " or " : "",
                         type_desc(deref(avro_schema_union_branch(u, (int)i))));
        if (w < 0)
            break;
        n += (size_t)w;
    }
}

/* Does the JSON value's kind fit a schema of type t (for picking a union
 * branch)? s: the schema (an enum's symbols); fixed_size: a fixed's size. */
static int json_fits(avro_type_t t, avro_schema_t s, int64_t fixed_size, const json_t *j) {
    switch (t) {
    case AVRO_NULL: return json_is_null(j);
    case AVRO_BOOLEAN: return json_is_boolean(j);
    case AVRO_INT32: {
        json_int_t v = json_integer_value(j);
        return json_is_integer(j) && v >= INT32_MIN && v <= INT32_MAX;
    }
    case AVRO_INT64: return json_is_integer(j);
    case AVRO_FLOAT:
    case AVRO_DOUBLE: return json_is_number(j);
    case AVRO_STRING:
    case AVRO_BYTES: return json_is_string(j);
    case AVRO_ENUM:
        return json_is_string(j) && avro_schema_enum_get_by_name(s, json_string_value(j)) >= 0;
    case AVRO_FIXED: return json_is_string(j) && (int64_t)json_string_length(j) == fixed_size;
    case AVRO_RECORD:
    case AVRO_MAP: return json_is_object(j);
    case AVRO_ARRAY: return json_is_array(j);
    default: return 0;
    }
}

static int kind_fits(const json_t *j, avro_schema_t s) {
    avro_type_t t = avro_typeof(s);
    return json_fits(t, s, t == AVRO_FIXED ? avro_schema_fixed_size(s) : 0, j);
}

static int accepts_null(avro_schema_t s) {
    s = deref(s);
    if (is_avro_null(s))
        return 1;
    if (is_avro_union(s))
        for (size_t i = 0; i < avro_schema_union_size(s); i++)
            if (is_avro_null(deref(avro_schema_union_branch(s, (int)i))))
                return 1;
    return 0;
}

/* The full name field_defaults knows record s by. */
static void record_fullname(avro_schema_t s, char *full, size_t fullsz) {
    const char *space = avro_schema_namespace(s);
    if (space && *space)
        snprintf(full, fullsz, "%s.%s", space, avro_schema_name(s));
    else
        snprintf(full, fullsz, "%s", avro_schema_name(s));
}

static int json_to_value(hb_codec_t *c, const json_t *j, avro_value_t *v, char *path, int depth,
                         char *errstr, size_t errstr_size);

static int record_from_json(hb_codec_t *c, const json_t *j, avro_value_t *v, avro_schema_t s,
                            char *path, int depth, char *errstr, size_t errstr_size) {
    size_t plen = strlen(path);
    char full[512];
    json_t *defaults;
    record_fullname(s, full, sizeof(full));
    defaults = json_object_get(c->field_defaults, full);
    for (size_t i = 0; i < avro_schema_record_size(s); i++) {
        const char *fname = avro_schema_record_field_name(s, (int)i);
        const json_t *member = json_object_get(j, fname);
        avro_value_t child;
        int r;
        path_push(path, plen, fname);
        if (!member || json_is_null(member)) {
            const json_t *def = json_object_get(defaults, fname);
            avro_schema_t fs = avro_schema_record_field_get_by_index(s, (int)i);
            if (!accepts_null(fs)) {
                if (!def || json_is_null(def)) {
                    hb_seterr(errstr, errstr_size, "%s: %s", path,
                              member ? "must not be null" : "missing");
                    return -1;
                }
                member = def;
            }
            if (!member)
                member = json_null();
        }
        if (avro_value_get_by_index(v, i, &child, NULL) != 0) {
            hb_seterr(errstr, errstr_size, "%s: %s", path, avro_strerror());
            return -1;
        }
        r = json_to_value(c, member, &child, path, depth + 1, errstr, errstr_size);
        path[plen] = '\0';
        if (r < 0)
            return -1;
    }
    return 0;
}

static int json_to_value(hb_codec_t *c, const json_t *j, avro_value_t *v, char *path, int depth,
                         char *errstr, size_t errstr_size) {
    avro_schema_t s = deref(avro_value_get_schema(v));
    size_t plen = strlen(path);
    int r = 0;
    if (depth > HB_CODEC_MAX_DEPTH) {
        hb_seterr(errstr, errstr_size, "%s: nested too deeply", at(path));
        return -1;
    }
    if (!is_avro_union(s) && !kind_fits(j, s)) {
        if (is_avro_enum(s) && json_is_string(j))
            hb_seterr(errstr, errstr_size, "%s: \"%s\" is not a symbol of %s", at(path),
                      json_string_value(j), avro_schema_name(s));
        else if (avro_typeof(s) == AVRO_INT32 && json_is_integer(j))
            hb_seterr(errstr, errstr_size, "%s: %" JSON_INTEGER_FORMAT " is out of range", at(path),
                      json_integer_value(j));
        else
            hb_seterr(errstr, errstr_size, "%s: expected %s", at(path), type_desc(s));
        return -1;
    }
    switch (avro_typeof(s)) {
    case AVRO_NULL: r = avro_value_set_null(v); break;
    case AVRO_BOOLEAN: r = avro_value_set_boolean(v, json_is_true(j)); break;
    case AVRO_INT32: r = avro_value_set_int(v, (int32_t)json_integer_value(j)); break;
    case AVRO_INT64: r = avro_value_set_long(v, (int64_t)json_integer_value(j)); break;
    case AVRO_FLOAT: r = avro_value_set_float(v, (float)json_number_value(j)); break;
    case AVRO_DOUBLE: r = avro_value_set_double(v, json_number_value(j)); break;
    case AVRO_STRING:
        /* the size avro-c wants counts the terminating NUL */
        r = avro_value_set_string_len(v, json_string_value(j), json_string_length(j) + 1);
        break;
    case AVRO_BYTES:
        r = avro_value_set_bytes(v, (void *)json_string_value(j), json_string_length(j));
        break;
    case AVRO_FIXED:
        r = avro_value_set_fixed(v, (void *)json_string_value(j), json_string_length(j));
        break;
    case AVRO_ENUM:
        r = avro_value_set_enum(v, avro_schema_enum_get_by_name(s, json_string_value(j)));
        break;
    case AVRO_UNION: {
        size_t n = avro_schema_union_size(s), i;
        avro_value_t branch;
        for (i = 0; i < n; i++)
            if (kind_fits(j, deref(avro_schema_union_branch(s, (int)i))))
                break;
        if (i == n) {
            char want[256];
            union_desc(s, want, sizeof(want));
            hb_seterr(errstr, errstr_size, "%s: expected %s", at(path), want);
            return -1;
        }
        if (avro_value_set_branch(v, (int)i, &branch) != 0) {
            r = -1;
            break;
        }
        return json_to_value(c, j, &branch, path, depth + 1, errstr, errstr_size);
    }
    case AVRO_RECORD: return record_from_json(c, j, v, s, path, depth, errstr, errstr_size);
    case AVRO_MAP: {
        const char *key;
        json_t *item;
        json_object_foreach((json_t *)j, key, item) {
            avro_value_t child;
            if (avro_value_add(v, key, &child, NULL, NULL) != 0) {
                r = -1;
                break;
            }
            path_push(path, plen, key);
            r = json_to_value(c, item, &child, path, depth + 1, errstr, errstr_size);
            path[plen] = '\0';
            if (r < 0)
                return -1;
        }
        break;
    }
    case AVRO_ARRAY: {
        size_t i;
        json_t *item;
        json_array_foreach(j, i, item) {
            avro_value_t child;
            if (avro_value_append(v, &child, NULL) != 0) {
                r = -1;
                break;
            }
            path_index(path, plen, i);
            r = json_to_value(c, item, &child, path, depth + 1, errstr, errstr_size);
            path[plen] = '\0';
            if (r < 0)
                return -1;
        }
        break;
    }
    default: hb_seterr(errstr, errstr_size, "%s: unsupported Avro type", at(path)); return -1;
    }
    if (r != 0) {
        hb_seterr(errstr, errstr_size, "%s: %s", at(path), avro_strerror());
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------ Avro -> JSON */

static int value_to_json(const json_t *defaults, avro_value_t *v, char *path, int depth,
                         json_t **out, char *errstr, size_t errstr_size);

static int record_to_json(const json_t *defaults, avro_value_t *v, avro_schema_t s, char *path,
                          int depth, json_t **out, char *errstr, size_t errstr_size) {
    size_t plen = strlen(path), n = 0;
    json_t *obj = json_object(), *extra;
    char full[512];
    const char *space = avro_schema_namespace(s);
    if (avro_value_get_size(v, &n) != 0)
        goto fail_avro;
    for (size_t i = 0; i < n; i++) {
        avro_value_t child;
        const char *name = NULL;
        json_t *cj = NULL;
        if (avro_value_get_by_index(v, i, &child, &name) != 0)
            goto fail_avro;
        path_push(path, plen, name);
        if (value_to_json(defaults, &child, path, depth + 1, &cj, errstr, errstr_size) < 0)
            goto fail;
        path[plen] = '\0';
        if (json_is_null(cj))
            json_decref(cj); /* null is absent in the natural mapping */
        else
            (void)json_object_set_new(obj, name, cj);
    }
    /* Defaults of reader fields this writer did not have (only a writer
     * older than the reader has any: skip the name for the others). */
    if (defaults && json_object_size(defaults) > 0) {
        if (space && *space)
            snprintf(full, sizeof(full), "%s.%s", space, avro_schema_name(s));
        else
            snprintf(full, sizeof(full), "%s", avro_schema_name(s));
        extra = json_object_get(defaults, full);
        if (extra)
            (void)json_object_update_missing(obj, extra);
    }
    *out = obj;
    return 0;
fail_avro:
    hb_seterr(errstr, errstr_size, "%s: %s", at(path), avro_strerror());
fail:
    json_decref(obj);
    return -1;
}

static int value_to_json(const json_t *defaults, avro_value_t *v, char *path, int depth,
                         json_t **out, char *errstr, size_t errstr_size) {
    avro_schema_t s = deref(avro_value_get_schema(v));
    size_t plen = strlen(path);
    json_t *j = NULL;
    int r = 0;
    if (depth > HB_CODEC_MAX_DEPTH) {
        hb_seterr(errstr, errstr_size, "%s: nested too deeply", at(path));
        return -1;
    }
    switch (avro_typeof(s)) {
    case AVRO_NULL: j = json_null(); break;
    case AVRO_BOOLEAN: {
        int b = 0;
        r = avro_value_get_boolean(v, &b);
        j = json_boolean(b);
        break;
    }
    case AVRO_INT32: {
        int32_t i = 0;
        r = avro_value_get_int(v, &i);
        j = json_integer(i);
        break;
    }
    case AVRO_INT64: {
        int64_t l = 0;
        r = avro_value_get_long(v, &l);
        j = json_integer((json_int_t)l);
        break;
    }
    case AVRO_FLOAT:
    case AVRO_DOUBLE: {
        double d = 0;
        float f = 0;
        r = avro_typeof(s) == AVRO_FLOAT ? avro_value_get_float(v, &f)
                                         : avro_value_get_double(v, &d);
        if (avro_typeof(s) == AVRO_FLOAT)
            d = f;
        j = isfinite(d) ? json_real(d) : json_null(); /* JSON has no NaN, no infinity */
        break;
    }
    case AVRO_STRING: {
        const char *str = NULL;
        size_t size = 0;
        r = avro_value_get_string(v, &str, &size);
        if (!r) {
            j = json_stringn(str ? str : "", size ? size - 1 : 0);
            if (!j) {
                hb_seterr(errstr, errstr_size, "%s: not valid UTF-8", at(path));
                return -1;
            }
        }
        break;
    }
    case AVRO_BYTES:
    case AVRO_FIXED: {
        const void *bytes = NULL;
        size_t size = 0;
        r = avro_typeof(s) == AVRO_BYTES ? avro_value_get_bytes(v, &bytes, &size)
                                         : avro_value_get_fixed(v, &bytes, &size);
        if (!r) {
            j = json_stringn(bytes ? bytes : "", size);
            if (!j) {
                hb_seterr(errstr, errstr_size, "%s: bytes are not valid UTF-8", at(path));
                return -1;
            }
        }
        break;
    }
    case AVRO_ENUM: {
        int e = 0;
        const char *sym;
        r = avro_value_get_enum(v, &e);
        if (!r) {
            sym = avro_schema_enum_get(s, e);
            if (!sym) {
                hb_seterr(errstr, errstr_size, "%s: enum index %d out of range", at(path), e);
                return -1;
            }
            j = json_string(sym);
        }
        break;
    }
    case AVRO_UNION: {
        avro_value_t branch;
        if (avro_value_get_current_branch(v, &branch) != 0) {
            r = -1;
            break;
        }
        return value_to_json(defaults, &branch, path, depth + 1, out, errstr, errstr_size);
    }
    case AVRO_RECORD: return record_to_json(defaults, v, s, path, depth, out, errstr, errstr_size);
    case AVRO_MAP:
    case AVRO_ARRAY: {
        int is_map = avro_typeof(s) == AVRO_MAP;
        size_t n = 0;
        j = is_map ? json_object() : json_array();
        if (avro_value_get_size(v, &n) != 0) {
            r = -1;
            break;
        }
        for (size_t i = 0; i < n; i++) {
            avro_value_t child;
            const char *key = NULL;
            json_t *cj = NULL;
            if (avro_value_get_by_index(v, i, &child, &key) != 0) {
                r = -1;
                break;
            }
            if (is_map)
                path_push(path, plen, key);
            else
                path_index(path, plen, i);
            if (value_to_json(defaults, &child, path, depth + 1, &cj, errstr, errstr_size) < 0) {
                json_decref(j);
                return -1;
            }
            path[plen] = '\0'; /* the key itself may not be printable */
            if (is_map && json_object_set_new(j, key, cj) != 0) {
                /* jansson refuses keys that are not UTF-8: the message is
                 * poison, like a string value that is not UTF-8 */
                hb_seterr(errstr, errstr_size, "%s: a map key is not valid UTF-8", at(path));
                json_decref(j);
                return -1;
            }
            if (!is_map)
                (void)json_array_append_new(j, cj);
        }
        break;
    }
    default: hb_seterr(errstr, errstr_size, "%s: unsupported Avro type", at(path)); return -1;
    }
    if (r != 0 || !j) {
        hb_seterr(errstr, errstr_size, "%s: %s", at(path), r ? avro_strerror() : "out of memory");
        json_decref(j);
        return -1;
    }
    *out = j;
    return 0;
}

/* ------------------------------------------- Avro -> JSON, from the bytes */

/* The common case, a message written with the reader schema itself, goes
 * from the bytes to JSON in one walk, without avro-c's generic value in
 * between (reading into it and walking it again was most of decode's cost).
 * It runs after check_value, so every length, count, index and branch is
 * known to fit; it makes exactly the JSON value_to_json would make of the
 * value avro-c reads (records in field order with null members left out,
 * unions as their branch, enums as symbols, map keys up to a NUL, as avro-c
 * keeps them). Anything else it is not sure of (an error of any kind, a map
 * key seen twice, which avro-c merges, too deep a value) answers -1, and the
 * caller decodes the message the general way, which also words the error. */
/* The reader schema as the direct walk reads it: what avro-c's schema
 * accessors would answer (links followed, fields and branches by index,
 * names, symbols), looked up once when the codec is made instead of in
 * avro-c's tables for every value of every message. */
typedef struct hb_plan_s {
    avro_type_t type;
    size_t n;                /* record fields, union branches, enum symbols */
    struct hb_plan_s **kids; /* field or branch plans; kids[0]: array items, map values */
    const char **names;      /* field names (the schema's own strings) */
    const char **syms;       /* enum symbols */
    int64_t fixed_size;
    int64_t item_min;     /* arrays, maps: min_size of an item (check_blocks' bound) */
    avro_schema_t schema; /* to find a plan again (recursive schemas) */
    /* The text the JSON walk writes: a record's "name": per field, an enum's
     * "symbol" (NULL: not UTF-8, the general way decides), with lengths. */
    char **text;
    size_t *text_len;
    /* What encode reads of a record's fields: the default record_from_json
     * would take (borrowed from the codec's field_defaults; NULL: none) and
     * whether the field's type takes null (accepts_null). */
    const json_t **defs;
    unsigned char *nullable;
    size_t *name_len; /* strlen of each field name, for json_object_getn */
} hb_plan_t;

/* s as a JSON string into p->text[i], followed by suffix. */
static void plan_text(hb_plan_t *p, size_t i, const char *s, const char *suffix) {
    hb_buf_t b = {0};
    hb_json_put_str(&b, s, strlen(s));
    hb_buf_puts(&b, suffix);
    p->text[i] = b.p;
    p->text_len[i] = b.len;
}

static hb_plan_t *plan_build(hb_codec_t *c, avro_schema_t s, int depth) {
    s = deref(s);
    if (!s || depth > HB_CODEC_MAX_DEPTH)
        return NULL;
    for (size_t i = 0; i < c->plans_cnt; i++)
        if (c->plans[i]->schema == s)
            return c->plans[i]; /* a named type met again */
    hb_plan_t *p = hb_calloc(1, sizeof(*p));
    c->plans = hb_realloc(c->plans, (c->plans_cnt + 1) * sizeof(*c->plans));
    c->plans[c->plans_cnt++] = p; /* before the children: a recursive type finds itself */
    p->schema = s;
    p->type = avro_typeof(s);
    switch (p->type) {
    case AVRO_NULL:
    case AVRO_BOOLEAN:
    case AVRO_INT32:
    case AVRO_INT64:
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
    case AVRO_STRING:
    case AVRO_BYTES: return p;
    case AVRO_FIXED: p->fixed_size = avro_schema_fixed_size(s); return p;
    case AVRO_ENUM:
        p->n = (size_t)avro_schema_enum_number_of_symbols(s);
        p->syms = hb_calloc(p->n ? p->n : 1, sizeof(*p->syms));
        p->text = hb_calloc(p->n ? p->n : 1, sizeof(*p->text));
        p->text_len = hb_calloc(p->n ? p->n : 1, sizeof(*p->text_len));
        for (size_t i = 0; i < p->n; i++) {
            if (!(p->syms[i] = avro_schema_enum_get(s, (int)i)))
                return NULL;
            if (hb_json_utf8_ok(p->syms[i], strlen(p->syms[i])))
                plan_text(p, i, p->syms[i], "");
        }
        return p;
    case AVRO_RECORD:
    case AVRO_UNION: {
        const json_t *defaults = NULL;
        p->n = p->type == AVRO_RECORD ? avro_schema_record_size(s) : avro_schema_union_size(s);
        p->kids = hb_calloc(p->n ? p->n : 1, sizeof(*p->kids));
        p->names = hb_calloc(p->n ? p->n : 1, sizeof(*p->names));
        p->text = hb_calloc(p->n ? p->n : 1, sizeof(*p->text));
        p->text_len = hb_calloc(p->n ? p->n : 1, sizeof(*p->text_len));
        if (p->type == AVRO_RECORD) {
            char full[512];
            record_fullname(s, full, sizeof(full));
            defaults = json_object_get(c->field_defaults, full);
            p->defs = hb_calloc(p->n ? p->n : 1, sizeof(*p->defs));
            p->name_len = hb_calloc(p->n ? p->n : 1, sizeof(*p->name_len));
            p->nullable = hb_calloc(p->n ? p->n : 1, sizeof(*p->nullable));
        }
        for (size_t i = 0; i < p->n; i++) {
            avro_schema_t k = p->type == AVRO_RECORD
                                  ? avro_schema_record_field_get_by_index(s, (int)i)
                                  : avro_schema_union_branch(s, (int)i);
            if (p->type == AVRO_RECORD) {
                /* members are set unchecked: a name must be what jansson accepts */
                p->names[i] = avro_schema_record_field_name(s, (int)i);
                if (!p->names[i] || !hb_json_utf8_ok(p->names[i], strlen(p->names[i])))
                    return NULL;
                plan_text(p, i, p->names[i], ":");
                p->name_len[i] = strlen(p->names[i]);
                p->defs[i] = json_object_get(defaults, p->names[i]);
                p->nullable[i] = (unsigned char)accepts_null(k);
            }
            if (!(p->kids[i] = plan_build(c, k, depth + 1)))
                return NULL;
        }
        return p;
    }
    case AVRO_ARRAY:
    case AVRO_MAP: {
        avro_schema_t items =
            p->type == AVRO_MAP ? avro_schema_map_values(s) : avro_schema_array_items(s);
        p->item_min = min_size(items, 0);
        p->kids = hb_calloc(1, sizeof(*p->kids));
        p->kids[0] = plan_build(c, items, depth + 1);
        return p->kids[0] ? p : NULL;
    }
    default: return NULL;
    }
}

static void plans_free(hb_codec_t *c) {
    for (size_t i = 0; i < c->plans_cnt; i++) {
        free(c->plans[i]->kids);
        free(c->plans[i]->names);
        free(c->plans[i]->syms);
        if (c->plans[i]->text)
            for (size_t j = 0; j < c->plans[i]->n; j++)
                free(c->plans[i]->text[j]);
        free(c->plans[i]->text);
        free(c->plans[i]->text_len);
        free(c->plans[i]->defs);
        free(c->plans[i]->nullable);
        free(c->plans[i]->name_len);
        free(c->plans[i]);
    }
    free(c->plans);
    c->plans = NULL;
    c->plans_cnt = 0;
    c->plan = NULL;
}

/* check_value and check_blocks on the plan: the same checks, the same
 * answers, without avro-c's accessors. */
static int check_plan(const hb_plan_t *p, hb_cursor_t *c, int depth);

static int check_plan_blocks(const hb_plan_t *p, hb_cursor_t *c, int depth) {
    int is_map = p->type == AVRO_MAP;
    int64_t per = p->item_min + (is_map ? 1 : 0), total = 0;
    for (;;) {
        int64_t count;
        if (next_block(c, per, &total, &count) < 0)
            return -1;
        if (count == 0)
            return 0;
        for (int64_t i = 0; i < count; i++) {
            int64_t klen;
            if (is_map && (cur_long(c, &klen) < 0 || cur_skip(c, klen) < 0))
                return -1;
            if (check_plan(p->kids[0], c, depth + 1) < 0)
                return -1;
        }
    }
}

static int check_plan(const hb_plan_t *p, hb_cursor_t *c, int depth) {
    int64_t n;
    if (depth > HB_CODEC_MAX_DEPTH)
        return -1;
    switch (p->type) {
    case AVRO_FIXED: return check_scalar(AVRO_FIXED, c, p->fixed_size);
    case AVRO_ENUM: return check_scalar(AVRO_ENUM, c, (int64_t)p->n);
    case AVRO_UNION:
        if (cur_long(c, &n) < 0 || n < 0 || (uint64_t)n >= p->n)
            return -1;
        return check_plan(p->kids[n], c, depth + 1);
    case AVRO_RECORD:
        for (size_t i = 0; i < p->n; i++)
            if (check_plan(p->kids[i], c, depth + 1) < 0)
                return -1;
        return 0;
    case AVRO_ARRAY:
    case AVRO_MAP: return check_plan_blocks(p, c, depth);
    default: return check_scalar(p->type, c, 0);
    }
}

static int fast_to_json(const hb_plan_t *p, hb_cursor_t *c, int depth, json_t **out);

static int fast_blocks(const hb_plan_t *p, hb_cursor_t *c, int depth, json_t **out) {
    int is_map = p->type == AVRO_MAP;
    json_t *j = is_map ? json_object() : json_array();
    if (!j)
        return -1;
    for (;;) {
        int64_t count, size;
        if (cur_long(c, &count) < 0)
            goto fail;
        if (count == 0)
            break;
        if (count < 0) {
            if (count == INT64_MIN || cur_long(c, &size) < 0)
                goto fail;
            count = -count;
        }
        for (int64_t i = 0; i < count; i++) {
            const char *key = NULL;
            size_t klen = 0;
            json_t *cj = NULL;
            if (is_map) {
                int64_t n;
                if (cur_long(c, &n) < 0 || n < 0 || n > c->end - c->p)
                    goto fail;
                key = (const char *)c->p;
                klen = strnlen(key, (size_t)n);
                c->p += n;
            }
            if (fast_to_json(p->kids[0], c, depth + 1, &cj) < 0)
                goto fail;
            if (is_map && json_object_getn(j, key, klen)) {
                json_decref(cj); /* a key seen twice: the general way decides */
                goto fail;
            }
            /* both take the reference, also when they fail */
            if (is_map ? json_object_setn_new(j, key, klen, cj) != 0
                       : json_array_append_new(j, cj) != 0)
                goto fail;
        }
    }
    *out = j;
    return 0;
fail:
    json_decref(j);
    return -1;
}

static int fast_to_json(const hb_plan_t *p, hb_cursor_t *c, int depth, json_t **out) {
    int64_t n;
    json_t *j = NULL;
    if (depth > HB_CODEC_MAX_DEPTH)
        return -1;
    switch (p->type) {
    case AVRO_NULL: j = json_null(); break;
    case AVRO_BOOLEAN:
        if (c->p >= c->end)
            return -1;
        j = json_boolean(*c->p++);
        break;
    case AVRO_INT32:
    case AVRO_INT64:
        if (cur_long(c, &n) < 0)
            return -1;
        j = json_integer((json_int_t)(p->type == AVRO_INT32 ? (int32_t)n : n));
        break;
    case AVRO_FLOAT:
    case AVRO_DOUBLE: {
        double d;
        if (cur_real(c, p->type == AVRO_FLOAT, &d) < 0)
            return -1;
        j = isfinite(d) ? json_real(d) : json_null();
        break;
    }
    case AVRO_STRING:
    case AVRO_BYTES:
    case AVRO_FIXED:
        if (p->type == AVRO_FIXED)
            n = p->fixed_size;
        else if (cur_long(c, &n) < 0)
            return -1;
        if (n < 0 || n > c->end - c->p)
            return -1;
        j = json_stringn((const char *)c->p, (size_t)n); /* NULL when not UTF-8 */
        c->p += n;
        break;
    case AVRO_ENUM:
        if (cur_long(c, &n) < 0 || n < 0 || (uint64_t)n >= p->n)
            return -1;
        j = json_string(p->syms[n]);
        break;
    case AVRO_UNION:
        if (cur_long(c, &n) < 0 || n < 0 || (uint64_t)n >= p->n)
            return -1;
        return fast_to_json(p->kids[n], c, depth + 1, out);
    case AVRO_RECORD:
        j = json_object();
        if (!j)
            return -1;
        for (size_t i = 0; i < p->n; i++) {
            json_t *cj = NULL;
            if (fast_to_json(p->kids[i], c, depth + 1, &cj) < 0) {
                json_decref(j);
                return -1;
            }
            if (json_is_null(cj))
                continue; /* null is absent in the natural mapping */
            if (json_object_set_new_nocheck(j, p->names[i], cj) != 0) {
                json_decref(j);
                return -1;
            }
        }
        break;
    case AVRO_MAP:
    case AVRO_ARRAY: return fast_blocks(p, c, depth, out);
    default: return -1;
    }
    if (!j)
        return -1;
    *out = j;
    return 0;
}

/* ------------------------------------------- Avro -> JSON text, from the bytes */

/* The direct walk again, writing the JSON text hb_json_put would write of the
 * value fast_to_json makes, straight into doc (no jansson value in between):
 * record fields in order with null members left out (written, then taken
 * back), strings and map keys checked for UTF-8 as jansson checks them, reals
 * as hb_json writes them and kept exactly in doc->reals. The members of the
 * record that is the message (`top`) are indexed. The same cases answer -1 (not sure: the
 * general way decides); a map key seen twice is found by comparing the keys'
 * text (escaping is one to one), up to HB_TEXT_MAP_KEYS keys per map, and a
 * larger map takes the general way too. */
#define HB_TEXT_MAP_KEYS 64

static int fast_to_text(const hb_plan_t *p, hb_cursor_t *c, int depth, hb_jdoc_t *d, int *is_null,
                        int top);

static int fast_text_blocks(const hb_plan_t *p, hb_cursor_t *c, int depth, hb_jdoc_t *d) {
    int is_map = p->type == AVRO_MAP;
    hb_buf_t *b = &d->text;
    size_t keys[HB_TEXT_MAP_KEYS], keys_len[HB_TEXT_MAP_KEYS], nkeys = 0, items = 0;
    int64_t per = p->item_min + (is_map ? 1 : 0), total = 0;
    hb_json_append(b, is_map ? "{" : "[", 1);
    for (;;) {
        int64_t count;
        if (next_block(c, per, &total, &count) < 0) /* check_plan_blocks' bounds */
            return -1;
        if (count == 0)
            break;
        for (int64_t i = 0; i < count; i++) {
            int is_null;
            if (items++)
                hb_json_append(b, ",", 1);
            if (is_map) {
                int64_t n;
                const char *key;
                size_t klen, at;
                if (cur_long(c, &n) < 0 || n < 0 || n > c->end - c->p)
                    return -1;
                key = (const char *)c->p;
                klen = strnlen(key, (size_t)n); /* avro-c keeps a key up to a NUL */
                c->p += n;
                at = b->len;
                if (nkeys == HB_TEXT_MAP_KEYS || hb_json_put_utf8(b, key, klen) < 0)
                    return -1;
                for (size_t k = 0; k < nkeys; k++)
                    if (keys_len[k] == b->len - at &&
                        !memcmp(b->p + keys[k], b->p + at, keys_len[k]))
                        return -1; /* a key seen twice: the general way decides */
                keys[nkeys] = at;
                keys_len[nkeys++] = b->len - at;
                hb_json_append(b, ":", 1);
            }
            if (fast_to_text(p->kids[0], c, depth + 1, d, &is_null, 0) < 0)
                return -1;
        }
    }
    hb_json_append(b, is_map ? "}" : "]", 1);
    return 0;
}

static int fast_to_text(const hb_plan_t *p, hb_cursor_t *c, int depth, hb_jdoc_t *d, int *is_null,
                        int top) {
    hb_buf_t *b = &d->text;
    int64_t n;
    *is_null = 0;
    if (depth > HB_CODEC_MAX_DEPTH)
        return -1;
    switch (p->type) {
    case AVRO_NULL:
        *is_null = 1;
        hb_json_append(b, "null", 4);
        return 0;
    case AVRO_BOOLEAN:
        if (c->p >= c->end || *c->p > 1)
            return -1;
        if (*c->p++)
            hb_json_append(b, "true", 4);
        else
            hb_json_append(b, "false", 5);
        return 0;
    case AVRO_INT32:
    case AVRO_INT64:
        if (cur_long(c, &n) < 0 || (p->type == AVRO_INT32 && (n < INT32_MIN || n > INT32_MAX)))
            return -1;
        hb_json_put_integer(b, (json_int_t)n);
        return 0;
    case AVRO_FLOAT:
    case AVRO_DOUBLE: {
        double v;
        if (cur_real(c, p->type == AVRO_FLOAT, &v) < 0)
            return -1;
        if (!isfinite(v)) { /* JSON has no NaN, no infinity: null */
            *is_null = 1;
            hb_json_append(b, "null", 4);
            return 0;
        }
        hb_jdoc_add_real(d, v);
        hb_json_put_real(b, v);
        return 0;
    }
    case AVRO_STRING:
    case AVRO_BYTES:
    case AVRO_FIXED:
        if (p->type == AVRO_FIXED)
            n = p->fixed_size;
        else if (cur_long(c, &n) < 0)
            return -1;
        if (n < 0 || n > c->end - c->p || hb_json_put_utf8(b, (const char *)c->p, (size_t)n) < 0)
            return -1;
        c->p += n;
        return 0;
    case AVRO_ENUM:
        if (cur_long(c, &n) < 0 || n < 0 || (uint64_t)n >= p->n || !p->text[n])
            return -1;
        hb_json_append(b, p->text[n], p->text_len[n]);
        return 0;
    case AVRO_UNION:
        if (cur_long(c, &n) < 0 || n < 0 || (uint64_t)n >= p->n)
            return -1;
        return fast_to_text(p->kids[n], c, depth + 1, d, is_null, top);
    case AVRO_RECORD: {
        int first = 1;
        hb_json_append(b, "{", 1);
        for (size_t i = 0; i < p->n; i++) {
            size_t mark = b->len, key, val;
            const hb_plan_t *kid = p->kids[i];
            int kid_depth = depth + 1, null_member;
            if (kid->type == AVRO_UNION && depth + 1 <= HB_CODEC_MAX_DEPTH) {
                /* an optional field: its branch read first, so that a null
                 * one is skipped before its key is written */
                if (cur_long(c, &n) < 0 || n < 0 || (uint64_t)n >= kid->n)
                    return -1;
                kid = kid->kids[n];
                kid_depth = depth + 2;
                if (kid->type == AVRO_NULL && kid_depth <= HB_CODEC_MAX_DEPTH)
                    continue;
            }
            if (!first)
                hb_json_append(b, ",", 1);
            key = b->len + 1;
            hb_json_append(b, p->text[i], p->text_len[i]);
            val = b->len;
            if (fast_to_text(kid, c, kid_depth, d, &null_member, 0) < 0)
                return -1;
            if (null_member) { /* null is absent in the natural mapping */
                b->len = mark;
                continue;
            }
            first = 0;
            if (top)
                hb_jdoc_add_member(d, key, p->text_len[i] - 3, val, b->len - val);
        }
        hb_json_append(b, "}", 1);
        return 0;
    }
    case AVRO_MAP:
    case AVRO_ARRAY: return fast_text_blocks(p, c, depth, d);
    default: return -1;
    }
}

/* ------------------------------------------- JSON -> Avro, to the bytes */

/* The encode direction of the direct walk: the writer schema's plan and the
 * jansson value walked together, the Avro binary appended straight to a
 * buffer, with no avro-c generic value in between (building one, writing it
 * and freeing it again was most of the producer's cost per event). It
 * accepts exactly what json_to_value accepts and writes exactly what
 * avro_value_write writes of the value json_to_value builds:
 *  - record fields in schema order; a member absent or null takes the
 *    field's default when the field's type takes no null (record_from_json);
 *  - a union as the index of the first branch whose kind fits (kind_fits),
 *    then the value;
 *  - an array or a map as one block (its item count, then the items; a map's
 *    items as key then value, in the object's order), then a 0 count; an
 *    empty one as the 0 count alone;
 *  - long, int and enum index as zig-zag varints, boolean as one byte, float
 *    and double as IEEE little-endian, string, bytes as a length and the
 *    bytes, fixed as its bytes alone.
 * Errors are json_to_value's, word for word. The path they name is not kept
 * as the walk goes: each level leaves its step in enc_frame_t (a field or key
 * name, an array index, nothing for a union), and only an error writes the
 * path out, the way path_push and path_index would have built it.
 *
 * One case is not sure, a map key with a NUL inside (only a value built in
 * code can have one; jansson's parser refuses them): avro-c keeps the key up
 * to the NUL and merges keys that then collide. The walk answers
 * HB_ENC_GENERAL and the caller encodes the event the general way. */
#define HB_ENC_GENERAL (-2)

typedef struct {
    const char *name; /* a field name or map key; NULL: an array index, or no step */
    size_t index;
    int is_index;
} enc_frame_t;

typedef struct {
    hb_buf_t *b;
    enc_frame_t frame[HB_CODEC_MAX_DEPTH + 2]; /* frame[d]: the step into depth d */
    char *errstr;
    size_t errstr_size;
} enc_walk_t;

/* The path json_to_value would have at depth. */
static const char *enc_path(const enc_walk_t *w, int depth, char *path) {
    path[0] = '\0';
    for (int d = 1; d <= depth; d++) {
        const enc_frame_t *f = &w->frame[d];
        if (f->is_index)
            path_index(path, strlen(path), f->index);
        else if (f->name)
            path_push(path, strlen(path), f->name);
    }
    return path;
}

static inline void enc_room(hb_buf_t *b, size_t n) {
    if (b->cap - b->len <= n)
        hb_buf_reserve(b, n);
}

static inline void enc_long(hb_buf_t *b, int64_t v) {
    uint64_t u = ((uint64_t)v << 1) ^ (0 - ((uint64_t)v >> 63));
    unsigned char *p;
    enc_room(b, 10);
    p = (unsigned char *)b->p + b->len;
    while (u > 0x7f) {
        *p++ = (unsigned char)(u | 0x80);
        u >>= 7;
    }
    *p++ = (unsigned char)u;
    b->len = (size_t)(p - (unsigned char *)b->p);
}

static inline void enc_raw(hb_buf_t *b, const void *s, size_t n) {
    enc_room(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static inline void enc_le(hb_buf_t *b, uint64_t u, int n) {
    unsigned char *p;
    enc_room(b, 8);
    p = (unsigned char *)b->p + b->len;
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(u >> (8 * i));
    b->len += (size_t)n;
}

/* kind_fits on the plan. */
static int enc_fits(const hb_plan_t *p, const json_t *j) {
    return json_fits(p->type, p->schema, p->fixed_size, j);
}

static int enc_value(enc_walk_t *w, const hb_plan_t *p, const json_t *j, int depth);

static int enc_record(enc_walk_t *w, const hb_plan_t *p, const json_t *j, int depth) {
    enc_frame_t *f = &w->frame[depth + 1];
    f->is_index = 0;
    for (size_t i = 0; i < p->n; i++) {
        const json_t *member = json_object_getn(j, p->names[i], p->name_len[i]);
        int r;
        f->name = p->names[i];
        if (!member || json_is_null(member)) {
            if (!p->nullable[i]) {
                const json_t *def = p->defs[i];
                if (!def || json_is_null(def)) {
                    char path[HB_PATH_MAX];
                    hb_seterr(w->errstr, w->errstr_size, "%s: %s", enc_path(w, depth + 1, path),
                              member ? "must not be null" : "missing");
                    return -1;
                }
                member = def;
            }
            if (!member)
                member = json_null();
        }
        if ((r = enc_value(w, p->kids[i], member, depth + 1)) < 0)
            return r;
    }
    return 0;
}

static int enc_value(enc_walk_t *w, const hb_plan_t *p, const json_t *j, int depth) {
    hb_buf_t *b = w->b;
    char path[HB_PATH_MAX];
    if (depth > HB_CODEC_MAX_DEPTH) {
        hb_seterr(w->errstr, w->errstr_size, "%s: nested too deeply", at(enc_path(w, depth, path)));
        return -1;
    }
    if (p->type != AVRO_UNION && !enc_fits(p, j)) {
        enc_path(w, depth, path);
        if (p->type == AVRO_ENUM && json_is_string(j))
            hb_seterr(w->errstr, w->errstr_size, "%s: \"%s\" is not a symbol of %s", at(path),
                      json_string_value(j), avro_schema_name(p->schema));
        else if (p->type == AVRO_INT32 && json_is_integer(j))
            hb_seterr(w->errstr, w->errstr_size, "%s: %" JSON_INTEGER_FORMAT " is out of range",
                      at(path), json_integer_value(j));
        else
            hb_seterr(w->errstr, w->errstr_size, "%s: expected %s", at(path), type_desc(p->schema));
        return -1;
    }
    switch (p->type) {
    case AVRO_NULL: return 0;
    case AVRO_BOOLEAN:
        enc_room(b, 1);
        b->p[b->len++] = json_is_true(j) ? 1 : 0;
        return 0;
    case AVRO_INT32:
    case AVRO_INT64: enc_long(b, (int64_t)json_integer_value(j)); return 0;
    case AVRO_FLOAT: {
        float v = (float)json_number_value(j);
        uint32_t u;
        memcpy(&u, &v, sizeof(u));
        enc_le(b, u, 4);
        return 0;
    }
    case AVRO_DOUBLE: {
        double v = json_number_value(j);
        uint64_t u;
        memcpy(&u, &v, sizeof(u));
        enc_le(b, u, 8);
        return 0;
    }
    case AVRO_STRING:
    case AVRO_BYTES:
        enc_long(b, (int64_t)json_string_length(j));
        enc_raw(b, json_string_value(j), json_string_length(j));
        return 0;
    case AVRO_FIXED: enc_raw(b, json_string_value(j), json_string_length(j)); return 0;
    case AVRO_ENUM:
        enc_long(b, avro_schema_enum_get_by_name(p->schema, json_string_value(j)));
        return 0;
    case AVRO_UNION: {
        size_t i;
        for (i = 0; i < p->n; i++)
            if (enc_fits(p->kids[i], j))
                break;
        if (i == p->n) {
            char want[256];
            union_desc(p->schema, want, sizeof(want));
            hb_seterr(w->errstr, w->errstr_size, "%s: expected %s", at(enc_path(w, depth, path)),
                      want);
            return -1;
        }
        enc_long(b, (int64_t)i);
        w->frame[depth + 1].name = NULL;
        w->frame[depth + 1].is_index = 0;
        return enc_value(w, p->kids[i], j, depth + 1);
    }
    case AVRO_RECORD: return enc_record(w, p, j, depth);
    case AVRO_MAP: {
        enc_frame_t *f = &w->frame[depth + 1];
        size_t n = json_object_size(j);
        if (n) {
            enc_long(b, (int64_t)n);
            f->is_index = 0;
            for (void *it = json_object_iter((json_t *)j); it;
                 it = json_object_iter_next((json_t *)j, it)) {
                const char *key = json_object_iter_key(it);
                size_t klen = json_object_iter_key_len(it);
                int r;
                if (memchr(key, '\0', klen))
                    return HB_ENC_GENERAL; /* avro-c cuts the key at the NUL */
                enc_long(b, (int64_t)klen);
                enc_raw(b, key, klen);
                f->name = key;
                if ((r = enc_value(w, p->kids[0], json_object_iter_value(it), depth + 1)) < 0)
                    return r;
            }
        }
        enc_long(b, 0);
        return 0;
    }
    case AVRO_ARRAY: {
        enc_frame_t *f = &w->frame[depth + 1];
        size_t n = json_array_size(j);
        if (n) {
            enc_long(b, (int64_t)n);
            for (size_t i = 0; i < n; i++) {
                int r;
                f->name = NULL;
                f->is_index = 1;
                f->index = i;
                if ((r = enc_value(w, p->kids[0], json_array_get(j, i), depth + 1)) < 0)
                    return r;
            }
        }
        enc_long(b, 0);
        return 0;
    }
    default: return HB_ENC_GENERAL;
    }
}

/* ------------------------------------------------------------- the codec */

/* Does v hold a string with a NUL byte? */
static int holds_nul(const json_t *v, int depth) {
    const char *key;
    json_t *child;
    size_t i;
    if (depth > HB_CODEC_MAX_DEPTH)
        return 0;
    if (json_is_string(v))
        return json_string_length(v) != strlen(json_string_value(v));
    if (json_is_array(v))
        json_array_foreach((json_t *)v, i, child) if (holds_nul(child, depth + 1)) return 1;
    if (json_is_object(v))
        json_object_foreach((json_t *)v, key, child) if (holds_nul(child, depth + 1)) return 1;
    return 0;
}

/* Removes every "default" that holds a NUL (a bytes or fixed default such
 * as "\u0000", the usual one of a decimal): avro-c's parser refuses any
 * string with a NUL, and does not need defaults (a writer's are never used;
 * the reader's are taken from the JSON). */
static void drop_nul_defaults(json_t *v, int depth) {
    const char *key;
    void *tmp;
    json_t *child;
    size_t i;
    if (depth > HB_CODEC_MAX_DEPTH)
        return;
    if (json_is_array(v))
        json_array_foreach(v, i, child) drop_nul_defaults(child, depth + 1);
    if (!json_is_object(v))
        return;
    json_object_foreach_safe(v, tmp, key, child) {
        if (!strcmp(key, "default") && holds_nul(child, 0))
            (void)json_object_del(v, key);
        else
            drop_nul_defaults(child, depth + 1);
    }
}

static int parse_schema(const char *text, const char *what, json_t **json, avro_schema_t *schema,
                        uint64_t *fp, char *errstr, size_t errstr_size) {
    json_error_t jerr;
    char *canon = NULL, *dumped = NULL;
    *json = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    *schema = NULL;
    if (!*json) {
        hb_seterr(errstr, errstr_size, "%s schema: invalid JSON at line %d column %d: %s", what,
                  jerr.line, jerr.column, jerr.text);
        return -1;
    }
    if (schema_canonical(*json, &canon, errstr, errstr_size) < 0)
        goto fail;
    *fp = hb_crc64_avro(canon, strlen(canon));
    free(canon);
    if (holds_nul(*json, 0)) {
        json_t *copy = json_deep_copy(*json);
        drop_nul_defaults(copy, 0);
        dumped = json_dumps(copy, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(copy);
    } else {
        dumped = json_dumps(*json, JSON_COMPACT | JSON_ENCODE_ANY);
    }
    if (!dumped || avro_schema_from_json_length(dumped, strlen(dumped), schema) != 0) {
        hb_seterr(errstr, errstr_size, "%s schema: %s", what,
                  dumped ? avro_strerror() : "out of memory");
        *schema = NULL;
        goto fail;
    }
    free(dumped);
    return 0;
fail:
    free(dumped);
    json_decref(*json);
    *json = NULL;
    return -1;
}

hb_codec_t *hb_codec_new(const char *reader_schema_json, char *errstr, size_t errstr_size) {
    hb_codec_t *c = hb_calloc(1, sizeof(*c));
    if (parse_schema(reader_schema_json, "reader", &c->reader_json, &c->reader, &c->fp, errstr,
                     errstr_size) < 0)
        goto fail;
    c->field_defaults = json_object();
    if (records_walk(c->reader_json, NULL, collect_defaults, c->field_defaults, 0, errstr,
                     errstr_size) < 0)
        goto fail;
    c->iface = avro_generic_class_from_schema(c->reader);
    if (!c->iface || avro_generic_value_new(c->iface, &c->value) != 0) {
        hb_seterr(errstr, errstr_size, "reader schema: %s", avro_strerror());
        goto fail;
    }
    c->rd = avro_reader_memory("", 0);
    if (!c->rd) {
        hb_seterr(errstr, errstr_size, "avro reader: %s", avro_strerror());
        goto fail;
    }
    c->plan = plan_build(c, c->reader, 0);
    if (!c->plan)
        plans_free(c); /* a schema the direct walk does not cover: always the general way */
    return c;
fail:
    hb_codec_free(c);
    return NULL;
}

static void writer_free(hb_writer_t *w) {
    if (w->resolved.self)
        avro_value_decref(&w->resolved);
    if (w->resolver)
        avro_value_iface_decref(w->resolver);
    if (w->proj_value.self)
        avro_value_decref(&w->proj_value);
    if (w->proj_iface)
        avro_value_iface_decref(w->proj_iface);
    if (w->proj)
        avro_schema_decref(w->proj);
    if (w->schema)
        avro_schema_decref(w->schema);
    json_decref(w->defaults);
    memset(w, 0, sizeof(*w));
}

void hb_codec_free(hb_codec_t *c) {
    if (!c)
        return;
    for (size_t i = 0; i < c->writers_cnt; i++)
        writer_free(&c->writers[i]);
    free(c->writers);
    if (c->rd)
        avro_reader_free(c->rd);
    if (c->value.self)
        avro_value_decref(&c->value);
    if (c->iface)
        avro_value_iface_decref(c->iface);
    if (c->reader)
        avro_schema_decref(c->reader);
    json_decref(c->reader_json);
    json_decref(c->field_defaults);
    plans_free(c);
    hb_buf_free(&c->enc);
    free(c);
}

/* Avro's promotions: can a writer's value of type w be read as type r? */
static int promotes(avro_type_t w, avro_type_t r) {
    return w == r ||
           (w == AVRO_INT32 && (r == AVRO_INT64 || r == AVRO_FLOAT || r == AVRO_DOUBLE)) ||
           (w == AVRO_INT64 && (r == AVRO_FLOAT || r == AVRO_DOUBLE)) ||
           (w == AVRO_FLOAT && r == AVRO_DOUBLE);
}

/* Whether every value the writer type w can hold resolves into the reader
 * type r (as Apache Avro's compatibility check asks). avro-c's resolver
 * takes a writer union when one of its branches fits and fails only when a
 * message uses another one: a writer whose ["null", "long"] field the reader
 * has as ["null", "int"] was taken at start and then dead-lettered every
 * event with a value there as "truncated or corrupt Avro data". 0 and why
 * when some value does not resolve. */
typedef struct resolving_s {
    avro_schema_t w, r; /* a pair of records being compared */
    const struct resolving_s *up;
} resolving_t;

static int resolves_in(avro_schema_t w, avro_schema_t r, const resolving_t *up, char *path,
                       int depth, char *why, size_t why_size);

static int resolves(avro_schema_t w, avro_schema_t r, char *path, int depth, char *why,
                    size_t why_size) {
    return resolves_in(w, r, NULL, path, depth, why, why_size);
}

static int resolves_in(avro_schema_t w, avro_schema_t r, const resolving_t *up, char *path,
                       int depth, char *why, size_t why_size) {
    avro_type_t wt, rt;
    w = deref(w);
    r = deref(r);
    if (!w || !r || depth > HB_CODEC_MAX_DEPTH)
        return 1; /* avro-c's resolver judges */
    wt = avro_typeof(w);
    rt = avro_typeof(r);
    if (wt == AVRO_UNION) {
        for (size_t i = 0; i < avro_schema_union_size(w); i++)
            if (!resolves_in(avro_schema_union_branch(w, (int)i), r, up, path, depth + 1, why,
                             why_size))
                return 0;
        return 1;
    }
    if (rt == AVRO_UNION) {
        int tried = 0;
        for (size_t i = 0; i < avro_schema_union_size(r); i++) {
            avro_schema_t rb = deref(avro_schema_union_branch(r, (int)i));
            if (!rb || !promotes(wt, avro_typeof(rb)))
                continue;
            if (resolves_in(w, rb, up, path, depth + 1, why, why_size))
                return 1;
            tried = 1; /* why says what in it does not resolve */
        }
        if (tried)
            return 0;
        hb_seterr(why, why_size, "%s: the writer's %s is not among the reader's types", at(path),
                  avro_schema_type_name(w));
        return 0;
    }
    if (!promotes(wt, rt)) {
        hb_seterr(why, why_size, "%s: the writer's %s cannot be read as %s", at(path),
                  avro_schema_type_name(w), avro_schema_type_name(r));
        return 0;
    }
    switch (wt) {
    case AVRO_RECORD: {
        size_t plen = strlen(path);
        resolving_t me = {w, r, up};
        for (const resolving_t *f = up; f; f = f->up)
            if (f->w == w && f->r == r)
                return 1; /* a recursive type: being compared already */
        for (size_t i = 0; i < avro_schema_record_size(r); i++) {
            const char *name = avro_schema_record_field_name(r, (int)i);
            avro_schema_t wf = avro_schema_record_field_get(w, name);
            int ok;
            if (!wf)
                continue; /* the projection has only the writer's fields */
            path_push(path, plen, name);
            ok = resolves_in(wf, avro_schema_record_field_get_by_index(r, (int)i), &me, path,
                             depth + 1, why, why_size);
            path[plen] = '\0';
            if (!ok)
                return 0;
        }
        return 1;
    }
    case AVRO_ENUM:
        for (int i = 0; i < avro_schema_enum_number_of_symbols(w); i++)
            if (avro_schema_enum_get_by_name(r, avro_schema_enum_get(w, i)) < 0) {
                hb_seterr(why, why_size, "%s: the writer's symbol %s is not in the reader's enum",
                          at(path), avro_schema_enum_get(w, i));
                return 0;
            }
        return 1;
    case AVRO_ARRAY:
        return resolves_in(avro_schema_array_items(w), avro_schema_array_items(r), up, path,
                           depth + 1, why, why_size);
    case AVRO_MAP:
        return resolves_in(avro_schema_map_values(w), avro_schema_map_values(r), up, path,
                           depth + 1, why, why_size);
    default: return 1;
    }
}

static int add_writer(hb_codec_t *c, int has_id, uint32_t id, const char *writer_schema_json,
                      char *errstr, size_t errstr_size) {
    hb_writer_t w;
    json_t *wjson = NULL, *wfields = NULL, *proj_json = NULL;
    char *proj_text = NULL;
    project_ctx_t pc;
    int r = -1;
    memset(&w, 0, sizeof(w));
    for (size_t i = 0; has_id && i < c->writers_cnt; i++)
        if (c->writers[i].has_id && c->writers[i].id == id)
            return 0; /* ids are immutable: the same schema */
    if (parse_schema(writer_schema_json, "writer", &wjson, &w.schema, &w.fp, errstr, errstr_size) <
        0)
        return -1;
    w.has_id = has_id;
    w.id = id;
    if (w.fp == c->fp) {
        if (!has_id)
            goto done; /* the reader itself */
        w.is_reader = 1;
        goto keep;
    }
    for (size_t i = 0; !has_id && i < c->writers_cnt; i++)
        if (!c->writers[i].has_id && c->writers[i].fp == w.fp)
            goto done;

    /* The reader, minus the fields this writer does not have. */
    wfields = json_object();
    w.defaults = json_object();
    if (records_walk(wjson, NULL, collect_fields, wfields, 0, errstr, errstr_size) < 0)
        goto fail;
    proj_json = json_deep_copy(c->reader_json);
    pc.writer_fields = wfields;
    pc.defaults = w.defaults;
    if (records_walk(proj_json, NULL, project_record, &pc, 0, errstr, errstr_size) < 0)
        goto fail;
    {
        restore_ctx_t rc = {json_object(), json_object(), &pc};
        json_t *restored;
        collect_named(c->reader_json, NULL, rc.reader_named, 0);
        restored = restore_type(proj_json, NULL, &rc, 0, errstr, errstr_size);
        json_decref(rc.defined);
        json_decref(rc.reader_named);
        if (!restored)
            goto fail;
        json_decref(proj_json);
        proj_json = restored;
    }
    proj_text = json_dumps(proj_json, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!proj_text || avro_schema_from_json_length(proj_text, strlen(proj_text), &w.proj) != 0) {
        w.proj = NULL;
        hb_seterr(errstr, errstr_size, "writer schema: cannot project the reader: %s",
                  avro_strerror());
        goto fail;
    }
    w.proj_iface = avro_generic_class_from_schema(w.proj);
    if (!w.proj_iface || avro_generic_value_new(w.proj_iface, &w.proj_value) != 0) {
        hb_seterr(errstr, errstr_size, "writer schema: %s", avro_strerror());
        goto fail;
    }
    w.resolver = avro_resolved_writer_new(w.schema, w.proj);
    if (!w.resolver) {
        hb_seterr(errstr, errstr_size, "writer schema does not resolve into the reader: %s",
                  avro_strerror());
        goto fail;
    }
    {
        char path[HB_PATH_MAX] = "", why[256] = "";
        if (!resolves(w.schema, w.proj, path, 0, why, sizeof(why))) {
            hb_seterr(errstr, errstr_size, "writer schema does not resolve into the reader: %s",
                      why);
            goto fail;
        }
    }
    if (avro_resolved_writer_new_value(w.resolver, &w.resolved) != 0) {
        hb_seterr(errstr, errstr_size, "writer schema: %s", avro_strerror());
        goto fail;
    }
    avro_resolved_writer_set_dest(&w.resolved, &w.proj_value);
keep:
    c->writers = hb_realloc(c->writers, (c->writers_cnt + 1) * sizeof(*c->writers));
    c->writers[c->writers_cnt++] = w;
    memset(&w, 0, sizeof(w)); /* now owned by the codec */
done:
    r = 0;
fail:
    writer_free(&w);
    free(proj_text);
    json_decref(proj_json);
    json_decref(wfields);
    json_decref(wjson);
    return r;
}

int hb_codec_add_writer(hb_codec_t *c, const char *writer_schema_json, char *errstr,
                        size_t errstr_size) {
    return add_writer(c, 0, 0, writer_schema_json, errstr, errstr_size);
}

int hb_codec_add_writer_id(hb_codec_t *c, uint32_t id, const char *writer_schema_json, char *errstr,
                           size_t errstr_size) {
    return add_writer(c, 1, id, writer_schema_json, errstr, errstr_size);
}

int hb_codec_registry_id(const void *buf, size_t len, uint32_t *id) {
    const unsigned char *p = buf;
    if (len < HB_SR_HEADER || p[0] != HB_SR_MAGIC)
        return 0;
    *id = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | (uint32_t)p[4];
    return 1;
}

void hb_codec_set_generic_only(hb_codec_t *c, int on) {
    c->generic_only = on;
}

uint64_t hb_codec_fingerprint(const hb_codec_t *c) {
    return c->fp;
}

/* The single-object header, or the Schema Registry one (id), at out. */
static void put_header(const hb_codec_t *c, int has_id, uint32_t id, unsigned char *out) {
    if (has_id) {
        out[0] = HB_SR_MAGIC;
        for (int i = 0; i < 4; i++)
            out[1 + i] = (unsigned char)(id >> (8 * (3 - i)));
    } else {
        out[0] = HB_SO_MAGIC0;
        out[1] = HB_SO_MAGIC1;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (unsigned char)(c->fp >> (8 * i));
    }
}

/* The direct walk into c->enc (header included): 0, -1 (errstr), or
 * HB_ENC_GENERAL. */
static int encode_direct(hb_codec_t *c, const json_t *obj, int has_id, uint32_t id, char *errstr,
                         size_t errstr_size) {
    size_t hdr = has_id ? HB_SR_HEADER : HB_SO_HEADER;
    enc_walk_t w;
    w.b = &c->enc;
    w.errstr = errstr;
    w.errstr_size = errstr_size;
    c->enc.len = 0;
    enc_room(&c->enc, hdr);
    put_header(c, has_id, id, (unsigned char *)c->enc.p);
    c->enc.len = hdr;
    return enc_value(&w, c->plan, obj, 0);
}

/* Encodes with the single-object header, or the Schema Registry one (id):
 * the direct walk when the codec has a plan, else (or when the walk is not
 * sure) avro-c's generic value. */
static int encode(hb_codec_t *c, const json_t *obj, int has_id, uint32_t id, void **buf,
                  size_t *len, char *errstr, size_t errstr_size) {
    size_t hdr = has_id ? HB_SR_HEADER : HB_SO_HEADER;
    char path[HB_PATH_MAX] = "";
    size_t size = 0;
    unsigned char *out = NULL;
    avro_writer_t wr = NULL;
    *buf = NULL;
    *len = 0;
    if (!json_is_object(obj)) {
        hb_seterr(errstr, errstr_size, "(root): expected an object");
        return -1;
    }
    if (c->plan && !c->generic_only) {
        int r = encode_direct(c, obj, has_id, id, errstr, errstr_size);
        if (r == 0) {
            *buf = hb_malloc(c->enc.len);
            memcpy(*buf, c->enc.p, c->enc.len);
            *len = c->enc.len;
        }
        if (c->enc.cap > HB_ENC_KEEP)
            hb_buf_free(&c->enc);
        if (r != HB_ENC_GENERAL)
            return r;
    }
    avro_value_reset(&c->value);
    if (json_to_value(c, obj, &c->value, path, 0, errstr, errstr_size) < 0)
        return -1;
    if (avro_value_sizeof(&c->value, &size) != 0) {
        hb_seterr(errstr, errstr_size, "encode: %s", avro_strerror());
        return -1;
    }
    out = hb_malloc(hdr + size + 1);
    put_header(c, has_id, id, out);
    wr = avro_writer_memory((const char *)out + hdr, (int64_t)size);
    if (!wr || avro_value_write(wr, &c->value) != 0) {
        hb_seterr(errstr, errstr_size, "encode: %s", avro_strerror());
        goto fail;
    }
    *len = hdr + (size_t)avro_writer_tell(wr);
    *buf = out;
    avro_writer_free(wr);
    return 0;
fail:
    if (wr)
        avro_writer_free(wr);
    free(out);
    return -1;
}

int hb_codec_encode(hb_codec_t *c, const json_t *obj, void **buf, size_t *len, char *errstr,
                    size_t errstr_size) {
    return encode(c, obj, 0, 0, buf, len, errstr, errstr_size);
}

int hb_codec_encode_registry(hb_codec_t *c, const json_t *obj, uint32_t id, void **buf, size_t *len,
                             char *errstr, size_t errstr_size) {
    return encode(c, obj, 1, id, buf, len, errstr, errstr_size);
}

/* hb_codec_decode, and with doc hb_codec_decode_doc. */
static int decode(hb_codec_t *c, const void *buf, size_t len, hb_jdoc_t *doc, json_t **out,
                  char *errstr, size_t errstr_size) {
    const unsigned char *p = buf;
    uint64_t fp = 0;
    hb_writer_t *w = NULL;
    avro_schema_t wschema = c->reader;
    avro_value_t *dest = &c->value, *top = &c->value;
    const json_t *defaults = NULL;
    hb_cursor_t cur;
    char path[HB_PATH_MAX] = "";
    size_t hdr = HB_SO_HEADER;
    uint32_t id = 0;
    *out = NULL;
    if (len >= 1 && p[0] == HB_SR_MAGIC) {
        if (!hb_codec_registry_id(buf, len, &id)) {
            hb_seterr(errstr, errstr_size, "truncated Schema Registry header (%zu bytes)", len);
            return -1;
        }
        for (size_t i = 0; i < c->writers_cnt && !w; i++)
            if (c->writers[i].has_id && c->writers[i].id == id)
                w = &c->writers[i];
        if (!w) {
            hb_seterr(errstr, errstr_size, "unknown Schema Registry schema id %" PRIu32, id);
            return HB_CODEC_UNKNOWN_ID;
        }
        hdr = HB_SR_HEADER;
        if (w->is_reader)
            w = NULL;
    } else if (len < 2 || p[0] != HB_SO_MAGIC0 || p[1] != HB_SO_MAGIC1) {
        hb_seterr(errstr, errstr_size, "not single-object encoded (bad magic)");
        return -1;
    } else if (len < HB_SO_HEADER) {
        hb_seterr(errstr, errstr_size, "truncated single-object header (%zu bytes)", len);
        return -1;
    } else {
        for (int i = 0; i < 8; i++)
            fp |= (uint64_t)p[2 + i] << (8 * i);
    }
    if (hdr == HB_SO_HEADER && fp != c->fp) {
        for (size_t i = 0; i < c->writers_cnt && !w; i++)
            if (!c->writers[i].has_id && c->writers[i].fp == fp)
                w = &c->writers[i];
        if (!w) {
            hb_seterr(errstr, errstr_size, "unknown writer schema fingerprint 0x%016" PRIx64, fp);
            return -1;
        }
    }
    if (w) {
        wschema = w->schema;
        dest = &w->resolved;
        top = &w->proj_value;
        defaults = w->defaults;
    }
    cur.p = p + hdr;
    cur.end = p + len;
    int direct = !w && !c->generic_only && c->plan;
    /* The direct walk to text checks everything check_plan checks (bounds,
     * block counts, booleans, int ranges, enum and union indexes, depth) as it
     * goes, and more (UTF-8, map keys): what it takes whole, check_plan
     * passes, so the data is walked once. Anything else is checked and
     * worded below as before. */
    if (direct && doc) {
        int is_null;
        hb_jdoc_reset(doc);
        if (fast_to_text(c->plan, &cur, 0, doc, &is_null, 1) == 0 && cur.p == cur.end) {
            hb_buf_reserve(&doc->text, 0);
            doc->text.p[doc->text.len] = '\0';
            return 0;
        }
        hb_jdoc_reset(doc); /* not sure: the general way decides, and words any error */
        cur.p = p + hdr;
    }
    if ((direct ? check_plan(c->plan, &cur, 0) : check_value(wschema, &cur, 0)) < 0) {
        hb_seterr(errstr, errstr_size, "truncated or corrupt Avro data");
        return -1;
    }
    if (cur.p != cur.end) {
        hb_seterr(errstr, errstr_size, "%zu trailing bytes", (size_t)(cur.end - cur.p));
        return -1;
    }
    if (direct && !doc) { /* (to text, the direct walk said no above: the general way) */
        cur.p = p + hdr;
        if (fast_to_json(c->plan, &cur, 0, out) == 0 && cur.p == cur.end)
            return 0;
        json_decref(*out); /* not sure: the general way decides, and words any error */
        *out = NULL;
    }
    avro_reader_memory_set_source(c->rd, (const char *)p + hdr, (int64_t)(len - hdr));
    avro_value_reset(top);
    if (avro_value_read(c->rd, dest) != 0) {
        hb_seterr(errstr, errstr_size, "truncated or corrupt Avro data: %s", avro_strerror());
        return -1;
    }
    if (value_to_json(defaults, top, path, 0, out, errstr, errstr_size) < 0)
        return -1;
    if (doc)
        (void)hb_jdoc_from_json(doc, *out); /* not an object: the text alone */
    return 0;
}

int hb_codec_decode(hb_codec_t *c, const void *buf, size_t len, json_t **out, char *errstr,
                    size_t errstr_size) {
    return decode(c, buf, len, NULL, out, errstr, errstr_size);
}

int hb_codec_decode_doc(hb_codec_t *c, const void *buf, size_t len, hb_jdoc_t *doc, json_t **json,
                        char *errstr, size_t errstr_size) {
    int r;
    hb_jdoc_reset(doc);
    r = decode(c, buf, len, doc, json, errstr, errstr_size);
    if (r != 0)
        hb_jdoc_reset(doc);
    return r;
}
