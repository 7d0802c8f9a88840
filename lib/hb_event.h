/*
 * Identity events as JSON (the Okta System Log LogEvent shape): the rules the
 * producer applies before encoding, and the accessors the dispatcher needs.
 */
#ifndef HB_EVENT_H
#define HB_EVENT_H

/* Largest encoded event the producer publishes: under Kafka's default
 * message.max.bytes (1 MB), with room for the envelope a delivery adds. */
#define HB_EVENT_MAX_BYTES (256 * 1024)

#include <jansson.h>

#include "hb_common.h"

/* Is `type` in the compiled-in catalogue (schema/event_types.txt)? */
int hb_event_type_known(const char *type);
/* Number of catalogue entries and the i-th type (for tests and --list-types). */
size_t hb_event_types_count(void);
const char *hb_event_type_at(size_t i);

/* Validates and completes an event in place: eventType required (and known
 * unless allow_unknown_types), uuid (random v4) and published (now, RFC 3339
 * with milliseconds) filled in when absent, version "0" and severity "INFO"
 * defaulted. Error text names the field: "eventType: missing". */
int hb_event_normalize(json_t *ev, int allow_unknown_types, char *errstr,
                       size_t errstr_size) HB_MUSTCHECK;

/* Kafka key per docs/design.md: the first target of type "User"'s id, else the
 * actor's id, else the event uuid. Never NULL for a normalized event. */
const char *hb_event_key(const json_t *ev);

const char *hb_event_uuid(const json_t *ev); /* NULL when absent */
const char *hb_event_type(const json_t *ev); /* NULL when absent */

#endif
