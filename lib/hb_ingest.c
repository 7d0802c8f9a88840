/*
 * Okta event-hook bodies into encoded events. See hb_ingest.h.
 *
 * Every event is normalized, encoded and bounded before any is handed back,
 * so a caller that produces only after a successful parse never writes part
 * of a refused request.
 */
#include "hb_ingest.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_event.h"

void hb_ingest_batch_free(hb_ingest_batch_t *b) {
    if (!b)
        return;
    for (size_t i = 0; i < b->cnt; i++) {
        free(b->msgs[i].key);
        free(b->msgs[i].value);
    }
    free(b->msgs);
    b->msgs = NULL;
    b->cnt = 0;
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

static void stringify_free_maps(json_t *ev) {
    json_t *targets = json_object_get(ev, "target"), *t;
    size_t i;
    stringify_values(json_object_get(json_object_get(ev, "actor"), "detailEntry"));
    stringify_values(json_object_get(json_object_get(ev, "transaction"), "detail"));
    stringify_values(json_object_get(json_object_get(ev, "debugContext"), "debugData"));
    json_array_foreach(targets, i, t) stringify_values(json_object_get(t, "detailEntry"));
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

static int parse(hb_codec_t *codec, const char *body, size_t len, hb_ingest_batch_t *out,
                 long *bad_event, char *errstr, size_t errstr_size) {
    json_error_t jerr;
    json_t *root, *events;
    size_t n;
    char why[400];

    memset(out, 0, sizeof(*out));
    *bad_event = -1;
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
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
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(events, i);
        hb_ingest_msg_t *m = &out->msgs[i];
        if (json_is_object(ev))
            stringify_free_maps(ev);
        if (hb_event_normalize(ev, 1, why, sizeof(why)) < 0 ||
            hb_codec_encode(codec, ev, &m->value, &m->value_len, why, sizeof(why)) < 0)
            goto bad;
        out->cnt = i + 1; /* value owned by the batch from here */
        if (m->value_len > HB_EVENT_MAX_BYTES) {
            hb_seterr(why, sizeof(why), "event of %zu bytes (encoded) is larger than %d bytes",
                      m->value_len, HB_EVENT_MAX_BYTES);
            goto bad;
        }
        m->key = hb_strdup(hb_event_key(ev));
        continue;
    bad:
        hb_seterr(errstr, errstr_size, "data.events[%zu]: %s", i, why);
        *bad_event = (long)i;
        json_decref(root);
        hb_ingest_batch_free(out);
        return -1;
    }
    json_decref(root);
    return 0;
}

int hb_ingest_parse(hb_codec_t *codec, const char *body, size_t len, hb_ingest_batch_t *out,
                    long *bad_event, char *errstr, size_t errstr_size) {
    if (parse(codec, body, len, out, bad_event, errstr, errstr_size) == 0)
        return 0;
    /* The error text ends up in a JSON answer (producer/ingest.c) and quotes
     * the body: a long eventType, published or severity is cut where a
     * buffer ends, possibly inside a character, and a JSON string cannot
     * carry the invalid UTF-8 left (the answer lost its "error"). */
    if (errstr && errstr_size)
        hb_utf8_scrub(errstr);
    return -1;
}
