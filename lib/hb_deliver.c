/*
 * The delivery path, written once: render -> sign -> send -> classify.
 *
 * The dispatcher and the retrier both call these; they differ only in where
 * work comes from and where failures go. Rendering writes the subscription's
 * payload format straight into one buffer (compact, keys in contract order)
 * from events it only borrows: an event is its JSON text with an index of
 * its top-level members (hb_event_t), so the event, or the members a field
 * selection keeps, are copied as they are, and the envelopes are written
 * member by member; the bytes are those json_dumps made of the documents
 * this used to build (tests/render_ref.h is that renderer, and the tests
 * compare the two). Sending signs the exact body bytes at send time with the
 * subscription's unexpired secrets and a fresh timestamp, so a retry carries
 * the same webhook-id with a new timestamp and signature. Classification maps
 * one hb_http_result_t to an outcome and a secret-free reason; it is the only
 * place that decides what is retried.
 *
 * Thread: the main loop thread (the one owning the hb_http_t). Render,
 * classify and the challenge check are pure and may run anywhere.
 */
#include "hb_deliver.h"

#include <openssl/crypto.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hb_json.h"
#include "hb_sign.h"

#define HB_CT_JSON "application/json"
#define HB_CT_CE "application/cloudevents+json"
#define HB_CT_CE_BATCH "application/cloudevents-batch+json"
#define HB_VERIFY_MAX_RESPONSE 16384
/* "<auth_header>: <auth_value>": a name of up to 256 characters, a value of
 * up to 4096 characters (sql/20_options.sql), 4 bytes each in UTF-8. */
#define HB_AUTH_LINE_MAX (256 + 2 + 4 * 4096 + 1)

/* ------------------------------------------------------------------ */
/* Render                                                              */

/* Members every delivered event keeps, whatever options.fields says:
 * receivers de-duplicate on uuid, route on eventType, order on published,
 * and the CloudEvents attributes id, type and time come from them. */
static const char *const hb_deliver_always[] = {"uuid", "published", "eventType"};

static int hb_deliver_field_wanted(const hb_sub_t *sub, const char *key) {
    for (size_t i = 0; i < HB_ARRAY_SIZE(hb_deliver_always); i++)
        if (!strcmp(key, hb_deliver_always[i]))
            return 1;
    for (int i = 0; i < sub->fields_cnt; i++)
        if (!strcmp(key, sub->fields[i]))
            return 1;
    return 0;
}

/* hb_deliver_field_wanted for a member of an event's text: its key compared
 * as the C string jansson's iteration hands out (up to a NUL). */
static int hb_deliver_member_wanted(const hb_sub_t *sub, const hb_event_t *ev,
                                    const hb_jmember_t *m) {
    const char *k = ev->text + m->key;
    char stack[256], *tmp;
    int wanted = 0;
    if (!memchr(k, '\\', m->key_len)) { /* no escape: no NUL either */
        for (size_t i = 0; i < HB_ARRAY_SIZE(hb_deliver_always); i++)
            if (strlen(hb_deliver_always[i]) == m->key_len &&
                !memcmp(k, hb_deliver_always[i], m->key_len))
                return 1;
        for (int i = 0; i < sub->fields_cnt; i++)
            if (strlen(sub->fields[i]) == m->key_len && !memcmp(k, sub->fields[i], m->key_len))
                return 1;
        return 0;
    }
    tmp = m->key_len < sizeof(stack) ? stack : hb_malloc(m->key_len + 1);
    if (hb_json_unescape(k, m->key_len, tmp) >= 0)
        wanted = hb_deliver_field_wanted(sub, tmp);
    if (tmp != stack)
        free(tmp);
    return wanted;
}

/* One event as this subscription receives it (see hb_deliver_select): the
 * event's own text, or its selected members' text, copied. */
static void hb_deliver_put_event(hb_buf_t *b, const hb_sub_t *sub, const hb_event_t *ev) {
    int first = 1;
    if (!sub->fields) {
        hb_buf_put(b, ev->text, ev->len);
        return;
    }
    hb_json_append(b, "{", 1);
    for (size_t i = 0; i < ev->n; i++) {
        const hb_jmember_t *m = &ev->m[i];
        if (!hb_deliver_member_wanted(sub, ev, m))
            continue;
        if (!first)
            hb_json_append(b, ",", 1);
        first = 0;
        hb_json_append(b, ev->text + m->key - 1, m->val + m->val_len - (m->key - 1));
    }
    hb_buf_put(b, "}", 1);
}

static void hb_deliver_put_member(hb_buf_t *b, const char *name, const char *value) {
    hb_buf_puts(b, name);
    hb_json_put_str(b, value, strlen(value));
}

/* The okta event-hook envelope, written member by member in contract order
 * (what json_dumps made of the document this used to build). */
static int hb_deliver_okta(hb_buf_t *b, const hb_sub_t *sub, hb_event_t *const *events, size_t n,
                           const char *delivery_id, const char *source, int64_t now_ms) {
    char now[40];
    if (!hb_json_utf8_ok(source, strlen(source)) ||
        !hb_json_utf8_ok(delivery_id, strlen(delivery_id)))
        return -1;
    hb_format_time(now_ms, now, sizeof(now));
    hb_buf_puts(b, "{\"eventType\":\"com.okta.event_hook\",\"eventTypeVersion\":\"1.0\","
                   "\"cloudEventsVersion\":\"0.1\"");
    hb_deliver_put_member(b, ",\"source\":", source);
    hb_deliver_put_member(b, ",\"eventId\":", delivery_id);
    hb_deliver_put_member(b, ",\"eventTime\":", now);
    hb_buf_puts(b, ",\"contentType\":\"" HB_CT_JSON "\",\"data\":{\"events\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            hb_buf_put(b, ",", 1);
        hb_deliver_put_event(b, sub, events[i]);
    }
    hb_buf_puts(b, "]}}");
    return 0;
}

/* One CloudEvents 1.0 structured-mode event wrapping an identity event, in
 * the members' order of the document this used to build: specversion, id
 * (the event's uuid, else fallback_id), source, type (eventType), subject
 * (the first User target's id, as delivered: a subscription that does not
 * receive `target` gets no subject either), time (published), then
 * datacontenttype and data (the event as the subscription receives it). */
static int hb_deliver_put_ce(hb_buf_t *b, const hb_sub_t *sub, hb_event_t *ev,
                             const char *fallback_id, const char *source, char *errstr,
                             size_t errstr_size) {
    const char *type = ev->type, *id = ev->uuid && *ev->uuid ? ev->uuid : fallback_id;
    const char *subject = NULL;
    if (!type || !*type) {
        hb_seterr(errstr, errstr_size, "event has no eventType");
        return -1;
    }
    if (!hb_json_utf8_ok(id, strlen(id)) || !hb_json_utf8_ok(source, strlen(source))) {
        hb_seterr(errstr, errstr_size, "cannot build CloudEvent (invalid UTF-8?)");
        return -1;
    }
    if (!sub->fields || hb_deliver_field_wanted(sub, "target"))
        subject = hb_ev_subject(ev);
    hb_buf_puts(b, "{\"specversion\":\"1.0\"");
    hb_deliver_put_member(b, ",\"id\":", id);
    hb_deliver_put_member(b, ",\"source\":", source);
    hb_deliver_put_member(b, ",\"type\":", type);
    if (subject)
        hb_deliver_put_member(b, ",\"subject\":", subject);
    if (ev->published && *ev->published)
        hb_deliver_put_member(b, ",\"time\":", ev->published);
    hb_buf_puts(b, ",\"datacontenttype\":\"" HB_CT_JSON "\",\"data\":");
    hb_deliver_put_event(b, sub, ev);
    hb_buf_put(b, "}", 1);
    return 0;
}

/* The CloudEvents formats: one event, or a batch as a JSON array (each
 * event without a uuid identified by "<delivery id>-<index>"); as_array: a
 * batch also when it holds one event (hb_deliver_as_array). */
static int hb_deliver_ce(hb_buf_t *b, const hb_sub_t *sub, hb_event_t *const *events, size_t n,
                         int as_array, const char *delivery_id, const char *source,
                         const char **content_type, char *errstr, size_t errstr_size) {
    if (!as_array) {
        *content_type = HB_CT_CE;
        return hb_deliver_put_ce(b, sub, events[0], delivery_id, source, errstr, errstr_size);
    }
    *content_type = HB_CT_CE_BATCH;
    hb_buf_put(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        char fallback[HB_UUID_LEN + 24];
        hb_seterr(fallback, sizeof(fallback), "%s-%zu", delivery_id, i);
        if (i)
            hb_buf_put(b, ",", 1);
        if (hb_deliver_put_ce(b, sub, events[i], fallback, source, errstr, errstr_size) < 0)
            return -1;
    }
    hb_buf_put(b, "]", 1);
    return 0;
}

int hb_deliver_render_json(const hb_sub_t *sub, json_t *const *events, size_t n,
                           const char *delivery_id, const char *source, int64_t now_ms,
                           hb_payload_t *out, char *errstr, size_t errstr_size) {
    hb_event_t **evs;
    int r = -1;
    size_t i;
    memset(out, 0, sizeof(*out));
    if (n == 0 || !events) {
        hb_seterr(errstr, errstr_size, "nothing to render");
        return -1;
    }
    evs = hb_calloc(n, sizeof(*evs));
    for (i = 0; i < n; i++) {
        if (!(evs[i] = hb_ev_from_json(events[i]))) {
            hb_seterr(errstr, errstr_size, "event %zu is not a JSON object", i);
            goto done;
        }
    }
    r = hb_deliver_render(sub, evs, n, delivery_id, source, now_ms, out, errstr, errstr_size);
done:
    for (i = 0; i < n; i++)
        hb_ev_unref(evs[i]);
    free(evs);
    return r;
}

/* Whether n events to sub go as a batch (a JSON array, in the array
 * formats): several events, or one to a subscription that batches
 * (batch_max > 1). The shape of its bodies is the subscription's choice, not
 * the traffic's: a receiver that asked for batches gets an array also when a
 * window closed on one event (review 49: it got the bare object then, and
 * for cloudevents application/cloudevents+json, which docs/payloads.md says
 * a batching subscription does not get). */
static int hb_deliver_as_array(const hb_sub_t *sub, size_t n) {
    return n > 1 || sub->batch_max > 1;
}

int hb_deliver_render(const hb_sub_t *sub, hb_event_t *const *events, size_t n,
                      const char *delivery_id, const char *source, int64_t now_ms,
                      hb_payload_t *out, char *errstr, size_t errstr_size) {
    const char *content_type = HB_CT_JSON;
    hb_buf_t b = {0};
    int as_array = hb_deliver_as_array(sub, n);
    memset(out, 0, sizeof(*out));
    if (n == 0 || !events || !delivery_id) {
        hb_seterr(errstr, errstr_size, "nothing to render");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!events[i]) {
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
    {
        size_t want = 512;
        for (size_t i = 0; i < n; i++)
            want += events[i]->len + 1;
        hb_buf_reserve(&b, want);
    }
    switch (sub->format) {
    case HB_FORMAT_CLOUDEVENTS:
        if (hb_deliver_ce(&b, sub, events, n, as_array, delivery_id, source, &content_type, errstr,
                          errstr_size) < 0)
            goto fail;
        break;
    case HB_FORMAT_EVENT:
        /* The event itself; a batch of bare events is a JSON array of them. */
        if (as_array)
            hb_buf_put(&b, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                hb_buf_put(&b, ",", 1);
            hb_deliver_put_event(&b, sub, events[i]);
        }
        if (as_array)
            hb_buf_put(&b, "]", 1);
        break;
    case HB_FORMAT_OKTA:
    default:
        if (hb_deliver_okta(&b, sub, events, n, delivery_id, source, now_ms) < 0) {
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

/* ------------------------------------------------------------------ */
/* Send                                                                */

/* Room for the longest auth header line register() accepts: a name of 256
 * bytes (a token), ": ", and a value of 4096 characters of up to 4 bytes each
 * in UTF-8 (sql/20_options.sql). */
#define HB_AUTH_LINE_MAX (256 + 2 + 4 * 4096 + 1)

/* "Name: value" for the subscription's auth header into buf; 0 when none,
 * 1 when written, -1 when the configured header is unusable. */
static int hb_deliver_auth_line(const hb_sub_t *sub, char *buf, size_t bufsz) {
    if (!sub->auth_header || !*sub->auth_header)
        return 0;
    const char *value = sub->auth_value ? sub->auth_value : "";
    if (strpbrk(sub->auth_header, "\r\n: ") || strpbrk(value, "\r\n"))
        return -1;
    int len = snprintf(buf, bufsz, "%s: %s", sub->auth_header, value);
    if (len < 0 || (size_t)len >= bufsz) {
        OPENSSL_cleanse(buf, bufsz); /* part of the value may be in it */
        return -1;
    }
    return 1;
}

/* Appends the subscription's custom header lines after headers[nh];
 * returns the new count. They come after ours and can neither replace nor
 * repeat them: hb_sub_add_header refused reserved names and the auth header
 * when the snapshot was built. */
static size_t hb_deliver_custom_headers(const hb_sub_t *sub, const char **headers, size_t nh) {
    for (int i = 0; i < sub->headers_cnt; i++)
        headers[nh++] = sub->headers[i];
    return nh;
}

/* "name" followed by value into buf, cut to fit like snprintf; returns buf.
 * Every delivery builds five such lines: no printf on that path. */
static const char *hb_deliver_line(char *buf, size_t size, const char *name, const char *value) {
    size_t n = strlen(name), v = strlen(value);
    if (n >= size)
        n = size - 1;
    if (v > size - 1 - n)
        v = size - 1 - n;
    memcpy(buf, name, n);
    memcpy(buf + n, value, v);
    buf[n + v] = '\0';
    return buf;
}

/* hb_deliver_id and hb_deliver_id_of: parts[1..n] are the events' uuids. */
static char *deliver_id(const char *sub_id, const char **parts, size_t n,
                        char id[HB_UUID_LEN + 1]) {
    size_t ids_len = 1;
    char *ids;

    parts[0] = n == 1 ? "delivery" : "batch";
    for (size_t i = 0; i < n; i++)
        ids_len += strlen(parts[i + 1]) + 1;
    parts[n + 1] = sub_id;
    hb_uuid_derive(parts, n + 2, id);
    ids = hb_calloc(1, ids_len);
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(ids, ",");
        strcat(ids, parts[i + 1]);
    }
    free(parts);
    return ids;
}

char *hb_deliver_id(const char *sub_id, hb_event_t *const *events, size_t n,
                    char id[HB_UUID_LEN + 1]) {
    const char **parts = hb_malloc((n + 2) * sizeof(*parts));
    for (size_t i = 0; i < n; i++) {
        const char *u = hb_ev_uuid(events[i]);
        parts[i + 1] = u ? u : "";
    }
    return deliver_id(sub_id, parts, n, id);
}

char *hb_deliver_id_of(const char *sub_id, const char *const *uuids, size_t n,
                       char id[HB_UUID_LEN + 1]) {
    const char **parts = hb_malloc((n + 2) * sizeof(*parts));
    for (size_t i = 0; i < n; i++)
        parts[i + 1] = uuids[i];
    return deliver_id(sub_id, parts, n, id);
}

/* One part of a split batch: events elems[from..to) of the body's array, as
 * hb_deliver_render writes that many to the batching subscription it was
 * rendered for (an array format: an array, of one element too), in top (the
 * okta envelope, its data.events replaced and its eventId the part's id;
 * NULL for the array formats). */
static int split_part(json_t *top, json_t *elems, size_t from, size_t to, const char *id,
                      int64_t now_ms, const char *batch_ct, hb_payload_t *out, char **type) {
    json_t *arr = json_array(), *doc, *first = json_array_get(elems, from);
    const char *t = json_string_value(json_object_get(first, "eventType"));
    char now[40];
    if (!t) /* a CloudEvent: its type is the event's */
        t = json_string_value(json_object_get(first, "type"));
    *type = hb_strdup(t ? t : "");
    for (size_t i = from; i < to; i++)
        json_array_append(arr, json_array_get(elems, i));
    if (top) {
        json_t *data = json_copy(json_object_get(top, "data"));
        doc = json_copy(top);
        json_object_set_new(data, "events", arr);
        json_object_set_new(doc, "data", data);
        json_object_set_new(doc, "eventId", json_string(id));
        hb_format_time(now_ms, now, sizeof(now));
        json_object_set_new(doc, "eventTime", json_string(now));
        out->content_type = HB_CT_JSON;
    } else {
        doc = arr;
        out->content_type = !strcmp(batch_ct, HB_CT_CE_BATCH) ? HB_CT_CE_BATCH : HB_CT_JSON;
    }
    /* the bytes hb_json writes (hb_deliver_render): compact, 15 digits */
    out->body = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(15));
    json_decref(doc);
    if (!out->body)
        return -1;
    out->len = strlen(out->body);
    return 0;
}

int hb_deliver_split_body(const char *body, size_t len, const char *content_type, size_t n,
                          size_t half, const char *const ids[2], int64_t now_ms,
                          hb_payload_t out[2], char *types[2], char *errstr, size_t errstr_size) {
    json_error_t jerr;
    json_t *doc, *top = NULL, *elems;
    int rc = -1;
    memset(out, 0, 2 * sizeof(*out));
    types[0] = types[1] = NULL;
    if (!content_type)
        content_type = HB_CT_JSON;
    if (half == 0 || half >= n) {
        hb_seterr(errstr, errstr_size, "nothing to split");
        return -1;
    }
    doc = json_loadb(body ? body : "", len, 0, &jerr);
    if (!doc) {
        hb_seterr(errstr, errstr_size, "the body is not JSON: %s", jerr.text);
        return -1;
    }
    elems = doc;
    if (json_is_object(doc)) { /* okta: {"eventId": ..., "data": {"events": [...]}} */
        top = doc;
        elems = json_object_get(json_object_get(doc, "data"), "events");
        if (!json_is_string(json_object_get(doc, "eventId")))
            elems = NULL;
    }
    if (!json_is_array(elems) || json_array_size(elems) != n) {
        hb_seterr(errstr, errstr_size, "the body is not a batch of %zu events", n);
        goto done;
    }
    if (split_part(top, elems, 0, half, ids[0], now_ms, content_type, &out[0], &types[0]) < 0 ||
        split_part(top, elems, half, n, ids[1], now_ms, content_type, &out[1], &types[1]) < 0) {
        free(out[0].body);
        free(out[1].body);
        memset(out, 0, 2 * sizeof(*out));
        free(types[0]);
        free(types[1]);
        types[0] = types[1] = NULL;
        hb_seterr(errstr, errstr_size, "out of memory");
        goto done;
    }
    rc = 0;
done:
    json_decref(doc);
    return rc;
}

static void deliver_send(hb_http_t *http, const hb_sub_t *sub, const char *delivery_id,
                         hb_payload_t *payload, int borrowed, long long default_timeout_ms,
                         size_t max_response_bytes, hb_http_done_cb *done, void *opaque) {
    int64_t now_ms = hb_wall_ms();
    int64_t ts = now_ms / 1000;
    char h_ct[128], h_id[128], h_ts[48], h_sig[512], h_auth[HB_AUTH_LINE_MAX];
    char sig[480];
    const char **headers = hb_calloc(8 + (size_t)sub->headers_cnt, sizeof(*headers));
    size_t nh = 0;
    hb_http_req_t req = {
        .method = HB_HTTP_POST,
        .url = sub->url,
        .headers = headers,
        .body = payload->body,
        .body_len = payload->len,
        .body_borrowed = borrowed,
        .timeout_ms = sub->timeout_ms > 0 ? sub->timeout_ms : default_timeout_ms,
        .max_response_bytes = max_response_bytes,
        .done = done,
        .opaque = opaque,
    };
    if (!borrowed)
        payload->body = NULL; /* now owned by the request */

    if (hb_sign_header(sub->secrets, sub->secrets_cnt, now_ms, delivery_id, ts, req.body,
                       req.body_len, sig, sizeof(sig)) != 0) {
        hb_http_fail(http, &req, "cannot sign: no unexpired signing secret");
        free(headers);
        return;
    }
    int auth = hb_deliver_auth_line(sub, h_auth, sizeof(h_auth));
    if (auth < 0) {
        hb_http_fail(http, &req, "auth header is malformed or too long");
        free(headers);
        return;
    }
    char digits[24], *d = digits + sizeof(digits);
    uint64_t left = ts < 0 ? 0 : (uint64_t)ts; /* wall clock seconds: never negative */
    *--d = '\0';
    do
        *--d = (char)('0' + left % 10);
    while ((left /= 10) > 0);
    headers[nh++] = hb_deliver_line(h_ct, sizeof(h_ct), "Content-Type: ",
                                    payload->content_type ? payload->content_type : HB_CT_JSON);
    headers[nh++] = "User-Agent: hookbridge/" HB_VERSION;
    headers[nh++] = hb_deliver_line(h_id, sizeof(h_id), "webhook-id: ", delivery_id);
    headers[nh++] = hb_deliver_line(h_ts, sizeof(h_ts), "webhook-timestamp: ", d);
    headers[nh++] = hb_deliver_line(h_sig, sizeof(h_sig), "webhook-signature: ", sig);
    if (auth > 0)
        headers[nh++] = h_auth;
    nh = hb_deliver_custom_headers(sub, headers, nh);
    headers[nh++] = "Expect:"; /* no 100-continue round trip */
    headers[nh] = NULL;

    hb_http_submit(http, &req); /* copies the header lines */
    if (auth > 0)
        OPENSSL_cleanse(h_auth, strlen(h_auth));
    free(headers);
}

void hb_deliver_send(hb_http_t *http, const hb_sub_t *sub, const char *delivery_id,
                     hb_payload_t *payload, long long default_timeout_ms, size_t max_response_bytes,
                     hb_http_done_cb *done, void *opaque) {
    deliver_send(http, sub, delivery_id, payload, 0, default_timeout_ms, max_response_bytes, done,
                 opaque);
}

void hb_deliver_send_borrowed(hb_http_t *http, const hb_sub_t *sub, const char *delivery_id,
                              const hb_payload_t *payload, long long default_timeout_ms,
                              size_t max_response_bytes, hb_http_done_cb *done, void *opaque) {
    hb_payload_t p = *payload;
    deliver_send(http, sub, delivery_id, &p, 1, default_timeout_ms, max_response_bytes, done,
                 opaque);
}

/* ------------------------------------------------------------------ */
/* Classify                                                            */

hb_outcome_t hb_deliver_classify(const hb_http_result_t *res, char *reason, size_t reason_size) {
    int status = res->http_status;
    if (reason_size > 0)
        reason[0] = '\0';
    if (res->refused) {
        hb_seterr(reason, reason_size, "%s", res->error[0] ? res->error : "refused");
        return HB_OUTCOME_FAILED;
    }
    if (res->timed_out || res->transport_error) {
        /* An incomplete exchange is retried even if a status line arrived:
         * the receiver de-duplicates by webhook-id. */
        hb_seterr(reason, reason_size, "%s", res->error[0] ? res->error : "transport error");
        return HB_OUTCOME_RETRY;
    }
    if (status >= 200 && status <= 299)
        return HB_OUTCOME_DELIVERED;
    if (status == 408 || status == 429 || (status >= 500 && status <= 599)) {
        hb_seterr(reason, reason_size, "HTTP %d", status);
        return HB_OUTCOME_RETRY;
    }
    if (status >= 300 && status <= 399) {
        hb_seterr(reason, reason_size, "redirect (HTTP %d) not followed", status);
        return HB_OUTCOME_FAILED;
    }
    if (status >= 400 && status <= 499) {
        hb_seterr(reason, reason_size, "HTTP %d", status);
        return HB_OUTCOME_FAILED;
    }
    hb_seterr(reason, reason_size, "unexpected HTTP status %d", status);
    return HB_OUTCOME_FAILED;
}

/* ------------------------------------------------------------------ */
/* Verification                                                        */

/* The challenge is signed as a delivery is (Standard Webhooks), over an
 * empty body, with the challenge value as its webhook-id: the signature
 * covers the value the endpoint is asked to echo, so an endpoint that checks
 * it knows the challenge comes from whoever holds its signing secret, and a
 * captured one is good for that value only, within the timestamp tolerance. */
void hb_deliver_verify_send(hb_http_t *http, const hb_sub_t *sub, const char *challenge,
                            long long timeout_ms, hb_http_done_cb *done, void *opaque) {
    int64_t now_ms = hb_wall_ms();
    char h_ch[512], h_ua[64], h_auth[HB_AUTH_LINE_MAX], h_id[128], h_ts[48], h_sig[512];
    char sig[480];
    const char **headers = hb_calloc(9 + (size_t)sub->headers_cnt, sizeof(*headers));
    size_t nh = 0;
    hb_http_req_t req = {
        .method = HB_HTTP_GET,
        .url = sub->url,
        .headers = headers,
        .timeout_ms = timeout_ms,
        .max_response_bytes = HB_VERIFY_MAX_RESPONSE,
        .done = done,
        .opaque = opaque,
    };
    if (hb_sign_header(sub->secrets, sub->secrets_cnt, now_ms, challenge, now_ms / 1000, "", 0, sig,
                       sizeof(sig)) != 0) {
        hb_http_fail(http, &req, "cannot sign: no unexpired signing secret");
        free(headers);
        return;
    }
    int auth = hb_deliver_auth_line(sub, h_auth, sizeof(h_auth));
    if (auth < 0) {
        hb_http_fail(http, &req, "auth header is malformed or too long");
        free(headers);
        return;
    }
    hb_seterr(h_ch, sizeof(h_ch), "X-Okta-Verification-Challenge: %s", challenge);
    hb_seterr(h_ua, sizeof(h_ua), "User-Agent: hookbridge/%s", HB_VERSION);
    hb_seterr(h_id, sizeof(h_id), "webhook-id: %s", challenge);
    hb_seterr(h_ts, sizeof(h_ts), "webhook-timestamp: %lld", (long long)(now_ms / 1000));
    hb_seterr(h_sig, sizeof(h_sig), "webhook-signature: %s", sig);
    headers[nh++] = h_ch;
    headers[nh++] = "Accept: application/json";
    headers[nh++] = h_ua;
    headers[nh++] = h_id;
    headers[nh++] = h_ts;
    headers[nh++] = h_sig;
    if (auth > 0)
        headers[nh++] = h_auth;
    /* The custom headers too: receivers may route on them (a gateway keyed on
     * X-Team must let the challenge through to the right backend). */
    nh = hb_deliver_custom_headers(sub, headers, nh);
    headers[nh] = NULL;
    hb_http_submit(http, &req);
    if (auth > 0)
        OPENSSL_cleanse(h_auth, strlen(h_auth));
    free(headers);
}

int hb_deliver_check_challenge(const hb_http_result_t *res, const char *challenge, char *reason,
                               size_t reason_size) {
    if (reason_size > 0)
        reason[0] = '\0';
    /* never sent (its host's queue bounds, an open circuit): error says why */
    if (res->refused || res->timed_out || res->transport_error || res->not_sent) {
        hb_seterr(reason, reason_size, "%s", res->error[0] ? res->error : "no response");
        return -1;
    }
    if (res->http_status >= 300 && res->http_status <= 399) {
        /* as a delivery's (hb_deliver_classify) says it: the operator who
         * reads "HTTP 301" alone does not learn that the URL to register is
         * the one it points to */
        hb_seterr(reason, reason_size, "redirect (HTTP %d) not followed", res->http_status);
        return -1;
    }
    if (res->http_status != 200) {
        hb_seterr(reason, reason_size, "HTTP %d", res->http_status);
        return -1;
    }
    json_error_t jerr;
    const char *body = res->body;
    size_t body_len = res->body_len;
    /* A UTF-8 byte order mark before the JSON is ignored, as RFC 8259 (8.1)
     * lets a parser do and common ones (Java's Jackson among them) do: an
     * endpoint whose framework writes one (.NET's UTF8Encoding(true),
     * PowerShell) answered "response is not JSON" here. */
    if (body && body_len >= 3 && !memcmp(body, "\xEF\xBB\xBF", 3)) {
        body += 3;
        body_len -= 3;
    }
    json_t *doc = body ? json_loadb(body, body_len, 0, &jerr) : NULL;
    if (!doc || !json_is_object(doc)) {
        json_decref(doc);
        if (res->body_len >= HB_VERIFY_MAX_RESPONSE) /* only its start was kept */
            hb_seterr(reason, reason_size,
                      "response is not JSON within its first %d bytes (answer only the JSON "
                      "object)",
                      HB_VERIFY_MAX_RESPONSE);
        else
            hb_seterr(reason, reason_size, "response is not JSON");
        return -1;
    }
    const char *echo = json_string_value(json_object_get(doc, "verification"));
    int ok = echo && challenge && !strcmp(echo, challenge);
    json_decref(doc);
    if (!ok) {
        hb_seterr(reason, reason_size, "wrong echo");
        return -1;
    }
    return 0;
}
