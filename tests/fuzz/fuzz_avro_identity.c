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
 * or the same JSON, members in the same order.
 */
#include <string.h>

#include "fuzz.h"
#include "hb_codec.h"
#include "hb_deliver.h"
#include "hb_event.h"
#include "hb_schemas.h"
#include "hb_sub.h"

static hb_codec_t *codec;
static hb_codec_t *generic; /* the same codec, never the direct walk */
static hb_sub_t *sub;

/* At exit, so LeakSanitizer sees only what an input leaked. */
static void cleanup(void) {
    hb_codec_free(codec);
    codec = NULL;
    hb_codec_free(generic);
    generic = NULL;
    hb_sub_unref(sub);
    sub = NULL;
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
            if (hb_deliver_render(sub, batch, n, "6a1e3c1e-1111-4222-8333-944455556666",
                                  "hookbridge", 1714567890123, &payload, err, sizeof(err)) < 0) {
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256] = "";
    json_t *ev = NULL, *again = NULL;
    void *buf = NULL;
    size_t len = 0;
    if (!codec)
        init();
    same_as_generic(data, size);
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

    if (hb_codec_encode(codec, ev, &buf, &len, err, sizeof(err)) < 0)
        hb_fuzz_fail("a decoded event encodes again", err);
    if (hb_codec_decode(codec, buf, len, &again, err, sizeof(err)) < 0)
        hb_fuzz_fail("a re-encoded event decodes", err);
    if (!json_equal(ev, again))
        hb_fuzz_fail("a round trip keeps the event", NULL);
    free(buf);
    json_decref(again);
    json_decref(ev);
    return 0;
}
