/*
 * Okta event-hook requests turned into Kafka messages: the validation half of
 * the producer's ingest endpoint (the HTTP and Kafka half is
 * producer/ingest.c).
 *
 * Okta delivers an envelope
 *   {"eventType":"com.okta.event_hook", ..., "data":{"events":[LogEvent, ...]}}
 * and each LogEvent goes through exactly what the CLI does with a line
 * (but that values of Okta's free-form maps, actor.detailEntry,
 * target[].detailEntry, transaction.detail and debugContext.debugData,
 * that are not strings are taken as their JSON text, and a geolocation
 * without coordinates as none): hb_event_normalize (unknown event types
 * accepted: Okta has hundreds), the Avro single-object encoding, the
 * HB_EVENT_MAX_BYTES bound, and the key hb_event_key.
 *
 * An event that fails any of it is *refused*, not the request: Okta does not
 * send a delivery answered 4xx again, so refusing the request for one event
 * lost every other event of it. A refused event comes back as its JSON text
 * as received (for the dead-letter topic) with the reason, in its place
 * among the others. Only an envelope that is not one (not JSON, not an
 * object, another eventType, no data.events array) fails the whole body.
 *
 * The body is parsed with \u0000 allowed in strings (it is valid JSON, and
 * an attacker may type one into a field Okta logs: one such event must not
 * take its delivery's others with it); uuid, eventType, published, version
 * and severity holding one are refused (hb_event_normalize), any other
 * string keeps it. A number beyond what jansson holds (an integer outside
 * 64 bits, a real beyond double) is taken as a string of its digits, so it
 * refuses only its own event, or none in a free-form map.
 *
 * Pure functions of the body; the codec is the caller's (a codec is not
 * thread-safe: callers on several threads serialize on it).
 */
#ifndef HB_INGEST_H
#define HB_INGEST_H

#include <jansson.h>
#include <stddef.h>

#include "hb_codec.h"
#include "hb_common.h"

/* Where the endpoint takes Okta's deliveries (POST) and verification (GET). */
#define HB_INGEST_PATH "/okta/events"

/* The envelope's eventType Okta sends with every delivery. */
#define HB_INGEST_ENVELOPE_TYPE "com.okta.event_hook"

typedef struct {
    /* Accepted: hb_event_key; refused: the event's uuid when it has one of
     * at most HB_INGEST_KEY_MAX bytes (NULL otherwise). NUL-terminated. */
    char *key;
    /* Accepted: the single-object-encoded IdentityEvent; refused: the
     * event's compact JSON text as parsed, values as received (one that cannot be
     * written back as JSON: "null"). */
    void *value;
    size_t value_len;
    /* NULL, or why the event was refused: "data.events[2]: eventType:
     * missing" (valid UTF-8: it quotes the body, and a character cut
     * short by the buffer's end becomes '?'). */
    char *refused;
    /* The event's uuid and eventType as strings for the log, or NULL; and
     * a refused one's published (hb_ingest_refused_shrink). */
    char *uuid, *type, *published;
    int shrunk; /* a refused event kept by what identifies it only */
} hb_ingest_msg_t;

typedef struct {
    hb_ingest_msg_t *msgs; /* one per event of data.events, in order */
    size_t cnt;
    size_t refused; /* how many of them are refused */
} hb_ingest_batch_t;

/* Refused events larger than this are kept on the dead-letter topic as
 * {"uuid","eventType","published"} only (the reason says so): under both
 * librdkafka's message.max.bytes and Kafka's max.message.bytes defaults. */
#define HB_INGEST_REFUSED_MAX_BYTES (512 * 1024)
#define HB_INGEST_KEY_MAX 1024

/* A delivery body of len bytes may open this many objects and arrays at
 * most (hb_ingest_parse refuses more, before parsing: jansson's tree of
 * them is what a body costs in memory). An Okta LogEvent opens one per 50
 * to 150 bytes. */
#define HB_INGEST_MAX_CONTAINERS(len) ((size_t)(len) / 16 + 4096)

/* Parses and validates a request body into out (freed with
 * hb_ingest_batch_free, also after a failure). 0: one message per event,
 * some perhaps refused (out->refused); -1 when the envelope itself is
 * wrong, with the reason in errstr (valid UTF-8) and no message. */
int hb_ingest_parse(hb_codec_t *codec, const char *body, size_t len, hb_ingest_batch_t *out,
                    char *errstr, size_t errstr_size) HB_MUSTCHECK;

void hb_ingest_batch_free(hb_ingest_batch_t *b);

/* What Okta sends that the schema takes only once adjusted, in place: the
 * free-form maps' values as strings, a geolocation without coordinates as
 * none (above). For every Okta LogEvent: the ones of an event hook, of the
 * System Log API, of the producer's input lines. ev may be any JSON value. */
void hb_ingest_okta_adjust(json_t *ev);

/* jansson's json_loadb with JSON_ALLOW_NUL added, and a number jansson
 * cannot hold read as a string of its digits (only where a value stands:
 * a number as an object's key stays an error): how every Okta text is read
 * (the endpoint's bodies, the System Log's pages, the command line's
 * lines). */
#define HB_INGEST_MAX_DEPTH 4096
json_t *hb_ingest_loadb(const char *text, size_t len, size_t flags, json_error_t *err);

/* A refused event's value becomes what identifies it, {"uuid", "eventType",
 * "published"} (those it has), and its reason says so and why ("is larger
 * than the dead-letter topic takes"): for a copy too large to be kept. */
void hb_ingest_refused_shrink(hb_ingest_msg_t *m, const char *why);

#endif
