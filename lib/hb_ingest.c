/*
 * Okta event-hook bodies into encoded events. See hb_ingest.h.
 *
 * Every event is normalized, encoded and bounded before any is handed back;
 * one that fails is handed back as it came, with the reason (the caller
 * dead-letters it), so no event of a delivery is lost for another's fault.
 * The events are changed in place as they are normalized, so a refused
 * one's JSON comes from a second parse of the body, made only when some
 * event was refused.
 */
#include "hb_ingest.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_buf.h"
#include "hb_event.h"

void hb_ingest_batch_free(hb_ingest_batch_t *b) {
    if (!b)
        return;
    for (size_t i = 0; i < b->cnt; i++) {
        free(b->msgs[i].key);
        free(b->msgs[i].value);
        free(b->msgs[i].refused);
        free(b->msgs[i].uuid);
        free(b->msgs[i].type);
        free(b->msgs[i].published);
    }
    free(b->msgs);
    b->msgs = NULL;
    b->cnt = b->refused = 0;
}

/* The members Okta types as objects of any values (its System Log API:
 * Map<String, Object>), which the schema carries as maps of strings: a
 * value that is not a string becomes its JSON text (3 -> "3", true ->
 * "true", null -> "null", {"a":1} -> "{\"a\":1}"), as Okta itself writes
 * most of them ("threatSuspected": "false"). Refused instead, one such
 * value made Okta's whole delivery a 400, which Okta does not send again:
 * every event of it lost. */
static void stringify_values(json_t *map) {
    const char *key;
    json_t *v;
    void *tmp;
    if (!json_is_object(map))
        return; /* not an object at all: the encoder says so */
    json_object_foreach_safe(map, tmp, key, v) {
        char *text;
        if (json_is_string(v))
            continue;
        text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (text)
            (void)json_object_set_new(map, key, json_string(text));
        free(text);
    }
}

/* A geolocation whose lat and lon are both null or absent (Okta's, for an
 * address it cannot place) says nothing: it becomes null (the schema's
 * coordinates are required doubles, so it refused the event). */
static void drop_empty_geolocation(json_t *geo_context) {
    json_t *geo = json_object_get(geo_context, "geolocation"), *lat, *lon;
    if (!json_is_object(geo))
        return;
    lat = json_object_get(geo, "lat");
    lon = json_object_get(geo, "lon");
    if ((!lat || json_is_null(lat)) && (!lon || json_is_null(lon)))
        (void)json_object_set_new(geo_context, "geolocation", json_null());
}

void hb_ingest_okta_adjust(json_t *ev) {
    json_t *targets = json_object_get(ev, "target"), *t;
    json_t *chain = json_object_get(json_object_get(ev, "request"), "ipChain"), *ip;
    size_t i;
    stringify_values(json_object_get(json_object_get(ev, "actor"), "detailEntry"));
    stringify_values(json_object_get(json_object_get(ev, "transaction"), "detail"));
    stringify_values(json_object_get(json_object_get(ev, "debugContext"), "debugData"));
    json_array_foreach(targets, i, t) stringify_values(json_object_get(t, "detailEntry"));
    drop_empty_geolocation(json_object_get(json_object_get(ev, "client"), "geographicalContext"));
    json_array_foreach(chain, i, ip)
        drop_empty_geolocation(json_object_get(ip, "geographicalContext"));
}

/* The index of the first non-digit of s[i, n). */
static size_t skip_digits(const char *s, size_t i, size_t n) {
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    return i;
}

/* Is s[0, n) a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int json_number_token(const char *s, size_t n) {
    size_t i = s[0] == '-', d = i;
    i = skip_digits(s, d, n);
    if (i == d || (s[d] == '0' && i - d > 1))
        return 0;
    if (i < n && s[i] == '.') {
        d = i + 1;
        if ((i = skip_digits(s, d, n)) == d)
            return 0;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        d = i + 1 + (i + 1 < n && (s[i + 1] == '+' || s[i + 1] == '-'));
        if ((i = skip_digits(s, d, n)) == d)
            return 0;
    }
    return i == n;
}

/* Does the number token s[0, n) overflow what jansson holds (an integer
 * beyond int64, a real beyond double)? Only a well-formed one does: a
 * malformed one stays for jansson to refuse. */
static int number_overflows(const char *s, size_t n) {
    char *tok, *end;
    int real = memchr(s, '.', n) || memchr(s, 'e', n) || memchr(s, 'E', n), over;
    if (!json_number_token(s, n))
        return 0;
    tok = hb_malloc(n + 1);
    memcpy(tok, s, n);
    tok[n] = '\0';
    errno = 0;
    if (real) {
        over = isinf(strtod(tok, &end)) && errno == ERANGE;
    } else {
        (void)strtoll(tok, &end, 10);
        over = errno == ERANGE;
    }
    free(tok);
    return over;
}

/* The body with every number token that overflows (number_overflows) put in
 * quotes, or NULL when there is none: jansson refuses a whole document for
 * one of them. */
static char *quote_huge_numbers(const char *body, size_t len, size_t *out_len) {
    hb_buf_t out = {0};
    char open[HB_INGEST_MAX_DEPTH]; /* the containers around i: '{' or '[' */
    size_t i = 0, copied = 0, depth = 0;
    int in_string = 0, quoted = 0;
    char prev = 0; /* the last significant character outside strings */
    while (i < len) {
        char c = body[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = 0, prev = '"';
            i++;
        } else if (c == '"') {
            in_string = 1;
            i++;
        } else if (c == '{' || c == '[') {
            if (depth == sizeof(open))
                break; /* deeper than jansson goes: it refuses the body anyway */
            open[depth++] = c;
            prev = c;
            i++;
        } else if (c == '}' || c == ']') {
            depth -= depth > 0;
            prev = c;
            i++;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            /* a value: after ':', first in or after ',' in an array, or the
             * whole document; anywhere else (an object's key) it stays for
             * jansson to refuse */
            int value = prev == ':' || (!depth && !prev) ||
                        (depth && open[depth - 1] == '[' && (prev == '[' || prev == ','));
            size_t j = i + 1;
            while (j < len && body[j] && strchr("0123456789+-.eE", body[j]))
                j++;
            if (value && number_overflows(body + i, j - i)) {
                hb_buf_put(&out, body + copied, i - copied);
                hb_buf_put(&out, "\"", 1);
                hb_buf_put(&out, body + i, j - i);
                hb_buf_put(&out, "\"", 1);
                copied = j;
                quoted = 1;
            }
            prev = '0';
            i = j;
        } else {
            if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
                prev = c;
            i++;
        }
    }
    if (!quoted) {
        hb_buf_free(&out);
        return NULL;
    }
    hb_buf_put(&out, body + copied, len - copied);
    *out_len = out.len;
    return out.p;
}

json_t *hb_ingest_loadb(const char *text, size_t len, size_t flags, json_error_t *err) {
    json_t *j = json_loadb(text, len, flags | JSON_ALLOW_NUL, err);
    char *quoted;
    size_t qlen;
    if (j || json_error_code(err) != json_error_numeric_overflow ||
        !(quoted = quote_huge_numbers(text, len, &qlen)))
        return j;
    j = json_loadb(quoted, qlen, flags | JSON_ALLOW_NUL, err);
    free(quoted);
    return j;
}

/* The envelope's data.events, or NULL with the reason. */
static json_t *envelope_events(json_t *root, char *errstr, size_t errstr_size) {
    json_t *type, *data, *events;
    if (!json_is_object(root)) {
        hb_seterr(errstr, errstr_size, "not an Okta event hook: expected a JSON object");
        return NULL;
    }
    type = json_object_get(root, "eventType");
    if (!json_is_string(type)) {
        hb_seterr(errstr, errstr_size,
                  "not an Okta event hook: eventType missing (want \"" HB_INGEST_ENVELOPE_TYPE
                  "\")");
        return NULL;
    }
    if (strcmp(json_string_value(type), HB_INGEST_ENVELOPE_TYPE) != 0) {
        char shown[80];
        snprintf(shown, sizeof(shown), "%s", json_string_value(type));
        hb_seterr(errstr, errstr_size,
                  "not an Okta event hook: eventType is \"%s\", want \"" HB_INGEST_ENVELOPE_TYPE
                  "\" (send the envelope, not a bare event)",
                  shown);
        return NULL;
    }
    data = json_object_get(root, "data");
    if (!json_is_object(data)) {
        hb_seterr(errstr, errstr_size, "data: expected an object with an events array");
        return NULL;
    }
    events = json_object_get(data, "events");
    if (!json_is_array(events)) {
        hb_seterr(errstr, errstr_size, "data.events: expected an array of events");
        return NULL;
    }
    return events;
}

#define PARSE_FLAGS JSON_REJECT_DUPLICATES

/* A member that is a string without a NUL character, copied; else NULL. */
static char *plain_string(const json_t *ev, const char *name) {
    const json_t *v = json_object_get(ev, name);
    const char *s = json_string_value(v);
    return s && strlen(s) == json_string_length(v) ? hb_strdup(s) : NULL;
}

void hb_ingest_refused_shrink(hb_ingest_msg_t *m, const char *why) {
    json_t *id = json_object();
    const char *const names[] = {"uuid", "eventType", "published"};
    const char *const values[] = {m->uuid, m->type, m->published};
    char *text, *reason;
    size_t n = strlen(m->refused) + strlen(why) + 160;
    int dropped = 0;
    /* each at most HB_INGEST_KEY_MAX bytes: what identifies the event must
     * fit a Kafka message whatever the event holds (a 1.1 MB uuid kept the
     * copy over message.max.bytes and cost the delivery, review 41) */
    for (size_t i = 0; i < 3; i++) {
        if (values[i] && strlen(values[i]) <= HB_INGEST_KEY_MAX)
            (void)json_object_set_new(id, names[i], json_string(values[i]));
        else
            dropped |= values[i] != NULL;
    }
    text = json_dumps(id, JSON_COMPACT);
    json_decref(id);
    reason = hb_malloc(n);
    if (dropped)
        snprintf(reason, n,
                 "%s; its JSON (%zu bytes) %s: only its uuid, eventType and published are kept "
                 "(those of at most %d bytes)",
                 m->refused, m->value_len, why, HB_INGEST_KEY_MAX);
    else
        snprintf(reason, n,
                 "%s; its JSON (%zu bytes) %s: only its uuid, eventType and published are kept",
                 m->refused, m->value_len, why);
    free(m->refused);
    m->refused = reason;
    free(m->value);
    m->value = text ? text : hb_strdup("{}");
    m->value_len = strlen(m->value);
    m->shrunk = 1;
}

/* The refused event ev (as received) into m: its JSON text, or, past
 * HB_INGEST_REFUSED_MAX_BYTES, what identifies it (the reason says so). */
static void keep_refused(hb_ingest_msg_t *m, const json_t *ev) {
    char *text = json_dumps(ev, JSON_COMPACT | JSON_ENCODE_ANY);
    m->uuid = json_is_object(ev) ? plain_string(ev, "uuid") : NULL;
    m->type = json_is_object(ev) ? plain_string(ev, "eventType") : NULL;
    m->published = json_is_object(ev) ? plain_string(ev, "published") : NULL;
    /* a key of any length would make a message of any size (review 39: a
     * 500,000-character uuid was over librdkafka's message.max.bytes) */
    m->key = m->uuid && strlen(m->uuid) <= HB_INGEST_KEY_MAX ? hb_strdup(m->uuid) : NULL;
    if (!text) /* not even JSON text (an invalid UTF-8 key): nothing to keep */
        text = hb_strdup("null");
    m->value = text;
    m->value_len = strlen(text);
    if (m->value_len > HB_INGEST_REFUSED_MAX_BYTES) {
        char why[64];
        snprintf(why, sizeof(why), "is larger than %d bytes", HB_INGEST_REFUSED_MAX_BYTES);
        hb_ingest_refused_shrink(m, why);
    }
}

/* The objects and arrays a text opens (a '{' or '[' outside a string). */
static size_t count_containers(const char *s, size_t len) {
    size_t n = 0;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\')
                i++; /* the escaped character, whatever it is */
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            n++;
        }
    }
    return n;
}

static int parse(hb_codec_t *codec, const char *body, size_t len, hb_ingest_batch_t *out,
                 char *errstr, size_t errstr_size) {
    json_error_t jerr;
    json_t *root, *events;
    size_t n, containers, most = HB_INGEST_MAX_CONTAINERS(len);
    char why[400];

    memset(out, 0, sizeof(*out));
    /* jansson's tree of a body that is all empty objects costs about 80
     * times its text (review 39: 4 MiB of {}, 1.39 million of them, made
     * the process peak at 524 MB, over the manifest's memory limit) */
    containers = count_containers(body, len);
    if (containers > most) {
        hb_seterr(errstr, errstr_size,
                  "%zu JSON objects and arrays in %zu bytes: more than an event-hook delivery "
                  "holds (at most %zu: one per 16 bytes, and 4096)",
                  containers, len, most);
        return -1;
    }
    root = hb_ingest_loadb(body, len, PARSE_FLAGS, &jerr);
    if (!root) {
        hb_seterr(errstr, errstr_size, "invalid JSON at line %d, column %d: %s", jerr.line,
                  jerr.column, jerr.text);
        return -1;
    }
    events = envelope_events(root, errstr, errstr_size);
    if (!events) {
        json_decref(root);
        return -1;
    }
    n = json_array_size(events);
    out->msgs = n ? hb_calloc(n, sizeof(*out->msgs)) : NULL;
    out->cnt = n;
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(events, i);
        hb_ingest_msg_t *m = &out->msgs[i];
        if (json_is_object(ev))
            hb_ingest_okta_adjust(ev);
        if (hb_event_normalize(ev, 1, why, sizeof(why)) < 0 ||
            hb_codec_encode(codec, ev, &m->value, &m->value_len, why, sizeof(why)) < 0)
            goto refused;
        if (m->value_len > HB_EVENT_MAX_BYTES) {
            hb_seterr(why, sizeof(why), "event of %zu bytes (encoded) is larger than %d bytes",
                      m->value_len, HB_EVENT_MAX_BYTES);
            goto refused;
        }
        m->key = hb_strdup(hb_event_key(ev));
        m->uuid = plain_string(ev, "uuid");
        m->type = plain_string(ev, "eventType");
        continue;
    refused : {
        size_t wn = strlen(why) + 32;
        free(m->value); /* keep_refused fills it */
        m->value = NULL;
        m->value_len = 0;
        m->refused = hb_malloc(wn);
        snprintf(m->refused, wn, "data.events[%zu]: %s", i, why);
        /* it quotes the body: a value cut where why ends may end inside a
         * character, and the answer and the header are UTF-8 */
        hb_utf8_scrub(m->refused);
        out->refused++;
    }
    }
    json_decref(root);
    if (out->refused) { /* the events as received: normalizing changed them */
        json_t *again = hb_ingest_loadb(body, len, PARSE_FLAGS, &jerr);
        json_t *pristine = json_object_get(json_object_get(again, "data"), "events");
        for (size_t i = 0; i < n; i++)
            if (out->msgs[i].refused)
                keep_refused(&out->msgs[i], json_array_get(pristine, i));
        json_decref(again);
    }
    return 0;
}

int hb_ingest_parse(hb_codec_t *codec, const char *body, size_t len, hb_ingest_batch_t *out,
                    char *errstr, size_t errstr_size) {
    if (parse(codec, body, len, out, errstr, errstr_size) == 0)
        return 0;
    /* The error text ends up in a JSON answer (producer/ingest.c) and quotes
     * the body: a long eventType cut where a buffer ends, possibly inside a
     * character, leaves invalid UTF-8 a JSON string cannot carry (the
     * answer lost its "error"). */
    if (errstr && errstr_size)
        hb_utf8_scrub(errstr);
    return -1;
}
