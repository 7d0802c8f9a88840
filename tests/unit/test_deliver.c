/*
 * Tests of the delivery path: classification (table-driven), rendering of
 * every payload format (parsed back and checked field by field), the request
 * a subscriber receives (captured by a libmicrohttpd server inside the test,
 * its signature verified with hb_sign_verify), and the verification
 * challenge, both its request and the check of the answer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hb_deliver.h"
#include "hb_sign.h"
#include "http_fixture.h"

#include "../render_ref.h"

/* ------------------------------------------------------------------ */
/* Classification                                                      */

static void test_classify(void **state) {
    (void)state;
    static const struct {
        int status, transport_error, timed_out, refused;
        const char *error;
        hb_outcome_t want;
        const char *reason;
    } cases[] = {
        {200, 0, 0, 0, "", HB_OUTCOME_DELIVERED, ""},
        {201, 0, 0, 0, "", HB_OUTCOME_DELIVERED, ""},
        {204, 0, 0, 0, "", HB_OUTCOME_DELIVERED, ""},
        {299, 0, 0, 0, "", HB_OUTCOME_DELIVERED, ""},
        {0, CURLE_OPERATION_TIMEDOUT, 1, 0, "timeout after 10000 ms", HB_OUTCOME_RETRY,
         "timeout after 10000 ms"},
        {0, CURLE_COULDNT_CONNECT, 0, 0, "connection refused", HB_OUTCOME_RETRY,
         "connection refused"},
        {0, CURLE_COULDNT_RESOLVE_HOST, 0, 0, "could not resolve host x.invalid", HB_OUTCOME_RETRY,
         "could not resolve host x.invalid"},
        {0, CURLE_ABORTED_BY_CALLBACK, 0, 0, "aborted at shutdown", HB_OUTCOME_RETRY,
         "aborted at shutdown"},
        {200, CURLE_OPERATION_TIMEDOUT, 1, 0, "timeout after 500 ms", HB_OUTCOME_RETRY,
         "timeout after 500 ms"}, /* status line seen, body never finished */
        {408, 0, 0, 0, "HTTP 408", HB_OUTCOME_RETRY, "HTTP 408"},
        {429, 0, 0, 0, "HTTP 429", HB_OUTCOME_RETRY, "HTTP 429"},
        {500, 0, 0, 0, "HTTP 500", HB_OUTCOME_RETRY, "HTTP 500"},
        {502, 0, 0, 0, "HTTP 502", HB_OUTCOME_RETRY, "HTTP 502"},
        {503, 0, 0, 0, "HTTP 503", HB_OUTCOME_RETRY, "HTTP 503"},
        {599, 0, 0, 0, "HTTP 599", HB_OUTCOME_RETRY, "HTTP 599"},
        {301, 0, 0, 0, "HTTP 301", HB_OUTCOME_FAILED, "redirect (HTTP 301) not followed"},
        {302, 0, 0, 0, "HTTP 302", HB_OUTCOME_FAILED, "redirect (HTTP 302) not followed"},
        {307, 0, 0, 0, "HTTP 307", HB_OUTCOME_FAILED, "redirect (HTTP 307) not followed"},
        {400, 0, 0, 0, "HTTP 400", HB_OUTCOME_FAILED, "HTTP 400"},
        {401, 0, 0, 0, "HTTP 401", HB_OUTCOME_FAILED, "HTTP 401"},
        {404, 0, 0, 0, "HTTP 404", HB_OUTCOME_FAILED, "HTTP 404"},
        {410, 0, 0, 0, "HTTP 410", HB_OUTCOME_FAILED, "HTTP 410"},
        {0, CURLE_COULDNT_CONNECT, 0, 1,
         "address 10.0.0.1 is loopback/private (refused; set "
         "HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1 to allow)",
         HB_OUTCOME_FAILED,
         "address 10.0.0.1 is loopback/private (refused; set "
         "HOOKBRIDGE_ALLOW_PRIVATE_NETWORKS=1 to allow)"},
        {0, 0, 0, 1, "http:// URLs are refused", HB_OUTCOME_FAILED, "http:// URLs are refused"},
        {600, 0, 0, 0, "HTTP 600", HB_OUTCOME_FAILED, "unexpected HTTP status 600"},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        hb_http_result_t res;
        char reason[256];
        memset(&res, 0, sizeof(res));
        res.http_status = cases[i].status;
        res.transport_error = cases[i].transport_error;
        res.timed_out = cases[i].timed_out;
        res.refused = cases[i].refused;
        res.retry_after_s = -1;
        snprintf(res.error, sizeof(res.error), "%s", cases[i].error);
        hb_outcome_t got = hb_deliver_classify(&res, reason, sizeof(reason));
        if (got != cases[i].want || strcmp(reason, cases[i].reason))
            fail_msg("case %zu (status %d): got %d \"%s\", want %d \"%s\"", i, cases[i].status,
                     (int)got, reason, (int)cases[i].want, cases[i].reason);
    }
}

/* ------------------------------------------------------------------ */
/* Rendering                                                           */

#define DID "0f8b6a1e-3c2d-8e4f-9a0b-1c2d3e4f5a6b"
#define NOW_MS 1764384600123LL /* 2025-11-29T02:50:00.123Z */

static json_t *event_new(const char *uuid, const char *type) {
    json_error_t jerr;
    json_t *ev = json_pack_ex(&jerr, 0, "{s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:[{s:s, s:s}]}",
                              "uuid", uuid, "published", "2025-11-29T02:49:59.000Z", "eventType",
                              type, "version", "0", "severity", "INFO", "actor", "id", "00u1",
                              "type", "User", "target", "id", "00u2", "type", "User");
    if (!ev)
        fail_msg("json_pack: %s", jerr.text);
    return ev;
}

/* The batch of two the rendering tests render. */
static void two_events(json_t *ev[2]) {
    ev[0] = event_new("11111111-1111-4111-8111-111111111111", "user.lifecycle.create");
    ev[1] = event_new("22222222-2222-4222-8222-222222222222", "user.session.start");
}

/* Rendering borrows the events: each still holds only our reference, which
 * this drops. */
static void release_events(json_t **ev, size_t n) {
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ev[i]->refcount, 1);
        json_decref(ev[i]);
    }
}

static json_t *parse(const hb_payload_t *p) {
    json_error_t jerr;
    json_t *doc = json_loadb(p->body, p->len, 0, &jerr);
    if (!doc)
        fail_msg("rendered payload is not JSON: %s", jerr.text);
    assert_int_equal(strlen(p->body), p->len);
    return doc;
}

static const char *str_at(const json_t *obj, const char *key) {
    const char *s = json_string_value(json_object_get(obj, key));
    if (!s)
        fail_msg("missing string field %s", key);
    return s;
}

static void test_render_okta(void **state) {
    (void)state;
    hb_sub_t *sub = hb_sub_new();
    json_t *ev[2];
    two_events(ev);
    hb_payload_t p;
    char err[256];
    for (size_t n = 1; n <= 2; n++) {
        assert_int_equal(hb_deliver_render_json(sub, ev, n, DID, "urn:hookbridge:test", NOW_MS, &p,
                                                err, sizeof(err)),
                         0);
        assert_string_equal(p.content_type, "application/json");
        /* keys in the contract's order, compact */
        const char *prefix = "{\"eventType\":\"com.okta.event_hook\",\"eventTypeVersion\":\"1.0\","
                             "\"cloudEventsVersion\":\"0.1\",\"source\":\"urn:hookbridge:test\","
                             "\"eventId\":\"" DID "\",\"eventTime\":\"2025-11-29T02:50:00.123Z\","
                             "\"contentType\":\"application/json\",\"data\":{\"events\":[";
        assert_memory_equal(p.body, prefix, strlen(prefix));
        json_t *doc = parse(&p);
        json_t *events = json_object_get(json_object_get(doc, "data"), "events");
        assert_true(json_is_array(events));
        assert_int_equal(json_array_size(events), n);
        for (size_t i = 0; i < n; i++)
            assert_true(json_equal(json_array_get(events, i), ev[i]));
        json_decref(doc);
        free(p.body);
    }
    release_events(ev, 2); /* render borrows the events */
    hb_sub_unref(sub);
}

static void test_render_cloudevents(void **state) {
    (void)state;
    hb_sub_t *sub = hb_sub_new();
    sub->format = HB_FORMAT_CLOUDEVENTS;
    json_t *ev[2];
    two_events(ev);
    hb_payload_t p;
    char err[256];

    assert_int_equal(hb_deliver_render_json(sub, ev, 1, DID, "urn:hookbridge:test", NOW_MS, &p, err,
                                            sizeof(err)),
                     0);
    assert_string_equal(p.content_type, "application/cloudevents+json");
    json_t *doc = parse(&p);
    assert_true(json_is_object(doc));
    assert_string_equal(str_at(doc, "specversion"), "1.0");
    assert_string_equal(str_at(doc, "id"), "11111111-1111-4111-8111-111111111111");
    assert_string_equal(str_at(doc, "source"), "urn:hookbridge:test");
    assert_string_equal(str_at(doc, "type"), "user.lifecycle.create");
    assert_string_equal(str_at(doc, "time"), "2025-11-29T02:49:59.000Z");
    assert_string_equal(str_at(doc, "datacontenttype"), "application/json");
    assert_true(json_equal(json_object_get(doc, "data"), ev[0]));
    json_decref(doc);
    free(p.body);

    assert_int_equal(hb_deliver_render_json(sub, ev, 2, DID, "urn:hookbridge:test", NOW_MS, &p, err,
                                            sizeof(err)),
                     0);
    assert_string_equal(p.content_type, "application/cloudevents-batch+json");
    doc = parse(&p);
    assert_true(json_is_array(doc));
    assert_int_equal(json_array_size(doc), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *ce = json_array_get(doc, i);
        assert_string_equal(str_at(ce, "specversion"), "1.0");
        assert_string_equal(str_at(ce, "id"), str_at(ev[i], "uuid"));
        assert_string_equal(str_at(ce, "type"), str_at(ev[i], "eventType"));
        assert_true(json_equal(json_object_get(ce, "data"), ev[i]));
    }
    json_decref(doc);
    free(p.body);

    /* one event to a subscription that batches: the batch format, of one */
    sub->batch_max = 5;
    assert_int_equal(hb_deliver_render_json(sub, ev, 1, DID, "urn:hookbridge:test", NOW_MS, &p, err,
                                            sizeof(err)),
                     0);
    assert_string_equal(p.content_type, "application/cloudevents-batch+json");
    doc = parse(&p);
    assert_true(json_is_array(doc));
    assert_int_equal(json_array_size(doc), 1);
    assert_string_equal(str_at(json_array_get(doc, 0), "id"), str_at(ev[0], "uuid"));
    json_decref(doc);
    free(p.body);
    sub->batch_max = 1;

    /* CloudEvents needs a type */
    json_object_del(ev[1], "eventType");
    assert_int_equal(
        hb_deliver_render_json(sub, &ev[1], 1, DID, "urn:x", NOW_MS, &p, err, sizeof(err)), -1);
    assert_string_equal(err, "event has no eventType");
    assert_null(p.body);
    assert_int_equal(hb_deliver_render_json(sub, ev, 2, DID, "urn:x", NOW_MS, &p, err, sizeof(err)),
                     -1);
    assert_null(p.body);

    release_events(ev, 2);
    hb_sub_unref(sub);
}

/* A batch's body split without its events (the retrier's 413 split) is,
 * byte for byte, what rendering each half's events to the batching
 * subscription would have made, in every format, one event of an array
 * format being an array of one. */
static void test_split_body(void **state) {
    (void)state;
    static const char *const formats_ct[3] = {
        "application/json", "application/cloudevents-batch+json", "application/json"};
    const hb_format_t formats[3] = {HB_FORMAT_OKTA, HB_FORMAT_CLOUDEVENTS, HB_FORMAT_EVENT};
    json_t *ev[5];
    char err[256];
    for (size_t i = 0; i < 5; i++) {
        char uuid[40], doc[512];
        json_error_t je;
        snprintf(uuid, sizeof(uuid), "%08zu-1111-4111-8111-111111111111", i);
        snprintf(doc, sizeof(doc),
                 "{\"uuid\":\"%s\",\"published\":\"2025-11-29T02:49:59.000Z\","
                 "\"eventType\":\"user.session.%s\",\"displayMessage\":\"caf\u00e9 \\\" "
                 "a/b\",\"client\":{\"geographicalContext\":{\"geolocation\":{\"lat\":52.517,"
                 "\"lon\":-0.1}}}}",
                 uuid, i % 2 ? "end" : "start");
        ev[i] = json_loads(doc, 0, &je);
        assert_non_null(ev[i]);
    }
    for (int f = 0; f < 3; f++) {
        hb_sub_t *sub = hb_sub_new();
        sub->format = formats[f];
        sub->batch_max = 5;
        for (size_t n = 3; n <= 5; n += 2) {
            size_t half = n / 2;
            const char *ids[2] = {"aaaaaaaa-0000-4000-8000-000000000001",
                                  "bbbbbbbb-0000-4000-8000-000000000002"};
            hb_payload_t whole, parts[2], want;
            char *types[2];
            assert_int_equal(hb_deliver_render_json(sub, ev, n, DID, "urn:x", NOW_MS - 5000, &whole,
                                                    err, sizeof(err)),
                             0);
            assert_string_equal(whole.content_type, formats_ct[f]);
            assert_int_equal(hb_deliver_split_body(whole.body, whole.len, whole.content_type, n,
                                                   half, ids, NOW_MS, parts, types, err,
                                                   sizeof(err)),
                             0);
            for (int k = 0; k < 2; k++) {
                size_t from = k ? half : 0, cnt = k ? n - half : half;
                assert_int_equal(hb_deliver_render_json(sub, ev + from, cnt, ids[k], "urn:x",
                                                        NOW_MS, &want, err, sizeof(err)),
                                 0);
                assert_string_equal(parts[k].content_type, want.content_type);
                assert_int_equal(parts[k].len, want.len);
                assert_memory_equal(parts[k].body, want.body, want.len);
                assert_string_equal(types[k], from % 2 ? "user.session.end" : "user.session.start");
                free(want.body);
                free(parts[k].body);
                free(types[k]);
            }
            /* not a batch of that many events: not split */
            assert_int_equal(hb_deliver_split_body(whole.body, whole.len, whole.content_type, n + 1,
                                                   half, ids, NOW_MS, parts, types, err,
                                                   sizeof(err)),
                             -1);
            assert_null(parts[0].body);
            free(whole.body);
        }
        hb_sub_unref(sub);
    }
    /* the ids of the parts are those the dispatcher's split gives them */
    for (size_t n = 1; n <= 5; n++) {
        hb_event_t *evs[5];
        const char *uuids[5];
        char a[HB_UUID_LEN + 1], b[HB_UUID_LEN + 1];
        char *ia, *ib;
        for (size_t i = 0; i < n; i++) {
            evs[i] = hb_ev_from_json(ev[i]);
            uuids[i] = hb_ev_uuid(evs[i]);
        }
        ia = hb_deliver_id("sub-1", evs, n, a);
        ib = hb_deliver_id_of("sub-1", uuids, n, b);
        assert_string_equal(a, b);
        assert_string_equal(ia, ib);
        free(ia);
        free(ib);
        for (size_t i = 0; i < n; i++)
            hb_ev_unref(evs[i]);
    }
    assert_int_equal(
        hb_deliver_split_body("{\"a\":1}", 7, NULL, 2, 1, (const char *const[]){"x", "y"}, NOW_MS,
                              (hb_payload_t[2]){{0}}, (char *[2]){0}, err, sizeof(err)),
        -1);
    release_events(ev, 5);
}

static void test_render_event(void **state) {
    (void)state;
    hb_sub_t *sub = hb_sub_new();
    sub->format = HB_FORMAT_EVENT;
    json_t *ev[2];
    two_events(ev);
    hb_payload_t p;
    char err[256];
    assert_int_equal(hb_deliver_render_json(sub, ev, 1, DID, "s", NOW_MS, &p, err, sizeof(err)), 0);
    assert_string_equal(p.content_type, "application/json");
    json_t *doc = parse(&p);
    assert_true(json_equal(doc, ev[0]));
    assert_null(strchr(p.body, '\n'));
    json_decref(doc);
    free(p.body);

    assert_int_equal(hb_deliver_render_json(sub, ev, 2, DID, "s", NOW_MS, &p, err, sizeof(err)), 0);
    doc = parse(&p);
    assert_true(json_is_array(doc));
    assert_int_equal(json_array_size(doc), 2);
    assert_true(json_equal(json_array_get(doc, 0), ev[0]));
    assert_true(json_equal(json_array_get(doc, 1), ev[1]));
    json_decref(doc);
    free(p.body);

    /* one event to a subscription that batches: an array of one */
    sub->batch_max = 5;
    assert_int_equal(hb_deliver_render_json(sub, ev, 1, DID, "s", NOW_MS, &p, err, sizeof(err)), 0);
    assert_string_equal(p.content_type, "application/json");
    doc = parse(&p);
    assert_true(json_is_array(doc));
    assert_int_equal(json_array_size(doc), 1);
    assert_true(json_equal(json_array_get(doc, 0), ev[0]));
    json_decref(doc);
    free(p.body);
    sub->batch_max = 1;

    assert_int_equal(hb_deliver_render_json(sub, ev, 0, DID, "s", NOW_MS, &p, err, sizeof(err)),
                     -1);
    json_t *notobj = json_string("x");
    assert_int_equal(
        hb_deliver_render_json(sub, &notobj, 1, DID, "s", NOW_MS, &p, err, sizeof(err)), -1);
    json_decref(notobj);
    release_events(ev, 2);
    hb_sub_unref(sub);
}

/* An event with every kind of member a field selection must handle. */
static json_t *event_full(const char *uuid, const char *type) {
    json_t *ev = event_new(uuid, type);
    json_error_t jerr;
    json_t *extra = json_pack_ex(
        &jerr, 0, "{s:s, s:{s:s, s:s}, s:{s:{s:s}}, s:{s:s}, s:{s:s}, s:{s:[s]}, s:{s:s}}",
        "displayMessage", "User login to Okta", "client", "ipAddress", "198.51.100.7", "userAgent",
        "curl", "debugContext", "debugData", "requestUri", "/login", "outcome", "result", "SUCCESS",
        "transaction", "id", "tx1", "request", "ipChain", "198.51.100.7", "securityContext", "isp",
        "example");
    if (!extra)
        fail_msg("json_pack: %s", jerr.text);
    assert_int_equal(json_object_update(ev, extra), 0);
    json_decref(extra);
    return ev;
}

/* The member names of obj, sorted, joined with ','. */
static void keys_of(const json_t *obj, char *out, size_t outsz) {
    const char *names[64];
    size_t n = 0, len = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        (void)val;
        assert_true(n < HB_ARRAY_SIZE(names));
        names[n++] = key;
    }
    for (size_t i = 1; i < n; i++) /* insertion sort: a handful of names */
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(out + len, outsz - len, "%s%s", i ? "," : "", names[i]);
}

static void set_fields(hb_sub_t *sub, const char *json) {
    char err[256];
    json_t *f = json_loads(json, 0, NULL);
    assert_non_null(f);
    if (hb_sub_set_fields(sub, f, err, sizeof(err)) != 0)
        fail_msg("hb_sub_set_fields(%s): %s", json, err);
    json_decref(f);
}

/* The body's exact bytes: what json_dumps(JSON_COMPACT |
 * JSON_REAL_PRECISION(15)) makes of the format's document (render writes
 * it directly, hb_json), for the okta and event formats, one event and a
 * batch, with and without a field selection, with text that needs escapes. */
static void test_render_bytes(void **state) {
    (void)state;
    static const hb_format_t formats[] = {HB_FORMAT_OKTA, HB_FORMAT_EVENT};
    hb_sub_t *sub = hb_sub_new();
    json_t *ev[2] = {event_full("11111111-1111-4111-8111-111111111111", "user.session.start"),
                     event_full("22222222-2222-4222-8222-222222222222", "user.session.end")};
    json_object_set_new(ev[0], "displayMessage", json_string("caf\xc3\xa9 \"q\" \\ /\n\t\x01"));
    json_object_set_new(
        ev[1], "outcome",
        json_pack("{s:f, s:i, s:b, s:n}", "score", 52.517, "count", -7, "ok", 1, "none"));
    for (int sel = 0; sel < 2; sel++) {
        if (sel)
            set_fields(sub, "[\"outcome\", \"displayMessage\"]");
        for (size_t f = 0; f < HB_ARRAY_SIZE(formats); f++) {
            sub->format = formats[f];
            for (size_t n = 1; n <= 2; n++) {
                hb_payload_t p;
                char err[256], now[40];
                assert_int_equal(hb_deliver_render_json(sub, ev, n, DID, "urn:x \"y\"", NOW_MS, &p,
                                                        err, sizeof(err)),
                                 0);
                json_t *list = json_array();
                for (size_t i = 0; i < n; i++) {
                    json_t *e = json_object();
                    const char *key;
                    json_t *val;
                    json_object_foreach(ev[i], key, val) {
                        if (!sel || !strcmp(key, "outcome") || !strcmp(key, "displayMessage") ||
                            !strcmp(key, "uuid") || !strcmp(key, "published") ||
                            !strcmp(key, "eventType"))
                            json_object_set(e, key, val);
                    }
                    json_array_append_new(list, e);
                }
                json_t *doc;
                hb_format_time(NOW_MS, now, sizeof(now));
                if (formats[f] == HB_FORMAT_OKTA)
                    doc = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:{s:o}}", "eventType",
                                    "com.okta.event_hook", "eventTypeVersion", "1.0",
                                    "cloudEventsVersion", "0.1", "source", "urn:x \"y\"", "eventId",
                                    DID, "eventTime", now, "contentType", "application/json",
                                    "data", "events", list);
                else if (n == 1) {
                    doc = json_incref(json_array_get(list, 0));
                    json_decref(list);
                } else
                    doc = list;
                char *want = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(15));
                assert_non_null(want);
                assert_int_equal(p.len, strlen(want));
                assert_string_equal(p.body, want);
                free(want);
                json_decref(doc);
                free(p.body);
            }
        }
    }
    json_decref(ev[0]);
    json_decref(ev[1]);
    hb_sub_unref(sub);
}

/* A subscriber that must not receive IP addresses drops client, debugContext,
 * request and securityContext: in every format, for every event of a batch,
 * only the chosen fields and uuid/published/eventType arrive. */
static void test_render_fields(void **state) {
    (void)state;
    static const hb_format_t formats[] = {HB_FORMAT_OKTA, HB_FORMAT_CLOUDEVENTS, HB_FORMAT_EVENT};
    const char *want = "actor,displayMessage,eventType,outcome,published,target,uuid";
    hb_sub_t *sub = hb_sub_new();
    json_t *ev[2] = {event_full("11111111-1111-4111-8111-111111111111", "user.session.start"),
                     event_full("22222222-2222-4222-8222-222222222222", "user.session.end")};
    char all[512];
    keys_of(ev[0], all, sizeof(all));
    set_fields(sub, "[\"actor\", \"target\", \"outcome\", \"displayMessage\"]");
    for (size_t f = 0; f < HB_ARRAY_SIZE(formats); f++) {
        sub->format = formats[f];
        for (size_t n = 1; n <= 2; n++) {
            hb_payload_t p;
            char err[256], keys[512];
            json_t *got[2] = {NULL, NULL};
            assert_int_equal(
                hb_deliver_render_json(sub, ev, n, DID, "urn:x", NOW_MS, &p, err, sizeof(err)), 0);
            assert_null(strstr(p.body, "198.51.100.7")); /* no IP address anywhere */
            assert_null(strstr(p.body, "debugData"));
            json_t *doc = parse(&p);
            for (size_t i = 0; i < n; i++) {
                if (formats[f] == HB_FORMAT_OKTA)
                    got[i] =
                        json_array_get(json_object_get(json_object_get(doc, "data"), "events"), i);
                else if (formats[f] == HB_FORMAT_CLOUDEVENTS)
                    got[i] = json_object_get(n == 1 ? doc : json_array_get(doc, i), "data");
                else
                    got[i] = n == 1 ? doc : json_array_get(doc, i);
                assert_non_null(got[i]);
                keys_of(got[i], keys, sizeof(keys));
                if (strcmp(keys, want))
                    fail_msg("format %d, batch of %zu, event %zu: fields %s, want %s",
                             (int)formats[f], n, i, keys, want);
                /* the members that are kept are the event's own */
                assert_true(
                    json_equal(json_object_get(got[i], "actor"), json_object_get(ev[i], "actor")));
                assert_string_equal(str_at(got[i], "uuid"), str_at(ev[i], "uuid"));
            }
            json_decref(doc);
            free(p.body);
        }
    }
    /* the events themselves are untouched and still borrowed */
    char after[512];
    keys_of(ev[0], after, sizeof(after));
    assert_string_equal(after, all);
    assert_int_equal(ev[0]->refcount, 1);
    assert_int_equal(ev[1]->refcount, 1);

    /* uuid, published and eventType cannot be selected away */
    set_fields(sub, "[\"severity\"]");
    sub->format = HB_FORMAT_EVENT;
    hb_payload_t p;
    char err[256], keys[512];
    assert_int_equal(hb_deliver_render_json(sub, ev, 1, DID, "s", NOW_MS, &p, err, sizeof(err)), 0);
    json_t *doc = parse(&p);
    keys_of(doc, keys, sizeof(keys));
    assert_string_equal(keys, "eventType,published,severity,uuid");
    json_decref(doc);
    free(p.body);

    json_decref(ev[0]);
    json_decref(ev[1]);
    hb_sub_unref(sub);
}

/* CloudEvents subject: the user the event is about, when target is delivered. */
static void test_render_cloudevents_subject(void **state) {
    (void)state;
    hb_sub_t *sub = hb_sub_new();
    sub->format = HB_FORMAT_CLOUDEVENTS;
    json_t *ev =
        event_new("11111111-1111-4111-8111-111111111111", "application.user_membership.add");
    hb_payload_t p;
    char err[256];
    /* the first target of type User, not the first target */
    json_t *targets =
        json_pack("[{s:s, s:s}, {s:s, s:s}, {s:s, s:s}]", "id", "0oa9", "type", "AppInstance", "id",
                  "00u7", "type", "User", "id", "00u8", "type", "User");
    assert_int_equal(json_object_set_new(ev, "target", targets), 0);
    assert_int_equal(hb_deliver_render_json(sub, &ev, 1, DID, "s", NOW_MS, &p, err, sizeof(err)),
                     0);
    json_t *doc = parse(&p);
    assert_string_equal(str_at(doc, "subject"), "00u7");
    json_decref(doc);
    free(p.body);

    /* target not delivered: no subject either (it would leak the user id) */
    set_fields(sub, "[\"actor\"]");
    assert_int_equal(hb_deliver_render_json(sub, &ev, 1, DID, "s", NOW_MS, &p, err, sizeof(err)),
                     0);
    doc = parse(&p);
    assert_null(json_object_get(doc, "subject"));
    json_decref(doc);
    free(p.body);

    /* no User among the targets: no subject */
    set_fields(sub, "[\"target\"]");
    json_object_del(json_array_get(targets, 1), "type");
    json_object_set_new(json_array_get(targets, 2), "type", json_string("Group"));
    assert_int_equal(hb_deliver_render_json(sub, &ev, 1, DID, "s", NOW_MS, &p, err, sizeof(err)),
                     0);
    doc = parse(&p);
    assert_null(json_object_get(doc, "subject"));
    assert_int_equal(json_array_size(json_object_get(json_object_get(doc, "data"), "target")), 3);
    json_decref(doc);
    free(p.body);

    json_decref(ev);
    hb_sub_unref(sub);
}

static void test_sub_set_fields_refuses(void **state) {
    (void)state;
    static const char *const bad[] = {"{}",       "[]", "[1]", "[\"\"]", "[\"actor\", null]",
                                      "\"actor\""};
    hb_sub_t *sub = hb_sub_new();
    char err[256];
    for (size_t i = 0; i < HB_ARRAY_SIZE(bad); i++) {
        json_t *f = json_loads(bad[i], JSON_DECODE_ANY, NULL);
        assert_non_null(f);
        if (hb_sub_set_fields(sub, f, err, sizeof(err)) != -1)
            fail_msg("fields %s accepted", bad[i]);
        json_decref(f);
    }
    assert_null(sub->fields);
    hb_sub_unref(sub);
}

/* Custom headers: table-driven, the same rules as hookbridge._check_headers. */
static void test_sub_add_header(void **state) {
    (void)state;
    static const struct {
        const char *name, *value;
        int ok;
        const char *why; /* substring of the error */
    } cases[] = {
        {"X-Team", "iam", 1, NULL},
        {"x-trace", "a b\tc", 1, NULL},
        {"X-Weird!#$%&'*+.^_`|~", "v", 1, NULL},
        {"X-Tilde", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}", 1, NULL},
        {"X-TEAM", "again", 0, "given twice"}, /* after X-Team: case-insensitive */
        {"Content-Type", "text/plain", 0, "reserved"},
        {"content-length", "1", 0, "reserved"},
        {"HOST", "evil.example", 0, "reserved"},
        {"User-Agent", "me", 0, "reserved"},
        {"Transfer-Encoding", "chunked", 0, "reserved"},
        {"Connection", "close", 0, "reserved"},
        {"Expect", "100-continue", 0, "reserved"},
        {"webhook-id", "x", 0, "reserved"},
        {"Webhook-Signature", "v1,x", 0, "reserved"},
        {"webhook-anything", "x", 0, "reserved"},
        {"X-Okta-Verification-Challenge", "x", 0, "reserved"},
        {"Authorization", "Bearer x", 0, "reserved"},
        {"Cookie", "a=b", 0, "reserved"},
        {"X-Api-Key", "x", 0, "auth header"}, /* the subscription's auth_header */
        {"x-api-key", "x", 0, "auth header"},
        {"Bad Name", "x", 0, "token"},
        {"X-Colon:", "x", 0, "token"},
        {"X-Ünicode", "x", 0, "token"},
        {"", "x", 0, "empty"},
        {"X-Crlf", "a\r\nX-Evil: 1", 0, "printable ASCII"},
        {"X-Lf", "a\nb", 0, "printable ASCII"},
        {"X-Bell", "a\ab", 0, "printable ASCII"},
        {"X-Del", "a\x7f", 0, "printable ASCII"},
        {"X-Utf8", "Z\xc3\xbcrich", 0, "printable ASCII"},
        {"X-Empty", "", 0, "empty"},
        {"X-Lead", " a", 0, "whitespace"},
        {"X-Trail", "a\t", 0, "whitespace"},
    };
    char long_name[300];
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    hb_sub_t *sub = hb_sub_new();
    char err[256];
    int added = 0;
    sub->auth_header = strdup("X-Api-Key");
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        err[0] = '\0';
        int rc = hb_sub_add_header(sub, cases[i].name, cases[i].value, err, sizeof(err));
        if ((rc == 0) != cases[i].ok)
            fail_msg("case %zu (%s): got %d \"%s\"", i, cases[i].name, rc, err);
        if (cases[i].ok) {
            added++;
        } else {
            if (!strstr(err, cases[i].why))
                fail_msg("case %zu (%s): error \"%s\" lacks \"%s\"", i, cases[i].name, err,
                         cases[i].why);
            /* the value is never echoed */
            if (strlen(cases[i].value) > 2 && strstr(err, cases[i].value))
                fail_msg("case %zu: error shows the value: %s", i, err);
        }
        assert_int_equal(sub->headers_cnt, added);
    }
    assert_int_equal(hb_sub_add_header(sub, long_name, "x", err, sizeof(err)), -1);
    assert_int_equal(hb_sub_add_header(sub, "X-Null", NULL, err, sizeof(err)), -1);
    assert_string_equal(sub->headers[0], "X-Team: iam");
    assert_string_equal(sub->headers[1], "x-trace: a b\tc");
    hb_sub_unref(sub);
}

/* ------------------------------------------------------------------ */
/* A receiver that records the last request                            */

typedef struct rx_s {
    struct MHD_Daemon *d;
    uint16_t port;
    pthread_mutex_t mu;
    int requests;
    char method[8];
    char content_type[128], user_agent[64], id[64], ts[32], sig[512], auth[128], expect[32];
    char challenge[128], accept[64];
    char team[64], trace[64];
    int has_expect;
    char *body;
    size_t body_len;
} rx_t;

typedef struct rx_conn_s {
    char *body;
    size_t len;
} rx_conn_t;

/* Coordinates keep the digits they were sent with. */
static void test_render_real_precision(void **state) {
    (void)state;
    hb_sub_t *sub = hb_sub_new();
    json_t *ev = event_new("33333333-3333-4333-8333-333333333333", "user.session.start");
    hb_payload_t p;
    char err[256];
    sub->format = HB_FORMAT_EVENT;
    json_object_set_new(ev, "lat", json_real(52.517));
    assert_int_equal(hb_deliver_render_json(sub, &ev, 1, DID, "s", NOW_MS, &p, err, sizeof(err)),
                     0);
    assert_non_null(strstr(p.body, "\"lat\":52.517"));
    assert_null(strstr(p.body, "52.51700"));
    free(p.body);
    json_decref(ev);
    hb_sub_unref(sub);
}

static void rx_copy(struct MHD_Connection *c, const char *name, char *out, size_t outsz) {
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
    snprintf(out, outsz, "%s", v ? v : "");
}

static enum MHD_Result rx_reply(struct MHD_Connection *c, unsigned status, const char *body) {
    return test_server_reply(c, status, body, strlen(body), NULL, NULL);
}

static enum MHD_Result rx_handle(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
    rx_t *rx = cls;
    (void)version;
    if (*con_cls == NULL) {
        *con_cls = calloc(1, sizeof(rx_conn_t));
        return *con_cls ? MHD_YES : MHD_NO;
    }
    rx_conn_t *cc = *con_cls;
    if (*upload_data_size) {
        char *nb = realloc(cc->body, cc->len + *upload_data_size + 1);
        if (!nb)
            return MHD_NO;
        cc->body = nb;
        memcpy(cc->body + cc->len, upload_data, *upload_data_size);
        cc->len += *upload_data_size;
        cc->body[cc->len] = '\0';
        *upload_data_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&rx->mu);
    rx->requests++;
    snprintf(rx->method, sizeof(rx->method), "%s", method);
    rx_copy(c, "Content-Type", rx->content_type, sizeof(rx->content_type));
    rx_copy(c, "User-Agent", rx->user_agent, sizeof(rx->user_agent));
    rx_copy(c, "webhook-id", rx->id, sizeof(rx->id));
    rx_copy(c, "webhook-timestamp", rx->ts, sizeof(rx->ts));
    rx_copy(c, "webhook-signature", rx->sig, sizeof(rx->sig));
    rx_copy(c, "Authorization", rx->auth, sizeof(rx->auth));
    rx_copy(c, "X-Okta-Verification-Challenge", rx->challenge, sizeof(rx->challenge));
    rx_copy(c, "Accept", rx->accept, sizeof(rx->accept));
    rx_copy(c, "X-Team", rx->team, sizeof(rx->team));
    rx_copy(c, "X-Trace", rx->trace, sizeof(rx->trace));
    rx->has_expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Expect") != NULL;
    free(rx->body);
    rx->body = cc->body;
    rx->body_len = cc->len;
    cc->body = NULL;
    pthread_mutex_unlock(&rx->mu);

    char reply[256];
    if (!strcmp(url, "/verify")) {
        snprintf(reply, sizeof(reply), "{\"verification\":\"%s\"}", rx->challenge);
        return rx_reply(c, 200, reply);
    }
    if (!strcmp(url, "/verify-wrong"))
        return rx_reply(c, 200, "{\"verification\":\"something else\"}");
    if (!strcmp(url, "/verify-html"))
        return rx_reply(c, 200, "<html>hello</html>");
    if (!strcmp(url, "/gone"))
        return rx_reply(c, 410, "gone");
    if (!strcmp(url, "/slow")) {
        struct timespec ts = {1, 0}; /* longer than the timeouts the tests set */
        nanosleep(&ts, NULL);
    }
    return rx_reply(c, 204, "");
}

static void rx_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)c;
    (void)toe;
    rx_conn_t *cc = *con_cls;
    if (cc) {
        free(cc->body);
        free(cc);
        *con_cls = NULL;
    }
}

static rx_t *rx_start(void) {
    rx_t *rx = calloc(1, sizeof(*rx));
    assert_non_null(rx);
    pthread_mutex_init(&rx->mu, NULL);
    const struct MHD_OptionItem notify[] = {
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)rx_completed, rx},
        {MHD_OPTION_END, 0, NULL},
    };
    rx->d = test_server_start(rx_handle, rx, notify, &rx->port);
    return rx;
}

static void rx_stop(rx_t *rx) {
    MHD_stop_daemon(rx->d);
    pthread_mutex_destroy(&rx->mu);
    free(rx->body);
    free(rx);
}

typedef struct got_s {
    int done;
    hb_http_result_t res;
    char body[512];
    char sent[4096]; /* the payload deliver_one sent */
} got_t;

static void on_done(const hb_http_result_t *res, void *opaque) {
    got_t *g = opaque;
    g->done++;
    g->res = *res;
    snprintf(g->body, sizeof(g->body), "%.*s", (int)res->body_len, res->body);
    g->res.body = g->body;
}

static void run_until(hb_http_t *h, const got_t *g) {
    int64_t until = hb_mono_ms() + 10000;
    while (!g->done && hb_mono_ms() < until)
        (void)hb_http_run(h, 100, -1);
    assert_int_equal(g->done, 1);
}

/* 4 in flight, 2 per host, plain HTTP and loopback allowed. */
static hb_http_t *http_new(void) {
    return test_http_new(4, 2, 1, 1);
}

static hb_sub_t *sub_new(const rx_t *rx, const char *path) {
    char url[128];
    char err[256];
    hb_sub_t *sub = hb_sub_new();
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", (unsigned)rx->port, path);
    sub->url = strdup(url);
    snprintf(sub->id, sizeof(sub->id), "%s", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee");
    assert_int_equal(hb_secret_parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &sub->secrets[0],
                                     err, sizeof(err)),
                     0);
    sub->secrets_cnt = 1;
    sub->active = sub->verified = 1;
    return sub;
}

/* ------------------------------------------------------------------ */
/* Sending                                                             */

static void render_one(const hb_sub_t *sub, hb_payload_t *p) {
    char err[256];
    json_t *ev = event_new("11111111-1111-4111-8111-111111111111", "user.lifecycle.create");
    assert_int_equal(hb_deliver_render_json(sub, &ev, 1, DID, "urn:hookbridge:test", hb_wall_ms(),
                                            p, err, sizeof(err)),
                     0);
    json_decref(ev);
}

/* Renders the sample event for sub, sends it (default_timeout_ms unless the
 * subscription sets its own) and waits for the answer in *g. */
static void deliver_one(hb_http_t *h, const hb_sub_t *sub, long long default_timeout_ms, got_t *g) {
    hb_payload_t p;
    memset(g, 0, sizeof(*g));
    render_one(sub, &p);
    assert_true(p.len < sizeof(g->sent));
    memcpy(g->sent, p.body, p.len + 1);
    hb_deliver_send(h, sub, DID, &p, default_timeout_ms, 1024, on_done, g);
    assert_null(p.body);          /* ownership taken */
    assert_int_equal(g->done, 0); /* completes in hb_http_run, never inside send */
    run_until(h, g);
}

/* hb_sign_verify of the last request rx received, with secret, now. */
static int rx_verify(const rx_t *rx, const hb_secret_t *secret, char *err, size_t err_size) {
    return hb_sign_verify(secret, rx->id, rx->ts, rx->body, rx->body_len, rx->sig,
                          hb_wall_ms() / 1000, 300, err, err_size);
}

static void test_send_signed_request(void **state) {
    (void)state;
    rx_t *rx = rx_start();
    hb_http_t *h = http_new();
    hb_sub_t *sub = sub_new(rx, "/hook");
    sub->auth_header = strdup("Authorization");
    sub->auth_value = strdup("Bearer s3cr3t");
    got_t g;
    char err[256];
    deliver_one(h, sub, 5000, &g);
    assert_int_equal(g.res.http_status, 204);
    char reason[256];
    assert_int_equal(hb_deliver_classify(&g.res, reason, sizeof(reason)), HB_OUTCOME_DELIVERED);

    pthread_mutex_lock(&rx->mu);
    assert_int_equal(rx->requests, 1);
    assert_string_equal(rx->method, "POST");
    assert_string_equal(rx->content_type, "application/json");
    assert_string_equal(rx->user_agent, "hookbridge/" HB_VERSION);
    assert_string_equal(rx->id, DID);
    assert_string_equal(rx->auth, "Bearer s3cr3t");
    assert_int_equal(rx->has_expect, 0);
    assert_int_equal(rx->body_len, strlen(g.sent));
    assert_memory_equal(rx->body, g.sent, rx->body_len);
    long long ts = strtoll(rx->ts, NULL, 10);
    assert_true(llabs(ts - hb_wall_ms() / 1000) <= 5);
    assert_memory_equal(rx->sig, "v1,", 3);
    assert_null(strchr(rx->sig, ' ')); /* one secret, one signature */
    if (rx_verify(rx, &sub->secrets[0], err, sizeof(err)) != 0)
        fail_msg("signature does not verify: %s", err);
    /* tampered body fails */
    assert_int_equal(hb_sign_verify(&sub->secrets[0], rx->id, rx->ts, "{}", 2, rx->sig,
                                    hb_wall_ms() / 1000, 300, err, sizeof(err)),
                     -1);
    pthread_mutex_unlock(&rx->mu);

    hb_sub_unref(sub);
    hb_http_free(h);
    rx_stop(rx);
}

static void test_send_during_rotation(void **state) {
    (void)state;
    rx_t *rx = rx_start();
    hb_http_t *h = http_new();
    hb_sub_t *sub = sub_new(rx, "/gone");
    char err[256];
    /* the old secret keeps signing during its grace period */
    assert_int_equal(hb_secret_parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", &sub->secrets[1],
                                     err, sizeof(err)),
                     0);
    sub->secrets[1].expires_ms = hb_wall_ms() + 3600 * 1000;
    sub->secrets_cnt = 2;
    sub->format = HB_FORMAT_CLOUDEVENTS;
    got_t g;
    deliver_one(h, sub, 5000, &g);
    char reason[256];
    assert_int_equal(g.res.http_status, 410);
    assert_int_equal(hb_deliver_classify(&g.res, reason, sizeof(reason)), HB_OUTCOME_FAILED);
    assert_string_equal(reason, "HTTP 410");

    pthread_mutex_lock(&rx->mu);
    assert_string_equal(rx->content_type, "application/cloudevents+json");
    assert_non_null(strchr(rx->sig, ' ')); /* two signatures */
    assert_string_equal(rx->auth, "");     /* no auth header configured */
    for (int i = 0; i < 2; i++)
        if (rx_verify(rx, &sub->secrets[i], err, sizeof(err)) != 0)
            fail_msg("secret %d does not verify: %s", i, err);
    pthread_mutex_unlock(&rx->mu);

    /* once the old secret expired, only the current one signs */
    sub->secrets[1].expires_ms = hb_wall_ms() - 1;
    deliver_one(h, sub, 5000, &g);
    pthread_mutex_lock(&rx->mu);
    assert_null(strchr(rx->sig, ' '));
    assert_int_equal(rx_verify(rx, &sub->secrets[0], err, sizeof(err)), 0);
    assert_int_equal(rx_verify(rx, &sub->secrets[1], err, sizeof(err)), -1);
    pthread_mutex_unlock(&rx->mu);

    hb_sub_unref(sub);
    hb_http_free(h);
    rx_stop(rx);
}

static void test_send_refusals(void **state) {
    (void)state;
    rx_t *rx = rx_start();
    hb_http_t *h = http_new();
    hb_sub_t *sub = sub_new(rx, "/hook");
    got_t g;
    char reason[256];

    /* no unexpired secret: nothing is sent, the delivery fails with a reason */
    sub->secrets[0].expires_ms = 1;
    deliver_one(h, sub, 5000, &g);
    assert_int_equal(g.res.refused, 1);
    assert_int_equal(hb_deliver_classify(&g.res, reason, sizeof(reason)), HB_OUTCOME_FAILED);
    assert_non_null(strstr(reason, "cannot sign"));
    sub->secrets[0].expires_ms = 0;

    /* a header value that would smuggle another header */
    sub->auth_header = strdup("Authorization");
    sub->auth_value = strdup("x\r\nX-Evil: 1");
    deliver_one(h, sub, 5000, &g);
    assert_int_equal(g.res.refused, 1);
    assert_null(strstr(g.res.error, "X-Evil")); /* the value never shows */

    pthread_mutex_lock(&rx->mu);
    assert_int_equal(rx->requests, 0);
    pthread_mutex_unlock(&rx->mu);
    hb_sub_unref(sub);
    hb_http_free(h);
    rx_stop(rx);
}

/* Custom headers arrive on the POST next to ours, which they cannot replace,
 * and on the verification GET. */
static void test_send_custom_headers(void **state) {
    (void)state;
    rx_t *rx = rx_start();
    hb_http_t *h = http_new();
    hb_sub_t *sub = sub_new(rx, "/verify");
    got_t g;
    char err[256];
    sub->auth_header = strdup("Authorization");
    sub->auth_value = strdup("Bearer s3cr3t");
    assert_int_equal(hb_sub_add_header(sub, "X-Team", "iam", err, sizeof(err)), 0);
    assert_int_equal(hb_sub_add_header(sub, "x-trace", "route 7", err, sizeof(err)), 0);
    assert_int_equal(hb_sub_add_header(sub, "Content-Type", "text/plain", err, sizeof(err)), -1);

    deliver_one(h, sub, 5000, &g);
    assert_int_equal(g.res.http_status, 200);
    pthread_mutex_lock(&rx->mu);
    assert_string_equal(rx->method, "POST");
    assert_string_equal(rx->team, "iam");
    assert_string_equal(rx->trace, "route 7");
    assert_string_equal(rx->content_type, "application/json");
    assert_string_equal(rx->auth, "Bearer s3cr3t");
    assert_string_equal(rx->id, DID);
    assert_int_equal(rx->has_expect, 0);
    if (rx_verify(rx, &sub->secrets[0], err, sizeof(err)) != 0)
        fail_msg("signature does not verify: %s", err);
    memset(rx->team, 0, sizeof(rx->team));
    memset(rx->trace, 0, sizeof(rx->trace));
    pthread_mutex_unlock(&rx->mu);

    memset(&g, 0, sizeof(g));
    hb_deliver_verify_send(h, sub, "Y2hhbGxlbmdl", 5000, on_done, &g);
    run_until(h, &g);
    assert_int_equal(hb_deliver_check_challenge(&g.res, "Y2hhbGxlbmdl", err, sizeof(err)), 0);
    pthread_mutex_lock(&rx->mu);
    assert_string_equal(rx->method, "GET");
    assert_string_equal(rx->team, "iam");
    assert_string_equal(rx->trace, "route 7");
    assert_string_equal(rx->challenge, "Y2hhbGxlbmdl");
    pthread_mutex_unlock(&rx->mu);

    hb_sub_unref(sub);
    hb_http_free(h);
    rx_stop(rx);
}

/* The subscription's timeout_ms bounds each attempt; without one, the
 * service default applies. */
static void test_send_timeout(void **state) {
    (void)state;
    static const struct {
        long long sub_ms, default_ms;
        const char *reason;
    } cases[] = {
        {250, 5000, "timeout after 250 ms"},
        {0, 300, "timeout after 300 ms"},
    };
    rx_t *rx = rx_start();
    hb_http_t *h = http_new();
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        hb_sub_t *sub = sub_new(rx, "/slow");
        got_t g;
        char reason[256];
        sub->timeout_ms = cases[i].sub_ms;
        deliver_one(h, sub, cases[i].default_ms, &g);
        assert_int_equal(g.res.timed_out, 1);
        assert_int_equal(hb_deliver_classify(&g.res, reason, sizeof(reason)), HB_OUTCOME_RETRY);
        assert_string_equal(reason, cases[i].reason);
        /* it gave up at the timeout, not when the endpoint answered (1 s) */
        assert_true(g.res.duration_ms < 900);
        hb_sub_unref(sub);
    }
    hb_http_free(h);
    rx_stop(rx);
}

/* ------------------------------------------------------------------ */
/* Verification                                                        */

static void verify_against(const char *path, int want_rc, const char *want_reason) {
    rx_t *rx = rx_start();
    hb_http_t *h = http_new();
    hb_sub_t *sub = sub_new(rx, path);
    sub->auth_header = strdup("Authorization");
    sub->auth_value = strdup("Basic abc");
    got_t g;
    char reason[256];
    const char *challenge = "Zm9vYmFyYmF6cXV4LWNoYWxsZW5nZQ";
    memset(&g, 0, sizeof(g));
    hb_deliver_verify_send(h, sub, challenge, 5000, on_done, &g);
    run_until(h, &g);
    pthread_mutex_lock(&rx->mu);
    assert_string_equal(rx->method, "GET");
    assert_string_equal(rx->challenge, challenge);
    assert_string_equal(rx->accept, "application/json");
    assert_string_equal(rx->auth, "Basic abc");
    assert_int_equal(rx->body_len, 0);
    pthread_mutex_unlock(&rx->mu);
    assert_int_equal(hb_deliver_check_challenge(&g.res, challenge, reason, sizeof(reason)),
                     want_rc);
    assert_string_equal(reason, want_reason);
    hb_sub_unref(sub);
    hb_http_free(h);
    rx_stop(rx);
}

static void test_verify_roundtrip(void **state) {
    (void)state;
    verify_against("/verify", 0, "");
    verify_against("/verify-wrong", -1, "wrong echo");
    verify_against("/verify-html", -1, "response is not JSON");
    verify_against("/gone", -1, "HTTP 410");
}

static void test_check_challenge(void **state) {
    (void)state;
    static const struct {
        int status, transport_error, timed_out, refused;
        const char *error;
        const char *body;
        int want;
        const char *reason;
    } cases[] = {
        {200, 0, 0, 0, "", "{\"verification\":\"abc\"}", 0, ""},
        {200, 0, 0, 0, "", "{\"verification\":\"abc\",\"extra\":1}", 0, ""},
        {200, 0, 0, 0, "", "{\"verification\":\"abd\"}", -1, "wrong echo"},
        {200, 0, 0, 0, "", "{\"verification\":1}", -1, "wrong echo"},
        {200, 0, 0, 0, "", "{}", -1, "wrong echo"},
        {200, 0, 0, 0, "", "[\"abc\"]", -1, "response is not JSON"},
        {200, 0, 0, 0, "", "abc", -1, "response is not JSON"},
        {200, 0, 0, 0, "", "", -1, "response is not JSON"},
        {204, 0, 0, 0, "", "", -1, "HTTP 204"},
        {200, 0, 0, 0, "", "\xEF\xBB\xBF{\"verification\":\"abc\"}", 0, ""},
        {200, 0, 0, 0, "", "\xEF\xBB\xBF", -1, "response is not JSON"},
        {200, 0, 0, 0, "", "\xEF\xBB{\"verification\":\"abc\"}", -1, "response is not JSON"},
        {301, 0, 0, 0, "", "", -1, "redirect (HTTP 301) not followed"},
        {308, 0, 0, 0, "", "{\"verification\":\"abc\"}", -1, "redirect (HTTP 308) not followed"},
        {404, 0, 0, 0, "HTTP 404", "{\"verification\":\"abc\"}", -1, "HTTP 404"},
        {0, CURLE_OPERATION_TIMEDOUT, 1, 0, "timeout after 5000 ms", "", -1,
         "timeout after 5000 ms"},
        {0, CURLE_COULDNT_CONNECT, 0, 0, "connection refused", "", -1, "connection refused"},
        {0, 0, 0, 1, "http:// URLs are refused", "", -1, "http:// URLs are refused"},
    };
    for (size_t i = 0; i < HB_ARRAY_SIZE(cases); i++) {
        hb_http_result_t res;
        char reason[256];
        memset(&res, 0, sizeof(res));
        res.http_status = cases[i].status;
        res.transport_error = cases[i].transport_error;
        res.timed_out = cases[i].timed_out;
        res.refused = cases[i].refused;
        snprintf(res.error, sizeof(res.error), "%s", cases[i].error);
        res.body = cases[i].body;
        res.body_len = strlen(cases[i].body);
        int got = hb_deliver_check_challenge(&res, "abc", reason, sizeof(reason));
        if (got != cases[i].want || strcmp(reason, cases[i].reason))
            fail_msg("case %zu: got %d \"%s\", want %d \"%s\"", i, got, reason, cases[i].want,
                     cases[i].reason);
    }
    {
        /* an answer longer than what is kept of it (16 KiB): its start, the
         * echo and padding, does not parse, and the reason says why */
        static char big[16384 + 1];
        hb_http_result_t res;
        char reason[256];
        memset(&res, 0, sizeof(res));
        memset(big, ' ', sizeof(big) - 1);
        memcpy(big, "{\"verification\":\"abc\",\"pad\":\"", 29);
        res.http_status = 200;
        res.body = big;
        res.body_len = sizeof(big) - 1;
        assert_int_equal(hb_deliver_check_challenge(&res, "abc", reason, sizeof(reason)), -1);
        assert_string_equal(reason, "response is not JSON within its first 16384 bytes (answer "
                                    "only the JSON object)");
    }
}

/* A random member value: strings from an alphabet rich in escapes, a NUL
 * and UTF-8, numbers of every kind, nested containers. */
static json_t *odd_value(unsigned *seed, int depth) {
    static const char *const strs[] = {"", "User", "x\"y", "caf\xc3\xa9", "a\\b\n\x01", "00u9"};
    switch (rand_r(seed) % (depth > 2 ? 5 : 7)) {
    case 0: return json_null();
    case 1: return json_boolean(rand_r(seed) & 1);
    case 2: return json_integer((json_int_t)rand_r(seed) * rand_r(seed) - rand_r(seed));
    case 3: return json_real((double)rand_r(seed) / 7.0 * (rand_r(seed) % 2 ? 1e300 : 1e-7));
    case 4:
        if (rand_r(seed) % 5 == 0)
            return json_stringn("n\0ul", 4);
        return json_string(strs[rand_r(seed) % 6]);
    case 5: {
        json_t *a = json_array();
        for (int i = rand_r(seed) % 4; i > 0; i--)
            json_array_append_new(a, odd_value(seed, depth + 1));
        return a;
    }
    default: {
        static const char *const keys[] = {"id", "type", "k\"", "\xc3\xa9", "x"};
        json_t *o = json_object();
        for (int i = rand_r(seed) % 4; i > 0; i--)
            json_object_set_new(o, keys[rand_r(seed) % 5], odd_value(seed, depth + 1));
        return o;
    }
    }
}

/* A random event: the members a payload reads (uuid, eventType, published,
 * target) present or not, strings or not, empty or not; targets with and
 * without a User; members whose keys need escapes. */
static json_t *odd_event(unsigned *seed) {
    static const char *const names[] = {"uuid",   "eventType", "published", "target",    "actor",
                                        "client", "outcome",   "a\"b",      "\xc3\xa9t", "x\ny"};
    json_t *ev = json_object();
    for (int i = rand_r(seed) % 9; i >= 0; i--) {
        /* (no key with a NUL: an event's members are Avro field names, and
         * the renderer of before dropped what follows a NUL in CloudEvents
         * with a field selection only) */
        int k = rand_r(seed) % 10;
        json_t *v;
        if (k <= 2 && rand_r(seed) % 3)
            v = json_string(rand_r(seed) % 4 ? "4b4d2c1e-1111-4222-8333-944455556666" : "");
        else if (k == 3 && rand_r(seed) % 2) {
            v = json_pack("[{s:s,s:s},{s:s,s:s}]", "type", rand_r(seed) % 2 ? "User" : "App", "id",
                          rand_r(seed) % 3 ? "00u1" : "", "type", "User", "id", "00u2");
        } else
            v = odd_value(seed, 0);
        json_object_set_new(ev, names[k], v);
    }
    return ev;
}

/* hb_deliver_render (events as text, copied) and the renderer of before
 * (../render_ref.h: jansson events, documents) make the same bytes, content
 * type and errors: every format, alone and in batches (of one too), with field
 * selections (also of members that are not there, and of target), on random
 * events and with delivery ids and sources that are not UTF-8. */
static void test_render_matches_json_renderer(void **state) {
    (void)state;
    static const hb_format_t formats[] = {HB_FORMAT_OKTA, HB_FORMAT_CLOUDEVENTS, HB_FORMAT_EVENT};
    static const char *const selections[] = {NULL, "[\"target\",\"outcome\"]", "[\"actor\"]",
                                             "[\"a\\\"b\",\"x\\ny\",\"uuid\"]", "[\"nothing\"]"};
    static const char *const ids[] = {DID, "a-delivery-id-longer-than-any-uuid-0123456789-abcdef",
                                      "bad\xff"};
    static const char *const sources[] = {"urn:x \"y\"", "", "s\xc3"};
    unsigned seed = 777;
    int rendered = 0, failed = 0;
    for (int round = 0; round < 1500; round++) {
        hb_sub_t *sub = hb_sub_new();
        json_t *ev[3];
        size_t n = 1 + (size_t)rand_r(&seed) % 3;
        const char *sel = selections[rand_r(&seed) % 5];
        const char *id = ids[rand_r(&seed) % 10 == 0 ? 1 + rand_r(&seed) % 2 : 0];
        const char *source = sources[rand_r(&seed) % 10 == 0 ? 1 + rand_r(&seed) % 2 : 0];
        for (size_t i = 0; i < n; i++)
            ev[i] = odd_event(&seed);
        if (sel)
            set_fields(sub, sel);
        sub->batch_max = round % 4 ? 1 : 5; /* one event to a batching subscription too */
        for (size_t f = 0; f < HB_ARRAY_SIZE(formats); f++) {
            hb_payload_t a, b;
            char err[256] = "", rerr[256] = "";
            int ra, rb;
            sub->format = formats[f];
            ra = hb_deliver_render_json(sub, ev, n, id, source, NOW_MS, &a, err, sizeof(err));
            rb = ref_render(sub, ev, n, id, source, NOW_MS, &b, rerr, sizeof(rerr));
            assert_int_equal(ra, rb);
            assert_string_equal(err, rerr);
            if (ra == 0) {
                assert_string_equal(a.content_type, b.content_type);
                if (a.len != b.len || memcmp(a.body, b.body, a.len))
                    fail_msg("format %d:\n text: %s\n json: %s", (int)formats[f], a.body, b.body);
                free(a.body);
                free(b.body);
                rendered++;
            } else {
                failed++;
            }
        }
        for (size_t i = 0; i < n; i++)
            json_decref(ev[i]);
        hb_sub_unref(sub);
    }
    assert_true(rendered > 1000 && failed > 100); /* both sides of the comparison were seen */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_render_okta),
        cmocka_unit_test(test_render_cloudevents),
        cmocka_unit_test(test_render_event),
        cmocka_unit_test(test_render_real_precision),
        cmocka_unit_test(test_render_fields),
        cmocka_unit_test(test_render_bytes),
        cmocka_unit_test(test_render_cloudevents_subject),
        cmocka_unit_test(test_render_matches_json_renderer),
        cmocka_unit_test(test_sub_set_fields_refuses),
        cmocka_unit_test(test_sub_add_header),
        cmocka_unit_test(test_send_signed_request),
        cmocka_unit_test(test_send_during_rotation),
        cmocka_unit_test(test_send_refusals),
        cmocka_unit_test(test_send_custom_headers),
        cmocka_unit_test(test_send_timeout),
        cmocka_unit_test(test_verify_roundtrip),
        cmocka_unit_test(test_split_body),
        cmocka_unit_test(test_check_challenge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
