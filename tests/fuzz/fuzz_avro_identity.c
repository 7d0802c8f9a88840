/*
 * Fuzz target: an events-topic message, as the dispatcher takes it.
 *
 * The bytes go to hb_codec_decode with the IdentityEvent reader (and an older
 * writer schema registered, so schema resolution is fuzzed too). A rejected
 * message must come with a reason. An accepted one goes where the dispatcher
 * sends it: the accessors (type, uuid, key) and hb_deliver_render in every
 * payload format, alone and in a batch. And it must survive a round trip:
 * the JSON a decode yields encodes again, and decodes to the same JSON.
 * Every input is also decoded the general way (hb_codec_set_generic_only),
 * which must give the same answer as decode's direct walk: the same error,
 * or the same JSON, members in the same order. And as text (the dispatcher's
 * hb_codec_decode_doc): the same answer again, the text being json_dumps'
 * of that JSON, and every payload rendered from the text event (copying
 * spans) byte for byte the payload the JSON renderer of before
 * (tests/render_ref.h) makes of the JSON.
 */
#include <string.h>

#include "fuzz.h"
#include "hb_codec.h"
#include "hb_deliver.h"
#include "hb_event.h"
#include "hb_schemas.h"
#include "hb_sub.h"
#include "../render_ref.h"

static hb_codec_t *codec;
static hb_codec_t *generic; /* the same codec, never the direct walk */
static hb_sub_t *sub;
static hb_jdoc_t doc; /* reused, as the decoder does */

/* At exit, so LeakSanitizer sees only what an input leaked. */
static void cleanup(void) {
    hb_codec_free(codec);
    codec = NULL;
    hb_codec_free(generic);
    generic = NULL;
    hb_sub_unref(sub);
    sub = NULL;
    hb_jdoc_free(&doc);
}

static void init(void) {
    char err[256];
    char *v0 = hb_fuzz_schema_without(hb_schema_identity_event, hb_fuzz_identity_v0_drop,
                                      HB_ARRAY_SIZE(hb_fuzz_identity_v0_drop));
    codec = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    if (!codec)
        hb_fuzz_fail("IdentityEvent codec", err);
    if (hb_codec_add_writer(codec, v0, err, sizeof(err)) < 0)
        hb_fuzz_fail("older IdentityEvent writer", err);
    generic = hb_codec_new(hb_schema_identity_event, err, sizeof(err));
    if (!generic || hb_codec_add_writer(generic, v0, err, sizeof(err)) < 0)
        hb_fuzz_fail("IdentityEvent codec (generic)", err);
    hb_codec_set_generic_only(generic, 1);
    free(v0);
    sub = hb_sub_new();
    snprintf(sub->id, sizeof(sub->id), "%s", "0f9d3c1e-1111-4222-8333-944455556666");
    atexit(cleanup);
}

static void render_all(json_t *ev) {
    static const hb_format_t formats[] = {HB_FORMAT_OKTA, HB_FORMAT_CLOUDEVENTS, HB_FORMAT_EVENT};
    json_t *const batch[2] = {ev, ev};
    char err[256];
    for (size_t f = 0; f < HB_ARRAY_SIZE(formats); f++) {
        sub->format = formats[f];
        for (size_t n = 1; n <= 2; n++) {
            hb_payload_t payload;
            if (hb_deliver_render_json(sub, batch, n, "6a1e3c1e-1111-4222-8333-944455556666",
                                       "hookbridge", 1714567890123, &payload, err,
                                       sizeof(err)) < 0) {
                if (!*err)
                    hb_fuzz_fail("a render error has a reason", NULL);
                continue;
            }
            if (!payload.body || strlen(payload.body) != payload.len || !payload.content_type)
                hb_fuzz_fail("a rendered payload has a body and a content type", NULL);
            free(payload.body);
        }
    }
}

/* Renders ev (the text event) with hb_deliver_render and json (the same
 * event decoded to JSON) with the renderer of before (../render_ref.h) in
 * every format, alone and in a batch, with and without a field selection:
 * the same bytes or the same failure. */
static void render_same(hb_event_t *ev, json_t *json) {
    static const hb_format_t formats[] = {HB_FORMAT_OKTA, HB_FORMAT_CLOUDEVENTS, HB_FORMAT_EVENT};
    hb_event_t *const evs[2] = {ev, ev};
    json_t *const jsons[2] = {json, json};
    char err[256], jerr[256];
    for (int sel = 0; sel < 2; sel++) {
        if (sel) {
            json_t *f = json_pack("[s,s,s]", "actor", "target", "client");
            if (hb_sub_set_fields(sub, f, err, sizeof(err)) != 0)
                hb_fuzz_fail("a field selection", err);
            json_decref(f);
        }
        for (size_t f = 0; f < HB_ARRAY_SIZE(formats); f++) {
            sub->format = formats[f];
            for (size_t n = 1; n <= 2; n++) {
                hb_payload_t a, b;
                int ra = hb_deliver_render(sub, evs, n, "6a1e3c1e-1111-4222-8333-944455556666",
                                           "hookbridge", 1714567890123, &a, err, sizeof(err));
                int rb = ref_render(sub, jsons, n, "6a1e3c1e-1111-4222-8333-944455556666",
                                    "hookbridge", 1714567890123, &b, jerr, sizeof(jerr));
                if (ra != rb || (ra == 0 && (a.len != b.len || memcmp(a.body, b.body, a.len) ||
                                             strcmp(a.content_type, b.content_type))))
                    hb_fuzz_fail("the text event renders as the JSON event did", b.body);
                if (ra < 0 && strcmp(err, jerr))
                    hb_fuzz_fail("the text event fails to render as the JSON event did", jerr);
                if (ra == 0) {
                    free(a.body);
                    free(b.body);
                }
            }
        }
    }
    for (int i = 0; i < sub->fields_cnt; i++) /* no selection again */
        free(sub->fields[i]);
    free(sub->fields);
    sub->fields = NULL;
    sub->fields_cnt = 0;
}

/* Both NULL, or the same string. */
/* A member's string as the dispatcher reads one (hb_event.h): none when it
 * holds a NUL character. */
static const char *c_string(const json_t *obj, const char *name) {
    const json_t *v = json_object_get(obj, name);
    const char *s = json_string_value(v);
    return s && strlen(s) == json_string_length(v) ? s : NULL;
}

static int same_str(const char *a, const char *b) {
    return a == b || (a && b && !strcmp(a, b));
}

/* The text decode agrees with the JSON decode, and renders the same. */
static void same_as_text(const uint8_t *data, size_t size) {
    char err[256] = "", gerr[256] = "";
    json_t *gev = NULL, *json = NULL;
    int rc = hb_codec_decode_doc(codec, size ? data : NULL, size, &doc, &json, err, sizeof(err));
    int grc = hb_codec_decode(generic, size ? data : NULL, size, &gev, gerr, sizeof(gerr));
    if (rc != grc || (rc < 0 && strcmp(err, gerr)))
        hb_fuzz_fail("the text and the JSON decode agree on errors", gerr);
    if (rc == 0) {
        char *want = json_dumps(gev, JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_ENCODE_ANY);
        hb_event_t *ev;
        json_t *back;
        if (!want || doc.text.len != strlen(want) || memcmp(doc.text.p, want, doc.text.len))
            hb_fuzz_fail("the text is the JSON's", want);
        free(want);
        back = hb_jdoc_json(&doc);
        if (!back || !json_equal(back, gev))
            hb_fuzz_fail("the text gives the JSON back", NULL);
        json_decref(back);
        ev = hb_ev_new(&doc, json); /* takes json */
        json = NULL;
        if (!ev)
            hb_fuzz_fail("a decoded event is an object", NULL);
        if (!same_str(hb_ev_uuid(ev), hb_event_uuid(gev)) ||
            !same_str(hb_ev_type(ev), hb_event_type(gev)) ||
            !same_str(ev->uuid, c_string(gev, "uuid")) ||
            !same_str(ev->type, c_string(gev, "eventType")) ||
            !same_str(ev->published, c_string(gev, "published")))
            hb_fuzz_fail("the text event's accessors are the JSON's", NULL);
        render_same(ev, gev);
        hb_ev_unref(ev);
    }
    json_decref(json);
    json_decref(gev);
}

/* The direct walk and the general way agree on data. */
static void same_as_generic(const uint8_t *data, size_t size) {
    char err[256] = "", gerr[256] = "";
    json_t *ev = NULL, *gev = NULL;
    int rc = hb_codec_decode(codec, size ? data : NULL, size, &ev, err, sizeof(err));
    int grc = hb_codec_decode(generic, size ? data : NULL, size, &gev, gerr, sizeof(gerr));
    if (rc != grc || (rc < 0 && strcmp(err, gerr)))
        hb_fuzz_fail("the direct and the general decode agree on errors", gerr);
    if (rc == 0) {
        char *a = json_dumps(ev, JSON_COMPACT), *b = json_dumps(gev, JSON_COMPACT);
        if (!a || !b || strcmp(a, b))
            hb_fuzz_fail("the direct and the general decode make the same JSON", b);
        free(a);
        free(b);
    }
    json_decref(ev);
    json_decref(gev);
}

static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), t = strlen(tail);
    return n >= t && memcmp(s + n - t, tail, t) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256] = "";
    json_t *ev = NULL, *again = NULL;
    void *buf = NULL;
    size_t len = 0;
    if (!codec)
        init();
    same_as_generic(data, size);
    same_as_text(data, size);
    /* librdkafka hands over NULL for an empty payload (a tombstone) */
    if (hb_codec_decode(codec, size ? data : NULL, size, &ev, err, sizeof(err)) < 0) {
        if (!*err || ev)
            hb_fuzz_fail("a rejected message has a reason and no value", err);
        return 0;
    }
    if (!json_is_object(ev))
        hb_fuzz_fail("a decoded message is a JSON object", NULL);
    if (!json_is_string(json_object_get(ev, "uuid")) ||
        !json_is_string(json_object_get(ev, "published")) ||
        !json_is_string(json_object_get(ev, "eventType")))
        hb_fuzz_fail("a decoded event has its required strings", NULL);
    (void)hb_event_type(ev);
    (void)hb_event_uuid(ev);
    (void)hb_event_key(ev);
    render_all(ev);

    if (hb_codec_encode(codec, ev, &buf, &len, err, sizeof(err)) < 0) {
        /* A NaN or an infinity is written null, absent in its record (JSON
         * has no word for them): the one way a required member can be
         * missing, and lat and lon are the schema's only numbers that are
         * not integers (in client's geographicalContext, and in each of
         * request.ipChain's). */
        if (!ends_with(err, ".geographicalContext.geolocation.lat: missing") &&
            !ends_with(err, ".geographicalContext.geolocation.lon: missing"))
            hb_fuzz_fail("a decoded event encodes again", err);
        json_decref(ev);
        return 0;
    }
    if (hb_codec_decode(codec, buf, len, &again, err, sizeof(err)) < 0)
        hb_fuzz_fail("a re-encoded event decodes", err);
    if (!json_equal(ev, again))
        hb_fuzz_fail("a round trip keeps the event", NULL);
    free(buf);
    json_decref(again);
    json_decref(ev);
    return 0;
}
