/*
 * The payload renderer as it was before events became text (hb_deliver.c at
 * main, renamed ref_*): every format built from jansson events, okta and
 * event written with hb_json_put_members, CloudEvents as a jansson document.
 * Tests compare today's hb_deliver_render with it byte for byte.
 */
#ifndef HB_RENDER_REF_H
#define HB_RENDER_REF_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hb_deliver.h"
#include "hb_json.h"

#define HB_CT_JSON "application/json"
#define HB_CT_CE "application/cloudevents+json"
#define HB_CT_CE_BATCH "application/cloudevents-batch+json"

/* A member's string as the dispatcher reads one: none when it holds a NUL
 * character (hb_event.h). */
static const char *ref_str(const json_t *ev, const char *key) {
    const json_t *v = json_object_get(ev, key);
    const char *s = json_string_value(v);
    return s && strlen(s) == json_string_length(v) ? s : NULL;
}

/* Members every delivered event keeps, whatever options.fields says:
 * receivers de-duplicate on uuid, route on eventType, order on published,
 * and the CloudEvents attributes id, type and time come from them. */
static const char *const ref_always[] = {"uuid", "published", "eventType"};

static int ref_field_wanted(const hb_sub_t *sub, const char *key) {
    for (size_t i = 0; i < HB_ARRAY_SIZE(ref_always); i++)
        if (!strcmp(key, ref_always[i]))
            return 1;
    for (int i = 0; i < sub->fields_cnt; i++)
        if (!strcmp(key, sub->fields[i]))
            return 1;
    return 0;
}

/* A new reference to the event as this subscription receives it: the event
 * itself without a field selection, else a shallow copy holding only the
 * selected top-level members, in the event's own order. NULL on failure. */
static json_t *ref_select(const hb_sub_t *sub, json_t *ev) {
    const char *key;
    json_t *val;
    if (!sub->fields)
        return json_incref(ev);
    json_t *out = json_object();
    if (!out)
        return NULL;
    json_object_foreach(ev, key, val) {
        if (ref_field_wanted(sub, key) && json_object_set(out, key, val)) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* CloudEvents subject: the id of the event's first target of type "User"
 * (the user the event is about), as delivered: a subscription that does not
 * receive `target` gets no subject either. NULL when there is none. */
static const char *ref_subject(const json_t *ev) {
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(ev, "target"), i, t) {
        const char *type = json_string_value(json_object_get(t, "type"));
        const char *id = json_string_value(json_object_get(t, "id"));
        if (type && !strcmp(type, "User") && id && *id)
            return id;
    }
    return NULL;
}

/* One CloudEvents 1.0 structured-mode event wrapping an identity event. */
static json_t *ref_cloudevent(json_t *ev, const char *fallback_id, const char *source, char *errstr,
                              size_t errstr_size) {
    const char *type = ref_str(ev, "eventType");
    const char *id = ref_str(ev, "uuid");
    const char *time = ref_str(ev, "published");
    const char *subject = ref_subject(ev);
    if (!type || !*type) {
        hb_seterr(errstr, errstr_size, "event has no eventType");
        return NULL;
    }
    json_t *ce = json_object();
    int rc = 0;
    rc |= json_object_set_new(ce, "specversion", json_string("1.0"));
    rc |= json_object_set_new(ce, "id", json_string(id && *id ? id : fallback_id));
    rc |= json_object_set_new(ce, "source", json_string(source));
    rc |= json_object_set_new(ce, "type", json_string(type));
    if (subject)
        rc |= json_object_set_new(ce, "subject", json_string(subject));
    if (time && *time)
        rc |= json_object_set_new(ce, "time", json_string(time));
    rc |= json_object_set_new(ce, "datacontenttype", json_string(HB_CT_JSON));
    rc |= json_object_set(ce, "data", ev);
    if (rc) {
        json_decref(ce);
        hb_seterr(errstr, errstr_size, "cannot build CloudEvent (invalid UTF-8?)");
        return NULL;
    }
    return ce;
}

/* The field selection as hb_json_put_members wants it. */
static int ref_keep(const char *key, void *arg) {
    return ref_field_wanted(arg, key);
}

/* One event as this subscription receives it (see ref_select),
 * written straight out. */
static void ref_put_event(hb_buf_t *b, const hb_sub_t *sub, const json_t *ev) {
    int first = 1;
    hb_buf_put(b, "{", 1);
    hb_json_put_members(b, ev, sub->fields ? ref_keep : NULL, (void *)(uintptr_t)sub, &first);
    hb_buf_put(b, "}", 1);
}

static void ref_put_member(hb_buf_t *b, const char *name, const char *value) {
    hb_buf_puts(b, name);
    hb_json_put_str(b, value, strlen(value));
}

/* The okta event-hook envelope, written member by member in contract order
 * (what json_dumps made of the document this used to build). */
static int ref_okta(hb_buf_t *b, const hb_sub_t *sub, json_t *const *events, size_t n,
                    const char *delivery_id, const char *source, int64_t now_ms) {
    char now[40];
    if (!hb_json_utf8_ok(source, strlen(source)) ||
        !hb_json_utf8_ok(delivery_id, strlen(delivery_id)))
        return -1;
    hb_format_time(now_ms, now, sizeof(now));
    hb_buf_puts(b, "{\"eventType\":\"com.okta.event_hook\",\"eventTypeVersion\":\"1.0\","
                   "\"cloudEventsVersion\":\"0.1\"");
    ref_put_member(b, ",\"source\":", source);
    ref_put_member(b, ",\"eventId\":", delivery_id);
    ref_put_member(b, ",\"eventTime\":", now);
    hb_buf_puts(b, ",\"contentType\":\"" HB_CT_JSON "\",\"data\":{\"events\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            hb_buf_put(b, ",", 1);
        ref_put_event(b, sub, events[i]);
    }
    hb_buf_puts(b, "]}}");
    return 0;
}

/* The CloudEvents document for n already-selected events; sets
 * *content_type. NULL (errstr set) on failure. */
static json_t *ref_ce_doc(json_t *const *events, size_t n, int as_array, const char *delivery_id,
                          const char *source, const char **content_type, char *errstr,
                          size_t errstr_size) {
    if (!as_array) {
        *content_type = HB_CT_CE;
        return ref_cloudevent(events[0], delivery_id, source, errstr, errstr_size);
    }
    *content_type = HB_CT_CE_BATCH;
    json_t *doc = json_array();
    for (size_t i = 0; i < n; i++) {
        char fallback[HB_UUID_LEN + 24];
        hb_seterr(fallback, sizeof(fallback), "%s-%zu", delivery_id, i);
        json_t *ce = ref_cloudevent(events[i], fallback, source, errstr, errstr_size);
        if (!ce || json_array_append_new(doc, ce)) {
            json_decref(doc);
            return NULL;
        }
    }
    return doc;
}

/* The CloudEvents formats, built as a document from the selected events. */
static int ref_ce(hb_buf_t *b, const hb_sub_t *sub, json_t *const *events, size_t n,
                  const char *delivery_id, const char *source, const char **content_type,
                  char *errstr, size_t errstr_size) {
    json_t *doc = NULL;
    json_t **sel = hb_calloc(n, sizeof(*sel));
    for (size_t i = 0; i < n; i++) {
        sel[i] = ref_select(sub, events[i]);
        if (!sel[i]) {
            hb_seterr(errstr, errstr_size, "cannot select the fields of event %zu", i);
            goto done;
        }
    }
    /* a batch: several events, or one to a subscription that batches */
    doc = ref_ce_doc(sel, n, n > 1 || sub->batch_max > 1, delivery_id, source, content_type, errstr,
                     errstr_size);
done:
    for (size_t i = 0; i < n; i++)
        json_decref(sel[i]);
    free(sel);
    if (!doc)
        return -1;
    hb_json_put(b, doc);
    json_decref(doc);
    return 0;
}

static int ref_render(const hb_sub_t *sub, json_t *const *events, size_t n, const char *delivery_id,
                      const char *source, int64_t now_ms, hb_payload_t *out, char *errstr,
                      size_t errstr_size) {
    const char *content_type = HB_CT_JSON;
    hb_buf_t b = {0};
    memset(out, 0, sizeof(*out));
    if (n == 0 || !events || !delivery_id) {
        hb_seterr(errstr, errstr_size, "nothing to render");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!json_is_object(events[i])) {
            hb_seterr(errstr, errstr_size, "event %zu is not a JSON object", i);
            return -1;
        }
    }
    if (!source || !*source)
        source = "hookbridge";

    /* The body is written straight into one buffer (hb_json: the bytes
     * json_dumps(JSON_COMPACT | JSON_REAL_PRECISION(15)) would make; 15
     * significant digits, so a coordinate sent as 52.517 comes out as 52.517,
     * not as the 17-digit 52.517000000000003 of the nearest double). The
     * field selection applies to every event, in every format (for
     * CloudEvents to `data`), before anything else looks at the event. */
    hb_buf_reserve(&b, 1024 * n);
    switch (sub->format) {
    case HB_FORMAT_CLOUDEVENTS:
        if (ref_ce(&b, sub, events, n, delivery_id, source, &content_type, errstr, errstr_size) < 0)
            goto fail;
        break;
    case HB_FORMAT_EVENT:
        /* The event itself; a batch of bare events is a JSON array of them. */
        if (n > 1 || sub->batch_max > 1)
            hb_buf_put(&b, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                hb_buf_put(&b, ",", 1);
            ref_put_event(&b, sub, events[i]);
        }
        if (n > 1 || sub->batch_max > 1)
            hb_buf_put(&b, "]", 1);
        break;
    case HB_FORMAT_OKTA:
    default:
        if (ref_okta(&b, sub, events, n, delivery_id, source, now_ms) < 0) {
            hb_seterr(errstr, errstr_size, "cannot build the event-hook envelope");
            goto fail;
        }
        break;
    }
    out->body = b.p; /* malloc'd by hb_buf: the caller frees it with free() */
    out->len = b.len;
    out->content_type = content_type;
    return 0;
fail:
    hb_buf_free(&b);
    return -1;
}

#endif
