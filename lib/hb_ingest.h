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
 * that are not strings are taken as their JSON text):
 * hb_event_normalize (unknown event types accepted: Okta has hundreds), the
 * Avro single-object encoding, the HB_EVENT_MAX_BYTES bound, and the key
 * hb_event_key. A request is all or nothing: the first problem fails the
 * whole body, naming the event's index in data.events (0-based), and no
 * message is returned, so nothing of a refused request is ever produced.
 *
 * Pure functions of the body; the codec is the caller's (a codec is not
 * thread-safe: callers on several threads serialize on it).
 */
#ifndef HB_INGEST_H
#define HB_INGEST_H

#include <stddef.h>

#include "hb_codec.h"
#include "hb_common.h"

/* Where the endpoint takes Okta's deliveries (POST) and verification (GET). */
#define HB_INGEST_PATH "/okta/events"

/* The envelope's eventType Okta sends with every delivery. */
#define HB_INGEST_ENVELOPE_TYPE "com.okta.event_hook"

typedef struct {
    char *key;   /* hb_event_key, NUL-terminated */
    void *value; /* single-object-encoded IdentityEvent */
    size_t value_len;
} hb_ingest_msg_t;

typedef struct {
    hb_ingest_msg_t *msgs;
    size_t cnt;
} hb_ingest_batch_t;

/* Parses and validates a request body into out (freed with
 * hb_ingest_batch_free, also after a failure). On failure returns -1 with
 * the reason in errstr and *bad_event set to the index of the event at
 * fault, or -1 when the envelope itself is wrong (not JSON, not an object,
 * another eventType, no data.events array). Error text names the place:
 * "data.events[2]: eventType: missing", and is valid UTF-8 (it quotes the
 * body; a character cut short by a buffer's end becomes '?'). */
int hb_ingest_parse(hb_codec_t *codec, const char *body, size_t len, hb_ingest_batch_t *out,
                    long *bad_event, char *errstr, size_t errstr_size) HB_MUSTCHECK;

void hb_ingest_batch_free(hb_ingest_batch_t *b);

#endif
