/*
 * Schemas and the event-type catalogue compiled into every program from
 * schema/ (see scripts/embed-schemas.sh).
 */
#ifndef HB_SCHEMAS_H
#define HB_SCHEMAS_H

extern const char hb_schema_identity_event[]; /* schema/identity_event.avsc */
extern const char hb_schema_delivery_retry[]; /* schema/delivery_retry.avsc */
/* Earlier versions (schema/history/NAME.vN.avsc), still read as writer
 * schemas; NULL-terminated. */
extern const char *const hb_schema_history_identity_event[];
extern const char *const hb_schema_history_delivery_retry[];
/* DeliveryRetry before after_delivery_id: still written when a retry waits
 * for nothing, so the previous release's retriers read it (hb_delivery.c). */
extern const char hb_schema_delivery_retry_v1[];
/* schema/event_types.txt: "#" comment lines, then "<type>\t<description>" lines. */
extern const char hb_event_types_catalogue[];

#endif
