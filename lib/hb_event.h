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
#include "hb_json.h"

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

/*
 * A decoded event as the dispatcher carries it: its compact JSON text (what
 * hb_json_put writes of it) with the index of its top-level members
 * (hb_jdoc_t), the few strings matching and rendering read, and the same
 * event as a jansson value made only when something asks for one
 * (hb_ev_json: content filters, ordering keys, CloudEvents). Reference
 * counted; one thread.
 */
typedef struct hb_event_s {
    int refs;
    const char *text; /* NUL-terminated */
    size_t len;
    const hb_jmember_t *m; /* top-level members, offsets into text */
    size_t n;
    const double *reals; /* every real's exact value, in text order */
    size_t reals_n;
    /* these members' values when they are strings (unescaped, up to a NUL),
     * else NULL */
    const char *uuid, *type, *published;
    json_t *json;  /* hb_ev_json's, NULL until asked for */
    char *subject; /* hb_ev_subject's (owned), once subject_known */
    int subject_known;
} hb_event_t;

/* A new event (one reference) from doc (copied) and, when the decoder made
 * one, the same event as a jansson value (the reference is taken); NULL
 * when doc is not an object. */
hb_event_t *hb_ev_new(const hb_jdoc_t *doc, json_t *json);
/* A new event from a jansson object (a reference is taken); NULL when ev is
 * not an object. */
hb_event_t *hb_ev_from_json(json_t *ev);
hb_event_t *hb_ev_ref(hb_event_t *ev);
void hb_ev_unref(hb_event_t *ev);
/* The event as a jansson value, made at the first call (borrowed; NULL only
 * when it cannot be made). */
json_t *hb_ev_json(hb_event_t *ev);
/* The index of the top-level member named name (compared as jansson's
 * json_object_get compares), -1 when there is none. */
long hb_ev_find(const hb_event_t *ev, const char *name);
/* The id of the event's first target of type "User" (non-empty strings
 * both), NULL when there is none; read from the text at the first call. */
const char *hb_ev_subject(hb_event_t *ev);
/* hb_event_uuid and hb_event_type of the event: NULL when absent, empty or
 * holding a NUL character (an event type with one matches no subscription). */
const char *hb_ev_uuid(const hb_event_t *ev);
const char *hb_ev_type(const hb_event_t *ev);

#endif
