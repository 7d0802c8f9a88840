/*
 * Fuzz target: a delay-topic message, as the retrier takes it.
 *
 * The bytes go to hb_codec_decode with the DeliveryRetry reader (and the
 * older writer without schedule_offset registered, whose default the decoder
 * fills in), then to hb_retry_msg_from_json. A rejection at either step must
 * give a reason (the message becomes poison). An accepted message is sent on
 * to the next tier the way hb_worker does it: hb_retry_msg_to_json, encode;
 * that must work and decode back to the same message.
 */
#include <string.h>

#include "fuzz.h"
#include "hb_codec.h"
#include "hb_retry.h"
#include "hb_schemas.h"

static hb_codec_t *codec;

/* At exit, so LeakSanitizer sees only what an input leaked. */
static void cleanup(void) {
    hb_codec_free(codec);
    codec = NULL;
}

static void init(void) {
    char err[256];
    char *v0 = hb_fuzz_schema_without(hb_schema_delivery_retry, hb_fuzz_retry_v0_drop,
                                      HB_ARRAY_SIZE(hb_fuzz_retry_v0_drop));
    codec = hb_codec_new(hb_schema_delivery_retry, err, sizeof(err));
    if (!codec)
        hb_fuzz_fail("DeliveryRetry codec", err);
    if (hb_codec_add_writer(codec, v0, err, sizeof(err)) < 0)
        hb_fuzz_fail("older DeliveryRetry writer", err);
    free(v0);
    atexit(cleanup);
}

static int str_eq(const char *a, const char *b) {
    return (!a && !b) || (a && b && !strcmp(a, b));
}

static void same_msg(const hb_retry_msg_t *a, const hb_retry_msg_t *b) {
    if (!str_eq(a->delivery_id, b->delivery_id) ||
        !str_eq(a->subscription_id, b->subscription_id) || !str_eq(a->event_ids, b->event_ids) ||
        !str_eq(a->event_type, b->event_type) || !str_eq(a->content_type, b->content_type) ||
        a->body_len != b->body_len || memcmp(a->body, b->body, a->body_len) ||
        a->attempt != b->attempt || a->not_before_ms != b->not_before_ms ||
        a->first_attempt_ms != b->first_attempt_ms || a->last_status != b->last_status ||
        !str_eq(a->last_error, b->last_error) || a->schedule_offset != b->schedule_offset)
        hb_fuzz_fail("a DeliveryRetry survives to_json, encode, decode, from_json", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[256] = "";
    json_t *obj = NULL, *out = NULL;
    hb_retry_msg_t m, m2;
    void *buf = NULL;
    size_t len = 0;
    if (!codec)
        init();
    if (hb_codec_decode(codec, size ? data : NULL, size, &obj, err, sizeof(err)) < 0) {
        if (!*err || obj)
            hb_fuzz_fail("a rejected message has a reason and no value", err);
        return 0;
    }
    if (hb_retry_msg_from_json(&m, obj, err, sizeof(err)) < 0) {
        if (!*err || m.delivery_id || m.body || m.event_ids)
            hb_fuzz_fail("a poison DeliveryRetry has a reason and owns nothing", err);
        json_decref(obj);
        return 0;
    }
    json_decref(obj);
    if (!m.delivery_id || !m.subscription_id || !m.event_ids || !m.event_type || !m.content_type ||
        !m.body || !m.last_error || m.attempt < 1)
        hb_fuzz_fail("an accepted DeliveryRetry has every field", NULL);

    out = hb_retry_msg_to_json(&m);
    if (!out)
        hb_fuzz_fail("an accepted DeliveryRetry becomes JSON again", NULL);
    if (hb_codec_encode(codec, out, &buf, &len, err, sizeof(err)) < 0)
        hb_fuzz_fail("an accepted DeliveryRetry encodes again", err);
    json_decref(out);
    if (hb_codec_decode(codec, buf, len, &obj, err, sizeof(err)) < 0)
        hb_fuzz_fail("a re-encoded DeliveryRetry decodes", err);
    free(buf);
    if (hb_retry_msg_from_json(&m2, obj, err, sizeof(err)) < 0)
        hb_fuzz_fail("a re-encoded DeliveryRetry is accepted", err);
    json_decref(obj);
    same_msg(&m, &m2);
    hb_retry_msg_clear(&m2);
    hb_retry_msg_clear(&m);
    return 0;
}
