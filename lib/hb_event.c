/*
 * Identity events as JSON: the catalogue of known event types, the rules an
 * event must meet before it is encoded (hb_event_normalize), and the accessors
 * the producer and dispatcher use (key, uuid, type). See hb_event.h.
 *
 * The catalogue is the compiled-in schema/event_types.txt, parsed once on
 * first use (pthread_once) into a table that lives for the process, so any
 * thread may ask. Normalization mutates the event it is given and is meant
 * for the producer's thread; the accessors only read.
 *
 * What must hold: a normalized event has string uuid, published and
 * eventType members, so the codec can encode it and hb_event_key never
 * returns NULL for it.
 *
 * The dispatcher's events (hb_event_t, hb_ev_*) are decoded text instead of
 * jansson values: made once per message in one allocation (struct, member
 * index, exact reals, text, the three strings matching and rendering read),
 * shared by reference between the deliveries of a message and its batches,
 * with a jansson value made from the text only when a content filter or an
 * ordering key asks for one, and kept.
 */
#include "hb_event.h"

#include <ctype.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_schemas.h"

static char *hb_catalogue_text;   /* a private copy of the catalogue, cut in place */
static const char **hb_catalogue; /* the type names, in file order */
static size_t hb_catalogue_cnt;
static pthread_once_t hb_catalogue_once = PTHREAD_ONCE_INIT;

/* "# comment" lines are skipped; "<type>\t<description>" lines keep <type>. */
static void catalogue_load(void) {
    size_t cap = 0;
    char *line, *next;
    hb_catalogue_text = hb_strdup(hb_event_types_catalogue);
    for (line = hb_catalogue_text; line && *line; line = next) {
        char *end;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        end = line + strcspn(line, "\t \r");
        *end = '\0';
        if (*line == '#' || *line == '\0')
            continue;
        if (hb_catalogue_cnt == cap) {
            cap = cap ? cap * 2 : 32;
            hb_catalogue = hb_realloc(hb_catalogue, cap * sizeof(*hb_catalogue));
        }
        hb_catalogue[hb_catalogue_cnt++] = line;
    }
}

static void catalogue_ready(void) {
    (void)pthread_once(&hb_catalogue_once, catalogue_load);
}

int hb_event_type_known(const char *type) {
    catalogue_ready();
    if (!type)
        return 0;
    for (size_t i = 0; i < hb_catalogue_cnt; i++)
        if (!strcmp(hb_catalogue[i], type))
            return 1;
    return 0;
}

size_t hb_event_types_count(void) {
    catalogue_ready();
    return hb_catalogue_cnt;
}

const char *hb_event_type_at(size_t i) {
    catalogue_ready();
    return i < hb_catalogue_cnt ? hb_catalogue[i] : NULL;
}

/* UUIDs' random bytes are drawn from OpenSSL for HB_UUID_POOL UUIDs at a
 * time (one RAND_bytes call cost more than the rest of making a UUID), into
 * a pool per thread; each byte is used once and wiped. A child process
 * starts with an empty pool, so it never repeats its parent's UUIDs. */
#define HB_UUID_POOL 32

static _Thread_local unsigned char hb_uuid_pool[16 * HB_UUID_POOL];
static _Thread_local size_t hb_uuid_used = sizeof(hb_uuid_pool);
static pthread_once_t hb_uuid_once = PTHREAD_ONCE_INIT;

static void uuid_pool_drop(void) {
    memset(hb_uuid_pool, 0, sizeof(hb_uuid_pool));
    hb_uuid_used = sizeof(hb_uuid_pool);
}

static void uuid_pool_init(void) {
    (void)pthread_atfork(NULL, NULL, uuid_pool_drop);
}

/* A random (version 4) UUID, lowercase. hb_sign.h has hb_uuid_random too;
 * this private copy keeps hb_event free of a dependency on the signing code. */
static int event_uuid_v4(char out[37]) {
    unsigned char *pool = hb_uuid_pool;
    size_t used = hb_uuid_used;
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    char *o = out;
    (void)pthread_once(&hb_uuid_once, uuid_pool_init);
    if (used == sizeof(hb_uuid_pool)) {
        if (RAND_bytes(pool, sizeof(hb_uuid_pool)) != 1)
            return -1;
        used = 0;
    }
    memcpy(b, pool + used, sizeof(b));
    memset(pool + used, 0, sizeof(b));
    hb_uuid_used = used + sizeof(b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 0x0f];
    }
    *o = '\0';
    return 0;
}

static const char *const hb_severities[] = {"DEBUG", "INFO", "WARN", "ERROR"};

/* A member that must be a string when present; absent or null -> *out NULL. */
static int optional_string(json_t *ev, const char *name, const char **out, char *errstr,
                           size_t errstr_size) {
    json_t *m = json_object_get(ev, name);
    *out = NULL;
    if (!m || json_is_null(m))
        return 0;
    if (!json_is_string(m)) {
        hb_seterr(errstr, errstr_size, "%s: expected a string", name);
        return -1;
    }
    *out = json_string_value(m);
    /* read as a C string it would end at the NUL (the dispatcher refuses
     * such an event as poison: hb_ev_new) */
    if (strlen(*out) != json_string_length(m)) {
        hb_seterr(errstr, errstr_size, "%s: holds a NUL character (\\u0000)", name);
        *out = NULL;
        return -1;
    }
    return 0;
}

int hb_event_normalize(json_t *ev, int allow_unknown_types, char *errstr, size_t errstr_size) {
    const char *type, *uuid, *published, *version, *severity;
    int64_t published_ms;
    size_t i;
    if (!json_is_object(ev)) {
        hb_seterr(errstr, errstr_size, "event: expected a JSON object");
        return -1;
    }
    if (optional_string(ev, "eventType", &type, errstr, errstr_size) < 0 ||
        optional_string(ev, "uuid", &uuid, errstr, errstr_size) < 0 ||
        optional_string(ev, "published", &published, errstr, errstr_size) < 0 ||
        optional_string(ev, "version", &version, errstr, errstr_size) < 0 ||
        optional_string(ev, "severity", &severity, errstr, errstr_size) < 0)
        return -1;
    if (!type || !*type) {
        hb_seterr(errstr, errstr_size, "eventType: missing");
        return -1;
    }
    if (!allow_unknown_types && !hb_event_type_known(type)) {
        hb_seterr(errstr, errstr_size, "eventType: \"%s\" is not a known event type", type);
        return -1;
    }
    if (uuid && !*uuid) {
        hb_seterr(errstr, errstr_size, "uuid: empty");
        return -1;
    }
    if (published && hb_parse_time(published, &published_ms) < 0) {
        hb_seterr(errstr, errstr_size,
                  "published: \"%s\" is not an RFC 3339 time (2024-05-01T12:00:00.000Z)",
                  published);
        return -1;
    }
    if (severity) {
        for (i = 0; i < HB_ARRAY_SIZE(hb_severities); i++)
            if (!strcmp(severity, hb_severities[i]))
                break;
        if (i == HB_ARRAY_SIZE(hb_severities)) {
            hb_seterr(errstr, errstr_size,
                      "severity: \"%s\" is not one of DEBUG, INFO, WARN, ERROR", severity);
            return -1;
        }
    }
    if (!uuid) {
        char id[37];
        if (event_uuid_v4(id) < 0) {
            hb_seterr(errstr, errstr_size, "uuid: no random bytes from OpenSSL");
            return -1;
        }
        (void)json_object_set_new(ev, "uuid", json_string_nocheck(id));
    }
    if (!published) {
        char now[32];
        hb_format_time(hb_wall_ms(), now, sizeof(now));
        (void)json_object_set_new(ev, "published", json_string(now));
    }
    if (!version)
        (void)json_object_set_new(ev, "version", json_string("0"));
    if (!severity)
        (void)json_object_set_new(ev, "severity", json_string("INFO"));
    return 0;
}

/* A member's string, or NULL when absent, empty or holding a NUL character
 * (as a C string it would be read up to the NUL: string_copy below). */
static const char *string_member(const json_t *obj, const char *name) {
    const json_t *v = json_object_get(obj, name);
    const char *s = json_string_value(v);
    return s && *s && strlen(s) == json_string_length(v) ? s : NULL;
}

const char *hb_event_key(const json_t *ev) {
    const json_t *targets = json_object_get(ev, "target"), *t;
    const char *id;
    size_t i;
    json_array_foreach(targets, i, t) {
        const char *type = json_string_value(json_object_get(t, "type"));
        if (type && !strcmp(type, "User") && (id = string_member(t, "id")))
            return id;
    }
    if ((id = string_member(json_object_get(ev, "actor"), "id")))
        return id;
    return hb_event_uuid(ev);
}

const char *hb_event_uuid(const json_t *ev) {
    return string_member(ev, "uuid");
}

const char *hb_event_type(const json_t *ev) {
    return string_member(ev, "eventType");
}

/* ------------------------------------------------------ decoded events */

/* The key of member m as json_object_get compares keys: its unescaped bytes,
 * all n of them, equal to name. */
static int member_is(const char *text, const hb_jmember_t *m, const char *name, size_t n) {
    const char *k = text + m->key;
    char stack[128];
    long len;
    if (m->key_len == n && !memcmp(k, name, n))
        return 1;
    if (m->key_len <= n || m->key_len >= sizeof(stack) || !memchr(k, '\\', m->key_len))
        return 0; /* escaped, a key is longer than it is */
    len = hb_json_unescape(k, m->key_len, stack);
    return len >= 0 && (size_t)len == n && !memcmp(stack, name, n);
}

long hb_ev_find(const hb_event_t *ev, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < ev->n; i++)
        if (member_is(ev->text, &ev->m[i], name, n))
            return (long)i;
    return -1;
}

/* The members hb_ev_new copies as strings, and their names' lengths. */
static const char *const hb_ev_strings[] = {"uuid", "eventType", "published"};
static const size_t hb_ev_strings_len[] = {4, 9, 9};

/* The string value of member m unescaped into *strs (advanced), or NULL;
 * NULL too for one holding a NUL character (valid Avro and JSON, but as a C
 * string it would be read up to the NUL: "user.session.start\u0000x" would
 * match the subscriptions to user.session.start). */
static const char *string_copy(const char *text, const hb_jmember_t *m, char **strs) {
    char *out = *strs;
    long len;
    if (!m || m->val_len < 2 || text[m->val] != '"')
        return NULL;
    len = hb_json_unescape(text + m->val + 1, m->val_len - 2, out);
    if (len < 0 || memchr(out, '\0', (size_t)len))
        return NULL;
    *strs += len + 1;
    return out;
}

hb_event_t *hb_ev_new(const hb_jdoc_t *doc, json_t *json) {
    const hb_jmember_t *found[3] = {NULL, NULL, NULL};
    size_t strs_len = 0, len = doc->text.len;
    hb_event_t *ev;
    char *p, *strs;
    if (!len || doc->text.p[0] != '{') {
        json_decref(json);
        return NULL;
    }
    for (size_t i = 0; i < doc->n; i++) /* the first member of each name */
        for (size_t k = 0; k < HB_ARRAY_SIZE(hb_ev_strings); k++)
            if (!found[k] &&
                member_is(doc->text.p, &doc->m[i], hb_ev_strings[k], hb_ev_strings_len[k])) {
                found[k] = &doc->m[i];
                strs_len += doc->m[i].val_len + 1;
            }
    /* one block: the struct, the members, the reals, the text, the strings */
    ev = hb_malloc(sizeof(*ev) + doc->n * sizeof(*doc->m) + doc->reals_n * sizeof(double) + len +
                   1 + strs_len);
    p = (char *)(ev + 1);
    ev->refs = 1;
    ev->json = json;
    ev->subject = NULL;
    ev->subject_known = 0;
    ev->m = (const hb_jmember_t *)(void *)p;
    ev->n = doc->n;
    if (doc->n)
        memcpy(p, doc->m, doc->n * sizeof(*doc->m));
    p += doc->n * sizeof(*doc->m);
    ev->reals = (const double *)(void *)p;
    ev->reals_n = doc->reals_n;
    if (doc->reals_n)
        memcpy(p, doc->reals, doc->reals_n * sizeof(double));
    p += doc->reals_n * sizeof(double);
    memcpy(p, doc->text.p, len + 1);
    ev->text = p;
    ev->len = len;
    strs = p + len + 1;
    ev->uuid = string_copy(ev->text, found[0], &strs);
    ev->type = string_copy(ev->text, found[1], &strs);
    ev->published = string_copy(ev->text, found[2], &strs);
    return ev;
}

hb_event_t *hb_ev_from_json(json_t *json) {
    hb_jdoc_t doc = {0};
    hb_event_t *ev = NULL;
    if (hb_jdoc_from_json(&doc, json) == 0)
        ev = hb_ev_new(&doc, json_incref(json));
    hb_jdoc_free(&doc);
    return ev;
}

hb_event_t *hb_ev_ref(hb_event_t *ev) {
    ev->refs++;
    return ev;
}

void hb_ev_unref(hb_event_t *ev) {
    if (!ev || --ev->refs > 0)
        return;
    json_decref(ev->json);
    free(ev->subject);
    free(ev);
}

const char *hb_ev_subject(hb_event_t *ev) {
    long i;
    if (ev->subject_known)
        return ev->subject;
    ev->subject_known = 1;
    i = hb_ev_find(ev, "target");
    if (i >= 0) {
        const hb_jmember_t *m = &ev->m[i];
        /* only strings are looked at: the reals are read from the text */
        json_t *targets = ev->json ? json_incref(json_object_get(ev->json, "target"))
                                   : hb_json_from_text(ev->text + m->val, m->val_len, NULL, 0);
        json_t *t;
        size_t k;
        json_array_foreach(targets, k, t) {
            const char *type = json_string_value(json_object_get(t, "type"));
            const char *id = json_string_value(json_object_get(t, "id"));
            if (type && !strcmp(type, "User") && id && *id) {
                ev->subject = hb_strdup(id);
                break;
            }
        }
        json_decref(targets);
    }
    return ev->subject;
}

json_t *hb_ev_json(hb_event_t *ev) {
    if (!ev->json)
        ev->json = hb_json_from_text(ev->text, ev->len, ev->reals, ev->reals_n);
    return ev->json;
}

const char *hb_ev_uuid(const hb_event_t *ev) {
    return ev->uuid && *ev->uuid ? ev->uuid : NULL;
}

const char *hb_ev_type(const hb_event_t *ev) {
    return ev->type && *ev->type ? ev->type : NULL;
}
