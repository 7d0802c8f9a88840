/*
 * Fuzz target: an Okta event-hook request body, the path a POST to
 * `hookbridge-producer --listen` takes once past the auth check
 * (producer/ingest.c handle_post): hb_ingest_parse with the IdentityEvent
 * codec and the same error buffer, then the 400 body the endpoint would
 * answer a refusal with.
 *
 * The body is also parsed here on its own (jansson, as the envelope is
 * specified), so the verdict can be checked against it. What must hold:
 *   - all or nothing: a refusal returns no message at all;
 *   - a refusal names its place: the event's index, "data.events[i]: why",
 *     with i < the number of events, or -1 and a reason about the envelope;
 *     and the reason fits in the endpoint's JSON answer (valid UTF-8);
 *   - the index is that of the first bad event: the events before it pass
 *     on their own, and the event alone fails for the same reason;
 *   - an accepted body is a real envelope, and gives one message per event,
 *     in order: keyed (non-empty), single-object encoded with the reader's
 *     fingerprint, within HB_EVENT_MAX_BYTES, decoding with the codec to an
 *     event with the same eventType (and uuid and published when it had
 *     them) and the same key;
 *   - hb_ingest_batch_free leaves an empty batch; nothing leaks (LSan).
 */
#include <string.h>

#include "fuzz.h"
#include "hb_codec.h"
#include "hb_event.h"
#include "hb_ingest.h"
#include "hb_schemas.h"

/* As producer/ingest.c handle_post: the reason goes into the 400 body. */
#define WHY_SIZE 600

static hb_codec_t *codec;
static uint64_t fingerprint;

/* data.events when root is an envelope as docs/ingest.md specifies it. */
static json_t *envelope_events(json_t *root) {
    const char *type = json_string_value(json_object_get(root, "eventType"));
    json_t *events = json_object_get(json_object_get(root, "data"), "events");
    if (!json_is_object(root) || !type || strcmp(type, HB_INGEST_ENVELOPE_TYPE) != 0)
        return NULL;
    return json_is_array(events) ? events : NULL;
}

/* hb_ingest_parse on an envelope holding events[from, to) only. */
static int parse_slice(json_t *events, size_t from, size_t to, hb_ingest_batch_t *b, long *bad,
                       char *why) {
    json_t *slice = json_array(), *env;
    char *text;
    int rc;
    for (size_t i = from; i < to; i++)
        (void)json_array_append(slice, json_array_get(events, i));
    env = json_pack("{s:s,s:{s:o}}", "eventType", HB_INGEST_ENVELOPE_TYPE, "data", "events", slice);
    text = env ? json_dumps(env, JSON_COMPACT) : NULL;
    if (!text)
        hb_fuzz_fail("a slice of the events serializes", NULL);
    json_decref(env);
    rc = hb_ingest_parse(codec, text, strlen(text), b, bad, why, WHY_SIZE);
    free(text);
    return rc;
}

/* The text after "data.events[<bad>]: ", or NULL when why does not start so. */
static const char *event_reason(const char *why, long bad) {
    char prefix[48];
    int n = snprintf(prefix, sizeof(prefix), "data.events[%ld]: ", bad);
    return strncmp(why, prefix, (size_t)n) == 0 ? why + n : NULL;
}

/* What the endpoint answers (producer/ingest.c reply_error) must carry it. */
static void check_reply(const char *why, long bad) {
    json_t *body = json_object(), *err = json_string(why);
    char *text;
    if (!err)
        hb_fuzz_fail("a refusal's reason is valid UTF-8 (the 400 body carries it)", why);
    (void)json_object_set_new(body, "error", err);
    if (bad >= 0)
        (void)json_object_set_new(body, "event", json_integer(bad));
    text = json_dumps(body, JSON_COMPACT);
    if (!text)
        hb_fuzz_fail("the 400 body serializes", why);
    free(text);
    json_decref(body);
}

static void check_refusal(const hb_ingest_batch_t *b, long bad, const char *why, json_t *events) {
    const char *reason;
    hb_ingest_batch_t b2;
    char why2[WHY_SIZE] = "";
    long bad2 = -2;
    if (b->msgs || b->cnt)
        hb_fuzz_fail("a refused body returns no message", why);
    if (!*why)
        hb_fuzz_fail("a refusal has a reason", NULL);
    check_reply(why, bad);
    if (bad == -1) {
        if (events)
            hb_fuzz_fail("an envelope refusal is for a body that is no envelope", why);
        if (strncmp(why, "invalid JSON", 12) && strncmp(why, "not an Okta event hook", 22) &&
            strncmp(why, "data: ", 6) && strncmp(why, "data.events: ", 13))
            hb_fuzz_fail("an envelope refusal names the envelope's place", why);
        return;
    }
    if (!events || bad < 0 || (size_t)bad >= json_array_size(events))
        hb_fuzz_fail("a refused event's index is in data.events", why);
    reason = event_reason(why, bad);
    if (!reason || !*reason)
        hb_fuzz_fail("an event refusal reads data.events[index]: reason", why);

    /* The first bad event: those before it pass, and it fails alone, alike. */
    if (parse_slice(events, 0, (size_t)bad, &b2, &bad2, why2) != 0)
        hb_fuzz_fail("the events before the refused one pass", why2);
    if (b2.cnt != (size_t)bad)
        hb_fuzz_fail("the events before the refused one each give a message", NULL);
    hb_ingest_batch_free(&b2);
    if (parse_slice(events, (size_t)bad, (size_t)bad + 1, &b2, &bad2, why2) == 0)
        hb_fuzz_fail("the refused event fails alone too", why);
    hb_ingest_batch_free(&b2);
    if (bad2 != 0 || !event_reason(why2, 0))
        hb_fuzz_fail("the refused event alone is data.events[0]", why2);
    /* Same reason, unless either was cut at the buffer's end. */
    if (strlen(why) < WHY_SIZE - 1 && strlen(why2) < WHY_SIZE - 1 &&
        strcmp(reason, event_reason(why2, 0)) != 0)
        hb_fuzz_fail("the refused event fails alone for the same reason", why2);
}

static int same_string(const json_t *a, const json_t *b, const char *name) {
    const char *x = json_string_value(json_object_get(a, name));
    const char *y = json_string_value(json_object_get(b, name));
    return x && y && !strcmp(x, y);
}

static void check_message(const hb_ingest_msg_t *m, const json_t *orig) {
    const unsigned char *v = m->value;
    uint64_t fp = 0;
    json_t *back = NULL;
    char err[512];
    const char *key;
    if (!m->key || !*m->key)
        hb_fuzz_fail("every message has a key", NULL);
    if (!v || m->value_len < 10 || m->value_len > HB_EVENT_MAX_BYTES)
        hb_fuzz_fail("every message is 10 bytes .. HB_EVENT_MAX_BYTES", NULL);
    for (int i = 0; i < 8; i++)
        fp |= (uint64_t)v[2 + i] << (8 * i);
    if (v[0] != 0xC3 || v[1] != 0x01 || fp != fingerprint)
        hb_fuzz_fail("every message is single-object encoded with the reader schema", NULL);
    if (hb_codec_decode(codec, m->value, m->value_len, &back, err, sizeof(err)) < 0)
        hb_fuzz_fail("every message decodes with the codec", err);
    if (!same_string(back, orig, "eventType"))
        hb_fuzz_fail("a message keeps its event's eventType", NULL);
    if (json_is_string(json_object_get(orig, "uuid")) ? !same_string(back, orig, "uuid")
                                                      : !hb_event_uuid(back))
        hb_fuzz_fail("a message keeps its event's uuid, or has one made up", NULL);
    if (json_is_string(json_object_get(orig, "published"))
            ? !same_string(back, orig, "published")
            : !json_is_string(json_object_get(back, "published")))
        hb_fuzz_fail("a message keeps its event's published time, or has one", NULL);
    key = hb_event_key(back);
    if (!key || strcmp(key, m->key) != 0)
        hb_fuzz_fail("a message's key is its decoded event's key", m->key);
    json_decref(back);
}

static void check_batch(const hb_ingest_batch_t *b, long bad, json_t *events) {
    if (bad != -1)
        hb_fuzz_fail("an accepted body names no event at fault", NULL);
    if (!events)
        hb_fuzz_fail("an accepted body is an event-hook envelope", NULL);
    if (b->cnt != json_array_size(events) || (b->cnt && !b->msgs))
        hb_fuzz_fail("an accepted body gives one message per event", NULL);
    for (size_t i = 0; i < b->cnt; i++)
        check_message(&b->msgs[i], json_array_get(events, i));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hb_ingest_batch_t b;
    char why[WHY_SIZE] = "";
    long bad = -2;
    json_t *root;
    int rc;
    codec = hb_fuzz_identity_codec();
    fingerprint = hb_codec_fingerprint(codec);
    rc = hb_ingest_parse(codec, (const char *)data, size, &b, &bad, why, sizeof(why));
    root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (rc == 0)
        check_batch(&b, bad, envelope_events(root));
    else if (rc == -1)
        check_refusal(&b, bad, why, envelope_events(root));
    else
        hb_fuzz_fail("hb_ingest_parse returns 0 or -1", NULL);
    hb_ingest_batch_free(&b);
    if (b.msgs || b.cnt)
        hb_fuzz_fail("a freed batch is empty", NULL);
    json_decref(root);
    return 0;
}
