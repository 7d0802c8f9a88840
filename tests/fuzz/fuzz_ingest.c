/*
 * Fuzz target: an Okta event-hook request body, the path a POST to
 * `hookbridge-producer --listen` takes once past the auth check
 * (producer/ingest.c handle_post): hb_ingest_parse with the IdentityEvent
 * codec and the same error buffer, then the 400 body the endpoint would
 * answer a refused envelope with.
 *
 * The body is also parsed here on its own (jansson, as the envelope is
 * specified), so the verdict can be checked against it. What must hold:
 *   - a refused body returns no message at all, and its reason names the
 *     envelope and fits in the endpoint's JSON answer (valid UTF-8); a body
 *     that is an envelope is never refused;
 *   - an accepted body is a real envelope (or one only hb_ingest reads: a
 *     number beyond what jansson holds), and gives one message per event,
 *     in order;
 *   - an accepted event's message is keyed (non-empty), single-object
 *     encoded with the reader's fingerprint, within HB_EVENT_MAX_BYTES,
 *     decoding with the codec to an event with the same eventType (and uuid
 *     and published when it had them) and the same key;
 *   - a refused event's reason reads "data.events[i]: why", valid UTF-8
 *     (it goes into the answer and a Kafka header); its value is the event
 *     as received, in JSON; and the event alone is refused for the same
 *     reason;
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

#define PARSE_FLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL)

/* hb_ingest_parse on an envelope holding events[from, to) only. */
static int parse_slice(json_t *events, size_t from, size_t to, hb_ingest_batch_t *b, char *why) {
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
    rc = hb_ingest_parse(codec, text, strlen(text), b, why, WHY_SIZE);
    free(text);
    return rc;
}

/* The text after "data.events[<i>]: ", or NULL when why does not start so. */
static const char *event_reason(const char *why, size_t i) {
    char prefix[48];
    int n = snprintf(prefix, sizeof(prefix), "data.events[%zu]: ", i);
    return strncmp(why, prefix, (size_t)n) == 0 ? why + n : NULL;
}

/* A reason goes into a JSON answer: it must be valid UTF-8. */
static void check_utf8(const char *why, const char *what) {
    json_t *j = json_string(why);
    if (!j)
        hb_fuzz_fail(what, why);
    json_decref(j);
}

/* The objects and arrays of a parsed document, itself included. */
static size_t containers_of(const json_t *j) {
    size_t n = 0, i;
    const char *k;
    json_t *v;
    if (json_is_object(j)) {
        n++;
        json_object_foreach((json_t *)j, k, v) n += containers_of(v);
    } else if (json_is_array(j)) {
        n++;
        json_array_foreach(j, i, v) n += containers_of(v);
    }
    return n;
}

/* Whether why is hb_ingest's refusal of a body with too many objects and
 * arrays: "<count> JSON objects and arrays in <len> bytes: ..." (a reason
 * quoting the body may hold those words elsewhere). */
static int refused_for_containers(const char *why) {
    static const char words[] = " JSON objects and arrays in ";
    const char *p = why;
    while (*p >= '0' && *p <= '9')
        p++;
    return p != why && !strncmp(p, words, sizeof(words) - 1);
}

static void check_refusal(const hb_ingest_batch_t *b, const char *why, json_t *root, size_t size) {
    json_t *events = envelope_events(root);
    if (b->msgs || b->cnt)
        hb_fuzz_fail("a refused body returns no message", why);
    if (!*why)
        hb_fuzz_fail("a refusal has a reason", NULL);
    check_utf8(why, "a refusal's reason is valid UTF-8 (the 400 body carries it)");
    if (refused_for_containers(why)) { /* refused before parsing */
        if (root && containers_of(root) <= HB_INGEST_MAX_CONTAINERS(size))
            hb_fuzz_fail("a body is refused for its objects only when it has too many", why);
        return;
    }
    if (events)
        hb_fuzz_fail("an envelope refusal is for a body that is no envelope", why);
    if (strncmp(why, "invalid JSON", 12) && strncmp(why, "not an Okta event hook", 22) &&
        strncmp(why, "data: ", 6) && strncmp(why, "data.events: ", 13))
        hb_fuzz_fail("an envelope refusal names the envelope's place", why);
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

/* A refused event: its reason, its value as received, and alone refused alike. */
static void check_refused(const hb_ingest_msg_t *m, size_t i, json_t *events) {
    const json_t *orig = events ? json_array_get(events, i) : NULL;
    const char *reason = event_reason(m->refused, i);
    hb_ingest_batch_t b2;
    char why2[WHY_SIZE] = "";
    json_t *kept;
    if (!reason || !*reason)
        hb_fuzz_fail("an event refusal reads data.events[index]: reason", m->refused);
    check_utf8(m->refused, "a refused event's reason is valid UTF-8 (the answer carries it)");
    kept = json_loadb(m->value, m->value_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!kept)
        hb_fuzz_fail("a refused event is kept as JSON", m->refused);
    if (orig && m->value_len <= HB_INGEST_REFUSED_MAX_BYTES && !json_is_null(kept) &&
        !json_equal(kept, orig))
        hb_fuzz_fail("a refused event is kept as received", m->refused);
    json_decref(kept);
    if (!orig)
        return;
    if (parse_slice(events, i, i + 1, &b2, why2) != 0 || b2.cnt != 1 || !b2.msgs[0].refused)
        hb_fuzz_fail("the refused event is refused alone too", why2);
    /* Same reason, unless either was cut at its buffer's end. */
    if (strlen(reason) < 300 && strlen(b2.msgs[0].refused) < 300 &&
        strcmp(reason, event_reason(b2.msgs[0].refused, 0)) != 0)
        hb_fuzz_fail("the refused event fails alone for the same reason", b2.msgs[0].refused);
    hb_ingest_batch_free(&b2);
}

static void check_batch(const hb_ingest_batch_t *b, json_t *events, int jansson_refused) {
    size_t refused = 0;
    if (!events && !jansson_refused)
        hb_fuzz_fail("an accepted body is an event-hook envelope", NULL);
    if ((events && b->cnt != json_array_size(events)) || (b->cnt && !b->msgs))
        hb_fuzz_fail("an accepted body gives one message per event", NULL);
    for (size_t i = 0; i < b->cnt; i++) {
        if (b->msgs[i].refused) {
            refused++;
            check_refused(&b->msgs[i], i, events);
        } else if (events) {
            check_message(&b->msgs[i], json_array_get(events, i));
        }
    }
    if (refused != b->refused)
        hb_fuzz_fail("a batch counts its refused events", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hb_ingest_batch_t b;
    char why[WHY_SIZE] = "";
    json_error_t jerr;
    json_t *root;
    int rc, overflow;
    codec = hb_fuzz_identity_codec();
    fingerprint = hb_codec_fingerprint(codec);
    rc = hb_ingest_parse(codec, (const char *)data, size, &b, why, sizeof(why));
    root = json_loadb((const char *)data, size, PARSE_FLAGS, &jerr);
    /* a number jansson cannot hold: hb_ingest reads it as a string, this
     * harness cannot judge the events */
    overflow = !root && json_error_code(&jerr) == json_error_numeric_overflow;
    if (rc == 0)
        check_batch(&b, envelope_events(root), overflow);
    else if (rc == -1)
        check_refusal(&b, why, root, size);
    else
        hb_fuzz_fail("hb_ingest_parse returns 0 or -1", NULL);
    hb_ingest_batch_free(&b);
    if (b.msgs || b.cnt)
        hb_fuzz_fail("a freed batch is empty", NULL);
    json_decref(root);
    return 0;
}
